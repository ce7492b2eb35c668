//! The api's configuration.

use serde::{Deserialize, Serialize};
use switchyard_config::{Secret, Settings};
use switchyard_executor::{ExecutorConfig, Phase};

/// `[api]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// The collector's query API.
    pub collector_url: switchyard_config::HttpUrl,
    /// How long an alarm call to the notifier may take.
    pub alarm_call_timeout_ms: u64,
    /// Bearer tokens accepted on the public API; empty accepts every caller.
    pub auth_tokens: Vec<Secret>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            collector_url: switchyard_config::HttpUrl::loopback(50052),
            alarm_call_timeout_ms: 5000,
            auth_tokens: Vec::new(),
        }
    }
}

switchyard_app::fleet_settings! {
    /// Everything the api reads from defaults, its TOML file and the environment.
    pub struct ApiSettings {
        executor: ExecutorConfig::in_phase(Phase::Async),
        ;
        /// `[api]`.
        pub api: ApiConfig = ApiConfig::default(),
        /// `[dashboard]`: the rollout page.
        pub dashboard: crate::dashboard::DashboardConfig = crate::dashboard::DashboardConfig::default(),
        /// `[fleet]`: judging a service's instances while an engine moves
        /// them between phases.
        pub fleet: switchyard_rollout::fleet::FleetConfig = switchyard_rollout::fleet::FleetConfig::default(),
    }
}

impl Settings for ApiSettings {
    fn problems(&self) -> Vec<(String, String)> {
        let mut problems = switchyard_app::fleet_problems(self);
        if let Some(problem) = self
            .api
            .auth_tokens
            .iter()
            .find_map(|token| switchyard_config::check::token(token.expose(), 16))
        {
            problems.push(("api.auth_tokens".into(), problem));
        }
        if let Some(problem) =
            switchyard_config::check::at_least(self.api.alarm_call_timeout_ms, 1, "ms")
        {
            problems.push(("api.alarm_call_timeout_ms".into(), problem));
        }
        problems.extend(switchyard_service::in_section(
            "dashboard",
            self.dashboard.problems(&self.api.auth_tokens),
        ));
        problems.extend(switchyard_service::in_section(
            "fleet",
            self.fleet.problems(),
        ));
        problems
    }
}
