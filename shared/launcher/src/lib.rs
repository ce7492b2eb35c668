//! The launcher: `[launcher] workers = N` runs N worker processes of the
//! service under one supervisor, switches their phase on SIGHUP one worker at
//! a time, and runs a canary phase on some of them with automatic rollback.
//!
//! Workers are started by re-executing this binary with the same arguments
//! and environment plus `SWITCHYARD_WORKER=<number>` — never by forking a
//! process that already has threads and a runtime, the trap the original
//! plan's service launcher fell into. Workers compete on the AMQP queues and
//! serve gRPC on one listening socket the supervisor binds and hands to each
//! ([`inherited_listener`]), so a worker can be replaced without closing the
//! port or dropping a connection that waits on it. Each worker's phase comes
//! from the supervisor (`SWITCHYARD_EXECUTOR__PHASE`), which decides main
//! and canary phases.
//!
//! The supervisor talks to its workers over an abstract Unix socket
//! ([`switchyard_rollout::control`]; nothing in the file system to leave behind, and only
//! the processes it started are heard):
//! a worker says when it is ready and reports its executor's totals every
//! second, which is what the canary is judged on ([`switchyard_rollout::canary`]).
//!
//! - A worker that dies is started again with doubling backoff.
//! - SIGTERM or SIGINT: every worker drains; exit 0 when all did in time.
//! - SIGHUP: the configuration is checked by running this binary with
//!   `--check-config` (endpoints against the main and the canary phase), read with
//!   `--print-config`; if it is valid and differs, workers are replaced one
//!   at a time — start the new one, wait for it to be ready, drain the old.
//!   An invalid configuration is logged and the workers keep running.
//! - Canary: `[launcher.canary] phase, workers`; when the canary is worse
//!   than the main workers beyond a margin its workers are replaced by
//!   main-phase ones and a worker publishes `rollout.rolled_back`.
//!   A promote request makes the canary phase the main phase.
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_executor::Phase;
use switchyard_executor::stats::{ExecutorSnapshot, SnapshotCollector};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod listener;
mod supervisor;

pub use listener::{LISTENER_VARIABLE, inherited_listener};

use supervisor::Supervisor;

use switchyard_rollout::canary::CanaryConfig;
pub use switchyard_rollout::control::WORKER_VARIABLE;
use switchyard_rollout::control::{self, FromWorker, ToWorker, write_lines};
use switchyard_telemetry::exposition;

/// The `[launcher]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LauncherConfig {
    /// Worker processes; 1 runs the service in this process, no supervisor.
    pub workers: usize,
    /// First delay before a dead worker is started again; doubles while it
    /// keeps dying, at most 30 s.
    pub restart_backoff_ms: u64,
    /// How long a replacement worker may take to become ready before the
    /// rolling replacement stops (and the old workers stay).
    pub ready_timeout_ms: u64,
    /// `[launcher.canary]`: some workers in another phase, judged against
    /// the rest.
    pub canary: CanaryConfig,
}

impl Default for LauncherConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            restart_backoff_ms: 500,
            ready_timeout_ms: 60_000,
            canary: CanaryConfig::default(),
        }
    }
}

impl LauncherConfig {
    /// Range checks, relative to the section.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        use switchyard_config::check;
        let mut problems = check::found([
            (
                "workers",
                check::within(self.workers as u64, 1, 64, "workers"),
            ),
            (
                "ready_timeout_ms",
                check::at_least(self.ready_timeout_ms, 1, "ms"),
            ),
        ]);
        problems.extend(self.canary.problems(self.workers));
        problems
    }
}

/// `true` in a worker started by the launcher.
pub fn is_worker() -> bool {
    std::env::var_os(WORKER_VARIABLE).is_some()
}

/// In a worker: asks the kernel for SIGTERM (a drain) when the supervisor
/// dies, so no worker outlives it.
pub fn follow_supervisor() {
    if let Err(error) =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
    {
        tracing::warn!("cannot ask to be stopped with the supervisor: {error}");
    }
}

/// What the supervisor starts with: the configuration it was started with.
#[derive(Debug, Clone)]
pub struct Start {
    /// The service's name.
    pub service: String,
    /// `[launcher]`.
    pub launcher: LauncherConfig,
    /// The main phase.
    pub phase: Phase,
    /// `--print-config`'s text of the configuration, to tell a changed one.
    pub printed: String,
    /// `metrics.listen`: the supervisor serves its workers' sum there.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `grpc.listen`, when the service serves gRPC: the supervisor binds it
    /// once and every worker serves on that one socket ([`inherited_listener`]).
    pub grpc_listen: Option<std::net::SocketAddr>,
    /// `executor.shutdown_grace_ms`: how long a worker may take to drain.
    pub grace: Duration,
}

/// Runs the supervisor until SIGTERM/SIGINT; exits 0 when every worker
/// drained within the grace period.
pub fn supervise(start: Start) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{} launcher: cannot start: {error}", start.service);
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(start))
}

/// A checked configuration read back from `--print-config`.
#[derive(Debug)]
struct Reload {
    printed: String,
    launcher: LauncherConfig,
    phase: Phase,
    /// `grpc.listen`, when the service has one.
    grpc_listen: Option<std::net::SocketAddr>,
}

/// How a worker process ended: its status, or why waiting for it failed.
#[derive(Debug)]
struct Exit(Result<std::process::ExitStatus, String>);

impl Exit {
    /// Exit 0, or killed by the SIGTERM it was sent: a worker still starting
    /// has no handler yet and dies of the signal itself, before it took work.
    fn clean_after_sigterm(&self) -> bool {
        use std::os::unix::process::ExitStatusExt as _;
        match &self.0 {
            Ok(status) => {
                status.success() || status.signal() == Some(rustix::process::Signal::TERM.as_raw())
            }
            Err(_) => false,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Ok(status) => write!(f, "{status}"),
            Err(error) => write!(f, "unknown ({error})"),
        }
    }
}

#[derive(Debug)]
enum Event {
    Exited {
        id: u64,
        status: Exit,
    },
    Connected {
        id: u64,
        pid: i32,
        control: mpsc::UnboundedSender<ToWorker>,
    },
    Message {
        id: u64,
        pid: i32,
        message: FromWorker,
    },
    Restart {
        slot: usize,
    },
    Reloaded(Result<Reload, String>),
}

/// The workers' latest statistics and what the gone ones counted: what the
/// supervisor's `/metrics` serves. A gone worker's counts stay in the sum,
/// so the service's counters only grow while workers come and go (a worker's
/// last second before it left, after its last report, is not counted).
#[derive(Debug, Default)]
struct Book {
    live: BTreeMap<u64, ExecutorSnapshot>,
    retired: Vec<ExecutorSnapshot>,
}

type Books = Arc<Mutex<Book>>;

impl Book {
    fn lock(books: &Books) -> std::sync::MutexGuard<'_, Book> {
        // Every holder leaves the book whole: one insert, remove or merge.
        switchyard_executor::sync::lock(books)
    }

    fn gone(&mut self, id: u64) {
        if let Some(last) = self.live.remove(&id) {
            let last = last.retired();
            self.retired = ExecutorSnapshot::merged_by_phase(
                self.retired.iter().chain(std::iter::once(&last)),
            );
        }
    }

    fn collector(&self) -> SnapshotCollector {
        SnapshotCollector(ExecutorSnapshot::merged_by_phase(
            self.retired.iter().chain(self.live.values()),
        ))
    }
}

async fn run(start: Start) -> ExitCode {
    let service = start.service.clone();
    let books = Books::default();
    let stop_metrics = CancellationToken::new();
    if let Some(address) = start.metrics_listen {
        let served = {
            let books = Arc::clone(&books);
            let service = service.clone();
            exposition::serve_text(
                address,
                move || {
                    exposition::openmetrics([
                        Box::new(Book::lock(&books).collector()) as _,
                        Box::new(exposition::ProcessCollector::new(&service)) as _,
                    ])
                },
                stop_metrics.clone(),
            )
            .await
        };
        match served {
            Ok(bound) => {
                tracing::info!("{service} launcher: its workers' metrics on http://{bound}/metrics")
            }
            Err(error) => {
                tracing::error!("{service} launcher: cannot serve metrics on {address}: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    let code = supervise_workers(start, books).await;
    stop_metrics.cancel();
    code
}

async fn supervise_workers(start: Start, books: Books) -> ExitCode {
    let service = start.service.clone();
    let socket = format!("switchyard-{service}-{}", std::process::id());
    let listener = match control::listen(&socket) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!("{service} launcher: cannot listen on @{socket}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let (events, mut inbox) = mpsc::unbounded_channel();
    tokio::spawn(accept(listener, events.clone(), books));
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(error) => {
            tracing::error!("{service} launcher: cannot listen for signals: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut shared = None;
    if let Some(address) = start.grpc_listen {
        match listener::Shared::bind(address) {
            Ok(bound) => shared = Some(bound),
            Err(error) => {
                tracing::error!("{service} launcher: cannot listen for gRPC on {address}: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut supervisor = Supervisor::new(&start, socket, events, shared);
    supervisor.begin();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = signals.terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = signals.hangup.recv() => {
                tracing::info!("{service} launcher: SIGHUP: checking the configuration");
                let events = supervisor.events.clone();
                tokio::spawn(async move {
                    let _ = events.send(Event::Reloaded(check_configuration().await));
                });
            }
            Some(event) = inbox.recv() => supervisor.handle(event),
            _ = tick.tick() => {
                supervisor.judge();
                supervisor.advance();
            }
        }
    }
    supervisor.drain(&mut inbox, start.grace).await
}

struct Signals {
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }
}

/// Accepts worker connections; each says hello, then its lines become
/// events. The supervisor takes a connection only from the process it
/// started as that worker (the kernel's peer credentials).
async fn accept(
    listener: tokio::net::UnixListener,
    events: mpsc::UnboundedSender<Event>,
    books: Books,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let (events, books) = (events.clone(), Arc::clone(&books));
        let Some(pid) = stream.peer_cred().ok().and_then(|c| c.pid()) else {
            tracing::warn!("a control connection without peer credentials; closed");
            continue;
        };
        tokio::spawn(async move {
            let (read, write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let Ok(Some(first)) = lines.next_line().await else {
                return;
            };
            let Ok(FromWorker::Hello { worker: id }) = serde_json::from_str(&first) else {
                tracing::warn!("a control connection did not say hello; closed");
                return;
            };
            let (control, outgoing) = mpsc::unbounded_channel::<ToWorker>();
            if events.send(Event::Connected { id, pid, control }).is_err() {
                return;
            }
            tokio::spawn(write_lines(outgoing, write));
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<FromWorker>(&line) {
                    Ok(FromWorker::Stats(snapshot)) => {
                        Book::lock(&books).live.insert(id, *snapshot);
                    }
                    Ok(message) => {
                        if events.send(Event::Message { id, pid, message }).is_err() {
                            break;
                        }
                    }
                    Err(error) => tracing::warn!("unreadable line from worker {id}: {error}"),
                }
            }
            // The worker is gone (its connection closed with it).
            Book::lock(&books).gone(id);
        });
    }
}

/// Runs this binary with `--check-config` (which checks the canary phase
/// too) and `--print-config`: the same check an operator runs.
async fn check_configuration() -> Result<Reload, String> {
    let run = |extra: &'static str| async move {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let mut command = tokio::process::Command::new(exe);
        command
            .args(std::env::args_os().skip(1))
            .arg(extra)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .map_err(|_| format!("{extra} did not finish within 30 s"))?
            .map_err(|e| format!("cannot run {extra}: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
        }
    };
    run("--check-config").await?;
    let printed = run("--print-config").await?;
    let value: toml::Value = toml::from_str(&printed)
        .map_err(|e| format!("cannot read --print-config's output: {e}"))?;
    let launcher: LauncherConfig = value
        .get("launcher")
        .cloned()
        .map(|v| v.try_into())
        .transpose()
        .map_err(|e| format!("launcher: {e}"))?
        .unwrap_or_default();
    let phase: Phase = value
        .get("executor")
        .and_then(|e| e.get("phase"))
        .cloned()
        .map(|v| v.try_into())
        .transpose()
        .map_err(|e| format!("executor.phase: {e}"))?
        .unwrap_or_default();
    let grpc_listen = value
        .get("grpc")
        .and_then(|grpc| grpc.get("listen"))
        .and_then(toml::Value::as_str)
        .and_then(|listen| listen.parse().ok());
    Ok(Reload {
        printed,
        launcher,
        grpc_listen,
        phase,
    })
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}
