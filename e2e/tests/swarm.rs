//! A fleet-wide phase move on the engine users already run (issue 20):
//! Docker's swarm mode replaces a service's tasks one at a time
//! (`docker service update`, parallelism 1, a monitor period,
//! `--update-failure-action rollback`), and Switchyard's fleet judge in the
//! api decides whether the engine rolls back: every task of the new phase is
//! judged against the tasks still in the old one, from heartbeats, and a
//! task whose verdict fails reports unhealthy through its healthcheck
//! (`switchyard health --verdict`).
//!
//! Two echo services of `deploy/swarm/stack.yaml` move from `threaded` to
//! `async` at once, under steady calls to every task:
//! - `echo` (calls fine in every phase): the move completes, task by task
//!   (the table shows both phases side by side on the way), no verdict fails;
//! - `echo-blocking` (calls hold their thread 15 ms: fine in `threaded`,
//!   blocking the loop in `async`): its first new task fails the judge on
//!   slow polls, the engine rolls the update back, every task runs
//!   `threaded` again; the verdict and its evidence were shown by
//!   `switchyard rollout` and logged by the api.
//!
//! Needs a Docker engine (skipped with one line where none answers) and the
//! images `scripts/images` builds. On a node not in a swarm, the test makes
//! it a single-node swarm and leaves the swarm when done; its stack is
//! removed either way.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::compose::{engine_answers, root};
use switchyard_proto::echo::v1::SayRequest;
use switchyard_proto::echo::v1::echo_client::EchoClient;
use switchyard_proto::metering::v1::metering_client::MeteringClient;
use switchyard_proto::metering::v1::{GetRolloutRequest, InstanceStatus};

/// Everything the test waits for is bounded by this (the healthy move
/// takes under a minute: two tasks, 15 s apart).
const BOUND: Duration = Duration::from_secs(300);

/// Runs docker with `args`; returns its stdout, or panics with its stderr.
fn docker(args: &[&str]) -> String {
    support::run_ok("docker", args).trim().to_string()
}

/// The test's stack; removed when dropped (with the swarm, when the test
/// made this node one).
/// The bridge network `docker swarm init` makes for its containers' traffic
/// to the outside.
const GATEWAY: &str = "docker_gwbridge";

struct Stack {
    name: String,
    made_swarm: bool,
    /// The swarm's gateway network (`docker_gwbridge`) was made for this
    /// test: leaving the swarm keeps it, so the test removes it.
    made_gateway: bool,
}

impl Stack {
    fn service(&self, service: &str) -> String {
        format!("{}_{service}", self.name)
    }

    /// `.UpdateStatus.State` of a service: empty before any update, then
    /// `updating`, `completed`, `rollback_started`, `rollback_completed`, …
    fn update_state(&self, service: &str) -> String {
        docker(&[
            "service",
            "inspect",
            "--format",
            "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
            &self.service(service),
        ])
    }

    /// `REPLICAS` of every service of the stack, e.g. `2/2`.
    fn replicas(&self) -> BTreeMap<String, String> {
        let label = format!("label=com.docker.stack.namespace={}", self.name);
        docker(&[
            "service",
            "ls",
            "--filter",
            &label,
            "--format",
            "{{.Name}} {{.Replicas}}",
        ])
        .lines()
        .filter_map(|line| {
            let (name, replicas) = line.split_once(' ')?;
            Some((name.to_string(), replicas.to_string()))
        })
        .collect()
    }

    /// The stack's services, containers and network still there (none once
    /// `docker stack rm` has finished).
    fn left_over(&self) -> Vec<String> {
        let label = format!("label=com.docker.stack.namespace={}", self.name);
        let mut left = Vec::new();
        for args in [
            ["service", "ls", "-q", "--filter", &label],
            ["container", "ls", "-aq", "--filter", &label],
            ["network", "ls", "-q", "--filter", &label],
        ] {
            if let Ok(output) = Command::new("docker").args(args).output() {
                left.extend(
                    String::from_utf8_lossy(&output.stdout)
                        .split_whitespace()
                        .map(|id| format!("{} {id}", args[0])),
                );
            }
        }
        left
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for service in ["api", "echo", "echo-blocking"] {
                let logs = Command::new("docker")
                    .args(["service", "logs", "--tail", "40", &self.service(service)])
                    .output();
                if let Ok(logs) = logs {
                    eprintln!(
                        "--- {service}:\n{}{}",
                        String::from_utf8_lossy(&logs.stdout),
                        String::from_utf8_lossy(&logs.stderr)
                    );
                }
            }
        }
        let _ = Command::new("docker")
            .args(["stack", "rm", &self.name])
            .output();
        // `stack rm` returns before its containers and network are gone.
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut left = self.left_over();
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            left = self.left_over();
        }
        if self.made_swarm {
            let _ = Command::new("docker")
                .args(["swarm", "leave", "--force"])
                .output();
        }
        if self.made_gateway {
            let _ = Command::new("docker")
                .args(["network", "rm", GATEWAY])
                .output();
        }
        if !left.is_empty() && !std::thread::panicking() {
            panic!("stack {} left behind: {left:?}", self.name);
        }
    }
}

/// The host ports of a swarm service's running task containers.
fn task_ports(service: &str) -> Vec<u16> {
    let label = format!("label=com.docker.swarm.service.name={service}");
    docker(&["ps", "--filter", &label, "--format", "{{.Ports}}"])
        .lines()
        .filter_map(|ports| {
            let (_, after) = ports.split_once("0.0.0.0:")?;
            after.split("->").next()?.parse().ok()
        })
        .collect()
}

/// Steady `Say` calls to every running task of the given services, each
/// task on its own published port: new tasks get callers as they appear,
/// callers of a gone task stop. Counts the calls answered.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(stack: &Stack, services: &[&str]) -> Self {
        let (stop, answered) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let services: Vec<String> = services.iter().map(|s| stack.service(s)).collect();
        let (stopping, counter) = (stop.clone(), answered.clone());
        let task = tokio::spawn(async move {
            let mut called = BTreeSet::new();
            while !stopping.load(Ordering::Relaxed) {
                let ports: Vec<u16> = services.iter().flat_map(|s| task_ports(s)).collect();
                for port in ports {
                    if called.insert(port) {
                        for _ in 0..4 {
                            tokio::spawn(call_steadily(port, stopping.clone(), counter.clone()));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Self {
            stop,
            answered,
            task,
        }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.answered.load(Ordering::Relaxed)
    }
}

/// Calls `Say` on `port` every few milliseconds until stopped or until the
/// task behind the port is gone (no answer for 10 s). Each connect and call
/// is bounded (5 s), as `rollout`'s is: a connection to a replaced task can
/// go silent without a reset.
async fn call_steadily(port: u16, stop: Arc<AtomicBool>, answered: Arc<AtomicU64>) {
    const CALL_BOUND: Duration = Duration::from_secs(5);
    let mut refused_since: Option<Instant> = None;
    let mut client = None;
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            let connecting = EchoClient::connect(format!("http://127.0.0.1:{port}"));
            client = tokio::time::timeout(CALL_BOUND, connecting)
                .await
                .ok()
                .and_then(Result::ok);
        }
        let outcome = match client.as_mut() {
            Some(client) => {
                let saying = client.say(SayRequest {
                    text: "swarm".into(),
                    wait_ms: 0,
                });
                matches!(tokio::time::timeout(CALL_BOUND, saying).await, Ok(Ok(_)))
            }
            None => false,
        };
        if outcome {
            answered.fetch_add(1, Ordering::Relaxed);
            refused_since = None;
        } else {
            client = None;
            if refused_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(10) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The api's rollout table; empty when the api does not answer within
/// 10 s. Bounded: a connection made to a task that the engine then
/// replaced (its first try at the broker failed while RabbitMQ started)
/// can go silent without a reset, and an unbounded call kept a CI run's
/// test waiting past its own bound (2026-12-05).
async fn rollout(api: &str) -> Vec<InstanceStatus> {
    let asked = async {
        let mut client = MeteringClient::connect(api.to_string()).await.ok()?;
        client
            .get_rollout(GetRolloutRequest {})
            .await
            .ok()
            .map(|r| r.into_inner().instances)
    };
    tokio::time::timeout(Duration::from_secs(10), asked)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn up<'a>(rows: &'a [InstanceStatus], service: &str) -> Vec<&'a InstanceStatus> {
    rows.iter()
        .filter(|i| i.service == service && i.up)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phase_move_completes_task_by_task_and_one_that_blocks_the_loop_is_rolled_back_by_the_engine()
 {
    if !engine_answers("swarm") {
        return;
    }
    let made_swarm = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]) == "inactive";
    let had_gateway = Command::new("docker")
        .args(["network", "inspect", GATEWAY])
        .output()
        .is_ok_and(|inspected| inspected.status.success());
    if made_swarm {
        docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    }
    let id = switchyard_messaging::wire::new_id();
    let stack = Stack {
        name: format!("sysw{}", &id[..id.len().min(10)]),
        made_swarm,
        made_gateway: made_swarm && !had_gateway,
    };
    let api_port = support::free_port();
    let api = format!("http://127.0.0.1:{api_port}");
    switchyard_testkit::succeeded(
        Command::new("docker")
            .current_dir(root().join("deploy/swarm"))
            .args(["stack", "deploy", "-c", "stack.yaml", &stack.name])
            .env("API_PORT", api_port.to_string())
            .env("FLEET_WINDOW_MS", "5000")
            .env("FLEET_WARMUP_MS", "2000")
            .env("FLEET_MIN_CALLS", "20")
            .env("SWARM_MONITOR", "20s")
            .env("SWARM_DELAY", "15s"),
        "docker stack deploy",
    );

    let started = Instant::now();
    let want = ["api", "echo", "echo-blocking", "rabbitmq"];
    loop {
        let replicas = stack.replicas();
        let ready = want.iter().all(|service| {
            replicas
                .get(&stack.service(service))
                .is_some_and(|r| r.split_once('/').is_some_and(|(a, b)| a == b && a != "0"))
        });
        let rows = rollout(&api).await;
        if ready && up(&rows, "echo").len() == 2 && up(&rows, "echo-blocking").len() == 2 {
            break;
        }
        assert!(
            started.elapsed() < BOUND,
            "the stack did not come up: {replicas:?}, table {rows:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "swarm: stack up, four echo tasks heard by the api, in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let load = Load::start(&stack, &["echo", "echo-blocking"]);
    for service in ["echo", "echo-blocking"] {
        docker(&[
            "service",
            "update",
            "--detach",
            "--env-add",
            "SWITCHYARD_EXECUTOR__PHASE=async",
            &stack.service(service),
        ]);
    }
    let moving = Instant::now();
    let mut mixed_echo = false;
    let mut echo_failed = None;
    let mut echo_passed = false;
    let mut most_blocking_async = 0;
    let mut blocking_failed: Option<InstanceStatus> = None;
    let mut shown = String::new();
    loop {
        let rows = rollout(&api).await;
        let echo = up(&rows, "echo");
        let phases: BTreeSet<&str> = echo.iter().map(|i| i.phase.as_str()).collect();
        mixed_echo |= phases.len() == 2;
        echo_passed |= echo
            .iter()
            .any(|i| i.phase == "async" && i.verdict == "pass");
        most_blocking_async = most_blocking_async.max(
            up(&rows, "echo-blocking")
                .iter()
                .filter(|i| i.phase == "async")
                .count(),
        );
        if let Some(failed) = echo.iter().find(|i| i.verdict == "fail") {
            echo_failed.get_or_insert_with(|| (*failed).clone());
        }
        if blocking_failed.is_none()
            && let Some(failed) = up(&rows, "echo-blocking")
                .into_iter()
                .find(|i| i.verdict == "fail")
        {
            blocking_failed = Some(failed.clone());
            let printed = support::switchyard(&api, &["rollout"]);
            shown = support::text(&printed);
        }
        let (echo_state, blocking_state) = (
            stack.update_state("echo"),
            stack.update_state("echo-blocking"),
        );
        let settled = echo.len() == 2
            && echo.iter().all(|i| i.phase == "async")
            && up(&rows, "echo-blocking").len() == 2
            && up(&rows, "echo-blocking")
                .iter()
                .all(|i| i.phase == "threaded");
        if echo_state == "completed" && blocking_state == "rollback_completed" && settled {
            break;
        }
        assert!(
            moving.elapsed() < BOUND,
            "the moves did not end as expected in {BOUND:?}: echo {echo_state:?}, \
             echo-blocking {blocking_state:?}, table {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let answered = load.stop().await;
    eprintln!(
        "swarm: echo moved to async and echo-blocking rolled back in {:.0} s ({answered} calls answered)",
        moving.elapsed().as_secs_f64()
    );

    assert!(
        mixed_echo,
        "echo never ran both phases at once: not task by task"
    );
    assert!(
        echo_failed.is_none(),
        "a healthy move failed: {echo_failed:?}"
    );
    assert!(
        echo_passed,
        "no task of the healthy move was judged and passed"
    );
    assert_eq!(
        most_blocking_async, 1,
        "the engine went on past echo-blocking's first task"
    );
    let failed = blocking_failed.expect("echo-blocking's new task was never failed by the judge");
    assert_eq!(failed.phase, "async");
    assert!(
        failed.verdict_evidence.contains("slow_polls")
            && failed.verdict_evidence.contains("instance(s) in threaded"),
        "evidence: {}",
        failed.verdict_evidence
    );
    assert!(
        shown.contains(&format!("echo-blocking {} on", failed.instance_id))
            && shown.contains("fail: worse on slow_polls"),
        "`switchyard rollout` did not show the verdict and its evidence:\n{shown}"
    );
    eprintln!("swarm: the verdict as `switchyard rollout` showed it:\n{shown}");
    let spec = docker(&[
        "service",
        "inspect",
        "--format",
        "{{json .Spec.TaskTemplate.ContainerSpec.Env}}",
        &stack.service("echo-blocking"),
    ]);
    assert!(
        spec.contains("SWITCHYARD_EXECUTOR__PHASE=threaded") && !spec.contains("=async"),
        "echo-blocking's spec after the rollback: {spec}"
    );
    let api_log = Command::new("docker")
        .args(["service", "logs", &stack.service("api")])
        .output()
        .expect("docker service logs");
    let api_log = String::from_utf8_lossy(&api_log.stdout).into_owned()
        + &String::from_utf8_lossy(&api_log.stderr);
    assert!(
        api_log.contains(&format!(
            "fleet judge: echo-blocking instance {}",
            failed.instance_id
        )),
        "the api did not log the failed verdict"
    );
}
