//! A worker's flags checked, one named step per concern, and turned into its [`Settings`].
//! The steps run in a fixed order, so a command line with several bad values is always
//! refused for the same one.

use std::time::Duration;

use super::{
    BatchSettings, ClientLimits, ConfigError, InboxSettings, ObservabilityArgs, ProcessingArgs, QueueArgs, Settings,
    WorkerArgs, invalid, is_valid_name,
};
#[cfg(feature = "amqp")]
use crate::transport::amqp::topology::QUORUM_DELIVERY_LIMIT;
#[cfg(feature = "kafka")]
use crate::transport::kafka::Ordering;
use crate::{breaker::Policy, broker::Broker, contract::naming, retry::RetryPolicy, transport::redact};

/// The smallest byte budget accepted: below it Kafka's read-ahead buffers would be
/// smaller than a fetch.
const MIN_IN_FLIGHT_BYTES: usize = 1 << 20;

impl WorkerArgs {
    /// Check every value and derive the settings of worker `worker`.
    pub fn settings(&self, worker: &str) -> Result<Settings, ConfigError> {
        let (p, o) = (&self.processing, &self.observability);
        let broker = self.broker.resolve(worker, &p.client_limits())?;
        p.check_retry_in_place(&broker)?;
        let (queue, replies) = self.queues.names(naming::requests(worker), naming::replies(worker))?;
        p.check_limits()?;
        let retry = p.retry_policy()?;
        let breaker = p.breaker_policy()?;
        let inbox = p.inbox_settings()?;
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
            batch: p.batch_settings()?,
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

/// `--instance` when none is given: unique per process on a host.
fn default_instance() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
    format!("{host}-{}", std::process::id())
}

impl ProcessingArgs {
    /// What the broker's clients take from these flags.
    fn client_limits(&self) -> ClientLimits {
        ClientLimits {
            max_payload_bytes: self.max_payload_bytes,
            max_in_flight_bytes: self.max_in_flight_bytes,
            #[cfg(feature = "kafka")]
            ordering: self.ordering,
        }
    }

    /// `--retry-in-place` waits in a request's ordering lane, so it needs a broker that
    /// keeps one.
    fn check_retry_in_place(&self, broker: &Broker) -> Result<(), ConfigError> {
        #[cfg(feature = "kafka")]
        let keeps_a_lane = matches!(broker, Broker::Kafka(config) if config.ordering != Ordering::None);
        // Only Kafka's transport has lanes.
        #[cfg(not(feature = "kafka"))]
        let keeps_a_lane = {
            let _ = broker;
            false
        };
        if self.retry_in_place && !keeps_a_lane {
            return Err(invalid(
                "retry-in-place",
                "keeps a request's Kafka ordering lane: use it with kafka:// and --ordering key or partition",
            ));
        }
        Ok(())
    }

    /// The bounds of one request and of the work in flight: the reply-to patterns,
    /// concurrency, the handler's time, redeliveries, payload and byte budget.
    fn check_limits(&self) -> Result<(), ConfigError> {
        if self.reply_allow.iter().any(|p| p.trim().is_empty()) {
            return Err(invalid("reply-allow", "empty pattern"));
        }
        if !(1..=10_000).contains(&self.concurrency) {
            return Err(invalid("concurrency", format!("{} is outside 1..=10000", self.concurrency)));
        }
        if self.handler_timeout.is_zero() {
            return Err(invalid("handler-timeout", "must be > 0"));
        }
        #[cfg(feature = "amqp")]
        if self.quorum && i64::from(self.max_redeliveries) >= QUORUM_DELIVERY_LIMIT {
            return Err(invalid(
                "max-redeliveries",
                format!(
                    "{} with --quorum: must stay below the quorum queue's delivery limit \
                     ({QUORUM_DELIVERY_LIMIT}), which would dead-letter first",
                    self.max_redeliveries,
                ),
            ));
        }
        if self.max_payload_bytes == 0 {
            return Err(invalid("max-payload-bytes", "must be > 0"));
        }
        if self.max_in_flight_bytes < MIN_IN_FLIGHT_BYTES {
            return Err(invalid(
                "max-in-flight-bytes",
                format!("{} is below {MIN_IN_FLIGHT_BYTES} (1 MiB)", self.max_in_flight_bytes),
            ));
        }
        Ok(())
    }

    /// Batches of more than one request; they fill from the handler slots, so no larger
    /// than `--concurrency`.
    fn batch_settings(&self) -> Result<Option<BatchSettings>, ConfigError> {
        if !(1..=self.concurrency).contains(&self.batch_size) {
            let why = format!("{} is outside 1..=--concurrency ({})", self.batch_size, self.concurrency);
            return Err(invalid("batch-size", why));
        }
        if self.batch_wait.is_zero() || self.batch_wait >= self.handler_timeout {
            return Err(invalid("batch-wait", "must be > 0 and below --handler-timeout"));
        }
        Ok((self.batch_size > 1).then_some(BatchSettings { size: self.batch_size, wait: self.batch_wait }))
    }

    /// The in-process retries and the broker-level tiers (an empty delay is no tier).
    fn retry_policy(&self) -> Result<RetryPolicy, ConfigError> {
        let delays: Vec<Duration> = self.retry_delays.iter().flatten().copied().collect();
        Ok(RetryPolicy::new(
            self.retry_attempts,
            self.retry_backoff,
            self.retry_max_backoff,
            self.retry_jitter,
            delays,
        )?)
    }

    /// The circuit breaker's policy; `None` with `--breaker off`, whose other flags are
    /// then not checked.
    fn breaker_policy(&self) -> Result<Option<Policy>, ConfigError> {
        Ok(match self.breaker.as_str() {
            "off" => None,
            _ if self.breaker_probes > u32::from(u16::MAX) => {
                return Err(invalid("breaker-probes", "must be at most 65535"));
            }
            _ => Some(Policy::new(
                self.breaker_failures,
                self.breaker_ratio,
                self.breaker_window,
                self.breaker_cooldown,
                self.breaker_max_cooldown,
                self.breaker_probes,
            )?),
        })
    }

    /// The idempotent inbox; `None` without `--inbox`, whose other flags are then not
    /// checked.
    fn inbox_settings(&self) -> Result<Option<InboxSettings>, ConfigError> {
        Ok(match self.inbox.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(url) if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) => {
                return Err(invalid("inbox", format!("{} is not a postgres:// URL", redact(url))));
            }
            Some(_) if self.retry_in_place => {
                return Err(invalid("inbox", "cannot be combined with --retry-in-place yet"));
            }
            Some(_) if self.inbox_retention.is_zero() => return Err(invalid("inbox-retention", "must be > 0")),
            Some(_) if self.inbox_timeout.is_zero() => return Err(invalid("inbox-timeout", "must be > 0")),
            Some(_) if !(1..=1_000).contains(&self.inbox_connections) => {
                return Err(invalid("inbox-connections", format!("{} is outside 1..=1000", self.inbox_connections)));
            }
            Some(url) => Some(InboxSettings {
                url: url.to_owned(),
                retention: self.inbox_retention,
                bounds: crate::inbox::Bounds { timeout: self.inbox_timeout, connections: self.inbox_connections },
            }),
        })
    }
}

#[cfg(all(test, feature = "amqp", feature = "kafka"))]
mod tests {
    use super::*;
    use crate::config::parse;

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
    fn a_batch_size_of_one_is_no_batch() {
        assert_eq!(parse(&[]).expect("valid").batch, None);
        let batch = parse(&["--concurrency", "100", "--batch-size", "100"]).expect("valid").batch;
        assert_eq!(batch, Some(BatchSettings { size: 100, wait: Duration::from_millis(10) }));
    }

    #[test]
    fn empty_delay_list_means_no_tiers() {
        assert!(parse(&["--retry-delays", ""]).expect("valid").retry.delays().is_empty());
    }

    #[test]
    fn bad_values_name_the_flag() {
        let cases: [(&[&str], &str); 19] = [
            (&["--batch-size", "0"], "--batch-size"),
            (&["--batch-size", "65"], "--batch-size"),
            (&["--batch-size", "8", "--batch-wait", "0s"], "--batch-wait"),
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
}
