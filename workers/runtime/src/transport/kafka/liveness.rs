//! Kafka readiness from librdkafka's own view, within about a second both ways: a member
//! is ready while it holds an assignment (it has joined its group; an empty assignment
//! counts: more members than partitions is normal) and librdkafka's latest statistics
//! (every [`STATS_INTERVAL_MS`]) show a broker connection up. Statistics that stop
//! arriving count as "not ready" too.
//!
//! The parse is pure and tested here; [`Liveness`] holds what the consumer's callbacks
//! report.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// librdkafka's `statistics.interval.ms` for the consumer.
pub(super) const STATS_INTERVAL_MS: &str = "500";
/// Statistics older than this mean librdkafka's view is unknown: not ready.
pub(super) const STALE_AFTER: Duration = Duration::from_secs(2);

/// The part of librdkafka's statistics JSON read here.
#[derive(serde::Deserialize)]
struct Stats {
    brokers: std::collections::HashMap<String, Broker>,
}

#[derive(serde::Deserialize)]
struct Broker {
    /// -1 for a bootstrap address not yet known as a broker.
    nodeid: i32,
    /// `UP`, `DOWN`, `CONNECT`, `TRY_CONNECT`, …
    state: String,
}

/// Whether the statistics show a connection to a known broker up; `None` when they do
/// not parse.
pub(super) fn any_broker_up(statistics: &[u8]) -> Option<bool> {
    let stats: Stats = serde_json::from_slice(statistics).ok()?;
    Some(stats.brokers.values().any(|b| b.nodeid >= 0 && b.state == "UP"))
}

/// What the consumer's callbacks last reported.
#[derive(Debug)]
pub(super) struct Liveness {
    /// When this was created; statistics times are counted from it.
    start: Instant,
    /// Milliseconds after `start` of the last statistics, plus one (0: none yet).
    stats_at: AtomicU64,
    /// Whether those statistics showed a broker up.
    broker_up: AtomicBool,
    /// Whether the member holds an assignment.
    assigned: AtomicBool,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            stats_at: AtomicU64::new(0),
            broker_up: AtomicBool::new(false),
            assigned: AtomicBool::new(false),
        }
    }
}

impl Liveness {
    /// New statistics arrived.
    pub(super) fn statistics(&self, raw: &[u8]) {
        let Some(up) = any_broker_up(raw) else { return };
        self.broker_up.store(up, Ordering::Relaxed);
        let at = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        self.stats_at.store(at, Ordering::Relaxed);
    }

    /// The member got an assignment (`true`) or lost it (`false`).
    pub(super) fn set_assigned(&self, assigned: bool) {
        self.assigned.store(assigned, Ordering::Relaxed);
    }

    /// Ready: assigned, a broker up, and statistics fresh.
    pub(super) fn ready(&self) -> bool {
        self.ready_at(self.start.elapsed())
    }

    fn ready_at(&self, now: Duration) -> bool {
        let at = self.stats_at.load(Ordering::Relaxed);
        let fresh = at > 0 && now.saturating_sub(Duration::from_millis(at - 1)) < STALE_AFTER;
        fresh && self.broker_up.load(Ordering::Relaxed) && self.assigned.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: &[u8] = br#"{"name":"c","brokers":{"127.0.0.1:9092/bootstrap":{"nodeid":-1,"state":"INIT"},
        "127.0.0.1:9092/1":{"nodeid":1,"state":"UP","rtt":{"avg":1}}},"topics":{}}"#;
    const DOWN: &[u8] = br#"{"brokers":{"127.0.0.1:9092/1":{"nodeid":1,"state":"CONNECT"},
        "127.0.0.1:9092/bootstrap":{"nodeid":-1,"state":"UP"}}}"#;

    #[test]
    fn a_known_broker_up_is_what_counts() {
        assert_eq!(any_broker_up(UP), Some(true));
        assert_eq!(any_broker_up(DOWN), Some(false), "a bootstrap connection is no broker");
        assert_eq!(any_broker_up(b"{}"), None);
        assert_eq!(any_broker_up(b"not json"), None);
    }

    #[test]
    fn ready_needs_an_assignment_a_broker_and_fresh_statistics() {
        let liveness = Liveness::default();
        assert!(!liveness.ready_at(Duration::ZERO), "nothing known yet");
        liveness.statistics(UP);
        assert!(!liveness.ready_at(Duration::ZERO), "not assigned yet");
        liveness.set_assigned(true);
        assert!(liveness.ready_at(Duration::ZERO));
        assert!(!liveness.ready_at(STALE_AFTER + Duration::from_millis(10)), "statistics stopped");
        liveness.statistics(DOWN);
        assert!(!liveness.ready(), "the broker went down");
        liveness.statistics(UP);
        liveness.set_assigned(false);
        assert!(!liveness.ready(), "revoked");
    }
}
