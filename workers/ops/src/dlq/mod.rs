//! Dead-letter operations: inspect, group, replay, park and purge the records of a
//! dead-letter (or parking) queue, the same way on RabbitMQ and Kafka.
//!
//! A [`Store`] hands out the records still in the queue, in order, and settles a batch
//! of them atomically: each record's output (a replay, a parked copy, or nothing for a
//! purge) is published and the record leaves the queue together, or neither happens.
//! That is what makes a replay crash-safe: killed mid-batch, the batch never happened,
//! and a rerun neither loses nor repeats a record.
//!
//! - RabbitMQ ([`amqp`]): records are fetched unacked on a transactional channel; a
//!   batch is `publish…, ack…, tx.commit`. Records read but not settled return to the
//!   queue in their original order when the channel closes.
//! - Kafka ([`kafka`]): the dead-letter topic is a log and stays as it is; a record
//!   "leaves" when its entry is written to the ledger topic `<dlq>.ledger`. A batch is
//!   one Kafka transaction holding the outputs and their ledger entries.

pub mod amqp;
pub mod command;
pub mod destination;
pub mod filter;
pub mod kafka;
pub mod report;
pub mod run;

use std::fmt;

use courier::{
    broker::{Broker, Connected},
    transport::{Message, TransportError},
};

pub use filter::Filter;
pub use run::{Operation, RunOptions, Summary};

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
pub enum DlqError {
    /// The broker could not be reached, or the connection dropped.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The queue/topic does not exist.
    #[error("no queue or topic named `{0}` (declare the worker's topology first: `courier topology declare`)")]
    NotFound(String),
    /// The broker refused an operation.
    #[error("{0}")]
    Broker(String),
}

/// A dead-letter queue or topic, read in order and settled in atomic batches.
pub trait Store: Send {
    /// How many records are in the queue now (Kafka: records not yet in the ledger,
    /// counted while reading; `None` until known).
    fn pending(&self) -> Option<u64>;

    /// The next records (at most `max`) in queue order; empty once every record that was
    /// in the queue when the store was opened has been read.
    fn next_batch(&mut self, max: usize) -> impl Future<Output = Result<Vec<Record>, DlqError>> + Send;

    /// Whether `destination` exists (a replay target must, or the batch is not sent).
    fn exists(&mut self, destination: &str) -> impl Future<Output = Result<bool, DlqError>> + Send;

    /// Publish every output and remove every record of `batch`, all or nothing.
    fn settle(&mut self, batch: Vec<Settlement>) -> impl Future<Output = Result<(), DlqError>> + Send;

    /// Stop reading: records read but not settled stay in the queue, in their order.
    fn close(self) -> impl Future<Output = Result<(), DlqError>> + Send;
}

/// The store of whichever broker the operator names.
#[derive(Debug)]
pub enum AnyStore {
    /// A RabbitMQ queue.
    Amqp(amqp::AmqpStore),
    /// A Kafka topic.
    Kafka(kafka::KafkaStore),
}

/// Open `queue` on `broker`; `writable` when records will be settled.
pub async fn open(broker: &Broker, queue: &str, writable: bool) -> Result<AnyStore, DlqError> {
    let unavailable = |e: TransportError| DlqError::Unavailable(e.to_string());
    match broker.connect("courier dlq").await.map_err(unavailable)? {
        Connected::Amqp(transport) => Ok(AnyStore::Amqp(amqp::AmqpStore::open(&transport, queue).await?)),
        Connected::Kafka(transport) => Ok(AnyStore::Kafka(kafka::KafkaStore::open(&transport, queue, writable).await?)),
        Connected::Memory(_) => Err(DlqError::Unavailable(
            "--broker is required: the in-memory broker lives inside a worker process".into(),
        )),
    }
}

impl Store for AnyStore {
    fn pending(&self) -> Option<u64> {
        match self {
            Self::Amqp(s) => s.pending(),
            Self::Kafka(s) => s.pending(),
        }
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, DlqError> {
        match self {
            Self::Amqp(s) => s.next_batch(max).await,
            Self::Kafka(s) => s.next_batch(max).await,
        }
    }

    async fn exists(&mut self, destination: &str) -> Result<bool, DlqError> {
        match self {
            Self::Amqp(s) => s.exists(destination).await,
            Self::Kafka(s) => s.exists(destination).await,
        }
    }

    async fn settle(&mut self, batch: Vec<Settlement>) -> Result<(), DlqError> {
        match self {
            Self::Amqp(s) => s.settle(batch).await,
            Self::Kafka(s) => s.settle(batch).await,
        }
    }

    async fn close(self) -> Result<(), DlqError> {
        match self {
            Self::Amqp(s) => s.close().await,
            Self::Kafka(s) => s.close().await,
        }
    }
}
