//! The detectors: a poll timer that catches async code blocking the event
//! loop, and a watchdog thread that reports work running too long and a
//! runtime that stopped running tasks.
//!
//! The watchdog is an OS thread on purpose: when an endpoint blocks the Tokio
//! runtime, a watchdog task on that runtime would be stuck behind it.
//!
//! Why the runtime's pulse: a poll that never returns is invisible to the
//! poll timer (it reports when the poll ends), and one that is not an
//! endpoint's (a library's task, a background loop) is not timed at all. In
//! a container limited to one CPU, Tokio starts one worker, and such a poll
//! stops everything: deadlines cannot fire, so work shows up only as hung,
//! and health checks go unanswered. The pulse tells that apart from work
//! that is merely waiting.

use std::collections::HashMap;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context as TaskContext, Poll};
use std::thread;
use std::time::{Duration, Instant};

use opentelemetry::trace::TraceContextExt;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::Phase;
use crate::endpoint::BoxFuture;
use crate::error::AbandonedWork;
use crate::stats::EndpointCounters;

/// An endpoint future whose every poll is timed and whose panics become a
/// value instead of unwinding through the runtime.
pub(crate) struct Watched<T> {
    future: BoxFuture<T>,
    counters: Arc<EndpointCounters>,
    threshold: Duration,
    phase: Phase,
    span: Span,
}

impl<T> Watched<T> {
    pub fn new(
        future: BoxFuture<T>,
        counters: Arc<EndpointCounters>,
        threshold: Duration,
        phase: Phase,
        span: Span,
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

impl<T> Future for Watched<T> {
    /// `Err` carries the panic message.
    type Output = Result<T, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let _entered = this.span.enter();
        let started = Instant::now();
        let polled = catch_unwind(AssertUnwindSafe(|| this.future.as_mut().poll(cx)));
        let took = started.elapsed();
        if took >= this.threshold {
            this.counters.slow_polls.fetch_add(1, Relaxed);
            let consequence = match this.phase {
                Phase::Async => "it blocked the event loop",
                _ => "it would block the event loop in the async phase",
            };
            tracing::warn!(
                switchyard.endpoint = %this.counters.name,
                poll_ms = took.as_secs_f64() * 1e3,
                threshold_ms = this.threshold.as_secs_f64() * 1e3,
                "slow poll: endpoint `{}` held its thread for {:.1} ms without yielding; {consequence}",
                this.counters.name,
                took.as_secs_f64() * 1e3,
            );
        }
        match polled {
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
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
#[derive(Default)]
pub(crate) struct Running {
    next_id: AtomicU64,
    entries: Mutex<HashMap<u64, RunningEntry>>,
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
    id: u64,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        crate::sync::lock(&self.running.entries).remove(&self.id);
    }
}

impl Running {
    pub fn enter(self: &Arc<Self>, counters: &Arc<EndpointCounters>, span: &Span) -> RunningGuard {
        let id = self.next_id.fetch_add(1, Relaxed);
        crate::sync::lock(&self.entries).insert(
            id,
            RunningEntry {
                counters: Arc::clone(counters),
                started: Instant::now(),
                span: span.clone(),
                reported_hung: false,
            },
        );
        RunningGuard {
            running: Arc::clone(self),
            id,
        }
    }

    /// Everything still running, longest first.
    pub fn list(&self) -> Vec<AbandonedWork> {
        let entries = crate::sync::lock(&self.entries);
        let mut list: Vec<_> = entries
            .values()
            .map(|entry| AbandonedWork {
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
        for entry in entries.values_mut() {
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

/// How often the runtime's pulse beats.
const PULSE_EVERY: Duration = Duration::from_millis(100);

/// A runtime silent this long is reported: far above a timer's lateness on a
/// busy machine or a CPU quota's throttling (a few hundred milliseconds seen
/// in containers limited to one CPU).
pub(crate) const STALL_REPORTED_AFTER: Duration = Duration::from_secs(2);

/// When a task on the service's runtime last ran: a task beats every
/// [`PULSE_EVERY`], the watchdog thread listens.
pub(crate) struct Pulse {
    origin: Instant,
    /// Milliseconds since `origin` at the last beat.
    last: AtomicU64,
}

impl Pulse {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn beat(&self) {
        self.last
            .store(self.origin.elapsed().as_millis() as u64, Relaxed);
    }

    /// The runtime dropped the beating task (it is shutting down): silence
    /// from now on is not a stall.
    fn stop(&self) {
        self.last.store(u64::MAX, Relaxed);
    }

    /// How long no beat came; zero once stopped.
    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }
}

/// Stops its pulse when the beating task ends, however it ends.
struct Beating(Arc<Pulse>);

impl Drop for Beating {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Starts the watchdog: hung work past `threshold`, and, when called inside
/// a Tokio runtime, that runtime running nothing for
/// [`STALL_REPORTED_AFTER`]. Both stop by themselves once `running` is
/// dropped with the executor.
pub(crate) fn start_watchdog(
    name: &str,
    running: Weak<Running>,
    threshold: Duration,
) -> std::io::Result<()> {
    let interval = (threshold / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
    let pulse = tokio::runtime::Handle::try_current().ok().map(|runtime| {
        let pulse = Arc::new(Pulse::new());
        let (beating, alive) = (Beating(Arc::clone(&pulse)), running.clone());
        runtime.spawn(async move {
            while alive.strong_count() > 0 {
                beating.0.beat();
                tokio::time::sleep(PULSE_EVERY).await;
            }
        });
        (pulse, runtime.metrics().num_workers())
    });
    let name = name.to_string();
    thread::Builder::new()
        .name(format!("{name}-watchdog"))
        .spawn(move || {
            let mut stalled: Option<Duration> = None;
            loop {
                thread::sleep(interval.min(PULSE_EVERY * 5));
                let Some(running) = running.upgrade() else {
                    return;
                };
                running.report_hung(threshold);
                if let Some((pulse, workers)) = &pulse {
                    stalled = report_stall(&name, pulse.silent_for(), stalled, *workers);
                }
            }
        })?;
    Ok(())
}

/// Reports a runtime silent for `silent` once when it passes
/// [`STALL_REPORTED_AFTER`], and once when it runs again; the stall seen so
/// far, if any.
fn report_stall(
    name: &str,
    silent: Duration,
    stalled: Option<Duration>,
    workers: usize,
) -> Option<Duration> {
    if silent >= STALL_REPORTED_AFTER {
        if stalled.is_none() {
            tracing::error!(
                silent_ms = silent.as_millis() as u64,
                workers,
                "the {name} runtime has run no task for {:.1} s: a poll is holding its worker \
                 thread{} ({workers}) without yielding, and deadlines, health checks and every \
                 other call wait until it returns",
                silent.as_secs_f64(),
                if workers == 1 { "" } else { "s" },
            );
        }
        return Some(silent);
    }
    if let Some(longest) = stalled {
        tracing::warn!(
            silent_ms = longest.as_millis() as u64,
            "the {name} runtime runs tasks again, after at least {:.1} s without",
            longest.as_secs_f64()
        );
    }
    None
}
