//! RFC 3339 timestamps, the one time format of the contract (UTC, `Z`, milliseconds).

use std::time::SystemTime;

use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// Parse an RFC 3339 timestamp with any offset (`Z` or `+01:00`).
pub fn parse(value: &str) -> Option<SystemTime> {
    OffsetDateTime::parse(value, &Rfc3339).ok().map(SystemTime::from)
}

/// Format as RFC 3339 in UTC with millisecond precision, e.g. `2026-11-26T05:00:00.123Z`.
pub fn format(at: SystemTime) -> String {
    let t = OffsetDateTime::from(at);
    let t = t.replace_nanosecond(t.millisecond() as u32 * 1_000_000).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z"))
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
    fn accepts_offsets() {
        assert_eq!(parse("2030-01-01T01:00:00+01:00"), parse("2030-01-01T00:00:00Z"));
        assert!(parse("not a time").is_none());
    }
}
