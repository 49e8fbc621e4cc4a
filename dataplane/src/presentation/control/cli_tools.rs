//! `/v1/cli-tools`: allowlisted commands in ephemeral containers (reference §2.4.3).

use aegis_seal_crds::{ContainerResources, CredentialResolutionPath, Resources};
use bytes::Bytes;
use http::{Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::workflows::check_tool_name_free;
use super::{Ctx, bad_request, db_error, invalid, now, parse_body, require_rest, swap};
use crate::application::registry;
use crate::infrastructure::persistence::{AuditEvent, CatalogTable, CliToolRow, REST_SOURCE};
use crate::presentation::http::{Body, json_response};

/// `POST /v1/cli-tools` (create or replace by name in the owner's scope) and
/// `PUT /v1/cli-tools/{name}`. Unknown fields are ignored.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RegisterCliToolRequest {
    /// The tool name agents call; unique per tenant among workflows and CLI tools. In a PUT it may
    /// be omitted and must otherwise equal the path's.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Image reference passed to the container CLI as is.
    pub docker_image: String,
    /// The only subcommands an agent may run (at least one).
    pub allowed_subcommands: Vec<String>,
    #[serde(default)]
    pub require_semantic_judge: bool,
    /// Run time limit, 1-300 s (default 60).
    #[serde(default = "default_timeout")]
    pub default_timeout_seconds: u32,
    #[serde(default)]
    pub resources: Option<ContainerResources>,
    #[serde(default)]
    pub registry_credential_path: Option<CredentialResolutionPath>,
    /// Owner; defaults to the operator token's tenant. Only a platform operator may name another.
    #[serde(default)]
    pub tenant_id: Option<String>,
}

fn default_timeout() -> u32 {
    aegis_seal_crds::cli_tool::DEFAULT_CLI_TIMEOUT_SECONDS
}

fn what(name: &str) -> String {
    format!("CLI tool \"{name}\"")
}

fn view(t: &CliToolRow) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "tenant_id": t.tenant_id,
        "description": t.description,
        "docker_image": t.docker_image,
        "allowed_subcommands": t.allowed_subcommands,
        "require_semantic_judge": t.require_semantic_judge,
        "default_timeout_seconds": t.default_timeout_seconds,
        "resources": t.resources,
        "registry_credential_path": t.registry_credential_path,
        "source": t.source,
    })
}

pub(super) async fn list(ctx: &Ctx<'_>) -> Response<Body> {
    match ctx.state.db.list_cli_tools(None).await {
        Ok(rows) => json_response(
            StatusCode::OK,
            &Value::Array(
                rows.iter()
                    .filter(|t| ctx.can_read(t.tenant_id.as_deref()))
                    .map(view)
                    .collect(),
            ),
        ),
        Err(e) => db_error(&e),
    }
}

async fn load(ctx: &Ctx<'_>, name: &str) -> Result<CliToolRow, Response<Body>> {
    let rows = ctx
        .state
        .db
        .cli_tools_named(name)
        .await
        .map_err(|e| db_error(&e))?;
    ctx.pick_named(&what(name), &rows, |t| t.tenant_id.as_deref())
        .cloned()
}

pub(super) async fn get(ctx: &Ctx<'_>, name: &str) -> Response<Body> {
    match load(ctx, name).await {
        Ok(t) => json_response(StatusCode::OK, &view(&t)),
        Err(r) => r,
    }
}

/// POST (`path_name` = None) creates or replaces in the owner's scope; PUT replaces an existing tool.
pub(super) async fn upsert(ctx: &Ctx<'_>, path_name: Option<&str>, body: Bytes) -> Response<Body> {
    let mut req: RegisterCliToolRequest = match parse_body("CLI tool", &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    req.name = req.name.trim().to_owned();
    if let Some(path_name) = path_name {
        if req.name.is_empty() {
            req.name = path_name.to_owned();
        } else if req.name != path_name {
            return bad_request(
                "name: a CLI tool cannot be renamed; register the new name instead",
            );
        }
    }
    let base = ctx.state.registry.lock().await;
    let (existing, owner) = match path_name {
        Some(name) => {
            let current = match load(ctx, name).await {
                Ok(t) => t,
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
            let rows = match ctx.state.db.cli_tools_named(&req.name).await {
                Ok(r) => r,
                Err(e) => return db_error(&e),
            };
            let current = rows.into_iter().find(|t| t.tenant_id == owner);
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
    let id = existing
        .as_ref()
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), |t| t.id.clone());
    if let Err(r) = check_tool_name_free(ctx, owner.as_deref(), &req.name, Some(&id)).await {
        return r;
    }
    let row = CliToolRow {
        id,
        name: req.name.clone(),
        tenant_id: owner,
        description: req.description,
        docker_image: req.docker_image,
        allowed_subcommands: json!(req.allowed_subcommands),
        require_semantic_judge: req.require_semantic_judge,
        default_timeout_seconds: i64::from(req.default_timeout_seconds),
        resources: serde_json::to_value(req.resources.unwrap_or_default()).unwrap_or_default(),
        registry_credential_path: req
            .registry_credential_path
            .as_ref()
            .and_then(|p| serde_json::to_value(p).ok()),
        source: REST_SOURCE.into(),
    };
    let resource = match registry::cli_tool_resource(&row) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let problems = registry::problems(&Resources {
        cli_tools: vec![resource],
        ..Resources::default()
    });
    if !problems.is_empty() {
        return invalid("CLI tool", problems);
    }
    if let Err(e) = ctx.state.db.save_cli_tool(&row).await {
        return db_error(&e);
    }
    if let Err(r) = swap(ctx.state, &base).await {
        return r;
    }
    drop(base);
    let event = AuditEvent::from_json(
        "CliToolRegistered",
        json!({
            "name": row.name,
            "docker_image": row.docker_image,
            "tenant_id": row.tenant_id,
            "operation": if existing.is_some() { "update" } else { "create" },
            "registered_by": ctx.registered_by(),
            "registered_at": now(),
        }),
    );
    if let Err(r) = ctx.audit(event).await {
        return r;
    }
    tracing::info!(name = %row.name, "CLI tool registered");
    let status = if existing.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    json_response(status, &json!({"saved": true, "cli_tool": view(&row)}))
}

pub(super) async fn delete(ctx: &Ctx<'_>, name: &str) -> Response<Body> {
    let base = ctx.state.registry.lock().await;
    let current = match load(ctx, name).await {
        Ok(t) => t,
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
        .delete_rest_row(CatalogTable::CliTools, &current.id)
        .await
    {
        return db_error(&e);
    }
    if let Err(r) = swap(ctx.state, &base).await {
        return r;
    }
    drop(base);
    ctx.deleted(
        "CliToolDeleted",
        &current.id,
        &current.name,
        current.tenant_id.as_deref(),
    )
    .await
}
