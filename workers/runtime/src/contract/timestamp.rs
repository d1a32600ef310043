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

    #[test]
    fn accepts_offsets() {
        assert_eq!(parse("2030-01-01T01:00:00+01:00"), parse("2030-01-01T00:00:00Z"));
        assert!(parse("not a time").is_none());
    }
}
