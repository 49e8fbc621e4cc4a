//! The SealGateway controller: what triggers a reconcile.
//!
//! A gateway is reconciled when it changes; when an object it owns (ConfigMaps, Deployment,
//! Service, ServiceAccount, Role, RoleBinding, PodDisruptionBudget) changes or is deleted, so
//! that the next apply restores it; when a Workflow, CliTool or SecurityContext it selects (or
//! judged: its `status.acceptance` says so) changes; when a ConfigMap its workflows read
//! OpenAPI documents from changes; and when another gateway is deleted (they may have judged
//! the same resources).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use aegis_seal_crds::{CliTool, SealGateway, SecurityContext, Workflow};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::{Controller, WatchStreamExt, controller};
use kube::{Api, Client, ResourceExt};

use crate::FIELD_MANAGER;
use crate::reconcile::{Context, ToolResource, error_policy, reconcile, release, release_absent};
use crate::selection::{Selection, gateway_key};

/// Label selector of the objects the operator applies.
pub fn managed_selector() -> String {
    format!("app.kubernetes.io/managed-by={FIELD_MANAGER}")
}

/// The gateways a resource concerns: those that select it now, and those its status says served it.
pub fn gateways_for<K: ToolResource>(
    obj: &K,
    gateways: &[Arc<SealGateway>],
) -> Vec<ObjectRef<SealGateway>> {
    // Those that judged it, accepted or not, and (statuses written before `acceptance`) served it.
    let served: Vec<&str> = obj
        .tool_status()
        .map(|s| {
            s.acceptance
                .iter()
                .map(|a| a.gateway.as_str())
                .chain(s.gateways.iter().map(String::as_str))
                .collect()
        })
        .unwrap_or_default();
    gateways
        .iter()
        .filter(|gw| {
            served.contains(&gateway_key(gw).as_str())
                || Selection::of(gw).is_ok_and(|s| s.selects(obj.meta()))
        })
        .map(|gw| ObjectRef::from_obj(gw.as_ref()))
        .collect()
}

/// `namespace/name` as a reference to a SealGateway.
fn gateway_ref(key: &str) -> Option<ObjectRef<SealGateway>> {
    let (ns, name) = key.split_once('/')?;
    Some(ObjectRef::new(name).within(ns))
}

fn tool_mapper<K: ToolResource>(
    store: Store<SealGateway>,
) -> impl Fn(K) -> Vec<ObjectRef<SealGateway>> + Send + Sync + 'static {
    move |obj: K| gateways_for(&obj, &store.state())
}

/// A deleted gateway runs no reconcile of its own: it has no finalizer, so that deleting it never
/// waits for the operator. This follows deletions instead, and takes each deleted gateway's
/// entries out of the statuses of the resources it judged; those writes reconcile the gateways
/// that still select them.
async fn release_deleted_gateways(client: Client, ctx: Arc<Context>) {
    let events = watcher(
        Api::<SealGateway>::all(client),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff();
    let mut events = std::pin::pin!(events);
    // The gateways of the current (re)list, until it is done.
    let mut listed: Option<BTreeSet<String>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listed = Some(BTreeSet::new()),
            Ok(watcher::Event::InitApply(gw)) => {
                let key = gateway_key(&gw);
                ctx.gateway_present(&key);
                if let Some(listed) = &mut listed {
                    listed.insert(key);
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(present) = listed.take()
                    && let Err(e) = release_absent(&ctx, &present).await
                {
                    tracing::warn!(error = %e, "cannot release the resources of gateways deleted meanwhile");
                }
            }
            Ok(watcher::Event::Delete(gw)) => {
                let key = gateway_key(&gw);
                ctx.gateway_deleted(&key);
                if let Err(e) = release(&ctx, &key).await {
                    tracing::warn!(gateway = %key, error = %e, "cannot release a deleted gateway's resources");
                }
            }
            Ok(watcher::Event::Apply(gw)) => ctx.gateway_present(&gateway_key(&gw)),
            Err(e) => tracing::debug!(error = %e, "SealGateway watch"),
        }
    }
}

/// Runs the controller until `shutdown` completes and the reconciles in flight finish.
pub async fn run(
    client: Client,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let watch_all = watcher::Config::default().any_semantic();
    let managed = watch_all.clone().labels(&managed_selector());
    let controller = Controller::new(Api::<SealGateway>::all(client.clone()), watch_all.clone());
    let store = controller.store();
    ctx.watch_gateways(store.clone());
    let deletions = tokio::spawn(release_deleted_gateways(client.clone(), ctx.clone()));
    let cm_ctx = ctx.clone();
    controller
        .owns(Api::<ConfigMap>::all(client.clone()), managed.clone())
        .owns(Api::<Deployment>::all(client.clone()), managed.clone())
        .owns(Api::<Service>::all(client.clone()), managed.clone())
        .owns(Api::<ServiceAccount>::all(client.clone()), managed.clone())
        .owns(Api::<Role>::all(client.clone()), managed.clone())
        .owns(Api::<RoleBinding>::all(client.clone()), managed.clone())
        .owns(Api::<PodDisruptionBudget>::all(client.clone()), managed)
        .watches(
            Api::<Workflow>::all(client.clone()),
            watch_all.clone(),
            tool_mapper::<Workflow>(store.clone()),
        )
        .watches(
            Api::<CliTool>::all(client.clone()),
            watch_all.clone(),
            tool_mapper::<CliTool>(store.clone()),
        )
        .watches(
            Api::<SecurityContext>::all(client.clone()),
            watch_all.clone(),
            tool_mapper::<SecurityContext>(store),
        )
        .watches(
            // Every ConfigMap of the cluster, of which a few hold OpenAPI documents. Only their
            // metadata is listed and watched (a change of data changes the resourceVersion,
            // which is all a trigger needs): the documents, up to 1 MiB each, are read by the
            // reconcile that needs them, never sent to the operator for every ConfigMap of the
            // cluster at each relist and change.
            Api::<PartialObjectMeta<ConfigMap>>::all(client),
            watcher::Config::default(),
            move |cm: PartialObjectMeta<ConfigMap>| {
                let ns = cm.namespace().unwrap_or_default();
                cm_ctx
                    .gateways_reading_config_map(&ns, &cm.name_any())
                    .iter()
                    .filter_map(|key| gateway_ref(key))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            match result {
                Ok((gw, _)) => tracing::trace!(gateway = %gw, "reconcile done"),
                // A list or watch that fails is retried with backoff, and until it succeeds
                // nothing of its kind is reconciled: say so where operators look.
                Err(e @ (controller::Error::QueueError(_) | controller::Error::RunnerError(_))) => {
                    ctx.metrics.watch_failed();
                    tracing::warn!(error = %e, "watching the cluster failed; retrying");
                }
                // Failed reconciles are logged by `error_policy`.
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
            std::future::ready(())
        })
        .await;
    deletions.abort();
    tracing::info!("controller stopped");
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fixtures;

    fn gw(ns: &str, name: &str, spec: serde_json::Value) -> Arc<SealGateway> {
        let mut v = fixtures::gateway_json(spec);
        v["metadata"]["namespace"] = json!(ns);
        v["metadata"]["name"] = json!(name);
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn a_resource_maps_to_the_gateways_that_select_or_served_it() {
        let gateways = vec![
            gw("tools", "same", json!({})),
            gw("other", "same-elsewhere", json!({})),
            gw(
                "ops",
                "all",
                json!({"resource_selector": {"namespaces": "All"}}),
            ),
            gw(
                "ops",
                "team-b",
                json!({"resource_selector": {"namespaces": "All",
                "selector": {"matchLabels": {"team": "b"}}}}),
            ),
        ];
        let mut wf = fixtures::workflow("wf");
        let names = |refs: Vec<ObjectRef<SealGateway>>| -> Vec<String> {
            refs.iter().map(|r| r.name.clone()).collect()
        };
        assert_eq!(names(gateways_for(&wf, &gateways)), ["same", "all"]);

        // No longer selected by team-b, but its status still lists it: team-b must let go.
        wf.status = Some(aegis_seal_crds::ToolStatus {
            gateways: vec!["ops/team-b".into()],
            ..Default::default()
        });
        assert_eq!(
            names(gateways_for(&wf, &gateways)),
            ["same", "all", "team-b"]
        );
        let refs = gateways_for(&wf, &gateways);
        assert_eq!(refs[2].namespace.as_deref(), Some("ops"));
    }

    #[test]
    fn gateway_keys_parse_back() {
        let r = gateway_ref("tools/edge").unwrap();
        assert_eq!(
            (r.namespace.as_deref(), r.name.as_str()),
            (Some("tools"), "edge")
        );
        assert!(gateway_ref("edge").is_none());
    }
}
