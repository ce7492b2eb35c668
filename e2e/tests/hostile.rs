//! Hostile and unlucky input against the real binaries (issue 22): nothing
//! the api acknowledged is lost, and no input stops a service. Each case
//! states what the api answers or where the message goes, then shows that
//! the pipeline still stores what it acknowledges.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use prost::Message;
use support::{Fleet, FleetOptions, Service, post_steadily, sample};
use switchyard_messaging::wire;
use switchyard_proto::messaging::v1::RecordSamples;
use switchyard_proto::metering::v1::{GetStatisticsRequest, PostSamplesRequest};

/// Makes a good sample bad in one way.
type Spoil = Box<dyn Fn(&mut switchyard_proto::metering::v1::Sample)>;

/// Bound on every wait below.
const BOUND: Duration = Duration::from_secs(60);

async fn broker() -> (Connection, Channel) {
    support::confirming_channel("amqp://guest:guest@127.0.0.1:5672/%2f").await
}

/// Publishes a `record_samples` cast straight to the collector's topic, as
/// any client of the broker could.
async fn cast_to_collector(channel: &Channel, exchange: &str, headers: FieldTable, body: Vec<u8>) {
    let confirm = channel
        .basic_publish(
            wire::rpc_exchange(exchange).as_str().into(),
            wire::routing_key("collector", None).as_str().into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default()
                .with_content_type(wire::CONTENT_TYPE.into())
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await
        .expect("publish");
    assert!(
        confirm.await.expect("confirm").is_ack(),
        "the broker took it"
    );
}

fn method_headers() -> FieldTable {
    let mut headers = FieldTable::default();
    wire::set_str(&mut headers, wire::METHOD, "record_samples");
    headers
}

/// The dead-letter reason of the next message in `queue`, waiting (bounded)
/// for one to arrive.
async fn next_dead_letter_in(channel: &Channel, queue: &str) -> String {
    let started = Instant::now();
    loop {
        if let Ok(Some(message)) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
        {
            return wire::header_str(&message.delivery.properties, wire::DEAD_LETTER_REASON)
                .unwrap_or("(no reason)")
                .to_string();
        }
        assert!(
            started.elapsed() < BOUND,
            "nothing was dead-lettered to `{queue}`"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The dead-letter reason of the next message in the collector topic's
/// dead-letter queue.
async fn next_dead_letter(channel: &Channel, exchange: &str) -> String {
    next_dead_letter_in(
        channel,
        &wire::dead_letter_queue(&wire::topic_queue(exchange, "collector")),
    )
    .await
}

fn assert_running(service: &mut Option<Service>) {
    let service = service.as_mut().expect("started");
    assert!(
        service.child.try_wait().expect("status").is_none(),
        "{} died; its log:\n{}",
        service.name,
        service.log_text()
    );
}

/// Posts `batches` batches of 10 and waits until `already + 10 × batches`
/// distinct samples are stored.
async fn pipeline_still_stores(fleet: &Fleet, prefix: &str, already: usize) -> usize {
    let (acknowledged, _) = post_steadily(
        fleet.client().await,
        format!("{}-{prefix}", fleet.id),
        3,
        10,
        Duration::from_millis(10),
    )
    .await;
    fleet.wait_stored(already + acknowledged.len()).await;
    already + acknowledged.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_nested_hundreds_of_levels_deep_is_dead_lettered_and_nothing_crashes() {
    let mut fleet = Fleet::start(FleetOptions::default()).await;
    let stored = pipeline_still_stores(&fleet, "before", 0).await;
    let (connection, channel) = broker().await;
    // 300 levels, about 2 KB: it aborted the collector before the fix.
    let mut headers = FieldTable::default();
    for _ in 0..300 {
        let mut outer = method_headers();
        outer.insert("a".into(), AMQPValue::FieldTable(headers));
        headers = outer;
    }
    let body = RecordSamples {
        samples: vec![sample(format!("{}-deep", fleet.id), 1.0)],
    }
    .encode_to_vec();
    cast_to_collector(&channel, &fleet.exchange, headers, body).await;
    let reason = next_dead_letter(&channel, &fleet.exchange).await;
    assert!(reason.contains("nested"), "dead-letter reason: {reason}");
    assert_running(&mut fleet.collector);
    pipeline_still_stores(&fleet, "after", stored).await;
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_a_database_cannot_store_are_refused_by_the_api_and_dead_lettered_by_the_collector()
{
    let mut fleet = Fleet::start(FleetOptions::default()).await;
    let mut client = fleet.client().await;
    let spoiled: [(&str, Spoil); 3] = [
        ("samples[1].unit", Box::new(|s| s.unit = "k\0g".into())),
        ("samples[1].volume", Box::new(|s| s.volume = 1.7e308)),
        (
            "samples",
            // Not stored, but it counts toward what the broker path carries.
            Box::new(|s| {
                s.metadata
                    .insert("padding".into(), "x".repeat(2 * 1024 * 1024));
            }),
        ),
    ];
    for (field, spoil) in &spoiled {
        let mut samples: Vec<_> = (0..3)
            .map(|i| sample(format!("{}-bad-{i}", fleet.id), 1.0))
            .collect();
        spoil(&mut samples[1]);
        let status = client
            .post_samples(PostSamplesRequest { samples })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}");
        assert!(
            status.message().contains(&format!("`{field}`")),
            "{field}: {}",
            status.message()
        );
    }
    // The same NUL sent straight to the broker: dead-lettered with its
    // reason, not retried for ever; the batch after it is stored.
    let (connection, channel) = broker().await;
    let mut bad = sample(format!("{}-nul", fleet.id), 1.0);
    bad.unit = "k\0g".into();
    let body = RecordSamples { samples: vec![bad] }.encode_to_vec();
    cast_to_collector(&channel, &fleet.exchange, method_headers(), body).await;
    let reason = next_dead_letter(&channel, &fleet.exchange).await;
    assert!(reason.contains("unit"), "dead-letter reason: {reason}");
    pipeline_still_stores(&fleet, "after", 0).await;
    // Statistics over any range a client can send: an answer, not a panic.
    let reply = client
        .get_statistics(GetStatisticsRequest {
            meter: "cpu_util".into(),
            start: Some(prost_types::Timestamp {
                seconds: i64::MIN,
                nanos: 0,
            }),
            end: Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 999_999_999,
            }),
            period_seconds: u32::MAX,
            ..Default::default()
        })
        .await
        .expect("statistics over the widest range");
    let count: u64 = reply.into_inner().buckets.iter().map(|b| b.count).sum();
    assert_eq!(count, 30, "every stored sample is counted");
    assert_running(&mut fleet.collector);
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_is_declared_again_and_posting_resumes() {
    let mut fleet = Fleet::start(FleetOptions::default()).await;
    let stored = pipeline_still_stores(&fleet, "before", 0).await;
    let (connection, channel) = broker().await;
    channel
        .queue_delete(
            wire::topic_queue(&fleet.exchange, "collector")
                .as_str()
                .into(),
            QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the collector's queue");
    // post_steadily retries each batch until the api acknowledges it: it
    // returns only once the collector consumes again.
    let started = Instant::now();
    pipeline_still_stores(&fleet, "after", stored).await;
    eprintln!(
        "posting resumed {:.1} s after the queue was deleted",
        started.elapsed().as_secs_f64()
    );
    assert!(
        fleet
            .collector
            .as_ref()
            .expect("running")
            .log_text()
            .contains("cancelled the consumer"),
        "the collector said what happened"
    );
    assert_running(&mut fleet.collector);
    let _ = connection.close(200, "done".into()).await;
}

/// Runs `binary --check-config` with `env`, bounded in time.
fn check_config(binary: &str, env: &[(&str, String)]) -> (i32, String) {
    let mut command = Command::new(support::binary(binary));
    for (key, _) in std::env::vars() {
        if key.starts_with("SWITCHYARD_") {
            command.env_remove(key);
        }
    }
    command
        .arg("--check-config")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("runs");
    let status = switchyard_testkit::wait_exit(&mut child, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{binary} --check-config hung"));
    let output = child.wait_with_output().expect("output");
    (
        status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn hostile_configuration_is_refused_at_check_config_naming_every_key() {
    let (code, text) = check_config(
        "switchyard-collector",
        &[
            ("SWITCHYARD_AMQP__EXCHANGE", "x".repeat(300)),
            ("SWITCHYARD_AMQP__MAX_BODY_BYTES", "0".into()),
            ("SWITCHYARD_GRPC__TLS_CERT_FILE", "/dev/zero".into()),
            (
                "SWITCHYARD_GRPC__TLS_KEY_FILE",
                "/nonexistent/key.pem".into(),
            ),
            ("SWITCHYARD_ROLLOUT__HEARTBEAT_INTERVAL_MS", "0".into()),
        ],
    );
    assert_eq!(code, 2, "{text}");
    for key in [
        "amqp.exchange",
        "amqp.max_body_bytes",
        "grpc.tls_cert_file",
        "grpc.tls_key_file",
        "rollout.heartbeat_interval_ms",
    ] {
        assert!(text.contains(key), "{key} is named:\n{text}");
    }
    let (code, text) = check_config(
        "switchyard-api",
        &[
            (
                "SWITCHYARD_API__AUTH_TOKENS",
                "[\"0123456789abcdef \"]".into(),
            ),
            ("SWITCHYARD_API__ALARM_CALL_TIMEOUT_MS", "0".into()),
        ],
    );
    assert_eq!(code, 2, "{text}");
    for key in ["api.auth_tokens", "api.alarm_call_timeout_ms"] {
        assert!(text.contains(key), "{key} is named:\n{text}");
    }
    assert!(
        !text.contains("0123456789abcdef"),
        "the token is not echoed:\n{text}"
    );
    let (code, text) = check_config(
        "switchyard-notifier",
        &[("SWITCHYARD_NOTIFIER__WEBHOOK_TIMEOUT_MS", "0".into())],
    );
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("notifier.webhook_timeout_ms"), "{text}");
}

/// A tmpfs of `size` mounted for the test, unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: std::path::PathBuf, size: &str) -> Option<Self> {
        std::fs::create_dir_all(&path).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .ok()?
            .success();
        mounted.then_some(Self { path })
    }

    fn grow(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .expect("mount");
        assert!(status.success(), "remount");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_sqlite_loses_no_acknowledged_sample() {
    let mut fleet = Fleet::start(FleetOptions::default()).await;
    let Some(disk) = SmallDisk::mount(fleet.dir.join("disk"), "1m") else {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    let database = disk.path.join("collector.db");
    let mut env = fleet.collector_env("threaded");
    env.push((
        "SWITCHYARD_STORAGE__URL".into(),
        format!("sqlite://{}?mode=rwc", database.display()),
    ));
    let _ = fleet.collector.take().expect("collector").stop();
    fleet.collector = Some(Service::start("collector", &fleet.dir, &env));
    // 10,000 samples: far more than 1 MiB holds.
    let (acknowledged, _) = post_steadily(
        fleet.client().await,
        format!("{}-full", fleet.id),
        100,
        100,
        Duration::from_millis(5),
    )
    .await;
    assert_eq!(acknowledged.len(), 10_000);
    let full = Instant::now();
    while !fleet
        .collector
        .as_ref()
        .expect("running")
        .log_text()
        .contains("full")
    {
        assert!(full.elapsed() < BOUND, "the disk never filled up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "the disk filled up {:.1} s into the load; growing it",
        full.elapsed().as_secs_f64()
    );
    disk.grow("64m");
    let url = format!("sqlite://{}?mode=rw", database.display());
    let started = Instant::now();
    loop {
        let (rows, distinct) = support::samples_stored(&url).await;
        assert_eq!(rows, distinct, "a sample was stored twice");
        if distinct as usize == acknowledged.len() {
            break;
        }
        assert!(
            started.elapsed() < BOUND,
            "only {distinct} of {} acknowledged samples were stored after the disk grew",
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_running(&mut fleet.collector);
    // Stop the collector before the disk goes away.
    let _ = fleet.collector.take().expect("collector").stop();
    drop(disk);
}

#[test]
fn sigterm_while_waiting_for_the_broker_at_start_up_stops_the_api() {
    // Nothing listens there: the api waits for its broker.
    let dead_broker = format!("amqp://guest:guest@127.0.0.1:{}/%2f", support::free_port());
    let mut command = Command::new(support::binary("switchyard-api"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SWITCHYARD_") || key.starts_with("OTEL_") {
            command.env_remove(key);
        }
    }
    let (mut child, lines) = switchyard_testkit::spawn_logged(
        command
            .env("SWITCHYARD_AMQP__URL", dead_broker)
            .env("SWITCHYARD_GRPC__LISTEN", "127.0.0.1:0")
            .env("SWITCHYARD_EXECUTOR__SHUTDOWN_GRACE_MS", "1000"),
    );
    let deadline = Instant::now() + BOUND;
    while !lines
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .expect("the api says it is starting")
        .contains("starting in phase")
    {}
    let signalled = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = switchyard_testkit::wait_exit(&mut child, Duration::from_secs(15))
        .expect("the api stops on SIGTERM while waiting for its broker");
    eprintln!(
        "stopped {:.1} s after SIGTERM (status {status})",
        signalled.elapsed().as_secs_f64()
    );
    // The grace period (1 s) and a margin: not the 10 s connect time-out.
    assert!(signalled.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_answers_404_gets_counted_deliveries_then_a_dead_letter() {
    use switchyard_proto::metering::v1::*;
    let fleet = Fleet::start(FleetOptions {
        notifier_extra: vec![
            ("SWITCHYARD_AMQP__MAX_DELIVERIES".into(), "3".into()),
            ("SWITCHYARD_AMQP__RETRY_DELAY_MS".into(), "50".into()),
        ],
        ..FleetOptions::default()
    })
    .await;
    let webhook = support::Webhook::answering(0, "404 Not Found").await;
    let mut client = fleet.client().await;
    client
        .create_alarm(CreateAlarmRequest {
            alarm: Some(support::hot_alarm(webhook.url.clone())),
        })
        .await
        .expect("alarm");
    post_steadily(client, format!("{}-w", fleet.id), 1, 5, Duration::ZERO).await;
    let (connection, channel) = broker().await;
    let queue = wire::dead_letter_queue(&wire::pool_queue(&fleet.exchange, "webhook-sender"));
    let reason = next_dead_letter_in(&channel, &queue).await;
    assert!(reason.contains("404"), "dead-letter reason: {reason}");
    assert_eq!(
        webhook.received().len(),
        3,
        "one post per delivery (amqp.max_deliveries = 3), no retries in place"
    );
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_collector_queue_pushes_back_to_the_caller_and_loses_nothing() {
    use switchyard_storage::sqlx::{self, Connection};
    let fleet = Fleet::start(FleetOptions {
        extra: vec![("SWITCHYARD_AMQP__MAX_QUEUE_LENGTH".into(), "5".into())],
        ..FleetOptions::default()
    })
    .await;
    let mut client = fleet.client().await;
    let stored = pipeline_still_stores(&fleet, "before", 0).await;
    // The database stops answering writes: the collector's endpoints block
    // and the messages behind its prefetch pile up in its queue.
    let mut lock = sqlx::postgres::PgConnection::connect(&fleet.database_url)
        .await
        .expect("database");
    sqlx::query("BEGIN")
        .execute(&mut lock)
        .await
        .expect("begin");
    sqlx::query("LOCK TABLE samples IN ACCESS EXCLUSIVE MODE")
        .execute(&mut lock)
        .await
        .expect("lock");
    let mut acknowledged = 0;
    let started = Instant::now();
    let refusal = loop {
        let batch: Vec<_> = (0..10)
            .map(|i| sample(format!("{}-full-{acknowledged}-{i}", fleet.id), 1.0))
            .collect();
        match client
            .post_samples(PostSamplesRequest { samples: batch })
            .await
        {
            Ok(_) => acknowledged += 10,
            Err(status) => break status,
        }
        assert!(started.elapsed() < BOUND, "the api never pushed back");
    };
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{}",
        refusal.message()
    );
    eprintln!("{acknowledged} samples acknowledged before the queue was full");
    sqlx::query("ROLLBACK")
        .execute(&mut lock)
        .await
        .expect("unlock");
    fleet.wait_stored(stored + acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_the_server_keeps_answering() {
    use tokio::io::AsyncReadExt;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let dir = std::env::temp_dir().join(format!("switchyard-idle-{}", wire::new_id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let echo = Service::start(
        "echo",
        &dir,
        &[
            ("SWITCHYARD_GRPC__LISTEN".into(), "127.0.0.1:0".into()),
            ("SWITCHYARD_GRPC__MAX_CONNECTIONS".into(), "50".into()),
            (
                "SWITCHYARD_GRPC__FIRST_BYTE_TIMEOUT_MS".into(),
                "500".into(),
            ),
        ],
    );
    let address = echo.grpc.clone().expect("echo serves gRPC");
    // 200 connections that never send a byte: four times the limit.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(
            tokio::net::TcpStream::connect(&address)
                .await
                .expect("connect"),
        );
    }
    // A real client gets answers while they are held, or right after the
    // silent ones are closed.
    let started = Instant::now();
    loop {
        let answered = async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                .ok()?
                .connect()
                .await
                .ok()?;
            let mut health = HealthClient::new(channel);
            health.check(HealthCheckRequest::default()).await.ok()
        };
        if tokio::time::timeout(Duration::from_secs(2), answered)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the server stopped answering with 200 idle connections open"
        );
    }
    eprintln!(
        "answered {:.2} s after 200 idle connections were opened",
        started.elapsed().as_secs_f64()
    );
    // Every silent connection is closed by the server (EOF or reset), after
    // whatever it sent first (its HTTP/2 settings).
    for mut connection in idle {
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), connection.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "an idle connection was kept open");
    }
    assert!(
        echo.log_text().contains("grpc.max_connections"),
        "the limit was logged"
    );
    let _ = echo.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
