//! The rollout table: every instance's latest heartbeat. An instance that
//! says it stopped (its last heartbeat is marked `stopped`) leaves the table
//! at once; one silent for three heartbeat intervals is shown as down, and
//! forgotten after thirty (a launcher replaces workers on every reload: the
//! table would grow by their rows forever).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use switchyard_executor::sync::lock;
use switchyard_proto::metering::v1::InstanceStatus;

/// Silent this many heartbeat intervals, an instance is shown as down.
const DOWN_AFTER_INTERVALS: u32 = 3;
/// Silent this many heartbeat intervals, an instance leaves the table.
const FORGET_AFTER_INTERVALS: u32 = 30;

/// The latest heartbeat of one instance, and when it arrived (monotonic for
/// liveness, wall clock for display).
type Seen = (InstanceStatus, Instant, SystemTime);

/// Heartbeats received, by (service, instance). Cheap to clone; clones
/// share the table.
#[derive(Debug, Clone, Default)]
pub struct Table {
    seen: Arc<Mutex<BTreeMap<(String, String), Seen>>>,
}

impl Table {
    /// Takes one instance's heartbeat (a `stopped` one removes the
    /// instance), then calls `then` with every instance of its service now
    /// in the table, before another heartbeat can change it: whatever
    /// `then` keeps sees the heartbeats in the order the table did.
    pub fn heard<R>(
        &self,
        status: &InstanceStatus,
        then: impl FnOnce(&[&InstanceStatus]) -> R,
    ) -> R {
        // Every holder leaves the map whole (one insert or remove), so a
        // panic elsewhere while holding it leaves nothing to repair.
        let mut seen = lock(&self.seen);
        let key = (status.service.clone(), status.instance_id.clone());
        if status.stopped {
            seen.remove(&key);
        } else {
            seen.insert(key, (status.clone(), Instant::now(), SystemTime::now()));
        }
        let service: Vec<&InstanceStatus> = seen
            .iter()
            .filter(|((name, _), _)| *name == status.service)
            .map(|(_, (s, _, _))| s)
            .collect();
        then(&service)
    }

    /// Every instance heard from, marked down after three silent
    /// `interval`s (and forgotten after thirty), with when it was last
    /// heard.
    pub fn rows(&self, interval: Duration) -> Vec<InstanceStatus> {
        let mut seen = lock(&self.seen);
        seen.retain(|_, (_, received, _)| received.elapsed() < interval * FORGET_AFTER_INTERVALS);
        seen.values()
            .map(|(status, received, at)| InstanceStatus {
                up: received.elapsed() < interval * DOWN_AFTER_INTERVALS,
                last_seen: Some(switchyard_proto::time::timestamp(*at)),
                ..status.clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(instance: &str) -> InstanceStatus {
        InstanceStatus {
            service: "collector".into(),
            instance_id: instance.into(),
            ..InstanceStatus::default()
        }
    }

    fn heard_ago(table: &Table, instance: &str, ago: Duration) {
        let received = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
        lock(&table.seen).insert(
            ("collector".into(), instance.into()),
            (status(instance), received, SystemTime::now()),
        );
    }

    fn ids(rows: &[InstanceStatus]) -> Vec<(&str, bool)> {
        rows.iter()
            .map(|i| (i.instance_id.as_str(), i.up))
            .collect()
    }

    #[test]
    fn silent_instances_are_down_after_three_intervals_then_forgotten_after_thirty() {
        let table = Table::default();
        let interval = Duration::from_millis(100);
        heard_ago(&table, "fresh", Duration::ZERO);
        heard_ago(&table, "quiet", Duration::from_millis(500));
        heard_ago(&table, "gone", Duration::from_secs(4));
        assert_eq!(
            ids(&table.rows(interval)),
            [("fresh", true), ("quiet", false)]
        );
    }

    #[test]
    fn an_instance_that_says_it_stopped_leaves_the_table_at_once() {
        let table = Table::default();
        table.heard(&status("draining"), |_| ());
        table.heard(&status("staying"), |_| ());
        let goodbye = InstanceStatus {
            in_flight: 7,
            stopped: true,
            ..status("draining")
        };
        let left = table.heard(&goodbye, |service| service.len());
        assert_eq!(left, 1);
        assert_eq!(
            ids(&table.rows(Duration::from_secs(1))),
            [("staying", true)]
        );
    }
}
