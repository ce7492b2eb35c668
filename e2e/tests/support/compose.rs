//! A compose project of a test's own, on the images `scripts/images`
//! builds: up, health, the samples table from inside the database
//! container, a steady load through the api, and `down -v` when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The workspace root (compose files are given relative to it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A compose project of the test's own; `down -v` when dropped.
pub struct Project {
    /// `COMPOSE_PROJECT_NAME`: unique per test run.
    pub name: String,
    /// `COMPOSE_FILE`: the deploy files and the test's overrides, `:`-separated.
    pub files: String,
    /// The `--env-file` (ports, phases).
    pub env_file: PathBuf,
    /// Files the test wrote for the project, removed with it.
    pub scratch: Vec<PathBuf>,
    /// The api's published port on 127.0.0.1.
    pub api_port: u16,
    /// A token the api accepts.
    pub token: String,
}

/// A deployment secret that `scripts/secrets` made (`deploy/secrets/NAME`).
pub fn secret(name: &str) -> String {
    std::fs::read_to_string(root().join("deploy/secrets").join(name))
        .unwrap_or_else(|error| {
            panic!(
                "deploy/secrets/{name} ({error}; scripts/secrets makes it, scripts/test runs it)"
            )
        })
        .trim()
        .to_string()
}

impl Project {
    /// A project of deploy files `files` (`:`-separated) named `prefix` and
    /// a unique id, with an env file of `env` lines, the api published on
    /// `api_port` and the deployment's api token. Nothing is started.
    pub fn new(prefix: &str, files: &str, env: &str, api_port: u16) -> Self {
        // Read first: a missing secret then leaves no env file behind.
        let token = secret("api_token");
        let id = switchyard_messaging::wire::new_id();
        let name = format!("{prefix}{}", &id[..id.len().min(12)]);
        let env_file = std::env::temp_dir().join(format!("{name}.env"));
        std::fs::write(&env_file, env).expect("env file");
        Self {
            name,
            files: files.into(),
            env_file,
            scratch: Vec::new(),
            api_port,
            token,
        }
    }

    /// Runs `docker-compose ARGS` for this project; panics when it cannot be
    /// run or takes longer than `bound` (see [`Project::try_compose`]).
    pub fn compose(&self, args: &[&str], bound: Duration) -> Output {
        self.try_compose(args, bound)
            .unwrap_or_else(|error| panic!("docker-compose {args:?}: {error}"))
    }

    /// [`Project::compose`] without the panic, for a test that is unwinding
    /// or cleaning up: a second panic in `drop` would abort the test binary
    /// before `down`, and leave the project's containers behind. A run longer
    /// than `bound` is killed and reported as [`std::io::ErrorKind::TimedOut`].
    pub fn try_compose(&self, args: &[&str], bound: Duration) -> std::io::Result<Output> {
        let child = Command::new("docker-compose")
            .current_dir(root())
            .env("COMPOSE_PROJECT_NAME", &self.name)
            .env("COMPOSE_FILE", &self.files)
            .arg("--env-file")
            .arg(&self.env_file)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        // Read the output while it runs: a log larger than the pipe would
        // otherwise block docker-compose for ever.
        let pid = child.id();
        let (done, output) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(child.wait_with_output());
        });
        output.recv_timeout(bound).unwrap_or_else(|_| {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("took more than {bound:?} and was killed"),
            ))
        })
    }

    pub fn ok(&self, args: &[&str], bound: Duration) -> String {
        let output = self.compose(args, bound);
        assert!(
            output.status.success(),
            "docker-compose {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn container(&self, service: &str) -> String {
        self.ok(&["ps", "-q", service], Duration::from_secs(30))
            .trim()
            .to_string()
    }

    pub fn health(&self, service: &str) -> String {
        let id = self.container(service);
        if id.is_empty() {
            return "absent".into();
        }
        inspect(&id, "{{.State.Health.Status}}")
    }

    /// `docker-compose up -d` of `only` (every service when empty), then
    /// waits until `healthy` are; each within `bound`. How long both took.
    pub fn up_until_healthy(&self, only: &[&str], healthy: &[&str], bound: Duration) -> Duration {
        let started = Instant::now();
        self.ok(&[&["up", "-d"], only].concat(), bound);
        self.wait_healthy(healthy, bound);
        started.elapsed()
    }

    pub fn wait_healthy(&self, services: &[&str], bound: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let states: Vec<String> = services.iter().map(|s| self.health(s)).collect();
            if states.iter().all(|s| s == "healthy") {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < bound,
                "not healthy after {bound:?}: {services:?} = {states:?}\n{}",
                self.ok(&["logs", "--tail", "20"], Duration::from_secs(30))
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `(rows, distinct ids)` in the samples table, from inside the database container.
    pub fn stored(&self) -> (u64, u64) {
        let text = self.ok(
            &[
                "exec",
                "-T",
                "postgres",
                "psql",
                "-U",
                "switchyard",
                "-d",
                "switchyard",
                "-tAc",
                "SELECT COUNT(*), COUNT(DISTINCT id) FROM samples",
            ],
            Duration::from_secs(30),
        );
        let mut parts = text.trim().split('|').map(|n| n.parse().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }

    /// Waits until at least `count` distinct samples are stored (the load
    /// is under way), failing at `deadline`.
    pub fn wait_stored_at_least(&self, count: usize, deadline: Instant) {
        loop {
            let (_, distinct) = self.stored();
            if distinct as usize >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {distinct} samples stored; waiting for {count}\n{}",
                self.diagnose()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn wait_stored(&self, expected: usize) {
        let started = Instant::now();
        loop {
            let (rows, distinct) = self.stored();
            if super::all_stored(rows, distinct, expected) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "only {distinct} of {expected} acknowledged samples were stored\n{}",
                self.diagnose()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A client of the api's published port.
    pub async fn client(
        &self,
    ) -> switchyard_proto::metering::v1::metering_client::MeteringClient<tonic::transport::Channel>
    {
        switchyard_proto::metering::v1::metering_client::MeteringClient::connect(format!(
            "http://127.0.0.1:{}",
            self.api_port
        ))
        .await
        .expect("api")
    }

    /// Posts `batches` batches of 10 through the api on a task, one every
    /// 20 ms; [`Project::acknowledged`] waits for it.
    pub fn load(&self, label: &str, batches: usize) -> Load {
        let (token, name, port) = (self.token.clone(), self.name.clone(), self.api_port);
        let label = label.to_string();
        Load(tokio::spawn(async move {
            let client = switchyard_proto::metering::v1::metering_client::MeteringClient::connect(
                format!("http://127.0.0.1:{port}"),
            )
            .await
            .map_err(|error| format!("connecting to the api: {error}"))?;
            let (acknowledged, _) = super::try_post_steadily_as(
                client,
                Some(&token),
                format!("{name}-{label}"),
                batches,
                10,
                Duration::from_millis(20),
            )
            .await?;
            Ok(acknowledged)
        }))
    }

    /// The ids the api acknowledged to `load`. A batch it never
    /// acknowledged fails the test with what the api and the broker said
    /// at that moment, first in the output (a CI log shows only the start
    /// of a failure).
    pub async fn acknowledged(&self, load: Load) -> Vec<String> {
        match load.0.await.expect("the load task") {
            Ok(acknowledged) => acknowledged,
            Err(failure) => panic!("{failure}\n{}", self.diagnose()),
        }
    }

    /// Waits for `load` to finish, adds what it acknowledged to `expected`
    /// (the samples stored since the start), and waits until that many are
    /// stored, none twice: how many the load acknowledged.
    pub async fn all_stored(&self, load: Load, expected: &mut usize) -> usize {
        let acknowledged = self.acknowledged(load).await.len();
        *expected += acknowledged;
        self.wait_stored(*expected);
        acknowledged
    }

    /// What explains a stuck fleet, in a few dozen lines: each service's
    /// last warnings and errors (its slow polls only counted), the lock
    /// waits of a service whose worker was held, where the broker has the
    /// leaders of the durable queues and what they hold (their dead-letter
    /// and retry queues too), and the channels holding unacknowledged
    /// deliveries.
    pub fn diagnose(&self) -> String {
        let rabbitmqctl = |node: &str, args: &[&str]| {
            let mut command = vec!["exec", "-T", node, "rabbitmqctl", "-t", "10", "-q"];
            command.extend_from_slice(args);
            self.compose(&command, Duration::from_secs(30))
        };
        let mut report = String::new();
        for service in ["api", "collector-a", "collector-b", "notifier"] {
            let output = self.compose(&["logs", "--no-color", service], Duration::from_secs(60));
            let log = String::from_utf8_lossy(&output.stdout);
            let mut slow = 0;
            let mut notable: Vec<String> = Vec::new();
            for line in log.lines() {
                let json = line.split_once("| ").map_or(line, |(_, rest)| rest);
                let Ok(entry) = serde_json::from_str::<serde_json::Value>(json) else {
                    continue;
                };
                let field = |key: &str| entry[key].as_str().unwrap_or_default().to_string();
                let message = field("message");
                if message.starts_with("slow poll") {
                    slow += 1;
                    continue;
                }
                let level = field("level");
                if level == "WARN" || level == "ERROR" || message.starts_with("connected to") {
                    let at = field("timestamp");
                    let at = at.get(11..23).unwrap_or(&at).to_string();
                    notable.push(format!(
                        "  {at} {level} {}",
                        message.chars().take(220).collect::<String>()
                    ));
                }
            }
            report.push_str(&format!(
                "{service}: {slow} slow polls; its last warnings and errors:\n{}\n",
                notable[notable
                    .len()
                    .saturating_sub(if service == "api" { 12 } else { 6 })..]
                    .join("\n")
            ));
            for (process, stacks) in self.held_stacks(service, &log) {
                report.push_str(&format!(
                    "{service}: a worker was held; the threads of {process} waiting for a lock:\n{}",
                    lock_waits(&stacks)
                ));
            }
        }
        for node in ["rabbit-1", "rabbit-2", "rabbit-3"] {
            let output = rabbitmqctl(
                node,
                &[
                    "list_queues",
                    "name",
                    "type",
                    "leader",
                    "online",
                    "messages_ready",
                    "messages_unacknowledged",
                    "consumers",
                ],
            );
            if output.status.success() {
                let queues = String::from_utf8_lossy(&output.stdout);
                // Dead-letter and retry queues included: a sample the broker
                // gave up on after its delivery limit rests in `.dlq`, one
                // a collector failed to store waits in `.retry.<delay>`.
                let durable: Vec<&str> = queues
                    .lines()
                    .filter(|line| line.contains("quorum") || line.contains(".retry."))
                    .collect();
                report.push_str(&format!(
                    "queues as {node} sees them (name, type, leader, online, ready, unacknowledged, consumers):\n{}\n",
                    durable.join("\n")
                ));
                // Who holds deliveries unacknowledged: a consumer nobody
                // reads any more keeps them from every other.
                let channels = rabbitmqctl(
                    node,
                    &[
                        "list_channels",
                        "name",
                        "consumer_count",
                        "messages_unacknowledged",
                    ],
                );
                let holding: Vec<String> = String::from_utf8_lossy(&channels.stdout)
                    .lines()
                    .filter(|line| line.rsplit('\t').next().is_some_and(|n| n.trim() != "0"))
                    .map(str::to_string)
                    .collect();
                report.push_str(&format!(
                    "channels holding unacknowledged deliveries (name, consumers, unacknowledged):\n{}\n",
                    holding.join("\n")
                ));
                break;
            }
        }
        report
    }
}

impl Project {
    /// The threads' stacks of every Switchyard process in a container whose
    /// log reports a runtime worker held inside one poll, taken with the
    /// host's gdb (the containers' processes are the host's too): what held
    /// it is what a failed run cannot otherwise tell. Nothing without gdb.
    /// Called while a test unwinds, so it asserts nothing (a second panic
    /// would abort before `down`), and it asks compose for the project's
    /// services, whichever deploy files the test ran.
    fn print_held_stacks(&self) {
        let bound = Duration::from_secs(60);
        let Ok(services) = self.try_compose(&["config", "--services"], bound) else {
            return;
        };
        for service in String::from_utf8_lossy(&services.stdout).lines() {
            let Ok(logs) = self.try_compose(&["logs", "--no-color", service], bound) else {
                continue;
            };
            let log = String::from_utf8_lossy(&logs.stdout);
            for (process, stacks) in self.held_stacks(service, &log) {
                eprintln!(
                    "{service}: the stacks of {process}, a worker having been held:\n{stacks}"
                );
            }
        }
    }

    /// Fails the test when a service logged a runtime worker held inside
    /// one poll (the watchdog's 2 s), with the lines and the lock waits of
    /// its threads: a held worker strands what is queued on it, and a run
    /// that got through beside one still has the fault (the api's deadlock
    /// in lapin's recovery did, once in three runs; docs/reliability.md).
    pub fn assert_no_worker_held(&self) {
        let services = self.compose(&["config", "--services"], Duration::from_secs(60));
        let mut held = Vec::new();
        for service in String::from_utf8_lossy(&services.stdout).lines() {
            let logs = self.compose(&["logs", "--no-color", service], Duration::from_secs(60));
            let log = String::from_utf8_lossy(&logs.stdout);
            let lines: Vec<&str> = log
                .lines()
                .filter(|line| line.contains("inside one poll"))
                .collect();
            if lines.is_empty() {
                continue;
            }
            let mut report = format!("{service}:\n{}\n", lines.join("\n"));
            for (process, stacks) in self.held_stacks(service, &log) {
                report.push_str(&format!(
                    "the threads of {process} waiting for a lock:\n{}",
                    lock_waits(&stacks)
                ));
            }
            held.push(report);
        }
        assert!(
            held.is_empty(),
            "a runtime worker was held inside one poll:\n{}",
            held.join("\n")
        );
    }

    /// gdb's `thread apply all bt` of each Switchyard process of `service`
    /// (named by its pid and arguments), if its `log` says a runtime worker
    /// was held inside one poll; nothing otherwise, or without gdb.
    fn held_stacks(&self, service: &str, log: &str) -> Vec<(String, String)> {
        if !log.contains("inside one poll") {
            return Vec::new();
        }
        let bound = Duration::from_secs(60);
        let Ok(ps) = self.try_compose(&["ps", "-q", service], bound) else {
            return Vec::new();
        };
        let container = String::from_utf8_lossy(&ps.stdout).trim().to_string();
        if container.is_empty() {
            return Vec::new();
        }
        let Ok(top) = Command::new("docker")
            .args(["top", &container, "-o", "pid,args"])
            .output()
        else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for line in String::from_utf8_lossy(&top.stdout).lines().skip(1) {
            let Some((pid, args)) = line.trim().split_once(' ') else {
                continue;
            };
            if !args.contains("switchyard") {
                continue;
            }
            let stacks = Command::new("timeout")
                .args([
                    "60",
                    "gdb",
                    "-batch",
                    "-ex",
                    "thread apply all bt 40",
                    "-p",
                    pid,
                ])
                .output();
            if let Ok(stacks) = stacks {
                let stacks = String::from_utf8_lossy(&stacks.stdout)
                    .lines()
                    .filter(|line| !line.starts_with("[New LWP"))
                    .collect::<Vec<_>>()
                    .join("\n");
                found.push((format!("`{}` (pid {pid})", args.trim()), stacks));
            }
        }
        found
    }
}

/// Of gdb's `thread apply all bt`, the threads waiting for a lock, each
/// with its frames in lapin or Switchyard code and the lock's own (at most
/// 12, each its function's name, cut to 150 characters, and its line): a
/// held worker and what holds its lock, in a few lines, where a CI log
/// shows only the start of a failure.
fn lock_waits(stacks: &str) -> String {
    let mut report = String::new();
    for thread in stacks.split("\nThread ").skip(1) {
        if !thread.contains("_contended") {
            continue;
        }
        let name = thread.lines().next().unwrap_or_default();
        let frames: Vec<String> = thread
            .lines()
            .skip(1)
            .filter_map(|frame| {
                // `#N  0xADDRESS in FUNCTION (...) at ...`, or without the
                // address for an inlined frame.
                let frame = frame
                    .trim_start_matches('#')
                    .trim_start_matches(|c: char| c.is_ascii_digit())
                    .trim_start();
                let function = match frame.split_once(" in ") {
                    Some((address, function)) if address.starts_with("0x") => function,
                    _ => frame,
                };
                (function.starts_with("lapin::")
                    || function.starts_with("switchyard")
                    || function.contains("::rwlock::")
                    || function.contains("::mutex::"))
                .then(|| {
                    // The name and where, without the arguments.
                    let name = function.split(" (").next().unwrap_or(function);
                    let at = function.rsplit_once(" at ").map_or("", |(_, at)| at);
                    format!("{} at {at}", name.chars().take(150).collect::<String>())
                })
            })
            .take(12)
            .collect();
        report.push_str(&format!("  thread {name}\n    {}\n", frames.join("\n    ")));
    }
    report
}

/// A load through the api ([`Project::load`]).
pub struct Load(tokio::task::JoinHandle<Result<Vec<String>, String>>);

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the services said last, before they are removed.
            match self.try_compose(
                &["logs", "--no-color", "--tail", "80"],
                Duration::from_secs(60),
            ) {
                Ok(logs) => eprintln!("{}", String::from_utf8_lossy(&logs.stdout)),
                Err(error) => eprintln!("docker-compose logs: {error}"),
            }
            self.print_held_stacks();
        }
        let down = self.try_compose(
            &["down", "-v", "--remove-orphans", "--timeout", "20"],
            Duration::from_secs(180),
        );
        let failed = match down {
            Ok(output) if output.status.success() => None,
            Ok(output) => Some(String::from_utf8_lossy(&output.stderr).into_owned()),
            Err(error) => Some(error.to_string()),
        };
        if let Some(why) = failed {
            eprintln!(
                "docker-compose down failed ({why}); removing project `{}` by its label",
                self.name
            );
            remove_by_label(&self.name);
        }
        let _ = std::fs::remove_file(&self.env_file);
        for file in &self.scratch {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// `GET path` on 127.0.0.1:`port` with extra header lines; the whole answer.
pub fn http_get(port: u16, path: &str, headers: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("page port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{headers}connection: close\r\n\r\n"
    )
    .expect("request sent");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// One field of a container, as `docker inspect --format` prints it.
pub fn inspect(container: &str, format: &str) -> String {
    let output = Command::new("docker")
        .args(["inspect", "--format", format, container])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Whether a Docker engine answers; when none does, says that `suite` is
/// skipped.
pub fn engine_answers(suite: &str) -> bool {
    let answers = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !answers {
        eprintln!("{suite} suite skipped: no Docker engine answers (`docker info` failed)");
    }
    answers
}

/// What `down` would have removed, removed with `docker` directly by the
/// project's label: containers first (they hold the networks and volumes).
/// Asserts nothing; it runs from `drop`.
fn remove_by_label(project: &str) {
    let label = format!("label=com.docker.compose.project={project}");
    for (list, remove) in [
        (
            vec!["ps", "-aq", "--filter", &label],
            vec!["rm", "-f", "-v"],
        ),
        (
            vec!["network", "ls", "-q", "--filter", &label],
            vec!["network", "rm"],
        ),
        (
            vec!["volume", "ls", "-q", "--filter", &label],
            vec!["volume", "rm", "-f"],
        ),
    ] {
        let Ok(listed) = Command::new("docker").args(&list).output() else {
            continue;
        };
        let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
        let ids: Vec<&str> = listed.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = Command::new("timeout")
                .arg("120")
                .arg("docker")
                .args(&remove)
                .args(&ids)
                .status();
        }
    }
}

pub fn leftovers(project: &str) -> Vec<String> {
    let label = format!("label=com.docker.compose.project={project}");
    let mut left = Vec::new();
    for (kind, args) in [
        ("container", vec!["ps", "-aq", "--filter", &label]),
        ("network", vec!["network", "ls", "-q", "--filter", &label]),
        ("volume", vec!["volume", "ls", "-q", "--filter", &label]),
    ] {
        let output = Command::new("docker").args(&args).output().expect("docker");
        for id in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            left.push(format!("{kind} {id}"));
        }
    }
    left
}
