//! The refusals of the token and session-binding stages of `POST /v1/invoke`, each pinned to its
//! HTTP status, SEAL code and message (reference §1.4-§1.6, parity checklist #49, #50, #51, #56),
//! on both backends, with the audit row each one leaves: an `AttestationFailed` row when the
//! token names a session the gateway knows (reference §10 TARGET: signature, token and replay
//! refusals are audited too), within that session's budget of
//! `ATTESTATION_AUDIT_BUDGET` a minute; none when it names no known session, or when it is
//! refused before the session is looked up.
//!
//! Every envelope here is signed correctly by the session's agent key and carries a token signed
//! by the configured RS256 key, unless the case is about that: each case changes one claim, one
//! session field, the token's key or algorithm, or one member of the envelope, and a control
//! case with nothing changed is accepted, so each refusal is the work of that one change.

mod refusal_support;
mod support;

use aegis_seal_crds::Snapshot;
use aegis_seal_gateway::application::invocation::ATTESTATION_AUDIT_BUDGET;
use aegis_seal_gateway::infrastructure::persistence::{Database, SessionRecord};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::Duration;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use refusal_support::{Expected, NOW, SealGateway, assert_seal_error, now};
use serde_json::{Map, Value, json};

/// Not the defaults (`aegis-orchestrator`, `aegis-agents`): the configured values are the ones
/// checked.
const ISSUER: &str = "seal-refusals-issuer";
const AUDIENCE: &str = "seal-refusals-audience";
/// No such tool is served: an authorized call is answered 404 after its `ToolCallAuthorized` row.
const TOOL: &str = "no-such-tool";
/// Sessions beside the vectors' `exec-0001`, with the same agent key.
const EXPIRED_SESSION: &str = "exec-expired";
const EXPIRING_SESSION: &str = "exec-expiring";

struct Harness {
    seal: SealGateway,
    /// Refusals audited so far, per session: past the budget they leave no row.
    audited: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

/// Every session the harness registers: a refusal naming one of them is audited.
const KNOWN_SESSIONS: [&str; 3] = ["exec-0001", EXPIRED_SESSION, EXPIRING_SESSION];

impl Harness {
    async fn start(url: &str) -> Self {
        Self::start_with(url, &[]).await
    }

    /// [`Self::start`] with `extra` settings (environment-style) beside the issuer and audience.
    async fn start_with(url: &str, extra: &[(&str, &str)]) -> Self {
        let db = Database::connect(url).await.unwrap();
        let session = support::Signer::from_vectors().session_record(now());
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
        let mut config = vec![
            ("SEAL_GATEWAY_SEAL_JWT_ISSUER", ISSUER),
            ("SEAL_GATEWAY_SEAL_JWT_AUDIENCE", AUDIENCE),
        ];
        config.extend_from_slice(extra);
        let snapshot = Snapshot::default();
        Self {
            seal: SealGateway::start(db, snapshot, &config).await,
            audited: Default::default(),
        }
    }

    /// Every claim the gateway requires, valid for the vectors' session, with a jti of its own and
    /// `changes` set over them.
    fn claims(&self, jti: &str, changes: Value) -> Map<String, Value> {
        let mut claims = self
            .seal
            .claims(jti, json!({"iss": ISSUER, "aud": AUDIENCE}));
        claims.extend(changes.as_object().unwrap().clone());
        claims
    }

    /// `claims` are refused with exactly `expected`, in the SEAL error body (checklist #56), and
    /// leave one `AttestationFailed` row if they name a known session whose budget is not spent,
    /// else none.
    async fn assert_refused(&self, what: &str, claims: &Map<String, Value>, expected: Expected) {
        let params = json!({"name": TOOL, "arguments": {}});
        self.assert_refused_call(what, claims, params, expected)
            .await;
    }

    /// [`Self::assert_refused`] for a `tools/call` of `params`.
    async fn assert_refused_call(
        &self,
        what: &str,
        claims: &Map<String, Value>,
        params: Value,
        expected: Expected,
    ) {
        let session = claims
            .get("exec_id")
            .and_then(Value::as_str)
            .filter(|id| KNOWN_SESSIONS.contains(id));
        let envelope = self.signed(&self.seal.token(claims), params);
        self.assert_refused_envelope(what, session, &envelope, expected)
            .await;
    }

    /// A `tools/call` of `params` carrying `token`, dated `NOW`, signed by the session's agent key.
    fn signed(&self, token: &str, params: Value) -> Value {
        self.seal.sign(SealGateway::envelope(token, params))
    }

    /// `envelope` is refused with exactly `expected`, in the SEAL error body, and leaves one
    /// `AttestationFailed` row if `session` is given and its budget is not spent, else none.
    async fn assert_refused_envelope(
        &self,
        what: &str,
        session: Option<&str>,
        envelope: &Value,
        expected: Expected,
    ) {
        let (status, body, rows) = self.seal.post(envelope).await;
        assert_seal_error(what, status, &body, expected);
        let within_budget = session.is_some_and(|id| {
            let mut audited = self.audited.lock().unwrap();
            let n = audited.entry(id.to_owned()).or_default();
            *n += 1;
            *n <= ATTESTATION_AUDIT_BUDGET.calls
        });
        let Some(id) = session.filter(|_| within_budget) else {
            assert_eq!(rows, [], "{what}: no known session, or its budget spent");
            return;
        };
        let [row] = rows.as_slice() else {
            panic!("{what}: one AttestationFailed row expected, got {rows:#?}");
        };
        let (_, code, reason) = expected;
        assert_eq!(row.event_type, "AttestationFailed", "{what}");
        assert_eq!(row.tenant_id.as_deref(), Some("acme"), "{what}");
        let outcome = row.payload["outcome"].as_str().unwrap_or_default();
        assert!(
            [
                "signature_invalid",
                "expired",
                "malformed",
                "unauthorized",
                "context_mismatch"
            ]
            .contains(&outcome),
            "{what}: {outcome}"
        );
        let mut payload = row.payload.clone();
        payload.as_object_mut().unwrap().remove("outcome");
        assert_eq!(
            payload,
            json!({
                "execution_id": id, "agent_id": "agent-7f3c", "tenant_id": "acme",
                "code": code, "reason": reason, "failed_at": "2026-02-17T14:32:01Z",
            }),
            "{what}"
        );
    }

    /// `claims` pass every check: the call is authorized (one `ToolCallAuthorized` row) and answered
    /// 404, since the tool does not exist.
    async fn assert_authorized(&self, what: &str, claims: &Map<String, Value>) {
        let params = json!({"name": TOOL, "arguments": {}});
        let envelope = self.signed(&self.seal.token(claims), params);
        self.assert_authorized_envelope(what, &envelope).await;
    }

    /// [`Self::assert_authorized`] for `envelope` as it is.
    async fn assert_authorized_envelope(&self, what: &str, envelope: &Value) {
        let (status, body, rows) = self.seal.post(envelope).await;
        assert_eq!(
            (status, &body),
            (404, &json!({"error": format!("tool '{TOOL}' not found")})),
            "{what}"
        );
        let authorized = rows.iter().filter(|r| r.event_type == "ToolCallAuthorized");
        assert_eq!(authorized.count(), 1, "{what}");
    }
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
        h.assert_authorized(
            &format!("{backend}: every claim"),
            &h.claims("all-claims", json!({})),
        )
        .await;
        for (claim, expected) in cases {
            let mut claims = h.claims(&format!("missing-{claim}"), json!({}));
            claims.remove(claim);
            h.assert_refused(&format!("{backend}: no {claim}"), &claims, expected)
                .await;
        }
        h.seal.gateway.shutdown().await;
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
            let claims = h.claims(&format!("empty-{claim}"), json!({ claim: value }));
            h.assert_refused(&format!("{backend}: {claim} {value:?}"), &claims, expected)
                .await;
        }
        h.seal.gateway.shutdown().await;
    }
}

/// Reference §1.4 (`wid`: "required string, non-empty after trim. Else `security token wid claim
/// is empty` (401/1004)") and §1.5 step 12.
#[tokio::test]
async fn an_empty_wid_claim_is_refused_with_the_reference_message() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(&support::sqlite_url(dir.path())).await;
    for value in ["", "   "] {
        let claims = h.claims("empty-wid", json!({ "wid": value }));
        h.assert_refused(
            &format!("wid {value:?}"),
            &claims,
            (401, 1004, "security token wid claim is empty"),
        )
        .await;
    }
    h.seal.gateway.shutdown().await;
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
            let claims = h.claims(&format!("aud-iss-{i}"), json!({ *claim: value }));
            h.assert_refused(&format!("{backend}: {what}"), &claims, *expected)
                .await;
        }
        let listed = h.claims("aud-list", json!({"aud": ["someone-else", AUDIENCE]}));
        h.assert_authorized(
            &format!("{backend}: an audience list with the configured one"),
            &listed,
        )
        .await;
        h.seal.gateway.shutdown().await;
    }
}

/// `exp` and `nbf` are checked at the gateway's clock with the default 60 s leeway (reference
/// §1.4: "validate `nbf` if present"; §1.7). An expired token is code 1003 (TOKEN_EXPIRED), not the
/// 1002 upstream's substring classifier gives it (reference §13.2 #19).
#[tokio::test]
async fn token_time_claims_are_checked_at_the_gateway_clock_with_a_60_second_leeway() {
    for (backend, url, _dir) in support::both_backends().await {
        let h = Harness::start(&url).await;
        let expired = h.claims("exp-61", json!({"exp": NOW - 61}));
        h.assert_refused(
            &format!("{backend}: exp 61 s ago"),
            &expired,
            (401, 1003, "security token expired"),
        )
        .await;
        let within_leeway = h.claims("exp-60", json!({"exp": NOW - 60}));
        h.assert_authorized(&format!("{backend}: exp 60 s ago"), &within_leeway)
            .await;

        let not_yet = h.claims("nbf+61", json!({"nbf": NOW + 61}));
        h.assert_refused(
            &format!("{backend}: nbf in 61 s"),
            &not_yet,
            (401, 1004, "security token is not valid yet (nbf)"),
        )
        .await;
        let within_leeway = h.claims("nbf+60", json!({"nbf": NOW + 60}));
        h.assert_authorized(&format!("{backend}: nbf in 60 s"), &within_leeway)
            .await;
        // The leeway is added and subtracted without overflowing at the ends of i64.
        let far = h.claims("exp-max", json!({"exp": i64::MAX, "nbf": i64::MIN}));
        h.assert_authorized(&format!("{backend}: exp and nbf at the ends of i64"), &far)
            .await;
        h.seal.gateway.shutdown().await;
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
                h.claims("sub", json!({"sub": "agent-other"})),
                (
                    401,
                    1004,
                    "security token subject does not match the session agent",
                ),
            ),
            (
                // A context that exists: the refusal is the mismatch, not an unknown name.
                "scp is another context",
                h.claims("scp", json!({"scp": "zaru-free"})),
                (
                    400,
                    3001,
                    "security context mismatch: scp claim does not match session security_context",
                ),
            ),
            (
                "no session has this exec_id",
                h.claims("exec", json!({"exec_id": "exec-unknown"})),
                (401, 1005, "session not found"),
            ),
            (
                "the session expired at this instant",
                h.claims("expired", json!({"exec_id": EXPIRED_SESSION})),
                (401, 1006, "session expired"),
            ),
        ];
        for (what, claims, expected) in &cases {
            h.assert_refused(&format!("{backend}: {what}"), claims, *expected)
                .await;
        }
        let expiring = h.claims("expiring", json!({"exec_id": EXPIRING_SESSION}));
        h.assert_authorized(&format!("{backend}: the session expires in 1 s"), &expiring)
            .await;
        h.seal.gateway.shutdown().await;
    }
}

/// A correctly signed envelope of a bound session whose payload is no usable `tools/call` is a
/// 400 (1000 MALFORMED_ENVELOPE) naming what is wrong, and is audited like the other refusals
/// of a known session: its sender passed every check of who it is.
#[tokio::test]
async fn a_verified_call_with_unusable_params_is_refused_and_audited() {
    for (backend, url, _dir) in support::both_backends().await {
        let h = Harness::start(&url).await;
        let cases = [
            (
                "no name",
                json!({"arguments": {}}),
                "invalid tools/call params: missing field `name`",
            ),
            (
                "no arguments",
                json!({"name": TOOL}),
                "invalid tools/call params: missing field `arguments`",
            ),
            (
                "a blank requested tenant",
                json!({"name": TOOL, "arguments": {}, "_meta": {"tenant_id": " "}}),
                "invalid tools/call params: _meta.tenant_id must be a non-empty string",
            ),
            (
                "a NUL in the tool name",
                json!({"name": "x\u{0}", "arguments": {}}),
                "invalid tools/call params: `name` contains a control character",
            ),
            (
                "a newline in the requested tenant",
                json!({"name": TOOL, "arguments": {}, "_meta": {"tenant_id": "acme\nother"}}),
                "invalid tools/call params: _meta.tenant_id contains a control character",
            ),
        ];
        for (i, (what, params, message)) in cases.into_iter().enumerate() {
            let claims = h.claims(&format!("params-{i}"), json!({}));
            h.assert_refused_call(
                &format!("{backend}: {what}"),
                &claims,
                params,
                (400, 1000, message),
            )
            .await;
        }
        h.seal.gateway.shutdown().await;
    }
}

/// A flood of refused envelopes for one session is audited up to the session's budget and no
/// further (each still answers, logs and counts), and the budget is per session.
#[tokio::test]
async fn refusals_of_one_session_are_audited_up_to_its_budget() {
    let budget = ATTESTATION_AUDIT_BUDGET.calls as usize;
    for (backend, url, _dir) in support::both_backends().await {
        let h = Harness::start(&url).await;
        let count = || async {
            let rows = refusal_support::events_after(&h.seal.db, 0).await;
            rows.iter()
                .filter(|r| r.event_type == "AttestationFailed")
                .map(|r| r.payload["execution_id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        for i in 0..budget + 2 {
            let expired = h.claims(&format!("flood-{i}"), json!({"exp": NOW - 3600}));
            h.assert_refused(
                &format!("{backend}: expired token {i}"),
                &expired,
                (401, 1003, "security token expired"),
            )
            .await;
        }
        assert_eq!(count().await, vec!["exec-0001"; budget], "{backend}");

        // Another session's refusals have their own budget.
        let other = h.claims(
            "other-session",
            json!({"exec_id": EXPIRING_SESSION, "exp": NOW - 3600}),
        );
        h.assert_refused(
            &format!("{backend}: another session"),
            &other,
            (401, 1003, "security token expired"),
        )
        .await;
        assert_eq!(count().await.len(), budget + 1, "{backend}");
        h.seal.gateway.shutdown().await;
    }
}

/// A test-only RSA 2048 key (`openssl genpkey -algorithm RSA`) that no gateway here trusts.
const OTHER_RSA_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQDWQmlTZQL6Wclt
qZ9L296QeIjIQoMELa9HHEkbkvNsww8qr+4Yf7O6ooi1bhfnpuWhRdcKOnk30uqm
xK7xskLhVj8rJE/j55zlIA5tubQnuRhwWlEawOkYOKirp/zlqXe8OdgxpgTdsm3R
8Z0GdTc719KGz5BpOsdCUERG6/VdCtIi0N2WOCs1pfmsw1yP0OqyUQ7B3U+M52wu
QtOP1+fh4bhVBi8EtIod5RHTAM770jB/4DvjxVde2Yn7QXEtDuphiM4Gi9oShkr3
9PsSvqqk9430Lw43fYBlNF7kUUCn3zRHy1bOmrveH5TiIFwy2hoVIVf5EEiCXr/t
7SPMT/QnAgMBAAECggEAFeQjLsobS8jws6upAu8sBkbKcuuYx0yDpBhXv+F7zZkA
a7Qd95LUojUJEsB04M5El/2ywvDGgdWi8/cUiM1V2AAf5CCJqRd5CFAGKV/X8FcR
ECmqL7mWF0tysFcxl6WA/lJKrIfx51Tbs5+kE4zWX97lO7DpaFcBFN1unHBvWVoZ
w2ifwgrqBu0POzMaWXn9BC6ZNpNbSIKG9QIU3qsRBSjdfOfgNxDEWo77fUJTMfuF
zpCV8pfBZ1XdbO2G6uT7rUlQjs9SxU3N89Q5el+2JMCips9lTHkCnpToCdWIsg8q
mt6SBKihyunBH717ZSBzhv625uJhn7tmoNQoNzArAQKBgQD2KBvUCtY4y5uwzB8K
g5Q0nsv45mEkb2u1yeztdnSjzG70gFM4roZ0V8Luj7dADq87y0KyEZCJh5QjamUW
O2ixF2GgK1E/RRXcNngjMgOxIcOSada4GdHXAeZdBk19ykG8q6V9Zu3RxifYcHNX
s/NqJxFwBr+l+686axlt9Phx0QKBgQDe08W8+pyD7jRB1Txse2b6C7w9HV/1cV77
iGL6kA/Hl6uNeVl1ADKKyfteb7hCmprb2f21vhuSO+zTpihdrjZV9ARk58YDiJmZ
NQRwjX4XAnwv3Njxpdcgr8lRvkx1Mbr07q79rZ1gBJAz+dWTiScyjQVIE5qh1Wdn
Edw7+7lMdwKBgB5dDDG3tH0FAItqYlnVqS5keByXrlvkMpEV+1e/SNv7l6QpQBq5
zHQFb1ImACCyrwLdK7jzWbTdOHS15wo7Acr2a2Bqd3cqemvTfDY7MSFkXM9upsHG
zY+L+HJ5GI3vqPQw6BTz4VoC619TX6bt15S8hPYgnvtGdHLsSxK5KPxBAoGABZ7H
zQVxLy6x6LstI/tU1Je5Lr1v7yvl3mhJPtKlYz5jGFVoOThBDhkcGvysZBmsMEFm
UdAyt9SFG62ENSCwxCg8eCMUboBih2e77e7TsFbitP5YBnhNXcixRjuLiCUx9v2S
MlnPr11OGdGCXo9GCtNdv7ym2NAeJI5hxK2Lte8CgYA18k3y+tJEJY/2ULHZaeqH
RSvCvzoeBZo/RuMEOC92p0wVXOWUv07PXOZhrm6JkOvYaX9fQA5B9bEABS3yfQOh
UDBliqiyfgIVZ8OrVrfN6cSoeS2WQ21JDCuiPdud4mGlAjrDxg+hocG3+oiJ1qmd
9f3JiFTrF81Pihlmyz9/9g==
-----END PRIVATE KEY-----";

/// An Ed25519 token key of `seed` (PKCS#8 v1 DER), which no gateway here trusts.
fn other_ed25519_key(seed: [u8; 32]) -> EncodingKey {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    EncodingKey::from_ed_der(&der)
}

/// A token of `claims` with header `alg`, signed by `key`.
fn token_signed_by(alg: Algorithm, key: &EncodingKey, claims: &Map<String, Value>) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

/// Reference §1.3 (RFC §4.2.1: RS256 and EdDSA, each with its configured key) and checklist #49:
/// a token whose claims are all correct but which the configured key of its algorithm did not
/// sign is a 401 with code 1004, `security token invalid: InvalidSignature`, audited; the same
/// claims signed by the configured keys are accepted.
#[tokio::test]
async fn a_token_signed_by_another_key_is_refused_as_an_invalid_signature() {
    let (eddsa_key, eddsa_public_pem) = refusal_support::eddsa_token_key();
    let other_rsa = EncodingKey::from_rsa_pem(OTHER_RSA_PRIVATE_PEM.as_bytes()).unwrap();
    // Not [7; 32]: that is the vectors' own EdDSA key.
    let other_ed25519 = other_ed25519_key([42; 32]);
    let invalid = (401, 1004, "security token invalid: InvalidSignature");
    for (backend, url, _dir) in support::both_backends().await {
        let config = [(
            "SEAL_GATEWAY_SEAL_JWT_EDDSA_PUBLIC_KEY_PEM",
            eddsa_public_pem.as_str(),
        )];
        let h = Harness::start_with(&url, &config).await;
        let params = || json!({"name": TOOL, "arguments": {}});

        // The configured keys: both algorithms are accepted.
        let rs256 = h.seal.token(&h.claims("rs256-ok", json!({})));
        h.assert_authorized_envelope(
            &format!("{backend}: RS256 by the configured key"),
            &h.signed(&rs256, params()),
        )
        .await;
        let eddsa = token_signed_by(
            Algorithm::EdDSA,
            &eddsa_key,
            &h.claims("eddsa-ok", json!({})),
        );
        h.assert_authorized_envelope(
            &format!("{backend}: EdDSA by the configured key"),
            &h.signed(&eddsa, params()),
        )
        .await;

        for (what, alg, key, jti) in [
            (
                "RS256 by another RSA key",
                Algorithm::RS256,
                &other_rsa,
                "rs256-other",
            ),
            (
                "EdDSA by another Ed25519 key",
                Algorithm::EdDSA,
                &other_ed25519,
                "eddsa-other",
            ),
        ] {
            let token = token_signed_by(alg, key, &h.claims(jti, json!({})));
            h.assert_refused_envelope(
                &format!("{backend}: {what}"),
                Some("exec-0001"),
                &h.signed(&token, params()),
                invalid,
            )
            .await;
        }
        h.seal.gateway.shutdown().await;
    }
}

/// Reference §1.3 TARGET ("choose by header `alg`, with a configured key per algorithm, and never
/// accept `none`/HS*"): an EdDSA token at a gateway with only an RS256 key is refused naming the
/// missing key; an HS256 token (here the classic confusion: HMAC keyed with the RSA public key)
/// and an `alg: none` token with no signature are refused before any key is tried.
#[tokio::test]
async fn a_token_of_an_unconfigured_or_unaccepted_algorithm_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(&support::sqlite_url(dir.path())).await;
    let params = || json!({"name": TOOL, "arguments": {}});
    let (eddsa_key, _) = refusal_support::eddsa_token_key();

    // Signed by the vectors' own EdDSA key, which this gateway was not given.
    let eddsa = token_signed_by(
        Algorithm::EdDSA,
        &eddsa_key,
        &h.claims("eddsa-unconfigured", json!({})),
    );
    h.assert_refused_envelope(
        "EdDSA with only an RS256 key configured",
        Some("exec-0001"),
        &h.signed(&eddsa, params()),
        (401, 1004, "SEAL JWT public key is not configured (EdDSA)"),
    )
    .await;

    let rsa_public_pem = support::Signer::from_vectors().rs256_public_key_pem;
    let hs256 = token_signed_by(
        Algorithm::HS256,
        &EncodingKey::from_secret(rsa_public_pem.as_bytes()).unwrap(),
        &h.claims("hs256", json!({})),
    );
    h.assert_refused_envelope(
        "HS256 keyed with the RSA public key",
        Some("exec-0001"),
        &h.signed(&hs256, params()),
        (
            401,
            1004,
            "security token invalid: algorithm HS256 is not accepted (RS256 or EdDSA)",
        ),
    )
    .await;

    let segment = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = Value::Object(h.claims("alg-none", json!({})));
    let none = format!(
        "{}.{}.",
        segment(json!({"alg": "none", "typ": "JWT"})),
        segment(claims)
    );
    // The header does not parse: `none` is no algorithm the library knows. Its own words follow
    // the prefix.
    let header_error = jsonwebtoken::decode_header(&none).unwrap_err().to_string();
    assert!(
        header_error.contains("unknown variant `none`"),
        "{header_error}"
    );
    let message: &'static str = format!("security token invalid: {header_error}").leak();
    h.assert_refused_envelope(
        "alg none, no signature",
        Some("exec-0001"),
        &h.signed(&none, params()),
        (401, 1004, message),
    )
    .await;
    h.seal.gateway.shutdown().await;
}

/// Reference §1.5 (freshness, step 8, before the Ed25519 check, step 9) and the runbook's "clock
/// skew large enough to fail the freshness window before the signature is checked": an envelope
/// outside the window is refused as stale (401, 1003) whatever its signature, even one that is
/// not base64; the same signatures on a fresh envelope are signature refusals.
#[tokio::test]
async fn a_stale_envelope_is_refused_as_stale_before_its_signature_is_checked() {
    let zeros = STANDARD.encode([0u8; 64]);
    let short = STANDARD.encode([0u8; 63]);
    for (backend, url, _dir) in support::both_backends().await {
        let h = Harness::start(&url).await;
        let token = h.seal.token(&h.claims("stale", json!({})));
        let envelope = |signature: &str, timestamp: i64| {
            let mut envelope = h.signed(&token, json!({"name": TOOL, "arguments": {}}));
            envelope["signature"] = signature.into();
            envelope["timestamp"] = timestamp.into();
            envelope
        };
        for signature in [zeros.as_str(), short.as_str(), "not base64!"] {
            for (timestamp, expected) in [
                (
                    NOW - 31,
                    "envelope timestamp is outside the 30 second freshness window (31s)",
                ),
                (
                    NOW + 31,
                    "envelope timestamp is outside the 30 second freshness window (-31s)",
                ),
            ] {
                h.assert_refused_envelope(
                    &format!("{backend}: signature {signature:?} at {timestamp}"),
                    Some("exec-0001"),
                    &envelope(signature, timestamp),
                    (401, 1003, expected),
                )
                .await;
            }
        }
        // Fresh, the same signatures are what is refused.
        for (signature, expected) in [
            (
                zeros.as_str(),
                (
                    401,
                    1002,
                    "signature verification failed: invalid signature for payload",
                ),
            ),
            (short.as_str(), (401, 1001, "signature must be 64 bytes")),
        ] {
            h.assert_refused_envelope(
                &format!("{backend}: fresh, signature {signature:?}"),
                Some("exec-0001"),
                &envelope(signature, NOW),
                expected,
            )
            .await;
        }
        h.seal.gateway.shutdown().await;
    }
}

/// Reference §1.1 and §1.5 steps 7 and 13 (400, code 1000): a protocol other than `seal/v1`, a
/// payload method other than `tools/call`, and a payload that is no JSON-RPC call are each
/// refused naming what is wrong. The protocol is read before the token, so that refusal names no
/// session and leaves no row; the payload ones come from a verified session and are audited.
/// Unknown top-level envelope members are ignored (reference §1.1: "unknown fields are ignored").
#[tokio::test]
async fn an_envelope_with_another_protocol_or_an_unusable_payload_is_refused_naming_it() {
    for (backend, url, _dir) in support::both_backends().await {
        let h = Harness::start(&url).await;
        let call = |jti: &str| {
            let token = h.seal.token(&h.claims(jti, json!({})));
            SealGateway::envelope(&token, json!({"name": TOOL, "arguments": {}}))
        };

        let mut v2 = call("protocol");
        v2["protocol"] = "seal/v2".into();
        h.assert_refused_envelope(
            &format!("{backend}: protocol seal/v2"),
            None,
            &h.seal.sign(v2),
            (400, 1000, "unsupported SEAL protocol 'seal/v2'"),
        )
        .await;

        let mut list = call("method");
        list["payload"]["method"] = "tools/list".into();
        h.assert_refused_envelope(
            &format!("{backend}: method tools/list"),
            Some("exec-0001"),
            &h.seal.sign(list),
            (400, 1000, "payload method must be tools/call"),
        )
        .await;

        let mut empty = call("empty-payload");
        empty["payload"] = json!({});
        h.assert_refused_envelope(
            &format!("{backend}: an empty payload"),
            Some("exec-0001"),
            &h.seal.sign(empty),
            (
                400,
                1000,
                "invalid payload: missing field `method` at line 1 column 2",
            ),
        )
        .await;

        // Members the envelope does not define, after signing (the signature does not cover
        // them): the call goes through.
        let mut extra = h.seal.sign(call("unknown-members"));
        let members = extra.as_object_mut().unwrap();
        members.insert("x_trace".into(), json!({"id": "abc", "hops": [1, 2]}));
        members.insert("version".into(), json!(2));
        h.assert_authorized_envelope(&format!("{backend}: unknown members"), &extra)
            .await;
        h.seal.gateway.shutdown().await;
    }
}
