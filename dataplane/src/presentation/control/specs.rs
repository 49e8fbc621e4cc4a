//! `/v1/specs`: the OpenAPI documents REST workflows run against (reference §2.4.1, §5.1).

use std::collections::BTreeMap;
use std::time::Duration;

use aegis_seal_crds::openapi::{self, Operation};
use aegis_seal_crds::{CredentialResolutionPath, Resources, WorkflowStep};
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use reqwest::Url;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Ctx, already_deleted, bad_request, db_error, invalid, not_found, now, parse_body, swap,
    tenant_phrase,
};
use crate::application::registry::{self, operations_column};
use crate::infrastructure::http_client::OutboundRequest;
use crate::infrastructure::persistence::{AuditEvent, CatalogTable, SpecRow};
use crate::presentation::http::{Body, error, json_response};

/// Bound on fetching `source_fetch_url`.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest OpenAPI document accepted from `source_fetch_url`.
const MAX_DOCUMENT_BYTES: u64 = 8 * 1024 * 1024;

/// `POST /v1/specs` and `PUT /v1/specs/{id}`. Unknown fields are ignored.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RegisterSpecRequest {
    /// Unique per tenant.
    pub name: String,
    /// Where requests are sent (the document's `servers` are not used).
    pub base_url: String,
    /// Where the document came from; a second registration with the same `source_url` in the same
    /// tenant returns the first one (`deduplicated: true`).
    #[serde(default)]
    pub source_url: Option<String>,
    /// The OpenAPI 3 or Swagger 2 document. One of `inline_json` and `source_fetch_url` is required.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub inline_json: Option<Value>,
    /// A URL the gateway fetches the document from (JSON or YAML).
    #[serde(default)]
    pub source_fetch_url: Option<String>,
    /// How the credential for upstream calls is obtained; none means unauthenticated calls.
    #[serde(default)]
    pub credential_path: Option<CredentialResolutionPath>,
    /// Owner; defaults to the operator token's tenant. Only a platform operator may name another.
    #[serde(default)]
    pub tenant_id: Option<String>,
}

fn what(id: &str) -> String {
    format!("api spec {id}")
}

/// A spec as listed: everything but the document.
fn summary(s: &SpecRow) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "tenant_id": s.tenant_id,
        "base_url": s.base_url,
        "source_url": s.source_url,
        "credential_path": s.credential_path,
        "operations": s.operations,
        "source": s.source,
    })
}

fn full(s: &SpecRow) -> Value {
    let mut v = summary(s);
    v["raw_spec"] = s.raw_spec.clone();
    v
}

pub(super) async fn list(ctx: &Ctx<'_>) -> Response<Body> {
    match ctx.state.db.list_specs(None).await {
        Ok(rows) => json_response(
            StatusCode::OK,
            &Value::Array(
                rows.iter()
                    .filter(|s| ctx.can_read(s.tenant_id.as_deref()))
                    .map(summary)
                    .collect(),
            ),
        ),
        Err(e) => db_error(&e),
    }
}

pub(super) async fn get(ctx: &Ctx<'_>, id: &str) -> Response<Body> {
    match load(ctx, id).await {
        Ok(spec) => json_response(StatusCode::OK, &full(&spec)),
        Err(r) => r,
    }
}

/// The spec `id`, if the operator may read it.
pub(super) async fn load(ctx: &Ctx<'_>, id: &str) -> Result<SpecRow, Response<Body>> {
    match ctx.state.db.get_spec(id).await {
        Ok(Some(spec)) => {
            ctx.check_read(&what(id), spec.tenant_id.as_deref())?;
            Ok(spec)
        }
        Ok(None) => Err(not_found("api spec")),
        Err(e) => Err(db_error(&e)),
    }
}

/// The document and its operations, from the request.
async fn document(
    ctx: &Ctx<'_>,
    req: &RegisterSpecRequest,
) -> Result<(Value, BTreeMap<String, Operation>), Response<Body>> {
    // Errors name the field the document came from.
    let (doc, field) = match (&req.inline_json, &req.source_fetch_url) {
        (Some(doc), _) => (doc.clone(), "inline_json"),
        (None, Some(url)) => (fetch(ctx, url).await?, "source_fetch_url"),
        (None, None) => return Err(bad_request("provide inline_json or source_fetch_url")),
    };
    if !doc.is_object() {
        return Err(bad_request(format!(
            "{field}: the OpenAPI document must be a JSON object"
        )));
    }
    let ops = openapi::operations(&doc).map_err(|e| bad_request(format!("{field}: {e}")))?;
    Ok((doc, ops))
}

/// Fetches a document through the upstream client: bounded in time and size, link-local and
/// metadata destinations refused, and a tenant operator's URL held to the tenants' rule.
async fn fetch(ctx: &Ctx<'_>, url: &str) -> Result<Value, Response<Body>> {
    let parsed = Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            bad_request(format!(
                "source_fetch_url: \"{url}\" is not an absolute http(s) URL"
            ))
        })?;
    let mut request = OutboundRequest::new(Method::GET, parsed);
    request.for_tenant = !ctx.operator.platform_operator;
    request.timeout = Some(FETCH_TIMEOUT);
    request.max_response_bytes = Some(MAX_DOCUMENT_BYTES);
    let response = ctx
        .state
        .workflows
        .http()
        .send(request)
        .await
        .map_err(|e| {
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("source_fetch_url: could not fetch the document: {e}"),
            )
        })?;
    if !response.status.is_success() {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "source_fetch_url: fetching the document returned {}",
                response.status
            ),
        ));
    }
    let text = String::from_utf8_lossy(&response.body);
    openapi::parse_document(&text).map_err(|e| bad_request(format!("source_fetch_url: {e}")))
}

/// Checks base URL and credential path by the compile rules of a workflow using the document.
fn validate(
    req: &RegisterSpecRequest,
    doc: &Value,
    first_operation: &str,
) -> Result<(), Response<Body>> {
    if req.name.trim().is_empty() || req.name.len() > 256 {
        return Err(bad_request("name: must be 1-256 characters"));
    }
    let probe = SpecRow {
        id: "validation".into(),
        name: req.name.clone(),
        tenant_id: None,
        base_url: req.base_url.clone(),
        source_url: None,
        raw_spec: doc.clone(),
        operations: Value::Null,
        credential_path: req
            .credential_path
            .as_ref()
            .and_then(|p| serde_json::to_value(p).ok()),
        source: String::new(),
    };
    let step = WorkflowStep {
        name: "probe".into(),
        operation_id: first_operation.to_owned(),
        body_template: None,
        extractors: BTreeMap::new(),
        on_error: aegis_seal_crds::OnError::Fail,
        retries: None,
        timeout_seconds: None,
    };
    let wf = crate::infrastructure::persistence::WorkflowRow {
        id: "validation".into(),
        name: "validation".into(),
        tenant_id: None,
        description: String::new(),
        input_schema: json!({"type": "object"}),
        api_spec_id: None,
        steps: json!([step]),
        source: String::new(),
    };
    let resource = registry::workflow_resource(&wf, &probe).map_err(bad_request)?;
    let problems: Vec<String> = registry::problems(&Resources {
        workflows: vec![resource],
        ..Resources::default()
    })
    .into_iter()
    .filter(|p| {
        p.starts_with("base_url")
            || p.starts_with("credential_path")
            || p.starts_with("inline_json")
    })
    .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(invalid("api spec", problems))
    }
}

pub(super) async fn create(ctx: &Ctx<'_>, body: Bytes) -> Response<Body> {
    let req: RegisterSpecRequest = match parse_body("api spec", &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let owner = match ctx.owner_for_create(req.tenant_id.as_deref()) {
        Ok(o) => o,
        Err(r) => return r,
    };
    // Deduplication stays inside the tenant: another tenant's spec is never handed out.
    if let Some(source_url) = req.source_url.as_deref().filter(|u| !u.is_empty()) {
        match ctx
            .state
            .db
            .spec_by_source_url(owner.as_deref(), source_url)
            .await
        {
            Ok(Some(existing)) => {
                return json_response(
                    StatusCode::OK,
                    &json!({"id": existing.id, "deduplicated": true}),
                );
            }
            Ok(None) => {}
            Err(e) => return db_error(&e),
        }
    }
    let (doc, ops) = match document(ctx, &req).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let first = ops.keys().next().cloned().unwrap_or_default();
    if let Err(r) = validate(&req, &doc, &first) {
        return r;
    }
    let row = SpecRow {
        id: uuid::Uuid::new_v4().to_string(),
        name: req.name.trim().to_owned(),
        tenant_id: owner,
        base_url: req.base_url.trim_end_matches('/').to_owned(),
        source_url: req.source_url.clone(),
        raw_spec: doc,
        operations: operations_column(&ops),
        credential_path: req
            .credential_path
            .as_ref()
            .and_then(|p| serde_json::to_value(p).ok()),
        source: crate::infrastructure::persistence::REST_SOURCE.into(),
    };
    {
        let _base = ctx.state.registry.lock().await;
        if let Err(r) = ctx.check_quota(row.tenant_id.as_deref()).await {
            return r;
        }
        match ctx
            .state
            .db
            .name_holder(CatalogTable::ApiSpecs, row.tenant_id.as_deref(), &row.name)
            .await
        {
            Ok(Some(_)) => {
                return error(
                    StatusCode::CONFLICT,
                    format!(
                        "api spec \"{}\" already exists in {}",
                        row.name,
                        tenant_phrase(row.tenant_id.as_deref())
                    ),
                );
            }
            Ok(None) => {}
            Err(e) => return db_error(&e),
        }
        if let Err(e) = ctx.state.db.save_spec(&row).await {
            return db_error(&e);
        }
    }
    if let Err(r) = ctx.audit(registered_event(ctx, &row, "create")).await {
        return r;
    }
    tracing::info!(spec_id = %row.id, name = %row.name, "api spec registered");
    json_response(
        StatusCode::CREATED,
        &json!({"id": row.id, "spec": summary(&row)}),
    )
}

fn registered_event(ctx: &Ctx<'_>, row: &SpecRow, operation: &str) -> AuditEvent {
    AuditEvent::from_json(
        "ApiSpecRegistered",
        json!({
            "spec_id": row.id,
            "name": row.name,
            "tenant_id": row.tenant_id,
            "operation": operation,
            "registered_by": ctx.registered_by(),
            "registered_at": now(),
        }),
    )
}

pub(super) async fn update(ctx: &Ctx<'_>, id: &str, body: Bytes) -> Response<Body> {
    let req: RegisterSpecRequest = match parse_body("api spec", &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    // Authorized before the document is fetched, so that nobody who may not change the spec can
    // make the gateway fetch a URL; checked again under the lock below, as the spec may change.
    let allowed = load(ctx, id).await.and_then(|current| {
        ctx.check_rest_write(&what(id), id, current.tenant_id.as_deref(), &current.source)
    });
    if let Err(r) = allowed {
        return r;
    }
    let (doc, ops) = match document(ctx, &req).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let first = ops.keys().next().cloned().unwrap_or_default();
    if let Err(r) = validate(&req, &doc, &first) {
        return r;
    }
    let base = ctx.state.registry.lock().await;
    let current = match load(ctx, id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(r) =
        ctx.check_rest_write(&what(id), id, current.tenant_id.as_deref(), &current.source)
    {
        return r;
    }
    if let Some(t) = req.tenant_id.as_deref().filter(|t| !t.trim().is_empty())
        && Some(t) != current.tenant_id.as_deref()
    {
        return bad_request("tenant_id: an object's tenant cannot change; delete and re-create it");
    }
    let row = SpecRow {
        id: current.id.clone(),
        name: req.name.trim().to_owned(),
        tenant_id: current.tenant_id.clone(),
        base_url: req.base_url.trim_end_matches('/').to_owned(),
        source_url: req.source_url.clone(),
        raw_spec: doc,
        operations: operations_column(&ops),
        credential_path: req
            .credential_path
            .as_ref()
            .and_then(|p| serde_json::to_value(p).ok()),
        source: current.source.clone(),
    };
    if row.name != current.name {
        match ctx
            .state
            .db
            .name_holder(CatalogTable::ApiSpecs, row.tenant_id.as_deref(), &row.name)
            .await
        {
            Ok(Some(_)) => {
                return error(
                    StatusCode::CONFLICT,
                    format!("api spec \"{}\" already exists", row.name),
                );
            }
            Ok(None) => {}
            Err(e) => return db_error(&e),
        }
    }
    // The workflows on this spec must still compile against the new document.
    let dependents = match ctx.state.db.workflows_of_spec(id).await {
        Ok(w) => w,
        Err(e) => return db_error(&e),
    };
    let problems = registry::problems_with_spec(&row, &dependents);
    if !problems.is_empty() {
        return invalid("api spec", problems);
    }
    if let Err(e) = ctx.state.db.save_spec(&row).await {
        return db_error(&e);
    }
    if !dependents.is_empty()
        && let Err(r) = swap(ctx.state, &base).await
    {
        return r;
    }
    drop(base);
    if let Err(r) = ctx.audit(registered_event(ctx, &row, "update")).await {
        return r;
    }
    json_response(
        StatusCode::OK,
        &json!({"updated": true, "spec": summary(&row)}),
    )
}

pub(super) async fn delete(ctx: &Ctx<'_>, id: &str) -> Response<Body> {
    let _base = ctx.state.registry.lock().await;
    let current = match load(ctx, id).await {
        Ok(s) => s,
        Err(r) => return already_deleted(r),
    };
    if let Err(r) =
        ctx.check_rest_write(&what(id), id, current.tenant_id.as_deref(), &current.source)
    {
        return r;
    }
    let dependents = match ctx.state.db.workflows_of_spec(id).await {
        Ok(w) => w,
        Err(e) => return db_error(&e),
    };
    if !dependents.is_empty() {
        let names: Vec<&str> = dependents.iter().map(|w| w.name.as_str()).collect();
        return error(
            StatusCode::CONFLICT,
            format!(
                "api spec {id} is used by workflows {}; delete them first",
                names.join(", ")
            ),
        );
    }
    match ctx
        .state
        .db
        .delete_rest_row(CatalogTable::ApiSpecs, id)
        .await
    {
        Ok(_) => {
            ctx.deleted(
                CatalogTable::ApiSpecs,
                id,
                &current.name,
                current.tenant_id.as_deref(),
            )
            .await
        }
        Err(e) => db_error(&e),
    }
}
