//! When the dispatcher hands finished offsets to librdkafka: at most once per interval.
//!
//! librdkafka commits the stored offsets every 100 ms, on a revocation and on close, so
//! storing them more often than that buys nothing. Storing on every turn of the dispatcher
//! cost about 4,000 instructions a turn (a partition list built and each partition locked),
//! and with partition ordering a turn hands on about twelve records (docs/benchmarks.md).
//! A revocation and the dispatcher's last turns store what is left at once.

use std::time::Duration;

use tokio::time::Instant;

/// The longest an offset stays unstored while the dispatcher runs: a tenth of the commit
/// interval.
pub(super) const STORE_INTERVAL: Duration = Duration::from_millis(10);

/// The last store and when the next is due.
#[derive(Debug)]
pub(super) struct StorePace {
    interval: Duration,
    last: Option<Instant>,
    due: Option<Instant>,
}

impl StorePace {
    pub(super) fn new(interval: Duration) -> Self {
        Self { interval, last: None, due: None }
    }

    /// Offsets wait to be stored at `now`: whether to store them now. They are due one
    /// interval after the last store, or at once after a quiet one.
    pub(super) fn unstored(&mut self, now: Instant) -> bool {
        let due = *self.due.get_or_insert_with(|| self.last.map_or(now, |last| (last + self.interval).max(now)));
        due <= now
    }

    /// When the offsets waiting are due (none wait: never).
    pub(super) fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Everything waiting was stored at `now`.
    pub(super) fn stored(&mut self, now: Instant) {
        self.last = Some(now);
        self.due = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_offsets_are_stored_at_once() {
        let mut pace = StorePace::new(10 * MS);
        let now = Instant::now();
        assert_eq!(pace.due(), None);
        assert!(pace.unstored(now));
    }

    #[test]
    fn offsets_after_a_store_wait_out_the_interval_from_it() {
        let mut pace = StorePace::new(10 * MS);
        let start = Instant::now();
        pace.stored(start);
        assert!(!pace.unstored(start + 3 * MS));
        assert_eq!(pace.due(), Some(start + 10 * MS), "due an interval after the store, not after the offsets");
        assert!(!pace.unstored(start + 9 * MS), "later offsets keep the same due time");
        assert_eq!(pace.due(), Some(start + 10 * MS));
        assert!(pace.unstored(start + 10 * MS));
        pace.stored(start + 10 * MS);
        assert_eq!(pace.due(), None);
    }

    #[test]
    fn offsets_after_a_quiet_spell_are_stored_at_once() {
        let mut pace = StorePace::new(10 * MS);
        let start = Instant::now();
        pace.stored(start);
        assert!(pace.unstored(start + 50 * MS));
        assert_eq!(pace.due(), Some(start + 50 * MS));
    }

    #[test]
    fn offsets_finishing_all_the_time_are_stored_once_per_interval() {
        let mut pace = StorePace::new(10 * MS);
        let start = Instant::now();
        let (mut now, mut last, mut stores) = (start, start, 0);
        // Offsets every 0.25 ms for a second: stored at the first, then every 10 ms.
        for _ in 0..4_000 {
            now += Duration::from_micros(250);
            if pace.unstored(now) {
                assert!(stores == 0 || now - last == 10 * MS, "{:?} after the last store", now - last);
                pace.stored(now);
                (last, stores) = (now, stores + 1);
            }
        }
        assert_eq!(stores, 100);
    }
}
