//! The `aegis-seal-operator` process against the fake API server: it takes the leader Lease,
//! reconciles, serves `/healthz` and `/metrics`, and on SIGTERM stops and releases the Lease.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aegis_seal_tests::fake_api::FakeApi;
use serde_json::json;

const LEASES: &str = "coordination.k8s.io/v1/leases";

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: op\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    Some(out)
}

async fn eventually<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills the process if the test fails before it exits on its own.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_leads_reconciles_and_releases_its_lease_on_sigterm() {
    let api = FakeApi::start().await;
    api.put(
        "seal.100monkeys.ai/v1/sealgateways",
        json!({"apiVersion": "seal.100monkeys.ai/v1", "kind": "SealGateway",
               "metadata": {"name": "edge", "namespace": "tools"}, "spec": {}}),
    );
    let dir = std::env::temp_dir().join(format!("seal-operator-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: ops}}}}]\n",
            api.url()
        ),
    )
    .unwrap();
    let http = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_aegis-seal-operator"))
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "operator-0")
        .env_remove("POD_NAMESPACE")
        .env("RUST_LOG", "info")
        .args([
            "--http-addr",
            &http.to_string(),
            "--lease-duration-secs",
            "6",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut process = Process(child);

    let lease = eventually("the Lease", Duration::from_secs(20), || {
        api.get(LEASES, "ops", "aegis-seal-operator")
    })
    .await;
    assert_eq!(lease["spec"]["holderIdentity"], "operator-0");
    eventually("the ConfigMap", Duration::from_secs(20), || {
        api.get("/v1/configmaps", "tools", "edge-config")
    })
    .await;
    let health = eventually("/healthz", Duration::from_secs(10), || {
        http_get(http, "/healthz")
    })
    .await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = eventually("reconciles in /metrics", Duration::from_secs(10), || {
        http_get(http, "/metrics").filter(|m| !m.contains("aegis_seal_operator_reconciles_total 0"))
    })
    .await;
    assert!(
        metrics.contains("aegis_seal_operator_leader 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("aegis_seal_operator_reconcile_errors_total 0"),
        "{metrics}"
    );
    let events: Vec<_> = api
        .list("events.k8s.io/v1/events")
        .into_iter()
        .filter(|e| e["reportingInstance"] == "operator-0")
        .collect();
    assert!(!events.is_empty());

    let status = Command::new("kill")
        .args(["-TERM", &process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = eventually("the process to exit", Duration::from_secs(20), || {
        process.0.try_wait().unwrap()
    })
    .await;
    assert!(exit.success(), "{exit}");
    let lease = api.get(LEASES, "ops", "aegis-seal-operator").unwrap();
    assert!(lease["spec"].get("holderIdentity").is_none(), "{lease}");
    assert!(http_get(http, "/healthz").is_none(), "still serving");
    let _ = std::fs::remove_dir_all(&dir);
}
