//! `switchyard traces`: a small OTLP receiver that prints every trace it
//! receives as an indented waterfall, each span with its service and phase.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use switchyard_telemetry::receiver::{OtlpReceiver, ReceivedSpan};

/// A trace is printed once no span of it arrived for this long.
const QUIET: Duration = Duration::from_secs(2);

pub async fn run(listen: &str, count: Option<usize>, min_services: usize) -> anyhow::Result<()> {
    let address = listen
        .parse()
        .with_context(|| format!("--listen {listen}"))?;
    let receiver = OtlpReceiver::start(address)
        .await
        .with_context(|| format!("cannot listen for OTLP on {listen}"))?;
    eprintln!("receiving OTLP traces on {}", receiver.endpoint());
    let mut changes = receiver.changes();
    let mut printed: HashSet<String> = HashSet::new();
    let mut last_growth: BTreeMap<String, (usize, Instant)> = BTreeMap::new();
    let mut shown = 0;
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(500), changes.changed()).await;
        let spans = receiver.spans();
        let mut by_trace: BTreeMap<String, Vec<ReceivedSpan>> = BTreeMap::new();
        for span in spans {
            if !printed.contains(&span.trace_id) {
                by_trace
                    .entry(span.trace_id.clone())
                    .or_default()
                    .push(span);
            }
        }
        for (trace_id, spans) in by_trace {
            let entry = last_growth
                .entry(trace_id.clone())
                .or_insert((0, Instant::now()));
            if entry.0 != spans.len() {
                *entry = (spans.len(), Instant::now());
                continue;
            }
            if entry.1.elapsed() < QUIET {
                continue;
            }
            printed.insert(trace_id.clone());
            let services: HashSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
            if services.len() < min_services {
                continue;
            }
            print!("{}", waterfall(&trace_id, &spans));
            shown += 1;
            if count.is_some_and(|count| shown >= count) {
                return Ok(());
            }
        }
    }
}

/// The trace as indented lines: offset, duration, name, service and phase.
pub fn waterfall(trace_id: &str, spans: &[ReceivedSpan]) -> String {
    let start = spans.iter().map(|s| s.start_unix_nanos).min().unwrap_or(0);
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: BTreeMap<&str, Vec<&ReceivedSpan>> = BTreeMap::new();
    for span in spans {
        let parent = if ids.contains(span.parent_span_id.as_str()) {
            span.parent_span_id.as_str()
        } else {
            ""
        };
        children.entry(parent).or_default().push(span);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| s.start_unix_nanos);
    }
    let mut out = format!("trace {trace_id}\n");
    fn walk(
        out: &mut String,
        node: &str,
        depth: usize,
        start: u64,
        children: &BTreeMap<&str, Vec<&ReceivedSpan>>,
    ) {
        for span in children.get(node).into_iter().flatten() {
            let offset = (span.start_unix_nanos.saturating_sub(start)) as f64 / 1e6;
            let took = (span.end_unix_nanos.saturating_sub(span.start_unix_nanos)) as f64 / 1e6;
            let phase = span
                .attribute(switchyard_telemetry::key::PHASE)
                .unwrap_or("-");
            let slow = if span
                .events
                .iter()
                .any(|(name, _)| name.contains("slow poll"))
            {
                "  ⚠ slow poll"
            } else {
                ""
            };
            out.push_str(&format!(
                "{:>9.2}ms {:>8.2}ms  {}{}  [{} · {}]{}\n",
                offset,
                took,
                "  ".repeat(depth),
                span.name,
                span.service,
                phase,
                slow
            ));
            walk(out, &span.span_id, depth + 1, start, children);
        }
    }
    walk(&mut out, "", 0, start, &children);
    out
}
