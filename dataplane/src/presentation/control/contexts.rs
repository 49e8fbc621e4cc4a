//! `/v1/security-contexts`: which tools a session may call, and how (reference §5.4).

use aegis_seal_crds::{Capability, Resources};
use bytes::Bytes;
use http::{Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::named::{self, NamedKind};
use super::{Ctx, UNSTORED_SOURCE, bad_request, db_error, invalid, now, parse_body, swap};
use crate::application::catalog::is_default_context;
use crate::application::registry;
use crate::gateway::GatewayState;
use crate::infrastructure::persistence::{
    AuditEvent, CatalogTable, Database, PersistenceError, REST_SOURCE, SecurityContextRow, row_id,
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

/// Security contexts are addressed by name (`/v1/security-contexts/{name}`).
pub(super) struct SecurityContexts;

impl NamedKind for SecurityContexts {
    type Row = SecurityContextRow;
    const KIND: &'static str = "security context";
    const TABLE: CatalogTable = CatalogTable::SecurityContexts;

    fn id(row: &SecurityContextRow) -> &str {
        &row.id
    }
    fn name(row: &SecurityContextRow) -> &str {
        &row.name
    }
    fn tenant_id(row: &SecurityContextRow) -> Option<&str> {
        row.tenant_id.as_deref()
    }
    fn source(row: &SecurityContextRow) -> &str {
        &row.source
    }
    fn view(row: &SecurityContextRow) -> Value {
        view(row)
    }
    async fn all(db: &Database) -> Result<Vec<SecurityContextRow>, PersistenceError> {
        db.list_security_contexts(None).await
    }
    async fn named(db: &Database, name: &str) -> Result<Vec<SecurityContextRow>, PersistenceError> {
        db.security_contexts_named(name).await
    }
    fn unstored(state: &GatewayState) -> Vec<SecurityContextRow> {
        let served = state.served.load();
        served
            .snapshot
            .security_contexts
            .iter()
            .filter(|c| is_default_context(c))
            .map(|c| SecurityContextRow {
                id: row_id(&c.source),
                name: c.name.clone(),
                tenant_id: None,
                description: c.description.clone(),
                capabilities: serde_json::to_value(&c.capabilities).unwrap_or_default(),
                deny_list: json!(c.deny_list),
                source: UNSTORED_SOURCE.into(),
            })
            .collect()
    }
}

/// POST (`path_name` = None) creates or replaces in the owner's scope; PUT replaces an existing one.
pub(super) async fn upsert(ctx: &Ctx<'_>, path_name: Option<&str>, body: Bytes) -> Response<Body> {
    let mut req: UpsertSecurityContextRequest = match parse_body("security context", &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    req.name = match named::upsert_name::<SecurityContexts>(&req.name, path_name) {
        Ok(name) => name,
        Err(r) => return r,
    };
    let base = ctx.state.registry.lock().await;
    let (existing, owner) = match named::upsert_target::<SecurityContexts>(
        ctx,
        path_name,
        &req.name,
        req.tenant_id.as_deref(),
    )
    .await
    {
        Ok(target) => target,
        Err(r) => return r,
    };
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
