//! Judging a canary: the canary workers' calls against the main workers'
//! over a sliding window, the way Kayenta and Flagger judge canaries —
//! statistics with an effect size, not one noisy number. Pure logic: the
//! supervisor feeds it the workers' reports and acts on the verdict.
//!
//! The rules, each a test below:
//! - a worker's first [`CanaryConfig::warmup_ms`] are not judged;
//! - fewer than `min_calls` calls on either side is **inconclusive**, never
//!   a rollback;
//! - **latency**: Mann–Whitney U (one-sided: is the canary slower?) on the
//!   calls' run times, significant at `confidence`, *and* the canary's median
//!   above the main workers' by more than `min_latency_increase_ratio` and
//!   `min_latency_increase_ms` both;
//! - **error rate** and **slow polls per call**: a one-sided two-proportion
//!   z-test, significant at `confidence`, *and* the canary's rate above the
//!   main workers' by more than `max_error_rate_increase` /
//!   `max_slow_poll_rate_increase`;
//! - a failure is **hard** (rolled back at once) when the difference is
//!   overwhelming: every canary call slower than every main call, the
//!   canary's error rate at or above `rollback_error_rate`, or at least half
//!   its calls blocking the loop where the main workers' hardly do;
//! - otherwise it takes `failure_threshold` failing judgements in a row
//!   (the supervisor counts them), each over a fresh window.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};
use switchyard_executor::Phase;
use switchyard_executor::stats::ExecutorSnapshot;

/// The `[launcher.canary]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CanaryConfig {
    /// The phase the canary workers run; unset: no canary.
    pub phase: Option<Phase>,
    /// How many of the launcher's workers run the canary phase.
    pub workers: usize,
    /// The window each judgement looks at; judgements are a window apart,
    /// so each sees fresh calls.
    pub window_ms: u64,
    /// Calls each side must have finished in the window to be judged.
    pub min_calls: u64,
    /// A worker's first milliseconds (start-up, cold caches, connection
    /// set-up) are not judged.
    pub warmup_ms: u64,
    /// How sure a test must be that the canary is worse (0.99: a one-sided
    /// p-value below 0.01).
    pub confidence: f64,
    /// Failing judgements in a row before a rollback (hard failures roll
    /// back at once).
    pub failure_threshold: u32,
    /// Smallest error-rate increase that counts (0.02 = two percentage
    /// points), when significant.
    pub max_error_rate_increase: f64,
    /// Smallest increase of slow polls per call that counts, when
    /// significant.
    pub max_slow_poll_rate_increase: f64,
    /// Smallest relative increase of the median run time that counts (0.2 =
    /// 20 % slower), when significant.
    pub min_latency_increase_ratio: f64,
    /// Smallest absolute increase of the median run time that counts, when
    /// significant.
    pub min_latency_increase_ms: f64,
    /// A canary error rate at or above this (and above the main workers' by
    /// more than the margin) is rolled back at once.
    pub rollback_error_rate: f64,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        Self {
            phase: None,
            workers: 1,
            window_ms: 30_000,
            min_calls: 50,
            warmup_ms: 5_000,
            confidence: 0.99,
            failure_threshold: 3,
            max_error_rate_increase: 0.02,
            max_slow_poll_rate_increase: 0.05,
            min_latency_increase_ratio: 0.2,
            min_latency_increase_ms: 5.0,
            rollback_error_rate: 0.5,
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
        if self.min_calls < 5 {
            problems.push((
                "canary.min_calls",
                format!(
                    "{}; accepted: 5 or more (no test says anything about fewer calls)",
                    self.min_calls
                ),
            ));
        }
        if !(0.5..1.0).contains(&self.confidence) {
            problems.push((
                "canary.confidence",
                format!(
                    "{} is out of range; accepted: 0.5 to below 1 (e.g. 0.99)",
                    self.confidence
                ),
            ));
        }
        if self.failure_threshold == 0 {
            problems.push((
                "canary.failure_threshold",
                "0; accepted: 1 or more".to_string(),
            ));
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
            ("canary.rollback_error_rate", self.rollback_error_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                problems.push((key, format!("{value} is out of range; accepted: 0 to 1")));
            }
        }
        for (key, value) in [
            (
                "canary.min_latency_increase_ratio",
                self.min_latency_increase_ratio,
            ),
            (
                "canary.min_latency_increase_ms",
                self.min_latency_increase_ms,
            ),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                problems.push((key, format!("{value} is out of range; accepted: 0 or more")));
            }
        }
        problems
    }

    /// `window_ms` as a duration.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    /// `warmup_ms` as a duration.
    pub fn warmup(&self) -> Duration {
        Duration::from_millis(self.warmup_ms)
    }
}

/// What a worker reports to its supervisor every second: its executor's
/// totals so far, and the run time of each call since the last report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Calls finished (including failed).
    pub calls: u64,
    /// Calls failed.
    pub failed: u64,
    /// Blocking-detector events.
    pub slow_polls: u64,
    /// Run times (µs) of the calls finished since the previous report (the
    /// newest few thousand when there were more).
    #[serde(default)]
    pub run_times_us: Vec<u32>,
}

impl Report {
    /// The report for an executor's snapshot and the run times since the
    /// last one.
    pub fn of(snapshot: &ExecutorSnapshot, run_times_us: Vec<u32>) -> Self {
        Self {
            calls: snapshot.totals.completed,
            failed: snapshot.totals.failed,
            slow_polls: snapshot.totals.slow_polls,
            run_times_us,
        }
    }
}

/// One side's calls over the window: counters and run times.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Calls finished.
    pub calls: u64,
    /// Calls failed.
    pub failed: u64,
    /// Blocking-detector events.
    pub slow_polls: u64,
    /// Run times in microseconds.
    pub run_times_us: Vec<u32>,
}

impl Sample {
    fn add(&mut self, other: &Sample) {
        self.calls += other.calls;
        self.failed += other.failed;
        self.slow_polls += other.slow_polls;
        self.run_times_us.extend_from_slice(&other.run_times_us);
    }

    fn error_rate(&self) -> f64 {
        self.failed as f64 / self.calls.max(1) as f64
    }

    /// Slow polls per call, counting a call at most once.
    fn slow_poll_rate(&self) -> f64 {
        self.slow_polls.min(self.calls) as f64 / self.calls.max(1) as f64
    }
}

/// One worker's reports over the last window.
#[derive(Debug, Default)]
pub struct Window {
    reports: VecDeque<(Instant, Report)>,
    /// When the first report arrived: warm-up counts from there.
    first: Option<Instant>,
}

impl Window {
    /// Records a report received at `at`, forgetting those older than `keep`
    /// (but always keeping one at or before the window's start). During the
    /// worker's first `warmup` only the latest report is kept, as the base
    /// the window starts from: nothing from the warm-up is judged.
    pub fn record(&mut self, at: Instant, report: Report, keep: Duration, warmup: Duration) {
        let first = *self.first.get_or_insert(at);
        if at.saturating_duration_since(first) <= warmup {
            self.reports.clear();
        }
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

    /// What happened over the window: the counters of the newest report
    /// minus those of the window's first, and the run times reported after it.
    pub fn delta(&self) -> Sample {
        let (Some((_, first)), Some((_, last))) = (self.reports.front(), self.reports.back())
        else {
            return Sample::default();
        };
        Sample {
            calls: last.calls.saturating_sub(first.calls),
            failed: last.failed.saturating_sub(first.failed),
            slow_polls: last.slow_polls.saturating_sub(first.slow_polls),
            run_times_us: self
                .reports
                .iter()
                .skip(1)
                .flat_map(|(_, report)| report.run_times_us.iter().copied())
                .collect(),
        }
    }
}

/// Sums the workers' windows into one side.
pub fn side<'a>(windows: impl IntoIterator<Item = &'a Window>) -> Sample {
    let mut total = Sample::default();
    for window in windows {
        total.add(&window.delta());
    }
    total
}

/// Which signal decided a failing judgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Failed calls.
    ErrorRate,
    /// Blocking-detector events per call.
    SlowPolls,
    /// Run times.
    Latency,
}

impl Signal {
    /// The name in logs, notes and `rollout.rolled_back`.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::ErrorRate => "error_rate",
            Signal::SlowPolls => "slow_polls",
            Signal::Latency => "latency",
        }
    }
}

/// The outcome of one judgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Too little data to tell: never a rollback.
    Inconclusive,
    /// No signal shows the canary significantly and materially worse.
    Pass,
    /// A signal shows it worse; `hard` when overwhelmingly so.
    Fail {
        /// The signal.
        signal: Signal,
        /// Rolled back at once, without waiting for a second judgement.
        hard: bool,
    },
}

/// The figures a verdict rests on, canary beside main: what the log line,
/// the rollout note and `rollout.rolled_back` show.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evidence {
    /// Calls in the window (canary, main).
    pub calls: (u64, u64),
    /// Error rates.
    pub error_rate: (f64, f64),
    /// Slow polls per call.
    pub slow_poll_rate: (f64, f64),
    /// Median run times.
    pub median: (Duration, Duration),
    /// 99th-percentile run times.
    pub p99: (Duration, Duration),
    /// One-sided p-values of the latency, error-rate and slow-poll tests
    /// (1 where not computed).
    pub p_latency: f64,
    /// See `p_latency`.
    pub p_errors: f64,
    /// See `p_latency`.
    pub p_slow_polls: f64,
    /// The canary's median over the main workers' minus one (0.25: 25 %
    /// slower).
    pub latency_effect: f64,
}

/// A p-value as a person reads it.
fn p(value: f64) -> String {
    if value < 0.001 {
        "p<0.001".to_string()
    } else {
        format!("p={value:.3}")
    }
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "calls {}/{}, median {:.1}/{:.1} ms ({:+.0} %, {}), p99 {:.1}/{:.1} ms, \
             error rate {:.3}/{:.3} ({}), slow polls per call {:.3}/{:.3} ({}) (canary/main)",
            self.calls.0,
            self.calls.1,
            ms(self.median.0),
            ms(self.median.1),
            self.latency_effect * 100.0,
            p(self.p_latency),
            ms(self.p99.0),
            ms(self.p99.1),
            self.error_rate.0,
            self.error_rate.1,
            p(self.p_errors),
            self.slow_poll_rate.0,
            self.slow_poll_rate.1,
            p(self.p_slow_polls),
        )
    }
}

/// A verdict with its evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// What was decided.
    pub verdict: Verdict,
    /// On what figures.
    pub evidence: Evidence,
}

/// Judges the canary side against the main side.
pub fn judge(canary: &Sample, main: &Sample, config: &CanaryConfig) -> Judgement {
    let mut canary_times = canary.run_times_us.clone();
    let mut main_times = main.run_times_us.clone();
    canary_times.sort_unstable();
    main_times.sort_unstable();
    let mut evidence = Evidence {
        calls: (canary.calls, main.calls),
        error_rate: (canary.error_rate(), main.error_rate()),
        slow_poll_rate: (canary.slow_poll_rate(), main.slow_poll_rate()),
        median: (quantile(&canary_times, 0.5), quantile(&main_times, 0.5)),
        p99: (quantile(&canary_times, 0.99), quantile(&main_times, 0.99)),
        p_latency: 1.0,
        p_errors: 1.0,
        p_slow_polls: 1.0,
        latency_effect: 0.0,
    };
    let judged = |verdict| Judgement {
        verdict,
        evidence: evidence.clone(),
    };
    if canary.calls < config.min_calls || main.calls < config.min_calls {
        return judged(Verdict::Inconclusive);
    }
    let alpha = 1.0 - config.confidence;

    evidence.p_errors = proportion_p_value(canary.failed, canary.calls, main.failed, main.calls);
    let more_errors =
        evidence.error_rate.0 - evidence.error_rate.1 > config.max_error_rate_increase;
    if more_errors && evidence.p_errors < alpha {
        let hard = evidence.error_rate.0 >= config.rollback_error_rate;
        return Judgement {
            verdict: Verdict::Fail {
                signal: Signal::ErrorRate,
                hard,
            },
            evidence,
        };
    }

    evidence.p_slow_polls = proportion_p_value(
        canary.slow_polls.min(canary.calls),
        canary.calls,
        main.slow_polls.min(main.calls),
        main.calls,
    );
    let (canary_slow, main_slow) = evidence.slow_poll_rate;
    if canary_slow - main_slow > config.max_slow_poll_rate_increase && evidence.p_slow_polls < alpha
    {
        let hard = canary_slow >= 0.5 && main_slow < 0.05;
        return Judgement {
            verdict: Verdict::Fail {
                signal: Signal::SlowPolls,
                hard,
            },
            evidence,
        };
    }

    if (canary_times.len() as u64) < config.min_calls
        || (main_times.len() as u64) < config.min_calls
    {
        return Judgement {
            verdict: Verdict::Inconclusive,
            evidence,
        };
    }
    let (canary_median, main_median) = evidence.median;
    evidence.latency_effect =
        canary_median.as_secs_f64() / main_median.as_secs_f64().max(1e-6) - 1.0;
    evidence.p_latency = mann_whitney_p_value(&canary_times, &main_times);
    let material = evidence.latency_effect > config.min_latency_increase_ratio
        && canary_median.saturating_sub(main_median).as_secs_f64() * 1000.0
            > config.min_latency_increase_ms;
    if material && evidence.p_latency < alpha {
        // Every canary call slower than every main call.
        let hard = canary_times.first() > main_times.last();
        return Judgement {
            verdict: Verdict::Fail {
                signal: Signal::Latency,
                hard,
            },
            evidence,
        };
    }
    Judgement {
        verdict: Verdict::Pass,
        evidence,
    }
}

/// The `q` quantile of sorted run times (nearest rank).
/// The `q` quantile of ascending run times (nearest rank); zero when empty.
pub fn quantile(sorted_us: &[u32], q: f64) -> Duration {
    if sorted_us.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    Duration::from_micros(u64::from(sorted_us[rank - 1]))
}

fn standard_normal_upper_tail(z: f64) -> f64 {
    match Normal::new(0.0, 1.0) {
        Ok(normal) => 1.0 - normal.cdf(z),
        Err(_) => 1.0,
    }
}

/// One-sided p-value that the first proportion (`x1` of `n1`) is larger
/// than the second: the pooled two-proportion z-test.
fn proportion_p_value(x1: u64, n1: u64, x2: u64, n2: u64) -> f64 {
    if n1 == 0 || n2 == 0 {
        return 1.0;
    }
    let (p1, p2) = (x1 as f64 / n1 as f64, x2 as f64 / n2 as f64);
    let pooled = (x1 + x2) as f64 / (n1 + n2) as f64;
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 as f64 + 1.0 / n2 as f64)).sqrt();
    if se == 0.0 {
        return if p1 > p2 { 0.0 } else { 1.0 };
    }
    standard_normal_upper_tail((p1 - p2) / se)
}

/// One-sided p-value that `canary` is stochastically greater than `main`
/// (both sorted): the Mann–Whitney U test with the normal approximation,
/// corrected for ties and continuity.
fn mann_whitney_p_value(canary: &[u32], main: &[u32]) -> f64 {
    let (n1, n2) = (canary.len() as f64, main.len() as f64);
    if canary.is_empty() || main.is_empty() {
        return 1.0;
    }
    // Merge the two sorted lists, giving tied values their average rank.
    let (mut i, mut j) = (0, 0);
    let mut rank = 1.0;
    let mut canary_ranks = 0.0;
    let mut ties = 0.0;
    while i < canary.len() || j < main.len() {
        let value = match (canary.get(i), main.get(j)) {
            (Some(a), Some(b)) => (*a).min(*b),
            (Some(a), None) => *a,
            (None, Some(b)) => *b,
            (None, None) => break,
        };
        let from_canary = canary[i..].iter().take_while(|v| **v == value).count();
        let from_main = main[j..].iter().take_while(|v| **v == value).count();
        let tied = (from_canary + from_main) as f64;
        let average = rank + (tied - 1.0) / 2.0;
        canary_ranks += average * from_canary as f64;
        ties += tied * tied * tied - tied;
        rank += tied;
        i += from_canary;
        j += from_main;
    }
    let u = canary_ranks - n1 * (n1 + 1.0) / 2.0;
    let n = n1 + n2;
    let variance = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if variance <= 0.0 {
        return 1.0;
    }
    let z = (u - n1 * n2 / 2.0 - 0.5) / variance.sqrt();
    standard_normal_upper_tail(z)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic spread of run times around `median_us` (±50 %).
    fn times(n: usize, median_us: u32, seed: u32) -> Vec<u32> {
        (0..n as u32)
            .map(|i| {
                let spread =
                    (i.wrapping_mul(2_654_435_761).wrapping_add(seed) % 1001) as f64 / 1000.0;
                (median_us as f64 * (0.5 + spread)) as u32
            })
            .collect()
    }

    fn sample(calls: u64, failed: u64, slow_polls: u64, median_us: u32, seed: u32) -> Sample {
        Sample {
            calls,
            failed,
            slow_polls,
            run_times_us: times(calls as usize, median_us, seed),
        }
    }

    fn config() -> CanaryConfig {
        CanaryConfig {
            phase: Some(Phase::Async),
            min_calls: 20,
            ..CanaryConfig::default()
        }
    }

    /// The verdict on `canary` against `main` under the test settings.
    fn verdict(canary: &Sample, main: &Sample) -> Verdict {
        judge(canary, main, &config()).verdict
    }

    fn fails(signal: Signal, hard: bool) -> Verdict {
        Verdict::Fail { signal, hard }
    }

    #[test]
    fn too_few_calls_on_either_side_are_inconclusive_never_a_failure() {
        let terrible = sample(19, 19, 19, 1_000_000, 1);
        let good = sample(500, 0, 0, 1_000, 2);
        assert_eq!(verdict(&terrible, &good), Verdict::Inconclusive);
        assert_eq!(verdict(&good, &terrible), Verdict::Inconclusive);
    }

    #[test]
    fn the_same_distribution_passes() {
        for seed in 0..20 {
            let canary = sample(300, 1, 0, 20_000, seed);
            let main = sample(300, 1, 0, 20_000, seed + 7_919);
            assert_eq!(verdict(&canary, &main), Verdict::Pass, "seed {seed}");
        }
    }

    #[test]
    fn one_log2_bucket_of_noise_in_the_tail_is_not_a_regression() {
        // The demo's false rollbacks: equal medians, the canary's slowest
        // call or two twice as slow.
        let main = sample(40, 0, 0, 60_000, 3);
        let mut canary = sample(40, 0, 0, 60_000, 4);
        canary.run_times_us[0] = 524_288;
        canary.run_times_us[1] = 400_000;
        assert_eq!(verdict(&canary, &main), Verdict::Pass);
    }

    #[test]
    fn a_canary_twice_as_slow_at_the_median_fails_on_latency() {
        let judgement = judge(
            &sample(200, 0, 0, 40_000, 5),
            &sample(200, 0, 0, 20_000, 6),
            &config(),
        );
        assert_eq!(judgement.verdict, fails(Signal::Latency, false));
        assert!(judgement.evidence.p_latency < 0.01);
        assert!((judgement.evidence.latency_effect - 1.0).abs() < 0.1);
    }

    #[test]
    fn a_significant_but_tiny_slowdown_passes_the_effect_size() {
        // 3 % slower, with thousands of calls: significant, not material.
        let canary = sample(5_000, 0, 0, 20_600, 7);
        let main = sample(5_000, 0, 0, 20_000, 8);
        let judgement = judge(&canary, &main, &config());
        assert_eq!(judgement.verdict, Verdict::Pass, "{}", judgement.evidence);
    }

    #[test]
    fn a_fast_endpoint_slower_by_less_than_the_absolute_minimum_passes() {
        // 200 µs against 100 µs: twice as slow, but by 0.1 ms (margin 5 ms).
        let canary = sample(500, 0, 0, 200, 9);
        let main = sample(500, 0, 0, 100, 10);
        assert_eq!(verdict(&canary, &main), Verdict::Pass);
    }

    #[test]
    fn every_canary_call_slower_than_every_main_call_is_a_hard_failure() {
        let canary = sample(100, 0, 0, 100_000, 11);
        let main = sample(100, 0, 0, 10_000, 12);
        assert_eq!(verdict(&canary, &main), fails(Signal::Latency, true));
    }

    #[test]
    fn five_percent_failures_against_none_fail_on_error_rate() {
        let judgement = judge(
            &sample(400, 20, 0, 1_000, 13),
            &sample(400, 0, 0, 1_000, 14),
            &config(),
        );
        assert_eq!(judgement.verdict, fails(Signal::ErrorRate, false));
    }

    #[test]
    fn one_failure_more_among_few_calls_is_not_significant() {
        let canary = sample(30, 1, 0, 1_000, 15);
        let main = sample(30, 0, 0, 1_000, 16);
        // 3.3 points above the margin of 2, but one call in thirty.
        assert_eq!(verdict(&canary, &main), Verdict::Pass);
    }

    #[test]
    fn most_calls_failing_is_a_hard_failure() {
        let canary = sample(100, 60, 0, 1_000, 17);
        let main = sample(100, 0, 0, 1_000, 18);
        assert_eq!(verdict(&canary, &main), fails(Signal::ErrorRate, true));
    }

    #[test]
    fn a_loop_blocked_on_every_call_is_a_hard_failure_on_slow_polls() {
        let canary = sample(60, 0, 60, 15_000, 19);
        let main = sample(60, 0, 0, 15_000, 20);
        assert_eq!(verdict(&canary, &main), fails(Signal::SlowPolls, true));
    }

    #[test]
    fn an_occasional_descheduled_poll_on_a_busy_machine_passes() {
        // Two slow polls in 200 calls on the canary, none on the main side.
        let canary = sample(200, 0, 2, 5_000, 21);
        let main = sample(200, 0, 0, 5_000, 22);
        assert_eq!(verdict(&canary, &main), Verdict::Pass);
    }

    #[test]
    fn the_mann_whitney_test_matches_a_hand_computed_case() {
        // canary {4, 5, 6}, main {1, 2, 3}: U = 9 (every pair), n1 = n2 = 3;
        // z = (9 - 4.5 - 0.5) / sqrt(3·3·7/12) = 1.746, p ≈ 0.0404.
        let p = mann_whitney_p_value(&[4, 5, 6], &[1, 2, 3]);
        assert!((p - 0.0404).abs() < 0.001, "{p}");
        // All tied: nothing to tell.
        assert_eq!(mann_whitney_p_value(&[5, 5], &[5, 5]), 1.0);
    }

    #[test]
    fn the_two_proportion_test_matches_a_hand_computed_case() {
        // 20/400 against 0/400: pooled 0.025, se = 0.01104, z = 4.53.
        let p = proportion_p_value(20, 400, 0, 400);
        assert!(p < 1e-5, "{p}");
        assert!((proportion_p_value(10, 100, 10, 100) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn warm_up_is_not_judged_and_the_window_counts_only_what_happened_inside_it() {
        let start = Instant::now();
        let keep = Duration::from_secs(10);
        let warmup = Duration::from_secs(5);
        let mut window = Window::default();
        for second in 0..30u64 {
            // 10 calls a second; slow polls and slow calls in the first 5 s
            // (warm-up), then none.
            let at = start + Duration::from_secs(second);
            let slow = second.min(5) * 10;
            let run_time = if second < 5 { 1_000_000 } else { 1_000 };
            let report = Report {
                calls: second * 10,
                failed: 0,
                slow_polls: slow,
                run_times_us: vec![run_time; 10],
            };
            window.record(at, report, keep, warmup);
            if second == 8 {
                let delta = window.delta();
                assert_eq!(delta.slow_polls, 0, "warm-up excluded");
                assert!(delta.run_times_us.iter().all(|us| *us == 1_000));
            }
        }
        let delta = window.delta();
        assert_eq!(delta.calls, 100, "the last ten seconds");
        assert_eq!(delta.run_times_us.len(), 100);
        assert_eq!(side([&window, &window]).calls, 200);
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let config = CanaryConfig {
            phase: Some(Phase::Async),
            confidence: 1.0,
            failure_threshold: 0,
            min_calls: 1,
            min_latency_increase_ratio: -1.0,
            ..CanaryConfig::default()
        };
        let keys: Vec<_> = config.problems(2).into_iter().map(|(k, _)| k).collect();
        for key in [
            "canary.confidence",
            "canary.failure_threshold",
            "canary.min_calls",
            "canary.min_latency_increase_ratio",
        ] {
            assert!(keys.contains(&key), "{key} in {keys:?}");
        }
    }
}
