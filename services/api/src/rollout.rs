//! The rollout table: every instance's latest heartbeat. An instance silent
//! for three heartbeat intervals is shown as down, and forgotten after
//! thirty (a launcher replaces workers on every reload: the table would grow
//! by their rows forever).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use switchyard_executor::Endpoint;
use switchyard_messaging::EndpointError;
use switchyard_proto::messaging::v1::Heartbeat;
use switchyard_proto::metering::v1::{GetRolloutResponse, InstanceStatus};

/// Silent this many heartbeat intervals, an instance leaves the table.
const FORGET_AFTER_INTERVALS: u32 = 30;

/// The latest heartbeat of one instance, and when it arrived (monotonic for
/// liveness, wall clock for display).
type Seen = (InstanceStatus, Instant, SystemTime);

/// Heartbeats received, by (service, instance).
#[derive(Debug, Clone, Default)]
pub struct Rollout {
    seen: Arc<Mutex<BTreeMap<(String, String), Seen>>>,
}

impl Rollout {
    /// The endpoint heartbeats fan out to.
    pub fn endpoint(&self) -> Endpoint<Heartbeat, Result<Heartbeat, EndpointError>> {
        let seen = Arc::clone(&self.seen);
        Endpoint::from_async(
            switchyard_messaging::heartbeat::METHOD,
            move |_, heartbeat: Heartbeat| {
                let seen = Arc::clone(&seen);
                async move {
                    let status = heartbeat.status.clone().ok_or_else(|| {
                        EndpointError::InvalidArgument("field `status`: is required".into())
                    })?;
                    if let Ok(mut seen) = seen.lock() {
                        seen.insert(
                            (status.service.clone(), status.instance_id.clone()),
                            (status, Instant::now(), SystemTime::now()),
                        );
                    }
                    Ok(heartbeat)
                }
            },
        )
    }

    /// Every instance heard from, marked down after three silent intervals
    /// (and forgotten after thirty).
    pub fn table(&self, interval: Duration) -> GetRolloutResponse {
        let Ok(mut seen) = self.seen.lock() else {
            return GetRolloutResponse::default();
        };
        seen.retain(|_, (_, received, _)| received.elapsed() < interval * FORGET_AFTER_INTERVALS);
        let instances = seen
            .values()
            .map(|(status, received, at)| {
                let since = at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                InstanceStatus {
                    up: received.elapsed() < interval * 3,
                    last_seen: Some(prost_types::Timestamp {
                        seconds: since.as_secs() as i64,
                        nanos: since.subsec_nanos() as i32,
                    }),
                    ..status.clone()
                }
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
}
