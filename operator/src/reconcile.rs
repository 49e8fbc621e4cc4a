//! The SealGateway reconciler: select, compile, apply, report.
//!
//! One reconcile reads the resources the gateway selects, compiles them, server-side applies every
//! object of [`desired_objects`], and writes the statuses of the gateway and of each resource it
//! selected, each only when it changed (a write that changes nothing would trigger the next
//! reconcile, for ever). Transitions are published as Kubernetes Events.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aegis_seal_crds::{
    API_VERSION, CliTool, Compiled, ResourceResult, Resources, SealGateway, SecurityContext,
    ToolStatus, Workflow, compile, openapi_urls,
};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::FIELD_MANAGER;
use crate::desired::{Desired, SNAPSHOT_OF_LABEL, desired_objects};
use crate::documents::DocumentFetcher;
use crate::metrics::Metrics;
use crate::selection::{Scope, Selection, gateway_key, referenced_config_maps};
use crate::status::{self, Notice, SpecOutcome};

/// How often a gateway is reconciled when nothing it watches changes.
pub const RESYNC: Duration = Duration::from_secs(600);
/// First and longest wait after a failed reconcile.
pub const BACKOFF_MIN: Duration = Duration::from_secs(2);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What reconciles share.
pub struct Context {
    pub client: Client,
    /// Data-plane image for gateways without `spec.image`.
    pub default_image: String,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Per gateway (`namespace/name`), the ConfigMaps its workflows read OpenAPI documents from,
    /// as of its last reconcile: a change to one of them reconciles the gateway.
    referenced_config_maps: Mutex<HashMap<String, BTreeSet<(String, String)>>>,
    /// Consecutive failures per gateway, for the error backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Workflows' `openapi.url` documents.
    documents: DocumentFetcher,
    /// The SealGateways the controller watches, once it runs: a resource's status drops the
    /// entries of gateways that no longer exist.
    gateways: OnceLock<Store<SealGateway>>,
    /// Gateways (`namespace/name`) seen deleted and not created again since: known at once,
    /// where the store may learn of the deletion after the reconciles it triggers.
    deleted: Mutex<BTreeSet<String>>,
}

impl Context {
    /// `instance` names this operator replica in the Events it publishes (its pod name).
    pub fn new(
        client: Client,
        default_image: impl Into<String>,
        instance: Option<String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            default_image: default_image.into(),
            metrics,
            referenced_config_maps: Mutex::default(),
            failures: Mutex::default(),
            documents: DocumentFetcher::new(),
            gateways: OnceLock::new(),
            deleted: Mutex::default(),
        }
    }

    /// Lets reconciles see which gateways exist (set once, by the controller).
    pub fn watch_gateways(&self, store: Store<SealGateway>) {
        let _ = self.gateways.set(store);
    }

    /// Whether the gateway `namespace/name` exists. True until the controller's store has
    /// listed the gateways: a live gateway's entry must not be dropped for want of knowing.
    fn gateway_exists(&self, key: &str) -> bool {
        if lock(&self.deleted).contains(key) {
            return false;
        }
        let Some(store) = self.gateways.get() else {
            return true;
        };
        let Some((ns, name)) = key.split_once('/') else {
            return false;
        };
        store.is_empty() || store.get(&ObjectRef::new(name).within(ns)).is_some()
    }

    /// Gateways (`namespace/name`) whose workflows read the ConfigMap `namespace/name`.
    pub fn gateways_reading_config_map(&self, namespace: &str, name: &str) -> Vec<String> {
        let key = (namespace.to_owned(), name.to_owned());
        lock(&self.referenced_config_maps)
            .iter()
            .filter(|(_, maps)| maps.contains(&key))
            .map(|(gw, _)| gw.clone())
            .collect()
    }

    fn record_config_maps(&self, gateway: &str, maps: BTreeSet<(String, String)>) {
        lock(&self.referenced_config_maps).insert(gateway.to_owned(), maps);
    }

    pub fn forget(&self, gateway: &str) {
        lock(&self.referenced_config_maps).remove(gateway);
        lock(&self.failures).remove(gateway);
    }

    /// The gateway `namespace/name` was deleted: forget what is kept about it, and let the
    /// statuses of what it judged drop its entries.
    pub fn gateway_deleted(&self, gateway: &str) {
        self.forget(gateway);
        lock(&self.deleted).insert(gateway.to_owned());
    }

    /// The gateway `namespace/name` exists (again).
    pub fn gateway_present(&self, gateway: &str) {
        lock(&self.deleted).remove(gateway);
    }
}

/// A poisoned lock only means another reconcile panicked; the maps stay usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("the SealGateway has no {0}")]
    MissingMetadata(&'static str),
}

impl ReconcileError {
    /// The API server refused a request as invalid or forbidden (a 4xx other than a conflict or
    /// throttling): sending it again unchanged cannot succeed.
    fn refused_by_the_api_server(&self) -> bool {
        matches!(
            self,
            Self::Kube { source: kube::Error::Api(status), .. }
                if (400..500).contains(&status.code) && ![409, 429].contains(&status.code)
        )
    }
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
    let action = action.into();
    move |source| ReconcileError::Kube { action, source }
}

/// The reconciler `Controller::run` calls.
pub async fn reconcile(gw: Arc<SealGateway>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let key = gateway_key(&gw);
    let result = reconcile_gateway(&gw, &ctx).await;
    ctx.metrics.reconciled(started.elapsed(), result.is_ok());
    match &result {
        Ok(_) => {
            lock(&ctx.failures).remove(&key);
            tracing::debug!(gateway = %key, elapsed_ms = started.elapsed().as_millis() as u64, "reconciled");
        }
        Err(e) => tracing::warn!(gateway = %key, error = %e, "reconcile failed"),
    }
    result
}

/// Exponential backoff per gateway, from [`BACKOFF_MIN`] to [`BACKOFF_MAX`].
pub fn error_policy(gw: Arc<SealGateway>, _error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let mut failures = lock(&ctx.failures);
    let n = failures.entry(gateway_key(&gw)).or_default();
    *n = n.saturating_add(1);
    Action::requeue(backoff(*n))
}

pub fn backoff(failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    BACKOFF_MIN.saturating_mul(factor).min(BACKOFF_MAX)
}

/// The resources in a gateway's scope: all of them (to find those it no longer selects) and the
/// selected ones, in list order.
struct InScope<K> {
    all: Vec<K>,
    selected: Vec<usize>,
}

impl<K: Resource> InScope<K> {
    fn new(all: Vec<K>, selection: &Selection) -> Self {
        let selected = all
            .iter()
            .enumerate()
            .filter(|(_, r)| selection.selects(r.meta()))
            .map(|(i, _)| i)
            .collect();
        Self { all, selected }
    }

    fn selected(&self) -> impl Iterator<Item = &K> {
        self.selected.iter().map(|&i| &self.all[i])
    }

    fn deselected(&self) -> impl Iterator<Item = &K> {
        self.all
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.selected.contains(i))
            .map(|(_, r)| r)
    }
}

/// The resources that carry a [`ToolStatus`].
pub trait ToolResource:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    fn tool_status(&self) -> Option<&ToolStatus>;
}

macro_rules! tool_resource {
    ($($t:ty),*) => {$(
        impl ToolResource for $t {
            fn tool_status(&self) -> Option<&ToolStatus> {
                self.status.as_ref()
            }
        }
    )*};
}
tool_resource!(Workflow, CliTool, SecurityContext);

fn scoped_api<K>(client: &Client, scope: &Scope) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match scope {
        Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        Scope::All => Api::all(client.clone()),
    }
}

/// The resources of kind `K` in `scope`, split by whether `selection` selects them.
async fn list_in_scope<K: ToolResource>(
    client: &Client,
    scope: &Scope,
    selection: &Selection,
) -> Result<InScope<K>, ReconcileError> {
    let list = scoped_api::<K>(client, scope)
        .list(&ListParams::default())
        .await
        .map_err(kube_err(format!("listing {}s", K::kind(&()))))?;
    Ok(InScope::new(list.items, selection))
}

/// An Event to publish once the statuses are written.
struct PendingEvent {
    regarding: ObjectReference,
    action: &'static str,
    notice: Notice,
}

async fn reconcile_gateway(gw: &SealGateway, ctx: &Context) -> Result<Action, ReconcileError> {
    if gw.metadata.deletion_timestamp.is_some() {
        // Everything it runs is owned by it and goes with it.
        ctx.forget(&gateway_key(gw));
        return Ok(Action::await_change());
    }
    let namespace = gw
        .metadata
        .namespace
        .clone()
        .ok_or(ReconcileError::MissingMetadata("namespace"))?;
    let name = gw.name_any();
    let key = gateway_key(gw);
    let now = status::now();
    let mut events = Vec::new();

    let selection = match Selection::of(gw) {
        Ok(s) => s,
        Err(e) => {
            let outcome = SpecOutcome::Refused {
                reason: "InvalidSelector",
                message: e.to_string(),
            };
            write_gateway_status(gw, ctx, &outcome, &now, &mut events).await?;
            publish(ctx, events).await;
            return Ok(Action::requeue(RESYNC));
        }
    };

    // A spec changed since the last reconcile may have narrowed the scope (every namespace to its
    // own): look everywhere this once, so that what it judged outside the new scope lets it go.
    let spec_changed = gw
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .is_some_and(|seen| Some(seen) != gw.metadata.generation);
    let scope = if spec_changed {
        &Scope::All
    } else {
        &selection.scope
    };
    let workflows = list_in_scope::<Workflow>(&ctx.client, scope, &selection).await?;
    let cli_tools = list_in_scope::<CliTool>(&ctx.client, scope, &selection).await?;
    let contexts = list_in_scope::<SecurityContext>(&ctx.client, scope, &selection).await?;
    let wanted_maps = referenced_config_maps(workflows.selected());
    let mut config_maps = Vec::new();
    for (ns, cm) in &wanted_maps {
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
        // A missing ConfigMap is the workflow's problem, reported by compile.
        if let Some(found) = api
            .get_opt(cm)
            .await
            .map_err(kube_err(format!("reading ConfigMap {ns}/{cm}")))?
        {
            config_maps.push(found);
        }
    }
    ctx.record_config_maps(&key, wanted_maps);

    let compiled = compile(&Resources {
        workflows: workflows.selected().cloned().collect(),
        cli_tools: cli_tools.selected().cloned().collect(),
        security_contexts: contexts.selected().cloned().collect(),
        config_maps,
        documents: ctx
            .documents
            .fetch(&openapi_urls(workflows.selected()))
            .await,
        tenancy: selection.tenancy(),
    });

    let desired = desired_objects(gw, &compiled, &ctx.default_image);
    // Refused: why (a condition reason) and what to say.
    let applied: Result<_, (&'static str, String)> = match &desired {
        Ok(d) => match apply_all(ctx, &namespace, &name, d).await {
            Ok(deployment) => Ok((d, deployment)),
            // The API server refused an object for good (a 422 for resources whose limits are
            // below their requests, say): reported on the gateway like a refused spec, instead of
            // a retry loop that leaves its status claiming the last success.
            Err(e) if e.refused_by_the_api_server() => {
                tracing::warn!(gateway = %key, error = %e, "the API server refused an object");
                Err(("ApplyRefused", e.to_string()))
            }
            Err(e) => return Err(e),
        },
        Err(e) => {
            tracing::warn!(gateway = %key, reason = e.reason(), error = %e, "spec refused");
            Err((e.reason(), e.to_string()))
        }
    };

    // compile() returns one result per input, in input order: workflows, CLI tools, contexts.
    let (wf_results, rest) = compiled.results.split_at(workflows.selected.len());
    let (cli_results, sc_results) = rest.split_at(cli_tools.selected.len());
    let rejected = compiled.rejected().count();
    let serving = applied.is_ok();
    write_tool_statuses(
        ctx,
        &workflows,
        wf_results,
        &key,
        serving,
        &now,
        &mut events,
    )
    .await?;
    write_tool_statuses(
        ctx,
        &cli_tools,
        cli_results,
        &key,
        serving,
        &now,
        &mut events,
    )
    .await?;
    write_tool_statuses(ctx, &contexts, sc_results, &key, serving, &now, &mut events).await?;

    let outcome = match &applied {
        Ok((d, deployment)) => applied_outcome(gw, &compiled, d, deployment, rejected),
        Err((reason, message)) => SpecOutcome::Refused {
            reason,
            message: message.clone(),
        },
    };
    write_gateway_status(gw, ctx, &outcome, &now, &mut events).await?;
    publish(ctx, events).await;
    Ok(Action::requeue(RESYNC))
}

fn applied_outcome<'a>(
    gw: &SealGateway,
    compiled: &Compiled,
    desired: &'a Desired,
    deployment: &'a Deployment,
    rejected: usize,
) -> SpecOutcome<'a> {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    SpecOutcome::Applied {
        snapshot_hash: &desired.snapshot_hash,
        workflows: count(compiled.snapshot.workflows.len()),
        cli_tools: count(compiled.snapshot.cli_tools.len()),
        security_contexts: count(compiled.snapshot.security_contexts.len()),
        rejected,
        cli_containers: gw.spec.cli_containers.enabled,
        replicas: desired.deployment.spec.replicas.unwrap_or(1),
        deployment_generation: deployment.metadata.generation,
        deployment: deployment.status.as_ref(),
    }
}

async fn apply<K>(client: &Client, namespace: &str, obj: &K) -> Result<K, ReconcileError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + Serialize,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    Api::<K>::namespaced(client.clone(), namespace)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await
        .map_err(kube_err(format!(
            "applying {} {namespace}/{name}",
            K::kind(&())
        )))
}

/// Applies every object, the snapshot's additional ConfigMaps before the main one (whose index
/// refers to them), then deletes additional ConfigMaps the snapshot no longer needs. Returns the
/// Deployment as the API server holds it.
async fn apply_all(
    ctx: &Context,
    namespace: &str,
    name: &str,
    d: &Desired,
) -> Result<Deployment, ReconcileError> {
    let c = &ctx.client;
    apply(c, namespace, &d.service_account).await?;
    apply(c, namespace, &d.role).await?;
    apply(c, namespace, &d.role_binding).await?;
    for cm in &d.snapshot_config_maps {
        apply(c, namespace, cm).await?;
    }
    apply(c, namespace, &d.config_map).await?;
    apply(c, namespace, &d.service).await?;
    let deployment = apply(c, namespace, &d.deployment).await?;
    apply(c, namespace, &d.pod_disruption_budget).await?;

    let api: Api<ConfigMap> = Api::namespaced(c.clone(), namespace);
    let shard_maps = api
        .list(&ListParams::default().labels(&format!("{SNAPSHOT_OF_LABEL}={name}")))
        .await
        .map_err(kube_err("listing snapshot ConfigMaps"))?;
    let keep: BTreeSet<_> = d
        .snapshot_config_maps
        .iter()
        .filter_map(|cm| cm.metadata.name.as_deref())
        .collect();
    for stale in shard_maps.items.iter().map(ResourceExt::name_any) {
        if !keep.contains(stale.as_str()) {
            api.delete(&stale, &DeleteParams::default())
                .await
                .map_err(kube_err(format!("deleting ConfigMap {namespace}/{stale}")))?;
        }
    }
    Ok(deployment)
}

/// Takes the deleted gateway `gateway` (`namespace/name`) out of the statuses of every Workflow,
/// CliTool and SecurityContext that lists it.
pub async fn release(ctx: &Context, gateway: &str) -> Result<(), ReconcileError> {
    release_kind::<Workflow>(ctx, gateway).await?;
    release_kind::<CliTool>(ctx, gateway).await?;
    release_kind::<SecurityContext>(ctx, gateway).await
}

/// Releases every gateway that resource statuses still name but that is not among `present`
/// (every SealGateway the API server listed). One deleted while no operator watched (during a
/// failover or an upgrade) sent no Delete event, and its entries would stay for good, along with
/// the `Accepted` derived from them.
pub async fn release_absent(
    ctx: &Context,
    present: &BTreeSet<String>,
) -> Result<(), ReconcileError> {
    let mut named = named_gateways::<Workflow>(ctx).await?;
    named.extend(named_gateways::<CliTool>(ctx).await?);
    named.extend(named_gateways::<SecurityContext>(ctx).await?);
    for gateway in named.difference(present) {
        tracing::info!(gateway = %gateway, "releasing the resources of a gateway deleted while no operator watched");
        ctx.gateway_deleted(gateway);
        release(ctx, gateway).await?;
    }
    Ok(())
}

/// The gateways named in the statuses of every resource of kind `K`.
async fn named_gateways<K: ToolResource>(
    ctx: &Context,
) -> Result<BTreeSet<String>, ReconcileError> {
    let all = Api::<K>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_err(format!("listing {}s", K::kind(&()))))?;
    Ok(all
        .items
        .iter()
        .filter_map(ToolResource::tool_status)
        .flat_map(|s| {
            s.acceptance
                .iter()
                .map(|a| a.gateway.clone())
                .chain(s.gateways.iter().cloned())
        })
        .collect())
}

async fn release_kind<K: ToolResource>(ctx: &Context, gateway: &str) -> Result<(), ReconcileError> {
    let all = Api::<K>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_err(format!("listing {}s", K::kind(&()))))?;
    let now = status::now();
    for obj in &all.items {
        let_go(ctx, obj, gateway, &now).await?;
    }
    Ok(())
}

async fn patch_status<K: ToolResource>(
    client: &Client,
    obj: &K,
    status: &impl Serialize,
) -> Result<(), ReconcileError> {
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let name = obj.name_any();
    let body = json!({"apiVersion": API_VERSION, "kind": K::kind(&()), "status": status});
    Api::<K>::namespaced(client.clone(), &ns)
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(kube_err(format!(
            "writing the status of {} {ns}/{name}",
            K::kind(&())
        )))?;
    Ok(())
}

/// Records `gateway`'s verdict on each resource it selects. While the gateway's own spec is
/// refused (`serving` false) nothing new is served, so only the resources that do not compile are
/// told so; one that does is not recorded as served by a gateway that applied nothing.
async fn write_tool_statuses<K: ToolResource>(
    ctx: &Context,
    resources: &InScope<K>,
    results: &[ResourceResult],
    gateway: &str,
    serving: bool,
    now: &Time,
    events: &mut Vec<PendingEvent>,
) -> Result<(), ReconcileError> {
    let exists = |key: &str| ctx.gateway_exists(key);
    for (obj, result) in resources.selected().zip(results) {
        if !serving && result.accepted() {
            continue;
        }
        let previous = obj.tool_status();
        let new = status::resource_status(
            previous,
            Some(result),
            obj.meta().generation,
            gateway,
            exists,
            now,
        );
        if previous != Some(&new) {
            patch_status(&ctx.client, obj, &new).await?;
            events.extend(
                status::resource_notices(previous, &new)
                    .into_iter()
                    .map(|notice| PendingEvent {
                        regarding: obj.object_ref(&()),
                        action: "Compile",
                        notice,
                    }),
            );
        }
    }
    for obj in resources.deselected() {
        let_go(ctx, obj, gateway, now).await?;
    }
    Ok(())
}

/// Writes `obj`'s status without the entry of `gateway`, which no longer selects it or no longer
/// exists, if it has one.
async fn let_go<K: ToolResource>(
    ctx: &Context,
    obj: &K,
    gateway: &str,
    now: &Time,
) -> Result<(), ReconcileError> {
    let Some(previous) = obj.tool_status() else {
        return Ok(());
    };
    let listed = previous.acceptance.iter().any(|a| a.gateway == gateway)
        || previous.gateways.iter().any(|g| g == gateway);
    if !listed {
        return Ok(());
    }
    let new = status::resource_status(
        Some(previous),
        None,
        obj.meta().generation,
        gateway,
        |key| ctx.gateway_exists(key),
        now,
    );
    if *previous != new {
        patch_status(&ctx.client, obj, &new).await?;
    }
    Ok(())
}

async fn write_gateway_status(
    gw: &SealGateway,
    ctx: &Context,
    outcome: &SpecOutcome<'_>,
    now: &Time,
    events: &mut Vec<PendingEvent>,
) -> Result<(), ReconcileError> {
    let previous = gw.status.as_ref();
    let new = status::gateway_status(previous, gw.metadata.generation, outcome, now);
    if previous == Some(&new) {
        return Ok(());
    }
    let ns = gw.metadata.namespace.clone().unwrap_or_default();
    let body = json!({"apiVersion": API_VERSION, "kind": "SealGateway", "status": new});
    Api::<SealGateway>::namespaced(ctx.client.clone(), &ns)
        .patch_status(
            &gw.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(kube_err(format!(
            "writing the status of SealGateway {}",
            gateway_key(gw)
        )))?;
    events.extend(
        status::gateway_notices(previous, &new)
            .into_iter()
            .map(|notice| PendingEvent {
                regarding: gw.object_ref(&()),
                action: "Reconcile",
                notice,
            }),
    );
    Ok(())
}

/// Events are informative: one that cannot be published is logged, never a reconcile failure.
async fn publish(ctx: &Context, events: Vec<PendingEvent>) {
    for e in events {
        let event = Event {
            type_: if e.notice.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.notice.reason.into(),
            note: Some(e.notice.note),
            action: e.action.into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&event, &e.regarding).await {
            tracing::warn!(
                reason = e.notice.reason,
                object = ?e.regarding.name,
                error = %err,
                "cannot publish event"
            );
        }
    }
}

#[cfg(test)]
mod tests;
