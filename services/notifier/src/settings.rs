//! The notifier's configuration.

use serde::{Deserialize, Serialize};
use switchyard_config::Settings;
use switchyard_executor::ExecutorConfig;
use switchyard_grpc::GrpcConfig;
use switchyard_service::in_section;
use switchyard_storage::StorageConfig;

/// `[notifier]`: where statistics come from and how webhooks are sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifierConfig {
    /// The collector's query API.
    pub collector_url: switchyard_config::HttpUrl,
    /// POST attempts per delivery before the message is requeued (with backoff).
    pub webhook_attempts: u32,
    /// Delay before the second attempt; doubles each time.
    pub webhook_backoff_ms: u64,
    /// Timeout of one POST.
    pub webhook_timeout_ms: u64,
    /// Most `sample.recorded` notifications waiting for the alarm evaluator;
    /// beyond, the oldest is dropped for the newest (a meter whose
    /// notification was dropped is evaluated again at its next batch). 0: no
    /// limit.
    pub evaluation_backlog: u32,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            collector_url: switchyard_config::HttpUrl::loopback(50052),
            webhook_attempts: 3,
            webhook_backoff_ms: 200,
            webhook_timeout_ms: 2000,
            evaluation_backlog: 10_000,
        }
    }
}

switchyard_app::fleet_settings! {
    /// Everything the notifier reads from defaults, its TOML file and the
    /// environment. `[grpc]` serves health and reflection only: the
    /// notifier's API is AMQP.
    pub struct NotifierSettings {
        executor: ExecutorConfig::in_phase(switchyard_executor::Phase::Bridged),
        grpc: GrpcConfig {
            listen: switchyard_config::Listen::loopback(50053),
            ..GrpcConfig::default()
        },
        ;
        /// `[storage]`: where alarms are kept.
        pub storage: StorageConfig = StorageConfig::sqlite_for("notifier"),
        /// `[notifier]`.
        pub notifier: NotifierConfig = NotifierConfig::default(),
    }
}

impl Settings for NotifierSettings {
    fn problems(&self) -> Vec<(String, String)> {
        let mut problems = switchyard_app::fleet_problems(self);
        problems.extend(in_section("storage", self.storage.problems()));
        if let Some(problem) =
            switchyard_config::check::at_least(self.notifier.webhook_timeout_ms, 1, "ms")
        {
            problems.push(("notifier.webhook_timeout_ms".into(), problem));
        }
        if self.notifier.webhook_attempts == 0 {
            problems.push((
                "notifier.webhook_attempts".into(),
                "0 is out of range; accepted: 1 or more".into(),
            ));
        }
        problems
    }
}
