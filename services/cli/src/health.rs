//! `switchyard health`: a service's gRPC health; exit 0 when SERVING
//! (container healthchecks).

use std::time::Duration;

use anyhow::{Context as _, bail};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, clap::Args)]
pub struct Health {
    /// The service's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// A service name; empty asks about the whole server.
    #[arg(long, default_value = "")]
    service: String,
}

pub async fn run(args: &Health) -> anyhow::Result<()> {
    let addr = &args.addr;
    let channel = tonic::transport::Endpoint::from_shared(addr.clone())
        .with_context(|| format!("--addr {addr}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("cannot reach {addr}"))?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service.clone(),
        })
        .await
        .context("health check")?
        .into_inner()
        .status;
    if status == ServingStatus::Serving as i32 {
        println!("SERVING");
        Ok(())
    } else {
        bail!("{addr} is not serving (status {status})")
    }
}
