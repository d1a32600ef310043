//! The worker's Prometheus metrics (the `prometheus` crate's registry and text encoder).
//! Names and labels are part of the operations contract (deploy/README.md, the Grafana dashboard, alerts).

use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric of one worker process. The per-message series (received, succeeded,
/// handler time, in flight) are resolved once: a label lookup per message costs a hash
/// and a lock.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    worker: String,
    received: IntCounter,
    succeeded: IntCounter,
    failed: IntCounterVec,
    retried: IntCounterVec,
    dead_lettered: IntCounterVec,
    requeued: IntCounterVec,
    parked: IntCounter,
    answered_from_inbox: IntCounter,
    handler_seconds: Histogram,
    batch_size: Histogram,
    in_flight: IntGauge,
    in_flight_bytes: IntGauge,
    ready: IntGaugeVec,
    queue_depth: IntGaugeVec,
    consumer_lag: IntGaugeVec,
    oldest_unfinished: GaugeVec,
    held_lanes: IntGaugeVec,
    /// The partitions the per-partition gauges show, to remove the gauges of revoked ones.
    lag_partitions: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<(String, i32)>>>,
    breaker_state: IntGaugeVec,
    breaker_transitions: IntCounterVec,
}

impl Metrics {
    /// A fresh registry for `worker`.
    pub fn new(worker: &str) -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("registered once");
            metric
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("registered once");
            metric
        };
        let handler_seconds = HistogramVec::new(
            HistogramOpts::new("courier_handler_duration_seconds", "Handler invocation time.")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["worker"],
        )
        .expect("valid metric");
        registry.register(Box::new(handler_seconds.clone())).expect("registered once");
        let batch_size = HistogramVec::new(
            HistogramOpts::new("courier_batch_size", "Requests per batch handler call (--batch-size).")
                .buckets(vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]),
            &["worker"],
        )
        .expect("valid metric");
        registry.register(Box::new(batch_size.clone())).expect("registered once");
        // Resident memory, CPU seconds, open file descriptors (Linux: /proc/self).
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("registered once");
        gauge(
            "courier_build_info",
            "Always 1: the Courier version the process was built from.",
            &["worker", "version"],
        )
        .with_label_values(&[worker, env!("CARGO_PKG_VERSION")])
        .set(1);
        // A counter of this worker alone.
        let own = |name: &str, help: &str| counter(name, help, &["worker"]).with_label_values(&[worker]);
        Self {
            worker: worker.to_owned(),
            received: own("courier_messages_received_total", "Deliveries received."),
            succeeded: own("courier_messages_succeeded_total", "Requests answered with an ok reply."),
            failed: counter(
                "courier_messages_failed_total",
                "Failed handler rounds and refused inputs, by kind.",
                &["worker", "kind"],
            ),
            retried: counter(
                "courier_messages_retried_total",
                "Requests handed to a delayed-retry tier.",
                &["worker", "tier"],
            ),
            dead_lettered: counter(
                "courier_messages_dead_lettered_total",
                "Dead-letter copies confirmed, by kind and fingerprint.",
                &["worker", "kind", "fingerprint"],
            ),
            requeued: counter(
                "courier_messages_requeued_total",
                "Deliveries returned to the broker because an output was not confirmed, by reason.",
                &["worker", "reason"],
            ),
            parked: own(
                "courier_messages_parked_total",
                "Dead-letter copies the dead-letter queue refused for good, written to the parking queue.",
            ),
            answered_from_inbox: own(
                "courier_inbox_answered_total",
                "Requests answered again from the inbox (--inbox), without the handler: redeliveries and duplicates.",
            ),
            handler_seconds: handler_seconds.with_label_values(&[worker]),
            batch_size: batch_size.with_label_values(&[worker]),
            in_flight: gauge("courier_in_flight", "Deliveries being processed.", &["worker"])
                .with_label_values(&[worker]),
            in_flight_bytes: gauge(
                "courier_in_flight_bytes",
                "Bytes (payload, key, headers) of the requests being processed and of their outputs awaiting a confirm \
                 (--max-in-flight-bytes), sampled every 2 s.",
                &["worker"],
            )
            .with_label_values(&[worker]),
            ready: gauge("courier_ready", "1 while connected and consuming.", &["worker"]),
            queue_depth: gauge(
                "courier_queue_depth",
                "Messages waiting in a queue: RabbitMQ's work and dead-letter queues; Kafka's dead-letter topic (records not \
                 yet replayed, parked or purged).",
                &["worker", "queue"],
            ),
            consumer_lag: gauge(
                "courier_consumer_lag",
                "Kafka: high watermark minus the consumer's position.",
                &["worker", "topic", "partition"],
            ),
            oldest_unfinished: {
                let metric = GaugeVec::new(
                    Opts::new(
                        "courier_oldest_unfinished_seconds",
                        "Kafka: how long the partition's oldest unfinished record has held its committed offset back \
                         (0 when none is unfinished; sampled every 2 s). Rising while records still finish: stuck.",
                    ),
                    &["worker", "topic", "partition"],
                )
                .expect("valid metric");
                registry.register(Box::new(metric.clone())).expect("registered once");
                metric
            },
            held_lanes: gauge(
                "courier_held_lanes",
                "Kafka: ordering lanes of the partition held by a record retrying in place (--retry-in-place).",
                &["worker", "topic", "partition"],
            ),
            lag_partitions: std::sync::Arc::default(),
            breaker_state: gauge(
                "courier_breaker_state",
                "A dependency's circuit breaker: 0 closed, 1 half-open, 2 open (no deliveries taken).",
                &["worker", "dependency"],
            ),
            breaker_transitions: counter(
                "courier_breaker_transitions_total",
                "Circuit breaker transitions, by dependency and the phase entered.",
                &["worker", "dependency", "to"],
            ),
            registry,
        }
    }

    /// The registry, for a process that adds metrics of its own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A delivery arrived.
    pub(crate) fn received(&self) {
        self.received.inc();
    }

    /// An ok reply was confirmed.
    pub(crate) fn succeeded(&self) {
        self.succeeded.inc();
    }

    /// A request answered before was answered again from the inbox.
    pub(crate) fn answered_from_inbox(&self) {
        self.answered_from_inbox.inc();
    }

    /// A delivery round failed with `kind`.
    pub(crate) fn failed(&self, kind: &str) {
        self.failed.with_label_values(&[&self.worker, kind]).inc();
    }

    /// A request went to the retry tier `tier`.
    pub(crate) fn retried(&self, tier: &str) {
        self.retried.with_label_values(&[&self.worker, tier]).inc();
    }

    /// A dead-letter copy was confirmed.
    pub(crate) fn dead_lettered(&self, kind: &str, fingerprint: &str) {
        self.dead_lettered.with_label_values(&[&self.worker, kind, fingerprint]).inc();
    }

    /// A delivery went back to the broker: an output was not confirmed for `reason`.
    pub(crate) fn requeued(&self, reason: &str) {
        self.requeued.with_label_values(&[&self.worker, reason]).inc();
    }

    /// The dead-letter queue refused a copy for good; it went to the parking queue.
    pub(crate) fn parked(&self) {
        self.parked.inc();
    }

    /// One handler invocation took `elapsed`.
    pub(crate) fn handler_took(&self, elapsed: Duration) {
        self.handler_seconds.observe(elapsed.as_secs_f64());
    }

    /// A batch handler call with `requests` requests.
    pub(crate) fn batch(&self, requests: usize) {
        self.batch_size.observe(requests as f64);
    }

    /// Counts a delivery in flight until the guard is dropped.
    pub(crate) fn in_flight(&self) -> InFlight {
        let gauge = self.in_flight.clone();
        gauge.inc();
        InFlight(gauge)
    }

    /// Bytes held against the worker's byte budget.
    pub(crate) fn set_in_flight_bytes(&self, bytes: usize) {
        self.in_flight_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Readiness as a gauge.
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.with_label_values(&[&self.worker]).set(i64::from(ready));
    }

    /// Messages waiting in `queue`.
    pub(crate) fn set_queue_depth(&self, queue: &str, messages: u64) {
        self.queue_depth.with_label_values(&[&self.worker, queue]).set(i64::try_from(messages).unwrap_or(i64::MAX));
    }

    /// The backlog of the partitions assigned now. A lag not known this time keeps its
    /// last value; the gauges of partitions no longer assigned are removed.
    pub(crate) fn set_partitions(&self, partitions: &[PartitionBacklog]) {
        let mut shown = self.lag_partitions.lock().unwrap_or_else(|p| p.into_inner());
        let now: std::collections::BTreeSet<(String, i32)> =
            partitions.iter().map(|p| (p.topic.clone(), p.partition)).collect();
        for (topic, partition) in shown.difference(&now) {
            let labels = [self.worker.as_str(), topic, &partition.to_string()];
            let _ = self.consumer_lag.remove_label_values(&labels);
            let _ = self.oldest_unfinished.remove_label_values(&labels);
            let _ = self.held_lanes.remove_label_values(&labels);
        }
        for backlog in partitions {
            let partition = backlog.partition.to_string();
            let labels = [self.worker.as_str(), &backlog.topic, &partition];
            if let Some(lag) = backlog.lag {
                self.consumer_lag.with_label_values(&labels).set(i64::try_from(lag).unwrap_or(i64::MAX));
            }
            self.oldest_unfinished.with_label_values(&labels).set(backlog.oldest_unfinished.as_secs_f64());
            self.held_lanes.with_label_values(&labels).set(i64::try_from(backlog.held_lanes).unwrap_or(i64::MAX));
        }
        *shown = now;
    }

    /// A dependency's circuit breaker is in the phase whose gauge value is `state`;
    /// `entered`: the phase it just changed to, counted as a transition.
    pub(crate) fn breaker(&self, dependency: &str, state: i64, entered: Option<&str>) {
        self.breaker_state.with_label_values(&[&self.worker, dependency]).set(state);
        if let Some(phase) = entered {
            self.breaker_transitions.with_label_values(&[&self.worker, dependency, phase]).inc();
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(%error, "Could not encode the metrics.");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// One assigned Kafka partition's backlog, as [`Metrics::set_partitions`] shows it.
#[derive(Debug)]
pub(crate) struct PartitionBacklog {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    /// `None`: not known this time.
    pub(crate) lag: Option<u64>,
    pub(crate) oldest_unfinished: Duration,
    pub(crate) held_lanes: usize,
}

/// Keeps a delivery counted in `courier_in_flight`.
#[derive(Debug)]
pub(crate) struct InFlight(prometheus::IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_in_the_text_exposition() {
        let metrics = Metrics::new("greeter");
        metrics.received();
        metrics.failed("schema");
        metrics.dead_lettered("schema", "abc");
        metrics.set_partitions(&[lagging("t", 2, Some(7))]);
        let guard = metrics.in_flight();
        let text = metrics.render();
        assert!(text.contains(r#"courier_messages_received_total{worker="greeter"} 1"#), "{text}");
        assert!(text.contains(r#"courier_messages_failed_total{kind="schema",worker="greeter"} 1"#), "{text}");
        assert!(text.contains(r#"courier_consumer_lag{partition="2",topic="t",worker="greeter"} 7"#), "{text}");
        assert!(text.contains(r#"courier_in_flight{worker="greeter"} 1"#), "{text}");
        drop(guard);
        assert!(metrics.render().contains(r#"courier_in_flight{worker="greeter"} 0"#));
    }

    #[test]
    fn the_process_and_its_version_are_shown() {
        let text = Metrics::new("greeter").render();
        let version = env!("CARGO_PKG_VERSION");
        assert!(text.contains(&format!(r#"courier_build_info{{version="{version}",worker="greeter"}} 1"#)), "{text}");
        for metric in ["process_resident_memory_bytes ", "process_cpu_seconds_total ", "process_open_fds "] {
            assert!(text.lines().any(|line| line.starts_with(metric)), "{metric}missing:\n{text}");
        }
    }

    #[test]
    fn a_revoked_partitions_lag_is_removed_and_an_unknown_lag_keeps_its_value() {
        let metrics = Metrics::new("greeter");
        let gauge =
            |p: i32, lag: u64| format!(r#"courier_consumer_lag{{partition="{p}",topic="t",worker="greeter"}} {lag}"#);
        metrics.set_partitions(&[lagging("t", 0, Some(3)), lagging("t", 1, Some(5))]);
        let text = metrics.render();
        assert!(text.contains(&gauge(0, 3)) && text.contains(&gauge(1, 5)), "{text}");
        metrics.set_partitions(&[lagging("t", 0, None)]);
        let text = metrics.render();
        assert!(text.contains(&gauge(0, 3)), "unknown this time: kept\n{text}");
        assert!(!text.contains(r#"partition="1""#), "revoked: removed\n{text}");
        metrics.set_partitions(&[]);
        assert!(!metrics.render().contains("courier_consumer_lag{"), "nothing assigned");
    }

    fn lagging(topic: &str, partition: i32, lag: Option<u64>) -> PartitionBacklog {
        PartitionBacklog { topic: topic.to_owned(), partition, lag, oldest_unfinished: Duration::ZERO, held_lanes: 0 }
    }

    #[test]
    fn a_partitions_oldest_wait_and_held_lanes_show_until_it_is_revoked() {
        let metrics = Metrics::new("greeter");
        let stuck = PartitionBacklog {
            oldest_unfinished: Duration::from_millis(7500),
            held_lanes: 2,
            ..lagging("t", 1, Some(4))
        };
        metrics.set_partitions(&[stuck]);
        let text = metrics.render();
        assert!(
            text.contains(r#"courier_oldest_unfinished_seconds{partition="1",topic="t",worker="greeter"} 7.5"#),
            "{text}"
        );
        assert!(text.contains(r#"courier_held_lanes{partition="1",topic="t",worker="greeter"} 2"#), "{text}");
        metrics.set_partitions(&[]);
        let text = metrics.render();
        assert!(
            !text.contains("courier_oldest_unfinished_seconds{") && !text.contains("courier_held_lanes{"),
            "{text}"
        );
    }
}
