//! The launcher: `[launcher] workers = N` runs N worker processes of the
//! service under one supervisor.
//!
//! Workers are started by re-executing this binary with the same arguments
//! and environment plus `SWITCHYARD_WORKER=<index>` — never by forking a
//! process that already has threads and a runtime, the trap the original
//! plan's service launcher fell into. Workers compete on the AMQP queues and
//! share their gRPC and metrics ports with `SO_REUSEPORT` (the kernel spreads
//! new connections across them), so a worker can be replaced without closing
//! the port. A worker that dies is started again with backoff; SIGTERM or
//! SIGINT to the supervisor drains every worker.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Set in a worker's environment: its index.
pub const WORKER_VARIABLE: &str = "SWITCHYARD_WORKER";

/// The `[launcher]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LauncherConfig {
    /// Worker processes; 1 runs the service in this process, no supervisor.
    pub workers: usize,
    /// First delay before a dead worker is started again; doubles while it
    /// keeps dying, at most 30 s.
    pub restart_backoff_ms: u64,
}

impl Default for LauncherConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            restart_backoff_ms: 500,
        }
    }
}

impl LauncherConfig {
    /// Range checks, relative to the section.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        if (1..=64).contains(&self.workers) {
            Vec::new()
        } else {
            vec![(
                "workers",
                format!("{} is out of range; accepted: 1 to 64", self.workers),
            )]
        }
    }
}

/// `true` in a worker started by the launcher.
pub fn is_worker() -> bool {
    std::env::var_os(WORKER_VARIABLE).is_some()
}

/// Runs the supervisor until SIGTERM/SIGINT; exits 0 when every worker
/// drained within `grace`.
pub fn supervise(service: &str, config: &LauncherConfig, grace: Duration) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{service} launcher: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(service, config, grace))
}

fn spawn(index: usize) -> std::io::Result<tokio::process::Child> {
    let exe = std::env::current_exe()?;
    tokio::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(WORKER_VARIABLE, index.to_string())
        .kill_on_drop(false)
        .spawn()
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

async fn run(service: &str, config: &LauncherConfig, grace: Duration) -> ExitCode {
    let base = Duration::from_millis(config.restart_backoff_ms.max(1));
    let (exits_tx, mut exits) = tokio::sync::mpsc::unbounded_channel::<(usize, u32, String)>();
    let mut pids: HashMap<usize, (u32, Instant)> = HashMap::new();
    let mut backoff: HashMap<usize, Duration> = HashMap::new();
    let start = |index: usize, pids: &mut HashMap<usize, (u32, Instant)>| match spawn(index) {
        Ok(mut child) => {
            let pid = child.id().unwrap_or(0);
            tracing::info!(
                worker = index,
                pid,
                "{service} launcher: worker {index} started (pid {pid})"
            );
            pids.insert(index, (pid, Instant::now()));
            let exits = exits_tx.clone();
            tokio::spawn(async move {
                let status = match child.wait().await {
                    Ok(status) => status.to_string(),
                    Err(error) => format!("unknown ({error})"),
                };
                let _ = exits.send((index, pid, status));
            });
        }
        Err(error) => tracing::error!("{service} launcher: cannot start worker {index}: {error}"),
    };
    for index in 0..config.workers {
        start(index, &mut pids);
    }
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!("{service} launcher: cannot listen for SIGTERM: {error}");
                return ExitCode::FAILURE;
            }
        };
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            Some((index, pid, status)) = exits.recv() => {
                let lived = pids.remove(&index).map(|(_, since)| since.elapsed()).unwrap_or_default();
                let delay = if lived > Duration::from_secs(30) {
                    base
                } else {
                    backoff.get(&index).map(|d| (*d * 2).min(Duration::from_secs(30))).unwrap_or(base)
                };
                backoff.insert(index, delay);
                tracing::warn!(
                    worker = index, pid,
                    "{service} launcher: worker {index} (pid {pid}) exited with {status} after {:.1} s; starting it again in {delay:?}",
                    lived.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
                start(index, &mut pids);
            }
        }
    }
    tracing::info!("{service} launcher: draining {} worker(s)", pids.len());
    for (pid, _) in pids.values() {
        signal(*pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + grace + Duration::from_secs(5);
    let mut clean = true;
    while !pids.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, exits.recv()).await {
            Ok(Some((index, pid, status))) => {
                pids.remove(&index);
                // A worker still starting has no SIGTERM handler yet and so
                // dies of the signal itself — before it could take any work.
                if status != "exit status: 0" && !status.contains("SIGTERM") {
                    clean = false;
                }
                tracing::info!(
                    worker = index,
                    pid,
                    "{service} launcher: worker {index} (pid {pid}) stopped: {status}"
                );
            }
            _ => {
                for (index, (pid, _)) in &pids {
                    tracing::error!(
                        "{service} launcher: worker {index} (pid {pid}) did not stop within the grace period; killing it"
                    );
                    signal(*pid, rustix::process::Signal::KILL);
                }
                return ExitCode::FAILURE;
            }
        }
    }
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
