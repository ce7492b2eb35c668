//! The blocking detector tells a poll that held its thread from one whose
//! thread waited for a CPU. Its own test binary: it pins threads to CPU 0
//! and runs one there at a real-time priority, which would disturb the
//! timing of tests beside it.
//!
//! Linux only, as root (or with CAP_SYS_NICE): `taskset` and `chrt` from
//! util-linux set the affinity and the policy of a thread by its id.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod support;

use support::{OnThisThread, slow_poll_warning};
use switchyard_executor::Endpoint;

const BOUND: Duration = Duration::from_secs(10);

/// How long the hog keeps CPU 0 once told to: far over the 10 ms threshold.
const HOG: Duration = Duration::from_millis(60);

/// This thread's id (`/proc/thread-self` is `<pid>/task/<tid>`).
fn thread_id() -> String {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    link.file_name()
        .and_then(|name| name.to_str())
        .expect("a thread id")
        .to_string()
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|error| panic!("{program} {args:?}: {error}"));
    assert!(
        status.success(),
        "{program} {args:?}: {status} (the test needs root or CAP_SYS_NICE)"
    );
}

/// Pins the calling thread to CPU 0.
fn pin_to_cpu_0() {
    run("taskset", &["-p", "-c", "0", &thread_id()]);
}

/// A thread pinned to CPU 0 at a real-time priority (SCHED_FIFO), which
/// takes the CPU from any ordinary thread there for [`HOG`] each time it is
/// told to, then sets `done`.
fn start_hog(done: Arc<AtomicBool>) -> mpsc::Sender<()> {
    let (go, told) = mpsc::channel::<()>();
    let (ready, is_ready) = mpsc::channel();
    std::thread::spawn(move || {
        pin_to_cpu_0();
        run("chrt", &["-f", "-p", "10", &thread_id()]);
        let _ = ready.send(());
        while told.recv().is_ok() {
            let started = Instant::now();
            while started.elapsed() < HOG {
                std::hint::spin_loop();
            }
            done.store(true, SeqCst);
        }
    });
    is_ready.recv_timeout(BOUND).expect("the hog started");
    go
}

/// The milliseconds a slow-poll warning about `endpoint` says the poll was
/// blocked in a call (`at least N ms blocked`).
fn blocked_ms(log: &str, endpoint: &str) -> f64 {
    let line = slow_poll_warning(log, endpoint);
    line.split("at least ")
        .nth(1)
        .and_then(|rest| rest.split(" ms blocked").next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no blocked time in: {line}"))
}

#[test]
fn a_poll_preempted_by_another_thread_is_descheduled_not_slow() {
    let log = switchyard_testkit::Log::global();
    pin_to_cpu_0();
    let hogged = Arc::new(AtomicBool::new(false));
    let hog = start_hog(Arc::clone(&hogged));
    let here = OnThisThread::new();

    // Wakes the hog, which takes CPU 0 from this poll at once, and spins
    // (microseconds of its own) until the hog is done.
    let preempted = {
        let hogged = Arc::clone(&hogged);
        Endpoint::from_async("preempted", move |_, ()| {
            let hogged = Arc::clone(&hogged);
            let hog = hog.clone();
            async move {
                // In the poll: the hog must take the CPU from it.
                assert!(hog.send(()).is_ok(), "the hog is gone");
                let started = Instant::now();
                while !hogged.load(SeqCst) {
                    assert!(started.elapsed() < BOUND, "the hog never ran");
                    std::hint::spin_loop();
                }
            }
        })
    };
    let spins = |name: &str| {
        Endpoint::from_async(name, |_, ()| async {
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(30) {
                std::hint::spin_loop();
            }
        })
    };
    let sleeps = Endpoint::from_async("sleeps", |_, ()| async {
        std::thread::sleep(Duration::from_millis(30));
    });
    here.run_each([
        preempted,
        spins("spins"),
        sleeps,
        spins("spins again"),
        spins("spins a third time"),
    ]);

    let snapshot = here.executor.snapshot();
    let counts = |name: &str| {
        let counts = snapshot.endpoint(name).expect("registered").counts;
        (counts.slow_polls, counts.descheduled_polls)
    };
    assert_eq!(counts("preempted"), (0, 1), "(slow, descheduled)");
    assert_eq!(counts("spins"), (1, 0), "running code holds the thread");
    assert_eq!(counts("sleeps"), (1, 0), "a blocking call holds the thread");

    // The warnings tell computing from blocking. What a spinning poll's
    // thread counters cannot account for is taken for blocked; on a virtual
    // machine that includes time the hypervisor gave the CPU to another
    // guest (steal: these machines' /proc/stat counts it), and CI once saw
    // 16.3 ms of a 30 ms spin so (2026-12-05). The least of three tells.
    let text = log.text();
    let spinning = ["spins", "spins again", "spins a third time"]
        .map(|name| blocked_ms(&text, name))
        .into_iter()
        .fold(f64::INFINITY, f64::min);
    let sleeping = blocked_ms(&text, "sleeps");
    assert!(
        spinning < 5.0,
        "spinning 30 ms blocked at least {spinning} ms in each of three polls"
    );
    assert!(sleeping > 25.0, "sleeping 30 ms blocked only {sleeping} ms");
}
