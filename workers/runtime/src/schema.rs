//! Request validation: raw bytes → JSON → JSON Schema → the handler's Rust type (a
//! protobuf request comes in as the JSON value of its decoded message: `crate::protobuf`).

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::contract::{
    failure::{FailureKind, code},
    headers::{MAX_ERROR_MESSAGE_BYTES, truncate},
};

/// A compiled request schema.
pub struct RequestSchema {
    /// The compiled JSON Schema.
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for RequestSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestSchema")
    }
}

/// The schema text is not a usable JSON Schema (a programming error, found at start-up).
#[derive(Debug, thiserror::Error)]
#[error("invalid request schema: {0}")]
pub struct InvalidSchema(String);

/// Why a payload was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not JSON at all.
    NotJson(String),
    /// Sent as protobuf, and not a valid message of the request type.
    NotProtobuf(String),
    /// JSON, but not what the schema describes.
    Violation(String),
}

impl Refusal {
    /// The contract's failure kind and code for this refusal, and what it says: the same
    /// wherever a payload is refused (a worker's dead letter, the gateway's 400).
    pub fn classified(self) -> (FailureKind, &'static str, String) {
        match self {
            Self::NotJson(why) => (FailureKind::Decode, code::INVALID_JSON, why),
            Self::NotProtobuf(why) => (FailureKind::Decode, code::INVALID_PROTOBUF, why),
            Self::Violation(why) => (FailureKind::Schema, code::SCHEMA_VIOLATION, why),
        }
    }
}

impl RequestSchema {
    /// Compile schema text.
    pub fn compile(text: &str) -> Result<Self, InvalidSchema> {
        let schema: Value = serde_json::from_str(text).map_err(|e| InvalidSchema(e.to_string()))?;
        let validator = jsonschema::validator_for(&schema).map_err(|e| InvalidSchema(e.to_string()))?;
        Ok(Self { validator })
    }

    /// Decode and validate a payload into `T`.
    pub fn decode<T: DeserializeOwned>(&self, payload: &[u8]) -> Result<T, Refusal> {
        let value: Value = serde_json::from_slice(payload).map_err(|e| Refusal::NotJson(e.to_string()))?;
        self.decode_value(value)
    }

    /// Validate a JSON value into `T`.
    pub fn decode_value<T: DeserializeOwned>(&self, value: Value) -> Result<T, Refusal> {
        if self.validator.is_valid(&value) {
            // The schema is the contract; a type that disagrees with it is caught here too.
            return serde_json::from_value(value).map_err(|e| Refusal::Violation(e.to_string()));
        }
        let problems: Vec<String> = self
            .validator
            .iter_errors(&value)
            .take(5)
            .map(|e| format!("{}: {}", pointer(&e.instance_path().to_string()), e))
            .collect();
        Err(Refusal::Violation(truncate(&problems.join("; "), MAX_ERROR_MESSAGE_BYTES).to_owned()))
    }
}

fn pointer(path: &str) -> &str {
    if path.is_empty() { "/" } else { path }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"type":"object","required":["n"],"properties":{"n":{"type":"integer","maximum":10}},"additionalProperties":false}"#;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Req {
        n: i64,
    }

    #[test]
    fn valid_payload_decodes() {
        let schema = RequestSchema::compile(SCHEMA).expect("schema");
        assert_eq!(schema.decode::<Req>(br#"{"n": 3}"#), Ok(Req { n: 3 }));
    }

    #[test]
    fn refusals_are_classified() {
        let schema = RequestSchema::compile(SCHEMA).expect("schema");
        assert!(matches!(schema.decode::<Req>(b"{not json"), Err(Refusal::NotJson(_))));
        assert!(matches!(schema.decode::<Req>(b"\xff\xfe"), Err(Refusal::NotJson(_))));
        let Err(Refusal::Violation(why)) = schema.decode::<Req>(br#"{"n": 11}"#) else { panic!("expected violation") };
        assert!(why.contains("/n"), "{why}");
        assert!(matches!(schema.decode::<Req>(br#"{"m": 1}"#), Err(Refusal::Violation(_))));
    }

    #[test]
    fn bad_schema_is_an_error() {
        assert!(RequestSchema::compile("{").is_err());
        assert!(RequestSchema::compile(r#"{"type": 12}"#).is_err());
    }
}
