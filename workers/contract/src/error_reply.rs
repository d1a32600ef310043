//! The error reply's payload: `{"error": {"kind", "code", "message"}}` in JSON, or the
//! same fields in Protocol Buffers (`schemas/envelope/error-reply.proto`), in the
//! request's codec.

use serde::{Deserialize, Serialize};

use super::{codec::Codec, failure::FailureKind};

/// The payload of a reply with `courier-status: error`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, prost::Message)]
pub struct ErrorReply {
    /// What went wrong.
    #[prost(message, required, tag = "1")]
    pub error: ErrorBody,
}

/// The failure an error reply reports.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, prost::Message)]
pub struct ErrorBody {
    /// The failure kind (`courier-failure-kind` of the dead-letter record).
    #[prost(string, tag = "1")]
    pub kind: String,
    /// The failure code.
    #[prost(string, tag = "2")]
    pub code: String,
    /// What went wrong, at most 1,024 bytes.
    #[prost(string, tag = "3")]
    pub message: String,
}

impl ErrorBody {
    /// The kind as one of the contract's; `None` for a kind the contract does not define
    /// (one a gateway gives itself, such as `timeout`), so a caller matches on the enum,
    /// never on the wire names.
    pub fn failure_kind(&self) -> Option<FailureKind> {
        FailureKind::parse(&self.kind)
    }
}

/// The envelope's Protocol Buffers schema, as published in `schemas/`.
pub const PROTO: &str = include_str!("../../../schemas/envelope/error-reply.proto");

impl ErrorReply {
    /// An error reply of a failure.
    pub fn new(kind: &str, code: &str, message: &str) -> Self {
        Self { error: ErrorBody { kind: kind.to_owned(), code: code.to_owned(), message: message.to_owned() } }
    }

    /// The payload in `codec`.
    pub fn encode(&self, codec: Codec) -> Vec<u8> {
        match codec {
            Codec::Json => serde_json::to_vec(self).unwrap_or_default(),
            Codec::Protobuf => prost::Message::encode_to_vec(self),
        }
    }

    /// Read an error reply's payload (`None` when it is not one).
    pub fn decode(codec: Codec, payload: &[u8]) -> Option<Self> {
        match codec {
            Codec::Json => serde_json::from_slice(payload).ok(),
            Codec::Protobuf => <Self as prost::Message>::decode(payload).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_the_documented_envelope() {
        let reply = ErrorReply::new("permanent", "empty_message", "message must not be empty");
        let json: serde_json::Value = serde_json::from_slice(&reply.encode(Codec::Json)).expect("json");
        assert_eq!(
            json,
            serde_json::json!({ "error": { "kind": "permanent", "code": "empty_message", "message": "message must not be empty" } })
        );
    }

    #[test]
    fn both_codecs_round_trip() {
        let reply = ErrorReply::new("decode", "invalid_protobuf", "é\u{0}");
        for codec in Codec::ALL {
            assert_eq!(ErrorReply::decode(codec, &reply.encode(codec)), Some(reply.clone()), "{codec:?}");
        }
        assert_eq!(ErrorReply::decode(Codec::Json, b"{}"), None);
    }

    #[test]
    fn the_kind_is_read_as_the_contracts() {
        let reply = ErrorReply::new(FailureKind::TooLarge.as_str(), "payload_too_large", "");
        assert_eq!(reply.error.failure_kind(), Some(FailureKind::TooLarge));
        assert_eq!(ErrorReply::new("timeout", "reply_timeout", "").error.failure_kind(), None);
    }

    #[test]
    fn protobuf_matches_the_published_schema() {
        // Field numbers as in schemas/envelope/error-reply.proto: error = 1; kind, code, message = 1, 2, 3.
        let bytes = ErrorReply::new("k", "c", "m").encode(Codec::Protobuf);
        assert_eq!(bytes, [0x0a, 9, 0x0a, 1, b'k', 0x12, 1, b'c', 0x1a, 1, b'm']);
        for line in ["Error error = 1;", "string kind = 1;", "string code = 2;", "string message = 3;"] {
            assert!(PROTO.contains(line), "{line} missing from error-reply.proto");
        }
    }
}
