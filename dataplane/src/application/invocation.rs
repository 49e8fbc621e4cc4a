//! The invocation pipeline: from a request body to an authorized call, or one precise refusal.
//!
//! Order (DESIGN §5): parse -> session (named by the token's `exec_id`) -> freshness -> signature ->
//! token -> session binding -> replay -> tenancy -> session tool patterns -> SecurityContext policy.
//! Each refusal has one status, one SEAL code, one message and one log line.

use std::sync::Arc;

use aegis_seal_crds::security_context::RateLimit;
use chrono::{DateTime, Duration};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::application::catalog::{Lookup, ServedSnapshot, ToolRef};
use crate::application::clock::Clock;
use crate::application::sessions::SessionCache;
use crate::domain::envelope::{Envelope, PROTOCOL};
use crate::domain::policy::{self, Grant, POLICY_VIOLATION_BLOCKED, RateLimiter, Refused, Slots};
use crate::domain::seal_error::{SealError, code};
use crate::domain::tenancy::IdentityKind;
use crate::infrastructure::auth::envelope::{TARGET as AUTH_TARGET, verify_signature};
use crate::infrastructure::auth::token::{SealTokenVerifier, UnverifiedToken};
use crate::infrastructure::metrics::{Attestation, Metrics};
use crate::infrastructure::persistence::{
    AuditEvent, CallLimits, PersistenceError, ReplayGuard, SessionStatus, SlotPermit,
};
use crate::infrastructure::telemetry::{self, Stage};

/// Envelopes older or newer than this (seconds) are refused, and jtis are remembered this long.
pub const FRESHNESS_WINDOW_SECS: i64 = 30;

const TARGET: &str = "aegis_seal_gateway::application::invocation";

/// The audit event of an envelope refused for a session the gateway knows: its signature, token,
/// freshness, session binding or `jti`.
pub const ATTESTATION_FAILED: &str = "AttestationFailed";

/// At most this many `AttestationFailed` events per session, per window (see
/// [`InvocationService::attestation_budget`]).
pub const ATTESTATION_AUDIT_BUDGET: RateLimit = RateLimit {
    calls: 10,
    per_seconds: 60,
};

/// A call that passed every check. The running slot its grant may hold is given to
/// [`InvocationService::finish`] once the call has answered (or freed by its drop, without
/// waiting).
#[derive(Debug)]
pub struct AuthorizedCall {
    pub execution_id: String,
    pub agent_id: String,
    /// The tenant the call acts for (the token's, or the one a service account delegates to).
    pub tenant_id: String,
    pub tool_name: String,
    /// `None` when no such tool exists: authorized by policy, answered 404 at dispatch.
    pub tool: Option<ToolRef>,
    pub arguments: Value,
    pub grant: Grant<SlotPermit>,
    pub security_context: String,
    /// The SecurityContext allows human-delegated credentials (a `*` or `credentials.*` capability).
    pub allows_human_delegated: bool,
    /// `ToolCallAuthorized`, to commit with the call's other events before answering.
    pub events: Vec<AuditEvent>,
}

/// Why a call was refused, with what must be recorded about it.
#[derive(Debug)]
pub enum Refusal {
    Seal {
        error: SealError,
        /// Rejections worth auditing (policy, tenancy), committed before the answer.
        event: Option<AuditEvent>,
    },
    /// The database could not answer: 503 with `Retry-After`.
    Unavailable(PersistenceError),
}

impl From<SealError> for Refusal {
    fn from(error: SealError) -> Self {
        Self::Seal { error, event: None }
    }
}

impl From<PersistenceError> for Refusal {
    fn from(e: PersistenceError) -> Self {
        Self::Unavailable(e)
    }
}

#[derive(Deserialize)]
struct ToolsCall {
    method: String,
    params: Value,
}

pub struct InvocationService {
    pub tokens: SealTokenVerifier,
    pub sessions: SessionCache,
    pub replay: Arc<ReplayGuard>,
    /// The attestation-audit budget (each replica writes its own refusals' events).
    pub limiter: RateLimiter,
    /// Capabilities' `max_concurrent` slots and `rate_limit` quota: in this process on SQLite,
    /// shared by replicas on Postgres.
    pub limits: CallLimits,
    pub clock: Clock,
    /// `aegis_seal_attestations_total` and friends, one outcome per envelope.
    pub metrics: Metrics,
}

impl InvocationService {
    /// Gives back the running slot of a call that has answered, and returns once another call
    /// may take it: the agent may send its next call as soon as it has this one's answer.
    pub async fn finish(&self, running: Option<SlotPermit>) {
        if let Some(permit) = running {
            self.limits.running.release(permit).await;
        }
    }

    pub async fn authorize(
        &self,
        body: &[u8],
        served: &ServedSnapshot,
    ) -> Result<AuthorizedCall, Refusal> {
        let now = self.clock.now();
        // Stage spans (exported when traces are on): not entered, so they may span awaits; one
        // that ends without `done()` ended in a refusal and is marked failed.
        let stage =
            Stage::new(tracing::info_span!(target: telemetry::TARGET, "seal.verify_envelope"));
        let envelope =
            Envelope::parse(body).inspect_err(|e| self.reject(Attestation::Malformed, None, e))?;
        if envelope.protocol != PROTOCOL {
            let e =
                SealError::malformed(format!("unsupported SEAL protocol '{}'", envelope.protocol));
            self.reject(Attestation::Malformed, None, &e);
            return Err(e.into());
        }
        // The token's claims are parsed once, here, and verified below.
        let unverified = UnverifiedToken::read(&envelope.security_token)
            .inspect_err(|e| self.reject(Attestation::Malformed, None, e))?;
        let execution_id = unverified.execution_id.clone();
        let Some(session) = self.sessions.get(&execution_id).await? else {
            let e = SealError::new(
                StatusCode::UNAUTHORIZED,
                code::SESSION_NOT_FOUND,
                "session not found",
            );
            self.reject(Attestation::Unauthorized, Some(&execution_id), &e);
            return Err(e.into());
        };
        let exec = Some(execution_id.as_str());
        // From here on a refusal concerns a known session, so it is audited as well
        // (`AttestationFailed`), within the session's budget.
        let audited = |outcome: Attestation, error: SealError| -> Refusal {
            let event = self.attestation_budget(&execution_id).then(|| {
                AuditEvent::from_json(
                    ATTESTATION_FAILED,
                    json!({
                        "execution_id": execution_id,
                        "agent_id": session.record.agent_id,
                        "tenant_id": session.record.tenant_id,
                        "outcome": outcome.as_str(),
                        "code": error.code,
                        "reason": error.message,
                        "failed_at": now,
                    }),
                )
            });
            Refusal::Seal { error, event }
        };
        // Counted, logged and audited: every refusal from here on but the two that log their own
        // runbook lines (a failed signature check, a replay).
        let refused = |outcome: Attestation, error: SealError| -> Refusal {
            self.reject(outcome, exec, &error);
            audited(outcome, error)
        };

        // Whole seconds from the envelope's time to now, truncated toward zero as upstream's
        // `num_seconds` does: the window is just under 31 s on either side. A time chrono cannot
        // hold is far outside it (and must not overflow the subtraction).
        let skew = match DateTime::from_timestamp(envelope.timestamp, 0) {
            Some(sent) => (now - sent).num_seconds(),
            None => now.timestamp().saturating_sub(envelope.timestamp),
        };
        if skew.unsigned_abs() > FRESHNESS_WINDOW_SECS.unsigned_abs() {
            let e = SealError::new(
                StatusCode::UNAUTHORIZED,
                code::TOKEN_EXPIRED,
                format!(
                    "envelope timestamp is outside the {FRESHNESS_WINDOW_SECS} second freshness window ({skew}s)"
                ),
            );
            return Err(refused(Attestation::Malformed, e));
        }

        let key = session.key.as_ref().map_err(|e| {
            self.metrics.signature_failure();
            refused(Attestation::SignatureInvalid, e.clone())
        })?;
        verify_signature(&envelope, key).map_err(|e| {
            self.metrics.signature_failure();
            if e.code == code::SIGNATURE_VERIFICATION_FAILED {
                // `verify_signature` logged the runbook's own line for it.
                self.metrics.attestation(Attestation::SignatureInvalid);
            } else {
                // Not base64, or not 64 bytes: refused before any verification, logged here.
                self.reject(Attestation::SignatureInvalid, exec, &e);
            }
            audited(Attestation::SignatureInvalid, e)
        })?;
        stage.done();

        let stage = Stage::new(tracing::info_span!(target: telemetry::TARGET, "seal.verify_token"));
        let claims = self
            .tokens
            .verify_read(&envelope.security_token, unverified, now.timestamp())
            .map_err(|e| refused(token_outcome(&e), e))?;
        let record = &session.record;
        let binding = if claims.execution_id != record.execution_id {
            Some((
                Attestation::Unauthorized,
                SealError::token("security token exec_id does not match the session"),
            ))
        } else if claims.subject != record.agent_id {
            Some((
                Attestation::Unauthorized,
                SealError::token("security token subject does not match the session agent"),
            ))
        } else if claims.scope != record.security_context {
            Some((
                Attestation::ContextMismatch,
                SealError::new(
                    StatusCode::BAD_REQUEST,
                    code::SCOPE_NOT_FOUND,
                    "security context mismatch: scp claim does not match session security_context",
                ),
            ))
        } else if record.status == SessionStatus::Expired
            || (record.status == SessionStatus::Active && record.expires_at <= now)
        {
            // One answer whether or not the sweep has marked the session yet.
            Some((
                Attestation::Expired,
                SealError::new(
                    StatusCode::UNAUTHORIZED,
                    code::SESSION_INACTIVE,
                    "session expired",
                ),
            ))
        } else if record.status != SessionStatus::Active {
            Some((
                Attestation::Unauthorized,
                SealError::new(
                    StatusCode::UNAUTHORIZED,
                    code::SESSION_INACTIVE,
                    format!("session is {}", record.status.as_str().to_lowercase()),
                ),
            ))
        } else {
            None
        };
        if let Some((outcome, e)) = binding {
            return Err(refused(outcome, e));
        }

        // A payload that is not a tools call, from a verified and bound session, is audited too.
        let call: ToolsCall = serde_json::from_str(envelope.payload_raw.get()).map_err(|e| {
            refused(
                Attestation::Malformed,
                SealError::malformed(format!("invalid payload: {e}")),
            )
        })?;
        if call.method != "tools/call" {
            let e = SealError::malformed("payload method must be tools/call");
            return Err(refused(Attestation::Malformed, e));
        }
        let (tool_name, arguments, requested_tenant) = read_params(call.params)
            .map_err(|e| refused(Attestation::Malformed, SealError::malformed(e)))?;
        stage.done();

        // Remembered until the envelope can no longer be fresh, future-dated ones included: it is
        // fresh while less than FRESHNESS_WINDOW_SECS + 1 s from now (whole seconds, truncated).
        let envelope_time = DateTime::from_timestamp(envelope.timestamp, 0).unwrap_or(now);
        let live_until = envelope_time.max(now) + Duration::seconds(FRESHNESS_WINDOW_SECS + 1);
        let stage = Stage::new(tracing::info_span!(target: telemetry::TARGET, "seal.replay_check"));
        if !self.replay.first_use(&claims.jti, live_until, now).await? {
            let e = SealError::new(
                StatusCode::UNAUTHORIZED,
                code::TOKEN_EXPIRED,
                "replay detected: jti already seen",
            );
            self.metrics.attestation(Attestation::Replay);
            tracing::warn!(target: AUTH_TARGET, execution_id, jti = %claims.jti, "replay detected: jti already seen");
            return Err(audited(Attestation::Replay, e));
        }
        stage.done();

        let stage = Stage::new(tracing::info_span!(target: telemetry::TARGET, "seal.authorize"));
        let audit = |violation_type: &str, error: &SealError| {
            AuditEvent::from_json(
                POLICY_VIOLATION_BLOCKED,
                json!({
                    "execution_id": execution_id,
                    "agent_id": record.agent_id,
                    "tool_name": tool_name,
                    "security_context": record.security_context,
                    "tenant_id": claims.tenant_id,
                    "violation_type": violation_type,
                    "code": error.code,
                    "reason": error.message,
                    "blocked_at": now,
                }),
            )
        };
        let refuse = |outcome: Attestation, violation_type: &str, error: SealError| {
            self.metrics.attestation(outcome);
            tracing::warn!(
                target: TARGET,
                execution_id,
                tool = %tool_name,
                violation_type,
                code = error.code,
                "{}",
                error.message
            );
            Refusal::Seal {
                event: Some(audit(violation_type, &error)),
                error,
            }
        };
        let forbidden =
            |code: u32, message: String| SealError::new(StatusCode::FORBIDDEN, code, message);

        // Tenancy (reference §4.2).
        let mut tenant = claims.tenant_id.clone();
        if let Some(requested) = requested_tenant
            && requested != claims.tenant_id
        {
            let owner = &claims.tenant_id;
            let unauthorized = if claims.identity_kind != IdentityKind::ServiceAccount {
                Some(format!(
                    "a consumer token for tenant '{owner}' cannot act for tenant '{requested}'"
                ))
            } else if !claims.delegation.allows(&requested) {
                Some(format!(
                    "the service account token for tenant '{owner}' holds no delegation grant for tenant '{requested}'"
                ))
            } else {
                None
            };
            if let Some(why) = unauthorized {
                return Err(refuse(
                    Attestation::Forbidden,
                    "unauthorized_tenant",
                    forbidden(
                        code::TOOL_NOT_ALLOWED,
                        format!("unauthorized tenant: {why}"),
                    ),
                ));
            }
            tenant = requested;
        }
        if let Some(owner) = &record.tenant_id
            && owner != &claims.tenant_id
        {
            return Err(refuse(
                Attestation::Forbidden,
                "tenant_mismatch",
                forbidden(
                    code::TOOL_NOT_ALLOWED,
                    format!(
                        "tenant mismatch: session {execution_id} belongs to another tenant than the token's '{}'",
                        claims.tenant_id
                    ),
                ),
            ));
        }
        let tool = match served.tool(&tenant, &tool_name) {
            Lookup::Found(tool) => Some(tool),
            Lookup::OtherTenant => {
                return Err(refuse(
                    Attestation::Forbidden,
                    "tenant_mismatch",
                    forbidden(
                        code::TOOL_NOT_ALLOWED,
                        format!(
                            "tenant mismatch: tool '{tool_name}' belongs to another tenant than '{tenant}'"
                        ),
                    ),
                ));
            }
            Lookup::Missing => None,
        };

        if !policy::session_allows(&record.allowed_tool_patterns, &tool_name) {
            return Err(refuse(
                Attestation::ToolNotAllowed,
                "tool_not_allowed",
                forbidden(
                    code::TOOL_NOT_ALLOWED,
                    format!("tool not allowed: {tool_name}"),
                ),
            ));
        }

        let context = match served.security_context(&tenant, &record.security_context) {
            Lookup::Found(context) => context,
            Lookup::OtherTenant => {
                return Err(refuse(
                    Attestation::Forbidden,
                    "tenant_mismatch",
                    forbidden(
                        code::TOOL_NOT_ALLOWED,
                        format!(
                            "tenant mismatch: security context '{}' belongs to another tenant than '{tenant}'",
                            record.security_context
                        ),
                    ),
                ));
            }
            Lookup::Missing => {
                return Err(refuse(
                    Attestation::Forbidden,
                    "security_context_not_found",
                    forbidden(
                        code::TOOL_NOT_ALLOWED,
                        format!("security context not found: {}", record.security_context),
                    ),
                ));
            }
        };
        let grant = match policy::evaluate(
            &context,
            &tool_name,
            &arguments,
            &execution_id,
            &self.limits,
            std::time::Instant::now(),
        )
        .await
        {
            Ok(grant) => grant,
            Err(Refused::Policy(v)) => {
                self.metrics.policy_violation(v.metric_label());
                return Err(refuse(
                    Attestation::Forbidden,
                    v.metric_label(),
                    forbidden(v.code(), v.message()),
                ));
            }
            Err(Refused::LimitUnavailable(e)) => return Err(Refusal::Unavailable(e)),
        };

        stage.done();
        tracing::debug!(target: TARGET, execution_id, tool = %tool_name, tenant = %tenant, "tool call authorized");
        let authorized = AuditEvent::from_json(
            "ToolCallAuthorized",
            json!({
                "execution_id": execution_id,
                "agent_id": record.agent_id,
                "tool_name": tool_name,
                "security_context": record.security_context,
                "tenant_id": tenant,
                "authorized_at": now,
            }),
        );
        self.metrics.attestation(Attestation::Ok);
        Ok(AuthorizedCall {
            execution_id: execution_id.clone(),
            agent_id: record.agent_id.clone(),
            tenant_id: tenant,
            tool_name,
            tool,
            arguments,
            grant,
            security_context: record.security_context.clone(),
            allows_human_delegated: context
                .capabilities
                .iter()
                .any(|c| c.tool_pattern == "*" || c.tool_pattern == "credentials.*"),
            events: vec![authorized],
        })
    }
}

/// `params.name`, `params.arguments` (required) and the MCP metadata's `tenant_id`, if any; taken
/// out of `params`, not copied.
fn read_params(params: Value) -> Result<(String, Value, Option<String>), String> {
    let Value::Object(mut params) = params else {
        return Err("invalid tools/call params: not an object".into());
    };
    let name = match params.remove("name") {
        Some(Value::String(name)) if !name.is_empty() => name,
        _ => return Err("invalid tools/call params: missing field `name`".into()),
    };
    // No tool, tenant or log line has a name with control characters in it.
    if name.chars().any(char::is_control) {
        return Err("invalid tools/call params: `name` contains a control character".into());
    }
    let arguments = params
        .remove("arguments")
        .ok_or("invalid tools/call params: missing field `arguments`")?;
    let tenant = match params.get("_meta").and_then(|m| m.get("tenant_id")) {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.chars().any(char::is_control) => {
            return Err(
                "invalid tools/call params: _meta.tenant_id contains a control character".into(),
            );
        }
        Some(Value::String(t)) if !t.trim().is_empty() => Some(t.clone()),
        Some(_) => {
            return Err(
                "invalid tools/call params: _meta.tenant_id must be a non-empty string".into(),
            );
        }
    };
    Ok((name, arguments, tenant))
}

impl InvocationService {
    /// Whether one more `AttestationFailed` event of this session may be written now. Each
    /// refusal still logs its line and counts in the metrics; past the budget only the event is
    /// left out, so forged or replayed envelopes for a known session cannot grow the audit table
    /// (or hold every caller's commit) without bound.
    fn attestation_budget(&self, execution_id: &str) -> bool {
        let allowed = self.limiter.check(
            &format!("attestation-audit\u{1f}{execution_id}"),
            &ATTESTATION_AUDIT_BUDGET,
            std::time::Instant::now(),
        );
        if !allowed {
            tracing::debug!(
                target: AUTH_TARGET,
                execution_id,
                "attestation audit budget spent: refusal not audited"
            );
        }
        allowed
    }

    /// Counts a refusal of the verification stages by its outcome and logs it.
    fn reject(&self, outcome: Attestation, execution_id: Option<&str>, error: &SealError) {
        self.metrics.attestation(outcome);
        log_rejection(execution_id, error);
    }
}

/// The outcome of a security token the verifier refused: a bad signature (or the key to check it)
/// is `signature_invalid`, an expired token `expired`, anything else `malformed` (reference §1.5).
fn token_outcome(error: &SealError) -> Attestation {
    match error.code {
        code::SIGNATURE_VERIFICATION_FAILED | code::INVALID_SIGNATURE => {
            Attestation::SignatureInvalid
        }
        code::TOKEN_EXPIRED => Attestation::Expired,
        _ => Attestation::Malformed,
    }
}

/// Logs a refusal of the verification stages (the runbook's recipe traces this target).
fn log_rejection(execution_id: Option<&str>, error: &SealError) {
    tracing::warn!(
        target: AUTH_TARGET,
        execution_id = execution_id.unwrap_or("-"),
        code = error.code,
        status = error.status.as_u16(),
        "envelope rejected: {}",
        error.message
    );
}
