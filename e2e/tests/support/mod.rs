//! Running the real service binaries for a test: unique exchange and
//! database, OTLP and webhook receivers in the test, and cleanup.

#![allow(dead_code)]

pub mod compose;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use switchyard_proto::metering::v1::{GetRolloutRequest, InstanceStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const BOUND: Duration = Duration::from_secs(30);

/// Runs the `switchyard` command line against the api at `api`.
pub fn switchyard(api: &str, args: &[&str]) -> std::process::Output {
    Command::new(binary("switchyard"))
        .args(["--api", api])
        .args(args)
        .output()
        .expect("switchyard runs")
}

/// A command's stdout and stderr, as text.
pub fn text(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

/// Where cargo put the workspace's binaries (next to this test's `deps/`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (scripts/test does: cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A running service process whose stderr is collected.
pub struct Service {
    pub name: String,
    pub child: Child,
    pub grpc: Option<String>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Service {
    /// Starts `switchyard-<name>` in `dir` with `env`; reads the address
    /// it bound from its log (`gRPC on …`), then waits until its gRPC health
    /// says SERVING (every readiness probe passed: broker, database).
    pub fn start(name: &str, dir: &std::path::Path, env: &[(String, String)]) -> Self {
        let mut command = Command::new(binary(&format!("switchyard-{name}")));
        command
            .current_dir(dir)
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        for (key, _) in std::env::vars() {
            if key.starts_with("SWITCHYARD_") || key.starts_with("OTEL_") {
                command.env_remove(key);
            }
        }
        command
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info,lapin=warn,lapin::returned_messages=error");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("service starts");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready) = mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                // Read to the end whatever the bytes: a reader that stopped
                // would let the pipe fill and block the service's logging.
                let mut reader = BufReader::new(stderr);
                let mut raw = Vec::new();
                while reader
                    .read_until(b'\n', &mut raw)
                    .map(|n| n > 0)
                    .unwrap_or(false)
                {
                    let line = String::from_utf8_lossy(&raw).trim_end().to_string();
                    raw.clear();
                    if let Some(start) = line.find("gRPC on ") {
                        let address: String = line[start + 8..]
                            .chars()
                            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                            .collect();
                        let _ = ready_tx.send(address);
                    }
                    if let Ok(mut log) = log.lock() {
                        log.push(line);
                    }
                }
            });
        }
        let log_text = || log.lock().map(|l| l.join("\n")).unwrap_or_default();
        let started = Instant::now();
        let grpc = ready.recv_timeout(BOUND).unwrap_or_else(|_| {
            panic!(
                "{name} never said where it serves gRPC; its log:\n{}",
                log_text()
            )
        });
        let left = BOUND.saturating_sub(started.elapsed());
        if let Err(last) = wait_serving(&grpc, left) {
            panic!(
                "{name} on {grpc} was not SERVING within {BOUND:?} ({last}); its log:\n{}",
                log_text()
            );
        }
        Self {
            name: name.to_string(),
            child,
            grpc: Some(grpc),
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc.as_deref().expect("a gRPC service"))
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> i32 {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        switchyard_testkit::wait_exit(&mut self.child, BOUND)
            .unwrap_or_else(|| panic!("{} did not stop after SIGTERM", self.name))
            .code()
            .unwrap_or(-1)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

/// Polls the gRPC health service at `address` until the server as a whole
/// is SERVING, for at most `within`; `Err` with the last answer. Runs on a
/// runtime of its own (the caller may be inside one, or not).
fn wait_serving(address: &str, within: Duration) -> Result<(), String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let url = format!("http://{address}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                runtime.block_on(async {
                    let deadline = Instant::now() + within;
                    loop {
                        let answer = async {
                            let channel = tonic::transport::Endpoint::from_shared(url.clone())?
                                .connect()
                                .await?;
                            let mut client = HealthClient::new(channel);
                            let status = client
                                .check(HealthCheckRequest {
                                    service: String::new(),
                                })
                                .await?
                                .into_inner()
                                .status;
                            Ok::<_, Box<dyn std::error::Error>>(status)
                        };
                        let last = match answer.await {
                            Ok(status) if status == ServingStatus::Serving as i32 => return Ok(()),
                            Ok(status) => format!("status {status}"),
                            Err(error) => error.to_string(),
                        };
                        if Instant::now() >= deadline {
                            return Err(last);
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
            })
            .join()
            .unwrap_or_else(|_| Err("the health check panicked".to_string()))
    })
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A webhook receiver: records each POST body, answers 200.
pub struct Webhook {
    pub url: String,
    pub bodies: Arc<Mutex<Vec<String>>>,
}

impl Webhook {
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    /// A receiver on a given port (0: any).
    pub async fn start_on(port: u16) -> Self {
        Self::answering(port, "200 OK").await
    }

    /// A receiver that answers every POST with `status` (e.g. `404 Not Found`).
    pub async fn answering(port: u16, status: &'static str) -> Self {
        Self::on("127.0.0.1", port, status).await
    }

    /// A receiver on `host` (e.g. the gateway of a Docker network the test
    /// made, for containers to reach).
    pub async fn on(host: &str, port: u16, status: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind((host, port))
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::clone(&bodies);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let received = Arc::clone(&received);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let body = loop {
                        let Ok(n) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buffer).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().to_string())
                                })
                                .and_then(|v| v.parse::<usize>().ok())
                                .unwrap_or(0);
                            if buffer.len() >= end + 4 + length {
                                break String::from_utf8_lossy(&buffer[end + 4..end + 4 + length])
                                    .to_string();
                            }
                        }
                    };
                    if let Ok(mut bodies) = received.lock() {
                        bodies.push(body);
                    }
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        Self { url, bodies }
    }

    pub fn received(&self) -> Vec<String> {
        self.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

/// A fresh PostgreSQL database, dropped by `drop_database`.
pub async fn create_database(name: &str) -> String {
    use switchyard_storage::sqlx::{self, Connection};
    let mut admin = sqlx::postgres::PgConnection::connect("postgres://root@127.0.0.1:5432/test")
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (user root, database test)");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .expect("create database");
    format!("postgres://root@127.0.0.1:5432/{name}")
}

pub async fn drop_database(name: &str) {
    use switchyard_storage::sqlx::{self, Connection};
    if let Ok(mut admin) =
        sqlx::postgres::PgConnection::connect("postgres://root@127.0.0.1:5432/test").await
    {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    }
}

/// A connection to the broker at `url` and a channel on it in confirm mode.
pub async fn confirming_channel(url: &str) -> (lapin::Connection, lapin::Channel) {
    let connection = lapin::Connection::connect(url, Default::default())
        .await
        .unwrap_or_else(|error| {
            panic!("no broker answers (the URL may hold a password: not shown): {error}")
        });
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    (connection, channel)
}

/// `(rows, distinct ids)` in the samples table of the database at `url`
/// (PostgreSQL or a SQLite file), on a connection of its own.
pub async fn samples_stored(url: &str) -> (i64, i64) {
    use switchyard_storage::sqlx::{self, Connection, Row};
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(url)
        .await
        .expect("open the sample store");
    let row = sqlx::query("SELECT COUNT(*), COUNT(DISTINCT id) FROM samples")
        .fetch_one(&mut db)
        .await
        .expect("count samples");
    let counts = (row.get(0), row.get(1));
    let _ = db.close().await;
    counts
}

/// Runs `program` with `args`; asserts it succeeded and returns its output.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let output = switchyard_testkit::succeeded(
        Command::new(program).args(args),
        &format!("{program} {args:?}"),
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `rabbitmqctl -q` with `args` against the local broker; asserts it
/// succeeded.
pub fn rabbitmqctl(args: &[&str]) {
    run_ok("rabbitmqctl", &[&["-q"], args].concat());
}

/// Deletes every queue and exchange whose name is `prefix` or starts with `prefix.`.
pub async fn delete_broker_objects(prefix: &str) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let matching = |list: &str| -> Vec<String> {
        let output = Command::new("rabbitmqctl")
            .args(["-q", list, "name", "--no-table-headers"])
            .output();
        let Ok(output) = output else {
            return Vec::new();
        };
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|name| *name == prefix || name.starts_with(&format!("{prefix}.")))
            .map(str::to_string)
            .collect()
    };
    let Ok(connection) =
        lapin::Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f", Default::default())
            .await
    else {
        return;
    };
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    for queue in matching("list_queues") {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in matching("list_exchanges") {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "cleanup".into()).await;
}

/// Removes what a test made — broker objects, database, scratch folder —
/// when dropped, so a failing test leaves nothing behind either. Declare it
/// before the services, so they are stopped first.
pub struct Cleanup {
    pub exchange: String,
    pub database: String,
    pub dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (exchange, database) = (self.exchange.clone(), self.database.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on:
        // clean up from a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(async {
                    delete_broker_objects(&exchange).await;
                    drop_database(&database).await;
                });
            }
        })
        .join();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub use switchyard_testkit::free_port;

/// How a fleet is started.
#[derive(Clone, Default)]
pub struct FleetOptions {
    /// Phases of collector, notifier and api (default threaded, bridged, async).
    pub phases: Option<[&'static str; 3]>,
    /// OTLP endpoint for every service.
    pub otlp: Option<String>,
    /// Extra environment for every service.
    pub extra: Vec<(String, String)>,
    /// Extra environment for the collector.
    pub collector_extra: Vec<(String, String)>,
    /// Extra environment for the notifier.
    pub notifier_extra: Vec<(String, String)>,
    /// Extra environment for the api.
    pub api_extra: Vec<(String, String)>,
}

/// The api's environment for accepting only `token` (`api.auth_tokens`).
pub fn api_token(token: &str) -> Vec<(String, String)> {
    vec![(
        "SWITCHYARD_API__AUTH_TOKENS".into(),
        format!("[\"{token}\"]"),
    )]
}

/// The three services on a fresh exchange and database. Dropping it stops
/// the services, then removes the exchange's objects and the database.
pub struct Fleet {
    pub id: String,
    pub exchange: String,
    pub database_url: String,
    pub dir: PathBuf,
    pub collector_port: u16,
    pub collector: Option<Service>,
    pub notifier: Option<Service>,
    pub api: Option<Service>,
    options: FleetOptions,
    _cleanup: Cleanup,
}

impl Fleet {
    pub async fn start(options: FleetOptions) -> Self {
        let id = switchyard_messaging::wire::new_id();
        let exchange = format!("e2e-{id}");
        let database = format!("e2e_{id}");
        let database_url = create_database(&database).await;
        let dir = std::env::temp_dir().join(format!("switchyard-e2e-{id}"));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let mut fleet = Self {
            id,
            exchange: exchange.clone(),
            database_url,
            dir: dir.clone(),
            collector_port: free_port(),
            collector: None,
            notifier: None,
            api: None,
            options,
            _cleanup: Cleanup {
                exchange,
                database,
                dir,
            },
        };
        let [collector, notifier, api] = fleet.phases();
        fleet.start_collector(collector);
        let mut env = fleet.common(notifier);
        env.push(("SWITCHYARD_STORAGE__URL".into(), fleet.database_url.clone()));
        env.push(("SWITCHYARD_GRPC__LISTEN".into(), "127.0.0.1:0".into()));
        env.push((
            "SWITCHYARD_NOTIFIER__COLLECTOR_URL".into(),
            fleet.collector_url(),
        ));
        env.extend(fleet.options.notifier_extra.clone());
        fleet.notifier = Some(Service::start("notifier", &fleet.dir, &env));
        let mut env = fleet.common(api);
        // A fixed port: a service that rebuilds its connections binds it again.
        env.push((
            "SWITCHYARD_GRPC__LISTEN".into(),
            format!("127.0.0.1:{}", free_port()),
        ));
        env.push((
            "SWITCHYARD_API__COLLECTOR_URL".into(),
            fleet.collector_url(),
        ));
        // Fleets run side by side: each page on a port of its own.
        env.push(("SWITCHYARD_DASHBOARD__LISTEN".into(), "127.0.0.1:0".into()));
        env.extend(fleet.options.api_extra.clone());
        fleet.api = Some(Service::start("api", &fleet.dir, &env));
        fleet
    }

    fn phases(&self) -> [&'static str; 3] {
        self.options
            .phases
            .unwrap_or(["threaded", "bridged", "async"])
    }

    fn common(&self, phase: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("SWITCHYARD_EXECUTOR__PHASE".into(), phase.into()),
            ("SWITCHYARD_EXECUTOR__POOL_SIZE".into(), "8".into()),
            (
                "SWITCHYARD_EXECUTOR__SHUTDOWN_GRACE_MS".into(),
                "10000".into(),
            ),
            ("SWITCHYARD_AMQP__EXCHANGE".into(), self.exchange.clone()),
            ("SWITCHYARD_AMQP__RETRY_DELAY_MS".into(), "20".into()),
            ("SWITCHYARD_AMQP__QUEUE_EXPIRES_MS".into(), "600000".into()),
            (
                "SWITCHYARD_ROLLOUT__HEARTBEAT_INTERVAL_MS".into(),
                "300".into(),
            ),
            ("SWITCHYARD_TELEMETRY__EXPORT_DELAY_MS".into(), "100".into()),
        ];
        if let Some(otlp) = &self.options.otlp {
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), otlp.clone()));
        }
        env.extend(self.options.extra.clone());
        env
    }

    pub fn collector_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.collector_port)
    }

    pub fn collector_env(&self, phase: &str) -> Vec<(String, String)> {
        let mut env = self.common(phase);
        env.push((
            "SWITCHYARD_GRPC__LISTEN".into(),
            format!("127.0.0.1:{}", self.collector_port),
        ));
        env.push(("SWITCHYARD_STORAGE__URL".into(), self.database_url.clone()));
        env.extend(self.options.collector_extra.clone());
        env
    }

    /// Starts the collector (on the fleet's fixed port).
    pub fn start_collector(&mut self, phase: &str) {
        let env = self.collector_env(phase);
        self.collector = Some(Service::start("collector", &self.dir, &env));
    }

    /// A connection of the test's own to the fleet's exchange, named
    /// `name` in the broker's connection list.
    pub async fn transport(&self, name: &str) -> switchyard_messaging::Transport {
        switchyard_messaging::Transport::connect(
            &switchyard_messaging::AmqpConfig {
                exchange: self.exchange.clone(),
                ..Default::default()
            },
            "e2e",
            name,
        )
        .await
        .expect("broker")
    }

    /// Listens for `event` notifications on the fleet's exchange (pool
    /// `pool`) until `stop`: each payload arrives on the receiver.
    pub async fn published<P>(
        &self,
        event: &'static str,
        pool: &str,
        stop: &tokio_util::sync::CancellationToken,
    ) -> (
        tokio::sync::mpsc::UnboundedReceiver<P>,
        switchyard_messaging::NotificationListener,
    )
    where
        P: prost::Message + Default + Send + 'static,
    {
        use switchyard_executor::{Endpoint, Executor, ExecutorConfig, Phase};
        use switchyard_messaging::{EndpointError, Handled, Notification};
        let transport = self.transport(pool).await;
        let executor =
            Executor::new("e2e", ExecutorConfig::in_phase(Phase::Async)).expect("executor");
        let (seen, received) = tokio::sync::mpsc::unbounded_channel();
        let endpoint = executor
            .register(Endpoint::from_async(
                "published",
                move |_, notification: Notification<P>| {
                    let seen = seen.clone();
                    async move {
                        let _ = seen.send(notification.payload);
                        Ok::<_, EndpointError>(Handled::Handled)
                    }
                },
            ))
            .expect("registered");
        let listener = switchyard_messaging::NotificationListener::builder(&self.exchange, pool)
            .subscribe(event, &[])
            .start(&transport, endpoint, stop.clone())
            .await
            .expect("listener");
        (received, listener)
    }

    /// A client of the api.
    pub async fn client(
        &self,
    ) -> switchyard_proto::metering::v1::metering_client::MeteringClient<tonic::transport::Channel>
    {
        let url = self.api.as_ref().expect("api running").url();
        switchyard_proto::metering::v1::metering_client::MeteringClient::connect(url)
            .await
            .expect("api answers")
    }

    /// Waits until the rows of `service` in the api's rollout table (only
    /// the up ones when `only_up`) satisfy `done`: those rows.
    pub async fn wait_for_rows(
        &self,
        service: &str,
        only_up: bool,
        done: impl Fn(&[InstanceStatus]) -> bool,
    ) -> Vec<InstanceStatus> {
        let mut client = self.client().await;
        let started = Instant::now();
        loop {
            let rows: Vec<InstanceStatus> = client
                .get_rollout(GetRolloutRequest {})
                .await
                .expect("rollout")
                .into_inner()
                .instances
                .into_iter()
                .filter(|i| i.service == service && (i.up || !only_up))
                .collect();
            if done(&rows) {
                return rows;
            }
            assert!(
                started.elapsed() < BOUND,
                "the rollout table never got there: {rows:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Posts `batches` batches of `size` samples through the api in the
    /// background, one every `pace` ([`post_steadily`]), with ids that
    /// start with the fleet's id and `label`: (acknowledged ids, retries).
    pub async fn load(
        &self,
        label: &str,
        batches: usize,
        size: usize,
        pace: Duration,
    ) -> tokio::task::JoinHandle<(Vec<String>, usize)> {
        tokio::spawn(post_steadily(
            self.client().await,
            format!("{}-{label}", self.id),
            batches,
            size,
            pace,
        ))
    }

    /// `(rows, distinct ids)` in the samples table.
    pub async fn stored(&self) -> (i64, i64) {
        samples_stored(&self.database_url).await
    }

    /// Everything the collector logged so far.
    pub fn collector_log(&self) -> String {
        self.collector
            .as_ref()
            .map(Service::log_text)
            .unwrap_or_default()
    }

    /// The last `lines` lines of the collector's log (for a failure message).
    pub fn collector_log_tail(&self, lines: usize) -> String {
        let text = self.collector_log();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until at least `count` distinct samples are stored: the load
    /// is under way (instead of sleeping and hoping it is).
    pub async fn wait_stored_at_least(&self, count: usize) {
        let started = Instant::now();
        loop {
            let (_, distinct) = self.stored().await;
            if distinct as usize >= count {
                return;
            }
            assert!(
                started.elapsed() < BOUND,
                "only {distinct} samples stored after {BOUND:?}; waiting for {count}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `expected` distinct samples are stored; fails on duplicates.
    pub async fn wait_stored(&self, expected: usize) {
        let started = Instant::now();
        loop {
            let (rows, distinct) = self.stored().await;
            if all_stored(rows.unsigned_abs(), distinct.unsigned_abs(), expected) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "only {distinct} of {expected} acknowledged samples were stored; the collector's log ends:\n{}",
                self.collector_log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether `rows` stored samples of `distinct` ids are the `expected`
/// acknowledged ones; `false` while some are on their way. Fails on a sample
/// stored twice or one more than were acknowledged.
pub fn all_stored(rows: u64, distinct: u64, expected: usize) -> bool {
    assert_eq!(rows, distinct, "a sample was stored twice");
    assert!(
        distinct as usize <= expected,
        "more samples stored ({distinct}) than acknowledged ({expected})"
    );
    distinct as usize == expected
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Services first (their Drop kills them), then the cleanup field.
        self.api.take();
        self.notifier.take();
        self.collector.take();
    }
}

/// A sample of `cpu_util` stamped now.
pub fn sample(id: String, volume: f64) -> switchyard_proto::metering::v1::Sample {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    switchyard_proto::metering::v1::Sample {
        id,
        meter: "cpu_util".into(),
        unit: "%".into(),
        volume,
        timestamp: Some(prost_types::Timestamp {
            seconds: since.as_secs() as i64,
            nanos: since.subsec_nanos() as i32,
        }),
        resource_id: "vm-1".into(),
        project_id: "e2e".into(),
        ..Default::default()
    }
}

/// A statistics request over the project `e2e` from an hour ago to an hour
/// ahead (samples are stamped now); the caller names the meter(s).
pub fn statistics_this_hour() -> switchyard_proto::metering::v1::GetStatisticsRequest {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
    switchyard_proto::metering::v1::GetStatisticsRequest {
        project_id: "e2e".into(),
        start: at(now - 3600),
        end: at(now + 3600),
        ..Default::default()
    }
}

/// Posts `batches` batches of `size` samples, one batch every `pace`,
/// retrying each batch until the api acknowledges it (the ids make retries
/// idempotent) while `running` holds. Returns the acknowledged ids.
pub async fn post_steadily(
    client: switchyard_proto::metering::v1::metering_client::MeteringClient<
        tonic::transport::Channel,
    >,
    prefix: String,
    batches: usize,
    size: usize,
    pace: Duration,
) -> (Vec<String>, usize) {
    try_post_steadily_as(client, None, prefix, batches, size, pace)
        .await
        .unwrap_or_else(|failure| panic!("{failure}"))
}

/// [`post_steadily`] with a bearer token on every call, returning a batch
/// the api never acknowledged within a minute as an error: what each of its
/// attempts got.
pub async fn try_post_steadily_as(
    mut client: switchyard_proto::metering::v1::metering_client::MeteringClient<
        tonic::transport::Channel,
    >,
    token: Option<&str>,
    prefix: String,
    batches: usize,
    size: usize,
    pace: Duration,
) -> Result<(Vec<String>, usize), String> {
    use switchyard_proto::metering::v1::PostSamplesRequest;
    let authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> =
        token.and_then(|token| format!("Bearer {token}").parse().ok());
    let mut acknowledged = Vec::new();
    let mut retries = 0;
    for batch in 0..batches {
        let samples: Vec<_> = (0..size)
            .map(|i| sample(format!("{prefix}-{batch}-{i}"), 10.0))
            .collect();
        let started = Instant::now();
        // Each failed attempt: when, and what the api (or tonic) said.
        let mut attempts: Vec<String> = Vec::new();
        loop {
            let mut request = tonic::Request::new(PostSamplesRequest {
                samples: samples.clone(),
            });
            request.set_timeout(Duration::from_secs(10));
            if let Some(authorization) = &authorization {
                request
                    .metadata_mut()
                    .insert("authorization", Clone::clone(authorization));
            }
            match client.post_samples(request).await {
                Ok(reply) => {
                    acknowledged.extend(reply.into_inner().ids);
                    break;
                }
                Err(status) => {
                    attempts.push(format!(
                        "{:.1} s: {:?} {}",
                        started.elapsed().as_secs_f64(),
                        status.code(),
                        status.message()
                    ));
                    if started.elapsed() >= Duration::from_secs(60) {
                        return Err(format!(
                            "batch {batch} never acknowledged: {status:?}; the last of its {} attempts:\n{}",
                            attempts.len(),
                            attempts[attempts.len().saturating_sub(20)..].join("\n")
                        ));
                    }
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tokio::time::sleep(pace).await;
    }
    Ok((acknowledged, retries))
}

/// An alarm on `cpu_util` that fires as soon as one sample above 5 arrives,
/// posting to `webhook_url`.
pub fn hot_alarm(webhook_url: String) -> switchyard_proto::metering::v1::Alarm {
    use switchyard_proto::metering::v1::{Alarm, Comparison, Statistic};
    Alarm {
        name: "hot".into(),
        meter: "cpu_util".into(),
        statistic: Statistic::Avg as i32,
        comparison: Comparison::Gt as i32,
        threshold: 5.0,
        period_seconds: 600,
        evaluation_periods: 1,
        webhook_url,
        ..Alarm::default()
    }
}

/// The Python of the virtual environment `scripts/test` prepared (the
/// example client's and the browser driver's packages).
pub fn python() -> PathBuf {
    let path = std::env::var_os("E2E_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/switchyard-venv/bin/python"));
    assert!(
        path.exists(),
        "{} is missing: scripts/test creates it (python3 -m venv, pip install -r \
         examples/python/requirements.txt); or set E2E_PYTHON",
        path.display()
    );
    path
}

/// Headless Chromium (Debian's, installed by `scripts/test`) driven over the
/// DevTools protocol by `e2e/browser/cdp.py`. Every command is bounded by
/// the driver; the methods block (call them in `block_in_place`).
pub struct Browser {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Browser {
    pub fn start() -> Self {
        let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser/cdp.py");
        let mut child = Command::new(python())
            .arg(driver)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the browser driver starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut browser = Self {
            child,
            stdin,
            stdout,
        };
        let ready = browser.read();
        assert_eq!(ready["ready"], true, "the browser driver: {ready}");
        browser
    }

    fn read(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("driver answers");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("driver said: {line:?}"))
    }

    fn command(&mut self, command: serde_json::Value) -> serde_json::Value {
        use std::io::Write;
        writeln!(self.stdin, "{command}").expect("driver listens");
        self.read()
    }

    pub fn goto(&mut self, url: &str) {
        let answer = self.command(serde_json::json!({"cmd": "goto", "url": url}));
        assert_eq!(answer["ok"], true, "{url} did not load: {answer}");
    }

    /// Waits until `js` is truthy; returns its value.
    pub fn wait(&mut self, what: &str, js: &str, timeout: Duration) -> serde_json::Value {
        let answer = self.command(
            serde_json::json!({"cmd": "wait", "js": js, "timeout": timeout.as_secs_f64()}),
        );
        assert_eq!(
            answer["ok"], true,
            "the page never showed {what} in {timeout:?}; last value: {}",
            answer["value"]
        );
        answer["value"].clone()
    }

    pub fn eval(&mut self, js: &str) -> serde_json::Value {
        self.command(serde_json::json!({"cmd": "eval", "js": js}))["value"].clone()
    }

    /// Console errors, uncaught exceptions and failed loads so far.
    pub fn errors(&mut self) -> Vec<String> {
        let answer = self.command(serde_json::json!({"cmd": "errors"}));
        serde_json::from_value(answer["value"].clone()).unwrap_or_default()
    }

    pub fn screenshot(&mut self, path: &std::path::Path) {
        let answer =
            self.command(serde_json::json!({"cmd": "screenshot", "path": path.to_string_lossy()}));
        assert_eq!(answer["ok"], true, "screenshot: {answer}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        use std::io::Write;
        let _ = writeln!(self.stdin, "{}", serde_json::json!({"cmd": "quit"}));
        // Killed if it has not quit within 10 s.
        let _ = switchyard_testkit::wait_exit(&mut self.child, Duration::from_secs(10));
    }
}

/// Where tests leave artifacts (screenshots): `E2E_ARTIFACTS`, or
/// `switchyard-artifacts` in the temporary directory.
pub fn artifacts() -> PathBuf {
    let dir = std::env::var_os("E2E_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("switchyard-artifacts"));
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// One call of [`ListAlarmsSteadily`]: when it was sent, how long it took,
/// and its outcome.
pub struct Call {
    pub sent: Instant,
    pub took: Duration,
    pub outcome: Result<(), tonic::Status>,
}

/// Callers asking the api for its alarms (which the api asks the notifier
/// for over AMQP: a method that needs the broker), each with `deadline`,
/// one after another, until stopped.
pub struct ListAlarmsSteadily {
    calls: std::sync::Arc<std::sync::Mutex<Vec<Call>>>,
    stop: tokio_util::sync::CancellationToken,
    callers: Vec<tokio::task::JoinHandle<()>>,
    pub deadline: Duration,
}

/// How late a caller's own deadline may fire on a loaded host. The
/// caller's timer runs in this test's process, on two cores shared with
/// three broker nodes, PostgreSQL and four services: in one CI run of the
/// cluster test (2026-12-04) a 3 s deadline ended its call after 3.53 s,
/// while the api logged polls held 100 ms by the same load. Half a second
/// was too little. (The bound is on the caller's own timer: a call the api
/// never answers ends at its deadline either way, and is told apart by its
/// status, as above.)
const LATE_TIMER: Duration = Duration::from_millis(1500);

impl ListAlarmsSteadily {
    /// `callers` callers on `client` (cloned: one connection), with a bearer
    /// `token` when given.
    pub fn start(
        client: switchyard_proto::metering::v1::metering_client::MeteringClient<
            tonic::transport::Channel,
        >,
        token: Option<&str>,
        callers: usize,
        deadline: Duration,
    ) -> Self {
        use switchyard_proto::metering::v1::ListAlarmsRequest;
        let authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> =
            token.and_then(|token| format!("Bearer {token}").parse().ok());
        let calls = std::sync::Arc::<std::sync::Mutex<Vec<Call>>>::default();
        let stop = tokio_util::sync::CancellationToken::new();
        let callers = (0..callers)
            .map(|_| {
                let (mut client, calls, stop) = (client.clone(), calls.clone(), stop.clone());
                let authorization = authorization.clone();
                tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        let mut request = tonic::Request::new(ListAlarmsRequest::default());
                        request.set_timeout(deadline);
                        if let Some(authorization) = &authorization {
                            request
                                .metadata_mut()
                                .insert("authorization", authorization.clone());
                        }
                        let sent = Instant::now();
                        let outcome = client.list_alarms(request).await.map(|_| ());
                        let took = sent.elapsed();
                        calls.lock().expect("calls").push(Call {
                            sent,
                            took,
                            outcome,
                        });
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Self {
            calls,
            stop,
            callers,
            deadline,
        }
    }

    /// How many calls sent after `at` were answered.
    pub fn answered_after(&self, at: Instant) -> usize {
        self.calls
            .lock()
            .expect("calls")
            .iter()
            .filter(|call| call.sent > at && call.outcome.is_ok())
            .count()
    }

    /// Waits (at most `bound`) until `count` calls sent after `at` were answered.
    pub async fn wait_answered_after(&self, at: Instant, count: usize, bound: Duration) {
        while self.answered_after(at) < count {
            assert!(
                at.elapsed() < bound,
                "only {} calls answered in {bound:?}",
                self.answered_after(at)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the callers; checks that every call ended within its
    /// deadline, answered or refused by the api itself with one of the
    /// `allowed` codes (not by a reset or refused connection: a status the
    /// client made from one carries the transport error as its source).
    ///
    /// One status the client makes is allowed where `DeadlineExceeded` is:
    /// the caller's own deadline passing (tonic reports it as CANCELLED
    /// with `TimeoutExpired` as its source). The api refuses a call it
    /// cannot finish about 100 ms before the caller's deadline, and on a
    /// loaded two-core host that refusal can arrive after it; either way
    /// the caller learns at its deadline that the deadline passed, which
    /// is gRPC's DEADLINE_EXCEEDED. A hang is still caught by the bound on
    /// every call's time: the deadline and [`LATE_TIMER`].
    /// Returns (calls, refused, the api's distinct reasons).
    pub async fn finish(self, allowed: &[tonic::Code]) -> (usize, usize, Vec<String>) {
        self.stop.cancel();
        for caller in self.callers {
            caller.await.expect("caller");
        }
        let calls = self.calls.lock().expect("calls");
        let mut reasons = Vec::new();
        let mut refused = 0;
        for call in calls.iter() {
            assert!(
                call.took < self.deadline + LATE_TIMER,
                "a call took {:?} (deadline {:?}): {:?}",
                call.took,
                self.deadline,
                call.outcome
            );
            if let Err(status) = &call.outcome {
                refused += 1;
                if allowed.contains(&tonic::Code::DeadlineExceeded)
                    && caller_deadline_passed(status)
                {
                    reasons.push("the caller's own deadline passed".to_string());
                    continue;
                }
                assert!(
                    allowed.contains(&status.code()),
                    "a refused call must say why with one of {allowed:?}: {status:?}"
                );
                assert!(
                    std::error::Error::source(status).is_none(),
                    "refused by the transport, not by the api: {status:?}"
                );
                reasons.push(status.message().to_string());
            }
        }
        reasons.sort();
        reasons.dedup();
        (calls.len(), refused, reasons)
    }
}

/// Whether tonic ended the call because the caller's own deadline passed.
fn caller_deadline_passed(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Cancelled
        && std::error::Error::source(status)
            .is_some_and(switchyard_grpc::client::caller_deadline_passed)
}

/// The body (and head) of `GET path` from `address` (`host:port`), over a
/// fresh connection.
pub async fn http_get_text(address: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("the HTTP endpoint answers");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("request");
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut text))
        .await
        .expect("answered in time")
        .expect("response");
    text
}
