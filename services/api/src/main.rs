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
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use settings::ApiSettings;
use switchyard_config::ConfigFlags;
use switchyard_executor::{EndpointKind, EndpointSpec};
use switchyard_grpc::Readiness;
use switchyard_messaging::{RpcClient, RpcServer, Transport, heartbeat};
use switchyard_proto::metering::v1::metering_server::MeteringServer;
use switchyard_service::Running;
use tonic::{Request, Status};

const SERVICE: &str = "api";
const GRPC_SERVICE: &str = "switchyard.metering.v1.Metering";

/// The public metering API.
#[derive(Debug, Parser)]
#[command(name = "switchyard-api", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigFlags,
}

fn endpoints() -> Vec<EndpointSpec> {
    let mut specs = metering::endpoints();
    specs.push(EndpointSpec::new(heartbeat::METHOD, EndpointKind::Async));
    specs
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded =
        match switchyard_service::configure::<ApiSettings>(SERVICE, &cli.config, |_| endpoints()) {
            Ok(loaded) => loaded,
            Err(code) => return code,
        };
    switchyard_service::run(SERVICE, loaded.settings, serve)
}

/// Whether `presented` is one of `tokens`, in time that does not depend on
/// where a guess first differs: every token is compared, each in constant
/// time (only the lengths, which are not secret, decide early).
fn accepted(tokens: &[String], presented: &str) -> bool {
    use subtle::ConstantTimeEq;
    tokens
        .iter()
        .fold(subtle::Choice::from(0), |found, token| {
            found | token.as_bytes().ct_eq(presented.as_bytes())
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
    tokens: Vec<String>,
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

async fn serve(settings: ApiSettings, running: Running) -> anyhow::Result<()> {
    let Running {
        executor,
        identity,
        shutdown,
        ..
    } = running.clone();
    let transport = Transport::connect(&settings.amqp, SERVICE, &identity.instance_id).await?;
    // One run of this service's messaging: ends on shutdown, or when the
    // connection is lost for good and everything is rebuilt.
    let attempt = transport.attempt(&shutdown);
    let exchange = settings.amqp.exchange.clone();
    let interval = Duration::from_millis(settings.rollout.heartbeat_interval_ms);

    let rollout = rollout::Rollout::default();
    let heartbeats = RpcServer::builder(&exchange, heartbeat::TOPIC, &identity.instance_id)
        .method(executor.register(rollout.endpoint())?)
        .start(&transport, executor.config().capacity(), attempt.clone())
        .await?;
    if !settings.dashboard.listen.is_empty() {
        // A read-only page: when its port is taken the api still serves.
        match switchyard_grpc::bind(&settings.dashboard.listen).await {
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
                tokio::spawn(dashboard::serve(listener, page, attempt.clone()));
            }
            Err(switchyard_grpc::GrpcError::Bind { address, source }) => {
                tracing::error!(
                    "no rollout page: cannot listen on {address} (dashboard.listen): {source}"
                )
            }
            Err(error) => tracing::error!("no rollout page (dashboard.listen): {error}"),
        }
    }
    let rpc = RpcClient::new(&transport).await?;
    let backends = metering::Backends {
        rpc: rpc.clone(),
        exchange: exchange.clone(),
        collector: metering::collector_client(&settings.grpc, &settings.api.collector_url)
            .context("api.collector_url")?,
        alarm_timeout: Duration::from_millis(settings.api.alarm_call_timeout_ms),
        rollout,
        heartbeat_interval: interval,
        max_body_bytes: settings.amqp.max_body_bytes,
    };
    let api = metering::MeteringApi::register(&executor, &backends, settings.grpc.overload_wait())?;
    let (readiness, health) = Readiness::new(&[GRPC_SERVICE]).await;
    let server = MeteringServer::new(api)
        .max_decoding_message_size(settings.grpc.max_message_bytes)
        .max_encoding_message_size(settings.grpc.max_message_bytes);
    let routes = switchyard_grpc::base_routes(
        health,
        switchyard_proto::FILE_DESCRIPTOR_SET,
        &[GRPC_SERVICE],
        authenticate(settings.api.auth_tokens.clone()),
    )?
    .add_service(tonic::service::interceptor::InterceptedService::new(
        server,
        authenticate(settings.api.auth_tokens.clone()),
    ));
    let listener = switchyard_grpc::bind(&settings.grpc.listen).await?;
    tracing::info!(
        "gRPC on {}",
        listener.local_addr().context("reading the gRPC address")?
    );

    heartbeat::start(
        &transport,
        &exchange,
        SERVICE,
        &running,
        interval,
        attempt.clone(),
    )
    .await?;
    readiness.watch(
        "amqp",
        Duration::from_secs(1),
        attempt.clone(),
        transport.readiness_probe(),
    );
    let supervisor = running.supervisor.clone();
    readiness.on_ready(attempt.clone(), move || supervisor.ready());
    switchyard_grpc::serve(
        listener,
        routes,
        settings.grpc.server_tls()?,
        settings.grpc.connection_limits(),
        readiness,
        attempt.clone(),
    )
    .await?;
    heartbeats.stopped().await;
    transport
        .finish(&shutdown)
        .await
        .map_err(|lost| switchyard_service::Restart(lost.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{accepted, bearer_token};

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
            "0123456789abcdef".to_string(),
            "fedcba9876543210".to_string(),
        ];
        assert!(accepted(&tokens, "fedcba9876543210"));
        assert!(!accepted(&tokens, "fedcba987654321"));
        assert!(!accepted(&tokens, "0123456789abcdef "));
        assert!(!accepted(&tokens, ""));
        assert!(!accepted(&[], "0123456789abcdef"));
    }
}
