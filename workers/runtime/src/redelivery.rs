//! Bounded redelivery: how often each message came back without an outcome because the
//! broker refused its output, and when to stop trying.
//!
//! A refused reply, retry copy or dead-letter copy leaves the request unsettled, so the
//! broker delivers it again and the handler runs again. Without a limit, one message whose
//! output the broker refuses for good loops forever, repeating the handler's side effects.
//! So each refusal is counted per message, the redelivery waits longer each round
//! ([`delay`]), and past the limit the message takes its documented way out (the pipeline
//! dead-letters it as `undeliverable`). A broker outage is not counted: it is nobody's
//! fault and ends by itself.
//!
//! Invariants, tested below: a message is requeued at most `limit` times before
//! [`Next::GiveUp`]; memory holds at most [`CAPACITY`] messages; a settled message starts
//! again from zero.

use std::{collections::VecDeque, time::Duration};

/// Messages tracked at once; past it the oldest is forgotten (it may then loop up to
/// `limit` more rounds: still bounded).
pub(crate) const CAPACITY: usize = 10_000;
/// Wait before redelivering after the first refusal; doubles each round.
pub(crate) const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Longest wait before a redelivery.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(10);
/// Wait before redelivering after a broker outage (not counted).
pub(crate) const OUTAGE_DELAY: Duration = Duration::from_millis(500);

/// What to do with a message whose output was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Return it to the broker after this long.
    Requeue {
        /// How long to wait first.
        after: Duration,
        /// Refusals so far, this one included.
        round: u32,
    },
    /// Stop: it was refused this many times.
    GiveUp {
        /// Refusals, this one included.
        rounds: u32,
    },
}

/// Refusal counts by message identity (a hash: see the pipeline's `identity`).
#[derive(Debug)]
pub(crate) struct Redeliveries {
    /// Requeues allowed before giving up.
    limit: u32,
    /// Identity → refusals so far.
    rounds: foldhash::HashMap<u64, u32>,
    /// Identities in the order first seen, for forgetting the oldest (may hold settled ones).
    order: VecDeque<u64>,
    /// Messages given up whose fallbacks refused them too, with the failure code they were
    /// given up with: later deliveries go straight to the fallbacks, without the handler.
    given_up: foldhash::HashMap<u64, &'static str>,
}

impl Redeliveries {
    /// Allow `limit` requeues per message.
    pub(crate) fn new(limit: u32) -> Self {
        Self { limit, rounds: foldhash::HashMap::default(), order: VecDeque::new(), given_up: Default::default() }
    }

    /// The output of message `identity` was refused: requeue it, or give up.
    pub(crate) fn refused(&mut self, identity: u64) -> Next {
        let rounds = self.rounds.entry(identity).or_insert(0);
        *rounds = rounds.saturating_add(1);
        let round = *rounds;
        if round == 1 {
            self.order.push_back(identity);
            self.bound();
        }
        if round > self.limit {
            self.rounds.remove(&identity);
            return Next::GiveUp { rounds: round };
        }
        Next::Requeue { after: delay(round), round }
    }

    /// Message `identity` reached its outcome: forget it.
    pub(crate) fn settled(&mut self, identity: u64) {
        if !self.rounds.is_empty() {
            self.rounds.remove(&identity);
        }
        if !self.given_up.is_empty() {
            self.given_up.remove(&identity);
        }
    }

    /// Message `identity` was given up with `code`, and its fallbacks refused it too.
    pub(crate) fn give_up_for_good(&mut self, identity: u64, code: &'static str) {
        if self.given_up.len() >= CAPACITY {
            // Forgotten ones run their handler once more per redelivery: still bounded.
            self.given_up.clear();
        }
        self.given_up.insert(identity, code);
    }

    /// The code message `identity` was given up with, if its fallbacks refused it.
    pub(crate) fn given_up(&self, identity: u64) -> Option<&'static str> {
        self.given_up.get(&identity).copied()
    }

    /// Whether no message is counted or given up (then a delivery need not be looked up).
    pub(crate) fn is_empty(&self) -> bool {
        self.rounds.is_empty() && self.given_up.is_empty()
    }

    /// Refusals counted for `identity`.
    #[cfg(test)]
    pub(crate) fn rounds(&self, identity: u64) -> u32 {
        self.rounds.get(&identity).copied().unwrap_or(0)
    }

    fn bound(&mut self) {
        while self.rounds.len() > CAPACITY {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.rounds.remove(&oldest);
                }
                None => break,
            }
        }
        if self.order.len() > 2 * CAPACITY {
            let rounds = &self.rounds;
            self.order.retain(|identity| rounds.contains_key(identity));
        }
    }
}

/// [`Redeliveries`] shared by the deliveries. Nearly every delivery finds nothing
/// counted: that answer is an atomic load, not a lock (and no identity to compute).
#[derive(Debug)]
pub(crate) struct Shared {
    counts: std::sync::Mutex<Redeliveries>,
    /// Whether anything is counted or given up (kept equal to `!counts.is_empty()`).
    any: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Allow `limit` requeues per message.
    pub(crate) fn new(limit: u32) -> Self {
        Self { counts: std::sync::Mutex::new(Redeliveries::new(limit)), any: Default::default() }
    }

    fn with<R>(&self, change: impl FnOnce(&mut Redeliveries) -> R) -> R {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let result = change(&mut counts);
        self.any.store(!counts.is_empty(), std::sync::atomic::Ordering::Relaxed);
        result
    }

    fn anything(&self) -> bool {
        self.any.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// [`Redeliveries::refused`].
    pub(crate) fn refused(&self, identity: u64) -> Next {
        self.with(|counts| counts.refused(identity))
    }

    /// [`Redeliveries::settled`]; `identity` is computed only when something is counted.
    pub(crate) fn settled(&self, identity: impl FnOnce() -> u64) {
        if self.anything() {
            self.with(|counts| counts.settled(identity()));
        }
    }

    /// [`Redeliveries::give_up_for_good`].
    pub(crate) fn give_up_for_good(&self, identity: u64, code: &'static str) {
        self.with(|counts| counts.give_up_for_good(identity, code));
    }

    /// [`Redeliveries::given_up`]; `identity` is computed only when something is counted.
    pub(crate) fn given_up(&self, identity: impl FnOnce() -> u64) -> Option<&'static str> {
        if !self.anything() {
            return None;
        }
        self.with(|counts| counts.given_up(identity()))
    }
}

/// How long to wait before redelivering after refusal number `round` (1-based).
pub(crate) fn delay(round: u32) -> Duration {
    let doublings = round.saturating_sub(1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn gives_up_after_the_limit() {
        let mut redeliveries = Redeliveries::new(3);
        let seen: Vec<Next> = (0..4).map(|_| redeliveries.refused(7)).collect();
        assert_eq!(
            seen,
            [
                Next::Requeue { after: Duration::from_millis(100), round: 1 },
                Next::Requeue { after: Duration::from_millis(200), round: 2 },
                Next::Requeue { after: Duration::from_millis(400), round: 3 },
                Next::GiveUp { rounds: 4 },
            ]
        );
        assert_eq!(redeliveries.rounds(7), 0, "given up: forgotten");
    }

    #[test]
    fn zero_means_no_requeue() {
        assert_eq!(Redeliveries::new(0).refused(1), Next::GiveUp { rounds: 1 });
    }

    #[test]
    fn settling_starts_over() {
        let mut redeliveries = Redeliveries::new(2);
        redeliveries.refused(1);
        redeliveries.refused(1);
        redeliveries.settled(1);
        assert_eq!(redeliveries.refused(1), Next::Requeue { after: FIRST_DELAY, round: 1 });
    }

    #[test]
    fn given_up_is_remembered_until_settled() {
        let mut redeliveries = Redeliveries::new(1);
        assert_eq!(redeliveries.given_up(9), None);
        redeliveries.give_up_for_good(9, "reply_refused");
        assert!(!redeliveries.is_empty());
        assert_eq!(redeliveries.given_up(9), Some("reply_refused"));
        redeliveries.settled(9);
        assert_eq!(redeliveries.given_up(9), None);
        assert!(redeliveries.is_empty());
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        assert_eq!(delay(1), FIRST_DELAY);
        assert_eq!(delay(2), FIRST_DELAY * 2);
        assert_eq!(delay(8), MAX_DELAY);
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }

    proptest! {
        /// Whatever the interleaving of refusals and settlements over many messages: no
        /// message is requeued more than `limit` times in a row, and memory stays bounded.
        #[test]
        fn bounded_in_rounds_and_memory(
            limit in 0u32..6,
            events in proptest::collection::vec((0u64..50, any::<bool>()), 0..400),
        ) {
            let mut redeliveries = Redeliveries::new(limit);
            let mut model: std::collections::HashMap<u64, u32> = Default::default();
            for (identity, settle) in events {
                if settle {
                    redeliveries.settled(identity);
                    model.remove(&identity);
                    continue;
                }
                let count = model.entry(identity).or_insert(0);
                *count += 1;
                match redeliveries.refused(identity) {
                    Next::Requeue { round, .. } => {
                        prop_assert!(round <= limit);
                        prop_assert_eq!(round, *count);
                    }
                    Next::GiveUp { rounds } => {
                        prop_assert_eq!(rounds, limit + 1);
                        prop_assert_eq!(rounds, *count);
                        model.remove(&identity);
                    }
                }
                prop_assert!(redeliveries.rounds.len() <= CAPACITY);
                prop_assert!(redeliveries.order.len() <= 2 * CAPACITY + 1);
            }
        }
    }

    #[test]
    fn the_oldest_are_forgotten_past_capacity() {
        let mut redeliveries = Redeliveries::new(5);
        for identity in 0..(CAPACITY as u64 + 10) {
            redeliveries.refused(identity);
        }
        assert_eq!(redeliveries.rounds.len(), CAPACITY);
        assert_eq!(redeliveries.rounds(0), 0);
        assert_eq!(redeliveries.rounds(CAPACITY as u64 + 9), 1);
    }
}
