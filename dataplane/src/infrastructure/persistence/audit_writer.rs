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
        // Each caller's events, in group order: `ends[i]` is where caller i's events end.
        let mut ends = Vec::with_capacity(group.len());
        let mut events: Vec<AuditEvent> = Vec::new();
        for p in &mut group {
            events.append(&mut p.events);
            ends.push(events.len());
        }
        let result = commit(&mut log, &events, &jtis, &metrics).await;
        match result {
            Err(e) if group.len() > 1 && e.is_refused_statement() => {
                // The database refused the group's statement, so nothing of it was written, and
                // the cause may be one caller's events alone: commit each caller on its own, so
                // that one bad event costs only its own call.
                tracing::warn!(
                    target: "aegis_seal_gateway::infrastructure::persistence",
                    callers = group.len(),
                    "audit group refused; committing each call on its own"
                );
                let mut start = 0;
                for (p, end) in group.drain(..).zip(ends) {
                    let own = commit(&mut log, &events[start..end], &jtis, &metrics).await;
                    start = end;
                    let _ = p.reply.send(own);
                }
            }
            result => {
                for p in group.drain(..) {
                    let _ = p.reply.send(match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(e.for_each_caller()),
                    });
                }
            }
        }
    }
    match log {
        Log::Sqlite(log) => log.close().await,
        Log::Postgres(log) => log.close().await,
    }
}

/// Commits `events` with the first uses pending now, which go back to pending when it fails.
async fn commit(
    log: &mut Log,
    events: &[AuditEvent],
    jtis: &PendingJtis,
    metrics: &Metrics,
) -> Result<(), PersistenceError> {
    // Taken after the group: every jti first used by its callers is pending by now.
    let rows = jtis.take();
    let started = Instant::now();
    let result = log.append(events, &rows).await;
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
    result
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn commits(metrics: &Metrics) -> u64 {
        let text = metrics.encode(false);
        text.lines()
            .find_map(|l| l.strip_prefix("aegis_seal_audit_commits_total{outcome=\"ok\"} "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no commit counter in\n{text}"))
    }

    fn event(i: usize) -> Vec<AuditEvent> {
        vec![AuditEvent::from_json(
            "ToolCallAuthorized",
            json!({"execution_id": i}),
        )]
    }

    /// Lets the writer run and a commit it started finish, without moving the paused clock: the
    /// runtime never parks (which is when a paused clock jumps to the next timer).
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    async fn writer() -> (tempfile::TempDir, Database, Metrics, AuditWriter) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        let db = Database::connect(&url).await.unwrap();
        let metrics = Metrics::new();
        let writer = AuditWriter::start(db.clone(), metrics.clone(), None);
        // From here the clock moves only when the test lets it: the writer's wait never expires.
        tokio::time::pause();
        (dir, db, metrics, writer)
    }

    #[tokio::test]
    async fn a_call_commits_at_once_when_few_are_on_their_way() {
        let (_dir, _db, metrics, writer) = writer().await;
        let on_the_way: Vec<OnTheWay> = (0..3).map(|_| writer.expect_events()).collect();
        let first = tokio::spawn({
            let writer = writer.clone();
            async move { writer.write(event(0)).await }
        });
        // Committed without the clock moving: it did not wait for the other two. (Polled: a slow
        // machine takes longer over the commit itself.)
        for _ in 0..50 {
            if commits(&metrics) == 1 {
                break;
            }
            settle().await;
        }
        assert_eq!(commits(&metrics), 1, "the call waited for the other two");
        first.await.unwrap().unwrap();
        drop(on_the_way);
    }

    #[tokio::test]
    async fn a_group_waits_for_calls_on_their_way_under_load() {
        let (_dir, db, metrics, writer) = writer().await;
        let on_the_way: Vec<OnTheWay> = (0..8).map(|_| writer.expect_events()).collect();
        let release = Arc::new(tokio::sync::Notify::new());
        let calls: Vec<_> = on_the_way
            .into_iter()
            .enumerate()
            .map(|(i, ticket)| {
                let writer = writer.clone();
                let release = release.clone();
                tokio::spawn(async move {
                    if i > 0 {
                        release.notified().await;
                    }
                    let written = writer.write(event(i)).await;
                    drop(ticket);
                    written
                })
            })
            .collect();
        // The first call is queued; seven are still on their way, so nothing is committed yet.
        settle().await;
        assert_eq!(commits(&metrics), 0, "the first call was committed alone");

        release.notify_waiters();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        assert!(commits(&metrics) < 8);
        // A paused clock would time the pool's acquire out while the query runs.
        tokio::time::resume();
        assert_eq!(db.verify_audit(None).await.unwrap().unwrap().rows, 8);
    }
}
