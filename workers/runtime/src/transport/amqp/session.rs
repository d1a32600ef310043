//! The connection: one session (a connection and its confirm-mode publishing channel) at
//! a time, replaced once when it dies, opened on the nodes of a cluster in turn.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, options::BasicPublishOptions, types::ShortString,
};
use tokio::sync::Mutex;
use tracing::info;

use super::{AmqpTransport, Shared, failed};
use crate::transport::{BrokerError, TransportError, redact};

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One connection and its publishing channel.
#[derive(Debug)]
pub(super) struct Session {
    /// The connection; its status says when to reconnect.
    pub(super) connection: Connection,
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
    pub(super) async fn publish(
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

    /// Whether the connection and the publishing channel are both still up.
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
                current: AtomicUsize::new(0),
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
    pub(super) async fn session(&self) -> Result<Arc<Session>, TransportError> {
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

    /// The current session, if it is still alive.
    pub(super) fn live_session(&self) -> Option<Arc<Session>> {
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

    /// A session on one node: connect, open the publishing channel, put it in confirm mode.
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

    /// A fresh channel on the current connection (for declarations and consumers).
    pub async fn channel(&self) -> Result<Channel, TransportError> {
        let session = self.session().await?;
        session.connection.create_channel().await.map_err(failed)
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
