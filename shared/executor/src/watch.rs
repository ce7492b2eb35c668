//! The two detectors: a poll timer that catches async code blocking the event
//! loop, and a watchdog thread that reports work running too long.
//!
//! The watchdog is an OS thread on purpose: when an endpoint blocks the Tokio
//! runtime, a watchdog task on that runtime would be stuck behind it.

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

/// Starts the hung-work watchdog. It stops by itself once `running` is
/// dropped with the executor.
pub(crate) fn start_watchdog(
    name: &str,
    running: Weak<Running>,
    threshold: Duration,
) -> std::io::Result<()> {
    let interval = (threshold / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
    thread::Builder::new()
        .name(format!("{name}-watchdog"))
        .spawn(move || {
            loop {
                thread::sleep(interval);
                let Some(running) = running.upgrade() else {
                    return;
                };
                running.report_hung(threshold);
            }
        })?;
    Ok(())
}
