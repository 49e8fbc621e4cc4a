//! `seal_sessions`: the sessions the orchestrator provisions, one per execution.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::types::Json;

use super::events::sqlite_time;
use super::{Database, PersistenceError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatus {
    Active,
    Expired,
    Revoked,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "Active",
            Self::Expired => "Expired",
            Self::Revoked => "Revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Active" => Some(Self::Active),
            "Expired" => Some(Self::Expired),
            "Revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub execution_id: String,
    pub agent_id: String,
    pub security_context: String,
    pub public_key_b64: String,
    /// Stored for the orchestrator's bookkeeping; never returned by listings.
    pub security_token: String,
    pub status: SessionStatus,
    pub expires_at: DateTime<Utc>,
    pub allowed_tool_patterns: Vec<String>,
    pub tenant_id: Option<String>,
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionWrite {
    Created,
    Updated,
    /// The row is revoked: revocation is terminal, nothing was written.
    RefusedRevoked,
    /// The row is not the writer's tenant's (a system-global row is only a tenant-less
    /// writer's, that is a platform operator's): nothing was written.
    RefusedOtherTenant,
}

/// What a revocation did.
#[derive(Debug)]
pub enum SessionRevoke {
    /// The session as it was before.
    Revoked(SessionRecord),
    /// No such session, or it is no longer active.
    NotActive,
    /// The session is not the revoking tenant's (system-global ones included).
    RefusedOtherTenant,
}

const COLUMNS: &str = "execution_id, agent_id, security_context, public_key_b64, security_token, \
                       session_status, expires_at, allowed_tool_patterns, tenant_id";

fn parse_patterns(text: &str) -> Result<Vec<String>, PersistenceError> {
    serde_json::from_str(text).map_err(|e| {
        PersistenceError::Database(sqlx::Error::Decode(
            format!("allowed_tool_patterns: {e}").into(),
        ))
    })
}

fn decode_status(s: &str) -> Result<SessionStatus, PersistenceError> {
    SessionStatus::parse(s).ok_or_else(|| {
        PersistenceError::Database(sqlx::Error::Decode(
            format!("unknown session_status {s:?}").into(),
        ))
    })
}

fn from_sqlite(row: &sqlx::sqlite::SqliteRow) -> Result<SessionRecord, PersistenceError> {
    let expires: String = row.try_get("expires_at")?;
    let expires_at = DateTime::parse_from_rfc3339(&expires)
        .map_err(|e| PersistenceError::Database(sqlx::Error::Decode(e.into())))?
        .with_timezone(&Utc);
    Ok(SessionRecord {
        execution_id: row.try_get("execution_id")?,
        agent_id: row.try_get("agent_id")?,
        security_context: row.try_get("security_context")?,
        public_key_b64: row.try_get("public_key_b64")?,
        security_token: row.try_get("security_token")?,
        status: decode_status(row.try_get("session_status")?)?,
        expires_at,
        allowed_tool_patterns: parse_patterns(row.try_get("allowed_tool_patterns")?)?,
        tenant_id: row.try_get("tenant_id")?,
    })
}

fn from_postgres(row: &sqlx::postgres::PgRow) -> Result<SessionRecord, PersistenceError> {
    let patterns: Json<Vec<String>> = row.try_get("allowed_tool_patterns")?;
    Ok(SessionRecord {
        execution_id: row.try_get("execution_id")?,
        agent_id: row.try_get("agent_id")?,
        security_context: row.try_get("security_context")?,
        public_key_b64: row.try_get("public_key_b64")?,
        security_token: row.try_get("security_token")?,
        status: decode_status(row.try_get("session_status")?)?,
        expires_at: row.try_get("expires_at")?,
        allowed_tool_patterns: patterns.0,
        tenant_id: row.try_get("tenant_id")?,
    })
}

impl Database {
    pub async fn get_session(
        &self,
        execution_id: &str,
    ) -> Result<Option<SessionRecord>, PersistenceError> {
        let sql = format!("SELECT {COLUMNS} FROM seal_sessions WHERE execution_id = $1");
        match self {
            Self::Sqlite(pool) => sqlx::query(sqlx::AssertSqlSafe(sql.replace('$', "?")))
                .bind(execution_id)
                .fetch_optional(pool)
                .await?
                .map(|r| from_sqlite(&r))
                .transpose(),
            Self::Postgres(pool) => sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(execution_id)
                .fetch_optional(pool)
                .await?
                .map(|r| from_postgres(&r))
                .transpose(),
        }
    }

    /// Active sessions visible to `tenant` (its own and tenant-less ones); every tenant's with `None`.
    pub async fn list_active_sessions(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<SessionRecord>, PersistenceError> {
        let filter = if tenant.is_some() {
            "AND (tenant_id = $1 OR tenant_id IS NULL)"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM seal_sessions WHERE session_status = 'Active' {filter} ORDER BY execution_id"
        );
        match self {
            Self::Sqlite(pool) => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.replace('$', "?")));
                if let Some(t) = tenant {
                    q = q.bind(t);
                }
                q.fetch_all(pool).await?.iter().map(from_sqlite).collect()
            }
            Self::Postgres(pool) => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                if let Some(t) = tenant {
                    q = q.bind(t);
                }
                q.fetch_all(pool).await?.iter().map(from_postgres).collect()
            }
        }
    }

    /// Creates or replaces a session, unless the existing row is revoked or not of the tenant
    /// `s` is written for (reference §4.2: only a platform operator, who writes tenant-less rows,
    /// may change a system-global one). One statement, so two concurrent writers cannot
    /// interleave a check and a write.
    pub async fn upsert_session(
        &self,
        s: &SessionRecord,
    ) -> Result<SessionWrite, PersistenceError> {
        if let Some(existing) = self.get_session(&s.execution_id).await? {
            if existing.status == SessionStatus::Revoked {
                return Ok(SessionWrite::RefusedRevoked);
            }
            if existing.tenant_id != s.tenant_id {
                return Ok(SessionWrite::RefusedOtherTenant);
            }
        }
        let patterns =
            serde_json::to_string(&s.allowed_tool_patterns).unwrap_or_else(|_| "[]".into());
        // The WHERE on the conflict branch keeps revocation terminal even against a racing revoke.
        let guard = "WHERE seal_sessions.session_status <> 'Revoked' \
                     AND seal_sessions.tenant_id IS NOT DISTINCT FROM excluded.tenant_id";
        let set = "agent_id = excluded.agent_id, security_context = excluded.security_context, \
                   public_key_b64 = excluded.public_key_b64, security_token = excluded.security_token, \
                   session_status = excluded.session_status, expires_at = excluded.expires_at, \
                   allowed_tool_patterns = excluded.allowed_tool_patterns, tenant_id = excluded.tenant_id";
        let (affected, created) = match self {
            Self::Sqlite(pool) => {
                let existed = self.get_session(&s.execution_id).await?.is_some();
                let sql = format!(
                    "INSERT INTO seal_sessions ({COLUMNS}, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                     ON CONFLICT (execution_id) DO UPDATE SET {set} {}",
                    guard.replace("IS NOT DISTINCT FROM", "IS")
                );
                let done = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(&s.execution_id)
                    .bind(&s.agent_id)
                    .bind(&s.security_context)
                    .bind(&s.public_key_b64)
                    .bind(&s.security_token)
                    .bind(s.status.as_str())
                    .bind(sqlite_time(s.expires_at))
                    .bind(&patterns)
                    .bind(&s.tenant_id)
                    .bind(sqlite_time(Utc::now()))
                    .execute(pool)
                    .await?;
                (done.rows_affected(), !existed)
            }
            Self::Postgres(pool) => {
                let sql = format!(
                    "INSERT INTO seal_sessions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9) \
                     ON CONFLICT (execution_id) DO UPDATE SET {set} {guard} RETURNING (xmax = 0) AS created"
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(&s.execution_id)
                    .bind(&s.agent_id)
                    .bind(&s.security_context)
                    .bind(&s.public_key_b64)
                    .bind(&s.security_token)
                    .bind(s.status.as_str())
                    .bind(s.expires_at)
                    .bind(&patterns)
                    .bind(&s.tenant_id)
                    .fetch_optional(pool)
                    .await?;
                match row {
                    Some(row) => (1, row.try_get::<bool, _>("created")?),
                    None => (0, false),
                }
            }
        };
        Ok(match (affected, created) {
            (0, _) => SessionWrite::RefusedRevoked,
            (_, true) => SessionWrite::Created,
            (_, false) => SessionWrite::Updated,
        })
    }

    /// Marks an active session revoked. `tenant` is the revoking tenant operator's (`None`: a
    /// platform operator, who may revoke any session); a tenant may revoke only its own.
    pub async fn revoke_session(
        &self,
        execution_id: &str,
        tenant: Option<&str>,
    ) -> Result<SessionRevoke, PersistenceError> {
        let Some(session) = self.get_session(execution_id).await? else {
            return Ok(SessionRevoke::NotActive);
        };
        if tenant.is_some_and(|t| session.tenant_id.as_deref() != Some(t)) {
            return Ok(SessionRevoke::RefusedOtherTenant);
        }
        if session.status != SessionStatus::Active {
            return Ok(SessionRevoke::NotActive);
        }
        let sql = "UPDATE seal_sessions SET session_status = 'Revoked' WHERE execution_id = $1 AND session_status = 'Active'";
        let affected = match self {
            Self::Sqlite(pool) => sqlx::query(sqlx::AssertSqlSafe(sql.replace('$', "?")))
                .bind(execution_id)
                .execute(pool)
                .await?
                .rows_affected(),
            Self::Postgres(pool) => sqlx::query(sql)
                .bind(execution_id)
                .execute(pool)
                .await?
                .rows_affected(),
        };
        Ok(if affected == 1 {
            SessionRevoke::Revoked(session)
        } else {
            SessionRevoke::NotActive
        })
    }

    /// Marks `Expired` every `Active` session whose `expires_at` has passed, so that the list of
    /// active sessions and each session's status say what the invocation path already enforces.
    /// Returns how many were marked.
    pub async fn expire_sessions(&self, now: DateTime<Utc>) -> Result<u64, PersistenceError> {
        let sql = "UPDATE seal_sessions SET session_status = 'Expired' \
                   WHERE session_status = 'Active' AND expires_at <= $1";
        Ok(match self {
            Self::Sqlite(pool) => sqlx::query(sqlx::AssertSqlSafe(sql.replace('$', "?")))
                .bind(sqlite_time(now))
                .execute(pool)
                .await?
                .rows_affected(),
            Self::Postgres(pool) => sqlx::query(sql)
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected(),
        })
    }
}
