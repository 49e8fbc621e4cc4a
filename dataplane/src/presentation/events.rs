//! `GET /v1/events`: the audit trail over HTTP, for operators who should not need SQL access.
//!
//! Query parameters: `event_type`, `execution_id`, `tenant_id` (alias `tenant`), `since` and
//! `until` (RFC 3339; `since` inclusive, `until` exclusive), `order` (`desc`, the default, or
//! `asc`), `limit` (default 100, at most 1000) and `cursor` (the `next_cursor` of the previous
//! page). A tenant operator sees only its own tenant's events; a platform operator sees all.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, Utc};
use http::{Response, StatusCode};
use serde_json::{Value, json};

use crate::gateway::GatewayState;
use crate::infrastructure::auth::operator::OperatorIdentity;
use crate::infrastructure::persistence::{EventQuery, StoredEvent};
use crate::presentation::http::{Body, error, json_response, percent_decode, unavailable};

const HANDLER: &str = "list_events";
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;
/// Cursors carry their version so their format may change without misreading old ones.
const CURSOR_PREFIX: &str = "v1:";

pub async fn list(
    state: &GatewayState,
    operator: &OperatorIdentity,
    query: Option<&str>,
) -> Response<Body> {
    let mut q = match parse(query) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    if !operator.platform_operator {
        // Scoped by the token, never by the request: a tenant operator may name its own tenant.
        let own = operator.tenant_id.clone();
        if q.tenant_id.is_some() && q.tenant_id != own {
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "tenant mismatch: a tenant operator reads only tenant \"{}\"'s events",
                    own.unwrap_or_default()
                ),
            );
        }
        q.tenant_id = own;
    }
    let limit = q.limit;
    // One more than asked tells whether another page exists.
    q.limit = limit + 1;
    let mut events = match state.db.query_events(&q).await {
        Ok(events) => events,
        Err(e) => return unavailable(HANDLER, &e),
    };
    let more = events.len() > limit as usize;
    events.truncate(limit as usize);
    let next_cursor = more
        .then(|| events.last().map(|e| encode_cursor(e.id)))
        .flatten();
    json_response(
        StatusCode::OK,
        &json!({
            "events": events.iter().map(view).collect::<Vec<_>>(),
            "next_cursor": next_cursor,
        }),
    )
}

fn view(e: &StoredEvent) -> Value {
    json!({
        "id": e.id,
        "event_type": e.event_type,
        "tenant_id": e.tenant_id,
        "created_at": e.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "payload": e.payload,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    })
}

fn encode_cursor(id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{id}"))
}

fn decode_cursor(cursor: &str) -> Option<i64> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    text.strip_prefix(CURSOR_PREFIX)?.parse().ok()
}

fn parse(query: Option<&str>) -> Result<EventQuery, String> {
    let mut q = EventQuery {
        newest_first: true,
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    let time = |name: &str, value: &str| -> Result<DateTime<Utc>, String> {
        DateTime::parse_from_rfc3339(value)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("{name}: not an RFC 3339 time ({e})"))
    };
    let pairs = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")));
    for (key, raw) in pairs {
        let value = percent_decode(raw);
        let non_empty = || Some(value.clone()).filter(|v| !v.is_empty());
        match key {
            "event_type" => q.event_type = non_empty(),
            "execution_id" => q.execution_id = non_empty(),
            "tenant_id" | "tenant" => q.tenant_id = non_empty(),
            "since" => q.since = Some(time(key, &value)?),
            "until" => q.until = Some(time(key, &value)?),
            "order" => {
                q.newest_first = match value.as_str() {
                    "desc" => true,
                    "asc" => false,
                    other => return Err(format!("order: \"{other}\" is not asc or desc")),
                }
            }
            "limit" => {
                q.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| format!("limit: must be a number from 1 to {MAX_LIMIT}"))?;
            }
            "cursor" => {
                q.after_id = Some(
                    decode_cursor(&value)
                        .ok_or_else(|| "cursor: not a cursor this endpoint returned".to_owned())?,
                );
            }
            other => return Err(format!("unknown query parameter \"{other}\"")),
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filters_and_refuses_what_it_does_not_understand() {
        let q = parse(Some(
            "event_type=ToolCallAuthorized&execution_id=exec%2D1&tenant=acme&since=2026-01-01T00:00:00%2B01:00&order=asc&limit=5",
        ))
        .unwrap();
        assert_eq!(q.event_type.as_deref(), Some("ToolCallAuthorized"));
        assert_eq!(q.execution_id.as_deref(), Some("exec-1"));
        assert_eq!(q.tenant_id.as_deref(), Some("acme"));
        assert_eq!(q.since.unwrap().to_rfc3339(), "2025-12-31T23:00:00+00:00");
        assert!(!q.newest_first);
        assert_eq!(q.limit, 5);

        let cursor = encode_cursor(42);
        assert_eq!(
            parse(Some(&format!("cursor={cursor}"))).unwrap().after_id,
            Some(42)
        );
        for bad in [
            "limit=0",
            "limit=1001",
            "since=yesterday",
            "order=up",
            "cursor=42",
            "colour=red",
        ] {
            assert!(parse(Some(bad)).is_err(), "{bad} was accepted");
        }
    }
}
