//! Tenancy on both sides of the gateway, on both backends.
//!
//! The SEAL path (reference §4.2 TARGET, §13.1 items 3-5; runbook "Tenant Boundary Violation"): a
//! tenant's workflow, session or SecurityContext used with another tenant's token is a 403
//! `tenant mismatch`; a consumer token asking through `params._meta.tenant_id` to act for another
//! tenant is a 403 `unauthorized tenant`; a service-account token may delegate (to the tenants its
//! grant claim lists, when `auth.seal_delegation_claim` is set), and the call's rows are then the
//! delegated tenant's; a SecurityContext refusal (deny list, no capability) is a 403
//! with its own code. Every policy or tenancy refusal leaves exactly one `PolicyViolationBlocked`
//! row, pinned field by field, and nothing else.
//!
//! The session endpoints with operator authentication on (reference §2.4.4-§2.4.5, §13.1 items 3,
//! 4, 6, 7): a tenant operator lists, reads, revokes and overwrites its own sessions only; a
//! platform operator sees and revokes every tenant's; an upsert's omitted fields get their
//! documented defaults; `security_token` is stored and never returned.

mod control_support;
mod refusal_support;
mod support;

use aegis_seal_crds::Snapshot;
use aegis_seal_gateway::infrastructure::persistence::{
    CatalogSource, Database, SessionRecord, SessionStatus,
};
use chrono::{DateTime, Duration, Utc};
use control_support::{Control, JwksServer, operator, standard_jwks};
use refusal_support::{
    EventRow, Expected, SealGateway, assert_seal_error, events_after, last_event_id, now,
};
use serde_json::{Value, json};

/// `NOW` as chrono serialises it into payloads.
const NOW_RFC3339: &str = "2026-02-17T14:32:01Z";
/// The vectors' agent, owner of every session here.
const AGENT: &str = "agent-7f3c";

/// The vectors' session, owned by tenant `acme`, context `aegis-system-default`.
const ACME_SESSION: &str = "exec-0001";
/// Owned by tenant `globex`, context `aegis-system-default`.
const GLOBEX_SESSION: &str = "exec-globex";
/// System-global (no tenant), context `aegis-system-default`.
const SHARED_SESSION: &str = "exec-shared";
/// System-global, context `acme-ctx` (owned by `acme`).
const ACME_CTX_SESSION: &str = "exec-acme-ctx";
/// Owned by `acme`, context `guarded` (global, with a deny list).
const GUARDED_SESSION: &str = "exec-guarded";
/// Owned by `acme`, context `aegis-system-default`, allowed only tools matching `github.*`.
const GITHUB_ONLY_SESSION: &str = "exec-github-only";
/// Owned by `acme`, context `retired-ctx`, which no SecurityContext defines.
const RETIRED_CTX_SESSION: &str = "exec-retired-ctx";

/// Two tenants' workflows (each answers `{"id": 7}`), a global unrestricted context under the name
/// the vectors' session uses, a global context with a deny list, and a context owned by `acme`.
fn manifests(base_url: &str) -> String {
    let workflow = |name: &str, tenant: &str| {
        format!(
            r#"
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: {name}}}
spec:
  tenant_id: {tenant}
  api_spec:
    base_url: {base_url}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/repos: {{post: {{operationId: createRepo}}}}}}}}}}
  steps: [{{name: create, operation_id: createRepo}}]
"#
        )
    };
    format!(
        r#"{}---{}---
apiVersion: seal.100monkeys.ai/v1
kind: SecurityContext
metadata: {{name: aegis-system-default}}
spec: {{capabilities: [{{tool_pattern: "*"}}]}}
---
apiVersion: seal.100monkeys.ai/v1
kind: SecurityContext
metadata: {{name: guarded}}
spec:
  capabilities: [{{tool_pattern: acme-repos}}, {{tool_pattern: "danger.*"}}]
  deny_list: ["danger.*"]
---
apiVersion: seal.100monkeys.ai/v1
kind: SecurityContext
metadata: {{name: acme-ctx}}
spec: {{tenant_id: acme, capabilities: [{{tool_pattern: "*"}}]}}
"#,
        workflow("acme-repos", "acme"),
        workflow("globex-repos", "globex"),
    )
}

/// A gateway at the frozen clock, serving [`manifests`] against a live upstream, with the sessions
/// named above.
struct Seal {
    seal: SealGateway,
}

/// One call: whose token, which session, what it asks.
struct Call<'a> {
    tenant: &'a str,
    session: &'a str,
    scp: &'a str,
    tool: &'a str,
    /// Extra claims, e.g. `identity_kind`.
    extra: Value,
    /// `params._meta`, if any.
    meta: Option<Value>,
    jti: &'a str,
}

impl<'a> Call<'a> {
    /// A call of `tenant` through `session` (context `aegis-system-default`) to `tool`.
    fn new(tenant: &'a str, session: &'a str, tool: &'a str, jti: &'a str) -> Self {
        Self {
            tenant,
            session,
            scp: "aegis-system-default",
            tool,
            extra: json!({}),
            meta: None,
            jti,
        }
    }

    /// The same call, its token carrying `extra` claims too.
    fn with_claims(self, extra: &Value) -> Self {
        Self {
            extra: extra.clone(),
            ..self
        }
    }

    /// The same call, asking through `params._meta.tenant_id` to act for `tenant`.
    fn acting_for(self, tenant: impl Into<Value>) -> Self {
        Self {
            meta: Some(json!({"tenant_id": tenant.into()})),
            ..self
        }
    }
}

impl Seal {
    async fn start(url: &str) -> Self {
        Self::start_with(url, &[]).await
    }

    /// [`Seal::start`] with `config` overrides beside the vectors' token key.
    async fn start_with(url: &str, config: &[(&str, &str)]) -> Self {
        let upstream = support::serve(|_req| async {
            let mut response = http::Response::new(http_body_util::Full::new(
                bytes::Bytes::from_static(br#"{"id": 7}"#),
            ));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            response
        })
        .await;
        let snapshot = support::snapshot_of(&manifests(&format!("http://{upstream}")));
        let db = Database::connect(url).await.unwrap();
        db.sync_catalog(&snapshot, CatalogSource::Manifest)
            .await
            .unwrap();
        let acme = support::Signer::from_vectors().session_record(now());
        assert_eq!(
            (acme.execution_id.as_str(), acme.tenant_id.as_deref()),
            (ACME_SESSION, Some("acme"))
        );
        let session = |execution_id: &str, tenant: Option<&str>, context: &str| SessionRecord {
            execution_id: execution_id.into(),
            tenant_id: tenant.map(str::to_owned),
            security_context: context.into(),
            ..acme.clone()
        };
        for record in [
            acme.clone(),
            session(GLOBEX_SESSION, Some("globex"), "aegis-system-default"),
            session(SHARED_SESSION, None, "aegis-system-default"),
            session(ACME_CTX_SESSION, None, "acme-ctx"),
            session(GUARDED_SESSION, Some("acme"), "guarded"),
            SessionRecord {
                allowed_tool_patterns: vec!["github.*".into()],
                ..session(GITHUB_ONLY_SESSION, Some("acme"), "aegis-system-default")
            },
            session(RETIRED_CTX_SESSION, Some("acme"), "retired-ctx"),
        ] {
            db.upsert_session(&record).await.unwrap();
        }
        Self {
            seal: SealGateway::start(db, snapshot, config).await,
        }
    }

    /// Sends `call`: the status, the JSON body, and the audit rows it left.
    async fn invoke(&self, call: &Call<'_>) -> (u16, Value, Vec<EventRow>) {
        let changes = json!({"exec_id": call.session, "tenant_id": call.tenant, "scp": call.scp});
        let mut claims = self.seal.claims(call.jti, changes);
        claims.extend(call.extra.as_object().unwrap().clone());
        let mut params = json!({"name": call.tool, "arguments": {"name": "r"}});
        if let Some(meta) = &call.meta {
            params["_meta"] = meta.clone();
        }
        self.seal.invoke(&claims, params).await
    }

    /// `call` is refused with exactly `expected` in a SEAL error body, and leaves one row:
    /// `PolicyViolationBlocked` of `row_tenant` (column and payload) with every field.
    async fn assert_blocked(
        &self,
        what: &str,
        call: &Call<'_>,
        expected: Expected,
        violation_type: &str,
        row_tenant: &str,
    ) {
        let (status, body, rows) = self.invoke(call).await;
        assert_seal_error(what, status, &body, expected);
        let row = EventRow {
            event_type: "PolicyViolationBlocked".into(),
            tenant_id: Some(row_tenant.into()),
            payload: json!({
                "execution_id": call.session,
                "agent_id": AGENT,
                "tool_name": call.tool,
                "security_context": call.scp,
                "tenant_id": row_tenant,
                "violation_type": violation_type,
                "code": expected.1,
                "reason": expected.2,
                "blocked_at": NOW_RFC3339,
            }),
        };
        assert_eq!(rows, [row], "{what}: the refusal's only row");
    }

    /// `call` runs its workflow (200, the upstream's `{"id": 7}`), and every row it leaves
    /// (`ToolCallAuthorized` then the workflow's three) is `tenant`'s.
    async fn assert_ran(&self, what: &str, call: &Call<'_>, tenant: &str) {
        let (status, body, rows) = self.invoke(call).await;
        assert_eq!(status, 200, "{what}: {body}");
        assert_eq!(body["result"]["result"], json!({"id": 7}), "{what}: {body}");
        let types: Vec<&str> = rows.iter().map(|r| r.event_type.as_str()).collect();
        assert_eq!(
            types,
            [
                "ToolCallAuthorized",
                "WorkflowInvocationStarted",
                "WorkflowStepExecuted",
                "WorkflowInvocationCompleted"
            ],
            "{what}"
        );
        for row in &rows {
            assert_eq!(row.tenant_id.as_deref(), Some(tenant), "{what}: {row:?}");
        }
        assert_eq!(
            rows[0].payload,
            json!({
                "execution_id": call.session,
                "agent_id": AGENT,
                "tool_name": call.tool,
                "security_context": call.scp,
                "tenant_id": tenant,
                "authorized_at": NOW_RFC3339,
            }),
            "{what}"
        );
    }
}

/// Runbook cause 1 and reference §4.2 TARGET 1: a tenant-owned workflow, session or SecurityContext
/// used with another tenant's token is refused 403 `tenant mismatch` (SEAL 2000), audited as the
/// token tenant's `PolicyViolationBlocked` row; the owner's own token, and a system-global session
/// used by the owner, are served.
#[tokio::test]
async fn another_tenants_tool_session_or_context_is_a_tenant_mismatch() {
    for (backend, url, _dir) in support::both_backends().await {
        let h = Seal::start(&url).await;
        for (what, call, message) in [
            // A tool of acme, with globex's token through globex's own session.
            (
                "globex calls acme's tool",
                Call::new("globex", GLOBEX_SESSION, "acme-repos", "a-1"),
                "tenant mismatch: tool 'acme-repos' belongs to another tenant than 'globex'",
            ),
            // The same through a system-global session: the tool's owner still decides.
            (
                "globex calls acme's tool through a global session",
                Call::new("globex", SHARED_SESSION, "acme-repos", "a-2"),
                "tenant mismatch: tool 'acme-repos' belongs to another tenant than 'globex'",
            ),
            // acme's session, with globex's token, for globex's own tool: the session's owner
            // decides before the tool is looked up.
            (
                "globex uses acme's session",
                Call::new("globex", ACME_SESSION, "globex-repos", "a-3"),
                "tenant mismatch: session exec-0001 belongs to another tenant than the token's 'globex'",
            ),
            // A global session whose SecurityContext is acme's.
            (
                "globex through acme's security context",
                Call {
                    scp: "acme-ctx",
                    ..Call::new("globex", ACME_CTX_SESSION, "globex-repos", "a-4")
                },
                "tenant mismatch: security context 'acme-ctx' belongs to another tenant than 'globex'",
            ),
        ] {
            let what = format!("{backend}: {what}");
            h.assert_blocked(
                &what,
                &call,
                (403, 2000, message),
                "tenant_mismatch",
                "globex",
            )
            .await;
        }

        // The owners are served: each change above is what was refused.
        for (what, call) in [
            (
                "acme calls its tool",
                Call::new("acme", ACME_SESSION, "acme-repos", "a-ok-1"),
            ),
            (
                "globex calls its tool",
                Call::new("globex", GLOBEX_SESSION, "globex-repos", "a-ok-2"),
            ),
            (
                "acme through a global session",
                Call::new("acme", SHARED_SESSION, "acme-repos", "a-ok-3"),
            ),
            (
                "acme through its own context",
                Call {
                    scp: "acme-ctx",
                    ..Call::new("acme", ACME_CTX_SESSION, "acme-repos", "a-ok-4")
                },
            ),
        ] {
            h.assert_ran(&format!("{backend}: {what}"), &call, call.tenant)
                .await;
        }
        h.seal.gateway.shutdown().await;
    }
}

/// Runbook cause 2 and reference §4.2 TARGET 2: a consumer token (no `identity_kind`, or any kind
/// but a service account) asking through `params._meta.tenant_id` to act for another tenant is
/// refused 403 `unauthorized tenant` (SEAL 2000), audited as the token tenant's row. Asking for its
/// own tenant is no delegation and is served.
#[tokio::test]
async fn a_consumer_token_cannot_act_for_another_tenant() {
    let refused = (
        403,
        2000,
        "unauthorized tenant: a consumer token for tenant 'acme' cannot act for tenant 'globex'",
    );
    for (backend, url, _dir) in support::both_backends().await {
        let h = Seal::start(&url).await;
        for (i, extra) in [
            json!({}),
            json!({"identity_kind": "consumer"}),
            json!({"identity_kind": "user", "preferred_username": "alice"}),
            // Near misses of the service-account markers.
            json!({"identity_kind": "serviceaccount"}),
            json!({"preferred_username": "svc-account-orchestrator"}),
        ]
        .into_iter()
        .enumerate()
        {
            let jti = format!("b-{i}");
            h.assert_blocked(
                &format!("{backend}: consumer {extra} delegates to globex"),
                &Call::new("acme", ACME_SESSION, "globex-repos", &jti)
                    .with_claims(&extra)
                    .acting_for("globex"),
                refused,
                "unauthorized_tenant",
                "acme",
            )
            .await;
        }
        // The refusal comes before the tool lookup: also for the consumer's own tenant's tool.
        h.assert_blocked(
            &format!("{backend}: consumer delegates to globex for acme's tool"),
            &Call::new("acme", ACME_SESSION, "acme-repos", "b-own-tool").acting_for("globex"),
            refused,
            "unauthorized_tenant",
            "acme",
        )
        .await;

        // Naming its own tenant is not delegating.
        h.assert_ran(
            &format!("{backend}: consumer names its own tenant"),
            &Call::new("acme", ACME_SESSION, "acme-repos", "b-self").acting_for("acme"),
            "acme",
        )
        .await;

        // A `_meta.tenant_id` that is not a non-empty string is a malformed call: its sender is
        // verified, so it leaves an `AttestationFailed` row (seal_refusals.rs), and nothing else.
        for (i, bad) in [json!(""), json!("  "), json!(7)].into_iter().enumerate() {
            let jti = format!("b-bad-{i}");
            let what = format!("{backend}: _meta.tenant_id {bad}");
            let call = Call::new("acme", ACME_SESSION, "acme-repos", &jti).acting_for(bad);
            let (status, body, rows) = h.invoke(&call).await;
            let message = "invalid tools/call params: _meta.tenant_id must be a non-empty string";
            assert_seal_error(&what, status, &body, (400, 1000, message));
            let types: Vec<_> = rows.iter().map(|r| r.event_type.as_str()).collect();
            assert_eq!(types, ["AttestationFailed"], "{what}");
            assert_eq!(rows[0].payload["reason"], message, "{what}");
            assert_eq!(rows[0].payload["outcome"], "malformed", "{what}");
        }
        h.seal.gateway.shutdown().await;
    }
}

/// Reference §4.2 TARGET 2 and §4.1 identity kind: a service-account token (`identity_kind`
/// `service_account`/`service-account` in any case, or a Keycloak `preferred_username` starting
/// with `service-account-`) may act for another tenant through `params._meta.tenant_id`: the
/// delegated tenant's tool is served and every row of the call is the delegated tenant's. The
/// delegated tenant is then the one tool ownership is checked against.
#[tokio::test]
async fn a_service_account_may_delegate_and_the_rows_are_the_delegated_tenants() {
    for (backend, url, _dir) in support::both_backends().await {
        let h = Seal::start(&url).await;
        for (i, extra) in [
            json!({"identity_kind": "service_account"}),
            json!({"identity_kind": "Service-Account"}),
            json!({"preferred_username": "service-account-orchestrator"}),
        ]
        .into_iter()
        .enumerate()
        {
            let jti = format!("c-{i}");
            h.assert_ran(
                &format!("{backend}: service account {extra} acts for globex"),
                &Call::new("acme", ACME_SESSION, "globex-repos", &jti)
                    .with_claims(&extra)
                    .acting_for("globex"),
                "globex",
            )
            .await;
        }

        let service = json!({"identity_kind": "service_account"});
        for (what, call, message) in [
            // Without delegation the same token is acme's, and globex's tool is not its own.
            (
                "service account without delegation",
                Call::new("acme", ACME_SESSION, "globex-repos", "c-none").with_claims(&service),
                "tenant mismatch: tool 'globex-repos' belongs to another tenant than 'acme'",
            ),
            // Acting for globex, the token's own tenant's tool is another tenant's. The refusal row
            // is the authenticated (token) tenant's, while the message names the delegated one.
            (
                "service account acting for globex calls acme's tool",
                Call::new("acme", ACME_SESSION, "acme-repos", "c-back")
                    .with_claims(&service)
                    .acting_for("globex"),
                "tenant mismatch: tool 'acme-repos' belongs to another tenant than 'globex'",
            ),
            // Delegation moves the tool's tenant, not the session's: globex's session stays out of
            // reach of an acme token.
            (
                "service account acting for globex uses globex's session",
                Call::new("acme", GLOBEX_SESSION, "globex-repos", "c-session")
                    .with_claims(&service)
                    .acting_for("globex"),
                "tenant mismatch: session exec-globex belongs to another tenant than the token's 'acme'",
            ),
        ] {
            let what = format!("{backend}: {what}");
            h.assert_blocked(
                &what,
                &call,
                (403, 2000, message),
                "tenant_mismatch",
                "acme",
            )
            .await;
        }
        h.seal.gateway.shutdown().await;
    }
}

/// Reference §B-4 and the runbook's fix for "Tenant Boundary Violation" ("give it the appropriate
/// delegation grant in the issuer; the gateway will then accept its tenant claim"): with
/// `auth.seal_delegation_claim` set, a service account acts only for the tenants that claim of
/// its token lists (`*` for all). Any other is a 403 `unauthorized tenant` with one row of the
/// token's tenant; its own tenant needs no grant; a consumer is refused as before.
#[tokio::test]
async fn with_a_delegation_claim_a_service_account_acts_only_for_the_tenants_it_grants() {
    let refused = (
        403,
        2000,
        "unauthorized tenant: the service account token for tenant 'acme' holds no delegation grant for tenant 'globex'",
    );
    for (backend, url, _dir) in support::both_backends().await {
        let h = Seal::start_with(
            &url,
            &[("SEAL_GATEWAY_SEAL_DELEGATION_CLAIM", "delegable_tenants")],
        )
        .await;
        let service = |grant: Value| {
            let mut claims = json!({"identity_kind": "service_account"});
            if !grant.is_null() {
                claims["delegable_tenants"] = grant;
            }
            claims
        };
        for (i, grant) in [json!(["initech", "globex"]), json!("globex"), json!(["*"])]
            .into_iter()
            .enumerate()
        {
            h.assert_ran(
                &format!("{backend}: granted {grant}"),
                &Call::new("acme", ACME_SESSION, "globex-repos", &format!("g-ok-{i}"))
                    .with_claims(&service(grant.clone()))
                    .acting_for("globex"),
                "globex",
            )
            .await;
        }
        for (i, grant) in [
            Value::Null,
            json!([]),
            json!(["initech"]),
            json!("Globex"),
            json!({"globex": true}),
        ]
        .into_iter()
        .enumerate()
        {
            h.assert_blocked(
                &format!("{backend}: granted {grant}"),
                &Call::new("acme", ACME_SESSION, "globex-repos", &format!("g-no-{i}"))
                    .with_claims(&service(grant.clone()))
                    .acting_for("globex"),
                refused,
                "unauthorized_tenant",
                "acme",
            )
            .await;
        }
        h.assert_ran(
            &format!("{backend}: its own tenant needs no grant"),
            &Call::new("acme", ACME_SESSION, "acme-repos", "g-self")
                .with_claims(&service(Value::Null))
                .acting_for("acme"),
            "acme",
        )
        .await;
        h.assert_blocked(
            &format!("{backend}: a consumer with a grant"),
            &Call::new("acme", ACME_SESSION, "globex-repos", "g-consumer")
                .with_claims(&json!({"delegable_tenants": ["globex"]}))
                .acting_for("globex"),
            (
                403,
                2000,
                "unauthorized tenant: a consumer token for tenant 'acme' cannot act for tenant 'globex'",
            ),
            "unauthorized_tenant",
            "acme",
        )
        .await;
        h.seal.gateway.shutdown().await;
    }
}

/// Reference §5.4 (deny list first, then the first matching capability) with the codes of §1.6: a
/// tool on the session context's deny list is 403 `tool denied: <t>` (2001) even though a
/// capability covers it; a tool no capability covers is 403 `tool not allowed: <t>` (2000). Each is
/// one `PolicyViolationBlocked` row (reference §13.1 item 15 TARGET) with its violation type.
#[tokio::test]
async fn a_security_context_refusal_is_a_403_with_its_code_and_one_audit_row() {
    for (backend, url, _dir) in support::both_backends().await {
        let h = Seal::start(&url).await;
        let guarded = |tool: &'static str, jti: &'static str| Call {
            scp: "guarded",
            ..Call::new("acme", GUARDED_SESSION, tool, jti)
        };
        for (what, tool, jti, expected, violation_type) in [
            (
                "a denied tool",
                "danger.drop",
                "d-1",
                (403, 2001, "tool denied: danger.drop"),
                "tool_denied",
            ),
            (
                "a tool no capability covers",
                "unknown.tool",
                "d-2",
                (403, 2000, "tool not allowed: unknown.tool"),
                "tool_not_allowed",
            ),
            // Tenancy is checked before the policy: globex's tool is a mismatch, not "not allowed".
            (
                "another tenant's tool under the guarded context",
                "globex-repos",
                "d-3",
                (
                    403,
                    2000,
                    "tenant mismatch: tool 'globex-repos' belongs to another tenant than 'acme'",
                ),
                "tenant_mismatch",
            ),
        ] {
            let what = format!("{backend}: {what}");
            h.assert_blocked(&what, &guarded(tool, jti), expected, violation_type, "acme")
                .await;
        }
        // The capability the context grants is served.
        h.assert_ran(
            &format!("{backend}: a granted tool"),
            &guarded("acme-repos", "d-ok"),
            "acme",
        )
        .await;
        h.seal.gateway.shutdown().await;
    }
}

/// Reference §1.5 steps 21-22 with the codes of §1.6 TARGET, and §13.1 item 15 TARGET (one
/// `PolicyViolationBlocked` row per refusal): a tool none of the session's
/// `allowed_tool_patterns` matches is 403 `tool not allowed: <t>` (2000), though the session's
/// SecurityContext allows every tool; a session whose SecurityContext is not served is 403
/// `security context not found: <name>` (2000), where upstream answered a bare
/// `{"error":"forbidden"}`.
#[tokio::test]
async fn a_session_pattern_or_an_unserved_context_refuses_with_one_audit_row() {
    for (backend, url, _dir) in support::both_backends().await {
        let h = Seal::start(&url).await;
        h.assert_blocked(
            &format!("{backend}: acme-repos outside github.*"),
            &Call::new("acme", GITHUB_ONLY_SESSION, "acme-repos", "e-1"),
            (403, 2000, "tool not allowed: acme-repos"),
            "tool_not_allowed",
            "acme",
        )
        .await;
        // A tool the pattern covers passes the session's check: no such tool is served, so it is
        // authorized, then answered 404.
        let (status, body, rows) = h
            .invoke(&Call::new(
                "acme",
                GITHUB_ONLY_SESSION,
                "github.create_issue",
                "e-ok",
            ))
            .await;
        assert_eq!(
            (status, body),
            (
                404,
                json!({"error": "tool 'github.create_issue' not found"})
            ),
            "{backend}"
        );
        let types: Vec<_> = rows.iter().map(|r| r.event_type.as_str()).collect();
        assert_eq!(types, ["ToolCallAuthorized"], "{backend}");

        h.assert_blocked(
            &format!("{backend}: a session under a context that is not served"),
            &Call {
                scp: "retired-ctx",
                ..Call::new("acme", RETIRED_CTX_SESSION, "acme-repos", "e-2")
            },
            (403, 2000, "security context not found: retired-ctx"),
            "security_context_not_found",
            "acme",
        )
        .await;
        // The tool itself is served to acme's other sessions.
        h.assert_ran(
            &format!("{backend}: acme-repos through an unrestricted session"),
            &Call::new("acme", ACME_SESSION, "acme-repos", "e-ok-2"),
            "acme",
        )
        .await;
        h.seal.gateway.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Session endpoints with operator authentication on.

/// The vectors' agent key: a valid 32-byte Ed25519 public key.
const PUBLIC_KEY: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

/// An upsert body with only the required fields; its token is unique to `execution_id`.
fn session_body(execution_id: &str) -> Value {
    json!({
        "execution_id": execution_id, "agent_id": format!("agent-{execution_id}"),
        "security_context": "aegis-system-default", "public_key_b64": PUBLIC_KEY,
        "security_token": token_of(execution_id),
    })
}

fn token_of(execution_id: &str) -> String {
    format!("secret-token-of-{execution_id}")
}

/// Execution ids of a session list, in order.
fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|s| s["execution_id"].as_str().unwrap().to_owned())
        .collect()
}

/// No session view anywhere in `body` carries the token, nor a `security_token` member.
fn assert_no_token(what: &str, body: &Value) {
    let text = body.to_string();
    assert!(!text.contains("security_token"), "{what}: {text}");
    assert!(!text.contains("secret-token-of-"), "{what}: {text}");
}

/// Tenant operators of `tenant-a` and `tenant-b`, a tenant-less platform operator, and a
/// `platform-admin` whose token names `tenant-a`, with the JWKS endpoint of their IdP.
struct Operators {
    jwks: JwksServer,
    a: String,
    b: String,
    platform: String,
    admin_in_a: String,
}

impl Operators {
    async fn start() -> Self {
        Self {
            jwks: JwksServer::start(standard_jwks()).await,
            a: operator(Some("tenant-a"), "operator"),
            b: operator(Some("tenant-b"), "aegis:operator"),
            platform: operator(None, "operator"),
            admin_in_a: operator(Some("tenant-a"), "platform-admin"),
        }
    }

    /// A gateway on `url` that authenticates these operators.
    async fn control(&self, url: &str) -> Control {
        Control::start(url, Snapshot::default(), &self.jwks.uri, &[]).await
    }

    /// A gateway on `url` where tenant A has registered `sa-1`, tenant B `sb-1`, and the platform
    /// `sg-1` (system-global).
    async fn control_with_three(&self, url: &str) -> Control {
        let control = self.control(url).await;
        for (token, id) in [
            (&self.a, "sa-1"),
            (&self.b, "sb-1"),
            (&self.platform, "sg-1"),
        ] {
            let (status, body) = upsert(&control, token, session_body(id)).await;
            assert_eq!(status, 201, "{id}: {body}");
        }
        control
    }
}

/// `POST /v1/seal/sessions` of `body`, as `token`.
async fn upsert(control: &Control, token: &str, body: Value) -> (u16, Value) {
    control
        .call("POST", "/v1/seal/sessions", Some(token), Some(body))
        .await
}

/// `GET /v1/seal/sessions`, as `token`.
async fn list(control: &Control, token: &str) -> (u16, Value) {
    control
        .call("GET", "/v1/seal/sessions", Some(token), None)
        .await
}

/// `method` (`GET` or `DELETE`) of `/v1/seal/sessions/<id>`, as `token`.
async fn one(control: &Control, method: &str, token: &str, id: &str) -> (u16, Value) {
    let path = format!("/v1/seal/sessions/{id}");
    control.call(method, &path, Some(token), None).await
}

/// The answer to an operator who reads, overwrites or revokes another tenant's session `id`.
fn tenant_mismatch(id: &str) -> (u16, Value) {
    let error = format!("tenant mismatch: session {id} belongs to another tenant");
    (403, json!({ "error": error }))
}

/// The stored row of session `id`.
async fn stored(control: &Control, id: &str) -> SessionRecord {
    control.db.get_session(id).await.unwrap().unwrap()
}

async fn session_events_after(db: &Database, after: i64) -> Vec<EventRow> {
    events_after(db, after)
        .await
        .into_iter()
        .filter(|r| r.event_type.starts_with("Session"))
        .collect()
}

/// Reference §2.4.4 defaults (status Active, expires_at now + 1 h, patterns `["*"]` when missing or
/// empty), the owner taken from the operator token, and §13.1 items 6-7 TARGET: `security_token`
/// is stored (for the orchestrator) but never returned, by the upsert, the list or the get. The
/// upsert is audited as `SessionRegistered`, a row of the session's tenant.
#[tokio::test]
async fn an_upsert_gets_the_documented_defaults_and_the_token_is_never_returned() {
    let ops = Operators::start().await;
    for (backend, url, _dir) in support::both_backends().await {
        let control = ops.control(&url).await;

        let before_id = last_event_id(&control.db).await;
        let before = Utc::now();
        let (status, body) = upsert(&control, &ops.a, session_body("sa-1")).await;
        let after = Utc::now();
        assert_eq!(status, 201, "{backend}: {body}");
        assert_no_token(backend, &body);
        let expires_at = body["session"]["expires_at"].as_str().unwrap().to_owned();
        let expires = DateTime::parse_from_rfc3339(&expires_at)
            .unwrap()
            .with_timezone(&Utc);
        // Whole seconds (the view's format) of a time taken between `before` and `after`.
        assert!(
            expires > before + Duration::hours(1) - Duration::seconds(1)
                && expires <= after + Duration::hours(1),
            "{backend}: expires_at {expires_at} is not now + 1 h ({before} .. {after})"
        );
        assert!(expires_at.ends_with('Z'), "{backend}: {expires_at}");
        assert_eq!(
            body,
            json!({"saved": true, "session": {
                "execution_id": "sa-1", "agent_id": "agent-sa-1",
                "security_context": "aegis-system-default", "public_key_b64": PUBLIC_KEY,
                "session_status": "Active", "expires_at": expires_at,
                "allowed_tool_patterns": ["*"], "tenant_id": "tenant-a",
            }}),
            "{backend}"
        );

        // Stored as sent, with the defaults.
        let stored = stored(&control, "sa-1").await;
        assert_eq!(stored.security_token, token_of("sa-1"), "{backend}");
        assert_eq!(stored.status, SessionStatus::Active, "{backend}");
        assert_eq!(stored.tenant_id.as_deref(), Some("tenant-a"), "{backend}");
        assert_eq!(stored.allowed_tool_patterns, ["*"], "{backend}");
        assert!(
            stored.expires_at >= before + Duration::hours(1)
                && stored.expires_at <= after + Duration::hours(1),
            "{backend}: stored expires_at {}",
            stored.expires_at
        );

        let rows = session_events_after(&control.db, before_id).await;
        assert_eq!(rows.len(), 1, "{backend}: {rows:?}");
        assert_eq!(rows[0].event_type, "SessionRegistered", "{backend}");
        assert_eq!(rows[0].tenant_id.as_deref(), Some("tenant-a"), "{backend}");
        let payload = &rows[0].payload;
        assert_eq!(
            (
                &payload["execution_id"],
                &payload["agent_id"],
                &payload["session_status"],
                &payload["tenant_id"]
            ),
            (
                &json!("sa-1"),
                &json!("agent-sa-1"),
                &json!("Active"),
                &json!("tenant-a")
            ),
            "{backend}: {payload}"
        );
        assert_no_token(&format!("{backend}: SessionRegistered"), payload);

        // An empty pattern list is the default too; an update answers 200.
        let mut empty = session_body("sa-1");
        empty["allowed_tool_patterns"] = json!([]);
        let (status, body) = upsert(&control, &ops.a, empty).await;
        assert_eq!(status, 200, "{backend}: {body}");
        assert_eq!(body["session"]["allowed_tool_patterns"], json!(["*"]));
        assert_no_token(backend, &body);

        // Explicit values are kept as given.
        let mut explicit = session_body("sa-2");
        explicit["expires_at"] = json!("2030-01-02T03:04:05+02:00");
        explicit["allowed_tool_patterns"] = json!(["github.*"]);
        let (status, body) = upsert(&control, &ops.a, explicit).await;
        assert_eq!(status, 201, "{backend}: {body}");
        assert_eq!(
            (
                &body["session"]["expires_at"],
                &body["session"]["allowed_tool_patterns"]
            ),
            (&json!("2030-01-02T01:04:05Z"), &json!(["github.*"])),
            "{backend}"
        );
        let mut bad = session_body("sa-3");
        bad["session_status"] = json!("Paused");
        assert_eq!(
            upsert(&control, &ops.a, bad).await,
            (
                400,
                json!({"error": "invalid session_status 'Paused': expected Active, Expired or Revoked"})
            ),
            "{backend}"
        );

        // Neither the list nor the get returns the token.
        for token in [&ops.a, &ops.platform] {
            let (status, list) = list(&control, token).await;
            assert_eq!(status, 200, "{backend}: {list}");
            assert_eq!(ids(&list), ["sa-1", "sa-2"], "{backend}");
            assert_no_token(backend, &list);
            let (status, one) = one(&control, "GET", token, "sa-1").await;
            assert_eq!(status, 200, "{backend}: {one}");
            assert_eq!(one["tenant_id"], "tenant-a", "{backend}");
            assert!(one.get("security_token").is_none(), "{backend}: {one}");
            assert_no_token(backend, &one);
        }
        control.shutdown().await;
    }
}

/// Reference §13.1 items 3 and 6 TARGET: a tenant operator lists its own and system-global active
/// sessions only, and cannot read another tenant's session (403 `tenant mismatch`); a platform
/// operator (tenant-less, or role `platform-admin`) lists and reads every tenant's.
#[tokio::test]
async fn a_tenant_operator_lists_and_reads_only_its_own_and_global_sessions() {
    let ops = Operators::start().await;
    for (backend, url, _dir) in support::both_backends().await {
        let control = ops.control_with_three(&url).await;

        for (who, token, expected) in [
            ("tenant A", &ops.a, vec!["sa-1", "sg-1"]),
            ("tenant B", &ops.b, vec!["sb-1", "sg-1"]),
            ("platform", &ops.platform, vec!["sa-1", "sb-1", "sg-1"]),
            (
                "platform-admin in A",
                &ops.admin_in_a,
                vec!["sa-1", "sb-1", "sg-1"],
            ),
        ] {
            let (status, list) = list(&control, token).await;
            assert_eq!(status, 200, "{backend} {who}: {list}");
            assert_eq!(ids(&list), expected, "{backend} {who}");
            assert_no_token(backend, &list);
        }

        for (who, token, id) in [
            ("B reads A's", &ops.b, "sa-1"),
            ("A reads B's", &ops.a, "sb-1"),
        ] {
            assert_eq!(
                one(&control, "GET", token, id).await,
                tenant_mismatch(id),
                "{backend}: {who}"
            );
        }
        for (who, token, id, tenant) in [
            ("A reads its own", &ops.a, "sa-1", json!("tenant-a")),
            ("A reads a global one", &ops.a, "sg-1", Value::Null),
            (
                "platform reads A's",
                &ops.platform,
                "sa-1",
                json!("tenant-a"),
            ),
            (
                "platform-admin in A reads B's",
                &ops.admin_in_a,
                "sb-1",
                json!("tenant-b"),
            ),
        ] {
            let (status, body) = one(&control, "GET", token, id).await;
            assert_eq!(status, 200, "{backend}: {who}: {body}");
            assert_eq!(
                (&body["execution_id"], &body["tenant_id"]),
                (&json!(id), &tenant),
                "{backend}: {who}"
            );
        }
        assert_eq!(
            one(&control, "GET", &ops.a, "nope").await,
            (404, json!({"error": "session not found"})),
            "{backend}"
        );
        control.shutdown().await;
    }
}

/// Reference §13.1 items 3-4 and 7 TARGET: a tenant operator can neither revoke nor overwrite
/// another tenant's session (the overwrite is a 403 `tenant mismatch`; nothing changes, nothing is
/// audited); its own it may update and revoke; a platform operator revokes any tenant's, audited
/// as `SessionRevoked`, a row of the session's tenant naming who revoked it.
#[tokio::test]
async fn a_tenant_operator_cannot_revoke_or_overwrite_another_tenants_session() {
    let ops = Operators::start().await;
    for (backend, url, _dir) in support::both_backends().await {
        let control = ops.control_with_three(&url).await;
        let original = stored(&control, "sa-1").await;
        let before = last_event_id(&control.db).await;

        // B overwrites A's session: refused, exactly.
        let mut takeover = session_body("sa-1");
        takeover["agent_id"] = json!("agent-of-b");
        takeover["security_token"] = json!("secret-token-of-b");
        assert_eq!(
            upsert(&control, &ops.b, takeover).await,
            tenant_mismatch("sa-1"),
            "{backend}"
        );
        // B revokes A's session: refused (the exact answer is pinned by
        // `revoking_another_tenants_session_is_a_tenant_mismatch`).
        let (status, body) = one(&control, "DELETE", &ops.b, "sa-1").await;
        assert!(
            status == 403 || status == 404,
            "{backend}: B revoked A's session: {status} {body}"
        );
        assert_eq!(
            stored(&control, "sa-1").await,
            original,
            "{backend}: A's session is untouched"
        );
        assert_eq!(
            session_events_after(&control.db, before).await,
            [],
            "{backend}: no row for a refused write"
        );

        // A updates and revokes its own.
        let mut update = session_body("sa-1");
        update["allowed_tool_patterns"] = json!(["github.*"]);
        let (status, body) = upsert(&control, &ops.a, update).await;
        assert_eq!(status, 200, "{backend}: {body}");
        let (status, body) = one(&control, "DELETE", &ops.a, "sa-1").await;
        assert_eq!(status, 200, "{backend}: {body}");
        assert_eq!(
            (
                &body["status"],
                &body["execution_id"],
                &body["session_status"]
            ),
            (&json!("success"), &json!("sa-1"), &json!("Revoked")),
            "{backend}: {body}"
        );

        // The platform operator revokes B's.
        let before = last_event_id(&control.db).await;
        let (status, body) = one(&control, "DELETE", &ops.platform, "sb-1").await;
        assert_eq!(status, 200, "{backend}: {body}");
        let revoked_at = body["revoked_at"].as_str().unwrap().to_owned();
        assert_eq!(
            body,
            json!({"status": "success", "execution_id": "sb-1", "session_status": "Revoked",
                   "revoked_at": revoked_at}),
            "{backend}"
        );
        let rows = session_events_after(&control.db, before).await;
        assert_eq!(rows.len(), 1, "{backend}: {rows:?}");
        assert_eq!(
            (rows[0].event_type.as_str(), rows[0].tenant_id.as_deref()),
            ("SessionRevoked", Some("tenant-b")),
            "{backend}"
        );
        let payload = &rows[0].payload;
        assert_eq!(
            (
                &payload["execution_id"],
                &payload["agent_id"],
                &payload["tenant_id"],
                &payload["revoked_by"]
            ),
            (
                &json!("sb-1"),
                &json!("agent-sb-1"),
                &json!("tenant-b"),
                &json!("operator@platform")
            ),
            "{backend}: {payload}"
        );
        assert_eq!(
            stored(&control, "sb-1").await.status,
            SessionStatus::Revoked,
            "{backend}"
        );

        // Revoked sessions leave every list.
        let (_, list) = list(&control, &ops.platform).await;
        assert_eq!(ids(&list), ["sg-1"], "{backend}");
        control.shutdown().await;
    }
}

/// Reference §4.2 TARGET ("when a tenant-owned resource (…, session) is used or accessed by a caller
/// from another tenant, return 403 `{"error":"tenant mismatch", …}`"), as `GET` of the same session
/// and `DELETE` of every other tenant-owned control-plane object answer.
#[tokio::test]
async fn revoking_another_tenants_session_is_a_tenant_mismatch() {
    let ops = Operators::start().await;
    for (backend, url, _dir) in support::both_backends().await {
        let control = ops.control_with_three(&url).await;
        assert_eq!(
            one(&control, "DELETE", &ops.b, "sa-1").await,
            tenant_mismatch("sa-1"),
            "{backend}"
        );
        control.shutdown().await;
    }
}

/// Runbook cause 3 and reference §4.2 TARGET 3 ("only a platform operator may create, update or
/// delete rows with `tenant_id IS NULL`; otherwise 403 `tenant mismatch`"), as the REST control
/// plane does for every other object: a tenant operator can neither take over nor revoke a
/// system-global session.
#[tokio::test]
async fn a_tenant_operator_cannot_take_over_or_revoke_a_system_global_session() {
    let ops = Operators::start().await;
    for (backend, url, _dir) in support::both_backends().await {
        let control = ops.control_with_three(&url).await;
        let (status, body) = upsert(&control, &ops.platform, session_body("sg-2")).await;
        assert_eq!(status, 201, "{backend}: {body}");
        let before = last_event_id(&control.db).await;
        // Both are checked before failing, so the report names every wrong answer.
        let mut problems = Vec::new();
        let refused = |status: u16, body: &Value| {
            status == 403
                && body["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("tenant mismatch"))
        };

        let original = stored(&control, "sg-1").await;
        let mut takeover = session_body("sg-1");
        takeover["agent_id"] = json!("agent-of-a");
        let (status, body) = upsert(&control, &ops.a, takeover).await;
        let after = stored(&control, "sg-1").await;
        if !refused(status, &body) || after != original {
            problems.push(format!(
                "tenant A's upsert over global sg-1 answered {status} {body}; the row is now \
                 tenant {:?}, agent {:?}",
                after.tenant_id, after.agent_id
            ));
        }

        let original = stored(&control, "sg-2").await;
        let (status, body) = one(&control, "DELETE", &ops.a, "sg-2").await;
        let after = stored(&control, "sg-2").await;
        if !refused(status, &body) || after != original {
            problems.push(format!(
                "tenant A's DELETE of global sg-2 answered {status} {body}; the row is now {:?}",
                after.status
            ));
        }
        let rows = session_events_after(&control.db, before).await;
        if !rows.is_empty() {
            problems.push(format!("refused writes left rows: {rows:?}"));
        }
        assert!(problems.is_empty(), "{backend}: {problems:#?}");
        control.shutdown().await;
    }
}

/// The orchestrator, a platform operator serving every tenant, binds each session to its agent's
/// tenant with `tenant_id`; that tenant's operators then see it and no other tenant's do. A
/// tenant operator may name only its own tenant.
#[tokio::test]
async fn a_platform_operator_binds_a_session_to_a_tenant() {
    let ops = Operators::start().await;
    let dir = tempfile::tempdir().unwrap();
    let control = ops.control(&support::sqlite_url(dir.path())).await;

    let mut body = session_body("sb-bound");
    body["tenant_id"] = json!("tenant-b");
    let (status, reply) = upsert(&control, &ops.platform, body.clone()).await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["session"]["tenant_id"], "tenant-b");
    assert_eq!(
        stored(&control, "sb-bound").await.tenant_id.as_deref(),
        Some("tenant-b")
    );
    let (_, listed) = list(&control, &ops.b).await;
    assert_eq!(ids(&listed), ["sb-bound"]);
    let (_, listed) = list(&control, &ops.a).await;
    assert!(ids(&listed).is_empty(), "{listed}");

    // A tenant operator naming another tenant is refused; naming its own is as without it.
    let mut body = session_body("sa-other");
    body["tenant_id"] = json!("tenant-b");
    let (status, reply) = upsert(&control, &ops.a, body).await;
    assert_eq!(status, 403, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("tenant mismatch")),
        "{reply}"
    );
    assert!(control.db.get_session("sa-other").await.unwrap().is_none());
    let mut body = session_body("sa-own");
    body["tenant_id"] = json!("tenant-a");
    let (status, reply) = upsert(&control, &ops.a, body).await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["session"]["tenant_id"], "tenant-a");
}

/// A `platform-admin` whose token also names a tenant is a platform operator (reference §B-4):
/// it updates a system-global session or another tenant's where they are, and a new session
/// without `tenant_id` is its own tenant's.
#[tokio::test]
async fn a_platform_admin_with_a_tenant_updates_any_session_where_it_is() {
    let ops = Operators::start().await;
    let dir = tempfile::tempdir().unwrap();
    let control = ops
        .control_with_three(&support::sqlite_url(dir.path()))
        .await;
    for (id, tenant) in [("sg-1", None), ("sb-1", Some("tenant-b"))] {
        let mut update = session_body(id);
        update["agent_id"] = json!("agent-renamed");
        let (status, body) = upsert(&control, &ops.admin_in_a, update).await;
        assert_eq!(status, 200, "{id}: {body}");
        let row = stored(&control, id).await;
        assert_eq!(
            (row.tenant_id.as_deref(), row.agent_id.as_str()),
            (tenant, "agent-renamed"),
            "{id}"
        );
    }
    let (status, body) = upsert(&control, &ops.admin_in_a, session_body("sa-new")).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        stored(&control, "sa-new").await.tenant_id.as_deref(),
        Some("tenant-a")
    );
}
