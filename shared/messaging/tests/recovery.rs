//! The broker closes the connections of a publisher and a consumer in the
//! middle of a stream: both recover without a restart and every message is
//! delivered at least once.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{EchoServer, Rig, text};
use switchyard_config::SecretUrl;
use switchyard_executor::Phase;
use switchyard_messaging::{AmqpConfig, CallError, RpcClient, Target, Transport, wire};

/// Closes, through rabbitmqctl, every connection whose name is `name`.
fn close_connection(name: &str) -> usize {
    let output = Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_connections",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let listed = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut closed = 0;
    for line in listed.lines().filter(|line| line.contains(name)) {
        let pid = line.split_whitespace().next().expect("pid column");
        let closing = Command::new("rabbitmqctl")
            .args(["-q", "close_connection", pid, "switchyard recovery test"])
            .output()
            .expect("rabbitmqctl runs");
        assert!(
            closing.status.success(),
            "closing {pid}: {}",
            String::from_utf8_lossy(&closing.stderr)
        );
        closed += 1;
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_and_consumer_recover_and_nothing_is_lost() {
    let rig = Rig::new().await;
    let consumer_transport = Transport::connect(&rig.config, "consumer", &rig.id)
        .await
        .expect("consumer connects");
    let publisher_transport = Transport::connect(&rig.config, "publisher", &rig.id)
        .await
        .expect("publisher connects");
    let mut echo = EchoServer::start(&consumer_transport, rig.exchange(), Phase::Async, 16).await;
    let client = RpcClient::new(&publisher_transport).await.expect("client");
    let target = Target::topic(rig.exchange(), "echo");

    const N: usize = 300;
    let publisher = tokio::spawn(async move {
        let mut retried = 0;
        for i in 0..N {
            let started = Instant::now();
            // The caller retries what was not confirmed: at least once.
            while let Err(error) = client.cast(&target, "say", &text(&format!("m{i}"))).await {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "m{i} never confirmed: {error}"
                );
                retried += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        retried
    });

    let mut received = BTreeSet::new();
    let mut deliveries = 0;
    let mut closed = false;
    let deadline = Instant::now() + Duration::from_secs(90);
    while received.len() < N {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let text = tokio::time::timeout(remaining, echo.seen.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {N} messages arrived", received.len()))
            .expect("open");
        deliveries += 1;
        received.insert(text);
        if !closed && received.len() == N / 3 {
            let consumer_name = format!("consumer@{}", rig.id);
            let publisher_name = format!("publisher@{}", rig.id);
            let closed_now = tokio::task::spawn_blocking(move || {
                close_connection(&consumer_name) + close_connection(&publisher_name)
            })
            .await
            .expect("join");
            assert_eq!(closed_now, 2, "both connections were found and closed");
            closed = true;
        }
    }
    let retried = publisher.await.expect("publisher finished");
    assert!(closed);
    assert_eq!(received.len(), N, "every message arrived at least once");
    eprintln!("{N} messages, {deliveries} deliveries, {retried} publishes retried by the caller");

    echo.stop().await;
    consumer_transport.close().await;
    publisher_transport.close().await;
    rig.cleanup(&["echo"], &[]).await;
}

/// A call waiting for its reply when its connection is lost for good can
/// never get it (direct replies belong to the connection that sent the
/// call): it fails with `ReplyLost` as soon as the connection is given up,
/// not at its timeout. The connection is lost for good by deleting the
/// broker user it logged in as: the broker closes it and refuses to let
/// it back in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_connection_is_lost_for_good_fails_at_once_not_at_its_timeout() {
    let rig = Rig::new().await;
    let user = format!("sy-test-{}", rig.id);
    rabbitmqctl(&["add_user", &user, &rig.id]);
    rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]);
    let config = AmqpConfig {
        url: SecretUrl::new(format!("amqp://{user}:{}@127.0.0.1:5672/%2f", rig.id)),
        recovery_timeout_ms: 500,
        ..rig.config.clone()
    };
    let caller = Transport::connect(&config, "caller", &rig.id)
        .await
        .expect("caller connects");
    let echo = EchoServer::start(&rig.transport, rig.exchange(), Phase::Async, 4).await;
    let client = RpcClient::new(&caller).await.expect("client");
    let target = Target::topic(rig.exchange(), "echo");
    let slow = switchyard_proto::echo::v1::SayRequest {
        text: "slow".into(),
        wait_ms: 6_000,
    };
    let call = tokio::spawn(async move {
        let started = Instant::now();
        let outcome = client
            .call::<_, switchyard_proto::echo::v1::SayReply>(
                &target,
                "say",
                &slow,
                Duration::from_secs(30),
            )
            .await;
        (outcome, started.elapsed())
    });
    // The server has the call (it is delivered, not yet acknowledged):
    // the caller is waiting for the reply.
    let queue = wire::topic_queue(rig.exchange(), "echo");
    let waiting = Instant::now();
    while unacknowledged(&queue) < 1 {
        assert!(
            waiting.elapsed() < Duration::from_secs(10) && !call.is_finished(),
            "the server never got the call"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rabbitmqctl(&["delete_user", &user]);
    let (outcome, took) = tokio::time::timeout(Duration::from_secs(4), call)
        .await
        .expect("the call ended long before its reply or its timeout")
        .expect("join");
    assert!(
        matches!(outcome, Err(CallError::ReplyLost)),
        "{outcome:?} after {took:?}"
    );
    assert!(caller.lost().is_cancelled());

    echo.stop().await;
    caller.close().await;
    rig.cleanup(&["echo"], &[]).await;
}

/// Messages delivered from `queue` and not yet acknowledged.
fn unacknowledged(queue: &str) -> u64 {
    let output = Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "--no-table-headers",
            "name",
            "messages_unacknowledged",
        ])
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(name, _)| name.trim() == queue)
        .and_then(|(_, count)| count.trim().parse().ok())
        .unwrap_or(0)
}

fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
