//! `switchyard rollout`: every instance, its phase, role and health, from
//! heartbeats; `rollout promote` makes a canary phase the main one.

use std::time::Duration;

use anyhow::bail;
use switchyard_proto::metering::v1::{GetRolloutRequest, InstanceStatus, PromoteCanaryRequest};

use crate::Connection;
use crate::output::{Column, Output, number, print_list, text, unix};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Make a service's canary phase its main phase (its launchers replace
    /// their workers one at a time).
    Promote {
        /// The service, as in the rollout table (e.g. `collector`).
        service: String,
        /// Wait up to this many seconds until every up instance of the
        /// service runs the canary's phase as a main worker; 0 does not wait.
        #[arg(long, default_value_t = 0)]
        wait_s: u64,
    },
}

pub async fn run(connection: &Connection, command: Option<&Command>) -> anyhow::Result<()> {
    match command {
        Some(Command::Promote { service, wait_s }) => promote(connection, service, *wait_s).await,
        None => show(connection).await,
    }
}

async fn show(connection: &Connection) -> anyhow::Result<()> {
    let instances = connection
        .client()
        .await?
        .get_rollout(GetRolloutRequest {})
        .await?
        .into_inner()
        .instances;
    print_rollout(connection.output, &instances)
}

/// The rollout table and its notes, or (`--output json`) the instances.
fn print_rollout(output: Output, instances: &[InstanceStatus]) -> anyhow::Result<()> {
    print_list(output, instances, &COLUMNS, cells, |i| {
        serde_json::json!({
            "service": i.service, "instance_id": i.instance_id, "pid": i.pid,
            "version": i.version, "phase": i.phase, "role": i.role, "up": i.up,
            "uptime_seconds": i.uptime_seconds, "in_flight": i.in_flight,
            "handled": i.handled, "failed": i.failed,
            "slow_polls": i.slow_polls, "offloaded": i.offloaded,
            "last_seen": unix(&i.last_seen), "rollout": i.rollout,
            "endpoint_forms": i.endpoint_forms, "host": i.host,
            "verdict": i.verdict, "verdict_evidence": i.verdict_evidence,
        })
    })?;
    if output == Output::Text {
        print_notes(instances);
    }
    Ok(())
}

const COLUMNS: [Column; 12] = [
    text("SERVICE"),
    text("INSTANCE"),
    text("PHASE"),
    text("ROLE"),
    text("HEALTH"),
    text("VERDICT"),
    number("IN FLIGHT"),
    number("HANDLED"),
    number("FAILED"),
    number("SLOW POLLS"),
    number("OFFLOADED"),
    text("TWO-FORM ENDPOINTS RUN"),
];

/// One instance's row under [`COLUMNS`].
fn cells(i: &InstanceStatus) -> Vec<String> {
    let or_dash = |value: &str| if value.is_empty() { "-" } else { value }.to_string();
    vec![
        i.service.clone(),
        i.instance_id.clone(),
        i.phase.clone(),
        or_dash(&i.role),
        if i.up { "up" } else { "DOWN" }.to_string(),
        or_dash(&i.verdict),
        i.in_flight.to_string(),
        i.handled.to_string(),
        i.failed.to_string(),
        i.slow_polls.to_string(),
        i.offloaded.to_string(),
        forms(i),
    ]
}

/// What the table leaves out: the launchers' rollout notes and the fleet
/// judge's evidence.
fn print_notes(instances: &[InstanceStatus]) {
    // The launchers' rollout states (a rollback and why), once per service.
    let mut notes: Vec<(&str, &str)> = instances
        .iter()
        .filter(|i| i.up && !i.rollout.is_empty())
        .map(|i| (i.service.as_str(), i.rollout.as_str()))
        .collect();
    notes.sort();
    notes.dedup();
    for (service, note) in notes {
        println!("{service}: {note}");
    }
    // The fleet judge's evidence for every instance it judged.
    for i in instances.iter().filter(|i| !i.verdict_evidence.is_empty()) {
        println!(
            "{} {} on {}: {}: {}",
            i.service, i.instance_id, i.host, i.verdict, i.verdict_evidence
        );
    }
}

/// How many of the instance's two-form endpoints run which form, e.g.
/// `3 async`; `-` when it has none.
fn forms(instance: &InstanceStatus) -> String {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for form in instance.endpoint_forms.values() {
        *counts.entry(form.as_str()).or_default() += 1;
    }
    if counts.is_empty() {
        return "-".into();
    }
    counts
        .iter()
        .map(|(form, n)| format!("{n} {form}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Asks the api to promote, then optionally waits until the service's up
/// instances all run the canary's phase as main workers.
async fn promote(connection: &Connection, service: &str, wait_s: u64) -> anyhow::Result<()> {
    let mut client = connection.client().await?;
    let before = client
        .get_rollout(GetRolloutRequest {})
        .await?
        .into_inner()
        .instances;
    let phase = before
        .iter()
        .find(|i| i.service == service && i.up && i.role == "canary")
        .map(|i| i.phase.clone());
    let sent = client
        .promote_canary(PromoteCanaryRequest {
            service: service.to_string(),
        })
        .await?
        .into_inner();
    println!(
        "promote sent to {service} ({} canary worker(s) up)",
        sent.canary_instances
    );
    let Some(phase) = phase.filter(|_| wait_s > 0) else {
        return Ok(());
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(wait_s);
    loop {
        let instances = client
            .get_rollout(GetRolloutRequest {})
            .await?
            .into_inner()
            .instances;
        let up: Vec<_> = instances
            .iter()
            .filter(|i| i.service == service && i.up)
            .collect();
        if !up.is_empty() && up.iter().all(|i| i.phase == phase && i.role != "canary") {
            println!("{service}: every up worker runs {phase}");
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            print_rollout(Output::Text, &instances)?;
            bail!("{service} did not move to {phase} on every worker within {wait_s} s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
