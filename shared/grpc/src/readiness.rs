//! Readiness: named checks (transport connected, storage reachable, …) whose
//! conjunction is what `grpc.health.v1` reports for the server and for each
//! of its services.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use switchyard_executor::sync::lock;

/// Shared readiness of one server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Readiness {
    reporter: HealthReporter,
    checks: Arc<Mutex<BTreeMap<String, bool>>>,
    /// Watched checks that have not answered yet.
    pending: Arc<Mutex<BTreeSet<String>>>,
    changed: Arc<Notify>,
    services: Arc<Vec<String>>,
}

impl Readiness {
    /// Readiness for a server carrying `services` (fully qualified names), and
    /// the health service routes to serve. Ready until a check says otherwise.
    pub async fn new(services: &[&str]) -> (Self, tonic::service::Routes) {
        let (reporter, health) = tonic_health::server::health_reporter();
        let readiness = Self {
            reporter,
            checks: Arc::new(Mutex::new(BTreeMap::new())),
            pending: Arc::new(Mutex::new(BTreeSet::new())),
            changed: Arc::new(Notify::new()),
            services: Arc::new(services.iter().map(|s| s.to_string()).collect()),
        };
        readiness.publish(ServingStatus::Serving).await;
        (readiness, tonic::service::Routes::new(health))
    }

    /// Records one check's state and updates the health service.
    pub async fn set(&self, check: &str, ready: bool) {
        lock(&self.checks).insert(check.to_string(), ready);
        lock(&self.pending).remove(check);
        self.changed.notify_waiters();
        let status = if self.is_ready() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.publish(status).await;
    }

    /// `true` when every check is ready.
    pub fn is_ready(&self) -> bool {
        lock(&self.checks).values().all(|ready| *ready)
    }

    /// Waits until every watched check has answered and all are ready.
    pub async fn wait_ready(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let answered = lock(&self.pending).is_empty();
            if answered && self.is_ready() {
                return;
            }
            changed.await;
        }
    }

    /// Runs `then` once [`Self::wait_ready`] returns (e.g. telling the
    /// launcher's supervisor this worker is ready), unless `shutdown` comes
    /// first.
    pub fn on_ready(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
        then: impl FnOnce() + Send + 'static,
    ) {
        let readiness = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = readiness.wait_ready() => then(),
            }
        });
    }

    /// The checks that are not ready.
    pub fn failing(&self) -> Vec<String> {
        lock(&self.checks)
            .iter()
            .filter(|(_, ready)| !**ready)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Runs `probe` every `interval` until `shutdown`, recording its answer
    /// as the check `check` (e.g. `amqp` connected, `storage` answering).
    pub fn watch<F, Fut>(
        &self,
        check: &str,
        interval: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
        probe: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = bool> + Send,
    {
        let (readiness, check) = (self.clone(), check.to_string());
        lock(&self.pending).insert(check.clone());
        tokio::spawn(async move {
            loop {
                readiness.set(&check, probe().await).await;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        })
    }

    /// Reports NOT_SERVING for good: the server is draining.
    pub(crate) async fn stop(&self) {
        self.set("shutdown", false).await;
    }

    async fn publish(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for service in self.services.iter() {
            self.reporter.set_service_status(service, status).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn ready_waits_for_every_watched_check_to_answer_yes() {
        let (readiness, _) = Readiness::new(&["test.Service"]).await;
        let probes = Arc::new(AtomicUsize::new(0));
        let counted = probes.clone();
        let stop = tokio_util::sync::CancellationToken::new();
        // Answers "not ready" twice, then "ready".
        readiness.watch(
            "database",
            Duration::from_millis(5),
            stop.clone(),
            move || std::future::ready(counted.fetch_add(1, Ordering::SeqCst) >= 2),
        );
        tokio::time::timeout(Duration::from_secs(5), readiness.wait_ready())
            .await
            .expect("ready in time");
        assert!(
            probes.load(Ordering::SeqCst) >= 3,
            "not before the third probe"
        );
        assert!(readiness.is_ready());
        stop.cancel();
    }

    #[tokio::test]
    async fn a_lock_poisoned_by_a_panic_still_records_and_reports_checks() {
        let (readiness, _) = Readiness::new(&["test.Service"]).await;
        poison(readiness.checks.clone());
        poison(readiness.pending.clone());
        assert!(readiness.checks.is_poisoned() && readiness.pending.is_poisoned());
        readiness.set("database", false).await;
        assert_eq!(readiness.failing(), ["database"]);
        assert!(!readiness.is_ready());
        readiness.set("database", true).await;
        tokio::time::timeout(Duration::from_secs(5), readiness.wait_ready())
            .await
            .expect("ready despite the poisoned locks");
    }

    /// Poisons `mutex`: a thread panics while it holds it.
    fn poison<T: Send + 'static>(mutex: Arc<Mutex<T>>) {
        let held = std::thread::spawn(move || {
            let _guard = mutex.lock();
            panic!("poisoning the lock on purpose");
        })
        .join();
        assert!(held.is_err());
    }
}
