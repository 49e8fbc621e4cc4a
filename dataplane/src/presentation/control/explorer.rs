//! `POST /v1/explorer`: an operator tries one operation of a registered API spec and sees slices of
//! the response (reference §2.4.7, with its FIX items: parameters fill the path, query and header
//! parameters like a workflow step's rendered template, the upstream status is reported, and the
//! spec's tenant is the credential tenant).

use aegis_seal_crds::openapi;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use serde_json_path::JsonPath;

use super::{Ctx, bad_request, now, parse_body, specs};
use crate::application::credential::CredentialRequest;
use crate::application::registry::spec_credential;
use crate::application::workflow::request;
use crate::infrastructure::http_client::OutboundRequest;
use crate::infrastructure::persistence::AuditEvent;
use crate::presentation::http::{Body, error, json_response, unavailable};

/// `POST /v1/explorer`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ApiExplorerRequest {
    /// Correlates the audit events of this exploration.
    pub execution_id: String,
    pub api_spec_id: String,
    pub operation_id: String,
    /// Path, query and header parameters by name; the remaining keys are the JSON body.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub parameters: Value,
    /// JSONPaths; each returns every match in the response.
    #[serde(default)]
    pub fields: Vec<String>,
    /// Adds the spec's operationIds as `hints.related_operations`.
    #[serde(default)]
    pub include_hateoas_hints: bool,
}

pub(super) async fn explore(ctx: &Ctx<'_>, body: Bytes) -> Response<Body> {
    let req: ApiExplorerRequest = match parse_body("explorer request", &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if req.execution_id.trim().is_empty() {
        return bad_request("execution_id cannot be empty");
    }
    let mut paths = Vec::with_capacity(req.fields.len());
    for field in &req.fields {
        match JsonPath::parse(field) {
            Ok(p) => paths.push((field, p)),
            Err(e) => return bad_request(format!("invalid explorer field '{field}': {e}")),
        }
    }
    let spec = match specs::load(ctx, &req.api_spec_id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let path = match spec_credential(&spec) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    // A system-global spec's credential is the platform's: a tenant operator may read the spec,
    // but calling any of its operations with that credential, outside every SecurityContext, is
    // the platform's to do.
    if path.is_some() && spec.tenant_id.is_none() && !ctx.operator.platform_operator {
        return super::tenant_mismatch(format!(
            "api spec {} is system-global and sends the platform's credential; only a platform operator may explore it",
            spec.id
        ));
    }
    let operations = match openapi::operations(&spec.raw_spec) {
        Ok(ops) => ops,
        Err(e) => return bad_request(format!("api spec {}: {e}", spec.id)),
    };
    let Some(operation) = operations.get(&req.operation_id) else {
        return error(StatusCode::NOT_FOUND, "operation not found");
    };
    let Ok(method) = Method::from_bytes(operation.method.as_bytes()) else {
        return bad_request(format!("operation method {} is invalid", operation.method));
    };
    let parameters = match &req.parameters {
        Value::Null => Value::Object(Map::new()),
        other => other.clone(),
    };
    let prepared = match request::prepare(&spec.base_url, &method, operation, parameters) {
        Ok(p) => p,
        Err(reason) => return bad_request(format!("parameters: {reason}")),
    };

    let mut events = Vec::new();
    let tenant = spec
        .tenant_id
        .clone()
        .or_else(|| ctx.operator.tenant_id.clone());
    let credential = match &path {
        None => None,
        Some(path) => {
            let outcome = ctx
                .state
                .credentials
                .resolve(CredentialRequest {
                    execution_id: &req.execution_id,
                    tenant_id: tenant.as_deref(),
                    owner_tenant_id: spec.tenant_id.as_deref(),
                    path,
                    user_token: None,
                    allows_human_delegated: false,
                    destination: Some(&spec.base_url),
                })
                .await;
            events.extend(outcome.events);
            match outcome.result {
                Ok(c) => Some(c),
                Err(e) => return finish(ctx, events, json_response(e.status, &e.body())).await,
            }
        }
    };

    let mut outbound = OutboundRequest::new(method, prepared.url);
    // A tenant's spec names a base URL its tenant chose.
    outbound.for_tenant = spec.tenant_id.is_some();
    outbound.headers = prepared.headers;
    outbound.body = prepared.body;
    for (name, value) in credential.iter().flat_map(|c| c.headers.iter()) {
        outbound.headers.insert(name.clone(), value.clone());
    }
    let sent = ctx.state.workflows.http().send(outbound).await;
    if let Some(c) = credential {
        events.extend(ctx.state.credentials.release(c.leases.clone()).await);
        let response = match sent {
            Ok(r) => respond(ctx, &req, &paths, &operations, r, Some(&c), &mut events),
            Err(e) => error(
                StatusCode::BAD_GATEWAY,
                c.redact_text(&format!("upstream request failed: {e}"))
                    .into_owned(),
            ),
        };
        return finish(ctx, events, response).await;
    }
    let response = match sent {
        Ok(r) => respond(ctx, &req, &paths, &operations, r, None, &mut events),
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            format!("upstream request failed: {e}"),
        ),
    };
    finish(ctx, events, response).await
}

/// Slices the upstream response and records `ExplorerRequestExecuted`.
fn respond(
    ctx: &Ctx<'_>,
    req: &ApiExplorerRequest,
    paths: &[(&String, JsonPath)],
    operations: &std::collections::BTreeMap<String, openapi::Operation>,
    response: crate::infrastructure::http_client::OutboundResponse,
    credential: Option<&crate::application::credential::Credential>,
    events: &mut Vec<AuditEvent>,
) -> Response<Body> {
    let mut document: Value = serde_json::from_slice(&response.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&response.body).into_owned()));
    if let Some(c) = credential {
        c.redact_json(&mut document);
    }
    let mut sliced = Map::new();
    for (field, path) in paths {
        let matches: Vec<Value> = path.query(&document).all().into_iter().cloned().collect();
        sliced.insert((*field).clone(), Value::Array(matches));
    }
    let sliced = Value::Object(sliced);
    let hints = req
        .include_hateoas_hints
        .then(|| json!({"related_operations": operations.keys().collect::<Vec<_>>()}));
    events.push(AuditEvent::from_json(
        "ExplorerRequestExecuted",
        json!({
            "execution_id": req.execution_id,
            "api_spec_id": req.api_spec_id,
            "operation_id": req.operation_id,
            "fields_requested": req.fields,
            "response_bytes_before_slice": response.body.len(),
            "response_bytes_after_slice": sliced.to_string().len(),
            "upstream_status": response.status.as_u16(),
            "tenant_id": ctx.operator.tenant_id,
            "executed_at": now(),
        }),
    ));
    json_response(
        StatusCode::OK,
        &json!({
            "sliced_data": sliced,
            "hints": hints,
            "operation_metadata": {"status": response.status.as_u16()},
        }),
    )
}

/// Commits the exploration's events before answering.
async fn finish(
    ctx: &Ctx<'_>,
    events: Vec<AuditEvent>,
    response: Response<Body>,
) -> Response<Body> {
    match ctx.state.audit.write(events).await {
        Ok(()) => response,
        Err(e) => unavailable("explorer", &e),
    }
}
