//! The greeter: `{"message": m}` → `{"result": "Hello, m"}`. An empty message is a
//! permanent failure, so the dead-letter path is easy to see.

use courier::{Context, Handler, HandlerError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A greeting request (`schemas/greeter/request.schema.json`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[schemars(title = "greeter request")]
pub struct Request {
    /// Who or what to greet; must not be empty.
    #[schemars(length(max = 1000))]
    pub message: String,
}

/// A greeting (`schemas/greeter/reply.schema.json`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[schemars(title = "greeter reply")]
pub struct Reply {
    /// `Hello, <message>`.
    pub result: String,
}

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
            let path = format!("{dir}/{file}");
            let generated = serde_json::to_string_pretty(&schema).expect("schema serializes") + "\n";
            if std::env::var_os("COURIER_BLESS").is_some() {
                std::fs::write(&path, &generated).expect("write schema");
            }
            let committed = std::fs::read_to_string(&path).expect("schema file exists");
            assert_eq!(committed, generated, "{path} drifted from the Rust type; rerun with COURIER_BLESS=1");
        }
    }

    fn context() -> Context {
        Context { correlation_id: "c".into(), attempt: 1, invocation: 1, deadline: None, source: Default::default() }
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
