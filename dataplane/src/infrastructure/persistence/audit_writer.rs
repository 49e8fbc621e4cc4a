//! Group commit for audit events: concurrent invocations share one transaction (one statement on
//! Postgres), and each caller waits until its events are durable before it answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::audit_log_postgres::PostgresAuditLog;
use super::audit_log_sqlite::{SqliteAuditLog, WAL_CHECKPOINT_INTERVAL, checkpoint_wal};
use super::events::AuditEvent;
use super::replay::PendingJtis;
use super::{Database, PersistenceError};
use crate::infrastructure::metrics::Metrics;

/// Events of at most this many callers go into one commit.
const MAX_GROUP: usize = 256;
/// How long first-use jtis of calls that wrote no event wait for a commit to carry them.
const IDLE_JTI_FLUSH: Duration = Duration::from_millis(200);
/// A group waits for callers still on their way only when at least this many are: under light
/// load each call commits at once, under heavy load a commit serves many calls.
const GATHER_MIN_ON_THE_WAY: usize = 4;
/// The longest a group waits for them (tokio's timer rounds it up to its 1 ms tick).
const GATHER_MAX_WAIT: Duration = Duration::from_micros(500);

struct Pending {
    events: Vec<AuditEvent>,
    reply: oneshot::Sender<Result<(), PersistenceError>>,
}

/// Cheap to clone; all clones feed one writer task.
#[derive(Clone)]
pub struct AuditWriter {
    queue: mpsc::Sender<Pending>,
    /// Calls that will write events soon or are waiting for their commit ([`OnTheWay`]).
    on_the_way: Arc<AtomicUsize>,
}

/// A call that is expected to write audit events, counted while it lives.
pub struct OnTheWay(Arc<AtomicUsize>);

impl Drop for OnTheWay {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AuditWriter {
    /// Starts the writer on the current runtime. It stops when every clone is dropped, after
    /// committing what was queued, so shutdown loses nothing that was accepted.
    /// Each group commit is counted and timed in `metrics`.
    /// On SQLite, `jtis` are the replay guard's pending first uses: each commit carries them.
    pub fn start(db: Database, metrics: Metrics, jtis: Option<PendingJtis>) -> Self {
        let (queue, pending) = mpsc::channel(4096);
        let on_the_way = Arc::new(AtomicUsize::new(0));
        tokio::spawn(commit_groups(
            db,
            pending,
            metrics,
            jtis.unwrap_or_default(),
            on_the_way.clone(),
        ));
        Self { queue, on_the_way }
    }

    /// Counts a call that is expected to write events until the returned value is dropped, after
    /// its [`Self::write`]. Commits wait a little for such calls when many are on their way.
    pub fn expect_events(&self) -> OnTheWay {
        self.on_the_way.fetch_add(1, Ordering::Relaxed);
        OnTheWay(self.on_the_way.clone())
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

/// Where groups are committed: the writer's own connection to either backend.
enum Log {
    Sqlite(Box<SqliteAuditLog>),
    Postgres(Box<PostgresAuditLog>),
}

impl Log {
    async fn append(
        &mut self,
        events: &[AuditEvent],
        jtis: &[(String, chrono::DateTime<chrono::Utc>)],
    ) -> Result<(), PersistenceError> {
        match self {
            Self::Sqlite(log) => log.append(events, jtis).await,
            Self::Postgres(log) => {
                debug_assert!(jtis.is_empty(), "Postgres records jtis synchronously");
                log.append(events).await
            }
        }
    }
}

async fn commit_groups(
    db: Database,
    mut pending: mpsc::Receiver<Pending>,
    metrics: Metrics,
    jtis: PendingJtis,
    on_the_way: Arc<AtomicUsize>,
) {
    let mut log = match &db {
        Database::Sqlite(pool) => {
            let log = SqliteAuditLog::new(pool);
            tokio::spawn(checkpoint_wal(
                pool.clone(),
                log.wal(),
                WAL_CHECKPOINT_INTERVAL,
            ));
            Log::Sqlite(Box::new(log))
        }
        Database::Postgres(pool) => Log::Postgres(Box::new(PostgresAuditLog::new(pool))),
    };
    let mut group: Vec<Pending> = Vec::with_capacity(MAX_GROUP);
    loop {
        let first = if jtis.is_empty() {
            pending.recv().await
        } else {
            match tokio::time::timeout(IDLE_JTI_FLUSH, pending.recv()).await {
                Ok(next) => next,
                // Idle with first uses pending (calls refused without an event): commit them alone.
                Err(_) => {
                    let rows = jtis.take();
                    if let Err(e) = log.append(&[], &rows).await {
                        tracing::error!(
                            target: "aegis_seal_gateway::infrastructure::persistence",
                            error = %e,
                            jtis = rows.len(),
                            "jti commit failed"
                        );
                        jtis.restore(rows);
                    }
                    continue;
                }
            }
        };
        let Some(first) = first else { break };
        group.push(first);
        // One scheduler pass before taking the group: invocations that are ready to run reach
        // their commit too and join this group instead of each waiting for a commit of its own.
        tokio::task::yield_now().await;
        drain(&mut pending, &mut group);
        // Under load, wait a little for the calls still on their way: one commit (a few WAL
        // pages per index, whatever the group's size) then serves them all.
        let deadline = tokio::time::Instant::now() + GATHER_MAX_WAIT;
        while group.len() < MAX_GROUP
            && on_the_way.load(Ordering::Relaxed) >= group.len() + GATHER_MIN_ON_THE_WAY
        {
            match tokio::time::timeout_at(deadline, pending.recv()).await {
                Ok(Some(next)) => {
                    group.push(next);
                    drain(&mut pending, &mut group);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let events: Vec<AuditEvent> = group
            .iter_mut()
            .flat_map(|p| std::mem::take(&mut p.events))
            .collect();
        // Taken after the group: every jti first used by these callers is pending by now.
        let rows = jtis.take();
        let started = Instant::now();
        let result = log.append(&events, &rows).await;
        metrics.audit_commit(result.is_ok(), events.len(), started.elapsed());
        if let Err(e) = &result {
            tracing::error!(
                target: "aegis_seal_gateway::infrastructure::persistence",
                error = %e,
                events = events.len(),
                "audit commit failed"
            );
            jtis.restore(rows);
        }
        for p in group.drain(..) {
            let _ = p.reply.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(e.for_each_caller()),
            });
        }
    }
    match log {
        Log::Sqlite(log) => log.close().await,
        Log::Postgres(log) => log.close().await,
    }
}

/// Moves what is queued into the group, up to its size limit.
fn drain(pending: &mut mpsc::Receiver<Pending>, group: &mut Vec<Pending>) {
    while group.len() < MAX_GROUP {
        match pending.try_recv() {
            Ok(next) => group.push(next),
            Err(_) => break,
        }
    }
}
