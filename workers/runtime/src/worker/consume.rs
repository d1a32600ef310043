//! The consume loop: take a delivery when the circuit breaker, a handler slot and the byte
//! budget allow, and hand it to a delivery loop (`runners.rs`); at the end, let the
//! deliveries finish within the grace period and hand what is left back to the broker.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use super::{WorkerError, runners::Runners};
use crate::{
    breaker::{Gate, Say},
    budget::Budget,
    handler::Handler,
    observe::Metrics,
    pipeline::{BREAKER_OPEN, Pipeline, Slot},
    transport::{Acker, Delivery, Intake, Subscription, Transport, TransportError},
};

/// Outputs that may await the broker's confirm, per handler slot: a handler slot is
/// freed once its delivery's output is in the broker client's hands ([`Slot`]).
const CONFIRMS_PER_HANDLER: usize = 10;

/// Deliveries between two polls of the shutdown signal while the loop never waits.
const SHUTDOWN_CHECK_TURNS: u32 = 64;

/// How long a stopping worker waits for its subscription to close after the in-flight
/// messages are settled (Kafka: their offsets stored, the consumer's last commit, leaving
/// the group; the transport bounds that close itself, a little below this). The close
/// bound a stopping worker has after its grace (`app::CLOSE_BOUND`, 3 s) covers this wait
/// and the transport's own close after it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// The shutdown signal, pinned where the loop polls it.
type Shutdown<'a, S> = Pin<&'a mut S>;

/// What one turn of the loop decided.
enum Turn {
    /// Take a delivery, with this probe permit when the breaker is half-open.
    Take(Option<tokio::sync::OwnedSemaphorePermit>),
    /// Look again (the breaker's say changed, or an open breaker gave a delivery back).
    Again,
    /// Stop consuming, with this outcome.
    Stop(Result<(), WorkerError>),
}

/// A worker's consuming side, from its subscription to its delivery loops.
pub(super) struct Consumer<H: Handler, T: Transport> {
    /// Where deliveries come from.
    subscription: Subscription<T::Acker>,
    /// Processes each delivery.
    pipeline: Arc<Pipeline<H, T>>,
    /// The transport, asked for a failure it cannot recover from.
    transport: T,
    /// The circuit breaker, and its say as it changes.
    gate: Gate,
    say: watch::Receiver<Say>,
    /// The bytes of requests and outputs in flight.
    budget: Budget,
    /// Counts deliveries given back while the breaker is open.
    metrics: Metrics,
    /// The `--concurrency` handler slots.
    permits: Arc<Semaphore>,
    /// Places among the outputs awaiting a confirm.
    confirms: Arc<Semaphore>,
    /// Runs the in-flight deliveries. Dropping one drops its unsettled acker, which
    /// returns the message to the broker.
    in_flight: Runners,
    /// The half-open breaker's probes: one permit per delivery allowed at once.
    probes: Option<Arc<Semaphore>>,
    /// What the subscription was last told (telling it takes a lock: only on a change).
    intake: Intake,
}

impl<H: Handler, T: Transport> Consumer<H, T> {
    pub(super) fn new(
        subscription: Subscription<T::Acker>,
        pipeline: Pipeline<H, T>,
        transport: T,
        gate: Gate,
        budget: Budget,
        metrics: Metrics,
        concurrency: usize,
    ) -> Self {
        Self {
            subscription,
            pipeline: Arc::new(pipeline),
            transport,
            say: gate.watch(),
            gate,
            budget,
            metrics,
            permits: Arc::new(Semaphore::new(concurrency)),
            confirms: Arc::new(Semaphore::new(concurrency * CONFIRMS_PER_HANDLER)),
            in_flight: Runners::per_thread(),
            probes: None,
            intake: Intake::Full,
        }
    }

    /// Consume until `shutdown` completes (`Ok`), the transport fails for good or the
    /// subscription ends.
    pub(super) async fn consume(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
        tokio::pin!(shutdown);
        let mut turns: u32 = 0;
        loop {
            if let Some(failure) = self.transport.failure() {
                return Err(WorkerError::Transport(TransportError::Broker(failure)));
            }
            // The shutdown signal is polled while the loop waits, and every
            // [`SHUTDOWN_CHECK_TURNS`] deliveries while it never has to: a poll of it costs
            // a fifth of a turn of this loop (docs/benchmarks.md).
            turns = turns.wrapping_add(1);
            if turns.is_multiple_of(SHUTDOWN_CHECK_TURNS) && futures::poll!(shutdown.as_mut()).is_ready() {
                return Ok(());
            }
            let turn = match self.breaker_says(shutdown.as_mut()).await {
                Turn::Take(probe) => self.take(probe, shutdown.as_mut()).await,
                turn => turn,
            };
            match turn {
                Turn::Take(_) | Turn::Again => {}
                Turn::Stop(outcome) => return outcome,
            }
        }
    }

    /// The circuit breaker's say: everything, a few probes, or nothing (then this waits
    /// for a change, giving back what the transport still held).
    async fn breaker_says<S: Future<Output = ()>>(&mut self, mut shutdown: Shutdown<'_, S>) -> Turn {
        let now = *self.say.borrow_and_update();
        match now {
            Say::Closed => {
                self.probes = None;
                self.tell(Intake::Full);
                Turn::Take(None)
            }
            Say::Open { until } => {
                self.probes = None;
                self.tell(Intake::Stopped);
                tokio::select! {
                    biased;
                    () = shutdown.as_mut() => return Turn::Stop(Ok(())),
                    _ = self.say.changed() => {}
                    () = tokio::time::sleep_until(until) => self.gate.tick(),
                    // What the transport held when it stopped goes back unprocessed.
                    delivery = self.subscription.next() => match delivery {
                        Some(delivery) => {
                            self.metrics.requeued(BREAKER_OPEN);
                            self.in_flight.run(Box::pin(give_back(delivery)));
                        }
                        None => return Turn::Stop(Err(WorkerError::SubscriptionEnded)),
                    },
                }
                Turn::Again
            }
            Say::HalfOpen { probes: allowed } => {
                self.tell(Intake::Probe(u16::try_from(allowed).unwrap_or(u16::MAX)));
                let slots = self.probes.get_or_insert_with(|| Arc::new(Semaphore::new(allowed as usize)));
                tokio::select! {
                    biased;
                    () = shutdown.as_mut() => Turn::Stop(Ok(())),
                    _ = self.say.changed() => Turn::Again,
                    probe = Arc::clone(slots).acquire_owned() => {
                        Turn::Take(Some(probe.expect("the semaphore is never closed")))
                    }
                }
            }
        }
    }

    /// Take the next delivery, then its handler slot and its bytes, and hand it to a
    /// delivery loop.
    async fn take<S: Future<Output = ()>>(
        &mut self,
        probe: Option<tokio::sync::OwnedSemaphorePermit>,
        mut shutdown: Shutdown<'_, S>,
    ) -> Turn {
        // The delivery first, then its handler slot: a loop that held a slot while it
        // waited for a delivery would keep it from a request retrying in place, whose
        // held lane may be what keeps the next delivery from coming (`Slot::wait`).
        let delivery = tokio::select! {
            biased;
            delivery = self.subscription.next() => match delivery {
                Some(delivery) => delivery,
                None => return Turn::Stop(Err(WorkerError::SubscriptionEnded)),
            },
            () = shutdown.as_mut() => return Turn::Stop(Ok(())),
            _ = self.say.changed() => return Turn::Again,
        };
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::select! {
                biased;
                permit = Arc::clone(&self.permits).acquire_owned() => permit.expect("the semaphore is never closed"),
                () = shutdown.as_mut() => return Turn::Stop(Ok(())),
            },
        };
        // Over the byte budget, the delivery waits here and nothing more is taken.
        let bytes = delivery.message.byte_len();
        let charge = tokio::select! {
            biased;
            charge = self.budget.admit(bytes) => charge,
            () = shutdown.as_mut() => return Turn::Stop(Ok(())),
        };
        let pipeline = Arc::clone(&self.pipeline);
        let slot = Slot::new(permit, Arc::clone(&self.confirms), charge, probe);
        // The delivery's future (a few KiB) is boxed where it is created: one copy of it
        // and one allocation per message.
        self.in_flight.run(Box::pin(async move { pipeline.deliver(delivery, slot).await }));
        Turn::Take(None)
    }

    /// Stop receiving (unstarted deliveries go back to the broker), give in-flight
    /// deliveries `grace` to finish, return the rest to the broker, and wait (bounded) for
    /// the subscription to close.
    pub(super) async fn stop(self, grace: Duration) {
        let Self { subscription, in_flight, transport, .. } = self;
        let closed = subscription.close();
        drop(transport);
        info!(in_flight = in_flight.len(), ?grace, "Stopping: letting in-flight messages finish.");
        let unfinished = in_flight.finish(grace).await;
        if unfinished > 0 {
            warn!(in_flight = unfinished, "Grace period over; returned the unfinished messages to the broker.");
        }
        if tokio::time::timeout(CLOSE_TIMEOUT, closed).await.is_err() {
            warn!("The broker subscription did not close within {CLOSE_TIMEOUT:?}; what finished last may be redone.");
        }
    }

    /// Tell the subscription a new intake, when it changed.
    fn tell(&mut self, intake: Intake) {
        if self.intake != intake {
            self.subscription.set_intake(intake);
            self.intake = intake;
        }
    }
}

/// Return a delivery taken while the circuit breaker is open, unprocessed.
async fn give_back<A: Acker>(delivery: Delivery<A>) {
    if let Err(error) = delivery.acker.nack().await {
        warn!(%error, "Could not give a delivery back; the broker will deliver it again.");
    }
}
