//! The Prometheus text endpoint: `GET /metrics` renders the executor's
//! snapshot; under a launcher, the supervisor serves the sum of its
//! workers' snapshots instead (workers answering on a shared port in turn
//! would make every counter jump back and forth between them, and every
//! `rate()` wrong).
//!
//! Why Prometheus text rather than OpenTelemetry metrics over OTLP: the
//! executor already keeps exact counters and histograms for its snapshot API,
//! and rendering that same snapshot means one set of numbers with no second
//! aggregation; it needs no collector (Jaeger, our trace backend, takes no
//! metrics); and `curl` can read it during a migration. Any OpenTelemetry
//! Collector can scrape it with its Prometheus receiver.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use switchyard_executor::Executor;
use tokio_util::sync::CancellationToken;

/// Serves `GET /metrics` on `address` until `shutdown`; returns the bound address.
pub async fn serve_metrics(
    address: SocketAddr,
    executor: Executor,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    serve_text(
        address,
        move || executor.snapshot().render_prometheus(),
        shutdown,
    )
    .await
}

/// Serves `GET /metrics` with what `render` returns on each scrape.
pub(crate) async fn serve_text<R>(
    address: SocketAddr,
    render: R,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr>
where
    R: Fn() -> String + Clone + Send + Sync + 'static,
{
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    let listener = socket.listen(1024)?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(connection) => connection,
                    Err(error) => {
                        tracing::warn!("metrics endpoint: accept failed: {error}");
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let render = render.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let render = render.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(&request, &render)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

fn respond<B>(request: &Request<B>, render: &impl Fn() -> String) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method().as_str(), request.uri().path()) {
        ("GET", "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render(),
        ),
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
