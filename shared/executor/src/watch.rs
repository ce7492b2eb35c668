//! The detectors: a poll timer that catches async code blocking the event
//! loop, and a watchdog thread that reports work running too long and a
//! runtime worker held inside one poll.
//!
//! The watchdog is an OS thread on purpose: when an endpoint blocks the Tokio
//! runtime, a watchdog task on that runtime would be stuck behind it.
//!
//! Why the watchdog also watches the runtime's workers: a poll that never
//! returns is invisible to the poll timer (it reports when the poll ends),
//! and one that is not an endpoint's (a library's task, a background loop)
//! is not timed at all. Such a poll holds its worker: the tasks queued on it
//! wait, and with one worker (Tokio's choice in a container limited to one
//! CPU) deadlines cannot fire, so work shows up only as hung. Tokio's worker
//! metrics tell a held worker apart from a busy or an idle one.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context as TaskContext, Poll};
use std::thread;
use std::time::{Duration, Instant};

use opentelemetry::trace::TraceContextExt;
use slab::Slab;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::Phase;
use crate::endpoint::BoxFuture;
use crate::error::AbandonedWork;
use crate::stats::EndpointCounters;

/// An endpoint future whose every poll is timed and whose panics become a
/// value instead of unwinding through the runtime.
///
/// It borrows what the request's work holds anyway (counters, span): it is
/// part of every request's future in flight.
pub(crate) struct Watched<'a, T> {
    future: BoxFuture<T>,
    counters: &'a EndpointCounters,
    threshold: Duration,
    phase: Phase,
    span: &'a Span,
}

impl<'a, T> Watched<'a, T> {
    pub fn new(
        future: BoxFuture<T>,
        counters: &'a EndpointCounters,
        threshold: Duration,
        phase: Phase,
        span: &'a Span,
    ) -> Self {
        Self {
            future,
            counters,
            threshold,
            phase,
            span,
        }
    }
}

impl<T> Future for Watched<'_, T> {
    /// `Err` carries the panic message.
    type Output = Result<T, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let _entered = this.span.enter();
        let started = Instant::now();
        let mark = crate::sched::mark(started, this.threshold / 2);
        let in_poll = crate::sampler::begin(started);
        let polled = catch_unwind(AssertUnwindSafe(|| this.future.as_mut().poll(cx)));
        let took = started.elapsed();
        crate::sampler::end(&in_poll);
        if took >= this.threshold {
            let spent = crate::sched::spent_since(mark, started);
            this.report_slow(took, spent, crate::sampler::seen(&in_poll));
        }
        match polled {
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    }
}

impl<T> Watched<'_, T> {
    /// A poll of wall time `took`, of which at least `spent.descheduled`
    /// its thread waited for a CPU: a slow poll when the rest still reaches
    /// the threshold, a descheduled one (the machine's doing, not the
    /// code's) otherwise. A slow poll says how much of it at most ran on a
    /// CPU and at least blocked in a call, and what the sampler saw of it
    /// (which a slow poll turns on: [`crate::sampler`]).
    fn report_slow(
        &self,
        took: Duration,
        spent: crate::sched::Spent,
        sample: Option<crate::sampler::Sample>,
    ) {
        let name = &self.counters.name;
        let held = took.saturating_sub(spent.descheduled);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        if held < self.threshold {
            self.counters.descheduled_polls.fetch_add(1, Relaxed);
            tracing::debug!(
                switchyard.endpoint = %name,
                poll_ms = ms(took),
                descheduled_ms = ms(spent.descheduled),
                "descheduled poll: endpoint `{name}`'s poll took {:.1} ms, {:.1} ms of them waiting for a CPU; not a slow poll",
                ms(took),
                ms(spent.descheduled),
            );
            return;
        }
        self.counters.slow_polls.fetch_add(1, Relaxed);
        crate::sampler::arm(self.threshold / 4);
        let seen = match &sample {
            Some(sample) => format!("; {sample}"),
            None => String::new(),
        };
        let consequence = match self.phase {
            Phase::Async => "it blocked the event loop",
            _ => "it would block the event loop in the async phase",
        };
        let how = match (spent.at_most, spent.blocked(took)) {
            (Some((ran, _)), Some(blocked)) => format!(
                " (at most {:.1} ms on a CPU, at least {:.1} ms blocked in a call, at least {:.1} ms waiting for a CPU)",
                ms(ran.min(took)),
                ms(blocked),
                ms(spent.descheduled),
            ),
            _ => String::new(),
        };
        tracing::warn!(
            switchyard.endpoint = %name,
            poll_ms = ms(took),
            descheduled_ms = ms(spent.descheduled),
            blocked_ms = spent.blocked(took).map(ms),
            threshold_ms = ms(self.threshold),
            blocked_in = sample.as_ref().and_then(|sample| sample.call.name()),
            "slow poll: endpoint `{name}` held its thread for {:.1} ms without yielding{how}{seen}; {consequence}",
            ms(took),
        );
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// The trace id (hex) of a span, when telemetry gave it one.
pub(crate) fn trace_id_of(span: &Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Work that is running right now, for the hung-work detector and for the
/// shutdown report.
///
/// A slab, not a map: each request in flight holds an entry, and a slab
/// keeps them in one vector a little larger than their number, where a
/// hash map at a thousand entries has two thousand buckets.
#[derive(Default)]
pub(crate) struct Running {
    entries: Mutex<Slab<RunningEntry>>,
}

struct RunningEntry {
    counters: Arc<EndpointCounters>,
    started: Instant,
    span: Span,
    reported_hung: bool,
}

/// Removes its entry from [`Running`] when the work ends, however it ends.
pub(crate) struct RunningGuard {
    running: Arc<Running>,
    key: usize,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        crate::sync::lock(&self.running.entries).try_remove(self.key);
    }
}

impl Running {
    pub fn enter(self: &Arc<Self>, counters: &Arc<EndpointCounters>, span: &Span) -> RunningGuard {
        let key = crate::sync::lock(&self.entries).insert(RunningEntry {
            counters: Arc::clone(counters),
            started: Instant::now(),
            span: span.clone(),
            reported_hung: false,
        });
        RunningGuard {
            running: Arc::clone(self),
            key,
        }
    }

    /// Everything still running, longest first.
    pub fn list(&self) -> Vec<AbandonedWork> {
        let entries = crate::sync::lock(&self.entries);
        let mut list: Vec<_> = entries
            .iter()
            .map(|(_, entry)| AbandonedWork {
                endpoint: entry.counters.name.clone(),
                trace_id: trace_id_of(&entry.span),
                running_for: entry.started.elapsed(),
            })
            .collect();
        list.sort_by_key(|work| std::cmp::Reverse(work.running_for));
        list
    }

    /// Reports, once each, the entries running longer than `threshold`.
    fn report_hung(&self, threshold: Duration) {
        let mut entries = crate::sync::lock(&self.entries);
        for (_, entry) in entries.iter_mut() {
            let running_for = entry.started.elapsed();
            if entry.reported_hung || running_for < threshold {
                continue;
            }
            entry.reported_hung = true;
            entry.counters.hung.fetch_add(1, Relaxed);
            let trace_id = trace_id_of(&entry.span).unwrap_or_else(|| "none".to_string());
            tracing::warn!(
                parent: &entry.span,
                switchyard.endpoint = %entry.counters.name,
                trace_id = %trace_id,
                running_ms = running_for.as_millis() as u64,
                "hung work: endpoint `{}` has run for {:.1} s (threshold {:.1} s), trace {trace_id}; \
                 look for a deadlock or a call without a timeout",
                entry.counters.name,
                running_for.as_secs_f64(),
                threshold.as_secs_f64(),
            );
        }
    }
}

/// A worker held this long is reported: far above a CPU quota's throttling
/// (a few hundred milliseconds seen in containers limited to one CPU).
const HELD_REPORTED_AFTER: Duration = Duration::from_secs(2);

/// False once the runtime dropped its tasks (it is shutting down): its
/// workers' counters stop then, which is not a held worker.
struct RuntimeAlive(Arc<AtomicBool>);

impl Drop for RuntimeAlive {
    fn drop(&mut self) {
        self.0.store(false, Relaxed);
    }
}

/// What the watchdog saw of one worker: while it is awake (an even
/// park/unpark count) and has neither parked nor finished a batch of polls
/// (its busy time is added after each batch, at least every 61 polls), it is
/// inside one poll.
struct WorkerSeen {
    park_unpark: u64,
    busy: Duration,
    since: Instant,
    reported: bool,
}

/// The workers of the runtime an executor was made in.
struct Workers {
    metrics: tokio::runtime::RuntimeMetrics,
    alive: Arc<AtomicBool>,
    seen: Vec<WorkerSeen>,
}

impl Workers {
    /// Watches the current runtime's workers, if there is one; the task it
    /// spawns there ends with the executor (`running`).
    fn of_current_runtime(running: &Weak<Running>) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let alive = Arc::new(AtomicBool::new(true));
        let (guard, executor) = (RuntimeAlive(Arc::clone(&alive)), running.clone());
        runtime.spawn(async move {
            let _guard = guard;
            while executor.strong_count() > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let metrics = runtime.metrics();
        let now = Instant::now();
        let seen = (0..metrics.num_workers())
            .map(|worker| WorkerSeen {
                park_unpark: metrics.worker_park_unpark_count(worker),
                busy: metrics.worker_total_busy_duration(worker),
                since: now,
                reported: false,
            })
            .collect();
        Some(Self {
            metrics,
            alive,
            seen,
        })
    }

    /// Reports each worker once when it has been held for
    /// [`HELD_REPORTED_AFTER`], and once when it is free again.
    fn report_held(&mut self, name: &str) {
        if !self.alive.load(Relaxed) {
            return;
        }
        let workers = self.seen.len();
        for (worker, seen) in self.seen.iter_mut().enumerate() {
            let park_unpark = self.metrics.worker_park_unpark_count(worker);
            let busy = self.metrics.worker_total_busy_duration(worker);
            // An odd count: parked, waiting for work.
            let awake = park_unpark.is_multiple_of(2);
            let held = awake && park_unpark == seen.park_unpark && busy == seen.busy;
            if !held {
                if seen.reported {
                    tracing::warn!(
                        worker,
                        held_ms = seen.since.elapsed().as_millis() as u64,
                        "worker {worker} of the {name} runtime is free again, after {:.1} s in one poll",
                        seen.since.elapsed().as_secs_f64()
                    );
                }
                *seen = WorkerSeen {
                    park_unpark,
                    busy,
                    since: Instant::now(),
                    reported: false,
                };
                continue;
            }
            let held_for = seen.since.elapsed();
            if held_for >= HELD_REPORTED_AFTER && !seen.reported {
                seen.reported = true;
                tracing::error!(
                    worker,
                    workers,
                    held_ms = held_for.as_millis() as u64,
                    "worker {worker} of the {name} runtime ({workers} in all) has been inside one \
                     poll for {:.1} s: a task that does not yield holds it, and the tasks queued \
                     on it wait{}",
                    held_for.as_secs_f64(),
                    if workers == 1 {
                        "; with no other worker, no deadline or health check can run either"
                    } else {
                        ""
                    },
                );
            }
        }
    }
}

/// Starts the watchdog: hung work past `threshold`, and, when called inside
/// a Tokio runtime, a worker of that runtime held by one poll for
/// [`HELD_REPORTED_AFTER`]. It stops by itself once `running` is dropped
/// with the executor.
pub(crate) fn start_watchdog(
    name: &str,
    running: Weak<Running>,
    threshold: Duration,
) -> std::io::Result<()> {
    let interval = (threshold / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
    let mut workers = Workers::of_current_runtime(&running);
    let name = name.to_string();
    thread::Builder::new()
        .name(format!("{name}-watchdog"))
        .spawn(move || {
            loop {
                thread::sleep(interval.min(Duration::from_millis(500)));
                let Some(running) = running.upgrade() else {
                    return;
                };
                running.report_hung(threshold);
                if let Some(workers) = workers.as_mut() {
                    workers.report_held(&name);
                }
            }
        })?;
    Ok(())
}
