//! `switchyard-bench`: what each phase costs and where each stops scaling,
//! beside raw lapin and raw tonic on the same broker in the same run.
//!
//! Workloads (each bounded in time; `--quick` shrinks them to under a minute):
//! 1. RPC echo (100-byte payload) at 1, 16, 64 and 256 callers: calls/s, p50, p99, p99.9;
//! 2. casts and notifications, 10,000 and 100,000 confirmed persistent
//!    messages: messages/s and publish → handled latency;
//! 3. I/O-bound RPC: the endpoint waits 20 ms, at 64, 256 and 1024 callers;
//! 4. gRPC unary echo;
//! 5. the raw contenders beside each, as a ratio;
//! 6. resident memory with 1,000 requests dispatched;
//! 7. with `--statistics`: `GetStatistics` for 16 meters against PostgreSQL,
//!    the real collector binary in each phase (blocking form one query after
//!    another, async form all at once), written to `statistics.md`.
//!
//! Every cell runs `--repeat` times (3 in a full run) and reports the run
//! with the median rate, and the spread between the runs as its noise.
//! `--only rpc-echo:16:async` (repeatable) runs single cells and prints each
//! as one JSON line; `--compare OLD.json` prints every cell's change against
//! an earlier run and flags drops beyond the noise of the two runs.
//!
//! Writes `run-<unix>.json`, `README.md` (the table) and `throughput.svg`
//! under `--out` (default `docs/bench`).

mod amqp;
mod cell;
mod compare;
mod grpc;
mod measure;
mod memory;
mod report;
mod statistics;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use cell::{CONTENDERS, Cell, Workload, contender_name};
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
    /// Run only this cell, `WORKLOAD:SIZE:CONTENDER` (e.g.
    /// `rpc-echo:16:async`; workloads rpc-echo, rpc-wait, casts,
    /// notifications, grpc-echo; contenders raw, threaded, bridged, async),
    /// and print it as one JSON line; repeatable. Writes nothing.
    #[arg(long, value_name = "CELL")]
    only: Vec<Cell>,
    /// Runs of each cell; the median is reported, the spread is its noise
    /// (default 3 in a full run, 1 with `--quick` or `--only`).
    #[arg(long)]
    repeat: Option<usize>,
    /// After the run, print each cell's change against this earlier
    /// `run-*.json` and flag drops beyond the noise of the two runs.
    #[arg(long, value_name = "OLD.json")]
    compare: Option<PathBuf>,
    /// Run only the statistics workload (the collector binary against
    /// PostgreSQL) and write `statistics.md` under `--out`.
    #[arg(long)]
    statistics: bool,
    /// The collector binary for `--statistics` (default: beside this one).
    #[arg(long)]
    collector: Option<PathBuf>,
}

/// Runs each cell `repeat` times and keeps the median of each. The
/// contenders of a group (one workload at one size) alternate, so drift
/// hits all alike, and each round starts the group with the next one
/// ([`round_order`]), so no contender always runs first after another
/// workload's cells.
async fn measure_all(
    cells: &[Cell],
    repeat: usize,
    cell_time: Duration,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<Row>> {
    let broker = amqp::Broker::connect().await?;
    let mut runs: Vec<Vec<measure::Latencies>> = vec![Vec::new(); cells.len()];
    for round in 0..repeat {
        for index in round_order(cells, round) {
            let cell = &cells[index];
            progress.set_message(format!("{cell} (run {} of {repeat})", round + 1));
            runs[index].push(cell.measure(&broker, cell_time).await?);
            progress.inc(1);
        }
    }
    broker.clean_up().await;
    Ok(cells
        .iter()
        .zip(runs)
        .map(|(cell, runs)| Row::median_of(cell, runs))
        .collect())
}

/// The order of `cells` in round `round`: groups of consecutive cells of
/// one workload at one size stay where they are, and each group is rotated
/// by `round`. A full run's groups are raw, `threaded`, `bridged`, `async`
/// in round 0, then `threaded`, `bridged`, `async`, raw, and so on.
fn round_order(cells: &[Cell], round: usize) -> Vec<usize> {
    let mut order = Vec::with_capacity(cells.len());
    let mut start = 0;
    while start < cells.len() {
        let group = |cell: &Cell| (cell.workload, cell.size);
        let len = cells[start..]
            .iter()
            .take_while(|cell| group(cell) == group(&cells[start]))
            .count();
        order.extend((0..len).map(|i| start + (i + round) % len));
        start += len;
    }
    order
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

fn progress_bar(total: usize) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) = ProgressStyle::with_template("[{bar:30}] {pos:>3}/{len} {msg}") {
        bar.set_style(style.progress_chars("#>-"));
    }
    bar
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
    if !args.only.is_empty() {
        let repeat = args.repeat.unwrap_or(1).max(1);
        let cell_time = Duration::from_secs(if args.quick { 1 } else { 5 });
        let progress = ProgressBar::hidden();
        let rows = runtime.block_on(measure_all(&args.only, repeat, cell_time, &progress))?;
        for row in with_ratios(rows) {
            println!("{}", serde_json::to_string(&row)?);
        }
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
            "`scripts/bench --quick` (its last step, `switchyard-bench --statistics --quick`)"
        } else {
            "`scripts/bench` (its last step, `switchyard-bench --statistics`)"
        };
        let text = statistics::markdown(&cells, per_meter, command);
        std::fs::create_dir_all(&args.out)?;
        std::fs::write(args.out.join("statistics.md"), &text)?;
        println!("{text}");
        return Ok(());
    }
    let (cell_time, echo_callers, io_callers, sizes) = if args.quick {
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
    let repeat = args.repeat.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let mut cells = Vec::new();
    let mut group = |workload: Workload, sizes: &[usize]| {
        for &size in sizes {
            for contender in CONTENDERS {
                cells.push(Cell {
                    workload,
                    size,
                    contender,
                });
            }
        }
    };
    group(Workload::RpcEcho, &echo_callers);
    group(Workload::RpcWait, &io_callers);
    for &count in &sizes {
        group(Workload::Casts, &[count]);
        group(Workload::Notifications, &[count]);
    }
    group(
        Workload::GrpcEcho,
        &echo_callers[..echo_callers.len().min(3)],
    );
    let progress = progress_bar(cells.len() * repeat + CONTENDERS.len());
    let started_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs();
    let rows = runtime.block_on(measure_all(&cells, repeat, cell_time, &progress))?;
    let mut memory_kib = Vec::new();
    for contender in CONTENDERS {
        let name = contender_name(contender);
        progress.set_message(format!("memory, 1000 dispatched, {name}"));
        memory_kib.push((name.clone(), memory::measure(&name)?));
        progress.inc(1);
    }
    progress.finish_and_clear();

    let run = Run {
        started_unix,
        quick: args.quick,
        repeat,
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
    if let Some(old) = &args.compare {
        let old: Run = serde_json::from_slice(&std::fs::read(old)?)?;
        print!("{}", compare::changes(&old, &run));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use switchyard_executor::Phase;

    use super::*;

    fn group(workload: Workload, size: usize, contenders: &[Option<Phase>]) -> Vec<Cell> {
        contenders
            .iter()
            .map(|&contender| Cell {
                workload,
                size,
                contender,
            })
            .collect()
    }

    #[test]
    fn each_round_starts_every_group_with_the_next_contender_and_runs_each_cell_once() {
        let mut cells = group(Workload::Casts, 10, &CONTENDERS);
        cells.extend(group(Workload::GrpcEcho, 1, &CONTENDERS[..2]));
        assert_eq!(round_order(&cells, 0), [0, 1, 2, 3, 4, 5]);
        assert_eq!(round_order(&cells, 1), [1, 2, 3, 0, 5, 4]);
        assert_eq!(round_order(&cells, 2), [2, 3, 0, 1, 4, 5]);
        assert_eq!(round_order(&cells, 4), round_order(&cells, 0));
    }

    #[test]
    fn cells_of_one_workload_at_other_sizes_are_other_groups() {
        let mut cells = group(Workload::Casts, 10, &CONTENDERS[..2]);
        cells.extend(group(Workload::Casts, 100, &CONTENDERS[..2]));
        assert_eq!(round_order(&cells, 1), [1, 0, 3, 2]);
    }
}
