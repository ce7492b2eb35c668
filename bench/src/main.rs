//! `switchyard-bench`: what each phase costs and where each stops scaling,
//! beside raw lapin and raw tonic on the same broker in the same run.
//!
//! Workloads (each bounded in time; `--quick` shrinks them to under a minute):
//! 1. RPC echo (100-byte payload) at 1, 16, 64 and 256 callers: calls/s, p50, p99, p99.9;
//! 2. casts and notifications, 10,000 and 100,000 confirmed persistent messages;
//! 3. I/O-bound RPC: the endpoint waits 20 ms, at 64, 256 and 1024 callers;
//! 4. gRPC unary echo;
//! 5. the raw contenders beside each, as a ratio;
//! 6. resident memory with 1,000 requests dispatched;
//! 7. with `--statistics`: `GetStatistics` for 16 meters against PostgreSQL,
//!    the real collector binary in each phase (blocking form one query after
//!    another, async form all at once), written to `statistics.md`.
//!
//! Writes `run-<unix>.json`, `README.md` (the table) and `throughput.svg`
//! under `--out` (default `docs/bench`).

mod amqp;
mod grpc;
mod measure;
mod memory;
mod report;
mod statistics;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::Parser;
use switchyard_executor::Phase;

use measure::Latencies;
use report::{Row, Run};

/// Benchmarks every phase against the raw limit.
#[derive(Debug, Parser)]
#[command(name = "switchyard-bench")]
struct Args {
    /// Small counts and short cells: a smoke run in under a minute.
    #[arg(long)]
    quick: bool,
    /// Where the JSON, the Markdown table and the SVG chart go.
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
    /// Internal: measure memory for one contender and print KiB.
    #[arg(long, hide = true)]
    memory_probe: Option<String>,
    /// Run only `async` RPC echo with this many callers for 5 s (for a profiler).
    #[arg(long, value_name = "CALLERS")]
    profile_echo: Option<usize>,
    /// Run only the statistics workload (the collector binary against
    /// PostgreSQL) and write `statistics.md` under `--out`.
    #[arg(long)]
    statistics: bool,
    /// The collector binary for `--statistics` (default: beside this one).
    #[arg(long)]
    collector: Option<PathBuf>,
}

const CONTENDERS: [Option<Phase>; 4] = [
    None,
    Some(Phase::Threaded),
    Some(Phase::Bridged),
    Some(Phase::Async),
];

fn name(contender: Option<Phase>) -> String {
    contender
        .map(|p| p.to_string())
        .unwrap_or_else(|| "raw".into())
}

/// A one-line progress bar on stderr.
struct Progress {
    done: usize,
    total: usize,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        let width = 30;
        let filled = width * self.done / self.total.max(1);
        eprint!(
            "\r[{}{}] {:>3}/{} {what:<48}",
            "#".repeat(filled),
            "-".repeat(width - filled),
            self.done,
            self.total
        );
        if self.done == self.total {
            eprintln!();
        }
    }
}

fn with_ratios(mut rows: Vec<Row>) -> Vec<Row> {
    let raws: Vec<(String, usize, f64)> = rows
        .iter()
        .filter(|r| r.contender == "raw")
        .map(|r| (r.workload.clone(), r.size, r.latencies.rate))
        .collect();
    for row in &mut rows {
        if let Some((_, _, raw)) = raws
            .iter()
            .find(|(w, s, _)| *w == row.workload && *s == row.size)
        {
            row.ratio = if *raw > 0.0 {
                row.latencies.rate / raw
            } else {
                0.0
            };
        }
    }
    rows
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(contender) = &args.memory_probe {
        println!("{}", runtime.block_on(memory::probe(contender))?);
        return Ok(());
    }
    if let Some(callers) = args.profile_echo {
        let result = runtime.block_on(async {
            let broker = amqp::Broker::connect().await?;
            let result =
                amqp::switchyard_calls(&broker, Phase::Async, callers, 0, Duration::from_secs(5))
                    .await;
            broker.clean_up().await;
            result
        })?;
        println!("{result:?}");
        return Ok(());
    }
    if args.statistics {
        let collector = match &args.collector {
            Some(path) => path.clone(),
            None => std::env::current_exe()?.with_file_name("switchyard-collector"),
        };
        let (per_meter, callers, cell) = if args.quick {
            (2_000, vec![1, 4], Duration::from_millis(500))
        } else {
            (20_000, vec![1, 4, 16], Duration::from_secs(3))
        };
        let cells = runtime.block_on(statistics::run(&collector, per_meter, &callers, cell))?;
        let command = if args.quick {
            "scripts/bench --quick` (its last step, `switchyard-bench --statistics --quick"
        } else {
            "scripts/bench` (its last step, `switchyard-bench --statistics"
        };
        let text = statistics::markdown(&cells, per_meter, command);
        std::fs::create_dir_all(&args.out)?;
        std::fs::write(args.out.join("statistics.md"), &text)?;
        println!("{text}");
        return Ok(());
    }
    let (cell, echo_callers, io_callers, sizes) = if args.quick {
        (
            Duration::from_millis(400),
            vec![1, 16, 64],
            vec![64],
            vec![2_000],
        )
    } else {
        (
            Duration::from_secs(2),
            vec![1, 16, 64, 256],
            vec![64, 256, 1024],
            vec![10_000, 100_000],
        )
    };
    let total = CONTENDERS.len()
        * (echo_callers.len() + io_callers.len() + 2 * sizes.len() + echo_callers.len().min(3))
        + CONTENDERS.len();
    let mut progress = Progress { done: 0, total };
    let started_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs();

    let rows = runtime.block_on(async {
        let broker = amqp::Broker::connect().await?;
        let mut rows = Vec::new();
        let mut push =
            |workload: &str, size: usize, contender: Option<Phase>, latencies: Latencies| {
                rows.push(Row {
                    workload: workload.into(),
                    size,
                    contender: name(contender),
                    latencies,
                    ratio: 1.0,
                });
            };
        // Contenders alternate inside each cell group, so drift hits all alike.
        for &callers in &echo_callers {
            for contender in CONTENDERS {
                progress.step(&format!("rpc echo, {callers} callers, {}", name(contender)));
                let result = match contender {
                    None => amqp::raw_calls(&broker, callers, 0, cell).await?,
                    Some(phase) => amqp::switchyard_calls(&broker, phase, callers, 0, cell).await?,
                };
                push("rpc echo", callers, contender, result);
            }
        }
        for &callers in &io_callers {
            for contender in CONTENDERS {
                progress.step(&format!(
                    "rpc waiting 20 ms, {callers} callers, {}",
                    name(contender)
                ));
                let result = match contender {
                    None => amqp::raw_calls(&broker, callers, 20, cell).await?,
                    Some(phase) => {
                        amqp::switchyard_calls(&broker, phase, callers, 20, cell).await?
                    }
                };
                push("rpc waiting 20 ms", callers, contender, result);
            }
        }
        for &count in &sizes {
            for contender in CONTENDERS {
                progress.step(&format!("casts, {count} messages, {}", name(contender)));
                let rate = match contender {
                    None => amqp::raw_messages(&broker, count).await?,
                    Some(phase) => amqp::switchyard_casts(&broker, phase, count).await?,
                };
                push(
                    "casts",
                    count,
                    contender,
                    Latencies {
                        rate,
                        ..Latencies::default()
                    },
                );
            }
            for contender in CONTENDERS {
                progress.step(&format!(
                    "notifications, {count} messages, {}",
                    name(contender)
                ));
                let rate = match contender {
                    None => amqp::raw_messages(&broker, count).await?,
                    Some(phase) => amqp::switchyard_notifications(&broker, phase, count).await?,
                };
                push(
                    "notifications",
                    count,
                    contender,
                    Latencies {
                        rate,
                        ..Latencies::default()
                    },
                );
            }
        }
        for &callers in echo_callers.iter().take(3) {
            for contender in CONTENDERS {
                progress.step(&format!(
                    "grpc echo, {callers} callers, {}",
                    name(contender)
                ));
                push(
                    "grpc echo",
                    callers,
                    contender,
                    grpc::echo(contender, callers, cell).await?,
                );
            }
        }
        broker.clean_up().await;
        anyhow::Ok(rows)
    })?;
    let mut memory_kib = Vec::new();
    for contender in CONTENDERS {
        progress.step(&format!("memory, 1000 dispatched, {}", name(contender)));
        memory_kib.push((name(contender), memory::measure(&name(contender))?));
    }

    let run = Run {
        started_unix,
        quick: args.quick,
        machine: report::machine(),
        rows: with_ratios(rows),
        memory_kib,
    };
    std::fs::create_dir_all(&args.out)?;
    let json = args.out.join(format!("run-{started_unix}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(&run)?)?;
    let command = if args.quick {
        "scripts/bench --quick"
    } else {
        "scripts/bench"
    };
    std::fs::write(args.out.join("README.md"), run.markdown(command))?;
    run.chart(&args.out.join("throughput.svg"))?;
    println!("{}", run.markdown(command));
    eprintln!(
        "wrote {}, README.md and throughput.svg in {}",
        json.display(),
        args.out.display()
    );
    Ok(())
}
