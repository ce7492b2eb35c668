//! RabbitMQ restarted under load: every sample the api acknowledged is stored
//! exactly once, and the services recover without being restarted. Its own
//! test binary: it stops the shared broker, so nothing may run beside it.
//!
//! lapin's own recovery does not always bring a consumer or a connection
//! back after `stop_app`/`start_app`; the services then rebuild their
//! messaging (`amqp.recovery_timeout_ms`, `switchyard_service::Restart`).
//! This test is what showed it and what proves the rebuild.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Fleet, FleetOptions, post_steadily};

fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing_acknowledged() {
    let mut fleet = Fleet::start(FleetOptions::default()).await;
    // 10,000 samples: 500 batches of 20, one batch every 20 ms.
    let load = tokio::spawn(post_steadily(
        fleet.client().await,
        format!("{}-b", fleet.id),
        500,
        20,
        Duration::from_millis(20),
    ));
    // The broker goes down mid-load: once 1,000 samples are in.
    fleet.wait_stored_at_least(1000).await;
    let restart = tokio::task::spawn_blocking(|| {
        rabbitmqctl(&["stop_app"]);
        std::thread::sleep(Duration::from_secs(3));
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    });
    restart.await.expect("restart");
    let (acknowledged, retries) = load.await.expect("load");
    assert_eq!(acknowledged.len(), 10_000);
    eprintln!(
        "10,000 samples acknowledged; {retries} batch posts were refused during the outage and retried"
    );
    fleet.wait_stored(acknowledged.len()).await;
    for service in [&mut fleet.api, &mut fleet.collector, &mut fleet.notifier] {
        let service = service.as_mut().expect("running");
        assert!(
            service.child.try_wait().expect("status").is_none(),
            "{} recovered without a restart",
            service.name
        );
    }
}
