//! The watchdog reports a runtime worker held by a poll that does not
//! yield, and reports it free again. Its own test binary: it installs the
//! global subscriber (the watchdog logs from its own thread).

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
fn a_worker_held_by_one_poll_is_reported_then_freed() {
    let log = Log::global();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let executor = runtime
        .block_on(async { Executor::new("held", ExecutorConfig::in_phase(Phase::Async)) })
        .expect("executor");
    // Idle workers, and busy ones (a task on a worker that yields all the
    // time), are not held.
    runtime
        .block_on(runtime.spawn(async {
            let busy = Instant::now();
            while busy.elapsed() < Duration::from_millis(2_500) {
                tokio::task::yield_now().await;
            }
        }))
        .expect("the busy task");
    assert!(!log.text().contains("inside one"), "{}", log.text());

    let (held, release) = std::sync::mpsc::channel::<()>();
    runtime.spawn(async move {
        // Not an endpoint: nothing times this poll.
        let _ = release.recv_timeout(Duration::from_secs(30));
    });
    let text = wait_for(&log, "inside one poll for ", Duration::from_secs(10));
    assert!(
        text.contains("of the held runtime (2 in all) has been inside one poll for ")
            && !text.contains("no other worker"),
        "{text}"
    );
    // The other worker goes on running tasks and timers.
    runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(5),
            tokio::spawn(tokio::time::sleep(Duration::from_millis(50))),
        )
        .await
        .expect("the other worker runs a timer")
        .expect("the task");
    });
    assert!(
        !text.contains("is free again"),
        "not yet: the worker is still held\n{text}"
    );
    drop(held);
    let text = wait_for(&log, "is free again, after ", Duration::from_secs(10));
    assert_eq!(
        text.matches("inside one poll").count(),
        1,
        "one worker held, reported once\n{text}"
    );
    // A runtime shut down under a live executor is stopped, not held.
    drop(runtime);
    std::thread::sleep(Duration::from_millis(3_000));
    assert_eq!(
        log.text().matches("inside one poll").count(),
        1,
        "{}",
        log.text()
    );
    drop(executor);
}
