//! Broker failover (`amqp.failover_urls`): a service whose broker node dies
//! connects to the next one and loses nothing. The "node" is a TCP proxy in
//! front of the local RabbitMQ that the test cuts — port and connections —
//! so the queues the collector finds on the next address are the same ones
//! (a cluster's quorum queues are, too).

mod support;

use std::time::Duration;

use support::{Fleet, FleetOptions, Proxy, post_steadily};

/// `amqp.failover_urls`: the collector's broker node dies (here: the
/// proxy it connects through is cut, connections and port), and once
/// `recovery_timeout_ms` has passed it connects to the next address,
/// declares its queues and consumers there and stores every sample the api
/// acknowledged meanwhile — without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_whose_broker_dies_fails_over_to_the_next_one() {
    let node = Proxy::start(([127, 0, 0, 1], 5672).into()).await;
    let mut fleet = Fleet::start(FleetOptions {
        collector_extra: vec![
            (
                "SWITCHYARD_AMQP__URL".into(),
                format!("amqp://guest:guest@127.0.0.1:{}/%2f", node.port),
            ),
            (
                "SWITCHYARD_AMQP__FAILOVER_URLS".into(),
                "[\"amqp://guest:guest@127.0.0.1:5672/%2f\"]".into(),
            ),
            ("SWITCHYARD_AMQP__RECOVERY_TIMEOUT_MS".into(), "2000".into()),
        ],
        ..FleetOptions::default()
    })
    .await;
    // 4,000 samples: 200 batches of 20, one batch every 20 ms.
    let load = tokio::spawn(post_steadily(
        fleet.client().await,
        format!("{}-f", fleet.id),
        200,
        20,
        Duration::from_millis(20),
    ));
    fleet.wait_stored_at_least(500).await;
    node.cut();
    let cut_at = std::time::Instant::now();
    let (acknowledged, _retries) = load.await.expect("load");
    assert_eq!(acknowledged.len(), 4_000);
    fleet.wait_stored(acknowledged.len()).await;
    eprintln!(
        "every acknowledged sample stored {:.1} s after the collector's node died",
        cut_at.elapsed().as_secs_f64()
    );
    let log = fleet.collector_log();
    assert!(
        log.contains("(broker 1 of 2; 0 failed first)")
            && log.contains("the broker connection")
            && log.contains("(broker 2 of 2; 0 failed first)"),
        "the collector never failed over:\n{}",
        fleet.collector_log_tail(40)
    );
    let collector = fleet.collector.as_mut().expect("running");
    assert!(
        collector.child.try_wait().expect("status").is_none(),
        "the collector failed over without a restart"
    );
}

/// Scenario 4 of issue 20: the api's broker node dies while callers wait on
/// a method that needs the broker (ListAlarms asks the notifier over AMQP).
/// Every call ends within its deadline, answered or refused with
/// UNAVAILABLE — never a reset connection, never the caller's own timeout —
/// and the api answers again from the next broker without a restart: its
/// gRPC server stays up while its messaging is rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_of_an_api_whose_broker_dies_get_answers_or_unavailable_within_their_deadline() {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    use switchyard_proto::metering::v1::ListAlarmsRequest;

    const DEADLINE: Duration = Duration::from_secs(3);
    let node = Proxy::start(([127, 0, 0, 1], 5672).into()).await;
    let fleet = Fleet::start(FleetOptions {
        api_extra: vec![
            (
                "SWITCHYARD_AMQP__URL".into(),
                format!("amqp://guest:guest@127.0.0.1:{}/%2f", node.port),
            ),
            (
                "SWITCHYARD_AMQP__FAILOVER_URLS".into(),
                "[\"amqp://guest:guest@127.0.0.1:5672/%2f\"]".into(),
            ),
            ("SWITCHYARD_AMQP__RECOVERY_TIMEOUT_MS".into(), "1000".into()),
        ],
        ..FleetOptions::default()
    })
    .await;
    // (sent at, how long it took, the outcome) of every call.
    type Calls = Arc<Mutex<Vec<(Instant, Duration, Result<(), tonic::Status>)>>>;
    let calls: Calls = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut callers = Vec::new();
    for _ in 0..4 {
        let (mut client, calls, stop) = (fleet.client().await, calls.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let mut request = tonic::Request::new(ListAlarmsRequest::default());
                request.set_timeout(DEADLINE);
                let sent = Instant::now();
                let outcome = client.list_alarms(request).await.map(|_| ());
                let took = sent.elapsed();
                calls.lock().expect("calls").push((sent, took, outcome));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let answered_after = |at: Instant| {
        calls
            .lock()
            .expect("calls")
            .iter()
            .filter(|(sent, _, outcome)| *sent > at && outcome.is_ok())
            .count()
    };
    let started = Instant::now();
    while answered_after(started) < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no answers before the cut"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.cut();
    let cut_at = Instant::now();
    // Answered again from the next broker, by calls sent after the api
    // logged its new connection.
    let api_log = || {
        fleet
            .api
            .as_ref()
            .map(|api| api.log_text())
            .unwrap_or_default()
    };
    let reconnected = loop {
        if api_log().contains("(broker 2 of 2") {
            break Instant::now();
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(60),
            "the api never connected to the next broker:\n{}",
            api_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    while answered_after(reconnected) < 20 {
        assert!(
            reconnected.elapsed() < Duration::from_secs(30),
            "the api did not answer again after failing over:\n{}",
            api_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    for caller in callers {
        caller.await.expect("caller");
    }
    let calls = calls.lock().expect("calls");
    let refused: Vec<_> = calls
        .iter()
        .filter_map(|(_, took, outcome)| outcome.as_ref().err().map(|status| (took, status)))
        .collect();
    eprintln!(
        "{} calls, {} refused; back {:.1} s after the cut",
        calls.len(),
        refused.len(),
        (reconnected - cut_at).as_secs_f64()
    );
    for (took, outcome) in calls.iter().map(|(_, took, outcome)| (took, outcome)) {
        assert!(
            *took < DEADLINE + Duration::from_millis(500),
            "a call took {took:?} (deadline {DEADLINE:?}): {outcome:?}"
        );
    }
    let mut reasons: Vec<(i32, &str)> = refused
        .iter()
        .map(|(_, status)| (status.code() as i32, status.message()))
        .collect();
    reasons.sort();
    reasons.dedup();
    for (_, status) in &refused {
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "a refused call must say the service is unavailable: {status:?}"
        );
        // The api said so itself: its port stayed open and its
        // connections up (a status made by the client from a refused or
        // reset connection carries the transport error as its source).
        assert!(
            std::error::Error::source(status).is_none(),
            "refused by the transport, not by the api: {status:?}"
        );
    }
    assert!(
        reasons
            .iter()
            .any(|(_, message)| message.contains("reconnecting to its broker")),
        "no call reached the api while it rebuilt its messaging: {reasons:#?}"
    );
    let mut fleet = fleet;
    let api = fleet.api.as_mut().expect("running");
    assert!(
        api.child.try_wait().expect("status").is_none(),
        "the api failed over without a restart"
    );
}
