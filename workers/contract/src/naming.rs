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

/// The queues/topics a worker uses, named by the rules of this module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// The work queue/topic requests arrive on.
    pub queue: String,
    /// Delayed-retry tiers, shortest first; each sends its messages back to `queue` after `delay`.
    pub retry_tiers: Vec<RetryTier>,
    /// Where terminal failures go.
    pub dead_letter: String,
    /// Where replay parks records that keep failing.
    pub parking: String,
    /// The default reply destination (for requests that name none).
    pub replies: String,
    /// Use a quorum queue for `queue` (RabbitMQ only).
    pub quorum: bool,
}

impl Topology {
    /// Just a reply queue (for a request-reply client): every role names that one queue,
    /// so declaring it creates nothing else.
    pub fn replies_only(queue: &str) -> Self {
        Self {
            queue: queue.to_owned(),
            retry_tiers: Vec::new(),
            dead_letter: queue.to_owned(),
            parking: queue.to_owned(),
            replies: queue.to_owned(),
            quorum: false,
        }
    }
}

/// One delayed-retry tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryTier {
    /// Queue/topic name of the tier.
    pub name: String,
    /// How long a message waits there before it is delivered again.
    pub delay: Duration,
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

/// Longest Kafka topic name (Kafka's own limit; librdkafka cannot even look up names over
/// 512 bytes).
pub const KAFKA_TOPIC_MAX: usize = 249;
/// Longest RabbitMQ queue name in bytes (an AMQP short string).
pub const AMQP_QUEUE_MAX: usize = 255;

/// Why `name` cannot be a Kafka topic, or `None` when it can: 1 to 249 characters of
/// `a-z A-Z 0-9 . _ -`, and neither `.` nor `..`.
pub fn kafka_topic_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > KAFKA_TOPIC_MAX {
        return Some("a Kafka topic name has 1 to 249 characters");
    }
    if !name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-')) {
        return Some("a Kafka topic name has only the characters a-z A-Z 0-9 . _ -");
    }
    if name == "." || name == ".." {
        return Some("`.` and `..` are not Kafka topic names");
    }
    None
}

/// Why `name` cannot be a RabbitMQ queue to publish to, or `None` when it can: 1 to 255
/// bytes of UTF-8 without control characters (a NUL or a line break in a name is a
/// producer's bug, never a queue anyone declared).
pub fn amqp_queue_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > AMQP_QUEUE_MAX {
        return Some("a RabbitMQ queue name has 1 to 255 bytes");
    }
    if name.chars().any(char::is_control) {
        return Some("a RabbitMQ queue name has no control characters");
    }
    None
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

    #[test]
    fn kafka_topic_names_follow_kafkas_rules() {
        for good in ["a", "greeter.replies", "A-b_c.9", &"x".repeat(249)] {
            assert_eq!(kafka_topic_problem(good), None, "{good}");
        }
        for bad in ["", ".", "..", "a b", "a\0b", "é.replies", "a/b", &"x".repeat(250), &"x".repeat(600)] {
            assert!(kafka_topic_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn amqp_queue_names_follow_rabbitmqs_rules() {
        for good in ["a", "client-7.replies", "amq.gen-Xy_z", "é.replies", "a b", &"x".repeat(255)] {
            assert_eq!(amqp_queue_problem(good), None, "{good}");
        }
        for bad in ["", "a\0b", "a\nb", &"x".repeat(256), &"é".repeat(128)] {
            assert!(amqp_queue_problem(bad).is_some(), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Any string gets an answer (no panic), and an accepted name is within the limits.
        #[test]
        fn every_name_gets_an_answer(name in "\\PC{0,300}|[a-z.\\x00-\\x1f]{0,300}") {
            if kafka_topic_problem(&name).is_none() {
                proptest::prop_assert!(name.len() <= KAFKA_TOPIC_MAX && name.is_ascii());
            }
            if amqp_queue_problem(&name).is_none() {
                proptest::prop_assert!(name.len() <= AMQP_QUEUE_MAX && !name.contains('\0'));
            }
        }
    }
}
