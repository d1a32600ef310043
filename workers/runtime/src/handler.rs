//! The business side of a worker: a typed request in, a typed reply out, and errors that
//! say at the call site whether a retry can help.

use std::{borrow::Cow, fmt, future::Future, time::SystemTime};

use serde::{Serialize, de::DeserializeOwned};

use crate::{inbox::Transaction, protobuf::Protobuf, transport::Source};

/// A worker's business logic. The runtime does everything else: decoding, validation,
/// timeouts, retries, replies, dead-lettering and acknowledgements.
pub trait Handler: Send + Sync + 'static {
    /// The request payload (validated against [`Handler::REQUEST_SCHEMA`] first).
    type Request: DeserializeOwned + Clone + Send + Sync;
    /// The reply payload.
    type Reply: Serialize + Send;

    /// The worker's name: default queue names, fingerprints, logs.
    const NAME: &'static str;
    /// The JSON Schema (text) every request payload must satisfy; kept in `schemas/`.
    const REQUEST_SCHEMA: &'static str;
    /// The Protocol Buffers codec, for a worker that also takes `application/x-protobuf`
    /// requests (answered in kind). `None`: JSON only, and a protobuf request is a
    /// `decode` dead letter (`unsupported_content_type`).
    const PROTOBUF: Option<Protobuf<Self::Request, Self::Reply>> = None;
    /// SQL run at start-up when the worker has an inbox (`--inbox`): the tables the handler
    /// writes through [`Context::inbox`], created idempotently (`CREATE TABLE IF NOT EXISTS`).
    const INBOX_SCHEMA: &'static str = "";

    /// Handle one request. Called again for retries, with the same request.
    fn handle(
        &self,
        request: Self::Request,
        context: &Context,
    ) -> impl Future<Output = Result<Self::Reply, HandlerError>> + Send;
}

/// What the handler may want to know about the delivery.
#[derive(Clone, Debug)]
pub struct Context {
    /// The request's correlation id (empty if the producer gave none).
    pub correlation_id: String,
    /// Delivery round (1 = first delivery, +1 per delayed retry).
    pub attempt: u32,
    /// Handler invocations for this message so far, this one included.
    pub invocation: u32,
    /// The request's deadline, if it has one.
    pub deadline: Option<SystemTime>,
    /// Where the request came from.
    pub source: Source,
    /// With `--inbox`: the request's database transaction. What the handler writes
    /// through it commits together with the inbox's record of the request, once, or not
    /// at all (a failed call's writes are undone before the next).
    pub inbox: Option<Transaction>,
}

/// Whether retrying may help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Might pass later (a dependency is down, a timeout): retried, then dead-lettered.
    Transient,
    /// Will never pass (invalid business input): dead-lettered at once.
    Permanent,
}

/// A handler failure, classified explicitly. There is deliberately no blanket `From`
/// conversion: each call site decides whether its error is transient or permanent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerError {
    /// Whether retrying may help.
    pub retry: Retry,
    /// A stable machine-readable code (`snake_case`); part of the failure fingerprint.
    pub code: Cow<'static, str>,
    /// A human-readable message for the dead-letter record and the error reply.
    pub message: String,
    /// The dependency that failed, for the circuit breaker (`crate::breaker`): a worker
    /// with two dependencies names them, so one being down opens its own breaker.
    /// `None`: the default one.
    pub dependency: Option<Cow<'static, str>>,
}

impl HandlerError {
    /// A failure that may pass on a later attempt.
    pub fn transient(code: impl Into<Cow<'static, str>>, message: impl fmt::Display) -> Self {
        Self { retry: Retry::Transient, code: code.into(), message: message.to_string(), dependency: None }
    }

    /// A failure that no retry can fix.
    pub fn permanent(code: impl Into<Cow<'static, str>>, message: impl fmt::Display) -> Self {
        Self { retry: Retry::Permanent, code: code.into(), message: message.to_string(), dependency: None }
    }

    /// Name the dependency that failed:
    /// `HandlerError::transient("db_down", e).dependency("postgres")`.
    #[must_use]
    pub fn dependency(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.dependency = Some(name.into());
        self
    }

    /// Whether retrying may help.
    pub fn is_transient(&self) -> bool {
        self.retry == Retry::Transient
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for HandlerError {}
