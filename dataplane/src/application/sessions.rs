//! Sessions on the hot path: read once from the database, then served from memory.
//!
//! A write through this process invalidates its entry at once. Another replica's write (Postgres)
//! is seen when the entry is older than [`SESSION_CACHE_TTL`]: a revocation takes effect everywhere
//! within that bound.

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
    entries: Mutex<HashMap<String, (Arc<LoadedSession>, Instant)>>,
}

impl SessionCache {
    pub fn new(db: Database) -> Self {
        Self {
            db,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub async fn get(
        &self,
        execution_id: &str,
    ) -> Result<Option<Arc<LoadedSession>>, PersistenceError> {
        if let Some((session, loaded)) = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(execution_id)
            && loaded.elapsed() < SESSION_CACHE_TTL
        {
            return Ok(Some(session.clone()));
        }
        let Some(record) = self.db.get_session(execution_id).await? else {
            self.invalidate(execution_id);
            return Ok(None);
        };
        let session = Arc::new(LoadedSession {
            key: parse_session_key(&record.public_key_b64),
            record,
        });
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: drop stale entries when the map grows, rather than keeping every session ever seen.
        if entries.len() >= 100_000 {
            entries.retain(|_, (_, loaded)| loaded.elapsed() < SESSION_CACHE_TTL);
        }
        entries.insert(execution_id.to_owned(), (session.clone(), Instant::now()));
        Ok(Some(session))
    }

    pub fn invalidate(&self, execution_id: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(execution_id);
    }

    pub fn db(&self) -> &Database {
        &self.db
    }
}
