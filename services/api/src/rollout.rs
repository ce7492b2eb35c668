//! The rollout table: every instance's latest heartbeat. An instance that
//! says it stopped (its last heartbeat is marked `stopped`) leaves the table
//! at once; one silent for three heartbeat intervals is shown as down, and
//! forgotten after thirty (a launcher replaces workers on every reload: the
//! table would grow by their rows forever).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use switchyard_executor::Endpoint;
use switchyard_executor::sync::lock;
use switchyard_messaging::EndpointError;
use switchyard_proto::messaging::v1::Heartbeat;
use switchyard_proto::metering::v1::{GetRolloutResponse, InstanceStatus};

use crate::dashboard::{self, Board};

/// Silent this many heartbeat intervals, an instance leaves the table.
const FORGET_AFTER_INTERVALS: u32 = 30;

/// The latest heartbeat of one instance, and when it arrived (monotonic for
/// liveness, wall clock for display).
type Seen = (InstanceStatus, Instant, SystemTime);

/// Heartbeats received, by (service, instance), and what the rollout page
/// keeps of them.
#[derive(Debug, Clone, Default)]
pub struct Rollout {
    seen: Arc<Mutex<BTreeMap<(String, String), Seen>>>,
    board: Board,
}

impl Rollout {
    /// What the rollout page shows.
    pub fn board(&self) -> &Board {
        &self.board
    }

    /// The endpoint heartbeats fan out to.
    pub fn endpoint(&self) -> Endpoint<Heartbeat, Result<Heartbeat, EndpointError>> {
        let seen = Arc::clone(&self.seen);
        let board = self.board.clone();
        Endpoint::from_async(
            switchyard_rollout::heartbeat::METHOD,
            move |_, heartbeat: Heartbeat| {
                let seen = Arc::clone(&seen);
                let board = board.clone();
                async move {
                    let status = heartbeat.status.clone().ok_or_else(|| {
                        EndpointError::InvalidArgument("field `status`: is required".into())
                    })?;
                    let mut seen = lock(&seen);
                    let key = (status.service.clone(), status.instance_id.clone());
                    let now = dashboard::now_ms();
                    if status.stopped {
                        seen.remove(&key);
                        board.left(&status.service, &status.instance_id);
                    } else {
                        board.heartbeat(&status, now);
                        seen.insert(key, (status.clone(), Instant::now(), SystemTime::now()));
                    }
                    let service: Vec<&InstanceStatus> = seen
                        .iter()
                        .filter(|((name, _), _)| *name == status.service)
                        .map(|(_, (s, _, _))| s)
                        .collect();
                    board.shape(&status.service, &service, now);
                    Ok(heartbeat)
                }
            },
        )
    }

    /// Every instance heard from, marked down after three silent intervals
    /// (and forgotten after thirty).
    pub fn table(&self, interval: Duration) -> GetRolloutResponse {
        // Every holder leaves the map whole (one insert or remove), so a
        // panic elsewhere while holding it leaves nothing to repair.
        let mut seen = lock(&self.seen);
        seen.retain(|_, (_, received, _)| received.elapsed() < interval * FORGET_AFTER_INTERVALS);
        let instances = seen
            .values()
            .map(|(status, received, at)| InstanceStatus {
                up: received.elapsed() < interval * 3,
                last_seen: Some(switchyard_proto::time::timestamp(*at)),
                ..status.clone()
            })
            .collect();
        GetRolloutResponse { instances }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heard(rollout: &Rollout, instance: &str, ago: Duration) {
        let status = InstanceStatus {
            service: "collector".into(),
            instance_id: instance.into(),
            ..InstanceStatus::default()
        };
        let received = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
        if let Ok(mut seen) = rollout.seen.lock() {
            seen.insert(
                ("collector".into(), instance.into()),
                (status, received, SystemTime::now()),
            );
        }
    }

    #[test]
    fn silent_instances_are_down_then_forgotten() {
        let rollout = Rollout::default();
        let interval = Duration::from_millis(100);
        heard(&rollout, "fresh", Duration::ZERO);
        heard(&rollout, "quiet", Duration::from_millis(500));
        heard(&rollout, "gone", Duration::from_secs(4));
        let table = rollout.table(interval);
        let rows: Vec<(&str, bool)> = table
            .instances
            .iter()
            .map(|i| (i.instance_id.as_str(), i.up))
            .collect();
        assert_eq!(rows, [("fresh", true), ("quiet", false)]);
    }

    #[tokio::test]
    async fn an_instance_that_says_it_stopped_leaves_the_table_at_once() {
        let rollout = Rollout::default();
        heard(&rollout, "draining", Duration::ZERO);
        heard(&rollout, "staying", Duration::ZERO);
        let goodbye = Heartbeat {
            status: Some(InstanceStatus {
                service: "collector".into(),
                instance_id: "draining".into(),
                in_flight: 7,
                stopped: true,
                ..InstanceStatus::default()
            }),
        };
        let endpoint = rollout.endpoint();
        let executor = switchyard_executor::Executor::new(
            "api",
            switchyard_executor::ExecutorConfig {
                phase: switchyard_executor::Phase::Async,
                ..Default::default()
            },
        )
        .expect("executor");
        let bound = executor.register(endpoint).expect("register");
        let answered = bound
            .dispatch(goodbye, Default::default())
            .await
            .expect("dispatched");
        assert!(answered.is_ok());
        let rows: Vec<String> = rollout
            .table(Duration::from_secs(1))
            .instances
            .into_iter()
            .map(|i| i.instance_id)
            .collect();
        assert_eq!(rows, ["staying"]);
    }
}
