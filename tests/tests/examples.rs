//! Every example the README points at loads and compiles with the code that serves it.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use aegis_seal_crds::Resources;
use aegis_seal_crds::manifest::parse_manifests;
use aegis_seal_gateway::infrastructure::config::{ConfigSources, load_config, load_manifests};
use aegis_seal_operator::controller;
use aegis_seal_operator::reconcile::Context;
use aegis_seal_tests::fake_api::FakeApi;
use serde_json::{Value, json};
use support::{DataPlane, Signer, eventually, free_port};
use tokio::sync::oneshot;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn quickstart_manifests_compile_into_the_quickstart_tools() {
    let compiled = load_manifests(&examples().join("quickstart/manifests")).unwrap();
    assert!(compiled.rejected().next().is_none());
    let s = &compiled.snapshot;
    let names: Vec<_> = s
        .workflows
        .iter()
        .map(|w| w.tool_name.as_str())
        .chain(s.cli_tools.iter().map(|t| t.tool_name.as_str()))
        .chain(s.security_contexts.iter().map(|c| c.name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            "create_repository_with_teams",
            "busybox",
            "quickstart-agents"
        ]
    );
    let workflow = &s.workflows[0];
    assert_eq!(workflow.steps.len(), 3);
    assert_eq!(workflow.operations["addTeam"].method, "POST");
    assert_eq!(
        workflow.operations["addTeam"].path,
        "/repos/{repo_id}/teams"
    );
}

#[test]
fn quickstart_config_loads() {
    let path = examples().join("quickstart/seal-gateway-config.yaml");
    let home = tempfile::tempdir().unwrap();
    let config = load_config(&ConfigSources {
        explicit: Some(Path::new(&path)),
        env: &|_| None,
        home: Some(home.path().to_path_buf()),
        working_dir: home.path().to_path_buf(),
    })
    .unwrap();
    assert_eq!(config.metadata.name, "quickstart");
    assert_eq!(
        config.database_url(),
        "sqlite://target/quickstart/gateway.db"
    );
    assert!(config.settings.auth.disabled);
}

#[test]
fn every_example_manifest_folder_compiles() {
    let mut folders = Vec::new();
    find_manifest_folders(&examples(), &mut folders);
    assert!(!folders.is_empty());
    for folder in folders {
        load_manifests(&folder).unwrap_or_else(|e| panic!("{e}"));
    }
}

fn find_manifest_folders(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "manifests") {
                out.push(path);
            } else {
                find_manifest_folders(&path, out);
            }
        }
    }
}

fn kubernetes_example(path: &str) -> PathBuf {
    examples().join("kubernetes").join(path)
}

#[test]
fn kubernetes_walkthrough_resources_compile_and_are_accepted() {
    let compiled = load_manifests(&kubernetes_example("manifests")).unwrap();
    let rejected: Vec<_> = compiled.rejected().collect();
    assert!(rejected.is_empty(), "{rejected:?}");
    let s = &compiled.snapshot;
    let workflow = &s.workflows[0];
    assert_eq!(
        (
            s.workflows.len(),
            s.cli_tools.len(),
            s.security_contexts.len()
        ),
        (1, 1, 1)
    );
    // The names `cargo run --example quickstart -- call` signs for (README step 6).
    assert_eq!(workflow.tool_name, "create_repository_with_teams");
    assert_eq!(s.security_contexts[0].name, "quickstart-agents");
    assert_eq!(s.cli_tools[0].tool_name, "busybox");
    assert_eq!(workflow.steps.len(), 3);
    // The Service of upstream/repository-api.yaml, resolved in the gateway's namespace.
    assert_eq!(workflow.base_url, "http://repository-api:8090");
}

/// The documents of a manifest file, as JSON.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.split("\n---\n")
        .map(|doc| serde_yaml::from_str(doc).unwrap())
        .collect()
}

/// The walk-through's upstream (upstream/repository-api.yaml): the Python server its ConfigMap
/// holds, run as its Deployment runs it, on a free local port. Killed when dropped.
struct RepositoryApi {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RepositoryApi {
    async fn start() -> Self {
        let docs = yaml_documents(&kubernetes_example("upstream/repository-api.yaml"));
        let server = docs[0]["data"]["server.py"].as_str().expect("server.py");
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let command = &deployment["spec"]["template"]["spec"]["containers"][0]["command"];
        assert_eq!(command, &json!(["python3", "/app/server.py"]));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.py"), server).unwrap();
        let port = free_port();
        let child = Command::new("python3")
            .arg(dir.path().join("server.py"))
            .env("BIND", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .spawn()
            .expect("python3 runs the walk-through's upstream");
        let api = Self {
            child,
            port,
            _dir: dir,
        };
        let url = format!("http://127.0.0.1:{port}/healthz");
        eventually("the repository API", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .await;
        assert_eq!(reqwest::get(url).await.unwrap().status(), 200);
        api
    }
}

impl Drop for RepositoryApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn accepted(api: &FakeApi, resource: &str, name: &str) -> Option<String> {
    let obj = api.get(resource, NAMESPACE, name)?;
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Accepted")
        .and_then(|c| c["status"].as_str().map(str::to_owned))
}

const NAMESPACE: &str = "aegis-seal";

/// The walk-through, with the fake API server for the cluster: the chart's quickstart SealGateway
/// and the example resources, applied as `kubectl -n aegis-seal apply -f` would; the real operator
/// controller accepts them and writes the data plane's ConfigMap; the data plane, started from it
/// as the Deployment starts it, runs the signed three-step workflow against the example's upstream
/// server. Only the Workflow's base_url differs: `repository-api:8090` is a cluster Service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_walkthrough_serves_a_signed_call() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let api = FakeApi::start().await;
        let upstream = RepositoryApi::start().await;
        let signer = Signer::from_vectors("quickstart-agents");
        // What `helm install` renders for the quickstart preset (scripts/check-chart.sh checks
        // the chart's side), with the agents' token issuer of the test vectors.
        api.put(
            "seal.100monkeys.ai/v1/sealgateways",
            json!({"apiVersion": "seal.100monkeys.ai/v1", "kind": "SealGateway",
                   "metadata": {"name": "seal-gateway", "namespace": NAMESPACE},
                   "spec": {"replicas": 1, "database": {"url": "sqlite://gateway.db"},
                            "resource_selector": {"namespaces": "Same"},
                            "auth": {"disabled": true,
                                     "seal_jwt_public_key_pem": signer.rs256_public_key_pem,
                                     "seal_jwt_issuer": signer.issuer,
                                     "seal_jwt_audience": signer.audience}}}),
        );
        let mut resources = Resources::default();
        for file in [
            "security-context.yaml",
            "repository-workflow.yaml",
            "busybox-cli.yaml",
        ] {
            let text = std::fs::read_to_string(kubernetes_example("manifests").join(file)).unwrap();
            parse_manifests(&text, &mut resources).unwrap();
        }
        let apply = |resource: &str, mut obj: Value, kind: &str| {
            obj["apiVersion"] = json!(if kind == "ConfigMap" {
                "v1"
            } else {
                "seal.100monkeys.ai/v1"
            });
            obj["kind"] = json!(kind);
            obj["metadata"]["namespace"] = json!(NAMESPACE);
            api.put(resource, obj);
        };
        for cm in &resources.config_maps {
            apply(
                "/v1/configmaps",
                serde_json::to_value(cm).unwrap(),
                "ConfigMap",
            );
        }
        for sc in &resources.security_contexts {
            apply(
                "seal.100monkeys.ai/v1/securitycontexts",
                serde_json::to_value(sc).unwrap(),
                "SecurityContext",
            );
        }
        for tool in &resources.cli_tools {
            apply(
                "seal.100monkeys.ai/v1/clitools",
                serde_json::to_value(tool).unwrap(),
                "CliTool",
            );
        }
        for wf in &resources.workflows {
            let mut wf = serde_json::to_value(wf).unwrap();
            wf["spec"]["api_spec"]["base_url"] =
                json!(format!("http://127.0.0.1:{}", upstream.port));
            apply("seal.100monkeys.ai/v1/workflows", wf, "Workflow");
        }

        let client = api.client();
        let ctx = Arc::new(Context::new(
            client.clone(),
            "ghcr.io/100monkeys-ai/aegis-seal-gateway:test",
            None,
            Arc::default(),
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        let operator = tokio::spawn(controller::run(client, ctx, async move {
            let _ = stopped.await;
        }));

        // `kubectl get workflows,clitools,securitycontexts`: every one Accepted.
        for (resource, name) in [
            (
                "seal.100monkeys.ai/v1/workflows",
                "create-repository-with-teams",
            ),
            ("seal.100monkeys.ai/v1/clitools", "busybox"),
            (
                "seal.100monkeys.ai/v1/securitycontexts",
                "quickstart-agents",
            ),
        ] {
            let status = eventually(name, Duration::from_secs(30), || {
                accepted(&api, resource, name)
            })
            .await;
            assert_eq!(
                status,
                "True",
                "{name}: {:?}",
                api.get(resource, NAMESPACE, name)
            );
        }
        let cm = eventually(
            "the data plane's ConfigMap",
            Duration::from_secs(30),
            || api.get("/v1/configmaps", NAMESPACE, "seal-gateway-config"),
        )
        .await;
        let mut data_plane = DataPlane::start(
            &api.kubeconfig(),
            "aegis-seal/seal-gateway-config",
            cm["data"]["seal-gateway-config.yaml"].as_str().unwrap(),
        );
        let ready = data_plane.wait_ready().await;
        assert_eq!(
            (
                ready["workflows"].as_u64(),
                ready["cli_tools"].as_u64(),
                ready["security_contexts"].as_u64()
            ),
            (Some(1), Some(1), Some(1)),
            "{ready}"
        );

        // README step 6: register the session, sign the envelope, call the workflow.
        data_plane.register_session(&signer).await;
        let envelope = signer.envelope(
            "create_repository_with_teams",
            json!({"repo_name": "hello-seal", "team": "platform"}),
            "walkthrough-1",
        );
        let r = data_plane
            .client
            .post(format!("{}/v1/seal/invoke", data_plane.base))
            .timeout(Duration::from_secs(20))
            .body(envelope)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["result"]["steps"]["read_back"]["teams"],
            json!([{"team": "platform", "permission": "push"}]),
            "{body}"
        );

        let (clean, logs) = data_plane.stop();
        assert!(clean, "{logs}");
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), operator)
            .await
            .expect("the operator did not stop")
            .unwrap();
    })
    .await
    .expect("the test timed out");
}
