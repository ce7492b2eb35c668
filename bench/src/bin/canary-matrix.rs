//! `canary-matrix`: how the canary judge decides, measured (issue 15).
//!
//! Each cell runs echo under the launcher (2 workers: `threaded` main, one
//! `async` canary) with a planted regression of the canary's async body, puts
//! 16 connections of steady calls on it (20 ms each), and watches the
//! supervisor's log for judgements and a rollback. Half the runs of each cell
//! have two busy loops loading both cores. Results: a Markdown table on
//! stdout (scripts/canary-matrix writes it to docs/canary-matrix.md).
//!
//! Usage: `canary-matrix [RUNS_PER_CELL] [ECHO_BINARY]`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use switchyard_proto::echo::v1::SayRequest;
use switchyard_proto::echo::v1::echo_client::EchoClient;

/// A planted regression and what the judge should do about it.
struct Cell {
    name: &'static str,
    echo: &'static str,
    expect_rollback: Option<bool>,
}

const CELLS: [Cell; 5] = [
    Cell {
        name: "healthy canary",
        echo: "",
        expect_rollback: Some(false),
    },
    Cell {
        name: "endpoint blocks its loop (15 ms)",
        echo: "block_ms = 15",
        expect_rollback: Some(true),
    },
    Cell {
        name: "2x slower at the median",
        echo: "async_slowdown = 1.0",
        expect_rollback: Some(true),
    },
    Cell {
        name: "5 % of calls fail",
        echo: "async_failure_rate = 0.05",
        expect_rollback: Some(true),
    },
    Cell {
        name: "10 % slower (power)",
        echo: "async_slowdown = 0.1",
        expect_rollback: None,
    },
];

/// How long a run watches a canary that is not rolled back.
const WATCH: Duration = Duration::from_secs(30);
/// Window of the judge in these runs (the demo's).
const WINDOW_MS: u64 = 5000;

#[derive(Default)]
struct Outcome {
    rolled_back: Option<Duration>,
    signal: String,
    passes: u32,
    inconclusive: u32,
    failures: u32,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn hog() -> Vec<Child> {
    (0..2)
        .filter_map(|_| {
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .ok()
        })
        .collect()
}

async fn run(echo: &str, cell: &Cell, loaded: bool) -> anyhow::Result<Outcome> {
    let dir = std::env::temp_dir().join(format!("canary-matrix-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = free_port();
    let config = dir.join("echo.toml");
    std::fs::write(
        &config,
        format!(
            "[executor]\nphase = \"threaded\"\npool_size = 16\n\n\
             [grpc]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [launcher]\nworkers = 2\n\n\
             [launcher.canary]\nphase = \"async\"\nworkers = 1\nwindow_ms = {WINDOW_MS}\nmin_calls = 20\n\n\
             [echo]\n{}\n",
            cell.echo
        ),
    )?;
    let mut child = Command::new(echo)
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1")
        .env_remove("SWITCHYARD_EXECUTOR__PHASE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut ready = 0;
    let started = Instant::now();
    while ready < 2 {
        let line = lines.recv_timeout(Duration::from_secs(30))?;
        if line.contains(") is ready") {
            ready += 1;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "workers not ready"
        );
    }
    let hogs = if loaded { hog() } else { Vec::new() };
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..16 {
        let mut client = EchoClient::connect(format!("http://127.0.0.1:{port}")).await?;
        let stop = Arc::clone(&stop);
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = client
                    .say(SayRequest {
                        text: "matrix".into(),
                        wait_ms: 20,
                    })
                    .await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let load_started = Instant::now();
    let mut outcome = Outcome::default();
    while load_started.elapsed() < WATCH {
        let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if line.contains("canary async passed") {
            outcome.passes += 1;
        } else if line.contains("canary async inconclusive") {
            outcome.inconclusive += 1;
        } else if line.contains("canary async failed") {
            outcome.failures += 1;
        } else if line.contains("canary async rolled back") {
            outcome.rolled_back = Some(load_started.elapsed());
            outcome.signal = line
                .split('(')
                .nth(1)
                .and_then(|rest| rest.split(')').next())
                .unwrap_or_default()
                .to_string();
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        let _ = caller.await;
    }
    for mut hog in hogs {
        let _ = hog.kill();
        let _ = hog.wait();
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(outcome)
}

fn median(mut values: Vec<Duration>) -> Option<Duration> {
    values.sort();
    values.get(values.len().checked_sub(1)? / 2).copied()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let runs: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let echo = args.next().unwrap_or_else(|| {
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        format!("{target}/debug/switchyard-echo")
    });
    println!(
        "| cell | runs | rolled back | expected | time to rollback (median / max) | signals | judgements passed / inconclusive / failed |"
    );
    println!("|---|---|---|---|---|---|---|");
    for cell in &CELLS {
        let mut rolled = Vec::new();
        let mut signals = std::collections::BTreeMap::<String, u32>::new();
        let (mut passes, mut inconclusive, mut failures) = (0, 0, 0);
        for run_number in 0..runs {
            let loaded = run_number % 2 == 1;
            let outcome = run(&echo, cell, loaded).await?;
            eprintln!(
                "{}: run {} ({}): {}",
                cell.name,
                run_number + 1,
                if loaded { "CPU hog" } else { "idle" },
                match outcome.rolled_back {
                    Some(after) => format!(
                        "rolled back after {:.1} s ({})",
                        after.as_secs_f64(),
                        outcome.signal
                    ),
                    None => format!(
                        "kept ({} passed, {} inconclusive, {} failed)",
                        outcome.passes, outcome.inconclusive, outcome.failures
                    ),
                }
            );
            passes += outcome.passes;
            inconclusive += outcome.inconclusive;
            failures += outcome.failures;
            if let Some(after) = outcome.rolled_back {
                rolled.push(after);
                *signals.entry(outcome.signal).or_default() += 1;
            }
        }
        let times = match (median(rolled.clone()), rolled.iter().max()) {
            (Some(median), Some(max)) => {
                format!("{:.1} s / {:.1} s", median.as_secs_f64(), max.as_secs_f64())
            }
            _ => "-".into(),
        };
        let signals = signals
            .iter()
            .map(|(signal, n)| format!("{signal} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "| {} | {runs} | {} | {} | {times} | {} | {passes} / {inconclusive} / {failures} |",
            cell.name,
            rolled.len(),
            match cell.expect_rollback {
                Some(true) => "every run",
                Some(false) => "none",
                None => "(power)",
            },
            if signals.is_empty() {
                "-".into()
            } else {
                signals
            },
        );
    }
    Ok(())
}
