//! `/v1/seal/sessions`: the orchestrator provisions, lists, reads and revokes sessions.

use bytes::Bytes;
use chrono::{DateTime, Datelike, Duration, SecondsFormat, Utc};
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::gateway::GatewayState;
use crate::infrastructure::auth::envelope::parse_session_key;
use crate::infrastructure::auth::operator::OperatorIdentity;
use crate::infrastructure::persistence::{
    AuditEvent, SessionRecord, SessionRevoke, SessionStatus, SessionWrite,
};
use crate::presentation::http::{Body, error, json_response, unavailable};

const HANDLER: &str = "seal_sessions";

/// The body the orchestrator sends (reference §2.4.4).
#[derive(Deserialize)]
struct UpsertSession {
    execution_id: String,
    agent_id: String,
    security_context: String,
    public_key_b64: String,
    security_token: String,
    #[serde(default)]
    session_status: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    allowed_tool_patterns: Option<Vec<String>>,
    /// The tenant whose agent the session is for. Only a platform operator (the orchestrator
    /// serving every tenant) may name another than its own; without it the session is the
    /// operator's tenant's, as upstream, which left an orchestrator without a tenant claim
    /// unable to bind any session to a tenant.
    #[serde(default)]
    tenant_id: Option<String>,
}

/// A session as listed: everything but the security token.
fn view(s: &SessionRecord) -> Value {
    json!({
        "execution_id": s.execution_id,
        "agent_id": s.agent_id,
        "security_context": s.security_context,
        "public_key_b64": s.public_key_b64,
        "session_status": s.status.as_str(),
        "expires_at": s.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "allowed_tool_patterns": s.allowed_tool_patterns,
        "tenant_id": s.tenant_id,
    })
}

/// A tenant operator sees its own sessions and tenant-less ones; a platform operator sees all.
fn visible(operator: &OperatorIdentity, session: &SessionRecord) -> bool {
    operator.platform_operator
        || session.tenant_id.is_none()
        || session.tenant_id == operator.tenant_id
}

pub async fn upsert(
    state: &GatewayState,
    operator: &OperatorIdentity,
    body: Bytes,
) -> Response<Body> {
    let request: UpsertSession = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid session: {e}")),
    };
    for (field, value) in [
        ("execution_id", &request.execution_id),
        ("agent_id", &request.agent_id),
        ("security_context", &request.security_context),
        ("public_key_b64", &request.public_key_b64),
        ("security_token", &request.security_token),
    ] {
        if value.trim().is_empty() {
            return error(StatusCode::BAD_REQUEST, format!("{field} cannot be empty"));
        }
    }
    if let Err(e) = parse_session_key(&request.public_key_b64) {
        return error(StatusCode::BAD_REQUEST, e.message);
    }
    let named = request
        .tenant_id
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let tenant_id = if operator.platform_operator && named.is_none() {
        // A platform operator may change any session; one that names no tenant changes it where
        // it is (a `platform-admin` token that carries a tenant would otherwise claim another
        // tenant's or a system-global session for its own, and be refused).
        match state.db.get_session(&request.execution_id).await {
            Ok(Some(existing)) => existing.tenant_id,
            Ok(None) => operator.tenant_id.clone(),
            Err(e) => return unavailable(HANDLER, &e),
        }
    } else {
        match operator.owner_for_create(named) {
            Ok(t) => t,
            Err(t) => {
                return error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "tenant mismatch: an operator of tenant \"{}\" cannot create sessions for tenant \"{t}\"",
                        operator.tenant_id.as_deref().unwrap_or_default()
                    ),
                );
            }
        }
    };
    let status = match request.session_status.as_deref() {
        None => SessionStatus::Active,
        Some(s) => match SessionStatus::parse(s) {
            Some(status) => status,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid session_status '{s}': expected Active, Expired or Revoked"),
                );
            }
        },
    };
    let now = state.invocation.clock.now();
    let expires_at = match request.expires_at.as_deref() {
        None => now + Duration::hours(1),
        Some(text) => match DateTime::parse_from_rfc3339(text) {
            // Stored as RFC 3339 text on SQLite, which only reads years 0000-9999 back (an offset
            // can move `0000-01-01T00:00:00+01:00` into year -1).
            Ok(t) if !(0..=9999).contains(&t.with_timezone(&Utc).year()) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "invalid expires_at {text}: the year in UTC must be between 0000 and 9999"
                    ),
                );
            }
            Ok(t) => t.with_timezone(&Utc),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid expires_at RFC3339 timestamp: {e}"),
                );
            }
        },
    };
    let patterns = request
        .allowed_tool_patterns
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| vec!["*".into()]);
    let record = SessionRecord {
        execution_id: request.execution_id,
        agent_id: request.agent_id,
        security_context: request.security_context,
        public_key_b64: request.public_key_b64,
        security_token: request.security_token,
        status,
        expires_at,
        allowed_tool_patterns: patterns,
        tenant_id,
    };
    let written = match state.db.upsert_session(&record).await {
        Ok(w) => w,
        Err(e) => return unavailable(HANDLER, &e),
    };
    state.invocation.sessions.invalidate(&record.execution_id);
    match written {
        SessionWrite::RefusedRevoked => error(
            StatusCode::CONFLICT,
            format!(
                "session {} is revoked; revocation is terminal",
                record.execution_id
            ),
        ),
        SessionWrite::RefusedOtherTenant => error(
            StatusCode::FORBIDDEN,
            format!(
                "tenant mismatch: session {} belongs to another tenant",
                record.execution_id
            ),
        ),
        SessionWrite::Created | SessionWrite::Updated => {
            let event = AuditEvent::from_json(
                "SessionRegistered",
                json!({
                    "execution_id": record.execution_id,
                    "agent_id": record.agent_id,
                    "security_context": record.security_context,
                    "session_status": record.status.as_str(),
                    "expires_at": record.expires_at,
                    "tenant_id": record.tenant_id,
                    "registered_at": now,
                }),
            );
            if let Err(e) = state.audit.write(vec![event]).await {
                return unavailable(HANDLER, &e);
            }
            let code = if written == SessionWrite::Created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json_response(code, &json!({"saved": true, "session": view(&record)}))
        }
    }
}

pub async fn list(state: &GatewayState, operator: &OperatorIdentity) -> Response<Body> {
    let tenant = (!operator.platform_operator)
        .then_some(operator.tenant_id.as_deref())
        .flatten();
    match state.db.list_active_sessions(tenant).await {
        Ok(sessions) => json_response(
            StatusCode::OK,
            &Value::Array(sessions.iter().map(view).collect()),
        ),
        Err(e) => unavailable(HANDLER, &e),
    }
}

pub async fn get(
    state: &GatewayState,
    operator: &OperatorIdentity,
    execution_id: &str,
) -> Response<Body> {
    match state.db.get_session(execution_id).await {
        Ok(Some(s)) if visible(operator, &s) => json_response(StatusCode::OK, &view(&s)),
        Ok(Some(_)) => error(
            StatusCode::FORBIDDEN,
            format!("tenant mismatch: session {execution_id} belongs to another tenant"),
        ),
        Ok(None) => error(StatusCode::NOT_FOUND, "session not found"),
        Err(e) => unavailable(HANDLER, &e),
    }
}

pub async fn revoke(
    state: &GatewayState,
    operator: &OperatorIdentity,
    execution_id: &str,
) -> Response<Body> {
    let scope = (!operator.platform_operator)
        .then_some(operator.tenant_id.as_deref())
        .flatten();
    let revoked = match state.db.revoke_session(execution_id, scope).await {
        Ok(r) => r,
        Err(e) => return unavailable(HANDLER, &e),
    };
    state.invocation.sessions.invalidate(execution_id);
    let session = match revoked {
        SessionRevoke::Revoked(session) => session,
        SessionRevoke::NotActive => {
            return error(
                StatusCode::NOT_FOUND,
                "session not found or already revoked",
            );
        }
        SessionRevoke::RefusedOtherTenant => {
            return error(
                StatusCode::FORBIDDEN,
                format!("tenant mismatch: session {execution_id} belongs to another tenant"),
            );
        }
    };
    let now = state.invocation.clock.now();
    let event = AuditEvent::from_json(
        "SessionRevoked",
        json!({
            "execution_id": session.execution_id,
            "agent_id": session.agent_id,
            "tenant_id": session.tenant_id,
            "revoked_by": operator.subject,
            "revoked_at": now,
        }),
    );
    if let Err(e) = state.audit.write(vec![event]).await {
        return unavailable(HANDLER, &e);
    }
    tracing::info!(execution_id, "session revoked");
    json_response(
        StatusCode::OK,
        &json!({
            "status": "success",
            "execution_id": execution_id,
            "session_status": "Revoked",
            "revoked_at": now.to_rfc3339_opts(SecondsFormat::Secs, true),
        }),
    )
}
