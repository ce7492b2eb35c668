//! `switchyard stats`: statistics per period of one meter, or of several
//! in one request; prints how long the answer took (on stderr).

use switchyard_proto::metering::v1::GetStatisticsRequest;

use crate::Connection;
use crate::output::{Output, print_json, unix};

#[derive(Debug, clap::Args)]
pub struct Stats {
    /// The meter; repeat for several in one request.
    #[arg(long, required = true)]
    meter: Vec<String>,
    /// Only this resource's samples; empty for all.
    #[arg(long, default_value = "")]
    resource: String,
    /// Only this project's samples; empty for all.
    #[arg(long, default_value = "")]
    project: String,
    /// Bucket length in seconds; 0 for one bucket.
    #[arg(long, default_value_t = 60)]
    period: u32,
    /// How far back to look, in minutes.
    #[arg(long, default_value_t = 60)]
    since_minutes: i64,
}

pub async fn run(connection: &Connection, args: &Stats) -> anyhow::Result<()> {
    let end = switchyard_proto::time::now();
    let start = prost_types::Timestamp {
        seconds: end.seconds - args.since_minutes * 60,
        nanos: 0,
    };
    let (one, several) = match args.meter.as_slice() {
        [one] => (one.clone(), Vec::new()),
        several => (String::new(), several.to_vec()),
    };
    let mut client = connection.client().await?;
    let asked = std::time::Instant::now();
    let answer = client
        .get_statistics(GetStatisticsRequest {
            meter: one.clone(),
            meters: several,
            resource_id: args.resource.clone(),
            project_id: args.project.clone(),
            start: Some(start),
            end: Some(prost_types::Timestamp {
                seconds: end.seconds + 60,
                nanos: 0,
            }),
            period_seconds: args.period,
        })
        .await?
        .into_inner();
    let took = asked.elapsed();
    let tables = if answer.by_meter.is_empty() {
        vec![(one, answer.buckets)]
    } else {
        answer
            .by_meter
            .into_iter()
            .map(|m| (m.meter, m.buckets))
            .collect()
    };
    let meters = tables.len();
    let timing = format!(
        "statistics for {meters} meter{} in {:.1} ms",
        if meters == 1 { "" } else { "s" },
        took.as_secs_f64() * 1000.0
    );
    if connection.output == Output::Json {
        eprintln!("{timing}");
        return print_json(&serde_json::json!({
            "took_ms": took.as_secs_f64() * 1000.0,
            "meters": tables.iter().map(|(name, buckets)| serde_json::json!({
                "meter": name,
                "buckets": buckets.iter().map(|b| serde_json::json!({
                    "period_start": unix(&b.period_start),
                    "period_end": unix(&b.period_end),
                    "count": b.count, "min": b.min, "max": b.max,
                    "avg": b.avg, "sum": b.sum,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }));
    }
    for (name, buckets) in tables {
        if meters > 1 {
            println!("{name}:");
        }
        println!(
            "{:<22} {:>7} {:>10} {:>10} {:>10} {:>12}",
            "PERIOD START (unix)", "COUNT", "MIN", "MAX", "AVG", "SUM"
        );
        for b in buckets {
            println!(
                "{:<22} {:>7} {:>10.2} {:>10.2} {:>10.2} {:>12.2}",
                unix(&b.period_start),
                b.count,
                b.min,
                b.max,
                b.avg,
                b.sum
            );
        }
    }
    eprintln!("{timing}");
    Ok(())
}
