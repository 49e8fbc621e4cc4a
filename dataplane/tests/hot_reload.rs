//! Standalone hot reload, on the real binary: an edited manifest is served within a second, an
//! invalid one is refused (logged, naming the file) while the last good snapshot keeps serving, a
//! request in flight finishes on the snapshot it started with, each change is counted once in
//! `ReloadStats`, and `--no-watch` turns it off.
//! Every wait is bounded.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

const BIN: &str = env!("CARGO_BIN_EXE_aegis-seal-gateway");

/// An upstream answering `POST /<version>` with `{"version": "<version>"}`. While `hold` is set, a
/// call reports its arrival and waits for `release`.
struct Upstream {
    addr: SocketAddr,
    hold: Arc<AtomicBool>,
    release: Arc<Notify>,
    arrived: mpsc::UnboundedReceiver<String>,
}

async fn upstream() -> Upstream {
    let hold = Arc::new(AtomicBool::new(false));
    let release = Arc::new(Notify::new());
    let (tx, arrived) = mpsc::unbounded_channel();
    let (h, r) = (hold.clone(), release.clone());
    let addr = support::serve(move |req: http::Request<hyper::body::Incoming>| {
        let (hold, release, tx) = (h.clone(), r.clone(), tx.clone());
        async move {
            let version = req.uri().path().trim_start_matches('/').to_owned();
            if hold.load(Ordering::SeqCst) {
                let _ = tx.send(version.clone());
                release.notified().await;
            }
            let body = json!({"version": version}).to_string();
            http::Response::new(Full::new(Bytes::from(body)))
        }
    })
    .await;
    Upstream {
        addr,
        hold,
        release,
        arrived,
    }
}

fn workflow(name: &str, version: &str, upstream: SocketAddr) -> String {
    format!(
        r#"apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: {name}}}
spec:
  description: "{version}"
  api_spec:
    base_url: http://{upstream}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/{version}: {{post: {{operationId: call}}}}}}}}}}
  steps: [{{name: call, operation_id: call, extractors: {{version: "$.version"}}}}]
"#
    )
}

/// Writes through a temporary file and a rename, as editors and `kubectl cp` do: a reader never
/// sees half a file.
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A temporary folder holding `manifests/tools.yaml` with workflow `versioned` at `v1`: the folder,
/// the manifests folder and the file.
fn versioned_folder(upstream: SocketAddr) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let tools = manifests.join("tools.yaml");
    write(&tools, &workflow("versioned", "v1", upstream));
    (dir, manifests, tools)
}

/// The gateway process, killed if the test ends early; its stdout is collected as it comes.
struct Gateway {
    child: Option<Child>,
    logs: Arc<Mutex<String>>,
    base: String,
    client: reqwest::Client,
}

impl Gateway {
    fn start(dir: &Path, args: &[&str], signer: &support::Signer) -> Self {
        let port = support::free_port();
        let mut child = Command::new(BIN)
            .current_dir(dir)
            .env_clear()
            .env("HOME", dir)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("SEAL_GATEWAY_BIND", format!("127.0.0.1:{port}"))
            .env("SEAL_GATEWAY_AUTH_DISABLED", "true")
            .env("SEAL_GATEWAY_DB", support::sqlite_url(dir))
            .env(
                "SEAL_GATEWAY_SEAL_JWT_PUBLIC_KEY_PEM",
                &signer.rs256_public_key_pem,
            )
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut logs = logs.lock().unwrap();
                    logs.push_str(&line);
                    logs.push('\n');
                }
            });
        }
        Self {
            child: Some(child),
            logs,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        }
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    async fn ready(&self) -> Option<Value> {
        let r = self
            .client
            .get(format!("{}/ready", self.base))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        if r.status() != 200 {
            return None;
        }
        r.json().await.ok()
    }

    async fn wait_ready(&mut self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(ready) = self.ready().await {
                return ready;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the gateway exited with {status}:\n{}", self.logs());
            }
            assert!(Instant::now() < deadline, "not ready:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn hash(&self) -> String {
        let ready = self.ready().await.expect("/ready");
        ready["snapshot_hash"].as_str().unwrap().to_owned()
    }

    /// Polls `/ready` until the snapshot hash is not `old`; returns it and how long it took.
    async fn next_hash(&self, old: &str, since: Instant) -> (String, Duration) {
        let deadline = since + Duration::from_secs(10);
        loop {
            if let Some(ready) = self.ready().await
                && ready["snapshot_hash"] != old
            {
                let hash = ready["snapshot_hash"].as_str().unwrap().to_owned();
                return (hash, since.elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "the change was not served within 10 s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs();
            if let Some(line) = logs.lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}:\n{logs}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn register_session(&self, signer: &support::Signer) {
        let s = &signer.session;
        let r = self
            .client
            .post(format!("{}/v1/seal/sessions", self.base))
            .json(&json!({
                "execution_id": s["execution_id"], "agent_id": s["agent_id"],
                "security_context": s["security_context"],
                "public_key_b64": s["public_key_b64"], "security_token": "t",
            }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    /// Invokes `tool` with a fresh jti; the status and the step's extracted `version`.
    fn invoke(
        &self,
        signer: &support::Signer,
        tool: &str,
        jti: &str,
    ) -> impl std::future::Future<Output = (u16, Value)> + 'static {
        let now = chrono::Utc::now().timestamp();
        let body = signer.envelope(tool, json!({}), jti, now);
        let request = self
            .client
            .post(format!("{}/v1/invoke", self.base))
            .timeout(Duration::from_secs(20))
            .body(body);
        async move {
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, body)
        }
    }

    /// SIGTERM, then the exit status and the logs.
    fn stop(mut self) -> (bool, String) {
        let mut child = self.child.take().unwrap();
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = child.wait().unwrap();
        // Let the reader threads drain the pipes.
        std::thread::sleep(Duration::from_millis(100));
        (status.success(), self.logs())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn version_of(body: &Value) -> &str {
    body["result"]["steps"]["call"]["version"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_are_served_within_a_second_and_invalid_ones_are_refused() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let mut upstream = upstream().await;
        let signer = support::Signer::from_vectors();
        let (dir, manifests, tools) = versioned_folder(upstream.addr);
        let config = dir.path().join("seal-gateway-config.yaml");
        let config_text = "apiVersion: seal.100monkeys.ai/v1\nkind: SealGatewayConfig\nmetadata: {name: reload}\nspec: {}\n";
        write(&config, config_text);

        let mut gateway = Gateway::start(
            dir.path(),
            &[
                "--config",
                config.to_str().unwrap(),
                "--manifests",
                manifests.to_str().unwrap(),
            ],
            &signer,
        );
        let ready = gateway.wait_ready().await;
        assert_eq!(ready["workflows"], 1, "{ready}");
        let v1 = ready["snapshot_hash"].as_str().unwrap().to_owned();
        gateway.register_session(&signer).await;
        let (status, body) = gateway.invoke(&signer, "versioned", "jti-1").await;
        assert_eq!((status, version_of(&body)), (200, "v1"), "{body}");

        // A request in flight when the edit lands...
        upstream.hold.store(true, Ordering::SeqCst);
        let in_flight = tokio::spawn(gateway.invoke(&signer, "versioned", "jti-2"));
        let arrived = tokio::time::timeout(Duration::from_secs(10), upstream.arrived.recv())
            .await
            .expect("the in-flight call reaches the upstream");
        assert_eq!(arrived.as_deref(), Some("v1"));
        upstream.hold.store(false, Ordering::SeqCst);

        // ...the edit is served within a second...
        let edited = Instant::now();
        write(&tools, &workflow("versioned", "v2", upstream.addr));
        let (v2, first_latency) = gateway.next_hash(&v1, edited).await;
        assert!(
            first_latency < Duration::from_secs(1),
            "served after {first_latency:?}"
        );
        let (status, body) = gateway.invoke(&signer, "versioned", "jti-3").await;
        assert_eq!((status, version_of(&body)), (200, "v2"), "{body}");

        // ...and the request in flight finishes on the snapshot it started with.
        upstream.release.notify_one();
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), in_flight)
            .await
            .expect("the in-flight call finishes")
            .unwrap();
        assert_eq!((status, version_of(&body)), (200, "v1"), "{body}");

        // An invalid manifest is refused, naming the file, the document and the field; the
        // last good snapshot keeps serving.
        let broken = manifests.join("broken.yaml");
        write(
            &broken,
            "apiVersion: seal.100monkeys.ai/v1\nkind: CliTool\nmetadata: {name: git}\nspec: {docker_image: git, allowed_subcommands: [], default_timeout_seconds: 60}\n",
        );
        let refusal = gateway
            .wait_for_log("configuration change refused")
            .await;
        // Logged to a pipe without NO_COLOR, as in a pod: the bytes the runbook quotes, no
        // colour codes around the level.
        assert!(refusal.contains(" WARN "), "{refusal:?}");
        assert!(!refusal.contains('\u{1b}'), "{refusal:?}");
        assert!(
            refusal.contains(&format!(
                "{}: document 1 (CliTool git): spec.allowed_subcommands: must list at least one subcommand",
                broken.display()
            )),
            "{refusal}"
        );
        assert_eq!(gateway.hash().await, v2);
        let (status, body) = gateway.invoke(&signer, "versioned", "jti-4").await;
        assert_eq!((status, version_of(&body)), (200, "v2"), "{body}");

        // Fixed, it is served.
        let fixed = Instant::now();
        write(&broken, &workflow("second", "v1", upstream.addr));
        let (_, fix_latency) = gateway.next_hash(&v2, fixed).await;
        assert!(fix_latency < Duration::from_secs(1), "served after {fix_latency:?}");
        let ready = gateway.ready().await.unwrap();
        assert_eq!(ready["workflows"], 2, "{ready}");
        let (status, body) = gateway.invoke(&signer, "second", "jti-5").await;
        assert_eq!((status, version_of(&body)), (200, "v1"), "{body}");

        // A file removed is a change too.
        let removed = Instant::now();
        let v3 = gateway.hash().await;
        std::fs::remove_file(&broken).unwrap();
        let (_, remove_latency) = gateway.next_hash(&v3, removed).await;
        assert!(remove_latency < Duration::from_secs(1), "{remove_latency:?}");

        // The config file is watched too: an invalid edit is refused, a valid one reported
        // with the settings that need a restart.
        write(&config, &config_text.replace("spec: {}", "spec: {network: {bind_adr: x}}"));
        let refusal = gateway
            .wait_for_log(&format!("{}: spec.network.bind_adr: unknown field", config.display()))
            .await;
        assert!(refusal.contains("configuration change refused"), "{refusal}");
        write(
            &config,
            &config_text.replace("spec: {}", "spec: {network: {max_body_bytes: 1024}}"),
        );
        let notice = gateway
            .wait_for_log("take effect when the gateway restarts")
            .await;
        assert!(notice.contains("its network settings"), "{notice}");

        let (ok, logs) = gateway.stop();
        assert!(ok, "{logs}");
        let served = logs.matches("configuration change served").count();
        assert_eq!(served, 3, "{logs}");
        println!(
            "reload latency: edit {first_latency:?}, fix {fix_latency:?}, removal {remove_latency:?}"
        );
    })
    .await
    .expect("the test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_watch_serves_the_snapshot_read_at_start() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let upstream = upstream().await;
        let signer = support::Signer::from_vectors();
        let (dir, manifests, tools) = versioned_folder(upstream.addr);
        let mut gateway = Gateway::start(
            dir.path(),
            &["--no-watch", "--manifests", manifests.to_str().unwrap()],
            &signer,
        );
        let v1 = gateway.wait_ready().await["snapshot_hash"].clone();
        write(&tools, &workflow("versioned", "v2", upstream.addr));
        // Three poll intervals.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(gateway.ready().await.unwrap()["snapshot_hash"], v1);
        let (ok, logs) = gateway.stop();
        assert!(ok, "{logs}");
        assert!(!logs.contains("watching the manifests folder"), "{logs}");
    })
    .await
    .expect("the test timed out");
}

/// In process: each refused change is counted once, however long it stays; a served one too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_reloads_are_counted_once_per_change() {
    use aegis_seal_gateway::application::clock::Clock;
    use aegis_seal_gateway::gateway::RunningGateway;
    use aegis_seal_gateway::infrastructure::http_client::{HttpClient, HttpClientConfig};
    use aegis_seal_gateway::infrastructure::persistence::Database;
    use aegis_seal_gateway::infrastructure::reload::Watchers;
    use aegis_seal_gateway::infrastructure::reload::folder::{FolderWatch, load_folder};

    tokio::time::timeout(Duration::from_secs(60), async {
        let upstream = upstream().await;
        let (dir, manifests, tools) = versioned_folder(upstream.addr);

        let watch = FolderWatch::new(Some(&manifests), None);
        let http = HttpClient::new(HttpClientConfig::default()).unwrap();
        let snapshot = load_folder(&manifests, &http).await.unwrap();
        let db = Database::connect(&support::sqlite_url(dir.path()))
            .await
            .unwrap();
        let config = support::gateway_config(&[]);
        let gateway = RunningGateway::start(&config, db, snapshot, Clock::System)
            .await
            .unwrap();
        let mut watchers = Watchers::default();
        let stop = watchers.stop_signal();
        watchers.push(watch.spawn(gateway.state.clone(), config.settings.clone(), http, stop));
        let stats = || {
            (
                gateway.state.reload.reloads(),
                gateway.state.reload.reload_failures(),
            )
        };
        let until = |want: (u64, u64)| async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while stats() != want {
                assert!(
                    Instant::now() < deadline,
                    "stats {:?}, want {want:?}",
                    stats()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        assert_eq!(stats(), (0, 0));
        let v1 = gateway.state.served.load().hash.clone();

        write(&tools, "kind: Workflow\nmetadata: {name: [not a name]}\n");
        until((0, 1)).await;
        // Three more polls: the same invalid folder is not refused again.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(stats(), (0, 1));
        assert_eq!(gateway.state.served.load().hash, v1);

        write(&tools, &workflow("versioned", "v2", upstream.addr));
        until((1, 1)).await;
        assert_ne!(gateway.state.served.load().hash, v1);

        watchers.stop().await;
        gateway.shutdown().await;
    })
    .await
    .expect("the test timed out");
}

/// A change the database keeps from being served (here a trigger refuses the catalog update; in
/// production a lost connection or a failover) is offered again until it is served, without a
/// further edit of the folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_database_could_not_take_is_served_once_it_can() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let upstream = upstream().await;
        let signer = support::Signer::from_vectors();
        let (dir, manifests, tools) = versioned_folder(upstream.addr);
        let mut gateway = Gateway::start(
            dir.path(),
            &["--manifests", manifests.to_str().unwrap()],
            &signer,
        );
        let v1 = gateway.wait_ready().await["snapshot_hash"]
            .as_str()
            .unwrap()
            .to_owned();

        let db = sqlx::SqlitePool::connect(&support::sqlite_url(dir.path()))
            .await
            .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE catalog_held (held INTEGER); INSERT INTO catalog_held VALUES (1); \
             CREATE TRIGGER hold_catalog BEFORE INSERT ON workflows \
             WHEN EXISTS (SELECT 1 FROM catalog_held) \
             BEGIN SELECT RAISE(ABORT, 'catalog held by the test'); END",
        )
        .execute(&db)
        .await
        .unwrap();
        write(&tools, &workflow("versioned", "v2", upstream.addr));
        let deferred = gateway
            .wait_for_log("the manifests are offered again once the database answers")
            .await;
        assert!(deferred.contains("retry_in_s=1"), "{deferred}");
        assert!(
            gateway.logs().contains("catalog held by the test"),
            "{}",
            gateway.logs()
        );
        assert_eq!(gateway.hash().await, v1, "the last good snapshot serves on");

        let released = Instant::now();
        sqlx::raw_sql("DELETE FROM catalog_held")
            .execute(&db)
            .await
            .unwrap();
        let (_, latency) = gateway.next_hash(&v1, released).await;
        assert!(latency < Duration::from_secs(5), "{latency:?}");
        db.close().await;
        let (clean, logs) = gateway.stop();
        assert!(clean, "{logs}");
    })
    .await
    .expect("the test timed out");
}
