//! Admission: the checks a request passes before any handler call, in this order, then
//! its decoding. A refusal is the failure its dead-letter copy and error reply carry.
//!
//! size cap → contract headers → codec the handler takes → deadline → reply-to in the
//! allowlist → reply-to a name the broker can hold → decode (JSON or protobuf) + schema

use std::time::SystemTime;

use super::{failure::Failure, records};
use crate::{
    config::Settings,
    contract::{
        codec::Codec,
        failure::{FailureKind, code},
        headers::{self as h, BadHeader, RequestMeta, truncate},
    },
    handler::Handler,
    schema::{Refusal, RequestSchema},
    transport::Message,
};

/// The worker's rules for admitting a request.
pub(super) struct Rules<'a> {
    /// Payload cap, reply queue and allowlist.
    pub(super) settings: &'a Settings,
    /// The handler's request schema.
    pub(super) schema: &'a RequestSchema,
    /// Why a name cannot be a queue/topic on the worker's broker (`Transport::name_problem`).
    pub(super) name_problem: &'a (dyn Fn(&str) -> Option<&'static str> + Sync),
}

/// The request `message` decoded, or why it is refused. `bad` is the first contract header
/// that did not parse (from [`RequestMeta::parse`]); `now` tells the time, asked only of
/// a request with a deadline.
pub(super) fn admit<H: Handler>(
    rules: &Rules<'_>,
    message: &Message,
    meta: &RequestMeta,
    bad: Option<BadHeader>,
    now: impl FnOnce() -> SystemTime,
) -> Result<H::Request, Failure> {
    let Rules { settings, schema, name_problem } = rules;
    if message.payload.len() > settings.max_payload_bytes {
        let why = format!("payload is {} bytes, the limit is {}", message.payload.len(), settings.max_payload_bytes);
        return Err(Failure::new(FailureKind::TooLarge, code::PAYLOAD_TOO_LARGE, why));
    }
    if let Some(bad) = bad {
        let code = if bad.name == h::CONTENT_TYPE { code::UNSUPPORTED_CONTENT_TYPE } else { code::BAD_HEADER };
        return Err(Failure::new(FailureKind::Decode, code, bad.to_string()));
    }
    if meta.codec == Codec::Protobuf && H::PROTOBUF.is_none() {
        let why = format!("worker {} takes application/json only", settings.worker);
        return Err(Failure::new(FailureKind::Decode, code::UNSUPPORTED_CONTENT_TYPE, why));
    }
    if meta.deadline.is_some_and(|deadline| deadline <= now()) {
        let why = "the request's deadline passed before processing";
        return Err(Failure::new(FailureKind::Expired, code::DEADLINE_EXCEEDED, why));
    }
    let reply_to = records::reply_to(meta, settings);
    if !settings.reply_allowed(reply_to) {
        let why = format!("reply-to {reply_to:?} is not in the allowlist {:?}", settings.reply_allow);
        return Err(Failure::new(FailureKind::Unroutable, code::REPLY_NOT_ALLOWED, why));
    }
    // The worker's own reply queue was declared at start, so only other names are checked.
    if let Some(reason) = (reply_to != settings.replies).then(|| name_problem(reply_to)).flatten() {
        let why = format!("reply-to {:?} is not a valid name: {reason}", truncate(reply_to, 64));
        return Err(Failure::new(FailureKind::Unroutable, code::REPLY_TO_INVALID, why));
    }
    let decoded = match (meta.codec, &H::PROTOBUF) {
        (Codec::Protobuf, Some(protobuf)) => protobuf
            .decode_request(&message.payload)
            .map_err(Refusal::NotProtobuf)
            .and_then(|value| schema.decode_value::<H::Request>(value)),
        _ => schema.decode::<H::Request>(&message.payload),
    };
    decoded.map_err(|refusal| {
        let (kind, code, why) = refusal.classified();
        Failure::new(kind, code, why)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::{contract::timestamp, pipeline::fixture::Scripted};

    fn check(message: &Message, settings: &Settings) -> Result<serde_json::Value, (FailureKind, String)> {
        let schema = RequestSchema::compile(Scripted::REQUEST_SCHEMA).expect("compiles");
        let no_long_names = |name: &str| (name.len() > 20).then_some("longer than 20 bytes");
        let rules = Rules { settings, schema: &schema, name_problem: &no_long_names };
        let (meta, bad) = RequestMeta::parse(&message.headers);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        admit::<Scripted>(&rules, message, &meta, bad, || now).map_err(|failure| (failure.kind, failure.code))
    }

    fn request(payload: &'static str, headers: &[(&'static str, &str)]) -> Message {
        let mut message = Message { payload: Bytes::from_static(payload.as_bytes()), ..Message::default() };
        for (name, value) in headers {
            message.headers.insert((*name).into(), (*value).to_owned());
        }
        message
    }

    fn refused(kind: FailureKind, code: &str) -> Result<serde_json::Value, (FailureKind, String)> {
        Err((kind, code.to_owned()))
    }

    #[test]
    fn a_valid_request_is_decoded() {
        let settings = Settings::defaults("scripted");
        let decoded = check(&request(r#"{"op":"ok"}"#, &[]), &settings);
        assert_eq!(decoded, Ok(serde_json::json!({"op": "ok"})));
    }

    #[test]
    fn each_check_refuses_with_its_own_kind_and_code() {
        let settings = Settings { max_payload_bytes: 32, ..Settings::defaults("scripted") };
        let past = timestamp::format(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let cases = [
            (
                request(r#"{"op":"ok","pad":"................."}"#, &[]),
                refused(FailureKind::TooLarge, code::PAYLOAD_TOO_LARGE),
            ),
            (request(r#"{"op":"ok"}"#, &[(h::ATTEMPT, "zero")]), refused(FailureKind::Decode, code::BAD_HEADER)),
            (
                request(r#"{"op":"ok"}"#, &[(h::CONTENT_TYPE, "text/xml")]),
                refused(FailureKind::Decode, code::UNSUPPORTED_CONTENT_TYPE),
            ),
            (
                request(r#"{"op":"ok"}"#, &[(h::CONTENT_TYPE, "application/x-protobuf")]),
                refused(FailureKind::Decode, code::UNSUPPORTED_CONTENT_TYPE),
            ),
            (
                request(r#"{"op":"ok"}"#, &[(h::DEADLINE, &past)]),
                refused(FailureKind::Expired, code::DEADLINE_EXCEEDED),
            ),
            (
                request(r#"{"op":"ok"}"#, &[(h::REPLY_TO, "elsewhere")]),
                refused(FailureKind::Unroutable, code::REPLY_NOT_ALLOWED),
            ),
            (request("not json", &[]), refused(FailureKind::Decode, code::INVALID_JSON)),
            (request(r#"{"op":7}"#, &[]), refused(FailureKind::Schema, code::SCHEMA_VIOLATION)),
        ];
        for (message, expected) in cases {
            assert_eq!(check(&message, &settings), expected, "{message:?}");
        }
    }

    #[test]
    fn the_clock_is_read_only_for_a_request_with_a_deadline() {
        let settings = Settings::defaults("scripted");
        let schema = RequestSchema::compile(Scripted::REQUEST_SCHEMA).expect("compiles");
        let rules = Rules { settings: &settings, schema: &schema, name_problem: &|_: &str| None };
        let message = request(r#"{"op":"ok"}"#, &[]);
        let (meta, bad) = RequestMeta::parse(&message.headers);
        let no_clock = || -> SystemTime { panic!("the clock was read for a request without a deadline") };
        assert!(admit::<Scripted>(&rules, &message, &meta, bad, no_clock).is_ok());
    }

    #[test]
    fn the_checks_run_in_order_so_the_first_problem_is_the_one_reported() {
        // Too large, a bad header and not JSON: the size is what it is refused for.
        let settings = Settings { max_payload_bytes: 4, ..Settings::defaults("scripted") };
        let message = request("not json", &[(h::ATTEMPT, "zero")]);
        assert_eq!(check(&message, &settings), refused(FailureKind::TooLarge, code::PAYLOAD_TOO_LARGE));
    }

    #[test]
    fn only_reply_targets_other_than_the_workers_own_are_checked_against_the_broker() {
        let long = "a.reply.queue.of.more.than.twenty.bytes";
        let own = Settings { replies: long.into(), ..Settings::defaults("scripted") };
        assert!(check(&request(r#"{"op":"ok"}"#, &[(h::REPLY_TO, long)]), &own).is_ok());
        let allowed = Settings { reply_allow: vec!["a.*".into()], ..Settings::defaults("scripted") };
        let message = request(r#"{"op":"ok"}"#, &[(h::REPLY_TO, long)]);
        assert_eq!(check(&message, &allowed), refused(FailureKind::Unroutable, code::REPLY_TO_INVALID));
    }
}
