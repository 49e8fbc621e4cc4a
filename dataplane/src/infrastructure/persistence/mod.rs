//! The database: SQLite (embedded default) or Postgres, chosen by URL, with versioned migrations
//! that make a restart on an existing database a no-op.

mod audit_chain;
mod audit_checkpoint;
mod audit_log_postgres;
mod audit_log_sqlite;
mod audit_query;
mod audit_retention;
mod audit_tasks;
mod audit_verify;
mod audit_writer;
mod call_limits;
mod catalog;
mod events;
mod key_batches;
mod rate_limits;
mod registry;
mod replay;
mod running_slots;
mod sessions;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use audit_chain::GENESIS_HASH;
pub use audit_checkpoint::{Checkpoint, CheckpointSigner, parse_public_key};
pub use audit_query::{EventQuery, StoredEvent};
pub use audit_tasks::{AuditTasks, checkpoint_signer};
pub use audit_verify::{Break, VerifyReport};
pub use audit_writer::AuditWriter;
pub use call_limits::CallLimits;
pub use catalog::{CatalogEntries, CatalogSource, CatalogSync, ReplacedRestObject, row_id};
pub use events::AuditEvent;
pub use rate_limits::RateLimits;
pub use registry::{
    CatalogTable, CliToolRow, NameHolder, REST_SOURCE, SecurityContextRow, SpecRow, WorkflowRow,
};
pub use replay::{PendingJtis, ReplayGuard};
pub use running_slots::{LEASE, LEASE_RENEWAL, RunningSlots, SlotPermit};
pub use sessions::{SessionRecord, SessionRevoke, SessionStatus, SessionWrite};

/// A statement of the catalog and REST tables, written for Postgres, in the backend's dialect:
/// `::jsonb` and `::text` casts are Postgres only (SQLite's JSON columns are checked text), `$n`
/// is `?n` on SQLite, and `now_utc()` is the current UTC time, on SQLite in the schema's
/// fixed-width form (`...T01:02:03.456000Z`; its `strftime` knows milliseconds only, so the
/// microsecond digits are zeros).
fn dialect(backend: Backend, sql: &str) -> String {
    match backend {
        Backend::Postgres => sql.replace("now_utc()", "now()"),
        Backend::Sqlite => sql
            .replace("::jsonb", "")
            .replace("::text", "")
            .replace('$', "?")
            .replace(
                "now_utc()",
                "(strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')",
            ),
    }
}

/// The gateway's `application_name` on Postgres.
const APPLICATION_NAME: &str = "aegis-seal-gateway";

/// The migrations of this release, allowing a database that newer ones have run on: during a
/// rolling upgrade, and after a rollback, the previous release runs on the schema the next one
/// migrated. So migrations stay additive (a table, a column with a default, an index, a trigger;
/// never a drop or a rename that the previous release would trip on).
fn migrations(mut migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    migrator.set_ignore_missing(true);
    migrator
}

#[derive(Debug, thiserror::Error)]
pub enum PersistenceError {
    /// No connection came free within the acquire timeout: the request path is starved.
    #[error("database pool acquire timeout")]
    PoolTimedOut,
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// A batched write (group commit) failed; the message is the underlying error's.
    #[error("{0}")]
    Batch(String),
    #[error("the database writer has stopped")]
    WriterStopped,
}

impl From<sqlx::Error> for PersistenceError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut => Self::PoolTimedOut,
            other => Self::Database(other),
        }
    }
}

impl PersistenceError {
    /// The database refused what a statement writes (a constraint or a trigger, a value or a size
    /// it cannot store): the transaction did not commit, and the same rows would be refused
    /// again. Lost connections, timeouts, locks, conflicts and full disks are not: they are not
    /// about the rows, and a commit whose answer was lost may have happened.
    pub fn is_refused_statement(&self) -> bool {
        let Self::Database(sqlx::Error::Database(e)) = self else {
            return false;
        };
        let code = e.code().unwrap_or_default();
        if e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .is_some()
        {
            // SQLSTATE classes: data exception, integrity constraint violation, program limit
            // exceeded, PL/pgSQL RAISE.
            ["22", "23", "54", "P0"]
                .iter()
                .any(|class| code.starts_with(class))
        } else {
            // SQLite's primary result code, the low byte of the extended one sqlx reports:
            // SQLITE_TOOBIG, SQLITE_CONSTRAINT (a trigger's RAISE too), SQLITE_MISMATCH,
            // SQLITE_RANGE.
            code.parse::<i32>()
                .is_ok_and(|c| matches!(c & 0xff, 18 | 19 | 20 | 25))
        }
    }

    /// The same failure, for each caller of a batched write (the error itself is not `Clone`).
    pub fn for_each_caller(&self) -> Self {
        match self {
            Self::PoolTimedOut => Self::PoolTimedOut,
            Self::WriterStopped => Self::WriterStopped,
            other => Self::Batch(other.to_string()),
        }
    }
}

/// Logs pool starvation the way the runbook greps for it (`grep -i 'pool acquire'`).
pub fn log_pool_starvation(handler: &str, error: &PersistenceError) {
    tracing::error!(
        target: "sqlx::pool",
        handler,
        error = %error,
        "database pool acquire timed out — request path starved"
    );
}

/// Connection pool sizing. The acquire timeout is short on purpose: starvation must surface fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub min_connections: u32,
    pub acquire_timeout: Duration,
    pub idle_timeout: Duration,
}

impl PoolSettings {
    /// Reference §9.1: 50 connections, 5 kept warm, 5 s acquire, 10 min idle.
    pub const POSTGRES: Self = Self {
        max_connections: 50,
        min_connections: 5,
        acquire_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(600),
    };
    /// One file: a few readers beside SQLite's single writer.
    pub const SQLITE: Self = Self {
        max_connections: 8,
        min_connections: 1,
        acquire_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(600),
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn for_url(url: &str) -> Self {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::Postgres
        } else {
            Self::Sqlite
        }
    }
}

/// A migrated database, shared by the whole process.
#[derive(Clone, Debug)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Database {
    /// Connects with the backend's default pool settings and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, PersistenceError> {
        let settings = match Backend::for_url(url) {
            Backend::Sqlite => PoolSettings::SQLITE,
            Backend::Postgres => PoolSettings::POSTGRES,
        };
        Self::connect_with(url, settings).await
    }

    pub async fn connect_with(url: &str, pool: PoolSettings) -> Result<Self, PersistenceError> {
        let db = match Backend::for_url(url) {
            Backend::Postgres => {
                let mut options = PgConnectOptions::from_str(url)
                    .map_err(|e| PersistenceError::InvalidUrl(e.to_string()))?;
                // What `pg_stat_activity` shows for each of the gateway's connections (the
                // runbook's pool diagnosis), unless the URL names one.
                if options.get_application_name().is_none() {
                    options = options.application_name(APPLICATION_NAME);
                }
                let pool = PgPoolOptions::new()
                    .max_connections(pool.max_connections)
                    .min_connections(pool.min_connections)
                    .acquire_timeout(pool.acquire_timeout)
                    .idle_timeout(pool.idle_timeout)
                    .connect_with(options)
                    .await?;
                migrations(sqlx::migrate!("../migrations/postgres"))
                    .run(&pool)
                    .await?;
                Self::Postgres(pool)
            }
            Backend::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)
                    .map_err(|e| PersistenceError::InvalidUrl(e.to_string()))?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true)
                    // Query-planner statistics, which nothing else gathers on SQLite: without them
                    // the runbook's `execution_id` lookup walks every event of its type instead of
                    // using its index. Checked as each connection opens (the pool renews them every
                    // 30 minutes); SQLite bounds the work and skips tables that barely changed.
                    .pragma("optimize", "0x10002");
                let file = options.get_filename();
                if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty())
                    && file.to_str() != Some(":memory:")
                {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        PersistenceError::InvalidUrl(format!(
                            "cannot create {}: {e}",
                            parent.display()
                        ))
                    })?;
                }
                let pool = SqlitePoolOptions::new()
                    .max_connections(pool.max_connections)
                    .min_connections(pool.min_connections)
                    .acquire_timeout(pool.acquire_timeout)
                    .idle_timeout(pool.idle_timeout)
                    .connect_with(options)
                    .await?;
                migrations(sqlx::migrate!("../migrations/sqlite"))
                    .run(&pool)
                    .await?;
                Self::Sqlite(pool)
            }
        };
        tracing::debug!(backend = ?db.backend(), "database ready");
        Ok(db)
    }

    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }

    /// One round trip, through the pool like any request: the readiness check.
    pub async fn ping(&self) -> Result<(), PersistenceError> {
        match self {
            Self::Sqlite(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
            Self::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Waits for checked-out connections to return, then closes the pool.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }
}
