//! W3C trace context and baggage survive a trip through header pairs and
//! gRPC metadata (the default propagators: `OTEL_PROPAGATORS` unset).

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use switchyard_telemetry::propagation;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

fn trace_id(span: &tracing::Span) -> String {
    span.context().span().span_context().trace_id().to_string()
}

/// Runs `test` with spans that carry OpenTelemetry contexts (the default
/// propagators).
fn traced(test: impl FnOnce()) {
    let provider = SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::with_default(subscriber, test);
}

#[test]
fn context_crosses_header_pairs_and_metadata() {
    traced(|| {
        let producer = tracing::info_span!("publish");
        let headers = propagation::inject(&producer);
        let traceparent = headers.get("traceparent").expect("traceparent injected");
        assert!(traceparent.starts_with("00-") && traceparent.contains(&trace_id(&producer)));

        let consumer = tracing::info_span!("process");
        let pairs = headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        assert!(propagation::set_parent_from(&consumer, pairs));
        assert_eq!(trace_id(&consumer), trace_id(&producer));

        let mut metadata = tonic::metadata::MetadataMap::new();
        propagation::inject_metadata(&producer, &mut metadata);
        let server = tracing::info_span!("server");
        assert!(propagation::set_parent_from_metadata(&server, &metadata));
        assert_eq!(trace_id(&server), trace_id(&producer));

        let orphan = tracing::info_span!("orphan");
        assert!(!propagation::set_parent_from(
            &orphan,
            [("traceparent", "garbage")]
        ));
    });
}

/// Baggage set upstream crosses a hop: extracted into a consumer's span, it
/// is injected again into what that consumer sends on.
#[test]
fn baggage_crosses_a_hop_with_the_trace() {
    traced(|| {
        let producer = tracing::info_span!("publish");
        let mut headers = propagation::inject(&producer);
        headers.insert("baggage".into(), "tenant=acme,rollout=canary".into());
        let consumer = tracing::info_span!("process");
        let pairs = headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        assert!(propagation::set_parent_from(&consumer, pairs));
        let onward = consumer.in_scope(|| {
            let next = tracing::info_span!("publish again");
            propagation::inject(&next)
        });
        let baggage = onward.get("baggage").map(String::as_str).unwrap_or("");
        let mut entries: Vec<&str> = baggage.split(',').collect();
        entries.sort_unstable();
        assert_eq!(entries, ["rollout=canary", "tenant=acme"], "{onward:?}");
        assert_eq!(
            onward
                .get("traceparent")
                .map(|t| t.contains(&trace_id(&producer))),
            Some(true)
        );
    });
}
