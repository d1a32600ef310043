//! OpenTelemetry: spans exported over OTLP (gRPC) when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set (`OTEL_SERVICE_NAME` names the service), and the W3C trace context that ties a
//! delivery's span to the request's trace and its outputs to the delivery's span.

use std::sync::OnceLock;

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::contract::{headers::Headers, trace};

/// The provider, kept to flush spans at exit.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The tracing layer that exports spans, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn layer<S>() -> Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|v| !v.trim().is_empty())?;
    let exporter = match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("OTLP export to {endpoint} disabled: {error}");
            return None;
        }
    };
    let provider =
        SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(Resource::builder().build()).build();
    let tracer = provider.tracer("courier");
    let _ = PROVIDER.set(provider);
    Some(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Send the spans still buffered (call before the process exits).
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown();
    }
}

/// Make `span` a child of the request's `traceparent` (when exporting), and return the
/// `traceparent` for the delivery's outputs: the span's own ids when it is exported, else
/// a new span id in the request's trace (see [`trace::child_of`]). A request without a
/// valid one gets a new trace only when spans are exported (nobody could see it otherwise,
/// and every header costs the broker work).
pub fn continue_trace(span: &tracing::Span, headers: &Headers, incoming: Option<&str>) -> Option<String> {
    if PROVIDER.get().is_none() {
        return incoming.filter(|t| trace::trace_id(t).is_some()).map(|t| trace::child_of(Some(t)));
    }
    let parent = TraceContextPropagator::new().extract(&HeaderView(headers));
    let _ = span.set_parent(parent);
    let context = span.context();
    let span_context = context.span().span_context().clone();
    Some(if span_context.is_valid() {
        format!("00-{}-{}-{:02x}", span_context.trace_id(), span_context.span_id(), span_context.trace_flags().to_u8())
    } else {
        trace::child_of(incoming)
    })
}

/// Our headers as an OpenTelemetry carrier.
struct HeaderView<'a>(&'a Headers);

impl Extractor for HeaderView<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_ref()).collect()
    }
}
