//! Trace context crosses a gRPC call: the server's spans join the client's
//! trace. Its own test binary: it installs the global subscriber.

mod support;

use std::time::Duration;

use switchyard_executor::Phase;
use switchyard_grpc::TraceInterceptor;
use switchyard_proto::echo::v1::SayRequest;
use switchyard_proto::echo::v1::echo_client::EchoClient;
use tracing::Instrument;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_spans_join_the_callers_trace() {
    let (receiver, telemetry) = switchyard_telemetry::receiver::capture("grpc-trace", "bridged")
        .await
        .expect("telemetry");

    let server = support::start(Phase::Bridged, 2, Duration::from_secs(1)).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = EchoClient::with_interceptor(channel, TraceInterceptor);
    let caller = tracing::info_span!("caller");
    client
        .say(SayRequest {
            text: "traced".into(),
            wait_ms: 0,
        })
        .instrument(caller.clone())
        .await
        .expect("reply");
    drop(caller);
    telemetry.flush();

    let spans = receiver
        .wait_for(Duration::from_secs(10), |spans| {
            ["caller", "switchyard.echo.v1.Echo/Say", "dispatch Echo/Say"]
                .iter()
                .all(|name| spans.iter().any(|s| s.name == *name))
        })
        .await
        .unwrap_or_else(|spans| panic!("spans never arrived: {spans:#?}"));
    let caller = spans.iter().find(|s| s.name == "caller").expect("caller");
    let server_span = spans
        .iter()
        .find(|s| s.name == "switchyard.echo.v1.Echo/Say")
        .expect("server span, named package.Service/Method");
    let dispatch = spans
        .iter()
        .find(|s| s.name == "dispatch Echo/Say")
        .expect("dispatch");
    assert_eq!(
        server_span.trace_id, caller.trace_id,
        "the server joined the caller's trace"
    );
    assert_eq!(server_span.parent_span_id, caller.span_id);
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
