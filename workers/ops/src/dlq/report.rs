//! What `courier dlq stats` and `courier dlq show` print.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::dlq::Record;
use courier::contract::{headers as h, protobuf_text::describe_payload};

/// Records grouped by failure: fingerprint, kind, source and worker.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Records counted.
    pub total: u64,
    /// One entry per failure group, largest first once [`Stats::groups`] is called.
    groups: BTreeMap<(String, String, String, String), Group>,
}

/// One failure group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Group {
    /// `courier-failure-fingerprint`.
    pub fingerprint: String,
    /// `courier-failure-kind`.
    pub kind: String,
    /// `courier-failure-source`.
    pub source: String,
    /// `courier-failure-worker`.
    pub worker: String,
    /// Records in the group.
    pub count: u64,
    /// Earliest `courier-failure-last-at` in the group.
    pub oldest: Option<String>,
    /// Latest `courier-failure-last-at` in the group.
    pub newest: Option<String>,
    /// The error message of the group's first record.
    pub sample: String,
}

impl Stats {
    /// Count one record.
    pub fn add(&mut self, record: &Record) {
        let get = |name: &str| record.message.headers.get(name).cloned().unwrap_or_else(|| "-".to_owned());
        let key = (get(h::FAILURE_FINGERPRINT), get(h::FAILURE_KIND), get(h::FAILURE_SOURCE), get(h::FAILURE_WORKER));
        let at = record.message.headers.get(h::FAILURE_LAST_AT).cloned();
        self.total += 1;
        let group = self.groups.entry(key.clone()).or_insert_with(|| Group {
            fingerprint: key.0,
            kind: key.1,
            source: key.2,
            worker: key.3,
            sample: get(h::FAILURE_MESSAGE),
            ..Group::default()
        });
        group.count += 1;
        if let Some(at) = at {
            // The contract's timestamps are UTC with a fixed layout: text order is time order.
            if group.oldest.as_ref().is_none_or(|oldest| &at < oldest) {
                group.oldest = Some(at.clone());
            }
            if group.newest.as_ref().is_none_or(|newest| &at > newest) {
                group.newest = Some(at);
            }
        }
    }

    /// The groups, largest first.
    pub fn groups(&self) -> Vec<&Group> {
        let mut groups: Vec<&Group> = self.groups.values().collect();
        groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.fingerprint.cmp(&b.fingerprint)));
        groups
    }

    /// A table for terminals.
    pub fn render(&self, queue: &str) -> String {
        let mut out = format!("{queue}: {} record(s) in {} group(s)\n", self.total, self.groups.len());
        if self.total == 0 {
            return out;
        }
        let _ = writeln!(
            out,
            "{:>7}  {:<16}  {:<10}  {:<24}  {:<12}  {:<24}  {:<24}  sample error",
            "count", "fingerprint", "kind", "source", "worker", "oldest", "newest"
        );
        for g in self.groups() {
            let _ = writeln!(
                out,
                "{:>7}  {:<16}  {:<10}  {:<24}  {:<12}  {:<24}  {:<24}  {}",
                g.count,
                g.fingerprint,
                g.kind,
                g.source,
                g.worker,
                g.oldest.as_deref().unwrap_or("-"),
                g.newest.as_deref().unwrap_or("-"),
                h::truncate(&g.sample, 100)
            );
        }
        out
    }

    /// The same as JSON, for scripts.
    pub fn to_json(&self, queue: &str) -> serde_json::Value {
        serde_json::json!({ "queue": queue, "total": self.total, "groups": self.groups() })
    }
}

/// One record for terminals: id, key, headers, and the payload pretty-printed when it is
/// JSON, by field number when it is protobuf.
pub fn show(record: &Record) -> String {
    let mut out = format!("── {} ", record.id);
    if let Some(key) = &record.message.key {
        let _ = write!(out, "key={} ", courier::contract::key::display(key));
    }
    out.push('\n');
    for (name, value) in &record.message.headers {
        let _ = writeln!(out, "  {name}: {value}");
    }
    let protobuf = describe_payload(&record.message.headers, &record.message.payload);
    let payload = match serde_json::from_slice::<serde_json::Value>(&record.message.payload) {
        _ if protobuf.is_some() => protobuf.unwrap_or_default(),
        Ok(json) => serde_json::to_string_pretty(&json).unwrap_or_default(),
        Err(_) => {
            let text = String::from_utf8_lossy(&record.message.payload);
            format!("{} ({} bytes, not JSON)", h::truncate(&text, 2048), record.message.payload.len())
        }
    };
    for line in payload.lines() {
        let _ = writeln!(out, "  | {line}");
    }
    out
}

/// One record as a JSON object: the payload as JSON when it is, else as text (protobuf
/// by field number).
pub fn show_json(record: &Record) -> serde_json::Value {
    let text = || {
        describe_payload(&record.message.headers, &record.message.payload)
            .unwrap_or_else(|| String::from_utf8_lossy(&record.message.payload).into_owned())
    };
    let payload = serde_json::from_slice::<serde_json::Value>(&record.message.payload)
        .unwrap_or_else(|_| serde_json::Value::String(text()));
    serde_json::json!({
        "id": record.id.to_string(),
        "key": record.message.key.as_deref().map(courier::contract::key::display),
        "headers": record.message.headers,
        "payload": payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier::transport::Message;

    use courier::transport::dead_letters::RecordId;

    fn record(n: u64, fingerprint: &str, at: &str, message: &str) -> Record {
        let headers = [
            (h::FAILURE_FINGERPRINT, fingerprint),
            (h::FAILURE_KIND, "transient"),
            (h::FAILURE_SOURCE, "q"),
            (h::FAILURE_WORKER, "w"),
            (h::FAILURE_LAST_AT, at),
            (h::FAILURE_MESSAGE, message),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.to_owned()))
        .collect();
        Record { id: RecordId::Position(n), message: Message { payload: "{\"a\":1}".into(), headers, key: None } }
    }

    #[test]
    fn groups_count_and_span_time() {
        let mut stats = Stats::default();
        stats.add(&record(1, "f1", "2030-01-01T00:00:02.000Z", "first"));
        stats.add(&record(2, "f2", "2030-01-01T00:00:00.000Z", "other"));
        stats.add(&record(3, "f1", "2030-01-01T00:00:01.000Z", "second"));
        let groups = stats.groups();
        assert_eq!((stats.total, groups.len()), (3, 2));
        assert_eq!((groups[0].fingerprint.as_str(), groups[0].count), ("f1", 2));
        assert_eq!(groups[0].oldest.as_deref(), Some("2030-01-01T00:00:01.000Z"));
        assert_eq!(groups[0].newest.as_deref(), Some("2030-01-01T00:00:02.000Z"));
        assert_eq!(groups[0].sample, "first");
        assert!(stats.render("q.dlq").contains("q.dlq: 3 record(s) in 2 group(s)"));
        assert_eq!(stats.to_json("q.dlq")["groups"][0]["count"], 2);
    }

    #[test]
    fn show_pretty_prints_json_and_keeps_other_bytes_readable() {
        let text = show(&record(1, "f", "t", "m"));
        assert!(text.contains("  | {\n  |   \"a\": 1\n  | }") || text.contains("  |   \"a\": 1"), "{text}");
        let mut binary = record(2, "f", "t", "m");
        binary.message.payload = bytes::Bytes::from_static(b"\xff\xfenot json");
        assert!(show(&binary).contains("not JSON"));
        assert_eq!(show_json(&binary)["payload"], "\u{fffd}\u{fffd}not json");
        assert_eq!(show_json(&record(3, "f", "t", "m"))["payload"]["a"], 1);
    }

    #[test]
    fn protobuf_payloads_are_shown_by_field_number() {
        let mut protobuf = record(1, "f", "t", "m");
        protobuf.message.payload = bytes::Bytes::from_static(b"\x0a\x03Ada");
        protobuf.message.headers.insert(h::CONTENT_TYPE.into(), h::PROTOBUF.into());
        assert!(show(&protobuf).contains(r#"  | (protobuf, 5 bytes) {1: "Ada"}"#), "{}", show(&protobuf));
        assert_eq!(show_json(&protobuf)["payload"], r#"(protobuf, 5 bytes) {1: "Ada"}"#);
        // Not protobuf after all: shown as bytes, as any other payload.
        protobuf.message.payload = bytes::Bytes::from_static(b"\x0a\x09Ada");
        assert!(show(&protobuf).contains("not JSON"), "{}", show(&protobuf));
    }
}
