//! `/v1/workflows`: workflows on a registered API spec (reference §2.4.2).

use aegis_seal_crds::{Resources, WorkflowStep};
use bytes::Bytes;
use http::{Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Ctx, already_deleted, bad_request, db_error, declarative_conflict, invalid, not_found, now,
    parse_body, parse_value, swap, tenant_phrase,
};
use crate::application::registry::{self, Base};
use crate::infrastructure::persistence::{
    AuditEvent, CatalogTable, REST_SOURCE, SpecRow, WorkflowRow,
};
use crate::presentation::http::{Body, error, json_response};

/// `POST /v1/workflows` and `PUT /v1/workflows/{id}`. Unknown fields are ignored.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RegisterWorkflowRequest {
    /// The tool name agents call; unique per tenant among workflows and CLI tools.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the invocation arguments (`"type": "object"`).
    #[serde(default = "object_schema")]
    #[schemars(with = "serde_json::Map<String, Value>")]
    pub input_schema: Value,
    /// The id of a registered API spec visible to the workflow's tenant.
    pub api_spec_id: String,
    /// `on_error` also takes the upstream forms `AbortWorkflow`, `Continue`, `{"RetryN": n}` and
    /// its gRPC spelling `"RetryN(n)"`.
    pub steps: Vec<WorkflowStep>,
    /// Owner; defaults to the operator token's tenant. Only a platform operator may name another.
    #[serde(default)]
    pub tenant_id: Option<String>,
}

fn object_schema() -> Value {
    json!({"type": "object"})
}

fn what(id: &str) -> String {
    format!("workflow {id}")
}

fn view(w: &WorkflowRow) -> Value {
    json!({
        "id": w.id,
        "name": w.name,
        "tenant_id": w.tenant_id,
        "description": w.description,
        "input_schema": w.input_schema,
        "api_spec_id": w.api_spec_id,
        "steps": w.steps,
        "source": w.source,
    })
}

/// Rewrites the upstream `{"RetryN": n}` step policy (or its gRPC spelling `"RetryN(n)"`) into
/// `on_error: retry, retries: n`, and `RetryN` 0 (no attempt after the first, which upstream
/// allows) into `on_error: fail`.
fn normalize_steps(body: &mut Value) {
    let Some(steps) = body.get_mut("steps").and_then(Value::as_array_mut) else {
        return;
    };
    for step in steps.iter_mut().filter_map(Value::as_object_mut) {
        let retries = match step.get("on_error") {
            Some(Value::Object(policy)) => policy.get("RetryN").and_then(Value::as_u64),
            Some(Value::String(policy)) => grpc_retry_n(policy).map(u64::from),
            _ => None,
        };
        match retries {
            Some(0) => {
                step.insert("on_error".into(), json!("fail"));
            }
            Some(n) => {
                step.insert("on_error".into(), json!("retry"));
                step.insert("retries".into(), json!(n));
            }
            None => {}
        }
    }
}

/// `n` of `RetryN(<n>)`, a u8 in decimal digits; anything else is left for the step's own
/// parsing to refuse.
fn grpc_retry_n(text: &str) -> Option<u8> {
    let digits = text.strip_prefix("RetryN(")?.strip_suffix(')')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn parse(body: &[u8]) -> Result<RegisterWorkflowRequest, Response<Body>> {
    let mut value: Value = parse_body("workflow", body)?;
    normalize_steps(&mut value);
    parse_value("workflow", value)
}

pub(super) async fn list(ctx: &Ctx<'_>) -> Response<Body> {
    match ctx.state.db.list_workflows(None).await {
        Ok(rows) => json_response(
            StatusCode::OK,
            &Value::Array(
                rows.iter()
                    .filter(|w| ctx.can_read(w.tenant_id.as_deref()))
                    .map(view)
                    .collect(),
            ),
        ),
        Err(e) => db_error(&e),
    }
}

async fn load(ctx: &Ctx<'_>, id: &str) -> Result<WorkflowRow, Response<Body>> {
    match ctx.state.db.get_workflow(id).await {
        Ok(Some(w)) => {
            ctx.check_read(&what(id), w.tenant_id.as_deref())?;
            Ok(w)
        }
        Ok(None) => Err(not_found("workflow")),
        Err(e) => Err(db_error(&e)),
    }
}

pub(super) async fn get(ctx: &Ctx<'_>, id: &str) -> Response<Body> {
    match load(ctx, id).await {
        Ok(w) => json_response(StatusCode::OK, &view(&w)),
        Err(r) => r,
    }
}

/// The spec a workflow of `owner` runs against: it must exist and be the owner's or global.
async fn spec_for(
    ctx: &Ctx<'_>,
    api_spec_id: &str,
    owner: Option<&str>,
) -> Result<SpecRow, Response<Body>> {
    let missing = || bad_request("api_spec_id does not reference a registered ApiSpec");
    let spec = match ctx.state.db.get_spec(api_spec_id).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(missing()),
        Err(e) => return Err(db_error(&e)),
    };
    ctx.check_read(
        &format!("api spec {api_spec_id}"),
        spec.tenant_id.as_deref(),
    )?;
    match spec.tenant_id.as_deref() {
        None => Ok(spec),
        Some(t) if Some(t) == owner => Ok(spec),
        Some(t) => Err(bad_request(format!(
            "api_spec_id: api spec {api_spec_id} belongs to tenant \"{t}\"; a workflow of {} cannot use it",
            tenant_phrase(owner)
        ))),
    }
}

/// Builds the row and checks it by the compile rules.
fn compile_row(
    req: RegisterWorkflowRequest,
    id: String,
    owner: Option<String>,
    spec: &SpecRow,
) -> Result<WorkflowRow, Response<Body>> {
    let row = WorkflowRow {
        id,
        name: req.name.trim().to_owned(),
        tenant_id: owner,
        description: req.description,
        input_schema: req.input_schema,
        api_spec_id: Some(spec.id.clone()),
        steps: serde_json::to_value(&req.steps).unwrap_or_default(),
        source: REST_SOURCE.into(),
    };
    let resource = registry::workflow_resource(&row, spec).map_err(bad_request)?;
    let problems = registry::problems(&Resources {
        workflows: vec![resource],
        ..Resources::default()
    });
    if problems.is_empty() {
        Ok(row)
    } else {
        Err(invalid("workflow", problems))
    }
}

/// 409 when the tool name is taken in the owner's scope by anything but `except` (the row itself).
pub(super) async fn check_tool_name_free(
    ctx: &Ctx<'_>,
    owner: Option<&str>,
    name: &str,
    except: Option<&str>,
) -> Result<(), Response<Body>> {
    for (table, kind) in [
        (CatalogTable::Workflows, "workflow"),
        (CatalogTable::CliTools, "CLI tool"),
    ] {
        match ctx.state.db.name_holder(table, owner, name).await {
            Ok(Some(holder)) if Some(holder.id.as_str()) == except => {}
            Ok(Some(holder)) if holder.source != REST_SOURCE => {
                return Err(declarative_conflict(&format!("tool \"{name}\""), &holder));
            }
            Ok(Some(_)) => {
                return Err(error(
                    StatusCode::CONFLICT,
                    format!(
                        "a {kind} named \"{name}\" already exists in {}",
                        tenant_phrase(owner)
                    ),
                ));
            }
            Ok(None) => {}
            Err(e) => return Err(db_error(&e)),
        }
    }
    Ok(())
}

fn registered_event(ctx: &Ctx<'_>, row: &WorkflowRow, step_count: usize, op: &str) -> AuditEvent {
    AuditEvent::from_json(
        "WorkflowRegistered",
        json!({
            "workflow_id": row.id,
            "name": row.name,
            "step_count": step_count,
            "tenant_id": row.tenant_id,
            "operation": op,
            "registered_by": ctx.registered_by(),
            "registered_at": now(),
        }),
    )
}

async fn store(ctx: &Ctx<'_>, base: &Base, row: &WorkflowRow) -> Result<(), Response<Body>> {
    ctx.state
        .db
        .save_workflow(row)
        .await
        .map_err(|e| db_error(&e))?;
    swap(ctx.state, base).await
}

pub(super) async fn create(ctx: &Ctx<'_>, body: Bytes) -> Response<Body> {
    let req = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let owner = match ctx.owner_for_create(req.tenant_id.as_deref()) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let step_count = req.steps.len();
    let row = {
        // The spec is read under the lock that its deletion and update take too: read before
        // it, a spec deleted (or changed) meanwhile left a workflow answered 201 and never served.
        let base = ctx.state.registry.lock().await;
        let spec = match spec_for(ctx, &req.api_spec_id, owner.as_deref()).await {
            Ok(s) => s,
            Err(r) => return r,
        };
        if let Err(r) = ctx.check_quota(owner.as_deref()).await {
            return r;
        }
        let row = match compile_row(req, uuid::Uuid::new_v4().to_string(), owner, &spec) {
            Ok(r) => r,
            Err(r) => return r,
        };
        if let Err(r) = check_tool_name_free(ctx, row.tenant_id.as_deref(), &row.name, None).await {
            return r;
        }
        if let Err(r) = store(ctx, &base, &row).await {
            return r;
        }
        row
    };
    if let Err(r) = ctx
        .audit(registered_event(ctx, &row, step_count, "create"))
        .await
    {
        return r;
    }
    tracing::info!(workflow_id = %row.id, name = %row.name, "workflow registered");
    json_response(
        StatusCode::CREATED,
        &json!({"id": row.id, "workflow": view(&row)}),
    )
}

pub(super) async fn update(ctx: &Ctx<'_>, id: &str, body: Bytes) -> Response<Body> {
    let req = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let base = ctx.state.registry.lock().await;
    let current = match load(ctx, id).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if let Err(r) =
        ctx.check_rest_write(&what(id), id, current.tenant_id.as_deref(), &current.source)
    {
        return r;
    }
    // An update never moves an object to another tenant (upstream reset it to global).
    if let Some(t) = req.tenant_id.as_deref().filter(|t| !t.trim().is_empty())
        && Some(t) != current.tenant_id.as_deref()
    {
        return bad_request("tenant_id: an object's tenant cannot change; delete and re-create it");
    }
    let owner = current.tenant_id.clone();
    let spec = match spec_for(ctx, &req.api_spec_id, owner.as_deref()).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let step_count = req.steps.len();
    let row = match compile_row(req, current.id.clone(), owner, &spec) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(r) = check_tool_name_free(ctx, row.tenant_id.as_deref(), &row.name, Some(id)).await {
        return r;
    }
    if let Err(r) = store(ctx, &base, &row).await {
        return r;
    }
    drop(base);
    if let Err(r) = ctx
        .audit(registered_event(ctx, &row, step_count, "update"))
        .await
    {
        return r;
    }
    json_response(
        StatusCode::OK,
        &json!({"updated": true, "workflow": view(&row)}),
    )
}

pub(super) async fn delete(ctx: &Ctx<'_>, id: &str) -> Response<Body> {
    let base = ctx.state.registry.lock().await;
    let current = match load(ctx, id).await {
        Ok(w) => w,
        Err(r) => return already_deleted(r),
    };
    if let Err(r) =
        ctx.check_rest_write(&what(id), id, current.tenant_id.as_deref(), &current.source)
    {
        return r;
    }
    if let Err(e) = ctx
        .state
        .db
        .delete_rest_row(CatalogTable::Workflows, id)
        .await
    {
        return db_error(&e);
    }
    if let Err(r) = swap(ctx.state, &base).await {
        return r;
    }
    drop(base);
    ctx.deleted(
        CatalogTable::Workflows,
        &current.id,
        &current.name,
        current.tenant_id.as_deref(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_retry_policies_become_on_error_and_retries() {
        let mut body = json!({"steps": [
            {"name": "a", "on_error": {"RetryN": 3}},
            {"name": "b", "on_error": {"RetryN": 0}},
            {"name": "c", "on_error": "AbortWorkflow"},
            {"name": "d", "on_error": {"RetryN": 11}},
        ]});
        normalize_steps(&mut body);
        assert_eq!(
            body["steps"],
            json!([
                {"name": "a", "on_error": "retry", "retries": 3},
                {"name": "b", "on_error": "fail"},
                {"name": "c", "on_error": "AbortWorkflow"},
                // Left for validation to refuse: more than ten is not retried here.
                {"name": "d", "on_error": "retry", "retries": 11},
            ])
        );
    }

    /// The steps of a registration whose one step has `on_error` and `extra` fields.
    fn steps_with(on_error: Value, extra: Value) -> Result<Vec<WorkflowStep>, u16> {
        let mut step = json!({"name": "a", "operation_id": "op", "on_error": on_error});
        step.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let body = json!({"name": "w", "api_spec_id": "spec-1", "steps": [step]});
        parse(body.to_string().as_bytes())
            .map(|request| request.steps)
            .map_err(|response| response.status().as_u16())
    }

    /// Reference §2.8 and §5.2 (gRPC `CreateWorkflow`: `RetryN(<u8>)`) and checklist #32: the
    /// string form is read exactly as the REST object form is, `RetryN(0)` as `fail` included.
    #[test]
    fn upstream_grpc_retry_n_strings_are_read_as_the_object_form() {
        use aegis_seal_crds::OnError;
        let policy = |on_error: Value| {
            let steps = steps_with(on_error, json!({})).unwrap();
            (steps[0].on_error, steps[0].retries)
        };
        assert_eq!(policy(json!("RetryN(3)")), (OnError::Retry, Some(3)));
        assert_eq!(policy(json!("RetryN(0)")), (OnError::Fail, None));
        for n in [0, 1, 3, 10, 11, 255] {
            for extra in [
                json!({}),
                json!({"retries": 2}),
                json!({"timeout_seconds": 5}),
            ] {
                assert_eq!(
                    steps_with(json!(format!("RetryN({n})")), extra.clone()),
                    steps_with(json!({ "RetryN": n }), extra.clone()),
                    "RetryN({n}) with {extra}"
                );
            }
        }
        // Not a u8, or not that spelling: refused.
        for bad in [
            "RetryN(256)",
            "RetryN()",
            "RetryN(-1)",
            "RetryN 3",
            "RetryN(3)x",
        ] {
            assert_eq!(steps_with(json!(bad), json!({})), Err(400), "{bad}");
        }
    }
}
