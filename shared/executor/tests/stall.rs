//! The watchdog reports a runtime whose only worker is held by a poll that
//! does not yield, and reports it running again. Its own test binary: it
//! installs the global subscriber (the watchdog logs from its own thread).

use std::time::{Duration, Instant};

use switchyard_executor::{Executor, ExecutorConfig, Phase};
use switchyard_testkit::Log;

/// Waits at most `bound` for `needle` in the log.
fn wait_for(log: &Log, needle: &str, bound: Duration) -> String {
    let started = Instant::now();
    loop {
        let text = log.text();
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
    let text = wait_for(&log, "has run no task", Duration::from_secs(10));
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
    let text = wait_for(&log, "runs tasks again", Duration::from_secs(10));
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
