//! Naming rules for queues and topics, derived from the work queue's name.
//!
//! | role          | name                          | example                          |
//! |---------------|-------------------------------|----------------------------------|
//! | requests      | `<worker>.requests`           | `greeter.requests`               |
//! | replies       | `<worker>.replies` (default)  | `greeter.replies`                |
//! | retry tier    | `<requests>.retry.<delay>`    | `greeter.requests.retry.5s`      |
//! | dead letters  | `<requests>.dlq`              | `greeter.requests.dlq`           |
//! | parked        | `<requests>.parking`          | `greeter.requests.parking`       |
//! | replay ledger | `<dlq or parking>.ledger`     | `greeter.requests.dlq.ledger`    |
//!
//! The ledger exists on Kafka only: it records which dead-letter records were replayed,
//! parked or purged (a topic is a log; its records cannot be removed one by one).

use std::time::Duration;

use crate::transport::{RetryTier, Topology};

/// The default work queue of a worker.
pub fn requests(worker: &str) -> String {
    format!("{worker}.requests")
}

/// The default reply queue of a worker.
pub fn replies(worker: &str) -> String {
    format!("{worker}.replies")
}

/// The retry tier of `queue` with the given delay; the delay is written the shortest
/// exact way in ms, s, m or h (`500ms`, `5s`, `2m`, `1h`).
pub fn retry_tier(queue: &str, delay: Duration) -> String {
    format!("{queue}.retry.{}", delay_label(delay))
}

/// The dead-letter queue of `queue`.
pub fn dead_letter(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// The parking queue of `queue` (records replay gave up on).
pub fn parking(queue: &str) -> String {
    format!("{queue}.parking")
}

/// The replay ledger of a Kafka dead-letter or parking topic.
pub fn ledger(topic: &str) -> String {
    format!("{topic}.ledger")
}

/// The work queue a message consumed from `source` belongs to: `source` itself, or the
/// queue of which `source` is a retry tier.
pub fn work_queue_of(source: &str) -> &str {
    source.rsplit_once(".retry.").map_or(source, |(queue, _)| queue)
}

/// The whole topology of a work queue.
pub fn topology(queue: &str, delays: &[Duration], default_replies: &str, quorum: bool) -> Topology {
    Topology {
        queue: queue.to_owned(),
        retry_tiers: delays.iter().map(|&delay| RetryTier { name: retry_tier(queue, delay), delay }).collect(),
        dead_letter: dead_letter(queue),
        parking: parking(queue),
        replies: default_replies.to_owned(),
        quorum,
    }
}

fn delay_label(delay: Duration) -> String {
    let ms = delay.as_millis();
    match ms {
        _ if ms > 0 && ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms > 0 && ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms > 0 && ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_table() {
        assert_eq!(requests("greeter"), "greeter.requests");
        assert_eq!(replies("greeter"), "greeter.replies");
        assert_eq!(retry_tier("greeter.requests", Duration::from_secs(5)), "greeter.requests.retry.5s");
        assert_eq!(retry_tier("q", Duration::from_millis(1500)), "q.retry.1500ms");
        assert_eq!(retry_tier("q", Duration::from_secs(120)), "q.retry.2m");
        assert_eq!(retry_tier("q", Duration::from_secs(7200)), "q.retry.2h");
        assert_eq!(dead_letter("greeter.requests"), "greeter.requests.dlq");
        assert_eq!(parking("greeter.requests"), "greeter.requests.parking");
        assert_eq!(ledger("greeter.requests.dlq"), "greeter.requests.dlq.ledger");
        assert_eq!(work_queue_of("greeter.requests.retry.5s"), "greeter.requests");
        assert_eq!(work_queue_of("greeter.requests"), "greeter.requests");
    }
}
