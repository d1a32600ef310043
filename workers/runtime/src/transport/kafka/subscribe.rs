//! Subscribing: the consumer's configuration (group, offsets stored by the dispatcher,
//! fetch bounds), and the dispatcher that reads it.

use std::sync::Arc;

use rdkafka::consumer::{Consumer, StreamConsumer};
use tracing::info;

use super::{
    KafkaAcker, KafkaTransport, RebalanceContext, client_config, config::RECONNECT_BACKOFF_MAX_MS, dispatch, failed,
    liveness,
};
use crate::transport::{Subscription, Topology, TransportError};

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

/// What librdkafka fetches ahead per partition (`queued.min.messages`): the worker's
/// prefetch (`--concurrency`), at least 1,000. librdkafka's default, 100,000 per
/// partition, has a worker hold a whole backlog twice (fetched, and in the dispatcher's
/// buffer) for no more throughput; a floor much lower starves `--ordering partition`,
/// whose partitions are then fetched too late (docs/benchmarks.md, "Why the transports'
/// defaults").
fn prefetched_per_partition(prefetch: usize) -> usize {
    prefetch.clamp(1_000, 100_000)
}

/// How soon librdkafka fetches again for a partition whose fetched records are above
/// [`prefetched_per_partition`] (librdkafka waits 1 s by default: with a small bound, a
/// partition then starves between fetches).
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

impl KafkaTransport {
    /// [`Transport::subscribe`](crate::transport::Transport::subscribe): join the group on
    /// the work topic and its retry tiers, and start the dispatcher.
    pub(super) fn consume(
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
}
