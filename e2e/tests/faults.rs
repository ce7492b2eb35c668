//! Faults against the real binaries, RabbitMQ and PostgreSQL: nothing the api
//! acknowledged is lost or stored twice, whatever fails in between.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use support::{Fleet, FleetOptions, post_steadily};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_mid_stream_loses_and_duplicates_nothing() {
    let mut fleet = Fleet::start(FleetOptions::default()).await;
    let load = fleet.load("k", 100, 10, Duration::from_millis(15)).await;
    fleet.wait_stored_at_least(100).await;
    let mut collector = fleet.collector.take().expect("collector");
    collector.child.kill().expect("SIGKILL");
    let _ = collector.child.wait();
    drop(collector);
    fleet.start_collector("threaded");
    let (acknowledged, _) = load.await.expect("load");
    assert_eq!(acknowledged.len(), 1000);
    fleet.wait_stored(acknowledged.len()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_cleanly_and_returns_what_it_did_not_take() {
    let mut fleet = Fleet::start(FleetOptions::default()).await;
    let load = fleet.load("t", 60, 20, Duration::from_millis(5)).await;
    fleet.wait_stored_at_least(100).await;
    let started = Instant::now();
    let status = fleet.collector.take().expect("collector").stop();
    assert_eq!(status, 0, "the collector drained and exited 0");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "within the grace period"
    );
    let (acknowledged, _) = load.await.expect("load");
    // What the stopped collector had not taken waits in its queue for the next one.
    fleet.start_collector("async");
    fleet.wait_stored(acknowledged.len()).await;
    for service in ["notifier", "api"] {
        let stopped = match service {
            "notifier" => fleet.notifier.take(),
            _ => fleet.api.take(),
        };
        assert_eq!(
            stopped.expect("running").stop(),
            0,
            "{service} exits 0 on SIGTERM"
        );
    }
}

/// A TCP proxy that can cut every connection and refuse new ones.
struct Proxy {
    port: u16,
    open: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    async fn start(upstream: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let open = Arc::new(AtomicBool::new(true));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(generation);
        let (is_open, cuts) = (Arc::clone(&open), Arc::clone(&generation));
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !is_open.load(SeqCst) {
                    continue; // dropped: refused
                }
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            open,
            generation,
        }
    }

    fn cut(&self) {
        self.open.store(false, SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.open.store(true, SeqCst);
    }
}

/// Waits (20 s at most) until the collector's gRPC health reports `status`.
async fn wait_collector_health(port: u16, status: ServingStatus) {
    let started = Instant::now();
    while collector_health(port).await != status as i32 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the collector's health never reported {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn collector_health(port: u16) -> i32 {
    let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("url")
        .connect()
        .await
    else {
        return -1;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_waits_with_backoff_then_stores_everything() {
    let proxy = Proxy::start("127.0.0.1:5432").await;
    // The collector is restarted to reach the fleet's database through the proxy.
    let mut fleet = Fleet::start(FleetOptions::default()).await;
    let through_proxy = fleet
        .database_url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    fleet.collector.take().expect("collector").stop();
    let mut env = fleet.collector_env("threaded");
    env.retain(|(k, _)| k != "SWITCHYARD_STORAGE__URL");
    env.push(("SWITCHYARD_STORAGE__URL".into(), through_proxy));
    env.push((
        "SWITCHYARD_STORAGE__ACQUIRE_TIMEOUT_MS".into(),
        "1000".into(),
    ));
    env.push(("SWITCHYARD_AMQP__RETRY_DELAY_MS".into(), "100".into()));
    env.push((
        "SWITCHYARD_METRICS__LISTEN".into(),
        format!("127.0.0.1:{}", support::free_port()),
    ));
    let metrics = env
        .iter()
        .find(|(k, _)| k == "SWITCHYARD_METRICS__LISTEN")
        .map(|(_, v)| v.clone())
        .expect("metrics");
    fleet.collector = Some(support::Service::start("collector", &fleet.dir, &env));
    let mut client = fleet.client().await;

    proxy.cut();
    // Readiness reports the database down.
    wait_collector_health(fleet.collector_port, ServingStatus::NotServing).await;
    let (acknowledged, _) = post_steadily(
        client.clone(),
        format!("{}-db", fleet.id),
        5,
        10,
        Duration::from_millis(10),
    )
    .await;
    // A window, not a settling pause: what is asked is that nothing is
    // stored and that the retries are spaced out, and neither an absence
    // nor a rate is an event to await.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fleet.stored().await.0,
        0,
        "nothing could be stored while the database was down"
    );
    let attempts = failed(&metrics, "record_samples").await;
    assert!(attempts >= 5, "the batches were tried: {attempts}");
    assert!(
        attempts <= 60,
        "backoff, not a spin: {attempts} attempts for 5 batches in ~3 s"
    );

    proxy.restore();
    fleet.wait_stored(acknowledged.len()).await;
    // Readiness recovers.
    wait_collector_health(fleet.collector_port, ServingStatus::Serving).await;
    let _ = client
        .list_meters(switchyard_proto::metering::v1::ListMetersRequest::default())
        .await;
}

/// How many calls of `endpoint` have failed, from the metrics page at
/// `metrics` (0 before the first).
async fn failed(metrics: &str, endpoint: &str) -> u64 {
    let label = format!("endpoint=\"{endpoint}\"");
    support::http_get_text(metrics, "/metrics")
        .await
        .lines()
        .find(|l| l.starts_with("switchyard_endpoint_failed_total") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_down_then_up_is_delivered_once() {
    use switchyard_proto::metering::v1::*;
    let metrics = format!("127.0.0.1:{}", support::free_port());
    let fleet = Fleet::start(FleetOptions {
        notifier_extra: vec![
            ("SWITCHYARD_METRICS__LISTEN".into(), metrics.clone()),
            ("SWITCHYARD_NOTIFIER__WEBHOOK_ATTEMPTS".into(), "2".into()),
            (
                "SWITCHYARD_NOTIFIER__WEBHOOK_BACKOFF_MS".into(),
                "50".into(),
            ),
            ("SWITCHYARD_AMQP__RETRY_DELAY_MS".into(), "100".into()),
        ],
        ..FleetOptions::default()
    })
    .await;
    let port = support::free_port();
    let mut client = fleet.client().await;
    client
        .create_alarm(CreateAlarmRequest {
            alarm: Some(support::hot_alarm(format!("http://127.0.0.1:{port}/hook"))),
        })
        .await
        .expect("alarm");
    post_steadily(
        client.clone(),
        format!("{}-w", fleet.id),
        1,
        5,
        Duration::ZERO,
    )
    .await;
    // The receiver is down: the notifier keeps trying (two deliveries of
    // the notification have failed, each after its own attempts).
    let down = Instant::now();
    while failed(&metrics, "deliver_webhook").await < 2 {
        assert!(
            down.elapsed() < Duration::from_secs(30),
            "the notifier never tried the webhook twice while it was down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let webhook = support::Webhook::start_on(port).await;
    let started = Instant::now();
    while webhook.received().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the webhook was never delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A window for a second call that must not come.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        webhook.received().len(),
        1,
        "delivered once: {:?}",
        webhook.received()
    );
}
