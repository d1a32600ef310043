//! A worker's AsyncAPI 3.0 document (`courier asyncapi`): its channels (requests, replies,
//! each retry tier, dead letters, parking), what it receives and sends there, every
//! message in each codec it speaks, and the contract's headers. Built from the same
//! constants, names and schemas the worker uses, never written by hand.

use serde_json::{Map, Value, json};

use crate::{
    codec::{self, Codec},
    error_reply,
    failure::FailureKind,
    headers as h,
    naming::Topology,
    status::Status,
};

/// What the document describes: a worker's name, its schemas and its queues.
#[derive(Clone, Debug)]
pub struct Worker<'a> {
    /// The worker's name (the document's title).
    pub name: &'a str,
    /// The request payload's JSON Schema.
    pub request_schema: Value,
    /// The ok reply payload's JSON Schema.
    pub reply_schema: Value,
    /// The `.proto` text and the request and reply message names in it, when the worker
    /// speaks protobuf too.
    pub proto: Option<(&'a str, &'a str, &'a str)>,
    /// Its queues/topics, as its flags make them.
    pub topology: Topology,
}

/// The schema format of an embedded `.proto` (AsyncAPI's registered name for it).
const PROTOBUF_FORMAT: &str = "application/vnd.google.protobuf;version=3";
/// The error reply's JSON Schema, as published.
const ERROR_REPLY_SCHEMA: &str = include_str!("../../../schemas/envelope/error-reply.schema.json");

/// The AsyncAPI 3.0 document of `worker`.
pub fn document(worker: &Worker) -> Value {
    build(worker, None)
}

/// The AsyncAPI 3.0 document of a requester named `client` of `worker` (as the gateway
/// is): it sends requests and reads the replies from `<client>.replies`.
pub fn client_document(worker: &Worker, client: &str) -> Value {
    build(worker, Some(client))
}

fn build(worker: &Worker, client: Option<&str>) -> Value {
    let codecs: Vec<Codec> = Codec::ALL.into_iter().filter(|c| *c == Codec::Json || worker.proto.is_some()).collect();
    let t = &worker.topology;
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    let refs = |kinds: &[&str]| -> Map<String, Value> {
        let ids = kinds.iter().flat_map(|kind| codecs.iter().map(|c| message_id(kind, *c)));
        ids.map(|id| (id.clone(), json!({ "$ref": format!("#/components/messages/{id}") }))).collect()
    };
    for codec in &codecs {
        let (request, reply) = payloads(worker, *codec);
        let error = match codec {
            Codec::Json => json_schema(ERROR_REPLY_SCHEMA),
            Codec::Protobuf => proto_payload(error_reply::PROTO, "courier.envelope.ErrorReply"),
        };
        let c = *codec;
        messages.insert(message_id("request", c), message(c, "a request", "requestHeaders", request.clone(), true));
        messages.insert(
            message_id("reply", c),
            message(c, "an ok reply (`courier-status: ok`)", "replyHeaders", reply, true),
        );
        messages.insert(
            message_id("errorReply", c),
            message(
                c,
                "an error reply (`courier-status: error`): the request was dead-lettered",
                "replyHeaders",
                error,
                true,
            ),
        );
        messages.insert(
            message_id("failedRequest", c),
            message(c, "a request that failed: the request's payload byte for byte and its headers, with the failure headers added", "failedRequestHeaders", request, false),
        );
    }

    // Copies come back from retry tiers (RabbitMQ: by TTL to the work queue) and replays.
    let requests = if client.is_some() { refs(&["request"]) } else { refs(&["request", "failedRequest"]) };
    channels.insert(
        "requests".into(),
        json!({
            "address": t.queue,
            "title": "requests",
            "description": format!("The work queue/topic of `{}`: requests from producers, copies back from retry tiers and replays.", worker.name),
            "messages": requests,
        }),
    );
    let replies = refs(&["reply", "errorReply"]);
    let reply_messages: Vec<Value> = ["reply", "errorReply"]
        .iter()
        .flat_map(|kind| codecs.iter().map(move |c| message_id(kind, *c)))
        .map(|id| json!({ "$ref": format!("#/channels/replies/messages/{id}") }))
        .collect();
    let reply_address = client.map(crate::naming::replies);
    channels.insert(
        "replies".into(),
        json!({
            "address": reply_address,
            "title": "replies",
            "description": format!("Where a reply goes: the request's `{}` (allowed by the worker's `--reply-allow` patterns), else `{}`.", h::REPLY_TO, t.replies),
            "messages": replies,
        }),
    );
    if let Some(client) = client {
        operations.insert(
            "sendRequest".into(),
            json!({
                "action": "send",
                "title": "send a request",
                "summary": format!("{client} publishes a request with `{}` set to its reply queue and waits for the reply with the same correlation id.", h::REPLY_TO),
                "channel": { "$ref": "#/channels/requests" },
                "messages": codecs.iter().map(|c| json!({ "$ref": format!("#/channels/requests/messages/{}", message_id("request", *c)) })).collect::<Vec<_>>(),
                "reply": { "channel": { "$ref": "#/channels/replies" }, "messages": reply_messages },
            }),
        );
        return wrap(worker, client, channels, operations, messages, false);
    }
    operations.insert(
        "handleRequest".into(),
        json!({
            "action": "receive",
            "title": "handle a request",
            "summary": "Each request ends in exactly one outcome: an ok reply, or a dead letter and (unless the reply itself cannot be delivered) an error reply.",
            "description": "The request is acked only after its output is confirmed by the broker (at-least-once). Outcomes: schemas/README.md#outcomes.",
            "channel": { "$ref": "#/channels/requests" },
            "messages": codecs.iter().map(|c| json!({ "$ref": format!("#/channels/requests/messages/{}", message_id("request", *c)) })).collect::<Vec<_>>(),
            "reply": {
                "address": { "location": format!("$message.header#/{}", h::REPLY_TO), "description": format!("The request's reply-to; `{}` when it names none.", t.replies) },
                "channel": { "$ref": "#/channels/replies" },
                "messages": reply_messages,
            },
        }),
    );
    let mut outputs: Vec<(String, &str, String, String)> = t
        .retry_tiers
        .iter()
        .enumerate()
        .map(|(i, tier)| {
            let delay = humantime::format_duration(tier.delay).to_string();
            (format!("retryTier{}", i + 1), tier.name.as_str(), format!("retry tier {} ({delay})", i + 1), format!("A request that failed transiently waits here {delay}, then comes back to `{}` with `{}` raised by one.", t.queue, h::ATTEMPT))
        })
        .collect();
    outputs.push((
        "deadLetters".into(),
        &t.dead_letter,
        "dead letters".into(),
        "Requests that reached no ok reply, with why in the failure headers; `courier dlq` reads and replays them."
            .into(),
    ));
    outputs.push((
        "parking".into(),
        &t.parking,
        "parking".into(),
        "Dead-letter records the dead-letter queue did not take, and records parked by an operator.".into(),
    ));
    for (id, address, title, description) in outputs {
        channels.insert(id.clone(), json!({ "address": address, "title": title, "description": description, "messages": refs(&["failedRequest"]) }));
        let mut chars = id.chars();
        let capitalised: String = chars.next().map(|c| c.to_ascii_uppercase()).into_iter().chain(chars).collect();
        operations.insert(
            format!("sendTo{capitalised}"),
            json!({
                "action": "send",
                "title": format!("send to {title}"),
                "summary": description,
                "channel": { "$ref": format!("#/channels/{id}") },
                "messages": codecs.iter().map(|c| json!({ "$ref": format!("#/channels/{id}/messages/{}", message_id("failedRequest", *c)) })).collect::<Vec<_>>(),
            }),
        );
    }

    wrap(worker, worker.name, channels, operations, messages, true)
}

/// The document around its channels, operations and messages.
fn wrap(
    worker: &Worker,
    title: &str,
    channels: Map<String, Value>,
    operations: Map<String, Value>,
    mut messages: Map<String, Value>,
    failures: bool,
) -> Value {
    let mut schemas = json!({
        "requestHeaders": headers_schema("request headers", &request_headers()),
        "replyHeaders": headers_schema("reply headers", &reply_headers()),
    });
    if failures {
        schemas["failedRequestHeaders"] =
            headers_schema("failed request headers", &[request_headers(), failure_headers()].concat());
    } else {
        messages.retain(|id, _| !id.starts_with("failedRequest"));
    }
    let description = if failures {
        format!(
            "The wire contract of the Courier worker `{}`: requests in, one reply per request, retries and dead \
             letters. Prose version: schemas/README.md. Generated by `courier asyncapi --worker {}`.",
            worker.name, worker.name
        )
    } else {
        format!(
            "The channels `{title}` uses as a requester of the Courier worker `{}`. Generated by \
             `courier asyncapi --worker {} --client {title}`.",
            worker.name, worker.name
        )
    };
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": title,
            "version": env!("CARGO_PKG_VERSION"),
            "description": description,
            "license": { "name": "MIT OR Apache-2.0" },
        },
        "defaultContentType": codec::JSON,
        "servers": {
            "rabbitmq": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "title": "RabbitMQ",
                "description": "Requests published to the default exchange with the queue name as routing key; headers in the AMQP headers table (the properties message_id, correlation_id, reply_to and content_type stand for their headers).",
            },
            "kafka": {
                "host": "localhost:9092",
                "protocol": "kafka",
                "title": "Kafka",
                "description": "Topics named as the channels; headers as record headers (UTF-8 values); the record key orders requests and is copied to replies, retries and dead letters.",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": { "schemas": schemas, "messages": messages },
    })
}

/// `request` → `request` for JSON, `requestProtobuf` for protobuf.
fn message_id(kind: &str, codec: Codec) -> String {
    match codec {
        Codec::Json => kind.to_owned(),
        Codec::Protobuf => format!("{kind}Protobuf"),
    }
}

fn message(codec: Codec, summary: &str, headers: &str, payload: Value, correlated: bool) -> Value {
    let codec_name = match codec {
        Codec::Json => "JSON",
        Codec::Protobuf => "Protocol Buffers",
    };
    let mut message = json!({
        "title": format!("{summary} ({codec_name})"),
        "summary": format!("{summary}, in {codec_name}"),
        "contentType": codec.content_type(),
        "headers": { "$ref": format!("#/components/schemas/{headers}") },
        "payload": payload,
    });
    if correlated {
        message["correlationId"] = json!({
            "description": "Ties a reply to its request: the request's correlation id (else its message id), copied unchanged.",
            "location": format!("$message.header#/{}", h::CORRELATION_ID),
        });
    }
    message
}

/// The request and reply payload schemas in `codec`.
fn payloads(worker: &Worker, codec: Codec) -> (Value, Value) {
    match (codec, worker.proto) {
        (Codec::Protobuf, Some((proto, request, reply))) => {
            (proto_payload(proto, request), proto_payload(proto, reply))
        }
        _ => (plain(worker.request_schema.clone()), plain(worker.reply_schema.clone())),
    }
}

/// A JSON Schema as an AsyncAPI schema (draft-07 compatible): without `$schema`.
fn plain(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        map.remove("$schema");
    }
    schema
}

fn json_schema(text: &str) -> Value {
    plain(serde_json::from_str(text).unwrap_or(Value::Null))
}

/// A protobuf payload: the `.proto` with `message` (full name, `package.Message`) marked
/// as the root, since one file holds several messages.
fn proto_payload(proto: &str, message: &str) -> Value {
    let name = message.rsplit('.').next().unwrap_or(message);
    let marked: Vec<String> = proto
        .lines()
        .map(|line| {
            if line
                .trim_start()
                .strip_prefix("message ")
                .is_some_and(|rest| rest.split_whitespace().next() == Some(name))
            {
                format!("// @RootNode\n{line}")
            } else {
                line.to_owned()
            }
        })
        .collect();
    json!({ "schemaFormat": PROTOBUF_FORMAT, "schema": marked.join("\n") + "\n" })
}

/// One header: its name, JSON Schema and meaning.
type Header = (&'static str, Value, String);

fn headers_schema(title: &str, headers: &[Header]) -> Value {
    let properties: Map<String, Value> = headers
        .iter()
        .map(|(name, schema, description)| {
            let mut schema = schema.clone();
            schema["description"] = json!(description);
            ((*name).to_owned(), schema)
        })
        .collect();
    json!({
        "title": title,
        "description": "Header values are text (Kafka: UTF-8 record headers; RabbitMQ: AMQP headers-table strings). Other headers are carried along untouched.",
        "type": "object",
        "properties": properties,
    })
}

fn text() -> Value {
    json!({ "type": "string" })
}

fn instant() -> Value {
    json!({ "type": "string", "format": "date-time" })
}

fn counter(minimum: u32) -> Value {
    let pattern = if minimum == 0 { "^[0-9]+$" } else { "^[1-9][0-9]*$" };
    json!({ "type": "string", "pattern": pattern })
}

fn content_types() -> Value {
    json!({ "type": "string", "examples": [codec::JSON, codec::PROTOBUF] })
}

fn request_headers() -> Vec<Header> {
    vec![
        (h::MESSAGE_ID, text(), "Unique id of this message (a UUID is a good choice). Recommended.".into()),
        (h::CORRELATION_ID, text(), "Copied unchanged into the reply; defaults to the message id. Recommended.".into()),
        (
            h::REPLY_TO,
            text(),
            "Queue/topic for the reply; must match the worker's `--reply-allow` patterns (default `*.replies`).".into(),
        ),
        (
            h::CONTENT_TYPE,
            content_types(),
            format!(
                "`{}` (also when absent) or `{}`; parameters such as `; charset=utf-8` are allowed. The reply comes back in the same encoding. Anything else is a `decode` dead letter (`unsupported_content_type`).",
                codec::JSON,
                codec::PROTOBUF
            ),
        ),
        (
            h::DEADLINE,
            instant(),
            "RFC 3339 instant; a request not started by then is not processed (`expired`).".into(),
        ),
        (
            h::TRACEPARENT,
            json!({ "type": "string", "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}" }),
            "W3C trace context, continued into replies, retries and dead letters; a malformed one is ignored.".into(),
        ),
        (h::TRACESTATE, text(), "W3C trace state, copied along.".into()),
        (h::ATTEMPT, counter(1), "Delivery round (producers omit it; the worker counts delayed retries in it).".into()),
        (h::REPLAY_COUNT, counter(0), "Set by `courier dlq replay`: how often this message was replayed.".into()),
    ]
}

fn reply_headers() -> Vec<Header> {
    vec![
        (h::CORRELATION_ID, text(), "The request's correlation id.".into()),
        (
            h::STATUS,
            json!({ "type": "string", "enum": Status::ALL.map(Status::as_str) }),
            format!("`{}`, or `{}` when the request was dead-lettered.", Status::Ok, Status::Error),
        ),
        (h::ERROR_CODE, text(), "On error: the failure code (schemas/README.md#outcomes).".into()),
        (
            h::ERROR_MESSAGE,
            json!({ "type": "string", "maxLength": h::MAX_ERROR_MESSAGE_BYTES }),
            "On error: what went wrong (at most 1,024 bytes).".into(),
        ),
        (h::MESSAGE_ID, text(), "A new id.".into()),
        (h::REPLIED_BY, text(), "The worker instance that produced the reply.".into()),
        (h::CONTENT_TYPE, content_types(), "The request's encoding.".into()),
        (h::TRACEPARENT, text(), "The request's trace id and flags with the worker's span id.".into()),
    ]
}

fn failure_headers() -> Vec<Header> {
    let kinds: Vec<&str> = FailureKind::ALL.iter().map(|k| k.as_str()).collect();
    vec![
        (h::FAILURE_KIND, json!({ "type": "string", "enum": kinds }), "Why the request failed.".into()),
        (h::FAILURE_CODE, text(), "Stable snake_case code: the handler's, or the runtime's.".into()),
        (
            h::FAILURE_MESSAGE,
            json!({ "type": "string", "maxLength": h::MAX_ERROR_MESSAGE_BYTES }),
            "What went wrong.".into(),
        ),
        (
            h::FAILURE_FINGERPRINT,
            json!({ "type": "string", "pattern": "^[0-9a-f]{16}$" }),
            "FNV-1a 64 of kind, worker and code: groups identical failures.".into(),
        ),
        (
            h::FAILURE_SOURCE,
            text(),
            "The queue/topic the request was consumed from (replay sends it back there).".into(),
        ),
        (
            h::FAILURE_TOPIC,
            text(),
            "The Kafka topic the record was read from: the work topic or a retry tier (Kafka only).".into(),
        ),
        (h::FAILURE_PARTITION, counter(0), "Kafka partition in that topic (Kafka only).".into()),
        (h::FAILURE_OFFSET, counter(0), "Kafka offset in that partition (Kafka only).".into()),
        (h::FAILURE_ATTEMPTS, counter(0), "Handler invocations over all delivery rounds.".into()),
        (h::FAILURE_FIRST_AT, instant(), "Time of the first failure.".into()),
        (h::FAILURE_LAST_AT, instant(), "Time of the last failure.".into()),
        (
            h::FAILURE_PAYLOAD_BYTES,
            counter(0),
            "Only on a copy too large for the broker: the original payload's size (the payload is then empty).".into(),
        ),
        (h::FAILURE_WORKER, text(), "The worker's name.".into()),
        (h::FAILURE_INSTANCE, text(), "The worker instance.".into()),
    ]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::naming::RetryTier;

    fn worker(proto: Option<(&'static str, &'static str, &'static str)>) -> Worker<'static> {
        let schema = json!({ "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object" });
        Worker {
            name: "w",
            request_schema: schema.clone(),
            reply_schema: schema,
            proto,
            topology: Topology {
                queue: "w.requests".into(),
                retry_tiers: vec![RetryTier { name: "w.requests.retry-5s".into(), delay: Duration::from_secs(5) }],
                dead_letter: "w.requests.dlq".into(),
                parking: "w.requests.parking".into(),
                replies: "w.replies".into(),
                quorum: false,
            },
        }
    }

    #[test]
    fn every_queue_is_a_channel_and_every_header_is_described() {
        let doc = document(&worker(None));
        let addresses: Vec<&str> =
            doc["channels"].as_object().expect("channels").values().filter_map(|c| c["address"].as_str()).collect();
        for queue in ["w.requests", "w.requests.retry-5s", "w.requests.dlq", "w.requests.parking"] {
            assert!(addresses.contains(&queue), "{queue} in {addresses:?}");
        }
        let failed = &doc["components"]["schemas"]["failedRequestHeaders"]["properties"];
        for name in h::FAILURE_HEADERS {
            assert!(failed[name]["description"].is_string(), "{name}");
        }
        assert!(doc["components"]["messages"]["requestProtobuf"].is_null(), "JSON only without a .proto");
        assert_eq!(doc["components"]["messages"]["request"]["payload"]["$schema"], Value::Null);
    }

    #[test]
    fn protobuf_payloads_mark_their_root_message() {
        let proto =
            "syntax = \"proto3\";\npackage p;\nmessage Ask { string a = 1; }\nmessage Answer { string b = 1; }\n";
        let doc = document(&worker(Some((proto, "p.Ask", "p.Answer"))));
        let messages = &doc["components"]["messages"];
        let schema = messages["replyProtobuf"]["payload"]["schema"].as_str().expect("proto text");
        assert!(schema.contains("// @RootNode\nmessage Answer {"), "{schema}");
        assert_eq!(schema.matches("@RootNode").count(), 1);
        assert_eq!(messages["requestProtobuf"]["contentType"], codec::PROTOBUF);
        let error = messages["errorReplyProtobuf"]["payload"]["schema"].as_str().expect("envelope proto");
        assert!(error.contains("// @RootNode\nmessage ErrorReply {"), "{error}");
    }
}
