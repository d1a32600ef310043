//! What a worker's validated flags yield: [`Settings`], and the inbox's part of them.

use std::time::Duration;

use clap::Parser;

use super::{WorkerArgs, glob::glob};
use crate::{
    breaker::Policy,
    broker::Broker,
    contract::naming,
    retry::RetryPolicy,
    transport::{Topology, redact},
};

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
    /// Time limit of one handler invocation (a whole batch's call with `batch`).
    pub handler_timeout: Duration,
    /// Requests per handler call, and how long a batch waits to fill; `None`: one request per call.
    pub batch: Option<BatchSettings>,
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

/// How requests are gathered into batches (`--batch-size`, `--batch-wait`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSettings {
    /// Requests per call at most (2..=concurrency).
    pub size: usize,
    /// How long the first request of a batch waits for the batch to fill.
    pub wait: Duration,
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

impl Settings {
    /// Settings for `worker` with every default (in-memory broker).
    pub fn defaults(worker: &str) -> Self {
        WorkerArgs::parse_from([worker]).settings(worker).unwrap_or_else(|e| unreachable!("defaults are valid: {e}"))
    }

    /// The queues/topics this worker uses.
    pub fn topology(&self) -> Topology {
        naming::topology(&self.queue, self.retry.delays(), &self.replies, self.quorum)
    }

    /// What an operator should know of `--batch-size` on this broker: with Kafka's
    /// `--ordering partition` a batch holds one record per assigned partition at most, so
    /// a larger one waits `--batch-wait` every time and never fills.
    pub fn batch_warning(&self) -> Option<&'static str> {
        #[cfg(feature = "kafka")]
        if let (Some(_), Broker::Kafka(config)) = (&self.batch, &self.broker)
            && config.ordering == crate::transport::kafka::Ordering::Partition
        {
            return Some(
                "With --ordering partition a batch holds at most one record per assigned partition; a larger \
                 --batch-size waits --batch-wait each time. Use --ordering key or none for larger batches.",
            );
        }
        None
    }

    /// Whether a request may ask for its reply at `destination`.
    pub fn reply_allowed(&self, destination: &str) -> bool {
        destination == self.replies || self.reply_allow.iter().any(|p| glob(p, destination))
    }
}

#[cfg(all(test, feature = "amqp", feature = "kafka"))]
mod tests {
    use crate::config::parse;

    #[test]
    fn batches_under_partition_ordering_are_warned_about() {
        let kafka = ["--broker", "kafka://k:9092", "--batch-size", "8"];
        assert!(parse(&kafka).expect("valid").batch_warning().is_some());
        assert!(parse(&[&kafka[..], &["--ordering", "key"]].concat()).expect("valid").batch_warning().is_none());
        assert!(parse(&["--broker", "kafka://k:9092"]).expect("valid").batch_warning().is_none());
        assert!(parse(&["--broker", "amqp://h", "--batch-size", "8"]).expect("valid").batch_warning().is_none());
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
}
