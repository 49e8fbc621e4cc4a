//! Sessions on the hot path: read once from the database, then served from memory.
//!
//! A write through this process invalidates its entry at once, and a read still in flight then is
//! not cached. Another replica's write (Postgres) is seen once the entry's read began longer than
//! [`SESSION_CACHE_TTL`] ago: a revocation takes effect everywhere within that bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;

use crate::domain::seal_error::SealError;
use crate::infrastructure::auth::envelope::parse_session_key;
use crate::infrastructure::persistence::{Database, PersistenceError, SessionRecord};

pub const SESSION_CACHE_TTL: Duration = Duration::from_secs(2);

/// A session with its key parsed once.
#[derive(Debug)]
pub struct LoadedSession {
    pub record: SessionRecord,
    pub key: Result<VerifyingKey, SealError>,
}

pub struct SessionCache {
    db: Database,
    entries: Mutex<Entries>,
}

/// The cached sessions, each with when its read began, and how many invalidations there have
/// been: a read that an invalidation overtook must not be cached, or the session it read (still
/// active, say) would be served for a whole TTL after the write that revoked it was answered.
#[derive(Default)]
struct Entries {
    sessions: HashMap<String, (Arc<LoadedSession>, Instant)>,
    invalidations: u64,
}

/// A database read of a session, begun: what [`SessionCache::keep`] checks before caching it.
struct Read {
    invalidations: u64,
    started: Instant,
}

impl SessionCache {
    pub fn new(db: Database) -> Self {
        Self {
            db,
            entries: Mutex::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub async fn get(
        &self,
        execution_id: &str,
    ) -> Result<Option<Arc<LoadedSession>>, PersistenceError> {
        let read = {
            let entries = self.entries();
            if let Some((session, loaded)) = entries.sessions.get(execution_id)
                && loaded.elapsed() < SESSION_CACHE_TTL
            {
                return Ok(Some(session.clone()));
            }
            Read {
                invalidations: entries.invalidations,
                started: Instant::now(),
            }
        };
        let Some(record) = self.db.get_session(execution_id).await? else {
            // Gone from the database: drop what is cached, without counting an invalidation (an
            // envelope naming any made-up session gets here, and a count would keep other
            // sessions' reads from being cached).
            self.entries().sessions.remove(execution_id);
            return Ok(None);
        };
        Ok(Some(self.keep(execution_id, record, read)))
    }

    /// Caches what `read` found, unless an invalidation came after the read began. Its age counts
    /// from then: another replica's write is seen within the TTL of the read, not of its answer.
    fn keep(&self, execution_id: &str, record: SessionRecord, read: Read) -> Arc<LoadedSession> {
        let session = Arc::new(LoadedSession {
            key: parse_session_key(&record.public_key_b64),
            record,
        });
        let mut entries = self.entries();
        if entries.invalidations != read.invalidations {
            return session;
        }
        // Bounded: drop stale entries when the map grows, rather than keeping every session ever seen.
        if entries.sessions.len() >= 100_000 {
            entries
                .sessions
                .retain(|_, (_, loaded)| loaded.elapsed() < SESSION_CACHE_TTL);
        }
        entries
            .sessions
            .insert(execution_id.to_owned(), (session.clone(), read.started));
        session
    }

    pub fn invalidate(&self, execution_id: &str) {
        let mut entries = self.entries();
        entries.invalidations += 1;
        entries.sessions.remove(execution_id);
    }

    pub fn db(&self) -> &Database {
        &self.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infrastructure::persistence::SessionStatus;

    /// A call reads the session while it is active; the revocation commits and invalidates
    /// before that read is cached. The next call must see the revocation, not the read.
    #[tokio::test]
    async fn a_read_overtaken_by_an_invalidation_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("sessions.db").display());
        let db = Database::connect(&url).await.unwrap();
        let mut record = SessionRecord {
            execution_id: "exec-1".into(),
            agent_id: "agent".into(),
            security_context: "ctx".into(),
            public_key_b64: "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=".into(),
            security_token: "t".into(),
            status: SessionStatus::Active,
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
            allowed_tool_patterns: vec!["*".into()],
            tenant_id: None,
        };
        db.upsert_session(&record).await.unwrap();
        let cache = SessionCache::new(db.clone());

        // The in-flight read: begun, and its answer (Active) in hand.
        let read = Read {
            invalidations: cache.entries().invalidations,
            started: Instant::now(),
        };
        let answer = db.get_session("exec-1").await.unwrap().unwrap();
        // The revocation commits and invalidates; then the read's answer arrives.
        record.status = SessionStatus::Revoked;
        db.upsert_session(&record).await.unwrap();
        cache.invalidate("exec-1");
        let served = cache.keep("exec-1", answer, read);
        assert_eq!(served.record.status, SessionStatus::Active, "its own call");

        let next = cache.get("exec-1").await.unwrap().unwrap();
        assert_eq!(next.record.status, SessionStatus::Revoked);
    }
}
