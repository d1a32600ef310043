//! What a delivery's outputs carry, built without I/O: the replies, and the copies that go
//! to a retry tier, the dead-letter queue or the parking queue with the failure's headers.

use std::time::SystemTime;

use bytes::Bytes;

use super::failure::Failure;
use crate::{
    config::Settings,
    contract::{
        codec::Codec,
        error_reply::ErrorReply,
        failure::{FailureKind, code, fingerprint},
        headers::{self as h, Headers, RequestMeta, truncate},
        status::Status,
        timestamp,
    },
    handler::Handler,
    transport::{Message, Position, Source},
};

/// The ok reply to `request`: `payload` in the request's codec.
pub(super) fn reply(request: &Message, meta: &RequestMeta, instance: &str, payload: Bytes) -> Message {
    Message { payload, headers: reply_headers(meta, instance, Status::Ok), key: request.key.clone() }
}

/// The error reply telling the requester its request failed for good, or `None` where no
/// reply can go: an unroutable reply-to, a reply-to outside the allowlist, or the
/// destination that just refused the reply on every round.
pub(super) fn error_reply(
    request: &Message,
    meta: &RequestMeta,
    settings: &Settings,
    failure: &Failure,
) -> Option<Message> {
    if failure.kind == FailureKind::Unroutable
        || failure.code == code::REPLY_REFUSED
        || !settings.reply_allowed(reply_to(meta, settings))
    {
        return None;
    }
    let text = truncate(&failure.message, h::MAX_ERROR_MESSAGE_BYTES);
    let body = ErrorReply::new(failure.kind.as_str(), &failure.code, text).encode(meta.codec);
    let mut headers = reply_headers(meta, &settings.instance, Status::Error);
    headers.insert(h::ERROR_CODE.into(), failure.code.clone());
    headers.insert(h::ERROR_MESSAGE.into(), text.to_owned());
    Some(Message { payload: Bytes::from(body), headers, key: request.key.clone() })
}

/// Where replies to this request go: its reply-to, or the worker's reply queue.
pub(super) fn reply_to<'m>(meta: &'m RequestMeta, settings: &'m Settings) -> &'m str {
    meta.reply_to.as_deref().unwrap_or(&settings.replies)
}

/// Headers every reply carries: status, correlation id, content type, trace context, a new
/// id, who replied. Inserted in name order, so each insert appends.
fn reply_headers(meta: &RequestMeta, instance: &str, status: Status) -> Headers {
    // Room for an error reply's two more.
    let mut headers = Headers::with_capacity(8);
    headers.insert(h::CONTENT_TYPE.into(), meta.codec.content_type().into());
    headers.insert(h::CORRELATION_ID.into(), meta.correlation_id.clone());
    headers.insert(h::MESSAGE_ID.into(), message_id());
    headers.insert(h::REPLIED_BY.into(), instance.to_owned());
    headers.insert(h::STATUS.into(), status.as_str().to_owned());
    if let Some(traceparent) = &meta.traceparent {
        headers.insert(h::TRACEPARENT.into(), traceparent.clone());
    }
    headers
}

/// A new message id: a random UUID, lowercase and hyphenated, written into its buffer
/// directly rather than through the formatting machinery (`to_string`).
fn message_id() -> String {
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).to_owned()
}

/// What a failure's copies say of it.
pub(super) struct Failed<'a> {
    /// The failure.
    pub(super) failure: &'a Failure,
    /// The request's parsed headers (earlier attempts, first failure, trace context).
    pub(super) meta: &'a RequestMeta,
    /// Where the request was read.
    pub(super) source: &'a Source,
    /// The handler's invocations in this delivery.
    pub(super) invocations: u32,
    /// The time of this failure.
    pub(super) now: SystemTime,
}

/// A copy of `message` (its payload, key and headers) with the failure's headers, replacing
/// any earlier ones: what goes to a retry tier, the dead-letter or the parking queue.
pub(super) fn failure_copy(message: &Message, failed: &Failed<'_>, settings: &Settings) -> Message {
    let Failed { failure, meta, source, invocations, now } = failed;
    let mut headers = message.headers.clone();
    for name in h::FAILURE_HEADERS {
        headers.remove(name);
    }
    if let Some(traceparent) = &meta.traceparent {
        headers.insert(h::TRACEPARENT.into(), traceparent.clone());
    }
    let worker = &settings.worker;
    let mut put = |name: &'static str, value: String| headers.insert(name.into(), value);
    put(h::FAILURE_KIND, failure.kind.as_str().to_owned());
    put(h::FAILURE_CODE, failure.code.clone());
    put(h::FAILURE_MESSAGE, truncate(&failure.message, h::MAX_ERROR_MESSAGE_BYTES).to_owned());
    put(h::FAILURE_FINGERPRINT, fingerprint(failure.kind, worker, &failure.code));
    put(h::FAILURE_SOURCE, source.queue.to_string());
    if let Some(Position { topic, partition, offset }) = &source.position {
        put(h::FAILURE_TOPIC, topic.to_string());
        put(h::FAILURE_PARTITION, partition.to_string());
        put(h::FAILURE_OFFSET, offset.to_string());
    }
    put(h::FAILURE_ATTEMPTS, meta.earlier_attempts.saturating_add(*invocations).to_string());
    put(h::FAILURE_FIRST_AT, timestamp::format(meta.first_failure_at.unwrap_or(*now)));
    put(h::FAILURE_LAST_AT, timestamp::format(*now));
    put(h::FAILURE_WORKER, worker.clone());
    put(h::FAILURE_INSTANCE, settings.instance.clone());
    Message { payload: message.payload.clone(), headers, key: message.key.clone() }
}

/// The copy for the next retry tier: the failure's headers, and the next round's number.
pub(super) fn retry_copy(message: &Message, failed: &Failed<'_>, settings: &Settings) -> Message {
    let mut copy = failure_copy(message, failed, settings);
    copy.headers.insert(h::ATTEMPT.into(), failed.meta.attempt.saturating_add(1).to_string());
    copy
}

/// A dead-letter copy the broker cannot take whole: no payload (`payload_bytes` says how
/// large it was), and only the contract's headers, each cut to 1 KiB, so its size is
/// bounded whatever the request carried.
pub(super) fn without_payload(record: Message, payload_bytes: usize) -> Message {
    let mut headers: Headers = record
        .headers
        .iter()
        .filter(|(name, _)| h::ALL.contains(&name.as_ref()))
        .map(|(name, value)| (h::name(name), truncate(value, h::MAX_ERROR_MESSAGE_BYTES).to_owned()))
        .collect();
    headers.insert(h::FAILURE_PAYLOAD_BYTES.into(), payload_bytes.to_string());
    Message { payload: Bytes::new(), headers, key: record.key }
}

/// A reply's payload in the request's codec.
pub(super) fn encode<H: Handler>(reply: &H::Reply, codec: Codec) -> Result<Vec<u8>, String> {
    match (codec, &H::PROTOBUF) {
        (Codec::Protobuf, Some(protobuf)) => Ok(protobuf.encode_reply(reply)),
        _ => serde_json::to_vec(reply).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    fn settings() -> Settings {
        Settings { instance: "greeter-1".into(), ..Settings::defaults("greeter") }
    }

    fn request() -> (Message, RequestMeta) {
        let mut message =
            Message { payload: Bytes::from_static(b"{}"), key: Some(Bytes::from_static(b"k")), ..Message::default() };
        message.headers.insert(h::CORRELATION_ID.into(), "c-1".into());
        message.headers.insert(h::FAILURE_CODE.into(), "earlier_code".into());
        message.headers.insert("x-custom".into(), "kept".into());
        message.headers.insert(h::FAILURE_ATTEMPTS.into(), "3".into());
        let (meta, bad) = RequestMeta::parse(&message.headers);
        assert!(bad.is_none());
        (message, meta)
    }

    fn kafka_source() -> Source {
        let position = Position { topic: "greeter.requests".into(), partition: 2, offset: 41 };
        Source { queue: Arc::from("greeter.requests"), position: Some(position) }
    }

    #[test]
    fn a_message_id_is_a_new_lowercase_hyphenated_uuid_each_time() {
        let (first, second) = (message_id(), message_id());
        let parsed = uuid::Uuid::parse_str(&first).expect("a UUID");
        assert_eq!(first, parsed.hyphenated().to_string(), "lowercase, hyphenated");
        assert_eq!(parsed.get_version_num(), 4);
        assert_ne!(first, second);
    }

    #[test]
    fn a_failure_copy_replaces_earlier_failure_headers_and_keeps_the_rest() {
        let (message, meta) = request();
        let failure = Failure::new(FailureKind::Transient, "db_down", "x".repeat(5000));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let failed = Failed { failure: &failure, meta: &meta, source: &kafka_source(), invocations: 2, now };
        let copy = failure_copy(&message, &failed, &settings());
        let get = |name: &str| copy.headers.get(name).map(String::as_str);
        assert_eq!(get(h::FAILURE_CODE), Some("db_down"));
        assert_eq!(get(h::FAILURE_ATTEMPTS), Some("5"), "three earlier invocations and two now");
        assert_eq!(get(h::FAILURE_PARTITION), Some("2"));
        assert_eq!(get(h::FAILURE_OFFSET), Some("41"));
        assert_eq!(get(h::FAILURE_WORKER), Some("greeter"));
        assert_eq!(get(h::FAILURE_INSTANCE), Some("greeter-1"));
        assert_eq!(get(h::FAILURE_FIRST_AT), get(h::FAILURE_LAST_AT), "the first failure is this one");
        assert_eq!(get(h::FAILURE_MESSAGE).map(str::len), Some(h::MAX_ERROR_MESSAGE_BYTES));
        assert_eq!(get("x-custom"), Some("kept"));
        assert_eq!((copy.payload, copy.key), (message.payload, message.key));
    }

    #[test]
    fn a_retry_copy_carries_the_next_round() {
        let (message, mut meta) = request();
        meta.attempt = 2;
        let failure = Failure::new(FailureKind::Transient, "db_down", "down");
        let source = Source { queue: Arc::from("q"), position: None };
        let failed = Failed { failure: &failure, meta: &meta, source: &source, invocations: 1, now: SystemTime::now() };
        let copy = retry_copy(&message, &failed, &settings());
        assert_eq!(copy.headers.get(h::ATTEMPT).map(String::as_str), Some("3"));
        assert!(copy.headers.get(h::FAILURE_PARTITION).is_none(), "no position on a queue broker");
    }

    #[test]
    fn a_copy_without_payload_keeps_only_the_contract_headers_cut_short() {
        let (mut message, _) = request();
        message.headers.insert(h::FAILURE_MESSAGE.into(), "y".repeat(10_000));
        message.payload = Bytes::from(vec![b'p'; 70_000]);
        let copy = without_payload(message, 70_000);
        assert!(copy.payload.is_empty());
        assert!(copy.headers.get("x-custom").is_none());
        assert_eq!(copy.headers.get(h::FAILURE_PAYLOAD_BYTES).map(String::as_str), Some("70000"));
        assert!(copy.headers.iter().all(|(_, value)| value.len() <= h::MAX_ERROR_MESSAGE_BYTES));
        assert_eq!(copy.key.as_deref(), Some(&b"k"[..]));
    }

    #[test]
    fn replies_carry_the_contract_headers_and_error_replies_only_where_one_can_go() {
        let (message, mut meta) = request();
        let ok = reply(&message, &meta, "greeter-1", Bytes::from_static(b"{}"));
        assert_eq!(Status::of(&ok.headers), Some(Status::Ok));
        assert_eq!(ok.headers.get(h::CORRELATION_ID).map(String::as_str), Some("c-1"));
        assert_eq!(ok.headers.get(h::REPLIED_BY).map(String::as_str), Some("greeter-1"));
        let failure = Failure::new(FailureKind::Permanent, "bad_name", "no");
        let error = error_reply(&message, &meta, &settings(), &failure).expect("an error reply");
        assert_eq!(Status::of(&error.headers), Some(Status::Error));
        assert_eq!(error.headers.get(h::ERROR_CODE).map(String::as_str), Some("bad_name"));
        let unroutable = Failure::new(FailureKind::Unroutable, code::REPLY_UNROUTABLE, "no");
        assert!(error_reply(&message, &meta, &settings(), &unroutable).is_none());
        let refused = Failure::new(FailureKind::Undeliverable, code::REPLY_REFUSED, "no");
        assert!(error_reply(&message, &meta, &settings(), &refused).is_none());
        meta.reply_to = Some("elsewhere".into());
        let allowlist = Settings { reply_allow: vec!["greeter.replies".into()], ..settings() };
        assert!(error_reply(&message, &meta, &allowlist, &failure).is_none(), "outside the allowlist");
    }
}
