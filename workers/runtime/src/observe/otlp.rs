//! OpenTelemetry: spans exported over OTLP (gRPC) when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set (`OTEL_SERVICE_NAME` names the service), and the W3C trace context that ties a
//! delivery's span to the request's trace and its outputs to the delivery's span, read and
//! written by the contract's [`trace`](crate::contract::trace) (one implementation for the
//! runtime, the client and producers' tools).

use std::{str::FromStr, sync::OnceLock};

use opentelemetry::{
    Context,
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};

use crate::contract::{
    headers::{self as h, Headers},
    trace::TraceParent,
};

/// The provider, kept to flush spans at exit.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The tracing layer that exports spans, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub(crate) fn layer<S>() -> Option<OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>
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
    Some(exporting(tracer))
}

/// The layer that exports spans through `tracer`.
///
/// Without context activation: with it, entering a span starts its OpenTelemetry span,
/// which keeps the parent it had then, and a delivery span is entered before
/// [`continue_trace`] (inside it) can give it the request's span as parent. Nothing in
/// Courier reads OpenTelemetry's current context, which is all that activation sets.
fn exporting<S>(tracer: opentelemetry_sdk::trace::Tracer) -> OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(tracer).with_context_activation(false)
}

/// Send the spans still buffered (call before the process exits).
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown();
    }
}

/// Make `span` a child of the request's `traceparent` (when exporting), and return the
/// `traceparent` for the delivery's outputs: the span's own ids when it is exported, else
/// a new span id in the request's trace. A request without a valid one gets a new trace
/// only when spans are exported (nobody could see it otherwise, and every header costs
/// the broker work). `incoming` is the request's `traceparent`; its `tracestate` is read
/// from `headers`.
pub(crate) fn continue_trace(span: &tracing::Span, headers: &Headers, incoming: Option<&str>) -> Option<String> {
    continue_in(PROVIDER.get().is_some(), span, headers, incoming)
}

/// [`continue_trace`], exporting or not.
fn continue_in(exporting: bool, span: &tracing::Span, headers: &Headers, incoming: Option<&str>) -> Option<String> {
    let parent = incoming.and_then(TraceParent::parse);
    if !exporting {
        return parent.map(|parent| parent.child().to_string());
    }
    if let Some(parent) = parent {
        // An error means no exporting layer sees this span (filtered out): nothing of it
        // is exported, and its outputs get a span id of their own below.
        let _ = span.set_parent(Context::new().with_remote_span_context(remote(parent, headers)));
    }
    let own = span.context().span().span_context().clone();
    let outgoing = own_ids(&own).unwrap_or_else(|| parent.map_or_else(TraceParent::root, TraceParent::child));
    Some(outgoing.to_string())
}

/// The request's span, as the remote parent of a delivery's span. A `tracestate` that is
/// not valid is left out (W3C: the `traceparent` still holds).
fn remote(parent: TraceParent, headers: &Headers) -> SpanContext {
    let flags = if parent.sampled() { TraceFlags::SAMPLED } else { TraceFlags::NOT_SAMPLED };
    let state = headers.get(h::TRACESTATE).and_then(|v| TraceState::from_str(v).ok()).unwrap_or_default();
    SpanContext::new(TraceId::from(parent.trace_id()), SpanId::from(parent.span_id()), flags, true, state)
}

/// An exported span's ids, for its outputs; `None` when it has none (not exported).
fn own_ids(span: &SpanContext) -> Option<TraceParent> {
    let trace_id = u128::from_be_bytes(span.trace_id().to_bytes());
    TraceParent::new(trace_id, u64::from_be_bytes(span.span_id().to_bytes()), span.is_sampled())
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use opentelemetry_sdk::{
        error::OTelSdkResult,
        trace::{SpanData, SpanProcessor},
    };
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::contract::trace;

    const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Keeps the spans that end, in place of an exporter.
    #[derive(Clone, Debug, Default)]
    struct Ended(Arc<Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Ended {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &Context) {}

        fn on_end(&self, span: SpanData) {
            self.0.lock().expect("ended spans").push(span);
        }

        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }

        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    /// A delivery with these request headers, as the pipeline runs it (its span entered,
    /// then the trace continued) and with spans exported through the production layer:
    /// the outputs' `traceparent` and the spans that ended.
    fn delivered(headers: &[(&'static str, &str)]) -> (Option<String>, Vec<SpanData>) {
        let headers: Headers = headers.iter().map(|(name, value)| ((*name).into(), (*value).to_owned())).collect();
        let ended = Ended::default();
        let provider = SdkTracerProvider::builder().with_span_processor(ended.clone()).build();
        let subscriber = tracing_subscriber::registry().with(exporting(provider.tracer("test")));
        let outgoing = tracing::subscriber::with_default(subscriber, || {
            let delivery = tracing::info_span!("delivery");
            let _entered = delivery.enter();
            let incoming = headers.get(h::TRACEPARENT).map(String::as_str);
            continue_in(true, &tracing::Span::current(), &headers, incoming)
        });
        let spans = std::mem::take(&mut *ended.0.lock().expect("ended spans"));
        (outgoing, spans)
    }

    #[test]
    fn an_exported_delivery_span_is_a_child_of_the_request_span() {
        let (outgoing, spans) = delivered(&[(h::TRACEPARENT, INCOMING), (h::TRACESTATE, "vendor=opaque")]);
        let [span] = spans.as_slice() else { panic!("one span ended: {spans:?}") };
        let incoming = TraceParent::parse(INCOMING).expect("valid");
        assert_eq!(span.parent_span_id, SpanId::from(incoming.span_id()), "the request's span is the parent");
        assert!(span.parent_span_is_remote);
        assert_eq!(span.span_context.trace_id(), TraceId::from(incoming.trace_id()));
        assert_eq!(span.span_context.trace_state().header(), "vendor=opaque", "tracestate carried into the span");
        // The outputs: the same trace, the delivery's span as their parent.
        let outgoing = TraceParent::parse(&outgoing.expect("a traceparent")).expect("valid");
        assert_eq!(outgoing.trace_id(), incoming.trace_id());
        assert_eq!(SpanId::from(outgoing.span_id()), span.span_context.span_id());
        assert!(outgoing.sampled());
    }

    #[test]
    fn an_unsampled_request_stays_unsampled() {
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let (outgoing, spans) = delivered(&[(h::TRACEPARENT, unsampled)]);
        assert!(spans.is_empty(), "the caller did not sample it: nothing recorded");
        let outgoing = outgoing.expect("a traceparent");
        assert_eq!(trace::trace_id(&outgoing), trace::trace_id(unsampled));
        assert!(outgoing.ends_with("-00") && outgoing != unsampled, "{outgoing}");
    }

    #[test]
    fn an_exported_delivery_without_a_valid_trace_starts_one() {
        let capitals = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01";
        for headers in [&[][..], &[(h::TRACEPARENT, capitals)]] {
            let (outgoing, spans) = delivered(headers);
            let [span] = spans.as_slice() else { panic!("one span ended: {spans:?}") };
            assert_eq!(span.parent_span_id, SpanId::INVALID, "a root span");
            let outgoing = TraceParent::parse(&outgoing.expect("a traceparent")).expect("valid");
            assert_eq!(TraceId::from(outgoing.trace_id()), span.span_context.trace_id());
            assert_eq!(SpanId::from(outgoing.span_id()), span.span_context.span_id());
        }
    }

    #[test]
    fn without_export_only_a_valid_trace_is_continued() {
        let headers = Headers::new();
        let child = continue_in(false, &tracing::Span::none(), &headers, Some(INCOMING)).expect("continued");
        assert_eq!(trace::trace_id(&child), trace::trace_id(INCOMING));
        assert!(child.ends_with("-01") && child != INCOMING, "{child}");
        for incoming in [None, Some("garbage"), Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")] {
            assert_eq!(continue_in(false, &tracing::Span::none(), &headers, incoming), None, "{incoming:?}");
        }
    }
}
