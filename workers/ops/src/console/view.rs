//! One dead-letter record as the console shows it: where it is, where it failed, its
//! headers, and its payload as a person reads it (JSON pretty-printed, protobuf by field,
//! anything else as hex). Every text here comes from the record and is bounded in length;
//! the templates escape it.

use std::fmt::Write as _;

use courier::{
    contract::{headers as h, protobuf_text::describe_payload_named},
    transport::dead_letters::Record,
};

use super::proto::FieldNames;

/// Payload bytes looked at: a JSON document longer than this is shown as hex.
const MAX_PARSED: usize = 256 * 1024;
/// Characters of a payload's text shown.
const MAX_SHOWN: usize = 16 * 1024;
/// Bytes of a payload shown as hex.
const MAX_HEX: usize = 1024;
/// Characters of a header's value shown.
const MAX_HEADER: usize = 2048;

/// A record, ready to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordView {
    /// Its place in the dead-letter queue (`#3`, `2@41`).
    pub id: String,
    /// `courier-message-id` ("" without one), cut to [`MAX_HEADER`].
    pub message_id: String,
    /// Whether the message can be acted on alone: it has an id, shown whole.
    pub actionable: bool,
    /// The Kafka record key, as text or `hex:…`.
    pub key: Option<String>,
    /// `courier-failure-attempts`.
    pub attempts: String,
    /// Where it failed: the source queue/topic, with partition and offset on Kafka.
    pub failed_at: String,
    /// Every header, in name order.
    pub headers: Vec<(String, String)>,
    /// How the payload is shown: `JSON`, `protobuf`, `hex` or `empty`.
    pub format: &'static str,
    /// The payload, as shown.
    pub payload: String,
    /// The payload's size in bytes.
    pub bytes: usize,
}

impl RecordView {
    /// The view of `record`; `names` gives a worker's protobuf field names, when known.
    pub fn of(record: &Record, names: Option<&FieldNames>) -> Self {
        let message = &record.message;
        let header = |name: &str| message.headers.get(name).map_or("", |v| h::truncate(v, MAX_HEADER)).to_owned();
        let mut failed_at = header(h::FAILURE_SOURCE);
        if let (Some(partition), Some(offset)) =
            (message.headers.get(h::FAILURE_PARTITION), message.headers.get(h::FAILURE_OFFSET))
        {
            let _ = write!(failed_at, " partition {} offset {}", h::truncate(partition, 20), h::truncate(offset, 20));
        }
        let (format, payload) = payload(record, names);
        Self {
            id: record.id.to_string(),
            message_id: header(h::MESSAGE_ID),
            actionable: message.headers.get(h::MESSAGE_ID).is_some_and(|id| !id.is_empty() && id.len() <= MAX_HEADER),
            key: message
                .key
                .as_deref()
                .map(|k| h::truncate(&courier::contract::key::display(k), MAX_HEADER).to_owned()),
            attempts: header(h::FAILURE_ATTEMPTS),
            failed_at,
            headers: message
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), h::truncate(v, MAX_HEADER).to_owned()))
                .collect(),
            format,
            payload,
            bytes: message.payload.len(),
        }
    }
}

fn payload(record: &Record, names: Option<&FieldNames>) -> (&'static str, String) {
    let bytes = &record.message.payload[..];
    if bytes.is_empty() {
        return ("empty", String::new());
    }
    if bytes.len() > MAX_PARSED {
        return ("hex", hex_dump(bytes));
    }
    let name = |path: &[u64]| names.and_then(|names| names.name(path));
    if let Some(text) = describe_payload_named(&record.message.headers, bytes, &name) {
        return ("protobuf", shortened(&text));
    }
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(bytes) {
        return ("JSON", pretty(&json));
    }
    ("hex", hex_dump(bytes))
}

/// `json` pretty-printed, written no further than [`MAX_SHOWN`] bytes: deep nesting makes
/// the indentation many times longer than the document.
fn pretty(json: &serde_json::Value) -> String {
    let mut capped = Capped(Vec::new());
    let complete = serde_json::to_writer_pretty(&mut capped, json).is_ok();
    let text = String::from_utf8_lossy(&capped.0).into_owned();
    if complete { text } else { format!("{}\n… (cut at {MAX_SHOWN} bytes)", h::truncate(&text, MAX_SHOWN)) }
}

/// A writer that refuses to grow past [`MAX_SHOWN`] bytes.
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = MAX_SHOWN.saturating_sub(self.0.len());
        if room == 0 {
            return Err(std::io::Error::other("cut"));
        }
        let n = buf.len().min(room);
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn shortened(text: &str) -> String {
    if text.len() <= MAX_SHOWN {
        return text.to_owned();
    }
    format!("{}\n… ({} characters more)", h::truncate(text, MAX_SHOWN), text.len() - h::truncate(text, MAX_SHOWN).len())
}

/// Sixteen bytes a line: offset, bytes in hex, and the printable ones as text.
pub fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (line, chunk) in bytes[..bytes.len().min(MAX_HEX)].chunks(16).enumerate() {
        let _ = write!(out, "{:08x}  ", line * 16);
        for i in 0..16 {
            match chunk.get(i) {
                Some(b) => {
                    let _ = write!(out, "{b:02x} ");
                }
                None => out.push_str("   "),
            }
        }
        out.push(' ');
        out.extend(chunk.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }));
        out.push('\n');
    }
    if bytes.len() > MAX_HEX {
        let _ = write!(out, "… ({} bytes more)", bytes.len() - MAX_HEX);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier::transport::{Message, dead_letters::RecordId};

    fn record(payload: &'static [u8], headers: &[(&str, &str)]) -> Record {
        let headers = headers.iter().map(|(k, v)| (h::name(k), (*v).to_owned())).collect();
        Record {
            id: RecordId::Offset { partition: 1, offset: 7 },
            message: Message { payload: payload.into(), headers, key: None },
        }
    }

    #[test]
    fn json_is_pretty_printed_and_headers_kept_in_order() {
        let view = RecordView::of(
            &record(br#"{"a":1}"#, &[(h::MESSAGE_ID, "m1"), (h::FAILURE_SOURCE, "q"), (h::FAILURE_ATTEMPTS, "3")]),
            None,
        );
        assert_eq!((view.format, view.payload.as_str()), ("JSON", "{\n  \"a\": 1\n}"));
        assert_eq!((view.id.as_str(), view.message_id.as_str(), view.attempts.as_str()), ("1@7", "m1", "3"));
        assert_eq!(view.failed_at, "q");
        let names: Vec<&str> = view.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert!(names.is_sorted(), "{names:?}");
    }

    #[test]
    fn kafka_positions_are_shown_where_the_record_failed() {
        let view = RecordView::of(
            &record(b"", &[(h::FAILURE_SOURCE, "t"), (h::FAILURE_PARTITION, "2"), (h::FAILURE_OFFSET, "40")]),
            None,
        );
        assert_eq!((view.failed_at.as_str(), view.format), ("t partition 2 offset 40", "empty"));
    }

    #[test]
    fn other_bytes_are_shown_as_hex_with_their_text() {
        let view = RecordView::of(&record(b"\xff\x00<script>alert(1)</script>", &[]), None);
        assert_eq!(view.format, "hex");
        assert!(
            view.payload.starts_with("00000000  ff 00 3c 73 63 72 69 70 74 3e 61 6c 65 72 74 28  ..<script>alert("),
            "{}",
            view.payload
        );
        assert!(view.payload.contains("00000010  31 29 3c 2f 73 63 72 69 70 74 3e"), "{}", view.payload);
        let big = vec![b'x'; MAX_HEX + 5];
        let dump = hex_dump(&big);
        assert_eq!(dump.lines().count(), MAX_HEX / 16 + 1);
        assert!(dump.ends_with("… (5 bytes more)"));
    }

    #[test]
    fn protobuf_is_shown_by_field_number_or_by_name() {
        let r = record(b"\x0a\x03Ada", &[(h::CONTENT_TYPE, h::PROTOBUF)]);
        assert_eq!(RecordView::of(&r, None).payload, r#"(protobuf, 5 bytes) {1: "Ada"}"#);
        let names = FieldNames::parse("message Request { string message = 1; }", "Request").expect("parses");
        let view = RecordView::of(&r, Some(&names));
        assert_eq!((view.format, view.payload.as_str()), ("protobuf", r#"(protobuf, 5 bytes) {message: "Ada"}"#));
    }

    #[test]
    fn long_values_are_cut() {
        let long: &'static str = Box::leak("é".repeat(MAX_HEADER).into_boxed_str());
        let view = RecordView::of(&record(b"1", &[(h::MESSAGE_ID, long)]), None);
        assert!(view.message_id.len() <= MAX_HEADER);
        let json: &'static [u8] =
            Box::leak(format!("\"{}\"", "a".repeat(MAX_SHOWN * 2)).into_bytes().into_boxed_slice());
        let view = RecordView::of(&record(json, &[]), None);
        assert!(view.payload.len() < MAX_SHOWN + 100 && view.payload.ends_with(" bytes)"), "{}", view.payload.len());
        assert!(!RecordView::of(&record(b"1", &[(h::MESSAGE_ID, long)]), None).actionable, "a cut id selects nothing");
        assert!(RecordView::of(&record(b"1", &[(h::MESSAGE_ID, "m")]), None).actionable);
        // Deep nesting: the indentation would be many times the document.
        let deep: &'static [u8] =
            Box::leak(format!("{}{}", "[".repeat(120), "]".repeat(120)).into_bytes().into_boxed_slice());
        let shown = RecordView::of(&record(deep, &[]), None).payload;
        assert!(shown.len() < MAX_SHOWN + 100 && shown.ends_with(" bytes)"), "{}", shown.len());
        // Protobuf beyond what is parsed is shown as hex.
        let big: &'static [u8] = Box::leak(vec![0x08; MAX_PARSED + 2].into_boxed_slice());
        assert_eq!(RecordView::of(&record(big, &[(h::CONTENT_TYPE, h::PROTOBUF)]), None).format, "hex");
    }
}
