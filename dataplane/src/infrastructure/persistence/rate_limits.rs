//! Where a capability's `rate_limit` is counted. A gateway on SQLite runs alone (one process per
//! file), so it counts in its own memory, with no round trip. Replicas on Postgres count in
//! `rate_limit_logs` (migration 0005), so a session's quota is one quota whichever replica its
//! calls reach; each rate-limited call then takes one statement (shared with its running slot
//! under a `max_concurrent` too: [`super::CallLimits`]), and calls without a `rate_limit` take
//! none. A key's calls that arrive while its statement is in flight go together
//! in its next (`take_rate_limit_quotas`, migration 0007; see [`super::key_batches`]).

use std::time::Instant;

use aegis_seal_crds::RateLimit;
use sqlx::postgres::PgPool;

use super::key_batches::{BatchStatement, KeyBatches};
use super::replay::delete_in_batches;
use super::{Database, PersistenceError};
use crate::domain::policy::{Quota, RateLimiter};

/// The gateway's `rate_limit` counter, chosen by its database.
#[derive(Debug)]
pub enum RateLimits {
    /// SQLite: this process is the only one serving the database's sessions.
    InProcess(RateLimiter),
    /// Postgres: shared by every replica on the database.
    Shared(SharedQuota),
}

/// The quotas of `rate_limit_logs`. Cloning shares the calls waiting for each key's statement.
#[derive(Debug, Clone)]
pub struct SharedQuota {
    pool: PgPool,
    /// Each key's takes waiting for its statement in flight, by key and limit: a limit changed
    /// by a reload starts batches of its own.
    takes: KeyBatches<(String, RateLimit), (), bool>,
}

impl RateLimits {
    pub fn for_database(db: &Database) -> Self {
        match db {
            Database::Sqlite(_) => Self::InProcess(RateLimiter::new()),
            Database::Postgres(pool) => Self::Shared(SharedQuota {
                pool: pool.clone(),
                takes: KeyBatches::default(),
            }),
        }
    }
}

impl Quota for RateLimits {
    type Error = PersistenceError;

    async fn take(&self, key: &str, limit: &RateLimit, now: Instant) -> Result<bool, Self::Error> {
        match self {
            Self::InProcess(limiter) => Ok(limiter.check(key, limit, now)),
            Self::Shared(shared) => {
                let key = (key.to_owned(), *limit);
                shared.takes.submit(&key, (), shared.clone()).await
            }
        }
    }
}

/// One `take_rate_limit_quotas` for a batch of one key's calls: the first calls allowed, as
/// many as the quota has left.
impl BatchStatement<(String, RateLimit), (), bool> for SharedQuota {
    async fn run(
        &self,
        (key, limit): &(String, RateLimit),
        takes: Vec<()>,
    ) -> Result<Vec<bool>, PersistenceError> {
        // The database's clock decides, not the callers' `now`: replicas' clocks may disagree.
        let allowed: i32 = sqlx::query_scalar("SELECT take_rate_limit_quotas($1, $2, $3, $4)")
            .bind(key)
            .bind(i32::try_from(limit.calls).unwrap_or(i32::MAX))
            .bind(i32::try_from(limit.per_seconds).unwrap_or(i32::MAX))
            .bind(i32::try_from(takes.len()).unwrap_or(i32::MAX))
            .fetch_one(&self.pool)
            .await?;
        let allowed = usize::try_from(allowed).unwrap_or(0);
        Ok((0..takes.len()).map(|i| i < allowed).collect())
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
        // The database's own clock, as `take_rate_limit_quotas` stamps calls with it. A log
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
