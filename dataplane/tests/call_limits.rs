//! A call under both a `max_concurrent` and a `rate_limit`. On Postgres it takes its slot and its
//! quota in one statement (`admit_limited_calls`, migration 0008) with the answers of the two
//! taken in turn: the slot looked at first, a call its quota refuses keeping no slot, exact
//! under racing calls from several replicas, and a key's calls that arrive while its statement
//! runs sent together in the next. On SQLite both are counted in the process, in turn.

mod support;

use std::time::{Duration, Instant};

use aegis_seal_crds::RateLimit;
use aegis_seal_gateway::domain::policy::{Admission, Limits, Slots};
use aegis_seal_gateway::infrastructure::persistence::{
    CallLimits, Database, RateLimits, RunningSlots, SlotPermit,
};
use sqlx::PgPool;

async fn replicas(n: usize) -> (PgPool, Vec<CallLimits>) {
    let (db, limits) = support::postgres_replicas(n, CallLimits::for_database).await;
    let Database::Postgres(pool) = db else {
        unreachable!()
    };
    (pool, limits)
}

fn rate(calls: u32, per_seconds: u32) -> RateLimit {
    RateLimit { calls, per_seconds }
}

async fn admit(
    replica: &CallLimits,
    key: &str,
    max_concurrent: u32,
    rate_limit: RateLimit,
) -> Admission<SlotPermit> {
    replica
        .admit(key, Some(max_concurrent), Some(&rate_limit), Instant::now())
        .await
        .unwrap()
}

/// The slots held in the table, over every key.
async fn slots_held(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT coalesce(sum(cardinality(slot_ids)), 0)::BIGINT FROM running_slots")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The calls counted in `key`'s rate-limit log.
async fn quota_spent(pool: &PgPool, key: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(c), 0)::BIGINT FROM rate_limit_logs, unnest(slot_count) AS c \
         WHERE key = $1",
    )
    .bind(key)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn release(replica: &CallLimits, admission: Admission<SlotPermit>) {
    let Admission::Admitted(Some(permit)) = admission else {
        panic!("not admitted with a slot: {admission:?}")
    };
    replica.running.release(permit).await;
}

#[tokio::test]
async fn the_slot_is_looked_at_first_and_a_call_its_quota_refuses_keeps_no_slot() {
    let (pool, replicas) = replicas(1).await;
    let replica = &replicas[0];
    assert!(matches!(replica.running, RunningSlots::Shared(_)));
    assert!(matches!(replica.rate_limits, RateLimits::Shared(_)));
    let limit = rate(3, 60);

    let first = admit(replica, "k", 2, limit).await;
    let second = admit(replica, "k", 2, limit).await;
    assert!(matches!(first, Admission::Admitted(Some(_))));
    assert!(matches!(second, Admission::Admitted(Some(_))));
    // Both slots are held: refused before its quota is asked, so it spends none.
    assert!(matches!(
        admit(replica, "k", 2, limit).await,
        Admission::SlotsFull
    ));
    assert_eq!(quota_spent(&pool, "k").await, 2);

    release(replica, first).await;
    let third = admit(replica, "k", 2, limit).await;
    assert!(matches!(third, Admission::Admitted(Some(_))));
    assert_eq!(quota_spent(&pool, "k").await, 3);
    release(replica, second).await;
    // A slot is free and the quota spent: refused, holding no slot.
    assert!(matches!(
        admit(replica, "k", 2, limit).await,
        Admission::QuotaSpent
    ));
    assert_eq!(slots_held(&pool).await, 1);
    assert_eq!(replica.running.held(), 1);
    release(replica, third).await;
    assert_eq!(slots_held(&pool).await, 0);
}

/// One statement's calls get the answers they would get one after another, whatever their slot
/// limits (a reload may change a capability's `max_concurrent` between two calls).
#[tokio::test]
async fn one_statements_calls_are_answered_as_if_they_came_one_after_another() {
    let (pool, _replicas) = replicas(1).await;
    let cases: [(&str, &str, i32, &str); 5] = [
        // key, slot limits in arrival order, quota, answers (s = a slot, NULL = slots full,
        // 0 = quota spent)
        ("a", "{2,2,2}", 5, "s,s,NULL"),
        ("b", "{5,5,5}", 2, "s,s,0"),
        ("c", "{3,1,3}", 5, "s,NULL,s"),
        ("d", "{3,1,3,3}", 1, "s,NULL,0,0"),
        ("e", "{1,3,3,3}", 2, "s,s,0,0"),
    ];
    for (key, limits, quota, want) in cases {
        let answers: Vec<Option<i64>> =
            sqlx::query_scalar("SELECT admit_limited_calls($1, '{}', $2::INTEGER[], 30, $3, 60)")
                .bind(key)
                .bind(limits)
                .bind(quota)
                .fetch_one(&pool)
                .await
                .unwrap();
        let got: Vec<&str> = answers
            .iter()
            .map(|answer| match answer {
                None => "NULL",
                Some(0) => "0",
                Some(_) => "s",
            })
            .collect();
        assert_eq!(
            got.join(","),
            want,
            "key {key}, limits {limits}, quota {quota}"
        );
        let admitted = got.iter().filter(|&&a| a == "s").count() as i64;
        assert_eq!(quota_spent(&pool, key).await, admitted, "key {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_admit_exactly_even_when_calls_race() {
    let (pool, replicas) = replicas(3).await;
    // Every pool has its connections open, so that the calls below reach the database at once.
    let keys: Vec<String> = (0..30).map(|i| format!("warm-{i}")).collect();
    let warm_up =
        (keys.iter().enumerate()).map(|(i, key)| admit(&replicas[i % 3], key, 1, rate(1, 60)));
    for (i, admission) in futures::future::join_all(warm_up)
        .await
        .into_iter()
        .enumerate()
    {
        release(&replicas[i % 3], admission).await;
    }

    // 60 calls at once through three replicas: 5 may run, 3 are within the quota.
    let calls = (0..60).map(|i| admit(&replicas[i % 3], "session", 5, rate(3, 60)));
    let answers = futures::future::join_all(calls).await;
    let admitted = answers
        .iter()
        .filter(|a| matches!(a, Admission::Admitted(Some(_))))
        .count();
    assert_eq!(admitted, 3);
    assert_eq!(quota_spent(&pool, "session").await, 3);
    // No refused call kept a slot.
    assert_eq!(slots_held(&pool).await, 3);
    assert_eq!(replicas.iter().map(|r| r.running.held()).sum::<usize>(), 3);
    drop(answers);
    // Dropped permits are given back in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    while slots_held(&pool).await > 0 {
        assert!(
            Instant::now() < deadline,
            "dropped slots were not given back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A replica sends one `admit_limited_calls` per key at a time: the calls, and the give-backs of
/// slots taken so, that arrive while one waits for the key's row wait in the replica and go
/// together in the next (give-backs first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_calls_wait_in_the_replica_for_its_statement_and_go_together_in_the_next() {
    let (pool, replicas) = replicas(1).await;
    let replica = std::sync::Arc::new(replicas.into_iter().next().unwrap());
    let earlier = admit(&replica, "k", 4, rate(100, 60)).await;
    let mut in_progress = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM running_slots WHERE key = 'k' FOR UPDATE")
        .execute(&mut *in_progress)
        .await
        .unwrap();

    let spawn_admit = || {
        let replica = std::sync::Arc::clone(&replica);
        tokio::spawn(async move { admit(&replica, "k", 4, rate(100, 60)).await })
    };
    let first = spawn_admit();
    support::wait_for_statements(&pool, "admit_limited_calls", 1).await;
    let queued: Vec<_> = (0..20).map(|_| spawn_admit()).collect();
    let given_back = {
        let replica = std::sync::Arc::clone(&replica);
        tokio::spawn(async move { release(&replica, earlier).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        support::statements_running(&pool, "admit_limited_calls").await,
        1,
        "the queued calls went to the database one by one"
    );
    assert_eq!(
        support::statements_running(&pool, "exchange_running_slots").await,
        0,
        "the give-back went in a statement of its own"
    );

    in_progress.commit().await.unwrap();
    let first = first.await.unwrap();
    assert!(matches!(first, Admission::Admitted(Some(_))));
    given_back.await.unwrap();
    let admitted: Vec<_> = futures::future::join_all(queued)
        .await
        .into_iter()
        .map(Result::unwrap)
        .filter(|admission| matches!(admission, Admission::Admitted(Some(_))))
        .collect();
    // The earlier call's slot went back in the same statement, before its takes: 4 run.
    assert_eq!(admitted.len(), 3);
    assert_eq!(slots_held(&pool).await, 4);
    // The earlier call, the first, and the 3 of the queued 20 that found a slot; the 17 others
    // were refused by their slots and spent no quota.
    assert_eq!(quota_spent(&pool, "k").await, 5);
    for admission in admitted.into_iter().chain([first]) {
        release(&replica, admission).await;
    }
    assert_eq!(slots_held(&pool).await, 0);
}

#[tokio::test]
async fn a_database_that_cannot_answer_is_an_error_not_a_verdict() {
    let (pool, replicas) = replicas(1).await;
    sqlx::query("DROP FUNCTION admit_limited_calls")
        .execute(&pool)
        .await
        .unwrap();
    let answer = replicas[0]
        .admit("k", Some(2), Some(&rate(5, 60)), Instant::now())
        .await;
    assert!(answer.is_err(), "{answer:?}");
    // A call under one limit does not use it.
    let slot_only = replicas[0]
        .admit("k", Some(2), None, Instant::now())
        .await
        .unwrap();
    release(&replicas[0], slot_only).await;
}

#[tokio::test]
async fn sqlite_counts_both_in_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::connect(&support::sqlite_url(dir.path()))
        .await
        .unwrap();
    let limits = CallLimits::for_database(&db);
    assert!(matches!(limits.running, RunningSlots::InProcess(_)));
    let limit = rate(2, 60);
    let first = admit(&limits, "k", 1, limit).await;
    assert!(matches!(
        admit(&limits, "k", 1, limit).await,
        Admission::SlotsFull
    ));
    release(&limits, first).await;
    let second = admit(&limits, "k", 1, limit).await;
    release(&limits, second).await;
    assert!(matches!(
        admit(&limits, "k", 1, limit).await,
        Admission::QuotaSpent
    ));
    assert_eq!(limits.running.held(), 0);
}

/// Like the functions of migration 0007, it commits without waiting for its WAL flush, for its
/// own transaction only.
#[tokio::test]
async fn an_admission_does_not_wait_for_its_wal_flush_and_nothing_else_changes() {
    let (pool, _replicas) = replicas(1).await;
    let around = support::synchronous_commit_around(
        &pool,
        "SELECT admit_limited_calls('k', '{}', '{1}', 30, 1, 60)",
    )
    .await;
    assert_eq!(around, ["off", "on"]);
}
