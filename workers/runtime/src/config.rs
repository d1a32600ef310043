//! Worker configuration: one clap struct (every flag also an environment variable),
//! validated at start-up into [`Settings`].

use std::time::Duration;

use clap::Parser;

#[cfg(feature = "amqp")]
use crate::transport::amqp::topology::QUORUM_DELIVERY_LIMIT;
#[cfg(feature = "kafka")]
use crate::transport::kafka::{KafkaConfig, Ordering};
use crate::{
    breaker::{InvalidPolicy, Policy},
    broker::Broker,
    contract::naming,
    retry::{InvalidRetryPolicy, RetryPolicy},
    transport::{Topology, redact},
};

/// The default of `--max-payload-bytes`.
pub(crate) const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// The default of `--max-in-flight-bytes`.
pub(crate) const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

/// The URL schemes `--broker` takes in this build.
const SCHEMES: &[&str] = &[
    #[cfg(feature = "amqp")]
    "amqp://",
    #[cfg(feature = "amqp")]
    "amqps://",
    #[cfg(feature = "kafka")]
    "kafka://",
    "memory://",
];

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

    /// Time limit of one handler invocation; a timeout is a transient failure.
    #[arg(long, env = "COURIER_HANDLER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub handler_timeout: Duration,

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

/// The smallest byte budget accepted: below it Kafka's read-ahead buffers would be
/// smaller than a fetch.
const MIN_IN_FLIGHT_BYTES: usize = 1 << 20;

#[cfg(feature = "amqp")]
fn is_amqp(url: &str) -> bool {
    url.starts_with("amqp://") || url.starts_with("amqps://")
}

/// Validated settings of one worker.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The worker's name.
    pub worker: String,
    /// This instance's name.
    pub instance: String,
    /// Broker to connect to.
    pub broker: Broker,
    /// Work queue/topic.
    pub queue: String,
    /// Default reply destination.
    pub replies: String,
    /// Patterns allowed as reply-to.
    pub reply_allow: Vec<String>,
    /// Messages processed at once.
    pub concurrency: usize,
    /// Time limit of one handler invocation.
    pub handler_timeout: Duration,
    /// Largest accepted payload.
    pub max_payload_bytes: usize,
    /// Byte budget of requests in flight and their outputs ([`crate::budget`]).
    pub max_in_flight_bytes: usize,
    /// In-process and delayed retries.
    pub retry: RetryPolicy,
    /// Wait out the retry tiers' delays in the worker, keeping the request's lane.
    pub retry_in_place: bool,
    /// Requeues allowed per message after its output was refused.
    pub max_redeliveries: u32,
    /// The circuit breaker's policy; `None`: off.
    pub breaker: Option<Policy>,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Quorum work queue (RabbitMQ).
    pub quorum: bool,
    /// Where to serve metrics and health, if anywhere.
    pub http_addr: Option<std::net::SocketAddr>,
    /// The idempotent inbox, if any.
    pub inbox: Option<InboxSettings>,
}

/// Where the idempotent inbox keeps its rows, and for how long ([`crate::inbox`]).
#[derive(Clone)]
pub struct InboxSettings {
    /// `postgres://…`.
    pub url: String,
    /// How long a row is kept.
    pub retention: Duration,
    /// Each call's bound and the pool's size.
    pub bounds: crate::inbox::Bounds,
}

impl std::fmt::Debug for InboxSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxSettings")
            .field("url", &redact(&self.url))
            .field("retention", &self.retention)
            .field("bounds", &self.bounds)
            .finish()
    }
}

/// A configuration that cannot work; the message names the flag and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A flag has a value outside its range.
    #[error("--{flag}: {problem}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// What is wrong and what is expected.
        problem: String,
    },
    /// The retry flags do not form a usable policy.
    #[error("retry flags: {0}")]
    Retry(#[from] InvalidRetryPolicy),
    /// The circuit breaker flags do not form a usable policy.
    #[error("--breaker-* flags: {0}")]
    Breaker(#[from] InvalidPolicy),
}

fn invalid(flag: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { flag, problem: problem.into() }
}

impl BrokerArgs {
    /// The broker `--broker` names, with the Kafka flags where it is Kafka; `worker` names
    /// the default consumer group.
    pub(crate) fn resolve(&self, worker: &str, limits: &ClientLimits) -> Result<Broker, ConfigError> {
        let _ = (worker, limits);
        Ok(match self.broker.as_deref().map(str::trim) {
            None | Some("") | Some("memory://") | Some("memory") => Broker::Memory,
            #[cfg(feature = "amqp")]
            Some(url) if is_amqp(url) => {
                if let Some(other) = url.split(',').find(|u| !is_amqp(u.trim())) {
                    return Err(invalid(
                        "broker",
                        format!("{:?} in the list is not an amqp:// or amqps:// URL", redact(other.trim())),
                    ));
                }
                Broker::Amqp(url.to_owned())
            }
            #[cfg(feature = "kafka")]
            Some(url) if url.starts_with("kafka://") => {
                let bootstrap = url.trim_start_matches("kafka://").trim_end_matches('/');
                if bootstrap.is_empty() {
                    return Err(invalid("broker", "kafka:// needs host:port"));
                }
                if self.partitions < 1 || self.replication < 1 {
                    return Err(invalid("partitions", "partitions and replication must be at least 1"));
                }
                Broker::Kafka(KafkaConfig {
                    bootstrap: bootstrap.to_owned(),
                    group: self.group.clone().unwrap_or_else(|| format!("courier-{worker}")),
                    ordering: limits.ordering,
                    partitions: self.partitions,
                    replication: self.replication,
                    max_message_bytes: KafkaConfig::max_message_bytes_for(limits.max_payload_bytes),
                    buffer_bytes: limits.max_in_flight_bytes,
                    properties: self.kafka_properties.clone(),
                })
            }
            Some(url) => {
                return Err(invalid("broker", format!("unsupported URL {}: use {}", redact(url), SCHEMES.join(", "))));
            }
        })
    }
}

/// What a broker client takes from a worker's processing flags; other binaries use the
/// workers' defaults.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "kafka"), allow(dead_code, reason = "only Kafka's clients are sized by them"))]
pub(crate) struct ClientLimits {
    /// `--max-payload-bytes`: Kafka's producer takes records up to it plus headers.
    pub max_payload_bytes: usize,
    /// `--max-in-flight-bytes`: bounds Kafka's read-ahead and producer buffers.
    pub max_in_flight_bytes: usize,
    /// `--ordering` (Kafka).
    #[cfg(feature = "kafka")]
    pub ordering: Ordering,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
            #[cfg(feature = "kafka")]
            ordering: Ordering::default(),
        }
    }
}

impl QueueArgs {
    /// The work queue and the default reply queue, `default_queue` and `default_replies`
    /// unless the flags name others.
    pub fn names(&self, default_queue: String, default_replies: String) -> Result<(String, String), ConfigError> {
        let queue = self.queue.clone().unwrap_or(default_queue);
        let replies = self.replies.clone().unwrap_or(default_replies);
        for (flag, name) in [("queue", &queue), ("replies", &replies)] {
            if !is_valid_name(name) {
                return Err(invalid(
                    flag,
                    format!("{name:?} is not a valid name: use 1-200 characters of a-z A-Z 0-9 . _ -"),
                ));
            }
        }
        if queue == replies {
            return Err(invalid("replies", "must differ from --queue"));
        }
        Ok((queue, replies))
    }
}

impl ObservabilityArgs {
    /// This instance's name: `--instance`, else `$HOSTNAME-<pid>`.
    pub fn instance(&self) -> String {
        self.instance.clone().unwrap_or_else(default_instance)
    }
}

impl WorkerArgs {
    /// Check every value and derive the settings of worker `worker`.
    pub fn settings(&self, worker: &str) -> Result<Settings, ConfigError> {
        let (p, o) = (&self.processing, &self.observability);
        let limits = ClientLimits {
            max_payload_bytes: p.max_payload_bytes,
            max_in_flight_bytes: p.max_in_flight_bytes,
            #[cfg(feature = "kafka")]
            ordering: p.ordering,
        };
        let broker = self.broker.resolve(worker, &limits)?;
        #[cfg(feature = "kafka")]
        let keeps_a_lane = matches!(&broker, Broker::Kafka(config) if config.ordering != Ordering::None);
        #[cfg(not(feature = "kafka"))]
        let keeps_a_lane = false;
        if p.retry_in_place && !keeps_a_lane {
            return Err(invalid(
                "retry-in-place",
                "keeps a request's Kafka ordering lane: use it with kafka:// and --ordering key or partition",
            ));
        }
        let (queue, replies) = self.queues.names(naming::requests(worker), naming::replies(worker))?;
        if p.reply_allow.iter().any(|p| p.trim().is_empty()) {
            return Err(invalid("reply-allow", "empty pattern"));
        }
        if !(1..=10_000).contains(&p.concurrency) {
            return Err(invalid("concurrency", format!("{} is outside 1..=10000", p.concurrency)));
        }
        if p.handler_timeout.is_zero() {
            return Err(invalid("handler-timeout", "must be > 0"));
        }
        #[cfg(feature = "amqp")]
        if p.quorum && i64::from(p.max_redeliveries) >= QUORUM_DELIVERY_LIMIT {
            return Err(invalid(
                "max-redeliveries",
                format!(
                    "{} with --quorum: must stay below the quorum queue's delivery limit \
                     ({QUORUM_DELIVERY_LIMIT}), which would dead-letter first",
                    p.max_redeliveries,
                ),
            ));
        }
        if p.max_payload_bytes == 0 {
            return Err(invalid("max-payload-bytes", "must be > 0"));
        }
        if p.max_in_flight_bytes < MIN_IN_FLIGHT_BYTES {
            return Err(invalid(
                "max-in-flight-bytes",
                format!("{} is below {MIN_IN_FLIGHT_BYTES} (1 MiB)", p.max_in_flight_bytes),
            ));
        }
        let delays: Vec<Duration> = p.retry_delays.iter().flatten().copied().collect();
        let retry = RetryPolicy::new(p.retry_attempts, p.retry_backoff, p.retry_max_backoff, p.retry_jitter, delays)?;
        let breaker = match p.breaker.as_str() {
            "off" => None,
            _ if p.breaker_probes > u32::from(u16::MAX) => {
                return Err(invalid("breaker-probes", "must be at most 65535"));
            }
            _ => Some(Policy::new(
                p.breaker_failures,
                p.breaker_ratio,
                p.breaker_window,
                p.breaker_cooldown,
                p.breaker_max_cooldown,
                p.breaker_probes,
            )?),
        };
        let inbox = match p.inbox.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(url) if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) => {
                return Err(invalid("inbox", format!("{} is not a postgres:// URL", redact(url))));
            }
            Some(_) if p.retry_in_place => {
                return Err(invalid("inbox", "cannot be combined with --retry-in-place yet"));
            }
            Some(_) if p.inbox_retention.is_zero() => return Err(invalid("inbox-retention", "must be > 0")),
            Some(_) if p.inbox_timeout.is_zero() => return Err(invalid("inbox-timeout", "must be > 0")),
            Some(_) if !(1..=1_000).contains(&p.inbox_connections) => {
                return Err(invalid("inbox-connections", format!("{} is outside 1..=1000", p.inbox_connections)));
            }
            Some(url) => Some(InboxSettings {
                url: url.to_owned(),
                retention: p.inbox_retention,
                bounds: crate::inbox::Bounds { timeout: p.inbox_timeout, connections: p.inbox_connections },
            }),
        };
        let instance = o.instance();
        Ok(Settings {
            inbox,
            worker: worker.to_owned(),
            instance,
            broker,
            queue,
            replies,
            reply_allow: p.reply_allow.iter().map(|p| p.trim().to_owned()).collect(),
            concurrency: p.concurrency,
            handler_timeout: p.handler_timeout,
            max_payload_bytes: p.max_payload_bytes,
            max_in_flight_bytes: p.max_in_flight_bytes,
            retry,
            retry_in_place: p.retry_in_place,
            max_redeliveries: p.max_redeliveries,
            breaker,
            shutdown_grace: p.shutdown_grace,
            quorum: p.quorum,
            http_addr: p.http_addr,
        })
    }
}

impl Settings {
    /// Settings for `worker` with every default (in-memory broker).
    pub fn defaults(worker: &str) -> Self {
        WorkerArgs::parse_from([worker]).settings(worker).unwrap_or_else(|e| unreachable!("defaults are valid: {e}"))
    }

    /// The queues/topics this worker uses.
    pub fn topology(&self) -> Topology {
        naming::topology(&self.queue, self.retry.delays(), &self.replies, self.quorum)
    }

    /// Whether a request may ask for its reply at `destination`.
    pub fn reply_allowed(&self, destination: &str) -> bool {
        destination == self.replies || self.reply_allow.iter().any(|p| glob(p, destination))
    }
}

/// Names safe on both brokers (Kafka topics allow only these characters).
pub(crate) fn is_valid_name(name: &str) -> bool {
    (1..=200).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn default_instance() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
    format!("{host}-{}", std::process::id())
}

/// `*` matches any run of characters; everything else matches itself. Greedy with one
/// backtrack point (the last `*`): O(pattern × text) whatever the text, which comes from
/// a producer; trying every split at every star was exponential in the number of stars.
fn glob(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut p, mut t) = (0, 0);
    // After the last `*` seen: the pattern position behind it, and the text position it
    // has swallowed up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == '*' {
            star = Some((p + 1, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((after, swallowed)) = star {
            star = Some((after, swallowed + 1));
            p = after;
            t = swallowed + 1;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(all(test, feature = "amqp", feature = "kafka"))]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, ConfigError> {
        let mut argv = vec!["greeter"];
        argv.extend_from_slice(args);
        WorkerArgs::try_parse_from(argv).expect("flags parse").settings("greeter")
    }

    #[test]
    fn defaults_are_valid() {
        let s = parse(&[]).expect("valid");
        assert!(matches!(s.broker, Broker::Memory));
        assert_eq!(s.queue, "greeter.requests");
        assert_eq!(s.replies, "greeter.replies");
        assert_eq!(s.retry.delays().len(), 3);
        assert_eq!(s.topology().retry_tiers[0].name, "greeter.requests.retry.5s");
    }

    #[test]
    fn retry_in_place_is_for_kafka_lanes() {
        let args = ["--retry-in-place", "--broker", "kafka://k:9092", "--ordering", "key"];
        assert!(parse(&args).expect("valid").retry_in_place);
    }

    #[test]
    fn the_inbox_is_off_by_default_and_keeps_rows_a_week() {
        assert!(parse(&[]).expect("valid").inbox.is_none());
        let inbox = parse(&["--inbox", "postgres://u:secret@db/x"]).expect("valid").inbox.expect("an inbox");
        assert_eq!(inbox.retention, Duration::from_secs(7 * 24 * 3600));
        assert!(!format!("{inbox:?}").contains("secret"), "the password stays out of logs");
    }

    #[test]
    fn the_breaker_is_on_by_default_and_can_be_switched_off() {
        assert!(parse(&[]).expect("valid").breaker.is_some());
        assert!(parse(&["--breaker", "off", "--breaker-ratio", "7"]).expect("off: not checked").breaker.is_none());
    }

    #[test]
    fn empty_delay_list_means_no_tiers() {
        assert!(parse(&["--retry-delays", ""]).expect("valid").retry.delays().is_empty());
    }

    #[test]
    fn bad_values_name_the_flag() {
        let cases: [(&[&str], &str); 16] = [
            (&["--concurrency", "0"], "--concurrency"),
            (&["--inbox", "mysql://db"], "--inbox"),
            (&["--inbox", "postgres://db", "--inbox-retention", "0s"], "--inbox-retention"),
            (
                &["--inbox", "postgres://db", "--retry-in-place", "--broker", "kafka://k:9092", "--ordering", "key"],
                "--inbox",
            ),
            (&["--retry-in-place"], "--retry-in-place"),
            (&["--retry-in-place", "--broker", "kafka://k:9092", "--ordering", "none"], "--retry-in-place"),
            (&["--breaker-ratio", "1.5"], "--breaker-* flags"),
            (&["--breaker-failures", "0", "--breaker-window", "0"], "--breaker-* flags"),
            (&["--breaker-cooldown", "2m"], "--breaker-* flags"),
            (&["--breaker-probes", "70000"], "--breaker-probes"),
            (&["--broker", "kafka9://x"], "--broker"),
            (&["--queue", "a b"], "--queue"),
            (&["--queue", "x", "--replies", "x"], "--replies"),
            (&["--handler-timeout", "0s"], "--handler-timeout"),
            (&["--retry-attempts", "0"], "retry flags"),
            (&["--retry-delays", "5s,5s"], "retry flags"),
        ];
        for (args, flag) in cases {
            let err = parse(args).expect_err(flag).to_string();
            assert!(err.starts_with(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn unparsable_values_are_refused_by_clap() {
        for args in [["--handler-timeout", "soon"], ["--concurrency", "-3"], ["--log-format", "xml"]] {
            let mut argv = vec!["greeter"];
            argv.extend_from_slice(&args);
            assert!(WorkerArgs::try_parse_from(argv).is_err(), "{args:?}");
        }
    }

    #[test]
    fn kafka_urls_and_properties() {
        let s = parse(&[
            "--broker",
            "kafka://a:9092,b:9092",
            "--kafka-property",
            "fetch.wait.max.ms=10",
            "--ordering",
            "key",
        ])
        .expect("valid");
        let Broker::Kafka(config) = s.broker else { panic!("kafka") };
        assert_eq!(config.bootstrap, "a:9092,b:9092");
        assert_eq!(config.group, "courier-greeter");
        assert_eq!(config.ordering, crate::transport::kafka::Ordering::Key);
        assert_eq!(config.properties, vec![("fetch.wait.max.ms".to_owned(), "10".to_owned())]);
        assert!(parse(&["--broker", "kafka://"]).is_err());
        let mut argv = vec!["greeter", "--kafka-property", "novalue"];
        assert!(WorkerArgs::try_parse_from(argv.drain(..)).is_err());
    }

    #[test]
    fn passwords_are_redacted_in_errors() {
        let err = parse(&["--broker", "amqp://u:pw@h1,kafka://u:pw2@h2"]).expect_err("a list of amqp URLs").to_string();
        assert!(err.contains("kafka://u:***@h2") && !err.contains("pw"), "{err}");
        let err = parse(&["--broker", "nats://u:pw@h"]).expect_err("unsupported").to_string();
        assert!(!err.contains("pw"), "{err}");
    }

    #[test]
    fn reply_allowlist() {
        let s = parse(&["--reply-allow", "*.replies,client-*"]).expect("valid");
        assert!(s.reply_allowed("greeter.replies"));
        assert!(s.reply_allowed("billing.replies"));
        assert!(s.reply_allowed("client-42"));
        assert!(!s.reply_allowed("greeter.requests"));
        assert!(!s.reply_allowed("billing.replies.x"));
    }

    #[test]
    fn glob_cases() {
        for (pattern, text, expected) in [
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("*.replies", ".replies", true),
            ("*.replies", "x.replies.replies", true),
            ("**a", "ba", true),
            ("é*", "éa", true),
        ] {
            assert_eq!(glob(pattern, text), expected, "{pattern:?} {text:?}");
        }
    }

    /// The naive recursive matcher: tries every split at every star.
    fn naive(pattern: &str, text: &str) -> bool {
        match pattern.split_once('*') {
            None => pattern == text,
            Some((head, tail)) => text.strip_prefix(head).is_some_and(|rest| {
                (0..=rest.len()).filter(|&i| rest.is_char_boundary(i)).any(|i| naive(tail, &rest[i..]))
            }),
        }
    }

    proptest::proptest! {
        /// Agrees with the naive matcher on small inputs over a small alphabet.
        #[test]
        fn glob_agrees_with_the_naive_matcher(pattern in "[ab*]{0,6}", text in "[ab]{0,8}") {
            proptest::prop_assert_eq!(glob(&pattern, &text), naive(&pattern, &text));
        }
    }

    #[test]
    fn a_hostile_reply_to_against_many_stars_is_answered() {
        // The naive matcher needs ~n^5 steps here (hours); this one n × m.
        let text = "a".repeat(10_000);
        assert!(!glob("*a*a*a*a*b", &text));
    }
}
