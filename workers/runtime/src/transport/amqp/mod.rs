//! RabbitMQ transport (lapin): publisher confirms with `mandatory`, manual acks, prefetch
//! that follows the worker's concurrency, and recovery from connection loss.
//!
//! One connection per transport, one confirm-mode channel shared by all publishes (each
//! publish awaits its own confirm, so many are in flight at once), one channel per
//! subscription. When the connection drops, publishes fail as a transient client failure (the
//! pipeline retries, then nacks) and subscriptions reconnect with backoff, redeclare and
//! resume; unacked deliveries come back from the broker. Dead-letter queues are read and
//! settled, for `courier dlq`, by [`AmqpDeadLetterStore`].
//!
//! The parts: [`session`] connects and keeps one session alive, [`consume`] keeps a
//! consumer going, [`acker`] settles its deliveries, [`publish`] publishes with confirms,
//! [`queues`] asks the broker about a queue, [`topology`] declares them, and [`error`]
//! classifies lapin's errors.

mod acker;
mod consume;
mod convert;
mod dead_letters;
mod error;
mod prefetch;
mod publish;
mod queues;
mod session;
pub mod topology;

use std::sync::{Arc, atomic::AtomicBool};

use tokio::sync::Mutex;

use super::{Confirm, Message, PublishError, Subscription, Topology, Transport, TransportError};
pub use acker::AmqpAcker;
pub use convert::{headers, properties};
pub use dead_letters::AmqpDeadLetterStore;
pub(crate) use error::failed;
pub use publish::MAX_MESSAGE_BYTES;
use session::Session;

use crate::contract::naming;

/// A RabbitMQ broker; clones share the connection.
#[derive(Clone, Debug)]
pub struct AmqpTransport {
    /// Shared by all clones.
    shared: Arc<Shared>,
}

/// What every clone shares: the connection and what the transport has learnt of the broker.
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

impl Transport for AmqpTransport {
    type Acker = AmqpAcker;

    fn name_problem(&self, destination: &str) -> Option<&'static str> {
        naming::amqp_queue_problem(destination)
    }

    /// Consuming, and the broker has not blocked the connection's publishers (a memory or
    /// disk alarm: publishes would wait until it clears).
    fn is_ready(&self) -> bool {
        self.shared.consuming.load(std::sync::atomic::Ordering::Relaxed)
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
        self.consume(topology, prefetch).await
    }

    async fn send(&self, destination: &str, message: &Message) -> Result<Confirm, PublishError> {
        self.send_confirmed(destination, message).await
    }
}
