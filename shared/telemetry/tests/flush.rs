//! Flushing from inside a current-thread runtime does not deadlock: the
//! exporter runs on its own runtime. Its own test binary: it installs the
//! global subscriber.

use std::time::{Duration, Instant};

use switchyard_telemetry::receiver::{OtlpReceiver, find_span};
use switchyard_telemetry::{Identity, TelemetryConfig};

#[test]
fn shutdown_inside_a_current_thread_runtime_flushes_without_deadlock() {
    let collector = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("collector runtime");
    let receiver = collector
        .block_on(OtlpReceiver::loopback())
        .expect("receiver");
    let config = TelemetryConfig {
        otlp_endpoint: receiver.endpoint(),
        export_delay_ms: 60_000, // only the shutdown flush can deliver the span
        ..TelemetryConfig::default()
    };

    let service = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("current-thread runtime");
    let took = service.block_on(async {
        let telemetry =
            switchyard_telemetry::init(&Identity::new("flush-test", "threaded"), &config)
                .expect("telemetry");
        tracing::info_span!("inside current thread").in_scope(|| tracing::info!("work"));
        let started = Instant::now();
        telemetry.shutdown();
        started.elapsed()
    });
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");

    let spans = collector
        .block_on(receiver.wait_for(Duration::from_secs(10), |spans| {
            spans.iter().any(|s| s.name == "inside current thread")
        }))
        .unwrap_or_else(|spans| panic!("span never arrived: {spans:#?}"));
    let span = find_span(&spans, "inside current thread").expect("span");
    assert_eq!(
        span.resource.get("switchyard.phase").map(String::as_str),
        Some("threaded")
    );
}
