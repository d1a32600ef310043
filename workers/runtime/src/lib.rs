//! Courier: the runtime of event-driven message-queue workers. A worker supplies a
//! [`Handler`]; the runtime consumes requests from RabbitMQ or Kafka (cargo features
//! `amqp` and `kafka`, both default) or the in-memory broker, validates them, calls the
//! handler with timeouts and retries, publishes replies, and dead-letters what fails —
//! acking each message only after its output is confirmed. The wire contract is the
//! `courier-contract` crate, re-exported as [`contract`].
//!
//! Where does a delivery go after the handler fails? `src/pipeline/mod.rs`, top to bottom.
//!
//! The surface, by who needs it (everything else is private to the crate):
//! - a worker author: [`Handler`], [`Context`], [`HandlerError`], [`Protobuf`],
//!   [`app::main`], and [`Transaction`] for the inbox;
//! - a producer in Rust: [`Client`];
//! - an operator tool: [`Broker`], [`Connected`] and its [`transport`] (dead-letter stores,
//!   topology), [`WorkerArgs`] / [`ClientArgs`];
//! - an embedder or a test: [`run`], [`Settings`], [`MemoryBroker`], the [`observe`]
//!   endpoints, and `testing` (cargo feature `testing`): the transport contract suite.

#![warn(unreachable_pub, missing_docs)]

pub mod app;
mod breaker;
mod broker;
mod budget;
mod client;
mod config;
pub use courier_contract as contract;
mod console;
mod handler;
mod inbox;
pub mod observe;
mod pipeline;
mod protobuf;
mod redelivery;
mod retry;
mod schema;
mod shutdown;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transport;
mod worker;

pub use breaker::{InvalidPolicy as InvalidBreakerPolicy, Policy as BreakerPolicy};
pub use broker::{Broker, Connected, UseTransport};
pub use client::{Client, RequestError};
pub use config::{BatchSettings, ClientArgs, ConfigError, InboxSettings, Settings, WorkerArgs};
pub use handler::{BatchHandler, BatchResult, Batched, Context, Handler, HandlerError, Retry, each};
pub use inbox::{Bounds as InboxBounds, InboxError, MAX_MESSAGE_ID_BYTES, Transaction};
pub use protobuf::Protobuf;
pub use retry::{InvalidRetryPolicy, RetryPolicy};
pub use schema::{InvalidSchema, Refusal, RequestSchema};
pub use shutdown::signal as shutdown_signal;
pub use transport::{Message, Position, Source, Transport, memory::MemoryBroker};
pub use worker::{WorkerError, run};
