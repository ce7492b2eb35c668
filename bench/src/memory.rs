//! Peak memory with 1,000 requests dispatched at once, per phase: the median
//! of five probes, each in a child process of its own, so that one
//! contender's peak cannot hide another's.

use std::sync::Arc;
use std::time::Duration;

use switchyard_executor::{DispatchOptions, Endpoint, Phase};

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// In the child: hold 1,000 requests, report the resident growth in KiB.
/// The first reading is taken once the contender is ready to take requests
/// (the executor started, its endpoint registered), so the growth is what
/// the requests hold, not the executor's start-up (its pool threads in the
/// pool phases, its watchdog thread in all).
pub async fn probe(contender: &str) -> anyhow::Result<u64> {
    const REQUESTS: usize = 1000;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let executor;
    let before;
    match contender {
        "raw" => {
            executor = None;
            before = rss_kib("VmRSS:");
            for _ in 0..REQUESTS {
                let gate = Arc::clone(&gate);
                tasks.spawn(async move {
                    let _ = gate.acquire().await;
                });
            }
        }
        phase => {
            let phase = match phase {
                "threaded" => Phase::Threaded,
                "bridged" => Phase::Bridged,
                _ => Phase::Async,
            };
            let ex = crate::amqp::executor(phase)?;
            let endpoint = match phase {
                Phase::Threaded => {
                    let gate = Arc::clone(&gate);
                    let runtime = tokio::runtime::Handle::current();
                    ex.register(Endpoint::blocking("hold", move |_, ()| {
                        let _ = runtime.block_on(gate.acquire());
                    }))?
                }
                _ => {
                    let gate = Arc::clone(&gate);
                    ex.register(Endpoint::from_async("hold", move |_, ()| {
                        let gate = Arc::clone(&gate);
                        async move {
                            let _ = gate.acquire().await;
                        }
                    }))?
                }
            };
            before = rss_kib("VmRSS:");
            for _ in 0..REQUESTS {
                let endpoint = endpoint.clone();
                tasks.spawn(async move {
                    let _ = endpoint.dispatch((), DispatchOptions::default()).await;
                });
            }
            executor = Some(ex);
        }
    }
    // Let every request reach its slot or its queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = rss_kib("VmRSS:");
    gate.add_permits(REQUESTS * 2);
    while tasks.join_next().await.is_some() {}
    drop(executor);
    Ok(held.saturating_sub(before))
}

/// How many times the probe runs per contender. One reading moves by a few
/// hundred KiB from run to run (which pages the runtime's threads touch
/// first), a few tenths of a KiB per request; the median of five does not.
const PROBES: usize = 5;

/// In the parent: the median of [`PROBES`] probes for `contender`, each in
/// a child process of its own.
pub fn measure(contender: &str) -> anyhow::Result<u64> {
    let mut readings = (0..PROBES)
        .map(|_| probe_once(contender))
        .collect::<anyhow::Result<Vec<u64>>>()?;
    readings.sort_unstable();
    Ok(readings[PROBES / 2])
}

fn probe_once(contender: &str) -> anyhow::Result<u64> {
    let exe = std::env::current_exe()?;
    let output = std::process::Command::new(exe)
        .args(["--memory-probe", contender])
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim().parse().map_err(|_| {
        anyhow::anyhow!(
            "memory probe for {contender} printed `{text}`: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}
