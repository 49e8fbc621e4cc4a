//! Where a capability's `rate_limit` is counted. A gateway on SQLite runs alone (one process per
//! file), so it counts in its own memory, with no round trip. Replicas on Postgres count in
//! `rate_limit_logs`, so a session's quota is one quota whichever replica its calls reach; each
//! rate-limited call then takes one statement (`take_rate_limit_quota`, migration 0005), and
//! calls without a `rate_limit` take none.

use std::time::Instant;

use aegis_seal_crds::RateLimit;
use sqlx::postgres::PgPool;

use super::replay::delete_in_batches;
use super::{Database, PersistenceError};
use crate::domain::policy::{Quota, RateLimiter};

/// The gateway's `rate_limit` counter, chosen by its database.
#[derive(Debug)]
pub enum RateLimits {
    /// SQLite: this process is the only one serving the database's sessions.
    InProcess(RateLimiter),
    /// Postgres: shared by every replica on the database.
    Shared(PgPool),
}

impl RateLimits {
    pub fn for_database(db: &Database) -> Self {
        match db {
            Database::Sqlite(_) => Self::InProcess(RateLimiter::new()),
            Database::Postgres(pool) => Self::Shared(pool.clone()),
        }
    }
}

impl Quota for RateLimits {
    type Error = PersistenceError;

    async fn take(&self, key: &str, limit: &RateLimit, now: Instant) -> Result<bool, Self::Error> {
        match self {
            Self::InProcess(limiter) => Ok(limiter.check(key, limit, now)),
            Self::Shared(pool) => {
                // The database's clock decides, not `now`: replicas' clocks may disagree.
                let allowed = sqlx::query_scalar("SELECT take_rate_limit_quota($1, $2, $3)")
                    .bind(key)
                    .bind(i32::try_from(limit.calls).unwrap_or(i32::MAX))
                    .bind(i32::try_from(limit.per_seconds).unwrap_or(i32::MAX))
                    .fetch_one(pool)
                    .await?;
                Ok(allowed)
            }
        }
    }
}

impl Database {
    /// Deletes the shared rate-limit logs whose every call has left its window, in batches of
    /// [`SWEEP_BATCH`](super::replay::SWEEP_BATCH): such a log allows the next call exactly as no
    /// log does. Returns the rows deleted (none on SQLite, which keeps no such table).
    pub async fn sweep_rate_limits(&self) -> Result<u64, PersistenceError> {
        let Self::Postgres(pool) = self else {
            return Ok(0);
        };
        // The database's own clock, as `take_rate_limit_quota` stamps calls with it. A log
        // that a call is extending holds its row lock; the outer condition is checked again
        // on the row that call leaves, so a log it just extended is kept.
        delete_in_batches(
            pool,
            "DELETE FROM rate_limit_logs WHERE expires_at < clock_timestamp() AND key IN \
             (SELECT key FROM rate_limit_logs WHERE expires_at < clock_timestamp() LIMIT $1)",
        )
        .await
    }
}
