//! The refusals of the token and session-binding stages of `POST /v1/invoke`, each pinned to its
//! HTTP status, SEAL code and message (reference §1.4-§1.6, parity checklist #49, #50, #51, #56),
//! on both backends, with the audit row each one leaves: an `AttestationFailed` row when the
//! token names a session the gateway knows (reference §10 TARGET: signature, token and replay
//! refusals are audited too), within that session's budget of
//! `ATTESTATION_AUDIT_BUDGET` a minute; none when it names no known session.
//!
//! Every envelope here is signed correctly by the session's agent key and carries a token signed
//! by the configured RS256 key: each case changes one claim or one session field, and a control
//! case with nothing changed is accepted, so each refusal is the work of that one change.

mod refusal_support;
mod support;

use aegis_seal_crds::Snapshot;
use aegis_seal_gateway::application::invocation::ATTESTATION_AUDIT_BUDGET;
use aegis_seal_gateway::infrastructure::persistence::{Database, SessionRecord};
use chrono::Duration;
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
        let config = [
            ("SEAL_GATEWAY_SEAL_JWT_ISSUER", ISSUER),
            ("SEAL_GATEWAY_SEAL_JWT_AUDIENCE", AUDIENCE),
        ];
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
        let (status, body, rows) = self.seal.invoke(claims, params).await;
        assert_seal_error(what, status, &body, expected);
        let session = claims
            .get("exec_id")
            .and_then(Value::as_str)
            .filter(|id| KNOWN_SESSIONS.contains(id));
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
        let (status, body, rows) = self
            .seal
            .invoke(claims, json!({"name": TOOL, "arguments": {}}))
            .await;
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
