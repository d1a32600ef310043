//! Our [`Message`] ↔ AMQP properties and headers table.
//!
//! Contract headers travel in the headers table as long strings, except those with an
//! AMQP property of their own (`message_id`, `correlation_id`, `reply_to`,
//! `content_type`, and on replies `app_id` for `courier-replied-by` and `type` for
//! `courier-status`), which travel in the property. On receipt a property fills in its
//! header unless the producer also set the header (the header wins). Header
//! values that are not text are shown as text (numbers and booleans in decimal, timestamps
//! in RFC 3339, bytes that are not UTF-8 with U+FFFD); tables, arrays, decimals and voids
//! have no text form. The received table is kept with the headers when the text view
//! loses anything, and a copy of the message
//! (dead letter, retry, replay) goes out with each unchanged value in its original type
//! and the values without a text form as they came; the broker's own `x-death` is not
//! carried over.

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::{
    contract::headers::{self as h, Headers},
    transport::Message,
};

/// Contract headers that have an AMQP property of their own: the four standard ones, and
/// on replies `courier-replied-by` as `app_id` and `courier-status` as `type` (fewer
/// headers-table entries for the broker to parse on every reply).
const MIRRORED: [&str; 6] = [h::MESSAGE_ID, h::CORRELATION_ID, h::REPLY_TO, h::CONTENT_TYPE, h::REPLIED_BY, h::STATUS];

/// RabbitMQ's sender-selected distribution: a `CC` or `BCC` header (an array of routing
/// keys, read case-sensitively) sends a published message to those queues as well. A
/// copy's headers are what its producer wrote (dead letters, retries, replays), so no copy
/// carries either: a request cannot name extra destinations for the worker's outputs.
const SENDER_SELECTED: [&str; 2] = ["CC", "BCC"];

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// Properties and headers for publishing `message`.
/// The four headers with an AMQP property of their own travel in that property only
/// (smaller frames); a value too long for a property (255 bytes) stays in the table.
pub fn properties(message: &Message) -> BasicProperties {
    let short = |name: &str| message.headers.get(name).and_then(|v| ShortString::try_new(v.clone()).ok());
    let originals = message.headers.originals().and_then(|o| o.downcast_ref::<FieldTable>());
    let mut table = FieldTable::default();
    for (name, value) in &message.headers {
        if (MIRRORED.contains(&name.as_ref()) && value.len() <= 255) || SENDER_SELECTED.contains(&name.as_ref()) {
            continue;
        }
        let Ok(key) = ShortString::try_new(name.clone()) else { continue };
        // An unchanged value keeps its type; a changed or new one is a string.
        let original = originals.and_then(|o| o.inner().get(&key)).filter(|o| text(o).as_ref() == Some(value));
        let value = original.cloned().unwrap_or_else(|| AMQPValue::LongString(LongString::from(value.as_bytes())));
        table.insert(key, value);
    }
    // Values without a text form were never in the headers: they go out as they came.
    for (key, value) in originals.map(|o| o.inner().iter()).into_iter().flatten() {
        if text(value).is_none()
            && !message.headers.contains_key(key.as_str())
            && !SENDER_SELECTED.contains(&key.as_str())
        {
            table.insert(key.clone(), value.clone());
        }
    }
    let mut props = BasicProperties::default().with_delivery_mode(PERSISTENT);
    if !table.inner().is_empty() {
        props = props.with_headers(table);
    }
    if let Some(v) = short(h::MESSAGE_ID) {
        props = props.with_message_id(v);
    }
    if let Some(v) = short(h::CORRELATION_ID) {
        props = props.with_correlation_id(v);
    }
    if let Some(v) = short(h::REPLY_TO) {
        props = props.with_reply_to(v);
    }
    if let Some(v) = short(h::REPLIED_BY) {
        props = props.with_app_id(v);
    }
    if let Some(v) = short(h::STATUS) {
        props = props.with_type(v);
    }
    props.with_content_type(short(h::CONTENT_TYPE).unwrap_or_else(|| ShortString::from(h::JSON)))
}

/// Our headers from a received message's properties; never fails, whatever the producer sent.
pub fn headers(props: &BasicProperties) -> Headers {
    let mut headers: Headers = props
        .headers()
        .iter()
        .flat_map(|table| table.inner())
        .filter_map(|(name, value)| Some((h::name(name.as_str()), text(value)?)))
        .collect();
    if let Some(table) = props.headers().as_ref().filter(|t| t.inner().values().any(|v| !is_plain_text(v))) {
        let kept: std::collections::BTreeMap<ShortString, AMQPValue> =
            table.inner().iter().filter(|(k, _)| k.as_str() != X_DEATH).map(|(k, v)| (k.clone(), v.clone())).collect();
        headers.set_originals(std::sync::Arc::new(FieldTable::from(kept)));
    }
    let mut fill = |name: &'static str, value: &Option<ShortString>| {
        if let Some(value) = value {
            headers.get_or_insert_with(name.into(), || value.as_str().to_owned());
        }
    };
    fill(h::MESSAGE_ID, props.message_id());
    fill(h::CORRELATION_ID, props.correlation_id());
    fill(h::REPLY_TO, props.reply_to());
    fill(h::CONTENT_TYPE, props.content_type());
    // `type` and `app_id` mean something else to other AMQP producers: only a Courier
    // status (`ok`/`error`) marks a Courier reply.
    if props.kind().as_ref().is_some_and(|status| crate::contract::status::Status::parse(status.as_str()).is_some()) {
        fill(h::STATUS, props.kind());
        fill(h::REPLIED_BY, props.app_id());
    }
    headers
}

/// The broker's own dead-lettering history: never carried into a copy.
const X_DEATH: &str = "x-death";

/// A value the text view shows exactly: a string of UTF-8.
fn is_plain_text(value: &AMQPValue) -> bool {
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).is_ok(),
        AMQPValue::ShortString(_) => true,
        _ => false,
    }
}

fn text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(seconds) => {
            crate::contract::timestamp::from_unix_seconds(*seconds).unwrap_or_else(|| seconds.to_string())
        }
        AMQPValue::ByteArray(bytes) => String::from_utf8_lossy(bytes.as_slice()).into_owned(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_name_no_extra_destinations() {
        use lapin::types::FieldArray;
        let routes =
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(LongString::from("ledger.requests"))]));
        let mut table = FieldTable::default();
        for name in ["CC", "BCC", "cc", "courier-correlation-id"] {
            table.insert(ShortString::from(name), routes.clone());
        }
        table.insert(ShortString::from("CC"), AMQPValue::LongString(LongString::from("ledger.requests")));
        let received = headers(&BasicProperties::default().with_headers(table));
        let sent = properties(&Message { headers: received, ..Message::default() });
        let names: Vec<&str> = sent.headers().iter().flat_map(|t| t.inner().keys()).map(ShortString::as_str).collect();
        assert_eq!(names, ["cc", "courier-correlation-id"], "RabbitMQ reads `CC` and `BCC` only, case-sensitively");
    }

    #[test]
    fn headers_round_trip_through_properties() {
        let mut message = Message::default();
        for (k, v) in [(h::CORRELATION_ID, "c-1"), (h::REPLY_TO, "x.replies"), ("custom", "héllo")] {
            message.headers.insert(k.into(), v.into());
        }
        let props = properties(&message);
        assert_eq!(props.correlation_id().as_ref().map(ShortString::as_str), Some("c-1"));
        assert_eq!(props.delivery_mode(), &Some(PERSISTENT));
        let back = headers(&props);
        assert_eq!(back.get("custom").map(String::as_str), Some("héllo"));
        assert_eq!(back.get(h::CONTENT_TYPE).map(String::as_str), Some(h::JSON));
    }

    #[test]
    fn properties_fill_missing_headers_and_garbage_does_not_panic() {
        let mut table = FieldTable::default();
        table.insert("n".into(), AMQPValue::LongLongInt(-5));
        table.insert("bin".into(), AMQPValue::LongString(LongString::from(&b"\xff\x00"[..])));
        table.insert("nested".into(), AMQPValue::FieldTable(FieldTable::default()));
        let props = BasicProperties::default().with_headers(table).with_reply_to("r.replies".into());
        let back = headers(&props);
        assert_eq!(back.get("n").map(String::as_str), Some("-5"));
        assert_eq!(back.get("bin").map(String::as_str), Some("\u{fffd}\u{0}"));
        assert!(!back.contains_key("nested"));
        assert_eq!(back.get(h::REPLY_TO).map(String::as_str), Some("r.replies"));
        // Another producer's `type`/`app_id` are not Courier statuses.
        let foreign = BasicProperties::default().with_type("OrderCreated".into()).with_app_id("shop".into());
        assert!(headers(&foreign).keys().all(|k| k != h::STATUS && k != h::REPLIED_BY));
    }

    #[test]
    fn mirrored_headers_travel_as_properties_only() {
        let mut message = Message::default();
        message.headers.insert(h::MESSAGE_ID.into(), "m-1".into());
        message.headers.insert(h::STATUS.into(), crate::contract::status::Status::Ok.as_str().into());
        message.headers.insert(h::REPLIED_BY.into(), "w-1".into());
        message.headers.insert("custom".into(), "x".into());
        let props = properties(&message);
        let table = props.headers().as_ref().expect("table");
        assert_eq!(table.inner().keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["custom"]);
        assert_eq!(props.message_id().as_ref().map(ShortString::as_str), Some("m-1"));
        assert_eq!(props.kind().as_ref().map(ShortString::as_str), Some(crate::contract::status::Status::Ok.as_str()));
        assert_eq!(props.app_id().as_ref().map(ShortString::as_str), Some("w-1"));
        assert_eq!(
            headers(&props),
            message.headers.into_iter().chain([(h::CONTENT_TYPE.into(), h::JSON.into())]).collect()
        );
    }

    #[test]
    fn a_copy_keeps_the_original_types() {
        use lapin::types::{DecimalValue, FieldArray};
        let mut table = FieldTable::default();
        let originals = [
            ("count", AMQPValue::LongLongInt(7)),
            ("small", AMQPValue::ShortShortUInt(3)),
            ("flag", AMQPValue::Boolean(true)),
            ("sent", AMQPValue::Timestamp(1_790_000_000)),
            ("nested", AMQPValue::FieldTable(FieldTable::default())),
            ("list", AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongInt(1)]))),
            ("price", AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 1999 })),
            ("nothing", AMQPValue::Void),
            ("changed", AMQPValue::LongInt(1)),
            ("dropped", AMQPValue::LongInt(2)),
            ("x-death", AMQPValue::FieldArray(FieldArray::default())),
        ];
        for (name, value) in originals.clone() {
            table.insert(name.into(), value);
        }
        let received = BasicProperties::default().with_headers(table);
        let mut copy = Message { headers: headers(&received), ..Message::default() };
        assert_eq!(copy.headers.get("sent").map(String::as_str), Some("2026-09-21T14:13:20Z"), "RFC 3339");
        copy.headers.insert("changed".into(), "now text".into());
        copy.headers.remove("dropped");
        copy.headers.insert(h::FAILURE_KIND.into(), "permanent".into());
        let sent = properties(&copy);
        let out = sent.headers().as_ref().expect("a table").inner();
        for (name, value) in &originals[..8] {
            assert_eq!(out.get(*name), Some(value), "{name} keeps its type");
        }
        assert_eq!(out.get("changed"), Some(&AMQPValue::LongString(LongString::from(&b"now text"[..]))));
        assert_eq!(out.get("dropped"), None, "removed by the runtime");
        assert_eq!(out.get("x-death"), None, "the broker's own");
        assert!(matches!(out.get(h::FAILURE_KIND), Some(AMQPValue::LongString(_))));
        let fresh = Message { headers: copy.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), ..copy };
        let plain = properties(&fresh);
        assert!(
            matches!(plain.headers().as_ref().and_then(|t| t.inner().get("count")), Some(AMQPValue::LongString(_))),
            "headers built anew carry no originals"
        );
    }

    fn value() -> impl proptest::strategy::Strategy<Value = AMQPValue> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(|b| AMQPValue::LongString(LongString::from(b))),
            any::<i64>().prop_map(AMQPValue::LongLongInt),
            any::<bool>().prop_map(AMQPValue::Boolean),
            any::<u64>().prop_map(AMQPValue::Timestamp),
            any::<f64>().prop_map(AMQPValue::Double),
            Just(AMQPValue::Void),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            proptest::collection::vec(("[a-z]{1,4}", inner), 0..4).prop_map(|pairs| {
                let mut table = FieldTable::default();
                for (k, v) in pairs {
                    table.insert(k.into(), v);
                }
                AMQPValue::FieldTable(table)
            })
        })
    }

    proptest::proptest! {
        /// Any table a producer sends: headers, never a panic; and a copy sent back out
        /// carries every value the runtime did not change, in its type.
        #[test]
        fn any_table_converts_and_copies_keep_it(pairs in proptest::collection::vec(("\\PC{1,10}", value()), 0..12)) {
            let mut table = FieldTable::default();
            for (k, v) in &pairs {
                if let Ok(k) = ShortString::try_new(k.clone()) {
                    table.insert(k, v.clone());
                }
            }
            let received = BasicProperties::default().with_headers(table.clone());
            let copy = Message { headers: headers(&received), ..Message::default() };
            let sent = properties(&copy);
            let out = sent.headers().clone().unwrap_or_default();
            for (k, v) in table.inner() {
                if k.as_str() == X_DEATH || MIRRORED.contains(&k.as_str()) {
                    continue;
                }
                let same = match (out.inner().get(k), v) {
                    (Some(AMQPValue::Double(a)), AMQPValue::Double(b)) => a.to_bits() == b.to_bits(),
                    (got, want) => got == Some(want),
                };
                proptest::prop_assert!(same, "{} came back as {:?}, sent {:?}", k, out.inner().get(k), v);
            }
        }
    }

    #[test]
    fn overlong_values_are_kept_in_the_table_only() {
        let mut message = Message::default();
        message.headers.insert(h::CORRELATION_ID.into(), "x".repeat(300));
        let props = properties(&message);
        assert!(props.correlation_id().is_none());
        assert_eq!(headers(&props).get(h::CORRELATION_ID).map(String::len), Some(300));
    }
}
