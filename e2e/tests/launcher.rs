//! The launcher in the fleet, on the real RabbitMQ and PostgreSQL: the
//! collector's phase switched by SIGHUP under a steady stream of samples
//! loses and duplicates none; canaries show in the rollout table; a canary
//! that blocks the loop is rolled back, published as `rollout.rolled_back`
//! and shown by `switchyard rollout`; `switchyard rollout promote` makes a
//! healthy canary's phase the main phase; the rollout page shows all of it
//! live in a real browser.

mod support;

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{BOUND, Browser, Fleet, FleetOptions, Service, free_port, switchyard, text};
use switchyard_proto::echo::v1::SayRequest;
use switchyard_proto::messaging::v1::RolledBack;
use switchyard_proto::metering::v1::{InstanceStatus, PostSamplesRequest};
use switchyard_rollout::heartbeat;
use switchyard_telemetry::receiver::OtlpReceiver;
use switchyard_testkit::echo;
use tokio_util::sync::CancellationToken;

/// Writes `deploy/config/<service>.toml` in the fleet's directory (the
/// services run there) and returns the environment without the phase the
/// fleet would set: the phase comes from the file, so SIGHUP can change it.
fn configure(
    fleet: &Fleet,
    service: &str,
    text: &str,
    env: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let dir = fleet.dir.join("deploy/config");
    std::fs::create_dir_all(&dir).expect("config dir");
    std::fs::write(dir.join(format!("{service}.toml")), text).expect("config file");
    env.into_iter()
        .filter(|(key, _)| key != "SWITCHYARD_EXECUTOR__PHASE")
        .collect()
}

fn signal(service: &Service, name: &str) {
    let sent = Command::new("kill")
        .args([format!("-{name}"), service.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
}

/// Waits until the service's log has a line containing `needle`.
async fn wait_for_log(service: &Service, needle: &str) {
    wait_for_lines(service, needle, 1).await;
}

/// Waits until the service's log has `count` lines containing `needle`.
async fn wait_for_lines(service: &Service, needle: &str, count: usize) {
    let started = Instant::now();
    while service.log_text().matches(needle).count() < count {
        assert!(
            started.elapsed() < BOUND,
            "`{needle}` never came; the log:\n{}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the up instances of `service` in the rollout table satisfy `done`.
async fn wait_for_rollout(
    fleet: &Fleet,
    service: &str,
    done: impl Fn(&[InstanceStatus]) -> bool,
) -> Vec<InstanceStatus> {
    fleet.wait_for_rows(service, true, done).await
}

fn cli(fleet: &Fleet, args: &[&str]) -> Output {
    switchyard(&fleet.api.as_ref().expect("api").url(), args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_phase_switch_of_the_collector_under_load_loses_no_sample() {
    let mut fleet = Fleet::start(FleetOptions::default()).await;
    drop(fleet.collector.take());
    let file = |phase: &str| {
        format!(
            "[executor]\nphase = \"{phase}\"\n\n[launcher]\nworkers = 2\nrestart_backoff_ms = 100\n"
        )
    };
    let env = configure(
        &fleet,
        "collector",
        &file("threaded"),
        fleet.collector_env("threaded"),
    );
    let collector = Service::start("collector", &fleet.dir, &env);
    wait_for_rollout(&fleet, "collector", |up| {
        up.len() == 2 && up.iter().all(|i| i.phase == "threaded" && i.role == "main")
    })
    .await;

    let load = fleet.load("hup", 300, 10, Duration::from_millis(10)).await;
    fleet.wait_stored_at_least(100).await;
    configure(&fleet, "collector", &file("async"), Vec::new());
    let signalled = Instant::now();
    signal(&collector, "HUP");
    wait_for_log(&collector, "rollout complete").await;
    eprintln!(
        "collector switch of 2 workers under load: {:?} from SIGHUP to complete",
        signalled.elapsed()
    );
    assert!(!load.is_finished(), "the switch happened under load");
    let (acknowledged, retries) = load.await.expect("load");
    assert_eq!(acknowledged.len(), 3000);
    assert_eq!(retries, 0, "no call failed");
    fleet.wait_stored(acknowledged.len()).await;
    // The drained threaded workers said goodbye: they leave the table
    // instead of lingering as DOWN rows.
    fleet
        .wait_for_rows("collector", false, |rows| {
            rows.len() == 2 && rows.iter().all(|i| i.phase == "async" && i.up)
        })
        .await;
    assert_eq!(collector.stop(), 0);
}

/// Steady `Say` calls on 16 connections or more, both the main workers
/// (`threaded`) and the canary (`async`) serving some of them, until
/// stopped; counts calls that failed.
async fn echo_load(port: u16) -> (Arc<AtomicBool>, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let (stop, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let (stop_flag, failures) = (stop.clone(), failed.clone());
    let clients = echo::connections_reaching(
        &format!("http://127.0.0.1:{port}"),
        16,
        &["threaded", "async"],
    )
    .await;
    let task = tokio::spawn(async move {
        let mut callers = Vec::new();
        for client in clients {
            let (stop, failures) = (stop_flag.clone(), failures.clone());
            callers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let call = switchyard_grpc::retry_unsent(|| {
                        let mut client = client.clone();
                        async move {
                            client
                                .say(SayRequest {
                                    text: "load".into(),
                                    wait_ms: 0,
                                })
                                .await
                        }
                    });
                    if call.await.is_err() {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        for caller in callers {
            let _ = caller.await;
        }
    });
    (stop, failed, task)
}

fn echo_file(port: u16, canary: &str) -> String {
    format!(
        "[executor]\nphase = \"threaded\"\npool_size = 4\n\n[grpc]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [launcher]\nworkers = 2\nrestart_backoff_ms = 100\n\n\
         [launcher.canary]\nphase = \"async\"\nworkers = 1\nwindow_ms = 3000\nmin_calls = 20\n\
                  \n\
         [echo]\nrollout = true\n{canary}"
    )
}

fn echo_env(fleet: &Fleet) -> Vec<(String, String)> {
    vec![
        ("SWITCHYARD_AMQP__EXCHANGE".into(), fleet.exchange.clone()),
        (
            "SWITCHYARD_ROLLOUT__HEARTBEAT_INTERVAL_MS".into(),
            "300".into(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_canary_is_rolled_back_published_and_shown() {
    let fleet = Fleet::start(FleetOptions::default()).await;
    let stop = CancellationToken::new();
    let (mut published, _listener) = fleet
        .published::<RolledBack>(heartbeat::ROLLED_BACK, "rollback-watch", &stop)
        .await;
    let port = free_port();
    let env = configure(
        &fleet,
        "echo",
        &echo_file(port, "block_ms = 15\n"),
        echo_env(&fleet),
    );
    let echo = Service::start("echo", &fleet.dir, &env);
    wait_for_rollout(&fleet, "echo", |up| {
        up.iter().any(|i| i.role == "canary" && i.phase == "async")
            && up.iter().any(|i| i.role == "main" && i.phase == "threaded")
    })
    .await;

    // Both workers take connections before the callers connect.
    wait_for_lines(&echo, ") is ready", 2).await;
    let (stop_load, failed, load) = echo_load(port).await;
    let loaded = Instant::now();
    let event = tokio::time::timeout(BOUND, published.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no rollout.rolled_back in time; the log:\n{}",
                echo.log_text()
            )
        })
        .expect("a notification");
    assert_eq!(
        (
            event.service.as_str(),
            event.canary_phase.as_str(),
            event.main_phase.as_str(),
            event.signal.as_str()
        ),
        ("echo", "async", "threaded", "slow_polls"),
        "{event:?}"
    );
    assert!(event.detail.contains("slow polls per call"), "{event:?}");
    eprintln!(
        "blocking canary: rollout.rolled_back received {:?} after the load began: {}",
        loaded.elapsed(),
        event.detail
    );
    wait_for_log(&echo, "rollout complete").await;
    // A replacement worker's first heartbeat may go out before it hears
    // the launcher's note: wait for every worker to carry it.
    wait_for_rollout(&fleet, "echo", |up| {
        up.len() == 2
            && up.iter().all(|i| {
                i.phase == "threaded" && i.role == "main" && i.rollout.contains("rolled back")
            })
    })
    .await;
    stop_load.store(true, Ordering::Relaxed);
    load.await.expect("load");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no call failed");

    let shown = cli(&fleet, &["rollout"]);
    assert!(shown.status.success(), "{}", text(&shown));
    assert!(
        text(&shown).contains("echo: canary async rolled back to threaded (slow_polls)"),
        "{}",
        text(&shown)
    );
    assert_eq!(echo.stop(), 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_with_the_cli() {
    let fleet = Fleet::start(FleetOptions::default()).await;
    let port = free_port();
    let env = configure(&fleet, "echo", &echo_file(port, ""), echo_env(&fleet));
    let echo = Service::start("echo", &fleet.dir, &env);
    wait_for_rollout(&fleet, "echo", |up| {
        up.len() == 2
            && up.iter().any(|i| i.role == "canary" && i.phase == "async")
            && up.iter().any(|i| i.role == "main" && i.phase == "threaded")
    })
    .await;
    let shown = cli(&fleet, &["rollout"]);
    assert!(text(&shown).contains("canary"), "{}", text(&shown));

    // Both workers take connections before the callers connect.
    wait_for_lines(&echo, ") is ready", 2).await;
    let (stop_load, failed, load) = echo_load(port).await;
    wait_for_log(&echo, "canary async passed").await;
    let promoted = cli(&fleet, &["rollout", "promote", "echo", "--wait-s", "30"]);
    assert!(promoted.status.success(), "{}", text(&promoted));
    assert!(
        text(&promoted).contains("every up worker runs async"),
        "{}",
        text(&promoted)
    );
    wait_for_log(&echo, "rollout complete").await;
    stop_load.store(true, Ordering::Relaxed);
    load.await.expect("load");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no call failed");
    assert!(
        !echo.log_text().contains("rolled back"),
        "{}",
        echo.log_text()
    );

    // Nothing left to promote: a clear refusal.
    let again = cli(&fleet, &["rollout", "promote", "nothing-here"]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("no canary worker of `nothing-here`"),
        "{}",
        text(&again)
    );
    assert_eq!(echo.stop(), 0);
}

/// The rollout page in a real browser: the fleet's services with their
/// phases, a canary's judgement with its evidence and the phase switch of a
/// promote arrive live (no reload), recent calls link to the trace UI, and
/// the page logs no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_page_shows_phases_judgements_and_switches_live() {
    let receiver = OtlpReceiver::loopback().await.expect("receiver");
    let page_port = free_port();
    let fleet = Fleet::start(FleetOptions {
        otlp: Some(receiver.endpoint()),
        api_extra: vec![
            (
                "SWITCHYARD_DASHBOARD__LISTEN".into(),
                format!("127.0.0.1:{page_port}"),
            ),
            (
                "SWITCHYARD_DASHBOARD__TRACE_URL".into(),
                "http://127.0.0.1:16686/trace/{trace_id}".into(),
            ),
        ],
        ..FleetOptions::default()
    })
    .await;
    let url = format!("http://127.0.0.1:{page_port}/");
    let mut browser = tokio::task::block_in_place(Browser::start);
    let rows = |services: &str| {
        format!(
            "(() => {{ const rows = [...document.querySelectorAll('#instances tbody tr[data-service]')]\
             .map(r => r.dataset.service + ':' + r.dataset.phase + ':' + r.dataset.role);\
             return {services}.every(s => rows.includes(s)) && rows.join(' '); }})()"
        )
    };
    tokio::task::block_in_place(|| {
        browser.goto(&url);
        browser.eval("window.notReloaded = true");
        browser.wait(
            "the three services with their phases",
            &rows("['api:async:', 'collector:threaded:', 'notifier:bridged:']"),
            BOUND,
        );
    });

    let port = free_port();
    let env = configure(&fleet, "echo", &echo_file(port, ""), echo_env(&fleet));
    let echo = Service::start("echo", &fleet.dir, &env);
    tokio::task::block_in_place(|| {
        browser.wait(
            "the echo canary",
            &rows("['echo:async:canary', 'echo:threaded:main']"),
            BOUND,
        )
    });
    wait_for_lines(&echo, ") is ready", 2).await;
    let (stop_load, failed, load) = echo_load(port).await;
    let mut client = fleet.client().await;
    client
        .post_samples(PostSamplesRequest {
            samples: vec![support::sample(String::new(), 1.0)],
        })
        .await
        .expect("posted");
    let judgement = tokio::task::block_in_place(|| {
        browser.wait(
            "a canary judgement with its evidence",
            "[...document.querySelectorAll('.service-timeline[data-service=echo] \
             .event[data-kind=canary]')].map(e => e.textContent)\
             .find(t => t.includes('canary async: passed') && t.includes('median'))",
            BOUND,
        )
    });
    eprintln!("the page showed: {judgement}");

    let promoted = cli(&fleet, &["rollout", "promote", "echo", "--wait-s", "30"]);
    assert!(promoted.status.success(), "{}", text(&promoted));
    wait_for_log(&echo, "rollout complete").await;
    let switched = Instant::now();
    tokio::task::block_in_place(|| {
        browser.wait(
            "echo in its new phase",
            "(() => { const echo = [...document.querySelectorAll('#instances tbody tr[data-service=echo]')];\
             return echo.length === 2 && echo.every(r => r.dataset.phase === 'async' && r.dataset.role === 'main'); })()",
            Duration::from_secs(10),
        );
        browser.wait(
            "the switch on the timeline",
            "[...document.querySelectorAll('.service-timeline[data-service=echo] .event[data-kind=phase]')]\
             .some(e => e.textContent.includes('→ async ×2'))",
            Duration::from_secs(10),
        );
    });
    eprintln!(
        "the page showed the switch {:?} after the launcher completed it",
        switched.elapsed()
    );
    stop_load.store(true, Ordering::Relaxed);
    load.await.expect("load");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no call failed");

    tokio::task::block_in_place(|| {
        browser.wait(
            "charts per phase",
            "document.querySelectorAll('.chart[data-service=echo] polyline').length >= 4",
            BOUND,
        );
        browser.wait(
            "a recent call linked to the trace UI",
            "[...document.querySelectorAll('#traces a')].some(a => \
             /^http:\\/\\/127\\.0\\.0\\.1:16686\\/trace\\/[0-9a-f]{32}$/.test(a.href))",
            BOUND,
        );
        assert_eq!(
            browser.eval("window.notReloaded === true"),
            true,
            "the page reloaded"
        );
        let shot = support::artifacts().join("dashboard.png");
        browser.screenshot(&shot);
        eprintln!("screenshot: {}", shot.display());
        assert_eq!(
            browser.errors(),
            Vec::<String>::new(),
            "the page logged errors"
        );
    });
    assert_eq!(echo.stop(), 0);
}
