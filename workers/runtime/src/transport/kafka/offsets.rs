//! Which offset of a partition may be stored: never past a message still in flight.
//!
//! Messages of one partition may finish out of order (concurrency, key ordering). The
//! stored offset is the next offset to consume after a crash, so it may only advance
//! over the contiguous prefix of finished messages.

use std::collections::VecDeque;

/// Finished entries the window may keep beyond twice the unfinished ones.
const COMPACT_AFTER: usize = 1024;

/// Offsets of one partition handed out and not yet finished.
#[derive(Debug, Default)]
pub(crate) struct PartitionOffsets {
    /// Received and not yet passed by the stored position, in offset order, each with
    /// whether it is finished. Records arrive in offset order, so a start is a push at the
    /// back and the finished prefix leaves from the front (cheaper per record than a search
    /// tree).
    window: VecDeque<(i64, bool)>,
    /// Entries of `window` not finished.
    in_flight: usize,
    /// One past the highest offset handed out.
    next: Option<i64>,
    /// The last offset returned by [`PartitionOffsets::finish`] (never goes back).
    stored: Option<i64>,
}

impl PartitionOffsets {
    /// A message at `offset` was received and is being processed.
    pub(crate) fn start(&mut self, offset: i64) {
        // Before anything finishes, the position to resume from is the first offset seen.
        self.stored.get_or_insert(offset);
        match self.window.back() {
            Some((last, _)) if *last >= offset => match self.position(offset) {
                Ok(_) => return,
                Err(at) => self.window.insert(at, (offset, false)),
            },
            _ => self.window.push_back((offset, false)),
        }
        self.in_flight += 1;
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// The message at `offset` is finished. Returns the offset to store (the next one
    /// to consume) when it advanced.
    pub(crate) fn finish(&mut self, offset: i64) -> Option<i64> {
        let Ok(at) = self.position(offset) else { return None };
        let (_, finished) = &mut self.window[at];
        if std::mem::replace(finished, true) {
            return None;
        }
        self.in_flight -= 1;
        while self.window.front().is_some_and(|(_, finished)| *finished) {
            self.window.pop_front();
        }
        // Finished records behind a long unfinished one (a record retrying in place) are
        // dropped in bulk, so the window stays within twice what is in flight.
        if self.window.len() > 2 * self.in_flight + COMPACT_AFTER {
            self.window.retain(|(_, finished)| !finished);
        }
        let committable = self.first_unfinished().or(self.next)?;
        if self.stored.is_some_and(|s| s >= committable) {
            return None;
        }
        self.stored = Some(committable);
        Some(committable)
    }

    /// The first offset received and not finished yet, if any.
    pub(crate) fn first_unfinished(&self) -> Option<i64> {
        // The front is unfinished: finished ones leave from the front at once.
        self.window.front().map(|(offset, _)| *offset)
    }

    /// Number of messages in flight.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Where `offset` is in the window (`Err`: where it would go).
    fn position(&self, offset: i64) -> Result<usize, usize> {
        self.window.binary_search_by_key(&offset, |(o, _)| *o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_completion_advances_one_by_one() {
        let mut p = PartitionOffsets::default();
        for o in 10..13 {
            p.start(o);
        }
        assert_eq!(p.finish(10), Some(11));
        assert_eq!(p.finish(11), Some(12));
        assert_eq!(p.finish(12), Some(13));
    }

    #[test]
    fn never_stores_past_an_unfinished_message() {
        let mut p = PartitionOffsets::default();
        for o in 0..5 {
            p.start(o);
        }
        // The slow first message holds everything back.
        assert_eq!(p.finish(3), None);
        assert_eq!(p.finish(1), None);
        assert_eq!(p.finish(4), None);
        assert_eq!(p.finish(2), None);
        assert_eq!(p.in_flight(), 1);
        assert_eq!(p.finish(0), Some(5), "then jumps over the finished prefix");
    }

    #[test]
    fn gap_in_the_middle_stops_at_the_gap() {
        let mut p = PartitionOffsets::default();
        for o in 0..4 {
            p.start(o);
        }
        assert_eq!(p.finish(0), Some(1));
        assert_eq!(p.finish(2), None);
        assert_eq!(p.finish(1), Some(3));
        assert_eq!(p.finish(3), Some(4));
    }

    #[test]
    fn first_unfinished_is_the_lowest_offset_in_flight() {
        let mut p = PartitionOffsets::default();
        assert_eq!(p.first_unfinished(), None);
        for o in 5..8 {
            p.start(o);
        }
        p.finish(6);
        assert_eq!(p.first_unfinished(), Some(5));
        p.finish(5);
        assert_eq!(p.first_unfinished(), Some(7));
        p.finish(7);
        assert_eq!(p.first_unfinished(), None);
    }

    #[test]
    fn unknown_or_repeated_finishes_are_ignored() {
        let mut p = PartitionOffsets::default();
        p.start(7);
        assert_eq!(p.finish(8), None);
        assert_eq!(p.finish(7), Some(8));
        assert_eq!(p.finish(7), None);
    }

    #[test]
    fn finished_records_behind_a_slow_one_take_bounded_room() {
        let mut p = PartitionOffsets::default();
        for o in 0..100_000 {
            p.start(o);
            if o > 0 {
                assert_eq!(p.finish(o), None, "the slow first record holds the position");
            }
            assert!(p.window.len() <= 2 * p.in_flight() + COMPACT_AFTER + 1);
        }
        assert_eq!(p.finish(0), Some(100_000));
        assert!(p.window.is_empty());
    }

    proptest::proptest! {
        /// The same answers as the rule stated on a plain set: store the lowest offset
        /// still in flight, else one past the highest seen, and never go back.
        #[test]
        fn agrees_with_the_rule_on_a_set(
            ops in proptest::collection::vec((proptest::bool::weighted(0.55), 0..40i64), 0..200),
        ) {
            let mut p = PartitionOffsets::default();
            let mut in_flight = std::collections::BTreeSet::new();
            let (mut next, mut stored): (Option<i64>, Option<i64>) = (None, None);
            let mut seen = std::collections::BTreeSet::new();
            for (is_start, offset) in ops {
                if is_start {
                    // A record is received once per assignment.
                    if !seen.insert(offset) {
                        continue;
                    }
                    p.start(offset);
                    stored.get_or_insert(offset);
                    in_flight.insert(offset);
                    next = Some(next.map_or(offset + 1, |n: i64| n.max(offset + 1)));
                } else {
                    let expected = if in_flight.remove(&offset) {
                        let committable = in_flight.first().copied().or(next);
                        committable.filter(|c| stored.is_none_or(|s| s < *c))
                    } else {
                        None
                    };
                    if expected.is_some() {
                        stored = expected;
                    }
                    proptest::prop_assert_eq!(p.finish(offset), expected);
                }
                proptest::prop_assert_eq!(p.first_unfinished(), in_flight.first().copied());
                proptest::prop_assert_eq!(p.in_flight(), in_flight.len());
            }
        }
    }
}
