//! Issue 5 end to end: custom resources applied to the (fake) API server -> the real operator
//! controller writes the gateway's ConfigMap -> a data-plane process started from that ConfigMap,
//! as the Deployment starts it, serves a signed invocation -> an edited Workflow is served within a
//! second -> an invalid Workflow is refused in its status and the previous version keeps serving
//! -> a ConfigMap that does not hold a valid snapshot is refused by the data plane, which keeps
//! serving. Every wait is bounded.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_seal_crds::snapshot_shards::INDEX_KEY;
use aegis_seal_operator::controller;
use aegis_seal_operator::reconcile::Context;
use aegis_seal_tests::fake_api::FakeApi;
use serde_json::{Value, json};
use support::{DataPlane, Signer, eventually, version_of};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const GATEWAYS: &str = "seal.100monkeys.ai/v1/sealgateways";
const WORKFLOWS: &str = "seal.100monkeys.ai/v1/workflows";
const CONTEXTS: &str = "seal.100monkeys.ai/v1/securitycontexts";
const CONFIG_MAPS: &str = "/v1/configmaps";
const NS: &str = "tools";
const CONFIG_MAP: &str = "edge-config";
const SNAPSHOT_HASH: &str = "seal.100monkeys.ai/snapshot-hash";

fn accepted(obj: &Value) -> Option<(String, String, String)> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Accepted")
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (s("status"), s("reason"), s("message"))
        })
}

/// The snapshot hash of the ConfigMap the operator wrote, once it differs from `old`.
fn written_hash(api: &FakeApi, old: Option<&str>) -> Option<String> {
    let cm = api.get(CONFIG_MAPS, NS, CONFIG_MAP)?;
    let hash = cm["metadata"]["annotations"][SNAPSHOT_HASH].as_str()?;
    (Some(hash) != old).then(|| hash.to_owned())
}

/// The operator's controller, as in its own process; the sender stops it.
fn start_operator(api: &FakeApi) -> (JoinHandle<()>, oneshot::Sender<()>) {
    let client = api.client();
    let ctx = Arc::new(Context::new(
        client.clone(),
        "registry.local/seal-gateway:test",
        None,
        Arc::default(),
    ));
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(controller::run(client, ctx, async move {
        let _ = stopped.await;
    }));
    (running, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_become_a_hot_reloaded_data_plane() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let api = FakeApi::start().await;
        let upstream = support::upstream().await;
        let signer = Signer::from_vectors("e2e-agents");
        api.put(
            GATEWAYS,
            json!({"apiVersion": "seal.100monkeys.ai/v1", "kind": "SealGateway",
                   "metadata": {"name": "edge", "namespace": NS},
                   "spec": {"auth": {"disabled": true,
                                     "seal_jwt_public_key_pem": signer.rs256_public_key_pem,
                                     "seal_jwt_issuer": signer.issuer,
                                     "seal_jwt_audience": signer.audience}}}),
        );
        api.put(
            CONTEXTS,
            json!({"apiVersion": "seal.100monkeys.ai/v1", "kind": "SecurityContext",
                   "metadata": {"name": "e2e-agents", "namespace": NS},
                   "spec": {"capabilities": [{"tool_pattern": "*"}]}}),
        );
        api.put(WORKFLOWS, support::workflow(NS, "create-repo", "v1", upstream));

        let (operator, stop_operator) = start_operator(&api);

        // It writes the ConfigMap; the data plane starts from it as the Deployment would.
        let first = eventually("the ConfigMap", Duration::from_secs(15), || written_hash(&api, None)).await;
        let cm = api.get(CONFIG_MAPS, NS, CONFIG_MAP).unwrap();
        // The operator applies the ConfigMap before the Deployment: wait for both.
        let deployment = eventually("the Deployment", Duration::from_secs(15), || {
            api.get("apps/v1/deployments", NS, "edge")
        })
        .await;
        let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
        assert!(
            env.as_array().unwrap().iter().any(|e| e["name"] == "SEAL_GATEWAY_CONFIGMAP" && e["value"] == "tools/edge-config"),
            "{env}"
        );
        let mut data_plane = DataPlane::start(
            &api.kubeconfig(),
            "tools/edge-config",
            cm["data"]["seal-gateway-config.yaml"].as_str().unwrap(),
        );
        let ready = data_plane.wait_ready().await;
        assert_eq!(ready["snapshot_hash"], first, "the data plane serves the operator's snapshot");
        assert_eq!((ready["workflows"].as_u64(), ready["security_contexts"].as_u64()), (Some(1), Some(1)));

        // A signed invocation succeeds.
        data_plane.register_session(&signer).await;
        let (status, body) = data_plane.invoke(&signer, "create-repo", "jti-1").await;
        assert_eq!((status, version_of(&body)), (200, "v1"), "{body}");

        // The data plane watches only its own ConfigMap, by name, as its Role allows.
        let watches: Vec<String> = api
            .log()
            .iter()
            .filter(|r| r.path.ends_with("/configmaps") && r.query.contains("watch=true"))
            .map(|r| format!("{}?{}", r.path, r.query))
            .collect();
        assert!(
            watches.iter().any(|w| w.starts_with("/api/v1/namespaces/tools/configmaps?")
                && w.contains("fieldSelector=metadata.name%3Dedge-config")),
            "{watches:#?}"
        );

        // An edit is served within a second of reaching the API server.
        let mut wf = api.get(WORKFLOWS, NS, "create-repo").unwrap();
        wf["spec"] = support::workflow(NS, "create-repo", "v2", upstream)["spec"].clone();
        let edited = Instant::now();
        api.put(WORKFLOWS, wf);
        let second = eventually("the edited ConfigMap", Duration::from_secs(5), || written_hash(&api, Some(&first))).await;
        let latency = data_plane.serves(&second, edited).await;
        assert!(latency < Duration::from_secs(1), "served {latency:?} after the edit");
        let (status, body) = data_plane.invoke(&signer, "create-repo", "jti-2").await;
        assert_eq!((status, version_of(&body)), (200, "v2"), "{body}");

        // An invalid Workflow: its status says why, and the previous version keeps serving.
        api.put(WORKFLOWS, json!({
            "apiVersion": "seal.100monkeys.ai/v1", "kind": "Workflow",
            "metadata": {"name": "broken", "namespace": NS},
            "spec": {"api_spec": {"base_url": format!("http://{upstream}"),
                                  "openapi": {"inline": {"openapi": "3.0.0", "paths": {"/v3": {"post": {"operationId": "call"}}}}}},
                     "steps": [{"name": "call", "operation_id": "deleteRepo"}]}
        }));
        let message = eventually("the rejection", Duration::from_secs(5), || {
            let wf = api.get(WORKFLOWS, NS, "broken")?;
            let (status, reason, message) = accepted(&wf)?;
            (status == "False" && reason == "Invalid").then_some(message)
        })
        .await;
        assert_eq!(
            message,
            "spec.steps[0].operation_id: operationId \"deleteRepo\" is not defined in the OpenAPI document"
        );
        assert_eq!(written_hash(&api, None).as_deref(), Some(second.as_str()));
        assert_eq!(data_plane.hash().await, second);
        let (status, body) = data_plane.invoke(&signer, "create-repo", "jti-3").await;
        assert_eq!((status, version_of(&body)), (200, "v2"), "{body}");
        let (status, _) = data_plane.invoke(&signer, "broken", "jti-4").await;
        assert_ne!(status, 200);

        // With the operator stopped, a ConfigMap that does not hold a valid snapshot (here: a
        // damaged index) is refused by the data plane, which keeps serving.
        stop_operator.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), operator)
            .await
            .expect("the operator did not stop")
            .unwrap();
        let mut damaged = api.get(CONFIG_MAPS, NS, CONFIG_MAP).unwrap();
        damaged["data"][INDEX_KEY] = json!("{\"format\": ");
        api.put(CONFIG_MAPS, damaged);
        let refusal = data_plane.wait_for_log("configuration change refused").await;
        assert!(refusal.contains(" WARN "), "{refusal}");
        assert!(
            refusal.contains("ConfigMap tools/edge-config: snapshot index is not valid JSON"),
            "{refusal}"
        );
        assert_eq!(data_plane.hash().await, second);
        let (status, body) = data_plane.invoke(&signer, "create-repo", "jti-5").await;
        assert_eq!((status, version_of(&body)), (200, "v2"), "{body}");

        // The operator, back, puts its ConfigMap back; the data plane has nothing to change.
        let (operator, stop_operator) = start_operator(&api);
        eventually("the operator to restore the ConfigMap", Duration::from_secs(15), || {
            let cm = api.get(CONFIG_MAPS, NS, CONFIG_MAP)?;
            cm["data"][INDEX_KEY].as_str()?.contains("snapshot_hash").then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(data_plane.hash().await, second);
        let (status, body) = data_plane.invoke(&signer, "create-repo", "jti-6").await;
        assert_eq!((status, version_of(&body)), (200, "v2"), "{body}");

        let (clean, logs) = data_plane.stop();
        assert!(clean, "{logs}");
        assert!(logs.contains("snapshot ConfigMap watch stopped"), "{logs}");
        assert_eq!(logs.matches("configuration change refused").count(), 1, "{logs}");
        assert_eq!(logs.matches("configuration change served").count(), 1, "{logs}");
        println!("operator -> API -> data plane: the edit was served after {latency:?}");

        stop_operator.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), operator)
            .await
            .expect("the operator did not stop")
            .unwrap();
    })
    .await
    .expect("the test timed out");
}
