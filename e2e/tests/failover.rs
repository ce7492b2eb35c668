//! Broker failover (`amqp.failover_urls`): a service whose broker node dies
//! connects to the next one and loses nothing. The "node" is a TCP proxy in
//! front of the local RabbitMQ that the test cuts — port and connections —
//! so the queues the collector finds on the next address are the same ones
//! (a cluster's quorum queues are, too).

mod support;

use std::time::{Duration, Instant};

use support::{Fleet, FleetOptions, ListAlarmsSteadily};
use switchyard_testkit::Proxy;

/// A service's environment for connecting through `node` first, then
/// directly to the local broker once `node` stays down `recovery_ms`.
fn through(node: &Proxy, recovery_ms: u64) -> Vec<(String, String)> {
    vec![
        (
            "SWITCHYARD_AMQP__URL".into(),
            format!("amqp://guest:guest@127.0.0.1:{}/%2f", node.port),
        ),
        (
            "SWITCHYARD_AMQP__FAILOVER_URLS".into(),
            "[\"amqp://guest:guest@127.0.0.1:5672/%2f\"]".into(),
        ),
        (
            "SWITCHYARD_AMQP__RECOVERY_TIMEOUT_MS".into(),
            recovery_ms.to_string(),
        ),
    ]
}

/// `amqp.failover_urls`: the collector's broker node dies (here: the
/// proxy it connects through is cut, connections and port), and once
/// `recovery_timeout_ms` has passed it connects to the next address,
/// declares its queues and consumers there and stores every sample the api
/// acknowledged meanwhile — without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_whose_broker_dies_fails_over_to_the_next_one() {
    let node = Proxy::start(([127, 0, 0, 1], 5672).into()).await;
    let mut fleet = Fleet::start(FleetOptions {
        collector_extra: through(&node, 2000),
        ..FleetOptions::default()
    })
    .await;
    // 4,000 samples: 200 batches of 20, one batch every 20 ms.
    let load = fleet.load("f", 200, 20, Duration::from_millis(20)).await;
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
/// UNAVAILABLE by the api — never a reset or refused connection, never the
/// caller's own timeout — and the api answers again from the next broker
/// without a restart: its gRPC server stays up while its messaging is
/// rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_of_an_api_whose_broker_dies_get_answers_or_unavailable_within_their_deadline() {
    let node = Proxy::start(([127, 0, 0, 1], 5672).into()).await;
    let mut fleet = Fleet::start(FleetOptions {
        api_extra: through(&node, 1000),
        ..FleetOptions::default()
    })
    .await;
    let callers = ListAlarmsSteadily::start(fleet.client().await, None, 4, Duration::from_secs(3));
    callers
        .wait_answered_after(Instant::now(), 20, Duration::from_secs(30))
        .await;
    let api_log = || {
        fleet
            .api
            .as_ref()
            .map(support::Service::log_text)
            .unwrap_or_default()
    };
    // The rollout page (on a port the kernel picked) answers before the cut…
    let page = api_log()
        .split("rollout page on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .map(str::to_string)
        .expect("the api logs its rollout page's address");
    assert!(
        support::http_get_text(&page, "/state")
            .await
            .starts_with("HTTP/1.1 200")
    );
    node.cut();
    let cut_at = Instant::now();
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
    // Answered again from the next broker.
    callers
        .wait_answered_after(reconnected, 20, Duration::from_secs(30))
        .await;
    // …and, bound once per process, at the same address after the rebuild.
    assert_eq!(
        api_log().matches("rollout page on").count(),
        1,
        "the rollout page was bound again"
    );
    assert!(
        support::http_get_text(&page, "/state")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let (calls, refused, reasons) = callers.finish(&[tonic::Code::Unavailable]).await;
    eprintln!(
        "{calls} calls, {refused} refused; back {:.1} s after the cut",
        (reconnected - cut_at).as_secs_f64()
    );
    assert!(
        reasons
            .iter()
            .any(|message| message.contains("reconnecting to its broker")),
        "no call reached the api while it rebuilt its messaging: {reasons:#?}"
    );
    let api = fleet.api.as_mut().expect("running");
    assert!(
        api.child.try_wait().expect("status").is_none(),
        "the api failed over without a restart"
    );
}
