//! Failure kinds and the fingerprint that groups identical failures.

use std::fmt;

/// Why a message did not produce an ok reply. The wire names are the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The handler failed in a way that may pass later; retries were exhausted.
    Transient,
    /// The handler rejected the request; retrying cannot help.
    Permanent,
    /// The payload cannot be decoded (not JSON, not protobuf, a content type the worker
    /// does not read), or a contract header has a bad value.
    Decode,
    /// The payload is JSON but violates the request schema.
    Schema,
    /// The payload is larger than the worker's limit.
    TooLarge,
    /// The request's deadline had passed; it was not processed.
    Expired,
    /// The reply could not be delivered: reply-to not allowed, not a valid name, or no such
    /// queue/topic.
    Unroutable,
    /// An output (reply, retry copy) was refused by the broker on every delivery round, up
    /// to `--max-redeliveries`.
    Undeliverable,
}

impl FailureKind {
    /// Every kind, in documentation order.
    pub const ALL: [Self; 8] = [
        Self::Transient,
        Self::Permanent,
        Self::Decode,
        Self::Schema,
        Self::TooLarge,
        Self::Expired,
        Self::Unroutable,
        Self::Undeliverable,
    ];

    /// The wire name (`courier-failure-kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Permanent => "permanent",
            Self::Decode => "decode",
            Self::Schema => "schema",
            Self::TooLarge => "too-large",
            Self::Expired => "expired",
            Self::Unroutable => "unroutable",
            Self::Undeliverable => "undeliverable",
        }
    }

    /// Parse a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The failure codes the runtime itself gives (a handler gives its own); the wire values
/// are the contract (`schemas/README.md`, checked by a test).
pub mod code {
    /// The payload is larger than `--max-payload-bytes`.
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// A request header has a value that cannot be used.
    pub const BAD_HEADER: &str = "bad_header";
    /// `courier-deadline` passed before processing.
    pub const DEADLINE_EXCEEDED: &str = "deadline_exceeded";
    /// The reply-to does not match `--reply-allow`.
    pub const REPLY_NOT_ALLOWED: &str = "reply_not_allowed";
    /// The reply-to cannot be a queue/topic name on this broker.
    pub const REPLY_TO_INVALID: &str = "reply_to_invalid";
    /// No queue/topic of the reply-to's name.
    pub const REPLY_UNROUTABLE: &str = "reply_unroutable";
    /// The reply is larger than the broker accepts.
    pub const REPLY_TOO_LARGE: &str = "reply_too_large";
    /// The payload is not JSON.
    pub const INVALID_JSON: &str = "invalid_json";
    /// The payload, sent as protobuf, is not a valid message of the request type.
    pub const INVALID_PROTOBUF: &str = "invalid_protobuf";
    /// The `content-type` is not one the worker reads.
    pub const UNSUPPORTED_CONTENT_TYPE: &str = "unsupported_content_type";
    /// The payload violates the request schema.
    pub const SCHEMA_VIOLATION: &str = "schema_violation";
    /// The handler's reply could not be serialized.
    pub const REPLY_NOT_SERIALIZABLE: &str = "reply_not_serializable";
    /// The handler panicked.
    pub const HANDLER_PANICKED: &str = "handler_panicked";
    /// The handler took longer than `--handler-timeout`.
    pub const TIMEOUT: &str = "timeout";
    /// The broker refused the reply on every round.
    pub const REPLY_REFUSED: &str = "reply_refused";
    /// The broker refused the retry copy on every round.
    pub const RETRY_REFUSED: &str = "retry_refused";
    /// The broker refused the dead-letter copy on every round.
    pub const DEAD_LETTER_REFUSED: &str = "dead_letter_refused";
    /// The inbox's database (`--inbox`) failed (a transient failure).
    pub const INBOX_UNAVAILABLE: &str = "inbox_unavailable";
    /// The inbox's database refused what the request carries (a value it cannot store, a
    /// constraint it violates): a permanent failure, not an outage.
    pub const INBOX_REFUSED: &str = "inbox_refused";
    /// The inbox answered another request (another payload) under this
    /// `courier-message-id`: refused, never answered with that request's reply.
    pub const DUPLICATE_MESSAGE_ID: &str = "duplicate_message_id";
    /// A batch handler returned another number of results than its batch had requests.
    pub const BATCH_RESULTS_MISMATCH: &str = "batch_results_mismatch";

    /// Every code above.
    pub const ALL: [&str; 21] = [
        PAYLOAD_TOO_LARGE,
        BAD_HEADER,
        DEADLINE_EXCEEDED,
        REPLY_NOT_ALLOWED,
        REPLY_TO_INVALID,
        REPLY_UNROUTABLE,
        REPLY_TOO_LARGE,
        INVALID_JSON,
        INVALID_PROTOBUF,
        UNSUPPORTED_CONTENT_TYPE,
        SCHEMA_VIOLATION,
        REPLY_NOT_SERIALIZABLE,
        HANDLER_PANICKED,
        TIMEOUT,
        REPLY_REFUSED,
        RETRY_REFUSED,
        DEAD_LETTER_REFUSED,
        INBOX_UNAVAILABLE,
        INBOX_REFUSED,
        DUPLICATE_MESSAGE_ID,
        BATCH_RESULTS_MISMATCH,
    ];
}

/// A stable 16-hex-digit fingerprint of kind + worker + code (FNV-1a, 64 bit).
/// Stable across versions and machines, and independent of the payload.
pub fn fingerprint(kind: FailureKind, worker: &str, code: &str) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for part in [kind.as_str(), worker, code] {
        for byte in part.bytes().chain(std::iter::once(0)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for kind in FailureKind::ALL {
            assert_eq!(FailureKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(FailureKind::parse("nope"), None);
    }

    #[test]
    fn every_runtime_code_is_documented() {
        let doc = include_str!("../../../schemas/README.md");
        for code in code::ALL {
            assert!(doc.contains(&format!("`{code}`")), "code {code} is missing from schemas/README.md");
        }
    }

    #[test]
    fn fingerprint_is_stable_and_discriminating() {
        // Pinned: the fingerprint is part of the contract and must never change.
        assert_eq!(fingerprint(FailureKind::Permanent, "greeter", "empty_message"), "177c889423ae5d16");
        let a = fingerprint(FailureKind::Permanent, "greeter", "empty_message");
        assert_ne!(a, fingerprint(FailureKind::Transient, "greeter", "empty_message"));
        assert_ne!(a, fingerprint(FailureKind::Permanent, "other", "empty_message"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(fingerprint(FailureKind::Decode, "ab", "c"), fingerprint(FailureKind::Decode, "a", "bc"));
    }
}
