//! `gateway_events`: the audit trail. Payloads are flat JSON objects so the runbook's
//! `payload->>'field'` queries work verbatim on both backends.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sqlx::types::Json;

use super::{Database, PersistenceError};

/// One audit event.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Event type as the runbook names it, e.g. `CredentialExchangeFailed`.
    pub event_type: &'static str,
    pub payload: Map<String, Value>,
    pub tenant_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl AuditEvent {
    /// An event from a `json!` object literal; anything but an object yields an empty payload.
    pub fn from_json(event_type: &'static str, payload: Value) -> Self {
        match payload {
            Value::Object(map) => Self::new(event_type, map),
            _ => Self::new(event_type, Map::new()),
        }
    }

    pub fn new(event_type: &'static str, payload: Map<String, Value>) -> Self {
        let tenant_id = payload
            .get("tenant_id")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        Self {
            event_type,
            payload,
            tenant_id,
            created_at: Utc::now(),
        }
    }
}

/// SQLite keeps times as fixed-width UTC text so that ORDER BY and comparisons are chronological.
pub(super) fn sqlite_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl Database {
    /// Writes the events in one transaction: all of them are durable when this returns, or none.
    pub async fn append_events(&self, events: &[AuditEvent]) -> Result<(), PersistenceError> {
        if events.is_empty() {
            return Ok(());
        }
        match self {
            Self::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                for e in events {
                    sqlx::query(
                        "INSERT INTO gateway_events (event_type, payload, tenant_id, created_at) VALUES (?, ?, ?, ?)",
                    )
                    .bind(e.event_type)
                    .bind(Value::Object(e.payload.clone()).to_string())
                    .bind(&e.tenant_id)
                    .bind(sqlite_time(e.created_at))
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
            Self::Postgres(pool) => {
                // One statement for the whole batch: a group commit costs one round trip.
                let mut types = Vec::with_capacity(events.len());
                let mut payloads = Vec::with_capacity(events.len());
                let mut tenants = Vec::with_capacity(events.len());
                let mut times = Vec::with_capacity(events.len());
                for e in events {
                    types.push(e.event_type);
                    payloads.push(Json(Value::Object(e.payload.clone())));
                    tenants.push(e.tenant_id.clone());
                    times.push(e.created_at);
                }
                sqlx::query(
                    "INSERT INTO gateway_events (event_type, payload, tenant_id, created_at) \
                     SELECT * FROM UNNEST($1::text[], $2::jsonb[], $3::text[], $4::timestamptz[])",
                )
                .bind(types)
                .bind(payloads)
                .bind(tenants)
                .bind(times)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }
}
