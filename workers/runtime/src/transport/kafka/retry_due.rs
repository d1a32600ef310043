//! When a record read from a retry tier is handed out: its tier's delay after it was
//! written, and never later than that delay after it was read.
//!
//! A record's timestamp is the producer's word (`CreateTime`): a clock far ahead, or a
//! record forged into the tier with a date next year, must not hold its partition, and
//! every real retry behind it, longer than the tier's delay. A record without a timestamp
//! is held the whole delay from when it was read.

use std::time::{Duration, SystemTime};

/// How long to hold a record written at `written` (its timestamp, if it has one) to a
/// tier of `delay`, read `now`: what is left of `delay` since it was written, at most
/// `delay`.
pub(super) fn hold(written: Option<SystemTime>, delay: Duration, now: SystemTime) -> Duration {
    let Some(written) = written else { return delay };
    let due = written.checked_add(delay).unwrap_or(written);
    due.duration_since(now).unwrap_or_default().min(delay)
}

/// A Kafka timestamp (milliseconds since the epoch; negative or absent: none) as a time.
pub(super) fn written_at(millis: Option<i64>) -> Option<SystemTime> {
    let millis = u64::try_from(millis?).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const DELAY: Duration = Duration::from_secs(30);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn a_record_written_earlier_waits_what_is_left_of_its_delay() {
        assert_eq!(hold(Some(at(0)), DELAY, at(10)), Duration::from_secs(20));
        assert_eq!(hold(Some(at(0)), DELAY, at(30)), Duration::ZERO);
        assert_eq!(hold(Some(at(0)), DELAY, at(3_600)), Duration::ZERO);
    }

    #[test]
    fn a_record_dated_ahead_waits_no_longer_than_its_delay() {
        assert_eq!(hold(Some(at(86_400)), DELAY, at(0)), DELAY);
        assert_eq!(hold(Some(at(5)), DELAY, at(0)), DELAY);
    }

    #[test]
    fn a_record_without_a_timestamp_waits_its_delay() {
        assert_eq!(hold(None, DELAY, at(0)), DELAY);
        assert_eq!(written_at(None), None);
        assert_eq!(written_at(Some(-1)), None);
        assert_eq!(written_at(Some(1_500)), Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_500)));
    }

    proptest! {
        /// Whatever the timestamp says: never more than the delay, and exactly what is left
        /// of it for a record written in the past.
        #[test]
        fn never_longer_than_the_delay(written in any::<i64>(), now in 0..u64::from(u32::MAX), delay in 0..86_400_000u64) {
            let (delay, now) = (Duration::from_millis(delay), SystemTime::UNIX_EPOCH + Duration::from_millis(now));
            let written = written_at(Some(written));
            let held = hold(written, delay, now);
            prop_assert!(held <= delay);
            if let Some(written) = written.filter(|w| *w <= now) {
                let since = now.duration_since(written).unwrap_or_default();
                prop_assert_eq!(held, delay.saturating_sub(since));
            }
        }
    }
}
