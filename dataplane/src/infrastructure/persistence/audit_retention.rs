//! Retention of `gateway_events` (the runbook: keep the working set small). Old rows go oldest
//! first, a bounded batch per transaction, and each batch leaves a signed purge checkpoint naming
//! the last row it removed and that row's hash: the chain then verifies from its oldest
//! remaining row, whose `prev_hash` is that hash.
//!
//! Only a prefix of the chain (in id order) is ever removed, and never the newest row, whose hash
//! the next append links to.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::audit_chain::GENESIS_HASH;
use super::audit_checkpoint::{
    CheckpointKind, CheckpointSigner, NewCheckpoint, Purged, insert_postgres, insert_sqlite,
};
use super::{Database, PersistenceError};

/// Postgres advisory lock taken by a purge batch, so that replicas do not purge at once.
const PURGE_LOCK_KEY: i64 = 0x5EA1_A0D2;

/// Of the oldest rows, the longest run created before `before`: ids, and the last one's hash.
fn purgeable(
    rows: &[(i64, DateTime<Utc>, Option<String>)],
    before: DateTime<Utc>,
) -> Option<Purged> {
    let run = rows.iter().take_while(|(_, at, _)| *at < before).count();
    let (through_id, _, through_hash) = rows.get(run.checked_sub(1)?)?;
    Some(Purged {
        through_id: *through_id,
        through_hash: through_hash.clone(),
        events: i64::try_from(run).unwrap_or(i64::MAX),
    })
}

impl Database {
    /// Removes events created before `before`, `batch` rows per transaction, and returns how many
    /// were removed.
    pub async fn purge_audit(
        &self,
        before: DateTime<Utc>,
        batch: u32,
        signer: &CheckpointSigner,
    ) -> Result<i64, PersistenceError> {
        let mut total = 0;
        while let Some(n) = self.purge_batch(before, batch.max(1), signer).await? {
            total += n;
        }
        if total > 0 {
            tracing::info!(
                target: "aegis_seal_gateway::infrastructure::persistence",
                purged = total,
                before = %before.to_rfc3339(),
                "audit retention purged events"
            );
        }
        Ok(total)
    }

    /// One batch; `None` when nothing (more) is old enough.
    async fn purge_batch(
        &self,
        before: DateTime<Utc>,
        batch: u32,
        signer: &CheckpointSigner,
    ) -> Result<Option<i64>, PersistenceError> {
        const OLDEST: &str = "SELECT id, created_at, hash FROM gateway_events \
             WHERE id < (SELECT MAX(id) FROM gateway_events) ORDER BY id LIMIT $1";
        const DELETE: &str = "DELETE FROM gateway_events WHERE id <= $1";
        match self {
            Self::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let rows = sqlx::query(OLDEST)
                    .bind(i64::from(batch))
                    .fetch_all(&mut *tx)
                    .await?;
                let rows = rows
                    .iter()
                    .map(|r| {
                        let at: String = r.try_get(1)?;
                        let at = DateTime::parse_from_rfc3339(&at)
                            .map(|t| t.with_timezone(&Utc))
                            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                        Ok((r.try_get(0)?, at, r.try_get(2)?))
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?;
                let Some(purged) = purgeable(&rows, before) else {
                    return Ok(None);
                };
                sqlx::query(DELETE)
                    .bind(purged.through_id)
                    .execute(&mut *tx)
                    .await?;
                let events = purged.events;
                let checkpoint = purge_checkpoint(signer, purged);
                insert_sqlite(&mut tx, &checkpoint).await?;
                tx.commit().await?;
                Ok(Some(events))
            }
            Self::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                    .bind(PURGE_LOCK_KEY)
                    .fetch_one(&mut *tx)
                    .await?;
                if !locked {
                    // Another replica is purging the same rows.
                    return Ok(None);
                }
                let rows = sqlx::query(OLDEST)
                    .bind(i64::from(batch))
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?;
                let Some(purged) = purgeable(&rows, before) else {
                    return Ok(None);
                };
                sqlx::query(DELETE)
                    .bind(purged.through_id)
                    .execute(&mut *tx)
                    .await?;
                let events = purged.events;
                let checkpoint = purge_checkpoint(signer, purged);
                insert_postgres(&mut tx, &checkpoint).await?;
                tx.commit().await?;
                Ok(Some(events))
            }
        }
    }
}

/// The purge checkpoint pins the last removed row, so verification skips it like the rest.
fn purge_checkpoint(signer: &CheckpointSigner, purged: Purged) -> NewCheckpoint {
    let head = (
        purged.through_id,
        purged
            .through_hash
            .clone()
            .unwrap_or_else(|| GENESIS_HASH.into()),
    );
    NewCheckpoint::sign(signer, CheckpointKind::Purge, head, Some(purged))
}
