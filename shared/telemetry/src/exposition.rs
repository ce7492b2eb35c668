//! The metrics endpoint: `GET /metrics` answers with what a render function
//! returns — a service renders its executor's snapshot
//! (`switchyard_service::serve_metrics`); under a launcher, the supervisor
//! serves the sum of its workers' snapshots instead (workers answering on a
//! shared port in turn would make every counter jump back and forth
//! between them, and every `rate()` wrong) — plus the `process_*` series.
//!
//! The text is OpenMetrics 1.0, written by prometheus-client (the
//! Prometheus project's Rust client) from collectors that read the
//! snapshot at scrape time ([`openmetrics`]); Prometheus asks for it by
//! default, and the sample names are those of the classic format.
//!
//! Why a Prometheus scrape rather than OpenTelemetry metrics over OTLP: the
//! executor already keeps exact counters and histograms for its snapshot API,
//! and rendering that same snapshot means one set of numbers with no second
//! aggregation; it needs no collector (Jaeger, our trace backend, takes no
//! metrics); and `curl` can read it during a migration. Any OpenTelemetry
//! Collector can scrape it with its Prometheus receiver.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// A listening socket on `address` as Switchyard's servers open one:
/// `SO_REUSEADDR` (a restarted server binds at once), a backlog of 1024.
pub fn listen(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(1024)
}

/// Serves `GET /metrics` with what `render` returns on each scrape.
pub async fn serve_text<R>(
    address: SocketAddr,
    render: R,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr>
where
    R: Fn() -> String + Clone + Send + Sync + 'static,
{
    let listener = listen(address)?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve_http(
        listener,
        "metrics endpoint",
        move |request| respond(&request, &render),
        shutdown,
    ));
    Ok(bound)
}

/// A small HTTP/1 server: answers every request on `listener` with
/// `answer` until `shutdown`, then lets each open connection (a scrape, a
/// page's event stream) finish for up to two seconds. `what` names it in
/// the log when an accept fails (then it waits a moment: a full descriptor
/// table would otherwise make it spin).
pub async fn serve_http<A, B>(
    listener: tokio::net::TcpListener,
    what: &'static str,
    answer: A,
    shutdown: CancellationToken,
) where
    A: Fn(Request<hyper::body::Incoming>) -> Response<B> + Clone + Send + Sync + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!("{what}: accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let (answer, shutdown) = (answer.clone(), shutdown.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = answer(request);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), connection).await;
                }
            }
        });
    }
}

fn respond<B>(request: &Request<B>, render: &impl Fn() -> String) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method().as_str(), request.uri().path()) {
        ("GET", "/metrics") => (StatusCode::OK, CONTENT_TYPE, render()),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// The content type of [`openmetrics`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes `collectors` as one OpenMetrics exposition (each family's HELP
/// and TYPE once, `# EOF` at the end), by prometheus-client.
pub fn openmetrics(collectors: impl IntoIterator<Item = Box<dyn Collector>>) -> String {
    let mut registry = Registry::default();
    for collector in collectors {
        registry.register_collector(collector);
    }
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// `switchyard_build_info` and the standard `process_*` series of this
/// process (the names every Prometheus client library uses), read from
/// `/proc` on each scrape; a value that cannot be read is left out.
#[derive(Debug, Clone)]
pub struct ProcessCollector {
    service: String,
}

impl ProcessCollector {
    /// The series of this process, labelled with `service`.
    pub fn new(service: &str) -> Self {
        Self {
            service: service.to_string(),
        }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder
            .encode_descriptor(
                "switchyard_build",
                "The build running, as labels.",
                None,
                MetricType::Info,
            )?
            .encode_info(&[
                ("service", self.service.as_str()),
                ("version", env!("CARGO_PKG_VERSION")),
            ])?;
        for (name, kind, help, value) in process_series() {
            let Some(value) = value else { continue };
            let series = encoder.encode_descriptor(name, help, None, kind)?;
            match kind {
                MetricType::Counter => ConstCounter::new(value).encode(series)?,
                _ => ConstGauge::new(value).encode(series)?,
            }
        }
        Ok(())
    }
}

/// The `process_*` families: name (a counter's without `_total`), type,
/// help and value now.
fn process_series() -> [(&'static str, MetricType, &'static str, Option<f64>); 6] {
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // The fields after the command name (which may hold spaces), from
    // field 3 (`state`) on, as proc(5) numbers them.
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| -> Option<f64> { fields.get(n.checked_sub(3)?)?.parse().ok() };
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as f64;
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|b| b.trim().parse::<f64>().ok())
    });
    [
        (
            "process_cpu_seconds",
            MetricType::Counter,
            "User and system CPU time spent, in seconds.",
            field(14).zip(field(15)).map(|(u, s)| (u + s) / ticks),
        ),
        (
            "process_resident_memory_bytes",
            MetricType::Gauge,
            "Resident memory size in bytes.",
            field(24).map(|pages| pages * page),
        ),
        (
            "process_virtual_memory_bytes",
            MetricType::Gauge,
            "Virtual memory size in bytes.",
            field(23),
        ),
        (
            "process_start_time_seconds",
            MetricType::Gauge,
            "Start time of the process since the Unix epoch, in seconds.",
            boot.zip(field(22))
                .map(|(boot, start)| boot + start / ticks),
        ),
        (
            "process_open_fds",
            MetricType::Gauge,
            "Open file descriptors.",
            std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count() as f64),
        ),
        (
            "process_max_fds",
            MetricType::Gauge,
            "The limit on open file descriptors.",
            rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .current
                .map(|limit| limit as f64),
        ),
    ]
}
