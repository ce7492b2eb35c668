//! What the test suites of several crates share (a dev-dependency only):
//! a loopback port for a service that must be told its port, the services
//! a gRPC server lists by reflection, a log a test can read, bounded
//! waits for a child process and a command, a TCP proxy that can be cut
//! off and restored, and connections that reach every phase of an echo
//! launcher's workers.

#![warn(missing_docs)]

pub mod echo;
mod proxy;

pub use proxy::Proxy;

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use tonic::transport::Channel;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// A loopback port nothing listens on, for a service that must be told its
/// port before it starts (a worker sharing it with `SO_REUSEPORT`, a service
/// that binds it again after rebuilding, a port published by Docker, an
/// address that must refuse connections). Taken below the kernel's
/// ephemeral range (`ip_local_port_range`, 32768–60999 here), so no
/// port-0 bind — a client's, a service's — can be handed it between this
/// check and the service's bind. Never the same port twice in one process,
/// so two tests of one binary cannot both be told a port before either
/// binds it; test binaries running side by side pick at random, so two
/// rarely meet.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let port = 20_000 + (hasher.finish() % 12_000) as u16;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
}

/// The names of the services the server behind `channel` lists by gRPC
/// reflection (v1), sorted; asked with `authorization` metadata when given.
/// `Err` is the server's refusal, or a reply that is not a list.
pub async fn reflected_services(
    channel: Channel,
    authorization: Option<&str>,
) -> Result<Vec<String>, tonic::Status> {
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut request = tonic::Request::new(tokio_stream::once(list));
    if let Some(authorization) = authorization {
        let value = authorization
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("authorization: not ASCII"))?;
        request.metadata_mut().insert("authorization", value);
    }
    let response = ServerReflectionClient::new(channel)
        .server_reflection_info(request)
        .await?
        .into_inner()
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unknown("reflection: the stream ended without a reply"))?;
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(listed)) => {
            let mut names: Vec<String> = listed.service.into_iter().map(|s| s.name).collect();
            names.sort();
            Ok(names)
        }
        other => Err(tonic::Status::unknown(format!(
            "reflection: not a list of services: {other:?}"
        ))),
    }
}

/// What was logged, for a test to read: give a clone to a `tracing`
/// subscriber as its writer (`with_writer(log.clone())`), from any thread.
#[derive(Clone, Debug, Default)]
pub struct Log(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.locked().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;

    fn make_writer(&'a self) -> Log {
        self.clone()
    }
}

impl Log {
    /// This process's log: the first call installs a global `tracing`
    /// subscriber that writes plain text to it, every call returns it. For
    /// a test binary whose code logs from threads of its own (a watchdog,
    /// a runtime's workers), where a thread-local subscriber sees nothing.
    pub fn global() -> Log {
        static GLOBAL: std::sync::OnceLock<Log> = std::sync::OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let log = Log::default();
                let _ = tracing_subscriber::fmt()
                    .with_writer(log.clone())
                    .with_ansi(false)
                    .try_init();
                log
            })
            .clone()
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.locked()).into_owned()
    }

    /// The text, poisoned or not (as `switchyard_executor::sync::lock`):
    /// refusing a poisoned lock would silence the log for the rest of the
    /// test binary.
    fn locked(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Waits at most `bound` for `child` to exit: its status, or `None` (the
/// child is then killed, so that no test leaves a process behind). Polls,
/// because `Child::wait` cannot be bounded; call it from a thread that may
/// block (in a multi-threaded Tokio test, inside `block_in_place`).
pub fn wait_exit(
    child: &mut std::process::Child,
    bound: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let started = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if started.elapsed() < bound => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Runs `command` to its end and insists that it succeeded: its output.
/// The panic names `what` and quotes the command's stderr.
pub fn succeeded(command: &mut std::process::Command, what: &str) -> std::process::Output {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{what} does not run: {error}"));
    assert!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Starts `command` logging at `info` without colours to a piped stderr
/// (stdout discarded); returns the child and its log lines.
pub fn spawn_logged(
    command: &mut std::process::Command,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::process::Stdio;
    let mut child = command
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the service starts");
    let lines = log_lines(&mut child);
    (child, lines)
}

/// The lines `child` writes to its (piped) stderr, read on a thread until
/// the pipe closes.
pub fn log_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().expect("stderr is piped");
    let (lines, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_never_gives_one_process_the_same_port_twice() {
        // 1,000 draws from 12,000 ports: at random, a repeat is all but
        // certain (the birthday bound puts it above 1 − e⁻⁴⁰).
        let ports: Vec<u16> = (0..1_000).map(|_| free_port()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(ports.iter().all(|port| (20_000..32_000).contains(port)));
    }
}
