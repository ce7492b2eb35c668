//! Counters and histograms per endpoint, a snapshot API, and the Prometheus
//! text rendering of that snapshot.
//!
//! Everything is lock-free atomics updated on the dispatch path; a snapshot
//! reads them without stopping dispatch. The same snapshot feeds the metrics
//! endpoint, heartbeats and tests, so every consumer sees one set of numbers.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::{EndpointKind, Phase};

/// Number of histogram buckets: bucket `i` counts values below `2^i` µs, the
/// last one everything above (2^30 µs is about 18 minutes).
const BUCKETS: usize = 31;

/// A log2-bucketed latency histogram in microseconds.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn record(&self, value: Duration) {
        let us = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        // Smallest i with us < 2^i, capped at the last bucket.
        let index = (u64::BITS - us.leading_zeros()) as usize;
        self.buckets[index.min(BUCKETS - 1)].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum_us: self.sum_us.load(Relaxed),
            count: self.count.load(Relaxed),
        }
    }
}

/// A copy of a [`Histogram`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Count per bucket; bucket `i` holds values below `2^i` µs.
    pub buckets: Vec<u64>,
    /// Sum of all observations in µs.
    pub sum_us: u64,
    /// Number of observations.
    pub count: u64,
}

impl HistogramSnapshot {
    /// Upper bound of bucket `index` in microseconds.
    pub fn bucket_bound_us(index: usize) -> u64 {
        1u64 << index
    }

    /// The [`EXPOSED_BUCKETS`] as (upper bound in seconds, observations in
    /// it and not in the one before), then everything above as `+Inf`
    /// (`f64::MAX`, as prometheus-client writes it): each bound exact, a
    /// sum of whole log2 buckets.
    pub fn exposed_buckets(&self) -> Vec<(f64, u64)> {
        let mut below = 0;
        let mut exposed: Vec<(f64, u64)> = EXPOSED_BUCKETS
            .iter()
            .map(|&index| {
                let cumulative: u64 = self.buckets.iter().take(index + 1).sum();
                let bound = Self::bucket_bound_us(index) as f64 / 1e6;
                let in_it = cumulative.saturating_sub(below);
                below = cumulative;
                (bound, in_it)
            })
            .collect();
        exposed.push((f64::MAX, self.count.saturating_sub(below)));
        exposed
    }

    /// Estimated quantile `q` (0..=1), as the upper bound of the bucket where
    /// it falls: an overestimate by at most 2×, which is what a log histogram
    /// buys for lock-free recording.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_micros(Self::bucket_bound_us(index)));
            }
        }
        None
    }

    /// Mean of the observations.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_micros(self.sum_us / self.count))
    }

    fn merge(&mut self, other: &HistogramSnapshot) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.sum_us += other.sum_us;
        self.count += other.count;
    }
}

/// Live counters of one endpoint. Owned by the executor; shared with every
/// dispatch of the endpoint.
#[derive(Debug)]
pub(crate) struct EndpointCounters {
    pub name: String,
    /// How it was written (blocking, async or both).
    pub declared: EndpointKind,
    /// The form that runs in the executor's phase (blocking or async).
    pub kind: EndpointKind,
    pub queued: AtomicI64,
    pub in_flight: AtomicI64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub panicked: AtomicU64,
    pub expired: AtomicU64,
    pub overdue: AtomicU64,
    pub offloaded: AtomicU64,
    pub slow_polls: AtomicU64,
    pub descheduled_polls: AtomicU64,
    pub hung: AtomicU64,
    pub queue_wait: Histogram,
    pub run_time: Histogram,
    /// Answers by status code, as the transport reports them
    /// ([`crate::BoundEndpoint::count_status`]): gRPC's 17 codes.
    pub statuses: [AtomicU64; STATUS_CODES],
    /// The executor's ring of recent run times (shared by its endpoints).
    pub recent: std::sync::Arc<crate::recent::RecentRunTimes>,
}

impl EndpointCounters {
    pub fn new(
        name: String,
        declared: EndpointKind,
        kind: EndpointKind,
        recent: std::sync::Arc<crate::recent::RecentRunTimes>,
    ) -> Self {
        Self {
            name,
            declared,
            kind,
            queued: AtomicI64::new(0),
            in_flight: AtomicI64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            overdue: AtomicU64::new(0),
            offloaded: AtomicU64::new(0),
            slow_polls: AtomicU64::new(0),
            descheduled_polls: AtomicU64::new(0),
            hung: AtomicU64::new(0),
            queue_wait: Histogram::default(),
            run_time: Histogram::default(),
            statuses: std::array::from_fn(|_| AtomicU64::new(0)),
            recent,
        }
    }

    pub fn snapshot(&self) -> EndpointSnapshot {
        EndpointSnapshot {
            name: self.name.clone(),
            declared: self.declared,
            kind: self.kind,
            counts: Counts {
                queued: self.queued.load(Relaxed).max(0) as u64,
                in_flight: self.in_flight.load(Relaxed).max(0) as u64,
                completed: self.completed.load(Relaxed),
                failed: self.failed.load(Relaxed),
                panicked: self.panicked.load(Relaxed),
                expired: self.expired.load(Relaxed),
                overdue: self.overdue.load(Relaxed),
                offloaded: self.offloaded.load(Relaxed),
                slow_polls: self.slow_polls.load(Relaxed),
                descheduled_polls: self.descheduled_polls.load(Relaxed),
                hung: self.hung.load(Relaxed),
            },
            queue_wait: self.queue_wait.snapshot(),
            run_time: self.run_time.snapshot(),
            statuses: self.statuses.iter().map(|c| c.load(Relaxed)).collect(),
        }
    }
}

/// How many status codes are counted: gRPC's, 0 (OK) to 16 (UNAUTHENTICATED).
pub const STATUS_CODES: usize = 17;

/// gRPC's status code names, by number (the gRPC spec, "Status codes and
/// their use in gRPC").
pub const STATUS_NAMES: [&str; STATUS_CODES] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Counters of an endpoint or a whole executor.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    /// Waiting for a worker or an in-flight slot right now.
    pub queued: u64,
    /// Running right now.
    pub in_flight: u64,
    /// Finished, successfully or not (includes `failed`).
    pub completed: u64,
    /// Finished with an error, a panic or a missed deadline.
    pub failed: u64,
    /// Of `failed`: the endpoint panicked.
    pub panicked: u64,
    /// Of `failed`: the deadline passed before or while it ran (async bodies are cancelled).
    pub expired: u64,
    /// Blocking bodies that finished after their deadline (they cannot be cancelled).
    pub overdue: u64,
    /// Blocking bodies offloaded with `spawn_blocking` in the async phase.
    pub offloaded: u64,
    /// Polls longer than the slow-poll threshold (the blocking detector),
    /// not counting the time their thread waited for a CPU.
    pub slow_polls: u64,
    /// Polls over the threshold only because their thread waited for a
    /// CPU (preempted on a busy machine): not in `slow_polls`.
    #[serde(default)]
    pub descheduled_polls: u64,
    /// Requests that ran past the hung threshold.
    pub hung: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.queued += other.queued;
        self.in_flight += other.in_flight;
        self.completed += other.completed;
        self.failed += other.failed;
        self.panicked += other.panicked;
        self.expired += other.expired;
        self.overdue += other.overdue;
        self.offloaded += other.offloaded;
        self.slow_polls += other.slow_polls;
        self.descheduled_polls += other.descheduled_polls;
        self.hung += other.hung;
    }
}

/// Statistics of one endpoint at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointSnapshot {
    /// Endpoint name.
    pub name: String,
    /// How it was written: blocking, async, or both.
    pub declared: EndpointKind,
    /// The form that runs (blocking or async): for an endpoint written both
    /// ways, the one the phase picked.
    pub kind: EndpointKind,
    /// Its counters.
    pub counts: Counts,
    /// Time from dispatch until the body started.
    pub queue_wait: HistogramSnapshot,
    /// Time the body ran.
    pub run_time: HistogramSnapshot,
    /// Answers by gRPC status code (index = code); all zero for endpoints
    /// no gRPC server answers for.
    #[serde(default)]
    pub statuses: Vec<u64>,
}

impl EndpointSnapshot {
    /// The status codes answered, by name, with their counts (only those seen).
    pub fn statuses(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.statuses
            .iter()
            .zip(STATUS_NAMES)
            .filter(|(count, _)| **count > 0)
            .map(|(count, name)| (name, *count))
    }

    fn add(&mut self, other: &EndpointSnapshot) {
        self.counts.add(&other.counts);
        self.queue_wait.merge(&other.queue_wait);
        self.run_time.merge(&other.run_time);
        if self.statuses.len() < other.statuses.len() {
            self.statuses.resize(other.statuses.len(), 0);
        }
        for (mine, theirs) in self.statuses.iter_mut().zip(&other.statuses) {
            *mine += theirs;
        }
    }
}

/// Statistics of one executor at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutorSnapshot {
    /// The executor's name (the service).
    pub name: String,
    /// The phase it runs.
    pub phase: Phase,
    /// Requests it runs at once.
    pub capacity: usize,
    /// Sum over endpoints.
    pub totals: Counts,
    /// Queue wait over all endpoints.
    pub queue_wait: HistogramSnapshot,
    /// Run time over all endpoints.
    pub run_time: HistogramSnapshot,
    /// Per endpoint, in registration order.
    pub endpoints: Vec<EndpointSnapshot>,
}

impl ExecutorSnapshot {
    pub(crate) fn from_endpoints(
        name: &str,
        phase: Phase,
        capacity: usize,
        endpoints: Vec<EndpointSnapshot>,
    ) -> Self {
        let mut totals = Counts::default();
        let mut queue_wait = HistogramSnapshot::default();
        let mut run_time = HistogramSnapshot::default();
        for endpoint in &endpoints {
            totals.add(&endpoint.counts);
            queue_wait.merge(&endpoint.queue_wait);
            run_time.merge(&endpoint.run_time);
        }
        Self {
            name: name.to_string(),
            phase,
            capacity,
            totals,
            queue_wait,
            run_time,
            endpoints,
        }
    }

    /// The endpoint named `name`, if registered.
    pub fn endpoint(&self, name: &str) -> Option<&EndpointSnapshot> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    /// The snapshot alone as OpenMetrics text.
    pub fn render_openmetrics(&self) -> String {
        render_openmetrics(std::slice::from_ref(self))
    }

    /// Sums snapshots of one service's executors (the workers of a launcher,
    /// live and gone) into one per phase: counters and histograms add up,
    /// endpoints matched by name and form.
    pub fn merged_by_phase<'a>(parts: impl IntoIterator<Item = &'a ExecutorSnapshot>) -> Vec<Self> {
        let mut merged: Vec<ExecutorSnapshot> = Vec::new();
        for part in parts {
            let Some(into) = merged.iter_mut().find(|m| m.phase == part.phase) else {
                merged.push(part.clone());
                continue;
            };
            into.capacity += part.capacity;
            for endpoint in &part.endpoints {
                match into
                    .endpoints
                    .iter_mut()
                    .find(|e| e.name == endpoint.name && e.kind == endpoint.kind)
                {
                    Some(mine) => mine.add(endpoint),
                    None => into.endpoints.push(endpoint.clone()),
                }
            }
            *into = Self::from_endpoints(
                &into.name,
                into.phase,
                into.capacity,
                std::mem::take(&mut into.endpoints),
            );
        }
        merged
    }

    /// The snapshot of an executor that is gone: its counters stay (they
    /// were counted), nothing of it is queued or running any more.
    pub fn retired(mut self) -> Self {
        for endpoint in &mut self.endpoints {
            endpoint.counts.queued = 0;
            endpoint.counts.in_flight = 0;
        }
        self.capacity = 0;
        Self::from_endpoints(&self.name, self.phase, 0, self.endpoints)
    }
}

/// The log2 buckets exposed as Prometheus bounds: every second one from
/// 16 µs to 16.8 s (16 µs, 64 µs, 256 µs, 1 ms, 4 ms, 16 ms, 65 ms, 262 ms,
/// 1 s, 4.2 s, 16.8 s, then +Inf): a dozen series per histogram instead of
/// 32, each bound exact (a cumulative count of whole log2 buckets). The
/// executor keeps all of them for its own quantiles.
pub const EXPOSED_BUCKETS: [usize; 11] = [4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24];

/// The executor series of one service's snapshots (one per phase: a
/// launcher's supervisor sums its workers with
/// [`ExecutorSnapshot::merged_by_phase`]), encoded by prometheus-client on
/// each scrape: each family's HELP and TYPE once, then its series for every
/// snapshot. Register it with the process's own series and encode the
/// registry (OpenMetrics text, `# EOF` once at the end).
#[derive(Debug, Clone)]
pub struct SnapshotCollector(pub Vec<ExecutorSnapshot>);

/// The labels of one endpoint's series (values escaped as the text format
/// wants: prometheus-client writes them as given).
fn endpoint_labels(
    s: &ExecutorSnapshot,
    endpoint: &EndpointSnapshot,
) -> Vec<(&'static str, String)> {
    vec![
        ("service", escape_label(&s.name)),
        ("phase", s.phase.to_string()),
        ("endpoint", escape_label(&endpoint.name)),
        ("form", endpoint.kind.to_string()),
    ]
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let snapshots = &self.0;
        let executor = |s: &ExecutorSnapshot| {
            [
                ("service", escape_label(&s.name)),
                ("phase", s.phase.to_string()),
            ]
        };
        {
            let mut family = encoder.encode_descriptor(
                "switchyard_executor",
                "The executor's phase.",
                None,
                MetricType::Info,
            )?;
            for s in snapshots {
                family.encode_info(&executor(s))?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "switchyard_executor_capacity",
                "Requests the executor runs at once.",
                None,
                MetricType::Gauge,
            )?;
            for s in snapshots {
                ConstGauge::new(s.capacity as i64).encode(family.encode_family(&executor(s))?)?;
            }
        }
        for (metric, kind, help, read) in counters() {
            let counter = kind == "counter";
            let name = format!("switchyard_endpoint_{}", metric.trim_end_matches("_total"));
            let kind = if counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut family = encoder.encode_descriptor(&name, help, None, kind)?;
            for s in snapshots {
                for endpoint in &s.endpoints {
                    let labels = endpoint_labels(s, endpoint);
                    let series = family.encode_family(&labels)?;
                    let value = read(&endpoint.counts);
                    if counter {
                        ConstCounter::new(value).encode(series)?;
                    } else {
                        ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(series)?;
                    }
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "switchyard_endpoint_responses",
                "Answers by gRPC status code.",
                None,
                MetricType::Counter,
            )?;
            for s in snapshots {
                for endpoint in &s.endpoints {
                    for (code, count) in endpoint.statuses() {
                        let mut labels = endpoint_labels(s, endpoint);
                        labels.push(("code", code.to_string()));
                        ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        for (metric, help, pick) in histograms() {
            let name = format!("switchyard_endpoint_{metric}");
            let mut family = encoder.encode_descriptor(&name, help, None, MetricType::Histogram)?;
            for s in snapshots {
                for endpoint in &s.endpoints {
                    let histogram = pick(endpoint);
                    family
                        .encode_family(&endpoint_labels(s, endpoint))?
                        .encode_histogram::<NoLabels>(
                            histogram.sum_us as f64 / 1e6,
                            histogram.count,
                            &histogram.exposed_buckets(),
                            None,
                        )?;
                }
            }
        }
        Ok(())
    }
}

/// No exemplar labels.
type NoLabels = Vec<(&'static str, String)>;

/// `snapshots` alone as OpenMetrics text (tests and tools; a service's
/// page adds its process series, see `switchyard_telemetry::exposition`).
pub fn render_openmetrics(snapshots: &[ExecutorSnapshot]) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snapshots.to_vec())));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// One counter of [`Counts`]: its metric name (after `switchyard_endpoint_`),
/// Prometheus type, help, and how to read it.
pub type Counter = (&'static str, &'static str, &'static str, fn(&Counts) -> u64);

/// The [`Counts`] fields as metrics.
pub fn counters() -> [Counter; 11] {
    [
        ("queued", "gauge", "Requests waiting for a worker.", |c| {
            c.queued
        }),
        ("in_flight", "gauge", "Requests running.", |c| c.in_flight),
        ("completed_total", "counter", "Requests finished.", |c| {
            c.completed
        }),
        ("failed_total", "counter", "Requests that failed.", |c| {
            c.failed
        }),
        ("panicked_total", "counter", "Endpoint panics.", |c| {
            c.panicked
        }),
        ("expired_total", "counter", "Deadlines missed.", |c| {
            c.expired
        }),
        (
            "overdue_total",
            "counter",
            "Blocking work past its deadline.",
            |c| c.overdue,
        ),
        (
            "offloaded_total",
            "counter",
            "Blocking work offloaded.",
            |c| c.offloaded,
        ),
        (
            "slow_polls_total",
            "counter",
            "Polls over the threshold.",
            |c| c.slow_polls,
        ),
        (
            "descheduled_polls_total",
            "counter",
            "Polls over the threshold only while waiting for a CPU.",
            |c| c.descheduled_polls,
        ),
        (
            "hung_total",
            "counter",
            "Work past the hung threshold.",
            |c| c.hung,
        ),
    ]
}

/// The histograms of an endpoint: metric name, help, which one.
pub type HistogramOf = (
    &'static str,
    &'static str,
    fn(&EndpointSnapshot) -> &HistogramSnapshot,
);

/// The endpoint histograms as metrics.
pub fn histograms() -> [HistogramOf; 2] {
    [
        (
            "queue_wait_seconds",
            "Time from dispatch until the body started.",
            |e| &e.queue_wait,
        ),
        ("run_seconds", "Time the body ran.", |e| &e.run_time),
    ]
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_by_power_of_two_microseconds() {
        let histogram = Histogram::default();
        histogram.record(Duration::from_micros(0));
        histogram.record(Duration::from_micros(3));
        histogram.record(Duration::from_millis(50));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 3);
        assert_eq!(snapshot.buckets[0], 1, "0 µs lands below 1 µs");
        assert_eq!(snapshot.buckets[2], 1, "3 µs lands below 4 µs");
        assert_eq!(snapshot.buckets[16], 1, "50 ms lands below 65.5 ms");
        assert_eq!(snapshot.quantile(0.5), Some(Duration::from_micros(4)));
        assert_eq!(snapshot.quantile(1.0), Some(Duration::from_micros(65_536)));
    }

    #[test]
    fn prometheus_rendering_has_cumulative_buckets_and_escaped_labels() {
        let counters = EndpointCounters::new(
            "say \"hi\"".into(),
            EndpointKind::Async,
            EndpointKind::Async,
            Default::default(),
        );
        counters.completed.fetch_add(2, Relaxed);
        counters.run_time.record(Duration::from_micros(3));
        counters.run_time.record(Duration::from_micros(5));
        let snapshot =
            ExecutorSnapshot::from_endpoints("svc", Phase::Async, 8, vec![counters.snapshot()]);
        let text = snapshot.render_openmetrics();
        assert!(text.contains(
            "switchyard_endpoint_completed_total{service=\"svc\",phase=\"async\",endpoint=\"say \\\"hi\\\"\",form=\"async\"} 2"
        ));
        let labels = "service=\"svc\",phase=\"async\",endpoint=\"say \\\"hi\\\"\",form=\"async\"";
        assert!(text.contains(&format!(
            "switchyard_endpoint_run_seconds_bucket{{le=\"0.000016\",{labels}}} 2\n"
        )));
        assert!(text.contains(&format!(
            "switchyard_endpoint_run_seconds_bucket{{le=\"16.777216\",{labels}}} 2\n"
        )));
        assert!(text.contains(&format!(
            "switchyard_endpoint_run_seconds_bucket{{le=\"+Inf\",{labels}}} 2\n"
        )));
        assert!(text.ends_with("# EOF\n"), "one OpenMetrics exposition");
        // A dozen buckets per histogram: 11 bounds and +Inf.
        assert_eq!(
            text.matches("switchyard_endpoint_run_seconds_bucket{")
                .count(),
            12
        );
        assert!(text.contains("switchyard_endpoint_run_seconds_count{service=\"svc\",phase=\"async\",endpoint=\"say \\\"hi\\\"\",form=\"async\"} 2"));
    }
    fn worker(phase: Phase, completed: u64, in_flight: u64, run_us: u64) -> ExecutorSnapshot {
        let counters = EndpointCounters::new(
            "say".into(),
            EndpointKind::Async,
            EndpointKind::Async,
            Default::default(),
        );
        counters.completed.fetch_add(completed, Relaxed);
        counters.in_flight.fetch_add(in_flight as i64, Relaxed);
        counters.run_time.record(Duration::from_micros(run_us));
        ExecutorSnapshot::from_endpoints("svc", phase, 4, vec![counters.snapshot()])
    }

    #[test]
    fn workers_sum_per_phase_and_a_gone_one_keeps_its_counts_not_its_gauges() {
        let gone = worker(Phase::Threaded, 7, 2, 3).retired();
        let live = [
            worker(Phase::Threaded, 5, 1, 3),
            worker(Phase::Async, 11, 1, 900),
        ];
        let merged = ExecutorSnapshot::merged_by_phase(std::iter::once(&gone).chain(&live));
        let by_phase: Vec<(Phase, u64, u64, u64, usize)> = merged
            .iter()
            .map(|m| {
                let e = &m.endpoints[0];
                (
                    m.phase,
                    e.counts.completed,
                    e.counts.in_flight,
                    e.run_time.count,
                    m.capacity,
                )
            })
            .collect();
        assert_eq!(
            by_phase,
            [(Phase::Threaded, 12, 1, 2, 4), (Phase::Async, 11, 1, 1, 4)]
        );
        let text = render_openmetrics(&merged);
        assert_eq!(
            text.matches("# TYPE switchyard_endpoint_completed counter")
                .count(),
            1,
            "one TYPE line per metric"
        );
        assert!(text.contains(
            "switchyard_endpoint_completed_total{service=\"svc\",phase=\"threaded\",endpoint=\"say\",form=\"async\"} 12"
        ));
        assert!(text.contains(
            "switchyard_endpoint_completed_total{service=\"svc\",phase=\"async\",endpoint=\"say\",form=\"async\"} 11"
        ));
    }
}
