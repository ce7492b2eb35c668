//! A retry queue on a broker node that is down (docs/scale-out.md, "Retries
//! wait in the broker"). Retry queues are classic, so each lives on one
//! node: the node of the service that declared it. What RabbitMQ does when
//! that node dies decides whether a parked message can be lost:
//!
//! - a copy parked **while** the node is down must not be confirmed (the
//!   service acks the original once the copy is confirmed): RabbitMQ must
//!   refuse it (nack) or return it, so that the service waits the delay in
//!   its handler instead; declaring the queue again on another node must
//!   fail, not make an empty twin that would swallow later copies;
//! - a copy parked **before** the node died comes back to its queue once
//!   the node is up again (persistent, in a durable queue).
//!
//! Three nodes of `deploy/compose.cluster.yaml` (the images `scripts/images`
//! builds), in a compose project of the test's own; the queues are declared
//! with the same arguments the services use (`wire::retry_queue_arguments`).
//! Its own test binary, beside the cluster test: two clusters at once would
//! crowd a two-core machine. Skipped, with one line saying so, where no
//! Docker engine answers.

mod support;

use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::{BasicProperties, Channel, Confirmation};
use support::compose::{Project, engine_answers, inspect, leftovers, secret};
use switchyard_messaging::wire;

const NODES: [&str; 3] = ["rabbit-1", "rabbit-2", "rabbit-3"];

/// How long a parked message waits: longer than the kill and the publish
/// below take, so the copy parked before the kill is still waiting when its
/// node dies.
const DELAY: Duration = Duration::from_secs(20);

/// Bound on every wait for the broker.
const BOUND: Duration = Duration::from_secs(180);

/// `amqp://` for `node` of `project`, by its address on the broker network
/// (the host reaches a bridge network's containers directly).
fn url(project: &Project, node: &str, password: &str) -> String {
    let address = inspect(
        &project.container(node),
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
    );
    assert!(!address.is_empty(), "{node} has no address");
    format!("amqp://switchyard:{password}@{address}:5672/%2f")
}

/// Publishes `body` persistent and mandatory to `queue` through the default
/// exchange, as the services park a copy; what the broker answered.
async fn park(channel: &Channel, queue: &str, body: &[u8]) -> Confirmation {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("published");
    tokio::time::timeout(BOUND, confirm)
        .await
        .expect("the broker answered the publish")
        .expect("a confirmation")
}

/// `rabbitmqctl -q eval EXPRESSION` on `node`.
fn eval(project: &Project, node: &str, expression: &str) -> String {
    project
        .ok(
            &["exec", "-T", node, "rabbitmqctl", "-q", "eval", expression],
            Duration::from_secs(60),
        )
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_queue_whose_node_is_down_refuses_copies_and_keeps_what_it_held() {
    if !engine_answers("parked") {
        return;
    }
    let project = Project::new("sypk", "deploy/compose.cluster.yaml", "API_PORT=0\n", 0);
    let name = project.name.clone();
    let password = secret("rabbitmq_password");
    project.up_until_healthy(&NODES, &NODES, Duration::from_secs(600));
    let (first, second) = (
        url(&project, "rabbit-1", &password),
        url(&project, "rabbit-2", &password),
    );

    // The work queue is quorum (replicated); its retry queue is declared
    // from rabbit-2, so it lives there.
    let queue = format!("parked-{}", wire::new_id());
    let retry_queue = wire::retry_queue(&queue, DELAY);
    let retry_arguments = wire::retry_queue_arguments(&queue, DELAY, Duration::from_secs(600));
    let (_on_second, channel) = support::confirming_channel(&second).await;
    let quorum = wire::typed_queue_arguments(wire::rabbitmq::QUORUM);
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            quorum,
        )
        .await
        .expect("the work queue");
    channel
        .queue_declare(
            retry_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            retry_arguments.clone(),
        )
        .await
        .expect("the retry queue");
    let home = eval(
        &project,
        "rabbit-1",
        &format!(
            "{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<\"/\">>, queue, <<\"{retry_queue}\">>)), \
             node(amqqueue:get_pid(Q))."
        ),
    );
    assert_eq!(home, "'rabbit@rabbit-2'", "where the retry queue lives");
    assert!(
        matches!(
            park(&channel, &retry_queue, b"before").await,
            Confirmation::Ack(None)
        ),
        "a copy parked while its node is up is confirmed"
    );

    project.ok(&["kill", "rabbit-2"], Duration::from_secs(60));
    let killed = Instant::now();
    while eval(&project, "rabbit-1", "length(rabbit_nodes:all_running()).") != "2" {
        assert!(killed.elapsed() < BOUND, "rabbit-1 never saw rabbit-2 go");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_on_first, channel) = support::confirming_channel(&first).await;
    let during = park(&channel, &retry_queue, b"during").await;
    eprintln!("parked: a copy for a retry queue whose node is down: {during:?}");
    assert!(
        !matches!(during, Confirmation::Ack(None)),
        "a copy for a retry queue whose node is down was confirmed: the service \
         would ack the original and the message would be lost"
    );
    let redeclared = support::confirming_channel(&first)
        .await
        .1
        .queue_declare(
            retry_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            retry_arguments,
        )
        .await;
    eprintln!("parked: declaring it again from another node: {redeclared:?}");
    assert!(
        redeclared.is_err(),
        "a retry queue whose node is down was declared again elsewhere"
    );

    project.ok(&["start", "rabbit-2"], Duration::from_secs(60));
    let started = Instant::now();
    let mut back = Vec::new();
    // Once the first is back, two seconds more for a second one.
    let mut first_back: Option<Instant> = None;
    while first_back.is_none_or(|at| at.elapsed() < Duration::from_secs(2)) {
        if let Ok(Some(message)) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
        {
            back.push(String::from_utf8_lossy(&message.delivery.data).into_owned());
            first_back.get_or_insert_with(Instant::now);
        }
        assert!(
            started.elapsed() < BOUND,
            "the copy parked before rabbit-2 died never came back to `{queue}`"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "parked: back in the work queue {:.1} s after rabbit-2 was started: {back:?}",
        first_back.map_or(0.0, |at| at.duration_since(started).as_secs_f64())
    );
    assert_eq!(
        back,
        ["before"],
        "the parked copy once, the refused one not at all"
    );

    drop(project);
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
}
