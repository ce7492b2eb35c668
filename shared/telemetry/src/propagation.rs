//! W3C trace-context (`traceparent`, `tracestate`) across process boundaries.
//!
//! Transports carry the context as string pairs: AMQP message headers, gRPC
//! metadata. These helpers convert between a tracing span and such pairs; they
//! use the W3C propagator directly, so they work the same whether or not a
//! global propagator was installed.

use std::collections::BTreeMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header names this propagation writes and reads.
pub const FIELDS: [&str; 2] = ["traceparent", "tracestate"];

/// The trace context of `span` as header pairs (empty when the span is not traced).
pub fn inject(span: &Span) -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut MapInjector(&mut headers));
    headers
}

/// Makes the context carried by `headers` the parent of `span`. Must be
/// called before `span` is first entered (tracing-opentelemetry 0.34 refuses
/// later); returns `false` when the headers carry no valid context.
pub fn set_parent_from<'a>(
    span: &Span,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> bool {
    use opentelemetry::trace::TraceContextExt;
    let map: BTreeMap<String, String> = headers
        .into_iter()
        .filter(|(key, _)| FIELDS.contains(&key.to_ascii_lowercase().as_str()))
        .map(|(key, value)| (key.to_ascii_lowercase(), value.to_string()))
        .collect();
    let context = TraceContextPropagator::new().extract(&MapExtractor(&map));
    if !context.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(context).is_ok()
}

/// The trace id of `span` (32 hex digits), when it is traced.
pub fn trace_id(span: &Span) -> Option<String> {
    ids(span).map(|(trace_id, _)| trace_id)
}

/// The trace and span ids of `span` (hex), when it is traced.
pub fn ids(span: &Span) -> Option<(String, String)> {
    use opentelemetry::trace::TraceContextExt;
    if span.is_none() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}

/// Writes the trace context of `span` into gRPC request metadata.
pub fn inject_metadata(span: &Span, metadata: &mut MetadataMap) {
    for (key, value) in inject(span) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            metadata.insert(key, value);
        }
    }
}

/// Parents `span` on the trace context in gRPC request metadata, if any.
pub fn set_parent_from_metadata(span: &Span, metadata: &MetadataMap) -> bool {
    let pairs: Vec<(&str, &str)> = FIELDS
        .iter()
        .filter_map(|key| Some((*key, metadata.get(*key)?.to_str().ok()?)))
        .collect();
    set_parent_from(span, pairs)
}

struct MapInjector<'a>(&'a mut BTreeMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

struct MapExtractor<'a>(&'a BTreeMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}
