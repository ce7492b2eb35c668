//! `switchyard-echo`: serves `switchyard.echo.v1.Echo` in its configured phase.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use switchyard_config::ConfigFlags;
use switchyard_echo::{EchoService, EchoSettings, GRPC_SERVICE, SERVICE};
use switchyard_grpc::Readiness;
use switchyard_messaging::{Transport, heartbeat};
use switchyard_service::Running;

/// Echo: answers every request with its own text, the phase and the thread.
#[derive(Debug, Parser)]
#[command(name = "switchyard-echo", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigFlags,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match switchyard_service::configure::<EchoSettings>(SERVICE, &cli.config, |s| {
        switchyard_echo::endpoints(s.executor.phase)
    }) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    switchyard_service::run(SERVICE, loaded.settings, serve)
}

async fn serve(settings: EchoSettings, running: Running) -> anyhow::Result<()> {
    // With `echo.rollout`, echo joins the fleet's rollout over AMQP.
    let transport = match settings.echo.rollout {
        true => {
            Some(Transport::connect(&settings.amqp, SERVICE, &running.identity.instance_id).await?)
        }
        false => None,
    };
    let attempt = match &transport {
        Some(transport) => transport.attempt(&running.shutdown),
        None => running.shutdown.clone(),
    };
    if let Some(transport) = &transport {
        heartbeat::start(
            transport,
            &settings.amqp.exchange,
            SERVICE,
            &running,
            Duration::from_millis(settings.rollout.heartbeat_interval_ms),
            attempt.clone(),
        )
        .await?;
    }
    let echo = EchoService::register(&running.executor, &settings.grpc, &settings.echo)?;
    let (readiness, health) = Readiness::new(&[GRPC_SERVICE]).await;
    let routes = switchyard_grpc::base_routes(
        health,
        switchyard_proto::FILE_DESCRIPTOR_SET,
        &[GRPC_SERVICE],
        switchyard_grpc::open_access,
    )?
    .add_service(echo.into_server(settings.grpc.max_message_bytes));
    let listener = switchyard_grpc::bind(&settings.grpc.listen).await?;
    let address = listener.local_addr().context("reading the gRPC address")?;
    tracing::info!("gRPC on {address}");
    let supervisor = running.supervisor.clone();
    readiness.on_ready(attempt.clone(), move || supervisor.ready());
    switchyard_grpc::serve(
        listener,
        routes,
        settings.grpc.server_tls()?,
        settings.grpc.connection_limits(),
        readiness,
        attempt,
    )
    .await?;
    if let Some(transport) = transport {
        transport
            .finish(&running.shutdown)
            .await
            .map_err(|lost| switchyard_service::Restart(lost.to_string()))?;
    }
    Ok(())
}
