//! Dispatch overhead per phase, against a raw baseline measured in the same run.
//!
//! Run with `cargo bench -p switchyard-executor --bench dispatch` (or
//! `scripts/bench`). For each phase, a no-op endpoint and an endpoint that
//! waits 1 ms (awaits in async bodies, sleeps in blocking ones) are dispatched
//! by 1, 64 and 1024 concurrent callers. The raw baseline does the same work
//! with no executor: the body called inline for blocking work, a plain
//! `tokio::spawn` for async work. Results print as a Markdown table; the
//! `ratio` column is executor throughput divided by raw throughput.

use std::sync::Arc;
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
}
