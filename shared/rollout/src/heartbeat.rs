//! Rollout heartbeats: every instance says, every few seconds on a fanout,
//! who it is, which phase it runs and how it is doing. The api aggregates
//! them into the rollout table.
//!
//! Under the service launcher an instance (a worker) also carries its
//! launcher's side of the rollout: its role (`main` or `canary`) and the
//! launcher's rollout state in every heartbeat, promote requests from
//! `switchyard rollout promote` (fanout on `rollout-control.<service>`)
//! passed to the supervisor, and the supervisor's rollbacks published as
//! `rollout.rolled_back` notifications.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchyard_executor::{Endpoint, EndpointKind, Executor, Phase};
use switchyard_proto::catalogue;
use switchyard_proto::messaging::v1::{Heartbeat, PromoteCanary, RolledBack};
use switchyard_proto::metering::v1::InstanceStatus;
use tokio_util::sync::CancellationToken;

use switchyard_messaging::{
    CallError, EndpointError, MessagingError, Notifier, Priority, RpcClient, RpcServer, Target,
    Transport,
};

use crate::canary;
use crate::control::SupervisorLink;

/// The running instance a heartbeat speaks for.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Its service.
    pub service: String,
    /// Its instance id (the same in its traces and logs).
    pub instance_id: String,
    /// Its executor, whose totals the heartbeat carries.
    pub executor: Executor,
    /// Its launcher's supervisor (does nothing without one).
    pub supervisor: SupervisorLink,
    /// Cancelled when the process itself stops, not only an attempt: the
    /// last heartbeat then says goodbye.
    pub shutdown: CancellationToken,
}

/// The topic heartbeats fan out on.
pub const TOPIC: &str = catalogue::topic::ROLLOUT;
/// The method heartbeats call.
pub const METHOD: &str = catalogue::method::HEARTBEAT;
/// The notification a launcher's rollback is published as.
pub const ROLLED_BACK: &str = catalogue::event::ROLLED_BACK;
/// The method promote requests call, on [`control_topic`].
pub const PROMOTE: &str = catalogue::method::PROMOTE;

/// The topic a service's workers take rollout commands on.
pub fn control_topic(service: &str) -> String {
    catalogue::topic::rollout_control(service)
}

/// The `[rollout]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutConfig {
    /// How often this instance publishes its heartbeat; an instance silent
    /// for three intervals is shown as down.
    pub heartbeat_interval_ms: u64,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 2000,
        }
    }
}

impl RolloutConfig {
    /// Range checks, relative to the section: at most ten heartbeats a
    /// second, at least one every minute (the table shows an instance silent
    /// for three intervals as down).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        switchyard_config::check::within(self.heartbeat_interval_ms, 100, 60_000, "ms")
            .map(|problem| ("heartbeat_interval_ms", problem))
            .into_iter()
            .collect()
    }
}

/// This instance's status now.
pub fn status(
    service: &str,
    instance_id: &str,
    executor: &Executor,
    supervisor: &SupervisorLink,
    started: Instant,
) -> InstanceStatus {
    let snapshot = executor.snapshot();
    InstanceStatus {
        service: service.to_string(),
        instance_id: instance_id.to_string(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        phase: snapshot.phase.to_string(),
        up: true,
        uptime_seconds: started.elapsed().as_secs(),
        in_flight: snapshot.totals.in_flight,
        handled: snapshot.totals.completed,
        failed: snapshot.totals.failed,
        slow_polls: snapshot.totals.slow_polls,
        offloaded: snapshot.totals.offloaded,
        last_seen: None,
        role: supervisor.role().to_string(),
        rollout: supervisor.rollout_note(),
        stopped: false,
        run_times: 0,
        run_time_p50_us: 0,
        run_time_p99_us: 0,
        endpoint_forms: snapshot
            .endpoints
            .iter()
            .filter(|e| e.declared == EndpointKind::Both)
            .map(|e| (e.name.clone(), e.kind.to_string()))
            .collect(),
        host: switchyard_telemetry::host_name(),
        verdict: String::new(),
        verdict_evidence: String::new(),
    }
}

/// Starts this instance's part of the rollout until `attempt` ends: its
/// heartbeat every `interval`; under a launcher also the promote listener
/// and the publisher of the launcher's rollbacks.
pub async fn start(
    transport: &Transport,
    exchange: &str,
    instance: &Instance,
    interval: Duration,
    attempt: CancellationToken,
) -> Result<(), MessagingError> {
    let client = RpcClient::new(transport).await?;
    let service = instance.service.as_str();
    spawn_heartbeats(
        client,
        exchange.to_string(),
        instance.clone(),
        interval,
        attempt.clone(),
    );
    if instance.supervisor.role().is_empty() {
        return Ok(());
    }
    let control = RpcServer::builder(exchange, &control_topic(service), &instance.instance_id)
        .method(instance.executor.register(promote_endpoint(
            instance.executor.phase(),
            service,
            instance.supervisor.clone(),
        ))?)
        .start(transport, 1, attempt.clone())
        .await?;
    // Drained once the attempt ends (not watched before: a drain reports
    // what it still waits for, and until then that is everything).
    let ended = attempt.clone();
    tokio::spawn(async move {
        ended.cancelled().await;
        control.stopped().await;
    });
    let notifier = Notifier::new(
        transport,
        exchange,
        &format!("{service}@{}", instance.instance_id),
    )
    .await?;
    let supervisor = instance.supervisor.clone();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = attempt.cancelled() => return,
                event = supervisor.next_announcement() => event,
            };
            let Some(event) = event else { return };
            let payload = RolledBack::from(event);
            if let Err(error) = notifier.notify(Priority::Warn, ROLLED_BACK, &payload).await {
                tracing::warn!("{ROLLED_BACK} not published: {error}");
            }
        }
    });
    Ok(())
}

/// `promote`: passes a promote request for this service to the supervisor.
/// Its body only sends a line to the supervisor, so it runs in every phase
/// (blocking in `threaded`, async otherwise).
fn promote_endpoint(
    phase: Phase,
    service: &str,
    supervisor: SupervisorLink,
) -> Endpoint<PromoteCanary, Result<PromoteCanary, EndpointError>> {
    let service = service.to_string();
    let promote = move |request: PromoteCanary| {
        if request.service != service {
            return Err(EndpointError::InvalidArgument(format!(
                "field `service`: `{}` is not this service ({service})",
                request.service
            )));
        }
        tracing::info!("promote requested; telling the supervisor");
        supervisor.request_promote();
        Ok(request)
    };
    match phase {
        Phase::Threaded => Endpoint::blocking(PROMOTE, move |_, request| promote(request)),
        _ => Endpoint::from_async(PROMOTE, move |_, request| {
            let outcome = promote(request);
            async move { outcome }
        }),
    }
}

/// How long a stopping instance tries to say goodbye.
const GOODBYE_WITHIN: Duration = Duration::from_secs(1);

/// Publishes this instance's heartbeat every `interval` until `shutdown`;
/// when the process itself is stopping (not only this attempt's
/// connections), one last heartbeat marked `stopped`, so the rollout table
/// drops the instance instead of showing a drained worker as an outage.
fn spawn_heartbeats(
    client: RpcClient,
    exchange: String,
    instance: Instance,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let started = Instant::now();
    tokio::spawn(async move {
        let target = Target::topic(&exchange, TOPIC);
        let now = || {
            status(
                &instance.service,
                &instance.instance_id,
                &instance.executor,
                &instance.supervisor,
                started,
            )
        };
        let mut cursor = 0;
        loop {
            let (mut run_times, next) = instance.executor.recent_run_times(cursor);
            cursor = next;
            run_times.sort_unstable();
            let micros = |q| canary::quantile(&run_times, q).as_micros() as u64;
            let heartbeat = Heartbeat {
                status: Some(InstanceStatus {
                    run_times: run_times.len() as u64,
                    run_time_p50_us: micros(0.5),
                    run_time_p99_us: micros(0.99),
                    ..now()
                }),
                run_times_us: run_times,
            };
            match client.fanout(&target, METHOD, &heartbeat).await {
                Ok(()) => {}
                Err(CallError::NoConsumers { .. }) => {
                    tracing::debug!("no rollout listener yet; heartbeat dropped");
                }
                Err(error) => tracing::warn!("heartbeat not published: {error}"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
        if !instance.shutdown.is_cancelled() {
            return;
        }
        let goodbye = Heartbeat {
            status: Some(InstanceStatus {
                stopped: true,
                ..now()
            }),
            run_times_us: Vec::new(),
        };
        match tokio::time::timeout(GOODBYE_WITHIN, client.fanout(&target, METHOD, &goodbye)).await {
            Ok(Ok(())) => tracing::debug!("said goodbye to the rollout table"),
            Ok(Err(error)) => tracing::debug!("goodbye heartbeat not published: {error}"),
            Err(_) => tracing::debug!("goodbye heartbeat not published in {GOODBYE_WITHIN:?}"),
        }
    })
}
