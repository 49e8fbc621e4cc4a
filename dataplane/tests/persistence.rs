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

/// The previous release starts on a database the next one has migrated (a rolling upgrade's old
/// replica restarting, or a rollback): a migration it does not know is not an error.
#[tokio::test]
async fn a_database_migrated_by_a_newer_release_still_opens_on_both_backends() {
    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        let newer = "INSERT INTO _sqlx_migrations \
                     (version, description, success, checksum, execution_time) \
                     VALUES (99990101, 'from a newer release', TRUE, $1, 1)";
        match &db {
            Database::Sqlite(p) => sqlx::query(newer)
                .bind(vec![0u8])
                .execute(p)
                .await
                .map(|_| ()),
            Database::Postgres(p) => sqlx::query(newer)
                .bind(vec![0u8])
                .execute(p)
                .await
                .map(|_| ()),
        }
        .unwrap();
        db.close().await;
        let db = Database::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{backend}: {e}"));
        db.ping().await.unwrap();
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
        if backend == "sqlite" {
            // The schema's fixed width (`...T01:02:03.456789Z`), so that times sort as text.
            let created = query_text(
                &db,
                "SELECT created_at FROM workflows WHERE source = 'manifest'",
            )
            .await;
            let created = created[0][0].as_deref().unwrap();
            assert_eq!(
                created.len(),
                "2026-11-29T01:02:03.456789Z".len(),
                "{created}"
            );
            assert!(created.ends_with('Z'), "{created}");
        }

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
async fn a_large_catalog_is_mirrored_in_full_and_a_name_given_twice_keeps_its_last_entry_on_both_backends()
 {
    let mut snapshot = support::snapshot_of(CATALOG);
    let template = snapshot.workflows[0].clone();
    // More rows than one statement writes (500), so the sync takes several, and a tenant-less one.
    for i in 0..1_201 {
        let mut workflow = template.clone();
        workflow.tool_name = format!("tool_{i}");
        workflow.source.name = format!("tool-{i}");
        workflow.tenant_id = (i % 2 == 0).then(|| "acme".to_owned());
        snapshot.workflows.push(workflow);
    }
    // Compiling refuses a name defined twice, but a snapshot built otherwise may hold one: the
    // later entry wins, as it did when each entry was its own statement.
    let mut again = template.clone();
    again.description = "the later one".into();
    again.source.name = "echo-message-again".into();
    snapshot.workflows.push(again.clone());
    let mut context_again = snapshot.security_contexts[0].clone();
    context_again.description = "the later context".into();
    snapshot.security_contexts.push(context_again);

    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        for _ in 0..2 {
            db.sync_catalog(&snapshot, CatalogSource::Manifest)
                .await
                .unwrap();
            let count = query_text(
                &db,
                "SELECT CAST(COUNT(*) AS TEXT) FROM workflows WHERE source = 'manifest'",
            )
            .await;
            assert_eq!(count, [[Some("1202".into())]], "{backend}");
        }
        let rows = query_text(
            &db,
            "SELECT id, description FROM workflows WHERE name = 'echo_message'",
        )
        .await;
        assert_eq!(
            rows,
            [[
                Some(aegis_seal_gateway::infrastructure::persistence::row_id(
                    &again.source
                )),
                Some("the later one".into())
            ]],
            "{backend}"
        );
        let rows = query_text(
            &db,
            "SELECT tenant_id, steps->0->>'name' FROM workflows WHERE name IN ('tool_0', 'tool_1199', 'tool_1200') ORDER BY name",
        )
        .await;
        assert_eq!(
            rows,
            [
                [Some("acme".into()), Some("echo".into())],
                [None, Some("echo".into())],
                [Some("acme".into()), Some("echo".into())]
            ],
            "{backend}"
        );
        let rows = query_text(&db, "SELECT description FROM security_contexts").await;
        assert_eq!(rows, [[Some("the later context".into())]], "{backend}");
        db.close().await;
    }
}

/// Logs each row the catalog sync inserts, updates or deletes in `workflows` into `writes`.
const LOG_WORKFLOW_WRITES_SQLITE: &str = "
CREATE TABLE writes (seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, name TEXT NOT NULL);
CREATE TRIGGER log_insert AFTER INSERT ON workflows BEGIN INSERT INTO writes (op, name) VALUES ('insert', new.name); END;
CREATE TRIGGER log_update AFTER UPDATE ON workflows BEGIN INSERT INTO writes (op, name) VALUES ('update', new.name); END;
CREATE TRIGGER log_delete AFTER DELETE ON workflows BEGIN INSERT INTO writes (op, name) VALUES ('delete', old.name); END;
";
const LOG_WORKFLOW_WRITES_POSTGRES: &str = "
CREATE TABLE writes (seq BIGSERIAL PRIMARY KEY, op TEXT NOT NULL, name TEXT NOT NULL);
CREATE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO writes (op, name) VALUES (lower(TG_OP), CASE WHEN TG_OP = 'DELETE' THEN OLD.name ELSE NEW.name END);
    RETURN NULL;
END $$;
CREATE TRIGGER log_write AFTER INSERT OR UPDATE OR DELETE ON workflows FOR EACH ROW EXECUTE FUNCTION log_write();
";

#[tokio::test]
async fn a_reload_writes_only_the_catalog_rows_that_changed_on_both_backends() {
    let mut snapshot = support::snapshot_of(CATALOG);
    let template = snapshot.workflows.remove(0);
    for i in 0..5 {
        let mut workflow = template.clone();
        workflow.tool_name = format!("tool_{i}");
        workflow.source.name = format!("tool-{i}");
        workflow.tenant_id = (i % 2 == 0).then(|| "acme".to_owned());
        snapshot.workflows.push(workflow);
    }
    // The next reload: one description changed, one workflow gone, one renamed (the same
    // resource, so the same row id, under another name), one new.
    let mut next = snapshot.clone();
    next.workflows[1].description = "changed".into();
    next.workflows[3].tool_name = "tool_3_renamed".into();
    next.workflows.remove(2);
    let mut added = template.clone();
    added.tool_name = "tool_5".into();
    added.source.name = "tool-5".into();
    next.workflows.push(added);

    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        match &db {
            Database::Sqlite(pool) => {
                sqlx::raw_sql(LOG_WORKFLOW_WRITES_SQLITE)
                    .execute(pool)
                    .await
                    .unwrap();
            }
            Database::Postgres(pool) => {
                sqlx::raw_sql(LOG_WORKFLOW_WRITES_POSTGRES)
                    .execute(pool)
                    .await
                    .unwrap();
            }
        }
        // Reads and empties the log.
        let writes = async || {
            let rows = query_text(&db, "SELECT op, name FROM writes ORDER BY seq").await;
            query_text(&db, "DELETE FROM writes").await;
            rows.into_iter()
                .map(|row| {
                    format!(
                        "{} {}",
                        row[0].as_deref().unwrap(),
                        row[1].as_deref().unwrap()
                    )
                })
                .collect::<Vec<_>>()
        };

        db.sync_catalog(&snapshot, CatalogSource::Manifest)
            .await
            .unwrap();
        assert_eq!(writes().await.len(), 5, "{backend}: five inserts");
        let created = query_text(&db, "SELECT name, created_at FROM workflows ORDER BY name").await;

        // The same snapshot again (every replica reloads it): no row is written.
        db.sync_catalog(&snapshot, CatalogSource::Manifest)
            .await
            .unwrap();
        assert_eq!(writes().await, Vec::<String>::new(), "{backend}");

        db.sync_catalog(&next, CatalogSource::Manifest)
            .await
            .unwrap();
        let mut written = writes().await;
        written.sort();
        assert_eq!(
            written,
            [
                "delete tool_2",
                "delete tool_3",
                "insert tool_3_renamed",
                "insert tool_5",
                "update tool_1",
            ],
            "{backend}"
        );
        let rows = query_text(
            &db,
            "SELECT name, description, id FROM workflows ORDER BY name",
        )
        .await;
        let names: Vec<_> = rows.iter().map(|row| row[0].as_deref().unwrap()).collect();
        assert_eq!(
            names,
            ["tool_0", "tool_1", "tool_3_renamed", "tool_4", "tool_5"],
            "{backend}"
        );
        assert_eq!(rows[1][1].as_deref(), Some("changed"), "{backend}");
        assert_eq!(
            rows[2][2],
            Some(aegis_seal_gateway::infrastructure::persistence::row_id(
                &next.workflows[2].source
            )),
            "{backend}: the renamed row keeps its resource's id"
        );
        // Rows left alone keep when they were first mirrored.
        let created_now =
            query_text(&db, "SELECT name, created_at FROM workflows ORDER BY name").await;
        for name in ["tool_0", "tool_1", "tool_4"] {
            let find = |rows: &[Vec<Option<String>>]| {
                rows.iter()
                    .find(|row| row[0].as_deref() == Some(name))
                    .cloned()
            };
            assert_eq!(find(&created_now), find(&created), "{backend}: {name}");
        }
        db.close().await;
    }
}

/// Another connection (the audit writer, a REST change, the jti sweep) holds SQLite's write lock
/// and writes while a reload's sync starts: the sync waits for it and commits. A sync that read
/// the catalog before taking the lock could not write once the other connection had committed,
/// and the reload was refused with "database is locked".
#[tokio::test]
async fn a_catalog_sync_waits_for_another_writer_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("gateway.db").display());
    let db = Database::connect(&url).await.unwrap();
    let Database::Sqlite(pool) = &db else {
        unreachable!("a SQLite URL")
    };
    sqlx::raw_sql("CREATE TABLE other_writes (n INTEGER)")
        .execute(pool)
        .await
        .unwrap();
    let mut other = pool.acquire().await.unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE; INSERT INTO other_writes VALUES (1)")
        .execute(&mut *other)
        .await
        .unwrap();

    let snapshot = support::snapshot_of(CATALOG);
    let sync = tokio::spawn({
        let db = db.clone();
        async move { db.sync_catalog(&snapshot, CatalogSource::Manifest).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::raw_sql("COMMIT").execute(&mut *other).await.unwrap();
    drop(other);

    let sync = sync
        .await
        .unwrap()
        .expect("the sync waits out the other writer");
    assert_eq!(sync.workflows, 1);
    let mirrored = query_text(&db, "SELECT name FROM workflows").await;
    assert_eq!(mirrored, [[Some("echo_message".to_owned())]]);
    db.close().await;
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

/// Every `seen_jtis` row, jti -> `expires_at`, read back through each backend's own column type.
async fn stored_jtis(
    db: &Database,
) -> std::collections::BTreeMap<String, chrono::DateTime<chrono::Utc>> {
    match db {
        Database::Sqlite(pool) => {
            sqlx::query_as::<_, (String, String)>("SELECT jti, expires_at FROM seen_jtis")
                .fetch_all(pool)
                .await
                .unwrap()
                .into_iter()
                .map(|(jti, text)| {
                    let at = chrono::DateTime::parse_from_rfc3339(&text)
                        .unwrap_or_else(|e| panic!("{jti}: {text:?} is not RFC 3339: {e}"));
                    (jti, at.with_timezone(&chrono::Utc))
                })
                .collect()
        }
        Database::Postgres(pool) => sqlx::query_as::<_, (String, chrono::DateTime<chrono::Utc>)>(
            "SELECT jti, expires_at FROM seen_jtis",
        )
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect(),
    }
}

/// `Utc::now()` at the microsecond, the precision both backends store.
fn now_micros() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(chrono::Utc::now().timestamp_micros()).unwrap()
}

#[tokio::test]
async fn a_used_jti_is_stored_until_the_later_of_envelope_time_and_now_plus_31_s_on_both_backends()
{
    use aegis_seal_gateway::application::clock::Clock;
    use aegis_seal_gateway::gateway::RunningGateway;

    let signer = support::Signer::from_vectors();
    // A quarter second past a whole second: the envelope's whole-second timestamp of "now" is
    // earlier than now, so `max(envelope, now)` must pick now, sub-second part included.
    let now =
        chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 250_000_000).unwrap();
    let whole = now.timestamp();
    // Fresh while less than 31 s from now (30 whole seconds, truncated, as upstream): the row
    // must live as long, or a replay in the last second would find it expired.
    let window = chrono::Duration::seconds(31);
    let at = |secs: i64| chrono::DateTime::from_timestamp(secs, 0).unwrap();
    // (jti suffix, envelope timestamp, expected `expires_at`). Spec §1.7 TARGET:
    // `max(envelope_ts, now) + the freshness window`, not upstream's `min(session.expires_at, now + 30 s)`, and
    // not the token's `exp` (the signer's tokens expire an hour after `now`).
    let cases = [
        ("dated-now", whole, now + window),
        ("dated-25s-ago", whole - 25, now + window),
        ("dated-20s-ahead", whole + 20, at(whole + 20) + window),
        ("dated-30s-ahead", whole + 30, at(whole + 30) + window),
    ];
    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        db.upsert_session(&signer.session_record(now))
            .await
            .unwrap();
        let config = signer.gateway_config(&[]);
        let gateway = RunningGateway::start(&config, db, Default::default(), Clock::fixed(now))
            .await
            .unwrap();
        let client = reqwest::Client::new();
        let run = uuid::Uuid::new_v4();
        for (name, timestamp, _) in &cases {
            let jti = format!("{run}-{name}");
            let envelope = signer.envelope("no_such_tool", json!({}), &jti, *timestamp);
            let response = client
                .post(format!("http://{}/v1/invoke", gateway.local_addr))
                .header("content-type", "application/json")
                .body(envelope)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            // Past the replay check (the jti is recorded), then no such tool.
            assert_eq!(status, 404, "{backend}: {name}: {body}");
        }
        // Shutdown writes the jtis still pending (SQLite) and closes the shared pool.
        gateway.shutdown().await;

        let db = Database::connect(&url).await.unwrap();
        let stored = stored_jtis(&db).await;
        for (name, _, expected) in &cases {
            let jti = format!("{run}-{name}");
            assert_eq!(
                stored.get(&jti),
                Some(expected),
                "{backend}: {name}: expires_at (now = {now})"
            );
        }
        assert_eq!(stored.len(), cases.len(), "{backend}: {stored:?}");
        db.close().await;
    }
}

#[tokio::test]
async fn the_jti_sweep_drains_more_than_a_batch_keeps_live_rows_and_is_idempotent_on_both_backends()
{
    // `SWEEP_BATCH` (1000, src/infrastructure/persistence/replay.rs:22) is `pub` in a private
    // module and not re-exported, so the batch size is read from the source: 2,500 expired rows
    // take two full batches and a partial one; 1,000 more take exactly one full batch and an
    // empty one.
    const SWEEP_BATCH: usize = 1000;
    const EXPIRED: usize = SWEEP_BATCH * 5 / 2;
    const LIVE: usize = 700;
    const DUE_NOW: usize = 3;

    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        let now = now_micros();
        let micro = chrono::Duration::microseconds(1);
        let mut rows = Vec::new();
        for i in 0..EXPIRED as i64 {
            // The newest expired row is one microsecond before `now`; the oldest ~42 min before.
            rows.push((
                format!("expired-{i}"),
                now - micro - chrono::Duration::seconds(i),
            ));
        }
        for i in 0..DUE_NOW {
            rows.push((format!("due-now-{i}"), now));
        }
        for i in 0..LIVE as i64 {
            rows.push((
                format!("live-{i}"),
                now + micro + chrono::Duration::seconds(i),
            ));
        }
        let recorded_at = now - chrono::Duration::days(1);
        for chunk in rows.chunks(500) {
            let new = db.record_jtis(chunk, recorded_at).await.unwrap();
            assert!(new.iter().all(|n| *n), "{backend}: every row is new");
        }
        assert_eq!(
            stored_jtis(&db).await.len(),
            EXPIRED + DUE_NOW + LIVE,
            "{backend}"
        );

        assert_eq!(
            db.sweep_expired_jtis(now).await.unwrap(),
            EXPIRED as u64,
            "{backend}: every expired row, across batches"
        );
        let stored = stored_jtis(&db).await;
        let expected: std::collections::BTreeMap<_, _> = rows[EXPIRED..].iter().cloned().collect();
        // The comparison is `expires_at < now`: a row expiring exactly at `now` is kept.
        assert_eq!(
            stored, expected,
            "{backend}: live and due-now rows kept, unchanged"
        );
        assert_eq!(
            db.sweep_expired_jtis(now).await.unwrap(),
            0,
            "{backend}: idempotent"
        );

        // One microsecond later the due-now rows are expired, and only they go.
        assert_eq!(
            db.sweep_expired_jtis(now + micro).await.unwrap(),
            DUE_NOW as u64,
            "{backend}"
        );
        let stored = stored_jtis(&db).await;
        assert_eq!(stored.len(), LIVE, "{backend}");
        assert!(stored.keys().all(|k| k.starts_with("live-")), "{backend}");

        // Exactly one full batch: the loop must run the empty batch after it and count 1,000.
        let more: Vec<_> = (0..SWEEP_BATCH as i64)
            .map(|i| (format!("again-{i}"), now - chrono::Duration::seconds(i + 1)))
            .collect();
        for chunk in more.chunks(500) {
            db.record_jtis(chunk, recorded_at).await.unwrap();
        }
        assert_eq!(
            db.sweep_expired_jtis(now).await.unwrap(),
            SWEEP_BATCH as u64,
            "{backend}"
        );
        assert_eq!(db.sweep_expired_jtis(now).await.unwrap(), 0, "{backend}");
        assert_eq!(stored_jtis(&db).await.len(), LIVE, "{backend}");
        db.close().await;
    }
}

#[tokio::test]
async fn pool_settings_are_the_references_and_connect_applies_them_on_both_backends() {
    // Spec §9.1 / parity #12: 50 connections, 5 kept warm, 5 s acquire, 600 s idle.
    assert_eq!(
        PoolSettings::POSTGRES,
        PoolSettings {
            max_connections: 50,
            min_connections: 5,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
        }
    );
    // As documented in src/infrastructure/persistence/mod.rs: a few readers beside the single
    // writer, with the same short acquire timeout (starvation surfaces fast).
    assert_eq!(
        PoolSettings::SQLITE,
        PoolSettings {
            max_connections: 8,
            min_connections: 1,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
        }
    );
    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        let expected = match backend {
            "postgres" => PoolSettings::POSTGRES,
            _ => PoolSettings::SQLITE,
        };
        let applied = match &db {
            Database::Sqlite(pool) => {
                let o = pool.options();
                (
                    o.get_max_connections(),
                    o.get_min_connections(),
                    o.get_acquire_timeout(),
                    o.get_idle_timeout(),
                )
            }
            Database::Postgres(pool) => {
                let o = pool.options();
                (
                    o.get_max_connections(),
                    o.get_min_connections(),
                    o.get_acquire_timeout(),
                    o.get_idle_timeout(),
                )
            }
        };
        assert_eq!(
            applied,
            (
                expected.max_connections,
                expected.min_connections,
                expected.acquire_timeout,
                Some(expected.idle_timeout)
            ),
            "{backend}"
        );
        db.close().await;
    }
}

#[tokio::test]
async fn jtis_are_swept_every_30_s_starting_at_gateway_start_on_both_backends() {
    use aegis_seal_gateway::application::clock::Clock;
    use aegis_seal_gateway::gateway::{JTI_SWEEP_INTERVAL, RunningGateway};

    // Runbook: "The background sweep purges expired entries every 30 seconds."
    assert_eq!(JTI_SWEEP_INTERVAL, Duration::from_secs(30));

    // Spec §1.7: the first tick is immediate at startup.
    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        let now = now_micros();
        // Rows outlive their expiry by a minute (replay::SWEEP_GRACE): replicas' clocks differ.
        let expired = ("expired".to_owned(), now - chrono::Duration::seconds(61));
        let in_grace = ("in-grace".to_owned(), now - chrono::Duration::seconds(59));
        let live = ("live".to_owned(), now + chrono::Duration::minutes(5));
        db.record_jtis(
            &[expired, in_grace.clone(), live.clone()],
            now - chrono::Duration::hours(1),
        )
        .await
        .unwrap();
        let config = support::gateway_config(&[]);
        let gateway =
            RunningGateway::start(&config, db.clone(), Default::default(), Clock::fixed(now))
                .await
                .unwrap();
        // Far less than the interval: only the start-up sweep can have removed the row.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut stored = stored_jtis(&db).await;
        while stored.len() != 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            stored = stored_jtis(&db).await;
        }
        assert_eq!(
            stored,
            std::collections::BTreeMap::from([in_grace, live]),
            "{backend}: row expired past the grace swept at start, the others kept"
        );
        gateway.shutdown().await;
    }
}

/// A pooled connection of either backend, for statements the test runs beside the gateway's.
enum Holder {
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

impl Holder {
    async fn run(&mut self, sql: &'static str) {
        match self {
            Self::Sqlite(c) => sqlx::raw_sql(sql).execute(&mut **c).await.map(|_| ()),
            Self::Postgres(c) => sqlx::raw_sql(sql).execute(&mut **c).await.map(|_| ()),
        }
        .unwrap()
    }
}

/// The database refuses one caller's event (here a trigger; in production a value or size it
/// cannot store): the group it was in is committed again caller by caller, so only that caller
/// fails and everyone else's events are durable, in one intact chain, on both backends.
#[tokio::test]
async fn a_refused_event_fails_only_its_own_caller_in_a_group_on_both_backends() {
    use aegis_seal_gateway::infrastructure::metrics::Metrics;
    use aegis_seal_gateway::infrastructure::persistence::AuditWriter;

    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        // The lock the writer takes for a commit, held by another connection until released.
        let (refuse, hold, release) = match &db {
            Database::Sqlite(_) => (
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON gateway_events \
                 WHEN NEW.tenant_id = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END",
                "BEGIN IMMEDIATE",
                "COMMIT",
            ),
            Database::Postgres(_) => (
                "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN IF NEW.tenant_id = 'poison' THEN RAISE EXCEPTION 'poisoned row'; END IF; \
                 RETURN NEW; END $$; \
                 CREATE TRIGGER refuse_poison BEFORE INSERT ON gateway_events \
                 FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
                // The chain lock (audit_chain::CHAIN_LOCK_KEY).
                "BEGIN; SELECT pg_advisory_xact_lock(1587650769)",
                "COMMIT",
            ),
        };
        let mut holder = match &db {
            Database::Sqlite(pool) => {
                sqlx::raw_sql(refuse).execute(pool).await.unwrap();
                Holder::Sqlite(pool.acquire().await.unwrap())
            }
            Database::Postgres(pool) => {
                sqlx::raw_sql(refuse).execute(pool).await.unwrap();
                Holder::Postgres(pool.acquire().await.unwrap())
            }
        };
        let event_of = |n: u32, tenant: &str| {
            vec![event(
                "ToolCallAuthorized",
                json!({"execution_id": format!("exec-{n}"), "tenant_id": tenant}),
            )]
        };
        let metrics = Metrics::new();
        let writer = AuditWriter::start(db.clone(), metrics.clone(), None);

        // The first call's commit waits for the lock; six more queue behind it, and become one
        // group once it is released.
        holder.run(hold).await;
        let first = tokio::spawn({
            let writer = writer.clone();
            let call = event_of(0, "acme");
            async move { writer.write(call).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let calls: Vec<_> = (1..=6)
            .map(|n| {
                let writer = writer.clone();
                let call = event_of(n, if n == 3 { "poison" } else { "acme" });
                tokio::spawn(async move { writer.write(call).await })
            })
            .collect();
        for _ in 0..200 {
            if writer.queue_depth() == 6 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            writer.queue_depth(),
            6,
            "{backend}: the six calls are queued"
        );
        holder.run(release).await;
        drop(holder);

        first.await.unwrap().unwrap();
        for (n, call) in (1..=6).zip(calls) {
            let written = call.await.unwrap();
            if n == 3 {
                let e = written.expect_err("the refused event's caller fails");
                assert!(e.to_string().contains("poisoned row"), "{backend}: {e}");
            } else {
                written.unwrap_or_else(|e| panic!("{backend}: call {n} failed: {e}"));
            }
        }
        // The group failed once as a whole, then only the refused caller on its own.
        let text = metrics.encode(false);
        let count = |outcome: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!(
                        "aegis_seal_audit_commits_total{{outcome=\"{outcome}\"}} "
                    ))
                })
                .map(|n| n.parse::<u64>().unwrap())
        };
        assert_eq!(count("error"), Some(2), "{backend}:\n{text}");
        assert_eq!(count("ok"), Some(6), "{backend}:\n{text}");
        let report = db.verify_audit(None).await.unwrap().unwrap();
        assert_eq!(report.rows, 6, "{backend}");
        let stored: Vec<String> = query_text(
            &db,
            "SELECT payload->>'execution_id' FROM gateway_events ORDER BY id",
        )
        .await
        .into_iter()
        .map(|row| row[0].clone().unwrap())
        .collect();
        assert_eq!(stored.len(), 6, "{backend}");
        assert!(
            !stored.contains(&"exec-3".to_owned()),
            "{backend}: {stored:?}"
        );
    }
}

/// A REST row's write and the revision bump that tells the other replicas commit together (the
/// database does both), so no write can be stored unannounced; rows of manifests or custom
/// resources, rewritten on every snapshot, move nothing. On both backends.
#[tokio::test]
async fn rest_rows_move_the_catalog_revision_in_their_own_transaction_on_both_backends() {
    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        let revision = || async { db.catalog_revision().await.unwrap() };
        let start = revision().await;
        let steps: [(&str, i64); 6] = [
            (
                "INSERT INTO security_contexts (id, name, capabilities, source, created_at) VALUES ('r1', 'rest-ctx', '[]', 'rest', '2026-11-30T00:00:00Z')",
                1,
            ),
            (
                "UPDATE security_contexts SET description = 'changed' WHERE id = 'r1'",
                1,
            ),
            (
                "INSERT INTO security_contexts (id, name, capabilities, source, created_at) VALUES ('m1', 'manifest-ctx', '[]', 'manifest', '2026-11-30T00:00:00Z')",
                0,
            ),
            (
                "UPDATE security_contexts SET description = 'changed' WHERE id = 'm1'",
                0,
            ),
            ("DELETE FROM security_contexts WHERE source = 'manifest'", 0),
            ("DELETE FROM security_contexts WHERE id = 'r1'", 1),
        ];
        let mut expected = start;
        for (sql, moves) in steps {
            let query = sqlx::AssertSqlSafe(sql.to_owned());
            match &db {
                Database::Sqlite(p) => sqlx::query(query).execute(p).await.map(|_| ()),
                Database::Postgres(p) => sqlx::query(query).execute(p).await.map(|_| ()),
            }
            .unwrap();
            expected += moves;
            assert_eq!(revision().await, expected, "{backend}: after {sql}");
        }
        // A write whose transaction is rolled back announces nothing.
        match &db {
            Database::Sqlite(p) => {
                let mut tx = p.begin().await.unwrap();
                sqlx::query("INSERT INTO security_contexts (id, name, capabilities, source, created_at) VALUES ('r2', 'x', '[]', 'rest', '2026-11-30T00:00:00Z')")
                    .execute(&mut *tx).await.unwrap();
                tx.rollback().await.unwrap();
            }
            Database::Postgres(p) => {
                let mut tx = p.begin().await.unwrap();
                sqlx::query("INSERT INTO security_contexts (id, name, capabilities, source, created_at) VALUES ('r2', 'x', '[]', 'rest', '2026-11-30T00:00:00Z')")
                    .execute(&mut *tx).await.unwrap();
                tx.rollback().await.unwrap();
            }
        }
        assert_eq!(revision().await, expected, "{backend}: a rolled-back write");
    }
}

#[tokio::test]
async fn the_runbook_execution_id_lookup_uses_its_index_after_a_restart_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("gateway.db").display());
    let db = Database::connect(&url).await.unwrap();
    let failed: Vec<AuditEvent> = (0..500)
        .map(|i| {
            event(
                "WorkflowInvocationFailed",
                json!({"workflow_id": "w", "execution_id": format!("exec-{i}"),
                       "failed_step": "create", "reason": "upstream returned 500"}),
            )
        })
        .collect();
    db.append_events(&failed).await.unwrap();
    db.close().await;
    // A restart: the connections opened now gather the statistics the planner needs.
    let db = Database::connect(&url).await.unwrap();
    let Database::Sqlite(pool) = &db else {
        unreachable!("a SQLite URL")
    };
    let plan: Vec<String> = sqlx::query(
        "EXPLAIN QUERY PLAN SELECT payload FROM gateway_events \
         WHERE event_type = 'WorkflowInvocationFailed' AND payload->>'execution_id' = 'exec-7' \
         ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|row| row.get("detail"))
    .collect();
    assert!(
        plan.iter()
            .any(|step| step.contains("gateway_events_execution_id")),
        "{plan:?}"
    );
    db.close().await;
}

#[tokio::test]
async fn postgres_connections_name_the_gateway_in_pg_stat_activity() {
    let db = Database::connect(&support::fresh_postgres_url().await)
        .await
        .unwrap();
    let names = query_text(
        &db,
        "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    )
    .await;
    assert_eq!(names, [[Some("aegis-seal-gateway".to_owned())]]);
    db.close().await;
}
