//! The cluster deployment (`deploy/compose.cluster.yaml`, issue 20): three
//! RabbitMQ nodes with quorum queues, PostgreSQL, the api, the notifier and
//! the collector on two hosts, from the images `scripts/images` builds.
//! Skipped, with one line saying so, where no Docker engine answers.
//!
//! Fault scenario 1, under a steady stream of samples through the api: the
//! node that the api and the first collector host are connected to is
//! killed, then started again. Checked against PostgreSQL: every sample the
//! api acknowledged is stored, none twice; refused posts are retried by the
//! client (the api answered them with an error, none hung); no container
//! was restarted. Reports how long the collector host took to consume again
//! from another node.
//!
//! Fault scenario 4, during the same kill: callers of a method that needs
//! the broker (ListAlarms) get answers or UNAVAILABLE from the api within
//! their deadlines, none a reset connection, and answers again afterwards.
//!
//! Fault scenario 2: the second node is cut off from the others and from
//! the services (`docker network disconnect`) for 30 s under load, then
//! connected again: the collector host that used it consumes from another
//! node (two missed heartbeats, then `recovery_timeout_ms`), the node pauses
//! (`pause_minority`) and rejoins; every acknowledged sample stored once.
//! Callers of ListAlarms across the cut get answers or the api's own
//! UNAVAILABLE within their deadlines, and answers again within a minute
//! (the api lost that node too when it failed over to it in scenario 1).
//!
//! Fault scenario 3: one collector host killed under load; the other stores
//! everything acknowledged; started again, its workers consume beside the
//! other host's again.
//!
//! Through all of it, no service's runtime worker was held inside one poll.

mod support;

use std::time::{Duration, Instant};

use support::ListAlarmsSteadily;
use support::compose::{Project, engine_answers, inspect, leftovers};

const SERVICES: [&str; 8] = [
    "rabbit-1",
    "rabbit-2",
    "rabbit-3",
    "postgres",
    "collector-a",
    "collector-b",
    "notifier",
    "api",
];

/// What an Erlang expression evaluates to on broker `node`.
fn eval_on(project: &Project, node: &str, expression: &str) -> String {
    project.ok(
        &["exec", "-T", node, "rabbitmqctl", "-q", "eval", expression],
        Duration::from_secs(60),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_node_or_a_collector_host_killed_under_load_loses_nothing() {
    if !engine_answers("cluster") {
        return;
    }
    let api_port = support::free_port();
    let project = Project::new(
        "sycl",
        "deploy/compose.cluster.yaml",
        &format!("API_PORT={api_port}\n"),
        api_port,
    );
    let name = project.name.clone();

    let took = project.up_until_healthy(&[], &SERVICES, Duration::from_secs(600));
    eprintln!(
        "cluster: three nodes clustered and the fleet healthy in {:.1} s",
        took.as_secs_f64()
    );
    let running = eval_on(&project, "rabbit-2", "length(rabbit_nodes:all_running()).");
    assert_eq!(running.trim(), "3", "nodes running in the cluster");
    // The memory alarm follows the container's 512 MiB limit (40 % of it),
    // not the host's memory: otherwise the kernel kills a node before the
    // alarm ever blocks a publisher.
    let alarm_at = eval_on(
        &project,
        "rabbit-2",
        "vm_memory_monitor:get_memory_limit().",
    );
    assert_eq!(
        alarm_at.trim().parse::<u64>().ok(),
        Some(512 * 1024 * 1024 * 2 / 5),
        "rabbit-2's memory alarm (bytes), under a 512 MiB limit"
    );

    // 400 batches of 10, one every 20 ms: about 8 s of samples; and
    // callers of a method that needs the broker (scenario 4).
    let load = project.load("node", 400);
    let callers = ListAlarmsSteadily::start(
        project.client().await,
        Some(&project.token),
        2,
        Duration::from_secs(3),
    );
    project.wait_stored_at_least(500, Instant::now() + Duration::from_secs(120));
    let killed = Instant::now();
    project.ok(&["kill", "rabbit-1"], Duration::from_secs(60));
    let failed_over = loop {
        let log = project.ok(
            &["logs", "--no-color", "collector-a"],
            Duration::from_secs(60),
        );
        if log.contains("(broker 2 of 3") || log.contains("(broker 3 of 3") {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "collector-a never connected to another node:\n{}",
            log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    project.ok(&["start", "rabbit-1"], Duration::from_secs(60));
    let acknowledged = project.acknowledged(load).await;
    assert_eq!(
        acknowledged.len(),
        4_000,
        "every batch acknowledged in the end"
    );
    project.wait_stored(acknowledged.len());
    eprintln!(
        "cluster: rabbit-1 killed; collector-a consumed from another node after {:.1} s; \
         all 4,000 acknowledged samples stored once, {:.1} s after the kill",
        failed_over.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    // Scenario 4: the api lost its node too; its callers got answers or
    // UNAVAILABLE within their deadlines, and get answers again.
    callers
        .wait_answered_after(Instant::now(), 10, Duration::from_secs(60))
        .await;
    // A call in flight when the node died may wait out the api's own
    // deadline for the notifier's reply while lapin still tries the dead
    // node: the api says so (DEADLINE_EXCEEDED) before the caller's
    // deadline.
    let (calls, refused, reasons) = callers
        .finish(&[tonic::Code::Unavailable, tonic::Code::DeadlineExceeded])
        .await;
    eprintln!(
        "cluster: {calls} ListAlarms calls across the kill, {refused} refused by the api \
         ({}), none past its deadline",
        reasons.join("; ")
    );
    for service in ["collector-a", "collector-b", "notifier", "api"] {
        let container = project.container(service);
        assert_eq!(
            inspect(&container, "{{.RestartCount}}"),
            "0",
            "{service} was restarted"
        );
    }

    // Scenario 2: one node cut off from the others and from the services
    // for 30 s, under load; then connected again. The node is the one
    // collector-b's workers connected to last (scenario 1 may have moved
    // them).
    project.wait_healthy(&SERVICES, Duration::from_secs(180));
    let before = project.stored().1 as usize;
    let collector_b_log = || {
        project.ok(
            &["logs", "--no-color", "collector-b"],
            Duration::from_secs(60),
        )
    };
    let connections = |log: &str| log.matches("connected to RabbitMQ at").count();
    let log = collector_b_log();
    let node = log
        .lines()
        // The last: one container's log is in order.
        .rev()
        .filter_map(|line| line.split("connected to RabbitMQ at ").nth(1))
        .find_map(|rest| rest.split('@').nth(1)?.split(':').next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("collector-b never connected:\n{log}"));
    let connected_before = connections(&log);
    // 2,500 batches of 10 every 20 ms: about 50 s of samples.
    let load = project.load("partition", 2_500);
    let callers = ListAlarmsSteadily::start(
        project.client().await,
        Some(&project.token),
        2,
        Duration::from_secs(3),
    );
    project.wait_stored_at_least(before + 500, Instant::now() + Duration::from_secs(120));
    let network = format!("{name}_broker");
    let cut_off = project.container(&node);
    let cut = Instant::now();
    support::run_ok("docker", &["network", "disconnect", &network, &cut_off]);
    let failed_over = loop {
        if connections(&collector_b_log()) > connected_before {
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < Duration::from_secs(90),
            "collector-b never left the cut-off node {node}:\n{}",
            collector_b_log()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // The api answers again: it rebuilds on another node,
    // whose declarations of its new queues wait until the cluster declares
    // the cut-off node down (RABBITMQ_NET_TICKTIME in the cluster file).
    callers
        .wait_answered_after(cut + Duration::from_secs(1), 10, Duration::from_secs(60))
        .await;
    let answering = cut.elapsed();
    let remaining = Duration::from_secs(30).saturating_sub(cut.elapsed());
    tokio::time::sleep(remaining).await;
    support::run_ok(
        "docker",
        &["network", "connect", "--alias", &node, &network, &cut_off],
    );
    let acknowledged = project.acknowledged(load).await;
    assert_eq!(
        acknowledged.len(),
        25_000,
        "every batch acknowledged in the end"
    );
    project.wait_stored(before + acknowledged.len());
    let (calls, refused, reasons) = callers
        .finish(&[tonic::Code::Unavailable, tonic::Code::DeadlineExceeded])
        .await;
    eprintln!(
        "cluster: {node} cut off for 30 s; collector-b consumed from another node after {:.1} s; \
         the api answered ListAlarms again {:.1} s after the cut; all 25,000 acknowledged \
         samples stored once; {calls} ListAlarms calls across the cut, {refused} refused by \
         the api ({}), none past its deadline",
        failed_over.as_secs_f64(),
        answering.as_secs_f64(),
        reasons.join("; ")
    );
    // The node rejoins: all three run again.
    project.wait_healthy(&[node.as_str()], Duration::from_secs(180));

    // Scenario 3: one collector host killed under load; the other takes all
    // the work; started again, it consumes beside it again.
    project.wait_healthy(&SERVICES, Duration::from_secs(180));
    let before = project.stored().1 as usize;
    let load = project.load("host", 300);
    project.wait_stored_at_least(before + 300, killed + Duration::from_secs(600));
    let host_killed = Instant::now();
    project.ok(&["kill", "collector-a"], Duration::from_secs(60));
    let acknowledged = project.acknowledged(load).await;
    assert_eq!(acknowledged.len(), 3_000);
    project.wait_stored(before + acknowledged.len());
    eprintln!(
        "cluster: collector-a killed; collector-b stored all 3,000 samples of the load, {:.1} s after the kill",
        host_killed.elapsed().as_secs_f64()
    );
    project.ok(&["start", "collector-a"], Duration::from_secs(60));
    project.wait_healthy(&["collector-a"], Duration::from_secs(120));
    // Both hosts' workers consume the collector's queue again: 2 × 2.
    let queue = switchyard_messaging::wire::topic_queue(
        "switchyard",
        switchyard_proto::catalogue::topic::COLLECTOR,
    );
    let queue_consumers = || -> u64 {
        project
            .ok(
                &[
                    "exec",
                    "-T",
                    "rabbit-2",
                    "rabbitmqctl",
                    "-q",
                    "list_queues",
                    "name",
                    "consumers",
                ],
                Duration::from_secs(60),
            )
            .lines()
            .filter_map(|line| {
                let (name, consumers) = line.split_once('\t')?;
                (name.trim() == queue).then(|| consumers.trim().parse::<u64>().ok())?
            })
            .sum()
    };
    let wait = Instant::now();
    while queue_consumers() < 4 {
        assert!(
            wait.elapsed() < Duration::from_secs(120),
            "collector-a's workers never consumed again ({} consumers)",
            queue_consumers()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // No poll held a runtime worker through any of it.
    project.assert_no_worker_held();

    drop(project);
    assert_eq!(leftovers(&name), Vec::<String>::new(), "left behind");
}
