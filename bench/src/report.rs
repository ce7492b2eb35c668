//! The run's outputs: a JSON file per run, a Markdown table and an SVG chart.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cell::{Cell, contender_name};
use crate::measure::Latencies;

/// One measured cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub workload: String,
    /// Concurrent callers, or messages for throughput workloads.
    pub size: usize,
    pub contender: String,
    #[serde(flatten)]
    pub latencies: Latencies,
    /// `rate` divided by the raw contender's in the same run (0 when raw
    /// was not measured).
    pub ratio: f64,
    /// How many times the cell ran (runs before repeats existed: 1).
    #[serde(default = "one")]
    pub repeats: usize,
    /// The spread of the rate between those runs: (max − min) / median.
    #[serde(default)]
    pub noise: f64,
}

fn one() -> usize {
    1
}

impl Row {
    /// The run of `cell` with the median rate, and the spread of `runs`.
    pub fn median_of(cell: &Cell, mut runs: Vec<Latencies>) -> Self {
        runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        let repeats = runs.len();
        let (low, high) = (
            runs.first().map(|l| l.rate).unwrap_or(0.0),
            runs.last().map(|l| l.rate).unwrap_or(0.0),
        );
        let latencies = runs.swap_remove(repeats / 2);
        let noise = if latencies.rate > 0.0 {
            (high - low) / latencies.rate
        } else {
            0.0
        };
        Self {
            workload: cell.workload.title().into(),
            size: cell.size,
            contender: contender_name(cell.contender),
            ratio: if cell.contender.is_none() { 1.0 } else { 0.0 },
            latencies,
            repeats,
            noise,
        }
    }
}

/// Everything one run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub started_unix: u64,
    pub quick: bool,
    /// Runs of each cell (the median is reported).
    #[serde(default = "one")]
    pub repeat: usize,
    pub machine: String,
    pub rows: Vec<Row>,
    /// Resident growth with 1,000 requests dispatched, KiB, per contender.
    pub memory_kib: Vec<(String, u64)>,
}

/// What this machine is, from /proc.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores ({cpu}), {memory}, RabbitMQ on loopback")
}

impl Run {
    pub fn markdown(&self, command: &str) -> String {
        let mut out = format!(
            "# Benchmark results\n\nProduced by `{command}` ({}), {} — Unix time {}.\n\
             Every ratio compares with the raw contender measured in the same run \
             (raw lapin sending Switchyard's messages through the same kind of exchange \
             and queue, raw tonic; docs/benchmarks.md); each cell is the median of {} run(s), its noise the spread between them \
             ((max − min) / median). For casts and notifications the latencies are \
             publish → handled.\n",
            if self.quick { "quick mode" } else { "full run" },
            self.machine,
            self.started_unix,
            self.repeat
        );
        let mut workloads: Vec<&str> = Vec::new();
        for row in &self.rows {
            if !workloads.contains(&row.workload.as_str()) {
                workloads.push(&row.workload);
            }
        }
        for workload in workloads {
            let _ = write!(
                out,
                "\n## {workload}\n\n| size | contender | rate /s | ratio to raw | noise | p50 µs | p99 µs | p99.9 µs | failed |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|\n"
            );
            for row in self.rows.iter().filter(|r| r.workload == workload) {
                let l = &row.latencies;
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {:.2} | {:.0} % | {} | {} | {} | {} |",
                    row.size,
                    row.contender,
                    l.rate,
                    row.ratio,
                    row.noise * 100.0,
                    l.p50_us,
                    l.p99_us,
                    l.p999_us,
                    l.failed
                );
            }
        }
        out.push_str("\n## Memory with 1,000 requests dispatched\n\n| contender | resident growth KiB |\n|---|---:|\n");
        for (contender, kib) in &self.memory_kib {
            let _ = writeln!(out, "| {contender} | {kib} |");
        }
        out.push_str(
            "\nIn `threaded` and `bridged`, 64 of the 1,000 run (one per pool thread) and the rest wait for a slot.\n\
             \n![throughput and p99 per phase](throughput.svg)\n",
        );
        out
    }

    /// Calls/s and p99 of the RPC echo workload by callers, one line per contender.
    pub fn chart(&self, path: &Path) -> anyhow::Result<()> {
        let rows: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| r.workload == "rpc echo")
            .collect();
        let contenders = ["raw", "threaded", "bridged", "async"];
        let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(600);
        let max_callers = rows.iter().map(|r| r.size).max().unwrap_or(1) as f64;
        let colors = [BLACK, RED, BLUE, GREEN];
        for (area, title, value) in [
            (
                &left,
                "RPC echo: calls/s",
                (|r: &Row| r.latencies.rate) as fn(&Row) -> f64,
            ),
            (&right, "RPC echo: p99 ms", |r: &Row| {
                r.latencies.p99_us as f64 / 1000.0
            }),
        ] {
            let top = rows.iter().map(|r| value(r)).fold(0.0_f64, f64::max) * 1.1 + 1.0;
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 20))
                .margin(15)
                .x_label_area_size(35)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..max_callers * 1.05, 0.0..top)?;
            chart.configure_mesh().x_desc("concurrent callers").draw()?;
            for (contender, color) in contenders.iter().zip(colors) {
                let points: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| r.contender == *contender)
                    .map(|r| (r.size as f64, value(r)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                    .label(*contender)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart.draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, color.filled())),
                )?;
            }
            chart
                .configure_series_labels()
                .border_style(BLACK)
                .background_style(WHITE.mix(0.8))
                .draw()?;
        }
        root.present()?;
        Ok(())
    }
}
