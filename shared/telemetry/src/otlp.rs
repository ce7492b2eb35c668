//! Metrics pushed over OTLP, for shops without Prometheus
//! (`OTEL_METRICS_EXPORTER=otlp`, see [`crate::env`]).
//!
//! The executor already keeps exact cumulative counters and pre-aggregated
//! histograms; the OpenTelemetry SDK has no asynchronous histogram to report
//! such a histogram through, so the points are built here as OTLP messages
//! (the `opentelemetry-proto` types) from the same snapshot `/metrics`
//! renders, with cumulative temporality, and sent over gRPC or HTTP/protobuf.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;

use crate::env::Protocol;
use crate::{Identity, key};

/// An OTLP attribute with a string value.
pub fn attribute(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

/// Nanoseconds since the Unix epoch.
pub fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The points of one push, built metric by metric.
#[derive(Debug)]
pub struct Batch {
    start: u64,
    now: u64,
    metrics: Vec<Metric>,
}

impl Batch {
    /// A batch of cumulative points counted since `start` (the process's start).
    pub fn new(start: SystemTime) -> Self {
        Self {
            start: unix_nanos(start),
            now: unix_nanos(SystemTime::now()),
            metrics: Vec::new(),
        }
    }

    fn number(&self, attributes: Vec<KeyValue>, value: f64, cumulative: bool) -> NumberDataPoint {
        NumberDataPoint {
            attributes,
            start_time_unix_nano: if cumulative { self.start } else { 0 },
            time_unix_nano: self.now,
            value: Some(number_data_point::Value::AsDouble(value)),
            ..NumberDataPoint::default()
        }
    }

    /// A monotonic cumulative sum (a Prometheus counter).
    pub fn counter(
        &mut self,
        name: &str,
        description: &str,
        unit: &str,
        points: Vec<(Vec<KeyValue>, u64)>,
    ) {
        let data_points = points
            .into_iter()
            .map(|(attributes, value)| self.number(attributes, value as f64, true))
            .collect();
        self.push(
            name,
            description,
            unit,
            metric::Data::Sum(Sum {
                data_points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
        );
    }

    /// A gauge.
    pub fn gauge(
        &mut self,
        name: &str,
        description: &str,
        unit: &str,
        points: Vec<(Vec<KeyValue>, f64)>,
    ) {
        let data_points = points
            .into_iter()
            .map(|(attributes, value)| self.number(attributes, value, false))
            .collect();
        self.push(
            name,
            description,
            unit,
            metric::Data::Gauge(Gauge { data_points }),
        );
    }

    /// A cumulative explicit-bucket histogram: `bounds` are the upper
    /// bounds, `counts` one per bound plus the overflow bucket (not
    /// cumulative, as OTLP wants them).
    pub fn histogram(
        &mut self,
        name: &str,
        description: &str,
        unit: &str,
        points: Vec<HistogramPoint>,
    ) {
        let data_points = points
            .into_iter()
            .map(|point| HistogramDataPoint {
                attributes: point.attributes,
                start_time_unix_nano: self.start,
                time_unix_nano: self.now,
                count: point.count,
                sum: Some(point.sum),
                bucket_counts: point.counts,
                explicit_bounds: point.bounds,
                ..HistogramDataPoint::default()
            })
            .collect();
        self.push(
            name,
            description,
            unit,
            metric::Data::Histogram(Histogram {
                data_points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
        );
    }

    fn push(&mut self, name: &str, description: &str, unit: &str, data: metric::Data) {
        self.metrics.push(Metric {
            name: name.to_string(),
            description: description.to_string(),
            unit: unit.to_string(),
            data: Some(data),
            ..Metric::default()
        });
    }

    /// The export request, with the process's resource.
    pub fn request(self, identity: &Identity) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        attribute(key::SERVICE_NAME, identity.service.clone()),
                        attribute(key::SERVICE_INSTANCE_ID, identity.instance_id.clone()),
                        attribute(key::PHASE, identity.phase.clone()),
                    ],
                    ..Resource::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "switchyard".to_string(),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        ..InstrumentationScope::default()
                    }),
                    metrics: self.metrics,
                    ..ScopeMetrics::default()
                }],
                ..ResourceMetrics::default()
            }],
        }
    }
}

/// One histogram point.
#[derive(Debug, Clone, Default)]
pub struct HistogramPoint {
    /// Its attributes.
    pub attributes: Vec<KeyValue>,
    /// Upper bounds, ascending.
    pub bounds: Vec<f64>,
    /// Count per bucket: `bounds.len() + 1` of them.
    pub counts: Vec<u64>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// A push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The endpoint is not a URL the transport takes.
    #[error("`{endpoint}` is not an OTLP endpoint: {reason}")]
    Endpoint {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The gRPC call failed.
    #[error("OTLP/gRPC export to {endpoint} failed")]
    Grpc {
        /// The endpoint.
        endpoint: String,
        /// What the call returned.
        #[source]
        status: Box<tonic::Status>,
    },
    /// The HTTP request failed before an answer.
    #[error("OTLP/HTTP export to {endpoint} failed")]
    Http {
        /// The endpoint.
        endpoint: String,
        /// What failed.
        #[source]
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The receiver answered with an error status.
    #[error("OTLP/HTTP export to {endpoint} answered {status}")]
    Refused {
        /// The endpoint.
        endpoint: String,
        /// The HTTP status.
        status: u16,
    },
}

/// Sends metric batches to one OTLP endpoint.
#[derive(Debug, Clone)]
pub struct MetricsPush {
    endpoint: String,
    target: Target,
}

#[derive(Debug, Clone)]
enum Target {
    Grpc(MetricsServiceClient<tonic::transport::Channel>),
    /// The full URL (`…/v1/metrics`); one short HTTP/1 connection per push
    /// (a push a minute needs no pool).
    Http(hyper::Uri),
}

/// How long one push may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

impl MetricsPush {
    /// A client for `endpoint` over `protocol` (connects lazily).
    pub fn new(endpoint: &str, protocol: Protocol) -> Result<Self, PushError> {
        let bad = |reason: String| PushError::Endpoint {
            endpoint: endpoint.to_string(),
            reason,
        };
        let target = match protocol {
            Protocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
                    .map_err(|error| bad(error.to_string()))?
                    .timeout(PUSH_TIMEOUT)
                    .connect_lazy();
                Target::Grpc(MetricsServiceClient::new(channel))
            }
            Protocol::HttpProtobuf => {
                let uri: hyper::Uri = endpoint.parse().map_err(|error| bad(format!("{error}")))?;
                if uri.scheme_str() != Some("http") || uri.host().is_none() {
                    return Err(bad(
                        "metrics over HTTP take an http://host:port/path URL (no TLS is built in for them)"
                            .to_string(),
                    ));
                }
                Target::Http(uri)
            }
        };
        Ok(Self {
            endpoint: endpoint.to_string(),
            target,
        })
    }

    /// Where it pushes.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends one batch.
    pub async fn send(&mut self, request: ExportMetricsServiceRequest) -> Result<(), PushError> {
        match &mut self.target {
            Target::Grpc(client) => {
                client
                    .export(request)
                    .await
                    .map(|_| ())
                    .map_err(|status| PushError::Grpc {
                        endpoint: self.endpoint.clone(),
                        status: Box::new(status),
                    })
            }
            Target::Http(uri) => {
                let body = request.encode_to_vec();
                let sent = tokio::time::timeout(PUSH_TIMEOUT, post(uri, body)).await;
                let http = |error: Box<dyn std::error::Error + Send + Sync>| PushError::Http {
                    endpoint: self.endpoint.clone(),
                    error,
                };
                let status = match sent {
                    Err(elapsed) => return Err(http(Box::new(elapsed))),
                    Ok(Err(error)) => return Err(http(error)),
                    Ok(Ok(status)) => status,
                };
                if (200..300).contains(&status) {
                    Ok(())
                } else {
                    Err(PushError::Refused {
                        endpoint: self.endpoint.clone(),
                        status,
                    })
                }
            }
        }
    }
}

/// POSTs `body` as `application/x-protobuf`; the answer's status.
async fn post(
    uri: &hyper::Uri,
    body: Vec<u8>,
) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    Ok(response.status().as_u16())
}
