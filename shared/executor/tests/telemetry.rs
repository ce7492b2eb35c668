//! The dispatch span reaches an OTLP collector with its phase, as a child of
//! the request's span. Its own test binary: it installs the global subscriber.

use std::time::Duration;

use switchyard_executor::{DispatchOptions, Endpoint, Executor, ExecutorConfig, Phase};
use switchyard_telemetry::receiver::{find_span, has_spans};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_span_carries_phase_and_parent_to_the_collector() {
    let (receiver, telemetry) = switchyard_telemetry::receiver::capture("phase-test", "async")
        .await
        .expect("telemetry");

    let executor =
        Executor::new("phase-test", ExecutorConfig::in_phase(Phase::Async)).expect("executor");
    let stalls = executor
        .register(Endpoint::from_async("stalls", |_, ()| async {
            std::thread::sleep(Duration::from_millis(30));
        }))
        .expect("registered");
    let request = tracing::info_span!("request");
    stalls
        .dispatch(
            (),
            DispatchOptions {
                parent: Some(request.clone()),
                ..DispatchOptions::default()
            },
        )
        .await
        .expect("ok");
    drop(request);
    telemetry.flush();

    let spans = receiver
        .wait_for(Duration::from_secs(10), |spans| {
            has_spans(spans, &["dispatch stalls", "request"])
        })
        .await
        .unwrap_or_else(|spans| panic!("spans never arrived; got {spans:#?}"));
    let request = find_span(&spans, "request").expect("request span");
    let dispatch = find_span(&spans, "dispatch stalls").expect("dispatch span");
    assert_eq!(dispatch.trace_id, request.trace_id);
    assert_eq!(
        dispatch.parent_span_id, request.span_id,
        "dispatch is a child of the request"
    );
    assert_eq!(dispatch.attribute("switchyard.phase"), Some("async"));
    assert_eq!(dispatch.attribute("switchyard.endpoint"), Some("stalls"));
    assert!(
        dispatch.attributes.contains_key("switchyard.queue_wait_us"),
        "{dispatch:#?}"
    );
    assert!(
        dispatch.attributes.contains_key("thread.name"),
        "{dispatch:#?}"
    );
    assert_eq!(
        dispatch
            .resource
            .get("switchyard.phase")
            .map(String::as_str),
        Some("async")
    );
    assert_eq!(dispatch.service, "phase-test");
    assert!(
        dispatch
            .events
            .iter()
            .any(|(name, _)| name.contains("slow poll")),
        "the blocking detector marks the span: {:#?}",
        dispatch.events
    );
    telemetry.shutdown();
}
