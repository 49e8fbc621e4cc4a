//! No lost events: the data plane binary is killed with SIGKILL while it serves signed workflow
//! invocations sent at a fixed rate. After a restart on the same database, every invocation that
//! received a 2xx has all its audit events, and the hash chain verifies. SQLite and Postgres.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use aegis_seal_gateway::infrastructure::persistence::Database;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::json;
use sqlx::Row;
use tokio::sync::Mutex;

const BIN: &str = env!("CARGO_BIN_EXE_aegis-seal-gateway");
/// Invocations prepared, each with a session of its own so its events can be told apart.
const INVOCATIONS: usize = 600;
/// The gateway is killed once this many invocations have been answered 2xx.
const KILL_AFTER_OK: usize = 150;
/// The load generator's fixed rate: one request every 4 ms (250 per second).
const INTERVAL: Duration = Duration::from_millis(4);
/// What every successful workflow invocation writes.
const EVENT_TYPES: [&str; 4] = [
    "ToolCallAuthorized",
    "WorkflowInvocationStarted",
    "WorkflowStepExecuted",
    "WorkflowInvocationCompleted",
];

/// POST /ok answers `{"id": 7}`.
async fn upstream() -> SocketAddr {
    support::serve(|_req| async { http::Response::new(Full::new(Bytes::from(r#"{"id": 7}"#))) })
        .await
}

fn write_manifests(dir: &Path, upstream: SocketAddr) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("tools.yaml"),
        format!(
            r#"
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: ok-tool}}
spec:
  api_spec:
    base_url: http://{upstream}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/ok: {{post: {{operationId: ok}}}}}}}}}}
  steps: [{{name: call, operation_id: ok, extractors: {{id: "$.id"}}}}]
"#
        ),
    )
    .unwrap();
}

fn start_gateway(dir: &Path, url: &str, port: u16, token_key_pem: &str) -> Child {
    Command::new(BIN)
        .args(["--no-watch", "--manifests"])
        .arg(dir.join("manifests"))
        .current_dir(dir)
        .env_clear()
        .env("HOME", dir)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("SEAL_GATEWAY_BIND", format!("127.0.0.1:{port}"))
        .env("SEAL_GATEWAY_AUTH_DISABLED", "true")
        .env("SEAL_GATEWAY_DB", url)
        .env("SEAL_GATEWAY_SEAL_JWT_PUBLIC_KEY_PEM", token_key_pem)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_healthy(child: &mut Child, client: &reqwest::Client, base: &str) {
    for _ in 0..600 {
        if let Ok(r) = client.get(format!("{base}/health")).send().await
            && r.status().is_success()
        {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("gateway exited early with {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway not healthy within 30 s");
}

/// Event types per execution id.
async fn events_by_execution(db: &Database) -> BTreeMap<String, BTreeSet<String>> {
    const SQL: &str = "SELECT payload->>'execution_id', event_type FROM gateway_events";
    let rows: Vec<(Option<String>, String)> = match db {
        Database::Sqlite(p) => sqlx::query(SQL)
            .fetch_all(p)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect(),
        Database::Postgres(p) => sqlx::query(SQL)
            .fetch_all(p)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect(),
    };
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (execution, event_type) in rows {
        if let Some(execution) = execution {
            out.entry(execution).or_default().insert(event_type);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_invocation_keeps_its_events_across_kill_9() {
    let upstream = upstream().await;
    let mut signer = support::Signer::from_vectors();
    for (backend, url, dir) in support::both_backends().await {
        let dir = dir.path();
        write_manifests(&dir.join("manifests"), upstream);

        // Sessions and envelopes prepared up front, so the load is only the requests.
        let db = Database::connect(&url).await.unwrap();
        let now = chrono::Utc::now();
        let mut envelopes = Vec::with_capacity(INVOCATIONS);
        for i in 0..INVOCATIONS {
            let execution_id = format!("crash-{backend}-{i}");
            signer.session["execution_id"] = json!(execution_id);
            db.upsert_session(&signer.session_record(now))
                .await
                .unwrap();
            let body = signer.envelope(
                "ok-tool",
                json!({}),
                &format!("jti-{execution_id}"),
                now.timestamp(),
            );
            envelopes.push((execution_id, body));
        }
        db.close().await;

        let port = support::free_port();
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut gateway = start_gateway(dir, &url, port, &signer.rs256_public_key_pem);
        wait_healthy(&mut gateway, &client, &base).await;

        // Fixed-rate load; the gateway is killed mid-stream, with requests in flight.
        let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
        let (killed_tx, mut killed) = tokio::sync::watch::channel(false);
        let mut tick = tokio::time::interval(INTERVAL);
        let mut in_flight = Vec::new();
        let gateway = Arc::new(std::sync::Mutex::new(gateway));
        for (execution_id, body) in envelopes {
            tick.tick().await;
            if *killed.borrow_and_update() {
                break;
            }
            let (client, base, acknowledged, gateway, killed_tx) = (
                client.clone(),
                base.clone(),
                acknowledged.clone(),
                gateway.clone(),
                killed_tx.clone(),
            );
            in_flight.push(tokio::spawn(async move {
                let ok = client
                    .post(format!("{base}/v1/invoke"))
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    let mut acked = acknowledged.lock().await;
                    acked.push(execution_id);
                    if acked.len() == KILL_AFTER_OK {
                        // SIGKILL: no drain, no flush, no shutdown hook.
                        gateway.lock().unwrap().kill().unwrap();
                        let _ = killed_tx.send(true);
                    }
                }
            }));
        }
        for task in in_flight {
            task.await.unwrap();
        }
        let acknowledged = acknowledged.lock().await.clone();
        assert!(
            *killed.borrow(),
            "{backend}: the gateway was never killed: only {} of {INVOCATIONS} invocations succeeded",
            acknowledged.len()
        );
        gateway.lock().unwrap().wait().unwrap();

        // Restart on the same database, then stop it properly.
        let mut restarted = start_gateway(dir, &url, port, &signer.rs256_public_key_pem);
        wait_healthy(&mut restarted, &client, &base).await;
        Command::new("kill")
            .args(["-TERM", &restarted.id().to_string()])
            .status()
            .unwrap();
        assert!(restarted.wait().unwrap().success(), "{backend}");

        let db = Database::connect(&url).await.unwrap();
        let stored = events_by_execution(&db).await;
        db.close().await;
        let expected: BTreeSet<String> = EVENT_TYPES.iter().map(|t| t.to_string()).collect();
        let lost: Vec<&String> = acknowledged
            .iter()
            .filter(|id| stored.get(*id) != Some(&expected))
            .collect();
        assert!(
            lost.is_empty(),
            "{backend}: {} of {} acknowledged invocations lack events, e.g. {:?}: {:?}",
            lost.len(),
            acknowledged.len(),
            lost[0],
            stored.get(lost[0])
        );

        // The chain survived the crash too.
        let out = Command::new(BIN)
            .args(["audit", "verify", "--database-url", &url])
            .env_remove("SEAL_GATEWAY_DB")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{backend}: {stdout}");
        assert!(stdout.contains("audit trail intact"), "{backend}: {stdout}");
    }
}
