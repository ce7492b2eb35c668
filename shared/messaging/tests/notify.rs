//! Notifications on the real RabbitMQ: every pool gets every message, the
//! members of one pool share them, requeue is counted.

mod support;

use std::time::Duration;

use support::{BOUND, Rig, executor};
use switchyard_executor::{Endpoint, Phase};
use switchyard_messaging::{
    EndpointError, Handled, Notification, NotificationListener, Notifier, Priority, wire,
};
use switchyard_proto::messaging::v1::SampleRecorded;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

type Seen = mpsc::UnboundedSender<(String, u32)>;

fn listener_endpoint(
    member: &str,
    seen: Seen,
    answer: Handled,
) -> Endpoint<Notification<SampleRecorded>, Result<Handled, EndpointError>> {
    let member = member.to_string();
    Endpoint::from_async(
        "sample.recorded",
        move |_, notification: Notification<SampleRecorded>| {
            let (member, seen) = (member.clone(), seen.clone());
            async move {
                assert_eq!(notification.event_type, "sample.recorded");
                assert_eq!(notification.priority, Priority::Info);
                assert_eq!(notification.publisher_id, "collector@test");
                tokio::time::sleep(Duration::from_millis(5)).await;
                let _ = seen.send((member, notification.payload.stored));
                Ok(answer)
            }
        },
    )
}

async fn start(
    rig: &Rig,
    pool: &str,
    member: &str,
    seen: Seen,
    stop: &CancellationToken,
) -> NotificationListener {
    let executor = executor(Phase::Async, 1);
    let endpoint = executor
        .register(listener_endpoint(member, seen, Handled::Handled))
        .expect("registered");
    NotificationListener::builder(rig.exchange(), pool)
        .subscribe("sample.recorded", &[Priority::Info])
        .start(&rig.transport, endpoint, stop.clone())
        .await
        .expect("listener")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_each_get_everything_and_members_share() {
    let rig = Rig::new().await;
    let stop = CancellationToken::new();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let listeners = vec![
        start(&rig, "evaluator", "evaluator-1", seen_tx.clone(), &stop).await,
        start(&rig, "evaluator", "evaluator-2", seen_tx.clone(), &stop).await,
        start(&rig, "archive", "archive-1", seen_tx.clone(), &stop).await,
    ];
    let notifier = Notifier::new(&rig.transport, rig.exchange(), "collector@test")
        .await
        .expect("notifier");
    const N: u32 = 40;
    publish_recorded(&notifier, N).await;
    // Another priority and another event type: nobody subscribed.
    for (priority, event_type) in [
        (Priority::Debug, "sample.recorded"),
        (Priority::Info, "alarm.state_changed"),
    ] {
        notifier
            .notify(priority, event_type, &SampleRecorded::default())
            .await
            .expect("confirmed");
    }

    let mut received = Vec::new();
    while received.len() < 2 * N as usize {
        received.push(
            tokio::time::timeout(BOUND, seen.recv())
                .await
                .expect("in time")
                .expect("open"),
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), seen.recv())
            .await
            .is_err(),
        "nothing extra arrived"
    );
    let by = |member: &str| {
        received
            .iter()
            .filter(|(m, _)| m == member)
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
    };
    let mut archive = by("archive-1");
    archive.sort_unstable();
    assert_eq!(
        archive,
        (0..N).collect::<Vec<_>>(),
        "the archive pool got every message once"
    );
    let (one, two) = (by("evaluator-1"), by("evaluator-2"));
    let mut evaluator: Vec<u32> = one.iter().chain(&two).copied().collect();
    evaluator.sort_unstable();
    assert_eq!(
        evaluator,
        (0..N).collect::<Vec<_>>(),
        "the evaluator pool got every message once"
    );
    assert!(
        !one.is_empty() && !two.is_empty(),
        "both members shared the work: {} / {}",
        one.len(),
        two.len()
    );

    stop.cancel();
    for listener in listeners {
        listener.stopped().await;
    }
    rig.cleanup(&[], &["evaluator", "archive"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeued_notifications_are_counted_then_dead_lettered() {
    let rig = Rig::new().await;
    let stop = CancellationToken::new();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let executor = executor(Phase::Bridged, 1);
    let endpoint = executor
        .register(listener_endpoint("picky", seen_tx, Handled::Requeue))
        .expect("registered");
    let listener = NotificationListener::builder(rig.exchange(), "picky")
        .subscribe("sample.recorded", &[])
        .start(&rig.transport, endpoint, stop.clone())
        .await
        .expect("listener");
    let notifier = Notifier::new(&rig.transport, rig.exchange(), "collector@test")
        .await
        .expect("notifier");
    notifier
        .notify(
            Priority::Info,
            "sample.recorded",
            &SampleRecorded {
                stored: 7,
                ..Default::default()
            },
        )
        .await
        .expect("sent");
    for _ in 0..3 {
        let (_, stored) = tokio::time::timeout(BOUND, seen.recv())
            .await
            .expect("in time")
            .expect("open");
        assert_eq!(stored, 7);
    }
    let dead = rig
        .drain(
            &wire::dead_letter_queue(&wire::pool_queue(rig.exchange(), "picky")),
            1,
        )
        .await;
    let reason = wire::header_str(&dead[0].delivery.properties, wire::DEAD_LETTER_REASON)
        .unwrap_or_default();
    assert!(
        reason.contains("asked to requeue") && reason.contains("after 3 deliveries"),
        "{reason}"
    );
    stop.cancel();
    listener.stopped().await;
    rig.cleanup(&[], &["picky"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_mode_hands_over_full_batches_and_a_late_remainder() {
    let rig = Rig::new().await;
    let stop = CancellationToken::new();
    let (batches_tx, mut batches) = mpsc::unbounded_channel::<Vec<u32>>();
    let executor = executor(Phase::Async, 1);
    let endpoint = executor
        .register(Endpoint::from_async(
            "sample.recorded",
            move |_, batch: Vec<Notification<SampleRecorded>>| {
                let batches_tx = batches_tx.clone();
                async move {
                    let _ = batches_tx.send(batch.into_iter().map(|n| n.payload.stored).collect());
                    Ok::<_, EndpointError>(Handled::Handled)
                }
            },
        ))
        .expect("registered");
    let listener = NotificationListener::builder(rig.exchange(), "batcher")
        .subscribe("sample.recorded", &[Priority::Info])
        .start_batched(
            &rig.transport,
            endpoint,
            5,
            Duration::from_millis(300),
            stop.clone(),
        )
        .await
        .expect("listener");
    let notifier = Notifier::new(&rig.transport, rig.exchange(), "collector@test")
        .await
        .expect("notifier");
    publish_recorded(&notifier, 12).await;
    let mut all = Vec::new();
    let mut sizes = Vec::new();
    while all.len() < 12 {
        let batch = tokio::time::timeout(BOUND, batches.recv())
            .await
            .expect("in time")
            .expect("open");
        sizes.push(batch.len());
        all.extend(batch);
    }
    all.sort_unstable();
    assert_eq!(all, (0..12).collect::<Vec<_>>(), "each notification once");
    assert!(sizes.iter().all(|&n| n <= 5), "{sizes:?}");
    assert!(sizes.contains(&5), "full batches were formed: {sizes:?}");
    stop.cancel();
    listener.stopped().await;
    rig.cleanup(&[], &["batcher"]).await;
}

/// Publishes `count` `sample.recorded` notifications at `info`, numbered
/// from 0 in `stored`, each confirmed by the broker.
async fn publish_recorded(notifier: &Notifier, count: u32) {
    for stored in 0..count {
        notifier
            .notify(
                Priority::Info,
                "sample.recorded",
                &SampleRecorded {
                    stored,
                    ..Default::default()
                },
            )
            .await
            .expect("confirmed");
    }
}
