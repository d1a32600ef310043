//! The gateway's HTTP surface. `POST /process` takes a greeter request as JSON
//! (`Content-Type: application/json`), as a form (`application/x-www-form-urlencoded`:
//! `message=Ada`, the article's form value, sent on as JSON; a form body that is a JSON
//! object is JSON, as `curl -d` labels everything a form) or as Protocol Buffers
//! (`application/x-protobuf`), and answers in the worker's reply encoding (protobuf for a
//! protobuf request, else JSON). Every error the gateway gives itself is
//! `{"error": {"kind", "code", "message"}}` in JSON:
//!
//! | outcome | status | `kind`, `code` |
//! |---|---|---|
//! | the worker replied ok | 200 | the reply (`{"result": …}`) |
//! | a browser's cross-site request (`Sec-Fetch-Site`, or an `Origin` that is not the `Host`) | 403 | `forbidden`, `cross_site_request` |
//! | any other `Content-Type` (`text/plain`, none, …): never reaches a worker | 415 | `decode`, `unsupported_content_type` |
//! | the body did not arrive within `--body-timeout` of the headers (the connection is closed) | 408 | `timeout`, `body_timeout` |
//! | the body is over 2 MiB | 413 | `too-large`, `payload_too_large` |
//! | the connection failed while the body was read | 400 | `decode`, `body_unreadable` |
//! | not decodable, or not a valid greeter request | 400 | `decode`, `invalid_json`\|`invalid_protobuf`; `schema`, `schema_violation` |
//! | the worker refused it (`permanent`, `schema`, `decode`, `too-large`) | 422 | the worker's error reply |
//! | the worker failed for good otherwise (`transient`, `expired`, `unroutable`, `undeliverable`), or its reply is no error reply | 502 | the worker's reply |
//! | no reply within `--timeout` | 504 | `timeout`, `reply_timeout` |
//! | the broker is unavailable (or the request queue missing) | 503 | `unavailable`, `broker_unavailable` |
//!
//! A client that sends no complete request head within `--header-timeout` is disconnected
//! without an answer, and at most `--max-connections` are open at once (`courier::observe::serve`): so
//! `POST /process` is answered within `--header-timeout` + `--body-timeout` + `--timeout`.
//! `/metrics`, `/healthz` and `/readyz` (connected and consuming replies) are served too.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{FromRequest, Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use courier::{
    Client, Handler, Refusal, RequestError, RequestSchema,
    contract::{
        codec::Codec,
        error_reply::ErrorReply,
        failure::{self, FailureKind},
        headers as h,
        status::Status,
    },
    observe::{self, Health, Metrics},
};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

/// Where requests go and how long to wait.
#[derive(Clone, Debug)]
pub struct Options {
    /// The workers' request queue/topic.
    pub queue: String,
    /// Reply timeout (also the request's deadline).
    pub timeout: Duration,
    /// How long the whole body may take to arrive once the headers are in.
    pub body_timeout: Duration,
}

/// The `kind` and `code` of the gateway's own error bodies; those a worker gives too are
/// the contract's (`courier::contract::failure`).
pub mod code {
    /// A browser's request from another site.
    pub const CROSS_SITE_REQUEST: &str = "cross_site_request";
    /// The body did not arrive within `--body-timeout`.
    pub const BODY_TIMEOUT: &str = "body_timeout";
    /// The connection failed while the body was read.
    pub const BODY_UNREADABLE: &str = "body_unreadable";
    /// No reply within `--timeout`.
    pub const REPLY_TIMEOUT: &str = "reply_timeout";
    /// The request could not be published.
    pub const BROKER_UNAVAILABLE: &str = "broker_unavailable";
    /// Kind of a refused cross-site request.
    pub const KIND_FORBIDDEN: &str = "forbidden";
    /// Kind of a body or reply that did not come in time.
    pub const KIND_TIMEOUT: &str = "timeout";
    /// Kind of a request that could not be published.
    pub const KIND_UNAVAILABLE: &str = "unavailable";

    /// Every code above (the crate's doc table lists each).
    pub const ALL: [&str; 5] = [CROSS_SITE_REQUEST, BODY_TIMEOUT, BODY_UNREADABLE, REPLY_TIMEOUT, BROKER_UNAVAILABLE];
    /// Every kind above: none is one of the contract's `FailureKind`s.
    pub const KINDS: [&str; 3] = [KIND_FORBIDDEN, KIND_TIMEOUT, KIND_UNAVAILABLE];
}

struct Gateway {
    /// Publishes each request and waits for its reply.
    client: Client,
    /// Where requests go and how long to wait.
    options: Options,
    /// The greeter's request schema: a request that fails it never reaches a worker.
    schema: RequestSchema,
    /// `courier_gateway_requests_total{status}`.
    requests: IntCounterVec,
    /// `courier_gateway_request_duration_seconds{status}`.
    seconds: HistogramVec,
}

/// The routes: `/process` plus the observability endpoints.
pub fn router(client: Client, options: Options) -> anyhow::Result<Router> {
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
    let gateway = Arc::new(Gateway { client, options, schema, requests, seconds });
    let process = Router::new().route("/process", post(process)).with_state(gateway);
    Ok(process.merge(observe::routes(observe::Observed { metrics, health })))
}

async fn process(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let started = Instant::now();
    let (status, body, codec) = answer(&gateway, request).await;
    let label = status.as_u16().to_string();
    gateway.requests.with_label_values(&[&label]).inc();
    gateway.seconds.with_label_values(&[&label]).observe(started.elapsed().as_secs_f64());
    let mut response = (status, [(header::CONTENT_TYPE, codec.content_type())], body).into_response();
    if status == StatusCode::REQUEST_TIMEOUT {
        // The rest of a late body is not waited for: hyper closes the connection.
        response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    response
}

/// One of the gateway's own error answers, in JSON.
fn fail(status: StatusCode, kind: &str, code: &str, message: &str) -> (StatusCode, Vec<u8>, Codec) {
    (status, ErrorReply::new(kind, code, message).encode(Codec::Json), Codec::Json)
}

/// The HTTP status, the body and its codec. What the headers can refuse is refused before
/// a byte of the body is read.
async fn answer(gateway: &Gateway, request: Request) -> (StatusCode, Vec<u8>, Codec) {
    let headers = request.headers();
    if cross_site(headers) {
        let why = "a browser's request from another site (Sec-Fetch-Site or Origin) is refused";
        return fail(StatusCode::FORBIDDEN, code::KIND_FORBIDDEN, code::CROSS_SITE_REQUEST, why);
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some(media) = Media::of(content_type) else {
        let why = format!(
            "Content-Type {content_type:?} is not read: send application/json, \
             application/x-www-form-urlencoded or application/x-protobuf"
        );
        return fail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            FailureKind::Decode.as_str(),
            failure::code::UNSUPPORTED_CONTENT_TYPE,
            &why,
        );
    };
    let traceparent = headers.get(h::TRACEPARENT).and_then(|v| v.to_str().ok()).map(str::to_owned);
    // axum's `Bytes` extractor: its 2 MiB limit (413), under a bound on time.
    let body = match tokio::time::timeout(gateway.options.body_timeout, Bytes::from_request(request, &())).await {
        Ok(Ok(body)) => body,
        Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let why = rejection.body_text();
            return fail(rejection.status(), FailureKind::TooLarge.as_str(), failure::code::PAYLOAD_TOO_LARGE, &why);
        }
        Ok(Err(rejection)) => {
            let why = rejection.body_text();
            return fail(StatusCode::BAD_REQUEST, FailureKind::Decode.as_str(), code::BODY_UNREADABLE, &why);
        }
        Err(_) => {
            let after = gateway.options.body_timeout;
            let why = format!("the body did not arrive within {after:?} of the headers");
            return fail(StatusCode::REQUEST_TIMEOUT, code::KIND_TIMEOUT, code::BODY_TIMEOUT, &why);
        }
    };
    let (body, codec) = match checked(&gateway.schema, media, body) {
        Ok(request) => request,
        Err(refused) => {
            let (kind, code, why) = refused.classified();
            return fail(StatusCode::BAD_REQUEST, kind.as_str(), code, &why);
        }
    };
    let timeout = gateway.options.timeout;
    match gateway.client.request(&gateway.options.queue, body, codec, traceparent.as_deref(), timeout).await {
        Ok(reply) => {
            let codec =
                reply.headers.get(h::CONTENT_TYPE).and_then(|ct| Codec::of_content_type(ct)).unwrap_or_default();
            let status = match Status::of(&reply.headers) {
                Some(Status::Ok) => StatusCode::OK,
                _ => match ErrorReply::decode(codec, &reply.payload).and_then(|e| e.error.failure_kind()) {
                    Some(kind) if is_refusal(kind) => StatusCode::UNPROCESSABLE_ENTITY,
                    _ => StatusCode::BAD_GATEWAY,
                },
            };
            (status, reply.payload.to_vec(), codec)
        }
        Err(RequestError::Timeout(after)) => fail(
            StatusCode::GATEWAY_TIMEOUT,
            code::KIND_TIMEOUT,
            code::REPLY_TIMEOUT,
            &format!("no reply within {after:?}"),
        ),
        Err(RequestError::Publish(error)) => {
            fail(StatusCode::SERVICE_UNAVAILABLE, code::KIND_UNAVAILABLE, code::BROKER_UNAVAILABLE, &error.to_string())
        }
    }
}

/// Whether a worker's failure of `kind` is its refusal of the request itself (422: sending
/// it again cannot help), rather than a failure on its side (502).
fn is_refusal(kind: FailureKind) -> bool {
    match kind {
        FailureKind::Permanent | FailureKind::Schema | FailureKind::Decode | FailureKind::TooLarge => true,
        FailureKind::Transient | FailureKind::Expired | FailureKind::Unroutable | FailureKind::Undeliverable => false,
    }
}

/// Whether a browser sent this request from another site (Go's `CrossOriginProtection`
/// rule): `Sec-Fetch-Site` other than `same-origin` or `none`, or, from a browser too old to
/// send it, an `Origin` that is not the `Host`. Clients that are not browsers send neither.
/// Refusing the other content types keeps a cross-site `text/plain` form out; this keeps
/// out the cross-site urlencoded form the gateway would otherwise read.
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return false };
    let host = headers.get(header::HOST).map(|host| host.as_bytes());
    let origin_host = origin.to_str().ok().and_then(|o| o.split_once("://")).map(|(_, host)| host.as_bytes());
    origin_host.is_none() || origin_host != host
}

/// The media types `/process` reads; anything else never reaches a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Media {
    /// `application/json`.
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `application/x-protobuf` (and the contract's aliases).
    Protobuf,
}

impl Media {
    /// The media type of a `Content-Type` value (parameters and case ignored).
    fn of(content_type: &str) -> Option<Self> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        if media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Some(Self::Form);
        }
        match Codec::of_content_type(content_type)? {
            Codec::Json => Some(Self::Json),
            Codec::Protobuf => Some(Self::Protobuf),
        }
    }
}

/// The request as it goes to the worker, checked against the greeter's schema first: a
/// form becomes JSON, protobuf goes on as it came. A "form" whose body is a JSON object is
/// JSON (`curl -d '{…}'` labels JSON as a form).
fn checked(schema: &RequestSchema, media: Media, body: Bytes) -> Result<(Bytes, Codec), Refusal> {
    let json_object = body.trim_ascii_start().starts_with(b"{");
    match media {
        Media::Form if !json_object => {
            let fields: serde_json::Map<String, serde_json::Value> = form_urlencoded::parse(&body)
                .map(|(name, value)| (name.into_owned(), value.into_owned().into()))
                .collect();
            let json = serde_json::Value::Object(fields);
            schema.decode_value::<greeter::Request>(json.clone())?;
            Ok((Bytes::from(json.to_string()), Codec::Json))
        }
        Media::Protobuf => {
            let protobuf =
                greeter::Greeter::PROTOBUF.ok_or_else(|| Refusal::NotProtobuf("no protobuf codec".into()))?;
            let json = protobuf.decode_request(&body).map_err(Refusal::NotProtobuf)?;
            schema.decode_value::<greeter::Request>(json)?;
            Ok((body, Codec::Protobuf))
        }
        Media::Json | Media::Form => {
            schema.decode::<greeter::Request>(&body)?;
            Ok((body, Codec::Json))
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (header::HeaderName::from_static(name), HeaderValue::from_static(value)))
            .collect()
    }

    #[test]
    fn only_json_forms_and_protobuf_are_read() {
        assert_eq!(Media::of("application/json"), Some(Media::Json));
        assert_eq!(Media::of("Application/JSON; charset=utf-8"), Some(Media::Json));
        assert_eq!(Media::of("application/x-www-form-urlencoded"), Some(Media::Form));
        assert_eq!(Media::of("application/x-protobuf"), Some(Media::Protobuf));
        assert_eq!(Media::of("application/protobuf"), Some(Media::Protobuf));
        for refused in ["", "text/plain", "text/plain; charset=utf-8", "multipart/form-data; boundary=x", "text/json"] {
            assert_eq!(Media::of(refused), None, "{refused:?}");
        }
    }

    /// The crate's doc table names every code and kind the gateway gives itself, and the
    /// HTTP status each of the contract's kinds gets.
    #[test]
    fn the_documented_table_is_true() {
        let doc: Vec<&str> = include_str!("lib.rs").lines().take_while(|line| line.starts_with("//!")).collect();
        let row = |start: &str| doc.iter().find(|line| line.starts_with(start)).copied().unwrap_or_default();
        for name in code::ALL.into_iter().chain(code::KINDS) {
            assert!(doc.iter().any(|line| line.starts_with("//! |") && line.contains(&format!("`{name}`"))), "{name}");
        }
        for kind in code::KINDS {
            assert_eq!(FailureKind::parse(kind), None, "{kind} is the contract's: use FailureKind");
        }
        let (refused, failed) = (row("//! | the worker refused it"), row("//! | the worker failed for good"));
        for kind in FailureKind::ALL {
            let listed = format!("`{kind}`");
            let (yes, no) = if is_refusal(kind) { (refused, failed) } else { (failed, refused) };
            assert!(yes.contains(&listed) && !no.contains(&listed), "{kind}: {yes}");
        }
        assert!(refused.contains("| 422 |") && failed.contains("| 502 |"));
    }

    #[test]
    fn a_browsers_cross_site_request_is_told_apart() {
        assert!(!cross_site(&headers(&[])), "curl, a service: neither header");
        assert!(!cross_site(&headers(&[("sec-fetch-site", "same-origin"), ("origin", "http://evil.example")])));
        assert!(!cross_site(&headers(&[("sec-fetch-site", "none")])), "typed in the address bar");
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(!cross_site(&headers(&[("origin", "http://gw:8080"), ("host", "gw:8080")])));
        assert!(cross_site(&headers(&[("origin", "http://evil.example"), ("host", "gw:8080")])));
        assert!(cross_site(&headers(&[("origin", "null"), ("host", "gw:8080")])));
        assert!(cross_site(&headers(&[("origin", "http://gw:8080")])), "no Host to compare");
    }
}
