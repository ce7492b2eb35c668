//! `--compare OLD.json`: each cell's change against an earlier run, and a
//! flag where a phase lost more than the noise the two runs saw.
//!
//! A phase's cell is judged on its ratio to raw in the same run (the
//! broker and the machine drift between runs; the ratio cancels most of
//! that), a raw cell on its rate (a slower raw says the machine or the
//! broker changed, not Switchyard). The noise of a cell is the spread of
//! its repeated runs, (max − min) / median — for a ratio, the larger of its
//! own and its raw cell's, since both move it; the larger of the two runs'
//! counts, and a run measured once is taken to be [`UNREPEATED_NOISE`].

use std::fmt::Write as _;

use crate::report::{Row, Run};

/// The noise assumed for a cell measured once: the spread seen between
/// repeated full runs on the 2-core machines (docs/benchmarks.md).
pub const UNREPEATED_NOISE: f64 = 0.10;

/// How one cell moved.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// `workload:size:contender`.
    pub cell: String,
    /// The judged figure (ratio to raw, or raw's rate) before and after.
    pub before: f64,
    /// After.
    pub after: f64,
    /// `after / before − 1`.
    pub change: f64,
    /// The noise the change is judged against.
    pub noise: f64,
}

impl Change {
    /// A drop beyond the noise.
    pub fn dropped(&self) -> bool {
        self.change < -self.noise
    }
}

fn noise(run: &Run, row: &Row) -> f64 {
    let own = |row: &Row| {
        if row.repeats > 1 {
            row.noise
        } else {
            UNREPEATED_NOISE
        }
    };
    let raw = run
        .rows
        .iter()
        .find(|r| r.contender == "raw" && r.workload == row.workload && r.size == row.size)
        .map(own)
        .unwrap_or(0.0);
    own(row).max(raw)
}

/// Every cell of `new` that `old` measured too, in `new`'s order.
pub fn compare(old: &Run, new: &Run) -> Vec<Change> {
    new.rows
        .iter()
        .filter_map(|after| {
            let before = old.rows.iter().find(|b| {
                b.workload == after.workload
                    && b.size == after.size
                    && b.contender == after.contender
            })?;
            let figure = |row: &Row| {
                if row.contender == "raw" {
                    row.latencies.rate
                } else {
                    row.ratio
                }
            };
            let (b, a) = (figure(before), figure(after));
            (b > 0.0).then(|| Change {
                cell: format!("{}:{}:{}", after.workload, after.size, after.contender),
                before: b,
                after: a,
                change: a / b - 1.0,
                noise: noise(old, before).max(noise(new, after)),
            })
        })
        .collect()
}

/// The comparison as text: one line a cell, dropped ones marked.
pub fn changes(old: &Run, new: &Run) -> String {
    let changes = compare(old, new);
    let mut out = format!(
        "\nchanges against run {} (phases: ratio to raw; raw: rate /s)\n",
        old.started_unix
    );
    for change in &changes {
        let _ = writeln!(
            out,
            "{:<40} {:>10.2} -> {:>10.2}  {:>+6.1}%  (noise ±{:.1}%){}",
            change.cell,
            change.before,
            change.after,
            change.change * 100.0,
            change.noise * 100.0,
            if change.dropped() { "  DROP" } else { "" }
        );
    }
    let dropped = changes.iter().filter(|c| c.dropped()).count();
    let _ = writeln!(
        out,
        "{dropped} of {} cells dropped beyond their noise",
        changes.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::Latencies;

    fn row(contender: &str, rate: f64, ratio: f64, repeats: usize, noise: f64) -> Row {
        Row {
            workload: "rpc echo".into(),
            size: 16,
            contender: contender.into(),
            latencies: Latencies {
                rate,
                ..Latencies::default()
            },
            ratio,
            repeats,
            noise,
        }
    }

    fn run(rows: Vec<Row>) -> Run {
        Run {
            started_unix: 1,
            quick: false,
            repeat: 3,
            machine: String::new(),
            rows,
            memory_kib: Vec::new(),
        }
    }

    /// A run of a raw cell and an `async` cell, each measured 3 times.
    fn raw_and_async(raw_rate: f64, raw_noise: f64, async_rate: f64, async_ratio: f64) -> Run {
        run(vec![
            row("raw", raw_rate, 1.0, 3, raw_noise),
            row("async", async_rate, async_ratio, 3, 0.02),
        ])
    }

    #[test]
    fn a_phase_is_judged_on_its_ratio_to_raw_not_its_rate() {
        // The whole machine got 20 % slower: raw and async alike.
        let old = raw_and_async(10_000.0, 0.02, 9_000.0, 0.9);
        let new = raw_and_async(8_000.0, 0.02, 7_200.0, 0.9);
        let changes = compare(&old, &new);
        assert!(changes[0].dropped(), "raw's rate fell: the machine changed");
        assert!(
            !changes[1].dropped(),
            "async kept its ratio: {:?}",
            changes[1]
        );
    }

    #[test]
    fn a_drop_counts_only_beyond_the_larger_noise_of_the_two_runs() {
        let old = run(vec![row("async", 0.0, 0.90, 3, 0.08)]);
        let within = run(vec![row("async", 0.0, 0.84, 3, 0.03)]);
        let beyond = run(vec![row("async", 0.0, 0.80, 3, 0.03)]);
        assert!(!compare(&old, &within)[0].dropped());
        assert!(compare(&old, &beyond)[0].dropped());
    }

    #[test]
    fn a_ratio_is_as_noisy_as_its_raw_cell() {
        let old = raw_and_async(10_000.0, 0.30, 0.0, 0.90);
        let new = raw_and_async(12_000.0, 0.02, 0.0, 0.72);
        let change = &compare(&old, &new)[1];
        assert_eq!(change.noise, 0.30);
        assert!(!change.dropped(), "{change:?}");
    }

    #[test]
    fn a_run_measured_once_is_given_the_default_noise() {
        let old = run(vec![row("async", 0.0, 0.90, 1, 0.0)]);
        let new = run(vec![row("async", 0.0, 0.85, 1, 0.0)]);
        let change = &compare(&old, &new)[0];
        assert_eq!(change.noise, UNREPEATED_NOISE);
        assert!(!change.dropped());
    }
}
