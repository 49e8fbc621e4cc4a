//! The Postgres writers that have a connection of their own (the audit group commit and the
//! replay guard's jti batches): replicas' audit writers interleave into one chain, and a writer
//! whose connection dies answers that batch with an error and carries on with a new connection.
//! And the shared pool, which pings a connection that sat idle before handing it out.

mod support;

use aegis_seal_gateway::infrastructure::metrics::Metrics;
use aegis_seal_gateway::infrastructure::persistence::{
    AuditEvent, AuditWriter, Database, ReplayGuard,
};
use serde_json::json;

/// What a Postgres restart or failover does to every open connection.
async fn terminate_connections(db: &Database) {
    let Database::Postgres(pool) = db else {
        unreachable!()
    };
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(terminated.contains(&true), "no connection was terminated");
}

fn events(tag: &str, n: usize) -> Vec<AuditEvent> {
    (0..n)
        .map(|i| {
            AuditEvent::from_json(
                "ToolCallAuthorized",
                json!({"execution_id": format!("{tag}-{i}"), "tenant_id": "acme"}),
            )
        })
        .collect()
}

#[tokio::test]
async fn two_replicas_writers_on_postgres_form_one_verifiable_chain() {
    let url = support::fresh_postgres_url().await;
    let replicas = [
        Database::connect(&url).await.unwrap(),
        Database::connect(&url).await.unwrap(),
    ];
    let writers: Vec<AuditWriter> = replicas
        .iter()
        .map(|db| AuditWriter::start(db.clone(), Metrics::new(), None))
        .collect();
    let calls: Vec<_> = (0..60)
        .map(|i| {
            let writer = writers[i % 2].clone();
            tokio::spawn(async move { writer.write(events(&format!("call{i}"), 3)).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }

    let report = replicas[0].verify_audit(None).await.unwrap().unwrap();
    assert_eq!(
        (report.rows, report.first_id, report.last_id),
        (180, Some(1), Some(180))
    );
}

#[tokio::test]
async fn a_writer_whose_postgres_connection_died_reconnects_for_the_next_group() {
    let url = support::fresh_postgres_url().await;
    let db = Database::connect(&url).await.unwrap();
    let writer = AuditWriter::start(db.clone(), Metrics::new(), None);
    writer.write(events("before", 2)).await.unwrap();

    terminate_connections(&db).await;

    // The group in flight on the dead connection fails; the next one commits.
    let lost = writer.write(events("lost", 1)).await;
    assert!(
        lost.is_err(),
        "a write on a terminated connection succeeded"
    );
    writer.write(events("after", 2)).await.unwrap();

    let report = db.verify_audit(None).await.unwrap().unwrap();
    assert_eq!(report.rows, 4);
}

#[tokio::test]
async fn the_replay_guard_whose_postgres_connection_died_reconnects_for_the_next_batch() {
    let url = support::fresh_postgres_url().await;
    let db = Database::connect(&url).await.unwrap();
    let now = chrono::Utc::now();
    let live = now + chrono::Duration::seconds(30);
    let guard = ReplayGuard::start(db.clone(), now).await.unwrap();
    assert!(guard.first_use("jti-1", live, now).await.unwrap());

    terminate_connections(&db).await;

    // Undecided, so not remembered: the caller may send the same envelope again.
    assert!(guard.first_use("jti-2", live, now).await.is_err());
    assert!(guard.first_use("jti-2", live, now).await.unwrap());
    assert!(!guard.first_use("jti-1", live, now).await.unwrap());
}

/// A failover cuts every pooled connection while it sits idle. The pool pings a connection before
/// handing it out, finds it cut and opens another, so no statement fails for it. The ping costs a
/// round trip before each pooled statement. Pinging only connections idle for a second or more
/// was tried: a statement on a connection used just before the cut then failed.
#[tokio::test]
async fn the_pool_replaces_connections_cut_while_they_sat_idle() {
    let url = support::fresh_postgres_url().await;
    let db = Database::connect(&url).await.unwrap();
    let Database::Postgres(pool) = &db else {
        unreachable!()
    };
    let warm = (0..5).map(|_| sqlx::query("SELECT pg_sleep(0.01)").execute(pool));
    for done in futures::future::join_all(warm).await {
        done.unwrap();
    }
    // Every connection of `db`'s pool, cut from another pool.
    terminate_connections(&Database::connect(&url).await.unwrap()).await;
    for _ in 0..10 {
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(one, 1);
    }
}
