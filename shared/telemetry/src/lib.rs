//! One telemetry init for every Switchyard service: human or JSON logs,
//! OpenTelemetry traces over OTLP (gRPC or HTTP/protobuf), and W3C
//! trace-context and baggage propagation, all configurable by the
//! OpenTelemetry environment variables ([`env`]).
//!
//! The OTLP exporter runs on a small runtime of its own. That is what lets a
//! service flush its spans on shutdown from any thread — including from inside
//! a current-thread runtime, where waiting for an exporter driven by that same
//! runtime would deadlock.
#![deny(missing_docs)]

pub mod env;
pub mod exposition;
pub mod json;
pub mod otlp;
pub mod propagation;
pub mod receiver;

use std::io::IsTerminal as _;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event, for log shippers.
    Json,
}

/// The `[telemetry]` section every service's configuration embeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// A tracing filter directive such as `info` or `switchyard=debug,info`;
    /// `RUST_LOG` overrides it when set.
    pub log_filter: String,
    /// The OTLP collector's base URL, e.g. `http://127.0.0.1:4317` (gRPC) or
    /// `http://127.0.0.1:4318` with `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`.
    /// Empty means the OpenTelemetry environment variables decide ([`env`]),
    /// else no export.
    pub otlp_endpoint: String,
    /// How long spans wait in the batch before export, in milliseconds.
    pub export_delay_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_filter: "info,lapin=warn,lapin::returned_messages=error".to_string(),
            otlp_endpoint: String::new(),
            export_delay_ms: 1000,
        }
    }
}

impl TelemetryConfig {
    /// Where `signal` goes: the setting, else the OpenTelemetry environment
    /// variables ([`env`]).
    pub fn export(&self, signal: env::Signal) -> Result<env::Export, env::EnvProblem> {
        env::export(signal, &self.otlp_endpoint, |name| std::env::var(name).ok())
    }

    /// Where and how often metrics are pushed over OTLP, when
    /// `OTEL_METRICS_EXPORTER=otlp` asks for it ([`env`]).
    pub fn metrics_push(&self) -> Result<Option<MetricsPushTarget>, env::EnvProblem> {
        let var = |name: &str| std::env::var(name).ok();
        match self.export(env::Signal::Metrics)? {
            env::Export::Off(_) => Ok(None),
            env::Export::Otlp { endpoint, protocol } => Ok(Some(MetricsPushTarget {
                endpoint,
                protocol,
                interval: env::metric_interval(var)?,
            })),
        }
    }

    /// Range checks, as `(key, problem)` pairs relative to the section.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if EnvFilter::try_new(&self.log_filter).is_err() {
            problems.push((
                "log_filter",
                format!(
                    "`{}` is not a tracing filter; accepted: a level (error, warn, info, debug, trace) \
                     or directives such as `switchyard=debug,info`",
                    self.log_filter
                ),
            ));
        }
        let endpoint = &self.otlp_endpoint;
        let usable = endpoint.is_empty()
            || endpoint.starts_with("http://")
            || endpoint.starts_with("https://");
        if !usable {
            problems.push((
                "otlp_endpoint",
                format!("`{endpoint}` is not a URL; accepted: empty, or http(s)://host:port"),
            ));
        }
        problems
    }
}

/// Where metrics are pushed, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsPushTarget {
    /// The URL (full, with `/v1/metrics`, over HTTP).
    pub endpoint: String,
    /// The transport.
    pub protocol: env::Protocol,
    /// The push period.
    pub interval: Duration,
}

/// Who is emitting: becomes the OpenTelemetry resource of every span.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `service.name`; `OTEL_SERVICE_NAME` overrides it when set.
    pub service: String,
    /// `service.instance.id`: unique per process.
    pub instance_id: String,
    /// `switchyard.phase`: the process's executor phase.
    pub phase: String,
}

impl Identity {
    /// An identity with a fresh instance id (`<pid>-<random hex>`).
    pub fn new(service: &str, phase: &str) -> Self {
        Self {
            service: std::env::var("OTEL_SERVICE_NAME")
                .ok()
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| service.to_string()),
            instance_id: new_instance_id(),
            phase: phase.to_string(),
        }
    }
}

/// This host's node name (a container's: its hostname), as `uname -n`
/// prints it: the host in rollback notices and heartbeats, by which a
/// container's healthcheck finds its own instances.
pub fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// A process-unique id: the pid and 32 random bits.
pub fn new_instance_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new().hash_one(std::time::SystemTime::now()) as u32;
    format!("{}-{random:08x}", std::process::id())
}

/// Telemetry could not start.
#[derive(Debug, Error)]
pub enum TelemetryError {
    /// The log filter did not parse: a configuration error.
    #[error(
        "{key} (from {origin}): `{value}` is not a log filter ({reason}); accepted: \
         comma-separated directives such as `info` or `info,lapin=warn`"
    )]
    Filter {
        /// `RUST_LOG` or `telemetry.log_filter`.
        key: &'static str,
        /// Where the value came from.
        origin: &'static str,
        /// The value.
        value: String,
        /// The parser's words.
        reason: String,
    },
    /// The exporter's runtime or client could not be built.
    #[error("could not start the OTLP exporter for {endpoint}: {reason}")]
    Exporter {
        /// The collector.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// An OpenTelemetry environment variable this build cannot honour: a
    /// configuration error.
    #[error(transparent)]
    Environment(#[from] env::EnvProblem),
    /// A global subscriber was already installed.
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInstalled(String),
}

/// Keeps telemetry running; [`Telemetry::shutdown`] flushes what is buffered.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Drives the exporter's gRPC client. Kept apart from the service's
    /// runtime so flushing never waits on a runtime that is blocked waiting for it.
    export_runtime: Option<tokio::runtime::Runtime>,
    /// Where the executor's metrics are pushed, when they are.
    metrics_push: Option<MetricsPushTarget>,
}

impl Telemetry {
    /// Where metrics are pushed over OTLP (`OTEL_METRICS_EXPORTER=otlp`),
    /// as resolved at start-up.
    pub fn metrics_push(&self) -> Option<&MetricsPushTarget> {
        self.metrics_push.as_ref()
    }

    /// Exports every span finished so far. Blocks the calling thread, never a runtime.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(error) = provider.force_flush()
        {
            tracing::warn!("flushing spans failed: {error}");
        }
    }

    /// Flushes and stops the exporter.
    pub fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
        }
        if let Some(runtime) = self.export_runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Installs the global subscriber: logs to stderr and, when an endpoint is
/// configured, spans to OTLP. Call once per process.
pub fn init(identity: &Identity, config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let (key, origin, value) = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => ("RUST_LOG", "the environment", directives),
        _ => (
            "telemetry.log_filter",
            "the configuration",
            config.log_filter.clone(),
        ),
    };
    let filter = EnvFilter::try_new(&value).map_err(|error| TelemetryError::Filter {
        key,
        origin,
        value: value.clone(),
        reason: error.to_string(),
    })?;

    let export = config.export(env::Signal::Traces)?;
    let propagators = env::propagators(|name| std::env::var(name).ok())?;
    // Resolved here, once, so that a bad value is a configuration error at
    // start-up; the service starts the push from it ([`Telemetry::metrics_push`]).
    let metrics_push = config.metrics_push()?;
    let (provider, export_runtime) = match &export {
        env::Export::Otlp { endpoint, protocol } => {
            let (provider, runtime) = tracer_provider(identity, endpoint, *protocol, config)?;
            (Some(provider), Some(runtime))
        }
        env::Export::Off(_) => (None, None),
    };
    let otel_layer = provider.as_ref().map(|provider| {
        // Not the source location, thread or busy/idle time of every
        // span: attributes no convention has, on every span.
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("switchyard"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
    });
    let (text, json) = match config.log_format {
        LogFormat::Text => (
            // Colour only for a person at a terminal: not in files or pipes.
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(
                        std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
                    )
                    .with_writer(std::io::stderr),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .event_format(json::JsonLines::new(
                        &identity.service,
                        &identity.instance_id,
                    ))
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(otel_layer)
        .with(text)
        .with(json)
        .try_init()
        .map_err(|error| TelemetryError::AlreadyInstalled(error.to_string()))?;
    propagation::install(&propagators);
    match &export {
        env::Export::Otlp { endpoint, protocol } => {
            tracing::info!("trace export: {protocol} to {endpoint}")
        }
        env::Export::Off(why) => tracing::debug!("trace export off: {why}"),
    }
    Ok(Telemetry {
        provider,
        export_runtime,
        metrics_push,
    })
}

/// The attribute keys Switchyard's resources and spans carry, for code that
/// writes or reads them. (The executor's dispatch span names `switchyard.phase`
/// as a `tracing` field, which must be spelled out where the span is made.)
pub mod key {
    /// OpenTelemetry's service name.
    pub const SERVICE_NAME: &str = "service.name";
    /// OpenTelemetry's service instance (`<service>@<instance>`).
    pub const SERVICE_INSTANCE_ID: &str = "service.instance.id";
    /// The phase a process (on its resource) or a dispatch (on its span) ran in.
    pub const PHASE: &str = "switchyard.phase";
}

/// The resource every span of this process carries.
pub fn resource(identity: &Identity) -> Resource {
    Resource::builder()
        .with_service_name(identity.service.clone())
        .with_attributes([
            KeyValue::new(key::SERVICE_INSTANCE_ID, identity.instance_id.clone()),
            KeyValue::new(key::PHASE, identity.phase.clone()),
        ])
        .build()
}

fn tracer_provider(
    identity: &Identity,
    endpoint: &str,
    protocol: env::Protocol,
    config: &TelemetryConfig,
) -> Result<(SdkTracerProvider, tokio::runtime::Runtime), TelemetryError> {
    let failed = |reason: String| TelemetryError::Exporter {
        endpoint: endpoint.to_string(),
        reason,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|error| failed(error.to_string()))?;
    // The exporter's channel (or HTTP client) spawns its connection tasks on
    // the runtime that is current while it is built.
    let exporter = {
        let _entered = runtime.enter();
        match protocol {
            env::Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(Duration::from_secs(5))
                .build(),
            // The endpoint is the full URL (env::export added the path).
            env::Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(OnRuntime {
                    client: opentelemetry_http::hyper::HyperClient::with_default_connector(
                        Duration::from_secs(5),
                        None,
                    ),
                    runtime: runtime.handle().clone(),
                })
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(endpoint)
                .with_timeout(Duration::from_secs(5))
                .build(),
        }
        .map_err(|error| failed(error.to_string()))?
    };
    let exporter = Warned {
        inner: exporter,
        endpoint: endpoint.to_string(),
        last: std::sync::Mutex::new(None),
        failed: std::sync::atomic::AtomicU64::new(0),
    };
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_millis(config.export_delay_ms.max(1)))
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource(identity))
        .build();
    Ok((provider, runtime))
}

/// An HTTP client whose requests run on the exporter's runtime. The batch
/// processor exports from a thread of its own, outside any Tokio runtime,
/// where hyper's connector cannot run ("no reactor running"); each request
/// is handed to the runtime and awaited from there.
#[derive(Debug, Clone)]
struct OnRuntime {
    client: opentelemetry_http::hyper::HyperClient,
    runtime: tokio::runtime::Handle,
}

#[tonic::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await?
    }
}

/// How often a failing exporter is reported, at most.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// An exporter that says when its exports fail: a warning at the first
/// failure, then at most one a minute with the count since (a collector
/// that is down fails every batch; its spans are dropped).
#[derive(Debug)]
struct Warned<E> {
    inner: E,
    endpoint: String,
    last: std::sync::Mutex<Option<std::time::Instant>>,
    failed: std::sync::atomic::AtomicU64,
}

impl<E> Warned<E> {
    fn failed(&self, error: &opentelemetry_sdk::error::OTelSdkError) {
        use std::sync::atomic::Ordering::Relaxed;
        let failed = self.failed.fetch_add(1, Relaxed) + 1;
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        *last = Some(std::time::Instant::now());
        self.failed.store(0, Relaxed);
        tracing::warn!(
            "trace export to {} failed: {error} ({failed} batch(es) since the last warning; their spans are dropped)",
            self.endpoint
        );
    }
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for Warned<E>
{
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        let exported = self.inner.export(batch);
        async move {
            let result = exported.await;
            if let Err(error) = &result {
                self.failed(error);
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
