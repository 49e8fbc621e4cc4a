//! The SEAL verification and authorization path through the real HTTP endpoint, driven by envelopes
//! the real Python and TypeScript SDKs produced (`tests/vectors`), at the instant they were signed.

mod support;

use aegis_seal_crds::Snapshot;
use aegis_seal_gateway::application::clock::Clock;
use aegis_seal_gateway::domain::envelope::Envelope;
use aegis_seal_gateway::gateway::RunningGateway;
use aegis_seal_gateway::infrastructure::persistence::{Database, SessionRecord, SessionStatus};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::Row;

#[derive(Deserialize)]
struct VectorFile {
    now_unix: i64,
    session: Value,
    token_issuer: Value,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    expect: String,
    /// The exact wire text, numbers spelled as the SDK sent them.
    envelope: Box<RawValue>,
}

impl VectorFile {
    /// The case named `name`.
    fn case(&self, name: &str) -> &Case {
        self.cases.iter().find(|c| c.name == name).unwrap()
    }

    /// The wire text of the file's first envelope that verifies.
    fn first_accepted(&self) -> &str {
        let case = self.cases.iter().find(|c| c.expect == "accept").unwrap();
        case.envelope.get()
    }
}

fn vectors(file: &str) -> VectorFile {
    let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A workflow owned by tenant `acme`, as the vectors' tenancy case expects.
const ACME_WORKFLOW: &str = r#"
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {name: create-repository-with-teams}
spec:
  tool_name: create_repository_with_teams
  tenant_id: acme
  api_spec:
    base_url: http://127.0.0.1:9
    openapi:
      inline: {openapi: 3.0.0, paths: {/repos: {post: {operationId: createRepo}}}}
  steps: [{name: create, operation_id: createRepo}]
"#;

fn snapshot() -> Snapshot {
    support::snapshot_of(ACME_WORKFLOW)
}

fn session_record(session: &Value, now: DateTime<Utc>) -> SessionRecord {
    let text = |k: &str| session[k].as_str().unwrap().to_owned();
    SessionRecord {
        execution_id: text("execution_id"),
        agent_id: text("agent_id"),
        security_context: text("security_context"),
        public_key_b64: text("public_key_b64"),
        security_token: "stored-by-the-orchestrator".into(),
        status: SessionStatus::Active,
        expires_at: now + Duration::hours(1),
        allowed_tool_patterns: serde_json::from_value(session["allowed_tool_patterns"].clone())
            .unwrap(),
        tenant_id: session["tenant_id"].as_str().map(str::to_owned),
    }
}

struct Harness {
    gateway: RunningGateway,
    db: Database,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(file: &VectorFile, url: Option<String>) -> Self {
        let now = DateTime::from_timestamp(file.now_unix, 0).unwrap();
        Self::start_at(file, url, now).await
    }

    /// A gateway whose clock stands at `now`.
    async fn start_at(file: &VectorFile, url: Option<String>, now: DateTime<Utc>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = url.unwrap_or_else(|| support::sqlite_url(dir.path()));
        let issuer = &file.token_issuer;
        let rsa = issuer["rs256_public_key_pem"].as_str().unwrap();
        let eddsa = issuer["eddsa_public_key_pem"].as_str().unwrap_or_default();
        let config = support::gateway_config(&[
            ("SEAL_GATEWAY_SEAL_JWT_PUBLIC_KEY_PEM", rsa),
            ("SEAL_GATEWAY_SEAL_JWT_EDDSA_PUBLIC_KEY_PEM", eddsa),
        ]);
        let db = Database::connect(&url).await.unwrap();
        db.upsert_session(&session_record(&file.session, now))
            .await
            .unwrap();
        let gateway = RunningGateway::start(&config, db.clone(), snapshot(), Clock::fixed(now))
            .await
            .unwrap();
        Self {
            gateway,
            db,
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn invoke(&self, path: &str, body: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("http://{}{path}", self.gateway.local_addr))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn count(&self, event_type: &str) -> i64 {
        let sql = "SELECT COUNT(*) AS n FROM gateway_events WHERE event_type = $1";
        match &self.db {
            Database::Sqlite(p) => sqlx::query(sqlx::AssertSqlSafe(sql.replace('$', "?")))
                .bind(event_type)
                .fetch_one(p)
                .await
                .unwrap()
                .get("n"),
            Database::Postgres(p) => sqlx::query(sql)
                .bind(event_type)
                .fetch_one(p)
                .await
                .unwrap()
                .get("n"),
        }
    }
}

fn seal_code(body: &Value) -> Option<u64> {
    (body["protocol"] == "seal/v1" && body["status"] == "error")
        .then(|| body["error"]["code"].as_u64())
        .flatten()
}

fn message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .or(body["error"].as_str())
        .unwrap_or_default()
        .to_owned()
}

async fn run_vectors(file: &str) {
    let file = vectors(file);
    let harness = Harness::start(&file, None).await;
    for (i, case) in file.cases.iter().enumerate() {
        // Both routes are the same endpoint.
        let path = if i % 2 == 0 {
            "/v1/invoke"
        } else {
            "/v1/seal/invoke"
        };
        let authorized_before = harness.count("ToolCallAuthorized").await;
        let (status, body) = harness.invoke(path, case.envelope.get()).await;
        let authorized = harness.count("ToolCallAuthorized").await - authorized_before;
        let code = seal_code(&body);
        let msg = message(&body);
        let what = format!("{}: {status} {body}", case.name);
        match case.expect.as_str() {
            "accept" => {
                assert_eq!(code, None, "{what}");
                assert_eq!(authorized, 1, "{what}");
            }
            "reject_signature" => {
                assert_eq!((status, code), (401, Some(1002)), "{what}");
                assert_eq!(
                    msg,
                    "signature verification failed: invalid signature for payload"
                );
            }
            "reject_token" => {
                assert_eq!(status, 401, "{what}");
                assert!(matches!(code, Some(1003 | 1004)), "{what}");
                assert!(msg.contains("security token"), "{what}");
            }
            "reject_malformed" => assert_eq!((status, code), (400, Some(1000)), "{what}"),
            "reject_freshness" => {
                assert_eq!((status, code), (401, Some(1003)), "{what}");
                assert!(msg.contains("freshness window"), "{what}");
            }
            "reject_replay" => {
                assert_eq!((status, code), (401, Some(1003)), "{what}");
                assert_eq!(msg, "replay detected: jti already seen", "{what}");
            }
            "reject_tenant_if_resource_owned_by_acme" => {
                assert_eq!(status, 403, "{what}");
                assert!(msg.contains("tenant mismatch"), "{what}");
            }
            other => panic!("unknown expectation {other}"),
        }
        if case.expect != "accept" {
            assert_eq!(authorized, 0, "{what}");
        }
    }
    harness.gateway.shutdown().await;
}

#[tokio::test]
async fn python_sdk_vectors_get_their_expected_outcomes() {
    run_vectors("python-sdk.json").await;
}

#[tokio::test]
async fn typescript_sdk_vectors_get_their_expected_outcomes() {
    run_vectors("typescript-sdk.json").await;
}

/// The jti inside a vector's security token.
/// Upstream's window: whole seconds between the envelope's time and now, truncated toward zero,
/// so an envelope up to 30.999 s old or early is fresh, and one 31 s off is not.
#[tokio::test]
async fn the_freshness_window_is_just_under_31_seconds_on_either_side() {
    let file = vectors("python-sdk.json");
    let envelope = file.first_accepted();
    let sent = Envelope::parse(envelope.as_bytes()).unwrap().timestamp;
    let sent = DateTime::from_timestamp(sent, 0).unwrap();
    for (offset_ms, refusal) in [
        (30_999, None),
        (31_000, Some("(31s)")),
        (-30_999, None),
        (-31_000, Some("(-31s)")),
    ] {
        let harness =
            Harness::start_at(&file, None, sent + Duration::milliseconds(offset_ms)).await;
        let (status, body) = harness.invoke("/v1/invoke", envelope).await;
        let what = format!("now = sent + {offset_ms} ms: {status} {body}");
        match refusal {
            // Authorized; the workflow's upstream is a closed port, so the call itself fails.
            None => {
                assert_eq!(seal_code(&body), None, "{what}");
                assert_eq!(harness.count("ToolCallAuthorized").await, 1, "{what}");
            }
            Some(skew) => {
                assert_eq!((status, seal_code(&body)), (401, Some(1003)), "{what}");
                assert_eq!(
                    message(&body),
                    format!("envelope timestamp is outside the 30 second freshness window {skew}")
                );
            }
        }
    }
}

/// Times at the ends of `i64` are refused as stale, not overflowed into a small skew.
#[tokio::test]
async fn a_timestamp_at_the_ends_of_i64_is_outside_the_window() {
    let file = vectors("python-sdk.json");
    let harness = Harness::start(&file, None).await;
    let envelope = file.first_accepted();
    let now = file.now_unix;
    // `now - 2^63` is the time whose difference from now wraps to i64::MIN, which a plain `abs`
    // leaves negative, so within any window.
    for timestamp in [i64::MIN, i64::MAX, now.wrapping_sub(i64::MIN)] {
        let mut tampered: Value = serde_json::from_str(envelope).unwrap();
        tampered["timestamp"] = timestamp.into();
        let (status, body) = harness.invoke("/v1/invoke", &tampered.to_string()).await;
        assert_eq!(
            (status, seal_code(&body)),
            (401, Some(1003)),
            "{timestamp}: {body}"
        );
        assert!(message(&body).contains("freshness window"), "{body}");
    }
}

fn jti_of(envelope: &RawValue) -> String {
    use base64::Engine;
    let envelope: Value = serde_json::from_str(envelope.get()).unwrap();
    let token = envelope["security_token"].as_str().unwrap();
    let claims = token.split('.').nth(1).unwrap();
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .unwrap();
    serde_json::from_slice::<Value>(&claims).unwrap()["jti"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_runbook_replay_query_finds_a_just_used_jti_on_both_backends() {
    let file = vectors("python-sdk.json");
    let first = file.case("replay_first");
    let jti = jti_of(&first.envelope);
    for (backend, url, _dir) in support::both_backends().await {
        let harness = Harness::start(&file, Some(url)).await;
        let (_, body) = harness.invoke("/v1/invoke", first.envelope.get()).await;
        assert_eq!(seal_code(&body), None, "{backend}: {body}");
        let sql = format!("SELECT jti, expires_at FROM seen_jtis WHERE jti = '{jti}';");
        let found = match &harness.db {
            Database::Sqlite(p) => sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(p)
                .await
                .unwrap()
                .len(),
            Database::Postgres(p) => sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(p)
                .await
                .unwrap()
                .len(),
        };
        assert_eq!(found, 1, "{backend}");
        let (status, body) = harness.invoke("/v1/invoke", first.envelope.get()).await;
        assert_eq!((status, seal_code(&body)), (401, Some(1003)), "{backend}");
        harness.gateway.shutdown().await;
    }
}

#[tokio::test]
async fn a_replay_after_a_restart_is_refused_on_both_backends() {
    let file = vectors("python-sdk.json");
    let first = file.case("replay_first");
    for (backend, url, _dir) in support::both_backends().await {
        let harness = Harness::start(&file, Some(url.clone())).await;
        // Verified and authorized (the workflow's upstream is not running: no SEAL error).
        let (_, body) = harness.invoke("/v1/invoke", first.envelope.get()).await;
        assert_eq!(seal_code(&body), None, "{backend}: {body}");
        harness.gateway.shutdown().await;

        // A new process on the same database knows the jti: memory starts from `seen_jtis`.
        let harness = Harness::start(&file, Some(url)).await;
        let (status, body) = harness.invoke("/v1/invoke", first.envelope.get()).await;
        assert_eq!(
            (status, seal_code(&body)),
            (401, Some(1003)),
            "{backend}: {body}"
        );
        harness.gateway.shutdown().await;
    }
}

/// An envelope is fresh while less than 31 s from now (30 whole seconds, truncated). Its jti must
/// be remembered as long: replayed in that last second, on another process with only the
/// database to go by (another replica, or this one restarted), it is still refused.
#[tokio::test]
async fn a_replay_in_the_last_fresh_second_is_refused_on_both_backends() {
    let file = vectors("python-sdk.json");
    let first = file.case("replay_first");
    let signed = DateTime::from_timestamp(file.now_unix, 0).unwrap();
    for (backend, url, _dir) in support::both_backends().await {
        let harness = Harness::start_at(
            &file,
            Some(url.clone()),
            signed + chrono::Duration::milliseconds(200),
        )
        .await;
        let (_, body) = harness.invoke("/v1/invoke", first.envelope.get()).await;
        assert_eq!(seal_code(&body), None, "{backend}: {body}");
        harness.gateway.shutdown().await;

        let late = signed + chrono::Duration::milliseconds(30_600);
        let harness = Harness::start_at(&file, Some(url), late).await;
        let (status, body) = harness.invoke("/v1/invoke", first.envelope.get()).await;
        assert_eq!(
            (status, seal_code(&body), message(&body)),
            (
                401,
                Some(1003),
                "replay detected: jti already seen".to_owned()
            ),
            "{backend}: {body}"
        );
        harness.gateway.shutdown().await;
    }
}

#[tokio::test]
async fn a_revoked_session_is_refused_and_revocation_is_audited() {
    let file = vectors("python-sdk.json");
    let harness = Harness::start(&file, None).await;
    let base = format!("http://{}", harness.gateway.local_addr);
    let revoked = harness
        .client
        .delete(format!("{base}/v1/seal/sessions/exec-0001"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let body: Value = revoked.json().await.unwrap();
    assert_eq!(body["session_status"], "Revoked");
    assert_eq!(harness.count("SessionRevoked").await, 1);

    let case = file.case("valid_rs256_basic");
    let (status, body) = harness.invoke("/v1/invoke", case.envelope.get()).await;
    assert_eq!((status, seal_code(&body)), (401, Some(1006)), "{body}");
    assert_eq!(message(&body), "session is revoked");

    // Terminal: the orchestrator cannot bring it back.
    let again = harness
        .client
        .post(format!("{base}/v1/seal/sessions"))
        .json(&serde_json::json!({
            "execution_id": "exec-0001", "agent_id": "agent-7f3c",
            "security_context": "aegis-system-default",
            "public_key_b64": "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
            "security_token": "t"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    let gone = harness
        .client
        .delete(format!("{base}/v1/seal/sessions/exec-0001"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    harness.gateway.shutdown().await;
}

#[tokio::test]
async fn session_endpoints_register_list_and_never_return_the_token() {
    let file = vectors("python-sdk.json");
    let harness = Harness::start(&file, None).await;
    let base = format!("http://{}", harness.gateway.local_addr);
    let created = harness
        .client
        .post(format!("{base}/v1/seal/sessions"))
        .json(&serde_json::json!({
            "execution_id": "exec-new", "agent_id": "agent-1",
            "security_context": "aegis-system-default",
            "public_key_b64": "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
            "security_token": "secret-token-value",
            "allowed_tool_patterns": ["github.*"]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(harness.count("SessionRegistered").await, 1);

    let listed = harness
        .client
        .get(format!("{base}/v1/seal/sessions"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listed.contains("exec-new"), "{listed}");
    assert!(!listed.contains("secret-token-value"), "{listed}");
    assert!(!listed.contains("security_token"), "{listed}");

    let one: Value = harness
        .client
        .get(format!("{base}/v1/seal/sessions/exec-new"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        one["allowed_tool_patterns"],
        serde_json::json!(["github.*"])
    );
    assert!(one.get("security_token").is_none());

    for (body, expected) in [
        (
            serde_json::json!({"execution_id": "x", "agent_id": "a", "security_context": "c",
                               "public_key_b64": "AAAA", "security_token": "t"}),
            "public key must be 32 bytes",
        ),
        (
            serde_json::json!({"execution_id": "x", "agent_id": "a", "security_context": "c",
                               "public_key_b64": "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
                               "security_token": "t", "expires_at": "tomorrow"}),
            "invalid expires_at RFC3339 timestamp: ",
        ),
        (
            serde_json::json!({"execution_id": "x", "agent_id": "a", "security_context": "c",
                               "public_key_b64": "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
                               "security_token": "t", "expires_at": "0000-01-01T00:00:00+01:00"}),
            "invalid expires_at 0000-01-01T00:00:00+01:00: the year in UTC must be between 0000 and 9999",
        ),
        (
            serde_json::json!({"execution_id": "", "agent_id": "a", "security_context": "c",
                               "public_key_b64": "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
                               "security_token": "t"}),
            "execution_id cannot be empty",
        ),
    ] {
        let r = harness
            .client
            .post(format!("{base}/v1/seal/sessions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let e: Value = r.json().await.unwrap();
        assert!(
            e["error"].as_str().unwrap().starts_with(expected),
            "{e} should start with {expected}"
        );
    }
    harness.gateway.shutdown().await;
}

/// Any single-byte change of a signed envelope is refused before the replay check, except in the
/// bytes the signature does not cover by design (the sub-second digits of an RFC 3339 timestamp:
/// the SDKs sign whole seconds), which the replay check then refuses.
#[tokio::test]
async fn every_single_byte_change_of_a_signed_envelope_is_refused() {
    use aegis_seal_gateway::application::invocation::Refusal;
    let file = vectors("python-sdk.json");
    let harness = Harness::start(&file, None).await;
    let case = file.case("valid_unicode_nested");
    let text = case.envelope.get();
    let original = text.as_bytes().to_vec();
    let fraction = {
        let ts = text.find("\"timestamp\": \"").unwrap() + "\"timestamp\": \"".len();
        let dot = ts + text[ts..].find('.').unwrap();
        (dot + 1)..(dot + 4)
    };
    let service = &harness.gateway.state.invocation;
    let served = harness.gateway.state.served.load_full();
    assert!(service.authorize(&original, &served).await.is_ok());

    for i in 0..original.len() {
        let mut mutated = original.clone();
        mutated[i] ^= 0x01;
        let refusal = match service.authorize(&mutated, &served).await {
            Ok(_) => panic!("byte {i} changed and the envelope was accepted"),
            Err(Refusal::Seal { error, .. }) => error,
            Err(Refusal::Unavailable(e)) => panic!("byte {i}: {e}"),
        };
        let replay = refusal.message == "replay detected: jti already seen";
        assert_eq!(
            replay,
            fraction.contains(&i),
            "byte {i} ({:?}): {}",
            text.as_bytes()[i] as char,
            refusal.message
        );
    }
    harness.gateway.shutdown().await;
}
