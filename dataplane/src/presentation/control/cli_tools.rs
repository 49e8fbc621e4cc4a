//! `/v1/cli-tools`: allowlisted commands in ephemeral containers (reference §2.4.3).

use aegis_seal_crds::{ContainerResources, CredentialResolutionPath, Resources};
use bytes::Bytes;
use http::{Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::named::{self, NamedKind};
use super::workflows::check_tool_name_free;
use super::{Ctx, bad_request, db_error, invalid, now, parse_body, swap};
use crate::application::registry;
use crate::infrastructure::persistence::{
    AuditEvent, CatalogTable, CliToolRow, Database, PersistenceError, REST_SOURCE,
};
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

/// CLI tools are addressed by name (`/v1/cli-tools/{name}`).
pub(super) struct CliTools;

impl NamedKind for CliTools {
    type Row = CliToolRow;
    const KIND: &'static str = "CLI tool";
    const TABLE: CatalogTable = CatalogTable::CliTools;

    fn id(row: &CliToolRow) -> &str {
        &row.id
    }
    fn name(row: &CliToolRow) -> &str {
        &row.name
    }
    fn tenant_id(row: &CliToolRow) -> Option<&str> {
        row.tenant_id.as_deref()
    }
    fn source(row: &CliToolRow) -> &str {
        &row.source
    }
    fn view(row: &CliToolRow) -> Value {
        view(row)
    }
    async fn all(db: &Database) -> Result<Vec<CliToolRow>, PersistenceError> {
        db.list_cli_tools(None).await
    }
    async fn named(db: &Database, name: &str) -> Result<Vec<CliToolRow>, PersistenceError> {
        db.cli_tools_named(name).await
    }
}

/// POST (`path_name` = None) creates or replaces in the owner's scope; PUT replaces an existing tool.
pub(super) async fn upsert(ctx: &Ctx<'_>, path_name: Option<&str>, body: Bytes) -> Response<Body> {
    let mut req: RegisterCliToolRequest = match parse_body("CLI tool", &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    req.name = match named::upsert_name::<CliTools>(&req.name, path_name) {
        Ok(name) => name,
        Err(r) => return r,
    };
    let base = ctx.state.registry.lock().await;
    let (existing, owner) =
        match named::upsert_target::<CliTools>(ctx, path_name, &req.name, req.tenant_id.as_deref())
            .await
        {
            Ok(target) => target,
            Err(r) => return r,
        };
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
