//! What the end-to-end tests share: the data-plane binary run as the operator's Deployment runs
//! it, an upstream API, and an agent signing envelopes like the SEAL SDKs.
#![allow(dead_code)] // each test binary uses its own part

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

/// The `aegis-seal-gateway` binary, built (or found up to date) by cargo once per test binary:
/// a test of another package cannot name it with `CARGO_BIN_EXE_*`.
pub fn gateway_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let out = Command::new(env!("CARGO"))
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "aegis-seal-gateway",
                    "--bin",
                    "aegis-seal-gateway",
                    "--message-format=json",
                ])
                .stderr(Stdio::inherit())
                .output()
                .expect("run cargo build");
            assert!(out.status.success(), "cargo build of the data plane failed");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|m| m["reason"] == "compiler-artifact")
                .find_map(|m| m["executable"].as_str().map(PathBuf::from))
                .expect("cargo reports the aegis-seal-gateway executable")
        })
        .clone()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `probe` every 10 ms until it returns `Some`, for at most `within`.
pub async fn eventually<T>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An upstream answering `POST /<version>` with `{"version": "<version>"}`.
pub async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let version = req.uri().path().trim_start_matches('/').to_owned();
                    let body = json!({"version": version}).to_string();
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A Workflow whose one step calls `POST /<version>` on `upstream` and extracts `version`.
pub fn workflow(namespace: &str, name: &str, version: &str, upstream: SocketAddr) -> Value {
    json!({
        "apiVersion": "seal.100monkeys.ai/v1", "kind": "Workflow",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "description": format!("calls {version}"),
            "api_spec": {
                "base_url": format!("http://{upstream}"),
                "openapi": {"inline": {
                    "openapi": "3.0.0", "info": {"title": "t", "version": "1"},
                    "paths": {format!("/{version}"): {"post": {"operationId": "call"}}}
                }}
            },
            "steps": [{"name": "call", "operation_id": "call", "extractors": {"version": "$.version"}}]
        }
    })
}

/// The data plane, as the operator's Deployment runs it: `serve --config <mounted file>`, the
/// ConfigMap named in `SEAL_GATEWAY_CONFIGMAP`, its API client configured by `KUBECONFIG` (what
/// `kube::Client::try_default` reads before the in-cluster service account), a working folder
/// for the SQLite file. Killed if the test ends early; its logs are collected as they come.
pub struct DataPlane {
    child: Option<Child>,
    logs: Arc<Mutex<String>>,
    pub base: String,
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl DataPlane {
    /// `config_yaml` is the ConfigMap's `seal-gateway-config.yaml`, as the kubelet would mount it.
    pub fn start(kubeconfig: &str, config_map: &str, config_yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        let config = etc.join("seal-gateway-config.yaml");
        std::fs::write(&config, config_yaml).unwrap();
        let kubeconfig_file = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig_file, kubeconfig).unwrap();
        let port = free_port();
        let mut child = Command::new(gateway_binary())
            .args(["serve", "--config"])
            .arg(&config)
            .current_dir(&data)
            .env_clear()
            .env("HOME", dir.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("KUBECONFIG", &kubeconfig_file)
            .env("SEAL_GATEWAY_CONFIGMAP", config_map)
            // The pod's port would be the config's; tests share one machine.
            .env("SEAL_GATEWAY_BIND", format!("127.0.0.1:{port}"))
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
            _dir: dir,
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub async fn ready(&self) -> Option<Value> {
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

    pub async fn wait_ready(&mut self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(ready) = self.ready().await {
                return ready;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the data plane exited with {status}:\n{}", self.logs());
            }
            assert!(Instant::now() < deadline, "not ready:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn hash(&self) -> String {
        let ready = self.ready().await.expect("/ready");
        ready["snapshot_hash"].as_str().unwrap().to_owned()
    }

    /// Polls `/ready` until it serves `hash`; returns how long that took from `since`.
    pub async fn serves(&self, hash: &str, since: Instant) -> Duration {
        let deadline = since + Duration::from_secs(10);
        loop {
            if let Some(ready) = self.ready().await
                && ready["snapshot_hash"] == hash
            {
                return since.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "{hash} not served within 10 s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn wait_for_log(&self, needle: &str) -> String {
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

    /// Registers the signer's session, as the orchestrator does.
    pub async fn register_session(&self, signer: &Signer) {
        let s = &signer.session;
        let r = self
            .client
            .post(format!("{}/v1/seal/sessions", self.base))
            .json(&json!({
                "execution_id": s["execution_id"], "agent_id": s["agent_id"],
                "security_context": signer.security_context,
                "public_key_b64": s["public_key_b64"], "security_token": "t",
            }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    /// Invokes `tool`; the status and the body.
    pub async fn invoke(&self, signer: &Signer, tool: &str, jti: &str) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}/v1/invoke", self.base))
            .timeout(Duration::from_secs(20))
            .body(signer.envelope(tool, json!({}), jti))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// SIGTERM; whether it exited cleanly, and its logs.
    pub fn stop(mut self) -> (bool, String) {
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

impl Drop for DataPlane {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `version` the workflow's step extracted.
pub fn version_of(body: &Value) -> &str {
    body["result"]["steps"]["call"]["version"]
        .as_str()
        .unwrap_or_default()
}

/// Signs envelopes the way the SEAL SDKs do, with the keys of the data plane's
/// `tests/vectors/python-sdk.json`, for a session in `security_context`.
pub struct Signer {
    agent: ed25519_dalek::SigningKey,
    token_key: jsonwebtoken::EncodingKey,
    pub rs256_public_key_pem: String,
    pub issuer: String,
    pub audience: String,
    pub session: Value,
    pub security_context: String,
}

impl Signer {
    pub fn from_vectors(security_context: &str) -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../dataplane/tests/vectors/python-sdk.json");
        let file: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let seed = file["agent_ed25519_seed_hex"].as_str().unwrap();
        let seed: Vec<u8> = (0..seed.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&seed[i..i + 2], 16).unwrap())
            .collect();
        let issuer = &file["token_issuer"];
        Self {
            agent: ed25519_dalek::SigningKey::from_bytes(&seed.try_into().unwrap()),
            token_key: jsonwebtoken::EncodingKey::from_rsa_pem(
                issuer["rs256_private_key_pem"].as_str().unwrap().as_bytes(),
            )
            .unwrap(),
            rs256_public_key_pem: issuer["rs256_public_key_pem"].as_str().unwrap().into(),
            issuer: issuer["iss"].as_str().unwrap().into(),
            audience: issuer["aud"].as_str().unwrap().into(),
            session: file["session"].clone(),
            security_context: security_context.into(),
        }
    }

    /// A signed envelope for `tool`, dated now, whose token carries `jti`.
    pub fn envelope(&self, tool: &str, arguments: Value, jti: &str) -> String {
        use base64::Engine;
        use ed25519_dalek::Signer as _;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = json!({
            "sub": self.session["agent_id"], "exec_id": self.session["execution_id"],
            "tenant_id": self.session["tenant_id"], "scp": self.security_context,
            "wid": "docker://test", "jti": jti, "iat": now, "exp": now + 3600,
            "iss": self.issuer, "aud": self.audience,
        });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &self.token_key,
        )
        .unwrap();
        let unsigned = json!({
            "protocol": "seal/v1", "security_token": token, "signature": "",
            "payload": {"jsonrpc": "2.0", "id": "req-1", "method": "tools/call",
                        "params": {"name": tool, "arguments": arguments}},
            "timestamp": now,
        });
        let parsed =
            aegis_seal_gateway::domain::envelope::Envelope::parse(unsigned.to_string().as_bytes())
                .unwrap();
        let signature = self.agent.sign(&parsed.canonical_message().unwrap());
        let mut envelope = unsigned;
        envelope["signature"] = base64::engine::general_purpose::STANDARD
            .encode(signature.to_bytes())
            .into();
        envelope.to_string()
    }
}
