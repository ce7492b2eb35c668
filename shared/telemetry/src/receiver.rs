//! A small OTLP receiver, over gRPC or over HTTP with protobuf bodies (the
//! two protocols the exporters speak): what tests assert on and what the
//! CLI's `traces` command prints — tracing without Jaeger.
//!
//! It keeps every span and metric point it receives in memory, flattened
//! with its resource's service name and attributes as strings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
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
    /// `internal`, `server`, `client`, `producer`, `consumer` (or `unspecified`).
    pub kind: &'static str,
    /// The span status: `unset`, `ok` or `error`.
    pub status: &'static str,
    /// Span attributes rendered as strings.
    pub attributes: BTreeMap<String, String>,
    /// Each attribute's OTLP value type: `string`, `int`, `double`, `bool`, …
    pub value_types: BTreeMap<String, &'static str>,
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

    /// The OTLP value type of a span attribute (`int`, `string`, …).
    pub fn value_type(&self, key: &str) -> Option<&'static str> {
        self.value_types.get(key).copied()
    }
}

/// One received metric data point, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedPoint {
    /// The resource's `service.name`.
    pub service: String,
    /// The metric's name.
    pub name: String,
    /// `sum`, `gauge` or `histogram`.
    pub kind: &'static str,
    /// For a sum, whether it is monotonic.
    pub monotonic: bool,
    /// The point's attributes, as strings.
    pub attributes: BTreeMap<String, String>,
    /// The value; for a histogram, its count.
    pub value: f64,
}

/// A running receiver. Dropping it stops the server.
#[derive(Debug)]
pub struct OtlpReceiver {
    address: SocketAddr,
    protocol: Protocol,
    store: Arc<Store>,
    received: watch::Receiver<usize>,
    _stop: oneshot::Sender<()>,
}

/// The two OTLP transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (`grpc`).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`): `POST /v1/traces`,
    /// `POST /v1/metrics`.
    HttpProtobuf,
}

/// What was received, shared by the servers.
#[derive(Debug)]
struct Store {
    spans: Mutex<Vec<ReceivedSpan>>,
    points: Mutex<Vec<ReceivedPoint>>,
    /// Counts batches, so waiters wake on every arrival.
    count: watch::Sender<usize>,
}

/// What `mutex` holds, poisoned or not (as `switchyard_executor::sync::lock`,
/// which this crate cannot depend on): each section holding a store's lock
/// extends or clones one vector, which a panic cannot leave half done, and
/// refusing a poisoned one would lose every later span without a word.
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store {
    fn add_spans(&self, request: ExportTraceServiceRequest) {
        let flattened = flatten_spans(request);
        locked(&self.spans).extend(flattened);
        self.count.send_modify(|count| *count += 1);
    }

    fn add_points(&self, request: ExportMetricsServiceRequest) {
        let flattened = flatten_points(request);
        locked(&self.points).extend(flattened);
        self.count.send_modify(|count| *count += 1);
    }
}

impl OtlpReceiver {
    /// Serves OTLP/gRPC on `address` (use port 0 for any free port).
    pub async fn start(address: SocketAddr) -> std::io::Result<Self> {
        Self::start_with(address, Protocol::Grpc).await
    }

    /// Serves OTLP/gRPC on a free loopback port (what tests use).
    pub async fn loopback() -> std::io::Result<Self> {
        Self::loopback_with(Protocol::Grpc).await
    }

    /// Serves OTLP over `protocol` on a free loopback port.
    pub async fn loopback_with(protocol: Protocol) -> std::io::Result<Self> {
        Self::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), protocol).await
    }

    /// Serves OTLP on `address` over `protocol`.
    pub async fn start_with(address: SocketAddr, protocol: Protocol) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let (count, received) = watch::channel(0);
        let store = Arc::new(Store {
            spans: Mutex::new(Vec::new()),
            points: Mutex::new(Vec::new()),
            count,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        match protocol {
            Protocol::Grpc => {
                let traces = TraceServiceServer::new(Collect(Arc::clone(&store)))
                    .max_decoding_message_size(64 * 1024 * 1024);
                let metrics = MetricsServiceServer::new(Collect(Arc::clone(&store)))
                    .max_decoding_message_size(64 * 1024 * 1024);
                tokio::spawn(async move {
                    let incoming = tonic::transport::server::TcpIncoming::from(listener);
                    let result = tonic::transport::Server::builder()
                        .add_service(traces)
                        .add_service(metrics)
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = stopped.await;
                        })
                        .await;
                    if let Err(error) = result {
                        tracing::warn!("OTLP receiver stopped: {error}");
                    }
                });
            }
            Protocol::HttpProtobuf => {
                tokio::spawn(serve_http(listener, Arc::clone(&store), stopped));
            }
        }
        Ok(Self {
            address,
            protocol,
            store,
            received,
            _stop: stop,
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The URL to give an exporter (`OTEL_EXPORTER_OTLP_ENDPOINT`): the
    /// base URL for either protocol (an HTTP exporter adds `/v1/traces`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The protocol it speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        locked(&self.store.spans).clone()
    }

    /// Every metric point received so far.
    pub fn points(&self) -> Vec<ReceivedPoint> {
        locked(&self.store.points).clone()
    }

    /// Waits until `done` holds for the metric points received, at most
    /// `timeout`. Returns the points either way; `Err` when the time ran out.
    pub async fn wait_for_points(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedPoint]) -> bool,
    ) -> Result<Vec<ReceivedPoint>, Vec<ReceivedPoint>> {
        self.wait_until(timeout, || self.points(), done).await
    }

    /// Waits until `done` holds for the spans received, at most `timeout`.
    /// Returns the spans either way; `Err` when the time ran out.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Result<Vec<ReceivedSpan>, Vec<ReceivedSpan>> {
        self.wait_until(timeout, || self.spans(), done).await
    }

    /// Reads what was received with `read` after every batch until `done`
    /// holds for it, at most `timeout`.
    async fn wait_until<T>(
        &self,
        timeout: Duration,
        read: impl Fn() -> Vec<T>,
        done: impl Fn(&[T]) -> bool,
    ) -> Result<Vec<T>, Vec<T>> {
        let mut received = self.received.clone();
        let waiting = async {
            loop {
                let seen = read();
                if done(&seen) || received.changed().await.is_err() {
                    return seen;
                }
            }
        };
        tokio::time::timeout(timeout, waiting)
            .await
            .map_err(|_elapsed| read())
    }

    /// A receiver that changes each time a batch arrives (its value is the
    /// number of batches received), for printing as they come.
    pub fn changes(&self) -> watch::Receiver<usize> {
        self.received.clone()
    }
}

/// The first of `spans` named `name`.
pub fn find_span<'a>(spans: &'a [ReceivedSpan], name: &str) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|span| span.name == name)
}

/// The first of `points` of the metric `name`.
pub fn find_point<'a>(points: &'a [ReceivedPoint], name: &str) -> Option<&'a ReceivedPoint> {
    points.iter().find(|point| point.name == name)
}

/// Whether every one of `names` names one of `spans`.
pub fn has_spans(spans: &[ReceivedSpan], names: &[&str]) -> bool {
    names.iter().all(|name| find_span(spans, name).is_some())
}

/// Starts a receiver on a free loopback port and installs this process's
/// telemetry (as `service`, in `phase`) exporting to it every 50 ms: how a
/// test sees the spans its code produced. Call once per process.
pub async fn capture(
    service: &str,
    phase: &str,
) -> Result<(OtlpReceiver, crate::Telemetry), Box<dyn std::error::Error + Send + Sync>> {
    let receiver = OtlpReceiver::loopback().await?;
    let config = crate::TelemetryConfig {
        otlp_endpoint: receiver.endpoint(),
        export_delay_ms: 50,
        ..crate::TelemetryConfig::default()
    };
    let telemetry = crate::init(&crate::Identity::new(service, phase), &config)?;
    Ok((receiver, telemetry))
}

struct Collect(Arc<Store>);

#[tonic::async_trait]
impl TraceService for Collect {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add_spans(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Collect {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.add_points(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// OTLP/HTTP: `POST /v1/traces` and `POST /v1/metrics` with
/// `application/x-protobuf` bodies (the OTLP specification, "OTLP/HTTP").
async fn serve_http(
    listener: tokio::net::TcpListener,
    store: Arc<Store>,
    mut stopped: oneshot::Receiver<()>,
) {
    use http_body_util::BodyExt as _;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!("OTLP/HTTP receiver: accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stopped => return,
        };
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let store = Arc::clone(&store);
                    async move {
                        let path = request.uri().path().to_string();
                        let post = request.method() == hyper::Method::POST;
                        let body = request.into_body().collect().await.map(|b| b.to_bytes());
                        let outcome = match (post, path.as_str(), body) {
                            (_, _, Err(error)) => Err((400, error.to_string())),
                            (true, "/v1/traces", Ok(body)) => {
                                ExportTraceServiceRequest::decode(body)
                                    .map(|r| store.add_spans(r))
                                    .map_err(|error| (400, error.to_string()))
                            }
                            (true, "/v1/metrics", Ok(body)) => {
                                ExportMetricsServiceRequest::decode(body)
                                    .map(|r| store.add_points(r))
                                    .map_err(|error| (400, error.to_string()))
                            }
                            _ => Err((404, format!("no OTLP endpoint at {path}"))),
                        };
                        let (status, body) = match outcome {
                            // An empty ExportServiceResponse: full success.
                            Ok(()) => (200, bytes::Bytes::new()),
                            Err((status, message)) => (status, bytes::Bytes::from(message)),
                        };
                        hyper::Response::builder()
                            .status(status)
                            .header("content-type", "application/x-protobuf")
                            .body(http_body_util::Full::new(body))
                    }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn flatten_spans(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut flattened = Vec::new();
    for resource_spans in request.resource_spans {
        let (resource, service) = resource_and_service(resource_spans.resource);
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                flattened.push(ReceivedSpan {
                    service: service.clone(),
                    resource: resource.clone(),
                    kind: match span.kind {
                        1 => "internal",
                        2 => "server",
                        3 => "client",
                        4 => "producer",
                        5 => "consumer",
                        _ => "unspecified",
                    },
                    status: match span.status.as_ref().map(|s| s.code) {
                        Some(1) => "ok",
                        Some(2) => "error",
                        _ => "unset",
                    },
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                    value_types: span
                        .attributes
                        .iter()
                        .map(|pair| (pair.key.clone(), value_type(pair.value.as_ref())))
                        .collect(),
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
    flattened
}

fn flatten_points(request: ExportMetricsServiceRequest) -> Vec<ReceivedPoint> {
    use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
    let number = |value: Option<number_data_point::Value>| match value {
        Some(number_data_point::Value::AsDouble(d)) => d,
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        None => f64::NAN,
    };
    let mut flattened = Vec::new();
    for resource_metrics in request.resource_metrics {
        let (_, service) = resource_and_service(resource_metrics.resource);
        for scope in resource_metrics.scope_metrics {
            for metric in scope.metrics {
                let mut push = |kind, monotonic, attributes, value| {
                    flattened.push(ReceivedPoint {
                        service: service.clone(),
                        name: metric.name.clone(),
                        kind,
                        monotonic,
                        attributes,
                        value,
                    })
                };
                // The value of a sum or gauge point, the count of a histogram point.
                let (kind, monotonic, numbers) = match metric.data {
                    Some(Data::Sum(sum)) => ("sum", sum.is_monotonic, sum.data_points),
                    Some(Data::Gauge(gauge)) => ("gauge", false, gauge.data_points),
                    Some(Data::Histogram(histogram)) => {
                        for point in histogram.data_points {
                            let attributes = attributes(&point.attributes);
                            push("histogram", false, attributes, point.count as f64);
                        }
                        continue;
                    }
                    _ => continue,
                };
                for point in numbers {
                    push(
                        kind,
                        monotonic,
                        attributes(&point.attributes),
                        number(point.value),
                    );
                }
            }
        }
    }
    flattened
}

fn value_type(value: Option<&AnyValue>) -> &'static str {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(_)) => "string",
        Some(any_value::Value::BoolValue(_)) => "bool",
        Some(any_value::Value::IntValue(_)) => "int",
        Some(any_value::Value::DoubleValue(_)) => "double",
        Some(any_value::Value::BytesValue(_)) => "bytes",
        Some(any_value::Value::ArrayValue(_)) => "array",
        Some(_) => "other",
        None => "empty",
    }
}

/// An export's resource attributes, and its `service.name` among them ("" when
/// it names none).
fn resource_and_service(resource: Option<Resource>) -> (BTreeMap<String, String>, String) {
    let resource = resource
        .map(|r| attributes(&r.attributes))
        .unwrap_or_default();
    let service = resource
        .get(crate::key::SERVICE_NAME)
        .cloned()
        .unwrap_or_default();
    (resource, service)
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
