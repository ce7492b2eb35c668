//! Trace context crosses a gRPC call: the caller's CLIENT span is the parent
//! of the server's span, the caller's remaining deadline reaches the server,
//! and both sides mark a failed call by the RPC conventions. Its own test
//! binary: it installs the global subscriber.

mod support;

use std::time::Duration;

use switchyard_executor::Phase;
use switchyard_grpc::client::{Traced, deadline};
use switchyard_proto::echo::v1::SayRequest;
use switchyard_proto::echo::v1::echo_client::EchoClient;
use switchyard_telemetry::receiver::{find_span, has_spans};
use tracing::Instrument;

/// A Say that takes `wait_ms`, from a caller with `left` before its
/// deadline (sent as `grpc-timeout`).
fn say_within(text: &str, wait_ms: u32, left: Duration) -> tonic::Request<SayRequest> {
    let request = SayRequest {
        text: text.into(),
        wait_ms,
    };
    deadline(tonic::Request::new(request), Some(left))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_spans_join_the_callers_trace() {
    let (receiver, telemetry) = switchyard_telemetry::receiver::capture("grpc-trace", "bridged")
        .await
        .expect("telemetry");

    let server = support::start(Phase::Bridged, 2, Duration::from_secs(1)).await;
    let channel = server.channel().await;
    let url = server.url();
    let mut client = EchoClient::new(Traced::new(channel, &url));
    let caller = tracing::info_span!("caller");
    // The caller has 5 s left and says so.
    client
        .say(say_within("traced", 0, Duration::from_secs(5)))
        .instrument(caller.clone())
        .await
        .expect("reply");
    drop(caller);
    // 100 ms left for a call that takes 2 s: the server gives up first.
    let late = tracing::info_span!("late caller");
    let status = client
        .say(say_within("late", 2000, Duration::from_millis(100)))
        .instrument(late.clone())
        .await
        .expect_err("past its deadline");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    drop(late);
    telemetry.flush();

    let name = "switchyard.echo.v1.Echo/Say";
    let spans = receiver
        .wait_for(Duration::from_secs(10), |spans| {
            has_spans(spans, &["caller", "late caller", "dispatch Echo/Say"])
                && spans.iter().filter(|s| s.name == name).count() == 4
        })
        .await
        .unwrap_or_else(|spans| panic!("spans never arrived: {spans:#?}"));
    let find = |name: &str| find_span(&spans, name).unwrap_or_else(|| panic!("no span {name}"));
    let child_of = |parent: &switchyard_telemetry::receiver::ReceivedSpan| {
        spans
            .iter()
            .find(|s| s.parent_span_id == parent.span_id)
            .unwrap_or_else(|| panic!("no child of {parent:?}"))
    };
    let caller = find("caller");
    let client_span = child_of(caller);
    assert_eq!(client_span.name, name, "{client_span:?}");
    assert_eq!(client_span.kind, "client");
    assert_eq!(client_span.attribute("rpc.system"), Some("grpc"));
    assert_eq!(
        client_span.attribute("rpc.service"),
        Some("switchyard.echo.v1.Echo")
    );
    assert_eq!(client_span.attribute("rpc.method"), Some("Say"));
    assert_eq!(client_span.attribute("server.address"), Some("127.0.0.1"));
    assert_eq!(client_span.value_type("server.port"), Some("int"));
    assert_eq!(client_span.attribute("rpc.grpc.status_code"), Some("0"));
    assert_eq!(client_span.status, "unset");
    let server_span = child_of(client_span);
    assert_eq!(server_span.name, name, "{server_span:?}");
    assert_eq!(server_span.kind, "server");
    // The address the caller used, as the server saw it (`:authority`).
    assert_eq!(server_span.attribute("server.address"), Some("127.0.0.1"));
    let dispatch = child_of(server_span);
    assert_eq!(dispatch.name, "dispatch Echo/Say");
    // The deadline crossed as `grpc-timeout`: the server knew what was left.
    let left: u64 = dispatch
        .attribute("switchyard.deadline_ms")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no deadline reached the server: {dispatch:?}"));
    assert!(left > 0 && left <= 5000, "{left} ms");
    assert_eq!(
        server_span.trace_id, caller.trace_id,
        "the server joined the caller's trace"
    );
    assert_eq!(dispatch.trace_id, caller.trace_id);
    assert_eq!(dispatch.parent_span_id, server_span.span_id);
    assert_eq!(dispatch.attribute("switchyard.phase"), Some("bridged"));
    assert_eq!(server_span.attribute("rpc.grpc.status_code"), Some("0"));
    assert_eq!(
        server_span.attribute("rpc.service"),
        Some("switchyard.echo.v1.Echo")
    );
    assert_eq!(server_span.attribute("rpc.method"), Some("Say"));
    assert_eq!(server_span.attribute("error.type"), None);

    // The late call: both sides say how it ended, as an error.
    let late = find("late caller");
    let late_client = child_of(late);
    assert_eq!(late_client.kind, "client");
    assert_eq!(late_client.status, "error");
    assert_eq!(late_client.attribute("rpc.grpc.status_code"), Some("4"));
    assert_eq!(
        late_client.attribute("error.type"),
        Some("DEADLINE_EXCEEDED")
    );
    let late_server = child_of(late_client);
    assert_eq!(late_server.kind, "server");
    assert_eq!(late_server.status, "error");
    assert_eq!(
        late_server.attribute("error.type"),
        Some("DEADLINE_EXCEEDED")
    );
    // None of the default noise (the executor still says on which thread
    // a body ran: `thread.name` on the dispatch span).
    for span in &spans {
        for noise in [
            "code.filepath",
            "code.lineno",
            "thread.id",
            "busy_ns",
            "idle_ns",
        ] {
            assert_eq!(span.attribute(noise), None, "{} carries {noise}", span.name);
        }
    }
    server.shutdown.cancel();
    telemetry.shutdown();
}
