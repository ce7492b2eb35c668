//! Trace context crosses an RPC call: publish, process and dispatch spans
//! share the caller's trace. Its own test binary: it installs the global subscriber.

mod support;

use std::time::Duration;

use support::{BOUND, EchoServer, Rig, text};
use switchyard_executor::Phase;
use switchyard_messaging::{RpcClient, Target};
use switchyard_proto::echo::v1::SayReply;
use switchyard_telemetry::receiver::{find_span, has_spans};
use tracing::Instrument;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_spans_carry_the_callers_trace() {
    let (receiver, telemetry) = switchyard_telemetry::receiver::capture("amqp-trace", "bridged")
        .await
        .expect("telemetry");

    let rig = Rig::new().await;
    let echo = EchoServer::start(&rig.transport, rig.exchange(), Phase::Bridged, 2).await;
    let client = RpcClient::new(&rig.transport).await.expect("client");
    let caller = tracing::info_span!("caller");
    let _: SayReply = client
        .call(
            &Target::topic(rig.exchange(), "echo"),
            "say",
            &text("traced"),
            BOUND,
        )
        .instrument(caller.clone())
        .await
        .expect("reply");
    drop(caller);
    echo.stop().await;
    telemetry.flush();

    // Named by the messaging conventions: operation, then the exchange.
    let process_name = format!("process {}", rig.exchange());
    let spans = receiver
        .wait_for(Duration::from_secs(10), |spans| {
            has_spans(spans, &["caller", "dispatch say", process_name.as_str()])
        })
        .await
        .unwrap_or_else(|spans| panic!("spans never arrived: {spans:#?}"));
    let find = |name: &str| find_span(&spans, name).unwrap_or_else(|| panic!("no span {name}"));
    let caller = find("caller");
    let publish = find(&format!("publish {}", rig.exchange()));
    let process = find(&process_name);
    let dispatch = find("dispatch say");
    assert_eq!(publish.parent_span_id, caller.span_id);
    assert_eq!(
        process.trace_id, caller.trace_id,
        "the consumer joined the caller's trace"
    );
    assert_eq!(
        process.parent_span_id, publish.span_id,
        "process is a child of publish"
    );
    assert_eq!(
        dispatch.parent_span_id, process.span_id,
        "dispatch is a child of process"
    );
    assert_eq!(dispatch.attribute("switchyard.phase"), Some("bridged"));
    assert_eq!(process.attribute("messaging.system"), Some("rabbitmq"));
    assert_eq!(
        process.attribute("messaging.operation.type"),
        Some("process")
    );
    assert_eq!(
        process.attribute("messaging.operation.name"),
        Some("process")
    );
    assert_eq!(publish.attribute("messaging.operation.type"), Some("send"));
    assert_eq!(
        publish.attribute("messaging.operation.name"),
        Some("publish")
    );
    for span in [publish, process] {
        assert_eq!(
            span.attribute("messaging.destination.name"),
            Some(rig.exchange()),
            "{span:?}"
        );
        // The OTLP value type: a number, not a string.
        assert_eq!(
            span.value_type("messaging.message.body.size"),
            Some("int"),
            "{span:?}"
        );
    }
    assert_eq!(
        process.attribute("messaging.destination.subscription.name"),
        Some(format!("{}.echo", rig.exchange()).as_str())
    );
    assert_eq!(
        publish.attribute("messaging.rabbitmq.destination.routing_key"),
        Some("echo")
    );
    assert!(
        !publish
            .attribute("messaging.message.id")
            .unwrap_or_default()
            .is_empty()
    );
    rig.cleanup(&["echo"], &[]).await;
    telemetry.shutdown();
}
