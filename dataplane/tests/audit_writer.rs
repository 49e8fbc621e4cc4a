//! The group-commit writer on Postgres, where each writer has a connection of its own: replicas'
//! writers interleave into one chain, and a writer whose connection dies answers that group with
//! an error and commits the next one on a new connection.

mod support;

use aegis_seal_gateway::infrastructure::metrics::Metrics;
use aegis_seal_gateway::infrastructure::persistence::{AuditEvent, AuditWriter, Database};
use serde_json::json;

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

    // What a Postgres restart or failover does to every open connection.
    let Database::Postgres(pool) = &db else {
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
