//! Reading `gateway_events` for `GET /v1/events`: filters and keyset pagination over the id.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{QueryBuilder, Row};

use super::events::sqlite_time;
use super::{Database, PersistenceError};

/// Which events, in which order, from where.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    pub event_type: Option<String>,
    pub execution_id: Option<String>,
    /// Only this tenant's events (the column, which tenant operators are scoped by).
    pub tenant_id: Option<String>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
    /// Continue after this id (exclusive), in `order`.
    pub after_id: Option<i64>,
    pub newest_first: bool,
    pub limit: u32,
}

/// One stored event as the API returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub id: i64,
    pub event_type: String,
    pub tenant_id: Option<String>,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

const COLUMNS: &str = "SELECT id, event_type, tenant_id, payload, created_at, prev_hash, hash FROM gateway_events WHERE 1 = 1";

/// The WHERE/ORDER/LIMIT part, the same text on both backends; times bound as each stores them.
fn push_filters<DB>(
    q: &mut QueryBuilder<DB>,
    query: &EventQuery,
    time: impl Fn(&mut QueryBuilder<DB>, DateTime<Utc>),
) where
    DB: sqlx::Database,
    String: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    i64: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    if let Some(t) = &query.event_type {
        q.push(" AND event_type = ").push_bind(t.clone());
    }
    if let Some(e) = &query.execution_id {
        // The expression of the gateway_events_execution_id index.
        q.push(" AND payload->>'execution_id' = ")
            .push_bind(e.clone());
    }
    if let Some(t) = &query.tenant_id {
        q.push(" AND tenant_id = ").push_bind(t.clone());
    }
    if let Some(since) = query.since {
        q.push(" AND created_at >= ");
        time(q, since);
    }
    if let Some(until) = query.until {
        q.push(" AND created_at < ");
        time(q, until);
    }
    if let Some(after) = query.after_id {
        q.push(if query.newest_first {
            " AND id < "
        } else {
            " AND id > "
        })
        .push_bind(after);
    }
    q.push(if query.newest_first {
        " ORDER BY id DESC LIMIT "
    } else {
        " ORDER BY id ASC LIMIT "
    })
    .push_bind(i64::from(query.limit));
}

impl Database {
    pub async fn query_events(
        &self,
        query: &EventQuery,
    ) -> Result<Vec<StoredEvent>, PersistenceError> {
        match self {
            Self::Sqlite(pool) => {
                let mut q = QueryBuilder::new(COLUMNS);
                push_filters(&mut q, query, |q, t| {
                    q.push_bind(sqlite_time(t));
                });
                let rows = q.build().fetch_all(pool).await?;
                rows.iter()
                    .map(|r| {
                        let payload: String = r.try_get(3)?;
                        let created: String = r.try_get(4)?;
                        Ok(StoredEvent {
                            id: r.try_get(0)?,
                            event_type: r.try_get(1)?,
                            tenant_id: r.try_get(2)?,
                            payload: serde_json::from_str(&payload)
                                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
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
                let mut q = QueryBuilder::new(COLUMNS);
                push_filters(&mut q, query, |q, t| {
                    q.push_bind(t);
                });
                let rows = q.build().fetch_all(pool).await?;
                rows.iter()
                    .map(|r| {
                        let payload: Json<Value> = r.try_get(3)?;
                        Ok(StoredEvent {
                            id: r.try_get(0)?,
                            event_type: r.try_get(1)?,
                            tenant_id: r.try_get(2)?,
                            payload: payload.0,
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
