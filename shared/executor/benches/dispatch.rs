//! Dispatch overhead per phase, against a raw baseline measured in the same run.
//!
//! Run with `cargo bench -p switchyard-executor --bench dispatch` (or
//! `scripts/bench`). For each phase, a no-op endpoint and an endpoint that
//! waits 1 ms (awaits in async bodies, sleeps in blocking ones) are dispatched
//! by 1, 64 and 1024 concurrent callers. The raw baseline does the same work
//! with no executor: the body called inline for blocking work, a plain
//! `tokio::spawn` for async work. Results print as a Markdown table; the
//! `ratio` column is executor throughput divided by raw throughput.
//!
//! After the table, the machine's hand-off floor, measured the same way with
//! no executor: what one round trip to another thread and back costs when
//! the other side sleeps, and when both sides spin. The pool phases' one-caller
//! overhead cannot be below the first without keeping a core busy between
//! requests (docs/benchmarks.md, "The hand-off floor").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchyard_executor::{
    BoundEndpoint, DispatchOptions, Endpoint, EndpointKind, Executor, ExecutorConfig, Phase,
};

/// Wall time each cell aims for.
const CELL: Duration = Duration::from_millis(400);

#[derive(Clone, Copy, PartialEq)]
enum Work {
    Noop,
    Wait1ms,
}

impl Work {
    fn label(self) -> &'static str {
        match self {
            Work::Noop => "no-op",
            Work::Wait1ms => "wait 1 ms",
        }
    }
}

fn kind_for(phase: Phase) -> EndpointKind {
    match phase {
        Phase::Threaded => EndpointKind::Blocking,
        _ => EndpointKind::Async,
    }
}

fn endpoint(executor: &Executor, kind: EndpointKind, work: Work) -> BoundEndpoint<(), ()> {
    let endpoint = match (kind, work) {
        (EndpointKind::Blocking, Work::Noop) => Endpoint::blocking("noop", |_, ()| {}),
        (EndpointKind::Blocking, Work::Wait1ms) => {
            Endpoint::blocking("wait", |_, ()| std::thread::sleep(Duration::from_millis(1)))
        }
        (EndpointKind::Async, Work::Noop) => Endpoint::from_async("noop", |_, ()| async {}),
        (EndpointKind::Async, Work::Wait1ms) => Endpoint::from_async("wait", |_, ()| async {
            tokio::time::sleep(Duration::from_millis(1)).await
        }),
        (EndpointKind::Both, _) => panic!("bench setup: the bench measures one form at a time"),
    };
    match executor.register(endpoint) {
        Ok(bound) => bound,
        Err(error) => panic!("bench setup: {error}"),
    }
}

/// Runs `callers` concurrent loops of `op` for about `CELL`; returns ops/s.
async fn measure<F, Fut>(callers: usize, op: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let stop_at = started + CELL;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let op = Arc::clone(&op);
        tasks.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < stop_at {
                op().await;
                done += 1;
            }
            done
        });
    }
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done.unwrap_or(0);
    }
    total as f64 / started.elapsed().as_secs_f64()
}

async fn raw(kind: EndpointKind, work: Work, callers: usize) -> f64 {
    match (kind, work) {
        (EndpointKind::Blocking, Work::Noop) => {
            measure(callers, || async { std::hint::black_box(()) }).await
        }
        (EndpointKind::Blocking, Work::Wait1ms) => {
            measure(callers, || async {
                let _ =
                    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(1)))
                        .await;
            })
            .await
        }
        (EndpointKind::Async, Work::Noop) => {
            measure(callers, || async {
                let _ = tokio::spawn(async {}).await;
            })
            .await
        }
        (EndpointKind::Async, Work::Wait1ms) => {
            measure(callers, || async {
                let _ = tokio::spawn(tokio::time::sleep(Duration::from_millis(1))).await;
            })
            .await
        }
        (EndpointKind::Both, _) => panic!("bench setup: the bench measures one form at a time"),
    }
}

/// Round trips each floor measurement makes.
const ROUND_TRIPS: u64 = 20_000;

/// How the other thread waits for its turn in [`ping_pong`].
#[derive(Clone, Copy)]
enum Wait {
    /// `thread::park`: the thread sleeps and is woken by the other's unpark.
    Park,
    /// A spin loop: nobody sleeps, each side keeps a core.
    Spin,
}

/// Two OS threads passing a turn back and forth; µs per round trip.
fn ping_pong(wait: Wait) -> f64 {
    fn until(turn: &AtomicU64, value: u64, wait: Wait) {
        while turn.load(Ordering::Acquire) != value {
            match wait {
                Wait::Park => std::thread::park(),
                Wait::Spin => std::hint::spin_loop(),
            }
        }
    }
    let turn = Arc::new(AtomicU64::new(0));
    let caller = std::thread::current();
    let answering = {
        let turn = Arc::clone(&turn);
        std::thread::spawn(move || {
            for round in 0..ROUND_TRIPS {
                until(&turn, 2 * round + 1, wait);
                turn.store(2 * round + 2, Ordering::Release);
                caller.unpark();
            }
        })
    };
    let started = Instant::now();
    for round in 0..ROUND_TRIPS {
        turn.store(2 * round + 1, Ordering::Release);
        answering.thread().unpark();
        until(&turn, 2 * round + 2, wait);
    }
    let elapsed = started.elapsed();
    if answering.join().is_err() {
        panic!("bench setup: the answering thread panicked");
    }
    elapsed.as_secs_f64() * 1e6 / ROUND_TRIPS as f64
}

/// A runtime task handing a no-op to one OS thread (a std channel) and
/// awaiting its answer (a oneshot): the least a pool can do; µs per round trip.
async fn runtime_to_thread() -> f64 {
    let (jobs, inbox) = std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>();
    let thread = std::thread::spawn(move || {
        while let Ok(answer) = inbox.recv() {
            let _ = answer.send(());
        }
    });
    let started = Instant::now();
    for _ in 0..ROUND_TRIPS {
        let (answer, answered) = tokio::sync::oneshot::channel();
        if jobs.send(answer).is_err() || answered.await.is_err() {
            panic!("bench setup: the answering thread is gone");
        }
    }
    let per_round_trip = started.elapsed().as_secs_f64() * 1e6 / ROUND_TRIPS as f64;
    drop(jobs);
    if thread.join().is_err() {
        panic!("bench setup: the answering thread panicked");
    }
    per_round_trip
}

fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => panic!("bench setup: {error}"),
    };
    println!(
        "| phase | endpoint | work | callers | dispatches/s | raw/s | ratio | overhead µs/dispatch |"
    );
    println!("|---|---|---|---|---:|---:|---:|---:|");
    runtime.block_on(async {
        for work in [Work::Noop, Work::Wait1ms] {
            for callers in [1, 64, 1024] {
                for phase in Phase::ALL {
                    let kind = kind_for(phase);
                    let config = ExecutorConfig { phase, ..ExecutorConfig::default() };
                    let executor = match Executor::new("bench", config) {
                        Ok(executor) => executor,
                        Err(error) => panic!("bench setup: {error}"),
                    };
                    let bound = endpoint(&executor, kind, work);
                    // Alternate contenders so drift hits both alike.
                    let raw_rate = raw(kind, work, callers).await;
                    let rate = measure(callers, move || {
                        let bound = bound.clone();
                        async move {
                            let _ = bound.dispatch((), DispatchOptions::default()).await;
                        }
                    })
                    .await;
                    // Per-dispatch overhead is only meaningful one at a time.
                    let overhead_us = (1.0 / rate - 1.0 / raw_rate) * 1e6;
                    println!(
                        "| {phase} | {kind} | {} | {callers} | {rate:.0} | {raw_rate:.0} | {:.2} | {} |",
                        work.label(),
                        rate / raw_rate,
                        if work == Work::Noop && callers == 1 {
                            format!("{overhead_us:.1}")
                        } else {
                            "–".into()
                        }
                    );
                    executor.shutdown(Duration::from_secs(5)).await;
                }
            }
        }
    });
    let parked = ping_pong(Wait::Park);
    let spinning = ping_pong(Wait::Spin);
    let from_runtime = match runtime.block_on(runtime.spawn(runtime_to_thread())) {
        Ok(micros) => micros,
        Err(error) => panic!("bench setup: {error}"),
    };
    println!(
        "\nHand-off floor, µs per round trip to another thread and back, no executor: \
         {parked:.1} with both threads parking, {from_runtime:.1} from a runtime task to an \
         OS thread (std channel, tokio oneshot), {spinning:.2} with both spinning."
    );
}
