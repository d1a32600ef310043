//! Every header name of the wire contract, and the typed view of a request's headers.

use std::{borrow::Cow, time::SystemTime};

use crate::{codec::Codec, timestamp};

pub use super::header_map::Headers;

/// Unique id of this message (a UUID is a good choice). Also AMQP `message_id`.
pub const MESSAGE_ID: &str = "courier-message-id";
/// Ties a reply to its request; copied unchanged into the reply. Also AMQP `correlation_id`.
pub const CORRELATION_ID: &str = "courier-correlation-id";
/// Queue/topic the reply goes to; must match the worker's allowlist. Also AMQP `reply_to`.
pub const REPLY_TO: &str = "courier-reply-to";
/// Payload media type: `application/json` (also when absent) or `application/x-protobuf`.
pub const CONTENT_TYPE: &str = "content-type";
/// Optional RFC 3339 instant after which the request must not be processed.
pub const DEADLINE: &str = "courier-deadline";
/// W3C trace context, continued into replies, retries and dead-letter records (same
/// trace id, the worker's delivery span as parent; see `contract::trace`).
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state, copied along with `traceparent`.
pub const TRACESTATE: &str = "tracestate";
/// Delivery round of this request: 1 when first sent, +1 per delayed retry. Producers omit it.
pub const ATTEMPT: &str = "courier-attempt";
/// How often an operator replayed this message from a dead-letter queue.
pub const REPLAY_COUNT: &str = "courier-replay-count";

/// On a reply: the worker instance that produced it (for operators and load checks).
pub const REPLIED_BY: &str = "courier-replied-by";
/// Reply status: `ok` or `error`.
pub const STATUS: &str = "courier-status";
/// On an error reply: the failure code (see `schemas/README.md`).
pub const ERROR_CODE: &str = "courier-error-code";
/// On an error reply: a human-readable message, at most [`MAX_ERROR_MESSAGE_BYTES`].
pub const ERROR_MESSAGE: &str = "courier-error-message";

/// Failure kind: transient, permanent, decode, schema, too-large, expired, unroutable.
pub const FAILURE_KIND: &str = "courier-failure-kind";
/// Error code given by the handler (or the runtime for its own kinds).
pub const FAILURE_CODE: &str = "courier-failure-code";
/// Error message, truncated to [`MAX_ERROR_MESSAGE_BYTES`].
pub const FAILURE_MESSAGE: &str = "courier-failure-message";
/// Hash of kind + worker + code: groups identical failures; never depends on the payload.
pub const FAILURE_FINGERPRINT: &str = "courier-failure-fingerprint";
/// Queue/topic the failed message was consumed from. Replay sends a record only to the
/// worker's own work queue (or `--to`): one naming another source is skipped.
pub const FAILURE_SOURCE: &str = "courier-failure-source";
/// Kafka topic the failed record was read from: the work topic or one of its retry tiers.
/// `courier-failure-partition` and `courier-failure-offset` are its position there.
pub const FAILURE_TOPIC: &str = "courier-failure-topic";
/// Kafka partition of the failed message.
pub const FAILURE_PARTITION: &str = "courier-failure-partition";
/// Kafka offset of the failed message.
pub const FAILURE_OFFSET: &str = "courier-failure-offset";
/// Handler invocations over all delivery rounds.
pub const FAILURE_ATTEMPTS: &str = "courier-failure-attempts";
/// RFC 3339 time of the first failure of this message.
pub const FAILURE_FIRST_AT: &str = "courier-failure-first-at";
/// RFC 3339 time of the last failure of this message.
pub const FAILURE_LAST_AT: &str = "courier-failure-last-at";
/// On a dead-letter copy too large for the broker: the original payload's size in bytes.
/// The payload is then omitted and only the contract's headers are kept (on Kafka the
/// original stays in `courier-failure-topic` at `courier-failure-offset`).
pub const FAILURE_PAYLOAD_BYTES: &str = "courier-failure-payload-bytes";
/// Name of the worker that gave up.
pub const FAILURE_WORKER: &str = "courier-failure-worker";
/// Instance (host/pod and pid) of the worker that gave up.
pub const FAILURE_INSTANCE: &str = "courier-failure-instance";

/// Set by RabbitMQ on a message it dead-lettered itself (a quorum work queue's delivery
/// limit): the queue it came from, a source like [`FAILURE_SOURCE`] (never a destination).
pub const X_FIRST_DEATH_QUEUE: &str = "x-first-death-queue";
/// Set by RabbitMQ with [`X_FIRST_DEATH_QUEUE`]: why (`delivery_limit`, `rejected`, …).
pub const X_FIRST_DEATH_REASON: &str = "x-first-death-reason";

/// Every failure header: stripped on replay.
pub const FAILURE_HEADERS: [&str; 14] = [
    FAILURE_KIND,
    FAILURE_CODE,
    FAILURE_MESSAGE,
    FAILURE_FINGERPRINT,
    FAILURE_SOURCE,
    FAILURE_TOPIC,
    FAILURE_PARTITION,
    FAILURE_OFFSET,
    FAILURE_ATTEMPTS,
    FAILURE_FIRST_AT,
    FAILURE_LAST_AT,
    FAILURE_PAYLOAD_BYTES,
    FAILURE_WORKER,
    FAILURE_INSTANCE,
];

/// Every header the contract defines (the documentation test checks each is in `schemas/README.md`).
pub const ALL: [&str; 27] = [
    MESSAGE_ID,
    CORRELATION_ID,
    REPLY_TO,
    CONTENT_TYPE,
    DEADLINE,
    TRACEPARENT,
    TRACESTATE,
    ATTEMPT,
    REPLAY_COUNT,
    REPLIED_BY,
    STATUS,
    ERROR_CODE,
    ERROR_MESSAGE,
    FAILURE_KIND,
    FAILURE_CODE,
    FAILURE_MESSAGE,
    FAILURE_FINGERPRINT,
    FAILURE_SOURCE,
    FAILURE_TOPIC,
    FAILURE_PARTITION,
    FAILURE_OFFSET,
    FAILURE_ATTEMPTS,
    FAILURE_FIRST_AT,
    FAILURE_LAST_AT,
    FAILURE_PAYLOAD_BYTES,
    FAILURE_WORKER,
    FAILURE_INSTANCE,
];

/// A header name as stored in [`Headers`]: the contract's own constant when it is one, so
/// received contract headers allocate only their values.
pub fn name(raw: &str) -> Cow<'static, str> {
    match ALL.iter().find(|known| **known == raw) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(raw.to_owned()),
    }
}

/// Error messages in headers are cut to this many bytes (at a character boundary).
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

pub use super::codec::{JSON, PROTOBUF};

/// The contract headers of a request, parsed and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestMeta {
    /// `courier-message-id`, if given.
    pub message_id: Option<String>,
    /// `courier-correlation-id`, else the message id, else empty.
    pub correlation_id: String,
    /// `courier-reply-to`, if given.
    pub reply_to: Option<String>,
    /// `courier-deadline`, if given.
    pub deadline: Option<SystemTime>,
    /// `traceparent`, if given and well-formed.
    pub traceparent: Option<String>,
    /// `courier-attempt` (1 when absent).
    pub attempt: u32,
    /// Handler invocations in earlier rounds (`courier-failure-attempts`, 0 when absent).
    pub earlier_attempts: u32,
    /// First failure time carried from an earlier round.
    pub first_failure_at: Option<SystemTime>,
    /// The payload's codec (`content-type`; JSON when absent); the reply's too.
    pub codec: Codec,
}

impl Default for RequestMeta {
    /// A request with no contract headers: first attempt, nothing else known.
    fn default() -> Self {
        Self {
            message_id: None,
            correlation_id: String::new(),
            reply_to: None,
            deadline: None,
            traceparent: None,
            attempt: 1,
            earlier_attempts: 0,
            first_failure_at: None,
            codec: Codec::Json,
        }
    }
}

/// A contract header with a value that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("header `{name}` has an invalid value {value:?}: {expected}")]
pub struct BadHeader {
    /// The header.
    pub name: &'static str,
    /// Its value, cut to 64 bytes.
    pub value: String,
    /// What was expected.
    pub expected: &'static str,
}

impl RequestMeta {
    /// Parse the contract headers as far as they go. The routing headers (message id,
    /// correlation id, reply-to) are always read, so a request with a bad header can still
    /// be answered; the second value names the first request header whose value cannot be
    /// used (the message is then dead-lettered as `decode`).
    ///
    /// Headers a producer may get wrong without losing its answer: a malformed
    /// `traceparent` is ignored (W3C says so: a new trace starts); the failure headers of
    /// an earlier round (`courier-failure-attempts`, `-first-at`) are read when valid and
    /// otherwise read as absent (a failure record replaces them); counters beyond
    /// 2^32 − 1 are clamped.
    pub fn parse(headers: &Headers) -> (Self, Option<BadHeader>) {
        let seen = Seen::pick(headers);
        let message_id = seen.message_id.map(str::to_owned);
        let correlation_id = seen.correlation_id.map(str::to_owned).or_else(|| message_id.clone()).unwrap_or_default();
        let mut meta = Self {
            message_id,
            correlation_id,
            reply_to: seen.reply_to.map(str::to_owned),
            traceparent: seen.traceparent.filter(|v| is_traceparent(v)).map(str::to_owned),
            earlier_attempts: seen.failure_attempts.and_then(|v| v.parse::<u128>().ok()).map_or(0, clamp),
            first_failure_at: seen.first_failure_at.and_then(timestamp::parse),
            ..Self::default()
        };
        let bad = |name: &'static str, value: &str, expected: &'static str| BadHeader {
            name,
            value: truncate(value, 64).to_owned(),
            expected,
        };
        if let Some(ct) = seen.content_type {
            match Codec::of_content_type(ct) {
                Some(codec) => meta.codec = codec,
                None => return (meta, Some(bad(CONTENT_TYPE, ct, "application/json or application/x-protobuf"))),
            }
        }
        if let Some(v) = seen.deadline {
            match timestamp::parse(v) {
                Some(deadline) => meta.deadline = Some(deadline),
                None => return (meta, Some(bad(DEADLINE, v, "an RFC 3339 timestamp"))),
            }
        }
        if let Some(v) = seen.attempt {
            match v.parse::<u128>() {
                Ok(n) if n >= 1 => meta.attempt = u32::try_from(n).unwrap_or(u32::MAX),
                _ => return (meta, Some(bad(ATTEMPT, v, "an integer >= 1"))),
            }
        }
        (meta, None)
    }
}

/// A counter read from a header, clamped into a `u32`.
fn clamp(n: u128) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The contract headers of a request with a non-blank value, picked out in one pass over
/// the headers (a map lookup per name cost more than the rest of the parse).
#[derive(Default)]
struct Seen<'h> {
    content_type: Option<&'h str>,
    deadline: Option<&'h str>,
    first_failure_at: Option<&'h str>,
    attempt: Option<&'h str>,
    failure_attempts: Option<&'h str>,
    traceparent: Option<&'h str>,
    message_id: Option<&'h str>,
    correlation_id: Option<&'h str>,
    reply_to: Option<&'h str>,
}

impl<'h> Seen<'h> {
    fn pick(headers: &'h Headers) -> Self {
        let mut seen = Self::default();
        for (name, value) in headers {
            let slot = match name.as_ref() {
                CONTENT_TYPE => &mut seen.content_type,
                DEADLINE => &mut seen.deadline,
                FAILURE_FIRST_AT => &mut seen.first_failure_at,
                ATTEMPT => &mut seen.attempt,
                FAILURE_ATTEMPTS => &mut seen.failure_attempts,
                TRACEPARENT => &mut seen.traceparent,
                MESSAGE_ID => &mut seen.message_id,
                CORRELATION_ID => &mut seen.correlation_id,
                REPLY_TO => &mut seen.reply_to,
                _ => continue,
            };
            *slot = Some(value.trim()).filter(|v| !v.is_empty());
        }
        seen
    }
}

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>` (version 00 layout).
fn is_traceparent(v: &str) -> bool {
    crate::trace::TraceParent::parse(v).is_some()
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().map(|(k, v)| (name(k), (*v).to_owned())).collect()
    }

    fn parse_ok(headers: &Headers) -> RequestMeta {
        let (meta, bad) = RequestMeta::parse(headers);
        assert_eq!(bad, None);
        meta
    }

    #[test]
    fn empty_headers_give_defaults() {
        let meta = parse_ok(&Headers::new());
        assert_eq!(meta.attempt, 1);
        assert_eq!(meta.correlation_id, "");
        assert_eq!(meta.reply_to, None);
    }

    #[test]
    fn correlation_id_falls_back_to_message_id() {
        let meta = parse_ok(&headers(&[(MESSAGE_ID, "m-1")]));
        assert_eq!(meta.correlation_id, "m-1");
    }

    #[test]
    fn well_formed_headers_parse() {
        let meta = parse_ok(&headers(&[
            (CORRELATION_ID, "c-1"),
            (REPLY_TO, "me.replies"),
            (DEADLINE, "2030-01-01T00:00:00Z"),
            (ATTEMPT, "3"),
            (CONTENT_TYPE, "application/json; charset=utf-8"),
            (TRACEPARENT, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ]));
        assert_eq!(meta.attempt, 3);
        assert_eq!(meta.reply_to.as_deref(), Some("me.replies"));
        assert!(meta.deadline.is_some());
        assert!(meta.traceparent.is_some());
    }

    #[test]
    fn values_are_trimmed_and_blank_ones_are_absent() {
        let meta =
            parse_ok(&headers(&[(CORRELATION_ID, "   "), (MESSAGE_ID, " m-2 "), (REPLY_TO, "\t"), (ATTEMPT, " 2 ")]));
        assert_eq!(meta.correlation_id, "m-2", "a blank correlation id falls back to the message id");
        assert_eq!(meta.message_id.as_deref(), Some("m-2"));
        assert_eq!(meta.reply_to, None);
        assert_eq!(meta.attempt, 2);
    }

    #[test]
    fn the_first_bad_header_in_contract_order_is_reported() {
        let (_, bad) = RequestMeta::parse(&headers(&[(ATTEMPT, "x"), (CONTENT_TYPE, "text/xml"), (DEADLINE, "soon")]));
        assert_eq!(bad.expect("bad").name, CONTENT_TYPE);
    }

    #[test]
    fn a_bad_header_keeps_the_way_back_to_the_requester() {
        let cases = [
            (ATTEMPT, "0"),
            (ATTEMPT, "-1"),
            (ATTEMPT, "1e9"),
            (ATTEMPT, "three"),
            (DEADLINE, "tomorrow"),
            (DEADLINE, "2030-13-45T99:99:99Z"),
            (CONTENT_TYPE, "text/plain"),
        ];
        for (name, value) in cases {
            let (meta, bad) =
                RequestMeta::parse(&headers(&[(name, value), (CORRELATION_ID, "c-9"), (REPLY_TO, "client-7.replies")]));
            assert_eq!(bad.expect(value).name, name);
            assert_eq!(meta.correlation_id, "c-9", "{name}={value}");
            assert_eq!(meta.reply_to.as_deref(), Some("client-7.replies"), "{name}={value}");
        }
    }

    #[test]
    fn optional_and_carried_headers_never_make_a_request_bad() {
        let meta = parse_ok(&headers(&[
            (TRACEPARENT, "00-zz-11-01"),
            (FAILURE_ATTEMPTS, "x"),
            (FAILURE_FIRST_AT, "\u{0}\u{ffff}"),
        ]));
        assert_eq!(meta.traceparent, None, "a malformed traceparent starts a new trace");
        assert_eq!(meta.earlier_attempts, 0);
        assert_eq!(meta.first_failure_at, None);
    }

    #[test]
    fn forged_counters_are_clamped() {
        let meta = parse_ok(&headers(&[(ATTEMPT, "99999999999999999999"), (FAILURE_ATTEMPTS, "18446744073709551615")]));
        assert_eq!(meta.attempt, u32::MAX);
        assert_eq!(meta.earlier_attempts, u32::MAX);
    }

    proptest::proptest! {
        /// Any header values parse to an answer without a panic, and the routing headers
        /// survive whatever else is wrong.
        #[test]
        fn any_values_parse(values in proptest::collection::vec("\\PC{0,40}", 9)) {
            let names = [CONTENT_TYPE, DEADLINE, ATTEMPT, TRACEPARENT, FAILURE_ATTEMPTS, FAILURE_FIRST_AT, MESSAGE_ID, CORRELATION_ID, REPLY_TO];
            let pairs: Vec<(&str, &str)> = names.iter().copied().zip(values.iter().map(String::as_str)).collect();
            let (meta, _) = RequestMeta::parse(&headers(&pairs));
            proptest::prop_assert!(meta.attempt >= 1);
            proptest::prop_assert_eq!(meta.reply_to.as_deref(), Some(values[8].trim()).filter(|v| !v.is_empty()));
        }
    }

    #[test]
    fn every_header_and_kind_is_documented() {
        let doc = include_str!("../../../schemas/README.md");
        for name in ALL {
            assert!(doc.contains(&format!("`{name}`")), "{name} is missing from schemas/README.md");
        }
        for kind in crate::failure::FailureKind::ALL {
            assert!(doc.contains(&format!("`{kind}`")), "kind {kind} is missing from schemas/README.md");
        }
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
