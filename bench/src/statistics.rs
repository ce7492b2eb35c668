//! The migration's payoff, measured: `GetStatistics` for 16 meters against
//! PostgreSQL, served by the real collector binary in each phase. In
//! `threaded` the blocking form runs the 16 queries one after another; in
//! `bridged` and `async` the async form runs them at once over the
//! connection pool. Same data, same answers, same machine, same run.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use switchyard_executor::Phase;
use switchyard_proto::collector::v1::sample_query_client::SampleQueryClient;
use switchyard_proto::metering::v1::GetStatisticsRequest;
use switchyard_storage::sqlx::{self, Connection};

use crate::measure::{Latencies, drive};

/// Meters per request.
pub const METERS: usize = 16;
const ADMIN_URL: &str = "postgres://root@127.0.0.1:5432/test";

/// One cell of the table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cell {
    pub phase: String,
    pub form: &'static str,
    pub callers: usize,
    pub latencies: Latencies,
}

struct Collector(Child);

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start(
    binary: &std::path::Path,
    phase: Phase,
    database: &str,
    port: u16,
) -> anyhow::Result<Collector> {
    let child = Command::new(binary)
        .current_dir(std::env::temp_dir())
        .env("SWITCHYARD_EXECUTOR__PHASE", phase.as_str())
        .env("SWITCHYARD_STORAGE__URL", database)
        .env("SWITCHYARD_GRPC__LISTEN", format!("127.0.0.1:{port}"))
        .env("SWITCHYARD_AMQP__EXCHANGE", format!("bench-stats-{port}"))
        .env("SWITCHYARD_AMQP__QUEUE_EXPIRES_MS", "60000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Collector(child))
}

fn request(now: i64) -> GetStatisticsRequest {
    GetStatisticsRequest {
        meters: (0..METERS).map(|m| format!("bench.m{m:02}")).collect(),
        project_id: "bench".into(),
        start: Some(prost_types::Timestamp {
            seconds: now - 7200,
            nanos: 0,
        }),
        end: Some(prost_types::Timestamp {
            seconds: now + 60,
            nanos: 0,
        }),
        period_seconds: 600,
        ..GetStatisticsRequest::default()
    }
}

/// Runs the workload: `samples_per_meter` rows per meter, `callers` each for
/// `cell`, every phase. Needs PostgreSQL as `scripts/test` sets it up and
/// RabbitMQ (the collector connects to it).
pub async fn run(
    collector: &std::path::Path,
    samples_per_meter: usize,
    callers: &[usize],
    cell: Duration,
) -> anyhow::Result<Vec<Cell>> {
    let name = format!("bench_stats_{}", std::process::id());
    let mut admin = sqlx::postgres::PgConnection::connect(ADMIN_URL).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await?;
    let database = format!("postgres://root@127.0.0.1:5432/{name}");
    let result = measure(collector, &database, samples_per_meter, callers, cell).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    result
}

async fn measure(
    binary: &std::path::Path,
    database: &str,
    samples_per_meter: usize,
    callers: &[usize],
    cell: Duration,
) -> anyhow::Result<Vec<Cell>> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs() as i64;
    let mut cells = Vec::new();
    for (index, phase) in Phase::ALL.into_iter().enumerate() {
        let port = free_port()?;
        let _collector = start(binary, phase, database, port)?;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
            .connect_lazy();
        let client = SampleQueryClient::new(channel);
        // Up, and its migration applied: answered once.
        let started = Instant::now();
        while client.clone().get_statistics(request(now)).await.is_err() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "the collector in {phase} did not answer in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if index == 0 {
            load(database, samples_per_meter, now).await?;
        }
        for &n in callers {
            let client = client.clone();
            let latencies = drive(n, cell, move || {
                let mut client = client.clone();
                async move {
                    client
                        .get_statistics(request(now))
                        .await
                        .is_ok_and(|r| r.into_inner().by_meter.len() == METERS)
                }
            })
            .await;
            cells.push(Cell {
                phase: phase.to_string(),
                form: match phase {
                    Phase::Threaded => "blocking, one query after another",
                    _ => "async, 16 queries at once",
                },
                callers: n,
                latencies,
            });
        }
    }
    Ok(cells)
}

/// `samples_per_meter` rows for each of the meters over the last two hours,
/// written by PostgreSQL itself.
async fn load(database: &str, samples_per_meter: usize, now: i64) -> anyhow::Result<()> {
    let mut connection = sqlx::postgres::PgConnection::connect(database).await?;
    sqlx::query(
        "INSERT INTO samples (id, meter, unit, volume, ts_ms, resource_id, project_id)
         SELECT 'bench-' || g, 'bench.m' || lpad((g % $1)::text, 2, '0'), '%', (g % 100)::float8,
                $2 - (g % 7000) * 1000, 'vm-' || (g % 50), 'bench'
         FROM generate_series(1, $3) AS g",
    )
    .bind(METERS as i32)
    .bind(now * 1000)
    .bind((samples_per_meter * METERS) as i64)
    .execute(&mut connection)
    .await?;
    sqlx::query("ANALYZE samples")
        .execute(&mut connection)
        .await?;
    Ok(())
}

/// The table, with the command that made it.
pub fn markdown(cells: &[Cell], samples_per_meter: usize, command: &str) -> String {
    let mut text = format!(
        "# Statistics for {METERS} meters, per phase\n\n\
         `GetStatistics` with {METERS} meters (10-minute buckets over two hours, \
         {samples_per_meter} samples per meter) against PostgreSQL, served by the \
         real collector binary in each phase; closed-loop callers. Produced by \
         {command} on {} ({}).\n\n\
         | phase | form that ran | callers | requests/s | p50 | p99 | failed | threaded p50 ÷ this p50 |\n\
         |---|---|---|---|---|---|---|---|\n",
        crate::report::machine(),
        chrono_free_date(),
    );
    for cell in cells {
        let base = cells
            .iter()
            .find(|c| c.phase == "threaded" && c.callers == cell.callers)
            .map(|c| c.latencies.p50_us)
            .unwrap_or(0);
        let versus = if cell.latencies.p50_us > 0 && base > 0 {
            format!("{:.2}×", base as f64 / cell.latencies.p50_us as f64)
        } else {
            "–".into()
        };
        text.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.1} ms | {:.1} ms | {} | {} |\n",
            cell.phase,
            cell.form,
            cell.callers,
            cell.latencies.rate,
            cell.latencies.p50_us as f64 / 1000.0,
            cell.latencies.p99_us as f64 / 1000.0,
            cell.latencies.failed,
            versus
        ));
    }
    text.push_str(&reading(cells));
    text
}

/// The paragraph that reads the table: how much sooner the async form
/// answers than the blocking one with the fewest and the most callers.
fn reading(cells: &[Cell]) -> String {
    let p50 = |phase: &str, callers: usize| {
        cells
            .iter()
            .find(|c| c.phase == phase && c.callers == callers)
            .map(|c| c.latencies.p50_us)
            .filter(|&p50| p50 > 0)
    };
    let sooner = |callers: usize| match (p50("threaded", callers), p50("async", callers)) {
        (Some(blocking), Some(overlapped)) => Some(blocking as f64 / overlapped as f64),
        _ => None,
    };
    let (Some(fewest), Some(most)) = (
        cells.iter().map(|c| c.callers).min(),
        cells.iter().map(|c| c.callers).max(),
    ) else {
        return String::new();
    };
    let (Some(alone), Some(crowded)) = (sooner(fewest), sooner(most)) else {
        return String::new();
    };
    format!(
        "\nReading it: with {fewest} caller(s) the async form (`async` phase) answers \
         {METERS} meters {alone:.2}× sooner than the blocking form (`threaded`): its \
         {METERS} queries overlap instead of queueing. With {most} callers it is \
         {crowded:.2}×: the cores are already busy with PostgreSQL's own work and \
         the collector, so running queries at once buys little more; the gain is \
         waiting time, not CPU. More cores, or PostgreSQL on a host of its own, move \
         that point out.\n"
    )
}

fn chrono_free_date() -> String {
    let seconds = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("unix time {seconds}")
}

#[cfg(test)]
mod tests {
    use super::{Cell, reading};
    use crate::measure::Latencies;

    fn cell(phase: &str, callers: usize, p50_us: u64) -> Cell {
        Cell {
            phase: phase.into(),
            form: "",
            callers,
            latencies: Latencies {
                rate: 1.0,
                p50_us,
                p99_us: p50_us,
                p999_us: p50_us,
                failed: 0,
            },
        }
    }

    #[test]
    fn the_reading_states_the_ratios_of_the_table_at_the_fewest_and_most_callers() {
        let cells = [
            cell("threaded", 1, 300_000),
            cell("async", 1, 100_000),
            cell("threaded", 16, 2_000_000),
            cell("async", 16, 1_600_000),
        ];
        let text = reading(&cells);
        assert!(text.contains("with 1 caller(s)"), "{text}");
        assert!(text.contains("3.00× sooner"), "{text}");
        assert!(text.contains("With 16 callers it is 1.25×"), "{text}");
    }

    #[test]
    fn no_reading_without_both_forms() {
        assert_eq!(reading(&[cell("threaded", 1, 300_000)]), "");
    }
}
