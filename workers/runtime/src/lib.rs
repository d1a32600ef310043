//! Courier: the runtime of event-driven message-queue workers. A worker supplies a
//! [`Handler`]; the runtime consumes requests from RabbitMQ or Kafka (cargo features
//! `amqp` and `kafka`, both default) or the in-memory broker, validates them, calls the
//! handler with timeouts and retries, publishes replies, and dead-letters what fails —
//! acking each message only after its output is confirmed. The wire contract is the
//! `courier-contract` crate, re-exported as [`contract`].
//!
//! Where does a delivery go after the handler fails? See [`pipeline`].

pub mod app;
pub mod breaker;
pub mod broker;
mod budget;
pub mod client;
pub mod config;
pub use courier_contract as contract;
pub mod console;
pub mod handler;
pub mod inbox;
pub mod observe;
pub mod pipeline;
pub mod protobuf;
pub mod redelivery;
pub mod retry;
pub mod schema;
pub mod shutdown;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transport;
pub mod worker;

pub use config::{Settings, WorkerArgs};
pub use handler::{Context, Handler, HandlerError};
pub use transport::{Message, Transport, memory::MemoryBroker};
pub use worker::run;
