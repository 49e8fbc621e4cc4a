//! The audit writer's own Postgres connection: a group commit in three round trips (open, lock
//! and read the head; insert; commit) where a pooled transaction took six (the pool's liveness
//! check, `BEGIN`, the lock, the head, the insert, `COMMIT`). Every round trip is a wait for each
//! caller in the group and a wake-up on the gateway's core.

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};
use sqlx::{ConnectOptions, Connection};

use super::PersistenceError;
use super::audit_chain::{postgres_insert, postgres_link};
use super::events::AuditEvent;

pub(super) struct PostgresAuditLog {
    options: PgConnectOptions,
    /// Opened on first use, and again after any failure.
    conn: Option<PgConnection>,
}

impl PostgresAuditLog {
    pub fn new(pool: &PgPool) -> Self {
        Self {
            options: (*pool.connect_options()).clone(),
            conn: None,
        }
    }

    /// Commits the events, chained after the newest row of any replica.
    ///
    /// Not retried on failure: a commit whose answer was lost may have happened, and a retry
    /// would write the group twice. The callers get the error (503) instead.
    pub async fn append(&mut self, events: &[AuditEvent]) -> Result<(), PersistenceError> {
        if events.is_empty() {
            return Ok(());
        }
        let result = self.try_append(events).await;
        if result.is_err()
            && let Some(conn) = self.conn.take()
        {
            // Closing ends the transaction a failed statement left open; the next group opens a
            // connection afresh.
            let _ = conn.close().await;
        }
        result
    }

    async fn try_append(&mut self, events: &[AuditEvent]) -> Result<(), PersistenceError> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(self.options.connect().await?),
        };
        let linked = postgres_link(conn, events, true).await?;
        postgres_insert(conn, linked).await?;
        sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
        Ok(())
    }

    pub async fn close(mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }
}
