//! Routing and the built-in endpoints.

use std::sync::Arc;
use std::time::Instant;

use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::gateway::GatewayState;
use crate::infrastructure::auth::operator::OperatorIdentity;
use crate::infrastructure::metrics::UNKNOWN_PATH;
use crate::presentation::http::{Body, empty, json_response, read_body, too_large, unavailable};
use crate::presentation::{control, events, invoke, sessions, tools};

/// Answers one request.
pub async fn handle(state: Arc<GatewayState>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    // The path is split once, for the metric label and for routing; it is owned because routing
    // consumes the request.
    let path = req.uri().path().to_owned();
    let segments = segments(&path);
    let template = path_template(&segments);
    let declared_len = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > state.max_body_bytes) {
        let response = too_large(state.max_body_bytes);
        let status = response.status().as_u16();
        state
            .metrics
            .http_request(&method, template, status, started.elapsed());
        return response;
    }
    let response = route(&state, req, &segments, template).await;
    tracing::debug!(
        method = %method,
        path,
        status = response.status().as_u16(),
        "request"
    );
    state.metrics.http_request(
        &method,
        template,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// A path's segments, a trailing slash ignored.
fn segments(path: &str) -> Vec<&str> {
    path.trim_end_matches('/').split('/').skip(1).collect()
}

/// The `path_template` metric label: the route a path belongs to (axum's spelling, as upstream
/// dashboards expect), or `unknown_path`. Keyed on the path alone, so a wrong method on a known
/// path keeps its template; anything unrouted shares one label, whatever a caller sends.
/// `segments` are the path's, as [`segments`] splits it.
fn path_template(segments: &[&str]) -> &'static str {
    match segments {
        ["health"] => "/health",
        ["ready"] => "/ready",
        ["v1", "invoke"] => "/v1/invoke",
        ["v1", "seal", "invoke"] => "/v1/seal/invoke",
        ["v1", "seal", "sessions"] => "/v1/seal/sessions",
        ["v1", "seal", "sessions", _] => "/v1/seal/sessions/{execution_id}",
        ["v1", "tools"] => "/v1/tools",
        ["v1", "events"] => "/v1/events",
        ["v1", "specs"] => "/v1/specs",
        ["v1", "specs", _] => "/v1/specs/{id}",
        ["v1", "workflows"] => "/v1/workflows",
        ["v1", "workflows", _] => "/v1/workflows/{id}",
        ["v1", "cli-tools"] => "/v1/cli-tools",
        ["v1", "cli-tools", _] => "/v1/cli-tools/{name}",
        ["v1", "security-contexts"] => "/v1/security-contexts",
        ["v1", "security-contexts", _] => "/v1/security-contexts/{name}",
        ["v1", "explorer"] => "/v1/explorer",
        ["openapi.json"] => "/openapi.json",
        ["api-docs"] => "/api-docs",
        _ => UNKNOWN_PATH,
    }
}

/// `segments` are the request path's, `template` its `path_template`.
async fn route(
    state: &GatewayState,
    req: Request<Incoming>,
    segments: &[&str],
    template: &'static str,
) -> Response<Body> {
    match (req.method().clone(), segments) {
        (Method::GET | Method::HEAD, ["health"]) => health(),
        (Method::GET, ["ready"]) => ready(state).await,
        (Method::POST, ["v1", "invoke"] | ["v1", "seal", "invoke"]) => {
            let (parts, body) = req.into_parts();
            match read_body(body, state.max_body_bytes).await {
                Ok(body) => invoke::invoke(state, template, &parts.headers, body).await,
                Err(response) => response,
            }
        }
        (Method::POST, ["v1", "seal", "sessions"]) => {
            let operator = match authenticate(state, &req).await {
                Ok(o) => o,
                Err(response) => return response,
            };
            match read_body(req.into_body(), state.max_body_bytes).await {
                Ok(body) => sessions::upsert(state, &operator, body).await,
                Err(response) => response,
            }
        }
        (Method::GET, ["v1", "seal", "sessions"]) => match authenticate(state, &req).await {
            Ok(operator) => sessions::list(state, &operator).await,
            Err(response) => response,
        },
        (Method::GET, ["v1", "seal", "sessions", id]) => match authenticate(state, &req).await {
            Ok(operator) => sessions::get(state, &operator, id).await,
            Err(response) => response,
        },
        (Method::DELETE, ["v1", "seal", "sessions", id]) => match authenticate(state, &req).await {
            Ok(operator) => sessions::revoke(state, &operator, id).await,
            Err(response) => response,
        },
        (Method::GET, ["v1", "tools"]) => match authenticate(state, &req).await {
            Ok(operator) => tools::list(state, &operator),
            Err(response) => response,
        },
        (Method::GET, ["v1", "events"]) => match authenticate(state, &req).await {
            Ok(operator) => events::list(state, &operator, req.uri().query()).await,
            Err(response) => response,
        },
        (Method::GET | Method::HEAD, ["openapi.json"]) => control::openapi::openapi_json(),
        (Method::GET | Method::HEAD, ["api-docs"]) => control::openapi::api_docs(),
        (_, ["openapi.json"] | ["api-docs"]) => method_not_allowed("GET, HEAD"),
        (
            _,
            [
                "v1",
                "specs" | "workflows" | "cli-tools" | "security-contexts" | "explorer",
                ..,
            ],
        ) => control::route(state, req, segments)
            .await
            .unwrap_or_else(|| empty(StatusCode::NOT_FOUND)),
        (_, ["health"]) => method_not_allowed("GET, HEAD"),
        (_, ["ready"]) => method_not_allowed("GET"),
        (_, ["v1", "invoke"] | ["v1", "seal", "invoke"]) => method_not_allowed("POST"),
        (_, ["v1", "seal", "sessions"]) => method_not_allowed("GET, POST"),
        (_, ["v1", "seal", "sessions", _]) => method_not_allowed("GET, DELETE"),
        (_, ["v1", "tools"]) => method_not_allowed("GET"),
        (_, ["v1", "events"]) => method_not_allowed("GET"),
        _ => empty(StatusCode::NOT_FOUND),
    }
}

/// The operator behind a request to an operator endpoint (or a platform operator when operator
/// authentication is disabled by configuration), if it may make this request: a read-only
/// operator may only read.
pub(crate) async fn authenticate(
    state: &GatewayState,
    req: &Request<Incoming>,
) -> Result<OperatorIdentity, Response<Body>> {
    let Some(authenticator) = &state.operator_auth else {
        return Ok(OperatorIdentity::unauthenticated_platform());
    };
    authenticator
        .authenticate(req.headers())
        .await
        .and_then(|operator| {
            authenticator
                .authorize(&operator, req.method())
                .map(|()| operator)
        })
        .map_err(|e| {
            let mut response = json_response(e.status(), &e.body());
            if let Some(challenge) = e.challenge() {
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            }
            response
        })
}

/// Liveness: never touches the database, so a starved pool cannot make the kubelet restart pods.
fn health() -> Response<Body> {
    let mut response = Response::new(Body::from("ok"));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Readiness: a database round trip through the same pool requests use.
///
/// A missing container CLI (B-10) does not make the gateway unready: a 503 would take it out of
/// its Service and stop workflows too. Instead, when CLI tools are configured and no container
/// CLI was resolved, `status` is `degraded` and `container_cli.error` carries the runbook line
/// `failed to resolve container CLI: no podman or docker on PATH`; `container_cli` is always there.
async fn ready(state: &GatewayState) -> Response<Body> {
    match state.db.ping().await {
        Ok(()) => {
            let served = state.served.load();
            let s = &served.snapshot;
            let cli_missing = state.cli.container_cli().is_err();
            let status = if cli_missing && !s.cli_tools.is_empty() {
                "degraded"
            } else {
                "ready"
            };
            json_response(
                StatusCode::OK,
                &json!({
                    "status": status,
                    "snapshot_hash": served.hash,
                    "workflows": s.workflows.len(),
                    "cli_tools": s.cli_tools.len(),
                    "security_contexts": s.security_contexts.len(),
                    "container_cli": state.cli.readiness(),
                }),
            )
        }
        Err(e) => unavailable("ready", &e),
    }
}

pub(crate) fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = empty(StatusCode::METHOD_NOT_ALLOWED);
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}
