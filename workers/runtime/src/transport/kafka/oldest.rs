//! How long each partition's oldest unfinished record has held the partition's committed
//! offset back: what tells a stuck partition (one record that does not finish) from a
//! slow one (records finish, just not fast enough), which lag alone cannot.
//!
//! Sampled with the lag, at no cost per record: a record's wait counts from the first
//! sample that found it the oldest, so the figure is short by at most one interval.

use std::time::Duration;

use foldhash::HashMap;
use tokio::time::Instant;

use super::scheduler::Partition;

/// The oldest unfinished record of each partition when last sampled, and since when.
#[derive(Debug, Default)]
pub(super) struct Oldest {
    seen: HashMap<Partition, (i64, Instant)>,
}

impl Oldest {
    /// How long `first_unfinished` (the partition's oldest unfinished offset at `now`, if
    /// any) has been its oldest: zero when nothing is unfinished or it just became so.
    pub(super) fn wait(&mut self, partition: &Partition, first_unfinished: Option<i64>, now: Instant) -> Duration {
        let Some(offset) = first_unfinished else {
            self.seen.remove(partition);
            return Duration::ZERO;
        };
        let (oldest, since) = self.seen.entry(partition.clone()).or_insert((offset, now));
        if *oldest != offset {
            *oldest = offset;
            *since = now;
        }
        now.saturating_duration_since(*since)
    }

    /// Forget the partitions that `assigned` no longer holds.
    pub(super) fn keep(&mut self, assigned: impl Fn(&Partition) -> bool) {
        self.seen.retain(|partition, _| assigned(partition));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    fn partition(n: i32) -> Partition {
        (Arc::from("t"), n)
    }

    #[test]
    fn a_record_that_stays_oldest_waits_longer_each_sample() {
        let mut oldest = Oldest::default();
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(oldest.wait(&partition(0), Some(5), at(0)), Duration::ZERO);
        assert_eq!(oldest.wait(&partition(0), Some(5), at(2)), Duration::from_secs(2));
        assert_eq!(oldest.wait(&partition(0), Some(5), at(10)), Duration::from_secs(10));
        // It finished: the next one starts from zero.
        assert_eq!(oldest.wait(&partition(0), Some(6), at(12)), Duration::ZERO);
        assert_eq!(oldest.wait(&partition(0), Some(6), at(13)), Duration::from_secs(1));
    }

    #[test]
    fn nothing_unfinished_is_zero_and_forgets() {
        let mut oldest = Oldest::default();
        let start = Instant::now();
        oldest.wait(&partition(0), Some(5), start);
        assert_eq!(oldest.wait(&partition(0), None, start + Duration::from_secs(4)), Duration::ZERO);
        // The same offset again (redelivered after a rebalance) counts afresh.
        assert_eq!(oldest.wait(&partition(0), Some(5), start + Duration::from_secs(6)), Duration::ZERO);
    }

    #[test]
    fn partitions_are_apart_and_revoked_ones_are_forgotten() {
        let mut oldest = Oldest::default();
        let start = Instant::now();
        oldest.wait(&partition(0), Some(5), start);
        oldest.wait(&partition(1), Some(9), start);
        oldest.keep(|p| p.1 == 1);
        let later = start + Duration::from_secs(3);
        assert_eq!(oldest.wait(&partition(0), Some(5), later), Duration::ZERO, "forgotten: starts again");
        assert_eq!(oldest.wait(&partition(1), Some(9), later), Duration::from_secs(3));
    }

    proptest! {
        /// The wait is never longer than the time since the offset was first sampled as the
        /// oldest in an unbroken run, and is that time exactly.
        #[test]
        fn the_wait_is_the_unbroken_run_of_one_offset(samples in prop::collection::vec(prop::option::of(0i64..3), 1..40)) {
            let mut oldest = Oldest::default();
            let start = Instant::now();
            let mut run_start: Option<(i64, usize)> = None;
            for (i, sample) in samples.into_iter().enumerate() {
                let now = start + Duration::from_secs(i as u64);
                let wait = oldest.wait(&partition(0), sample, now);
                run_start = match (sample, run_start) {
                    (None, _) => None,
                    (Some(offset), Some((same, since))) if same == offset => Some((same, since)),
                    (Some(offset), _) => Some((offset, i)),
                };
                let expected = run_start.map_or(0, |(_, since)| (i - since) as u64);
                prop_assert_eq!(wait, Duration::from_secs(expected));
            }
        }
    }
}
