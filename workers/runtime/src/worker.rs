//! The consume loop: bounded concurrency, and graceful shutdown on an injected signal.

use std::{future::Future, sync::Arc};

use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    config::Settings,
    handler::Handler,
    pipeline::Pipeline,
    schema::{InvalidSchema, RequestSchema},
    transport::{Transport, TransportError},
};

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
}

/// Run a worker until `shutdown` completes: declare the topology, consume, process at
/// most `settings.concurrency` messages at once (a full worker stops pulling), then stop
/// receiving, give in-flight messages `settings.shutdown_grace` to finish, and return
/// whatever is left to the broker.
pub async fn run<H: Handler, T: Transport>(
    settings: Settings,
    transport: T,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let schema = RequestSchema::compile(H::REQUEST_SCHEMA)?;
    let topology = settings.topology();
    transport.declare(&topology).await?;
    let mut subscription = transport.subscribe(&topology, settings.concurrency).await?;
    let grace = settings.shutdown_grace;
    let permits = Arc::new(Semaphore::new(settings.concurrency));
    info!(worker = %settings.worker, queue = %topology.queue, concurrency = settings.concurrency, "Worker started.");
    let pipeline = Arc::new(Pipeline::new(handler, transport, schema, settings));
    let tracker = TaskTracker::new();
    let hard_stop = CancellationToken::new();

    tokio::pin!(shutdown);
    let outcome = loop {
        let permit = tokio::select! {
            () = &mut shutdown => break Ok(()),
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let delivery = tokio::select! {
            () = &mut shutdown => break Ok(()),
            delivery = subscription.next() => match delivery {
                Some(delivery) => delivery,
                None => break Err(WorkerError::SubscriptionEnded),
            },
        };
        let pipeline = Arc::clone(&pipeline);
        let hard_stop = hard_stop.clone();
        tracker.spawn(async move {
            pipeline.deliver(delivery, &hard_stop).await;
            drop(permit);
        });
    };

    // Stop receiving first: unstarted deliveries go back to the broker.
    drop(subscription);
    tracker.close();
    info!(in_flight = tracker.len(), ?grace, "Stopping: letting in-flight messages finish.");
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(in_flight = tracker.len(), "Grace period over; returning unfinished messages to the broker.");
        hard_stop.cancel();
        tracker.wait().await;
    }
    info!("Worker stopped.");
    outcome
}
