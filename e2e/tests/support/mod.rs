//! Running the real service binaries for a test: unique exchange and
//! database, OTLP and webhook receivers in the test, and cleanup.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const BOUND: Duration = Duration::from_secs(30);

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
    /// Starts `switchyard-<name>` in `dir` with `env`, and waits for its
    /// readiness line (`gRPC on …`, or `notifier ready`).
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
                        let _ = ready_tx.send(Some(address));
                    } else if line.contains("notifier ready") {
                        let _ = ready_tx.send(None);
                    }
                    if let Ok(mut log) = log.lock() {
                        log.push(line);
                    }
                }
            });
        }
        let grpc = ready.recv_timeout(BOUND).unwrap_or_else(|_| {
            panic!(
                "{name} did not become ready; its log:\n{}",
                log.lock().map(|l| l.join("\n")).unwrap_or_default()
            )
        });
        Self {
            name: name.to_string(),
            child,
            grpc,
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
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
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
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
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
