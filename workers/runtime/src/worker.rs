//! The consume loop: bounded concurrency, and graceful shutdown on an injected signal.

mod background;

use std::{future::Future, sync::Arc};

use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};

use crate::{
    breaker::{Gate, Say},
    budget::Budget,
    config::Settings,
    handler::Handler,
    inbox::Inbox,
    observe::{Health, Metrics, server},
    pipeline::{BREAKER_OPEN, Pipeline, Slot},
    schema::{InvalidSchema, RequestSchema},
    transport::{Acker, Backlog, Delivery, Intake, Subscription, Topology, Transport, TransportError},
};
use background::Background;

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
/// `block_on`: it spawns a task per message, and spawns from outside the runtime's threads
/// go through the shared queue and wake a thread each time.
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
    if let Some(addr) = settings.http_addr {
        let observed = server::Observed { metrics: metrics.clone(), health: health.clone() };
        let (_, serving) =
            server::bind(addr, server::routes(observed)).await.map_err(|e| WorkerError::Http(addr, e))?;
        background.spawn(serving);
    }
    // The inbox's database before the broker: a worker that cannot keep its promise
    // does not start taking requests.
    let inbox = match &settings.inbox {
        Some(config) => {
            let connect = Inbox::connect(&config.url, &settings.worker, H::INBOX_SCHEMA, config.bounds);
            let inbox = background.or_stop(connect).await?;
            background.spawn(expire_inbox(inbox.clone(), config.retention));
            Some(inbox)
        }
        None => None,
    };
    background.or_stop(transport.declare(&topology)).await?;
    let mut subscription = background.or_stop(transport.subscribe(&topology, settings.concurrency)).await?;
    health.set_running(true);
    let watch = transport.clone();
    let budget = Budget::new(settings.max_in_flight_bytes);
    // Stopped before the subscription closes (a Kafka close must not wait for its
    // consumer handle), and aborted if `run` is dropped.
    let sampler = AbortOnDropHandle::new(tokio::spawn(sample_backlog(
        transport.clone(),
        topology.clone(),
        metrics.clone(),
        budget.clone(),
    )));
    let grace = settings.shutdown_grace;
    let permits = Arc::new(Semaphore::new(settings.concurrency));
    let confirms = Arc::new(Semaphore::new(settings.concurrency * CONFIRMS_PER_HANDLER));
    info!(worker = %settings.worker, queue = %topology.queue, concurrency = settings.concurrency, "Worker started.");
    let gate = Gate::new(settings.breaker.clone(), metrics.clone());
    let mut say = gate.watch();
    let pipeline = Arc::new(Pipeline::new(handler, transport, schema, settings, metrics.clone(), gate.clone(), inbox));
    // In-flight deliveries. Aborting one drops its unsettled acker, which returns the
    // message to the broker.
    let mut in_flight = JoinSet::new();
    // The half-open breaker's probes: one permit per delivery allowed at once.
    let mut probes: Option<Arc<Semaphore>> = None;
    // What the subscription was last told (telling it takes a lock: only on a change).
    let mut intake = Intake::Full;

    tokio::pin!(shutdown);
    let mut turns: u32 = 0;
    let outcome = loop {
        while let Some(done) = in_flight.try_join_next() {
            report(done);
        }
        // The shutdown signal is polled while the loop waits, and every
        // [`SHUTDOWN_CHECK_TURNS`] deliveries while it never has to: a poll of it costs a
        // fifth of a turn of this loop (docs/benchmarks.md).
        if let Some(failure) = watch.failure() {
            break Err(WorkerError::Transport(TransportError::Broker(failure)));
        }
        turns = turns.wrapping_add(1);
        if turns.is_multiple_of(SHUTDOWN_CHECK_TURNS) && futures::poll!(&mut shutdown).is_ready() {
            break Ok(());
        }
        // The circuit breaker's say: everything, a few probes, or nothing.
        let now = *say.borrow_and_update();
        let probe = match now {
            Say::Closed => {
                probes = None;
                tell(&subscription, &mut intake, Intake::Full);
                None
            }
            Say::Open { until } => {
                probes = None;
                tell(&subscription, &mut intake, Intake::Stopped);
                tokio::select! {
                    biased;
                    () = &mut shutdown => break Ok(()),
                    _ = say.changed() => {}
                    () = tokio::time::sleep_until(until) => gate.tick(),
                    // What the transport held when it stopped goes back unprocessed.
                    delivery = subscription.next() => match delivery {
                        Some(delivery) => {
                            metrics.requeued(BREAKER_OPEN);
                            in_flight.spawn(give_back(delivery));
                        }
                        None => break Err(WorkerError::SubscriptionEnded),
                    },
                }
                continue;
            }
            Say::HalfOpen { probes: allowed } => {
                tell(&subscription, &mut intake, Intake::Probe(u16::try_from(allowed).unwrap_or(u16::MAX)));
                let slots = probes.get_or_insert_with(|| Arc::new(Semaphore::new(allowed as usize)));
                tokio::select! {
                    biased;
                    () = &mut shutdown => break Ok(()),
                    _ = say.changed() => continue,
                    probe = Arc::clone(slots).acquire_owned() => Some(probe.expect("the semaphore is never closed")),
                }
            }
        };
        // The delivery first, then its handler slot: a loop that held a slot while it
        // waited for a delivery would keep it from a request retrying in place, whose
        // held lane may be what keeps the next delivery from coming (`Slot::wait`).
        let delivery = tokio::select! {
            biased;
            delivery = subscription.next() => match delivery {
                Some(delivery) => delivery,
                None => break Err(WorkerError::SubscriptionEnded),
            },
            () = &mut shutdown => break Ok(()),
            _ = say.changed() => continue,
        };
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::select! {
                biased;
                permit = Arc::clone(&permits).acquire_owned() => permit.expect("the semaphore is never closed"),
                () = &mut shutdown => break Ok(()),
            },
        };
        // Over the byte budget, the delivery waits here and nothing more is taken.
        let bytes = delivery.message.byte_len();
        let charge = tokio::select! {
            biased;
            charge = budget.admit(bytes) => charge,
            () = &mut shutdown => break Ok(()),
        };
        let pipeline = Arc::clone(&pipeline);
        let slot = Slot::new(permit, Arc::clone(&confirms), charge).probe(probe);
        // Boxed: the pipeline's future is a few KiB, and a task's future is copied when
        // spawned and again when its output is taken.
        in_flight.spawn(async move {
            Box::pin(pipeline.deliver(delivery, slot)).await;
        });
    };

    // Stop receiving first: unstarted deliveries go back to the broker.
    health.set_running(false);
    sampler.abort();
    let _ = sampler.await;
    let closed = subscription.close();
    drop(watch);
    info!(in_flight = in_flight.len(), ?grace, "Stopping: letting in-flight messages finish.");
    let drained = tokio::time::timeout(grace, async {
        while let Some(done) = in_flight.join_next().await {
            report(done);
        }
    })
    .await;
    if drained.is_err() {
        warn!(in_flight = in_flight.len(), "Grace period over; returning unfinished messages to the broker.");
        in_flight.abort_all();
        while in_flight.join_next().await.is_some() {}
    }
    if tokio::time::timeout(CLOSE_TIMEOUT, closed).await.is_err() {
        warn!("The broker subscription did not close within {CLOSE_TIMEOUT:?}; what finished last may be redone.");
    }
    background.stop().await;
    drop(health);
    info!("Worker stopped.");
    outcome
}

/// Tell the subscription a new intake, when it changed.
fn tell<A>(subscription: &Subscription<A>, told: &mut Intake, intake: Intake) {
    if *told != intake {
        subscription.set_intake(intake);
        *told = intake;
    }
}

/// Return a delivery taken while the circuit breaker is open, unprocessed.
async fn give_back<A: Acker>(delivery: Delivery<A>) {
    if let Err(error) = delivery.acker.nack().await {
        warn!(%error, "Could not give a delivery back; the broker will deliver it again.");
    }
}

/// Every few seconds, publish the transport's backlog (queue depths or lag) and the bytes
/// held against the budget as metrics.
async fn sample_backlog<T: Transport>(transport: T, topology: Topology, metrics: Metrics, budget: Budget) {
    let mut every = tokio::time::interval(BACKLOG_INTERVAL);
    loop {
        every.tick().await;
        metrics.set_in_flight_bytes(budget.held());
        let mut lags = Vec::new();
        for backlog in transport.backlog(&topology).await {
            match backlog {
                Backlog::Queue { queue, messages } => metrics.set_queue_depth(&queue, messages),
                Backlog::Lag { topic, partition, lag } => lags.push((topic, partition, lag)),
            }
        }
        metrics.set_consumer_lags(&lags);
    }
}

/// Outputs that may await the broker's confirm, per handler slot: a handler slot is
/// freed once its delivery's output is in the broker client's hands ([`Slot`]).
const CONFIRMS_PER_HANDLER: usize = 10;

/// Deliveries between two polls of the shutdown signal while the loop never waits.
const SHUTDOWN_CHECK_TURNS: u32 = 64;

/// How often [`sample_backlog`] runs.
const BACKLOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// A delivery task ended: only a bug in the runtime itself can make it fail (handler
/// panics are caught by the pipeline).
fn report(done: Result<(), tokio::task::JoinError>) {
    if let Err(error) = done {
        tracing::error!(%error, "A delivery task failed; its message returns to the broker.");
    }
}

/// Remove inbox rows older than `retention`, every minute (and at start), for as long as
/// the process runs; a failure is logged and tried again next time.
async fn expire_inbox(inbox: Inbox, retention: std::time::Duration) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        every.tick().await;
        match inbox.remove_older_than(retention).await {
            Ok(0) => {}
            Ok(removed) => info!(removed, ?retention, "Inbox rows past their retention removed."),
            Err(error) => tracing::warn!(%error, "Could not remove old inbox rows; trying again in a minute."),
        }
    }
}

/// How long a stopping worker waits for its subscription to close after the in-flight
/// messages are settled (Kafka: their offsets stored, the consumer's last commit, leaving
/// the group; the transport bounds that close itself, a little below this). The close
/// bound a stopping worker has after its grace (`app::CLOSE_BOUND`, 3 s) covers this wait
/// and the transport's own close after it.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

#[cfg(test)]
mod tests;
