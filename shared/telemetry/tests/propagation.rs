//! W3C trace context survives a trip through header pairs and gRPC metadata.

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use switchyard_telemetry::propagation;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

fn trace_id(span: &tracing::Span) -> String {
    span.context().span().span_context().trace_id().to_string()
}

#[test]
fn context_crosses_header_pairs_and_metadata() {
    let provider = SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::with_default(subscriber, || {
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
