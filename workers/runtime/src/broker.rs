//! The one place a broker named by `--broker` becomes a connected transport. Code that
//! works on any transport hands a [`UseTransport`] to [`Broker::run`]; code that needs a
//! broker's own operations (a dead-letter store, a topology lint) matches on the
//! [`Connected`] transport that [`Broker::connect`] returns.

use std::future::Future;

#[cfg(feature = "amqp")]
use crate::transport::amqp::{AmqpDeadLetterStore, AmqpTransport};
#[cfg(any(feature = "amqp", feature = "kafka"))]
use crate::transport::dead_letters::{AnyDeadLetterStore, DeadLetterError};
#[cfg(feature = "kafka")]
use crate::transport::kafka::{KafkaConfig, KafkaDeadLetterStore, KafkaTransport};
use crate::transport::{Transport, TransportError, memory::MemoryBroker, redact};

/// Which broker to use.
#[derive(Clone)]
pub enum Broker {
    /// The embedded in-memory broker (demo and tests).
    Memory,
    /// RabbitMQ at this URL (`amqp://` or `amqps://`), or at the first of a comma-separated
    /// list of them (the nodes of a cluster) that answers.
    #[cfg(feature = "amqp")]
    Amqp(String),
    /// Kafka with these settings.
    #[cfg(feature = "kafka")]
    Kafka(KafkaConfig),
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("memory://"),
            #[cfg(feature = "amqp")]
            Self::Amqp(url) => f.write_str(&redact(url)),
            #[cfg(feature = "kafka")]
            Self::Kafka(config) => write!(f, "kafka://{}", redact(&config.bootstrap)),
        }
    }
}

/// A transport connected to the broker a [`Broker`] names.
#[derive(Debug)]
pub enum Connected {
    /// A new in-memory broker of this process.
    Memory(MemoryBroker),
    /// RabbitMQ.
    #[cfg(feature = "amqp")]
    Amqp(AmqpTransport),
    /// Kafka.
    #[cfg(feature = "kafka")]
    Kafka(KafkaTransport),
}

/// Work done with whichever transport the broker is (a worker, a client, a declare).
pub trait UseTransport {
    /// What the work gives.
    type Output;
    /// Do the work on `transport`.
    fn with<T: Transport>(self, transport: T) -> impl Future<Output = Self::Output> + Send;
}

impl Broker {
    /// Whether this is the in-memory broker, which lives inside one process only.
    pub fn is_memory(&self) -> bool {
        matches!(self, Self::Memory)
    }

    /// Connect; `name` names the connection where the broker shows one (RabbitMQ).
    pub async fn connect(&self, name: &str) -> Result<Connected, TransportError> {
        let _ = name;
        match self {
            Self::Memory => Ok(Connected::Memory(MemoryBroker::new())),
            #[cfg(feature = "amqp")]
            Self::Amqp(urls) => AmqpTransport::connect(urls, name).await.map(Connected::Amqp),
            #[cfg(feature = "kafka")]
            Self::Kafka(config) => KafkaTransport::connect(config.clone()).await.map(Connected::Kafka),
        }
    }

    /// Connect, then do `work` with the transport.
    pub async fn run<U: UseTransport>(&self, name: &str, work: U) -> Result<U::Output, TransportError> {
        Ok(self.connect(name).await?.run(work).await)
    }
}

impl Connected {
    /// Do `work` with this transport.
    pub async fn run<U: UseTransport>(self, work: U) -> U::Output {
        match self {
            Self::Memory(broker) => work.with(broker).await,
            #[cfg(feature = "amqp")]
            Self::Amqp(transport) => work.with(transport).await,
            #[cfg(feature = "kafka")]
            Self::Kafka(transport) => work.with(transport).await,
        }
    }

    /// Open the dead-letter (or parking) queue `queue` for reading and, when `writable`,
    /// for settling its records ([`crate::transport::dead_letters`]). The in-memory broker
    /// has none another process could read.
    #[cfg(any(feature = "amqp", feature = "kafka"))]
    #[cfg_attr(not(feature = "kafka"), allow(unused_variables))]
    pub async fn dead_letters(&self, queue: &str, writable: bool) -> Result<AnyDeadLetterStore, DeadLetterError> {
        match self {
            #[cfg(feature = "amqp")]
            Self::Amqp(transport) => Ok(AnyDeadLetterStore::Amqp(AmqpDeadLetterStore::open(transport, queue).await?)),
            #[cfg(feature = "kafka")]
            Self::Kafka(transport) => {
                Ok(AnyDeadLetterStore::Kafka(KafkaDeadLetterStore::open(transport, queue, writable).await?))
            }
            Self::Memory(_) => {
                let said = "the in-memory broker's queues live inside the process that holds them";
                Err(TransportError::Broker(said.into()).into())
            }
        }
    }
}
