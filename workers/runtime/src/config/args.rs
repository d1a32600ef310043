//! The flags, grouped by role, each also an environment variable: every Courier binary
//! takes the groups that do something there. Their clap attributes are the `--help` text.

use std::time::Duration;

use clap::Parser;

use super::{ClientLimits, ConfigError, DEFAULT_MAX_IN_FLIGHT_BYTES, DEFAULT_MAX_PAYLOAD_BYTES};
use crate::broker::Broker;
#[cfg(feature = "kafka")]
use crate::transport::kafka::Ordering;

/// Where the broker is and how to reach it: every Courier binary that talks to one.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Broker")]
pub struct BrokerArgs {
    /// Broker URL: amqp://user:pass@host:5672/%2f, amqps://…, kafka://host:9092[,host:9092],
    /// or memory:// (the embedded in-memory broker with an interactive console; the
    /// default when none is given).
    #[arg(long, env = "COURIER_BROKER")]
    pub broker: Option<String>,

    #[cfg(feature = "kafka")]
    /// Kafka: consumer group [default: courier-<worker>].
    #[arg(long, env = "COURIER_GROUP")]
    pub group: Option<String>,

    #[cfg(feature = "kafka")]
    /// Kafka: partitions of the topics the worker creates.
    #[arg(long, env = "COURIER_PARTITIONS", default_value_t = 3)]
    pub partitions: i32,

    #[cfg(feature = "kafka")]
    /// Kafka: replication factor of the topics the worker creates.
    #[arg(long, env = "COURIER_REPLICATION", default_value_t = 1)]
    pub replication: i32,

    #[cfg(feature = "kafka")]
    /// Kafka: a librdkafka property passed through, `key=value` (repeatable, or
    /// comma-separated in the variable), e.g. `security.protocol=SASL_SSL`.
    #[arg(long = "kafka-property", env = "COURIER_KAFKA_PROPERTIES", value_delimiter = ',', value_parser = parse_property)]
    pub kafka_properties: Vec<(String, String)>,
}

/// The queues a worker reads and answers on (the rest of its topology is named after them).
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Queues")]
pub struct QueueArgs {
    /// Work queue/topic to consume [default: <worker>.requests].
    #[arg(long, env = "COURIER_QUEUE")]
    pub queue: Option<String>,

    /// Default reply queue/topic, for requests without reply-to [default: <worker>.replies].
    #[arg(long, env = "COURIER_REPLIES")]
    pub replies: Option<String>,
}

/// How a process names itself and logs.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Instance and logs")]
pub struct ObservabilityArgs {
    /// Name of this instance in dead-letter records [default: $HOSTNAME-<pid>].
    #[arg(long, env = "COURIER_INSTANCE")]
    pub instance: Option<String>,

    /// Log format: `text` (for terminals) or `json` (for log pipelines).
    #[arg(long, env = "COURIER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// How a worker processes requests: concurrency, limits, retries, the breaker, the inbox, its HTTP endpoints.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Processing")]
pub struct ProcessingArgs {
    /// Comma-separated patterns a request's reply-to must match (`*` matches anything).
    #[arg(long, env = "COURIER_REPLY_ALLOW", default_value = "*.replies", value_delimiter = ',')]
    pub reply_allow: Vec<String>,

    /// Messages processed at once (also the broker prefetch).
    #[arg(long, env = "COURIER_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,

    /// Threads of the worker's async runtime [default: the CPUs the process may use, less
    /// one for the broker client's own threads; at least 1].
    #[arg(long, env = "COURIER_RUNTIME_THREADS")]
    pub runtime_threads: Option<std::num::NonZeroUsize>,

    /// Time limit of one handler invocation; a timeout is a transient failure.
    #[arg(long, env = "COURIER_HANDLER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub handler_timeout: Duration,

    /// Requests handed to the handler in one call (a batch handler's bulk write); each is
    /// still settled on its own. At most --concurrency. 1: one request per call.
    #[arg(long, env = "COURIER_BATCH_SIZE", default_value_t = 1)]
    pub batch_size: usize,

    /// How long a batch waits to fill before it is handled with what it has.
    #[arg(long, env = "COURIER_BATCH_WAIT", default_value = "10ms", value_parser = humantime::parse_duration)]
    pub batch_wait: Duration,

    /// Largest accepted payload in bytes; larger ones are dead-lettered as too-large.
    #[arg(long, env = "COURIER_MAX_PAYLOAD_BYTES", default_value_t = DEFAULT_MAX_PAYLOAD_BYTES)]
    pub max_payload_bytes: usize,

    /// Byte budget of the requests in flight and their outputs awaiting a confirm: no new
    /// request is taken while they hold this much (Kafka: also the bound of each read-ahead
    /// buffer). See docs/operations.md, "Memory".
    #[arg(long, env = "COURIER_MAX_IN_FLIGHT_BYTES", default_value_t = DEFAULT_MAX_IN_FLIGHT_BYTES)]
    pub max_in_flight_bytes: usize,

    /// Handler invocations per delivery round (in-process retries + 1).
    #[arg(long, env = "COURIER_RETRY_ATTEMPTS", default_value_t = 3)]
    pub retry_attempts: u32,

    /// Backoff before the first in-process retry (doubles each retry).
    #[arg(long, env = "COURIER_RETRY_BACKOFF", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub retry_backoff: Duration,

    /// Upper bound of one in-process backoff.
    #[arg(long, env = "COURIER_RETRY_MAX_BACKOFF", default_value = "2s", value_parser = humantime::parse_duration)]
    pub retry_max_backoff: Duration,

    /// Add random jitter (0–100%) to in-process backoffs.
    #[arg(long, env = "COURIER_RETRY_JITTER", default_value_t = true, action = clap::ArgAction::Set)]
    pub retry_jitter: bool,

    /// Comma-separated delays of the broker-level retry tiers, e.g. `5s,30s,5m`; empty for none.
    #[arg(long, env = "COURIER_RETRY_DELAYS", default_value = "5s,30s,5m", value_delimiter = ',', value_parser = parse_delay)]
    pub retry_delays: Vec<Option<Duration>>,

    /// Retry in place: a request that fails transiently waits out each tier's delay in the
    /// worker, keeping its place (Kafka: its key's or partition's lane, so later records
    /// of it wait and its offset stays uncommitted), instead of going to a retry queue or
    /// topic where later requests overtake it. Kafka with `--ordering key|partition`.
    #[arg(long, env = "COURIER_RETRY_IN_PLACE")]
    pub retry_in_place: bool,

    /// How often a request may go back to the broker because the broker refused its output
    /// (reply, retry copy, dead-letter copy); one more refusal dead-letters it as
    /// `undeliverable`. Broker outages do not count.
    #[arg(long, env = "COURIER_MAX_REDELIVERIES", default_value_t = 5)]
    pub max_redeliveries: u32,

    /// Circuit breaker: `on` stops taking deliveries while the handler's dependency is down
    /// (the backlog waits in the broker), `off` lets every request spend its retries.
    #[arg(long, env = "COURIER_BREAKER", default_value = "on", value_parser = ["on", "off"])]
    pub breaker: String,

    /// Circuit breaker: handler rounds failed transiently in a row that open it (0: rule off).
    #[arg(long, env = "COURIER_BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,

    /// Circuit breaker: share of transiently failed rounds among the last --breaker-window
    /// that opens it.
    #[arg(long, env = "COURIER_BREAKER_RATIO", default_value_t = 0.5)]
    pub breaker_ratio: f64,

    /// Circuit breaker: handler rounds the failure share is taken over (0: rule off).
    #[arg(long, env = "COURIER_BREAKER_WINDOW", default_value_t = 50)]
    pub breaker_window: u32,

    /// Circuit breaker: how long it stays open the first time (doubles each time a probe
    /// fails).
    #[arg(long, env = "COURIER_BREAKER_COOLDOWN", default_value = "5s", value_parser = humantime::parse_duration)]
    pub breaker_cooldown: Duration,

    /// Circuit breaker: the longest it stays open before probing again.
    #[arg(long, env = "COURIER_BREAKER_MAX_COOLDOWN", default_value = "1m", value_parser = humantime::parse_duration)]
    pub breaker_max_cooldown: Duration,

    /// Circuit breaker: deliveries let through at once while half-open; when as many pass,
    /// it closes.
    #[arg(long, env = "COURIER_BREAKER_PROBES", default_value_t = 1)]
    pub breaker_probes: u32,

    /// Process each request once per `courier-message-id`: the idempotent inbox in this
    /// PostgreSQL database (`postgres://user@host:5432/db`) [default: no inbox].
    #[arg(long, env = "COURIER_INBOX")]
    pub inbox: Option<String>,

    /// How long the inbox keeps a request's row (and so answers a redelivery from it).
    #[arg(long, env = "COURIER_INBOX_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub inbox_retention: Duration,

    /// How long any one inbox call (connecting, the claim, each of the handler's
    /// statements, the commit) may take before it counts as a failure of the database.
    #[arg(long, env = "COURIER_INBOX_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub inbox_timeout: Duration,

    /// Connections the inbox opens at most (keep it below the database role's connection
    /// limit); requests beyond it wait for one.
    #[arg(long, env = "COURIER_INBOX_CONNECTIONS", default_value_t = 16)]
    pub inbox_connections: usize,

    /// On shutdown, how long in-flight messages may take before they are returned to the broker.
    #[arg(long, env = "COURIER_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Declare the work queue as a RabbitMQ quorum queue.
    #[arg(long, env = "COURIER_QUORUM")]
    pub quorum: bool,

    #[cfg(feature = "kafka")]
    /// Kafka: what may run concurrently within a partition: `partition` (one record at a
    /// time), `key` (one per key) or `none`.
    #[arg(long, env = "COURIER_ORDERING", default_value = "partition")]
    pub ordering: Ordering,

    /// Serve `/metrics`, `/healthz` and `/readyz` on this address, e.g. `0.0.0.0:9464`
    /// [default: no HTTP server].
    #[arg(long, env = "COURIER_HTTP_ADDR")]
    pub http_addr: Option<std::net::SocketAddr>,
}

/// The flags of a program that talks to a worker's queues without being the worker (the
/// gateway, `courier dlq`): where the broker is, which queues, how to name itself and log.
#[derive(Clone, Debug, clap::Args)]
pub struct ClientArgs {
    /// Where the broker is.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Which queues.
    #[command(flatten)]
    pub queues: QueueArgs,
    /// Logs, metrics, traces.
    #[command(flatten)]
    pub observability: ObservabilityArgs,
}

impl ClientArgs {
    /// The broker, its Kafka clients sized as a worker's are by default; `worker` names
    /// the default consumer group.
    pub fn broker(&self, worker: &str) -> Result<Broker, ConfigError> {
        self.broker.resolve(worker, &ClientLimits::default())
    }
}

/// Every flag of a worker (each also an environment variable), grouped by role; other
/// binaries take only the groups that do something there.
#[derive(Clone, Debug, Parser)]
#[command(
    version,
    about = "A Courier worker: consumes requests, publishes replies, retries and dead-letters failures."
)]
pub struct WorkerArgs {
    /// Where the broker is.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Which queues.
    #[command(flatten)]
    pub queues: QueueArgs,
    /// Concurrency, limits, retries, the breaker, the inbox.
    #[command(flatten)]
    pub processing: ProcessingArgs,
    /// Logs, metrics, traces.
    #[command(flatten)]
    pub observability: ObservabilityArgs,
}

#[cfg(feature = "kafka")]
fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

/// An empty item (from an empty list) means "no tiers".
fn parse_delay(s: &str) -> Result<Option<Duration>, humantime::DurationError> {
    if s.trim().is_empty() { Ok(None) } else { humantime::parse_duration(s.trim()).map(Some) }
}

#[cfg(all(test, feature = "amqp", feature = "kafka"))]
mod tests {
    use super::*;

    #[test]
    fn unparsable_values_are_refused_by_clap() {
        for args in [["--handler-timeout", "soon"], ["--concurrency", "-3"], ["--log-format", "xml"]] {
            let mut argv = vec!["greeter"];
            argv.extend_from_slice(&args);
            assert!(WorkerArgs::try_parse_from(argv).is_err(), "{args:?}");
        }
    }
}
