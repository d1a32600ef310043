//! Declaring a worker's queues on RabbitMQ, idempotently.
//!
//! Everything is routed through the default exchange (routing key = queue name), so a
//! reply-to is simply a queue name. Retry tiers are queues with a queue-level TTL that
//! dead-letter back to the work queue: per-message TTL only expires at the head of a
//! queue, so one queue per delay keeps every message's delay exact.
//!
//! With `--quorum` every queue is a quorum queue (replicated), and the broker counts each
//! message's deliveries. RabbitMQ 4 drops a message past 20 deliveries (its default
//! delivery limit) unless a dead-letter target is set; 3.x has no default limit. So the
//! work queue gets an explicit limit ([`QUORUM_DELIVERY_LIMIT`]) and dead-letters past
//! it into the dead-letter queue, at-least-once: a message that keeps coming back (a
//! worker crash-looping on it) ends there instead of vanishing or looping. The
//! dead-letter and parking queues get a limit no reader reaches
//! ([`QUORUM_READ_LIMIT`]): `courier dlq` reads records unacked and returns them, and
//! each return is a delivery.

use lapin::{
    Channel, ErrorKind,
    options::QueueDeclareOptions,
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::transport::{BrokerError, Topology, TransportError};

/// Declare every queue of `topology` on `channel`. A queue that exists with other
/// arguments is a [`TransportError::TopologyMismatch`] (and closes the channel).
pub async fn declare(channel: &Channel, topology: &Topology) -> Result<(), TransportError> {
    let quorum = topology.quorum;
    let mut work = queue_args(quorum);
    if quorum {
        work.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(QUORUM_DELIVERY_LIMIT));
        work.insert("x-dead-letter-exchange".into(), text(""));
        work.insert("x-dead-letter-routing-key".into(), text(&topology.dead_letter));
        work.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        work.insert("x-overflow".into(), text("reject-publish"));
    }
    declare_queue(channel, &topology.queue, work).await?;
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
    for name in [&topology.dead_letter, &topology.parking] {
        let mut args = queue_args(quorum);
        if quorum {
            args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(QUORUM_READ_LIMIT));
        }
        declare_queue(channel, name, args).await?;
    }
    declare_queue(channel, &topology.replies, queue_args(quorum)).await?;
    Ok(())
}

/// Deliveries of one message from a quorum work queue before the broker dead-letters it
/// (RabbitMQ 4's default, made explicit so 3.x behaves the same and it goes to the
/// dead-letter queue). Above `--max-redeliveries`, which ends refusals sooner.
pub const QUORUM_DELIVERY_LIMIT: i64 = 20;
/// The delivery limit of quorum dead-letter and parking queues: out of any reader's
/// reach (a `courier dlq stats` returns every record it read).
pub const QUORUM_READ_LIMIT: i64 = 1_000_000_000;

/// Declare one durable queue.
pub async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> Result<(), TransportError> {
    let queue = ShortString::try_new(name.to_owned()).map_err(|e| {
        TransportError::Broker(
            BrokerError::said(format!("queue name {name:?} is longer than 255 bytes")).with_source(e),
        )
    })?;
    let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(queue, options, args).await.map(drop).map_err(|error| classify(name, error))
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

/// Map a declare error: a mismatch gets its own variant, with the broker's explanation;
/// the rest is classified as any lapin error ([`super::failed`]).
pub(super) fn classify(name: &str, error: lapin::Error) -> TransportError {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) if amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => {
            TransportError::TopologyMismatch(format!(
                "queue {name} already exists with other settings ({}); delete it or align the flags",
                amqp.get_message()
            ))
        }
        _ => super::failed(error).context(format!("declaring {name}")),
    }
}
