//! A worker from start to stop: its background tasks and subscription started, the
//! consume loop (`consume.rs`) run until the injected shutdown signal, and a graceful stop.

mod background;
mod consume;
mod periodic;
mod runners;
#[cfg(test)]
mod tests;

use std::future::Future;

use tokio_util::task::AbortOnDropHandle;
use tracing::info;

use crate::{
    breaker::Gate,
    budget::Budget,
    config::Settings,
    handler::Handler,
    inbox::Inbox,
    observe::{Health, Metrics, server},
    pipeline::Pipeline,
    schema::{InvalidSchema, RequestSchema},
    transport::{Transport, TransportError},
};
use background::Background;
use consume::Consumer;

/// Why a worker stopped other than by its shutdown signal.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The handler's request schema does not compile.
    #[error(transparent)]
    Schema(#[from] InvalidSchema),
    /// The broker refused the topology or the subscription.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The transport stopped delivering for good.
    #[error("the broker subscription ended")]
    SubscriptionEnded,
    /// The metrics and health endpoints could not listen.
    #[error("--http-addr {0}: cannot listen")]
    Http(std::net::SocketAddr, #[source] std::io::Error),
    /// The inbox's database is unreachable or refused its table at start-up.
    #[error("--inbox: {0}")]
    Inbox(#[from] crate::inbox::InboxError),
}

/// Run a worker until `shutdown` completes: declare the topology, consume, run at most
/// `settings.concurrency` messages at once up to their output (a full worker stops
/// pulling; outputs awaiting the broker's confirm, up to ten per slot, no longer count), then stop
/// receiving, give in-flight messages `settings.shutdown_grace` to finish, and return
/// whatever is left to the broker. While the circuit breaker is open it takes nothing and
/// gives back what the transport still held; half-open, it takes the probes only
/// ([`crate::breaker`]).
///
/// Run it as a task (`tokio::spawn`), as [`crate::app::main`] does, not directly in a
/// `block_on`: it wakes a delivery loop per message, and a task woken from outside the
/// runtime's threads goes through the shared queue and wakes a thread each time.
pub async fn run<H: Handler, T: Transport>(
    settings: Settings,
    transport: T,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let schema = RequestSchema::compile(H::REQUEST_SCHEMA)?;
    let topology = settings.topology();
    let metrics = Metrics::new(&settings.worker);
    let health = Health::new({
        let transport = transport.clone();
        move || transport.is_ready()
    });
    // The HTTP endpoints and the inbox's expiry, stopped before `run` returns, whichever
    // way: by a failed start-up step (`or_stop`) or at the end. At the end, last: the
    // endpoints hold a handle of the transport (readiness), and the last handle is what
    // closes the broker connections, within the caller's bound.
    let background = Background::new();
    let inbox = start_background::<H>(&settings, &metrics, &health, &background).await?;
    background.or_stop(transport.declare(&topology)).await?;
    let subscription = background.or_stop(transport.subscribe(&topology, settings.concurrency)).await?;
    health.set_running(true);
    let budget = Budget::new(settings.max_in_flight_bytes);
    // Stopped before the subscription closes (a Kafka close must not wait for its
    // consumer handle), and aborted if `run` is dropped.
    let sampler = AbortOnDropHandle::new(tokio::spawn(periodic::sample_backlog(
        transport.clone(),
        topology.clone(),
        metrics.clone(),
        budget.clone(),
    )));
    info!(worker = %settings.worker, queue = %topology.queue, concurrency = settings.concurrency, "Worker started.");
    if let Some(warning) = settings.batch_warning() {
        tracing::warn!(batch_size = settings.batch.map_or(1, |batch| batch.size), "{warning}");
    }
    let (grace, concurrency) = (settings.shutdown_grace, settings.concurrency);
    let gate = Gate::new(settings.breaker.clone(), metrics.clone());
    let pipeline = Pipeline::new(handler, transport.clone(), schema, settings, metrics.clone(), gate.clone(), inbox);
    let mut consumer = Consumer::new(subscription, pipeline, transport, gate, budget, metrics, concurrency);
    let outcome = consumer.consume(shutdown).await;

    // Stop receiving first: unstarted deliveries go back to the broker.
    health.set_running(false);
    sampler.abort();
    let _ = sampler.await;
    consumer.stop(grace).await;
    background.stop().await;
    drop(health);
    info!("Worker stopped.");
    outcome
}

/// Start the HTTP endpoints (`--http-addr`) and connect the inbox (`--inbox`) with its
/// expiry, under `background`. The inbox's database comes before the broker: a worker
/// that cannot keep its promise does not start taking requests.
async fn start_background<H: Handler>(
    settings: &Settings,
    metrics: &Metrics,
    health: &Health,
    background: &Background,
) -> Result<Option<Inbox>, WorkerError> {
    if let Some(addr) = settings.http_addr {
        let observed = server::Observed { metrics: metrics.clone(), health: health.clone() };
        let (_, serving) =
            server::bind(addr, server::routes(observed)).await.map_err(|e| WorkerError::Http(addr, e))?;
        background.spawn(serving);
    }
    let Some(config) = &settings.inbox else {
        return Ok(None);
    };
    let connect = Inbox::connect(&config.url, &settings.worker, H::INBOX_SCHEMA, config.bounds);
    let inbox = background.or_stop(connect).await?;
    background.spawn(periodic::expire_inbox(inbox.clone(), config.retention));
    Ok(Some(inbox))
}
