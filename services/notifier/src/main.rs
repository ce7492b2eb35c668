//! `switchyard-notifier`: evaluates threshold alarms and sends webhooks.
//!
//! | endpoint | transport | kind |
//! |---|---|---|
//! | `evaluate_alarms` | notification `sample.recorded`, pool `alarm-evaluator` | async |
//! | `deliver_webhook` | notification `alarm.state_changed`, pool `webhook-sender` | blocking |
//! | `create_alarm`, `get_alarm`, `list_alarms`, `delete_alarm`, `get_alarm_history` | AMQP RPC, topic `alarms` | blocking |
//!
//! Mid-migration: runs in `bridged` and in non-strict `async`, not in
//! `threaded` (evaluation is async). Pinned to `bridged` in `deploy/config/notifier.toml`.

mod alarms;
mod evaluate;
mod settings;
mod webhook;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use settings::NotifierSettings;
use switchyard_config::ConfigFlags;
use switchyard_executor::{EndpointKind, EndpointSpec};
use switchyard_grpc::Readiness;
use switchyard_messaging::{
    NotificationListener, Notifier, Priority, RpcServer, Transport, heartbeat,
};
use switchyard_proto::catalogue;
use switchyard_service::Running;
use switchyard_storage::Database;

const SERVICE: &str = "notifier";

/// Evaluates alarms and delivers their webhooks.
#[derive(Debug, Parser)]
#[command(name = "switchyard-notifier", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigFlags,
}

fn endpoints() -> Vec<EndpointSpec> {
    let mut specs = vec![
        EndpointSpec::new("evaluate_alarms", EndpointKind::Async),
        EndpointSpec::new("deliver_webhook", EndpointKind::Blocking),
    ];
    specs.extend(
        catalogue::methods_of(catalogue::topic::ALARMS)
            .map(|m| EndpointSpec::new(m.name, EndpointKind::Blocking)),
    );
    specs
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded =
        match switchyard_service::configure::<NotifierSettings>(SERVICE, &cli.config, |_| {
            endpoints()
        }) {
            Ok(loaded) => loaded,
            Err(code) => return code,
        };
    switchyard_service::run(SERVICE, loaded.settings, serve)
}

async fn serve(settings: NotifierSettings, running: Running) -> anyhow::Result<()> {
    let Running {
        executor,
        identity,
        shutdown,
        ..
    } = running.clone();
    let database = Database::open(&settings.storage, SERVICE, alarms::MIGRATIONS)
        .await
        .context("opening the alarm store")?;
    let transport = Transport::connect(&settings.amqp, SERVICE, &identity.instance_id).await?;
    // One run of this service's messaging: ends on shutdown, or when the
    // connection is lost for good and everything is rebuilt.
    let attempt = transport.attempt(&shutdown);
    let exchange = settings.amqp.exchange.clone();
    let notifier = Notifier::new(
        &transport,
        &exchange,
        &format!("{SERVICE}@{}", identity.instance_id),
    )
    .await?;
    let runtime = tokio::runtime::Handle::current();

    let methods = alarms::Methods::new(&database, &runtime);
    let rpc = RpcServer::builder(&exchange, catalogue::topic::ALARMS, &identity.instance_id)
        .method(executor.register(methods.create)?)
        .method(executor.register(methods.get)?)
        .method(executor.register(methods.list)?)
        .method(executor.register(methods.delete)?)
        .method(executor.register(methods.history)?)
        .start(&transport, executor.config().capacity(), attempt.clone())
        .await?;

    let client = evaluate::query_client(&settings.grpc, &settings.notifier.collector_url)
        .context("notifier.collector_url")?;
    let evaluator = NotificationListener::builder(&exchange, "alarm-evaluator")
        .subscribe(catalogue::event::SAMPLE_RECORDED, &[Priority::Info])
        .coalesce_beyond(settings.notifier.evaluation_backlog)
        .start(
            &transport,
            executor.register(evaluate::endpoint(database.clone(), client, notifier))?,
            attempt.clone(),
        )
        .await?;
    let webhooks = NotificationListener::builder(&exchange, "webhook-sender")
        .subscribe(catalogue::event::ALARM_STATE_CHANGED, &[])
        .start(
            &transport,
            executor.register(webhook::endpoint(&settings.notifier))?,
            attempt.clone(),
        )
        .await?;

    heartbeat::start(
        &transport,
        &exchange,
        SERVICE,
        &running,
        Duration::from_millis(settings.rollout.heartbeat_interval_ms),
        attempt.clone(),
    )
    .await?;
    // The notifier's API is AMQP; it serves gRPC for health (readiness:
    // broker connected, database answering) and reflection.
    let (readiness, health) = Readiness::new(&[]).await;
    let routes = switchyard_grpc::base_routes(
        health,
        switchyard_proto::FILE_DESCRIPTOR_SET,
        &[],
        switchyard_grpc::open_access,
    )?;
    let listener = switchyard_grpc::bind(&settings.grpc.listen).await?;
    tracing::info!(
        "health on {}",
        listener.local_addr().context("reading the gRPC address")?
    );
    let every = Duration::from_secs(1);
    readiness.watch("amqp", every, attempt.clone(), transport.readiness_probe());
    readiness.watch(
        "storage",
        every,
        attempt.clone(),
        database.readiness_probe(),
    );
    tracing::info!("notifier ready");
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
    rpc.stopped().await;
    evaluator.stopped().await;
    webhooks.stopped().await;
    transport
        .finish(&shutdown)
        .await
        .map_err(|lost| switchyard_service::Restart(lost.to_string()))?;
    Ok(())
}
