//! Which offset of a partition may be stored: never past a message still in flight.
//!
//! Messages of one partition may finish out of order (concurrency, key ordering). The
//! stored offset is the next offset to consume after a crash, so it may only advance
//! over the contiguous prefix of finished messages.

use std::collections::BTreeSet;

/// Offsets of one partition handed out and not yet finished.
#[derive(Debug, Default)]
pub struct PartitionOffsets {
    /// Handed out, not finished.
    in_flight: BTreeSet<i64>,
    /// One past the highest offset handed out.
    next: Option<i64>,
    /// The last offset returned by [`PartitionOffsets::finish`] (never goes back).
    stored: Option<i64>,
}

impl PartitionOffsets {
    /// A message at `offset` was received and is being processed.
    pub fn start(&mut self, offset: i64) {
        // Before anything finishes, the position to resume from is the first offset seen.
        self.stored.get_or_insert(offset);
        self.in_flight.insert(offset);
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// The message at `offset` is finished. Returns the offset to store (the next one
    /// to consume) when it advanced.
    pub fn finish(&mut self, offset: i64) -> Option<i64> {
        if !self.in_flight.remove(&offset) {
            return None;
        }
        let committable = self.in_flight.first().copied().or(self.next)?;
        if self.stored.is_some_and(|s| s >= committable) {
            return None;
        }
        self.stored = Some(committable);
        Some(committable)
    }

    /// The first offset received and not finished yet, if any.
    pub fn first_unfinished(&self) -> Option<i64> {
        self.in_flight.first().copied()
    }

    /// Number of messages in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
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
}
