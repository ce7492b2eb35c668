//! `switchyard-collector`: stores metering samples.
//!
//! | endpoint | transport | kind |
//! |---|---|---|
//! | `record_samples` | AMQP cast on topic `collector` | both |
//! | `SampleQuery/ListMeters` | gRPC | both |
//! | `SampleQuery/GetStatistics` | gRPC (one meter, or several at once) | both |
//!
//! Mid-migration: every endpoint is written both ways, so the collector
//! runs in every phase, blocking bodies in `threaded`, async ones elsewhere
//! (nothing offloaded, `strict` accepted). Pinned to `threaded` in
//! `deploy/config/collector.toml`.

mod query;
mod samples;
mod settings;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use settings::CollectorSettings;
use switchyard_config::ConfigFlags;
use switchyard_grpc::Readiness;
use switchyard_messaging::{Notifier, RpcServer, Transport, heartbeat};
use switchyard_proto::catalogue;
use switchyard_proto::collector::v1::sample_query_server::SampleQueryServer;
use switchyard_service::Running;
use switchyard_storage::Database;

const SERVICE: &str = "collector";
const GRPC_SERVICE: &str = "switchyard.collector.v1.SampleQuery";

/// Stores metering samples and answers statistics queries.
#[derive(Debug, Parser)]
#[command(name = "switchyard-collector", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigFlags,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded =
        match switchyard_service::configure::<CollectorSettings>(SERVICE, &cli.config, |_| {
            samples::endpoints()
        }) {
            Ok(loaded) => loaded,
            Err(code) => return code,
        };
    switchyard_service::run(SERVICE, loaded.settings, serve)
}

async fn serve(settings: CollectorSettings, running: Running) -> anyhow::Result<()> {
    let Running {
        executor,
        identity,
        shutdown,
        ..
    } = running.clone();
    let database = Database::open(&settings.storage, SERVICE, samples::MIGRATIONS)
        .await
        .context("opening the sample store")?;
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

    let record = executor.register(samples::record_samples(
        database.clone(),
        notifier,
        tokio::runtime::Handle::current(),
    ))?;
    let rpc = RpcServer::builder(
        &exchange,
        catalogue::topic::COLLECTOR,
        &identity.instance_id,
    )
    .method(record)
    .start(&transport, executor.config().capacity(), attempt.clone())
    .await?;

    let query = query::Query::register(&executor, &database, settings.grpc.overload_wait())?;
    let (readiness, health) = Readiness::new(&[GRPC_SERVICE]).await;
    let routes = switchyard_grpc::base_routes(
        health,
        switchyard_proto::FILE_DESCRIPTOR_SET,
        &[GRPC_SERVICE],
        switchyard_grpc::open_access,
    )?
    .add_service(
        SampleQueryServer::new(query)
            .max_decoding_message_size(settings.grpc.max_message_bytes)
            .max_encoding_message_size(settings.grpc.max_message_bytes),
    );
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
        Duration::from_millis(settings.rollout.heartbeat_interval_ms),
        attempt.clone(),
    )
    .await?;
    let every = Duration::from_secs(1);
    readiness.watch("amqp", every, attempt.clone(), transport.readiness_probe());
    readiness.watch(
        "storage",
        every,
        attempt.clone(),
        database.readiness_probe(),
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
    rpc.stopped().await;
    transport
        .finish(&shutdown)
        .await
        .map_err(|lost| switchyard_service::Restart(lost.to_string()))?;
    Ok(())
}
