//! gRPC on the executor.
//!
//! A gRPC method is an endpoint like any AMQP one: the tonic handler calls
//! [`unary`], which extracts the caller's trace context, turns `grpc-timeout`
//! into the executor deadline and dispatches the body in the service's phase.
//! [`serve`] runs a server with `grpc.health.v1` following [`Readiness`],
//! server reflection, and graceful shutdown; [`TraceInterceptor`] injects the
//! caller's trace context into outgoing requests.
#![deny(missing_docs)]

pub mod client;
mod connections;
mod readiness;
mod retry;
mod status;
mod switch;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchyard_config::Listen;
use switchyard_executor::{BoundEndpoint, DispatchOptions};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::{Instrument, field};

pub use connections::{ConnectionLimits, LimitedStream};
pub use readiness::Readiness;
pub use retry::{never_sent, retry_unsent};
pub use status::{
    FullMethod, code_name, from_dispatch, invalid_argument, is_server_error, not_found,
};
pub use switch::Switch;

/// The `[grpc]` section of a service that serves gRPC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// `IP:port` to listen on (checked as it is read).
    pub listen: Listen,
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// How long a call waits for executor capacity before RESOURCE_EXHAUSTED.
    pub overload_wait_ms: u64,
    /// PEM certificate chain: serve TLS when set (with `tls_key_file`).
    pub tls_cert_file: String,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: String,
    /// PEM CA certificate(s) trusted for outgoing `https://` gRPC calls.
    pub tls_ca_file: String,
    /// Open client connections at most; new ones beyond are closed at once
    /// (lowered below the descriptor limit when it comes near it).
    pub max_connections: usize,
    /// How long a new connection may take to send its first bytes before it
    /// is closed.
    pub first_byte_timeout_ms: u64,
    /// How long a client connection is served before the server asks the
    /// client to move to a new one (an HTTP/2 GOAWAY after which the calls
    /// in flight finish; gRFC A9's `MAX_CONNECTION_AGE`); 0: never. Gives
    /// every worker behind one port, a canary too, a share of clients that
    /// keep one connection for life.
    pub max_connection_age_ms: u64,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: Listen::loopback(50051),
            max_message_bytes: 4 * 1024 * 1024,
            overload_wait_ms: 1000,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_ca_file: String::new(),
            max_connections: 10_000,
            first_byte_timeout_ms: 10_000,
            max_connection_age_ms: 0,
        }
    }
}

impl GrpcConfig {
    /// Range checks, relative to the section.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        use switchyard_config::check;
        let mut problems = check::found([
            (
                "max_message_bytes",
                check::within(
                    self.max_message_bytes as u64,
                    1024,
                    256 * 1024 * 1024,
                    "bytes",
                ),
            ),
            ("tls_cert_file", check::pem_file(&self.tls_cert_file)),
            ("tls_key_file", check::pem_file(&self.tls_key_file)),
            ("tls_ca_file", check::pem_file(&self.tls_ca_file)),
            (
                "max_connections",
                check::within(self.max_connections as u64, 1, 1_000_000, "connections"),
            ),
            (
                "first_byte_timeout_ms",
                check::at_least(self.first_byte_timeout_ms, 1, "ms"),
            ),
            (
                "max_connection_age_ms",
                check::never_or_at_least(self.max_connection_age_ms, 1000, "ms"),
            ),
        ]);
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            problems.push((
                "tls_key_file",
                "TLS needs both tls_cert_file and tls_key_file; accepted: both set, or neither"
                    .to_string(),
            ));
        }
        problems
    }

    /// The limits on client connections.
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections,
            first_byte_timeout: Duration::from_millis(self.first_byte_timeout_ms),
            max_connection_age: (self.max_connection_age_ms > 0)
                .then(|| Duration::from_millis(self.max_connection_age_ms)),
        }
    }

    /// `overload_wait_ms` as a duration.
    pub fn overload_wait(&self) -> Duration {
        Duration::from_millis(self.overload_wait_ms)
    }

    /// The server's TLS settings, when `tls_cert_file` is set.
    pub fn server_tls(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, GrpcError> {
        if self.tls_cert_file.is_empty() && self.tls_key_file.is_empty() {
            return Ok(None);
        }
        let read = |key: &'static str, path: &str| {
            std::fs::read(path).map_err(|source| GrpcError::TlsFile {
                key,
                path: path.to_string(),
                source,
            })
        };
        let identity = tonic::transport::Identity::from_pem(
            read("tls_cert_file", &self.tls_cert_file)?,
            read("tls_key_file", &self.tls_key_file)?,
        );
        Ok(Some(
            tonic::transport::ServerTlsConfig::new().identity(identity),
        ))
    }

    /// An endpoint for calling `url`; `https://` URLs trust `tls_ca_file`.
    pub fn client_endpoint(&self, url: &str) -> Result<tonic::transport::Endpoint, GrpcError> {
        let client = |source| GrpcError::Client {
            url: url.to_string(),
            source,
        };
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(client)?
            .connect_timeout(Duration::from_secs(5));
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        if self.tls_ca_file.is_empty() {
            return Err(GrpcError::NoCa {
                url: url.to_string(),
            });
        }
        let ca = std::fs::read(&self.tls_ca_file).map_err(|source| GrpcError::TlsFile {
            key: "tls_ca_file",
            path: self.tls_ca_file.clone(),
            source,
        })?;
        endpoint
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            )
            .map_err(client)
    }
}

/// What a gRPC endpoint body returns.
pub type GrpcOutcome<T> = Result<T, Status>;

/// Runs one unary call through the executor: parents a server span on the
/// caller's trace context, applies `grpc-timeout` as the deadline, dispatches
/// in the service's phase and maps every failure to a gRPC status.
pub async fn unary<Req, Resp>(
    endpoint: &BoundEndpoint<Req, GrpcOutcome<Resp>>,
    request: Request<Req>,
    overload_wait: Duration,
) -> Result<Response<Resp>, Status>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    unary_observed(endpoint, request, overload_wait, |_| {}).await
}

/// One finished unary call, as [`unary_observed`] reports it. Borrowed,
/// and the trace id looked up only when asked: [`unary`]'s calls, which
/// observe nothing, pay for nothing.
#[derive(Debug)]
pub struct Finished<'a> {
    /// The endpoint's name, e.g. `Metering/PostSamples`.
    pub method: &'a str,
    /// The status the caller got.
    pub code: tonic::Code,
    /// From the request's arrival to the answer.
    pub elapsed: Duration,
    span: &'a tracing::Span,
}

impl Finished<'_> {
    /// The server span's trace id, when traced.
    pub fn trace_id(&self) -> Option<String> {
        switchyard_telemetry::propagation::trace_id(self.span)
    }
}

/// [`unary`], then `observe` is told how the call ended.
pub async fn unary_observed<Req, Resp>(
    endpoint: &BoundEndpoint<Req, GrpcOutcome<Resp>>,
    request: Request<Req>,
    overload_wait: Duration,
    observe: impl FnOnce(Finished<'_>),
) -> Result<Response<Resp>, Status>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    let received = Instant::now();
    // Named `package.Service/Method` (OpenTelemetry RPC conventions), from
    // the request's path; the endpoint's own name when there is none.
    let (service, method, host, port) = match request.extensions().get::<FullMethod>() {
        Some(full) => (
            full.service.clone(),
            full.method.clone(),
            full.host.clone(),
            full.port,
        ),
        None => match endpoint.name().split_once('/') {
            Some((service, method)) => (service.to_string(), method.to_string(), None, None),
            None => (String::new(), endpoint.name().to_string(), None, None),
        },
    };
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        server.address = host,
        server.port = port.map(i64::from),
        rpc.grpc.status_code = field::Empty,
        otel.status_code = field::Empty,
        error.type = field::Empty,
    );
    // Before the span is first entered: tracing-opentelemetry refuses later.
    switchyard_telemetry::propagation::set_parent_from_metadata(&span, request.metadata());
    let deadline =
        grpc_timeout(request.metadata()).map(|timeout| received + answer_within(timeout));
    let options = DispatchOptions {
        deadline,
        wait_budget: Some(overload_wait),
        parent: Some(span.clone()),
    };
    let result = endpoint
        .dispatch(request.into_inner(), options)
        .instrument(span.clone())
        .await;
    let result = match result {
        Ok(Ok(response)) => Ok(Response::new(response)),
        Ok(Err(status)) => Err(status),
        Err(error) => Err(from_dispatch(&error)),
    };
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    span.record("rpc.grpc.status_code", code as i64);
    endpoint.count_status(code as i32);
    if is_server_error(code) {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", code_name(code));
    }
    observe(Finished {
        method: endpoint.name(),
        code,
        elapsed: received.elapsed(),
        span: &span,
    });
    result
}

/// The part of the caller's timeout the server may use: the reply must still
/// reach a caller that is listening, so the server answers DEADLINE_EXCEEDED a
/// little before the caller gives up (a tenth of the timeout, at most 100 ms:
/// through a container's published port on a busy host, 20 ms was seen to
/// lose the race).
fn answer_within(timeout: Duration) -> Duration {
    timeout.saturating_sub((timeout / 10).min(Duration::from_millis(100)))
}

/// The `grpc-timeout` header, per the gRPC over HTTP/2 spec (at most 8 digits
/// and one unit letter). `None` when absent or malformed.
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// Adds the current span's trace context to every outgoing request.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceInterceptor;

impl tonic::service::Interceptor for TraceInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        switchyard_telemetry::propagation::inject_metadata(
            &tracing::Span::current(),
            request.metadata_mut(),
        );
        Ok(request)
    }
}

/// Health (always open: probes carry no token) and server reflection, both
/// `grpc.reflection.v1` and `v1alpha` (older clients such as Python's
/// `grpcio-reflection` speak only `v1alpha`). Reflection lists exactly the
/// services in `served` plus health and itself, not every service whose
/// schema the descriptor set happens to hold, and answers only calls that
/// `authorize` lets through (the api's bearer tokens; [`open_access`]
/// elsewhere).
pub fn base_routes<I>(
    health: tonic::service::Routes,
    descriptors: &[u8],
    served: &[&str],
    authorize: I,
) -> Result<tonic::service::Routes, GrpcError>
where
    I: tonic::service::Interceptor + Clone + Send + Sync + 'static,
{
    let builder = || {
        served.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(descriptors)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("grpc.health.v1.Health")
                .with_service_name("grpc.reflection.v1.ServerReflection")
                .with_service_name("grpc.reflection.v1alpha.ServerReflection"),
            |builder, name| builder.with_service_name(*name),
        )
    };
    let v1 = builder().build_v1().map_err(GrpcError::Reflection)?;
    let v1alpha = builder().build_v1alpha().map_err(GrpcError::Reflection)?;
    use tonic::service::interceptor::InterceptedService;
    Ok(health
        .add_service(InterceptedService::new(v1, authorize.clone()))
        .add_service(InterceptedService::new(v1alpha, authorize)))
}

/// The interceptor of a server without access control.
pub fn open_access(request: Request<()>) -> Result<Request<()>, Status> {
    Ok(request)
}

/// A gRPC server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// The listen address could not be bound.
    #[error("cannot listen for gRPC on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The reflection service could not be built from the descriptors.
    #[error("cannot build server reflection")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The server failed while serving.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// A TLS file could not be read.
    #[error("gRPC TLS: grpc.{key} `{path}` cannot be read")]
    TlsFile {
        /// The key naming it (`tls_cert_file`, `tls_key_file`, `tls_ca_file`).
        key: &'static str,
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An `https://` peer, but no CA to trust for it.
    #[error(
        "`{url}` is https but grpc.tls_ca_file is empty; accepted: the path of a PEM CA certificate"
    )]
    NoCa {
        /// The peer.
        url: String,
    },
    /// A client for `url` could not be set up (not a URI, or bad TLS material).
    #[error("cannot call `{url}`")]
    Client {
        /// The peer.
        url: String,
        /// tonic's error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Binds `address` (port 0 picks a free port). In a worker started by the
/// service launcher (`SWITCHYARD_WORKER` set) that did not inherit the
/// supervisor's socket for it (`switchyard_launcher::inherited_listener`),
/// the port is shared with the other workers (`SO_REUSEPORT`).
pub async fn bind(address: &str) -> Result<tokio::net::TcpListener, GrpcError> {
    let failed = |source: std::io::Error| GrpcError::Bind {
        address: address.to_string(),
        source,
    };
    let resolved = tokio::net::lookup_host(address)
        .await
        .map_err(failed)?
        .next()
        .ok_or_else(|| {
            failed(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no address",
            ))
        })?;
    let socket = if resolved.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(failed)?;
    socket.set_reuseaddr(true).map_err(failed)?;
    if std::env::var_os("SWITCHYARD_WORKER").is_some() {
        socket.set_reuseport(true).map_err(failed)?;
    }
    socket.bind(resolved).map_err(failed)?;
    socket.listen(1024).map_err(failed)
}

/// Serves `routes` on `listener` (over TLS when `tls` is set) until
/// `shutdown` is cancelled; then reports
/// NOT_SERVING, stops accepting calls and lets the calls in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    routes: tonic::service::Routes,
    tls: Option<tonic::transport::ServerTlsConfig>,
    limits: ConnectionLimits,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), GrpcError> {
    let incoming = connections::incoming(listener, limits.within_descriptor_limit());
    // Pings find peers that went away without closing (a dead host, a cut
    // network) and free their connections.
    let mut server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_keepalive(Some(Duration::from_secs(60)));
    if let Some(age) = limits.max_connection_age {
        // Only the age: tonic's `max_connection_age_grace` would replace the
        // GOAWAY with a close once age and grace have passed.
        server = server.max_connection_age(age);
    }
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    server
        .layer(tower::util::MapResponseLayer::new(
            status::size_limit_is_resource_exhausted as fn(_) -> _,
        ))
        .layer(tower::util::MapRequestLayer::new(
            status::remember_method as fn(_) -> _,
        ))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.cancelled().await;
            readiness.stop().await;
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_age_is_zero_for_never_or_at_least_a_second() {
        let aged = |ms| GrpcConfig {
            max_connection_age_ms: ms,
            ..GrpcConfig::default()
        };
        assert!(aged(0).problems().is_empty());
        assert_eq!(aged(0).connection_limits().max_connection_age, None);
        assert!(aged(1000).problems().is_empty());
        assert_eq!(
            aged(1000).connection_limits().max_connection_age,
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            aged(999).problems(),
            [(
                "max_connection_age_ms",
                "999 is out of range; accepted: 0 (never) or 1000 ms or more".to_string()
            )]
        );
    }

    #[test]
    fn grpc_timeout_header_is_parsed_per_spec() {
        let mut metadata = MetadataMap::new();
        for (text, expected) in [
            ("100m", Some(Duration::from_millis(100))),
            ("2S", Some(Duration::from_secs(2))),
            ("1H", Some(Duration::from_secs(3600))),
            ("5u", Some(Duration::from_micros(5))),
            ("123456789m", None),
            ("m", None),
            ("10x", None),
        ] {
            metadata.insert("grpc-timeout", text.parse().expect("ascii"));
            assert_eq!(grpc_timeout(&metadata), expected, "{text}");
        }
    }

    #[test]
    fn server_answers_before_the_caller_gives_up() {
        assert_eq!(
            answer_within(Duration::from_millis(100)),
            Duration::from_millis(90)
        );
        assert_eq!(
            answer_within(Duration::from_secs(10)),
            Duration::from_millis(9900)
        );
    }
}
