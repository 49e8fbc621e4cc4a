//! Single use of security-token `jti`s: an in-memory set answers repeats without a round trip.
//! On Postgres, `seen_jtis` is shared by replicas and decides first uses synchronously, concurrent
//! claims batched into one statement. On SQLite, one process owns the file: the in-memory set,
//! loaded from `seen_jtis` at start, decides alone, and the row is written in the audit writer's
//! next commit, which every audited call waits for anyway (one commit per call, not two); a call
//! refused without an event has its row written within 200 ms, or at shutdown. (Two processes
//! sharing one SQLite file would not see each other's jtis: the operator refuses replicas > 1 on
//! SQLite, and a standalone deployment runs one process per file.)

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite};
use tokio::sync::{mpsc, oneshot};

use super::events::sqlite_time;
use super::{Database, PersistenceError};

/// Rows deleted per statement by the sweep, so no statement holds a connection for long.
pub const SWEEP_BATCH: i64 = 1000;

/// Runs `delete`, whose `$1` bounds the rows it deletes, with [`SWEEP_BATCH`] until a run
/// deletes fewer: the rows deleted in all.
pub(super) async fn delete_in_batches(
    pool: &PgPool,
    delete: &'static str,
) -> Result<u64, PersistenceError> {
    let mut total = 0;
    loop {
        let deleted = sqlx::query(delete)
            .bind(SWEEP_BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        total += deleted;
        if deleted < SWEEP_BATCH as u64 {
            return Ok(total);
        }
    }
}
/// How long a row outlives its `expires_at` before the sweep deletes it. Deleting decides
/// nothing (an expired row is reused by the next first use), except when the sweeping replica's
/// clock runs ahead of another's: that replica could then accept, as a first use, the replay of
/// an envelope it still finds fresh. Clocks of replicas may differ by up to this much.
pub const SWEEP_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// Most first uses written by one statement.
const MAX_BATCH: usize = 512;

struct Claim {
    jti: String,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
    reply: oneshot::Sender<Result<bool, PersistenceError>>,
}

/// First uses that are decided but not yet durable (SQLite): the audit writer inserts them in its
/// next commit, so a call's jti is durable no later than the call's own events.
#[derive(Clone, Default)]
pub struct PendingJtis(Arc<Mutex<Vec<JtiRow>>>);

/// A jti and when it stops being live.
pub type JtiRow = (String, DateTime<Utc>);

impl PendingJtis {
    fn push(&self, jti: &str, expires_at: DateTime<Utc>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((jti.to_owned(), expires_at));
    }

    /// Takes everything pending; the caller writes it, or [`Self::restore`]s it on failure.
    pub fn take(&self) -> Vec<JtiRow> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts back rows whose write failed, to be retried with the next commit.
    pub fn restore(&self, mut rows: Vec<JtiRow>) {
        let mut pending = self.0.lock().unwrap_or_else(|e| e.into_inner());
        rows.append(&mut pending);
        *pending = rows;
    }

    pub fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
}

/// Where first uses become durable.
enum Durability {
    /// Postgres: `seen_jtis` is shared by replicas, so it decides, synchronously, in batches.
    Shared(mpsc::Sender<Claim>),
    /// SQLite: one gateway process owns the file, so the in-memory set (loaded from `seen_jtis`
    /// at start) decides alone, and the row is written with the call's audit events.
    WithAudit(PendingJtis),
}

/// Decides whether a `jti` is seen for the first time.
pub struct ReplayGuard {
    db: Database,
    /// jti -> expiry, for every live jti; rows past expiry are dead.
    seen: Mutex<HashMap<String, DateTime<Utc>>>,
    durability: Durability,
}

impl ReplayGuard {
    /// On Postgres, starts the batch writer on the current runtime; on SQLite, loads the live
    /// jtis of earlier runs, so a replay across a restart is still refused.
    pub async fn start(db: Database, now: DateTime<Utc>) -> Result<Arc<Self>, PersistenceError> {
        let (seen, durability) = match &db {
            Database::Sqlite(pool) => {
                let rows: Vec<(String, String)> =
                    sqlx::query_as("SELECT jti, expires_at FROM seen_jtis WHERE expires_at > ?")
                        .bind(sqlite_time(now))
                        .fetch_all(pool)
                        .await?;
                let seen = rows
                    .into_iter()
                    .filter_map(|(jti, expires_at)| {
                        let expires_at = DateTime::parse_from_rfc3339(&expires_at).ok()?;
                        Some((jti, expires_at.with_timezone(&Utc)))
                    })
                    .collect();
                (seen, Durability::WithAudit(PendingJtis::default()))
            }
            Database::Postgres(pool) => {
                let (writer, claims) = mpsc::channel(4096);
                tokio::spawn(write_batches(pool.clone(), claims));
                (HashMap::new(), Durability::Shared(writer))
            }
        };
        Ok(Arc::new(Self {
            db,
            seen: Mutex::new(seen),
            durability,
        }))
    }

    /// First uses the audit writer must make durable (SQLite), `None` on Postgres.
    pub fn pending(&self) -> Option<PendingJtis> {
        match &self.durability {
            Durability::WithAudit(pending) => Some(pending.clone()),
            Durability::Shared(_) => None,
        }
    }

    /// Writes first uses still pending (SQLite), at shutdown once no call is in flight.
    pub async fn flush(&self) -> Result<(), PersistenceError> {
        if let Durability::WithAudit(pending) = &self.durability {
            let rows = pending.take();
            if let Err(e) = self.db.append_events_and_jtis(&[], &rows).await {
                pending.restore(rows);
                return Err(e);
            }
        }
        Ok(())
    }

    /// `Ok(true)` the first time `jti` is used while live; `Ok(false)` for a replay.
    pub async fn first_use(
        &self,
        jti: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, PersistenceError> {
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.get(jti).is_some_and(|live_until| *live_until > now) {
                return Ok(false);
            }
            seen.insert(jti.to_owned(), expires_at);
        }
        let writer = match &self.durability {
            Durability::WithAudit(pending) => {
                pending.push(jti, expires_at);
                return Ok(true);
            }
            Durability::Shared(writer) => writer,
        };
        let (reply, answer) = oneshot::channel();
        let claim = Claim {
            jti: jti.to_owned(),
            expires_at,
            now,
            reply,
        };
        let result = match writer.send(claim).await {
            Ok(()) => answer.await.unwrap_or(Err(PersistenceError::WriterStopped)),
            Err(_) => Err(PersistenceError::WriterStopped),
        };
        if result.is_err() {
            // Not recorded: let the caller retry with the same token.
            self.seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(jti);
        }
        result
    }

    /// Forgets expired jtis, in memory and in `seen_jtis` ([`SWEEP_GRACE`] after they expire).
    /// Returns the rows deleted.
    pub async fn sweep(&self, now: DateTime<Utc>) -> Result<u64, PersistenceError> {
        let started = Instant::now();
        let in_memory = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let before = seen.len();
            seen.retain(|_, live_until| *live_until > now);
            before - seen.len()
        };
        let rows = self.db.sweep_expired_jtis(now - SWEEP_GRACE).await?;
        tracing::debug!(
            target: "aegis_seal_gateway::infrastructure::persistence",
            rows_purged = rows,
            memory_purged = in_memory,
            duration_ms = started.elapsed().as_millis() as u64,
            "jti sweep finished"
        );
        Ok(rows)
    }

    /// jtis held in memory (a gauge for operators).
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decides the claims of a Postgres replica in batches, on a connection of its own: a pooled
/// statement would cost the pool's liveness round trip as well, and every caller waits for it.
async fn write_batches(pool: PgPool, mut claims: mpsc::Receiver<Claim>) {
    let options = pool.connect_options();
    let mut conn: Option<PgConnection> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = claims.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match claims.try_recv() {
                Ok(claim) => batch.push(claim),
                Err(_) => break,
            }
        }
        let rows: Vec<(String, DateTime<Utc>)> = batch
            .iter()
            .map(|c| (c.jti.clone(), c.expires_at))
            .collect();
        let now = batch.iter().map(|c| c.now).max().unwrap_or_else(Utc::now);
        let result = async {
            let conn = match &mut conn {
                Some(conn) => conn,
                None => conn.insert(options.connect().await?),
            };
            let jtis = JtiBatch::new(&rows);
            let inserted = insert_postgres_jtis(&mut *conn, &jtis.unique, now).await?;
            Ok::<_, PersistenceError>(jtis.answers(&rows, &inserted))
        }
        .await;
        match result {
            Ok(first_uses) => {
                for (claim, new) in batch.drain(..).zip(first_uses) {
                    let _ = claim.reply.send(Ok(new));
                }
            }
            Err(e) => {
                // The next batch opens a new connection: this one may be gone.
                if let Some(conn) = conn.take() {
                    let _ = conn.close().await;
                }
                for claim in batch.drain(..) {
                    let _ = claim.reply.send(Err(e.for_each_caller()));
                }
            }
        }
    }
}

/// A batch of jtis as claimed, and the distinct ones to insert: within one batch, only the first
/// use of a jti can be new.
struct JtiBatch<'a> {
    first_index: HashMap<&'a str, usize>,
    unique: Vec<(&'a str, DateTime<Utc>)>,
}

impl<'a> JtiBatch<'a> {
    fn new(jtis: &'a [(String, DateTime<Utc>)]) -> Self {
        let mut first_index = HashMap::new();
        let mut unique = Vec::new();
        for (i, (jti, expires_at)) in jtis.iter().enumerate() {
            if let std::collections::hash_map::Entry::Vacant(slot) = first_index.entry(jti.as_str())
            {
                slot.insert(i);
                unique.push((jti.as_str(), *expires_at));
            }
        }
        Self {
            first_index,
            unique,
        }
    }

    /// Per claim, whether it was a first use, given the jtis the insert reported.
    fn answers(&self, jtis: &[(String, DateTime<Utc>)], inserted: &HashSet<String>) -> Vec<bool> {
        jtis.iter()
            .enumerate()
            .map(|(i, (jti, _))| {
                self.first_index.get(jti.as_str()) == Some(&i) && inserted.contains(jti)
            })
            .collect()
    }
}

/// One statement for a Postgres batch: the rows it inserted, or revived after expiry, are the
/// first uses.
async fn insert_postgres_jtis<'c, E>(
    executor: E,
    unique: &[(&str, DateTime<Utc>)],
    now: DateTime<Utc>,
) -> Result<HashSet<String>, PersistenceError>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let (names, expiries): (Vec<&str>, Vec<DateTime<Utc>>) = unique.iter().copied().unzip();
    Ok(sqlx::query(
        "INSERT INTO seen_jtis (jti, expires_at) \
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[]) \
         ON CONFLICT (jti) DO UPDATE SET expires_at = excluded.expires_at \
         WHERE seen_jtis.expires_at <= $3 \
         RETURNING jti",
    )
    .bind(names)
    .bind(expiries)
    .bind(now)
    .fetch_all(executor)
    .await?
    .iter()
    .map(|row| row.try_get::<String, _>("jti"))
    .collect::<Result<_, _>>()?)
}

impl Database {
    /// Records each `(jti, expires_at)` unless a live row holds it; per input, whether it was new.
    /// A row whose `expires_at` has passed counts as absent, swept or not.
    pub async fn record_jtis(
        &self,
        jtis: &[(String, DateTime<Utc>)],
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>, PersistenceError> {
        let batch = JtiBatch::new(jtis);
        if batch.unique.is_empty() {
            return Ok(Vec::new());
        }
        let inserted = match self {
            Self::Sqlite(pool) => {
                // One statement for the batch (it is at most MAX_BATCH rows, 2 parameters each):
                // the rows it inserted, or revived after expiry, are the first uses.
                let mut insert =
                    QueryBuilder::<Sqlite>::new("INSERT INTO seen_jtis (jti, expires_at) ");
                insert.push_values(&batch.unique, |mut row, (jti, expires_at)| {
                    row.push_bind(*jti).push_bind(sqlite_time(*expires_at));
                });
                insert
                    .push(
                        " ON CONFLICT (jti) DO UPDATE SET expires_at = excluded.expires_at \
                         WHERE seen_jtis.expires_at <= ",
                    )
                    .push_bind(sqlite_time(now))
                    .push(" RETURNING jti");
                insert
                    .build()
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|row| row.try_get::<String, _>(0))
                    .collect::<Result<_, _>>()?
            }
            Self::Postgres(pool) => insert_postgres_jtis(pool, &batch.unique, now).await?,
        };
        Ok(batch.answers(jtis, &inserted))
    }

    /// Deletes expired rows in batches of [`SWEEP_BATCH`], releasing the connection between them.
    pub async fn sweep_expired_jtis(&self, now: DateTime<Utc>) -> Result<u64, PersistenceError> {
        let mut total = 0;
        loop {
            let deleted = match self {
                Self::Sqlite(pool) => sqlx::query(
                    "DELETE FROM seen_jtis WHERE jti IN \
                     (SELECT jti FROM seen_jtis WHERE expires_at < ? LIMIT ?)",
                )
                .bind(sqlite_time(now))
                .bind(SWEEP_BATCH)
                .execute(pool)
                .await?
                .rows_affected(),
                Self::Postgres(pool) => sqlx::query(
                    "DELETE FROM seen_jtis WHERE jti IN \
                     (SELECT jti FROM seen_jtis WHERE expires_at < $1 LIMIT $2)",
                )
                .bind(now)
                .bind(SWEEP_BATCH)
                .execute(pool)
                .await?
                .rows_affected(),
            };
            total += deleted;
            if deleted < SWEEP_BATCH as u64 {
                return Ok(total);
            }
        }
    }
}
