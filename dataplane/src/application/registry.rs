//! Objects registered over the REST API, served beside the snapshot from manifests or custom
//! resources.
//!
//! REST objects live in the catalog tables with `source = 'rest'`. They are turned back into the
//! custom resources they correspond to and compiled by the same `crds::compile` as manifests, so a
//! REST body obeys exactly the rules a `kubectl apply` does. What the gateway serves is the
//! declarative snapshot plus the REST snapshot; a REST object never displaces a declarative one
//! (a REST write to such a name is refused with 409 before it is stored).
//!
//! Every change of either part (a hot reload, a REST write) goes through [`Registry::lock`], so the
//! two never interleave, and ends with one atomic swap of the served snapshot.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use aegis_seal_crds::{
    ApiSpecSource, CliTool, CliToolSpec, ContainerResources, CredentialResolutionPath,
    OpenApiSource, Resources, SecurityContext, SecurityContextSpec, Snapshot, Workflow,
    WorkflowSpec, WorkflowStep, compile,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::application::catalog::{Entries, ServedSnapshot, add_default_contexts};
use crate::gateway::{GatewayState, ReloadError, off_the_runtime};
use crate::infrastructure::persistence::{
    CliToolRow, Database, PersistenceError, REST_SOURCE, SecurityContextRow, SpecRow, WorkflowRow,
};

/// The declarative part of what is served (default contexts included), and the lock that orders
/// every change of the served snapshot.
pub struct Registry {
    base: tokio::sync::Mutex<Base>,
    /// The `catalog_revision` the served REST objects reflect.
    seen_revision: AtomicI64,
}

/// How often a replica looks for REST writes made through another replica.
pub const REST_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The declarative snapshot last loaded, as the registry lock guards it.
pub struct Base {
    snapshot: Entries,
    hash: String,
}

impl Base {
    pub fn snapshot(&self) -> &Entries {
        &self.snapshot
    }

    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// `hash` is `snapshot.hash()`, which the caller has already computed.
    /// Returns the entries it replaced.
    pub fn replace(&mut self, snapshot: Entries, hash: String) -> Entries {
        self.hash = hash;
        std::mem::replace(&mut self.snapshot, snapshot)
    }
}

impl Registry {
    /// `base` must already carry the default contexts; `revision` is the `catalog_revision` the
    /// REST objects were read at.
    pub fn new(base: Entries, revision: i64) -> Self {
        Self {
            base: tokio::sync::Mutex::new(Base {
                hash: base.hash(),
                snapshot: base,
            }),
            seen_revision: AtomicI64::new(revision),
        }
    }

    fn saw(&self, revision: i64) {
        self.seen_revision.fetch_max(revision, Ordering::SeqCst);
    }

    /// Held across a REST write (checks, database write, swap) or a hot reload.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, Base> {
        self.base.lock().await
    }
}

/// Why a REST object could not be turned into a resource: its stored JSON is not what it should be.
fn corrupt(kind: &str, id: &str, column: &str, e: impl std::fmt::Display) -> String {
    format!("{kind} {id}: stored {column} is invalid: {e}")
}

/// The metadata of a REST object's resource: its row id stands for the resource name, so every
/// compile problem and `workflow_id` names the row the runbook's queries find.
fn meta(id: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(id.to_owned()),
        ..ObjectMeta::default()
    }
}

/// The Workflow resource a REST workflow stands for, its OpenAPI document taken from its spec.
pub fn workflow_resource(wf: &WorkflowRow, spec: &SpecRow) -> Result<Workflow, String> {
    let steps: Vec<WorkflowStep> = serde_json::from_value(wf.steps.clone())
        .map_err(|e| corrupt("workflow", &wf.id, "steps", e))?;
    let credential_path = spec_credential(spec)?;
    Ok(Workflow {
        metadata: meta(&wf.id),
        spec: WorkflowSpec {
            tool_name: Some(wf.name.clone()),
            tenant_id: wf.tenant_id.clone(),
            description: wf.description.clone(),
            input_schema: wf.input_schema.clone(),
            api_spec: ApiSpecSource {
                base_url: spec.base_url.clone(),
                openapi: OpenApiSource {
                    inline: Some(spec.raw_spec.clone()),
                    ..OpenApiSource::default()
                },
                credential_path,
            },
            steps,
        },
        status: None,
    })
}

pub fn spec_credential(spec: &SpecRow) -> Result<Option<CredentialResolutionPath>, String> {
    spec.credential_path
        .clone()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| corrupt("api spec", &spec.id, "credential_path", e))
}

pub fn cli_tool_resource(t: &CliToolRow) -> Result<CliTool, String> {
    let allowed_subcommands = serde_json::from_value(t.allowed_subcommands.clone())
        .map_err(|e| corrupt("cli tool", &t.id, "allowed_subcommands", e))?;
    let resources: ContainerResources = serde_json::from_value(t.resources.clone())
        .map_err(|e| corrupt("cli tool", &t.id, "resources", e))?;
    let registry_credential_path = t
        .registry_credential_path
        .clone()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| corrupt("cli tool", &t.id, "registry_credential_path", e))?;
    Ok(CliTool {
        metadata: meta(&t.id),
        spec: CliToolSpec {
            tool_name: Some(t.name.clone()),
            tenant_id: t.tenant_id.clone(),
            description: t.description.clone(),
            docker_image: t.docker_image.clone(),
            allowed_subcommands,
            require_semantic_judge: t.require_semantic_judge,
            default_timeout_seconds: u32::try_from(t.default_timeout_seconds).unwrap_or(u32::MAX),
            resources: Some(resources),
            registry_credential_path,
        },
        status: None,
    })
}

pub fn context_resource(c: &SecurityContextRow) -> Result<SecurityContext, String> {
    let capabilities = serde_json::from_value(c.capabilities.clone())
        .map_err(|e| corrupt("security context", &c.id, "capabilities", e))?;
    let deny_list = serde_json::from_value(c.deny_list.clone())
        .map_err(|e| corrupt("security context", &c.id, "deny_list", e))?;
    Ok(SecurityContext {
        metadata: meta(&c.id),
        spec: SecurityContextSpec {
            context_name: Some(c.name.clone()),
            tenant_id: c.tenant_id.clone(),
            description: c.description.clone(),
            capabilities,
            deny_list,
        },
        status: None,
    })
}

/// Compiles the resources of one REST request by the rules of `crds::compile` and returns their
/// problems as REST clients see them, fields relative to the request body; empty when accepted.
pub fn problems(resources: &Resources) -> Vec<String> {
    compile(resources)
        .results
        .iter()
        .flat_map(|r| r.problems.iter())
        .map(|p| {
            let field = p.field.strip_prefix("spec.").unwrap_or(&p.field);
            let field = match field {
                "tool_name" | "context_name" => "name",
                "api_spec.base_url" => "base_url",
                "api_spec.credential_path" => "credential_path",
                "api_spec.openapi.inline" => "inline_json",
                other => other,
            };
            format!("{field}: {}", p.message)
        })
        .collect()
}

/// Every REST object of the database, compiled. An object that no longer compiles (its spec was
/// changed underneath it by hand) is left out and logged, never served half-valid.
pub async fn rest_snapshot(db: &Database) -> Result<Snapshot, PersistenceError> {
    let specs: HashMap<String, SpecRow> = db
        .list_specs(Some(REST_SOURCE))
        .await?
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    let mut resources = Resources::default();
    let mut unusable = Vec::new();
    for wf in db.list_workflows(Some(REST_SOURCE)).await? {
        let spec = wf.api_spec_id.as_deref().and_then(|id| specs.get(id));
        match spec.ok_or_else(|| format!("workflow {}: its api spec is gone", wf.id)) {
            Ok(spec) => match workflow_resource(&wf, spec) {
                Ok(r) => resources.workflows.push(r),
                Err(e) => unusable.push(e),
            },
            Err(e) => unusable.push(e),
        }
    }
    for t in db.list_cli_tools(Some(REST_SOURCE)).await? {
        match cli_tool_resource(&t) {
            Ok(r) => resources.cli_tools.push(r),
            Err(e) => unusable.push(e),
        }
    }
    for c in db.list_security_contexts(Some(REST_SOURCE)).await? {
        match context_resource(&c) {
            Ok(r) => resources.security_contexts.push(r),
            Err(e) => unusable.push(e),
        }
    }
    let compiled = compile(&resources);
    for reason in unusable {
        tracing::warn!("REST object not served: {reason}");
    }
    for rejected in compiled.rejected() {
        tracing::warn!(
            resource = %rejected.resource,
            "REST object not served: {}",
            rejected.message()
        );
    }
    Ok(compiled.snapshot)
}

/// The declarative snapshot plus the REST objects whose names it does not define, and the default
/// contexts when neither has a system-global one. Tools (workflows and CLI tools) share one name
/// space per tenant, contexts another.
pub fn merge(base: &Entries, rest: Snapshot) -> Entries {
    let tools: HashSet<(Option<&str>, &str)> = base
        .workflows
        .iter()
        .map(|w| (w.tenant_id.as_deref(), w.tool_name.as_str()))
        .chain(
            base.cli_tools
                .iter()
                .map(|t| (t.tenant_id.as_deref(), t.tool_name.as_str())),
        )
        .collect();
    let contexts: HashSet<(Option<&str>, &str)> = base
        .security_contexts
        .iter()
        .map(|c| (c.tenant_id.as_deref(), c.name.as_str()))
        .collect();
    // Clones the `Arc`s only: the base's entries are shared, not copied.
    let mut merged = base.clone();
    let rest = Entries::from(rest);
    merged.workflows.extend(
        rest.workflows
            .into_iter()
            .filter(|w| !tools.contains(&(w.tenant_id.as_deref(), w.tool_name.as_str()))),
    );
    merged.cli_tools.extend(
        rest.cli_tools
            .into_iter()
            .filter(|t| !tools.contains(&(t.tenant_id.as_deref(), t.tool_name.as_str()))),
    );
    merged.security_contexts.extend(
        rest.security_contexts
            .into_iter()
            .filter(|c| !contexts.contains(&(c.tenant_id.as_deref(), c.name.as_str()))),
    );
    add_default_contexts(&mut merged);
    merged
}

/// The served snapshot for `base` and the REST objects in the database.
pub async fn served_for(db: &Database, base: &Entries) -> Result<ServedSnapshot, ReloadError> {
    let rest = rest_snapshot(db)
        .await
        .map_err(|e| ReloadError::Database(format!("cannot read the REST objects: {e}")))?;
    let merged = merge(base, rest);
    off_the_runtime(move || ServedSnapshot::new(merged))
        .await
        .map_err(|e| ReloadError::Invalid(format!("compiling the snapshot failed: {e}")))?
        .map_err(ReloadError::Invalid)
}

/// After a REST write, under the registry lock: serves the REST objects as they now are. The
/// write moved `catalog_revision` itself (a trigger, in its own transaction), which is what tells
/// the other replicas; the revision is read before the objects, so none written by then is missed.
pub async fn written(state: &GatewayState, base: &Base) -> Result<(), String> {
    let revision = state
        .db
        .catalog_revision()
        .await
        .map_err(|e| format!("cannot read catalog_revision: {e}"))?;
    refresh(state, base).await?;
    state.registry.saw(revision);
    Ok(())
}

/// Serves REST writes made through other replicas: polls `catalog_revision` every
/// [`REST_POLL_INTERVAL`] and re-reads the REST objects when it moved. Runs until aborted.
pub async fn follow_rest_writes(state: Arc<GatewayState>) {
    let mut tick = tokio::time::interval(REST_POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let revision = match state.db.catalog_revision().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read catalog_revision; REST writes of other replicas are not picked up");
                continue;
            }
        };
        if revision <= state.registry.seen_revision.load(Ordering::SeqCst) {
            continue;
        }
        let base = state.registry.lock().await;
        match refresh(&state, &base).await {
            Ok(()) => state.registry.saw(revision),
            Err(e) => {
                tracing::warn!(error = %e, "REST objects changed elsewhere but could not be served")
            }
        }
    }
}

/// Re-reads the REST objects and swaps the served snapshot; the caller holds the registry lock.
pub async fn refresh(state: &GatewayState, base: &Base) -> Result<(), String> {
    let served = served_for(&state.db, base.snapshot())
        .await
        .map_err(|e| e.to_string())?;
    let hash = served.hash.clone();
    let previous = state.served.swap(Arc::new(served));
    tracing::info!(snapshot = %hash, "REST objects changed; snapshot swapped");
    // Freed off the runtime, as in `gateway::reload`.
    let _ = off_the_runtime(move || drop(previous)).await;
    Ok(())
}

/// The operations of a parsed document as stored in `api_specs.operations`:
/// operationId -> `{"operation_id", "method", "path"}` (reference §5.1).
pub fn operations_column(ops: &BTreeMap<String, aegis_seal_crds::openapi::Operation>) -> Value {
    Value::Object(
        ops.iter()
            .map(|(id, op)| {
                (
                    id.clone(),
                    serde_json::json!({"operation_id": id, "method": op.method, "path": op.path}),
                )
            })
            .collect(),
    )
}
