//! A capability's `max_concurrent` on Postgres is one limit for every replica on the database
//! (`running_slots`, migration 0006): each replica below is its own connection pool, as in a
//! cluster. Exact under racing takes, a released slot free at once on every replica, a dropped
//! one freed in the background, a dead replica's slots freed when their leases expire, leases
//! renewed while their calls run, and keys without a live slot swept.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aegis_seal_gateway::domain::policy::Slots;
use aegis_seal_gateway::infrastructure::persistence::{Database, RunningSlots, SlotPermit};
use sqlx::PgPool;

async fn replicas(n: usize) -> (PgPool, Vec<RunningSlots>) {
    let (db, slots) = support::postgres_replicas(n, RunningSlots::for_database).await;
    let Database::Postgres(pool) = db else {
        unreachable!()
    };
    (pool, slots)
}

async fn take(replica: &RunningSlots, key: &str, limit: u32) -> Option<SlotPermit> {
    replica.try_acquire(key, limit).await.unwrap()
}

/// `attempts` takes of `key` at once, spread over the replicas; the slots taken.
async fn burst(
    replicas: &[RunningSlots],
    key: &str,
    limit: u32,
    attempts: usize,
) -> Vec<SlotPermit> {
    let takes = (0..attempts).map(|i| take(&replicas[i % replicas.len()], key, limit));
    futures::future::join_all(takes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The key of each slot in the table, expired or not.
async fn rows(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT key FROM running_slots, unnest(slot_ids) AS i ORDER BY key, i")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Lets every lease of `key` run out, as [`LEASE`] after their last renewal.
///
/// [`LEASE`]: aegis_seal_gateway::infrastructure::persistence::LEASE
async fn expire(pool: &PgPool, key: &str) {
    sqlx::query(
        "UPDATE running_slots SET slot_expires = \
         array_fill(clock_timestamp() - interval '1 second', ARRAY[cardinality(slot_ids)]) \
         WHERE key = $1",
    )
    .bind(key)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_one_limit_exactly_even_when_calls_race() {
    let (pool, replicas) = replicas(3).await;
    assert!(matches!(replicas[0], RunningSlots::Shared(_)));

    // Every pool has its connections open, so that the takes below reach the database at once.
    for permit in burst(&replicas, "warm-up", 60, 60).await {
        replicas[0].release(permit).await;
    }
    // 60 calls at once through three replicas, 4 of them run.
    let running = burst(&replicas, "session-a", 4, 60).await;
    assert_eq!(running.len(), 4);
    // Another key (another session, context or capability) has its own slots.
    let other = burst(&replicas, "session-b", 2, 10).await;
    assert_eq!(other.len(), 2);
    // A lower limit applies to the calls already running.
    assert!(take(&replicas[1], "session-a", 3).await.is_none());
    let held: usize = replicas.iter().map(RunningSlots::held).sum();
    assert_eq!(held, 6);
    assert_eq!(rows(&pool).await.len(), 6);

    // Each replica gives back the slots it took, whoever releases through it.
    for permit in running.into_iter().chain(other) {
        replicas[0].release(permit).await;
    }
    assert!(rows(&pool).await.is_empty());
    assert_eq!(replicas.iter().map(RunningSlots::held).sum::<usize>(), 0);
}

/// What keeps racing takes exact: a take waits for the one in progress on its key and then
/// counts the slot that one took. Here the take in progress is an open transaction.
#[tokio::test]
async fn a_take_waits_for_the_take_in_progress_on_its_key() {
    let (pool, replicas) = replicas(1).await;
    // The key's row exists, as for a session that has made calls before.
    let earlier = take(&replicas[0], "k", 1).await.unwrap();
    replicas[0].release(earlier).await;
    let mut in_progress = pool.begin().await.unwrap();
    let taken: Vec<Option<i64>> =
        sqlx::query_scalar("SELECT exchange_running_slots('k', '{}', '{1}', 30)")
            .fetch_one(&mut *in_progress)
            .await
            .unwrap();
    assert!(taken[0].is_some());

    let replica = replicas[0].clone();
    let waiting = tokio::spawn(async move { take(&replica, "k", 1).await.is_some() });
    // Another key does not wait.
    assert!(take(&replicas[0], "other", 1).await.is_some());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the take did not wait for the lock");
    in_progress.commit().await.unwrap();
    assert!(
        !waiting.await.unwrap(),
        "the take did not count the slot taken before it"
    );
}

/// A replica sends one statement per key at a time: the takes and give-backs that arrive while
/// one waits for the key's row wait in the replica, go together in the next, and count exactly
/// (give-backs first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_calls_wait_in_the_replica_for_its_statement_and_go_together_in_the_next() {
    let (pool, replicas) = replicas(1).await;
    let replica = replicas[0].clone();
    let earlier = take(&replica, "k", 5).await.unwrap();
    let mut in_progress = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM running_slots WHERE key = 'k' FOR UPDATE")
        .execute(&mut *in_progress)
        .await
        .unwrap();

    let spawn_take = || {
        let replica = replica.clone();
        tokio::spawn(async move { take(&replica, "k", 5).await })
    };
    let first = spawn_take();
    support::wait_for_statements(&pool, "exchange_running_slots", 1).await;
    let queued: Vec<_> = (0..20).map(|_| spawn_take()).collect();
    let given_back = {
        let replica = replica.clone();
        tokio::spawn(async move { replica.release(earlier).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        support::statements_running(&pool, "exchange_running_slots").await,
        1,
        "the queued calls went to the database one by one"
    );

    in_progress.commit().await.unwrap();
    let first = first.await.unwrap().expect("a free slot");
    given_back.await.unwrap();
    let running: Vec<SlotPermit> = futures::future::join_all(queued)
        .await
        .into_iter()
        .filter_map(Result::unwrap)
        .collect();
    // The earlier call's slot went back in the same statement, before its takes: 5 run.
    assert_eq!(running.len(), 4);
    assert_eq!(rows(&pool).await.len(), 5);
    assert_eq!(replica.held(), 5);
    for permit in running.into_iter().chain([first]) {
        replica.release(permit).await;
    }
    assert!(rows(&pool).await.is_empty());
}

#[tokio::test]
async fn a_released_slot_is_free_on_every_replica_as_soon_as_release_returns() {
    let (_pool, replicas) = replicas(2).await;
    for round in 0..5 {
        let permit = take(&replicas[round % 2], "k", 1)
            .await
            .expect("a free slot");
        assert!(take(&replicas[(round + 1) % 2], "k", 1).await.is_none());
        replicas[round % 2].release(permit).await;
    }
    assert!(take(&replicas[1], "k", 1).await.is_some());
}

#[tokio::test]
async fn a_dropped_slot_is_given_back_in_the_background() {
    let (pool, replicas) = replicas(2).await;
    let permit = take(&replicas[0], "k", 1).await.unwrap();
    drop(permit);
    assert_eq!(replicas[0].held(), 0, "no longer renewed");
    let mut waited = Duration::ZERO;
    while !rows(&pool).await.is_empty() {
        assert!(
            waited < Duration::from_secs(5),
            "the slot was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    assert!(take(&replicas[1], "k", 1).await.is_some());
}

#[tokio::test]
async fn a_dead_replicas_slots_count_until_their_leases_expire() {
    let (pool, replicas) = replicas(2).await;
    let db = Database::Postgres(pool.clone());
    // A replica that dies with a call running neither releases nor renews its slot.
    std::mem::forget(take(&replicas[0], "k", 1).await.unwrap());
    assert!(take(&replicas[1], "k", 1).await.is_none());
    assert_eq!(db.sweep_running_slots().await.unwrap(), 0);

    expire(&pool, "k").await;
    let next = take(&replicas[1], "k", 1)
        .await
        .expect("the expired slot no longer counts");
    // The take dropped the expired slot; the live call's slot counts.
    assert_eq!(rows(&pool).await, ["k"]);
    assert!(take(&replicas[0], "k", 1).await.is_none());
    assert_eq!(db.sweep_running_slots().await.unwrap(), 0);

    // A key whose every slot has expired is swept.
    std::mem::forget(take(&replicas[0], "gone", 2).await.unwrap());
    std::mem::forget(take(&replicas[0], "gone", 2).await.unwrap());
    expire(&pool, "gone").await;
    assert_eq!(db.sweep_running_slots().await.unwrap(), 1);
    assert_eq!(rows(&pool).await, ["k"]);
    replicas[1].release(next).await;
    assert!(rows(&pool).await.is_empty());
    // A key whose calls have all answered is swept too.
    assert_eq!(db.sweep_running_slots().await.unwrap(), 1);
}

/// Log lines written on this thread while `f` runs.
async fn logs_of<F: std::future::Future<Output = ()>>(f: F) -> String {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_env_filter("aegis_seal_gateway=debug")
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    f.await;
    String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned()
}

#[tokio::test]
async fn renewal_extends_the_leases_of_running_calls_and_reports_lapsed_ones() {
    let (pool, replicas) = replicas(2).await;
    let running = take(&replicas[0], "k", 3).await.unwrap();
    let dropped = take(&replicas[0], "k", 3).await.unwrap();
    let expired = take(&replicas[0], "k", 3).await.unwrap();
    let elsewhere = take(&replicas[1], "other", 1).await.unwrap();
    sqlx::query(
        "UPDATE running_slots SET slot_expires = \
         array_fill(clock_timestamp() + interval '1 second', ARRAY[cardinality(slot_ids)])",
    )
    .execute(&pool)
    .await
    .unwrap();
    // While the database was unreachable, two leases ran out: a take has dropped one already,
    // the other is still there.
    sqlx::query(
        "UPDATE running_slots SET slot_ids = slot_ids[1:1] || slot_ids[3:3], \
         slot_expires = slot_expires[1:1] || (clock_timestamp() - interval '1 second') \
         WHERE key = 'k'",
    )
    .execute(&pool)
    .await
    .unwrap();

    let logs = logs_of(async { replicas[0].renew().await.unwrap() }).await;
    assert!(
        logs.contains("Running slots lapsed before their calls ended") && logs.contains("lapsed=2"),
        "{logs}"
    );
    let leases: Vec<(String, f64)> = sqlx::query_as(
        "SELECT key, extract(epoch FROM e - clock_timestamp())::float8 \
         FROM running_slots, unnest(slot_ids, slot_expires) AS s(i, e) ORDER BY i",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    // This replica's running call has a whole lease again, the lapsed one is not revived (a
    // call may have taken its place), and the other replica's is untouched.
    assert_eq!(leases.len(), 3, "{leases:?}");
    assert_eq!(leases[0].0, "k");
    assert!(leases[0].1 > 25.0, "{leases:?}");
    assert_eq!(leases[1].0, "k");
    assert!(leases[1].1 < 0.0, "{leases:?}");
    assert_eq!(leases[2].0, "other");
    assert!((0.0..2.0).contains(&leases[2].1), "{leases:?}");

    // Once its calls have answered, a replica renews nothing.
    for permit in [running, dropped, expired] {
        replicas[0].release(permit).await;
    }
    let logs = logs_of(async { replicas[0].renew().await.unwrap() }).await;
    assert!(!logs.contains("lapsed"), "{logs}");
    replicas[1].release(elsewhere).await;
    assert!(rows(&pool).await.is_empty());
}

/// A take or give-back commits without waiting for its WAL flush, so the key's row lock is not
/// held through it; the setting lasts for its transaction only (migration 0007).
#[tokio::test]
async fn slots_change_without_waiting_for_the_wal_flush_and_nothing_else_changes() {
    let (pool, _replicas) = replicas(1).await;
    let around = support::synchronous_commit_around(
        &pool,
        "SELECT exchange_running_slots('k', '{}', '{1}', 30)",
    )
    .await;
    assert_eq!(around, ["off", "on"]);
}

/// During a rolling upgrade (or after a rollback), replicas of the previous release take and give
/// back slots with migration 0006's functions: on the same rows, against the same limit.
#[tokio::test]
async fn the_previous_releases_functions_count_against_the_same_limit() {
    let (pool, replicas) = replicas(1).await;
    let old_take = || async {
        sqlx::query_scalar::<_, Option<i64>>("SELECT take_running_slot('k', 2, 30)")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let previous = old_take().await.expect("a free slot");
    let current = take(&replicas[0], "k", 2).await.expect("a free slot");
    assert!(take(&replicas[0], "k", 2).await.is_none());
    assert!(old_take().await.is_none());
    sqlx::query("SELECT release_running_slot('k', $1)")
        .bind(previous)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(rows(&pool).await.len(), 1);
    let next = take(&replicas[0], "k", 2)
        .await
        .expect("the slot given back");
    for permit in [current, next] {
        replicas[0].release(permit).await;
    }
    assert!(rows(&pool).await.is_empty());
}

#[tokio::test]
async fn a_database_that_cannot_answer_is_an_error_not_a_verdict() {
    let (pool, replicas) = replicas(1).await;
    let running = take(&replicas[0], "k", 1).await.unwrap();
    sqlx::query("DROP FUNCTION exchange_running_slots")
        .execute(&pool)
        .await
        .unwrap();
    let result = replicas[0].try_acquire("k", 2).await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(replicas[0].held(), 1);
    // A release that fails is logged; the slot is no longer renewed, so its lease runs out.
    let logs = logs_of(replicas[0].release(running)).await;
    assert!(
        logs.contains("Running slot release failed; the slot frees when its lease expires"),
        "{logs}"
    );
    assert_eq!(replicas[0].held(), 0);
}

#[tokio::test]
async fn sqlite_counts_in_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::connect(&support::sqlite_url(dir.path()))
        .await
        .unwrap();
    let slots = RunningSlots::for_database(&db);
    assert!(matches!(slots, RunningSlots::InProcess(_)));
    let running = burst(std::slice::from_ref(&slots), "k", 3, 5).await;
    assert_eq!(running.len(), 3);
    assert_eq!(slots.held(), 3);
    for permit in running {
        slots.release(permit).await;
    }
    assert_eq!(slots.held(), 0);
    assert!(slots.renew().await.is_ok());
    assert_eq!(db.sweep_running_slots().await.unwrap(), 0);
}
