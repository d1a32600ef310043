//! RFC 3339 timestamps, the one time format of the contract (UTC, `Z`, milliseconds).

use std::time::SystemTime;

use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// Parse an RFC 3339 timestamp with any offset (`Z` or `+01:00`).
pub fn parse(value: &str) -> Option<SystemTime> {
    OffsetDateTime::parse(value, &Rfc3339).ok().map(SystemTime::from)
}

/// Format as RFC 3339 in UTC with millisecond precision, e.g. `2026-11-26T05:00:00.123Z`.
/// An instant RFC 3339 cannot write (before year 0 or after 9999) gives the epoch.
pub fn format(at: SystemTime) -> String {
    let nanos = match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => -i128::try_from(before.duration().as_nanos()).unwrap_or(i128::MAX),
    };
    let written = OffsetDateTime::from_unix_timestamp_nanos(nanos).ok().and_then(|t| {
        let t = t.replace_nanosecond(t.millisecond() as u32 * 1_000_000).unwrap_or(t);
        t.format(&Rfc3339).ok()
    });
    written.unwrap_or_else(|| String::from("1970-01-01T00:00:00Z"))
}

/// Seconds since the epoch (an AMQP timestamp) as RFC 3339 in UTC, when RFC 3339 can
/// write that instant.
pub fn from_unix_seconds(seconds: u64) -> Option<String> {
    let t = OffsetDateTime::from_unix_timestamp(i64::try_from(seconds).ok()?).ok()?;
    t.format(&Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn round_trips_to_the_millisecond() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_790_000_000_123);
        let text = format(at);
        assert!(text.ends_with('Z'), "{text}");
        assert_eq!(parse(&text), Some(at));
    }

    proptest::proptest! {
        /// Any text: an answer, never a panic; any valid instant of years 0–9999 round-trips.
        #[test]
        fn parse_never_panics(text in "\\PC{0,40}", year in 0u32..10_000, offset in -1439i32..1440) {
            let _ = parse(&text);
            let sign = if offset < 0 { '-' } else { '+' };
            let stamp = format!("{year:04}-02-28T23:59:59.999{sign}{:02}:{:02}", offset.abs() / 60, offset.abs() % 60);
            let at = parse(&stamp);
            proptest::prop_assert!(at.is_some(), "{}", stamp);
            if let Some(at) = at {
                proptest::prop_assert_eq!(parse(&format(at)), Some(at));
            }
        }
    }

    #[test]
    fn instants_rfc_3339_cannot_write_do_not_panic() {
        assert_eq!(from_unix_seconds(u64::MAX), None);
        assert_eq!(from_unix_seconds(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(format(SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000)), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn accepts_offsets() {
        assert_eq!(parse("2030-01-01T01:00:00+01:00"), parse("2030-01-01T00:00:00Z"));
        assert!(parse("not a time").is_none());
    }
}
