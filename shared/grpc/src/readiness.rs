//! Readiness: named checks (transport connected, storage reachable, …) whose
//! conjunction is what `grpc.health.v1` reports for the server and for each
//! of its services.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Shared readiness of one server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Readiness {
    reporter: HealthReporter,
    checks: Arc<Mutex<BTreeMap<String, bool>>>,
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
            services: Arc::new(services.iter().map(|s| s.to_string()).collect()),
        };
        readiness.publish(ServingStatus::Serving).await;
        (readiness, tonic::service::Routes::new(health))
    }

    /// Records one check's state and updates the health service.
    pub async fn set(&self, check: &str, ready: bool) {
        if let Ok(mut checks) = self.checks.lock() {
            checks.insert(check.to_string(), ready);
        }
        let status = if self.is_ready() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.publish(status).await;
    }

    /// `true` when every check is ready.
    pub fn is_ready(&self) -> bool {
        self.checks
            .lock()
            .map(|checks| checks.values().all(|ready| *ready))
            .unwrap_or(false)
    }

    /// The checks that are not ready.
    pub fn failing(&self) -> Vec<String> {
        self.checks
            .lock()
            .map(|checks| {
                checks
                    .iter()
                    .filter(|(_, ready)| !**ready)
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default()
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
