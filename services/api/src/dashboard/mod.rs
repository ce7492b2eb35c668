//! The rollout page: a read-only web page on its own listener
//! (`[dashboard] listen`, loopback by default) showing the rollout table
//! live, each service's timeline of phase changes, canary judgements and
//! rollbacks, per phase calls/s, p50/p99 and slow polls per call, and the
//! api's recent calls linked to the trace UI.
//!
//! | path | what |
//! |---|---|
//! | `/` | the page (`page.html`, `app.js`, `app.css`: all in the binary, no fetch elsewhere) |
//! | `/events` | server-sent events: one `state` event a second, the [`board::Snapshot`] as JSON |
//! | `/state` | the same snapshot once (for `curl` and scripts) |
//!
//! Bound anywhere but loopback, every path requires one of the api's bearer
//! tokens: in an `authorization: Bearer` header, or in the cookie set by
//! opening `/?token=…` once (browsers send no header to an `EventSource`).

pub mod board;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use switchyard_config::{OptionalListen, Secret};
use tokio_util::sync::CancellationToken;

use crate::rollout::Rollout;
pub use board::Board;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");
/// The cookie `/?token=…` sets.
const COOKIE: &str = "switchyard_dashboard";
/// How often `/events` sends the state.
const EVERY: Duration = Duration::from_secs(1);

/// `[dashboard]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// Where the page is served; empty serves none. Anywhere but loopback
    /// needs `api.auth_tokens`.
    pub listen: OptionalListen,
    /// A link to the trace UI for each recent call, `{trace_id}` replaced,
    /// e.g. Jaeger's `http://localhost:16686/trace/{trace_id}`; empty: no links.
    pub trace_url: String,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            listen: OptionalListen::loopback(8090),
            trace_url: String::new(),
        }
    }
}

impl DashboardConfig {
    /// Range problems, with keys relative to `[dashboard]`. `tokens` are the
    /// api's bearer tokens.
    pub fn problems(&self, tokens: &[Secret]) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if let Some(address) = self.listen.address()
            && !address.ip().is_loopback()
            && tokens.is_empty()
        {
            problems.push((
                "listen",
                format!(
                    "`{address}` is not loopback: set api.auth_tokens so the page requires a token, or listen on 127.0.0.1"
                ),
            ));
        }
        if !self.trace_url.is_empty()
            && !((self.trace_url.starts_with("http://") || self.trace_url.starts_with("https://"))
                && self.trace_url.contains("{trace_id}"))
        {
            problems.push((
                "trace_url",
                format!(
                    "`{}` is not a link template; accepted: http(s)://… containing {{trace_id}}, or empty",
                    self.trace_url
                ),
            ));
        }
        problems
    }
}

/// What the server needs.
#[derive(Debug, Clone)]
pub struct Dashboard {
    pub rollout: Rollout,
    pub heartbeat_interval: Duration,
    pub trace_url: String,
    /// Empty when the page is served on loopback: open to every local user.
    pub tokens: Vec<Secret>,
}

impl Dashboard {
    fn snapshot(&self) -> board::Snapshot {
        let table = self.rollout.table(self.heartbeat_interval);
        let rows = table.instances.iter().map(board::Row::from).collect();
        self.rollout
            .board()
            .snapshot(rows, &self.trace_url, now_ms())
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    switchyard_proto::time::unix_millis().max(0) as u64
}

/// Serves the page on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    dashboard: Dashboard,
    shutdown: CancellationToken,
) {
    let stop = shutdown.clone();
    switchyard_service::serve_http(
        listener,
        "dashboard",
        move |request| respond(&request, &dashboard, &stop),
        shutdown,
    )
    .await;
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Whether the request carries an accepted token; `Some(token)` when it came
/// in the query (`/?token=…`), to be turned into a cookie.
enum Access {
    Granted,
    FromQuery(String),
    Refused,
}

fn access<B>(request: &Request<B>, tokens: &[Secret]) -> Access {
    if tokens.is_empty() {
        return Access::Granted;
    }
    let headers = request.headers();
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::bearer_token);
    let from_cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .next();
    if let Some(token) = from_header.or(from_cookie)
        && crate::accepted(tokens, token)
    {
        return Access::Granted;
    }
    let from_query = request
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("token="));
    match from_query {
        Some(token) if crate::accepted(tokens, token) => Access::FromQuery(token.to_string()),
        _ => Access::Refused,
    }
}

fn respond<B>(
    request: &Request<B>,
    dashboard: &Dashboard,
    shutdown: &CancellationToken,
) -> Response<Body> {
    match access(request, &dashboard.tokens) {
        Access::Granted => {}
        Access::FromQuery(token) => {
            let mut response = full(StatusCode::SEE_OTHER, "text/plain", "");
            let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
            if let Ok(cookie) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            response
                .headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/"));
            return response;
        }
        Access::Refused => {
            return full(
                StatusCode::UNAUTHORIZED,
                "text/plain; charset=utf-8",
                "the rollout page needs one of the api's bearer tokens: open /?token=… once, \
                 or send authorization: Bearer …\n",
            );
        }
    }
    if request.method() != hyper::Method::GET {
        return full(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n");
    }
    match request.uri().path() {
        "/" => full(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        "/app.js" => full(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT),
        "/app.css" => full(StatusCode::OK, "text/css; charset=utf-8", STYLE),
        "/state" => match serde_json::to_vec(&dashboard.snapshot()) {
            Ok(json) => full(StatusCode::OK, "application/json", json),
            Err(error) => full(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{error}\n"),
            ),
        },
        "/events" => events(dashboard.clone(), shutdown.clone()),
        _ => full(StatusCode::NOT_FOUND, "text/plain", "try /\n"),
    }
}

/// `text/event-stream`: the snapshot now, then once every [`EVERY`], until
/// the client goes or the service stops.
fn events(dashboard: Dashboard, shutdown: CancellationToken) -> Response<Body> {
    let frames = futures_lite::stream::unfold(
        (dashboard, shutdown, true),
        |(dashboard, shutdown, first)| async move {
            if !first {
                tokio::select! {
                    _ = tokio::time::sleep(EVERY) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
            let json = serde_json::to_string(&dashboard.snapshot()).unwrap_or_default();
            let frame = Frame::data(Bytes::from(format!("event: state\ndata: {json}\n\n")));
            Some((Ok::<_, Infallible>(frame), (dashboard, shutdown, false)))
        },
    );
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn a_page_off_loopback_needs_a_token_and_loopback_does_not() {
        let open = DashboardConfig {
            listen: OptionalListen(Some(std::net::SocketAddr::from(([0, 0, 0, 0], 8090)))),
            ..DashboardConfig::default()
        };
        assert_eq!(open.problems(&[])[0].0, "listen");
        assert!(
            open.problems(&[Secret::new("a-token-of-sixteen-chars")])
                .is_empty()
        );
        assert!(DashboardConfig::default().problems(&[]).is_empty());
        let bad = DashboardConfig {
            trace_url: "jaeger".into(),
            ..open
        };
        let keys: Vec<&str> = bad.problems(&[]).iter().map(|p| p.0).collect();
        assert_eq!(keys, ["listen", "trace_url"]);
    }

    #[test]
    fn the_token_comes_from_the_header_the_cookie_or_once_from_the_query() {
        let tokens = vec![Secret::new("sixteen-chars-token")];
        let granted = |r: &Request<()>| matches!(access(r, &tokens), Access::Granted);
        assert!(granted(&request(
            "/",
            &[("authorization", "bearer sixteen-chars-token")]
        )));
        assert!(granted(&request(
            "/events",
            &[("cookie", "a=b; switchyard_dashboard=sixteen-chars-token")]
        )));
        assert!(matches!(
            access(&request("/?token=sixteen-chars-token", &[]), &tokens),
            Access::FromQuery(_)
        ));
        assert!(matches!(
            access(&request("/?token=wrong", &[]), &tokens),
            Access::Refused
        ));
        assert!(matches!(
            access(&request("/", &[]), &tokens),
            Access::Refused
        ));
        assert!(matches!(access(&request("/", &[]), &[]), Access::Granted));
    }
}
