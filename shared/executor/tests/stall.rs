//! The watchdog reports a runtime whose only worker is held by a poll that
//! does not yield, and reports it running again. Its own test binary: it
//! installs the global subscriber (the watchdog logs from its own thread).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_executor::{Executor, ExecutorConfig, Phase};

/// What was logged, from every thread.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut text) = self.0.lock() {
            text.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|text| String::from_utf8_lossy(&text).into_owned())
            .unwrap_or_default()
    }

    /// Waits at most `bound` for `needle` in the log.
    fn wait_for(&self, needle: &str, bound: Duration) -> String {
        let started = Instant::now();
        loop {
            let text = self.text();
            if text.contains(needle) {
                return text;
            }
            assert!(
                started.elapsed() < bound,
                "`{needle}` not logged within {bound:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_runtime_whose_only_worker_is_held_is_reported_then_its_recovery() {
    let log = Log::default();
    let writer = log.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish(),
    )
    .expect("the only subscriber of this binary");
    // One worker, as Tokio starts in a container limited to one CPU.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let executor = runtime
        .block_on(async {
            Executor::new(
                "held",
                ExecutorConfig {
                    phase: Phase::Async,
                    ..ExecutorConfig::default()
                },
            )
        })
        .expect("executor");
    // A healthy runtime is not reported.
    std::thread::sleep(Duration::from_millis(2_500));
    assert!(!log.text().contains("has run no task"), "{}", log.text());

    let (held, release) = std::sync::mpsc::channel::<()>();
    runtime.spawn(async move {
        // Not an endpoint: nothing times this poll.
        let _ = release.recv_timeout(Duration::from_secs(30));
    });
    let text = log.wait_for("has run no task", Duration::from_secs(10));
    assert!(
        text.contains("the held runtime has run no task for ")
            && text.contains("thread (1) without yielding"),
        "{text}"
    );
    assert!(
        !text.contains("runs tasks again"),
        "not yet: the worker is still held\n{text}"
    );
    drop(held);
    let text = log.wait_for("runs tasks again", Duration::from_secs(10));
    assert_eq!(
        text.matches("has run no task").count(),
        1,
        "one stall, reported once\n{text}"
    );
    // A runtime shut down under a live executor is silent, not stalled.
    drop(runtime);
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(
        log.text().matches("has run no task").count(),
        1,
        "{}",
        log.text()
    );
    drop(executor);
}
