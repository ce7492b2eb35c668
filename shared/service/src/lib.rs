//! The skeleton every Switchyard binary shares, so that each service's
//! `main` is a few lines: parse the flags, load and check the configuration,
//! start telemetry and the executor, serve metrics, run the service until
//! SIGTERM or SIGINT, then drain.
//!
//! Exit statuses: 0 after a clean run or check, 2 for any configuration
//! problem (including an endpoint the configured phase cannot run), 1 for a
//! failure at run time.
#![deny(missing_docs)]

mod otlp_metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use switchyard_config::{ConfigFlags, Loaded, Loader, OptionalListen, Settings};
use switchyard_executor::{EndpointKind, EndpointSpec, Executor, Phase};
use switchyard_telemetry::Identity;
use tokio_util::sync::CancellationToken;

pub use switchyard_executor::ExecutorConfig;
pub use switchyard_launcher::{LauncherConfig, WORKER_VARIABLE, inherited_listener, is_worker};
pub use switchyard_rollout::control::{ROLE_VARIABLE, SUPERVISOR_VARIABLE};
pub use switchyard_rollout::{CanaryConfig, RolledBack, SupervisorLink};
pub use switchyard_telemetry::TelemetryConfig;
pub use switchyard_telemetry::exposition::serve_http;

/// Exit status for configuration problems (the usage status).
pub const EXIT_CONFIG: u8 = 2;

/// The `[metrics]` section: where the Prometheus text endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `IP:port` for `GET /metrics`; empty disables the endpoint (checked
    /// as it is read).
    pub listen: OptionalListen,
}

impl MetricsConfig {
    /// Range checks, relative to the section: none beyond the types'.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// What every service's configuration has, beside its own sections.
pub trait ServiceSettings: Settings {
    /// `[executor]`.
    fn executor(&self) -> &ExecutorConfig;
    /// `[executor]`, to change (the launcher checks its canary phase).
    fn executor_mut(&mut self) -> &mut ExecutorConfig;
    /// `[telemetry]`.
    fn telemetry(&self) -> &TelemetryConfig;
    /// `[metrics]`.
    fn metrics(&self) -> &MetricsConfig;
    /// `[launcher]`.
    fn launcher(&self) -> &LauncherConfig;
    /// `grpc.listen`, when the service serves gRPC: under the launcher, the
    /// supervisor binds it once for every worker.
    fn grpc_listen(&self) -> Option<std::net::SocketAddr> {
        None
    }
}

/// A section's range problems with full dotted keys (`grpc.listen`).
pub fn in_section(section: &str, problems: Vec<(&'static str, String)>) -> Vec<(String, String)> {
    problems
        .into_iter()
        .map(|(key, message)| (format!("{section}.{key}"), message))
        .collect()
}

/// Implements [`ServiceSettings`] for a settings struct with fields named
/// `executor`, `telemetry`, `metrics` and `launcher` (and `grpc`, whose
/// `listen` the launcher shares, with `service_settings!(Settings, grpc)`).
#[macro_export]
macro_rules! service_settings {
    ($settings:ty, grpc) => {
        $crate::service_settings!(@with $settings,
            fn grpc_listen(&self) -> ::std::option::Option<::std::net::SocketAddr> {
                ::std::option::Option::Some(self.grpc.listen.address())
            }
        );
    };
    ($settings:ty) => {
        $crate::service_settings!(@with $settings,);
    };
    (@with $settings:ty, $($grpc:item)?) => {
        impl $crate::ServiceSettings for $settings {
            $($grpc)?
            fn executor(&self) -> &$crate::ExecutorConfig {
                &self.executor
            }
            fn executor_mut(&mut self) -> &mut $crate::ExecutorConfig {
                &mut self.executor
            }
            fn telemetry(&self) -> &$crate::TelemetryConfig {
                &self.telemetry
            }
            fn metrics(&self) -> &$crate::MetricsConfig {
                &self.metrics
            }
            fn launcher(&self) -> &$crate::LauncherConfig {
                &self.launcher
            }
        }
    };
}

/// The range problems of the shared sections, with full dotted keys; a
/// service's [`Settings::problems`] starts from these.
pub fn shared_problems<C: ServiceSettings>(settings: &C) -> Vec<(String, String)> {
    let mut problems = in_section("executor", settings.executor().problems());
    problems.extend(in_section("telemetry", settings.telemetry().problems()));
    problems.extend(in_section("metrics", settings.metrics().problems()));
    problems.extend(in_section("launcher", settings.launcher().problems()));
    problems
}

/// Loads the configuration and acts on `--check-config` and `--print-config`.
/// `Err` carries the exit status to return: the process is done.
/// `endpoints` lists the service's endpoints for the loaded settings (a
/// service mid-migration may pick a body by phase).
pub fn configure<C: ServiceSettings + Clone>(
    service: &str,
    flags: &ConfigFlags,
    endpoints: impl Fn(&C) -> Vec<EndpointSpec>,
) -> Result<Loaded<C>, ExitCode> {
    let loaded = match Loader::new(service, flags.config.as_deref()).load::<C>() {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("{error}");
            return Err(ExitCode::from(EXIT_CONFIG));
        }
    };
    let listed = endpoints(&loaded.settings);
    // (key, where its value came from, the mismatch)
    let mut mismatches: Vec<(&str, String, String)> =
        Executor::check(loaded.settings.executor(), &listed)
            .into_iter()
            .map(|m| {
                (
                    "executor.phase",
                    loaded.source_of("executor.phase"),
                    m.to_string(),
                )
            })
            .collect();
    // The launcher's canary workers run another phase: it must fit too.
    if let Some(canary) = loaded.settings.launcher().canary.phase
        && loaded.settings.launcher().workers > 1
    {
        let mut in_canary = loaded.settings.clone();
        in_canary.executor_mut().phase = canary;
        mismatches.extend(
            Executor::check(in_canary.executor(), &endpoints(&in_canary))
                .into_iter()
                .map(|m| {
                    let key = "launcher.canary.phase";
                    (key, loaded.source_of(key), m.to_string())
                }),
        );
    }
    if !mismatches.is_empty() {
        eprintln!(
            "invalid configuration for {service} ({} problem{}):",
            mismatches.len(),
            if mismatches.len() == 1 { "" } else { "s" }
        );
        for (key, source, mismatch) in mismatches {
            eprintln!("  - {key} (from {source}): {mismatch}");
        }
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    if flags.print_config {
        match switchyard_config::redacted_toml(&loaded.settings) {
            Ok(text) => {
                print!("{text}");
                return Err(ExitCode::SUCCESS);
            }
            Err(error) => {
                eprintln!("cannot print the configuration: {error}");
                return Err(ExitCode::FAILURE);
            }
        }
    }
    if flags.check_config {
        println!(
            "configuration OK for {service}: phase {}, {} endpoint{}{}",
            loaded.settings.executor().phase,
            listed.len(),
            if listed.len() == 1 { "" } else { "s" },
            loaded
                .file
                .as_ref()
                .map(|f| format!(", file {}", f.display()))
                .unwrap_or_default()
        );
        let phase = loaded.settings.executor().phase;
        for spec in &listed {
            println!("  {}: {}", spec.name, runs(spec.kind, phase));
        }
        return Err(ExitCode::SUCCESS);
    }
    Ok(loaded)
}

/// How an endpoint written as `kind` runs in `phase`, in words.
fn runs(kind: EndpointKind, phase: Phase) -> String {
    let form = kind.form_in(phase);
    let how = match (form, phase) {
        (EndpointKind::Blocking, Phase::Async) => "offloaded to the blocking pool",
        (EndpointKind::Blocking, _) => "on a pool thread",
        (_, Phase::Bridged) => "driven on a pool thread",
        _ => "as a task",
    };
    match kind {
        EndpointKind::Both => format!("written both ways; the {form} form runs, {how}"),
        _ => format!("{kind}; runs {how}"),
    }
}

/// What a running service is handed.
#[derive(Debug, Clone)]
pub struct Running {
    /// The executor every endpoint registers with.
    pub executor: Executor,
    /// Who this process is (service, instance id, phase).
    pub identity: Identity,
    /// Cancelled on SIGTERM or SIGINT: stop taking work.
    pub shutdown: CancellationToken,
    /// The launcher's supervisor, when this process is one of its workers.
    pub supervisor: SupervisorLink,
}

/// What a service body returns to be run again, in the same process, with
/// the same executor: its connections were lost for good and it rebuilt
/// nothing yet (the messages it had not acknowledged went back to their
/// queues).
#[derive(Debug, thiserror::Error)]
#[error("restarting the service's connections")]
pub struct Restart(#[source] pub Box<dyn std::error::Error + Send + Sync>);

impl Restart {
    /// A restart because of `cause`.
    pub fn because(cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(cause))
    }
}

/// Runs a configured service: telemetry, executor, metrics, then `body`
/// until it returns or a signal arrives; then drains the executor. A body
/// that returns [`Restart`] is run again after a second.
pub fn run<C, F, Fut>(service: &str, settings: C, body: F) -> ExitCode
where
    C: ServiceSettings + Clone,
    F: Fn(C, Running) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let phase = settings.executor().phase;
    let identity = Identity::new(service, phase.as_str());
    if settings.launcher().workers > 1 && !is_worker() {
        // The supervisor logs; its workers do the work (and the tracing).
        let logs_only = TelemetryConfig {
            otlp_endpoint: String::new(),
            ..settings.telemetry().clone()
        };
        let telemetry = switchyard_telemetry::init(&identity, &logs_only).ok();
        let code = switchyard_launcher::supervise(switchyard_launcher::Start {
            service: service.to_string(),
            launcher: settings.launcher().clone(),
            phase,
            printed: switchyard_config::redacted_toml(&settings).unwrap_or_default(),
            metrics_listen: settings.metrics().listen.address(),
            grpc_listen: settings.grpc_listen(),
            grace: settings.executor().shutdown_grace(),
        });
        if let Some(telemetry) = telemetry {
            telemetry.shutdown();
        }
        return code;
    }
    let telemetry = match switchyard_telemetry::init(&identity, settings.telemetry()) {
        Ok(telemetry) => telemetry,
        Err(
            error @ (switchyard_telemetry::TelemetryError::Filter { .. }
            | switchyard_telemetry::TelemetryError::Environment(_)),
        ) => {
            eprintln!("invalid configuration for {service}: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(error) => {
            eprintln!("{service}: {error}");
            return ExitCode::FAILURE;
        }
    };
    if is_worker() {
        switchyard_launcher::follow_supervisor();
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(runtime_workers())
        .enable_all()
        .thread_name(format!("{service}-io"))
        .build()
        .context("building the Tokio runtime")
        .and_then(|runtime| {
            let metrics_push = telemetry.metrics_push().cloned();
            runtime.block_on(serve(service, settings, identity, metrics_push, body))
        });
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let failure = failure_text(&error);
            tracing::error!("{service} failed: {failure}");
            eprintln!("{service}: {failure}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

async fn serve<C, F, Fut>(
    service: &str,
    settings: C,
    identity: Identity,
    metrics_push: Option<switchyard_telemetry::MetricsPushTarget>,
    body: F,
) -> anyhow::Result<()>
where
    C: ServiceSettings + Clone,
    F: Fn(C, Running) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let executor_config = settings.executor().clone();
    let executor = Executor::new(service, executor_config.clone())
        .with_context(|| format!("starting the {} executor", executor_config.phase))?;
    let shutdown = CancellationToken::new();
    // Under a launcher the supervisor serves the workers' sum (see metrics.rs).
    if let (Some(address), false) = (settings.metrics().listen.address(), is_worker()) {
        let bound = serve_metrics(address, executor.clone(), shutdown.clone())
            .await
            .with_context(|| format!("binding the metrics endpoint on {address}"))?;
        tracing::info!("metrics on http://{bound}/metrics");
    }
    if let Some(target) = metrics_push {
        otlp_metrics::spawn(
            &target,
            identity.clone(),
            executor.clone(),
            shutdown.clone(),
        )
        .context("starting the OTLP metrics push")?;
    }
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let supervisor = SupervisorLink::connect(
        executor.clone(),
        shutdown.clone(),
        !settings.metrics().listen.is_off(),
    )
    .await;
    tracing::info!(
        phase = %executor_config.phase,
        instance = %identity.instance_id,
        "{service} starting in phase {} ({})",
        executor_config.phase.number(),
        executor_config.phase
    );
    let running = Running {
        executor: executor.clone(),
        identity,
        shutdown: shutdown.clone(),
        supervisor,
    };
    // After SIGTERM the body has the grace period to drain and return. A
    // body still starting (waiting for a broker that does not answer, a
    // database, a port) may not look at the signal at all: past the grace
    // period it is dropped, so a stop is always honoured in bounded time.
    let grace = executor_config.shutdown_grace();
    let stopped_waiting = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace + Duration::from_millis(500)).await;
    };
    tokio::pin!(stopped_waiting);
    // Once a run was lost (Restart), rebuilding may fail too — the broker or
    // the database still down — and is tried again, waiting longer each time
    // (1 s, doubling, at most 30 s): a service that ran keeps coming back.
    // Only the first start fails the process, as an operator wants for a
    // bad configuration or an unreachable dependency at deploy time.
    let mut rebuilding: Option<Duration> = None;
    let outcome = loop {
        let attempt = tokio::select! {
            outcome = body(settings.clone(), running.clone()) => outcome,
            () = &mut stopped_waiting => {
                tracing::warn!("{service} did not stop within the grace period after the signal; leaving start-up");
                break Ok(());
            }
        };
        let wait = match &attempt {
            Err(error) if shutdown.is_cancelled() => {
                tracing::debug!("{service} stopping: {error:#}");
                break attempt;
            }
            Err(error) if error.is::<Restart>() => {
                let wait = Duration::from_secs(1);
                tracing::warn!("{error:#}; again in {wait:?}");
                wait
            }
            Err(error) if rebuilding.is_some() => {
                let wait = rebuilding.unwrap_or_default();
                tracing::warn!("rebuilding {service} failed: {error:#}; again in {wait:?}");
                wait
            }
            _ => break attempt,
        };
        rebuilding = Some((wait * 2).min(Duration::from_secs(30)));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => break Ok(()),
        }
    };
    shutdown.cancel();
    let report = executor.shutdown(executor_config.shutdown_grace()).await;
    // The supervisor's `/metrics` keeps what this worker counted to the end.
    running.supervisor.last_stats(executor.snapshot()).await;
    if report.is_clean() {
        tracing::info!("{service} stopped; all in-flight work finished");
    } else {
        tracing::warn!(
            abandoned = report.abandoned.len(),
            "{service} stopped; {} request(s) abandoned after the grace period",
            report.abandoned.len()
        );
    }
    outcome
}

/// The service runtime's workers: one per CPU the process may use, and at
/// least two. In a container limited to one CPU Tokio would start one, and
/// then a single poll that does not yield (a library's task, or a body in
/// the async phase) stops every deadline, health check and call with it
/// until it returns; with two, the other worker goes on serving while the
/// executor's watchdog reports the stall.
fn runtime_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |cpus| cpus.get().max(2))
}

/// Serves `GET /metrics` on `address` until `shutdown`: the executor's
/// snapshot and the process's own series; returns the bound address.
pub async fn serve_metrics(
    address: SocketAddr,
    executor: Executor,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    use switchyard_executor::stats::SnapshotCollector;
    use switchyard_telemetry::exposition::{ProcessCollector, openmetrics, serve_text};
    let process = ProcessCollector::new(&executor.snapshot().name);
    serve_text(
        address,
        move || {
            openmetrics([
                Box::new(SnapshotCollector(vec![executor.snapshot()])) as _,
                Box::new(process.clone()) as _,
            ])
        },
        shutdown,
    )
    .await
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!("cannot listen for SIGTERM: {error}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("SIGTERM received; draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; draining"),
        _ = shutdown.cancelled() => {}
    }
    shutdown.cancel();
}

/// A failed run's error with its whole chain, for the log and for stderr
/// alike. Switchyard's own errors show secrets redacted by their types;
/// another crate's error may quote a URL it was given, so the text is
/// redacted once more here, the last line of defence.
fn failure_text(error: &anyhow::Error) -> String {
    switchyard_config::redact_text(&format!("{error:#}"))
}

#[cfg(test)]
mod tests {
    use super::failure_text;

    #[test]
    fn a_failure_is_logged_and_printed_without_a_password_another_crate_quoted() {
        let error = anyhow::anyhow!("cannot reach postgres://switchyard:hunter2@db:5432/metering")
            .context("opening the sample store");
        let text = failure_text(&error);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.starts_with("opening the sample store: cannot reach postgres://switchyard:"),
            "the whole chain: {text}"
        );
    }
}
