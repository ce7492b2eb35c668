//! The real `switchyard-echo` process: serves gRPC and metrics, and on SIGTERM
//! lets the call in flight finish before exiting 0. (Its launcher: `launcher.rs`.)

mod support;

use std::io::{Read, Write};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use switchyard_proto::echo::v1::SayRequest;
use switchyard_proto::echo::v1::echo_client::EchoClient;
use switchyard_telemetry::receiver::OtlpReceiver;

const ECHO: &str = env!("CARGO_BIN_EXE_switchyard-echo");
const BOUND: Duration = Duration::from_secs(15);

/// An OTLP receiver on a loopback port, and its endpoint URL.
async fn otlp_receiver() -> (OtlpReceiver, String) {
    let receiver = OtlpReceiver::loopback().await.expect("an OTLP receiver");
    let endpoint = receiver.endpoint();
    (receiver, endpoint)
}

/// The address that follows `marker` in a log line.
fn address_after(line: &str, marker: &str) -> Option<String> {
    let start = line.find(marker)? + marker.len();
    let address: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    (!address.is_empty()).then_some(address)
}

fn get_metrics(address: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
}

struct Echo {
    child: Child,
    grpc: String,
    metrics: String,
    log: mpsc::Receiver<String>,
}

impl Drop for Echo {
    /// A test that failed half-way leaves no process behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_echo(phase: &str) -> Echo {
    start_echo_with(phase, &[])
}

impl Echo {
    /// One `Say` on a fresh connection; it must succeed.
    async fn say(&self, text: &str) {
        let mut client = EchoClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect");
        client
            .say(SayRequest {
                text: text.into(),
                wait_ms: 0,
            })
            .await
            .expect("say");
    }

    /// SIGTERM; the process must exit 0 (having flushed its spans).
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().expect("exits");
        assert!(status.success(), "{status:?}");
    }

    /// Reads log lines until `pick` returns something; gives up after
    /// [`BOUND`], saying it waited for `what`.
    fn line<T>(&self, what: &str, mut pick: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + BOUND;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .log
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what} in the log within {BOUND:?}"));
            if let Some(picked) = pick(&line) {
                return picked;
            }
        }
    }
}

/// The echo binary with none of this process's `SWITCHYARD_` or `OTEL_`
/// variables: each test says what it sets.
fn echo_command() -> Command {
    let mut command = Command::new(ECHO);
    for (key, _) in std::env::vars() {
        if key.starts_with("SWITCHYARD_") || key.starts_with("OTEL_") {
            command.env_remove(key);
        }
    }
    command.current_dir(std::env::temp_dir());
    command
}

fn start_echo_with(phase: &str, env: &[(&str, &str)]) -> Echo {
    let (child, log) = switchyard_testkit::spawn_logged(
        echo_command()
            .envs(env.iter().copied())
            .env("SWITCHYARD_EXECUTOR__PHASE", phase)
            .env("SWITCHYARD_EXECUTOR__POOL_SIZE", "2")
            .env("SWITCHYARD_METRICS__LISTEN", "127.0.0.1:0")
            .env("SWITCHYARD_GRPC__LISTEN", "127.0.0.1:0"),
    );
    let (mut grpc, mut metrics) = (None, None);
    while grpc.is_none() || metrics.is_none() {
        let line = log
            .recv_timeout(BOUND)
            .expect("echo announces its addresses");
        grpc = grpc.or_else(|| address_after(&line, "gRPC on "));
        metrics = metrics.or_else(|| address_after(&line, "metrics on http://"));
    }
    Echo {
        child,
        grpc: grpc.expect("grpc"),
        metrics: metrics.expect("metrics"),
        log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_call_in_flight_and_exits_zero() {
    let mut echo = start_echo("bridged");
    let metrics = get_metrics(&echo.metrics);
    assert!(
        metrics.contains("switchyard_executor_info{service=\"echo\",phase=\"bridged\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_executor_capacity{service=\"echo\",phase=\"bridged\"} 2"),
        "{metrics}"
    );

    let mut client = EchoClient::connect(format!("http://{}", echo.grpc))
        .await
        .expect("connect");
    let call = tokio::spawn(async move {
        client
            .say(SayRequest {
                text: "drain me".into(),
                wait_ms: 700,
            })
            .await
    });
    let in_flight = "switchyard_endpoint_in_flight{service=\"echo\",phase=\"bridged\",endpoint=\"Echo/Say\",form=\"async\"} 1";
    let started = Instant::now();
    while !get_metrics(&echo.metrics).contains(in_flight) {
        assert!(
            started.elapsed() < BOUND,
            "the call never showed up in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let kill = Command::new("kill")
        .args(["-TERM", &echo.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    assert_eq!(support::answered(call, BOUND).await.text, "drain me");

    let status =
        tokio::task::block_in_place(|| switchyard_testkit::wait_exit(&mut echo.child, BOUND))
            .expect("echo exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    let log: Vec<String> = echo.log.try_iter().collect();
    assert!(
        log.iter().any(|l| l.contains("SIGTERM received; draining")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("all in-flight work finished")),
        "{log:?}"
    );
}

/// The OpenTelemetry environment variables, as the SDK's specification has
/// them: the signal-specific endpoint alone is enough; `OTEL_SDK_DISABLED`
/// turns export off; a protocol this build does not have is a configuration
/// error (exit 2) naming the variable, not a silent lack of spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_otel_environment_variables_decide_where_spans_go() {
    let (receiver, traces) = otlp_receiver().await;
    let echo = start_echo_with(
        "async",
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces.as_str())],
    );
    echo.say("traced").await;
    echo.stop();
    receiver
        .wait_for(BOUND, |spans| spans.iter().any(|s| s.service == "echo"))
        .await
        .expect("spans exported with only the traces endpoint set");

    let (quiet, quiet_endpoint) = otlp_receiver().await;
    let echo = start_echo_with(
        "async",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", quiet_endpoint.as_str()),
            ("OTEL_SDK_DISABLED", "true"),
        ],
    );
    echo.say("traced").await;
    // A clean exit flushes whatever was to be exported: nothing.
    echo.stop();
    assert!(
        quiet.spans().is_empty(),
        "OTEL_SDK_DISABLED=true exported spans"
    );

    // What this build cannot honour is refused by name, with what it takes.
    for (variable, value, accepted) in [
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "http/json",
            "accepted: grpc, http/protobuf",
        ),
        (
            "OTEL_PROPAGATORS",
            "tracecontext,b3",
            "accepted: a comma-separated list of tracecontext, baggage; or none",
        ),
        (
            "OTEL_METRICS_EXPORTER",
            "statsd",
            "accepted: prometheus, otlp, none",
        ),
    ] {
        let refused = echo_command()
            .env("SWITCHYARD_GRPC__LISTEN", "127.0.0.1:0")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &traces)
            .env(variable, value)
            .output()
            .expect("runs");
        assert_eq!(refused.status.code(), Some(2), "{variable}={value}");
        let text = String::from_utf8_lossy(&refused.stderr);
        assert!(
            text.contains(&format!("{variable} (from the environment): `{value}`"))
                && text.contains(accepted),
            "{text}"
        );
    }
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`: spans go to `/v1/traces`
/// of the endpoint; with `OTEL_METRICS_EXPORTER=otlp` the executor's
/// counters and histograms go to `/v1/metrics`, cumulative, with the status
/// code of each answer. Over gRPC the same metrics arrive too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_go_over_otlp_http_and_grpc() {
    use switchyard_telemetry::receiver::{Protocol, ReceivedPoint, find_point};
    let said = |points: &[ReceivedPoint], name: &str| {
        points
            .iter()
            .filter(|p| {
                p.service == "echo"
                    && p.name == name
                    && p.attributes.get("endpoint").map(String::as_str) == Some("Echo/Say")
            })
            .map(|p| p.value)
            .fold(0.0, f64::max)
    };
    for protocol in [Protocol::HttpProtobuf, Protocol::Grpc] {
        let receiver = OtlpReceiver::loopback_with(protocol)
            .await
            .expect("receiver");
        let endpoint = receiver.endpoint();
        let wire = match protocol {
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::Grpc => "grpc",
        };
        let echo = start_echo_with(
            "async",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", wire),
                ("OTEL_METRICS_EXPORTER", "otlp"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
                ("SWITCHYARD_TELEMETRY__EXPORT_DELAY_MS", "100"),
            ],
        );
        echo.say("one").await;
        echo.say("two").await;
        let points = receiver
            .wait_for_points(BOUND, |points| {
                said(points, "switchyard.endpoint.completed") >= 2.0
                    && said(points, "switchyard.endpoint.run") >= 2.0
                    && said(points, "switchyard.endpoint.responses") >= 2.0
            })
            .await
            .unwrap_or_else(|points| panic!("{wire}: metrics never arrived: {points:#?}"));
        let completed = find_point(&points, "switchyard.endpoint.completed").expect("completed");
        assert!(
            completed.kind == "sum" && completed.monotonic,
            "{completed:?}"
        );
        assert_eq!(
            completed.attributes.get("phase").map(String::as_str),
            Some("async")
        );
        let responses = find_point(&points, "switchyard.endpoint.responses").expect("responses");
        assert_eq!(
            responses.attributes.get("code").map(String::as_str),
            Some("OK"),
            "{responses:?}"
        );
        assert!(
            points
                .iter()
                .any(|p| p.name == "switchyard.endpoint.run" && p.kind == "histogram"),
            "{points:#?}"
        );
        receiver
            .wait_for(BOUND, |spans| {
                spans
                    .iter()
                    .any(|s| s.service == "echo" && s.name == "switchyard.echo.v1.Echo/Say")
            })
            .await
            .unwrap_or_else(|spans| panic!("{wire}: no server span arrived: {spans:#?}"));
        echo.stop();
    }
}

/// JSON logs carry the message, the service, the instance and — inside a
/// traced request — the trace and span ids at the top level, and the trace
/// id is the one the exported spans have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_lead_to_their_trace() {
    let (receiver, traces) = otlp_receiver().await;
    // A Say that blocks its thread in `async`: the slow-poll warning is
    // logged inside the request's dispatch span.
    let echo = start_echo_with(
        "async",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", traces.as_str()),
            ("SWITCHYARD_TELEMETRY__LOG_FORMAT", "json"),
            ("SWITCHYARD_TELEMETRY__EXPORT_DELAY_MS", "100"),
            ("SWITCHYARD_ECHO__BLOCK_MS", "30"),
        ],
    );
    echo.say("blocking").await;
    let line = echo.line("slow-poll warning", |line| {
        let Ok(json) = serde_json::from_str::<serde_json::Value>(line) else {
            panic!("not a JSON line: {line}");
        };
        json["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("slow poll"))
            .then_some(json)
    });
    assert_eq!(line["service"], "echo", "{line}");
    assert_eq!(line["level"], "WARN", "{line}");
    assert!(
        line["instance"].as_str().is_some_and(|i| !i.is_empty()),
        "{line}"
    );
    assert!(line.get("fields").is_none(), "{line}");
    let trace_id = line["trace_id"].as_str().expect("trace_id").to_string();
    assert_eq!(trace_id.len(), 32, "{line}");
    assert_eq!(line["span_id"].as_str().map(str::len), Some(16), "{line}");
    receiver
        .wait_for(BOUND, |spans| spans.iter().any(|s| s.trace_id == trace_id))
        .await
        .expect("the log line's trace was exported");
}

/// The metrics page is OpenMetrics that the Prometheus project's parser
/// accepts, served as such, with the build and the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_openmetrics_with_build_and_process_metrics() {
    let mut echo = start_echo("bridged");
    echo.say("counted").await;
    let response = get_metrics(&echo.metrics);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    let _ = echo.child.kill();
    let _ = echo.child.wait();
    for needle in [
        "switchyard_build_info{service=\"echo\",version=\"",
        "\nprocess_resident_memory_bytes ",
        "\nprocess_open_fds ",
        "\nprocess_cpu_seconds_total ",
        "\nprocess_start_time_seconds ",
        // Answers by gRPC status code.
        "\nswitchyard_endpoint_responses_total{service=\"echo\",phase=\"bridged\",endpoint=\"Echo/Say\",form=\"async\",code=\"OK\"} 1\n",
    ] {
        assert!(body.contains(needle), "no `{needle}` in:\n{body}");
    }
    assert!(
        response.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{response}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    support::openmetrics_accepts(&body);
}

/// An exporter pointed at a collector that is not there says so: a
/// warning naming the endpoint, not silence while spans are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_trace_export_is_reported() {
    let endpoint = format!("http://127.0.0.1:{}", switchyard_testkit::free_port());
    let echo = start_echo_with(
        "async",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("SWITCHYARD_TELEMETRY__EXPORT_DELAY_MS", "100"),
        ],
    );
    echo.say("lost").await;
    let needle = format!("trace export to {endpoint} failed");
    let line = echo.line("warning about the failed export", |line| {
        line.contains(&needle).then(|| line.to_string())
    });
    assert!(line.contains("WARN"), "{line}");
}
