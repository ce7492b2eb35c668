//! The real `switchyard-echo` process: serves gRPC and metrics, and on SIGTERM
//! lets the call in flight finish before exiting 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use switchyard_proto::echo::v1::SayRequest;
use switchyard_proto::echo::v1::echo_client::EchoClient;

const ECHO: &str = env!("CARGO_BIN_EXE_switchyard-echo");
const BOUND: Duration = Duration::from_secs(15);

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

fn start_echo(phase: &str) -> Echo {
    let mut child = Command::new(ECHO)
        .current_dir(std::env::temp_dir())
        .env("SWITCHYARD_EXECUTOR__PHASE", phase)
        .env("SWITCHYARD_EXECUTOR__POOL_SIZE", "2")
        .env("SWITCHYARD_METRICS__LISTEN", "127.0.0.1:0")
        .env("SWITCHYARD_GRPC__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("echo starts");
    let stderr = child.stderr.take().expect("stderr");
    let (lines, log) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
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
    let in_flight =
        "switchyard_endpoint_in_flight{service=\"echo\",phase=\"bridged\",endpoint=\"Echo/Say\"} 1";
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
    let reply = tokio::time::timeout(BOUND, call)
        .await
        .expect("in time")
        .expect("join")
        .expect("the call finished");
    assert_eq!(reply.into_inner().text, "drain me");

    let deadline = Instant::now() + BOUND;
    let status = loop {
        if let Some(status) = echo.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "echo did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Reads log lines until one matches, returning what `pick` took from it.
fn wait_for_line<T>(log: &mpsc::Receiver<String>, mut pick: impl FnMut(&str) -> Option<T>) -> T {
    let deadline = Instant::now() + BOUND;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = log
            .recv_timeout(left)
            .expect("the expected log line in time");
        if let Some(found) = pick(&line) {
            return found;
        }
    }
}

fn started_pid(line: &str, worker: usize) -> Option<u32> {
    let marker = format!("worker {worker} started (pid ");
    let start = line.find(&marker)? + marker.len();
    line[start..].split(')').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launcher_restarts_a_dead_worker_and_drains_all_on_sigterm() {
    let port = free_port();
    let mut supervisor = Command::new(ECHO)
        .current_dir(std::env::temp_dir())
        .env("SWITCHYARD_EXECUTOR__PHASE", "bridged")
        .env("SWITCHYARD_LAUNCHER__WORKERS", "2")
        .env("SWITCHYARD_LAUNCHER__RESTART_BACKOFF_MS", "100")
        .env("SWITCHYARD_GRPC__LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("echo starts");
    let stderr = supervisor.stderr.take().expect("stderr");
    let (lines, log) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let first = wait_for_line(&log, |l| started_pid(l, 0));
    let second = wait_for_line(&log, |l| started_pid(l, 1));
    assert_ne!(first, second);
    // Both workers bind the same port.
    let mut serving = 0;
    while serving < 2 {
        wait_for_line(&log, |l| {
            l.contains(&format!("gRPC on 127.0.0.1:{port}"))
                .then_some(())
        });
        serving += 1;
    }
    let say = |text: &str| SayRequest {
        text: text.into(),
        wait_ms: 0,
    };
    let mut client = EchoClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect");
    client.say(say("before")).await.expect("served");

    // A worker killed outright is started again.
    let kill = Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let replacement = wait_for_line(&log, |l| started_pid(l, 0));
    assert_ne!(replacement, first, "a new process for worker 0");
    wait_for_line(&log, |l| {
        l.contains(&format!("gRPC on 127.0.0.1:{port}"))
            .then_some(())
    });
    let mut client = EchoClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect");
    client.say(say("after")).await.expect("still served");

    // SIGTERM drains every worker; the supervisor exits 0.
    let term = Command::new("kill")
        .args(["-TERM", &supervisor.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let deadline = Instant::now() + BOUND;
    let status = loop {
        if let Some(status) = supervisor.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the supervisor did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let rest: Vec<String> = log.try_iter().collect();
    assert_eq!(status.code(), Some(0), "{rest:#?}");
    for pid in [replacement, second] {
        let alive = Command::new("kill")
            .args(["-0", &pid.to_string()])
            .status()
            .expect("kill -0");
        assert!(!alive.success(), "worker pid {pid} is gone");
    }
}
