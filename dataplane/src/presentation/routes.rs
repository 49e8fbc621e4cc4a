//! Routing and the built-in endpoints.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::gateway::GatewayState;
use crate::infrastructure::persistence::{PersistenceError, log_pool_starvation};

pub type Body = Full<Bytes>;

/// Answers one request.
pub async fn handle<B>(state: Arc<GatewayState>, req: Request<B>) -> Response<Body> {
    let declared_len = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > state.max_body_bytes) {
        return json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"error": format!("request body exceeds {} bytes", state.max_body_bytes)}),
        );
    }
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/health") => health(),
        (&Method::GET, "/ready") => ready(&state).await,
        (_, "/health") => method_not_allowed("GET, HEAD"),
        (_, "/ready") => method_not_allowed("GET"),
        _ => empty(StatusCode::NOT_FOUND),
    };
    tracing::debug!(
        method = %req.method(),
        path = req.uri().path(),
        status = response.status().as_u16(),
        "request"
    );
    response
}

/// Liveness: never touches the database, so a starved pool cannot make the kubelet restart pods.
fn health() -> Response<Body> {
    Response::builder()
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from("ok"))
        .unwrap_or_default()
}

/// Readiness: a database round trip through the same pool requests use.
async fn ready(state: &GatewayState) -> Response<Body> {
    match state.db.ping().await {
        Ok(()) => {
            let snapshot = state.snapshot.load();
            json_response(
                StatusCode::OK,
                &json!({
                    "status": "ready",
                    "snapshot_hash": snapshot.hash(),
                    "workflows": snapshot.workflows.len(),
                    "cli_tools": snapshot.cli_tools.len(),
                    "security_contexts": snapshot.security_contexts.len(),
                }),
            )
        }
        Err(e) => {
            if matches!(e, PersistenceError::PoolTimedOut) {
                log_pool_starvation("ready", &e);
            } else {
                tracing::warn!(error = %e, "readiness check failed");
            }
            let mut response = json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "unavailable", "error": e.to_string()}),
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, http::HeaderValue::from_static("1"));
            response
        }
    }
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = empty(StatusCode::METHOD_NOT_ALLOWED);
    response
        .headers_mut()
        .insert(ALLOW, http::HeaderValue::from_static(allow));
    response
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = status;
    response
}

pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
