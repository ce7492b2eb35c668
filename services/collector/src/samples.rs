//! Samples: storing them (idempotent on the sample id) and computing
//! statistics in SQL.
//!
//! The collector is the part of the fleet that waits on its database, which
//! is why it migrates first: its endpoints are written both ways
//! (`Endpoint::both`). In `threaded` the legacy blocking bodies hold a pool
//! thread while the database works; in `bridged` and `async` the async
//! bodies await sqlx and nothing is offloaded.

use std::collections::BTreeSet;

use switchyard_executor::{Endpoint, EndpointKind, EndpointSpec};
use switchyard_messaging::{EndpointError, Notifier, Priority};
use switchyard_proto::messaging::v1::{RecordSamples, SampleRecorded};
use switchyard_proto::metering::v1::{
    GetStatisticsRequest, GetStatisticsResponse, ListMetersRequest, ListMetersResponse, Meter,
    Sample, Statistics,
};
use switchyard_storage::sqlx::{self, Row};
use switchyard_storage::{Database, Fault, StorageError};
use tokio::runtime::Handle;

/// The collector's schema, applied at startup.
pub const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE IF NOT EXISTS samples (
        id TEXT PRIMARY KEY,
        meter TEXT NOT NULL,
        unit TEXT NOT NULL,
        volume DOUBLE PRECISION NOT NULL,
        ts_ms BIGINT NOT NULL,
        resource_id TEXT NOT NULL,
        project_id TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS samples_meter_ts ON samples (meter, ts_ms)",
)];

pub use switchyard_proto::catalogue::event::SAMPLE_RECORDED;
pub use switchyard_proto::catalogue::method::RECORD_SAMPLES;

/// How each endpoint is written (what `--check-config` checks).
pub fn endpoints() -> Vec<EndpointSpec> {
    [
        RECORD_SAMPLES,
        crate::query::LIST_METERS,
        crate::query::GET_STATISTICS,
    ]
    .into_iter()
    .map(|name| EndpointSpec::new(name, EndpointKind::Both))
    .collect()
}

fn millis(sample: &Sample) -> i64 {
    sample
        .timestamp
        .as_ref()
        .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
        .unwrap_or(0)
}

/// Rows per INSERT statement: 7 parameters a row stays far below SQLite's
/// limit of 32,766 parameters a statement, and a full batch
/// ([`switchyard_proto::validate::MAX_BATCH`]) is two statements.
const ROWS_PER_STATEMENT: usize = 500;

/// Stores a batch in one transaction, one multi-row statement per
/// [`ROWS_PER_STATEMENT`] samples; returns how many samples were new.
///
/// The connection a failure happened on is closed, never handed back to the
/// pool: after a failed commit (a full disk) SQLite can leave the
/// transaction open on it, and the next batch "committed" there would only
/// be nested in it and lost with it.
pub async fn store(database: &Database, samples: &[Sample]) -> Result<u64, StorageError> {
    let mut connection = database
        .pool()
        .acquire()
        .await
        .map_err(StorageError::query("taking a database connection"))?;
    let stored = store_on(&mut connection, samples).await;
    if stored.is_err() {
        connection.close_on_drop();
    }
    stored
}

async fn store_on(
    connection: &mut sqlx::AnyConnection,
    samples: &[Sample],
) -> Result<u64, StorageError> {
    use sqlx::Connection;
    let mut transaction = connection
        .begin()
        .await
        .map_err(StorageError::query("starting a transaction"))?;
    let mut stored = 0;
    for chunk in samples.chunks(ROWS_PER_STATEMENT) {
        let rows = (0..chunk.len())
            .map(|row| {
                let first = row * 7;
                format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    first + 1,
                    first + 2,
                    first + 3,
                    first + 4,
                    first + 5,
                    first + 6,
                    first + 7
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO samples (id, meter, unit, volume, ts_ms, resource_id, project_id)
             VALUES {rows} ON CONFLICT (id) DO NOTHING"
        );
        // Audited: the text holds nothing but numbered placeholders; every
        // value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for sample in chunk {
            query = query
                .bind(sample.id.clone())
                .bind(sample.meter.clone())
                .bind(sample.unit.clone())
                .bind(sample.volume)
                .bind(millis(sample))
                .bind(sample.resource_id.clone())
                .bind(sample.project_id.clone());
        }
        let done = query
            .execute(&mut *transaction)
            .await
            .map_err(StorageError::query("storing samples"))?;
        stored += done.rows_affected();
    }
    transaction
        .commit()
        .await
        .map_err(StorageError::query("committing samples"))?;
    Ok(stored)
}

/// The checks a batch passes before anything is stored.
fn checked(batch: &RecordSamples) -> Result<(), EndpointError> {
    switchyard_proto::validate::samples(&batch.samples, switchyard_proto::time::unix_seconds())
        .map_err(|problem| EndpointError::InvalidArgument(problem.to_string()))?;
    if let Some(index) = batch.samples.iter().position(|s| s.id.is_empty()) {
        return Err(EndpointError::InvalidArgument(format!(
            "field `samples[{index}].id`: the api assigns ids; a message without one cannot be stored idempotently"
        )));
    }
    Ok(())
}

fn storage_failed(error: StorageError) -> EndpointError {
    match error.fault() {
        // Counted retries, then the dead-letter queue with the reason.
        Fault::Data => EndpointError::Transient(error.to_string()),
        // Not the message's fault: waited out for as long as it takes.
        Fault::Dependency => EndpointError::Unavailable(error.to_string()),
    }
}

/// What the batch announces once stored.
fn recorded(batch: &RecordSamples, stored: u64) -> SampleRecorded {
    tracing::debug!(
        stored,
        of = batch.samples.len(),
        "stored {stored} new samples of {}",
        batch.samples.len()
    );
    let distinct = |pick: fn(&Sample) -> &String| {
        batch
            .samples
            .iter()
            .map(|s| pick(s).clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    SampleRecorded {
        meters: distinct(|s| &s.meter),
        resource_ids: distinct(|s| &s.resource_id),
        stored: stored as u32,
    }
}

/// Validate, store, announce: the one sequence both forms run.
async fn record(
    database: &Database,
    notifier: &Notifier,
    batch: RecordSamples,
) -> Result<SampleRecorded, EndpointError> {
    checked(&batch)?;
    let stored = store(database, &batch.samples)
        .await
        .map_err(storage_failed)?;
    let recorded = recorded(&batch, stored);
    notifier
        .notify(Priority::Info, SAMPLE_RECORDED, &recorded)
        .await
        .map_err(|error| EndpointError::Unavailable(format!("announcing the batch: {error}")))?;
    Ok(recorded)
}

/// `record_samples`: validate, store, then announce the batch. Written both
/// ways: the legacy blocking body (`threaded`) blocks its pool thread on the
/// same sequence the async body (`bridged`, `async`) awaits.
pub fn record_samples(
    database: Database,
    notifier: Notifier,
    runtime: Handle,
) -> Endpoint<RecordSamples, Result<SampleRecorded, EndpointError>> {
    let (db, announce) = (database.clone(), notifier.clone());
    Endpoint::both(
        RECORD_SAMPLES,
        move |_, batch: RecordSamples| runtime.block_on(record(&db, &announce, batch)),
        move |_, batch: RecordSamples| {
            let (database, notifier) = (database.clone(), notifier.clone());
            async move { record(&database, &notifier, batch).await }
        },
    )
}

/// The meters seen, with their units and sample counts.
pub async fn list_meters(
    database: &Database,
    request: &ListMetersRequest,
) -> Result<ListMetersResponse, StorageError> {
    let rows = sqlx::query(
        "SELECT meter, unit, COUNT(*) AS samples FROM samples
         WHERE ($1 = '' OR project_id = $1) GROUP BY meter, unit ORDER BY meter, unit",
    )
    .bind(request.project_id.clone())
    .fetch_all(database.pool())
    .await
    .map_err(StorageError::query("listing meters"))?;
    let meters = rows
        .iter()
        .map(|row| {
            Ok(Meter {
                name: row.try_get(0)?,
                unit: row.try_get(1)?,
                samples: row.try_get::<i64, _>(2)?.max(0) as u64,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(StorageError::query("reading meters"))?;
    Ok(ListMetersResponse { meters })
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// The latest instant statistics look at, in ms since the epoch (the year
/// 292,471,209 or so: far beyond any sample, far from overflowing).
const LATEST_MS: i64 = i64::MAX / 1000;

/// Count, min, max, avg and sum per period, as Ceilometer's statistics API.
pub async fn statistics(
    database: &Database,
    request: &GetStatisticsRequest,
) -> Result<GetStatisticsResponse, StorageError> {
    // Any timestamp a client sends is taken, clamped to what stored samples
    // can have: no arithmetic below can overflow.
    let to_ms = |t: &Option<prost_types::Timestamp>| {
        t.as_ref().map(|t| {
            t.seconds
                .saturating_mul(1000)
                .saturating_add(i64::from(t.nanos) / 1_000_000)
                .clamp(0, LATEST_MS)
        })
    };
    let start = to_ms(&request.start).unwrap_or(0);
    let end = to_ms(&request.end).unwrap_or(LATEST_MS);
    let period_ms = match request.period_seconds {
        0 => (end - start).max(1),
        seconds => i64::from(seconds) * 1000,
    };
    let rows = sqlx::query(
        "SELECT (ts_ms - $2) / $4 AS bucket, COUNT(*) AS n, MIN(volume), MAX(volume), AVG(volume), SUM(volume)
         FROM samples
         WHERE meter = $1 AND ts_ms >= $2 AND ts_ms < $3
           AND ($5 = '' OR resource_id = $5) AND ($6 = '' OR project_id = $6)
         GROUP BY bucket ORDER BY bucket",
    )
    .bind(request.meter.clone())
    .bind(start)
    .bind(end)
    .bind(period_ms)
    .bind(request.resource_id.clone())
    .bind(request.project_id.clone())
    .fetch_all(database.pool())
    .await
    .map_err(StorageError::query("computing statistics"))?;
    let buckets = rows
        .iter()
        .map(|row| {
            let bucket: i64 = row.try_get(0)?;
            let period_start = start.saturating_add(bucket.saturating_mul(period_ms));
            Ok(Statistics {
                period_start: Some(timestamp(period_start)),
                period_end: Some(timestamp(period_start.saturating_add(period_ms))),
                count: row.try_get::<i64, _>(1)?.max(0) as u64,
                min: row.try_get(2)?,
                max: row.try_get(3)?,
                avg: row.try_get(4)?,
                sum: row.try_get(5)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(StorageError::query("reading statistics"))?;
    Ok(GetStatisticsResponse {
        buckets,
        by_meter: Vec::new(),
    })
}
