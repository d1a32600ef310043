//! The business side of a worker: a typed request in, a typed reply out, and errors that
//! say at the call site whether a retry can help.

use std::{borrow::Cow, fmt, future::Future, panic::AssertUnwindSafe, time::SystemTime};

use futures::FutureExt as _;

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

    /// Handle one request. Called again for retries, with the same request. Deliveries
    /// share a few loops (one per runtime thread): work that blocks its thread (CPU-bound
    /// work, blocking I/O) goes to `tokio::task::spawn_blocking`, or it holds up the
    /// deliveries of its loop.
    fn handle(
        &self,
        request: Self::Request,
        context: &Context,
    ) -> impl Future<Output = Result<Self::Reply, HandlerError>> + Send;

    /// Handle the requests of one batch (`--batch-size` > 1): one result per request, in
    /// their order. `Err`: the whole call failed, and each request fails with it. By
    /// default each request is handled on its own, concurrently ([`each`]); a
    /// [`BatchHandler`] run as [`Batched`] does the batch's work in one call.
    fn handle_batch(
        &self,
        batch: Vec<(Self::Request, Context)>,
    ) -> impl Future<Output = BatchResult<Self::Reply>> + Send {
        async move { Ok(each(self, batch).await) }
    }
}

/// Handle each request of `batch` on its own, a panic caught per request: concurrently;
/// with `--inbox` (the batch's one transaction in every context) one after the other,
/// each from a savepoint that its failure rolls back to, so that a failed request leaves
/// none of its writes in what the batch commits.
pub async fn each<H: Handler + ?Sized>(
    handler: &H,
    batch: Vec<(H::Request, Context)>,
) -> Vec<Result<H::Reply, HandlerError>> {
    let call = |request, context: Context| async move {
        AssertUnwindSafe(handler.handle(request, &context)).catch_unwind().await.unwrap_or_else(|panic| {
            Err(HandlerError::permanent(
                crate::contract::failure::code::HANDLER_PANICKED,
                panic_message(panic.as_ref()),
            ))
        })
    };
    let Some(transaction) = batch.first().and_then(|(_, context)| context.inbox.clone()) else {
        return futures::future::join_all(batch.into_iter().map(|(request, context)| call(request, context))).await;
    };
    let lost = |error| {
        HandlerError::transient(crate::contract::failure::code::INBOX_UNAVAILABLE, error)
            .dependency(crate::inbox::DEPENDENCY)
    };
    let mut results = Vec::with_capacity(batch.len());
    for (request, context) in batch {
        let result = match transaction.savepoint().await {
            Ok(()) => match call(request, context).await {
                Err(failure) => transaction.undo_call().await.map_err(lost).and(Err(failure)),
                passed => passed,
            },
            Err(error) => Err(lost(error)),
        };
        results.push(result);
    }
    results
}

/// The text of a caught panic, for the dead-letter copy.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    format!("the handler panicked: {}", panic_text(panic))
}

/// What a caught panic says, when it says it in text.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    let text = panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str));
    text.unwrap_or("(no message)")
}

/// What a batch call returns: one result per request, or the failure of the whole call.
pub type BatchResult<R> = Result<Vec<Result<R, HandlerError>>, HandlerError>;

/// A worker's business logic for batches of requests: a bulk write or a bulk API call
/// does far more per second than one call per request. Run it as [`Batched`] with
/// `--batch-size` and `--batch-wait`; everything else stays per request (docs/delivery.md,
/// "Batches").
pub trait BatchHandler: Send + Sync + 'static {
    /// The request payload (validated against [`BatchHandler::REQUEST_SCHEMA`] first).
    type Request: DeserializeOwned + Clone + Send + Sync;
    /// The reply payload.
    type Reply: Serialize + Send;

    /// The worker's name: default queue names, fingerprints, logs.
    const NAME: &'static str;
    /// The JSON Schema (text) every request payload must satisfy.
    const REQUEST_SCHEMA: &'static str;
    /// The Protocol Buffers codec, as [`Handler::PROTOBUF`].
    const PROTOBUF: Option<Protobuf<Self::Request, Self::Reply>> = None;
    /// The handler's tables for `--inbox`, as [`Handler::INBOX_SCHEMA`].
    const INBOX_SCHEMA: &'static str = "";

    /// Handle a batch: up to `--batch-size` requests, each with its own context, one
    /// result per request in their order (a reply, a transient or a permanent error); or
    /// `Err` when the whole call failed (the database is down), which fails each request.
    /// With `--inbox` every context holds the batch's one transaction: what is written
    /// through it commits with the requests that passed, so write nothing for a request
    /// you fail (or fail the whole call, which rolls everything back).
    fn handle_batch(
        &self,
        batch: Vec<(Self::Request, Context)>,
    ) -> impl Future<Output = BatchResult<Self::Reply>> + Send;
}

/// Runs a [`BatchHandler`] as a worker: `courier::app::main(Batched(MyHandler))`. Without
/// `--batch-size` each request is a batch of one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Batched<B>(pub B);

impl<B: BatchHandler> Handler for Batched<B> {
    type Request = B::Request;
    type Reply = B::Reply;

    const NAME: &'static str = B::NAME;
    const REQUEST_SCHEMA: &'static str = B::REQUEST_SCHEMA;
    const PROTOBUF: Option<Protobuf<Self::Request, Self::Reply>> = B::PROTOBUF;
    const INBOX_SCHEMA: &'static str = B::INBOX_SCHEMA;

    async fn handle(&self, request: Self::Request, context: &Context) -> Result<Self::Reply, HandlerError> {
        let mut results = self.0.handle_batch(vec![(request, context.clone())]).await?;
        match (results.pop(), results.is_empty()) {
            (Some(result), true) => result,
            _ => Err(wrong_count(1)),
        }
    }

    fn handle_batch(
        &self,
        batch: Vec<(Self::Request, Context)>,
    ) -> impl Future<Output = BatchResult<Self::Reply>> + Send {
        self.0.handle_batch(batch)
    }
}

/// A batch call returned another number of results than it had requests: a bug of the
/// handler, which no retry fixes.
pub(crate) fn wrong_count(requests: usize) -> HandlerError {
    HandlerError::permanent(
        crate::contract::failure::code::BATCH_RESULTS_MISMATCH,
        format!("the batch handler did not return one result for each of its {requests} requests"),
    )
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
