//! The retry policy: a few in-process attempts with exponential backoff and jitter
//! (`backon`), then delayed broker-level retry tiers, then the dead-letter queue.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// How a transient failure is retried. Built through [`RetryPolicy::new`], which
/// rejects schedules that make no sense.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Handler invocations per delivery round (1 = no in-process retry).
    attempts: u32,
    /// Backoff before the first in-process retry; doubles each time.
    initial_backoff: Duration,
    /// Upper bound of one in-process backoff (before jitter).
    max_backoff: Duration,
    /// Add up to 100% random jitter to each backoff, so retries of many messages spread out.
    jitter: bool,
    /// Delays of the broker-level retry tiers, in the order they are used.
    delays: Vec<Duration>,
}

/// A retry policy that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRetryPolicy {
    /// Zero attempts would never call the handler.
    #[error("retry attempts must be at least 1")]
    NoAttempts,
    /// The first backoff must be positive and no larger than the maximum.
    #[error("initial backoff {initial:?} must be > 0 and <= max backoff {max:?}")]
    Backoff {
        /// The initial backoff given.
        initial: Duration,
        /// The maximum backoff given.
        max: Duration,
    },
    /// A retry tier needs a positive delay, and tiers must be distinct.
    #[error("retry delays must be > 0 and distinct, got {0:?}")]
    Delays(Vec<Duration>),
}

impl RetryPolicy {
    /// A validated policy.
    pub fn new(
        attempts: u32,
        initial_backoff: Duration,
        max_backoff: Duration,
        jitter: bool,
        delays: Vec<Duration>,
    ) -> Result<Self, InvalidRetryPolicy> {
        if attempts == 0 {
            return Err(InvalidRetryPolicy::NoAttempts);
        }
        if initial_backoff.is_zero() || initial_backoff > max_backoff {
            return Err(InvalidRetryPolicy::Backoff { initial: initial_backoff, max: max_backoff });
        }
        let mut sorted = delays.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != delays.len() || delays.iter().any(Duration::is_zero) {
            return Err(InvalidRetryPolicy::Delays(delays));
        }
        Ok(Self { attempts, initial_backoff, max_backoff, jitter, delays })
    }

    /// The backoffs between in-process attempts: `attempts - 1` of them, in whole
    /// milliseconds (backon multiplies in `f32`, which leaves nanosecond dust).
    pub fn backoff(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.initial_backoff)
            .with_max_delay(self.max_backoff)
            .with_factor(2.0)
            .with_max_times(self.attempts as usize - 1);
        let backoff: ExponentialBackoff = if self.jitter { builder.with_jitter().build() } else { builder.build() };
        backoff.map(|d| Duration::from_millis(d.as_millis() as u64))
    }

    /// Handler invocations per delivery round.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Delays of the broker-level retry tiers.
    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn schedule_doubles_up_to_the_cap() {
        let policy = RetryPolicy::new(6, ms(100), ms(500), false, vec![]).expect("valid");
        let schedule: Vec<_> = policy.backoff().collect();
        assert_eq!(schedule, vec![ms(100), ms(200), ms(400), ms(500), ms(500)]);
    }

    #[test]
    fn one_attempt_means_no_backoff() {
        let policy = RetryPolicy::new(1, ms(100), ms(500), false, vec![]).expect("valid");
        assert_eq!(policy.backoff().count(), 0);
    }

    #[test]
    fn jitter_stays_within_one_delay() {
        let policy = RetryPolicy::new(4, ms(100), ms(1000), true, vec![]).expect("valid");
        for _ in 0..100 {
            let schedule: Vec<_> = policy.backoff().collect();
            assert_eq!(schedule.len(), 3);
            for (got, base) in schedule.iter().zip([ms(100), ms(200), ms(400)]) {
                assert!(*got >= base && *got < base * 2, "{got:?} outside [{base:?}, 2x)");
            }
        }
    }

    #[test]
    fn invalid_policies_are_rejected() {
        assert_eq!(RetryPolicy::new(0, ms(1), ms(1), false, vec![]), Err(InvalidRetryPolicy::NoAttempts));
        assert!(matches!(RetryPolicy::new(2, ms(0), ms(1), false, vec![]), Err(InvalidRetryPolicy::Backoff { .. })));
        assert!(matches!(RetryPolicy::new(2, ms(5), ms(1), false, vec![]), Err(InvalidRetryPolicy::Backoff { .. })));
        assert!(matches!(
            RetryPolicy::new(2, ms(1), ms(1), false, vec![ms(5), ms(5)]),
            Err(InvalidRetryPolicy::Delays(_))
        ));
        assert!(matches!(RetryPolicy::new(2, ms(1), ms(1), false, vec![ms(0)]), Err(InvalidRetryPolicy::Delays(_))));
    }
}
