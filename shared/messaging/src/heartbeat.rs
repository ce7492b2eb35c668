//! Rollout heartbeats: every instance says, every few seconds on a fanout,
//! who it is, which phase it runs and how it is doing. The api aggregates
//! them into the rollout table.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchyard_executor::Executor;
use switchyard_proto::messaging::v1::Heartbeat;
use switchyard_proto::metering::v1::InstanceStatus;
use tokio_util::sync::CancellationToken;

use crate::{CallError, RpcClient, Target};

/// The topic heartbeats fan out on.
pub const TOPIC: &str = "rollout";
/// The method heartbeats call.
pub const METHOD: &str = "heartbeat";

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

/// This instance's status now.
pub fn status(
    service: &str,
    instance_id: &str,
    executor: &Executor,
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
    }
}

/// Publishes this instance's heartbeat every `interval` until `shutdown`.
pub fn spawn(
    client: RpcClient,
    exchange: String,
    service: String,
    instance_id: String,
    executor: Executor,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let started = Instant::now();
    tokio::spawn(async move {
        let target = Target::topic(&exchange, TOPIC);
        loop {
            let heartbeat = Heartbeat {
                status: Some(status(&service, &instance_id, &executor, started)),
            };
            match client.fanout(&target, METHOD, &heartbeat).await {
                Ok(()) => {}
                Err(CallError::NoConsumers { .. }) => {
                    tracing::debug!("no rollout listener yet; heartbeat dropped");
                }
                Err(error) => tracing::warn!("heartbeat not published: {error}"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    })
}
