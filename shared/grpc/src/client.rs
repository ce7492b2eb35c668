//! The client side of a gRPC call, by the OpenTelemetry RPC conventions: a
//! CLIENT span per call (`package.Service/Method`, `rpc.*`, `server.*`,
//! `rpc.grpc.status_code`, `error.type` and Error status on failure), whose
//! context is what the request carries (so the server's span is its child),
//! and the caller's remaining deadline sent as `grpc-timeout` ([`deadline`]).
//!
//! [`Traced`] wraps a channel: every call made through it is traced,
//! whatever client is generated on top.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame};
use tonic::Request;
use tower::Service;
use tracing::{Instrument as _, Span, field};

/// Sends `remaining` (the caller's own deadline, as left) on with the
/// request as `grpc-timeout`, so the server stops when its answer can no
/// longer be used. `None` leaves the request without a deadline.
pub fn deadline<T>(mut request: Request<T>, remaining: Option<Duration>) -> Request<T> {
    if let Some(remaining) = remaining {
        request.set_timeout(remaining);
    }
    request
}

/// A channel whose every call makes a CLIENT span.
#[derive(Debug, Clone)]
pub struct Traced<S> {
    inner: S,
    server: Arc<Server>,
}

#[derive(Debug)]
struct Server {
    address: String,
    port: Option<u16>,
}

impl<S> Traced<S> {
    /// Traces the calls over `inner` to the server at `url` (its host and
    /// port become `server.address` and `server.port`).
    pub fn new(inner: S, url: &str) -> Self {
        let uri: Option<http::Uri> = url.parse().ok();
        let server = Server {
            address: uri
                .as_ref()
                .and_then(|u| u.host())
                .unwrap_or(url)
                .to_string(),
            port: uri.as_ref().and_then(|u| u.port_u16()),
        };
        Self {
            inner,
            server: Arc::new(server),
        }
    }
}

impl<S, B> Service<http::Request<tonic::body::Body>> for Traced<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: std::error::Error + Send + 'static,
{
    type Response = http::Response<TracedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let path = request.uri().path();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("", path));
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            server.address = %self.server.address,
            server.port = self.server.port.map(i64::from),
            rpc.grpc.status_code = field::Empty,
            otel.status_code = field::Empty,
            error.type = field::Empty,
        );
        // The server's span is a child of this one, not of the caller's.
        for (key, value) in switchyard_telemetry::propagation::inject(&span) {
            if let (Ok(key), Ok(value)) = (
                http::HeaderName::from_bytes(key.as_bytes()),
                http::HeaderValue::from_str(&value),
            ) {
                request.headers_mut().insert(key, value);
            }
        }
        let call = self.inner.call(request).instrument(span.clone());
        Box::pin(async move {
            match call.await {
                Ok(response) => {
                    // A trailers-only answer (most errors) has its status in
                    // the headers; otherwise it comes in the trailers.
                    if let Some(code) = status_in(response.headers()) {
                        record(&span, code);
                    }
                    Ok(response.map(|body| TracedBody { inner: body, span }))
                }
                Err(error) => {
                    record(&span, transport_failure(&error) as i32);
                    Err(error)
                }
            }
        })
    }
}

/// The status tonic gives the caller for a call that failed in the
/// transport: CANCELLED when the client's own timeout expired, else
/// UNAVAILABLE (tonic's `Status::from_error`).
fn transport_failure(error: &(dyn std::error::Error + 'static)) -> tonic::Code {
    if caller_deadline_passed(error) {
        tonic::Code::Cancelled
    } else {
        tonic::Code::Unavailable
    }
}

/// Whether `error` (or an error in its source chain) is tonic's
/// `TimeoutExpired`: the caller's own deadline passed before an answer
/// came. tonic reports it as CANCELLED; gRPC calls it DEADLINE_EXCEEDED.
pub fn caller_deadline_passed(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}

fn status_in(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn record(span: &Span, code: i32) {
    span.record("rpc.grpc.status_code", i64::from(code));
    let code = tonic::Code::from_i32(code);
    // For a client every non-OK status is an error (the RPC conventions'
    // rule for CLIENT spans; servers mark only their own failures).
    if code != tonic::Code::Ok {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", crate::code_name(code));
    }
}

/// A response body that ends the call's span when the trailers (or the end
/// of the stream) arrive, recording the status they carry.
#[derive(Debug)]
pub struct TracedBody<B> {
    inner: B,
    span: Span,
}

impl<B: Body + Unpin> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(trailers) = frame.trailers_ref()
            && let Some(code) = status_in(trailers)
        {
            record(&self.span, code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
