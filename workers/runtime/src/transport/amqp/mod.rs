//! RabbitMQ transport (lapin): publisher confirms with `mandatory`, manual acks, prefetch
//! that follows the worker's concurrency, and recovery from connection loss.
//!
//! One connection per transport, one confirm-mode channel shared by all publishes (each
//! publish awaits its own confirm, so many are in flight at once), one channel per
//! subscription. When the connection drops, publishes fail as `Unavailable` (the
//! pipeline retries, then nacks) and subscriptions reconnect with backoff, redeclare and
//! resume; unacked deliveries come back from the broker.

mod convert;
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
    Acker as LapinAcker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions},
    types::{FieldTable, ShortString},
};
use tokio::sync::{Mutex, mpsc};
use tracing::{info, warn};

use super::{Acker, Delivery, Message, PublishError, Source, Subscription, Topology, Transport, TransportError};
pub use convert::headers;

use crate::config::redact;

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
    /// Broker URL (may hold a password: never logged unredacted).
    url: String,
    /// Name shown in the management UI.
    name: String,
    /// The live connection, replaced on reconnect. The lock also serialises reconnects.
    session: Mutex<Option<Arc<Session>>>,
    /// Whether every subscription is currently consuming (readiness).
    consuming: AtomicBool,
}

/// One connection and its publishing channel.
#[derive(Debug)]
struct Session {
    /// The connection; its status says when to reconnect.
    connection: Connection,
    /// Confirm-mode channel for every publish.
    publisher: Channel,
}

impl Session {
    fn alive(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

impl AmqpTransport {
    /// Connect to `url` (`amqp://` or `amqps://`); `name` identifies the connection in
    /// the broker's management UI.
    pub async fn connect(url: &str, name: &str) -> Result<Self, TransportError> {
        let transport = Self {
            shared: Arc::new(Shared {
                url: url.to_owned(),
                name: name.to_owned(),
                session: Mutex::new(None),
                consuming: AtomicBool::new(false),
            }),
        };
        transport.session().await?;
        info!(broker = %redact(url), "Connected to RabbitMQ.");
        Ok(transport)
    }

    /// Whether the transport is connected and its subscriptions are consuming.
    pub fn is_ready(&self) -> bool {
        self.shared.consuming.load(Ordering::Relaxed)
    }

    /// The current session, reconnecting once if the last one died.
    async fn session(&self) -> Result<Arc<Session>, TransportError> {
        let mut current = self.shared.session.lock().await;
        if let Some(session) = current.as_ref().filter(|s| s.alive()) {
            return Ok(Arc::clone(session));
        }
        *current = None;
        let session = Arc::new(self.open().await?);
        *current = Some(Arc::clone(&session));
        Ok(session)
    }

    async fn open(&self) -> Result<Session, TransportError> {
        let unavailable =
            |e: &dyn std::fmt::Display| TransportError::Unavailable(format!("{}: {e}", redact(&self.shared.url)));
        let properties = ConnectionProperties::default().with_connection_name(self.shared.name.clone().into());
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&self.shared.url, properties))
            .await
            .map_err(|_| unavailable(&"connection timed out"))?
            .map_err(|e| unavailable(&e))?;
        let publisher = connection.create_channel().await.map_err(|e| unavailable(&e))?;
        publisher.confirm_select(Default::default()).await.map_err(|e| unavailable(&e))?;
        Ok(Session { connection, publisher })
    }

    /// A fresh channel on the current connection (for declarations and consumers).
    pub async fn channel(&self) -> Result<Channel, TransportError> {
        let session = self.session().await?;
        session.connection.create_channel().await.map_err(|e| TransportError::Unavailable(e.to_string()))
    }

    /// Consume `queue` until the receiver is dropped, reconnecting as needed.
    async fn consume_forever(self, topology: Topology, prefetch: u16, sender: mpsc::Sender<Delivery<AmqpAcker>>) {
        let mut backoff = RECONNECT_MIN;
        while !sender.is_closed() {
            match self.consume_once(&topology, prefetch, &sender).await {
                Ok(()) => return,
                Err(error) => {
                    self.shared.consuming.store(false, Ordering::Relaxed);
                    warn!(%error, queue = %topology.queue, retry_in = ?backoff, "Consumer interrupted; reconnecting.");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = sender.closed() => return,
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        }
    }

    /// One consumer lifetime: Ok when the receiver went away, Err when the broker did.
    async fn consume_once(
        &self,
        topology: &Topology,
        prefetch: u16,
        sender: &mpsc::Sender<Delivery<AmqpAcker>>,
    ) -> Result<(), TransportError> {
        let channel = self.channel().await?;
        let broker = |e: lapin::Error| TransportError::Unavailable(e.to_string());
        channel.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(broker)?;
        topology::declare(&channel, topology).await?;
        let queue = ShortString::try_new(topology.queue.clone()).map_err(|e| TransportError::Broker(e.to_string()))?;
        let mut consumer = channel
            .basic_consume(queue, "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(broker)?;
        self.shared.consuming.store(true, Ordering::Relaxed);
        info!(queue = %topology.queue, prefetch, "Consuming.");
        loop {
            let item = tokio::select! {
                item = consumer.next() => item,
                () = sender.closed() => {
                    // Stop receiving; the channel stays open until in-flight deliveries are settled.
                    let _ = channel.basic_cancel(consumer.tag(), Default::default()).await;
                    return Ok(());
                }
            };
            let delivery = match item {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => return Err(broker(error)),
                None => return Err(TransportError::Unavailable("the broker cancelled the consumer".into())),
            };
            let message =
                Message { payload: delivery.data.into(), headers: convert::headers(&delivery.properties), key: None };
            let delivery = Delivery {
                message,
                source: Source { queue: topology.queue.clone(), partition: None, offset: None },
                redelivered: delivery.redelivered,
                acker: AmqpAcker { acker: Some(delivery.acker), _channel: channel.clone() },
            };
            if sender.send(delivery).await.is_err() {
                let _ = channel.basic_cancel(consumer.tag(), Default::default()).await;
                return Ok(());
            }
        }
    }
}

impl Transport for AmqpTransport {
    type Acker = AmqpAcker;

    async fn declare(&self, topology: &Topology) -> Result<(), TransportError> {
        // A throwaway channel: a mismatch closes the channel it happened on.
        let channel = self.channel().await?;
        topology::declare(&channel, topology).await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    async fn subscribe(&self, topology: &Topology, prefetch: usize) -> Result<Subscription<AmqpAcker>, TransportError> {
        let (sender, receiver) = mpsc::channel(1);
        let prefetch = u16::try_from(prefetch).unwrap_or(u16::MAX);
        tokio::spawn(self.clone().consume_forever(topology.clone(), prefetch, sender));
        Ok(Subscription::new(receiver))
    }

    async fn publish(&self, destination: &str, message: Message) -> Result<(), PublishError> {
        let Ok(routing_key) = ShortString::try_new(destination.to_owned()) else {
            return Err(PublishError::Unroutable(destination.to_owned()));
        };
        let unavailable = |e: &dyn std::fmt::Display| PublishError::Unavailable(e.to_string());
        let session = self.session().await.map_err(|e| unavailable(&e))?;
        let props: BasicProperties = convert::properties(&message);
        let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        let confirm = session
            .publisher
            .basic_publish("".into(), routing_key, options, &message.payload, props)
            .await
            .map_err(|e| unavailable(&e))?
            .await
            .map_err(|e| unavailable(&e))?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(PublishError::Unroutable(destination.to_owned())),
            Confirmation::Nack(_) => Err(PublishError::Rejected {
                destination: destination.to_owned(),
                reason: "the broker nacked the message (queue full or unavailable)".into(),
            }),
            Confirmation::NotRequested => Err(unavailable(&"the publishing channel is not in confirm mode")),
        }
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
            Err(error) => Err(TransportError::Unavailable(error.to_string())),
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
