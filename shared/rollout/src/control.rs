//! The control channel between the launcher's supervisor and its workers: an
//! abstract Unix socket the supervisor listens on (its name in
//! `SWITCHYARD_SUPERVISOR`; Linux, no file to remove), one JSON object per
//! line each way.
//!
//! A worker says hello with its number, that it is ready (its servers and
//! consumers are up), its executor's totals every second (the canary judge's
//! input) and that somebody asked to promote the canary. The supervisor
//! tells a worker the rollout state to put in its heartbeats, and asks one
//! worker to publish a `rollout.rolled_back` notification.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_executor::Executor;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::canary::Report;

/// Set in a worker's environment: the supervisor's control socket (an
/// abstract name).
pub const SUPERVISOR_VARIABLE: &str = "SWITCHYARD_SUPERVISOR";
/// Set in a worker's environment: `main` or `canary`.
pub const ROLE_VARIABLE: &str = "SWITCHYARD_ROLE";
/// Set in a worker's environment: its number.
pub const WORKER_VARIABLE: &str = "SWITCHYARD_WORKER";

/// How often a worker reports its totals.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Worker → supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// First line: which worker this connection is.
    Hello {
        /// The worker's number (`SWITCHYARD_WORKER`).
        worker: u64,
    },
    /// Serving and consuming.
    Ready,
    /// The executor's totals so far.
    Report(Report),
    /// Somebody asked (`switchyard rollout promote`) to promote the canary.
    Promote,
    /// The executor's statistics, for the supervisor's `/metrics`.
    Stats(Box<switchyard_executor::stats::ExecutorSnapshot>),
}

/// Supervisor → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// The rollout state, for heartbeats.
    Rollout {
        /// What the heartbeats say of the rollout.
        note: String,
    },
    /// Publish this as a `rollout.rolled_back` notification.
    Announce(RolledBack),
}

/// The supervisor moved its canary workers back to the main phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    /// The service.
    pub service: String,
    /// The phase the canary ran.
    pub canary_phase: String,
    /// The phase every worker runs now.
    pub main_phase: String,
    /// `error_rate`, `p99`, `slow_polls`, or `exits` (a canary worker died).
    pub signal: String,
    /// The figures that tripped it.
    pub detail: String,
    /// The supervisor's pid.
    pub supervisor_pid: u32,
    /// The supervisor's host.
    pub host: String,
}

impl From<RolledBack> for switchyard_proto::messaging::v1::RolledBack {
    fn from(event: RolledBack) -> Self {
        Self {
            service: event.service,
            canary_phase: event.canary_phase,
            main_phase: event.main_phase,
            signal: event.signal,
            detail: event.detail,
            supervisor_pid: event.supervisor_pid,
            host: event.host,
        }
    }
}

fn address(name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

/// Listens on the abstract socket `name`.
pub fn listen(name: &str) -> std::io::Result<tokio::net::UnixListener> {
    let listener = std::os::unix::net::UnixListener::bind_addr(&address(name)?)?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

fn connect(name: &str) -> std::io::Result<tokio::net::UnixStream> {
    let stream = std::os::unix::net::UnixStream::connect_addr(&address(name)?)?;
    stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(stream)
}

type SharedWrite = Arc<tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>>;

/// Writes `message` as one JSON line; `false` when the connection is gone.
async fn write_line(write: &SharedWrite, message: &FromWorker) -> bool {
    let Ok(mut line) = serde_json::to_vec(message) else {
        return true;
    };
    line.push(b'\n');
    write.lock().await.write_all(&line).await.is_ok()
}

/// A worker's queue of messages, written in order until the connection closes.
async fn write_queued(mut outgoing: mpsc::UnboundedReceiver<FromWorker>, write: SharedWrite) {
    while let Some(message) = outgoing.recv().await {
        if !write_line(&write, &message).await {
            return;
        }
    }
}

/// Writes each message from `outgoing` as one JSON line until either end closes.
pub async fn write_lines<T: Serialize>(
    mut outgoing: mpsc::UnboundedReceiver<T>,
    mut write: impl tokio::io::AsyncWrite + Unpin,
) {
    while let Some(message) = outgoing.recv().await {
        let Ok(mut line) = serde_json::to_vec(&message) else {
            continue;
        };
        line.push(b'\n');
        if write.write_all(&line).await.is_err() {
            return;
        }
    }
}

/// A worker's end of the control channel; without a supervisor every call
/// does nothing. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SupervisorLink {
    inner: Option<Arc<Link>>,
}

#[derive(Debug)]
struct Link {
    role: String,
    send: mpsc::UnboundedSender<FromWorker>,
    /// The connection's write half: the queue's writer and
    /// [`SupervisorLink::last_stats`] take turns, a whole line each.
    write: Arc<tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>>,
    /// Whether the supervisor wants executor snapshots (it serves metrics).
    stats: bool,
    note: watch::Receiver<String>,
    announcements: tokio::sync::Mutex<mpsc::UnboundedReceiver<RolledBack>>,
}

impl SupervisorLink {
    /// Connects to the supervisor named in the environment, if any, and
    /// reports `executor`'s totals every second until `shutdown`; with
    /// `stats` (the supervisor serves `metrics.listen`) also its whole
    /// snapshot.
    pub async fn connect(executor: Executor, shutdown: CancellationToken, stats: bool) -> Self {
        let (Some(path), Some(worker)) = (
            std::env::var_os(SUPERVISOR_VARIABLE),
            std::env::var(WORKER_VARIABLE)
                .ok()
                .and_then(|w| w.parse::<u64>().ok()),
        ) else {
            return Self::default();
        };
        let name = path.to_string_lossy();
        let stream = match connect(&name) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(
                    "cannot reach the supervisor at @{name}: {error}; running without it"
                );
                return Self::default();
            }
        };
        let (read, write) = stream.into_split();
        let (send, outgoing) = mpsc::unbounded_channel();
        let (note_tx, note) = watch::channel(String::new());
        let (announce_tx, announcements) = mpsc::unbounded_channel();
        let _ = send.send(FromWorker::Hello { worker });
        let write = Arc::new(tokio::sync::Mutex::new(write));
        tokio::spawn(write_queued(outgoing, Arc::clone(&write)));
        tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<ToWorker>(&line) {
                    Ok(ToWorker::Rollout { note }) => {
                        let _ = note_tx.send(note);
                    }
                    Ok(ToWorker::Announce(event)) => {
                        let _ = announce_tx.send(event);
                    }
                    Err(error) => tracing::warn!("unreadable line from the supervisor: {error}"),
                }
            }
        });
        let reports = send.clone();
        tokio::spawn(async move {
            let mut cursor = 0;
            loop {
                let (run_times, next) = executor.recent_run_times(cursor);
                cursor = next;
                let snapshot = executor.snapshot();
                let report = Report::of(&snapshot, run_times);
                if reports.send(FromWorker::Report(report)).is_err()
                    || (stats && reports.send(FromWorker::Stats(Box::new(snapshot))).is_err())
                {
                    return;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(REPORT_EVERY) => {}
                }
            }
        });
        Self {
            inner: Some(Arc::new(Link {
                role: std::env::var(ROLE_VARIABLE).unwrap_or_default(),
                send,
                write,
                stats,
                note,
                announcements: tokio::sync::Mutex::new(announcements),
            })),
        }
    }

    /// Tells the supervisor this worker serves and consumes: the launcher
    /// stops an old worker only after its replacement said so. Call it once
    /// the servers are bound and the consumers started.
    pub fn ready(&self) {
        self.send(FromWorker::Ready);
    }

    /// Asks the supervisor to make its canary phase the main phase.
    pub fn request_promote(&self) {
        self.send(FromWorker::Promote);
    }

    /// `canary` or `main` under a launcher, empty otherwise.
    pub fn role(&self) -> &str {
        self.inner.as_ref().map(|l| l.role.as_str()).unwrap_or("")
    }

    /// The launcher's rollout state as last heard (empty when nothing to say).
    pub fn rollout_note(&self) -> String {
        self.inner
            .as_ref()
            .map(|l| l.note.borrow().clone())
            .unwrap_or_default()
    }

    /// The next rollback event this worker is asked to publish; pending
    /// forever without a supervisor. Cancel-safe.
    pub async fn next_announcement(&self) -> Option<RolledBack> {
        match &self.inner {
            Some(link) => link.announcements.lock().await.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Sends the executor's final statistics and waits (a second at most)
    /// until they are written: the supervisor's `/metrics` then keeps every
    /// call this worker counted after it exits.
    pub async fn last_stats(&self, snapshot: switchyard_executor::stats::ExecutorSnapshot) {
        let Some(link) = self.inner.as_ref().filter(|link| link.stats) else {
            return;
        };
        let written = tokio::time::timeout(
            Duration::from_secs(1),
            write_line(&link.write, &FromWorker::Stats(Box::new(snapshot))),
        )
        .await;
        if !matches!(written, Ok(true)) {
            tracing::debug!("final statistics not delivered to the supervisor");
        }
    }

    fn send(&self, message: FromWorker) {
        if let Some(link) = &self.inner {
            let _ = link.send.send(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_json_object_per_line() {
        let hello = serde_json::to_string(&FromWorker::Hello { worker: 3 }).unwrap_or_default();
        assert_eq!(hello, r#"{"type":"hello","worker":3}"#);
        let report = FromWorker::Report(Report {
            calls: 5,
            failed: 1,
            slow_polls: 2,
            run_times_us: vec![1_200, 5],
        });
        let line = serde_json::to_string(&report).unwrap_or_default();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<FromWorker>(&line).ok(), Some(report));
        let note = ToWorker::Rollout {
            note: "canary async rolled back".into(),
        };
        let line = serde_json::to_string(&note).unwrap_or_default();
        assert_eq!(serde_json::from_str::<ToWorker>(&line).ok(), Some(note));
    }
}
