//! Kafka transport (rdkafka): one consumer group per worker, tracked at-least-once
//! offset storage, ordering by partition, key or none, delayed retry topics held
//! without blocking the poll loop, and an idempotent `acks=all` producer.
//!
//! An offset is stored only when its message and every earlier message of its partition
//! are finished ([`offsets`]); librdkafka commits stored offsets every 100 ms and on
//! close. A nacked message is handed out again by the dispatcher; its offset stays
//! unstored until it finishes, so a crash never skips it. The dispatcher ([`dispatch`])
//! reads the consumer and stores offsets; which record goes next is its [`scheduler`]'s
//! decision, without I/O. Dead-letter topics are read and settled, for `courier dlq`, by
//! [`KafkaDeadLetterStore`].
//!
//! The parts: [`config`] holds what the transport is configured with, [`connect`] starts
//! it, [`topics`] looks up and creates topics, [`publish`] produces, [`subscribe`] starts
//! the consumer and the dispatcher, [`rebalance`] follows the group, [`lag`] measures the
//! backlog, and [`error`] classifies librdkafka's errors.

pub(crate) mod api_versions;
mod config;
mod connect;
pub(crate) mod convert;
mod dead_letter_depth;
mod dead_letters;
mod dispatch;
mod error;
mod lag;
mod liveness;
mod offsets;
mod oldest;
mod publish;
mod rebalance;
mod retry_due;
mod scheduler;
mod subscribe;
mod topic_limits;
mod topics;

use std::{
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use rdkafka::{
    consumer::StreamConsumer,
    producer::{FutureProducer, Producer},
};

pub(crate) use config::client_config;
pub use config::{KafkaConfig, Ordering};
pub use convert::{record_headers, to_message};
pub use dead_letters::KafkaDeadLetterStore;
pub use dispatch::KafkaAcker;
pub(crate) use error::failed;
use rebalance::RebalanceContext;
pub(crate) use rebalance::Tracking;

use super::{BrokerError, Confirm, Message, PublishError, Subscription, Topology, Transport, TransportError};
use crate::contract::naming;

/// A Kafka cluster; clones share the producer.
#[derive(Clone)]
pub struct KafkaTransport {
    /// Shared by all clones.
    shared: Arc<Shared>,
}

/// What every clone shares: the producer, and the subscription's consumer once there is one.
struct Shared {
    /// What the transport was created with.
    config: KafkaConfig,
    /// Idempotent, `acks=all`.
    producer: FutureProducer,
    /// Topics known to exist, and recently seen missing (publishing there is reported
    /// unroutable); bounded.
    known_topics: RwLock<super::names::Known>,
    /// Held while a topic is looked up, so that a burst of publishes to a topic not yet
    /// known (every handler's first reply at start-up) asks the cluster once instead of
    /// once per message, each on a blocking thread of its own.
    lookup: tokio::sync::Mutex<()>,
    /// The subscription's consumer, once subscribed (for lag). Weak: the consumer lives
    /// while its dispatcher does, and closes (leaving its group) when the subscription is
    /// over, not when this transport goes.
    consumer: Mutex<Option<std::sync::Weak<StreamConsumer<RebalanceContext>>>>,
    /// The subscription's readiness, once subscribed.
    liveness: Mutex<Option<Arc<liveness::Liveness>>>,
    /// Set once the producer reported a fatal error (it refuses everything after it).
    fatal: std::sync::atomic::AtomicBool,
    /// Since when each partition's oldest unfinished record has been its oldest (lag).
    oldest: Mutex<oldest::Oldest>,
    /// The dead-letter topic's waiting records, once sampled.
    dead_letter_depth: Mutex<Option<dead_letter_depth::DeadLetterDepth>>,
}

impl std::fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransport").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

/// How long one question to the cluster (metadata, watermarks) may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

impl Transport for KafkaTransport {
    type Acker = KafkaAcker;

    fn name_problem(&self, destination: &str) -> Option<&'static str> {
        naming::kafka_topic_problem(destination)
    }

    /// Subscribed, assigned, and a broker up in librdkafka's latest statistics
    /// ([`liveness`]).
    fn is_ready(&self) -> bool {
        self.failure().is_none()
            && self.shared.liveness.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|l| l.ready())
    }

    fn failure(&self) -> Option<BrokerError> {
        if !self.shared.fatal.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let (code, reason) = self.shared.producer.client().fatal_error()?;
        let said = format!("the Kafka producer hit a fatal error and refuses every message: {code}: {reason}");
        Some(BrokerError::said(said).with_source(code))
    }

    /// Lag of every assigned partition, counted from its first unfinished record (records
    /// fetched and waiting in the dispatcher are lag too), or from the fetch position when
    /// none is unfinished. Once the broker does not answer, the remaining partitions' lag
    /// is unknown (each question would wait [`METADATA_TIMEOUT`]). And the dead-letter
    /// topic's records not yet replayed, parked or purged ([`dead_letter_depth`]).
    async fn backlog(&self, topology: &Topology) -> Vec<super::Backlog> {
        let mut backlog = self.lag().await;
        backlog.extend(self.dead_letter_backlog(topology).await);
        backlog
    }

    async fn declare(&self, topology: &Topology) -> Result<(), TransportError> {
        self.declare_topics(topology).await
    }

    async fn subscribe(
        &self,
        topology: &Topology,
        prefetch: usize,
    ) -> Result<Subscription<KafkaAcker>, TransportError> {
        self.consume(topology, prefetch)
    }

    /// Enqueues in the producer ([`KafkaTransport::produce`]).
    async fn send(&self, destination: &str, message: &Message) -> Result<Confirm, PublishError> {
        self.produce(destination, message).await
    }
}
