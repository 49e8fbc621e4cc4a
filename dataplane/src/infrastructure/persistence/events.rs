//! `gateway_events`: the audit trail. Payloads are flat JSON objects so the runbook's
//! `payload->>'field'` queries work verbatim on both backends.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

/// One audit event.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Event type as the runbook names it, e.g. `CredentialExchangeFailed`.
    pub event_type: &'static str,
    pub payload: Map<String, Value>,
    pub tenant_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl AuditEvent {
    /// An event from a `json!` object literal; anything but an object yields an empty payload.
    pub fn from_json(event_type: &'static str, payload: Value) -> Self {
        match payload {
            Value::Object(map) => Self::new(event_type, map),
            _ => Self::new(event_type, Map::new()),
        }
    }

    pub fn new(event_type: &'static str, payload: Map<String, Value>) -> Self {
        // As the payload stores it (`audit_chain::canonical_payload`): no U+0000.
        let tenant_id = payload
            .get("tenant_id")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(|t| super::audit_chain::storable(t).into_owned());
        Self {
            event_type,
            payload,
            tenant_id,
            created_at: Utc::now(),
        }
    }
}

/// SQLite keeps times as fixed-width UTC text so that ORDER BY and comparisons are chronological.
pub(super) fn sqlite_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}
