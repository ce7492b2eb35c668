//! The api's fleet judge, on the real RabbitMQ, from heartbeats written the
//! way a client in another language would write them (the wire contract of
//! `docs/wire-format.md`, "Rollout messages"): a service whose newest
//! instance blocks the loop while the older ones do not gets a `fail`
//! verdict on that instance, shown by `GetRollout` with its evidence and
//! published once as `rollout.verdict_failed`; the older instances are not
//! judged. (`e2e/tests/swarm.rs` runs the same judge under Docker's swarm
//! mode, with real instances.)

mod support;

use std::time::{Duration, Instant};

use support::{BOUND, Fleet, FleetOptions};
use switchyard_messaging::{RpcClient, Target};
use switchyard_proto::catalogue;
use switchyard_proto::messaging::v1::{Heartbeat, VerdictFailed};
use switchyard_proto::metering::v1::{GetRolloutRequest, InstanceStatus};
use tokio_util::sync::CancellationToken;

/// One forged instance of the service `forged`: every heartbeat adds 40
/// calls of about `run_us` each, all of them blocking the loop when
/// `blocking`.
struct Forged {
    status: InstanceStatus,
    run_us: u32,
    blocking: bool,
}

impl Forged {
    fn new(instance: &str, phase: &str, uptime_seconds: u64, blocking: bool) -> Self {
        Self {
            status: InstanceStatus {
                service: "forged".into(),
                instance_id: instance.into(),
                phase: phase.into(),
                host: format!("host-of-{instance}"),
                up: true,
                uptime_seconds,
                ..InstanceStatus::default()
            },
            run_us: 400,
            blocking,
        }
    }

    fn next(&mut self) -> Heartbeat {
        self.status.handled += 40;
        if self.blocking {
            self.status.slow_polls += 40;
        }
        let run_times_us: Vec<u32> = (0..40).map(|i| self.run_us + i * 3).collect();
        self.status.run_times = run_times_us.len() as u64;
        Heartbeat {
            status: Some(self.status.clone()),
            run_times_us,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newest_instance_that_blocks_the_loop_is_failed_shown_and_published_once() {
    let fleet = Fleet::start(FleetOptions {
        api_extra: vec![
            ("SWITCHYARD_FLEET__WINDOW_MS".into(), "2000".into()),
            ("SWITCHYARD_FLEET__WARMUP_MS".into(), "500".into()),
            ("SWITCHYARD_FLEET__MIN_CALLS".into(), "20".into()),
        ],
        ..FleetOptions::default()
    })
    .await;
    let transport = fleet.transport("verdicts").await;

    // Listen for the published verdicts first.
    let stop = CancellationToken::new();
    let (mut published, _listener) = fleet
        .published::<VerdictFailed>(catalogue::event::VERDICT_FAILED, "verdict-watch", &stop)
        .await;

    let client = RpcClient::new(&transport).await.expect("client");
    let target = Target::topic(&fleet.exchange, catalogue::topic::ROLLOUT);
    let mut instances = [
        Forged::new("old-1", "threaded", 600, false),
        Forged::new("old-2", "threaded", 600, false),
        Forged::new("new", "async", 0, true),
    ];
    let started = Instant::now();
    let event = loop {
        for instance in &mut instances {
            // Until the api's heartbeat queue is bound, nobody hears them.
            let _ = client
                .fanout(&target, catalogue::method::HEARTBEAT, &instance.next())
                .await;
        }
        if let Ok(event) = published.try_recv() {
            break event;
        }
        assert!(
            started.elapsed() < BOUND,
            "no rollout.verdict_failed in {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (
            event.service.as_str(),
            event.instance_id.as_str(),
            event.host.as_str(),
            event.phase.as_str()
        ),
        ("forged", "new", "host-of-new", "async")
    );
    assert!(
        event.evidence.contains("worse on slow_polls")
            && event.evidence.contains("2 instance(s) in threaded"),
        "{}",
        event.evidence
    );

    let rows = fleet
        .client()
        .await
        .get_rollout(GetRolloutRequest {})
        .await
        .expect("GetRollout")
        .into_inner()
        .instances;
    let verdict = |id: &str| {
        rows.iter()
            .find(|i| i.service == "forged" && i.instance_id == id)
            .map(|i| {
                (
                    i.verdict.clone(),
                    i.verdict_evidence.clone(),
                    i.host.clone(),
                )
            })
            .unwrap_or_else(|| panic!("{id} not in the table: {rows:?}"))
    };
    let (new_verdict, new_evidence, new_host) = verdict("new");
    assert_eq!(
        (new_verdict.as_str(), new_host.as_str()),
        ("fail", "host-of-new")
    );
    assert_eq!(new_evidence, event.evidence);
    assert_eq!(
        verdict("old-1").0,
        "",
        "an instance of the old phase was judged"
    );

    // More heartbeats of the failed instance publish nothing more: the
    // verdict stays, and was published once.
    for _ in 0..10 {
        for instance in &mut instances {
            let _ = client
                .fanout(&target, catalogue::method::HEARTBEAT, &instance.next())
                .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Heartbeats and notifications travel different queues: give the last
    // heartbeats' notifications, were there any, time to arrive.
    let again = tokio::time::timeout(Duration::from_secs(2), published.recv()).await;
    assert!(again.is_err(), "published again: {again:?}");
    stop.cancel();
}
