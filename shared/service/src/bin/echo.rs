//! `switchyard-echo`: the smallest Switchyard service, one endpoint of each
//! kind. Tests and benchmarks run it as a real process; it shows how a service
//! wires its endpoints into the shared skeleton.

use std::process::ExitCode;

use clap::Parser;
use serde::{Deserialize, Serialize};
use switchyard_config::{ConfigFlags, Settings};
use switchyard_executor::{EndpointKind, EndpointSpec, ExecutorConfig};
use switchyard_service::{MetricsConfig, ServiceSettings};
use switchyard_telemetry::TelemetryConfig;

const SERVICE: &str = "echo";

/// Echo's configuration: only the shared sections.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct EchoSettings {
    executor: ExecutorConfig,
    telemetry: TelemetryConfig,
    metrics: MetricsConfig,
}

impl Settings for EchoSettings {
    fn problems(&self) -> Vec<(String, String)> {
        switchyard_service::shared_problems(&self.executor, &self.telemetry, &self.metrics)
    }
}

impl ServiceSettings for EchoSettings {
    fn executor(&self) -> &ExecutorConfig {
        &self.executor
    }
    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
    fn metrics(&self) -> &MetricsConfig {
        &self.metrics
    }
}

/// Echo: answers every request with its own body.
#[derive(Debug, Parser)]
#[command(name = "switchyard-echo", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigFlags,
}

/// `echo` is already async; `echo_blocking` is legacy code not yet ported,
/// so echo runs in `bridged` and in non-strict `async`, not in `threaded`.
fn endpoints() -> Vec<EndpointSpec> {
    vec![
        EndpointSpec::new("echo", EndpointKind::Async),
        EndpointSpec::new("echo_blocking", EndpointKind::Blocking),
    ]
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded =
        match switchyard_service::configure::<EchoSettings>(SERVICE, &cli.config, &endpoints()) {
            Ok(loaded) => loaded,
            Err(code) => return code,
        };
    switchyard_service::run(SERVICE, loaded.settings, |_settings, running| async move {
        running.shutdown.cancelled().await;
        Ok(())
    })
}
