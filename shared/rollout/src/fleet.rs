//! The fleet judge: while a service's instances move from one phase to
//! another — task by task, by an engine such as Docker's swarm mode or an
//! Argo Rollout, not by a launcher — the api judges every instance of the
//! newest phase against all the instances still in the others, from their
//! heartbeats, with the launcher canary's judge ([`crate::canary::judge`]).
//! A container's healthcheck asks for its own instances' verdicts
//! (`switchyard health --verdict`), so the engine stops and reverts a move
//! the judge fails. Pure logic: the api feeds it heartbeats.
//!
//! The rules, each a test below:
//! - a service whose up instances all run one phase is not judged (nothing
//!   to compare with);
//! - the newest phase is the phase of the instance started last; its
//!   instances are judged one by one, each on its own heartbeats, against
//!   the pooled instances of every other phase, over the same window and
//!   warm-up as a canary;
//! - a hard failure fails the instance at once; otherwise it takes
//!   `failure_threshold` failing judgements in a row, each a window apart;
//! - a failed instance stays failed until it leaves (stops, or is silent for
//!   a window): an engine's rollback must not be undone by a good second;
//! - a silent instance drops out of both sides after a window.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchyard_proto::metering::v1::InstanceStatus;

use crate::canary::{self, CanaryConfig, Report, Verdict, Window};

/// The api's `[fleet]` section: how instances mid-move are judged. The
/// effect sizes (how much worse counts) are the launcher canary's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// The window each judgement looks at; counted judgements are a window
    /// apart.
    pub window_ms: u64,
    /// Calls the instance and the others must each have finished in the
    /// window to be judged.
    pub min_calls: u64,
    /// An instance's first milliseconds after its first heartbeat are not
    /// judged.
    pub warmup_ms: u64,
    /// How sure a test must be that the instance is worse.
    pub confidence: f64,
    /// Failing judgements in a row before the verdict is `fail` (hard
    /// failures fail at once).
    pub failure_threshold: u32,
}

impl Default for FleetConfig {
    fn default() -> Self {
        let canary = CanaryConfig::default();
        Self {
            window_ms: canary.window_ms,
            min_calls: canary.min_calls,
            warmup_ms: canary.warmup_ms,
            confidence: canary.confidence,
            failure_threshold: canary.failure_threshold,
        }
    }
}

impl FleetConfig {
    /// The judge's settings: these, and the canary's effect sizes.
    pub fn judge(&self) -> CanaryConfig {
        CanaryConfig {
            window_ms: self.window_ms,
            min_calls: self.min_calls,
            warmup_ms: self.warmup_ms,
            confidence: self.confidence,
            failure_threshold: self.failure_threshold,
            ..CanaryConfig::default()
        }
    }

    /// Range checks, relative to the section (the canary's own).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        self.judge()
            .problems(0)
            .into_iter()
            .map(|(key, problem)| (key.trim_start_matches("canary."), problem))
            .collect()
    }
}

/// An instance's standing with the judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Standing {
    /// Not judged: its service runs one phase, or it runs an older one.
    #[default]
    NotJudged,
    /// Judged, too little data to tell.
    Inconclusive,
    /// Judged, not worse.
    Pass,
    /// Worse: hard, or `failure_threshold` judgements in a row.
    Fail,
}

impl Standing {
    /// The name in `InstanceStatus.verdict`: empty when not judged.
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::NotJudged => "",
            Standing::Inconclusive => "inconclusive",
            Standing::Pass => "pass",
            Standing::Fail => "fail",
        }
    }
}

/// An instance whose verdict has just become `fail`.
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    /// Its service.
    pub service: String,
    /// The instance.
    pub instance_id: String,
    /// Its host.
    pub host: String,
    /// The phase it runs.
    pub phase: String,
    /// The figures, this instance beside the others.
    pub evidence: String,
}

#[derive(Debug)]
struct Tracked {
    phase: String,
    host: String,
    /// When it started, by its own uptime: the newest phase is the phase of
    /// the instance started last.
    started: Instant,
    heard: Instant,
    window: Window,
    failures: u32,
    last_counted: Option<Instant>,
    standing: Standing,
    evidence: String,
}

/// Every instance's window and verdict, by (service, instance).
#[derive(Debug)]
pub struct Fleet {
    config: CanaryConfig,
    instances: BTreeMap<(String, String), Tracked>,
}

impl Fleet {
    /// A judge with `config`.
    pub fn new(config: &FleetConfig) -> Self {
        Self {
            config: config.judge(),
            instances: BTreeMap::new(),
        }
    }

    /// Takes one instance's heartbeat, received at `at`, with the run times
    /// it carried, and judges that instance again. Returns it when its
    /// verdict has just become `fail`.
    pub fn heard(
        &mut self,
        status: &InstanceStatus,
        run_times_us: Vec<u32>,
        at: Instant,
    ) -> Option<Failed> {
        let key = (status.service.clone(), status.instance_id.clone());
        if status.stopped {
            self.instances.remove(&key);
        } else {
            let started = at
                .checked_sub(Duration::from_secs(status.uptime_seconds))
                .unwrap_or(at);
            let tracked = self
                .instances
                .entry(key.clone())
                .or_insert_with(|| Tracked {
                    phase: status.phase.clone(),
                    host: status.host.clone(),
                    started,
                    heard: at,
                    window: Window::default(),
                    failures: 0,
                    last_counted: None,
                    standing: Standing::NotJudged,
                    evidence: String::new(),
                });
            tracked.heard = at;
            tracked.window.record(
                at,
                Report {
                    calls: status.handled,
                    failed: status.failed,
                    slow_polls: status.slow_polls,
                    run_times_us,
                },
                self.config.window(),
                self.config.warmup(),
            );
        }
        self.judge(&key, at)
    }

    /// The verdict on an instance and its evidence (empty when not judged).
    pub fn verdict(&self, service: &str, instance_id: &str) -> (Standing, &str) {
        self.instances
            .get(&(service.to_string(), instance_id.to_string()))
            .map_or((Standing::NotJudged, ""), |tracked| {
                (tracked.standing, tracked.evidence.as_str())
            })
    }

    /// Forgets silent instances, clears the verdicts of the service's
    /// instances outside its newest phase (a `fail` stays), and judges the
    /// instance just heard when it runs the newest phase. Only that one: an
    /// instance is judged on its own heartbeats, so a heartbeat costs one
    /// judgement, not one per instance of the new phase.
    fn judge(&mut self, key: &(String, String), at: Instant) -> Option<Failed> {
        let window = self.config.window();
        self.instances
            .retain(|_, tracked| at.saturating_duration_since(tracked.heard) <= window);
        let service = key.0.as_str();
        let newest = self
            .instances
            .iter()
            .filter(|(other, _)| other.0 == service)
            .max_by_key(|(_, tracked)| tracked.started)
            .map(|(_, tracked)| tracked.phase.clone())?;
        let one_phase = self
            .instances
            .iter()
            .all(|(other, tracked)| other.0 != service || tracked.phase == newest);
        for (_, tracked) in self.instances.iter_mut().filter(|(other, tracked)| {
            other.0 == service
                && tracked.standing != Standing::Fail
                && (one_phase || tracked.phase != newest)
        }) {
            tracked.standing = Standing::NotJudged;
            tracked.evidence.clear();
            tracked.failures = 0;
        }
        let heard = self.instances.get(key)?;
        if one_phase || heard.phase != newest || heard.standing == Standing::Fail {
            return None;
        }
        let others: Vec<&Tracked> = self
            .instances
            .iter()
            .filter(|(other, tracked)| other.0 == service && tracked.phase != newest)
            .map(|(_, tracked)| tracked)
            .collect();
        let against = describe(&others);
        let main = canary::side(others.iter().map(|tracked| &tracked.window));
        let judgement = canary::judge(&heard.window.delta(), &main, &self.config);

        let tracked = self.instances.get_mut(key)?;
        let hard = matches!(judgement.verdict, Verdict::Fail { hard: true, .. });
        let due = tracked
            .last_counted
            .is_none_or(|last| at.saturating_duration_since(last) >= window);
        if !hard && !due {
            return None;
        }
        tracked.last_counted = Some(at);
        let evidence = format!(
            "{} against {against}: {}",
            tracked.phase, judgement.evidence
        );
        let (standing, evidence) = match judgement.verdict {
            Verdict::Inconclusive => (Standing::Inconclusive, evidence),
            Verdict::Pass => {
                tracked.failures = 0;
                (Standing::Pass, evidence)
            }
            Verdict::Fail { signal, hard } => {
                tracked.failures += 1;
                let signal = signal.as_str();
                if hard {
                    (
                        Standing::Fail,
                        format!("worse on {signal} (overwhelmingly): {evidence}"),
                    )
                } else if tracked.failures >= self.config.failure_threshold {
                    (
                        Standing::Fail,
                        format!(
                            "worse on {signal} ({} judgements in a row): {evidence}",
                            tracked.failures
                        ),
                    )
                } else {
                    (
                        Standing::Inconclusive,
                        format!(
                            "failing on {signal} ({} of {}): {evidence}",
                            tracked.failures, self.config.failure_threshold
                        ),
                    )
                }
            }
        };
        tracked.standing = standing;
        tracked.evidence = evidence;
        (standing == Standing::Fail).then(|| Failed {
            service: key.0.clone(),
            instance_id: key.1.clone(),
            host: tracked.host.clone(),
            phase: tracked.phase.clone(),
            evidence: tracked.evidence.clone(),
        })
    }
}

/// "2 instance(s) in threaded": the side an instance is judged against.
fn describe(others: &[&Tracked]) -> String {
    let mut phases: BTreeMap<&str, usize> = BTreeMap::new();
    for tracked in others {
        *phases.entry(tracked.phase.as_str()).or_default() += 1;
    }
    phases
        .iter()
        .map(|(phase, count)| format!("{count} instance(s) in {phase}"))
        .collect::<Vec<_>>()
        .join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn config() -> FleetConfig {
        FleetConfig {
            window_ms: 3000,
            min_calls: 20,
            warmup_ms: 1000,
            confidence: 0.99,
            failure_threshold: 2,
        }
    }

    /// A simulated instance: its totals grow by `calls` a second, each call
    /// taking `run_us`, `slow` of them blocking the loop.
    struct Simulated {
        status: InstanceStatus,
        run_us: u32,
        spread: u32,
        calls: u64,
        slow: u64,
    }

    impl Simulated {
        fn new(instance: &str, phase: &str, uptime: u64, run_us: u32) -> Self {
            Self {
                status: InstanceStatus {
                    service: "echo".into(),
                    instance_id: instance.into(),
                    phase: phase.into(),
                    host: format!("host-{instance}"),
                    uptime_seconds: uptime,
                    ..InstanceStatus::default()
                },
                run_us,
                spread: 1,
                calls: 40,
                slow: 0,
            }
        }

        fn spread(mut self, step: u32) -> Self {
            self.spread = step;
            self
        }

        fn blocking(mut self) -> Self {
            self.slow = self.calls;
            self
        }

        fn beat(&mut self, fleet: &mut Fleet, at: Instant) -> Option<Failed> {
            self.status.handled += self.calls;
            self.status.slow_polls += self.slow;
            self.status.uptime_seconds += 1;
            let times = (0..self.calls as u32)
                .map(|i| self.run_us + i * self.spread)
                .collect();
            fleet.heard(&self.status, times, at)
        }
    }

    /// Runs every instance's heartbeat once a second for `seconds`; returns
    /// every instance that failed, in order.
    fn run(
        fleet: &mut Fleet,
        instances: &mut [Simulated],
        start: Instant,
        seconds: u32,
    ) -> Vec<String> {
        let mut failed = Vec::new();
        for second in 0..seconds {
            for instance in instances.iter_mut() {
                failed.extend(
                    instance
                        .beat(fleet, start + SECOND * second)
                        .into_iter()
                        .map(|f| f.instance_id),
                );
            }
        }
        failed
    }

    fn standing(fleet: &Fleet, instance: &str) -> Standing {
        fleet.verdict("echo", instance).0
    }

    #[test]
    fn a_service_running_one_phase_is_not_judged() {
        let mut fleet = Fleet::new(&config());
        let mut instances = [
            Simulated::new("a", "threaded", 100, 500),
            Simulated::new("b", "threaded", 0, 5000).blocking(),
        ];
        let failed = run(&mut fleet, &mut instances, Instant::now(), 10);
        assert!(failed.is_empty());
        assert_eq!(standing(&fleet, "b"), Standing::NotJudged);
        assert_eq!(fleet.verdict("echo", "b").1, "");
    }

    #[test]
    fn an_instance_of_the_newest_phase_that_blocks_the_loop_fails_at_once_with_its_evidence() {
        let mut fleet = Fleet::new(&config());
        let mut instances = [
            Simulated::new("old-1", "threaded", 100, 500),
            Simulated::new("old-2", "threaded", 100, 500),
            Simulated::new("new", "async", 0, 500).blocking(),
        ];
        let failed = run(&mut fleet, &mut instances, Instant::now(), 4);
        assert_eq!(failed, ["new"]);
        let (verdict, evidence) = fleet.verdict("echo", "new");
        assert_eq!(verdict, Standing::Fail);
        assert!(
            evidence.contains("slow_polls") && evidence.contains("2 instance(s) in threaded"),
            "{evidence}"
        );
        assert_eq!(standing(&fleet, "old-1"), Standing::NotJudged);
    }

    #[test]
    fn an_instance_as_good_as_the_others_passes() {
        let mut fleet = Fleet::new(&config());
        let mut instances = [
            Simulated::new("old", "threaded", 100, 500),
            Simulated::new("new", "async", 0, 500),
        ];
        let failed = run(&mut fleet, &mut instances, Instant::now(), 8);
        assert!(failed.is_empty());
        assert_eq!(standing(&fleet, "new"), Standing::Pass);
    }

    #[test]
    fn a_slower_instance_fails_only_after_failure_threshold_judgements_a_window_apart() {
        let mut fleet = Fleet::new(&config());
        // Four times slower, but overlapping the others: not a hard failure.
        let mut instances = [
            Simulated::new("old", "threaded", 100, 1000).spread(100),
            Simulated::new("new", "async", 0, 4000).spread(500),
        ];
        let start = Instant::now();
        // Judged from the first heartbeat (inconclusive during warm-up),
        // then every 3 s: the first failing judgement at 3 s, the second at 6.
        let failed = run(&mut fleet, &mut instances, start, 4);
        assert!(failed.is_empty(), "failed after one judgement");
        let (verdict, evidence) = fleet.verdict("echo", "new");
        assert_eq!(verdict, Standing::Inconclusive);
        assert!(
            evidence.starts_with("failing on latency (1 of 2)"),
            "{evidence}"
        );
        let failed = run(&mut fleet, &mut instances, start + SECOND * 4, 3);
        assert_eq!(failed, ["new"]);
        assert!(
            fleet
                .verdict("echo", "new")
                .1
                .contains("2 judgements in a row")
        );
    }

    #[test]
    fn a_failed_instance_stays_failed_until_it_leaves() {
        let mut fleet = Fleet::new(&config());
        let mut instances = [
            Simulated::new("old", "threaded", 100, 500),
            Simulated::new("new", "async", 0, 500).blocking(),
        ];
        let start = Instant::now();
        assert_eq!(run(&mut fleet, &mut instances, start, 4), ["new"]);
        instances[1].slow = 0;
        assert!(run(&mut fleet, &mut instances, start + SECOND * 4, 8).is_empty());
        assert_eq!(standing(&fleet, "new"), Standing::Fail);
        instances[1].status.stopped = true;
        instances[1].beat(&mut fleet, start + SECOND * 12);
        assert_eq!(standing(&fleet, "new"), Standing::NotJudged);
    }

    #[test]
    fn a_silent_instance_drops_out_of_both_sides_after_a_window() {
        let mut fleet = Fleet::new(&config());
        let mut old = Simulated::new("old", "threaded", 100, 500);
        let mut new = Simulated::new("new", "async", 0, 500);
        let start = Instant::now();
        old.beat(&mut fleet, start);
        for second in 1..10 {
            new.beat(&mut fleet, start + SECOND * second);
        }
        // The old instance fell silent: the new one has nothing to be
        // compared with, and is no longer judged.
        assert_eq!(standing(&fleet, "new"), Standing::NotJudged);
    }

    #[test]
    fn the_section_is_range_checked_under_its_own_keys() {
        let problems = FleetConfig {
            min_calls: 1,
            confidence: 1.5,
            ..FleetConfig::default()
        }
        .problems();
        let keys: Vec<&str> = problems.iter().map(|(key, _)| *key).collect();
        assert_eq!(keys, ["min_calls", "confidence"]);
    }
}
