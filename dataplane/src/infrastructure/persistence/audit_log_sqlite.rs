//! The audit writer's own SQLite connection: one round trip per group commit.
//!
//! Through the pool, a group cost five hops to a connection's worker thread (acquire check,
//! `BEGIN`, head `SELECT`, the inserts, `COMMIT`), each a wake-up of that thread and one of the
//! runtime's, all on the core the gateway runs on. Here the whole transaction is one multi-statement
//! query, and the chain head is remembered between groups instead of read in each.
//!
//! The remembered head is safe because a SQLite file has one gateway process, whose events all
//! pass through this writer, and purges never remove the newest row. Should anything else append
//! anyway, the first row of the next group takes an id that row already holds: the insert fails on
//! the primary key, the transaction rolls back, and the group is written again after the head is
//! read afresh. A fork in the chain cannot be committed.
//!
//! Checkpoints of the write-ahead log are taken off this connection (`wal_autocheckpoint = 0`): a
//! checkpoint copies pages into the database file and syncs it, which takes milliseconds here,
//! and every caller waiting on the group would wait for it too (it was most of the p99 at a fixed
//! rate). [`checkpoint_wal`] checkpoints `PASSIVE` from a pooled connection instead, which writers
//! do not wait for. SQLite starts the log over at the first write after a checkpoint that caught
//! up; under a load that never lets it catch up, the checkpointer asks the writer to finish the
//! job (`RESTART`) before its next group, so the log stays bounded. That restart stalls the group
//! for two syncs, so the bound is generous and the restart rare; and it never waits for readers
//! still on old frames (it tries again at the checkpointer's next request).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePool};
use sqlx::{ConnectOptions, Connection, QueryBuilder};
use tokio::sync::Notify;

use super::PersistenceError;
use super::audit_chain::{SQLITE_HEAD, link, push_sqlite_inserts, sqlite_head};
use super::events::AuditEvent;

const TARGET: &str = "aegis_seal_gateway::infrastructure::persistence";

pub(super) struct SqliteAuditLog {
    options: SqliteConnectOptions,
    /// Opened on first use, and again after any failure, with its `busy_timeout` in ms.
    conn: Option<(SqliteConnection, i64)>,
    /// Last id handed out and the newest row's hash, as this connection committed or read them.
    head: Option<(i64, String)>,
    wal: Arc<Wal>,
}

/// What the writer and the checkpointer share.
#[derive(Debug, Default)]
pub(super) struct Wal {
    /// Notified after each commit, and once when the log closes.
    committed: Notify,
    closed: AtomicBool,
    /// Set by the checkpointer when the log has not started over for too long: the writer then
    /// checkpoints what is left and restarts the log before its next group.
    restart: AtomicBool,
}

impl SqliteAuditLog {
    /// A log writing to the pool's database, with the pool's settings (WAL, busy timeout).
    pub fn new(pool: &SqlitePool) -> Self {
        // A multi-row insert inside a transaction keeps a statement journal; in memory it costs
        // no temporary file to create and unlink per group.
        let options = (*pool.connect_options())
            .clone()
            // Named so that `top -H` and profiles tell the writer's thread from the pool's.
            .thread_name(|_| "sqlite-audit".into())
            .pragma("temp_store", "memory")
            .pragma("wal_autocheckpoint", "0")
            // A restarted log keeps its file up to the bound instead of being cut back and grown
            // again (and a cut is a discard on some mounts, paid in the writer's group).
            .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string());
        Self {
            options,
            conn: None,
            head: None,
            wal: Arc::default(),
        }
    }

    /// For [`checkpoint_wal`]; it lives as long as the log.
    pub fn wal(&self) -> Arc<Wal> {
        self.wal.clone()
    }

    /// Commits the events, chained after the newest row, and the jtis in one transaction.
    pub async fn append(
        &mut self,
        events: &[AuditEvent],
        jtis: &[(String, DateTime<Utc>)],
    ) -> Result<(), PersistenceError> {
        if events.is_empty() && jtis.is_empty() {
            return Ok(());
        }
        match self.try_append(events, jtis).await {
            Ok(()) => Ok(()),
            Err(first) => {
                // A stale head, a lost connection or a failing disk: start again from what the
                // database holds, once. The failed transaction was rolled back by the close.
                tracing::debug!(target: TARGET, error = %first, "audit group failed; retrying on a new connection");
                self.reset().await;
                let result = self.try_append(events, jtis).await;
                if result.is_err() {
                    self.reset().await;
                }
                result
            }
        }
    }

    async fn try_append(
        &mut self,
        events: &[AuditEvent],
        jtis: &[(String, DateTime<Utc>)],
    ) -> Result<(), PersistenceError> {
        let (conn, busy_ms) = match &mut self.conn {
            Some((conn, busy_ms)) => (conn, *busy_ms),
            None => {
                let mut conn = self.options.connect().await?;
                let busy_ms: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
                    .fetch_one(&mut conn)
                    .await?;
                let (conn, _) = self.conn.insert((conn, busy_ms));
                (conn, busy_ms)
            }
        };
        let (last_id, prev) = match (&self.head, events.is_empty()) {
            (_, true) => (0, String::new()),
            (Some(head), false) => head.clone(),
            (None, false) => sqlite_head(&sqlx::query(SQLITE_HEAD).fetch_one(&mut *conn).await?)?,
        };
        let linked = link(events, last_id + 1.., prev);
        let mut sql = QueryBuilder::new(if self.wal.restart.swap(false, Ordering::Relaxed) {
            // Without waiting: a reader still on old frames (an operator's query on the file,
            // say) would otherwise hold every caller for up to the busy timeout. A restart that
            // cannot finish copies what it can; the checkpointer asks again.
            format!(
                "PRAGMA busy_timeout = 0; PRAGMA wal_checkpoint(RESTART); \
                 PRAGMA busy_timeout = {busy_ms}; BEGIN IMMEDIATE; "
            )
        } else {
            "BEGIN IMMEDIATE; ".to_owned()
        });
        push_sqlite_inserts(&mut sql, &linked, jtis);
        sql.push("COMMIT");
        sql.build().execute(&mut *conn).await?;
        self.wal.committed.notify_one();
        if let Some(newest) = linked.last() {
            self.head = Some((newest.id, newest.hash.clone()));
        }
        Ok(())
    }

    /// Forgets the head and closes the connection, rolling back a transaction a failed statement
    /// left open.
    async fn reset(&mut self) {
        self.head = None;
        if let Some((conn, _)) = self.conn.take() {
            let _ = conn.close().await;
        }
    }

    pub async fn close(mut self) {
        self.reset().await;
        self.wal.closed.store(true, Ordering::Relaxed);
        self.wal.committed.notify_one();
    }
}

/// At most one checkpoint per interval while the audit log commits. Small and frequent beats
/// large and rare for the tail: a checkpoint competes for the core with the calls, and one every
/// 25 ms kept the bench's p99 at 1000/s near 2 ms where one every second made it 6 ms, at no cost
/// in throughput.
pub(super) const WAL_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(25);
/// A log this long (4 KiB pages: 128 MiB) has not started over: the writer restarts it, which
/// costs its group two syncs (3-4 ms here). At 8,192 frames the bench's 1,000 calls/s (18 frames
/// each) paid that twice a second, and it was most of their p99 (bench/README.md).
pub(super) const WAL_RESTART_FRAMES: i64 = 32_768;
/// `journal_size_limit`: the log's file at the restart bound, frame headers included.
const WAL_SIZE_LIMIT: i64 = WAL_RESTART_FRAMES * (4096 + 24);

/// Checkpoints the write-ahead log after the audit log's commits, from a pooled connection, at
/// most once per `interval`, and not at all while nothing is committed. Returns once the log is
/// closed, after a last checkpoint.
pub(super) async fn checkpoint_wal(pool: SqlitePool, wal: Arc<Wal>, interval: Duration) {
    loop {
        wal.committed.notified().await;
        // At shutdown the pool may close first; SQLite checkpoints when its last connection
        // closes, so there is nothing left to do then.
        if pool.is_closed() {
            return;
        }
        let closed = wal.closed.load(Ordering::Relaxed);
        if let Err(e) = checkpoint_once(&pool, &wal, WAL_RESTART_FRAMES).await
            && !pool.is_closed()
        {
            tracing::warn!(target: TARGET, error = %e, "WAL checkpoint failed");
        }
        if closed || pool.is_closed() {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

/// One `PASSIVE` checkpoint; flags a restart for the writer when the log is `restart_frames` long.
async fn checkpoint_once(
    pool: &SqlitePool,
    wal: &Wal,
    restart_frames: i64,
) -> Result<(), sqlx::Error> {
    let (_busy, frames, _copied): (i64, i64, i64) =
        sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(pool)
            .await?;
    if frames >= restart_frames {
        wal.restart.store(true, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sqlx::Sqlite;
    use sqlx::pool::PoolConnection;

    use super::*;
    use crate::infrastructure::persistence::Database;

    fn events(tag: &str, n: usize) -> Vec<AuditEvent> {
        (0..n)
            .map(|i| {
                AuditEvent::from_json(
                    "ToolCallAuthorized",
                    json!({"execution_id": format!("{tag}-{i}"), "tenant_id": "acme", "z": 1, "a": [1, {"y": 2, "b": "é"}]}),
                )
            })
            .collect()
    }

    async fn sqlite() -> (tempfile::TempDir, Database, SqlitePool) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        let db = Database::connect(&url).await.unwrap();
        let Database::Sqlite(pool) = db.clone() else {
            unreachable!()
        };
        (dir, db, pool)
    }

    #[tokio::test]
    async fn groups_chain_after_the_remembered_head_and_carry_their_jtis() {
        let (_dir, db, pool) = sqlite().await;
        let mut log = SqliteAuditLog::new(&pool);
        let expires = Utc::now();
        log.append(&events("a", 3), &[("jti-1".into(), expires)])
            .await
            .unwrap();
        log.append(&events("b", 2), &[]).await.unwrap();
        log.append(&[], &[("jti-2".into(), expires)]).await.unwrap();
        log.append(&events("c", 1), &[("jti-1".into(), expires)])
            .await
            .unwrap();
        log.close().await;

        let report = db.verify_audit(None).await.unwrap().unwrap();
        assert_eq!(
            (report.rows, report.first_id, report.last_id),
            (6, Some(1), Some(6))
        );
        let jtis: Vec<String> = sqlx::query_scalar("SELECT jti FROM seen_jtis ORDER BY jti")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(jtis, ["jti-1", "jti-2"]);
        // Stored as the canonical text that was hashed: keys sorted at every level.
        let payload: String = sqlx::query_scalar("SELECT payload FROM gateway_events WHERE id = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(
            payload,
            r#"{"a":[1,{"b":"é","y":2}],"execution_id":"a-0","tenant_id":"acme","z":1}"#
        );
    }

    #[tokio::test]
    async fn a_row_appended_behind_its_back_makes_the_next_group_reread_the_head() {
        let (_dir, db, pool) = sqlite().await;
        let mut log = SqliteAuditLog::new(&pool);
        log.append(&events("a", 2), &[]).await.unwrap();
        // Another writer takes id 3: the remembered head (2) is now stale.
        db.append_events(&events("other", 1)).await.unwrap();
        log.append(&events("b", 2), &[("jti-b".into(), Utc::now())])
            .await
            .unwrap();

        let report = db.verify_audit(None).await.unwrap().unwrap();
        assert_eq!((report.rows, report.last_id), (5, Some(5)));
        let ids: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, payload->>'execution_id' FROM gateway_events ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        let tags: Vec<&str> = ids.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(tags, ["a-0", "a-1", "other-0", "b-0", "b-1"]);
        let jti: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM seen_jtis WHERE jti = 'jti-b'")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(jti, 1);
    }

    #[tokio::test]
    async fn a_failed_group_commits_nothing_and_the_next_one_goes_through() {
        let (_dir, db, pool) = sqlite().await;
        let mut log = SqliteAuditLog::new(&pool);
        log.append(&events("a", 1), &[]).await.unwrap();
        // A trigger refuses the group's second row, so the group fails on both tries: neither its
        // first row nor its jti may be committed.
        let bad = events("bad", 2);
        sqlx::query("CREATE TRIGGER refuse BEFORE INSERT ON gateway_events WHEN NEW.payload->>'execution_id' = 'bad-1' BEGIN SELECT RAISE(ABORT, 'refused'); END")
            .execute(&pool)
            .await
            .unwrap();
        let err = log
            .append(&bad, &[("jti-bad".into(), Utc::now())])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        sqlx::query("DROP TRIGGER refuse")
            .execute(&pool)
            .await
            .unwrap();
        log.append(&events("c", 1), &[]).await.unwrap();

        let report = db.verify_audit(None).await.unwrap().unwrap();
        assert_eq!((report.rows, report.last_id), (2, Some(2)));
        let jtis: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM seen_jtis")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(jtis, 0);
    }

    #[tokio::test]
    async fn the_wal_is_checkpointed_by_the_checkpointer_not_by_the_writer() {
        let (dir, _db, pool) = sqlite().await;
        let main_file = dir.path().join("audit.db");
        let size = || std::fs::metadata(&main_file).unwrap().len();
        let mut log = SqliteAuditLog::new(&pool);
        let wal = log.wal();
        let before = size();
        // Far more than SQLite's default autocheckpoint of 1,000 pages goes through the WAL.
        for i in 0..400 {
            log.append(&events(&format!("g{i}"), 5), &[]).await.unwrap();
        }
        let wal_pages = std::fs::metadata(dir.path().join("audit.db-wal"))
            .unwrap()
            .len()
            / 4096;
        assert!(wal_pages > 1000, "only {wal_pages} WAL pages written");
        assert_eq!(size(), before, "the writer connection checkpointed");

        // Once the log is closed, the checkpointer takes one last checkpoint and returns.
        log.close().await;
        checkpoint_wal(pool.clone(), wal, Duration::from_millis(1)).await;
        assert!(size() > before, "nothing was checkpointed");
    }

    /// Frames in the write-ahead log and how many of them are in the database file.
    async fn wal_frames(pool: &SqlitePool) -> (i64, i64) {
        let (_, frames, copied): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(pool)
            .await
            .unwrap();
        (frames, copied)
    }

    /// A `PASSIVE` checkpoint that cannot catch up, as under a load that never pauses: a reader
    /// holds a snapshot while ten more groups are written, so the frames after it stay uncopied.
    /// Returns the reader, still on its snapshot until [`end_read`].
    async fn checkpoint_behind_a_reader(
        pool: &SqlitePool,
        log: &mut SqliteAuditLog,
        restart_frames: i64,
    ) -> PoolConnection<Sqlite> {
        let mut reader = pool.acquire().await.unwrap();
        sqlx::query("BEGIN").execute(&mut *reader).await.unwrap();
        let _: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM gateway_events")
            .fetch_one(&mut *reader)
            .await
            .unwrap();
        for i in 0..10 {
            log.append(&events(&format!("during-{i}"), 5), &[])
                .await
                .unwrap();
        }
        checkpoint_once(pool, &log.wal, restart_frames)
            .await
            .unwrap();
        reader
    }

    async fn end_read(mut reader: PoolConnection<Sqlite>) {
        sqlx::query("COMMIT").execute(&mut *reader).await.unwrap();
    }

    #[tokio::test]
    async fn a_log_that_never_started_over_is_restarted_by_the_writer() {
        let (_dir, db, pool) = sqlite().await;
        let mut log = SqliteAuditLog::new(&pool);
        for i in 0..100 {
            log.append(&events(&format!("g{i}"), 5), &[]).await.unwrap();
        }
        // Below the limit nothing is asked of the writer: the checkpoint did not catch up, so its
        // next group goes on growing the log (measuring it catches the checkpoint up).
        end_read(checkpoint_behind_a_reader(&pool, &mut log, i64::MAX).await).await;
        assert!(!log.wal.restart.load(Ordering::Relaxed));
        log.append(&events("below", 1), &[]).await.unwrap();
        let (grown, _) = wal_frames(&pool).await;
        assert!(
            grown > 300,
            "the log started over by itself: {grown} frames"
        );

        // At the limit, the writer checkpoints the rest and starts the log over before its group.
        end_read(checkpoint_behind_a_reader(&pool, &mut log, 1).await).await;
        assert!(log.wal.restart.load(Ordering::Relaxed));
        log.append(&events("after", 1), &[]).await.unwrap();
        assert!(!log.wal.restart.load(Ordering::Relaxed));
        let (restarted, _) = wal_frames(&pool).await;
        assert!(
            restarted < 30,
            "the log was not restarted: {restarted} frames"
        );

        log.close().await;
        let report = db.verify_audit(None).await.unwrap().unwrap();
        assert_eq!(report.rows, 602);
    }

    #[tokio::test]
    async fn a_reader_on_old_frames_does_not_hold_the_writer_at_a_restart() {
        let (_dir, db, pool) = sqlite().await;
        // The writer's connection would wait an hour for a lock: had the restart waited for the
        // reader below, the group would not be committed.
        let patient = SqlitePool::connect_with(
            (*pool.connect_options())
                .clone()
                .busy_timeout(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
        let mut log = SqliteAuditLog::new(&patient);
        for i in 0..20 {
            log.append(&events(&format!("g{i}"), 5), &[]).await.unwrap();
        }
        let reader = checkpoint_behind_a_reader(&pool, &mut log, 1).await;
        assert!(log.wal.restart.load(Ordering::Relaxed));

        // The restart cannot finish while the reader is on old frames; the group goes through.
        tokio::time::timeout(
            Duration::from_secs(60),
            log.append(&events("while-read", 1), &[]),
        )
        .await
        .expect("the writer waited for the reader")
        .unwrap();
        let (kept, _) = wal_frames(&pool).await;
        assert!(
            kept > 30,
            "the log was restarted under a reader: {kept} frames"
        );

        // Once the reader is done, the next request restarts the log.
        end_read(reader).await;
        checkpoint_once(&pool, &log.wal, 1).await.unwrap();
        log.append(&events("after", 1), &[]).await.unwrap();
        let (restarted, _) = wal_frames(&pool).await;
        assert!(
            restarted < 30,
            "the log was not restarted: {restarted} frames"
        );

        log.close().await;
        patient.close().await;
        assert_eq!(db.verify_audit(None).await.unwrap().unwrap().rows, 152);
    }

    #[tokio::test]
    async fn a_closed_pool_ends_the_checkpointer_without_a_warning() {
        let (_dir, _db, pool) = sqlite().await;
        let mut log = SqliteAuditLog::new(&pool);
        let wal = log.wal();
        log.append(&events("a", 1), &[]).await.unwrap();
        pool.close().await;

        let logged = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = logged.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || SharedWriter(sink.clone()))
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        // It returns (the test would hang otherwise) and has nothing to report.
        checkpoint_wal(pool.clone(), wal, Duration::from_millis(1)).await;
        log.close().await;
        let logged = String::from_utf8(logged.lock().unwrap().clone()).unwrap();
        assert!(!logged.contains("WAL checkpoint failed"), "{logged}");
    }

    struct SharedWriter(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for SharedWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
