//! A delivery's place in the worker's limits: one of the `--concurrency` handler slots
//! until its first output is in the broker client's hands, then one of the outputs
//! waiting for the broker's confirm.
//!
//! Confirms take a broker round trip and no handler time, so they do not hold a handler
//! slot: with it, throughput would be capped at concurrency ÷ confirm latency.

use std::{sync::Arc, time::Duration};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::budget::Charge;

/// One delivery's permits and byte charge; dropped with the delivery.
#[derive(Debug)]
pub(crate) struct Slot {
    /// One of the circuit breaker's probes, when the delivery was taken while half-open:
    /// a probe's round runs to its end, so a request that fails even with its dependency
    /// up moves on to a retry tier instead of being the next probe again.
    probe: Option<OwnedSemaphorePermit>,
    /// The handler slot, until the first output is handed off.
    handler: Option<OwnedSemaphorePermit>,
    /// A place among the outputs awaiting a confirm, after that.
    confirming: Option<OwnedSemaphorePermit>,
    /// Where `confirming` comes from.
    confirms: Arc<Semaphore>,
    /// The request's bytes, and its outputs', against the worker's byte budget.
    bytes: Charge,
}

impl Slot {
    /// A slot holding one of `handlers`; it moves to one of `confirms` when handed off.
    /// `bytes` is the request's charge; its outputs are added to it. `probe`: the half-open
    /// circuit breaker's permit, when the delivery is one of its probes.
    pub(crate) fn new(
        handler: OwnedSemaphorePermit,
        confirms: Arc<Semaphore>,
        bytes: Charge,
        probe: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self { probe, handler: Some(handler), confirming: None, confirms, bytes }
    }

    /// Whether the delivery is one of the half-open breaker's probes.
    pub(super) fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// Count an output's bytes against the budget too.
    pub(super) fn charge(&mut self, bytes: usize) {
        self.bytes.add(bytes);
    }

    /// An in-place retry waits out its tier's delay: the handler slot is traded for a place
    /// among the outputs awaiting a confirm (the same bound) meanwhile, so other requests
    /// keep flowing, and taken back for the next round.
    pub(super) async fn wait(&mut self, delay: Duration) {
        let handlers = self.handler.as_ref().map(|permit| Arc::clone(permit.semaphore()));
        self.handed_off().await;
        tokio::time::sleep(delay).await;
        if let Some(handlers) = handlers {
            self.handler = Some(handlers.acquire_owned().await.expect("the semaphore is never closed"));
            self.confirming = None;
        }
    }

    /// The delivery's output is in the broker client's hands: trade the handler slot for a
    /// place among the outputs awaiting a confirm (waiting for one while all are taken).
    pub(super) async fn handed_off(&mut self) {
        if self.handler.is_some() {
            // Without a waiter's future when one is free, as it nearly always is.
            let permit = match Arc::clone(&self.confirms).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => Arc::clone(&self.confirms).acquire_owned().await.expect("the semaphore is never closed"),
            };
            self.confirming = Some(permit);
            self.handler = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Budget;

    async fn slot(handlers: &Arc<Semaphore>, confirms: &Arc<Semaphore>) -> Slot {
        let handler = Arc::clone(handlers).acquire_owned().await.expect("open");
        Slot::new(handler, Arc::clone(confirms), Budget::new(1 << 20).admit(10).await, None)
    }

    #[tokio::test(start_paused = true)]
    async fn a_handed_off_output_frees_its_handler_slot_for_a_confirm_place() {
        let (handlers, confirms) = (Arc::new(Semaphore::new(1)), Arc::new(Semaphore::new(2)));
        let mut first = slot(&handlers, &confirms).await;
        assert_eq!(handlers.available_permits(), 0);
        first.handed_off().await;
        assert_eq!((handlers.available_permits(), confirms.available_permits()), (1, 1));
        // Handing off twice takes nothing more.
        first.handed_off().await;
        assert_eq!((handlers.available_permits(), confirms.available_permits()), (1, 1));
        drop(first);
        assert_eq!((handlers.available_permits(), confirms.available_permits()), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hand_off_waits_while_every_confirm_place_is_taken() {
        let (handlers, confirms) = (Arc::new(Semaphore::new(2)), Arc::new(Semaphore::new(1)));
        let mut first = slot(&handlers, &confirms).await;
        let mut second = slot(&handlers, &confirms).await;
        first.handed_off().await;
        let waiting = tokio::time::timeout(Duration::from_secs(60), second.handed_off()).await;
        assert!(waiting.is_err(), "no confirm place is free: the hand-off must wait");
        drop(first);
        second.handed_off().await;
        assert_eq!(handlers.available_permits(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_in_place_lends_the_handler_slot_and_takes_it_back() {
        let (handlers, confirms) = (Arc::new(Semaphore::new(1)), Arc::new(Semaphore::new(10)));
        let mut waiting = slot(&handlers, &confirms).await;
        let task = tokio::spawn(async move {
            waiting.wait(Duration::from_secs(5)).await;
            waiting
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Another delivery runs meanwhile, and gives the slot back.
        let other = Arc::clone(&handlers).try_acquire_owned().expect("lent while waiting");
        drop(other);
        let waiting = task.await.expect("the wait ends");
        assert!(waiting.handler.is_some() && waiting.confirming.is_none());
        assert_eq!(handlers.available_permits(), 0);
        assert_eq!(confirms.available_permits(), 10);
    }
}
