//! The gateway's HTTP surface. `POST /process` takes a greeter request as JSON, as a form
//! (`message=Ada`, the article's form value, sent on as JSON) or as Protocol Buffers
//! (`Content-Type: application/x-protobuf`), and answers in the worker's reply encoding
//! (protobuf for a protobuf request, else JSON):
//!
//! | outcome | status | body |
//! |---|---|---|
//! | the worker replied ok | 200 | the reply (`{"result": …}`) |
//! | not decodable, or not a valid greeter request | 400 | `{"error": {"kind": "decode"\|"schema", "message": …}}` (JSON) |
//! | the worker refused it (permanent, schema, …) | 422 | the worker's error reply |
//! | the worker failed for good otherwise (transient, expired, …) | 502 | the worker's error reply |
//! | no reply within `--timeout` | 504 | `{"error": {"kind": "timeout", …}}` |
//! | the broker is unavailable (or the request queue missing) | 503 | `{"error": {"kind": "unavailable", …}}` |
//!
//! `/metrics`, `/healthz` and `/readyz` (connected and consuming replies) are served too.

use std::time::{Duration, Instant};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use courier::{
    Handler,
    client::{Client, RequestError},
    contract::{codec::Codec, error_reply::ErrorReply, headers as h},
    observe::{Health, Metrics, server},
    schema::{Refusal, RequestSchema},
    transport::Transport,
};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use serde_json::json;

/// Where requests go and how long to wait.
#[derive(Clone, Debug)]
pub struct Options {
    /// The workers' request queue/topic.
    pub queue: String,
    /// Reply timeout (also the request's deadline).
    pub timeout: Duration,
}

struct Gateway<T> {
    client: Client<T>,
    options: Options,
    schema: RequestSchema,
    requests: IntCounterVec,
    seconds: HistogramVec,
}

/// The routes: `/process` plus the observability endpoints.
pub fn router<T: Transport>(client: Client<T>, options: Options) -> anyhow::Result<Router> {
    let metrics = Metrics::new("gateway");
    let requests = IntCounterVec::new(
        Opts::new("courier_gateway_requests_total", "HTTP requests to /process, by response status."),
        &["status"],
    )?;
    let seconds = HistogramVec::new(
        HistogramOpts::new("courier_gateway_request_duration_seconds", "Time from HTTP request to response."),
        &["status"],
    )?;
    metrics.registry().register(Box::new(requests.clone()))?;
    metrics.registry().register(Box::new(seconds.clone()))?;
    let health = Health::new({
        let client = client.clone();
        move || client.is_ready()
    });
    health.set_running(true);
    let schema = RequestSchema::compile(greeter::Greeter::REQUEST_SCHEMA)?;
    let gateway = std::sync::Arc::new(Gateway { client, options, schema, requests, seconds });
    let process = Router::new().route("/process", post(process::<T>)).with_state(gateway);
    Ok(process.merge(server::routes(server::Observed { metrics, health })))
}

async fn process<T: Transport>(
    State(gateway): State<std::sync::Arc<Gateway<T>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let (status, body, codec) = answer(&gateway, &headers, body).await;
    let label = status.as_u16().to_string();
    gateway.requests.with_label_values(&[&label]).inc();
    gateway.seconds.with_label_values(&[&label]).observe(started.elapsed().as_secs_f64());
    (status, [(axum::http::header::CONTENT_TYPE, codec.content_type())], body).into_response()
}

/// The HTTP status, the body and its codec.
async fn answer<T: Transport>(gateway: &Gateway<T>, headers: &HeaderMap, body: Bytes) -> (StatusCode, Vec<u8>, Codec) {
    let fail = |status: StatusCode, kind: &str, message: String| {
        (status, json!({ "error": { "kind": kind, "message": message } }).to_string().into_bytes(), Codec::Json)
    };
    let content_type = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (body, codec) = match checked(&gateway.schema, content_type, body) {
        Ok(request) => request,
        Err(Refusal::Violation(why)) => return fail(StatusCode::BAD_REQUEST, "schema", why),
        Err(Refusal::NotJson(why) | Refusal::NotProtobuf(why)) => return fail(StatusCode::BAD_REQUEST, "decode", why),
    };
    let traceparent = headers.get(h::TRACEPARENT).and_then(|v| v.to_str().ok());
    match gateway.client.request(&gateway.options.queue, body, codec, traceparent, gateway.options.timeout).await {
        Ok(reply) => {
            let codec =
                reply.headers.get(h::CONTENT_TYPE).and_then(|ct| Codec::of_content_type(ct)).unwrap_or_default();
            let status = match reply.headers.get(h::STATUS).map(String::as_str) {
                Some("ok") => StatusCode::OK,
                _ => match ErrorReply::decode(codec, &reply.payload).map(|e| e.error.kind) {
                    Some(kind) if ["permanent", "schema", "decode", "too-large"].contains(&kind.as_str()) => {
                        StatusCode::UNPROCESSABLE_ENTITY
                    }
                    _ => StatusCode::BAD_GATEWAY,
                },
            };
            (status, reply.payload.to_vec(), codec)
        }
        Err(RequestError::Timeout(after)) => {
            fail(StatusCode::GATEWAY_TIMEOUT, "timeout", format!("no reply within {after:?}"))
        }
        Err(RequestError::Publish(error)) => fail(StatusCode::SERVICE_UNAVAILABLE, "unavailable", error.to_string()),
    }
}

/// The request as it goes to the worker, checked against the greeter's schema first: a
/// form becomes JSON, protobuf goes on as it came. A "form" whose body is a JSON object is
/// JSON (`curl -d '{…}'` labels JSON as a form).
fn checked(schema: &RequestSchema, content_type: &str, body: Bytes) -> Result<(Bytes, Codec), Refusal> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let json_object = body.trim_ascii_start().starts_with(b"{");
    if media.eq_ignore_ascii_case("application/x-www-form-urlencoded") && !json_object {
        let fields: serde_json::Map<String, serde_json::Value> =
            form_urlencoded::parse(&body).map(|(name, value)| (name.into_owned(), value.into_owned().into())).collect();
        let json = serde_json::Value::Object(fields);
        schema.decode_value::<greeter::Request>(json.clone())?;
        return Ok((Bytes::from(json.to_string()), Codec::Json));
    }
    if Codec::of_content_type(content_type) == Some(Codec::Protobuf) {
        let protobuf = greeter::Greeter::PROTOBUF.ok_or_else(|| Refusal::NotProtobuf("no protobuf codec".into()))?;
        let json = protobuf.decode_request(&body).map_err(Refusal::NotProtobuf)?;
        schema.decode_value::<greeter::Request>(json)?;
        return Ok((body, Codec::Protobuf));
    }
    schema.decode::<greeter::Request>(&body)?;
    Ok((body, Codec::Json))
}
