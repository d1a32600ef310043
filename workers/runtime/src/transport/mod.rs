//! What a broker must offer the runtime: declare a topology, deliver messages that are
//! acked or nacked exactly once, and publish with the broker's confirmation.
//!
//! The traits fit both broker families: RabbitMQ acks each message; Kafka stores an
//! offset once a message and every earlier one of its partition is settled. Either way
//! the runtime settles each [`Delivery`] once, after its output is confirmed.

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod dead_letters;
mod error;
#[cfg(feature = "kafka")]
pub mod kafka;
pub(crate) mod memory;
pub(crate) mod names;
mod redact;

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::watch;

use crate::contract::headers::Headers;
pub use crate::contract::naming::{RetryTier, Topology};
pub use error::{BrokerError, Cause, PublishError, TransportError};
pub use redact::redact;

/// A message as it travels on the wire: payload bytes, string headers, optional key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// The payload, byte for byte (never re-encoded by the runtime).
    pub payload: Bytes,
    /// Headers (AMQP headers table / Kafka record headers); contract names in `contract::headers`.
    pub headers: Headers,
    /// Partitioning key (Kafka record key), byte for byte; transports without keys ignore it.
    pub key: Option<Bytes>,
}

impl Message {
    /// Payload, key and headers, in bytes.
    pub fn byte_len(&self) -> usize {
        self.payload.len() + self.key.as_ref().map_or(0, Bytes::len) + self.headers.byte_len()
    }
}

/// Where a delivery came from, for dead-letter records and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    /// The work queue or topic the message was consumed for (shared by every delivery of
    /// it): where a replay sends it.
    pub queue: Arc<str>,
    /// Where it was read, on a broker with positions (Kafka).
    pub position: Option<Position>,
}

/// A Kafka record's position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The topic it was read from: the work topic or a retry tier.
    pub topic: Arc<str>,
    /// Its partition in that topic.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
}

/// One received message and the handle that settles it.
#[derive(Debug)]
pub struct Delivery<A> {
    /// The message as received (shared with the acker where a transport redelivers it
    /// itself, as Kafka's dispatcher does).
    pub message: Arc<Message>,
    /// Where it was received from.
    pub source: Source,
    /// Whether the broker says it delivered this message before (informational).
    pub redelivered: bool,
    /// Settles the delivery; consumed by `ack`/`nack`, so settling twice cannot compile.
    pub acker: A,
}

/// Settles one delivery. Dropping an acker without settling it means "not done": the
/// broker redelivers the message (at the latest when the consumer goes away).
pub trait Acker: Send + 'static {
    /// The message is finished (its reply or dead-letter copy is confirmed).
    fn ack(self) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// The message is not finished: deliver it again.
    fn nack(self) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// The message's output is handed to the broker client, in order with earlier
    /// outputs: the next message of its ordering lane (Kafka `partition`/`key`) may start
    /// while this one waits for its confirm. Settling still waits for the confirm.
    /// Called at most once by the runtime; transports without lanes ignore it.
    fn release(&mut self) {}
    /// The delivery waits out a retry delay in the worker (`--retry-in-place`, `true`), or
    /// runs again (`false`): a transport that buffers the records of its lane may stop
    /// fetching more behind it. Transports without lanes ignore it.
    fn hold(&mut self, held: bool) {
        let _ = held;
    }
}

/// A handed-off message's confirm: resolves once the broker has confirmed or refused it.
pub type Confirm = Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send>>;

/// A broker the worker runs on.
pub trait Transport: Clone + Send + Sync + 'static {
    /// How this transport settles its deliveries.
    type Acker: Acker;

    /// Create the topology's queues/topics if missing (idempotent). A queue that exists
    /// with different settings is an error, not silently reused.
    fn declare(&self, topology: &Topology) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Start consuming the topology's work queue; at most `prefetch` unsettled deliveries
    /// are handed out. Delayed retries come back through the same subscription.
    fn subscribe(
        &self,
        topology: &Topology,
        prefetch: usize,
    ) -> impl Future<Output = Result<Subscription<Self::Acker>, TransportError>> + Send;

    /// Hand a message for a queue/topic to the broker client, after every message sent
    /// before it (the broker keeps that order); the returned [`Confirm`] resolves when
    /// the broker has confirmed it.
    fn send(&self, destination: &str, message: &Message) -> impl Future<Output = Result<Confirm, PublishError>> + Send;

    /// Publish to a queue/topic and return once the broker has confirmed it.
    fn publish(&self, destination: &str, message: &Message) -> impl Future<Output = Result<(), PublishError>> + Send {
        async move { self.send(destination, message).await?.await }
    }

    /// Why `destination` cannot be named on this broker, or `None` when it can. Checked
    /// before a request is handled, so a reply-to no broker could hold is `unroutable`
    /// at once.
    fn name_problem(&self, destination: &str) -> Option<&'static str> {
        let _ = destination;
        None
    }

    /// A failure the transport cannot recover from by itself (Kafka: the idempotent
    /// producer's fatal error, after which it refuses every message): the worker stops
    /// with it (as a [`TransportError::Broker`]), so that the process is restarted. `None`
    /// while all is well.
    fn failure(&self) -> Option<BrokerError> {
        None
    }

    /// Whether the transport is connected and consuming (readiness).
    fn is_ready(&self) -> bool {
        true
    }

    /// Messages waiting for the worker: queue depths (RabbitMQ) or consumer lag (Kafka).
    /// Called periodically; may also refresh what [`Transport::is_ready`] reports.
    fn backlog(&self, topology: &Topology) -> impl Future<Output = Vec<Backlog>> + Send {
        let _ = topology;
        async { Vec::new() }
    }
}

/// Messages waiting somewhere, for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backlog {
    /// Messages in a queue.
    Queue {
        /// The queue.
        queue: String,
        /// Messages ready in it.
        messages: u64,
    },
    /// How far a consumer is behind the end of a partition.
    Lag {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// High watermark minus the consumer's position; `None` when the broker could
        /// not be asked this time.
        lag: Option<u64>,
        /// How long the partition's oldest unfinished record has held its committed
        /// offset back (zero when none is unfinished).
        oldest_unfinished: std::time::Duration,
        /// Ordering lanes of the partition whose record retries in place, holding the
        /// records behind it.
        held_lanes: usize,
    },
}

/// A stream of deliveries, polled by the worker only when it has room for one more (so
/// a full worker leaves messages with the broker). Dropping it stops consuming;
/// unsettled deliveries return to the broker.
pub struct Subscription<A> {
    /// The transport's deliveries; ends only when consuming stopped for good.
    stream: Pin<Box<dyn Stream<Item = Delivery<A>> + Send>>,
    /// What the worker takes now; the transport follows it.
    intake: watch::Sender<Intake>,
    /// Ends once the transport is done with the deliveries taken ([`Subscription::close`]).
    done: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

/// How much a worker takes from the broker: its circuit breaker's say (`crate::breaker`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Intake {
    /// Up to the prefetch.
    #[default]
    Full,
    /// At most this many unsettled deliveries (the breaker's probes).
    Probe(u16),
    /// Nothing new: the transport stops consuming and yields only deliveries it already
    /// holds (which the worker gives back), then nothing until the intake changes. The
    /// transport stays ready: it is the worker's dependency that is down, not the broker.
    Stopped,
}

impl<A> Subscription<A> {
    /// A subscription reading `stream`, which follows the intake `wanted` receives from
    /// [`Subscription::set_intake`] (a pull-based stream may just stop yielding while stopped).
    pub fn new(stream: impl Stream<Item = Delivery<A>> + Send + 'static, intake: watch::Sender<Intake>) -> Self {
        Self { stream: Box::pin(stream), intake, done: None }
    }

    /// `done` ends once the transport is done with the deliveries taken (Kafka: their
    /// offsets are stored and the consumer is closed: last commit, group left).
    #[must_use]
    #[cfg(feature = "kafka")]
    pub(crate) fn with_done(mut self, done: impl Future<Output = ()> + Send + 'static) -> Self {
        self.done = Some(Box::pin(done));
        self
    }

    /// Stop receiving: deliveries not taken go back to the broker. The future ends once
    /// the transport is done with the deliveries taken: await it after settling them.
    pub fn close(self) -> impl Future<Output = ()> {
        let Self { stream, intake, done } = self;
        drop((stream, intake));
        async move {
            if let Some(done) = done {
                done.await;
            }
        }
    }

    /// A subscription reading a channel a transport's own task fills.
    #[cfg(feature = "kafka")]
    pub(crate) fn from_channel(
        mut receiver: tokio::sync::mpsc::Receiver<Delivery<A>>,
        intake: watch::Sender<Intake>,
    ) -> Self
    where
        A: Send + 'static,
    {
        Self::new(futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)), intake)
    }

    /// The next delivery; `None` once the transport has stopped for good.
    pub async fn next(&mut self) -> Option<Delivery<A>> {
        self.stream.next().await
    }

    /// Tell the transport how much to take from now on.
    pub(crate) fn set_intake(&self, intake: Intake) {
        self.intake.send_if_modified(|current| std::mem::replace(current, intake) != intake);
    }
}

/// The intake channel of a new subscription: the transport keeps the receiver.
pub(crate) fn intake() -> (watch::Sender<Intake>, watch::Receiver<Intake>) {
    watch::channel(Intake::Full)
}

impl<A> fmt::Debug for Subscription<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subscription")
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.position {
            Some(Position { topic, partition, offset }) => write!(f, "{topic}[{partition}]@{offset}"),
            None => f.write_str(&self.queue),
        }
    }
}
