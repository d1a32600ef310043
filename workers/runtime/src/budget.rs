//! The worker's byte budget (`--max-in-flight-bytes`): bytes (payload, key and headers) of
//! the requests it holds, from receipt to settlement, and of their outputs until the
//! broker confirms them. A new request is admitted only while the bytes held are below the budget; once
//! admitted, a request and its outputs are charged whatever their size (its outputs never
//! wait, so requests holding the budget cannot wait on each other). So the bytes held stay
//! below the budget plus the last request admitted plus the outputs of the requests in
//! flight, and a request larger than the whole budget still runs, alone with what was
//! already in flight.

use std::{
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::Notify;

/// Shared by the worker's loop (which admits) and the charges of the requests in flight.
#[derive(Clone, Debug)]
pub(crate) struct Budget {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    limit: usize,
    held: AtomicUsize,
    freed: Notify,
}

impl Budget {
    /// A budget of `limit` bytes (at least 1).
    pub(crate) fn new(limit: usize) -> Self {
        Self { shared: Arc::new(Shared { limit: limit.max(1), held: AtomicUsize::new(0), freed: Notify::new() }) }
    }

    /// Wait until the bytes held are below the budget, then charge `bytes`.
    pub(crate) async fn admit(&self, bytes: usize) -> Charge {
        let shared = &self.shared;
        while shared.held.load(Ordering::Acquire) >= shared.limit {
            let mut freed = pin!(shared.freed.notified());
            // Registered before the second look, so a release in between is not missed.
            freed.as_mut().enable();
            if shared.held.load(Ordering::Acquire) < shared.limit {
                break;
            }
            freed.await;
        }
        shared.held.fetch_add(bytes, Ordering::AcqRel);
        // Another admitter may fit too (a release wakes one).
        if shared.held.load(Ordering::Acquire) < shared.limit {
            shared.freed.notify_one();
        }
        Charge { shared: Arc::clone(shared), bytes }
    }

    /// Bytes held now.
    pub(crate) fn held(&self) -> usize {
        self.shared.held.load(Ordering::Acquire)
    }
}

/// Bytes charged to the budget until dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    shared: Arc<Shared>,
    bytes: usize,
}

impl Charge {
    /// Charge `bytes` more (an output), without waiting.
    pub(crate) fn add(&mut self, bytes: usize) {
        self.shared.held.fetch_add(bytes, Ordering::AcqRel);
        self.bytes += bytes;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let before = self.shared.held.fetch_sub(self.bytes, Ordering::AcqRel);
        if before >= self.shared.limit && before - self.bytes < self.shared.limit {
            self.shared.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `admit` finished within a turn of the (paused) clock.
    async fn admitted(budget: &Budget, bytes: usize) -> Option<Charge> {
        tokio::time::timeout(Duration::from_millis(1), budget.admit(bytes)).await.ok()
    }

    #[tokio::test(start_paused = true)]
    async fn admits_while_below_the_limit_and_waits_above_it() {
        let budget = Budget::new(100);
        let a = admitted(&budget, 60).await.expect("empty budget");
        let b = admitted(&budget, 60).await.expect("60 < 100: admitted, crossing the limit");
        assert_eq!(budget.held(), 120);
        assert!(admitted(&budget, 1).await.is_none(), "120 ≥ 100: waits");
        drop(a);
        assert_eq!(budget.held(), 60);
        let c = admitted(&budget, 1).await.expect("60 < 100 again");
        drop((b, c));
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_larger_than_the_budget_runs() {
        let budget = Budget::new(100);
        let huge = admitted(&budget, 1_000).await.expect("alone, it runs");
        assert!(admitted(&budget, 1).await.is_none());
        drop(huge);
        assert!(admitted(&budget, 1).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn outputs_are_charged_without_waiting_and_released_with_their_request() {
        let budget = Budget::new(100);
        let mut a = admitted(&budget, 10).await.expect("empty");
        a.add(200);
        assert_eq!(budget.held(), 210);
        assert!(admitted(&budget, 1).await.is_none(), "the output counts");
        drop(a);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_admitter_wakes_when_bytes_are_freed() {
        let budget = Budget::new(100);
        let a = budget.admit(150).await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.admit(5).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished());
        drop(a);
        let b = tokio::time::timeout(Duration::from_millis(10), waiting).await.expect("woken").expect("no panic");
        assert_eq!(budget.held(), 5);
        drop(b);
    }

    #[tokio::test(start_paused = true)]
    async fn every_waiter_gets_in_when_enough_is_freed() {
        let budget = Budget::new(100);
        let a = budget.admit(100).await;
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let budget = budget.clone();
                tokio::spawn(async move { budget.admit(10).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(a);
        let mut charges = Vec::new();
        for waiter in waiters {
            charges.push(tokio::time::timeout(Duration::from_millis(10), waiter).await.expect("woken").expect("ok"));
        }
        assert_eq!(budget.held(), 30);
    }
}
