//! RabbitMQ transport (lapin): publisher confirms with `mandatory`, manual acks, prefetch
//! that follows the worker's concurrency, and recovery from connection loss.
//!
//! One connection per transport, one confirm-mode channel shared by all publishes (each
//! publish awaits its own confirm, so many are in flight at once), one channel per
//! subscription. When the connection drops, publishes fail as a transient client failure (the
//! pipeline retries, then nacks) and subscriptions reconnect with backoff, redeclare and
//! resume; unacked deliveries come back from the broker. Dead-letter queues are read and
//! settled, for `courier dlq`, by [`AmqpDeadLetterStore`].

mod convert;
mod dead_letters;
mod prefetch;
pub mod topology;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use lapin::{
    Acker as LapinAcker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions,
    },
    types::{FieldTable, ShortString},
};
use tokio::sync::{Mutex, watch};
use tracing::{info, warn};

use super::{
    Acker, BrokerError, Confirm, Delivery, Intake, Message, PublishError, Source, Subscription, Topology, Transport,
    TransportError,
};
pub use convert::{headers, properties};
pub use dead_letters::AmqpDeadLetterStore;

use crate::{contract::naming, transport::redact};

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect backoff bounds for subscriptions.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// A RabbitMQ broker; clones share the connection.
#[derive(Clone, Debug)]
pub struct AmqpTransport {
    /// Shared by all clones.
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Broker URLs, the nodes of a cluster (may hold passwords: never logged unredacted).
    urls: Vec<String>,
    /// Which of `urls` to try first: the last that answered.
    current: std::sync::atomic::AtomicUsize,
    /// Name shown in the management UI.
    name: String,
    /// The live connection, replaced on reconnect; read on every publish (a plain
    /// read lock, never held across an await).
    session: std::sync::RwLock<Option<Arc<Session>>>,
    /// Serialises reconnects, so a dead connection is replaced once.
    reconnect: Mutex<()>,
    /// Whether every subscription is currently consuming (readiness).
    consuming: AtomicBool,
    /// Queues seen to exist or missing. lapin pins a `basic.return` on whichever confirm
    /// comes next, which under concurrent publishes may be another message's; so
    /// unroutable destinations are found by a passive declare first, and returns are only
    /// a backstop.
    known_queues: std::sync::RwLock<super::names::Known>,
}

/// One connection and its publishing channel.
#[derive(Debug)]
struct Session {
    /// The connection; its status says when to reconnect.
    connection: Connection,
    /// Confirm-mode channel for every publish.
    publisher: Channel,
    /// Held while a publish takes its confirm number and queues its frames ([`Session::publish`]).
    numbering: std::sync::Mutex<()>,
}

impl Session {
    /// Publish on the confirm channel. lapin numbers a publish for its confirm and then
    /// queues its frames, both in the first poll of `basic_publish` but not atomically: two
    /// threads publishing at once could queue their frames in the other order than they
    /// were numbered, and the broker's ack of one would be read as the other's — a nacked
    /// retry copy taken for confirmed, and its request acked and lost (seen on a RabbitMQ
    /// cluster whose retry tier refused some publishes while others were acked; the AMQP
    /// frames showed the broker's nack of the very message lapin reported acked). So that
    /// first poll runs under a lock; waiting for the frames to be written does not.
    async fn publish(
        &self,
        routing_key: ShortString,
        options: BasicPublishOptions,
        payload: &[u8],
        properties: BasicProperties,
    ) -> lapin::Result<lapin::PublisherConfirm> {
        let mut publish =
            std::pin::pin!(self.publisher.basic_publish("".into(), routing_key, options, payload, properties));
        let mut first = true;
        std::future::poll_fn(|cx| {
            if std::mem::take(&mut first) {
                let _numbering = self.numbering.lock().unwrap_or_else(|p| p.into_inner());
                publish.as_mut().poll(cx)
            } else {
                publish.as_mut().poll(cx)
            }
        })
        .await
    }

    fn alive(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

impl AmqpTransport {
    /// Connect to `url` (`amqp://` or `amqps://`), or to the first that answers of a
    /// comma-separated list of them (the nodes of a cluster; each reconnect tries them in
    /// turn from the last that answered); `name` identifies the connection in the
    /// broker's management UI.
    pub async fn connect(url: &str, name: &str) -> Result<Self, TransportError> {
        let urls: Vec<String> = url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect();
        if urls.is_empty() {
            return Err(TransportError::Unavailable("no broker URL".into()));
        }
        let transport = Self {
            shared: Arc::new(Shared {
                urls,
                current: std::sync::atomic::AtomicUsize::new(0),
                name: name.to_owned(),
                session: std::sync::RwLock::new(None),
                reconnect: Mutex::new(()),
                consuming: AtomicBool::new(false),
                known_queues: std::sync::RwLock::default(),
            }),
        };
        transport.session().await?;
        Ok(transport)
    }

    /// The current session, reconnecting once if the last one died.
    async fn session(&self) -> Result<Arc<Session>, TransportError> {
        if let Some(session) = self.live_session() {
            return Ok(session);
        }
        let _reconnecting = self.shared.reconnect.lock().await;
        // Another task may have reconnected while this one waited.
        if let Some(session) = self.live_session() {
            return Ok(session);
        }
        let session = Arc::new(self.open().await?);
        *self.shared.session.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&session));
        Ok(session)
    }

    fn live_session(&self) -> Option<Arc<Session>> {
        let current = self.shared.session.read().unwrap_or_else(|p| p.into_inner());
        current.as_ref().filter(|s| s.alive()).map(Arc::clone)
    }

    /// A session on the first URL that answers, from the last that did, in turn.
    async fn open(&self) -> Result<Session, TransportError> {
        let urls = &self.shared.urls;
        let first = self.shared.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for index in (first..urls.len()).chain(0..first) {
            match self.open_at(&urls[index]).await {
                Ok(session) => {
                    self.shared.current.store(index, Ordering::Relaxed);
                    info!(broker = %redact(&urls[index]), "Connected to RabbitMQ.");
                    return Ok(session);
                }
                Err(error) => failures.push(error),
            }
        }
        Err(every_node_failed(failures))
    }

    async fn open_at(&self, url: &str) -> Result<Session, TransportError> {
        let at = |error: TransportError| error.context(redact(url));
        let properties = ConnectionProperties::default().with_connection_name(self.shared.name.clone().into());
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties))
            .await
            .map_err(|_| at(TransportError::Unavailable("connection timed out".into())))?
            .map_err(|e| at(failed(e)))?;
        let publisher = connection.create_channel().await.map_err(|e| at(failed(e)))?;
        publisher.confirm_select(Default::default()).await.map_err(|e| at(failed(e)))?;
        Ok(Session { connection, publisher, numbering: std::sync::Mutex::new(()) })
    }

    /// Whether a queue named `name` exists (cached once seen; a missing one is asked again
    /// after a second). Another connection's exclusive queue exists: publishing to it works.
    pub async fn queue_exists(&self, name: &str) -> Result<bool, PublishError> {
        if let Some(reason) = naming::amqp_queue_problem(name) {
            return Err(PublishError::invalid_name(name, reason));
        }
        if let Some(exists) = self.shared.known_queues.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(exists);
        }
        let exists = !matches!(self.passive_declare(name).await?, Declared::Missing);
        self.shared.known_queues.write().unwrap_or_else(|p| p.into_inner()).set(name, exists);
        Ok(exists)
    }

    /// Messages ready in queue `name`, or `None` when there is no such queue, or it is
    /// another connection's exclusive queue (which cannot be asked).
    pub(crate) async fn message_count(&self, name: &str) -> Result<Option<u64>, PublishError> {
        Ok(match self.passive_declare(name).await? {
            Declared::Ready(count) => Some(count),
            Declared::Exclusive | Declared::Missing => None,
        })
    }

    /// A passive declare on a throwaway channel, since a missing queue closes the channel
    /// it was asked on.
    async fn passive_declare(&self, name: &str) -> Result<Declared, PublishError> {
        use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
        let channel = self.channel().await?;
        let options = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        let queue = ShortString::try_new(name.to_owned())
            .map_err(|_| PublishError::invalid_name(name, "longer than an AMQP short string"))?;
        match channel.queue_declare(queue, options, FieldTable::default()).await {
            Ok(declared) => {
                let _ = channel.close(200, "checked".into()).await;
                Ok(Declared::Ready(u64::from(declared.message_count())))
            }
            Err(error) => {
                let answer = match error.kind() {
                    lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
                        AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => Some(Declared::Missing),
                        AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED) => Some(Declared::Exclusive),
                        _ => None,
                    },
                    _ => None,
                };
                // Any other refusal of a passive declare is not the message's doing.
                answer.ok_or_else(|| PublishError::Transport(failed(error)))
            }
        }
    }

    /// A fresh channel on the current connection (for declarations and consumers).
    pub async fn channel(&self) -> Result<Channel, TransportError> {
        let session = self.session().await?;
        session.connection.create_channel().await.map_err(failed)
    }

    /// Open a channel with the prefetch, (re)declare the topology and start consuming. The
    /// prefetch is channel-wide (`global`) on classic queues, so it can change while the
    /// consumer runs ([`prefetch`]); quorum queues take only a consumer's own.
    async fn start_consumer(&self, topology: &Topology, prefetch: u16) -> Result<(Channel, Consumer), TransportError> {
        let channel = self.channel().await?;
        let options = BasicQosOptions { global: !topology.quorum };
        channel.basic_qos(prefetch, options).await.map_err(failed)?;
        topology::declare(&channel, topology).await?;
        let queue = ShortString::try_new(topology.queue.clone()).map_err(TransportError::broker)?;
        let consumer = channel
            .basic_consume(queue, "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(failed)?;
        info!(queue = %topology.queue, prefetch, "Consuming.");
        Ok((channel, consumer))
    }
}

/// What a passive declare found.
enum Declared {
    /// A queue with this many ready messages.
    Ready(u64),
    /// Another connection's exclusive queue (405 RESOURCE_LOCKED): it exists.
    Exclusive,
    /// No such queue (404 NOT_FOUND).
    Missing,
}

/// A subscription's state between deliveries: the live consumer, or how long to wait
/// before the next attempt to get one.
struct Consuming {
    transport: AmqpTransport,
    topology: Topology,
    /// The prefetch, following the sizes of the deliveries (classic queues); fixed at
    /// `--concurrency` on quorum queues.
    prefetch: prefetch::Prefetch,
    /// The channel and consumer, while the connection lives.
    current: Option<(Channel, Consumer)>,
    /// Wait before the next reconnect attempt (doubles up to [`RECONNECT_MAX`]).
    backoff: Duration,
    /// What the worker takes ([`Intake`]).
    wanted: watch::Receiver<Intake>,
    /// The intake the current consumer follows.
    applied: Intake,
    /// The current consumer was cancelled: it yields what it holds, then ends.
    cancelled: bool,
}

impl Consuming {
    /// The next delivery, reconnecting (with backoff) for as long as it takes.
    async fn next(&mut self) -> Delivery<AmqpAcker> {
        loop {
            let wanted = *self.wanted.borrow_and_update();
            if self.current.is_none() {
                if wanted == Intake::Stopped {
                    if self.wanted.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    continue;
                }
                match self.transport.start_consumer(&self.topology, self.limit(wanted)).await {
                    Ok(consumer) => {
                        self.current = Some(consumer);
                        self.applied = wanted;
                        self.backoff = RECONNECT_MIN;
                        self.transport.shared.consuming.store(true, Ordering::Relaxed);
                    }
                    Err(error) => {
                        self.pause(&error).await;
                        continue;
                    }
                }
            } else if wanted != self.applied && !self.cancelled {
                self.follow(wanted).await;
            }
            let Some((channel, consumer)) = self.current.as_mut() else { continue };
            let next = tokio::select! {
                next = consumer.next() => next,
                _ = self.wanted.changed(), if !self.cancelled => continue,
            };
            let error = match next {
                Some(Ok(delivery)) => {
                    if !self.topology.quorum
                        && self.applied == Intake::Full
                        && let Some(prefetch) = self.prefetch.observe(delivery.data.len())
                    {
                        let options = BasicQosOptions { global: true };
                        if let Err(error) = channel.basic_qos(prefetch, options).await {
                            warn!(%error, prefetch, "Could not change the prefetch.");
                        }
                    }
                    let message = Message {
                        payload: delivery.data.into(),
                        headers: convert::headers(&delivery.properties),
                        key: None,
                    };
                    return Delivery {
                        message: Arc::new(message),
                        source: Source { queue: self.topology.queue.as_str().into(), position: None },
                        redelivered: delivery.redelivered,
                        acker: AmqpAcker { acker: Some(delivery.acker), _channel: channel.clone() },
                    };
                }
                // Cancelled by us: what it held is handed out; start afresh as the intake says.
                None if self.cancelled => {
                    self.current = None;
                    self.cancelled = false;
                    continue;
                }
                Some(Err(error)) => failed(error),
                None => TransportError::Unavailable("the broker cancelled the consumer".into()),
            };
            // Unacked deliveries of the lost channel come back from the broker.
            self.current = None;
            self.cancelled = false;
            self.pause(&error).await;
        }
    }

    /// The prefetch for `intake`.
    fn limit(&self, intake: Intake) -> u16 {
        match intake {
            Intake::Full => self.prefetch.current(),
            Intake::Probe(probes) => probes.clamp(1, self.prefetch.current().max(1)),
            Intake::Stopped => 0,
        }
    }

    /// Make the live consumer follow a new intake. Stopped: cancel it, so the broker sends
    /// nothing more (what it already sent is handed out and given back by the worker). A
    /// new limit: a channel-wide `basic.qos` (classic queues); a quorum queue's consumer
    /// keeps the prefetch it started with, so it is cancelled and started again.
    async fn follow(&mut self, wanted: Intake) {
        let Some((channel, consumer)) = self.current.as_ref() else { return };
        let prefetch = self.limit(wanted);
        let result = if wanted == Intake::Stopped || self.topology.quorum {
            self.cancelled = true;
            channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await
        } else {
            channel.basic_qos(prefetch, BasicQosOptions { global: true }).await
        };
        self.applied = wanted;
        match result {
            Ok(()) => info!(queue = %self.topology.queue, ?wanted, "Consumer follows the circuit breaker."),
            // The channel is gone: the next turn sees the consumer end and reconnects.
            Err(error) => warn!(%error, ?wanted, "Could not change the consumer."),
        }
    }

    async fn pause(&mut self, error: &TransportError) {
        self.transport.shared.consuming.store(false, Ordering::Relaxed);
        warn!(%error, queue = %self.topology.queue, retry_in = ?self.backoff, "Consumer interrupted; reconnecting.");
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(RECONNECT_MAX);
    }
}

impl Transport for AmqpTransport {
    type Acker = AmqpAcker;

    fn name_problem(&self, destination: &str) -> Option<&'static str> {
        naming::amqp_queue_problem(destination)
    }

    /// Consuming, and the broker has not blocked the connection's publishers (a memory or
    /// disk alarm: publishes would wait until it clears).
    fn is_ready(&self) -> bool {
        self.shared.consuming.load(Ordering::Relaxed)
            && !self.live_session().is_some_and(|session| session.connection.status().blocked())
    }

    async fn backlog(&self, topology: &Topology) -> Vec<super::Backlog> {
        let mut backlog = Vec::new();
        let mut queues = vec![&topology.queue, &topology.dead_letter];
        // A reply-only topology names one queue in every role: count it once.
        queues.dedup();
        for queue in queues {
            if let Ok(Some(messages)) = self.message_count(queue).await {
                backlog.push(super::Backlog::Queue { queue: queue.clone(), messages });
            }
        }
        backlog
    }

    async fn declare(&self, topology: &Topology) -> Result<(), TransportError> {
        // A throwaway channel: a mismatch closes the channel it happened on.
        let channel = self.channel().await?;
        topology::declare(&channel, topology).await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    async fn subscribe(&self, topology: &Topology, prefetch: usize) -> Result<Subscription<AmqpAcker>, TransportError> {
        let limit = u16::try_from(prefetch).unwrap_or(u16::MAX);
        let prefetch = if topology.quorum { prefetch::Prefetch::fixed(limit) } else { prefetch::Prefetch::new(limit) };
        let (intake, wanted) = super::intake();
        let mut consuming = Consuming {
            transport: self.clone(),
            topology: topology.clone(),
            current: None,
            backoff: RECONNECT_MIN,
            prefetch,
            wanted,
            applied: Intake::Full,
            cancelled: false,
        };
        // Fail fast if the broker refuses the subscription at start-up; reconnect later.
        consuming.current = Some(self.start_consumer(topology, consuming.prefetch.current()).await?);
        self.shared.consuming.store(true, Ordering::Relaxed);
        // Dropping the stream drops the consumer, which cancels it at the broker.
        let stream = futures::stream::unfold(consuming, |mut consuming| async move {
            let delivery = consuming.next().await;
            Some((delivery, consuming))
        });
        Ok(Subscription::new(stream, intake))
    }

    async fn send(&self, destination: &str, message: &Message) -> Result<Confirm, PublishError> {
        let Ok(routing_key) = ShortString::try_new(destination.to_owned()) else {
            return Err(PublishError::invalid_name(destination, "longer than an AMQP short string"));
        };
        let size = message.payload.len() + message.headers.byte_len();
        if size > MAX_MESSAGE_BYTES {
            let reason = format!("larger than {MAX_MESSAGE_BYTES} bytes (RabbitMQ 4's default max_message_size)");
            return Err(PublishError::TooLarge { destination: destination.to_owned(), size, reason: reason.into() });
        }
        if !self.queue_exists(destination).await? {
            return Err(PublishError::Unroutable(destination.to_owned()));
        }
        let session = self.session().await?;
        let props: BasicProperties = convert::properties(message);
        let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        let confirm = session
            .publish(routing_key, options, &message.payload, props)
            .await
            .map_err(|e| publish_failure(destination, size, e))?;
        let (shared, destination, payload) =
            (Arc::clone(&self.shared), destination.to_owned(), message.payload.clone());
        Ok(Box::pin(async move {
            match confirm.await.map_err(|e| publish_failure(&destination, size, e))? {
                Confirmation::Ack(None) => Ok(()),
                Confirmation::Ack(Some(returned))
                    if returned.delivery.routing_key.as_str() == destination && returned.delivery.data == payload =>
                {
                    shared.known_queues.write().unwrap_or_else(|p| p.into_inner()).set(&destination, false);
                    Err(PublishError::Unroutable(destination))
                }
                // Another publish's return, pinned on this confirm by lapin: this one was routed.
                Confirmation::Ack(Some(_)) => Ok(()),
                Confirmation::Nack(_) => Err(PublishError::Rejected {
                    destination,
                    reason: "the broker nacked the message (queue full or unavailable)".into(),
                }),
                Confirmation::NotRequested => {
                    Err(PublishError::Unavailable("the publishing channel is not in confirm mode".to_owned()))
                }
            }
        }))
    }
}

/// Messages larger than this are refused before they are sent: RabbitMQ 4's default
/// `max_message_size` (3.x allows 128 MiB), which the broker enforces by closing the
/// publishing channel (every publish in flight on it fails).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A failed publish: the broker's "larger than configured max size" (406, which closes
/// the channel) is [`PublishError::TooLarge`]; the rest is the client's failure, which the
/// message is not at fault for.
fn publish_failure(destination: &str, size: usize, error: lapin::Error) -> PublishError {
    let too_large = match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp)
            if amqp.kind()
                == &lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::PRECONDITIONFAILED)
                && amqp.get_message().as_str().contains("max size") =>
        {
            Some(amqp.get_message().as_str().to_owned())
        }
        _ => None,
    };
    match too_large {
        Some(said) => PublishError::TooLarge {
            destination: destination.to_owned(),
            size,
            reason: BrokerError::said(said).with_source(error),
        },
        None => PublishError::Transport(failed(error)),
    }
}

/// A lapin error, classified where it is read. What reconnecting can cure (I/O, a missed
/// heartbeat, the broker closing the connection) is an outage; a channel-level refusal
/// (access refused, not found, precondition failed) answers the operation itself and
/// would answer the same again, and so would what lapin cannot recover from (a frame it
/// cannot parse or write, a runtime shutting down).
pub(crate) fn failed(error: lapin::Error) -> TransportError {
    if error.can_be_recovered() && !error.is_amqp_soft_error() {
        TransportError::unavailable(error)
    } else {
        TransportError::broker(error)
    }
}

/// One error for a connection attempt on which every node failed: each node's failure in
/// turn, the last kept as the source; an outage unless no node's failure was.
fn every_node_failed(mut failures: Vec<TransportError>) -> TransportError {
    let Some(last) = failures.pop() else { return TransportError::Unavailable("no broker URL".into()) };
    if failures.is_empty() {
        return last;
    }
    let transient = last.is_transient() || failures.iter().any(TransportError::is_transient);
    let said: Vec<String> = failures.iter().chain([&last]).map(|failure| node_failure(failure).to_string()).collect();
    let error = BrokerError::said(said.join("; ")).with_source(last);
    if transient { TransportError::Unavailable(error) } else { TransportError::Broker(error) }
}

/// What one node's failure says, without the class every node shares.
fn node_failure(failure: &TransportError) -> &dyn std::fmt::Display {
    match failure {
        TransportError::Unavailable(error) | TransportError::Broker(error) => error,
        other => other,
    }
}

/// Settles one RabbitMQ delivery on the channel it came from.
#[derive(Debug)]
pub struct AmqpAcker {
    /// lapin's acker, until used.
    acker: Option<LapinAcker>,
    /// Keeps the consumer's channel open until this delivery is settled, even after the
    /// subscription stopped (graceful shutdown acks in-flight work on it).
    _channel: Channel,
}

impl AmqpAcker {
    async fn settle(&mut self, ack: bool) -> Result<(), TransportError> {
        let Some(acker) = self.acker.take() else { return Ok(()) };
        let sent = if ack {
            acker.ack(BasicAckOptions::default()).await
        } else {
            acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await
        };
        match sent {
            Ok(true) => Ok(()),
            Ok(false) => {
                Err(TransportError::Unavailable("the channel closed; the broker will deliver the message again".into()))
            }
            Err(error) => Err(failed(error)),
        }
    }
}

impl Acker for AmqpAcker {
    async fn ack(mut self) -> Result<(), TransportError> {
        self.settle(true).await
    }

    async fn nack(mut self) -> Result<(), TransportError> {
        self.settle(false).await
    }
}

impl Drop for AmqpAcker {
    /// Unsettled on drop: requeue now rather than when the channel closes.
    fn drop(&mut self) {
        if let (Some(acker), Ok(runtime)) = (self.acker.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                let _ = acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await;
            });
        }
    }
}
