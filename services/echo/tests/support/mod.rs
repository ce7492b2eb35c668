//! Starts echo's gRPC server in-process on 127.0.0.1:0, in a given phase;
//! reads the log of an echo process.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use switchyard_echo::{EchoService, GRPC_SERVICE};
use switchyard_executor::{Executor, ExecutorConfig, Phase};
use switchyard_grpc::{GrpcConfig, Readiness};
use tokio_util::sync::CancellationToken;

pub struct EchoServerHandle {
    pub address: SocketAddr,
    pub readiness: Readiness,
    pub executor: Executor,
    pub shutdown: CancellationToken,
    pub served: tokio::task::JoinHandle<Result<(), switchyard_grpc::GrpcError>>,
}

impl EchoServerHandle {
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A new connection to the server.
    pub async fn channel(&self) -> tonic::transport::Channel {
        connect(self.url()).await
    }
}

/// A connection to `url`.
pub async fn connect(url: String) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url)
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

pub async fn start(phase: Phase, capacity: usize, overload_wait: Duration) -> EchoServerHandle {
    start_with(phase, capacity, overload_wait, None).await
}

/// Like [`start`], serving TLS when `tls` is set.
pub async fn start_with(
    phase: Phase,
    capacity: usize,
    overload_wait: Duration,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> EchoServerHandle {
    let executor = Executor::new(
        "echo",
        ExecutorConfig {
            phase,
            pool_size: capacity,
            max_in_flight: capacity,
            ..ExecutorConfig::default()
        },
    )
    .expect("executor");
    let grpc = GrpcConfig {
        overload_wait_ms: overload_wait.as_millis() as u64,
        ..GrpcConfig::default()
    };
    let echo =
        EchoService::register(&executor, &grpc, &Default::default()).expect("phase runs echo");
    let (readiness, health) = Readiness::new(&[GRPC_SERVICE]).await;
    let routes = switchyard_grpc::base_routes(
        health,
        switchyard_proto::FILE_DESCRIPTOR_SET,
        &[GRPC_SERVICE],
        switchyard_grpc::open_access,
    )
    .expect("reflection")
    .add_service(echo.into_server(64 * 1024));
    let listener = switchyard_grpc::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(switchyard_grpc::serve(
        listener,
        routes,
        tls,
        switchyard_grpc::ConnectionLimits::default(),
        readiness.clone(),
        shutdown.clone(),
    ));
    EchoServerHandle {
        address,
        readiness,
        executor,
        shutdown,
        served,
    }
}

/// What a spawned call answered; it must succeed within `bound`.
pub async fn answered<T>(
    call: tokio::task::JoinHandle<Result<tonic::Response<T>, tonic::Status>>,
    bound: Duration,
) -> T {
    tokio::time::timeout(bound, call)
        .await
        .expect("the call finished in time")
        .expect("the call's task ran")
        .expect("the call succeeded")
        .into_inner()
}

/// The OpenMetrics parser of the Prometheus project's Python client,
/// strict about the format (HELP and TYPE once per family, counter and
/// histogram sample names, bucket order, escaping, `# EOF`), and a few
/// naming rules besides: every family has help text and no name is typed
/// twice.
const CHECK_OPENMETRICS: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
names = []
for family in text_string_to_metric_families(sys.stdin.read()):
    assert family.documentation, f"{family.name}: no help text"
    assert family.name not in names, f"{family.name}: two families"
    names.append(family.name)
print(len(names), "families")
"#;

/// Asserts that the Prometheus project's OpenMetrics parser accepts `text`
/// (Python, from the test environment `scripts/test` makes; `E2E_PYTHON`).
pub fn openmetrics_accepts(text: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let python = std::env::var_os("E2E_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/tmp/switchyard-venv/bin/python".into());
    assert!(
        python.exists(),
        "{} is missing: scripts/test makes it (examples/python/requirements.txt); or set E2E_PYTHON",
        python.display()
    );
    let mut check = Command::new(python)
        .args(["-c", CHECK_OPENMETRICS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("metrics written");
    let checked = check.wait_with_output().expect("the parser finished");
    assert!(
        checked.status.success(),
        "the OpenMetrics parser refused the text: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}
