//! At-least-once delivery on the real RabbitMQ: transient failures are
//! retried with a count and then dead-lettered; bad messages are
//! dead-lettered at once with their reason; the service keeps going.

mod support;

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use prost::Message;
use support::{EchoServer, Rig, echo_on, finish, recv, text};
use switchyard_executor::Phase;
use switchyard_messaging::{RpcClient, Target, wire};

/// The echo topic's queue, and its retry queue for the first delay.
fn echo_queues(rig: &Rig) -> (String, String) {
    let queue = wire::topic_queue(rig.exchange(), "echo");
    let first_delay = std::time::Duration::from_millis(rig.config.retry_delay_ms);
    let retry_queue = wire::retry_queue(&queue, first_delay);
    (queue, retry_queue)
}

/// Casts `say` with `text` to `target`, confirmed.
async fn cast(client: &RpcClient, target: &Target, said: &str) {
    client.cast(target, "say", &text(said)).await.expect("cast");
}

/// Casts a `flaky` message (it fails every time), sees both deliveries that
/// `max_deliveries = 2` allows, and takes it from the dead-letter queue of
/// `queue` with the reason that says so.
async fn flaky_until_dead(
    rig: &Rig,
    echo: &mut EchoServer,
    (client, target): (&RpcClient, &Target),
    queue: &str,
    round: &str,
) {
    cast(client, target, "flaky").await;
    for delivery in 1..=2 {
        let seen = recv(&mut echo.seen).await;
        assert_eq!(seen, "flaky", "{round}, delivery {delivery}");
    }
    let dead = rig.drain(&wire::dead_letter_queue(queue), 1).await;
    assert!(reason(&dead[0]).contains("gave up after 2 deliveries"));
}

fn reason(message: &lapin::message::BasicGetMessage) -> String {
    wire::header_str(&message.delivery.properties, wire::DEAD_LETTER_REASON)
        .unwrap_or("<no reason>")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_then_dead_lettered() {
    let (rig, mut echo, client, target) = echo_on(|_| {}, Phase::Async, 4).await;

    cast(&client, &target, "flaky").await;
    for delivery in 1..=3 {
        assert_eq!(recv(&mut echo.seen).await, "flaky", "delivery {delivery}");
    }
    let dead = rig
        .drain(
            &wire::dead_letter_queue(&wire::topic_queue(rig.exchange(), "echo")),
            1,
        )
        .await;
    let why = reason(&dead[0]);
    assert!(
        why.contains("database unavailable") && why.contains("gave up after 3 deliveries"),
        "{why}"
    );
    assert_eq!(
        wire::header_str(&dead[0].delivery.properties, wire::ORIGINAL_QUEUE),
        Some(wire::topic_queue(rig.exchange(), "echo").as_str())
    );

    cast(&client, &target, "fine").await;
    assert_eq!(
        recv(&mut echo.seen).await,
        "fine",
        "the service keeps going"
    );
    assert!(
        echo.seen.try_recv().is_err(),
        "the dead letter was not delivered a fourth time"
    );

    finish(rig, echo).await;
}

/// A message waiting for its retry waits in the broker (a retry queue that
/// dead-letters it back), not in a handler: with a single prefetch slot the
/// message behind it is handled at once, and the retry still comes after
/// its delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_waiting_for_its_retry_holds_no_prefetch_slot() {
    let (rig, mut echo, client, target) =
        echo_on(|config| config.retry_delay_ms = 3_000, Phase::Async, 1).await;

    cast(&client, &target, "flaky").await;
    assert_eq!(recv(&mut echo.seen).await, "flaky");
    let failed_at = std::time::Instant::now();
    cast(&client, &target, "fine").await;
    assert_eq!(recv(&mut echo.seen).await, "fine");
    assert!(
        failed_at.elapsed() < std::time::Duration::from_millis(2_000),
        "the message behind a retry waited {:?}",
        failed_at.elapsed()
    );
    assert_eq!(recv(&mut echo.seen).await, "flaky", "the retry came");
    assert!(
        failed_at.elapsed() >= std::time::Duration::from_millis(2_900),
        "retried after {:?}, not the 3 s delay",
        failed_at.elapsed()
    );

    finish(rig, echo).await;
}

/// A retry or dead-letter queue that is gone when a message is parked in
/// it — an operator deleted it, or RabbitMQ expired it — does not swallow
/// the message: the copy is published mandatory, comes back, and goes to the
/// queue declared again. (Before, it was dropped unroutable and the original
/// acked: an acknowledged message lost.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_parked_in_a_deleted_queue_is_not_lost() {
    use lapin::options::QueueDeleteOptions;
    let (rig, mut echo, client, target) =
        echo_on(|config| config.max_deliveries = 2, Phase::Async, 1).await;
    let (queue, retry_queue) = echo_queues(&rig);
    let dead_letters = wire::dead_letter_queue(&queue);
    let channel = rig.transport.channel().await.expect("channel");
    let delete = |name: String| {
        let channel = channel.clone();
        async move {
            channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await
                .expect("the queue existed and is deleted");
        }
    };

    // The first failure declares the retry queue of the first delay, and
    // the service keeps its name.
    for round in ["before", "after"] {
        flaky_until_dead(&rig, &mut echo, (&client, &target), &queue, round).await;
        delete(retry_queue.clone()).await;
    }

    delete(dead_letters.clone()).await;
    cast(&client, &target, "invalid").await;
    assert_eq!(recv(&mut echo.seen).await, "invalid");
    let dead = rig.drain(&dead_letters, 1).await;
    assert!(
        reason(&dead[0]).contains("invalid argument"),
        "{}",
        reason(&dead[0])
    );

    finish(rig, echo).await;
}

/// A retry queue that cannot be declared — here a quorum one left by an
/// earlier version, which RabbitMQ refuses to redeclare as classic — does
/// not stop retries: the handler waits the delay itself and puts the message
/// back on its queue. The refusal is remembered: the messages that retry
/// soon after wait in their handler without asking the broker again (as
/// while a retry queue's home node is down, `e2e/tests/parked.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_queue_that_cannot_be_declared_is_waited_out_in_the_handler() {
    use lapin::options::QueueDeclareOptions;
    switchyard_testkit::Log::global();
    let (rig, mut echo, client, target) =
        echo_on(|config| config.max_deliveries = 2, Phase::Async, 1).await;
    let (queue, retry_queue) = echo_queues(&rig);
    let quorum = wire::typed_queue_arguments(wire::rabbitmq::QUORUM);
    rig.transport
        .channel()
        .await
        .expect("channel")
        .queue_declare(
            retry_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            quorum,
        )
        .await
        .expect("an old-style retry queue");

    // The first message is refused its retry queue and dead-lettered after
    // its second delivery; two more follow, well within the memory.
    for round in ["message 1", "message 2", "message 3"] {
        flaky_until_dead(&rig, &mut echo, (&client, &target), &queue, round).await;
    }
    let parked_in_handler = logged_lines(&format!("could not park a message from `{queue}`"));
    let asked = parked_in_handler
        .iter()
        .filter(|line| line.contains(&format!("declaring queue `{retry_queue}`")))
        .count();
    let remembered = parked_in_handler
        .iter()
        .filter(|line| line.contains(&format!("refused to declare {retry_queue}")))
        .count();
    assert_eq!(
        (parked_in_handler.len(), asked, remembered),
        (3, 1, 2),
        "three retries waited in the handler, the broker asked once:\n{}",
        parked_in_handler.join("\n")
    );

    finish(rig, echo).await;
}

/// The lines logged so far that contain `needle`.
fn logged_lines(needle: &str) -> Vec<String> {
    switchyard_testkit::Log::global()
        .text()
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Quorum queues (the default) count deliveries themselves: a message
/// returned unacknowledged over and over — as one that kills every consumer
/// would be — is dead-lettered by RabbitMQ after its delivery limit, not
/// delivered for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_returned_past_the_delivery_limit_is_dead_lettered_by_the_broker() {
    use lapin::options::{BasicGetOptions, BasicNackOptions};
    let rig = Rig::new().await;
    assert_eq!(
        rig.config.queue_type,
        switchyard_messaging::QueueType::Quorum
    );
    // Declares the topic queue and its dead-letter queue, then leaves them.
    EchoServer::start(&rig.transport, rig.exchange(), Phase::Async, 1)
        .await
        .stop()
        .await;
    let queue = wire::topic_queue(rig.exchange(), "echo");
    let channel = rig.transport.channel().await.expect("channel");
    Rig::publish_to_queue(&channel, &queue, &text("poison").encode_to_vec()).await;
    let mut returned = 0;
    while let Some(message) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
    {
        returned += 1;
        assert!(returned <= 30, "still delivered after {returned} returns");
        message
            .delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .expect("returned");
    }
    assert!(returned > 5, "gone after {returned} returns");
    let dead = rig.drain(&wire::dead_letter_queue(&queue), 1).await;
    assert_eq!(
        wire::header_str(
            &dead[0].delivery.properties,
            wire::rabbitmq::FIRST_DEATH_REASON
        ),
        Some("delivery_limit"),
        "{:?}",
        dead[0].delivery.properties.headers()
    );
    assert!(returned <= 21, "returned {returned} times, limit 20");

    rig.cleanup(&["echo"], &[]).await;
}

/// The migration path: a topic queue an earlier version made classic stays
/// in use when the configuration says quorum — a warning, no
/// `PRECONDITION_FAILED` stopping the service at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_queue_left_by_an_earlier_version_is_used_as_it_is() {
    use lapin::options::QueueDeclareOptions;
    let rig = Rig::new().await;
    let queue = wire::topic_queue(rig.exchange(), "echo");
    let channel = rig.transport.channel().await.expect("channel");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .expect("a classic queue");
    let mut echo = EchoServer::start(&rig.transport, rig.exchange(), Phase::Async, 2).await;
    let client = RpcClient::new(&rig.transport).await.expect("client");
    client
        .cast(
            &Target::topic(rig.exchange(), "echo"),
            "say",
            &text("still served"),
        )
        .await
        .expect("cast");
    assert_eq!(recv(&mut echo.seen).await, "still served");

    finish(rig, echo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_dead_lettered_with_their_reason() {
    let rig = Rig::with(|config| config.max_body_bytes = 1024).await;
    let mut echo = EchoServer::start(&rig.transport, rig.exchange(), Phase::Threaded, 2).await;

    let raw = rig.transport.channel().await.expect("channel");
    let publish = |method: Option<&str>, content_type: &str, body: Vec<u8>| {
        let raw = raw.clone();
        let exchange = rig.exchange().to_string();
        let method = method.map(str::to_string);
        let content_type = content_type.to_string();
        async move {
            let mut headers = FieldTable::default();
            if let Some(method) = method {
                wire::set_str(&mut headers, wire::METHOD, &method);
            }
            let properties = BasicProperties::default()
                .with_content_type(content_type.as_str().into())
                .with_headers(headers);
            raw.basic_publish(
                exchange.as_str().into(),
                "echo".into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        }
    };
    publish(
        Some("say"),
        wire::CONTENT_TYPE,
        vec![0xff, 0xff, 0xff, 0x01],
    )
    .await;
    let truncated = text("a message cut short").encode_to_vec();
    publish(
        Some("say"),
        wire::CONTENT_TYPE,
        truncated[..truncated.len() - 3].to_vec(),
    )
    .await;
    publish(Some("shout"), wire::CONTENT_TYPE, text("x").encode_to_vec()).await;
    publish(None, wire::CONTENT_TYPE, text("x").encode_to_vec()).await;
    publish(
        Some("say"),
        "application/json",
        b"{\"text\":\"x\"}".to_vec(),
    )
    .await;
    publish(
        Some("say"),
        wire::CONTENT_TYPE,
        text(&"x".repeat(2000)).encode_to_vec(),
    )
    .await;
    publish(
        Some("say"),
        wire::CONTENT_TYPE,
        text("after").encode_to_vec(),
    )
    .await;

    assert_eq!(
        recv(&mut echo.seen).await,
        "after",
        "the next good message is processed"
    );
    let dead = rig
        .drain(
            &wire::dead_letter_queue(&wire::topic_queue(rig.exchange(), "echo")),
            6,
        )
        .await;
    let mut reasons: Vec<String> = dead.iter().map(reason).collect();
    reasons.sort();
    for expected in [
        "undecodable body",
        "no such method `shout`",
        "missing header x-switchyard-method",
        "content type `application/json` is not application/x-protobuf",
        "exceeds amqp.max_body_bytes (1024)",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no reason containing {expected:?} in {reasons:#?}"
        );
    }
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("undecodable body"))
            .count(),
        2,
        "{reasons:#?}"
    );
    assert!(
        echo.seen.try_recv().is_err(),
        "no bad message reached the endpoint"
    );

    finish(rig, echo).await;
}
