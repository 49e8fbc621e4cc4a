//! The real controller (`Controller::run`: watches, owns, status writes, events) and the leader
//! election, against the stateful fake API server. Every wait is bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_seal_crds::Snapshot;
use aegis_seal_crds::snapshot_shards;
use aegis_seal_operator::controller;
use aegis_seal_operator::leader::{Attempt, LeaseLock};
use aegis_seal_operator::reconcile::Context;
use aegis_seal_tests::fake_api::FakeApi;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::time::timeout;

const GATEWAYS: &str = "seal.100monkeys.ai/v1/sealgateways";
const WORKFLOWS: &str = "seal.100monkeys.ai/v1/workflows";
const CONTEXTS: &str = "seal.100monkeys.ai/v1/securitycontexts";
const CONFIG_MAPS: &str = "/v1/configmaps";
const DEPLOYMENTS: &str = "apps/v1/deployments";
const EVENTS: &str = "events.k8s.io/v1/events";
const NS: &str = "tools";
const IMAGE: &str = "registry.local/seal-gateway:test";

fn workflow(name: &str, description: &str, operation: &str) -> Value {
    json!({
        "apiVersion": "seal.100monkeys.ai/v1", "kind": "Workflow",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "description": description,
            "api_spec": {
                "base_url": "https://api.example.com",
                "openapi": {"inline": {
                    "openapi": "3.0.0", "info": {"title": "t", "version": "1"},
                    "paths": {"/repos": {"post": {"operationId": "createRepo"}}}
                }}
            },
            "steps": [{"name": "create", "operation_id": operation,
                       "body_template": "{\"name\": {{json input.name}}}"}]
        }
    })
}

/// Polls `probe` every 20 ms until it returns `Some`, for at most `within`.
async fn eventually<T>(what: &str, within: Duration, probe: impl Fn() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The snapshot a data plane would read from the fake's ConfigMaps.
fn served_snapshot(api: &FakeApi) -> Option<Snapshot> {
    let main = api.get(CONFIG_MAPS, NS, "edge-config")?;
    let index = snapshot_shards::parse_index(main["data"]["snapshot-index.json"].as_str()?).ok()?;
    let maps: Vec<Value> = api.list(CONFIG_MAPS);
    let shards: Vec<(String, String, Vec<u8>)> = maps
        .iter()
        .flat_map(|cm| {
            let name = cm["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            cm["binaryData"]
                .as_object()
                .into_iter()
                .flatten()
                .map(move |(k, v)| {
                    use base64::Engine;
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(v.as_str().unwrap_or_default())
                        .unwrap_or_default();
                    (name.clone(), k.clone(), bytes)
                })
        })
        .collect();
    snapshot_shards::reassemble(&index, |cm, key| {
        shards
            .iter()
            .find(|(c, k, _)| c == cm && k == key)
            .map(|(_, _, b)| b.as_slice())
    })
    .ok()
}

fn condition(obj: &Value, type_: &str) -> Option<(String, String, String)> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
                c["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

/// The controller running against the fake, until [`Running::stop`].
struct Running {
    ctx: Arc<Context>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(api: &FakeApi, instance: Option<&str>) -> Self {
        let client = api.client();
        let ctx = Arc::new(Context::new(
            client.clone(),
            IMAGE,
            instance.map(str::to_owned),
            Arc::default(),
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(controller::run(client, ctx.clone(), async move {
            let _ = stopped.await;
        }));
        Self { ctx, stop, task }
    }

    /// Graceful shutdown, bounded.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the controller did not stop")
            .unwrap();
    }
}

/// Waits until the fake has seen no write for `quiet`.
async fn settled(api: &FakeApi, quiet: Duration) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = api.writes();
        tokio::time::sleep(quiet).await;
        if before == api.writes() {
            return;
        }
        assert!(Instant::now() < deadline, "the controller keeps writing");
    }
}

/// Once settled, a second passes without the operator issuing any request but its watches: no
/// status write that would change nothing, no apply, no event.
async fn assert_quiescent(api: &FakeApi) {
    settled(api, Duration::from_millis(500)).await;
    let seen = api.log().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let issued: Vec<String> = api.log()[seen..]
        .iter()
        .filter(|r| !(r.method == "GET" && r.query.contains("watch=true")))
        .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
        .collect();
    assert!(
        issued.is_empty(),
        "requests while nothing changed: {issued:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_serves_selected_resources_and_keeps_the_last_good_snapshot() {
    timeout(Duration::from_secs(90), async {
        let api = FakeApi::start().await;
        api.put(
            GATEWAYS,
            json!({"apiVersion": "seal.100monkeys.ai/v1", "kind": "SealGateway",
                   "metadata": {"name": "edge", "namespace": NS}, "spec": {}}),
        );
        api.put(
            CONTEXTS,
            json!({"apiVersion": "seal.100monkeys.ai/v1", "kind": "SecurityContext",
                   "metadata": {"name": "default-ctx", "namespace": NS},
                   "spec": {"capabilities": [{"tool_pattern": "*"}]}}),
        );
        api.put(WORKFLOWS, workflow("create-repo", "v1", "createRepo"));
        // Not selected: another namespace.
        let mut elsewhere = workflow("elsewhere", "v1", "createRepo");
        elsewhere["metadata"]["namespace"] = json!("other");
        api.put(WORKFLOWS, elsewhere);

        let running = Running::start(&api, Some("operator-0"));
        let ctx = running.ctx.clone();

        // The operator writes the ConfigMap, and the snapshot in it serves the workflow.
        let snapshot = eventually("the snapshot", Duration::from_secs(15), || served_snapshot(&api)).await;
        let tools: Vec<_> = snapshot.workflows.iter().map(|w| w.tool_name.as_str()).collect();
        assert_eq!(tools, ["create-repo"]);
        assert_eq!(snapshot.security_contexts.len(), 1);
        for (resource, name) in [
            ("/v1/serviceaccounts", "edge"),
            ("rbac.authorization.k8s.io/v1/roles", "edge"),
            ("rbac.authorization.k8s.io/v1/rolebindings", "edge"),
            ("/v1/services", "edge"),
            (DEPLOYMENTS, "edge"),
            ("policy/v1/poddisruptionbudgets", "edge"),
        ] {
            let obj = eventually(name, Duration::from_secs(5), || api.get(resource, NS, name)).await;
            assert_eq!(obj["metadata"]["ownerReferences"][0]["name"], "edge", "{resource}");
        }

        // Statuses: the workflow is accepted and served; the gateway waits for its pods.
        eventually("the workflow status", Duration::from_secs(5), || {
            let wf = api.get(WORKFLOWS, NS, "create-repo")?;
            (condition(&wf, "Accepted")?.0 == "True" && wf["status"]["gateways"] == json!(["tools/edge"]))
                .then_some(())
        })
        .await;
        assert!(api.get(WORKFLOWS, "other", "elsewhere").unwrap().get("status").is_none());
        eventually("the gateway status", Duration::from_secs(5), || {
            let gw = api.get(GATEWAYS, NS, "edge")?;
            let ready = condition(&gw, "Ready")?;
            (condition(&gw, "Accepted")?.0 == "True" && ready.1 == "Progressing").then_some(())
        })
        .await;

        // The Deployment controller reports the pods ready: the owned Deployment triggers a reconcile.
        api.set_status(
            DEPLOYMENTS,
            NS,
            "edge",
            json!({"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
                   "availableReplicas": 1}),
        );
        eventually("Ready", Duration::from_secs(5), || {
            let gw = api.get(GATEWAYS, NS, "edge")?;
            (condition(&gw, "Ready")?.0 == "True" && gw["status"]["ready_replicas"] == 1).then_some(())
        })
        .await;
        eventually("the Ready event", Duration::from_secs(5), || {
            api.list(EVENTS)
                .iter()
                .any(|e| e["reason"] == "Ready" && e["regarding"]["name"] == "edge")
                .then_some(())
        })
        .await;

        // Nothing changes any more: nothing is written (a status write that changes nothing would loop).
        assert_quiescent(&api).await;

        // Every ConfigMap of the cluster is listed and watched by its metadata only (as kube
        // watches owned objects); only the documents a workflow names are read whole.
        let all_config_maps: Vec<_> = api
            .log()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path == "/api/v1/configmaps")
            .filter(|r| !r.query.contains("labelSelector"))
            .collect();
        assert!(all_config_maps.iter().any(|r| r.query.contains("watch=true")));
        assert!(all_config_maps.iter().any(|r| !r.query.contains("watch=true")));
        for request in &all_config_maps {
            assert!(request.metadata_only, "{request:?}");
        }

        // An owned object deleted by hand is restored by the reconcile its deletion triggers, not
        // at the next resync ten minutes later.
        let deleted = kube::api::DeleteParams::default();
        kube::Api::<k8s_openapi::api::core::v1::Service>::namespaced(api.client(), NS)
            .delete("edge", &deleted)
            .await
            .unwrap();
        kube::Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(api.client(), NS)
            .delete("edge", &deleted)
            .await
            .unwrap();
        for resource in ["/v1/services", "rbac.authorization.k8s.io/v1/rolebindings"] {
            eventually(resource, Duration::from_secs(5), || api.get(resource, NS, "edge")).await;
        }
        assert_quiescent(&api).await;

        // A reconcile that finds nothing changed applies (idempotently) but writes no status and
        // publishes no event.
        let reconciles = ctx.metrics.reconciles();
        let seen = api.log().len();
        let mut gw = api.get(GATEWAYS, NS, "edge").unwrap();
        gw["metadata"]["annotations"] = json!({"example.com/touched": "yes"});
        api.put(GATEWAYS, gw);
        eventually("a reconcile", Duration::from_secs(5), || {
            (ctx.metrics.reconciles() > reconciles).then_some(())
        })
        .await;
        settled(&api, Duration::from_millis(300)).await;
        let writes: Vec<String> = api.log()[seen..]
            .iter()
            .filter(|r| r.path.ends_with("/status") || r.method == "POST")
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        assert!(writes.is_empty(), "status writes or events for no change: {writes:#?}");

        // An edit is served within a second.
        let mut wf = api.get(WORKFLOWS, NS, "create-repo").unwrap();
        wf["spec"]["description"] = json!("v2");
        let edited = Instant::now();
        api.put(WORKFLOWS, wf);
        eventually("the edited snapshot", Duration::from_secs(1), || {
            served_snapshot(&api)?
                .workflows
                .iter()
                .any(|w| w.description == "v2")
                .then_some(())
        })
        .await;
        let propagation = edited.elapsed();
        assert!(propagation < Duration::from_secs(1), "{propagation:?}");

        // An invalid workflow: its status says why, and the last good snapshot keeps serving.
        api.put(WORKFLOWS, workflow("broken", "x", "deleteRepo"));
        let message = eventually("the rejection", Duration::from_secs(5), || {
            let wf = api.get(WORKFLOWS, NS, "broken")?;
            let (status, reason, message) = condition(&wf, "Accepted")?;
            (status == "False" && reason == "Invalid").then_some(message)
        })
        .await;
        assert_eq!(
            message,
            "spec.steps[0].operation_id: operationId \"deleteRepo\" is not defined in the OpenAPI document"
        );
        eventually("the rejection event", Duration::from_secs(5), || {
            api.list(EVENTS)
                .iter()
                .any(|e| e["reason"] == "Rejected" && e["regarding"]["name"] == "broken" && e["type"] == "Warning")
                .then_some(())
        })
        .await;
        let snapshot = served_snapshot(&api).unwrap();
        let tools: Vec<_> = snapshot.workflows.iter().map(|w| (w.tool_name.as_str(), w.description.as_str())).collect();
        assert_eq!(tools, [("create-repo", "v2")]);
        let gw = api.get(GATEWAYS, NS, "edge").unwrap();
        assert_eq!(gw["status"]["workflows"], 1);
        assert!(condition(&gw, "Accepted").unwrap().2.ends_with("1 selected resources rejected"));

        assert_quiescent(&api).await;
        assert!(ctx.metrics.reconciles() >= 3);
        assert_eq!(ctx.metrics.errors(), 0);

        // Graceful shutdown.
        running.stop().await;
    })
    .await
    .expect("the test timed out");
}

/// Two gateways judge one workflow differently: `ops/all` selects every namespace and finds its
/// tool name already defined by an older workflow elsewhere; `tools/edge` selects only its own
/// namespace and serves it. Each writes its own verdict once, and then neither writes again (when
/// both wrote one shared condition, each write made the other rewrite it, for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_that_judge_a_workflow_differently_settle() {
    timeout(Duration::from_secs(60), async {
        let api = FakeApi::start().await;
        for (ns, name, spec) in [
            (
                "ops",
                "all",
                json!({"resource_selector": {"namespaces": "All",
                    "namespace_tenants": {"other": "acme", NS: "acme"}}}),
            ),
            (NS, "edge", json!({})),
        ] {
            api.put(
                GATEWAYS,
                json!({"apiVersion": "seal.100monkeys.ai/v1", "kind": "SealGateway",
                       "metadata": {"name": name, "namespace": ns}, "spec": spec}),
            );
        }
        // Same tool name; the one in `other` comes first (same age, then namespace order).
        let mut first = workflow("create-repo", "v1", "createRepo");
        first["metadata"]["namespace"] = json!("other");
        first["spec"]["tenant_id"] = json!("acme");
        api.put(WORKFLOWS, first);
        let mut second = workflow("create-repo", "v1", "createRepo");
        second["spec"]["tenant_id"] = json!("acme");
        api.put(WORKFLOWS, second);

        let running = Running::start(&api, None);

        let status = eventually("both verdicts", Duration::from_secs(15), || {
            let wf = api.get(WORKFLOWS, NS, "create-repo")?;
            (wf["status"]["acceptance"].as_array()?.len() == 2).then(|| wf["status"].clone())
        })
        .await;
        assert_quiescent(&api).await;

        assert_eq!(status["gateways"], json!(["tools/edge"]));
        let all = &status["acceptance"][0];
        assert_eq!(
            (&all["gateway"], &all["accepted"]),
            (&json!("ops/all"), &json!(false))
        );
        assert_eq!(
            status["acceptance"][1],
            json!({"gateway": "tools/edge", "accepted": true, "observedGeneration": 1})
        );
        let wf = api.get(WORKFLOWS, NS, "create-repo").unwrap();
        let (accepted, reason, message) = condition(&wf, "Accepted").unwrap();
        assert_eq!((accepted.as_str(), reason.as_str()), ("False", "Invalid"));
        assert_eq!(
            message,
            "ops/all: spec.tool_name: tool \"create-repo\" is already defined in tenant \"acme\" \
             by Workflow other/create-repo; served by tools/edge"
        );
        // The older one is served by `ops/all`, the only gateway selecting it.
        let other = api.get(WORKFLOWS, "other", "create-repo").unwrap();
        assert_eq!(other["status"]["gateways"], json!(["ops/all"]));
        assert_eq!(condition(&other, "Accepted").unwrap().0, "True");

        // `ops/all` is deleted: its entries leave both workflows' statuses at once (not at the
        // periodic resync), so the shared one is accepted and the other is judged by nobody.
        kube::Api::<aegis_seal_crds::SealGateway>::namespaced(api.client(), "ops")
            .delete("all", &Default::default())
            .await
            .unwrap();
        eventually(
            "the deleted gateway's entry dropped",
            Duration::from_secs(5),
            || {
                let wf = api.get(WORKFLOWS, NS, "create-repo")?;
                (wf["status"]["acceptance"].as_array()?.len() == 1
                    && condition(&wf, "Accepted")?.0 == "True")
                    .then_some(())
            },
        )
        .await;
        let other = api.get(WORKFLOWS, "other", "create-repo").unwrap();
        assert!(
            other["status"].get("acceptance").is_none()
                && other["status"].get("gateways").is_none(),
            "{}",
            other["status"]
        );
        assert!(
            condition(&other, "Accepted").is_none(),
            "{}",
            other["status"]
        );
        assert_quiescent(&api).await;

        running.stop().await;
    })
    .await
    .expect("the test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_spec_keeps_the_running_objects() {
    timeout(Duration::from_secs(60), async {
        let api = FakeApi::start().await;
        api.put(
            GATEWAYS,
            json!({"apiVersion": "seal.100monkeys.ai/v1", "kind": "SealGateway",
                   "metadata": {"name": "edge", "namespace": NS}, "spec": {"replicas": 1}}),
        );
        let running = Running::start(&api, None);
        let deployment = eventually("the Deployment", Duration::from_secs(15), || {
            api.get(DEPLOYMENTS, NS, "edge")
        })
        .await;

        let mut gw = api.get(GATEWAYS, NS, "edge").unwrap();
        gw["spec"]["replicas"] = json!(3);
        api.put(GATEWAYS, gw);
        let (_, reason, message) = eventually("the refusal", Duration::from_secs(5), || {
            let gw = api.get(GATEWAYS, NS, "edge")?;
            condition(&gw, "Accepted").filter(|c| c.0 == "False")
        })
        .await;
        assert_eq!(reason, "ReplicasRequirePostgres");
        assert!(message.contains("SQLite"), "{message}");
        let gw = api.get(GATEWAYS, NS, "edge").unwrap();
        assert_eq!(
            gw["status"]["observedGeneration"],
            gw["metadata"]["generation"]
        );
        assert_eq!(
            api.get(DEPLOYMENTS, NS, "edge").unwrap(),
            deployment,
            "the running Deployment is untouched"
        );

        running.stop().await;
    })
    .await
    .expect("the test timed out");
}

#[tokio::test]
async fn one_leader_at_a_time_and_a_released_lease_is_taken_at_once() {
    timeout(Duration::from_secs(30), async {
        let api = FakeApi::start().await;
        let lock = |who: &str| {
            LeaseLock::new(
                kube::Api::namespaced(api.client(), "ops"),
                "aegis-seal-operator",
                who,
                Duration::from_secs(15),
            )
        };
        let (a, b) = (lock("pod-a"), lock("pod-b"));
        let now = Timestamp::now();
        assert_eq!(a.try_acquire_or_renew(now).await.unwrap(), Attempt::Held);
        assert_eq!(
            b.try_acquire_or_renew(now).await.unwrap(),
            Attempt::HeldBy("pod-a".into())
        );
        assert_eq!(
            a.try_acquire_or_renew(now).await.unwrap(),
            Attempt::Held,
            "renewal"
        );

        // pod-a stops renewing: once pod-b has read the Lease unchanged for its duration, on
        // pod-b's monotonic clock, pod-b takes over. That clock is jumped rather than waited out,
        // between requests so that none is in flight.
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(15)).await;
        tokio::time::resume();
        let later = now + SignedDuration::from_secs(16);
        assert_eq!(b.try_acquire_or_renew(later).await.unwrap(), Attempt::Held);
        assert_eq!(
            a.try_acquire_or_renew(later).await.unwrap(),
            Attempt::HeldBy("pod-b".into())
        );
        let lease = api
            .get(
                "coordination.k8s.io/v1/leases",
                "ops",
                "aegis-seal-operator",
            )
            .unwrap();
        assert_eq!(lease["spec"]["leaseTransitions"], 1);

        // pod-b shuts down and releases: pod-a takes over without waiting for expiry.
        b.release(later).await.unwrap();
        assert_eq!(a.try_acquire_or_renew(later).await.unwrap(), Attempt::Held);
    })
    .await
    .expect("the test timed out");
}

/// A workflow reads its OpenAPI document from a ConfigMap. Editing that ConfigMap, which the
/// operator watches by its metadata only, triggers the reconcile that reads the new document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_workflows_openapi_config_map_reconciles_its_gateway() {
    timeout(Duration::from_secs(60), async {
        let api = FakeApi::start().await;
        api.put(
            GATEWAYS,
            json!({"apiVersion": "seal.100monkeys.ai/v1", "kind": "SealGateway",
                   "metadata": {"name": "edge", "namespace": NS}, "spec": {}}),
        );
        let document = |operation: &str| {
            json!({"openapi": "3.0.0", "info": {"title": "t", "version": "1"},
                   "paths": {"/repos": {"post": {"operationId": operation}}}})
            .to_string()
        };
        let config_map = |operation: &str| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "repos-openapi", "namespace": NS},
                   "data": {"openapi.json": document(operation)}})
        };
        api.put(CONFIG_MAPS, config_map("somethingElse"));
        let mut wf = workflow("create-repo", "v1", "createRepo");
        wf["spec"]["api_spec"]["openapi"] =
            json!({"config_map_ref": {"name": "repos-openapi", "key": "openapi.json"}});
        api.put(WORKFLOWS, wf);

        let running = Running::start(&api, None);
        let refused = eventually("the workflow refused", Duration::from_secs(15), || {
            let wf = api.get(WORKFLOWS, NS, "create-repo")?;
            condition(&wf, "Accepted").filter(|c| c.0 == "False")
        })
        .await;
        assert!(refused.2.contains("createRepo"), "{refused:?}");

        // Fixed in the ConfigMap alone: nothing else changes.
        api.put(CONFIG_MAPS, config_map("createRepo"));
        eventually("the workflow served", Duration::from_secs(15), || {
            let wf = api.get(WORKFLOWS, NS, "create-repo")?;
            (condition(&wf, "Accepted")?.0 == "True").then_some(())
        })
        .await;
        let tools: Vec<String> = served_snapshot(&api)
            .unwrap()
            .workflows
            .iter()
            .map(|w| w.tool_name.clone())
            .collect();
        assert_eq!(tools, ["create-repo"]);
        running.stop().await;
    })
    .await
    .expect("the test timed out");
}
