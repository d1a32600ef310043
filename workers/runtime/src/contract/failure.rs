//! Failure kinds and the fingerprint that groups identical failures.

use std::fmt;

/// Why a message did not produce an ok reply. The wire names are the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The handler failed in a way that may pass later; retries were exhausted.
    Transient,
    /// The handler rejected the request; retrying cannot help.
    Permanent,
    /// The payload is not JSON, or a contract header has a bad value.
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
