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

pub(crate) mod api_versions;
pub(crate) mod convert;
mod dead_letters;
mod dispatch;
mod liveness;
mod offsets;
mod retry_due;
mod scheduler;
mod topic_limits;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use rdkafka::{
    ClientConfig, ClientContext,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    producer::{FutureProducer, FutureRecord, Producer},
};
use tracing::{info, warn};

pub use convert::{record_headers, to_message};
pub use dead_letters::KafkaDeadLetterStore;
pub use dispatch::KafkaAcker;

use super::{BrokerError, Confirm, Message, PublishError, Subscription, Topology, Transport, TransportError};
use crate::contract::naming;

/// How messages of one partition may run concurrently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ordering {
    /// One message at a time per partition (Kafka's classic guarantee).
    #[default]
    Partition,
    /// Messages with the same key in order; different keys of a partition concurrently.
    Key,
    /// No ordering: every message as soon as there is room.
    None,
}

impl std::str::FromStr for Ordering {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "partition" => Ok(Self::Partition),
            "key" => Ok(Self::Key),
            "none" => Ok(Self::None),
            _ => Err(format!("{s:?} is not an ordering: use partition, key or none")),
        }
    }
}

/// Everything the Kafka transport needs to connect.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// `host:port[,host:port]`.
    pub bootstrap: String,
    /// Consumer group id (one per worker).
    pub group: String,
    /// Concurrency within a partition.
    pub ordering: Ordering,
    /// Partitions of topics this transport creates.
    pub partitions: i32,
    /// Replication factor of topics this transport creates.
    pub replication: i32,
    /// The producer's `message.max.bytes`: payload, key and headers of the largest
    /// record the worker writes (derived from `--max-payload-bytes`, with room for the
    /// headers of a dead-letter copy).
    pub max_message_bytes: usize,
    /// Bytes each buffer ahead of or behind the worker may hold: librdkafka's fetched
    /// records, the dispatcher's records waiting to be handed out, and the producer's queue
    /// (never below two of the largest records). `--max-in-flight-bytes`.
    pub buffer_bytes: usize,
    /// librdkafka properties passed through (`security.protocol`, `sasl.mechanisms`,
    /// `fetch.wait.max.ms`, …); they override ours.
    pub properties: Vec<(String, String)>,
}

impl KafkaConfig {
    /// Room above `--max-payload-bytes` for the key and the headers of a dead-letter copy.
    pub const HEADER_ROOM: usize = 64 * 1024;

    /// The producer limit for a worker that accepts payloads up to `max_payload_bytes`:
    /// never below librdkafka's own default (1,000,000).
    pub fn max_message_bytes_for(max_payload_bytes: usize) -> usize {
        max_payload_bytes.saturating_add(Self::HEADER_ROOM).clamp(1_000_000, 1_000_000_000)
    }

    /// librdkafka's size properties for a buffer of `bytes`, in KiB (1 KiB up to its
    /// maximum, 2,097,151).
    fn kbytes(bytes: usize) -> String {
        (bytes / 1024).clamp(1, 2_097_151).to_string()
    }

    /// The producer's queue: the buffer, or two of the largest records when that is more.
    fn producer_queue_kbytes(&self) -> String {
        Self::kbytes(self.buffer_bytes.max(2 * self.max_message_bytes))
    }

    /// What the consumer fetches ahead (`queued.max.messages.kbytes`): the buffer. librdkafka
    /// keeps each fetch (`fetch.max.bytes`, 50 MB) below it and above one record.
    fn fetched_kbytes(&self) -> String {
        Self::kbytes(self.buffer_bytes)
    }
}

/// A Kafka cluster; clones share the producer.
#[derive(Clone)]
pub struct KafkaTransport {
    shared: Arc<Shared>,
}

struct Shared {
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
}

impl std::fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransport").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// The consumer group session timeout (librdkafka's default is 45 s).
const SESSION_TIMEOUT_MS: &str = "30000";
/// How partitions move between members: `range`, eager (every member gives up all its
/// partitions in each rebalance), so each member gets its share of every topic it reads.
/// Not `cooperative-sticky`: it moves only the partitions that change owner, but it
/// balances the count of partitions over all the topics a member reads (the work topic
/// and its retry tiers), so a member can end up with retry partitions only and no work.
/// Not static membership (`group.instance.id`): a static member does not leave its group
/// on close, so its partitions wait for the session timeout unless the same instance id
/// comes back, and a Deployment's pods come back under new names. docs/delivery.md
/// ("Kafka: rebalances and rolling restarts") has the measurements.
const ASSIGNMENT_STRATEGY: &str = "range";
/// Consumer properties of the classic group protocol only, left out under KIP-848's.
const CLASSIC_PROTOCOL_ONLY: [&str; 3] =
    ["session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy"];
/// librdkafka's longest wait between reconnect attempts (default 10 s): a broker back
/// up is found within about a second.
const RECONNECT_BACKOFF_MAX_MS: &str = "1000";
/// How long topic creation may take before start-up (or `courier topology declare`) fails.
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);

impl KafkaTransport {
    /// Create the producer and check that the cluster answers.
    pub async fn connect(config: KafkaConfig) -> Result<Self, TransportError> {
        let max_message_bytes = config.max_message_bytes.to_string();
        let producer_queue = config.producer_queue_kbytes();
        let producer: FutureProducer = client_config(
            &config,
            &[
                ("message.max.bytes", &max_message_bytes),
                ("queue.buffering.max.kbytes", &producer_queue),
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("allow.auto.create.topics", "false"),
                ("message.timeout.ms", "30000"),
                ("linger.ms", "1"),
                ("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS),
            ],
        )
        .create()
        .map_err(failed)?;
        let transport = Self {
            shared: Arc::new(Shared {
                config,
                producer,
                known_topics: RwLock::default(),
                lookup: tokio::sync::Mutex::new(()),
                consumer: Mutex::new(None),
                liveness: Mutex::new(None),
                fatal: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        let producer = transport.shared.producer.clone();
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, METADATA_TIMEOUT))
            .await
            .map_err(TransportError::broker)?
            .map_err(|e| failed(e).context(transport.shared.config.bootstrap.clone()))?;
        info!(bootstrap = %transport.shared.config.bootstrap, "Connected to Kafka.");
        Ok(transport)
    }

    /// The configuration this transport was created with.
    pub fn config(&self) -> &KafkaConfig {
        &self.shared.config
    }

    /// Whether `topic` exists (cached once seen; a missing one is asked again after a second).
    pub(crate) async fn topic_exists(&self, topic: &str) -> Result<bool, PublishError> {
        match self.known_topic(topic) {
            Some(exists) => Ok(exists),
            // Boxed: the broker is asked once per topic, and this future is part of every send's.
            None => Box::pin(self.look_up_topic(topic)).await,
        }
    }

    /// What the cache says of `topic` (only names that passed the check below are in it).
    fn known_topic(&self, topic: &str) -> Option<bool> {
        self.shared.known_topics.read().unwrap_or_else(|p| p.into_inner()).get(topic)
    }

    /// Ask the broker whether `topic` exists, and remember.
    async fn look_up_topic(&self, topic: &str) -> Result<bool, PublishError> {
        let known = || self.known_topic(topic);
        if let Some(reason) = naming::kafka_topic_problem(topic) {
            return Err(PublishError::invalid_name(topic, reason));
        }
        let _lookup = self.shared.lookup.lock().await;
        if let Some(exists) = known() {
            return Ok(exists);
        }
        let producer = self.shared.producer.clone();
        let name = topic.to_owned();
        let metadata =
            tokio::task::spawn_blocking(move || producer.client().fetch_metadata(Some(&name), METADATA_TIMEOUT))
                .await
                .map_err(TransportError::broker)?
                .map_err(failed)?;
        let exists =
            metadata.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        self.shared.known_topics.write().unwrap_or_else(|p| p.into_inner()).set(topic, exists);
        Ok(exists)
    }

    /// Partition counts of the topics that exist among `names`.
    pub async fn partition_counts(&self, names: &[&str]) -> Result<HashMap<String, usize>, TransportError> {
        let producer = self.shared.producer.clone();
        let metadata = tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, METADATA_TIMEOUT))
            .await
            .map_err(TransportError::broker)?
            .map_err(failed)?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && names.contains(&t.name()))
            .map(|t| (t.name().to_owned(), t.partitions().len()))
            .collect())
    }

    /// Create those of `names` that do not exist yet, with the configured partitions and
    /// replication.
    pub async fn create_topics(&self, names: &[&str]) -> Result<(), TransportError> {
        self.create_topics_with(names, &[]).await
    }

    /// [`Self::create_topics`] with topic configuration (`cleanup.policy=compact`, …).
    pub async fn create_topics_with(&self, names: &[&str], config: &[(&str, &str)]) -> Result<(), TransportError> {
        let existing = self.partition_counts(names).await?;
        let mut names: Vec<&str> = names.iter().copied().filter(|n| !existing.contains_key(*n)).collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> =
            client_config(&self.shared.config, &[]).create().map_err(failed)?;
        let (partitions, replication) = (self.shared.config.partitions, self.shared.config.replication);
        let topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|n| {
                config
                    .iter()
                    .fold(NewTopic::new(n, partitions, TopicReplication::Fixed(replication)), |topic, (k, v)| {
                        topic.set(k, v)
                    })
            })
            .collect();
        let options =
            AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT)).request_timeout(Some(CREATE_TIMEOUT));
        // librdkafka's own request timeout is not always kept (seen: a broker that never
        // answers CreateTopics held the call for over a minute): a bound of our own too.
        let no_answer = || {
            TransportError::Unavailable(BrokerError::said(format!(
                "the broker did not answer CreateTopics for {} within {CREATE_TIMEOUT:?}: create the topics ahead \
                 of time (with the broker's own tools) and check the broker",
                names.join(", ")
            )))
        };
        let results =
            tokio::time::timeout(CREATE_TIMEOUT + Duration::from_secs(1), admin.create_topics(&topics, &options))
                .await
                .map_err(|_| no_answer())?
                .map_err(|e| match e {
                    KafkaError::AdminOp(RDKafkaErrorCode::OperationTimedOut | RDKafkaErrorCode::RequestTimedOut) => {
                        no_answer()
                    }
                    e => failed(e),
                })?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(TransportError::broker(code).context(format!("creating topic {topic}")));
                }
            }
        }
        Ok(())
    }
}

/// A librdkafka client configuration: the bootstrap servers, `defaults`, then the
/// `--kafka-property` pass-through properties (which win).
pub(crate) fn client_config(config: &KafkaConfig, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.bootstrap);
    for (key, value) in defaults {
        client.set(*key, *value);
    }
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
}

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
    /// is unknown (each question would wait [`METADATA_TIMEOUT`]).
    async fn backlog(&self, _: &Topology) -> Vec<super::Backlog> {
        let consumer = self.shared.consumer.lock().unwrap_or_else(|p| p.into_inner()).clone();
        tokio::task::spawn_blocking(move || {
            // A handle for one broker call at a time, and none once the consumer is closing:
            // its close waits until it holds the last one (`dispatch::close`).
            let handle = || {
                consumer
                    .as_ref()
                    .and_then(std::sync::Weak::upgrade)
                    .filter(|c| !c.context().closing.load(std::sync::atomic::Ordering::Acquire))
            };
            let Some(Ok(positions)) = handle().map(|c| c.position()) else { return Vec::new() };
            let mut answering = true;
            let lag = |consumer: &StreamConsumer<RebalanceContext>,
                       element: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>| {
                let (low, high) =
                    consumer.fetch_watermarks(element.topic(), element.partition(), METADATA_TIMEOUT).ok()?;
                let unfinished = {
                    let tracking = consumer.context().tracking.lock().unwrap_or_else(|p| p.into_inner());
                    let key = (Arc::from(element.topic()), element.partition());
                    tracking.partitions.get(&key).and_then(|(_, offsets)| offsets.first_unfinished())
                };
                let fetched = element.offset().to_raw().filter(|offset| *offset >= 0);
                let position = unfinished.or(fetched).unwrap_or(low);
                Some(u64::try_from(high - position).unwrap_or(0))
            };
            let mut backlog = Vec::new();
            for element in positions.elements() {
                let lag = match handle() {
                    Some(consumer) if answering => lag(&consumer, &element),
                    _ => None,
                };
                answering &= lag.is_some();
                backlog.push(super::Backlog::Lag {
                    topic: element.topic().to_owned(),
                    partition: element.partition(),
                    lag,
                });
            }
            backlog
        })
        .await
        .unwrap_or_default()
    }

    async fn declare(&self, topology: &Topology) -> Result<(), TransportError> {
        let mut names = vec![topology.queue.as_str(), &topology.dead_letter, &topology.parking, &topology.replies];
        names.extend(topology.retry_tiers.iter().map(|t| t.name.as_str()));
        self.create_topics(&names).await?;
        // Dead letters keep their source partition count, so per-partition order survives.
        let counts = self.partition_counts(&names).await?;
        let source = counts.get(&topology.queue).copied().unwrap_or_default();
        for name in [&topology.dead_letter, &topology.parking] {
            let count = counts.get(name).copied().unwrap_or_default();
            if count < source {
                return Err(TransportError::TopologyMismatch(format!(
                    "topic {name} has {count} partitions, fewer than its source {} ({source})",
                    topology.queue
                )));
            }
        }
        topic_limits::check(&self.shared.config, topology).await;
        Ok(())
    }

    async fn subscribe(
        &self,
        topology: &Topology,
        prefetch: usize,
    ) -> Result<Subscription<KafkaAcker>, TransportError> {
        let context = RebalanceContext::default();
        let tracking = Arc::clone(&context.tracking);
        let liveness = Arc::clone(&context.liveness);
        let fetched = self.shared.config.fetched_kbytes();
        let per_partition = prefetched_per_partition(prefetch).to_string();
        let mut defaults = vec![
            ("queued.max.messages.kbytes", fetched.as_str()),
            ("queued.min.messages", per_partition.as_str()),
            ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
            ("group.id", self.shared.config.group.as_str()),
            ("enable.auto.commit", "true"),
            // A crash repeats what was answered since the last commit: at most ~100 ms
            // of throughput beyond the outputs in flight, for 10 small commit requests a
            // second per member.
            ("auto.commit.interval.ms", "100"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            // Long enough that a broker outage shorter than this keeps the member in its
            // group (ready again within a second of the broker's return instead of
            // rejoining, which costs the broker's initial rebalance delay, 3 s); short
            // enough that a crashed member's partitions move on within half a minute.
            ("session.timeout.ms", SESSION_TIMEOUT_MS),
            ("heartbeat.interval.ms", "1000"),
            ("partition.assignment.strategy", ASSIGNMENT_STRATEGY),
            ("statistics.interval.ms", liveness::STATS_INTERVAL_MS),
            ("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS),
        ];
        // The broker-driven protocol of KIP-848 (`--kafka-property group.protocol=consumer`,
        // Kafka 4.0 and later) sets these on the broker; librdkafka refuses them with it.
        if self.shared.config.properties.iter().any(|(key, value)| key == "group.protocol" && value == "consumer") {
            defaults.retain(|(key, _)| !CLASSIC_PROTOCOL_ONLY.contains(key));
        }
        let consumer: StreamConsumer<RebalanceContext> =
            client_config(&self.shared.config, &defaults).create_with_context(context).map_err(failed)?;
        let mut topics = vec![topology.queue.as_str()];
        topics.extend(topology.retry_tiers.iter().map(|t| t.name.as_str()));
        consumer.subscribe(&topics).map_err(failed)?;
        info!(topics = ?topics, group = %self.shared.config.group, ordering = ?self.shared.config.ordering, "Consuming.");
        let consumer = Arc::new(consumer);
        *self.shared.consumer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::downgrade(&consumer));
        *self.shared.liveness.lock().unwrap_or_else(|p| p.into_inner()) = Some(liveness);
        let config = &self.shared.config;
        Ok(dispatch::start(consumer, tracking, topology, config.ordering, prefetch, config.buffer_bytes))
    }

    /// Enqueues in the producer (idempotent: it keeps the order per partition, retries
    /// included); waits while its queue is full, up to [`ENQUEUE_TIMEOUT`].
    async fn send(&self, destination: &str, message: &Message) -> Result<Confirm, PublishError> {
        if !self.topic_exists(destination).await? {
            return Err(PublishError::Unroutable(destination.to_owned()));
        }
        let size = message.byte_len();
        let mut record = FutureRecord::to(destination)
            .payload(&message.payload[..])
            .headers(convert::record_headers(&message.headers));
        if let Some(key) = &message.key {
            record = record.key(&key[..]);
        }
        let full_since = std::time::Instant::now();
        let delivery = loop {
            match self.shared.producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                    if full_since.elapsed() < ENQUEUE_TIMEOUT =>
                {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err((error, _)) => return Err(self.publish_error(destination, size, error)),
            }
        };
        let (transport, destination) = (self.clone(), destination.to_owned());
        Ok(Box::pin(async move {
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _))) => Err(transport.publish_error(&destination, size, error)),
                Err(_) => Err(PublishError::Unavailable("the producer dropped the message".into())),
            }
        }))
    }
}

/// What librdkafka fetches ahead per partition (`queued.min.messages`): the worker's
/// prefetch (`--concurrency`), at least 1,000. librdkafka's default, 100,000 per
/// partition, had a no-op worker hold a whole backlog twice (fetched, and in the
/// dispatcher's buffer): 90–118 MiB against 57–78 MiB with this bound, at the same
/// throughput. With 100, `--ordering partition` answered at half its peak rate after
/// 1.1 s instead of 24 ms (its partitions were fetched too late).
fn prefetched_per_partition(prefetch: usize) -> usize {
    prefetch.clamp(1_000, 100_000)
}

/// How soon librdkafka fetches again for a partition whose fetched records are above
/// [`prefetched_per_partition`] (librdkafka waits 1 s by default: with a small bound, a
/// partition then starved, 2,000 msg/s instead of 100,000).
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// How long [`KafkaTransport::send`] waits while the producer's queue is full.
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(5);

impl KafkaTransport {
    /// Our error for a failed produce, classified by what a retry can do about it.
    fn publish_error(&self, destination: &str, size: usize, error: KafkaError) -> PublishError {
        use RDKafkaErrorCode as Code;
        if self.shared.producer.client().fatal_error().is_some() {
            self.shared.fatal.store(true, std::sync::atomic::Ordering::Relaxed);
            return PublishError::Transport(TransportError::broker(error).context("the producer hit a fatal error"));
        }
        let KafkaError::MessageProduction(code) = error else {
            return PublishError::Transport(failed(error));
        };
        match code {
            Code::UnknownTopicOrPartition | Code::UnknownTopic => {
                self.shared.known_topics.write().unwrap_or_else(|p| p.into_inner()).set(destination, false);
                PublishError::Unroutable(destination.to_owned())
            }
            Code::MessageSizeTooLarge | Code::InvalidMessageSize => {
                PublishError::TooLarge { destination: destination.to_owned(), size, reason: BrokerError::client(code) }
            }
            Code::InvalidTopic => PublishError::invalid_name(destination, "the broker says the topic name is invalid"),
            // librdkafka already retried these for `message.timeout.ms`: the cluster is unwell.
            Code::MessageTimedOut
            | Code::QueueFull
            | Code::RequestTimedOut
            | Code::AllBrokersDown
            | Code::BrokerTransportFailure
            | Code::LeaderNotAvailable
            | Code::NotLeaderForPartition
            | Code::NotEnoughReplicas
            | Code::NotEnoughReplicasAfterAppend
            | Code::NetworkException => PublishError::Transport(TransportError::unavailable(code)),
            code => PublishError::Rejected { destination: destination.to_owned(), reason: BrokerError::client(code) },
        }
    }
}

/// A librdkafka error, classified where it is read. What the client cannot go on from (a
/// fatal error, a configuration or client it refuses) and what the cluster will refuse
/// again (authentication, authorisation) is not an outage; the rest is.
pub(crate) fn failed(error: KafkaError) -> TransportError {
    use RDKafkaErrorCode as Code;
    let lasting = match &error {
        KafkaError::ClientConfig(..)
        | KafkaError::ClientCreation(_)
        | KafkaError::AdminOpCreation(_)
        | KafkaError::Nul(_)
        | KafkaError::MessageConsumptionFatal(_) => true,
        KafkaError::Transaction(error) => error.is_fatal(),
        _ => matches!(
            error.rdkafka_error_code(),
            Some(
                Code::Fatal
                    | Code::InvalidArgument
                    | Code::Authentication
                    | Code::SaslAuthenticationFailed
                    | Code::TopicAuthorizationFailed
                    | Code::GroupAuthorizationFailed
                    | Code::ClusterAuthorizationFailed
                    | Code::TransactionalIdAuthorizationFailed
            )
        ),
    };
    if lasting { TransportError::broker(error) } else { TransportError::unavailable(error) }
}

/// Per-partition offset tracking, owned by the dispatcher's task: its loop, the rebalance
/// callbacks (served inside its `recv`) and, every few seconds, the lag sampler lock it;
/// ackers only send the dispatcher their record. Each assignment of a partition gets a new
/// epoch, so work from before a revocation never stores offsets for the new assignment.
/// Hashed with foldhash: std's SipHash of the topic name was most of each lookup's cost.
#[derive(Debug, Default)]
pub(crate) struct Tracking {
    /// (topic, partition) → (epoch, offsets in flight).
    pub(crate) partitions: foldhash::HashMap<(Arc<str>, i32), (u64, offsets::PartitionOffsets)>,
    /// Last epoch handed out.
    pub(crate) epoch: u64,
}

/// Consumer callbacks: on revocation, forget the revoked partitions' in-flight work
/// (the new owner redoes it) and commit what is finished. With the cooperative protocol
/// both callbacks carry only the partitions that move (an assignment may be empty): the
/// partitions kept keep their epoch and their offsets in flight.
#[derive(Default)]
struct RebalanceContext {
    tracking: Arc<Mutex<Tracking>>,
    /// Assignment and broker state, for readiness.
    liveness: Arc<liveness::Liveness>,
    /// Set when the dispatcher starts closing the consumer: the lag sampler then takes no
    /// more handles of it, so the close waits for one broker call of the sampler at most.
    closing: std::sync::atomic::AtomicBool,
}

impl ClientContext for RebalanceContext {
    fn stats_raw(&self, statistics: &[u8]) {
        self.liveness.statistics(statistics);
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            let lost = consumer.assignment_lost();
            // Eager: every partition goes and the member rejoins, unready until assigned
            // again. Cooperative: only the moving partitions go; the member stays in its
            // group with the rest, ready, unless it was dropped from the group.
            if lost || !matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative) {
                self.liveness.set_assigned(false);
            }
            let mut tracking = self.tracking.lock().unwrap_or_else(|p| p.into_inner());
            for element in revoked.elements() {
                tracking.partitions.remove(&(Arc::from(element.topic()), element.partition()));
            }
            let held = tracking.partitions.len();
            drop(tracking);
            if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                // Nothing stored yet is a normal case, not a problem.
                if error.rdkafka_error_code() != Some(RDKafkaErrorCode::NoOffset) {
                    warn!(%error, "Could not commit before the rebalance.");
                }
            }
            if lost {
                // The group moved on without this member (it missed a rebalance or a heartbeat).
                warn!(partitions = %listed(revoked), "Partitions lost: this member was dropped from the group.");
            } else {
                info!(partitions = %listed(revoked), held, "Partitions revoked.");
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            self.liveness.set_assigned(true);
            let mut tracking = self.tracking.lock().unwrap_or_else(|p| p.into_inner());
            tracking.epoch += 1;
            let epoch = tracking.epoch;
            for element in assigned.elements() {
                tracking
                    .partitions
                    .insert((Arc::from(element.topic()), element.partition()), (epoch, Default::default()));
            }
            let held = tracking.partitions.len();
            drop(tracking);
            info!(partitions = %listed(assigned), held, "Partitions assigned.");
        }
    }
}

/// `topic[0,1,2] other[3]`: the partitions of a rebalance, for its log line.
fn listed(list: &rdkafka::TopicPartitionList) -> String {
    let mut topics: Vec<(String, Vec<i32>)> = Vec::new();
    for element in list.elements() {
        match topics.iter_mut().find(|(topic, _)| topic == element.topic()) {
            Some((_, partitions)) => partitions.push(element.partition()),
            None => topics.push((element.topic().to_owned(), vec![element.partition()])),
        }
    }
    let listed: Vec<String> = topics
        .into_iter()
        .map(|(topic, mut partitions)| {
            partitions.sort_unstable();
            let partitions: Vec<String> = partitions.iter().map(ToString::to_string).collect();
            format!("{topic}[{}]", partitions.join(","))
        })
        .collect();
    if listed.is_empty() { "none".to_owned() } else { listed.join(" ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebalance_is_listed_per_topic_in_order() {
        let mut list = rdkafka::TopicPartitionList::new();
        for (topic, partition) in [("q", 2), ("q.retry.5s", 1), ("q", 0)] {
            list.add_partition(topic, partition);
        }
        assert_eq!(listed(&list), "q[0,2] q.retry.5s[1]");
        assert_eq!(listed(&rdkafka::TopicPartitionList::new()), "none");
    }
}
