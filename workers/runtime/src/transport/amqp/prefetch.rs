//! How many unacked deliveries RabbitMQ may push to a worker, from the sizes it has seen.
//!
//! RabbitMQ limits a consumer's unacked deliveries by count only (it does not implement
//! a prefetch in bytes), and every delivery it pushes is held whole in memory, about
//! [`BYTES_PER_BYTE`] times over while it is received, converted and dead-lettered. With
//! `--concurrency` as the prefetch, ten requests of 20 MiB waiting in the queue arrived at
//! once and a worker limited to 256 MiB was killed. So the prefetch follows the sizes:
//! `BUDGET / (BYTES_PER_BYTE × recent largest size)`, between 1 and `--concurrency`. It
//! starts at 1 (nothing seen yet counts as large), drops at once when a large delivery
//! arrives, and grows back as small ones follow (the estimate shrinks by [`DECAY`] per
//! delivery). A burst of large deliveries right after many small ones can still bring
//! `--concurrency` of them at once: the prefetch is only known to be too high when the
//! first arrives.
//!
//! Pure and tested here; the transport applies the answers with `basic.qos` (channel-wide,
//! which RabbitMQ applies at once; classic queues only: quorum queues take no channel-wide
//! prefetch, and a consumer's own cannot change while it consumes). RabbitMQ 4 lists
//! channel-wide prefetch among its deprecated features, permitted by default; where a
//! broker denies it, the alternative is to re-subscribe with the new per-consumer value.

/// Memory the deliveries pushed ahead may take, in bytes.
pub(super) const BUDGET: f64 = 64.0 * 1024.0 * 1024.0;
/// Memory per byte of a delivery in flight: lapin's copies of a delivery, rounded up
/// (docs/benchmarks.md, "Why the transports' defaults").
pub(super) const BYTES_PER_BYTE: f64 = 4.0;
/// The size estimate's shrink per delivery.
pub(super) const DECAY: f64 = 0.9;

/// The prefetch of one consumer.
#[derive(Clone, Debug)]
pub(super) struct Prefetch {
    /// Upper bound: `--concurrency`.
    limit: u16,
    /// Recent largest delivery, decaying, in bytes.
    estimate: f64,
    /// What the broker was last told.
    current: u16,
}

impl Prefetch {
    /// Start at 1: nothing seen yet counts as large.
    pub(super) fn new(limit: u16) -> Self {
        let mut prefetch = Self { limit: limit.max(1), estimate: BUDGET / BYTES_PER_BYTE, current: 1 };
        prefetch.current = prefetch.target();
        prefetch
    }

    /// Always `limit` (for a quorum queue, whose consumer's prefetch cannot change).
    pub(super) fn fixed(limit: u16) -> Self {
        Self { limit: limit.max(1), estimate: 0.0, current: limit.max(1) }
    }

    /// The prefetch to ask for now.
    pub(super) fn current(&self) -> u16 {
        self.current
    }

    /// A delivery of `size` bytes arrived: the new prefetch when it should change (lower at
    /// once; higher when it at least doubles, to keep `basic.qos` calls few).
    pub(super) fn observe(&mut self, size: usize) -> Option<u16> {
        self.estimate = (self.estimate * DECAY).max(size as f64);
        let target = self.target();
        let change = target < self.current || target >= self.current.saturating_mul(2).min(self.limit);
        if change && target != self.current {
            self.current = target;
            return Some(target);
        }
        None
    }

    fn target(&self) -> u16 {
        let fits = BUDGET / (BYTES_PER_BYTE * self.estimate.max(1.0));
        fits.clamp(1.0, f64::from(self.limit)) as u16
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn starts_at_one_and_grows_with_small_deliveries() {
        let mut prefetch = Prefetch::new(64);
        assert_eq!(prefetch.current(), 1);
        let mut seen = 0;
        while prefetch.current() < 64 {
            prefetch.observe(200);
            seen += 1;
            assert!(seen < 100, "never reached the limit");
        }
        println!("prefetch 64 after {seen} small deliveries");
    }

    #[test]
    fn a_large_delivery_drops_it_at_once() {
        let mut prefetch = Prefetch::new(64);
        for _ in 0..100 {
            prefetch.observe(200);
        }
        assert_eq!(prefetch.current(), 64);
        assert_eq!(prefetch.observe(20 * MIB), Some(1));
        assert_eq!(prefetch.observe(20 * MIB), None, "unchanged");
        assert_eq!(prefetch.observe(MIB), None, "still the large one's estimate");
    }

    proptest! {
        /// Whatever the sizes: between 1 and the limit, and the deliveries the prefetch
        /// admits fit the budget by the current estimate (or it is 1).
        #[test]
        fn stays_within_bounds(limit in 1u16..300, sizes in proptest::collection::vec(0usize..(64 * MIB), 0..200)) {
            let mut prefetch = Prefetch::new(limit);
            for size in sizes {
                prefetch.observe(size);
                let current = prefetch.current();
                prop_assert!((1..=limit).contains(&current));
                let admitted = f64::from(current) * BYTES_PER_BYTE * (size as f64);
                prop_assert!(current == 1 || admitted <= BUDGET * 1.0001, "{} × {}", current, size);
            }
        }
    }
}
