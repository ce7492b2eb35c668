//! SQL storage for the services: embedded SQLite by default so nothing needs
//! setting up, PostgreSQL when `storage.url` is `postgres://…`. One code path
//! through sqlx's `Any` driver; queries use `$1…` placeholders, which both
//! databases accept. Migrations are plain SQL compiled into the binary and
//! applied in order at startup, each once.
#![deny(missing_docs)]

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use thiserror::Error;

pub use sqlx;
use switchyard_config::SecretUrl;

/// The `[storage]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `sqlite://path?mode=rwc` or `postgres://user:password@host/db`.
    pub url: SecretUrl,
    /// Connections in the pool.
    pub max_connections: u32,
    /// How long to wait for a connection.
    pub acquire_timeout_ms: u64,
}

impl StorageConfig {
    /// A default for `service`: a SQLite file in the working directory.
    pub fn sqlite_for(service: &str) -> Self {
        Self {
            url: SecretUrl::new(format!("sqlite://{service}.db?mode=rwc")),
            max_connections: 8,
            acquire_timeout_ms: 5000,
        }
    }

    /// Range checks, relative to the section.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let accepted = ["sqlite:", "postgres://", "postgresql://"];
        if accepted.iter().any(|prefix| self.url.starts_with(prefix)) {
            Vec::new()
        } else {
            vec![(
                "url",
                format!(
                    "`{}` is not a supported database URL; accepted: sqlite://PATH?mode=rwc or postgres://…",
                    self.url
                ),
            )]
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self::sqlite_for("switchyard")
    }
}

/// A storage failure. Messages never contain the URL's password.
#[derive(Debug, Error)]
pub enum StorageError {
    /// Could not open the database.
    #[error("cannot open the database at {url}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// Why: sqlx's error (printed through the skeleton's last-line
        /// redaction, as every error from another crate is).
        #[source]
        source: sqlx::Error,
    },
    /// A query failed.
    #[error("{operation}: {}", switchyard_config::redact_text(&.source.to_string()))]
    Query {
        /// What was being done.
        operation: String,
        /// sqlx's error (query errors carry no URL; redacted all the same
        /// when displayed).
        #[source]
        source: sqlx::Error,
    },
}

/// Whose fault a failed query was: what a caller does next depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The database refused these values (bad encoding, out of range, a
    /// constraint): sending the same values again can never succeed.
    Data,
    /// The database is down, full, locked or overloaded: the same statement
    /// may succeed later.
    Dependency,
}

impl StorageError {
    /// A mapper for `map_err` naming the operation.
    pub fn query(operation: &str) -> impl FnOnce(sqlx::Error) -> Self + '_ {
        move |source| StorageError::Query {
            operation: operation.to_string(),
            source,
        }
    }

    /// Whether retrying can help. PostgreSQL's SQLSTATE classes 22 (data
    /// exception) and 23 (integrity constraint violation), SQLite's TOOBIG,
    /// CONSTRAINT and MISMATCH, and values that cannot be encoded or decoded
    /// are [`Fault::Data`]; everything else (connections, pool time-outs,
    /// disk full, locks, resources) is [`Fault::Dependency`].
    pub fn fault(&self) -> Fault {
        let StorageError::Query { source, .. } = self else {
            return Fault::Dependency;
        };
        match source {
            sqlx::Error::Database(error) => {
                let code = error.code().unwrap_or_default();
                let postgres_data =
                    code.len() == 5 && (code.starts_with("22") || code.starts_with("23"));
                // SQLite reports its extended result code; the primary code
                // is the low byte.
                let sqlite_data = code
                    .parse::<u32>()
                    .is_ok_and(|code| matches!(code & 0xff, 18..=20));
                if postgres_data || sqlite_data {
                    Fault::Data
                } else {
                    Fault::Dependency
                }
            }
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::Encode(_) => {
                Fault::Data
            }
            _ => Fault::Dependency,
        }
    }
}

/// How often start-up tries to apply the migrations before giving up.
const MIGRATION_ATTEMPTS: u32 = 5;

/// A connection pool with the schema migrated.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
}

impl Database {
    /// Opens the database and applies the `migrations` of `component` (the
    /// service: services may share one database) that were not applied yet:
    /// `(version, sql)` in order, statements separated by `;`.
    pub async fn open(
        config: &StorageConfig,
        component: &str,
        migrations: &[(i64, &'static str)],
    ) -> Result<Self, StorageError> {
        sqlx::any::install_default_drivers();
        let sqlite = config.url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if sqlite {
                        // Several worker processes share one SQLite file under
                        // the launcher: with the write-ahead log readers never
                        // wait for the writer, and a writer waits for another
                        // (busy timeout) instead of failing at once.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *connection)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *connection)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(config.url.expose())
            .await
            .map_err(|source| StorageError::Connect {
                url: config.url.to_string(),
                source,
            })?;
        let database = Self { pool };
        // Workers of one service start together on one database: each step
        // below is safe to repeat, and one that lost a race to another
        // process (a unique violation on the migration record, "table
        // exists") finds the migration applied when it runs again.
        let mut attempt = 1;
        loop {
            match database.migrate(component, migrations).await {
                Ok(()) => return Ok(database),
                Err(error) if attempt < MIGRATION_ATTEMPTS => {
                    tracing::debug!(
                        "migrating {component} (attempt {attempt}): {error}; trying again"
                    );
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn migrate(
        &self,
        component: &str,
        migrations: &[(i64, &'static str)],
    ) -> Result<(), StorageError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS switchyard_migrations (
                component TEXT NOT NULL, version BIGINT NOT NULL, PRIMARY KEY (component, version))",
        )
        .execute(&self.pool)
        .await
        .map_err(StorageError::query("creating the migrations table"))?;
        for (version, sql) in migrations {
            let applied: Option<(i64,)> = sqlx::query_as(
                "SELECT version FROM switchyard_migrations WHERE component = $1 AND version = $2",
            )
            .bind(component.to_string())
            .bind(*version)
            .fetch_optional(&self.pool)
            .await
            .map_err(StorageError::query("reading applied migrations"))?;
            if applied.is_some() {
                continue;
            }
            let mut transaction = self
                .pool
                .begin()
                .await
                .map_err(StorageError::query("starting a migration"))?;
            for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(statement)
                    .execute(&mut *transaction)
                    .await
                    .map_err(StorageError::query(&format!(
                        "applying migration {version}"
                    )))?;
            }
            sqlx::query("INSERT INTO switchyard_migrations (component, version) VALUES ($1, $2)")
                .bind(component.to_string())
                .bind(*version)
                .execute(&mut *transaction)
                .await
                .map_err(StorageError::query("recording a migration"))?;
            transaction
                .commit()
                .await
                .map_err(StorageError::query("committing a migration"))?;
            tracing::info!(version, "applied {component} migration {version}");
        }
        Ok(())
    }

    /// The pool, for queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// `true` when the database answers (readiness).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// [`Database::ping`] as a readiness probe.
    pub fn readiness_probe(
        &self,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + 'static
    {
        let database = self.clone();
        move || {
            let database = database.clone();
            Box::pin(async move { database.ping().await })
        }
    }
}
