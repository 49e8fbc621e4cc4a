//! Offline verification of the audit chain (`aegis-seal-gateway audit verify`): recomputes every
//! row's hash in id order, checks every checkpoint's signature and that the rows it pinned are
//! still there unchanged, and names the first row where the evidence breaks.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::types::Json;

use super::audit_chain::{ChainedRow, GENESIS_HASH};
use super::{Database, PersistenceError};

/// Rows read per query, so a large table is verified in bounded memory.
const PAGE: i64 = 1000;

/// Where and why the evidence breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// A `gateway_events` row.
    Row { id: i64, reason: String },
    /// An `audit_checkpoints` row.
    Checkpoint { id: i64, reason: String },
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Row { id, reason } => write!(f, "gateway_events row id={id}: {reason}"),
            Self::Checkpoint { id, reason } => write!(f, "audit_checkpoints row id={id}: {reason}"),
        }
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Chained rows whose hashes were recomputed.
    pub rows: u64,
    /// Rows written before the chain existed (no hash); reported, not verifiable.
    pub unchained_rows: u64,
    pub first_id: Option<i64>,
    pub last_id: Option<i64>,
    pub checkpoints: u64,
    /// Events retention removed, per the purge checkpoints.
    pub purged_events: i64,
    /// Whether checkpoint signatures were checked against a key the caller trusts.
    pub trusted_key: bool,
}

struct StoredRow {
    id: i64,
    event_type: String,
    tenant_id: Option<String>,
    payload: Map<String, Value>,
    created_at: DateTime<Utc>,
    prev_hash: Option<String>,
    hash: Option<String>,
}

impl Database {
    /// Verifies the chain and the checkpoints. `Ok(Err(_))` is a break in the evidence;
    /// `Err(_)` is a failure to read the database.
    pub async fn verify_audit(
        &self,
        trusted: Option<&VerifyingKey>,
    ) -> Result<Result<VerifyReport, Break>, PersistenceError> {
        let mut report = VerifyReport {
            trusted_key: trusted.is_some(),
            ..Default::default()
        };
        let checkpoints = self.audit_checkpoints().await?;
        // The chain must start where the latest purge left it: rows removed without a purge
        // record show up as a first row whose prev_hash is not the recorded one.
        let mut expected_prev: Option<String> = Some(GENESIS_HASH.into());
        let mut purged_through = 0;
        // Event id -> (checkpoint id, hash it pinned).
        let mut pinned: BTreeMap<i64, Vec<(i64, String)>> = BTreeMap::new();
        for c in &checkpoints {
            if let Err(reason) = c.verify_signature(trusted) {
                return Ok(Err(Break::Checkpoint { id: c.id, reason }));
            }
            report.checkpoints += 1;
            report.purged_events += c.purged_events;
            if let Some(through) = c.purged_through_id
                && through >= purged_through
            {
                purged_through = through;
                expected_prev = Some(
                    c.purged_through_hash
                        .clone()
                        .unwrap_or_else(|| GENESIS_HASH.into()),
                );
            }
            pinned
                .entry(c.last_event_id)
                .or_default()
                .push((c.id, c.last_hash.clone()));
        }

        let mut after = 0i64;
        let mut prev: Option<String> = None;
        loop {
            let page = self.audit_page(after).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for row in page {
                report.first_id.get_or_insert(row.id);
                report.last_id = Some(row.id);
                let (Some(stored_prev), Some(stored_hash)) = (&row.prev_hash, &row.hash) else {
                    if prev.is_some() {
                        return Ok(Err(Break::Row {
                            id: row.id,
                            reason: "has no hash although earlier rows are chained".into(),
                        }));
                    }
                    report.unchained_rows += 1;
                    continue;
                };
                let expected = match &prev {
                    Some(p) => p.clone(),
                    None => expected_prev.take().unwrap_or_else(|| GENESIS_HASH.into()),
                };
                if stored_prev != &expected {
                    let reason = if prev.is_some() {
                        "prev_hash is not the previous row's hash: a row before it was removed, inserted or changed"
                    } else if purged_through > 0 {
                        "prev_hash is not the hash the latest purge checkpoint recorded: rows before it were removed outside retention"
                    } else {
                        "prev_hash is not the chain's start: rows before it were removed without a purge checkpoint"
                    };
                    return Ok(Err(Break::Row {
                        id: row.id,
                        reason: reason.into(),
                    }));
                }
                let computed = ChainedRow {
                    id: row.id,
                    created_at: row.created_at,
                    event_type: &row.event_type,
                    tenant_id: row.tenant_id.as_deref(),
                    payload: &row.payload,
                    prev_hash: stored_prev,
                }
                .hash();
                if &computed != stored_hash {
                    return Ok(Err(Break::Row {
                        id: row.id,
                        reason: "its contents do not match its hash: the row was changed".into(),
                    }));
                }
                if let Some(pins) = pinned.remove(&row.id) {
                    for (checkpoint, hash) in pins {
                        if &hash != stored_hash {
                            return Ok(Err(Break::Row {
                                id: row.id,
                                reason: format!(
                                    "its hash differs from the one signed in checkpoint {checkpoint}: the chain was rewritten"
                                ),
                            }));
                        }
                    }
                }
                report.rows += 1;
                prev = Some(stored_hash.clone());
            }
        }
        // Every pinned row that retention did not remove was matched and taken out above; what
        // is left names rows that are gone.
        if let Some((&event, pins)) = pinned.iter().find(|(event, _)| **event > purged_through) {
            let checkpoint = pins.first().map_or(0, |p| p.0);
            let reason = match report.last_id {
                Some(last) if event > last => format!(
                    "checkpoint {checkpoint} signed this row, but the table ends at row {last}: rows were removed from the end"
                ),
                None => format!(
                    "checkpoint {checkpoint} signed this row, but the table is empty: rows were removed"
                ),
                Some(_) => format!(
                    "checkpoint {checkpoint} signed this row, but it is missing: it was removed"
                ),
            };
            return Ok(Err(Break::Row { id: event, reason }));
        }
        Ok(Ok(report))
    }

    async fn audit_page(&self, after: i64) -> Result<Vec<StoredRow>, PersistenceError> {
        const SQL: &str = "SELECT id, event_type, tenant_id, payload, created_at, prev_hash, hash FROM gateway_events WHERE id > $1 ORDER BY id LIMIT $2";
        match self {
            Self::Sqlite(pool) => {
                let rows = sqlx::query(SQL)
                    .bind(after)
                    .bind(PAGE)
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        let id: i64 = r.try_get(0)?;
                        let payload: String = r.try_get(3)?;
                        let created: String = r.try_get(4)?;
                        Ok(StoredRow {
                            id,
                            event_type: r.try_get(1)?,
                            tenant_id: r.try_get(2)?,
                            // An unreadable payload hashes as empty, so the row is named as changed.
                            payload: serde_json::from_str(&payload).unwrap_or_default(),
                            created_at: DateTime::parse_from_rfc3339(&created)
                                .map(|t| t.with_timezone(&Utc))
                                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                            prev_hash: r.try_get(5)?,
                            hash: r.try_get(6)?,
                        })
                    })
                    .collect()
            }
            Self::Postgres(pool) => {
                let rows = sqlx::query(SQL)
                    .bind(after)
                    .bind(PAGE)
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        let payload: Json<Value> = r.try_get(3)?;
                        Ok(StoredRow {
                            id: r.try_get(0)?,
                            event_type: r.try_get(1)?,
                            tenant_id: r.try_get(2)?,
                            payload: match payload.0 {
                                Value::Object(map) => map,
                                _ => Map::new(),
                            },
                            created_at: r.try_get(4)?,
                            prev_hash: r.try_get(5)?,
                            hash: r.try_get(6)?,
                        })
                    })
                    .collect()
            }
        }
    }
}
