//! Judging a canary: the canary workers' calls against the main workers'
//! over a sliding window, on three signals — error rate, p99 run time and
//! blocking-detector events (slow polls) per call. Pure logic: the
//! supervisor feeds it the workers' reports.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchyard_executor::Phase;
use switchyard_executor::stats::{ExecutorSnapshot, HistogramSnapshot};

/// The `[launcher.canary]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CanaryConfig {
    /// The phase the canary workers run; unset: no canary.
    pub phase: Option<Phase>,
    /// How many of the launcher's workers run the canary phase.
    pub workers: usize,
    /// The sliding window both sides are compared over.
    pub window_ms: u64,
    /// Calls each side must have finished in the window before it is judged.
    pub min_calls: u64,
    /// Rolled back when the canary's failed share of calls exceeds the main
    /// workers' by more than this (0.02 = two percentage points).
    pub max_error_rate_increase: f64,
    /// Rolled back when the canary's p99 run time exceeds the main workers'
    /// by more than this.
    pub max_p99_increase_ms: u64,
    /// Rolled back when the canary's slow polls per call exceed the main
    /// workers' by more than this.
    pub max_slow_poll_rate_increase: f64,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        Self {
            phase: None,
            workers: 1,
            window_ms: 30_000,
            min_calls: 50,
            max_error_rate_increase: 0.02,
            max_p99_increase_ms: 100,
            max_slow_poll_rate_increase: 0.01,
        }
    }
}

impl CanaryConfig {
    /// Range checks, relative to `[launcher]` (`workers` is the launcher's).
    pub fn problems(&self, workers: usize) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.phase.is_some() && !(1..workers).contains(&self.workers) {
            problems.push((
                "canary.workers",
                format!(
                    "{} canary worker(s) of {workers}; accepted: 1 to {} (at least one worker must run the main phase; raise launcher.workers for more)",
                    self.workers,
                    workers.saturating_sub(1)
                ),
            ));
        }
        if self.window_ms < 1000 {
            problems.push((
                "canary.window_ms",
                format!("{} is too short; accepted: 1000 or more", self.window_ms),
            ));
        }
        if self.min_calls == 0 {
            problems.push(("canary.min_calls", "0; accepted: 1 or more".to_string()));
        }
        for (key, value) in [
            (
                "canary.max_error_rate_increase",
                self.max_error_rate_increase,
            ),
            (
                "canary.max_slow_poll_rate_increase",
                self.max_slow_poll_rate_increase,
            ),
        ] {
            if !(0.0..=1.0).contains(&value) {
                problems.push((key, format!("{value} is out of range; accepted: 0 to 1")));
            }
        }
        problems
    }

    /// `window_ms` as a duration.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }
}

/// What a worker reports to its supervisor: its executor's totals so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Calls finished (including failed).
    pub calls: u64,
    /// Calls failed.
    pub failed: u64,
    /// Blocking-detector events.
    pub slow_polls: u64,
    /// Run time histogram buckets (bucket `i`: below 2^i µs).
    pub run_time: Vec<u64>,
}

impl Report {
    /// The report for an executor's snapshot.
    pub fn of(snapshot: &ExecutorSnapshot) -> Self {
        Self {
            calls: snapshot.totals.completed,
            failed: snapshot.totals.failed,
            slow_polls: snapshot.totals.slow_polls,
            run_time: snapshot.run_time.buckets.clone(),
        }
    }

    /// `self - earlier`, counter by counter (a restarted counter counts from 0).
    fn since(&self, earlier: &Report) -> Report {
        Report {
            calls: self.calls.saturating_sub(earlier.calls),
            failed: self.failed.saturating_sub(earlier.failed),
            slow_polls: self.slow_polls.saturating_sub(earlier.slow_polls),
            run_time: self
                .run_time
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.run_time.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    fn add(&mut self, other: &Report) {
        self.calls += other.calls;
        self.failed += other.failed;
        self.slow_polls += other.slow_polls;
        if self.run_time.len() < other.run_time.len() {
            self.run_time.resize(other.run_time.len(), 0);
        }
        for (mine, theirs) in self.run_time.iter_mut().zip(&other.run_time) {
            *mine += theirs;
        }
    }

    fn error_rate(&self) -> f64 {
        self.failed as f64 / self.calls.max(1) as f64
    }

    fn slow_poll_rate(&self) -> f64 {
        self.slow_polls as f64 / self.calls.max(1) as f64
    }

    fn p99(&self) -> Duration {
        HistogramSnapshot {
            count: self.run_time.iter().sum(),
            buckets: self.run_time.clone(),
            sum_us: 0,
        }
        .quantile(0.99)
        .unwrap_or_default()
    }
}

/// One worker's reports over the last window.
#[derive(Debug, Default)]
pub struct Window {
    reports: VecDeque<(Instant, Report)>,
}

impl Window {
    /// Records a report received at `at`, forgetting those older than `keep`
    /// (but always keeping one at or before the window's start).
    pub fn record(&mut self, at: Instant, report: Report, keep: Duration) {
        self.reports.push_back((at, report));
        while self.reports.len() > 2
            && self
                .reports
                .get(1)
                .is_some_and(|(second, _)| at.saturating_duration_since(*second) >= keep)
        {
            self.reports.pop_front();
        }
    }

    /// What happened over the window: the newest report minus the one at
    /// the window's start (or the first, for a worker younger than the window).
    pub fn delta(&self) -> Report {
        match (self.reports.front(), self.reports.back()) {
            (Some((_, first)), Some((_, last))) => last.since(first),
            _ => Report::default(),
        }
    }
}

/// A judgement of the canary.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// One side has fewer than `min_calls` calls in the window.
    NotEnoughCalls,
    /// Within every margin; the summary says by how much.
    Healthy(String),
    /// Worse beyond a margin: which signal, and the figures.
    Worse {
        /// `error_rate`, `p99` or `slow_polls`.
        signal: &'static str,
        /// Canary value, main value, margin.
        detail: String,
    },
}

/// Sums the workers' windows into one side.
pub fn side<'a>(windows: impl IntoIterator<Item = &'a Window>) -> Report {
    let mut total = Report::default();
    for window in windows {
        total.add(&window.delta());
    }
    total
}

/// Compares the canary side with the main side.
pub fn judge(canary: &Report, main: &Report, config: &CanaryConfig) -> Verdict {
    if canary.calls < config.min_calls || main.calls < config.min_calls {
        return Verdict::NotEnoughCalls;
    }
    let (canary_errors, main_errors) = (canary.error_rate(), main.error_rate());
    if canary_errors - main_errors > config.max_error_rate_increase {
        return Verdict::Worse {
            signal: "error_rate",
            detail: format!(
                "error rate {:.3} on the canary vs {:.3} on the main workers (margin {})",
                canary_errors, main_errors, config.max_error_rate_increase
            ),
        };
    }
    let (canary_slow, main_slow) = (canary.slow_poll_rate(), main.slow_poll_rate());
    if canary_slow - main_slow > config.max_slow_poll_rate_increase {
        return Verdict::Worse {
            signal: "slow_polls",
            detail: format!(
                "slow polls per call {:.3} on the canary vs {:.3} on the main workers (margin {}): an endpoint blocks the async loop",
                canary_slow, main_slow, config.max_slow_poll_rate_increase
            ),
        };
    }
    let (canary_p99, main_p99) = (canary.p99(), main.p99());
    let margin = Duration::from_millis(config.max_p99_increase_ms);
    if canary_p99 > main_p99 + margin {
        return Verdict::Worse {
            signal: "p99",
            detail: format!(
                "p99 run time {canary_p99:?} on the canary vs {main_p99:?} on the main workers (margin {margin:?})"
            ),
        };
    }
    Verdict::Healthy(format!(
        "calls {}/{}, error rate {:.3}/{:.3}, p99 {canary_p99:?}/{main_p99:?}, slow polls per call {:.3}/{:.3} (canary/main)",
        canary.calls, main.calls, canary_errors, main_errors, canary_slow, main_slow
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(calls: u64, failed: u64, slow_polls: u64, bucket: usize) -> Report {
        let mut run_time = vec![0; 24];
        run_time[bucket] = calls;
        Report {
            calls,
            failed,
            slow_polls,
            run_time,
        }
    }

    fn config() -> CanaryConfig {
        CanaryConfig {
            phase: Some(Phase::Async),
            min_calls: 10,
            ..CanaryConfig::default()
        }
    }

    #[test]
    fn too_few_calls_on_either_side_decide_nothing() {
        let bad = report(9, 9, 9, 20);
        assert_eq!(
            judge(&bad, &report(100, 0, 0, 5), &config()),
            Verdict::NotEnoughCalls
        );
        assert_eq!(
            judge(&report(100, 0, 0, 5), &report(9, 0, 0, 5), &config()),
            Verdict::NotEnoughCalls
        );
    }

    #[test]
    fn each_signal_trips_on_its_own_margin() {
        let main = report(100, 1, 0, 10);
        let worse = |canary: Report| match judge(&canary, &main, &config()) {
            Verdict::Worse { signal, .. } => signal,
            other => panic!("expected a rollback, got {other:?}"),
        };
        assert_eq!(worse(report(100, 4, 0, 10)), "error_rate");
        assert_eq!(worse(report(100, 1, 2, 10)), "slow_polls");
        // 2^18 µs ≈ 262 ms against 1 ms: beyond the 100 ms margin.
        assert_eq!(worse(report(100, 1, 0, 18)), "p99");
    }

    #[test]
    fn a_canary_within_the_margins_is_healthy() {
        let main = report(100, 1, 0, 10);
        // One more failure in a hundred, one slow poll, p99 2 ms vs 1 ms.
        let canary = report(100, 2, 1, 11);
        assert!(matches!(
            judge(&canary, &main, &config()),
            Verdict::Healthy(_)
        ));
    }

    #[test]
    fn the_window_counts_only_what_happened_inside_it() {
        let start = Instant::now();
        let keep = Duration::from_secs(10);
        let mut window = Window::default();
        for second in 0..30u64 {
            // 10 calls a second, each slow until second 15.
            let slow = second.min(15) * 10;
            let at = start + Duration::from_secs(second);
            window.record(at, report(second * 10, 0, slow, 3), keep);
        }
        let delta = window.delta();
        assert_eq!(delta.calls, 100, "the last ten seconds");
        assert_eq!(delta.slow_polls, 0, "the slow ones fell out of the window");
        assert_eq!(side([&window, &window]).calls, 200);
    }
}
