//! `aegis-seal-gateway audit verify` and `audit purge`, the real binary against real databases of
//! both kinds: an intact trail passes; one edited payload byte, a removed row, a truncated end or
//! a checkpoint signed by another key fails, naming the row; retention keeps the trail verifiable.

mod support;

use std::process::{Command, Output};

use aegis_seal_gateway::infrastructure::persistence::{AuditEvent, CheckpointSigner, Database};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_aegis-seal-gateway");

fn key(seed: u8) -> (String, String) {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let private = key.to_pkcs8_pem(Default::default()).unwrap().to_string();
    let public = key
        .verifying_key()
        .to_public_key_pem(Default::default())
        .unwrap();
    (private, public)
}

fn audit(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("audit")
        .args(args)
        .env_remove("SEAL_GATEWAY_DB")
        .env_remove("SEAL_GATEWAY_AUDIT_CHECKPOINT_SIGNING_KEY_PEM")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn verify(url: &str, public_key: &str) -> (i32, String) {
    let out = audit(&["verify", "--database-url", url, "--public-key", public_key]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn event(n: u32, days_ago: i64) -> AuditEvent {
    let mut e = AuditEvent::from_json(
        "ToolCallAuthorized",
        json!({"execution_id": format!("exec-{n}"), "tool_name": "ok-tool", "tenant_id": "acme", "n": n, "ratio": 0.25}),
    );
    e.created_at -= chrono::Duration::days(days_ago);
    e
}

async fn execute(db: &Database, sql: &str) {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match db {
        Database::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        Database::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
    }
    .unwrap();
}

/// The SQL that replaces `from` with `to` in row `id`'s payload text.
fn edit_payload(db: &Database, id: i64, from: &str, to: &str) -> String {
    match db {
        Database::Sqlite(_) => format!(
            "UPDATE gateway_events SET payload = replace(payload, '{from}', '{to}') WHERE id = {id}"
        ),
        Database::Postgres(_) => format!(
            "UPDATE gateway_events SET payload = replace(payload::text, '{from}', '{to}')::jsonb WHERE id = {id}"
        ),
    }
}

#[tokio::test]
async fn verify_prints_its_verdict_alone_on_stdout_and_logs_on_stderr() {
    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        db.append_events(&[event(1, 0)]).await.unwrap();
        db.close().await;
        // At `info`, opening a migrated Postgres database logs sqlx's "already exists" notices.
        let out = Command::new(BIN)
            .args(["audit", "verify", "--database-url", &url])
            .env_remove("SEAL_GATEWAY_DB")
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{backend}: {stdout}");
        assert_eq!(stdout.lines().count(), 1, "{backend}: {stdout}");
        assert!(
            stdout.starts_with("audit trail intact: 1 chained rows"),
            "{backend}: {stdout}"
        );
        if backend == "postgres" {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("already exists"), "{backend}: {stderr}");
            assert!(
                !stderr.contains('\u{1b}'),
                "no colours into a pipe: {stderr}"
            );
        }
    }
}

#[tokio::test]
async fn verify_passes_on_an_intact_trail_and_names_the_first_broken_row() {
    let (private, public) = key(3);
    let (_, other_public) = key(4);
    let signer = CheckpointSigner::from_pem(&private).unwrap();
    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        // Three group commits, as the writer makes them; ids 1..=9.
        for group in [1..=2, 3..=7, 8..=9] {
            let events: Vec<_> = group.map(|n| event(n, 0)).collect();
            db.append_events(&events).await.unwrap();
        }
        assert_eq!(db.checkpoint_audit(&signer).await.unwrap(), Some(9));
        // Nothing new: no second checkpoint of the same head.
        assert_eq!(db.checkpoint_audit(&signer).await.unwrap(), None);

        let (code, text) = verify(&url, &public);
        assert_eq!(code, 0, "{backend}: {text}");
        assert!(
            text.contains("9 chained rows (ids 1..=9)"),
            "{backend}: {text}"
        );
        assert!(
            text.contains("1 checkpoints signed by the given key"),
            "{backend}: {text}"
        );

        // The runbook's queries still read the rows.
        let runbook = "SELECT payload FROM gateway_events WHERE event_type = 'ToolCallAuthorized' AND payload->>'execution_id' = 'exec-4' ORDER BY created_at DESC LIMIT 1;";
        execute(&db, runbook).await;

        // A checkpoint signed by another key than the trusted one.
        let (code, text) = verify(&url, &other_public);
        assert_eq!(code, 1, "{backend}: {text}");
        assert!(
            text.contains("audit_checkpoints row id=1: signed by another key"),
            "{backend}: {text}"
        );

        // One payload byte edited.
        execute(&db, &edit_payload(&db, 4, "exec-4", "exec-X")).await;
        let (code, text) = verify(&url, &public);
        assert_eq!(code, 1, "{backend}: {text}");
        assert!(
            text.contains("gateway_events row id=4: its contents do not match its hash"),
            "{backend}: {text}"
        );
        // Put back, the trail is intact again: the check reads what is stored, nothing else.
        execute(&db, &edit_payload(&db, 4, "exec-X", "exec-4")).await;
        assert_eq!(verify(&url, &public).0, 0, "{backend}");

        // A row removed from the middle: the next row names the gap.
        execute(&db, "DELETE FROM gateway_events WHERE id = 6").await;
        let (code, text) = verify(&url, &public);
        assert_eq!(code, 1, "{backend}: {text}");
        assert!(
            text.contains("gateway_events row id=7: prev_hash is not the previous row's hash"),
            "{backend}: {text}"
        );
        db.close().await;
    }
}

#[tokio::test]
async fn removing_the_end_of_a_checkpointed_trail_is_detected() {
    let (private, public) = key(5);
    let signer = CheckpointSigner::from_pem(&private).unwrap();
    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        let events: Vec<_> = (1..=5).map(|n| event(n, 0)).collect();
        db.append_events(&events).await.unwrap();
        db.checkpoint_audit(&signer).await.unwrap();
        execute(&db, "DELETE FROM gateway_events WHERE id >= 4").await;
        let (code, text) = verify(&url, &public);
        assert_eq!(code, 1, "{backend}: {text}");
        assert!(
            text.contains(
                "gateway_events row id=5: checkpoint 1 signed this row, but the table ends at row 3"
            ),
            "{backend}: {text}"
        );
        db.close().await;
    }
}

#[tokio::test]
async fn purge_removes_old_events_in_batches_and_the_trail_still_verifies() {
    let (private, public) = key(6);
    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        // Five events 40 days old, then three of today.
        let mut events: Vec<_> = (1..=5).map(|n| event(n, 40)).collect();
        events.extend((6..=8).map(|n| event(n, 0)));
        db.append_events(&events).await.unwrap();

        let before = (chrono::Utc::now() - chrono::Duration::days(30)).to_rfc3339();
        let out = Command::new(BIN)
            .args([
                "audit",
                "purge",
                "--database-url",
                &url,
                "--before",
                &before,
            ])
            .args(["--batch-size", "2"])
            .env("SEAL_GATEWAY_AUDIT_CHECKPOINT_SIGNING_KEY_PEM", &private)
            .env_remove("SEAL_GATEWAY_DB")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{backend}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("purged 5 audit events"),
            "{backend}: {stdout}"
        );

        let (code, text) = verify(&url, &public);
        assert_eq!(code, 0, "{backend}: {text}");
        assert!(
            text.contains("3 chained rows (ids 6..=8)"),
            "{backend}: {text}"
        );
        // Batches of two: three purge checkpoints.
        assert!(text.contains("3 checkpoints"), "{backend}: {text}");
        assert!(
            text.contains("5 events purged by retention"),
            "{backend}: {text}"
        );

        // Appending after a purge continues the chain.
        db.append_events(&[event(9, 0)]).await.unwrap();
        assert_eq!(verify(&url, &public).0, 0, "{backend}");

        // Removing the oldest remaining row outside retention is not a purge.
        execute(&db, "DELETE FROM gateway_events WHERE id = 6").await;
        let (code, text) = verify(&url, &public);
        assert_eq!(code, 1, "{backend}: {text}");
        assert!(
            text.contains("gateway_events row id=7: prev_hash is not the hash the latest purge checkpoint recorded"),
            "{backend}: {text}"
        );
        db.close().await;
    }
}

#[test]
fn verify_fails_with_exit_code_two_when_the_database_cannot_be_read() {
    let out = audit(&[
        "verify",
        "--database-url",
        "postgres://nobody@127.0.0.1:1/none",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let dir = tempfile::tempdir().unwrap();
    let missing = format!("sqlite://{}/missing.db", dir.path().display());
    let out = audit(&["verify", "--database-url", &missing]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such SQLite database"),
        "{out:?}"
    );
    assert!(
        !dir.path().join("missing.db").exists(),
        "verify created the file"
    );
}

/// Replicas on one Postgres database: two pools commit concurrently, and the advisory lock keeps
/// one chain in id order.
#[tokio::test]
async fn concurrent_writers_on_postgres_keep_one_chain() {
    let url = support::fresh_postgres_url().await;
    let replicas = [
        Database::connect(&url).await.unwrap(),
        Database::connect(&url).await.unwrap(),
    ];
    let mut tasks = Vec::new();
    for (r, db) in replicas.iter().enumerate() {
        for group in 0..20u32 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let events: Vec<_> = (0..5)
                    .map(|n| event(r as u32 * 1000 + group * 10 + n, 0))
                    .collect();
                db.append_events(&events).await.unwrap();
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = replicas[0].verify_audit(None).await.unwrap().unwrap();
    assert_eq!(report.rows, 200);
    assert_eq!((report.first_id, report.last_id), (Some(1), Some(200)));
    for db in replicas {
        db.close().await;
    }
}

/// U+0000, which Postgres `jsonb` and `text` refuse, is stored as U+FFFD on both backends, in the
/// payload and the tenant column alike: the group it is in commits, and the trail verifies.
#[tokio::test]
async fn a_nul_in_an_event_is_stored_as_a_replacement_character() {
    let (_, public) = key(5);
    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        let events = [
            AuditEvent::from_json(
                "PolicyViolationBlocked",
                json!({"execution_id": "exec-nul", "tool_name": "x\u{0}y", "tenant_id": "t\u{0}",
                       "shape": {"k\u{0}": ["\u{0}"]}}),
            ),
            event(1, 0),
        ];
        db.append_events(&events).await.unwrap();
        let (payload, tenant): (String, Option<String>) = match &db {
            Database::Sqlite(p) => sqlx::query_as(
                "SELECT payload, tenant_id FROM gateway_events WHERE event_type = 'PolicyViolationBlocked'",
            )
            .fetch_one(p)
            .await
            .unwrap(),
            Database::Postgres(p) => sqlx::query_as(
                "SELECT payload::text, tenant_id FROM gateway_events WHERE event_type = 'PolicyViolationBlocked'",
            )
            .fetch_one(p)
            .await
            .unwrap(),
        };
        let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(
            payload,
            json!({"execution_id": "exec-nul", "tool_name": "x\u{fffd}y", "tenant_id": "t\u{fffd}",
                   "shape": {"k\u{fffd}": ["\u{fffd}"]}}),
            "{backend}"
        );
        assert_eq!(tenant.as_deref(), Some("t\u{fffd}"), "{backend}");
        let (code, text) = verify(&url, &public);
        assert_eq!(code, 0, "{backend}: {text}");
    }
}
