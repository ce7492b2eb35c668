//! `switchyard meters`: the meters seen.

use switchyard_proto::metering::v1::ListMetersRequest;

use crate::Connection;
use crate::output::{Output, print_json_list, row};

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
    if connection.output == Output::Json {
        return print_json_list(
            &meters,
            |m| serde_json::json!({"name": m.name, "unit": m.unit, "samples": m.samples}),
        );
    }
    row!("{:<24} {:<8} {:>8}", "METER", "UNIT", "SAMPLES");
    for meter in meters {
        row!("{:<24} {:<8} {:>8}", meter.name, meter.unit, meter.samples);
    }
    Ok(())
}
