//! The api's end of the rollout: heartbeats into the rollout table
//! ([`switchyard_rollout::table`]), onto the rollout page's board, and
//! before the fleet judge ([`switchyard_rollout::fleet`]), whose verdicts
//! the table shows and whose failures are published as
//! `rollout.verdict_failed`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_executor::Endpoint;
use switchyard_executor::sync::lock;
use switchyard_messaging::{EndpointError, Notifier, Priority};
use switchyard_proto::catalogue;
use switchyard_proto::messaging::v1::{Heartbeat, VerdictFailed};
use switchyard_proto::metering::v1::GetRolloutResponse;
use switchyard_rollout::fleet::{Failed, Fleet, FleetConfig};
use switchyard_rollout::table::Table;

use crate::dashboard::{self, Board};

/// Heartbeats received, the verdicts on them, and what the rollout page
/// keeps of them. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Rollout {
    table: Table,
    board: Board,
    fleet: Arc<Mutex<Fleet>>,
}

impl Rollout {
    /// An empty table, judging with `fleet`.
    pub fn new(fleet: &FleetConfig) -> Self {
        Self {
            table: Table::default(),
            board: Board::default(),
            fleet: Arc::new(Mutex::new(Fleet::new(fleet))),
        }
    }

    /// What the rollout page shows.
    pub fn board(&self) -> &Board {
        &self.board
    }

    /// The endpoint heartbeats fan out to; `notifier` publishes the fleet
    /// judge's failures.
    pub fn endpoint(
        &self,
        notifier: Option<Notifier>,
    ) -> Endpoint<Heartbeat, Result<Heartbeat, EndpointError>> {
        let rollout = self.clone();
        Endpoint::from_async(
            switchyard_rollout::heartbeat::METHOD,
            move |_, mut heartbeat: Heartbeat| {
                let rollout = rollout.clone();
                let notifier = notifier.clone();
                async move {
                    let status = heartbeat.status.as_ref().ok_or_else(|| {
                        EndpointError::InvalidArgument("field `status`: is required".into())
                    })?;
                    let now = dashboard::now_ms();
                    let run_times = std::mem::take(&mut heartbeat.run_times_us);
                    let failed = lock(&rollout.fleet).heard(status, run_times, Instant::now());
                    rollout.table.heard(status, |service| {
                        if status.stopped {
                            rollout.board.left(&status.service, &status.instance_id);
                        } else {
                            rollout.board.heartbeat(status, now);
                        }
                        rollout.board.shape(&status.service, service, now);
                    });
                    if let Some(failure) = failed {
                        publish(notifier.as_ref(), failure).await;
                    }
                    Ok(heartbeat)
                }
            },
        )
    }

    /// Every instance heard from, marked down after three silent intervals
    /// (and forgotten after thirty), with the fleet judge's verdict.
    pub fn table(&self, interval: Duration) -> GetRolloutResponse {
        let mut instances = self.table.rows(interval);
        let fleet = lock(&self.fleet);
        for instance in &mut instances {
            let (standing, evidence) = fleet.verdict(&instance.service, &instance.instance_id);
            instance.verdict = standing.as_str().to_string();
            instance.verdict_evidence = evidence.to_string();
        }
        GetRolloutResponse { instances }
    }
}

/// Logs a failed verdict and publishes it as `rollout.verdict_failed`.
async fn publish(notifier: Option<&Notifier>, failure: Failed) {
    tracing::warn!(
        service = failure.service,
        instance = failure.instance_id,
        host = failure.host,
        "fleet judge: {} instance {} on {} fails: {}",
        failure.service,
        failure.instance_id,
        failure.host,
        failure.evidence
    );
    let Some(notifier) = notifier else { return };
    let event = VerdictFailed {
        service: failure.service,
        instance_id: failure.instance_id,
        host: failure.host,
        phase: failure.phase,
        evidence: failure.evidence,
    };
    if let Err(error) = notifier
        .notify(Priority::Warn, catalogue::event::VERDICT_FAILED, &event)
        .await
    {
        tracing::warn!(
            "{} not published: {error}",
            catalogue::event::VERDICT_FAILED
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_proto::metering::v1::InstanceStatus;

    #[tokio::test]
    async fn a_heartbeat_without_a_status_is_refused_naming_the_field() {
        let rollout = Rollout::new(&FleetConfig::default());
        let executor = switchyard_executor::Executor::new(
            "api",
            switchyard_executor::ExecutorConfig {
                phase: switchyard_executor::Phase::Async,
                ..Default::default()
            },
        )
        .expect("executor");
        let bound = executor.register(rollout.endpoint(None)).expect("register");
        let refused = bound
            .dispatch(
                Heartbeat {
                    status: None,
                    run_times_us: Vec::new(),
                },
                Default::default(),
            )
            .await
            .expect("dispatched");
        assert!(
            matches!(&refused, Err(EndpointError::InvalidArgument(m)) if m.contains("`status`")),
            "{refused:?}"
        );
        let goodbye = Heartbeat {
            status: Some(InstanceStatus {
                service: "collector".into(),
                instance_id: "draining".into(),
                stopped: true,
                ..InstanceStatus::default()
            }),
            run_times_us: Vec::new(),
        };
        let answered = bound
            .dispatch(goodbye, Default::default())
            .await
            .expect("dispatched");
        assert!(answered.is_ok());
        assert!(rollout.table(Duration::from_secs(1)).instances.is_empty());
    }
}
