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
use switchyard_messaging::{AmqpConfig, CallError, RpcClient, Target, Transport};

/// Closes, through rabbitmqctl, every connection whose name is `name`.
fn close_connection(name: &str) -> usize {
    let listed = rabbitmqctl(&[
        "list_connections",
        "--no-table-headers",
        "pid",
        "client_properties",
    ]);
    let mut closed = 0;
    for line in listed.lines().filter(|line| line.contains(name)) {
        let pid = line.split_whitespace().next().expect("pid column");
        rabbitmqctl(&["close_connection", pid, "switchyard recovery test"]);
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

/// A call waiting for its reply when its connection fails can never get
/// it: the broker drops direct replies to a channel that is gone, and a
/// recovered connection has new ones. The call fails with `ReplyLost` at
/// once, not at its timeout, whether the connection comes back (the broker
/// closed it; lapin recovers it) or is lost for good (the user it logged
/// in as was deleted: the broker closes it and refuses it back). And
/// whichever of the connection's clients made it: a service has several
/// (the api's own and its heartbeat's), and lapin hands each connection
/// event to one listener only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_connection_fails_while_waiting_fails_at_once_not_at_its_timeout() {
    let rig = Rig::new().await;
    let user = format!("sy-test-{}", rig.id);
    rabbitmqctl(&["add_user", &user, &rig.id]);
    let _removed = RemoveUser(user.clone());
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
    let clients = [
        RpcClient::new(&caller).await.expect("first client"),
        RpcClient::new(&caller).await.expect("second client"),
    ];
    let caller_name = format!("caller@{}", rig.id);
    let recovered = || assert_eq!(close_connection(&caller_name), 1, "the caller's connection");
    let deleted = || {
        rabbitmqctl(&["delete_user", &user]);
    };
    let failures: [(&str, &dyn Fn()); 2] = [
        ("closed, then recovered", &recovered),
        ("lost for good", &deleted),
    ];
    for (how, fail) in failures {
        let calls = clients.clone().map(|client| {
            let target = Target::topic(rig.exchange(), "echo");
            tokio::spawn(async move {
                let slow = switchyard_proto::echo::v1::SayRequest {
                    text: "slow".into(),
                    wait_ms: 5_000,
                };
                let outcome = client
                    .call::<_, switchyard_proto::echo::v1::SayReply>(
                        &target,
                        "say",
                        &slow,
                        Duration::from_secs(30),
                    )
                    .await;
                (outcome, Instant::now())
            })
        });
        // The server runs both calls: both callers are waiting for replies.
        let waiting = Instant::now();
        while echo.executor.snapshot().totals.in_flight < 2 {
            assert!(
                waiting.elapsed() < Duration::from_secs(10)
                    && !calls.iter().any(|c| c.is_finished()),
                "{how}: the server never got both calls"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // rabbitmqctl takes a second or more (an Erlang VM starts): a call
        // is judged from the moment the failure is done, not from its own
        // start.
        fail();
        let failed = Instant::now();
        for (which, call) in ["first", "second"].into_iter().zip(calls) {
            let (outcome, ended) = tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .unwrap_or_else(|_| panic!("{how}: the {which} client's call waited on"))
                .expect("join");
            let after = ended.saturating_duration_since(failed);
            assert!(
                matches!(outcome, Err(CallError::ReplyLost)) && after < Duration::from_secs(1),
                "{how}: the {which} client's call: {outcome:?} {after:?} after the failure (the server \
                 answers 5 s after the call, the call's timeout is 30 s)"
            );
        }
        // The server finishes the calls (their replies dropped) before the
        // next failure.
        let waiting = Instant::now();
        while echo.executor.snapshot().totals.in_flight > 0 {
            assert!(
                waiting.elapsed() < Duration::from_secs(15),
                "{how}: the calls never finished"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(caller.lost().is_cancelled());

    echo.stop().await;
    caller.close().await;
    rig.cleanup(&["echo"], &[]).await;
}

/// Deletes the broker user when the test ends, passed or failed (the test
/// deletes it itself on the way; then this finds nothing to do).
struct RemoveUser(String);

impl Drop for RemoveUser {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_user", &self.0])
            .output();
    }
}

/// `rabbitmqctl -q ARGS`, which must succeed; its output.
fn rabbitmqctl(args: &[&str]) -> String {
    let output = switchyard_testkit::succeeded(
        Command::new("rabbitmqctl").arg("-q").args(args),
        &format!("rabbitmqctl {args:?}"),
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A broker address nothing listens on is tried until `connect_timeout_ms`
/// (a broker restarting comes back within it), then fails naming the
/// address and why — not lapin's "no answer" with an I/O thread left
/// behind that panicked when the process stopped.
#[tokio::test]
async fn an_address_nothing_listens_on_fails_within_its_timeout_naming_it() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        listener.local_addr().expect("address").port()
    };
    let config = AmqpConfig {
        url: SecretUrl::new(format!("amqp://guest:secret-word@127.0.0.1:{port}/%2f")),
        connect_timeout_ms: 500,
        ..AmqpConfig::default()
    };
    let error = Transport::connect(&config, "test", "nothing-listens")
        .await
        .expect_err("nothing listens there");
    let mut shown = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(next) = cause {
        shown.push_str(&format!(": {next}"));
        cause = next.source();
    }
    assert!(
        shown.contains(&format!("127.0.0.1:{port}"))
            && shown.contains("nothing accepts connections")
            && shown.contains("refused")
            && !shown.contains("secret-word"),
        "{shown}"
    );
}

/// lapin recovers a connection by opening each channel again and declaring
/// on it what it declared before. When the broker refuses one of those
/// declarations — here another connection took the exclusive fanout queue
/// of an RPC server while its node was away (RESOURCE_LOCKED, as after a
/// partition) — it closes that channel, and lapin brings the connection
/// back without it. The server's consumers were on that channel: they must
/// not wait for its recovery for ever, taking no work behind a connection
/// that looks up. They end, saying why, and the transport is declared lost
/// (the service rebuilds its messaging on fresh queues).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_whose_channel_the_broker_refuses_to_recover_have_their_transport_declared_lost()
{
    let log = switchyard_testkit::Log::global();
    let rig = Rig::new().await;
    let node = switchyard_testkit::Proxy::start(([127, 0, 0, 1], 5672).into()).await;
    let config = AmqpConfig {
        url: SecretUrl::new(format!("amqp://guest:guest@127.0.0.1:{}/%2f", node.port)),
        ..rig.config.clone()
    };
    let transport = Transport::connect(&config, "replayed", &rig.id)
        .await
        .expect("connects through the proxy");
    let echo = EchoServer::start(&transport, rig.exchange(), Phase::Async, 4).await;
    let prefix = format!("{}.echo.fanout.s1.", rig.exchange());
    let fanout = rabbitmqctl(&["list_queues", "--no-table-headers", "name"])
        .lines()
        .map(str::trim)
        .find(|name| name.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no queue `{prefix}…`"))
        .to_string();

    node.cut();
    // The broker deletes the exclusive queue with its connection; another
    // connection takes the name.
    let exclusive = lapin::options::QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let started = Instant::now();
    let _taken = loop {
        let channel = rig.transport.channel().await.expect("channel");
        let declared = channel
            .queue_declare(
                fanout.as_str().into(),
                exclusive,
                lapin::types::FieldTable::default(),
            )
            .await;
        match declared {
            Ok(_) => break channel,
            Err(error) => {
                assert!(
                    started.elapsed() < support::BOUND,
                    "`{fanout}` never freed: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    node.restore().await;

    // Well before `amqp.recovery_timeout_ms` (15 s): the connection itself
    // is up, so its own watch would never declare it lost.
    let bound = Duration::from_millis(config.recovery_timeout_ms / 2);
    tokio::time::timeout(bound, transport.lost().cancelled())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{bound:?} after the node came back the transport is not lost \
                 (connected: {}); its server consumes nothing",
                transport.is_connected()
            )
        });
    let said = log
        .text()
        .lines()
        .filter(|line| line.contains(rig.exchange()) && line.contains("could not recover"))
        .map(str::to_string)
        .collect::<Vec<_>>();
    assert!(
        said.iter().any(|line| line.contains("RESOURCE_LOCKED")),
        "no consumer said why it ended: {said:#?}"
    );
    echo.stop().await;
    transport.close().await;
    rig.cleanup(&["echo"], &[]).await;
}
