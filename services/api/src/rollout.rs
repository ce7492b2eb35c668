//! The api's end of the rollout: heartbeats into the rollout table
//! ([`switchyard_rollout::table`]) and onto the rollout page's board.

use std::time::Duration;

use switchyard_executor::Endpoint;
use switchyard_messaging::EndpointError;
use switchyard_proto::messaging::v1::Heartbeat;
use switchyard_proto::metering::v1::GetRolloutResponse;
use switchyard_rollout::table::Table;

use crate::dashboard::{self, Board};

/// Heartbeats received, and what the rollout page keeps of them.
#[derive(Debug, Clone, Default)]
pub struct Rollout {
    table: Table,
    board: Board,
}

impl Rollout {
    /// What the rollout page shows.
    pub fn board(&self) -> &Board {
        &self.board
    }

    /// The endpoint heartbeats fan out to.
    pub fn endpoint(&self) -> Endpoint<Heartbeat, Result<Heartbeat, EndpointError>> {
        let table = self.table.clone();
        let board = self.board.clone();
        Endpoint::from_async(
            switchyard_rollout::heartbeat::METHOD,
            move |_, heartbeat: Heartbeat| {
                let table = table.clone();
                let board = board.clone();
                async move {
                    let status = heartbeat.status.as_ref().ok_or_else(|| {
                        EndpointError::InvalidArgument("field `status`: is required".into())
                    })?;
                    let now = dashboard::now_ms();
                    table.heard(status, |service| {
                        if status.stopped {
                            board.left(&status.service, &status.instance_id);
                        } else {
                            board.heartbeat(status, now);
                        }
                        board.shape(&status.service, service, now);
                    });
                    Ok(heartbeat)
                }
            },
        )
    }

    /// Every instance heard from, marked down after three silent intervals
    /// (and forgotten after thirty).
    pub fn table(&self, interval: Duration) -> GetRolloutResponse {
        GetRolloutResponse {
            instances: self.table.rows(interval),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_proto::metering::v1::InstanceStatus;

    #[tokio::test]
    async fn a_heartbeat_without_a_status_is_refused_naming_the_field() {
        let rollout = Rollout::default();
        let executor = switchyard_executor::Executor::new(
            "api",
            switchyard_executor::ExecutorConfig {
                phase: switchyard_executor::Phase::Async,
                ..Default::default()
            },
        )
        .expect("executor");
        let bound = executor.register(rollout.endpoint()).expect("register");
        let refused = bound
            .dispatch(Heartbeat { status: None }, Default::default())
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
        };
        let answered = bound
            .dispatch(goodbye, Default::default())
            .await
            .expect("dispatched");
        assert!(answered.is_ok());
        assert!(rollout.table(Duration::from_secs(1)).instances.is_empty());
    }
}
