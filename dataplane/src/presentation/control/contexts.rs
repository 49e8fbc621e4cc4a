//! `/v1/security-contexts`: which tools a session may call, and how (reference §5.4).

use aegis_seal_crds::{Capability, Resources};
use bytes::Bytes;
use http::{Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Ctx, bad_request, db_error, invalid, now, parse_body, require_rest, swap};
use crate::application::registry;
use crate::infrastructure::persistence::{
    AuditEvent, CatalogTable, REST_SOURCE, SecurityContextRow,
};
use crate::presentation::http::{Body, json_response};

/// `POST /v1/security-contexts` (create or replace by name in the owner's scope) and
/// `PUT /v1/security-contexts/{name}`. Unknown fields are ignored.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct UpsertSecurityContextRequest {
    /// The name sessions refer to (`^[a-z][a-z0-9-]*$`), unique per tenant. In a PUT it may be
    /// omitted and must otherwise equal the path's.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Evaluated in order; the first capability whose pattern matches decides.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Tool patterns always refused.
    #[serde(default)]
    pub deny_list: Vec<String>,
    /// Owner; defaults to the operator token's tenant. Only a platform operator may name another.
    #[serde(default)]
    pub tenant_id: Option<String>,
}

fn what(name: &str) -> String {
    format!("security context \"{name}\"")
}

fn view(c: &SecurityContextRow) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "tenant_id": c.tenant_id,
        "description": c.description,
        "capabilities": c.capabilities,
        "deny_list": c.deny_list,
        "source": c.source,
    })
}

pub(super) async fn list(ctx: &Ctx<'_>) -> Response<Body> {
    match ctx.state.db.list_security_contexts(None).await {
        Ok(rows) => json_response(
            StatusCode::OK,
            &Value::Array(
                rows.iter()
                    .filter(|c| ctx.can_read(c.tenant_id.as_deref()))
                    .map(view)
                    .collect(),
            ),
        ),
        Err(e) => db_error(&e),
    }
}

async fn load(ctx: &Ctx<'_>, name: &str) -> Result<SecurityContextRow, Response<Body>> {
    let rows = ctx
        .state
        .db
        .security_contexts_named(name)
        .await
        .map_err(|e| db_error(&e))?;
    ctx.pick_named(&what(name), &rows, |c| c.tenant_id.as_deref())
        .cloned()
}

pub(super) async fn get(ctx: &Ctx<'_>, name: &str) -> Response<Body> {
    match load(ctx, name).await {
        Ok(c) => json_response(StatusCode::OK, &view(&c)),
        Err(r) => r,
    }
}

/// POST (`path_name` = None) creates or replaces in the owner's scope; PUT replaces an existing one.
pub(super) async fn upsert(ctx: &Ctx<'_>, path_name: Option<&str>, body: Bytes) -> Response<Body> {
    let mut req: UpsertSecurityContextRequest = match parse_body("security context", &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    req.name = req.name.trim().to_owned();
    if let Some(path_name) = path_name {
        if req.name.is_empty() {
            req.name = path_name.to_owned();
        } else if req.name != path_name {
            return bad_request(
                "name: a security context cannot be renamed; register the new name instead",
            );
        }
    }
    let base = ctx.state.registry.lock().await;
    let (existing, owner) = match path_name {
        Some(name) => {
            let current = match load(ctx, name).await {
                Ok(c) => c,
                Err(r) => return r,
            };
            if let Err(r) = ctx.check_write(&what(name), current.tenant_id.as_deref()) {
                return r;
            }
            if let Some(t) = req.tenant_id.as_deref().filter(|t| !t.trim().is_empty())
                && Some(t) != current.tenant_id.as_deref()
            {
                return bad_request(
                    "tenant_id: an object's tenant cannot change; delete and re-create it",
                );
            }
            let owner = current.tenant_id.clone();
            (Some(current), owner)
        }
        None => {
            let owner = match ctx.owner_for_create(req.tenant_id.as_deref()) {
                Ok(o) => o,
                Err(r) => return r,
            };
            let rows = match ctx.state.db.security_contexts_named(&req.name).await {
                Ok(r) => r,
                Err(e) => return db_error(&e),
            };
            let current = rows.into_iter().find(|c| c.tenant_id == owner);
            (current, owner)
        }
    };
    if let Some(current) = &existing
        && let Err(r) = require_rest(
            &what(&current.name),
            &current.id,
            current.tenant_id.as_deref(),
            &current.source,
        )
    {
        return r;
    }
    let row = SecurityContextRow {
        id: existing
            .as_ref()
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), |c| c.id.clone()),
        name: req.name.clone(),
        tenant_id: owner,
        description: req.description,
        capabilities: serde_json::to_value(&req.capabilities).unwrap_or_default(),
        deny_list: json!(req.deny_list),
        source: REST_SOURCE.into(),
    };
    let resource = match registry::context_resource(&row) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let problems = registry::problems(&Resources {
        security_contexts: vec![resource],
        ..Resources::default()
    });
    if !problems.is_empty() {
        return invalid("security context", problems);
    }
    if let Err(e) = ctx.state.db.save_security_context(&row).await {
        return db_error(&e);
    }
    if let Err(r) = swap(ctx.state, &base).await {
        return r;
    }
    drop(base);
    let event = AuditEvent::from_json(
        "SecurityContextRegistered",
        json!({
            "name": row.name,
            "tenant_id": row.tenant_id,
            "capability_count": req.capabilities.len(),
            "operation": if existing.is_some() { "update" } else { "create" },
            "registered_by": ctx.registered_by(),
            "registered_at": now(),
        }),
    );
    if let Err(r) = ctx.audit(event).await {
        return r;
    }
    tracing::info!(name = %row.name, "security context registered");
    let status = if existing.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    json_response(
        status,
        &json!({"saved": true, "security_context": view(&row)}),
    )
}

pub(super) async fn delete(ctx: &Ctx<'_>, name: &str) -> Response<Body> {
    let base = ctx.state.registry.lock().await;
    let current = match load(ctx, name).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = ctx.check_write(&what(name), current.tenant_id.as_deref()) {
        return r;
    }
    if let Err(r) = require_rest(
        &what(name),
        &current.id,
        current.tenant_id.as_deref(),
        &current.source,
    ) {
        return r;
    }
    if let Err(e) = ctx
        .state
        .db
        .delete_rest_row(CatalogTable::SecurityContexts, &current.id)
        .await
    {
        return db_error(&e);
    }
    if let Err(r) = swap(ctx.state, &base).await {
        return r;
    }
    drop(base);
    ctx.deleted(
        "SecurityContextDeleted",
        &current.id,
        &current.name,
        current.tenant_id.as_deref(),
    )
    .await
}
