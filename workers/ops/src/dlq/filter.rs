//! Which dead-letter records an operation applies to.

use std::time::{Duration, SystemTime};

use courier::{
    contract::{headers as h, timestamp},
    transport::Message,
};

/// Every condition given must hold; an empty filter matches every record.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Filter {
    /// Only records with this failure fingerprint (`courier-failure-fingerprint`).
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// Only the records of this message (`courier-message-id`): every copy of it.
    #[arg(long)]
    pub message_id: Option<String>,
    /// Only records of this failure kind (transient, permanent, decode, schema, too-large, expired, unroutable).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only records that failed on this queue/topic (`courier-failure-source`).
    #[arg(long)]
    pub source: Option<String>,
    /// Only records with this key (Kafka record key): its text, or `hex:<hex>` for any bytes.
    #[arg(long, value_parser = courier::contract::key::parse)]
    pub key: Option<bytes::Bytes>,
    /// Only records that last failed at or after this time: RFC 3339, or a duration ago (`2h`).
    #[arg(long, value_parser = parse_instant)]
    pub since: Option<SystemTime>,
    /// Only records that last failed before this time: RFC 3339, or a duration ago (`30m`).
    #[arg(long, value_parser = parse_instant)]
    pub until: Option<SystemTime>,
}

impl Filter {
    /// Whether `record` passes every condition.
    pub fn matches(&self, record: &Message) -> bool {
        let header = |name: &str| record.headers.get(name).map(String::as_str);
        let equal = |wanted: &Option<String>, actual: Option<&str>| wanted.as_deref().is_none_or(|w| Some(w) == actual);
        let failed_at = header(h::FAILURE_LAST_AT).and_then(timestamp::parse);
        equal(&self.fingerprint, header(h::FAILURE_FINGERPRINT))
            && equal(&self.message_id, header(h::MESSAGE_ID))
            && equal(&self.kind, header(h::FAILURE_KIND))
            && equal(&self.source, header(h::FAILURE_SOURCE))
            && self.key.as_ref().is_none_or(|wanted| record.key.as_ref() == Some(wanted))
            && self.since.is_none_or(|since| failed_at.is_some_and(|at| at >= since))
            && self.until.is_none_or(|until| failed_at.is_some_and(|at| at < until))
    }

    /// Whether no condition is given.
    pub fn is_empty(&self) -> bool {
        let Self { fingerprint, message_id, kind, source, key, since, until } = self;
        fingerprint.is_none()
            && message_id.is_none()
            && kind.is_none()
            && source.is_none()
            && key.is_none()
            && since.is_none()
            && until.is_none()
    }
}

/// RFC 3339, or a duration before now (`90s`, `2h`, `3days`).
pub fn parse_instant(s: &str) -> Result<SystemTime, String> {
    if let Some(at) = timestamp::parse(s) {
        return Ok(at);
    }
    let ago: Duration = humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is neither an RFC 3339 time nor a duration such as 2h"))?;
    SystemTime::now().checked_sub(ago).ok_or_else(|| format!("{s:?} reaches before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pairs: &[(&str, &str)], key: Option<&str>) -> Message {
        Message {
            headers: pairs.iter().map(|(k, v)| (h::name(k), (*v).to_owned())).collect(),
            key: key.map(|k| bytes::Bytes::copy_from_slice(k.as_bytes())),
            ..Message::default()
        }
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert!(Filter::default().is_empty());
        assert!(Filter::default().matches(&record(&[], None)));
    }

    #[test]
    fn each_condition_narrows() {
        let r = record(
            &[
                (h::FAILURE_KIND, "transient"),
                (h::FAILURE_FINGERPRINT, "abc"),
                (h::FAILURE_LAST_AT, "2030-01-01T00:00:00Z"),
            ],
            Some("k1"),
        );
        let kind = |k: &str| Filter { kind: Some(k.into()), ..Filter::default() };
        assert!(kind("transient").matches(&r));
        assert!(!kind("schema").matches(&r));
        assert!(Filter { key: Some("k1".into()), ..Filter::default() }.matches(&r));
        assert!(!Filter { key: Some("k2".into()), ..Filter::default() }.matches(&r));
        assert!(!Filter { source: Some("q".into()), ..Filter::default() }.matches(&r));
        assert!(!Filter { message_id: Some("m1".into()), ..Filter::default() }.matches(&r));
        let mut with_id = r.clone();
        with_id.headers.insert(h::name(h::MESSAGE_ID), "m1".into());
        assert!(Filter { message_id: Some("m1".into()), ..Filter::default() }.matches(&with_id));
        let at = |s: &str| timestamp::parse(s);
        assert!(Filter { since: at("2029-12-31T00:00:00Z"), ..Filter::default() }.matches(&r));
        assert!(!Filter { since: at("2030-01-02T00:00:00Z"), ..Filter::default() }.matches(&r));
        assert!(!Filter { until: at("2030-01-01T00:00:00Z"), ..Filter::default() }.matches(&r));
        // A time filter never matches a record without a failure time.
        assert!(!Filter { since: at("2000-01-01T00:00:00Z"), ..Filter::default() }.matches(&record(&[], None)));
    }

    #[test]
    fn instants_are_times_or_durations_ago() {
        assert_eq!(parse_instant("2030-01-01T00:00:00Z").ok(), timestamp::parse("2030-01-01T00:00:00Z"));
        let hour_ago = parse_instant("1h").expect("a duration");
        let elapsed = SystemTime::now().duration_since(hour_ago).expect("in the past");
        assert!(elapsed >= Duration::from_secs(3600) && elapsed < Duration::from_secs(3700), "{elapsed:?}");
        assert!(parse_instant("yesterday-ish").is_err());
    }
}
