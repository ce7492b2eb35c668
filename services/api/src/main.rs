//! `switchyard-api`: the public gRPC API of the metering pipeline.
//!
//! | endpoint | transport | kind |
//! |---|---|---|
//! | `Metering/*` (9 methods) | gRPC | async |
//! | `heartbeat` | AMQP fanout on topic `rollout` | async |
//!
//! Fully ported: runs in `bridged` and `async` (not `threaded`). Pinned to
//! `async` in `deploy/config/api.toml`.

mod dashboard;
mod metering;
mod rollout;
mod settings;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use settings::ApiSettings;
use switchyard_app::{App, Grpc, Service};
use switchyard_config::Secret;
use switchyard_executor::{EndpointKind, EndpointSpec};
use switchyard_messaging::RpcClient;
use switchyard_proto::metering::v1::metering_server::MeteringServer;
use switchyard_rollout::heartbeat;
use tonic::{Request, Status};

const GRPC_SERVICE: &str = "switchyard.metering.v1.Metering";

const API: Service<ApiSettings> = Service {
    name: "api",
    binary: "switchyard-api",
    about: "The public metering API.",
    endpoints: |_| endpoints(),
};

fn endpoints() -> Vec<EndpointSpec> {
    let mut specs = metering::endpoints();
    specs.push(EndpointSpec::new(heartbeat::METHOD, EndpointKind::Async));
    specs
}

fn main() -> ExitCode {
    switchyard_app::main(API, serve)
}

/// Whether `presented` is one of `tokens`, in time that does not depend on
/// where a guess first differs: every token is compared, each in constant
/// time (only the lengths, which are not secret, decide early).
fn accepted(tokens: &[Secret], presented: &str) -> bool {
    use subtle::ConstantTimeEq;
    tokens
        .iter()
        .fold(subtle::Choice::from(0), |found, token| {
            found | token.expose().as_bytes().ct_eq(presented.as_bytes())
        })
        .into()
}

/// The token of an `authorization` value of the Bearer scheme. The scheme
/// name is case-insensitive (RFC 9110 §11.1), one or more spaces follow it
/// (RFC 9110 §11.4, RFC 6750 §2.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// Refuses calls without one of the configured bearer tokens.
fn authenticate(
    tokens: Vec<Secret>,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        if tokens.is_empty() {
            return Ok(request);
        }
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_token);
        match presented {
            Some(token) if accepted(&tokens, token) => Ok(request),
            Some(_) => Err(Status::unauthenticated("the bearer token is not accepted")),
            None => Err(Status::unauthenticated(
                "a bearer token is required (authorization: Bearer …)",
            )),
        }
    }
}

async fn serve(settings: ApiSettings, mut app: App) -> anyhow::Result<()> {
    let messaging = app.connect(&settings).await?;
    let interval = Duration::from_millis(settings.rollout.heartbeat_interval_ms);

    // The table and the judge's windows and verdicts outlive a rebuild
    // after a lost broker: a failed verdict must not clear itself by one.
    let rollout = app.kept(|| rollout::Rollout::new(&settings.fleet));
    let notifier = app.notifier().await?;
    let heartbeats = app
        .rpc_server(heartbeat::TOPIC)?
        .method(app.register(rollout.endpoint(Some(notifier)))?);
    app.serve_rpc(heartbeats).await?;
    // The page, like the table it shows, outlives messaging rebuilds: bound
    // by the first run, served until the process stops.
    let page = app.kept(|| PageServed(Arc::new(AtomicBool::new(false))));
    if !page.0.swap(true, Ordering::SeqCst) {
        serve_page(
            &settings,
            &rollout,
            interval,
            app.running().shutdown.clone(),
        )
        .await?;
    }
    let rpc = app
        .starting("the RPC client", RpcClient::new(&messaging.transport))
        .await?;
    let backends = metering::Backends {
        rpc,
        exchange: messaging.exchange.clone(),
        collector: metering::collector_client(&settings.grpc, settings.api.collector_url.as_str())
            .context("api.collector_url")?,
        alarm_timeout: Duration::from_millis(settings.api.alarm_call_timeout_ms),
        rollout,
        heartbeat_interval: interval,
        max_body_bytes: settings.amqp.max_body_bytes,
    };
    let api = metering::MeteringApi::register(&app, &backends, settings.grpc.overload_wait())?;
    let server = MeteringServer::new(api)
        .max_decoding_message_size(settings.grpc.max_message_bytes)
        .max_encoding_message_size(settings.grpc.max_message_bytes);
    let tokens = settings.api.auth_tokens.clone();
    let grpc = Grpc::serving(&[GRPC_SERVICE], move |routes| {
        routes.add_service(tonic::service::interceptor::InterceptedService::new(
            server,
            authenticate(tokens),
        ))
    })
    .with_access(authenticate(settings.api.auth_tokens.clone()));
    app.serve_grpc(&settings.grpc, grpc).await
}

/// Whether this process serves its rollout page already (kept across runs).
#[derive(Clone)]
struct PageServed(Arc<AtomicBool>);

/// Serves the rollout page on `dashboard.listen` until `shutdown`, when set.
async fn serve_page(
    settings: &ApiSettings,
    rollout: &rollout::Rollout,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let Some(listen) = settings.dashboard.listen.address() else {
        return Ok(());
    };
    // A read-only page: when its port is taken the api still serves.
    match switchyard_grpc::bind(&listen.to_string()).await {
        Ok(listener) => {
            let address = listener
                .local_addr()
                .context("reading the page's address")?;
            tracing::info!("rollout page on http://{address}/");
            let loopback = address.ip().is_loopback();
            let page = dashboard::Dashboard {
                rollout: rollout.clone(),
                heartbeat_interval: interval,
                trace_url: settings.dashboard.trace_url.clone(),
                tokens: if loopback {
                    Vec::new()
                } else {
                    settings.api.auth_tokens.clone()
                },
            };
            tokio::spawn(dashboard::serve(listener, page, shutdown));
        }
        Err(switchyard_grpc::GrpcError::Bind { address, source }) => {
            tracing::error!(
                "no rollout page: cannot listen on {address} (dashboard.listen): {source}"
            )
        }
        Err(error) => tracing::error!("no rollout page (dashboard.listen): {error}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Secret, accepted, bearer_token};

    #[test]
    fn the_bearer_scheme_name_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn only_a_configured_token_is_accepted() {
        let tokens = vec![
            Secret::new("0123456789abcdef"),
            Secret::new("fedcba9876543210"),
        ];
        assert!(accepted(&tokens, "fedcba9876543210"));
        assert!(!accepted(&tokens, "fedcba987654321"));
        assert!(!accepted(&tokens, "0123456789abcdef "));
        assert!(!accepted(&tokens, ""));
        assert!(!accepted(&[], "0123456789abcdef"));
    }
}
