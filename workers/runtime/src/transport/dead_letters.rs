//! A dead-letter (or parking) queue as a store: read in order, settled in atomic batches,
//! the same way on RabbitMQ and Kafka. `courier dlq` inspects, replays, parks and purges
//! through it; which records go where is the caller's business.
//!
//! A [`DeadLetterStore`] hands out the records still in the queue, in order, and settles a
//! batch of them atomically: each record's output (a replay, a parked copy, or nothing for
//! a purge) is published and the record leaves the queue together, or neither happens.
//! That is what makes a replay crash-safe: killed mid-batch, the batch never happened, and
//! a rerun neither loses nor repeats a record.
//!
//! - RabbitMQ ([`AmqpDeadLetterStore`]): records are fetched unacked on a transactional
//!   channel; a batch is `publish…, ack…, tx.commit`. Records read but not settled return
//!   to the queue in their original order when the channel closes.
//! - Kafka ([`KafkaDeadLetterStore`]): the dead-letter topic is a log and stays as it is;
//!   a record "leaves" when its entry is written to the ledger topic `<dlq>.ledger`. A
//!   batch is one Kafka transaction holding the outputs and their ledger entries.
//!
//! A store is opened from a connected transport
//! ([`Connected::dead_letters`](crate::broker::Connected::dead_letters)).

use std::{fmt, future::Future};

#[cfg(feature = "amqp")]
use crate::transport::amqp::AmqpDeadLetterStore;
#[cfg(feature = "kafka")]
use crate::transport::kafka::KafkaDeadLetterStore;
use crate::transport::{Message, PublishError, TransportError};

/// Where a record sits in its queue, as the store knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordId {
    /// RabbitMQ: position in the queue when it was read (1 = head).
    Position(u64),
    /// Kafka: partition and offset.
    Offset {
        /// Partition of the dead-letter topic.
        partition: i32,
        /// Offset in that partition.
        offset: i64,
    },
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Position(n) => write!(f, "#{n}"),
            Self::Offset { partition, offset } => write!(f, "{partition}@{offset}"),
        }
    }
}

/// One dead-letter record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Where it is.
    pub id: RecordId,
    /// The record as stored: the original payload and headers plus the failure headers.
    pub message: Message,
}

/// What becomes of one record when its batch is settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// The record leaving the queue.
    pub id: RecordId,
    /// Published in the same batch: `(destination, message)`; `None` drops the record.
    pub output: Option<(String, Message)>,
}

/// Why a dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The broker or its client failed, classified where it was read
    /// ([`TransportError::is_transient`]).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The queue/topic does not exist.
    #[error("no queue or topic named `{0}` (declare the worker's topology first: `courier topology declare`)")]
    NotFound(String),
    /// A batch this store cannot settle: a record it did not hand out or settled already,
    /// or any batch on a store opened read-only. The caller's mistake, never the broker's.
    #[error("{0}")]
    Misuse(String),
}

impl DeadLetterError {
    /// Whether running the same operation again later may succeed (the broker is back).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transport(error) if error.is_transient())
    }
}

/// A publish error met by a store (a passive declare asked whether a queue exists).
impl From<PublishError> for DeadLetterError {
    fn from(error: PublishError) -> Self {
        Self::Transport(error.into())
    }
}

/// A dead-letter queue or topic, read in order and settled in atomic batches.
pub trait DeadLetterStore: Send {
    /// How many records are in the queue now (Kafka: records not yet in the ledger,
    /// counted while reading; `None` until known).
    fn pending(&self) -> Option<u64>;

    /// The next records (at most `max`) in queue order; empty once every record that was
    /// in the queue when the store was opened has been read.
    fn next_batch(&mut self, max: usize) -> impl Future<Output = Result<Vec<Record>, DeadLetterError>> + Send;

    /// Whether `destination` exists (a replay target must, or the batch is not sent).
    fn exists(&mut self, destination: &str) -> impl Future<Output = Result<bool, DeadLetterError>> + Send;

    /// Publish every output and remove every record of `batch`, all or nothing.
    fn settle(&mut self, batch: Vec<Settlement>) -> impl Future<Output = Result<(), DeadLetterError>> + Send;

    /// Stop reading: records read but not settled stay in the queue, in their order.
    fn close(self) -> impl Future<Output = Result<(), DeadLetterError>> + Send;
}

/// The dead-letter store of whichever broker a transport is connected to.
#[cfg(any(feature = "amqp", feature = "kafka"))]
#[derive(Debug)]
pub enum AnyDeadLetterStore {
    /// A RabbitMQ queue.
    #[cfg(feature = "amqp")]
    Amqp(AmqpDeadLetterStore),
    /// A Kafka topic.
    #[cfg(feature = "kafka")]
    Kafka(KafkaDeadLetterStore),
}

#[cfg(any(feature = "amqp", feature = "kafka"))]
impl DeadLetterStore for AnyDeadLetterStore {
    fn pending(&self) -> Option<u64> {
        match self {
            #[cfg(feature = "amqp")]
            Self::Amqp(store) => store.pending(),
            #[cfg(feature = "kafka")]
            Self::Kafka(store) => store.pending(),
        }
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, DeadLetterError> {
        match self {
            #[cfg(feature = "amqp")]
            Self::Amqp(store) => store.next_batch(max).await,
            #[cfg(feature = "kafka")]
            Self::Kafka(store) => store.next_batch(max).await,
        }
    }

    async fn exists(&mut self, destination: &str) -> Result<bool, DeadLetterError> {
        match self {
            #[cfg(feature = "amqp")]
            Self::Amqp(store) => store.exists(destination).await,
            #[cfg(feature = "kafka")]
            Self::Kafka(store) => store.exists(destination).await,
        }
    }

    async fn settle(&mut self, batch: Vec<Settlement>) -> Result<(), DeadLetterError> {
        match self {
            #[cfg(feature = "amqp")]
            Self::Amqp(store) => store.settle(batch).await,
            #[cfg(feature = "kafka")]
            Self::Kafka(store) => store.settle(batch).await,
        }
    }

    async fn close(self) -> Result<(), DeadLetterError> {
        match self {
            #[cfg(feature = "amqp")]
            Self::Amqp(store) => store.close().await,
            #[cfg(feature = "kafka")]
            Self::Kafka(store) => store.close().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::BrokerError;

    #[test]
    fn records_are_named_as_their_broker_places_them() {
        assert_eq!(RecordId::Position(3).to_string(), "#3");
        assert_eq!(RecordId::Offset { partition: 2, offset: 41 }.to_string(), "2@41");
    }

    /// The texts the CLI prints, which the docs and the black-box tests quote.
    #[test]
    fn errors_say_what_to_do_and_whether_a_rerun_may_help() {
        let missing = DeadLetterError::NotFound("q.dlq".into());
        assert_eq!(
            missing.to_string(),
            "no queue or topic named `q.dlq` (declare the worker's topology first: `courier topology declare`)"
        );
        assert!(!missing.is_transient());
        let moving = DeadLetterError::from(TransportError::Unavailable(BrokerError::said(
            "q.dlq reports no records but holds some: try again",
        )));
        assert_eq!(moving.to_string(), "broker unavailable: q.dlq reports no records but holds some: try again");
        assert!(moving.is_transient());
        let refused = DeadLetterError::from(TransportError::Broker("the broker does not support transactions".into()));
        assert_eq!(refused.to_string(), "the broker does not support transactions");
        assert!(!refused.is_transient());
        assert!(DeadLetterError::from(PublishError::Unavailable("no answer".into())).is_transient());
        assert!(!DeadLetterError::Misuse("record #1 was not read or is already settled".into()).is_transient());
    }
}
