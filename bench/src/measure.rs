//! Driving a workload with N concurrent callers for a bounded time, and the
//! latency figures reported.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What a closed-loop run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latencies {
    /// Completed operations per second.
    pub rate: f64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Operations that failed.
    pub failed: u64,
}

/// Runs `callers` loops of `op` (which answers whether it succeeded) for `cell`.
pub async fn drive<F, Fut>(callers: usize, cell: Duration, op: F) -> Latencies
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let op = Arc::clone(&op);
        tasks.spawn(async move {
            let (mut latencies, mut failed) = (Vec::new(), 0u64);
            while started.elapsed() < cell {
                let one = Instant::now();
                if op().await {
                    latencies.push(one.elapsed().as_micros() as u64);
                } else {
                    failed += 1;
                }
            }
            (latencies, failed)
        });
    }
    let (mut all, mut failed) = (Vec::new(), 0);
    while let Some(Ok((mut some, lost))) = tasks.join_next().await {
        all.append(&mut some);
        failed += lost;
    }
    Latencies::of(all, started.elapsed(), failed)
}

impl Latencies {
    /// The figures of `micros` (one per completed operation) over `elapsed`.
    pub fn of(mut micros: Vec<u64>, elapsed: Duration, failed: u64) -> Self {
        micros.sort_unstable();
        let at = |q: f64| {
            micros
                .get(((micros.len() as f64 * q) as usize).min(micros.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        Self {
            rate: micros.len() as f64 / elapsed.as_secs_f64(),
            p50_us: at(0.5),
            p99_us: at(0.99),
            p999_us: at(0.999),
            failed,
        }
    }
}
