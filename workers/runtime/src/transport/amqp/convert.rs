//! Our [`Message`] ↔ AMQP properties and headers table.
//!
//! Contract headers travel in the headers table as long strings, except those with an
//! AMQP property of their own (`message_id`, `correlation_id`, `reply_to`,
//! `content_type`, and on replies `app_id` for `courier-replied-by` and `type` for
//! `courier-status`), which travel in the property. On receipt a property fills in its
//! header unless the producer also set the header (the header wins). Header
//! values that are not text are converted to text (numbers, booleans); tables and arrays
//! (such as the broker's own `x-death`) are not carried over.

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

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// Properties and headers for publishing `message`.
/// The four headers with an AMQP property of their own travel in that property only
/// (smaller frames); a value too long for a property (255 bytes) stays in the table.
pub fn properties(message: &Message) -> BasicProperties {
    let short = |name: &str| message.headers.get(name).and_then(|v| ShortString::try_new(v.clone()).ok());
    let mut table = FieldTable::default();
    for (name, value) in &message.headers {
        if MIRRORED.contains(&name.as_ref()) && value.len() <= 255 {
            continue;
        }
        if let Ok(name) = ShortString::try_new(name.clone()) {
            table.insert(name, AMQPValue::LongString(LongString::from(value.as_bytes())));
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
    if props.kind().as_ref().is_some_and(|status| matches!(status.as_str(), "ok" | "error")) {
        fill(h::STATUS, props.kind());
        fill(h::REPLIED_BY, props.app_id());
    }
    headers
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
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::ByteArray(bytes) => String::from_utf8_lossy(bytes.as_slice()).into_owned(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        message.headers.insert(h::STATUS.into(), "ok".into());
        message.headers.insert(h::REPLIED_BY.into(), "w-1".into());
        message.headers.insert("custom".into(), "x".into());
        let props = properties(&message);
        let table = props.headers().as_ref().expect("table");
        assert_eq!(table.inner().keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["custom"]);
        assert_eq!(props.message_id().as_ref().map(ShortString::as_str), Some("m-1"));
        assert_eq!(props.kind().as_ref().map(ShortString::as_str), Some("ok"));
        assert_eq!(props.app_id().as_ref().map(ShortString::as_str), Some("w-1"));
        assert_eq!(
            headers(&props),
            message.headers.into_iter().chain([(h::CONTENT_TYPE.into(), h::JSON.into())]).collect()
        );
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
