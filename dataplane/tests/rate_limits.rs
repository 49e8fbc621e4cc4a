//! A capability's `rate_limit` on Postgres is one quota for every replica on the database
//! (`rate_limit_logs`, migration 0005): each replica below is its own connection pool, as in a
//! cluster. The same sliding log as in memory: exact up to 64 calls, never one too many above,
//! refused calls not counted, quota back as calls leave the window, and expired logs swept.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_seal_crds::RateLimit;
use aegis_seal_gateway::domain::policy::Quota;
use aegis_seal_gateway::infrastructure::persistence::{Database, RateLimits};

async fn replicas(n: usize) -> (Database, Vec<RateLimits>) {
    support::postgres_replicas(n, RateLimits::for_database).await
}

fn limit(calls: u32, per_seconds: u32) -> RateLimit {
    RateLimit { calls, per_seconds }
}

/// `attempts` takes of `key` at once, spread over the replicas; how many were allowed.
async fn burst(replicas: &[RateLimits], key: &str, limit: RateLimit, attempts: usize) -> usize {
    let takes = (0..attempts).map(|i| {
        let replica = &replicas[i % replicas.len()];
        async move { replica.take(key, &limit, Instant::now()).await.unwrap() }
    });
    futures::future::join_all(takes)
        .await
        .into_iter()
        .filter(|allowed| *allowed)
        .count()
}

async fn logs(db: &Database) -> Vec<String> {
    let Database::Postgres(pool) = db else {
        unreachable!()
    };
    sqlx::query_scalar("SELECT key FROM rate_limit_logs ORDER BY key")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_one_quota_exactly_even_when_calls_race() {
    let (_db, replicas) = replicas(3).await;
    assert!(matches!(replicas[0], RateLimits::Shared(_)));

    // Up to 64 calls the log is exact: 40 calls at once through three replicas, 7 allowed.
    assert_eq!(burst(&replicas, "session-a", limit(7, 60), 40).await, 7);
    // Another key (another session, context or capability) has its own quota.
    assert_eq!(burst(&replicas, "session-b", limit(7, 60), 10).await, 7);
    // Above 64 calls, the calls of each window/64 share a slot; a slot counts every call in it,
    // so no more than the limit is let through.
    assert_eq!(
        burst(&replicas, "session-c", limit(100, 60), 150).await,
        100
    );
    // A tighter limit applies to the calls already counted.
    assert!(
        !replicas[1]
            .take("session-c", &limit(50, 60), Instant::now())
            .await
            .unwrap()
    );
}

/// A replica sends one statement per key at a time: the calls that arrive while one waits for
/// the key's log wait in the replica and go together in the next, which allows as many as the
/// quota has left and counts them in one slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_calls_wait_in_the_replica_for_its_statement_and_go_together_in_the_next() {
    let (db, mut replicas) = replicas(1).await;
    let Database::Postgres(pool) = &db else {
        unreachable!()
    };
    let replica = Arc::new(replicas.remove(0));
    let ten = limit(10, 60);
    assert!(replica.take("k", &ten, Instant::now()).await.unwrap());
    let mut in_progress = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM rate_limit_logs WHERE key = 'k' FOR UPDATE")
        .execute(&mut *in_progress)
        .await
        .unwrap();

    let spawn_take = || {
        let replica = Arc::clone(&replica);
        tokio::spawn(async move { replica.take("k", &ten, Instant::now()).await.unwrap() })
    };
    let first = spawn_take();
    support::wait_for_statements(pool, "take_rate_limit_quotas", 1).await;
    let queued: Vec<_> = (0..20).map(|_| spawn_take()).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        support::statements_running(pool, "take_rate_limit_quotas").await,
        1,
        "the queued calls went to the database one by one"
    );

    in_progress.commit().await.unwrap();
    assert!(first.await.unwrap());
    let allowed = futures::future::join_all(queued)
        .await
        .into_iter()
        .filter(|allowed| *allowed.as_ref().unwrap())
        .count();
    assert_eq!(allowed, 8);
    // One slot per statement: the call before, the one that waited, the 20 queued behind it.
    let counts: Vec<i32> =
        sqlx::query_scalar("SELECT unnest(slot_count) FROM rate_limit_logs WHERE key = 'k'")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(counts, [1, 1, 8]);
    assert!(!replica.take("k", &ten, Instant::now()).await.unwrap());
}

#[tokio::test]
async fn quota_comes_back_as_calls_leave_the_window_and_refusals_are_not_counted() {
    let (_db, replicas) = replicas(2).await;
    let per_second = limit(2, 1);
    assert_eq!(burst(&replicas, "k", per_second, 2).await, 2);
    // Refused calls, however many, take nothing from the next window.
    assert_eq!(burst(&replicas, "k", per_second, 5).await, 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(burst(&replicas, "k", per_second, 5).await, 2);
}

#[tokio::test]
async fn the_sweep_deletes_only_logs_whose_calls_all_left_their_window() {
    let (db, replicas) = replicas(1).await;
    let take = |key: &'static str, limit: RateLimit| {
        let replica = &replicas[0];
        async move { replica.take(key, &limit, Instant::now()).await.unwrap() }
    };
    assert!(take("short", limit(1, 1)).await);
    assert!(take("long", limit(1, 60)).await);
    assert_eq!(db.sweep_rate_limits().await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(db.sweep_rate_limits().await.unwrap(), 1);
    assert_eq!(logs(&db).await, ["long"]);
    // The long window's call is still counted; the swept key starts afresh.
    assert!(!take("long", limit(1, 60)).await);
    assert!(take("short", limit(1, 1)).await);
}

/// A take commits without waiting for its WAL flush, so the key's row lock is not held through
/// it; the setting lasts for the take's transaction only (migration 0007).
#[tokio::test]
async fn a_take_does_not_wait_for_its_wal_flush_and_nothing_else_changes() {
    let (db, _replicas) = replicas(1).await;
    let Database::Postgres(pool) = &db else {
        unreachable!()
    };
    let around =
        support::synchronous_commit_around(pool, "SELECT take_rate_limit_quotas('k', 1, 60, 1)")
            .await;
    assert_eq!(around, ["off", "on"]);
}

/// During a rolling upgrade (or after a rollback), replicas of the previous release take quota
/// with migration 0005's function: from the same log, against the same limit.
#[tokio::test]
async fn the_previous_releases_function_counts_against_the_same_quota() {
    let (db, replicas) = replicas(1).await;
    let Database::Postgres(pool) = &db else {
        unreachable!()
    };
    let old_take = || async {
        sqlx::query_scalar::<_, bool>("SELECT take_rate_limit_quota('k', 3, 60)")
            .fetch_one(pool)
            .await
            .unwrap()
    };
    let three = limit(3, 60);
    assert!(old_take().await);
    assert!(replicas[0].take("k", &three, Instant::now()).await.unwrap());
    assert!(old_take().await);
    assert!(!replicas[0].take("k", &three, Instant::now()).await.unwrap());
    assert!(!old_take().await);
}

#[tokio::test]
async fn a_database_that_cannot_answer_is_an_error_not_a_verdict() {
    let (db, replicas) = replicas(1).await;
    let Database::Postgres(pool) = &db else {
        unreachable!()
    };
    sqlx::query("DROP FUNCTION take_rate_limit_quotas")
        .execute(pool)
        .await
        .unwrap();
    let result = replicas[0].take("k", &limit(1, 60), Instant::now()).await;
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test]
async fn sqlite_counts_in_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::connect(&support::sqlite_url(dir.path()))
        .await
        .unwrap();
    let limits = RateLimits::for_database(&db);
    assert!(matches!(limits, RateLimits::InProcess(_)));
    assert_eq!(
        burst(std::slice::from_ref(&limits), "k", limit(3, 60), 5).await,
        3
    );
    assert_eq!(db.sweep_rate_limits().await.unwrap(), 0);
}
