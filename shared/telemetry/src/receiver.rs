//! A small OTLP/gRPC trace receiver: what tests assert on and what the CLI's
//! `traces` command prints — tracing without Jaeger.
//!
//! It keeps every span it receives in memory, flattened with its resource's
//! service name and attributes as strings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use tokio::sync::{oneshot, watch};

/// One received span, flattened for reading.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    /// Every resource attribute (`service.instance.id`, `switchyard.phase`, …).
    pub resource: BTreeMap<String, String>,
    /// Span name.
    pub name: String,
    /// Trace id, lowercase hex.
    pub trace_id: String,
    /// Span id, lowercase hex.
    pub span_id: String,
    /// Parent span id, lowercase hex; empty for a root span.
    pub parent_span_id: String,
    /// Start, nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// End, nanoseconds since the Unix epoch.
    pub end_unix_nanos: u64,
    /// Span attributes rendered as strings.
    pub attributes: BTreeMap<String, String>,
    /// Event names with their attributes.
    pub events: Vec<(String, BTreeMap<String, String>)>,
}

impl ReceivedSpan {
    /// An attribute of the span, or else of its resource.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .get(key)
            .or_else(|| self.resource.get(key))
            .map(String::as_str)
    }
}

/// A running receiver. Dropping it stops the server.
#[derive(Debug)]
pub struct OtlpReceiver {
    address: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    received: watch::Receiver<usize>,
    _stop: oneshot::Sender<()>,
}

impl OtlpReceiver {
    /// Serves OTLP/gRPC on `address` (use port 0 for any free port).
    pub async fn start(address: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let spans = Arc::new(Mutex::new(Vec::new()));
        let (count, received) = watch::channel(0);
        let (stop, stopped) = oneshot::channel::<()>();
        let service = TraceServiceServer::new(Collect {
            spans: Arc::clone(&spans),
            count,
        })
        .max_decoding_message_size(64 * 1024 * 1024);
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let result = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = result {
                tracing::warn!("OTLP receiver stopped: {error}");
            }
        });
        Ok(Self {
            address,
            spans,
            received,
            _stop: stop,
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The URL to give an exporter (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .map(|spans| spans.clone())
            .unwrap_or_default()
    }

    /// Waits until `done` holds for the spans received, at most `timeout`.
    /// Returns the spans either way; `Err` when the time ran out.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Result<Vec<ReceivedSpan>, Vec<ReceivedSpan>> {
        let mut received = self.received.clone();
        let waiting = async {
            loop {
                let spans = self.spans();
                if done(&spans) {
                    return spans;
                }
                if received.changed().await.is_err() {
                    return spans;
                }
            }
        };
        tokio::time::timeout(timeout, waiting)
            .await
            .map_err(|_elapsed| self.spans())
    }

    /// A receiver that changes each time a batch arrives (its value is the
    /// number of spans held), for printing as they come.
    pub fn changes(&self) -> watch::Receiver<usize> {
        self.received.clone()
    }
}

/// Starts a receiver on a free loopback port and installs this process's
/// telemetry (as `service`, in `phase`) exporting to it every 50 ms: how a
/// test sees the spans its code produced. Call once per process.
pub async fn capture(
    service: &str,
    phase: &str,
) -> Result<(OtlpReceiver, crate::Telemetry), Box<dyn std::error::Error + Send + Sync>> {
    let receiver = OtlpReceiver::start(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let config = crate::TelemetryConfig {
        otlp_endpoint: receiver.endpoint(),
        export_delay_ms: 50,
        ..crate::TelemetryConfig::default()
    };
    let telemetry = crate::init(&crate::Identity::new(service, phase), &config)?;
    Ok((receiver, telemetry))
}

struct Collect {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    count: watch::Sender<usize>,
}

#[tonic::async_trait]
impl TraceService for Collect {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut flattened = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    flattened.push(ReceivedSpan {
                        service: service.clone(),
                        resource: resource.clone(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        start_unix_nanos: span.start_time_unix_nano,
                        end_unix_nanos: span.end_time_unix_nano,
                        attributes: attributes(&span.attributes),
                        events: span
                            .events
                            .into_iter()
                            .map(|event| (event.name, attributes(&event.attributes)))
                            .collect(),
                    });
                }
            }
        }
        let total = match self.spans.lock() {
            Ok(mut spans) => {
                spans.extend(flattened);
                spans.len()
            }
            Err(_) => return Err(tonic::Status::internal("span store poisoned")),
        };
        self.count.send_replace(total);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|pair| (pair.key.clone(), render(pair.value.as_ref())))
        .collect()
}

fn render(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(bytes)) => hex(bytes),
        Some(any_value::Value::ArrayValue(array)) => format!(
            "[{}]",
            array
                .values
                .iter()
                .map(|v| render(Some(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
