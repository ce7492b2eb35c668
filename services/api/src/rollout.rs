//! The rollout table: every instance's latest heartbeat. An instance silent
//! for three heartbeat intervals is shown as down.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use switchyard_executor::Endpoint;
use switchyard_messaging::EndpointError;
use switchyard_proto::messaging::v1::Heartbeat;
use switchyard_proto::metering::v1::{GetRolloutResponse, InstanceStatus};

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

    /// Every instance heard from, marked down after three silent intervals.
    pub fn table(&self, interval: Duration) -> GetRolloutResponse {
        let Ok(seen) = self.seen.lock() else {
            return GetRolloutResponse::default();
        };
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
