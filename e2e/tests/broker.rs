//! RabbitMQ restarted under load: every sample the api acknowledged is stored
//! exactly once, and the services recover without being restarted. Its own
//! test binary: it stops the shared broker, so nothing may run beside it.
//!
//! lapin's own recovery does not always bring a consumer or a connection
//! back after `stop_app`/`start_app`; the services then rebuild their
//! messaging (`amqp.recovery_timeout_ms`, `switchyard_service::Restart`).
//! This test is what showed it and what proves the rebuild: the collector
//! gives lapin 2 s (less than the broker is down), so it always rebuilds —
//! while the broker is still down, so its first rebuilds fail and are tried
//! again — and a batch whose `sample.recorded` publish was written just
//! before the connection died must not hold the rebuild up (its confirm
//! never comes: the publish gives up after 20 s and the batch is delivered
//! again). The api and the notifier keep the default and recover through
//! lapin.

mod support;

use std::time::Duration;

use support::{Fleet, FleetOptions, rabbitmqctl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing_acknowledged() {
    let mut fleet = Fleet::start(FleetOptions {
        collector_extra: vec![("SWITCHYARD_AMQP__RECOVERY_TIMEOUT_MS".into(), "2000".into())],
        ..FleetOptions::default()
    })
    .await;
    // 10,000 samples: 500 batches of 20, one batch every 20 ms.
    let load = fleet.load("b", 500, 20, Duration::from_millis(20)).await;
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
    // The collector went the rebuild path (2 s < the outage), in-process.
    let log = fleet.collector_log();
    assert!(
        log.contains("rebuilding messaging")
            && log.contains("restarting the service's connections"),
        "the collector never rebuilt its messaging:\n{}",
        fleet.collector_log_tail(40)
    );
    for service in [&mut fleet.api, &mut fleet.collector, &mut fleet.notifier] {
        let service = service.as_mut().expect("running");
        assert!(
            service.child.try_wait().expect("status").is_none(),
            "{} recovered without a restart",
            service.name
        );
    }
}
