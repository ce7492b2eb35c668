//! A run whose broker connection is lost while it is still starting ends,
//! and asks to be run again, instead of waiting for ever
//! (`App::starting`). Needs RabbitMQ on 127.0.0.1:5672 (`scripts/test`
//! starts it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use switchyard_app::{App, Host};
use switchyard_config::{SecretUrl, Settings};
use switchyard_executor::{Executor, ExecutorConfig, Phase};
use switchyard_service::{Restart, Running, SupervisorLink};
use switchyard_telemetry::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

switchyard_app::fleet_settings! {
    /// The fleet's sections alone.
    pub struct TestSettings {
        ;
    }
}

impl Settings for TestSettings {
    fn problems(&self) -> Vec<(String, String)> {
        switchyard_app::fleet_problems(self)
    }
}

/// A proxy in front of the local broker that, once muted, drops whatever
/// either side sends and keeps every connection open: a broker that went
/// silent without closing anything, as behind a partition.
struct MutingProxy {
    port: u16,
    muted: Arc<AtomicBool>,
}

impl MutingProxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let port = listener.local_addr().expect("bound").port();
        let muted = Arc::new(AtomicBool::new(false));
        let mute = Arc::clone(&muted);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect("127.0.0.1:5672").await else {
                    continue;
                };
                let (from_client, to_client) = inbound.into_split();
                let (from_broker, to_broker) = outbound.into_split();
                tokio::spawn(pass(from_client, to_broker, Arc::clone(&mute)));
                tokio::spawn(pass(from_broker, to_client, Arc::clone(&mute)));
            }
        });
        Self { port, muted }
    }

    fn mute(&self) {
        self.muted.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either ends, dropping what arrives muted.
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    muted: Arc<AtomicBool>,
) {
    let mut buffer = vec![0; 64 * 1024];
    while let Ok(read) = from.read(&mut buffer).await {
        if read == 0 {
            return;
        }
        if muted.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_waiting_on_a_connection_lost_for_good_ends_the_run() {
    let proxy = MutingProxy::start().await;
    let mut settings = TestSettings::default();
    settings.amqp.url = SecretUrl::new(format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port));
    // A second address keeps the lost connection's close short (2 s).
    settings.amqp.failover_urls = vec![SecretUrl::new("amqp://guest:guest@127.0.0.1:5672/%2f")];
    settings.amqp.heartbeat_s = 1;
    settings.amqp.recovery_timeout_ms = 2_000;
    let id = switchyard_messaging::wire::new_id();
    settings.amqp.exchange = format!("start-test-{id}");

    let executor =
        Executor::new("start-test", ExecutorConfig::in_phase(Phase::Async)).expect("executor");
    let shutdown = CancellationToken::new();
    let running = Running {
        supervisor: SupervisorLink::connect(executor.clone(), shutdown.clone(), false).await,
        executor,
        identity: Identity::new("start-test", "async"),
        shutdown: shutdown.clone(),
    };
    let mut app = App::new("start-test", running, Host::default(), Vec::new());
    app.connect(&settings)
        .await
        .expect("connected through the proxy");
    let server = app.rpc_server("start").expect("a server");

    // The broker goes silent: the server's declarations wait for an answer
    // that never comes, and lapin's heartbeats and recovery fail.
    proxy.mute();
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(30), app.serve_rpc(server)).await;
    let error = match outcome {
        Ok(Err(error)) => error,
        Ok(Ok(())) => panic!("the server started on a silent broker"),
        Err(_) => panic!("the start still waited after 30s, its connection long lost"),
    };
    assert!(error.is::<Restart>(), "asks to be run again: {error:#}");
    eprintln!(
        "the start ended {:.1} s after the broker went silent: {error:#}",
        started.elapsed().as_secs_f64()
    );
    shutdown.cancel();
}
