//! The collector's configuration.

use serde::{Deserialize, Serialize};
use switchyard_config::Settings;
use switchyard_executor::ExecutorConfig;
use switchyard_grpc::GrpcConfig;
use switchyard_messaging::AmqpConfig;
use switchyard_rollout::heartbeat::RolloutConfig;
use switchyard_service::MetricsConfig;
use switchyard_storage::StorageConfig;
use switchyard_telemetry::TelemetryConfig;

/// Everything the collector reads from defaults, its TOML file and the environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorSettings {
    pub executor: ExecutorConfig,
    pub telemetry: TelemetryConfig,
    pub metrics: MetricsConfig,
    /// `[launcher]`: worker processes under one supervisor.
    pub launcher: switchyard_service::LauncherConfig,
    pub amqp: AmqpConfig,
    /// The internal query API; loopback (or the compose network) only.
    pub grpc: GrpcConfig,
    pub storage: StorageConfig,
    pub rollout: RolloutConfig,
}

impl Default for CollectorSettings {
    fn default() -> Self {
        Self {
            executor: ExecutorConfig::default(),
            telemetry: TelemetryConfig::default(),
            metrics: MetricsConfig::default(),
            launcher: switchyard_service::LauncherConfig::default(),
            amqp: AmqpConfig::default(),
            grpc: GrpcConfig {
                listen: switchyard_config::Listen::loopback(50052),
                ..GrpcConfig::default()
            },
            storage: StorageConfig::sqlite_for("collector"),
            rollout: RolloutConfig::default(),
        }
    }
}

impl Settings for CollectorSettings {
    fn problems(&self) -> Vec<(String, String)> {
        let mut problems = switchyard_app::fleet_problems(self);
        problems.extend(switchyard_service::in_section(
            "storage",
            self.storage.problems(),
        ));
        problems
    }
}

switchyard_app::fleet_settings!(CollectorSettings);
