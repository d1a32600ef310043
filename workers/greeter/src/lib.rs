//! The greeter: `{"message": m}` → `{"result": "Hello, m"}`, in JSON or, as the article's
//! `Request{message}` → `Response{result}`, in Protocol Buffers
//! (`schemas/greeter/greeter.proto`). An empty message is a permanent failure, so the
//! dead-letter path is easy to see.

use courier::{Context, Handler, HandlerError, Protobuf};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A greeting request (`schemas/greeter/request.schema.json`; protobuf `greeter.Request`).
#[derive(Clone, Deserialize, Serialize, JsonSchema, PartialEq, Eq, prost::Message)]
#[serde(deny_unknown_fields)]
#[schemars(title = "greeter request")]
pub struct Request {
    /// Who or what to greet; must not be empty.
    #[schemars(length(max = 1000))]
    #[prost(string, tag = "1")]
    pub message: String,
}

/// A greeting (`schemas/greeter/reply.schema.json`; protobuf `greeter.Response`).
#[derive(Clone, Deserialize, Serialize, JsonSchema, PartialEq, Eq, prost::Message)]
#[serde(deny_unknown_fields)]
#[schemars(title = "greeter reply")]
pub struct Reply {
    /// `Hello, <message>`.
    #[prost(string, tag = "1")]
    pub result: String,
}

/// The greeter's Protocol Buffers schema, as published for producers.
pub const PROTO: &str = include_str!("../../../schemas/greeter/greeter.proto");

/// The name of the greeter's (simulated) dependency, for its circuit breaker.
pub const DEPENDENCY: &str = "greetings";

/// The greeter's business logic.
#[derive(Clone, Debug, Default)]
pub struct Greeter {
    /// Simulates a broken dependency: every request fails transiently (for DLQ drills).
    pub dependency_down: bool,
    /// Simulates a dependency outage that can be switched while the worker runs: while
    /// this file exists, every request fails transiently (for circuit-breaker drills).
    pub down_while: Option<std::path::PathBuf>,
    /// Simulates a slow dependency: each request takes this long (for benchmarks).
    pub latency: Option<std::time::Duration>,
}

impl Handler for Greeter {
    type Request = Request;
    type Reply = Reply;

    const NAME: &'static str = "greeter";
    const REQUEST_SCHEMA: &'static str = include_str!("../../../schemas/greeter/request.schema.json");
    const PROTOBUF: Option<Protobuf<Request, Reply>> =
        Some(Protobuf::new(PROTO, "greeter.Request", "greeter.Response"));

    async fn handle(&self, request: Request, _: &Context) -> Result<Reply, HandlerError> {
        if let Some(latency) = self.latency {
            tokio::time::sleep(latency).await;
        }
        if self.dependency_down || self.down_while.as_ref().is_some_and(|file| file.exists()) {
            return Err(HandlerError::transient("dependency_down", "the greeting dependency is unavailable")
                .dependency(DEPENDENCY));
        }
        if request.message.trim().is_empty() {
            return Err(HandlerError::permanent("empty_message", "message must not be empty"));
        }
        Ok(Reply { result: format!("Hello, {}", request.message) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema files in `schemas/greeter/` are generated from these types; this test
    /// fails when they drift. `COURIER_BLESS=1 cargo test -p greeter` rewrites them.
    #[test]
    fn schema_files_match_the_rust_types() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/greeter");
        for (file, schema) in [
            ("request.schema.json", schemars::schema_for!(Request)),
            ("reply.schema.json", schemars::schema_for!(Reply)),
        ] {
            let generated = serde_json::to_string_pretty(&schema).expect("schema serializes") + "\n";
            courier::testing::assert_generated_file(&std::path::Path::new(dir).join(file), &generated);
        }
    }

    /// `schemas/greeter/greeter.proto` describes the Rust types' protobuf encoding: each
    /// type, encoded with every field set, decodes through the `.proto` (compiled by protox)
    /// to the same JSON as its serde form, with no field left over on either side.
    #[test]
    fn proto_file_matches_the_rust_types() {
        use prost::Message as _;
        use prost_reflect::{DescriptorPool, DynamicMessage};

        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/greeter");
        let files = protox::compile(["greeter.proto"], [dir]).expect("greeter.proto compiles");
        let pool = DescriptorPool::from_file_descriptor_set(files).expect("descriptors");
        let codec = Greeter::PROTOBUF.expect("the greeter speaks protobuf");
        let request = Request { message: "Ada".into() };
        let reply = Reply { result: "Hello, Ada".into() };
        let cases = [
            (codec.messages.0, request.encode_to_vec(), serde_json::to_value(&request)),
            (codec.messages.1, reply.encode_to_vec(), serde_json::to_value(&reply)),
        ];
        for (name, bytes, json) in cases {
            let json = json.expect("serde form");
            let descriptor = pool.get_message_by_name(name).unwrap_or_else(|| panic!("{name} is in greeter.proto"));
            let decoded = DynamicMessage::decode(descriptor.clone(), &bytes[..]).expect("decodes through the .proto");
            assert_eq!(serde_json::to_value(&decoded).expect("json"), json, "{name}");
            let fields = json.as_object().map_or(0, serde_json::Map::len);
            assert_eq!(descriptor.fields().len(), fields, "{name}: the .proto has no other fields");
        }
    }

    fn context() -> Context {
        Context {
            correlation_id: "c".into(),
            attempt: 1,
            invocation: 1,
            deadline: None,
            source: Default::default(),
            inbox: None,
        }
    }

    #[tokio::test]
    async fn greets() {
        let reply = Greeter::default().handle(Request { message: "world".into() }, &context()).await;
        assert_eq!(reply, Ok(Reply { result: "Hello, world".into() }));
    }

    #[tokio::test]
    async fn empty_message_is_permanent() {
        let error = Greeter::default().handle(Request { message: " ".into() }, &context()).await.expect_err("empty");
        assert!(!error.is_transient());
        assert_eq!(error.code, "empty_message");
    }

    #[tokio::test]
    async fn broken_dependency_is_transient() {
        let greeter = Greeter { dependency_down: true, ..Greeter::default() };
        let error = greeter.handle(Request { message: "x".into() }, &context()).await.expect_err("down");
        assert!(error.is_transient());
        assert_eq!(error.dependency.as_deref(), Some(DEPENDENCY));
    }

    #[tokio::test]
    async fn the_outage_file_switches_the_dependency_while_it_runs() {
        let file = std::env::temp_dir().join(format!("greeter-down-{}", std::process::id()));
        let greeter = Greeter { down_while: Some(file.clone()), ..Greeter::default() };
        let request = || Request { message: "x".into() };
        assert!(greeter.handle(request(), &context()).await.is_ok());
        std::fs::write(&file, "").expect("create the switch");
        assert!(greeter.handle(request(), &context()).await.expect_err("down").is_transient());
        std::fs::remove_file(&file).expect("remove the switch");
        assert!(greeter.handle(request(), &context()).await.is_ok());
    }
}
