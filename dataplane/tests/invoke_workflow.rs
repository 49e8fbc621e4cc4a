//! A signed invocation runs its workflow against a real upstream, on both backends, and leaves
//! the audit rows the runbook's queries read.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aegis_seal_gateway::application::clock::Clock;
use aegis_seal_gateway::gateway::RunningGateway;
use aegis_seal_gateway::infrastructure::persistence::Database;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};
use sqlx::Row;

/// POST /ok answers `{"id": 7}`; POST /fail answers 500.
async fn upstream() -> SocketAddr {
    support::serve(|req: http::Request<hyper::body::Incoming>| async move {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let (status, body) = match req.uri().path() {
            "/ok" => (200, r#"{"id": 7}"#.to_owned()),
            // Echoes the credential, as a careless upstream might.
            "/whoami" => (200, json!({"authorization": auth}).to_string()),
            // Refuses, echoing the credential so that it straddles the 512-byte excerpt a
            // failure reason quotes: it starts 10 bytes before the cut.
            "/denied" => (
                401,
                format!(r#"{{"pad":"{}","auth":"{auth}"}}"#, "x".repeat(477)),
            ),
            _ => (500, r#"{"message": "boom"}"#.to_owned()),
        };
        let mut response = http::Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        response
    })
    .await
}

fn manifests(base_url: &str) -> String {
    format!(
        r#"
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: ok-tool}}
spec:
  api_spec:
    base_url: {base_url}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/ok: {{post: {{operationId: ok}}}}}}}}}}
  steps: [{{name: call, operation_id: ok, body_template: '{{"x": {{{{json input.x}}}}}}', extractors: {{id: "$.id"}}}}]
---
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: failing-tool}}
spec:
  tenant_id: acme
  api_spec:
    base_url: {base_url}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/fail: {{post: {{operationId: fail}}}}}}}}}}
  steps: [{{name: create_repo, operation_id: fail}}]
"#
    )
}

async fn query_one(db: &Database, sql: &str) -> Option<String> {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match db {
        Database::Sqlite(p) => sqlx::query(sql)
            .fetch_optional(p)
            .await
            .unwrap()
            .map(|r| r.get::<String, _>(0)),
        Database::Postgres(p) => sqlx::query(sql)
            .fetch_optional(p)
            .await
            .unwrap()
            .map(|r| r.get::<sqlx::types::Json<Value>, _>(0).0.to_string()),
    }
}

/// POSTs `envelope` to the gateway's `/v1/invoke`.
async fn invoke(gateway: SocketAddr, envelope: String) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{gateway}/v1/invoke"))
        .body(envelope)
        .send()
        .await
        .unwrap()
}

/// [`invoke`]'s status and JSON body.
async fn invoke_json(gateway: SocketAddr, envelope: String) -> (u16, Value) {
    let response = invoke(gateway, envelope).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

/// A gateway on a fresh SQLite file serving `manifest`, with the vectors' session registered and
/// `config` beside the vectors' token key.
async fn sqlite_gateway(
    manifest: &str,
    config: &[(&str, &str)],
) -> (RunningGateway, Database, support::Signer, tempfile::TempDir) {
    let snapshot = support::snapshot_of(manifest);
    let signer = support::Signer::from_vectors();
    let dir = tempfile::tempdir().unwrap();
    let db = Database::connect(&support::sqlite_url(dir.path()))
        .await
        .unwrap();
    db.upsert_session(&signer.session_record(chrono::Utc::now()))
        .await
        .unwrap();
    let gateway = RunningGateway::start(
        &signer.gateway_config(config),
        db.clone(),
        snapshot,
        Clock::System,
    )
    .await
    .unwrap();
    (gateway, db, signer, dir)
}

#[tokio::test]
async fn workflows_run_and_failures_are_recorded_as_the_runbook_reads_them() {
    let upstream = upstream().await;
    let snapshot = support::snapshot_of(&manifests(&format!("http://{upstream}")));
    let signer = support::Signer::from_vectors();

    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        let now = chrono::Utc::now();
        db.upsert_session(&signer.session_record(now))
            .await
            .unwrap();
        db.sync_catalog(
            &snapshot,
            aegis_seal_gateway::infrastructure::persistence::CatalogSource::Manifest,
        )
        .await
        .unwrap();
        let config = signer.gateway_config(&[]);
        let gateway = RunningGateway::start(&config, db.clone(), snapshot.clone(), Clock::System)
            .await
            .unwrap();
        let base = format!("http://{}", gateway.local_addr);
        let client = reqwest::Client::new();
        let send = |tool: &str, jti: &str| {
            let body = signer.envelope(tool, json!({"x": "<&\">"}), jti, now.timestamp());
            invoke_json(gateway.local_addr, body)
        };

        let (status, body) = send("ok-tool", &format!("{backend}-ok")).await;
        assert_eq!(status, 200, "{backend}: {body}");
        assert_eq!(body["result"]["result"], json!({"id": 7}));
        assert_eq!(body["result"]["steps"]["call"]["id"], 7);

        // `ok-tool` is system-global: its events are the calling tenant's rows all the same, so
        // that tenant's operators can read them (GET /v1/events scopes by this column).
        let sql = "SELECT DISTINCT tenant_id FROM gateway_events WHERE event_type LIKE 'Workflow%'";
        let tenants: Vec<Option<String>> = match &db {
            Database::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(p).await.unwrap(),
            Database::Postgres(p) => sqlx::query_scalar(sql).fetch_all(p).await.unwrap(),
        };
        assert_eq!(
            tenants,
            [signer.session["tenant_id"].as_str().map(str::to_owned)],
            "{backend}"
        );
        assert!(tenants[0].is_some(), "{backend}: the session has a tenant");

        let (status, body) = send("failing-tool", &format!("{backend}-fail")).await;
        assert_eq!(status, 502, "{backend}: {body}");
        assert_eq!(body["failed_step"], "create_repo");

        let payload = query_one(
            &db,
            "SELECT payload FROM gateway_events WHERE event_type = 'WorkflowInvocationFailed' AND payload->>'execution_id' = 'exec-0001' ORDER BY created_at DESC LIMIT 1;",
        )
        .await
        .expect("a WorkflowInvocationFailed row");
        let payload: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(payload["failed_step"], "create_repo", "{backend}");
        let reason = payload["reason"].as_str().unwrap();
        assert!(reason.contains("500"), "{backend}: {reason}");

        let row = match &db {
            Database::Sqlite(p) => sqlx::query(
                "SELECT id, name, tenant_id FROM workflows WHERE name = 'failing-tool';",
            )
            .fetch_one(p)
            .await
            .unwrap()
            .get::<Option<String>, _>("tenant_id"),
            Database::Postgres(p) => sqlx::query(
                "SELECT id, name, tenant_id FROM workflows WHERE name = 'failing-tool';",
            )
            .fetch_one(p)
            .await
            .unwrap()
            .get::<Option<String>, _>("tenant_id"),
        };
        assert_eq!(row.as_deref(), Some("acme"), "{backend}");

        let tools: Value = client
            .get(format!("{base}/v1/tools"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let names: Vec<_> = tools
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["ok-tool", "failing-tool"], "{backend}");
        gateway.shutdown().await;
    }
}

#[tokio::test]
async fn an_openbao_kv_credential_reaches_the_upstream_and_never_the_agent() {
    let bao =
        std::env::var("BAO_ADDR").expect("BAO_ADDR: run scripts/test.sh, which starts OpenBao");
    let bao_token = std::env::var("BAO_TOKEN").expect("BAO_TOKEN");
    let secret = format!("kv-token-{}", uuid::Uuid::new_v4().simple());
    let client = reqwest::Client::new();
    let written = client
        .post(format!("{bao}/v1/secret/data/gateway-tests/whoami"))
        .header("X-Vault-Token", &bao_token)
        .json(&json!({"data": {"token": secret}}))
        .send()
        .await
        .unwrap();
    assert!(
        written.status().is_success(),
        "{}",
        written.text().await.unwrap()
    );

    // The same key in the session tenant's own prefix, for the tenant-owned copy below.
    let written = client
        .post(format!(
            "{bao}/v1/secret/data/tenant-acme/gateway-tests/whoami"
        ))
        .header("X-Vault-Token", &bao_token)
        .json(&json!({"data": {"token": format!("acme-{secret}")}}))
        .send()
        .await
        .unwrap();
    assert!(written.status().is_success());

    let upstream = upstream().await;
    let manifest = format!(
        r#"
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: whoami}}
spec:
  api_spec:
    base_url: http://{upstream}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/whoami: {{post: {{operationId: whoami}}}}}}}}}}
    credential_path: {{StaticRef: {{key: gateway-tests/whoami}}}}
  steps: [{{name: ask, operation_id: whoami}}]
---
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: acme-whoami}}
spec:
  tool_name: acme-whoami
  tenant_id: acme
  api_spec:
    base_url: http://{upstream}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/whoami: {{post: {{operationId: whoami}}}}}}}}}}
    credential_path: {{StaticRef: {{key: gateway-tests/whoami}}}}
  steps: [{{name: ask, operation_id: whoami}}]
---
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: denied}}
spec:
  api_spec:
    base_url: http://{upstream}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/denied: {{post: {{operationId: denied}}}}}}}}}}
    credential_path: {{StaticRef: {{key: gateway-tests/whoami}}}}
  steps: [{{name: ask, operation_id: denied}}]
---
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: keyless}}
spec:
  api_spec:
    base_url: http://{upstream}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/whoami: {{post: {{operationId: whoami}}}}}}}}}}
    credential_path: {{StaticRef: {{key: gateway-tests/no-such-key}}}}
  steps: [{{name: ask, operation_id: whoami}}]
"#
    );
    let (gateway, db, signer, _dir) = sqlite_gateway(
        &manifest,
        &[
            ("SEAL_GATEWAY_OPENBAO_ADDR", &bao),
            ("SEAL_GATEWAY_OPENBAO_TOKEN", &bao_token),
        ],
    )
    .await;
    let now = chrono::Utc::now();
    let body = signer.envelope("whoami", json!({}), "jti-whoami", now.timestamp());
    let r = invoke(gateway.local_addr, body).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains(&secret),
        "the agent saw the credential: {text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body["result"]["result"]["authorization"],
        "Bearer [REDACTED]"
    );

    let path = query_one(
        &db,
        "SELECT payload FROM gateway_events WHERE event_type = 'CredentialExchangeCompleted' ORDER BY created_at DESC LIMIT 1",
    )
    .await
    .unwrap();
    assert!(path.contains("static_ref"), "{path}");
    assert!(!path.contains(&secret));
    let target: Value = serde_json::from_str(&path).unwrap();
    assert_eq!(target["target_service"], "secret/data/gateway-tests/whoami");

    // The tenant's own workflow reads the same key under `tenant-acme/`, never the platform's.
    let body = signer.envelope("acme-whoami", json!({}), "jti-acme-whoami", now.timestamp());
    let r = invoke(gateway.local_addr, body).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let path = query_one(
        &db,
        "SELECT payload FROM gateway_events WHERE event_type = 'CredentialExchangeCompleted' ORDER BY id DESC LIMIT 1",
    )
    .await
    .unwrap();
    let target: Value = serde_json::from_str(&path).unwrap();
    assert_eq!(
        target["target_service"],
        "secret/data/tenant-acme/gateway-tests/whoami"
    );

    // A refusal quoting the credential across the excerpt's cut: no part of it remains, in the
    // answer or in any event.
    let body = signer.envelope("denied", json!({}), "jti-denied", now.timestamp());
    let r = invoke(gateway.local_addr, body).await;
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(text.contains("Bearer [REDACTED]"), "{text}");
    assert!(
        !text.contains("kv-token"),
        "the agent saw part of it: {text}"
    );
    // Committed before the answer was sent.
    let Database::Sqlite(pool) = &db else {
        unreachable!()
    };
    let payloads: Vec<String> = sqlx::query_scalar("SELECT payload FROM gateway_events")
        .fetch_all(pool)
        .await
        .unwrap();
    let leaks: Vec<&String> = payloads.iter().filter(|p| p.contains("kv-token")).collect();
    assert!(leaks.is_empty(), "{leaks:?}");

    // Started comes before the credential, as upstream records it (reference §6 steps 2-5), so
    // a call whose credential fails still shows that its workflow was invoked.
    let body = signer.envelope("keyless", json!({}), "jti-keyless", now.timestamp());
    let r = invoke(gateway.local_addr, body).await;
    assert_eq!(r.status(), 502);
    let types: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM gateway_events ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        types[types.len() - 8..],
        [
            // The refused "denied" call: the credential was issued, the step failed.
            "ToolCallAuthorized",
            "WorkflowInvocationStarted",
            "CredentialExchangeCompleted",
            "WorkflowStepExecuted",
            "WorkflowInvocationFailed",
            // The "keyless" call.
            "ToolCallAuthorized",
            "WorkflowInvocationStarted",
            "CredentialExchangeFailed",
        ]
    );
    gateway.shutdown().await;
}

/// An upstream answering `{"id": 7}` to every request, and how many it answered.
async fn counting_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let upstream = support::serve(move |_req: http::Request<hyper::body::Incoming>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { http::Response::new(Full::new(Bytes::from_static(br#"{"id": 7}"#))) }
    })
    .await;
    (upstream, hits)
}

/// A workflow's `input_schema` decides which arguments it runs with: others are a 400 naming the
/// argument and the rule, before any credential or upstream request (reference §13.22), and the
/// argument's value is not repeated (it may be a secret).
#[tokio::test]
async fn arguments_outside_the_input_schema_are_refused_before_anything_runs() {
    let (upstream, hits) = counting_upstream().await;
    let manifest = format!(
        r#"
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: create-repo}}
spec:
  input_schema:
    type: object
    required: [repo_name]
    properties:
      repo_name: {{type: string, minLength: 1}}
      private: {{type: boolean}}
  api_spec:
    base_url: http://{upstream}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/ok: {{post: {{operationId: ok}}}}}}}}}}
  steps: [{{name: create, operation_id: ok}}]
"#
    );
    let (gateway, db, signer, _dir) = sqlite_gateway(&manifest, &[]).await;
    let now = chrono::Utc::now();
    let call = |jti: &'static str, arguments: Value| {
        let body = signer.envelope("create-repo", arguments, jti, now.timestamp());
        invoke_json(gateway.local_addr, body)
    };

    let refused = |reason: &str| json!({"error": format!("arguments do not match the input_schema of 'create-repo': {reason}")});
    assert_eq!(
        call("jti-missing", json!({"private": true})).await,
        (400, refused("/: \"repo_name\" is a required property"))
    );
    assert_eq!(
        call(
            "jti-type",
            json!({"repo_name": "demo", "private": "sk-not-a-bool"})
        )
        .await,
        (400, refused("/private: value is not of type \"boolean\""))
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    let (status, body) = call("jti-ok", json!({"repo_name": "demo", "private": true})).await;
    assert_eq!(
        (status, &body["result"]["result"]),
        (200, &json!({"id": 7}))
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // A refused call was authorized (its row is there) but started no workflow.
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM gateway_events WHERE payload->>'execution_id' IS NOT NULL ORDER BY id",
    )
    .fetch_all(match &db {
        Database::Sqlite(pool) => pool,
        Database::Postgres(_) => unreachable!(),
    })
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            "ToolCallAuthorized",
            "ToolCallAuthorized",
            "ToolCallAuthorized",
            "WorkflowInvocationStarted",
            "WorkflowStepExecuted",
            "WorkflowInvocationCompleted"
        ]
    );
    gateway.shutdown().await;
}

/// An upstream that holds each request until the test lets one go (one permit of the semaphore
/// per answer), and notifies when a request arrives.
struct HeldUpstream {
    addr: SocketAddr,
    arrived: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Semaphore>,
}

async fn held_upstream() -> HeldUpstream {
    let arrived = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let addr = {
        let (arrived, release) = (arrived.clone(), release.clone());
        support::serve(move |_req: http::Request<hyper::body::Incoming>| {
            let (arrived, release) = (arrived.clone(), release.clone());
            async move {
                arrived.notify_one();
                release.acquire().await.unwrap().forget();
                http::Response::new(Full::new(Bytes::from_static(br#"{"id": 7}"#)))
            }
        })
        .await
    };
    HeldUpstream {
        addr,
        arrived,
        release,
    }
}

/// The workflow `slow-tool`, one call to `upstream`, and `extra` documents after it.
fn slow_tool(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: slow-tool}}
spec:
  api_spec:
    base_url: http://{upstream}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/ok: {{post: {{operationId: ok}}}}}}}}}}
  steps: [{{name: call, operation_id: ok}}]
{extra}"#
    )
}

/// `slow-tool`, which the default context lets a session run once at a time.
fn slow_tool_one_at_a_time(upstream: SocketAddr) -> String {
    slow_tool(
        upstream,
        r#"---
apiVersion: seal.100monkeys.ai/v1
kind: SecurityContext
metadata: {name: aegis-system-default}
spec:
  capabilities: [{tool_pattern: slow-tool, max_concurrent: 1}]
"#,
    )
}

#[tokio::test]
async fn a_session_runs_at_most_max_concurrent_calls_of_a_capability() {
    let upstream = held_upstream().await;
    let manifest = slow_tool_one_at_a_time(upstream.addr);
    let (gateway, db, signer, _dir) = sqlite_gateway(&manifest, &[]).await;
    let now = chrono::Utc::now();
    let call = |jti: &'static str| {
        let body = signer.envelope("slow-tool", json!({}), jti, now.timestamp());
        invoke_json(gateway.local_addr, body)
    };

    let first = tokio::spawn(call("jti-first"));
    upstream.arrived.notified().await;
    // The first call is at the upstream: a second one of the same session is refused.
    let (status, body) = call("jti-second").await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], 2005);
    assert_eq!(
        body["error"]["message"],
        "concurrent execution limit exceeded: slow-tool (1 running)"
    );
    upstream.release.add_permits(1);
    assert_eq!(first.await.unwrap().0, 200);
    // Its slot is free again.
    upstream.release.add_permits(1);
    assert_eq!(call("jti-third").await.0, 200);

    let Database::Sqlite(pool) = &db else {
        unreachable!()
    };
    let blocked: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT payload->>'violation_type', payload->>'reason', payload->>'code' \
         FROM gateway_events WHERE event_type = 'PolicyViolationBlocked'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        blocked,
        [(
            "concurrent_exec_limit_exceeded".to_owned(),
            "concurrent execution limit exceeded: slow-tool (1 running)".to_owned(),
            2005
        )]
    );
    gateway.shutdown().await;
}

/// Two replicas serving `manifests` on one fresh Postgres database, each with its own pool as in
/// a cluster, and the signer's session registered; also a pool of the test's own.
async fn postgres_replicas(
    manifests: &str,
    signer: &support::Signer,
) -> (Database, Vec<RunningGateway>) {
    let snapshot = support::snapshot_of(manifests);
    let url = support::fresh_postgres_url().await;
    let db = Database::connect(&url).await.unwrap();
    db.upsert_session(&signer.session_record(chrono::Utc::now()))
        .await
        .unwrap();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let pool = Database::connect(&url).await.unwrap();
        let replica = RunningGateway::start(
            &signer.gateway_config(&[]),
            pool,
            snapshot.clone(),
            Clock::System,
        )
        .await
        .unwrap();
        replicas.push(replica);
    }
    (db, replicas)
}

/// Reference §5.4 `rate_limit` with checklist #60 [FIX] (enforced, code 2005): a capability's
/// `rate_limit` lets a session make `calls` calls of it per `per_seconds`; the next is a 403 SEAL
/// error with code 2005 and `rate limit exceeded: <tool> (<calls> calls per <per_seconds> s)`,
/// audited as one `PolicyViolationBlocked` row, and it never reaches the upstream.
#[tokio::test]
async fn a_capability_rate_limit_refuses_the_call_past_its_quota() {
    let (upstream, hits) = counting_upstream().await;
    let (gateway, db, signer, _dir) = sqlite_gateway(&limited_tool(upstream, 2), &[]).await;
    let now = chrono::Utc::now();
    let call = |jti: &'static str| {
        let body = signer.envelope("limited-tool", json!({}), jti, now.timestamp());
        invoke_json(gateway.local_addr, body)
    };

    for jti in ["jti-rate-1", "jti-rate-2"] {
        let (status, body) = call(jti).await;
        assert_eq!(
            (status, &body["result"]["result"]),
            (200, &json!({"id": 7})),
            "{jti}: {body}"
        );
    }
    let message = "rate limit exceeded: limited-tool (2 calls per 60 s)";
    let (status, body) = call("jti-rate-3").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        (&body["protocol"], &body["status"]),
        (&json!("seal/v1"), &json!("error")),
        "{body}"
    );
    assert_eq!(
        (&body["error"]["code"], &body["error"]["message"]),
        (&json!(2005), &json!(message)),
        "{body}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2, "the third call ran");

    let Database::Sqlite(pool) = &db else {
        unreachable!()
    };
    let mut rows = call_events(pool).await;
    let refusal = rows.split_off(2 * ONE_WORKFLOW_CALL.len());
    assert_eq!(rows, [ONE_WORKFLOW_CALL, ONE_WORKFLOW_CALL].concat());
    assert_eq!(refusal, ["PolicyViolationBlocked"]);
    let payload: String = sqlx::query_scalar(
        "SELECT payload FROM gateway_events WHERE event_type = 'PolicyViolationBlocked'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let mut payload: Value = serde_json::from_str(&payload).unwrap();
    let blocked_at = payload.as_object_mut().unwrap().remove("blocked_at");
    assert!(blocked_at.is_some_and(|t| t.is_string()), "{payload}");
    assert_eq!(
        payload,
        json!({
            "execution_id": "exec-0001", "agent_id": "agent-7f3c", "tool_name": "limited-tool",
            "security_context": "aegis-system-default", "tenant_id": "acme",
            "violation_type": "rate_limit_exceeded", "code": 2005, "reason": message,
        })
    );
    gateway.shutdown().await;
}

/// `limited-tool`, one step to `upstream`, allowed `calls` calls a minute by the default context.
fn limited_tool(upstream: SocketAddr, calls: u32) -> String {
    format!(
        r#"
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: limited-tool}}
spec:
  api_spec:
    base_url: http://{upstream}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/ok: {{post: {{operationId: ok}}}}}}}}}}
  steps: [{{name: call, operation_id: ok}}]
---
apiVersion: seal.100monkeys.ai/v1
kind: SecurityContext
metadata: {{name: aegis-system-default}}
spec:
  capabilities: [{{tool_pattern: limited-tool, rate_limit: {{calls: {calls}, per_seconds: 60}}}}]
"#
    )
}

/// Replicas on one Postgres database share a capability's `rate_limit`: a session whose calls
/// alternate between two gateways, each with its own pool as in a cluster, is allowed `calls`
/// calls in all, not `calls` on each. Every refusal is the same 403 and `PolicyViolationBlocked`
/// row, whichever replica made it.
#[tokio::test]
async fn replicas_on_postgres_share_a_capability_rate_limit() {
    let (upstream, hits) = counting_upstream().await;
    let signer = support::Signer::from_vectors();
    let (db, replicas) = postgres_replicas(&limited_tool(upstream, 3), &signer).await;

    let now = chrono::Utc::now().timestamp();
    let mut answers = Vec::new();
    for i in 0..6 {
        let envelope = signer.envelope("limited-tool", json!({}), &format!("jti-shared-{i}"), now);
        let (status, body) = invoke_json(replicas[i % 2].local_addr, envelope).await;
        answers.push((status, body["error"]["message"].clone()));
    }
    let message = json!("rate limit exceeded: limited-tool (3 calls per 60 s)");
    let allowed = (200, Value::Null);
    let refused = (403, message.clone());
    assert_eq!(
        answers,
        [
            allowed.clone(),
            allowed.clone(),
            allowed,
            refused.clone(),
            refused.clone(),
            refused
        ]
    );
    assert_eq!(hits.load(Ordering::SeqCst), 3, "a refused call ran");

    let Database::Postgres(pool) = &db else {
        unreachable!()
    };
    let blocked: Vec<(String, String)> = sqlx::query_as(
        "SELECT payload->>'violation_type', payload->>'reason' FROM gateway_events \
         WHERE event_type = 'PolicyViolationBlocked'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let row = (
        "rate_limit_exceeded".to_owned(),
        message.as_str().unwrap().to_owned(),
    );
    assert_eq!(blocked, [row.clone(), row.clone(), row]);
    for replica in replicas {
        replica.shutdown().await;
    }
}

/// `max_concurrent` on Postgres is one limit for all replicas: while a session's call runs on one
/// replica, the next is refused on the other with the same 403 and `PolicyViolationBlocked` row;
/// once the first call has answered, its slot is free on the other replica at once.
#[tokio::test]
async fn replicas_on_postgres_share_a_capability_max_concurrent() {
    let upstream = held_upstream().await;
    let manifest = slow_tool_one_at_a_time(upstream.addr);
    let signer = support::Signer::from_vectors();
    let (db, replicas) = postgres_replicas(&manifest, &signer).await;
    let now = chrono::Utc::now().timestamp();
    let call = |replica: usize, jti: &str| {
        let body = signer.envelope("slow-tool", json!({}), jti, now);
        invoke_json(replicas[replica].local_addr, body)
    };
    let message = "concurrent execution limit exceeded: slow-tool (1 running)";

    for round in 0..3 {
        let (runs_on, other) = (round % 2, (round + 1) % 2);
        let first = tokio::spawn(call(runs_on, &format!("jti-running-{round}")));
        upstream.arrived.notified().await;
        let (status, body) = call(other, &format!("jti-refused-{round}")).await;
        assert_eq!(
            (status, &body["error"]["code"], &body["error"]["message"]),
            (403, &json!(2005), &json!(message)),
            "round {round}: {body}"
        );
        upstream.release.add_permits(1);
        assert_eq!(first.await.unwrap().0, 200, "round {round}");
        // The answer came after the slot was given back: the other replica takes it at once.
        upstream.release.add_permits(1);
        let (status, body) = call(other, &format!("jti-next-{round}")).await;
        assert_eq!(status, 200, "round {round}: {body}");
        // Its arrival at the upstream, so that the next round waits for its own first call.
        upstream.arrived.notified().await;
    }

    let Database::Postgres(pool) = &db else {
        unreachable!()
    };
    let blocked: Vec<(String, String)> = sqlx::query_as(
        "SELECT payload->>'violation_type', payload->>'reason' FROM gateway_events \
         WHERE event_type = 'PolicyViolationBlocked'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let row = (
        "concurrent_exec_limit_exceeded".to_owned(),
        message.to_owned(),
    );
    assert_eq!(blocked, [row.clone(), row.clone(), row]);
    let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM running_slots, unnest(slot_ids)")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(slots, 0, "a slot outlived its call");
    for replica in replicas {
        replica.shutdown().await;
    }
}

/// A gateway on SQLite serving `slow-tool`, whose agent sent one call (returned) and hung up while
/// the upstream holds it, long enough ago for hyper to have seen the hang-up.
struct HungUpCall {
    upstream: HeldUpstream,
    gateway: RunningGateway,
    db: Database,
    signer: support::Signer,
    dir: tempfile::TempDir,
    envelope: String,
}

async fn hung_up_call() -> HungUpCall {
    let upstream = held_upstream().await;
    let (gateway, db, signer, dir) = sqlite_gateway(&slow_tool(upstream.addr, ""), &[]).await;
    let envelope = signer.envelope(
        "slow-tool",
        json!({}),
        "jti-hang-up",
        chrono::Utc::now().timestamp(),
    );
    send_and_hang_up(&gateway, &upstream, &envelope).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    HungUpCall {
        upstream,
        gateway,
        db,
        signer,
        dir,
        envelope,
    }
}

/// Sends `envelope` on a connection of its own, waits until the upstream has the call, and
/// hangs up.
async fn send_and_hang_up(gateway: &RunningGateway, upstream: &HeldUpstream, envelope: &str) {
    use tokio::io::AsyncWriteExt;
    let mut agent = tokio::net::TcpStream::connect(gateway.local_addr)
        .await
        .unwrap();
    let request = format!(
        "POST /v1/invoke HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{envelope}",
        envelope.len()
    );
    agent.write_all(request.as_bytes()).await.unwrap();
    upstream.arrived.notified().await;
    drop(agent);
}

/// The event types of the session's calls, in order.
async fn call_events(pool: &sqlx::SqlitePool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT event_type FROM gateway_events WHERE payload->>'execution_id' IS NOT NULL ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

const ONE_WORKFLOW_CALL: [&str; 4] = [
    "ToolCallAuthorized",
    "WorkflowInvocationStarted",
    "WorkflowStepExecuted",
    "WorkflowInvocationCompleted",
];

#[tokio::test]
async fn a_call_whose_agent_hangs_up_still_runs_to_its_end_and_is_audited() {
    // `_dir` keeps the database's folder for the test's length.
    let HungUpCall {
        upstream,
        gateway,
        db,
        envelope,
        dir: _dir,
        ..
    } = hung_up_call().await;
    upstream.release.add_permits(1);

    // The upstream did the work, so the call's record must be complete all the same.
    let Database::Sqlite(pool) = &db else {
        unreachable!()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let rows = call_events(pool).await;
        if rows == ONE_WORKFLOW_CALL {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the hung-up call left {rows:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Its jti was spent with it.
    let replayed = invoke(gateway.local_addr, envelope).await;
    assert_eq!(replayed.status().as_u16(), 401);
    gateway.shutdown().await;
}

#[tokio::test]
async fn shutdown_waits_for_a_call_whose_agent_hung_up() {
    let HungUpCall {
        upstream,
        gateway,
        db,
        signer,
        dir,
        envelope,
    } = hung_up_call().await;
    let stopping = tokio::spawn(gateway.shutdown());
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        !stopping.is_finished(),
        "shutdown did not wait for the call"
    );
    upstream.release.add_permits(1);
    stopping.await.unwrap();
    drop(db);

    // What the stopped gateway left in its file: the whole call, and its jti, which a new
    // gateway on the same file refuses.
    let db = Database::connect(&support::sqlite_url(dir.path()))
        .await
        .unwrap();
    let Database::Sqlite(pool) = &db else {
        unreachable!()
    };
    assert_eq!(call_events(pool).await, ONE_WORKFLOW_CALL);
    let gateway = RunningGateway::start(
        &signer.gateway_config(&[]),
        db.clone(),
        support::snapshot_of(&slow_tool(upstream.addr, "")),
        Clock::System,
    )
    .await
    .unwrap();
    let replayed = invoke(gateway.local_addr, envelope).await;
    assert_eq!(replayed.status().as_u16(), 401);
    gateway.shutdown().await;
}

/// A workflow still waiting on its upstream when the drain ends is stopped: its call is recorded
/// as failed (503) while the audit log still commits, and shutdown does not wait for the upstream.
#[tokio::test]
async fn a_workflow_still_running_after_the_drain_is_stopped_and_recorded() {
    let upstream = held_upstream().await;
    let signer = support::Signer::from_vectors();
    let dir = tempfile::tempdir().unwrap();
    let url = support::sqlite_url(dir.path());
    let db = Database::connect(&url).await.unwrap();
    db.upsert_session(&signer.session_record(chrono::Utc::now()))
        .await
        .unwrap();
    let mut config = signer.gateway_config(&[]);
    config.settings.network.drain_seconds = 1;
    let gateway = RunningGateway::start(
        &config,
        db.clone(),
        support::snapshot_of(&slow_tool(upstream.addr, "")),
        Clock::System,
    )
    .await
    .unwrap();
    let envelope = signer.envelope(
        "slow-tool",
        json!({}),
        "jti-stopped-workflow",
        chrono::Utc::now().timestamp(),
    );
    let address = gateway.local_addr;
    let call = tokio::spawn(async move { invoke(address, envelope).await.status().as_u16() });
    upstream.arrived.notified().await;

    // The upstream never answers: without the stop, shutdown would wait for it.
    tokio::time::timeout(std::time::Duration::from_secs(20), gateway.shutdown())
        .await
        .expect("shutdown ends once the drain is over");
    assert_eq!(call.await.unwrap(), 503);
    drop(db);
    let db = Database::connect(&url).await.unwrap();
    let Database::Sqlite(pool) = &db else {
        unreachable!()
    };
    assert_eq!(
        call_events(pool).await,
        [
            "ToolCallAuthorized",
            "WorkflowInvocationStarted",
            "WorkflowInvocationFailed"
        ]
    );
    let reason: String = sqlx::query_scalar(
        "SELECT payload->>'reason' FROM gateway_events WHERE event_type = 'WorkflowInvocationFailed'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(
        reason.starts_with("the gateway stopped while the workflow ran"),
        "{reason}"
    );
    db.close().await;
}
