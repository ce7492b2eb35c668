//! Context across process boundaries: W3C trace context (`traceparent`,
//! `tracestate`) and W3C baggage, as `OTEL_PROPAGATORS` chooses ([`install`];
//! both until then).
//!
//! Transports carry the context as string pairs: AMQP message headers, gRPC
//! metadata. These helpers convert between a tracing span and such pairs with
//! this module's propagator, so they work the same whether or not telemetry
//! was initialised.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::env::Propagator;

static PROPAGATOR: OnceLock<TextMapCompositePropagator> = OnceLock::new();

fn composite(chosen: &[Propagator]) -> TextMapCompositePropagator {
    let propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>> = chosen
        .iter()
        .map(|propagator| -> Box<dyn TextMapPropagator + Send + Sync> {
            match propagator {
                Propagator::TraceContext => Box::new(TraceContextPropagator::new()),
                Propagator::Baggage => Box::new(BaggagePropagator::new()),
            }
        })
        .collect();
    TextMapCompositePropagator::new(propagators)
}

/// Chooses the propagators for this process (and installs them as the
/// OpenTelemetry global one). The first call wins; `false` when one had
/// already been made (or a helper here already used the default).
pub fn install(chosen: &[Propagator]) -> bool {
    let installed = PROPAGATOR.set(composite(chosen)).is_ok();
    opentelemetry::global::set_text_map_propagator(composite(chosen));
    installed
}

fn propagator() -> &'static TextMapCompositePropagator {
    PROPAGATOR.get_or_init(|| composite(&[Propagator::TraceContext, Propagator::Baggage]))
}

/// The header names the chosen propagators write and read.
pub fn fields() -> Vec<&'static str> {
    propagator().fields().collect()
}

/// The context of `span` (trace context, baggage) as header pairs (empty
/// when the span is not traced and carries no baggage).
pub fn inject(span: &Span) -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    propagator().inject_context(&span.context(), &mut MapInjector(&mut headers));
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
    if span.is_disabled() {
        return false; // nothing would keep the parent
    }
    // Runs for every message received: only the pairs a propagator reads
    // are copied (header names compared without case, as HTTP's are).
    let propagator = propagator();
    let map: BTreeMap<String, String> = headers
        .into_iter()
        .filter_map(|(key, value)| {
            let field = propagator
                .fields()
                .find(|field| field.eq_ignore_ascii_case(key))?;
            Some((field.to_string(), value.to_string()))
        })
        .collect();
    if map.is_empty() {
        return false;
    }
    let context = propagator.extract(&MapExtractor(&map));
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
    let pairs: Vec<(&str, &str)> = fields()
        .into_iter()
        .filter_map(|key| Some((key, metadata.get(key)?.to_str().ok()?)))
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
