//! `switchyard health`: a service's gRPC health; exit 0 when SERVING
//! (container healthchecks). With `--verdict SERVICE` also the api's fleet
//! judge's verdict on this host's instances of the service: a failed one
//! makes the check fail, so an engine's rolling update (Docker's swarm
//! mode, `--update-failure-action rollback`) stops and reverts.

use std::time::Duration;

use anyhow::{Context as _, bail};
use switchyard_proto::metering::v1::GetRolloutRequest;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::Connection;

#[derive(Debug, clap::Args)]
pub struct Health {
    /// The service's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// A service name; empty asks about the whole server.
    #[arg(long, default_value = "")]
    service: String,
    /// Also ask the api (`--api`) for its verdict on this host's instances
    /// of this service (e.g. `collector`); fails when one is `fail`. An api
    /// that cannot be reached does not fail the check (an api outage must
    /// not roll back every update).
    #[arg(long, value_name = "SERVICE")]
    verdict: Option<String>,
    /// The host whose instances `--verdict` asks about.
    #[arg(long, default_value_t = switchyard_telemetry::host_name())]
    host: String,
}

pub async fn run(connection: &Connection, args: &Health) -> anyhow::Result<()> {
    serving(args).await?;
    match &args.verdict {
        Some(service) => verdict(connection, service, &args.host).await,
        None => Ok(()),
    }
}

/// The fleet judge's verdict on `service`'s instances on `host`.
async fn verdict(connection: &Connection, service: &str, host: &str) -> anyhow::Result<()> {
    let instances = match connection.client().await {
        Ok(mut client) => match client.get_rollout(GetRolloutRequest {}).await {
            Ok(response) => response.into_inner().instances,
            Err(status) => {
                println!(
                    "verdict unknown (the api answered {:?}); not failing",
                    status.code()
                );
                return Ok(());
            }
        },
        Err(error) => {
            println!("verdict unknown ({error:#}); not failing");
            return Ok(());
        }
    };
    let mine: Vec<_> = instances
        .iter()
        .filter(|i| i.service == service && i.host == host)
        .collect();
    if let Some(failed) = mine.iter().find(|i| i.verdict == "fail") {
        bail!(
            "{service} instance {} on {host} ({}): verdict fail: {}",
            failed.instance_id,
            failed.phase,
            failed.verdict_evidence
        );
    }
    let verdicts: Vec<&str> = mine
        .iter()
        .map(|i| {
            if i.verdict.is_empty() {
                "not judged"
            } else {
                i.verdict.as_str()
            }
        })
        .collect();
    println!(
        "verdict: {}",
        if verdicts.is_empty() {
            format!("no {service} instance on {host} heard yet")
        } else {
            verdicts.join(", ")
        }
    );
    Ok(())
}

async fn serving(args: &Health) -> anyhow::Result<()> {
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
