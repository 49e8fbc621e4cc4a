//! The data plane's ConfigMap watch, against the fake API server, for a snapshot spread over
//! several ConfigMaps as the operator spreads large ones: read at start, followed as the set of
//! ConfigMaps changes, a damaged shard refused until it is repaired, and only the ConfigMaps the
//! gateway's Role names ever requested, each by name. Every wait is bounded.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aegis_seal_crds::snapshot_shards::{INDEX_KEY, encode, shard_key};
use aegis_seal_crds::{Resources, Snapshot, compile, parse_manifests};
use aegis_seal_tests::fake_api::FakeApi;
use base64::Engine;
use serde_json::{Value, json};
use support::DataPlane;

const CONFIG_MAPS: &str = "/v1/configmaps";
const NS: &str = "tools";
/// Small shards, so that even a small snapshot spans several ConfigMaps.
const SHARD_BYTES: usize = 200;

/// A snapshot with a tenant-less SecurityContext (so the data plane adds no default ones and
/// serves exactly this hash) and `workflows` workflows.
fn snapshot(workflows: usize, version: &str) -> Snapshot {
    let mut text = String::from(
        "apiVersion: seal.100monkeys.ai/v1\nkind: SecurityContext\nmetadata: {name: agents, namespace: tools}\nspec: {capabilities: [{tool_pattern: '*'}]}\n",
    );
    for i in 0..workflows {
        text.push_str(&format!(
            "---\napiVersion: seal.100monkeys.ai/v1\nkind: Workflow\nmetadata: {{name: tool-{i}-{version}, namespace: tools}}\nspec:\n  description: 'workflow {i}, {version}'\n  api_spec:\n    base_url: http://127.0.0.1:9\n    openapi: {{inline: {{openapi: 3.0.0, paths: {{/op{i}: {{post: {{operationId: op{i}}}}}}}}}}}\n  steps: [{{name: call, operation_id: op{i}}}]\n"
        ));
    }
    let mut resources = Resources::default();
    parse_manifests(&text, &mut resources).unwrap();
    let compiled = compile(&resources);
    assert!(
        compiled.rejected().next().is_none(),
        "{:?}",
        compiled.results
    );
    compiled.snapshot
}

fn config_map(name: &str, data: Option<Value>, shards: &[(usize, &[u8])]) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let binary: serde_json::Map<String, Value> = shards
        .iter()
        .map(|(i, bytes)| (shard_key(*i), json!(b64.encode(bytes))))
        .collect();
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": name, "namespace": NS},
                        "binaryData": binary});
    if let Some(data) = data {
        cm["data"] = data;
    }
    cm
}

/// The ConfigMaps the operator would write: the main one (`edge-config`: index and shard 0) and
/// `edge-snapshot-<i>` for shard i.
fn config_maps(snapshot: &Snapshot) -> (Value, Vec<Value>) {
    let encoded = encode(snapshot, SHARD_BYTES).unwrap();
    let names: Vec<String> = (0..encoded.shards.len())
        .map(|i| match i {
            0 => "edge-config".to_owned(),
            i => format!("edge-snapshot-{i}"),
        })
        .collect();
    let index = serde_json::to_string(&encoded.index(&names)).unwrap();
    let main = config_map(
        "edge-config",
        Some(json!({"seal-gateway-config.yaml": "", INDEX_KEY: index})),
        &[(0, encoded.shards[0].as_slice())],
    );
    let further = (1..encoded.shards.len())
        .map(|i| config_map(&names[i], None, &[(i, encoded.shards[i].as_slice())]))
        .collect();
    (main, further)
}

const CONFIG: &str = "apiVersion: seal.100monkeys.ai/v1\nkind: SealGatewayConfig\nmetadata: {name: edge}\nspec: {auth: {disabled: true}}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_spread_over_config_maps_is_followed_and_a_damaged_one_refused() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let api = FakeApi::start().await;
        let mut names = BTreeSet::new();
        let mut publish = |api: &FakeApi, main: &Value, further: &[Value]| {
            for cm in further.iter().chain([main]) {
                names.insert(cm["metadata"]["name"].as_str().unwrap().to_owned());
                api.put(CONFIG_MAPS, cm.clone());
            }
        };

        let v1 = snapshot(1, "v1");
        let (main, further) = config_maps(&v1);
        assert!(!further.is_empty(), "the snapshot spans several ConfigMaps");
        publish(&api, &main, &further);
        let mut data_plane = DataPlane::start(&api.kubeconfig(), "tools/edge-config", CONFIG);
        let ready = data_plane.wait_ready().await;
        assert_eq!(ready["snapshot_hash"], v1.hash());

        // More workflows, more ConfigMaps: written before the main one, as the operator does.
        let v2 = snapshot(6, "v2");
        let (main, further_v2) = config_maps(&v2);
        assert!(further_v2.len() > further.len(), "new ConfigMaps appear");
        let published = Instant::now();
        publish(&api, &main, &further_v2);
        let latency = data_plane.serves(&v2.hash(), published).await;
        assert!(latency < Duration::from_secs(1), "served after {latency:?}");
        assert_eq!(data_plane.ready().await.unwrap()["workflows"], 6);

        // A damaged shard (same size, other bytes): refused, the last good snapshot serves on...
        let v3 = snapshot(4, "v3");
        let (main, mut further_v3) = config_maps(&v3);
        let good = further_v3[0].clone();
        let key = shard_key(1);
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut bytes = b64.decode(good["binaryData"][&key].as_str().unwrap()).unwrap();
        bytes[0] ^= 0xff;
        further_v3[0]["binaryData"][&key] = json!(b64.encode(&bytes));
        publish(&api, &main, &further_v3);
        let refusal = data_plane.wait_for_log("configuration change refused").await;
        assert!(
            refusal.contains("ConfigMap tools/edge-config: compressed snapshot digest"),
            "{refusal}"
        );
        assert_eq!(data_plane.hash().await, v2.hash());

        // ...until the shard is repaired: the watch of that ConfigMap brings it.
        let repaired = Instant::now();
        api.put(CONFIG_MAPS, good);
        let latency_repair = data_plane.serves(&v3.hash(), repaired).await;
        assert!(latency_repair < Duration::from_secs(1), "{latency_repair:?}");

        // Written out of order (the index first), it is served once the shards arrive.
        let v4 = snapshot(2, "v4");
        let (main, further_v4) = config_maps(&v4);
        api.put(CONFIG_MAPS, main.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let completed = Instant::now();
        publish(&api, &main, &further_v4);
        let latency_late = data_plane.serves(&v4.hash(), completed).await;
        assert!(latency_late < Duration::from_secs(1), "{latency_late:?}");

        let (clean, logs) = data_plane.stop();
        assert!(clean, "{logs}");

        // Only the gateway's own ConfigMaps, each by name: what its Role (resourceNames) allows.
        for request in api.log() {
            let by_name = request
                .path
                .strip_prefix("/api/v1/namespaces/tools/configmaps/")
                .map(str::to_owned);
            let selected = (request.path == "/api/v1/namespaces/tools/configmaps")
                .then(|| {
                    request
                        .query
                        .split('&')
                        .find_map(|p| p.strip_prefix("fieldSelector=metadata.name%3D"))
                        .map(str::to_owned)
                })
                .flatten();
            let name = by_name.or(selected);
            assert_eq!(request.method, "GET", "{request:?}");
            assert!(
                name.as_ref().is_some_and(|n| names.contains(n)),
                "a request the Role would refuse: {request:?}"
            );
        }
        println!(
            "ConfigMap -> data plane: {latency:?} (in order), {latency_repair:?} (repaired shard), {latency_late:?} (shards after the index)"
        );
    })
    .await
    .expect("the test timed out");
}

/// A pod that starts while the operator is still writing the snapshot's further ConfigMaps (or
/// replacing them) reads again until they are there, instead of exiting into a crash loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_starting_before_its_shards_are_written_waits_for_them() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let api = FakeApi::start().await;
        let v1 = snapshot(2, "v1");
        let (main, further) = config_maps(&v1);
        assert!(!further.is_empty(), "the snapshot spans several ConfigMaps");
        api.put(CONFIG_MAPS, main);
        let mut data_plane = DataPlane::start(&api.kubeconfig(), "tools/edge-config", CONFIG);
        let retry = data_plane
            .wait_for_log("cannot read the snapshot yet; reading it again")
            .await;
        assert!(retry.contains("edge-snapshot-1"), "{retry}");
        for cm in further {
            api.put(CONFIG_MAPS, cm);
        }
        let ready = data_plane.wait_ready().await;
        assert_eq!(ready["snapshot_hash"], v1.hash());
        let (clean, logs) = data_plane.stop();
        assert!(clean, "{logs}");
    })
    .await
    .expect("the test timed out");
}
