//! Group commit for audit events: concurrent invocations share one transaction (one statement on
//! Postgres), and each caller waits until its events are durable before it answers.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::events::AuditEvent;
use super::{Database, PersistenceError};
use crate::infrastructure::metrics::Metrics;

/// Events of at most this many callers go into one commit.
const MAX_GROUP: usize = 256;

struct Pending {
    events: Vec<AuditEvent>,
    reply: oneshot::Sender<Result<(), PersistenceError>>,
}

/// Cheap to clone; all clones feed one writer task.
#[derive(Clone)]
pub struct AuditWriter {
    queue: mpsc::Sender<Pending>,
}

impl AuditWriter {
    /// Starts the writer on the current runtime. It stops when every clone is dropped, after
    /// committing what was queued, so shutdown loses nothing that was accepted.
    /// Each group commit is counted and timed in `metrics`.
    pub fn start(db: Database, metrics: Metrics) -> Self {
        let (queue, pending) = mpsc::channel(4096);
        tokio::spawn(commit_groups(db, pending, metrics));
        Self { queue }
    }

    /// Returns once `events` are committed.
    pub async fn write(&self, events: Vec<AuditEvent>) -> Result<(), PersistenceError> {
        if events.is_empty() {
            return Ok(());
        }
        let (reply, done) = oneshot::channel();
        self.queue
            .send(Pending { events, reply })
            .await
            .map_err(|_| PersistenceError::WriterStopped)?;
        done.await.unwrap_or(Err(PersistenceError::WriterStopped))
    }

    /// Callers waiting in the queue (a gauge for operators).
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

async fn commit_groups(db: Database, mut pending: mpsc::Receiver<Pending>, metrics: Metrics) {
    let db = Arc::new(db);
    let mut group: Vec<Pending> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = pending.recv().await {
        group.push(first);
        while group.len() < MAX_GROUP {
            match pending.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let events: Vec<AuditEvent> = group
            .iter()
            .flat_map(|p| p.events.iter().cloned())
            .collect();
        let started = Instant::now();
        let result = db.append_events(&events).await;
        metrics.audit_commit(result.is_ok(), events.len(), started.elapsed());
        if let Err(e) = &result {
            tracing::error!(
                target: "aegis_seal_gateway::infrastructure::persistence",
                error = %e,
                events = events.len(),
                "audit commit failed"
            );
        }
        for p in group.drain(..) {
            let _ = p.reply.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(e.for_each_caller()),
            });
        }
    }
}
