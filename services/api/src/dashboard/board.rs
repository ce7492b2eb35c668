//! What the rollout page shows, kept from the heartbeats as they arrive: per
//! (service, phase) a series of 5-second bins (calls/s, p50/p99 run time,
//! slow polls per call) over the last ten minutes; per service a timeline of
//! phase changes, canary judgements and rollbacks; the api's recent calls
//! with their trace ids. Pure logic: the HTTP side only serialises
//! [`Board::snapshot`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use switchyard_proto::metering::v1::InstanceStatus;

/// Width of one chart bin.
pub const BIN_MS: u64 = 5_000;
/// How many bins a series keeps (ten minutes).
pub const BINS: usize = 120;
/// How many timeline events are kept.
pub const EVENTS: usize = 200;
/// How many recent calls are kept.
pub const TRACES: usize = 20;

/// One chart bin of one (service, phase).
#[derive(Debug, Clone, Default, PartialEq)]
struct Bin {
    start_ms: u64,
    calls: u64,
    slow_polls: u64,
    /// Σ p50 × calls it was measured over, for a weighted mean.
    p50_weighted: u128,
    measured: u64,
    p99_us: u64,
}

/// One point of a chart, as the page draws it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    pub at_ms: u64,
    pub calls_per_s: f64,
    /// The weighted mean of the instances' medians (ms).
    pub p50_ms: f64,
    /// The highest instance p99 (ms): an upper bound of the phase's p99.
    pub p99_ms: f64,
    pub slow_polls_per_call: f64,
}

/// One (service, phase) chart.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub service: String,
    pub phase: String,
    pub points: Vec<Point>,
}

/// What happened to a service.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    pub at_ms: u64,
    pub service: String,
    /// `phase`, `canary` or `rollback`.
    pub kind: &'static str,
    pub text: String,
}

/// One recent call of the api.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub at_ms: u64,
    pub method: String,
    pub trace_id: String,
    pub code: String,
    pub millis: f64,
}

/// One row of the rollout table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub service: String,
    pub instance_id: String,
    pub phase: String,
    pub role: String,
    pub up: bool,
    pub in_flight: u64,
    pub handled: u64,
    pub failed: u64,
    pub slow_polls: u64,
    pub offloaded: u64,
    pub rollout: String,
    /// Endpoints written both ways: the form each runs here.
    pub forms: std::collections::BTreeMap<String, String>,
}

impl From<&InstanceStatus> for Row {
    fn from(s: &InstanceStatus) -> Self {
        Self {
            service: s.service.clone(),
            instance_id: s.instance_id.clone(),
            phase: s.phase.clone(),
            role: s.role.clone(),
            up: s.up,
            in_flight: s.in_flight,
            handled: s.handled,
            failed: s.failed,
            slow_polls: s.slow_polls,
            offloaded: s.offloaded,
            rollout: s.rollout.clone(),
            forms: s.endpoint_forms.clone().into_iter().collect(),
        }
    }
}

/// Everything the page receives, once per second.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub now_ms: u64,
    pub instances: Vec<Row>,
    pub timeline: Vec<Event>,
    pub series: Vec<Series>,
    pub traces: Vec<Trace>,
    /// `dashboard.trace_url`, `{trace_id}` to be replaced; empty: no links.
    pub trace_url: String,
}

#[derive(Debug, Default)]
struct Inner {
    /// Per instance: (handled, slow polls) at its previous heartbeat.
    counted: BTreeMap<(String, String), (u64, u64)>,
    bins: BTreeMap<(String, String), VecDeque<Bin>>,
    /// Per service: its shape ("async ×2") and its last rollout note.
    shapes: BTreeMap<String, String>,
    notes: BTreeMap<String, String>,
    timeline: VecDeque<Event>,
    traces: VecDeque<Trace>,
}

/// The page's memory. Cheap to clone; shared by the heartbeat endpoint, the
/// gRPC methods and the HTTP server.
#[derive(Debug, Clone, Default)]
pub struct Board {
    inner: Arc<Mutex<Inner>>,
}

impl Board {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every holder leaves the state whole, so a panic elsewhere while
        // holding it leaves nothing to repair.
        switchyard_executor::sync::lock(&self.inner)
    }

    /// A heartbeat arrived: count its calls into its phase's bin and note a
    /// new rollout note (a canary judgement or a rollback) on the timeline.
    pub fn heartbeat(&self, status: &InstanceStatus, now_ms: u64) {
        let mut inner = self.lock();
        let key = (status.service.clone(), status.instance_id.clone());
        let (handled, slow) = (status.handled, status.slow_polls);
        // A restarted instance starts from zero: count what it has.
        let (calls, slow_polls) = match inner.counted.insert(key, (handled, slow)) {
            Some((before, slow_before)) if before <= handled => {
                (handled - before, slow.saturating_sub(slow_before))
            }
            Some(_) => (handled, slow),
            None => (0, 0),
        };
        let start_ms = now_ms - now_ms % BIN_MS;
        let bins = inner
            .bins
            .entry((status.service.clone(), status.phase.clone()))
            .or_default();
        if bins.back().is_none_or(|bin| bin.start_ms != start_ms) {
            bins.push_back(Bin {
                start_ms,
                ..Bin::default()
            });
            while bins.len() > BINS {
                bins.pop_front();
            }
        }
        if let Some(bin) = bins.back_mut() {
            bin.calls += calls;
            bin.slow_polls += slow_polls;
            bin.p50_weighted += u128::from(status.run_time_p50_us) * u128::from(status.run_times);
            bin.measured += status.run_times;
            bin.p99_us = bin.p99_us.max(status.run_time_p99_us);
        }
        let note = &status.rollout;
        if !note.is_empty() && inner.notes.get(&status.service) != Some(note) {
            inner.notes.insert(status.service.clone(), note.clone());
            let kind = if note.contains("rolled back") {
                "rollback"
            } else {
                "canary"
            };
            push(
                &mut inner.timeline,
                now_ms,
                &status.service,
                kind,
                note.clone(),
            );
        }
    }

    /// An instance left (it said it stopped).
    pub fn left(&self, service: &str, instance_id: &str) {
        self.lock()
            .counted
            .remove(&(service.to_string(), instance_id.to_string()));
    }

    /// The phases `service`'s instances run now: a change goes on the
    /// timeline ("threaded ×2 → async ×1, threaded ×1 (canary)").
    pub fn shape(&self, service: &str, instances: &[&InstanceStatus], now_ms: u64) {
        let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
        for i in instances {
            *counts.entry((i.phase.clone(), i.role.clone())).or_default() += 1;
        }
        let shape = counts
            .iter()
            .map(|((phase, role), n)| match role.as_str() {
                "canary" => format!("{phase} ×{n} (canary)"),
                _ => format!("{phase} ×{n}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut inner = self.lock();
        let before = inner.shapes.insert(service.to_string(), shape.clone());
        if before.as_ref() != Some(&shape) && !shape.is_empty() {
            let text = match before {
                Some(before) if !before.is_empty() => format!("{before} → {shape}"),
                _ => format!("runs {shape}"),
            };
            push(&mut inner.timeline, now_ms, service, "phase", text);
        }
    }

    /// One call of the api finished.
    pub fn call(&self, trace: Trace) {
        let mut inner = self.lock();
        inner.traces.push_front(trace);
        inner.traces.truncate(TRACES);
    }

    /// The page's data now.
    pub fn snapshot(&self, instances: Vec<Row>, trace_url: &str, now_ms: u64) -> Snapshot {
        let inner = self.lock();
        let series = inner
            .bins
            .iter()
            .map(|((service, phase), bins)| Series {
                service: service.clone(),
                phase: phase.clone(),
                points: bins.iter().map(point).collect(),
            })
            .collect();
        Snapshot {
            now_ms,
            instances,
            timeline: inner.timeline.iter().cloned().collect(),
            series,
            traces: inner.traces.iter().cloned().collect(),
            trace_url: trace_url.to_string(),
        }
    }
}

fn push(
    timeline: &mut VecDeque<Event>,
    at_ms: u64,
    service: &str,
    kind: &'static str,
    text: String,
) {
    timeline.push_back(Event {
        at_ms,
        service: service.to_string(),
        kind,
        text,
    });
    while timeline.len() > EVENTS {
        timeline.pop_front();
    }
}

fn point(bin: &Bin) -> Point {
    let per_call = |n: u64| {
        if bin.calls == 0 {
            0.0
        } else {
            n as f64 / bin.calls as f64
        }
    };
    let p50_us = if bin.measured == 0 {
        0.0
    } else {
        bin.p50_weighted as f64 / bin.measured as f64
    };
    Point {
        at_ms: bin.start_ms,
        calls_per_s: bin.calls as f64 / (BIN_MS as f64 / 1000.0),
        p50_ms: p50_us / 1000.0,
        p99_ms: bin.p99_us as f64 / 1000.0,
        slow_polls_per_call: per_call(bin.slow_polls),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(instance: &str, phase: &str, handled: u64, slow: u64) -> InstanceStatus {
        InstanceStatus {
            service: "collector".into(),
            instance_id: instance.into(),
            phase: phase.into(),
            handled,
            slow_polls: slow,
            run_times: handled.min(10),
            run_time_p50_us: 2_000,
            run_time_p99_us: 9_000,
            ..InstanceStatus::default()
        }
    }

    #[test]
    fn calls_are_the_counter_deltas_of_each_instance_binned_by_phase() {
        let board = Board::default();
        board.heartbeat(&status("a", "threaded", 100, 0), 10_000);
        board.heartbeat(&status("b", "async", 7, 0), 10_000);
        board.heartbeat(&status("a", "threaded", 150, 5), 12_000);
        board.heartbeat(&status("b", "async", 27, 0), 12_000);
        let snapshot = board.snapshot(Vec::new(), "", 12_000);
        let calls: Vec<(String, f64, f64)> = snapshot
            .series
            .iter()
            .map(|s| {
                (
                    s.phase.clone(),
                    s.points[0].calls_per_s,
                    s.points[0].slow_polls_per_call,
                )
            })
            .collect();
        // The first heartbeat of an instance only sets its baseline.
        assert_eq!(
            calls,
            [("async".into(), 4.0, 0.0), ("threaded".into(), 10.0, 0.1)]
        );
        assert_eq!(snapshot.series[0].points[0].p99_ms, 9.0);
    }

    #[test]
    fn a_restarted_instance_counts_from_zero_not_backwards() {
        let board = Board::default();
        board.heartbeat(&status("a", "async", 500, 0), 0);
        board.heartbeat(&status("a", "async", 20, 0), 1_000);
        let snapshot = board.snapshot(Vec::new(), "", 1_000);
        assert_eq!(snapshot.series[0].points[0].calls_per_s, 4.0);
    }

    #[test]
    fn phase_changes_and_new_notes_go_on_the_timeline_once() {
        let board = Board::default();
        let (a, b) = (status("a", "threaded", 0, 0), status("b", "threaded", 0, 0));
        board.shape("collector", &[&a, &b], 1);
        board.shape("collector", &[&a, &b], 2);
        let canary = InstanceStatus {
            role: "canary".into(),
            rollout: "canary async: passed: 40 vs 38 calls".into(),
            ..status("c", "async", 0, 0)
        };
        board.shape("collector", &[&a, &canary], 3);
        board.heartbeat(&canary, 4);
        board.heartbeat(&canary, 5);
        let rolled = InstanceStatus {
            rollout: "canary async rolled back to threaded (latency): p99 40 ms vs 2 ms".into(),
            ..canary.clone()
        };
        board.heartbeat(&rolled, 6);
        let events: Vec<(&str, String)> = board
            .snapshot(Vec::new(), "", 7)
            .timeline
            .into_iter()
            .map(|e| (e.kind, e.text))
            .collect();
        assert_eq!(
            events,
            [
                ("phase", "runs threaded ×2".to_string()),
                (
                    "phase",
                    "threaded ×2 → async ×1 (canary), threaded ×1".to_string()
                ),
                ("canary", "canary async: passed: 40 vs 38 calls".to_string()),
                (
                    "rollback",
                    "canary async rolled back to threaded (latency): p99 40 ms vs 2 ms".to_string()
                ),
            ]
        );
    }

    #[test]
    fn series_keep_ten_minutes_and_the_timeline_its_newest_events() {
        let board = Board::default();
        for i in 0..(BINS as u64 + 30) {
            board.heartbeat(&status("a", "async", i, 0), i * BIN_MS);
        }
        let snapshot = board.snapshot(Vec::new(), "", 0);
        assert_eq!(snapshot.series[0].points.len(), BINS);
        assert_eq!(snapshot.series[0].points[0].at_ms, 30 * BIN_MS);
        for i in 0..(EVENTS + 5) {
            let s = InstanceStatus {
                rollout: format!("canary async: passed: {i}"),
                ..status("a", "async", 0, 0)
            };
            board.heartbeat(&s, 0);
        }
        let timeline = board.snapshot(Vec::new(), "", 0).timeline;
        assert_eq!(timeline.len(), EVENTS);
        assert!(
            timeline[EVENTS - 1]
                .text
                .ends_with(&format!("{}", EVENTS + 4))
        );
    }
}
