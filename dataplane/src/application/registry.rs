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

use aegis_seal_crds::openapi::Operation;
use aegis_seal_crds::{
    ApiSpecSource, CliTool, CliToolSpec, ContainerResources, CredentialResolutionPath,
    OpenApiSource, ResourceRef, Resources, SecurityContext, SecurityContextSpec, Snapshot,
    Workflow, WorkflowSpec, WorkflowStep, compile, openapi,
};
use chrono::Utc;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::application::catalog::{Entries, ServedSnapshot, add_default_contexts};
use crate::gateway::{GatewayState, ReloadError, off_the_runtime, release_freed_memory};
use crate::infrastructure::persistence::{
    AuditEvent, CatalogSource, CatalogTable, CliToolRow, Database, PersistenceError, REST_SOURCE,
    ReplacedRestObject, SecurityContextRow, SpecRow, WorkflowRow,
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
    resource_with_document(wf, spec, steps_of(wf)?, spec.raw_spec.clone())
}

fn steps_of(wf: &WorkflowRow) -> Result<Vec<WorkflowStep>, String> {
    serde_json::from_value(wf.steps.clone()).map_err(|e| corrupt("workflow", &wf.id, "steps", e))
}

/// [`workflow_resource`] for many workflows at once, each spec's document read once: a
/// workflow's document is cut down to the operations of its spec that its steps call, which
/// compiles to the same entry. A whole document per workflow, each parsed again, made a 2 MB spec
/// under 60 workflows take gigabytes at every refresh.
struct WorkflowResources<'a> {
    specs: &'a HashMap<String, SpecRow>,
    /// Each spec's operations; `None` when its document yields none, and then the workflow
    /// carries the whole document, so that compiling it reports the same problem as ever.
    operations: HashMap<&'a str, Option<BTreeMap<String, Operation>>>,
}

impl<'a> WorkflowResources<'a> {
    fn new(specs: &'a HashMap<String, SpecRow>) -> Self {
        Self {
            specs,
            operations: HashMap::new(),
        }
    }

    fn resource(&mut self, wf: &WorkflowRow) -> Result<Workflow, String> {
        let spec = wf
            .api_spec_id
            .as_deref()
            .and_then(|id| self.specs.get_key_value(id))
            .ok_or_else(|| format!("workflow {}: its api spec is gone", wf.id))?;
        let (id, spec) = spec;
        let operations = self
            .operations
            .entry(id.as_str())
            .or_insert_with(|| openapi::operations(&spec.raw_spec).ok());
        let Some(operations) = operations else {
            return workflow_resource(wf, spec);
        };
        let steps = steps_of(wf)?;
        let called: HashSet<&str> = steps.iter().map(|s| s.operation_id.as_str()).collect();
        // A step naming an operation the spec lacks keeps all of them, so that compiling says so
        // in the same words as for the whole document.
        let all = !called.iter().all(|id| operations.contains_key(*id));
        let document = operations_document(
            operations
                .iter()
                .filter(|(id, _)| all || called.contains(id.as_str())),
        );
        resource_with_document(wf, spec, steps, document)
    }
}

/// An OpenAPI 3 document holding exactly `operations`, from which `openapi::operations` reads
/// them back unchanged.
fn operations_document<'o>(operations: impl Iterator<Item = (&'o String, &'o Operation)>) -> Value {
    let mut paths = serde_json::Map::new();
    for (id, op) in operations {
        let mut operation = serde_json::json!({
            "operationId": id,
            "parameters": op.parameters.iter().map(|p| serde_json::json!({
                "name": p.name, "in": p.location, "required": p.required,
            })).collect::<Vec<_>>(),
        });
        if op.has_request_body {
            operation["requestBody"] = serde_json::json!({});
        }
        let item = paths
            .entry(op.path.clone())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        item[op.method.to_ascii_lowercase()] = operation;
    }
    serde_json::json!({"openapi": "3.0.3", "paths": paths})
}

fn resource_with_document(
    wf: &WorkflowRow,
    spec: &SpecRow,
    steps: Vec<WorkflowStep>,
    document: Value,
) -> Result<Workflow, String> {
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
                    inline: Some(document),
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

/// What keeps each of `workflows` from compiling against `spec`, each named, with the document
/// read once for all of them ([`WorkflowResources`]): a spec update checks every workflow on it.
pub fn problems_with_spec(spec: &SpecRow, workflows: &[WorkflowRow]) -> Vec<String> {
    let specs = HashMap::from([(spec.id.clone(), spec.clone())]);
    let mut resources = WorkflowResources::new(&specs);
    let mut found = Vec::new();
    for wf in workflows {
        match resources.resource(wf) {
            Ok(resource) => found.extend(
                problems(&Resources {
                    workflows: vec![resource],
                    ..Resources::default()
                })
                .into_iter()
                .map(|p| format!("workflow \"{}\": {p}", wf.name)),
            ),
            Err(e) => found.push(e),
        }
    }
    found
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
    let mut workflows = WorkflowResources::new(&specs);
    for wf in db.list_workflows(Some(REST_SOURCE)).await? {
        match workflows.resource(&wf) {
            Ok(r) => resources.workflows.push(r),
            Err(e) => unusable.push(e),
        }
    }
    drop(workflows);
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

/// `<Kind>Deleted` for a REST object that is gone: its id, name and tenant, who or what deleted
/// it (an operator's subject; `manifest` or `kubernetes` for a declarative object that took its
/// name, named by `replaced_by`) and when, in whole seconds.
pub fn deleted_event(
    table: CatalogTable,
    id: &str,
    name: &str,
    tenant_id: Option<&str>,
    deleted_by: &str,
    replaced_by: Option<&ResourceRef>,
) -> AuditEvent {
    let mut payload = json!({
        "id": id,
        "name": name,
        "tenant_id": tenant_id,
        "deleted_by": deleted_by,
        "deleted_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    if let Some(by) = replaced_by {
        payload["replaced_by"] = json!(by.to_string());
    }
    AuditEvent::from_json(table.deleted_event(), payload)
}

/// Records the REST objects a catalog sync replaced with declarative objects of the same tenant
/// and name: a WARN line each, and the event a REST `DELETE` writes, saying what took the name.
pub async fn record_replaced(
    state: &GatewayState,
    source: CatalogSource,
    replaced: &[ReplacedRestObject],
) {
    if replaced.is_empty() {
        return;
    }
    let events = replaced
        .iter()
        .map(|r| {
            tracing::warn!(
                table = r.table.name(),
                id = %r.id,
                name = %r.name,
                tenant_id = r.tenant_id.as_deref().unwrap_or_default(),
                replaced_by = %r.by,
                source = source.as_str(),
                "REST-registered object replaced by a declarative one of the same tenant and name"
            );
            deleted_event(
                r.table,
                &r.id,
                &r.name,
                r.tenant_id.as_deref(),
                source.as_str(),
                Some(&r.by),
            )
        })
        .collect();
    if let Err(e) = state.audit.write(events).await {
        tracing::warn!(error = %e, "cannot record the REST objects a catalog sync replaced");
    }
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
    // Freed off the runtime and the heap trimmed, as in `gateway::reload`: reading the REST
    // objects parses every spec's document, and glibc would keep those pages resident.
    let _ = off_the_runtime(move || {
        drop(previous);
        release_freed_memory();
    })
    .await;
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec() -> SpecRow {
        SpecRow {
            id: "spec-1".into(),
            name: "repos".into(),
            tenant_id: None,
            base_url: "http://upstream".into(),
            source_url: None,
            raw_spec: json!({
                "openapi": "3.0.3",
                "components": {
                    "parameters": {"Owner": {"name": "owner", "in": "path", "required": true}},
                    "schemas": {"Big": {"description": "x".repeat(10_000)}}
                },
                "paths": {
                    "/repos/{owner}/{repo}": {
                        "parameters": [{"$ref": "#/components/parameters/Owner"}],
                        "get": {"operationId": "getRepo", "parameters": [
                            {"name": "repo", "in": "path"}, {"name": "page", "in": "query"},
                            {"name": "X-Trace", "in": "header", "required": true}]},
                        "patch": {"operationId": "editRepo", "requestBody": {"content": {}}}
                    },
                    "/other": {"get": {"operationId": "other"}}
                }
            }),
            operations: Value::Null,
            credential_path: None,
            source: REST_SOURCE.into(),
        }
    }

    fn workflow(id: &str, operations: &[&str]) -> WorkflowRow {
        WorkflowRow {
            id: id.into(),
            name: id.into(),
            tenant_id: None,
            description: String::new(),
            input_schema: json!({"type": "object"}),
            api_spec_id: Some("spec-1".into()),
            steps: Value::Array(
                operations
                    .iter()
                    .map(|op| json!({"name": op, "operation_id": op}))
                    .collect(),
            ),
            source: REST_SOURCE.into(),
        }
    }

    /// A workflow built from its spec's operations compiles to exactly what the whole document
    /// gives, problems included, while carrying only what its steps call.
    #[test]
    fn a_workflow_carries_only_the_operations_it_calls_and_compiles_the_same() {
        let specs = HashMap::from([("spec-1".to_owned(), spec())]);
        let rows = [
            workflow("edit", &["getRepo", "editRepo"]),
            workflow("missing", &["getRepo", "nowhere"]),
        ];
        let mut cut = WorkflowResources::new(&specs);
        let cut: Vec<Workflow> = rows.iter().map(|wf| cut.resource(wf).unwrap()).collect();
        let whole: Vec<Workflow> = rows
            .iter()
            .map(|wf| workflow_resource(wf, &specs["spec-1"]).unwrap())
            .collect();

        let document = cut[0].spec.api_spec.openapi.inline.as_ref().unwrap();
        let paths: Vec<&String> = document["paths"].as_object().unwrap().keys().collect();
        assert_eq!(paths, ["/repos/{owner}/{repo}"]);
        assert!(serde_json::to_string(document).unwrap().len() < 1_000);

        let compiled = |workflows: Vec<Workflow>| {
            let c = compile(&Resources {
                workflows,
                ..Resources::default()
            });
            (c.results, c.snapshot.workflows)
        };
        let (cut_results, cut_entries) = compiled(cut);
        let (whole_results, whole_entries) = compiled(whole);
        assert_eq!(cut_results, whole_results);
        assert_eq!(cut_entries, whole_entries);
        assert!(cut_results[0].accepted(), "{:?}", cut_results[0]);
        assert!(!cut_results[1].accepted());
    }
}
