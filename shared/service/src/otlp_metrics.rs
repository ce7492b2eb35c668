//! The executor's metrics pushed over OTLP (`OTEL_METRICS_EXPORTER=otlp`),
//! for shops without Prometheus: every interval, the same snapshot
//! `/metrics` renders, as cumulative OTLP points
//! ([`record_otlp`]).
//!
//! Every process with an executor pushes its own, as its own resource
//! (`service.instance.id`): under a launcher each worker pushes, and a
//! backend sums them by `service` and `phase` (OTLP carries the instance;
//! no counter ever moves backwards within one resource).

use std::time::{Duration, Instant, SystemTime};

use switchyard_executor::Executor;
use switchyard_executor::stats::{
    EXPOSED_BUCKETS, EndpointSnapshot, ExecutorSnapshot, HistogramSnapshot, counters, histograms,
};
use switchyard_telemetry::otlp::{Batch, HistogramPoint, MetricsPush, attribute};
use switchyard_telemetry::{Identity, MetricsPushTarget};
use tokio_util::sync::CancellationToken;

/// A push that keeps failing is reported at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Pushes every `target.interval` until `shutdown`, then once more (the
/// final counts).
pub(crate) fn spawn(
    target: &MetricsPushTarget,
    identity: Identity,
    executor: Executor,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut push = MetricsPush::new(&target.endpoint, target.protocol)?;
    let interval = target.interval;
    tracing::info!(
        "metrics push: {} to {} every {interval:?}",
        target.protocol,
        target.endpoint
    );
    let started = SystemTime::now();
    tokio::spawn(async move {
        let mut warned: Option<Instant> = None;
        loop {
            let last = tokio::select! {
                () = tokio::time::sleep(interval) => false,
                () = shutdown.cancelled() => true,
            };
            let mut batch = Batch::new(started);
            record_otlp(&[executor.snapshot()], &mut batch);
            match push.send(batch.request(&identity)).await {
                Ok(()) => {
                    if warned.take().is_some() {
                        tracing::info!("metrics push to {} works again", push.endpoint());
                    }
                }
                Err(error) => {
                    if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                        warned = Some(Instant::now());
                        tracing::warn!(
                            error = &error as &dyn std::error::Error,
                            "metrics push failed: {error}; the next ones are tried, this is said again at most once a minute"
                        );
                    }
                }
            }
            if last {
                return;
            }
        }
    });
    Ok(())
}

/// Records snapshots (of one service, one per phase) as OTLP metrics: the
/// same series as [`switchyard_executor::stats::SnapshotCollector`], named by OpenTelemetry's
/// conventions (`switchyard.endpoint.completed` with unit `{request}`
/// becomes `switchyard_endpoint_completed_total` again in a Prometheus
/// backend), histograms with the same bounds in seconds.
pub(crate) fn record_otlp(snapshots: &[ExecutorSnapshot], batch: &mut Batch) {
    let labels = |s: &ExecutorSnapshot, e: &EndpointSnapshot| {
        vec![
            attribute("service", s.name.clone()),
            attribute("phase", s.phase.as_str()),
            attribute("endpoint", e.name.clone()),
            attribute("form", e.kind.to_string()),
        ]
    };
    let endpoints = || {
        snapshots
            .iter()
            .flat_map(|s| s.endpoints.iter().map(move |e| (s, e)))
    };
    batch.gauge(
        "switchyard.executor.capacity",
        "Requests the executor runs at once.",
        "{request}",
        snapshots
            .iter()
            .map(|s| {
                (
                    vec![
                        attribute("service", s.name.clone()),
                        attribute("phase", s.phase.as_str()),
                    ],
                    s.capacity as f64,
                )
            })
            .collect(),
    );
    for (metric, kind, help, read) in counters() {
        let name = format!(
            "switchyard.endpoint.{}",
            metric.strip_suffix("_total").unwrap_or(metric)
        );
        if kind == "counter" {
            let points = endpoints()
                .map(|(s, e)| (labels(s, e), read(&e.counts)))
                .collect();
            batch.counter(&name, help, "{request}", points);
        } else {
            let points = endpoints()
                .map(|(s, e)| (labels(s, e), read(&e.counts) as f64))
                .collect();
            batch.gauge(&name, help, "{request}", points);
        }
    }
    let responses = endpoints()
        .flat_map(|(s, e)| {
            e.statuses().map(move |(code, count)| {
                let mut labels = labels(s, e);
                labels.push(attribute("code", code));
                (labels, count)
            })
        })
        .collect();
    batch.counter(
        "switchyard.endpoint.responses",
        "Answers by gRPC status code.",
        "{response}",
        responses,
    );
    let bounds: Vec<f64> = EXPOSED_BUCKETS
        .iter()
        .map(|&index| HistogramSnapshot::bucket_bound_us(index) as f64 / 1e6)
        .collect();
    for (metric, help, pick) in histograms() {
        let points = endpoints()
            .map(|(s, e)| {
                let histogram = pick(e);
                // Per-bucket counts between the exposed bounds, then the rest.
                let mut counts = Vec::with_capacity(bounds.len() + 1);
                let mut below = 0;
                for &index in &EXPOSED_BUCKETS {
                    let cumulative: u64 = histogram.buckets.iter().take(index + 1).sum();
                    counts.push(cumulative - below);
                    below = cumulative;
                }
                counts.push(histogram.count.saturating_sub(below));
                HistogramPoint {
                    attributes: labels(s, e),
                    bounds: bounds.clone(),
                    counts,
                    sum: histogram.sum_us as f64 / 1e6,
                    count: histogram.count,
                }
            })
            .collect();
        let name = format!(
            "switchyard.endpoint.{}",
            metric.strip_suffix("_seconds").unwrap_or(metric)
        );
        batch.histogram(&name, help, "s", points);
    }
}
