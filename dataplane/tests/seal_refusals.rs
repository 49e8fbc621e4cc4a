//! The refusals of the token and session-binding stages of `POST /v1/invoke`, each pinned to its
//! HTTP status, SEAL code and message (reference §1.4-§1.6, parity checklist #49, #50, #51, #56),
//! on both backends, with the audit rows each one leaves (none: reference §10 names no event for a
//! refused token or session binding; only policy and tenancy refusals write
//! `PolicyViolationBlocked`).
//!
//! Every envelope here is signed correctly by the session's agent key and carries a token signed
//! by the configured RS256 key: each case changes one claim or one session field, and a control
//! case with nothing changed is accepted, so each refusal is the work of that one change.

mod support;

use aegis_seal_crds::Snapshot;
use aegis_seal_gateway::application::catalog::with_default_contexts;
use aegis_seal_gateway::application::clock::Clock;
use aegis_seal_gateway::gateway::RunningGateway;
use aegis_seal_gateway::infrastructure::persistence::{Database, SessionRecord};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value, json};
use sqlx::Row;

/// The gateway's clock, frozen; envelopes are dated at this instant, so freshness never interferes.
const NOW: i64 = 1_771_338_721;
/// Not the defaults (`aegis-orchestrator`, `aegis-agents`): the configured values are the ones
/// checked.
const ISSUER: &str = "seal-refusals-issuer";
const AUDIENCE: &str = "seal-refusals-audience";
/// No such tool is served: an authorized call is answered 404 after its `ToolCallAuthorized` row.
const TOOL: &str = "no-such-tool";
/// Sessions beside the vectors' `exec-0001`, with the same agent key.
const EXPIRED_SESSION: &str = "exec-expired";
const EXPIRING_SESSION: &str = "exec-expiring";

/// What a refusal must answer: HTTP status, SEAL code, message.
type Expected = (u16, u64, &'static str);

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW, 0).unwrap()
}

/// The vectors' RS256 token key (`support::Signer` keeps its own private).
fn token_key() -> jsonwebtoken::EncodingKey {
    let path = format!(
        "{}/tests/vectors/python-sdk.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let pem = file["token_issuer"]["rs256_private_key_pem"]
        .as_str()
        .unwrap();
    jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
}

struct Harness {
    gateway: RunningGateway,
    db: Database,
    client: reqwest::Client,
    signer: support::Signer,
    token_key: jsonwebtoken::EncodingKey,
}

impl Harness {
    async fn start(url: &str) -> Self {
        let signer = support::Signer::from_vectors();
        let db = Database::connect(url).await.unwrap();
        let session = signer.session_record(now());
        db.upsert_session(&session).await.unwrap();
        let other = |execution_id: &str, expires_at| SessionRecord {
            execution_id: execution_id.into(),
            expires_at,
            ..session.clone()
        };
        // Expired at this very instant (`expires_at <= now` is expired), and one second short of it.
        db.upsert_session(&other(EXPIRED_SESSION, now()))
            .await
            .unwrap();
        db.upsert_session(&other(EXPIRING_SESSION, now() + Duration::seconds(1)))
            .await
            .unwrap();
        let config = support::gateway_config(&[
            (
                "SEAL_GATEWAY_SEAL_JWT_PUBLIC_KEY_PEM",
                &signer.rs256_public_key_pem,
            ),
            ("SEAL_GATEWAY_SEAL_JWT_ISSUER", ISSUER),
            ("SEAL_GATEWAY_SEAL_JWT_AUDIENCE", AUDIENCE),
        ]);
        let snapshot = with_default_contexts(Snapshot::default());
        let gateway = RunningGateway::start(&config, db.clone(), snapshot, Clock::fixed(now()))
            .await
            .unwrap();
        Self {
            gateway,
            db,
            client: reqwest::Client::new(),
            signer,
            token_key: token_key(),
        }
    }

    /// Every claim the gateway requires, valid for the vectors' session, with a jti of its own.
    fn claims(&self, jti: &str) -> Map<String, Value> {
        let s = &self.signer.session;
        let Value::Object(claims) = json!({
            "sub": s["agent_id"], "exec_id": s["execution_id"], "tenant_id": s["tenant_id"],
            "scp": s["security_context"], "wid": "docker://test", "jti": jti,
            "iat": NOW, "exp": NOW + 3600, "iss": ISSUER, "aud": AUDIENCE,
        }) else {
            unreachable!()
        };
        claims
    }

    /// An envelope dated `NOW`, signed by the session's agent key, carrying `claims` in an RS256
    /// token signed by the configured key.
    fn envelope(&self, claims: &Map<String, Value>) -> String {
        use base64::Engine;
        use ed25519_dalek::Signer as _;
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            claims,
            &self.token_key,
        )
        .unwrap();
        let mut envelope = json!({
            "protocol": "seal/v1", "security_token": token, "signature": "",
            "payload": {"jsonrpc": "2.0", "id": "req-1", "method": "tools/call",
                        "params": {"name": TOOL, "arguments": {}}},
            "timestamp": NOW,
        });
        let parsed =
            aegis_seal_gateway::domain::envelope::Envelope::parse(envelope.to_string().as_bytes())
                .unwrap();
        let signature = self.signer.agent.sign(&parsed.canonical_message().unwrap());
        envelope["signature"] = base64::engine::general_purpose::STANDARD
            .encode(signature.to_bytes())
            .into();
        envelope.to_string()
    }

    async fn invoke(&self, body: String) -> (u16, Value) {
        let response = self
            .client
            .post(format!("http://{}/v1/invoke", self.gateway.local_addr))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Rows of `gateway_events`, of one type or (`None`) of every type.
    async fn events(&self, event_type: Option<&str>) -> i64 {
        let sql = "SELECT COUNT(*) AS n FROM gateway_events WHERE $1 IS NULL OR event_type = $1";
        match &self.db {
            Database::Sqlite(p) => sqlx::query(sqlx::AssertSqlSafe(sql.replace('$', "?")))
                .bind(event_type)
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

    /// `claims` are refused with exactly `expected`, in the SEAL error body (checklist #56), and
    /// leave no audit row.
    async fn assert_refused(&self, what: &str, claims: &Map<String, Value>, expected: Expected) {
        let before = self.events(None).await;
        let (status, body) = self.invoke(self.envelope(claims)).await;
        let error = &body["error"];
        let (code, message) = (error["code"].as_u64(), error["message"].as_str());
        assert_eq!(
            (status, code, message),
            (expected.0, Some(expected.1), Some(expected.2)),
            "{what}: {body}"
        );
        assert_seal_body(what, &body);
        assert_eq!(
            self.events(None).await - before,
            0,
            "{what}: a refused token or session binding writes no audit row"
        );
    }

    /// `claims` pass every check: the call is authorized (one `ToolCallAuthorized` row) and answered
    /// 404, since the tool does not exist.
    async fn assert_authorized(&self, what: &str, claims: &Map<String, Value>) {
        let before = self.events(Some("ToolCallAuthorized")).await;
        let (status, body) = self.invoke(self.envelope(claims)).await;
        assert_eq!(
            (status, &body),
            (404, &json!({"error": format!("tool '{TOOL}' not found")})),
            "{what}"
        );
        assert_eq!(
            self.events(Some("ToolCallAuthorized")).await - before,
            1,
            "{what}"
        );
    }
}

/// `{"protocol":"seal/v1","status":"error","error":{"code","message","timestamp","request_id"}}`,
/// nothing more, with an RFC 3339 timestamp and a UUIDv4 request id.
fn assert_seal_body(what: &str, body: &Value) {
    let keys = |v: &Value| {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(
        keys(body),
        ["error", "protocol", "status"],
        "{what}: {body}"
    );
    assert_eq!(
        (&body["protocol"], &body["status"]),
        (&json!("seal/v1"), &json!("error")),
        "{what}"
    );
    let error = &body["error"];
    assert_eq!(
        keys(error),
        ["code", "message", "request_id", "timestamp"],
        "{what}: {body}"
    );
    let timestamp = error["timestamp"].as_str().unwrap();
    assert!(
        DateTime::parse_from_rfc3339(timestamp).is_ok(),
        "{what}: {timestamp}"
    );
    let request_id = uuid::Uuid::parse_str(error["request_id"].as_str().unwrap()).unwrap();
    assert_eq!(request_id.get_version_num(), 4, "{what}: {body}");
}

/// One claim of `claims` removed, or set to `value`.
fn with(claims: &Map<String, Value>, claim: &str, value: Option<Value>) -> Map<String, Value> {
    let mut claims = claims.clone();
    match value {
        Some(value) => claims.insert(claim.into(), value),
        None => claims.remove(claim),
    };
    claims
}

/// Checklist #49/#50 and reference §1.4 TARGET: `sub`, `exec_id`, `tenant_id`, `scp`, `wid`, `jti`,
/// `exp`, `iss` and `aud` are all required; each missing one is a 401 with code 1004
/// (TOKEN_VERIFICATION_FAILED) naming it.
#[tokio::test]
async fn a_token_without_a_required_claim_is_refused_naming_the_claim() {
    let cases: [(&str, Expected); 9] = [
        (
            "sub",
            (
                401,
                1004,
                "security token invalid: Missing required claim: sub",
            ),
        ),
        ("exec_id", (401, 1004, "security token missing exec_id")),
        ("tenant_id", (401, 1004, "security token missing tenant_id")),
        ("scp", (401, 1004, "security token missing scp")),
        ("wid", (401, 1004, "security token missing wid")),
        ("jti", (401, 1004, "security token missing jti")),
        (
            "exp",
            (
                401,
                1004,
                "security token invalid: Missing required claim: exp",
            ),
        ),
        (
            "iss",
            (
                401,
                1004,
                "security token invalid: Missing required claim: iss",
            ),
        ),
        (
            "aud",
            (
                401,
                1004,
                "security token invalid: Missing required claim: aud",
            ),
        ),
    ];
    for (backend, url, _dir) in support::both_backends().await {
        let h = Harness::start(&url).await;
        h.assert_authorized(&format!("{backend}: every claim"), &h.claims("all-claims"))
            .await;
        for (claim, expected) in cases {
            let claims = with(&h.claims(&format!("missing-{claim}")), claim, None);
            h.assert_refused(&format!("{backend}: no {claim}"), &claims, expected)
                .await;
        }
        h.gateway.shutdown().await;
    }
}

/// A required string claim that is empty (or blank, for the tenant) counts as missing
/// (checklist #50: `tenant_id` non-empty; reference §1.4 TARGET). `wid` has a case of its own:
/// [`an_empty_wid_claim_is_refused_with_the_reference_message`].
#[tokio::test]
async fn a_token_with_an_empty_required_claim_is_refused_as_if_it_were_missing() {
    let cases: [(&str, &str, Expected); 5] = [
        ("sub", "", (401, 1004, "security token missing sub")),
        (
            "exec_id",
            " ",
            (401, 1004, "security token missing exec_id"),
        ),
        (
            "tenant_id",
            "  ",
            (401, 1004, "security token missing tenant_id"),
        ),
        ("scp", "", (401, 1004, "security token missing scp")),
        ("jti", "", (401, 1004, "security token missing jti")),
    ];
    for (backend, url, _dir) in support::both_backends().await {
        let h = Harness::start(&url).await;
        for (claim, value, expected) in cases {
            let claims = with(
                &h.claims(&format!("empty-{claim}")),
                claim,
                Some(json!(value)),
            );
            h.assert_refused(&format!("{backend}: {claim} {value:?}"), &claims, expected)
                .await;
        }
        h.gateway.shutdown().await;
    }
}

/// Reference §1.4 (`wid`: "required string, non-empty after trim. Else `security token wid claim
/// is empty` (401/1004)") and §1.5 step 12.
#[tokio::test]
async fn an_empty_wid_claim_is_refused_with_the_reference_message() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(&support::sqlite_url(dir.path())).await;
    for value in ["", "   "] {
        let claims = with(&h.claims("empty-wid"), "wid", Some(json!(value)));
        h.assert_refused(
            &format!("wid {value:?}"),
            &claims,
            (401, 1004, "security token wid claim is empty"),
        )
        .await;
    }
    h.gateway.shutdown().await;
}

/// Checklist #49: `iss` and `aud` are checked against the configured issuer and audience (not the
/// defaults); `aud` may be an array, which must contain the configured audience.
#[tokio::test]
async fn a_token_for_another_issuer_or_audience_is_refused() {
    let cases: [(&str, &str, Value, Expected); 4] = [
        (
            "the default issuer, not the configured one",
            "iss",
            json!("aegis-orchestrator"),
            (401, 1004, "security token invalid: InvalidIssuer"),
        ),
        (
            "the default audience, not the configured one",
            "aud",
            json!("aegis-agents"),
            (401, 1004, "security token invalid: InvalidAudience"),
        ),
        (
            "an audience list without the configured one",
            "aud",
            json!(["aegis-agents", "someone-else"]),
            (401, 1004, "security token invalid: InvalidAudience"),
        ),
        (
            "an empty audience list",
            "aud",
            json!([]),
            (401, 1004, "security token invalid: InvalidAudience"),
        ),
    ];
    for (backend, url, _dir) in support::both_backends().await {
        let h = Harness::start(&url).await;
        for (i, (what, claim, value, expected)) in cases.iter().enumerate() {
            let claims = with(
                &h.claims(&format!("aud-iss-{i}")),
                claim,
                Some(value.clone()),
            );
            h.assert_refused(&format!("{backend}: {what}"), &claims, *expected)
                .await;
        }
        let listed = with(
            &h.claims("aud-list"),
            "aud",
            Some(json!(["someone-else", AUDIENCE])),
        );
        h.assert_authorized(
            &format!("{backend}: an audience list with the configured one"),
            &listed,
        )
        .await;
        h.gateway.shutdown().await;
    }
}

/// `exp` and `nbf` are checked at the gateway's clock with the default 60 s leeway (reference
/// §1.4: "validate `nbf` if present"; §1.7). An expired token is code 1003 (TOKEN_EXPIRED), not the
/// 1002 upstream's substring classifier gives it (reference §13.2 #19).
#[tokio::test]
async fn token_time_claims_are_checked_at_the_gateway_clock_with_a_60_second_leeway() {
    for (backend, url, _dir) in support::both_backends().await {
        let h = Harness::start(&url).await;
        let expired = with(&h.claims("exp-61"), "exp", Some(json!(NOW - 61)));
        h.assert_refused(
            &format!("{backend}: exp 61 s ago"),
            &expired,
            (401, 1003, "security token expired"),
        )
        .await;
        let within_leeway = with(&h.claims("exp-60"), "exp", Some(json!(NOW - 60)));
        h.assert_authorized(&format!("{backend}: exp 60 s ago"), &within_leeway)
            .await;

        let not_yet = with(&h.claims("nbf+61"), "nbf", Some(json!(NOW + 61)));
        h.assert_refused(
            &format!("{backend}: nbf in 61 s"),
            &not_yet,
            (401, 1004, "security token is not valid yet (nbf)"),
        )
        .await;
        let within_leeway = with(&h.claims("nbf+60"), "nbf", Some(json!(NOW + 60)));
        h.assert_authorized(&format!("{backend}: nbf in 60 s"), &within_leeway)
            .await;
        h.gateway.shutdown().await;
    }
}

/// Checklist #51 and reference §1.5 steps 4, 16, 18 and 20, with the explicit codes of §1.6 TARGET
/// (1005 SESSION_NOT_FOUND and 1006 SESSION_INACTIVE, which upstream never produces): the session
/// is the one the token's `exec_id` names; its agent must be the token's `sub`, its context the
/// token's `scp`, and it must not have expired.
#[tokio::test]
async fn a_token_that_does_not_match_its_session_is_refused() {
    for (backend, url, _dir) in support::both_backends().await {
        let h = Harness::start(&url).await;
        let cases: [(&str, Map<String, Value>, Expected); 4] = [
            (
                "sub is another agent",
                with(&h.claims("sub"), "sub", Some(json!("agent-other"))),
                (
                    401,
                    1004,
                    "security token subject does not match the session agent",
                ),
            ),
            (
                // A context that exists: the refusal is the mismatch, not an unknown name.
                "scp is another context",
                with(&h.claims("scp"), "scp", Some(json!("zaru-free"))),
                (
                    400,
                    3001,
                    "security context mismatch: scp claim does not match session security_context",
                ),
            ),
            (
                "no session has this exec_id",
                with(&h.claims("exec"), "exec_id", Some(json!("exec-unknown"))),
                (401, 1005, "session not found"),
            ),
            (
                "the session expired at this instant",
                with(
                    &h.claims("expired"),
                    "exec_id",
                    Some(json!(EXPIRED_SESSION)),
                ),
                (401, 1006, "session expired"),
            ),
        ];
        for (what, claims, expected) in &cases {
            h.assert_refused(&format!("{backend}: {what}"), claims, *expected)
                .await;
        }
        let expiring = with(
            &h.claims("expiring"),
            "exec_id",
            Some(json!(EXPIRING_SESSION)),
        );
        h.assert_authorized(&format!("{backend}: the session expires in 1 s"), &expiring)
            .await;
        h.gateway.shutdown().await;
    }
}
