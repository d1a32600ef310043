//! A worker's Protocol Buffers codec: how its request and reply types travel as
//! `application/x-protobuf`. A handler opts in with [`crate::Handler::PROTOBUF`]; its types
//! then derive `prost::Message` beside serde, and a `.proto` file describes them for
//! producers.
//!
//! A protobuf request is decoded into the request type, then checked against the same
//! JSON Schema as a JSON request (one contract, two encodings): protobuf → Rust → JSON
//! value → schema → Rust.

use std::marker::PhantomData;

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// The protobuf side of a handler's request and reply types.
pub struct Protobuf<Request, Reply> {
    /// The `.proto` text describing both messages (published in `schemas/`, read by
    /// `courier asyncapi`).
    pub schema: &'static str,
    /// The protobuf message names of the request and the reply in [`Self::schema`].
    pub messages: (&'static str, &'static str),
    decode_request: fn(&[u8]) -> Result<Value, String>,
    encode_request: fn(Value) -> Result<Vec<u8>, String>,
    encode_reply: fn(&Reply) -> Vec<u8>,
    decode_reply: fn(&[u8]) -> Result<Value, String>,
    request: PhantomData<fn() -> Request>,
}

impl<Request, Reply> Protobuf<Request, Reply>
where
    Request: prost::Message + Default + Serialize + DeserializeOwned,
    Reply: prost::Message + Default + Serialize,
{
    /// The codec of types that derive both `prost::Message` and serde, described by
    /// `schema` (a `.proto` text) as the messages `request` and `reply`.
    pub const fn new(schema: &'static str, request: &'static str, reply: &'static str) -> Self {
        Self {
            schema,
            messages: (request, reply),
            decode_request: to_json::<Request>,
            encode_request: from_json::<Request>,
            encode_reply: encode::<Reply>,
            decode_reply: to_json::<Reply>,
            request: PhantomData,
        }
    }
}

impl<Request, Reply> Protobuf<Request, Reply> {
    /// A request's payload as the JSON value the request schema checks.
    pub fn decode_request(&self, payload: &[u8]) -> Result<Value, String> {
        (self.decode_request)(payload)
    }

    /// A request given as JSON, encoded as protobuf (the dev console, the gateway).
    pub fn encode_request(&self, json: Value) -> Result<Vec<u8>, String> {
        (self.encode_request)(json)
    }

    /// A reply's payload.
    pub fn encode_reply(&self, reply: &Reply) -> Vec<u8> {
        (self.encode_reply)(reply)
    }

    /// A reply's payload as JSON, for display.
    pub fn decode_reply(&self, payload: &[u8]) -> Result<Value, String> {
        (self.decode_reply)(payload)
    }
}

impl<Request, Reply> std::fmt::Debug for Protobuf<Request, Reply> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protobuf").field("messages", &self.messages).finish_non_exhaustive()
    }
}

fn to_json<T: prost::Message + Default + Serialize>(payload: &[u8]) -> Result<Value, String> {
    let message = T::decode(payload).map_err(|e| e.to_string())?;
    serde_json::to_value(&message).map_err(|e| e.to_string())
}

fn encode<T: prost::Message>(message: &T) -> Vec<u8> {
    message.encode_to_vec()
}

fn from_json<T: prost::Message + DeserializeOwned>(json: Value) -> Result<Vec<u8>, String> {
    let message: T = serde_json::from_value(json).map_err(|e| e.to_string())?;
    Ok(message.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use serde::Deserialize;

    use super::*;

    #[derive(Clone, PartialEq, Serialize, Deserialize, prost::Message)]
    struct Ask {
        #[prost(string, tag = "1")]
        message: String,
        #[prost(uint32, tag = "2")]
        times: u32,
    }

    const CODEC: Protobuf<Ask, Ask> = Protobuf::new("message Ask {}", "Ask", "Ask");

    #[test]
    fn requests_decode_to_the_json_the_schema_checks() {
        let bytes = Ask { message: "Ada".into(), times: 2 }.encode_to_vec();
        assert_eq!(CODEC.decode_request(&bytes), Ok(serde_json::json!({ "message": "Ada", "times": 2 })));
        // proto3: absent fields are their defaults.
        assert_eq!(CODEC.decode_request(&[]), Ok(serde_json::json!({ "message": "", "times": 0 })));
        assert!(CODEC.decode_request(b"\x0a\x05Ad").is_err(), "truncated");
        assert!(CODEC.decode_request(b"\x0a\x02\xff\xfe").is_err(), "a string that is not UTF-8");
    }

    #[test]
    fn json_round_trips_through_protobuf() {
        let json = serde_json::json!({ "message": "Ada", "times": 3 });
        let bytes = CODEC.encode_request(json.clone()).expect("encodes");
        assert_eq!(CODEC.decode_reply(&bytes), Ok(json));
        assert!(CODEC.encode_request(serde_json::json!({ "message": 1 })).is_err());
        let reply = Ask { message: "Hello".into(), times: 0 };
        assert_eq!(CODEC.encode_reply(&reply), reply.encode_to_vec());
    }
}
