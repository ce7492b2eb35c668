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

use anyhow::Context as _;
use settings::NotifierSettings;
use switchyard_app::{App, Grpc, Service};
use switchyard_executor::{EndpointKind, EndpointSpec};
use switchyard_messaging::Priority;
use switchyard_proto::catalogue;
use switchyard_storage::Database;

const NOTIFIER: Service<NotifierSettings> = Service {
    name: "notifier",
    binary: "switchyard-notifier",
    about: "Evaluates alarms and delivers their webhooks.",
    endpoints: |_| endpoints(),
};

fn endpoints() -> Vec<EndpointSpec> {
    let mut specs = vec![
        EndpointSpec::new(evaluate::ENDPOINT, EndpointKind::Async),
        EndpointSpec::new(webhook::ENDPOINT, EndpointKind::Blocking),
    ];
    specs.extend(
        catalogue::methods_of(catalogue::topic::ALARMS)
            .map(|m| EndpointSpec::new(m.name, EndpointKind::Blocking)),
    );
    specs
}

fn main() -> ExitCode {
    switchyard_app::main(NOTIFIER, serve)
}

async fn serve(settings: NotifierSettings, mut app: App) -> anyhow::Result<()> {
    let database = Database::open(&settings.storage, NOTIFIER.name, alarms::MIGRATIONS)
        .await
        .context("opening the alarm store")?;
    app.connect(&settings).await?;
    let notifier = app.notifier().await?;
    let runtime = tokio::runtime::Handle::current();

    let methods = alarms::Methods::new(&database, &runtime);
    let rpc = app
        .rpc_server(catalogue::topic::ALARMS)?
        .method(app.register(methods.create)?)
        .method(app.register(methods.get)?)
        .method(app.register(methods.list)?)
        .method(app.register(methods.delete)?)
        .method(app.register(methods.history)?);
    app.serve_rpc(rpc).await?;

    let client = evaluate::query_client(&settings.grpc, settings.notifier.collector_url.as_str())
        .context("notifier.collector_url")?;
    let evaluator = app
        .pool(catalogue::pool::ALARM_EVALUATOR)?
        .subscribe(catalogue::event::SAMPLE_RECORDED, &[Priority::Info])
        .coalesce_beyond(settings.notifier.evaluation_backlog);
    app.listen(
        evaluator,
        evaluate::endpoint(database.clone(), client, notifier),
    )
    .await?;
    let webhooks = app
        .pool(catalogue::pool::WEBHOOK_SENDER)?
        .subscribe(catalogue::event::ALARM_STATE_CHANGED, &[]);
    app.listen(webhooks, webhook::endpoint(&settings.notifier))
        .await?;

    // The notifier's API is AMQP; it serves gRPC for health (readiness:
    // broker connected, database answering) and reflection.
    app.probe("storage", database.readiness_probe());
    app.serve_grpc(&settings.grpc, Grpc::health_only()).await
}
