//! Persistence on both real backends: migrations, restarts, the runbook's SQL, the catalog tables.

mod support;

use std::time::Duration;

use aegis_seal_gateway::infrastructure::persistence::{
    AuditEvent, Backend, CatalogSource, Database, PersistenceError, PoolSettings,
};
use serde_json::{Value, json};
use sqlx::Row;

fn event(event_type: &'static str, payload: Value) -> AuditEvent {
    let Value::Object(map) = payload else {
        panic!("payloads are objects")
    };
    AuditEvent::new(event_type, map)
}

/// Runs a runbook query verbatim and returns each row's columns as text (JSON rendered as text).
async fn query_text(db: &Database, sql: &str) -> Vec<Vec<Option<String>>> {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match db {
        Database::Sqlite(pool) => sqlx::query(sql)
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| row.try_get::<Option<String>, _>(i).unwrap())
                    .collect()
            })
            .collect(),
        Database::Postgres(pool) => sqlx::query(sql)
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| {
                        row.try_get::<Option<String>, _>(i)
                            .or_else(|_| {
                                row.try_get::<Option<sqlx::types::Json<Value>>, _>(i)
                                    .map(|v| v.map(|j| j.0.to_string()))
                            })
                            .or_else(|_| {
                                row.try_get::<Option<chrono::DateTime<chrono::Utc>>, _>(i)
                                    .map(|v| v.map(|t| t.to_rfc3339()))
                            })
                            .unwrap()
                    })
                    .collect()
            })
            .collect(),
    }
}

#[tokio::test]
async fn restarting_on_an_existing_database_works_on_both_backends() {
    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        assert_eq!(db.backend(), Backend::for_url(&url), "{backend}");
        db.append_events(&[event("ToolCallAuthorized", json!({"execution_id": "e1"}))])
            .await
            .unwrap();
        db.close().await;

        // Second start on the same database: migrations are already applied, data is kept.
        let db = Database::connect(&url).await.unwrap();
        db.ping().await.unwrap();
        let rows = query_text(&db, "SELECT CAST(COUNT(*) AS TEXT) FROM gateway_events").await;
        assert_eq!(rows, [[Some("1".into())]], "{backend}: the event survived");
        let migrations =
            query_text(&db, "SELECT CAST(COUNT(*) AS TEXT) FROM _sqlx_migrations").await;
        // Each migration file applied once, none twice.
        let files = std::fs::read_dir(format!(
            "{}/../migrations/{backend}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
        .filter(|f| f.as_ref().unwrap().path().extension() == Some("sql".as_ref()))
        .count();
        assert_eq!(migrations, [[Some(files.to_string())]], "{backend}");
        db.close().await;
    }
}

#[tokio::test]
async fn sqlite_creates_the_database_folder() {
    let dir = tempfile::tempdir().unwrap();
    let url = support::sqlite_url(dir.path());
    let db = Database::connect(&url).await.unwrap();
    assert!(dir.path().join("data/gateway.db").is_file());
    db.close().await;
}

#[tokio::test]
async fn the_runbook_audit_queries_work_verbatim_on_both_backends() {
    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        let mut older = event(
            "CredentialExchangeFailed",
            json!({"execution_id": "exec-0", "resolution_path": "static_ref",
                   "reason": "old", "failed_at": "2026-01-01T00:00:00Z"}),
        );
        older.created_at -= chrono::Duration::seconds(10);
        let failed = event(
            "CredentialExchangeFailed",
            json!({"execution_id": "exec-1", "resolution_path": "system_jit",
                   "reason": "http error: OpenBao JIT request returned 403 Forbidden",
                   "failed_at": "2026-01-01T00:00:10Z"}),
        );
        let workflow = event(
            "WorkflowInvocationFailed",
            json!({"workflow_id": "w", "execution_id": "exec-1", "failed_step": "create_repo",
                   "reason": "upstream returned 500", "failed_at": "2026-01-01T00:00:10Z"}),
        );
        let judged = event(
            "CliToolSemanticRejected",
            json!({"execution_id": "exec-2", "tool_name": "git-readonly",
                   "requested_subcommand": "push", "rejection_reason": "judge unreachable: timeout",
                   "security_context": "default", "rejected_at": "2026-01-01T00:00:10Z",
                   "tenant_id": "acme"}),
        );
        db.append_events(&[older, failed, workflow, judged])
            .await
            .unwrap();

        let rows = query_text(
            &db,
            "SELECT created_at, payload->>'resolution_path' AS path, payload->>'reason' AS reason FROM gateway_events WHERE event_type = 'CredentialExchangeFailed' ORDER BY created_at DESC LIMIT 20;",
        )
        .await;
        let got: Vec<_> = rows.iter().map(|r| (r[1].clone(), r[2].clone())).collect();
        assert_eq!(
            got,
            [
                (
                    Some("system_jit".into()),
                    Some("http error: OpenBao JIT request returned 403 Forbidden".into())
                ),
                (Some("static_ref".into()), Some("old".into())),
            ],
            "{backend}: newest first, flat fields"
        );
        assert!(rows.iter().all(|r| r[0].is_some()), "{backend}: created_at");

        let rows = query_text(
            &db,
            "SELECT payload FROM gateway_events WHERE event_type = 'WorkflowInvocationFailed' AND payload->>'execution_id' = 'exec-1' ORDER BY created_at DESC LIMIT 1;",
        )
        .await;
        let payload: Value = serde_json::from_str(rows[0][0].as_deref().unwrap()).unwrap();
        assert_eq!(payload["failed_step"], "create_repo", "{backend}");
        assert_eq!(payload["reason"], "upstream returned 500", "{backend}");

        let rows = query_text(
            &db,
            "SELECT created_at, payload->>'tool_name' AS tool, payload->>'rejection_reason' AS reason FROM gateway_events WHERE event_type = 'CliToolSemanticRejected' ORDER BY created_at DESC LIMIT 20;",
        )
        .await;
        assert_eq!(rows.len(), 1, "{backend}");
        assert_eq!(rows[0][1].as_deref(), Some("git-readonly"), "{backend}");
        assert_eq!(
            rows[0][2].as_deref(),
            Some("judge unreachable: timeout"),
            "{backend}"
        );

        let rows = query_text(
            &db,
            "SELECT tenant_id FROM gateway_events WHERE event_type = 'CliToolSemanticRejected'",
        )
        .await;
        assert_eq!(rows, [[Some("acme".into())]], "{backend}: tenant column");

        // The replay table the runbook queries exists with its columns.
        let rows = query_text(
            &db,
            "SELECT jti, expires_at FROM seen_jtis WHERE jti = 'no-such-jti';",
        )
        .await;
        assert!(rows.is_empty(), "{backend}");
        db.close().await;
    }
}

#[tokio::test]
async fn non_object_payloads_are_refused_by_the_schema() {
    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        let result = match &db {
            Database::Sqlite(pool) => sqlx::query(
                "INSERT INTO gateway_events (event_type, payload, created_at) VALUES ('X', '[1]', 'now')",
            )
            .execute(pool)
            .await
            .map(drop),
            Database::Postgres(pool) => sqlx::query(
                "INSERT INTO gateway_events (event_type, payload) VALUES ('X', '[1]'::jsonb)",
            )
            .execute(pool)
            .await
            .map(drop),
        };
        assert!(result.is_err(), "{backend}: a flat object is required");
        db.close().await;
    }
}

const CATALOG: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: api}
data:
  openapi.json: '{"openapi": "3.0.0", "paths": {"/echo": {"post": {"operationId": "echo"}}}}'
---
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {name: echo-message}
spec:
  tool_name: echo_message
  tenant_id: acme
  api_spec: {base_url: "http://127.0.0.1:9", openapi: {config_map_ref: {name: api, key: openapi.json}}}
  steps: [{name: echo, operation_id: echo, body_template: "{}"}]
---
apiVersion: seal.100monkeys.ai/v1
kind: CliTool
metadata: {name: busybox}
spec: {docker_image: "localhost/ci/busybox:latest", allowed_subcommands: [echo], require_semantic_judge: true}
---
apiVersion: seal.100monkeys.ai/v1
kind: SecurityContext
metadata: {name: agents}
spec: {capabilities: [{tool_pattern: "*"}], deny_list: ["danger.*"]}
"#;

#[tokio::test]
async fn catalog_tables_mirror_the_served_snapshot_on_both_backends() {
    let snapshot = support::snapshot_of(CATALOG);
    assert_eq!(snapshot.workflows.len(), 1);

    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        // A workflow registered over REST must survive every snapshot sync.
        let rest_insert = "INSERT INTO workflows (id, name, tenant_id, input_schema, steps, source, created_at) \
                           VALUES ('rest-1', 'registered_over_rest', NULL, '{}', '[]', 'rest', '2026-01-01T00:00:00Z')";
        match &db {
            Database::Sqlite(pool) => drop(sqlx::query(rest_insert).execute(pool).await.unwrap()),
            Database::Postgres(pool) => drop(sqlx::query(rest_insert).execute(pool).await.unwrap()),
        }

        let counts = db
            .sync_catalog(&snapshot, CatalogSource::Manifest)
            .await
            .unwrap();
        assert_eq!(
            (counts.workflows, counts.cli_tools, counts.security_contexts),
            (1, 1, 1)
        );
        // Twice: a reload with the same content changes nothing, ids included.
        db.sync_catalog(&snapshot, CatalogSource::Manifest)
            .await
            .unwrap();

        let rows = query_text(
            &db,
            "SELECT id, name, tenant_id FROM workflows WHERE name = 'echo_message';",
        )
        .await;
        assert_eq!(rows.len(), 1, "{backend}");
        assert_eq!(rows[0][1].as_deref(), Some("echo_message"));
        assert_eq!(rows[0][2].as_deref(), Some("acme"), "{backend}: tenant");
        let first_id = rows[0][0].clone();

        let rows = query_text(
            &db,
            "SELECT name, docker_image FROM cli_tools WHERE name = 'busybox'",
        )
        .await;
        assert_eq!(
            rows,
            [[
                Some("busybox".into()),
                Some("localhost/ci/busybox:latest".into())
            ]],
            "{backend}"
        );
        let rows = query_text(
            &db,
            "SELECT name FROM security_contexts WHERE deny_list->>0 = 'danger.*'",
        )
        .await;
        assert_eq!(rows, [[Some("agents".into())]], "{backend}: JSON columns");

        // The workflow is removed from the manifests: its row goes, the REST row stays.
        let mut smaller = snapshot.clone();
        smaller.workflows.clear();
        db.sync_catalog(&smaller, CatalogSource::Manifest)
            .await
            .unwrap();
        let rows = query_text(&db, "SELECT id, name, source FROM workflows ORDER BY name").await;
        assert_eq!(
            rows,
            [[
                Some("rest-1".into()),
                Some("registered_over_rest".into()),
                Some("rest".into())
            ]],
            "{backend}"
        );
        db.sync_catalog(&snapshot, CatalogSource::Manifest)
            .await
            .unwrap();
        let rows = query_text(&db, "SELECT id FROM workflows WHERE name = 'echo_message'").await;
        assert_eq!(rows[0][0], first_id, "{backend}: ids are stable");
        db.close().await;
    }
}

#[tokio::test]
async fn an_exhausted_pool_reports_pool_timed_out_on_both_backends() {
    for (backend, url, _dir) in support::both_backends().await {
        let settings = PoolSettings {
            max_connections: 1,
            min_connections: 0,
            acquire_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(60),
        };
        let db = Database::connect_with(&url, settings).await.unwrap();
        let held = match &db {
            Database::Sqlite(pool) => Some(pool.acquire().await.unwrap()),
            Database::Postgres(_) => None,
        };
        let held_pg = match &db {
            Database::Postgres(pool) => Some(pool.acquire().await.unwrap()),
            Database::Sqlite(_) => None,
        };
        let err = db.ping().await.unwrap_err();
        assert!(
            matches!(err, PersistenceError::PoolTimedOut),
            "{backend}: {err:?}"
        );
        assert_eq!(err.to_string(), "database pool acquire timeout");
        drop((held, held_pg));
        db.ping().await.unwrap();
        db.close().await;
    }
}

#[tokio::test]
async fn jtis_are_first_used_once_per_batch_and_again_only_after_expiry_on_both_backends() {
    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        let now = chrono::Utc::now();
        let live = now + chrono::Duration::minutes(5);
        let run = uuid::Uuid::new_v4();
        let (a, b, c) = (format!("{run}-a"), format!("{run}-b"), format!("{run}-c"));

        // A repeat inside one batch is not a first use.
        let first = db
            .record_jtis(
                &[(a.clone(), live), (b.clone(), live), (a.clone(), live)],
                now,
            )
            .await
            .unwrap();
        assert_eq!(first, [true, true, false], "{backend}");
        // Live rows hold; a new jti beside them is new.
        let again = db
            .record_jtis(&[(b.clone(), live), (c.clone(), live)], now)
            .await
            .unwrap();
        assert_eq!(again, [false, true], "{backend}");
        // Past its expiry a row counts as absent, swept or not.
        let later = live + chrono::Duration::seconds(1);
        let revived = db
            .record_jtis(&[(a.clone(), later + chrono::Duration::minutes(5))], later)
            .await
            .unwrap();
        assert_eq!(revived, [true], "{backend}");
        assert_eq!(db.record_jtis(&[], now).await.unwrap(), Vec::<bool>::new());
    }
}

#[tokio::test]
async fn sessions_past_their_expiry_are_marked_expired_on_both_backends() {
    use aegis_seal_gateway::infrastructure::persistence::SessionStatus;

    let signer = support::Signer::from_vectors();
    let now = chrono::Utc::now();
    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        let session = |id: &str, status, expires_in: chrono::Duration| {
            let mut s = signer.session_record(now);
            s.execution_id = id.to_owned();
            s.status = status;
            s.expires_at = now + expires_in;
            s
        };
        let second = chrono::Duration::seconds(1);
        for s in [
            session("past", SessionStatus::Active, -second),
            session("due-now", SessionStatus::Active, chrono::Duration::zero()),
            session("live", SessionStatus::Active, second),
            session("revoked-and-past", SessionStatus::Revoked, -second),
        ] {
            db.upsert_session(&s).await.unwrap();
        }

        assert_eq!(db.expire_sessions(now).await.unwrap(), 2, "{backend}");
        for (id, status) in [
            ("past", SessionStatus::Expired),
            ("due-now", SessionStatus::Expired),
            ("live", SessionStatus::Active),
            ("revoked-and-past", SessionStatus::Revoked),
        ] {
            let stored = db.get_session(id).await.unwrap().unwrap();
            assert_eq!(stored.status, status, "{backend}: {id}");
        }
        let active: Vec<String> = db
            .list_active_sessions(None)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.execution_id)
            .collect();
        assert_eq!(active, ["live"], "{backend}");
        // Nothing left to mark: the sweep is idempotent.
        assert_eq!(db.expire_sessions(now).await.unwrap(), 0, "{backend}");
    }
}
