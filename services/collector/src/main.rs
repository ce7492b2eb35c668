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

use anyhow::Context as _;
use settings::CollectorSettings;
use switchyard_app::{App, Grpc, Service};
use switchyard_proto::catalogue;
use switchyard_proto::collector::v1::sample_query_server::SampleQueryServer;
use switchyard_storage::Database;

const GRPC_SERVICE: &str = "switchyard.collector.v1.SampleQuery";

const COLLECTOR: Service<CollectorSettings> = Service {
    name: "collector",
    binary: "switchyard-collector",
    about: "Stores metering samples and answers statistics queries.",
    endpoints: |_| samples::endpoints(),
};

fn main() -> ExitCode {
    switchyard_app::main(COLLECTOR, serve)
}

async fn serve(settings: CollectorSettings, mut app: App) -> anyhow::Result<()> {
    let database = Database::open(&settings.storage, COLLECTOR.name, samples::MIGRATIONS)
        .await
        .context("opening the sample store")?;
    app.connect(&settings).await?;
    let notifier = app.notifier().await?;
    let record = app.register(samples::record_samples(
        database.clone(),
        notifier,
        tokio::runtime::Handle::current(),
    ))?;
    let rpc = app.rpc_server(catalogue::topic::COLLECTOR)?.method(record);
    app.serve_rpc(rpc).await?;
    let query = query::Query::register(&app, &database, settings.grpc.overload_wait())?;
    app.probe("storage", database.readiness_probe());
    let max = settings.grpc.max_message_bytes;
    let grpc = Grpc::serving(&[GRPC_SERVICE], move |routes| {
        routes.add_service(
            SampleQueryServer::new(query)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
    });
    app.serve_grpc(&settings.grpc, grpc).await
}
