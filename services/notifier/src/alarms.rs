//! Threshold alarms: definitions and their history in SQL, and the RPC
//! methods the api calls on topic `alarms`. These endpoints are still
//! blocking functions over the database.

use switchyard_executor::Endpoint;
use switchyard_messaging::EndpointError;
use switchyard_proto::metering::v1::{
    Alarm, AlarmState, AlarmTransition, Comparison, CreateAlarmRequest, DeleteAlarmRequest,
    DeleteAlarmResponse, GetAlarmHistoryRequest, GetAlarmHistoryResponse, GetAlarmRequest,
    ListAlarmsRequest, ListAlarmsResponse, Statistic,
};
use switchyard_storage::sqlx::{self, Row, any::AnyRow};
use switchyard_storage::{Database, StorageError};
use tokio::runtime::Handle;

/// The notifier's schema, applied at startup.
pub const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE IF NOT EXISTS alarms (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        meter TEXT NOT NULL,
        resource_id TEXT NOT NULL,
        project_id TEXT NOT NULL,
        statistic BIGINT NOT NULL,
        comparison BIGINT NOT NULL,
        threshold DOUBLE PRECISION NOT NULL,
        period_seconds BIGINT NOT NULL,
        evaluation_periods BIGINT NOT NULL,
        webhook_url TEXT NOT NULL,
        state BIGINT NOT NULL,
        state_changed_ms BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS alarm_history (
        alarm_id TEXT NOT NULL,
        from_state BIGINT NOT NULL,
        to_state BIGINT NOT NULL,
        reason TEXT NOT NULL,
        at_ms BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS alarm_history_alarm ON alarm_history (alarm_id, at_ms)",
)];

use switchyard_proto::catalogue::code::NOT_FOUND;
use switchyard_proto::catalogue::method::{
    CREATE_ALARM, DELETE_ALARM, GET_ALARM, GET_ALARM_HISTORY, LIST_ALARMS,
};

pub(crate) use switchyard_proto::time::{from_millis as timestamp, unix_millis as now_ms};

fn invalid(field: &str, problem: &str) -> EndpointError {
    EndpointError::InvalidArgument(format!("field `alarm.{field}`: {problem}"))
}

fn unavailable(error: StorageError) -> EndpointError {
    EndpointError::Unavailable(error.to_string())
}

fn not_found(id: &str) -> EndpointError {
    EndpointError::Remote {
        code: NOT_FOUND.into(),
        message: format!("alarm `{id}` not found"),
    }
}

/// Checks a new alarm's definition, naming the first bad field.
pub fn validate(alarm: &Alarm) -> Result<(), EndpointError> {
    if alarm.name.trim().is_empty() || alarm.name.len() > 255 {
        return Err(invalid("name", "must be 1 to 255 characters"));
    }
    if alarm.meter.is_empty() || alarm.meter.len() > 255 {
        return Err(invalid("meter", "must be 1 to 255 characters"));
    }
    match Statistic::try_from(alarm.statistic) {
        Ok(Statistic::Unspecified) | Err(_) => {
            return Err(invalid("statistic", "accepted: AVG, MIN, MAX, SUM, COUNT"));
        }
        Ok(_) => {}
    }
    match Comparison::try_from(alarm.comparison) {
        Ok(Comparison::Unspecified) | Err(_) => {
            return Err(invalid("comparison", "accepted: GT, GE, LT, LE, EQ"));
        }
        Ok(_) => {}
    }
    if !alarm.threshold.is_finite() {
        return Err(invalid("threshold", "must be a finite number"));
    }
    if !(1..=86_400).contains(&alarm.period_seconds) {
        return Err(invalid("period_seconds", "accepted: 1 to 86400"));
    }
    if !(1..=100).contains(&alarm.evaluation_periods) {
        return Err(invalid("evaluation_periods", "accepted: 1 to 100"));
    }
    let url = &alarm.webhook_url;
    if !url.is_empty() && !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(invalid(
            "webhook_url",
            "accepted: empty, or an http(s):// URL",
        ));
    }
    Ok(())
}

fn from_row(row: &AnyRow) -> Result<Alarm, sqlx::Error> {
    Ok(Alarm {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        meter: row.try_get("meter")?,
        resource_id: row.try_get("resource_id")?,
        project_id: row.try_get("project_id")?,
        statistic: row.try_get::<i64, _>("statistic")? as i32,
        comparison: row.try_get::<i64, _>("comparison")? as i32,
        threshold: row.try_get("threshold")?,
        period_seconds: row.try_get::<i64, _>("period_seconds")? as u32,
        evaluation_periods: row.try_get::<i64, _>("evaluation_periods")? as u32,
        webhook_url: row.try_get("webhook_url")?,
        state: row.try_get::<i64, _>("state")? as i32,
        state_changed_at: Some(timestamp(row.try_get("state_changed_ms")?)),
    })
}

const COLUMNS: &str = "id, name, meter, resource_id, project_id, statistic, comparison, threshold, \
                       period_seconds, evaluation_periods, webhook_url, state, state_changed_ms";

/// Stores a new alarm (in state insufficient data); returns it with its id.
pub async fn create(database: &Database, mut alarm: Alarm) -> Result<Alarm, StorageError> {
    alarm.id = format!("alarm-{}", switchyard_messaging::wire::new_id());
    alarm.state = AlarmState::InsufficientData as i32;
    let now = now_ms();
    alarm.state_changed_at = Some(timestamp(now));
    sqlx::query(
        "INSERT INTO alarms (id, name, meter, resource_id, project_id, statistic, comparison, threshold,
             period_seconds, evaluation_periods, webhook_url, state, state_changed_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(alarm.id.clone())
    .bind(alarm.name.clone())
    .bind(alarm.meter.clone())
    .bind(alarm.resource_id.clone())
    .bind(alarm.project_id.clone())
    .bind(i64::from(alarm.statistic))
    .bind(i64::from(alarm.comparison))
    .bind(alarm.threshold)
    .bind(i64::from(alarm.period_seconds))
    .bind(i64::from(alarm.evaluation_periods))
    .bind(alarm.webhook_url.clone())
    .bind(i64::from(alarm.state))
    .bind(now)
    .execute(database.pool())
    .await
    .map_err(StorageError::query("storing an alarm"))?;
    Ok(alarm)
}

/// One alarm by id.
pub async fn get(database: &Database, id: &str) -> Result<Option<Alarm>, StorageError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM alarms WHERE id = $1"
    )))
    .bind(id.to_string())
    .fetch_optional(database.pool())
    .await
    .map_err(StorageError::query("reading an alarm"))?;
    row.as_ref()
        .map(from_row)
        .transpose()
        .map_err(StorageError::query("decoding an alarm"))
}

/// Alarms of a project (all when empty).
pub async fn list(database: &Database, project_id: &str) -> Result<Vec<Alarm>, StorageError> {
    select(
        database,
        "($1 = '' OR project_id = $1) ORDER BY name, id",
        project_id,
        "listing alarms",
    )
    .await
}

/// Alarms watching `meter`.
pub async fn watching(database: &Database, meter: &str) -> Result<Vec<Alarm>, StorageError> {
    select(database, "meter = $1", meter, "finding alarms for a meter").await
}

/// The alarms `condition` selects, `value` bound as `$1`.
async fn select(
    database: &Database,
    condition: &'static str,
    value: &str,
    doing: &'static str,
) -> Result<Vec<Alarm>, StorageError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM alarms WHERE {condition}"
    )))
    .bind(value.to_string())
    .fetch_all(database.pool())
    .await
    .map_err(StorageError::query(doing))?;
    rows.iter()
        .map(from_row)
        .collect::<Result<_, _>>()
        .map_err(StorageError::query("decoding alarms"))
}

/// Moves an alarm from `from` to `to` if it is still in `from`; records the
/// transition. `None` when another evaluation got there first.
pub async fn transition(
    database: &Database,
    alarm: &Alarm,
    to: AlarmState,
    reason: &str,
) -> Result<Option<AlarmTransition>, StorageError> {
    let now = now_ms();
    let mut transaction = database
        .pool()
        .begin()
        .await
        .map_err(StorageError::query("starting a transition"))?;
    let moved = sqlx::query(
        "UPDATE alarms SET state = $1, state_changed_ms = $2 WHERE id = $3 AND state = $4",
    )
    .bind(to as i64)
    .bind(now)
    .bind(alarm.id.clone())
    .bind(i64::from(alarm.state))
    .execute(&mut *transaction)
    .await
    .map_err(StorageError::query("changing an alarm's state"))?;
    if moved.rows_affected() == 0 {
        return Ok(None);
    }
    sqlx::query("INSERT INTO alarm_history (alarm_id, from_state, to_state, reason, at_ms) VALUES ($1, $2, $3, $4, $5)")
        .bind(alarm.id.clone())
        .bind(i64::from(alarm.state))
        .bind(to as i64)
        .bind(reason.to_string())
        .bind(now)
        .execute(&mut *transaction)
        .await
        .map_err(StorageError::query("recording a transition"))?;
    transaction
        .commit()
        .await
        .map_err(StorageError::query("committing a transition"))?;
    Ok(Some(AlarmTransition {
        alarm_id: alarm.id.clone(),
        from: alarm.state,
        to: to as i32,
        reason: reason.to_string(),
        at: Some(timestamp(now)),
    }))
}

/// The transitions of one alarm, oldest first.
pub async fn history(database: &Database, id: &str) -> Result<Vec<AlarmTransition>, StorageError> {
    let rows = sqlx::query(
        "SELECT from_state, to_state, reason, at_ms FROM alarm_history WHERE alarm_id = $1 ORDER BY at_ms",
    )
    .bind(id.to_string())
    .fetch_all(database.pool())
    .await
    .map_err(StorageError::query("reading alarm history"))?;
    rows.iter()
        .map(|row| {
            Ok(AlarmTransition {
                alarm_id: id.to_string(),
                from: row.try_get::<i64, _>(0)? as i32,
                to: row.try_get::<i64, _>(1)? as i32,
                reason: row.try_get(2)?,
                at: Some(timestamp(row.try_get(3)?)),
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StorageError::query("decoding alarm history"))
}

/// The five RPC endpoints, blocking on the database.
pub struct Methods {
    pub create: Endpoint<CreateAlarmRequest, Result<Alarm, EndpointError>>,
    pub get: Endpoint<GetAlarmRequest, Result<Alarm, EndpointError>>,
    pub list: Endpoint<ListAlarmsRequest, Result<ListAlarmsResponse, EndpointError>>,
    pub delete: Endpoint<DeleteAlarmRequest, Result<DeleteAlarmResponse, EndpointError>>,
    pub history: Endpoint<GetAlarmHistoryRequest, Result<GetAlarmHistoryResponse, EndpointError>>,
}

impl Methods {
    pub fn new(database: &Database, runtime: &Handle) -> Self {
        let (db, rt) = (database.clone(), runtime.clone());
        let create = Endpoint::blocking(CREATE_ALARM, move |_, request: CreateAlarmRequest| {
            let alarm = request.alarm.ok_or_else(|| {
                EndpointError::InvalidArgument("field `alarm`: is required".into())
            })?;
            validate(&alarm)?;
            rt.block_on(self::create(&db, alarm)).map_err(unavailable)
        });
        let (db, rt) = (database.clone(), runtime.clone());
        let get = Endpoint::blocking(GET_ALARM, move |_, request: GetAlarmRequest| {
            rt.block_on(self::get(&db, &request.id))
                .map_err(unavailable)?
                .ok_or_else(|| not_found(&request.id))
        });
        let (db, rt) = (database.clone(), runtime.clone());
        let list = Endpoint::blocking(LIST_ALARMS, move |_, request: ListAlarmsRequest| {
            Ok(ListAlarmsResponse {
                alarms: rt
                    .block_on(list(&db, &request.project_id))
                    .map_err(unavailable)?,
            })
        });
        let (db, rt) = (database.clone(), runtime.clone());
        let delete = Endpoint::blocking(DELETE_ALARM, move |_, request: DeleteAlarmRequest| {
            let deleted = rt
                .block_on(async {
                    sqlx::query("DELETE FROM alarms WHERE id = $1")
                        .bind(request.id.clone())
                        .execute(db.pool())
                        .await
                        .map_err(StorageError::query("deleting an alarm"))
                })
                .map_err(unavailable)?;
            if deleted.rows_affected() == 0 {
                return Err(not_found(&request.id));
            }
            Ok(DeleteAlarmResponse {})
        });
        let (db, rt) = (database.clone(), runtime.clone());
        let history = Endpoint::blocking(
            GET_ALARM_HISTORY,
            move |_, request: GetAlarmHistoryRequest| {
                if rt
                    .block_on(self::get(&db, &request.id))
                    .map_err(unavailable)?
                    .is_none()
                {
                    return Err(not_found(&request.id));
                }
                Ok(GetAlarmHistoryResponse {
                    transitions: rt
                        .block_on(self::history(&db, &request.id))
                        .map_err(unavailable)?,
                })
            },
        );
        Self {
            create,
            get,
            list,
            delete,
            history,
        }
    }
}
