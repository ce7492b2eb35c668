//! `switchyard meters`: the meters seen.

use switchyard_proto::metering::v1::ListMetersRequest;

use crate::Connection;
use crate::output::{number, print_list, text};

#[derive(Debug, clap::Args)]
pub struct Meters {
    /// Only this project's meters; empty for all.
    #[arg(long, default_value = "")]
    project: String,
}

pub async fn run(connection: &Connection, args: &Meters) -> anyhow::Result<()> {
    let meters = connection
        .client()
        .await?
        .list_meters(ListMetersRequest {
            project_id: args.project.clone(),
        })
        .await?
        .into_inner()
        .meters;
    print_list(
        connection.output,
        &meters,
        &[text("METER"), text("UNIT"), number("SAMPLES")],
        |m| vec![m.name.clone(), m.unit.clone(), m.samples.to_string()],
        |m| serde_json::json!({"name": m.name, "unit": m.unit, "samples": m.samples}),
    )
}
