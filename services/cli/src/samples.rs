//! `switchyard samples post`: samples from flags, a CSV file or a JSON file,
//! posted in batches with a progress bar (on a terminal).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use switchyard_proto::metering::v1::{PostSamplesRequest, Sample};

use crate::Connection;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Post samples, from arguments or a file: CSV
    /// (`meter,unit,volume,resource_id,project_id[,id]` per line, fields
    /// quoted as CSV quotes them) or, for a `.json` file, an array of
    /// `{"meter", "unit", "volume", "resource_id", "project_id", "id"?,
    /// "timestamp"? (Unix seconds)}`.
    Post(Post),
}

#[derive(Debug, clap::Args)]
pub struct Post {
    /// The meter (without `--file`).
    #[arg(long, required_unless_present = "file")]
    meter: Option<String>,
    /// The unit of the volumes.
    #[arg(long, default_value = "%")]
    unit: String,
    /// The first sample's volume.
    #[arg(long, default_value_t = 0.0)]
    volume: f64,
    /// The resource the samples are about.
    #[arg(long, default_value = "vm-1")]
    resource: String,
    /// The project the samples belong to.
    #[arg(long, default_value = "demo")]
    project: String,
    /// Post this many samples (volumes `volume`, `volume+1`, …).
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Samples per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// A CSV or JSON file of samples instead of the flags above.
    #[arg(long)]
    file: Option<PathBuf>,
}

pub async fn run(connection: &Connection, command: &Command) -> anyhow::Result<()> {
    let Command::Post(post) = command;
    let samples = match (&post.file, &post.meter) {
        (Some(file), _) if file.extension().is_some_and(|e| e == "json") => read_json(file)?,
        (Some(file), _) => read_csv(file)?,
        (None, Some(meter)) => (0..post.count)
            .map(|i| Sample {
                meter: meter.clone(),
                unit: post.unit.clone(),
                volume: post.volume + i as f64,
                timestamp: Some(switchyard_proto::time::now()),
                resource_id: post.resource.clone(),
                project_id: post.project.clone(),
                ..Sample::default()
            })
            .collect(),
        (None, None) => bail!("give --meter or --file"),
    };
    let mut client = connection.client().await?;
    // Drawn only when stderr is a terminal: scripts see the last line alone.
    let progress = indicatif::ProgressBar::new(samples.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} samples ({per_sec}, {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut posted = 0;
    for chunk in samples.chunks(post.batch.max(1)) {
        let reply = client
            .post_samples(PostSamplesRequest {
                samples: chunk.to_vec(),
            })
            .await
            .context("posting samples")?;
        posted += reply.into_inner().ids.len();
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    println!("posted {posted} samples");
    Ok(())
}

/// One sample as a JSON file gives it.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleInput {
    meter: String,
    unit: String,
    volume: f64,
    resource_id: String,
    project_id: String,
    #[serde(default)]
    id: String,
    /// Unix seconds; now when absent.
    timestamp: Option<i64>,
}

fn read_json(path: &Path) -> anyhow::Result<Vec<Sample>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let inputs: Vec<SampleInput> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON array of samples", path.display()))?;
    Ok(inputs
        .into_iter()
        .map(|input| Sample {
            id: input.id,
            meter: input.meter,
            unit: input.unit,
            volume: input.volume,
            timestamp: Some(match input.timestamp {
                Some(seconds) => prost_types::Timestamp { seconds, nanos: 0 },
                None => switchyard_proto::time::now(),
            }),
            resource_id: input.resource_id,
            project_id: input.project_id,
            metadata: Default::default(),
        })
        .collect())
}

fn read_csv(path: &Path) -> anyhow::Result<Vec<Sample>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    parse_csv(file, &path.display().to_string())
}

/// Samples from CSV records `meter,unit,volume,resource_id,project_id[,id]`
/// (no header; quoted fields may hold commas); `name` says where, in errors.
fn parse_csv(input: impl std::io::Read, name: &str) -> anyhow::Result<Vec<Sample>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(input);
    let mut samples = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("{name}: not CSV"))?;
        let line = record.position().map_or(0, csv::Position::line);
        if record.iter().all(str::is_empty) {
            continue;
        }
        let field = |i: usize| record.get(i).unwrap_or_default().to_string();
        if record.len() < 5 {
            bail!("{name}:{line}: expected meter,unit,volume,resource_id,project_id[,id]");
        }
        let volume = field(2);
        samples.push(Sample {
            id: field(5),
            meter: field(0),
            unit: field(1),
            volume: volume
                .parse()
                .with_context(|| format!("{name}:{line}: volume `{volume}`"))?,
            timestamp: Some(switchyard_proto::time::now()),
            resource_id: field(3),
            project_id: field(4),
            metadata: Default::default(),
        });
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_may_be_quoted_and_the_id_is_optional() {
        let text = "cpu_util,%,12.5,\"vm-1, rack 3\",demo\n\n mem , MB , 3 , vm-2 , demo , s-7 \n";
        let samples = parse_csv(text.as_bytes(), "t.csv").expect("parses");
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].resource_id, "vm-1, rack 3");
        assert_eq!(samples[0].id, "");
        assert_eq!(samples[0].volume, 12.5);
        assert_eq!(
            (samples[1].meter.as_str(), samples[1].id.as_str()),
            ("mem", "s-7")
        );
    }

    #[test]
    fn a_bad_line_is_named_with_its_number() {
        let error = parse_csv("cpu,%,1,vm,demo\ncpu,%,lots,vm,demo\n".as_bytes(), "t.csv")
            .expect_err("a volume that is not a number");
        assert!(
            format!("{error:#}").contains("t.csv:2: volume `lots`"),
            "{error:#}"
        );
        let error = parse_csv("cpu,%,1\n".as_bytes(), "t.csv").expect_err("too few fields");
        assert!(
            format!("{error:#}").contains("t.csv:1: expected"),
            "{error:#}"
        );
    }
}
