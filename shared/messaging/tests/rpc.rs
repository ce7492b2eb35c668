//! RPC over the real RabbitMQ: call, cast and fanout in every phase, many
//! concurrent calls matched to their replies, and each error a caller can tell apart.

mod support;

use std::time::{Duration, Instant};

use support::{BOUND, Rig, echo_on, executor, finish, recv, say, text};
use switchyard_executor::Phase;
use switchyard_messaging::{CallError, RpcClient, RpcServer, Target};
use switchyard_proto::echo::v1::{SayReply, SayRequest};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_cast_and_fanout_in_every_phase() {
    for phase in Phase::ALL {
        let rig = Rig::new().await;
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let mut servers = Vec::new();
        for server in ["s1", "s2"] {
            let executor = executor(phase, 4);
            let endpoint = executor
                .register(say(phase, seen_tx.clone()))
                .expect("phase runs say");
            servers.push(
                RpcServer::builder(rig.exchange(), "echo", server)
                    .method(endpoint)
                    .start(&rig.transport, 4, stop.clone())
                    .await
                    .expect("server starts"),
            );
        }
        let client = RpcClient::new(&rig.transport).await.expect("client");
        let target = Target::topic(rig.exchange(), "echo");

        let reply: SayReply = client
            .call(&target, "say", &text("hello"), BOUND)
            .await
            .expect("call");
        assert_eq!(
            (reply.text.as_str(), reply.phase.as_str()),
            ("hello", phase.as_str())
        );
        assert_eq!(recv(&mut seen).await, "hello");

        let only_s2 = Target::server(rig.exchange(), "echo", "s2");
        let reply: SayReply = client
            .call(&only_s2, "say", &text("to s2"), BOUND)
            .await
            .expect("server call");
        assert_eq!(reply.text, "to s2");
        assert_eq!(recv(&mut seen).await, "to s2");

        client
            .cast(&target, "say", &text("cast"))
            .await
            .expect("cast");
        assert_eq!(recv(&mut seen).await, "cast");

        client
            .fanout(&target, "say", &text("everyone"))
            .await
            .expect("fanout");
        assert_eq!(
            (recv(&mut seen).await, recv(&mut seen).await),
            ("everyone".into(), "everyone".into())
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(200), seen.recv())
                .await
                .is_err(),
            "{phase}: nothing runs twice"
        );

        stop.cancel();
        for server in servers {
            server.stopped().await;
        }
        rig.cleanup(&["echo"], &[]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_each_get_their_own_reply() {
    let (rig, echo, client, target) = echo_on(|_| {}, Phase::Async, 64).await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let (client, target) = (client.clone(), target.clone());
        calls.spawn(async move {
            let request = SayRequest {
                text: format!("call {i}"),
                wait_ms: i % 7,
            };
            let reply: SayReply = client
                .call(&target, "say", &request, BOUND)
                .await
                .expect("reply");
            assert_eq!(reply.text, format!("call {i}"), "reply matched to its call");
        });
    }
    while let Some(done) = calls.join_next().await {
        done.expect("call task");
    }
    assert_eq!(echo.executor.snapshot().totals.completed, 200);
    finish(rig, echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_is_a_distinct_error() {
    let (rig, echo, client, target) = echo_on(|_| {}, Phase::Bridged, 4).await;

    let missing = client
        .call::<_, SayReply>(&target, "shout", &text("x"), BOUND)
        .await;
    assert!(
        matches!(missing, Err(CallError::NoSuchMethod { ref message, ref served })
            if message.contains("shout") && served == &["say"]),
        "{missing:?}"
    );

    let invalid = client
        .call::<_, SayReply>(&target, "say", &text("invalid"), BOUND)
        .await;
    assert!(
        matches!(invalid, Err(CallError::InvalidArgument(ref m)) if m.contains("field `text`")),
        "{invalid:?}"
    );

    let slow = SayRequest {
        text: "slow".into(),
        wait_ms: 2000,
    };
    let started = Instant::now();
    let timeout = client
        .call::<_, SayReply>(&target, "say", &slow, Duration::from_millis(300))
        .await;
    assert!(matches!(timeout, Err(CallError::Timeout(_))), "{timeout:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    echo.stop().await;

    // The topic queue still exists, but nobody consumes it: fail fast.
    assert_nobody_takes(&client, &target, "anyone?").await;

    // A topic nobody ever declared: the broker returns the mandatory message.
    let never = Target::topic(rig.exchange(), "never-declared");
    assert_nobody_takes(&client, &never, "hello?").await;
    let cast = client.cast(&never, "say", &text("lost?")).await;
    assert!(
        matches!(cast, Err(CallError::NoConsumers { .. })),
        "a cast nobody can take is refused: {cast:?}"
    );

    rig.cleanup(&["echo"], &[]).await;
}

/// A call to `target` that no consumer can take fails with `NoConsumers`
/// within 3 s, not at its 30 s timeout.
async fn assert_nobody_takes(client: &RpcClient, target: &Target, said: &str) {
    let started = Instant::now();
    let result = client
        .call::<_, SayReply>(target, "say", &text(said), Duration::from_secs(30))
        .await;
    assert!(
        matches!(result, Err(CallError::NoConsumers { .. })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}
