//! Declaring a worker's queues on RabbitMQ, idempotently.
//!
//! Everything is routed through the default exchange (routing key = queue name), so a
//! reply-to is simply a queue name. Retry tiers are queues with a queue-level TTL that
//! dead-letter back to the work queue: per-message TTL only expires at the head of a
//! queue, so one queue per delay keeps every message's delay exact.

use lapin::{
    Channel, ErrorKind,
    options::QueueDeclareOptions,
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::transport::{Topology, TransportError};

/// Declare every queue of `topology` on `channel`. A queue that exists with other
/// arguments is a [`TransportError::TopologyMismatch`] (and closes the channel).
pub async fn declare(channel: &Channel, topology: &Topology) -> Result<(), TransportError> {
    let quorum = topology.quorum;
    declare_queue(channel, &topology.queue, queue_args(quorum)).await?;
    for tier in &topology.retry_tiers {
        let mut args = queue_args(quorum);
        let ttl = i64::try_from(tier.delay.as_millis()).unwrap_or(i64::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
        args.insert("x-dead-letter-exchange".into(), text(""));
        args.insert("x-dead-letter-routing-key".into(), text(&topology.queue));
        if quorum {
            // Quorum queues can dead-letter at-least-once (classic ones republish without confirms).
            args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
            args.insert("x-overflow".into(), text("reject-publish"));
        }
        declare_queue(channel, &tier.name, args).await?;
    }
    for name in [&topology.dead_letter, &topology.parking, &topology.replies] {
        declare_queue(channel, name, queue_args(quorum)).await?;
    }
    Ok(())
}

/// Declare one durable queue.
pub async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> Result<(), TransportError> {
    let queue = ShortString::try_new(name.to_owned())
        .map_err(|_| TransportError::Broker(format!("queue name {name:?} is longer than 255 bytes")))?;
    let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(queue, options, args).await.map(drop).map_err(|error| classify(name, &error))
}

fn queue_args(quorum: bool) -> FieldTable {
    let mut args = FieldTable::default();
    if quorum {
        args.insert("x-queue-type".into(), text("quorum"));
    }
    args
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes()))
}

/// Map a declare error: a mismatch gets its own variant, with the broker's explanation.
pub(super) fn classify(name: &str, error: &lapin::Error) -> TransportError {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) if amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => {
            TransportError::TopologyMismatch(format!(
                "queue {name} already exists with other settings ({}); delete it or align the flags",
                amqp.get_message()
            ))
        }
        _ if error.is_io_error() => TransportError::Unavailable(error.to_string()),
        _ => TransportError::Broker(format!("declaring {name}: {error}")),
    }
}
