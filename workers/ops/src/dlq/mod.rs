//! Dead-letter operations: inspect, group, replay, park and purge the records of a
//! dead-letter (or parking) queue, the same way on RabbitMQ and Kafka.
//!
//! The records are read and settled through the runtime's dead-letter store
//! ([`courier::transport::dead_letters`]), which each broker's transport implements: it
//! hands out the records in order and settles a batch atomically, so a replay killed
//! mid-batch neither loses nor repeats a record. What this module adds is the operator's
//! side: which records ([`filter`]), where a replay may send them ([`destination`]), the
//! loop over batches ([`run`]), what is printed ([`report`]) and the commands ([`command`]).

pub mod command;
pub mod destination;
pub mod filter;
pub mod report;
pub mod run;

use courier::Broker;
pub use courier::transport::dead_letters::{AnyDeadLetterStore, DeadLetterError, DeadLetterStore, Record, Settlement};
use courier::transport::{BrokerError, TransportError};

pub use filter::Filter;
pub use run::{Operation, RunOptions, Summary};

/// Open `queue` on `broker`; `writable` when records will be settled.
pub async fn open(broker: &Broker, queue: &str, writable: bool) -> Result<AnyDeadLetterStore, DeadLetterError> {
    if broker.is_memory() {
        return Err(memory_has_none());
    }
    broker.connect("courier dlq").await?.dead_letters(queue, writable).await
}

/// The in-memory broker's queues live inside a worker's process: `courier dlq` needs a
/// real broker, and naming none again will not help.
fn memory_has_none() -> DeadLetterError {
    let said = "--broker is required: the in-memory broker lives inside a worker process";
    TransportError::Broker(BrokerError::said(said)).into()
}
