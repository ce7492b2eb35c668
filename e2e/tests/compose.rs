//! The fleet under docker compose for real (issue 13, part 3): the images
//! `scripts/images` builds from Debian's packages, `deploy/compose.yaml` with
//! `deploy/compose.offline.yaml`, a compose project of its own on host ports
//! of its own, and everything removed afterwards (also when a step fails).
//! Where no Docker engine answers, it says so in one line and passes; in CI
//! the engine runs and `scripts/test` has built the images first.
//!
//! One test, the steps in order, each bounded in time and timed:
//! up and healthy → 1,000 samples stored exactly once → one trace across the
//! three containers → `scripts/switch-phase collector async` under load →
//! `docker kill` of the collector under load → RabbitMQ restarted under load
//! → the playbook's canary under compose → no service's runtime worker held
//! inside one poll → `down -v` leaves nothing.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::compose::{Project, engine_answers, http_get, inspect, leftovers, root};

const SERVICES: [&str; 6] = [
    "rabbitmq",
    "postgres",
    "jaeger",
    "collector",
    "notifier",
    "api",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_under_docker_compose() {
    if !engine_answers("compose") {
        return;
    }
    for image in [
        "switchyard/rabbitmq:dev",
        "switchyard/postgres:dev",
        "switchyard:offline",
    ] {
        let present = Command::new("docker")
            .args(["image", "inspect", image])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            present,
            "image {image} is missing: run scripts/images (scripts/test does)"
        );
    }
    let api_port = support::free_port();
    let page_port = support::free_port();
    let mut project = Project::new(
        "sye2e",
        "deploy/compose.yaml:deploy/compose.offline.yaml",
        &format!(
            "API_PORT={api_port}\nJAEGER_UI_PORT={}\nDASHBOARD_PORT={page_port}\nCOLLECTOR_PHASE=threaded\nNOTIFIER_PHASE=bridged\nAPI_PHASE=async\n",
            support::free_port()
        ),
        api_port,
    );
    let (name, token) = (project.name.clone(), project.token.clone());
    // The playbook's way to a canary under compose: the collector's
    // configuration file has `[launcher]`, and a SIGHUP applies a changed
    // file. The test mounts a file of its own over deploy/config/collector.toml.
    let base_config =
        std::fs::read_to_string(root().join("deploy/config/collector.toml")).expect("config");
    let collector_config = std::env::temp_dir().join(format!("{name}-collector.toml"));
    std::fs::write(
        &collector_config,
        format!("{base_config}\n[launcher]\nworkers = 2\n"),
    )
    .expect("collector config");
    let override_file = std::env::temp_dir().join(format!("{name}-override.yaml"));
    std::fs::write(
        &override_file,
        format!(
            "services:\n  collector:\n    volumes:\n      - {}:/etc/switchyard/collector.toml:ro\n",
            collector_config.display()
        ),
    )
    .expect("override");
    project.files = format!("{}:{}", project.files, override_file.display());
    project.scratch = vec![collector_config.clone(), override_file];

    // 1. Up, every healthcheck healthy.
    let started = Instant::now();
    let took = project.up_until_healthy(&[], &SERVICES, Duration::from_secs(300));
    eprintln!(
        "compose: fleet up and healthy in {:.1} s",
        took.as_secs_f64()
    );

    // 2. 1,000 samples through the published port with the token: stored once each.
    let step = Instant::now();
    let first = project.acknowledged(project.load("first", 100)).await;
    assert_eq!(first.len(), 1000);
    project.wait_stored(1000);
    eprintln!(
        "compose: 1,000 samples acknowledged and stored once in {:.1} s",
        step.elapsed().as_secs_f64()
    );
    let mut expected = 1000;

    // The rollout page, published on 127.0.0.1 but bound to the container's
    // network: it asks for the api's token, and shows the fleet with it.
    let page = |headers: &str| http_get(page_port, "/state", headers);
    let refused = page("");
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(!refused.contains(&token), "{refused}");
    let shown = page(&format!("authorization: Bearer {token}\r\n"));
    assert!(shown.starts_with("HTTP/1.1 200"), "{shown}");
    for service in ["\"api\"", "\"collector\"", "\"notifier\""] {
        assert!(shown.contains(service), "{service} missing: {shown}");
    }

    // 3. One trace across the three containers, each span with service and phase.
    let step = Instant::now();
    loop {
        let log = project.ok(&["logs", "--no-color", "jaeger"], Duration::from_secs(30));
        let crossing = log.split("trace ").any(|trace| {
            trace.contains("[api · async]")
                && trace.contains("[collector · threaded]")
                && trace.contains("[notifier · bridged]")
        });
        if crossing {
            break;
        }
        assert!(
            step.elapsed() < Duration::from_secs(60),
            "no trace crossed the three containers:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // An alarm fires its webhook: the receiver listens on the gateway of the
    // project's own network, where the notifier's container reaches the host.
    let step = Instant::now();
    let gateway = Command::new("docker")
        .args([
            "network",
            "inspect",
            &format!("{name}_default"),
            "--format",
            "{{(index .IPAM.Config 0).Gateway}}",
        ])
        .output()
        .expect("docker network inspect");
    let gateway = String::from_utf8_lossy(&gateway.stdout).trim().to_string();
    let webhook = support::Webhook::on(&gateway, 0, "200 OK").await;
    let mut alarms = switchyard_proto::metering::v1::metering_client::MeteringClient::connect(
        format!("http://127.0.0.1:{api_port}"),
    )
    .await
    .expect("api");
    let mut request = tonic::Request::new(switchyard_proto::metering::v1::CreateAlarmRequest {
        alarm: Some(support::hot_alarm(webhook.url.clone())),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    alarms.create_alarm(request).await.expect("alarm created");
    let fired = project.acknowledged(project.load("alarm", 1)).await;
    expected += fired.len();
    while webhook.received().is_empty() {
        assert!(
            step.elapsed() < Duration::from_secs(60),
            "the alarm's webhook on {gateway} was never called"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "compose: an alarm fired its webhook in {:.1} s",
        step.elapsed().as_secs_f64()
    );

    // 4. scripts/switch-phase collector async in compose mode, under load.
    let step = Instant::now();
    let load = project.load("switch", 150);
    let switched = Command::new(root().join("scripts/switch-phase"))
        .current_dir(root())
        .args(["collector", "async"])
        .env("COMPOSE_PROJECT_NAME", &name)
        .env("COMPOSE_FILE", &project.files)
        .env("SWITCH_PHASE_ENV_FILE", &project.env_file)
        .output()
        .expect("switch-phase runs");
    let table = String::from_utf8_lossy(&switched.stdout).into_owned();
    assert!(
        switched.status.success(),
        "switch-phase failed: {table}{}",
        String::from_utf8_lossy(&switched.stderr)
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("collector ") && l.contains(" async ") && l.contains(" up ")),
        "the rollout table shows the collector in async:\n{table}"
    );
    let acknowledged = project.all_stored(load, &mut expected).await;
    eprintln!(
        "compose: collector switched to async under load in {:.1} s, {} samples, none lost or duplicated",
        step.elapsed().as_secs_f64(),
        acknowledged
    );

    // 5. The collector's process killed mid-stream (SIGKILL from the host, as
    //    a crash or the OOM killer would): its restart policy brings it back.
    //    (`docker kill` itself counts as an operator's stop, which Docker's
    //    restart policies leave alone: `docker start` or `up -d` then.)
    let step = Instant::now();
    let load = project.load("kill", 150);
    // Mid-stream: once some of this load is stored.
    project.wait_stored_at_least(expected + 10, Instant::now() + Duration::from_secs(60));
    let collector = project.container("collector");
    let pid = inspect(&collector, "{{.State.Pid}}");
    let killed = Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .expect("kill");
    assert!(killed.success(), "kill -KILL {pid}");
    let acknowledged = project.acknowledged(load).await;
    expected += acknowledged.len();
    project.wait_healthy(&["collector"], Duration::from_secs(120));
    assert_eq!(
        inspect(&collector, "{{.RestartCount}}"),
        "1",
        "restarted by its policy"
    );
    project.wait_stored(expected);
    eprintln!(
        "compose: collector killed under load, restarted by compose; {} samples in {:.1} s, none lost or duplicated",
        acknowledged.len(),
        step.elapsed().as_secs_f64()
    );

    // 6. RabbitMQ's container restarted under load.
    let step = Instant::now();
    let load = project.load("broker", 200);
    project.wait_stored_at_least(expected + 10, Instant::now() + Duration::from_secs(60));
    project.ok(&["restart", "rabbitmq"], Duration::from_secs(120));
    let acknowledged = project.all_stored(load, &mut expected).await;
    // Every service back to healthy before the next step starts new workers.
    project.wait_healthy(&SERVICES, Duration::from_secs(120));
    eprintln!(
        "compose: RabbitMQ restarted under load; {} samples in {:.1} s, none lost or duplicated",
        acknowledged,
        step.elapsed().as_secs_f64()
    );

    // 7. The playbook's canary under compose: add [launcher.canary] to the
    //    file, SIGHUP the service, watch the verdict, promote with the CLI.
    let step = Instant::now();
    let base_config = std::fs::read_to_string(&collector_config).expect("config");
    // Written in place: the bind mount follows the file's inode.
    std::fs::write(
        &collector_config,
        format!(
            "{base_config}\n[launcher.canary]\nphase = \"bridged\"\nworkers = 1\nwindow_ms = 5000\nmin_calls = 20\n"
        ),
    )
    .expect("canary config");
    let load = project.load("canary", 1500);
    project.ok(&["kill", "-s", "HUP", "collector"], Duration::from_secs(30));
    loop {
        let log = project.ok(
            &["logs", "--no-color", "collector"],
            Duration::from_secs(30),
        );
        if log.contains("canary bridged passed") {
            break;
        }
        assert!(
            !log.contains("rolled back"),
            "the healthy canary was rolled back:\n{log}"
        );
        assert!(
            step.elapsed() < Duration::from_secs(90),
            "no verdict on the canary:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let judged = step.elapsed();
    let promoted = project.ok(
        &[
            "exec",
            "-T",
            "api",
            "switchyard",
            "--token",
            &token,
            "rollout",
            "promote",
            "collector",
            "--wait-s",
            "90",
        ],
        Duration::from_secs(120),
    );
    assert!(
        promoted.contains("every up worker runs bridged"),
        "{promoted}"
    );
    let acknowledged = project.all_stored(load, &mut expected).await;
    eprintln!(
        "compose: SIGHUP canary passed after {:.1} s, promoted; {} samples across it, none lost or duplicated",
        judged.as_secs_f64(),
        acknowledged
    );

    // 8. No poll held a runtime worker through any of it.
    project.assert_no_worker_held();

    // 9. down -v leaves nothing of the project behind.
    drop(project);
    let left = leftovers(&name);
    assert!(left.is_empty(), "left behind: {left:?}");
    eprintln!(
        "compose: whole suite {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
