//! Shared by the metrics and log-recipe tests: an in-process gateway serving a workflow against a
//! real upstream on 127.0.0.1, a workflow whose credential comes from the real OpenBao, and CLI
//! tools on the real podman; signed invocations; and the exporter's scrape.
#![allow(dead_code)] // each test binary uses its own part

use std::net::SocketAddr;

use aegis_seal_crds::Snapshot;
use aegis_seal_gateway::application::clock::Clock;
use aegis_seal_gateway::gateway::RunningGateway;
use aegis_seal_gateway::infrastructure::persistence::{CatalogSource, Database};
use aegis_seal_gateway::presentation::metrics::MetricsExporter;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};

use crate::support;

/// The OpenBao KV key the credential workflow reads.
pub const KV_KEY: &str = "observability-tests/whoami";

/// POST /ok answers `{"id": 7}`; POST /whoami echoes the `Authorization` header (as a careless
/// upstream might); POST /trace echoes `traceparent` and `tracestate`; anything else answers 500.
pub async fn upstream() -> SocketAddr {
    support::serve(|req: http::Request<hyper::body::Incoming>| async move {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (status, body) = match req.uri().path() {
            "/ok" => (200, r#"{"id": 7}"#.to_owned()),
            "/whoami" => (
                200,
                json!({"authorization": header("authorization").unwrap_or_default()}).to_string(),
            ),
            "/trace" => (
                200,
                json!({"traceparent": header("traceparent"), "tracestate": header("tracestate")})
                    .to_string(),
            ),
            _ => (500, r#"{"message": "boom"}"#.to_owned()),
        };
        let mut response = http::Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        response
    })
    .await
}

/// Workflows `ok-tool` (no credential), `whoami` (OpenBao KV credential), `missing-secret` (a KV
/// key that does not exist), `trace-tool` (echoes the trace context) and `failing-tool` (upstream
/// 500); the CLI tools `busybox` (`echo`,
/// `sh`) and `sleeper` (`sleep`, killed after 1 s); and the session's context `aegis-system-default`, allowing everything but `denied-tool`.
pub fn snapshot(upstream: SocketAddr, image: &str) -> Snapshot {
    let manifests = format!(
        r#"
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: ok-tool}}
spec:
  api_spec:
    base_url: http://{upstream}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/ok: {{post: {{operationId: ok}}}}}}}}}}
  steps: [{{name: call, operation_id: ok, extractors: {{id: "$.id"}}}}]
---
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: whoami}}
spec:
  api_spec:
    base_url: http://{upstream}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/whoami: {{post: {{operationId: whoami}}}}}}}}}}
    credential_path: {{StaticRef: {{key: {KV_KEY}}}}}
  steps: [{{name: ask, operation_id: whoami}}]
---
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: trace-tool}}
spec:
  api_spec:
    base_url: http://{upstream}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/trace: {{post: {{operationId: trace}}}}}}}}}}
  steps: [{{name: echo, operation_id: trace}}]
---
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: failing-tool}}
spec:
  api_spec:
    base_url: http://{upstream}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/fail: {{post: {{operationId: fail}}}}}}}}}}
  steps: [{{name: create_repo, operation_id: fail}}]
---
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: missing-secret}}
spec:
  api_spec:
    base_url: http://{upstream}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/whoami: {{post: {{operationId: whoami}}}}}}}}}}
    credential_path: {{StaticRef: {{key: observability-tests/absent}}}}
  steps: [{{name: ask, operation_id: whoami}}]
---
apiVersion: seal.100monkeys.ai/v1
kind: SecurityContext
metadata: {{name: aegis-system-default}}
spec:
  capabilities: [{{tool_pattern: "*"}}]
  deny_list: [denied-tool]
---
apiVersion: seal.100monkeys.ai/v1
kind: CliTool
metadata: {{name: busybox}}
spec:
  description: busybox applets
  docker_image: {image}
  allowed_subcommands: [echo, sh]
  default_timeout_seconds: 30
  resources: {{memory: 64Mi, cpus: "0.5", pids: 32}}
---
apiVersion: seal.100monkeys.ai/v1
kind: CliTool
metadata: {{name: sleeper}}
spec:
  docker_image: {image}
  allowed_subcommands: [sleep]
  default_timeout_seconds: 1
"#
    );
    support::snapshot_of(&manifests)
}

/// Writes `token` at [`KV_KEY`] in the real OpenBao and makes a token for the gateway with a
/// unique value (the dev server's root token is a common word, useless to search logs for).
/// Returns `(BAO_ADDR, gateway token)`.
pub async fn write_kv_token(token: &str) -> (String, String) {
    let addr = std::env::var("BAO_ADDR").expect(
        "BAO_ADDR: run scripts/test.sh (or scripts/services.sh start), which starts OpenBao",
    );
    let root = std::env::var("BAO_TOKEN").expect("BAO_TOKEN");
    let client = reqwest::Client::new();
    let written = client
        .post(format!("{addr}/v1/secret/data/{KV_KEY}"))
        .header("X-Vault-Token", &root)
        .json(&json!({"data": {"token": token}}))
        .send()
        .await
        .unwrap();
    assert!(
        written.status().is_success(),
        "{}",
        written.text().await.unwrap()
    );
    let gateway_token = format!("gw-token-{}", uuid::Uuid::new_v4().simple());
    let created = client
        .post(format!("{addr}/v1/auth/token/create"))
        .header("X-Vault-Token", &root)
        .json(&json!({"id": gateway_token, "policies": ["root"], "ttl": "1h"}))
        .send()
        .await
        .unwrap();
    assert!(
        created.status().is_success(),
        "{}",
        created.text().await.unwrap()
    );
    (addr, gateway_token)
}

/// A gateway on a fresh SQLite database with the vectors' session, serving `snapshot`.
pub struct Harness {
    pub gateway: RunningGateway,
    pub db: Database,
    pub signer: support::Signer,
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// `overrides` are environment-style settings (`SEAL_GATEWAY_*`) added to the test config.
    pub async fn start(snapshot: Snapshot, overrides: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::connect(&support::sqlite_url(dir.path()))
            .await
            .unwrap();
        Self::start_on(db, dir, snapshot, overrides).await
    }

    pub async fn start_on(
        db: Database,
        dir: tempfile::TempDir,
        snapshot: Snapshot,
        overrides: &[(&str, &str)],
    ) -> Self {
        let signer = support::Signer::from_vectors();
        db.upsert_session(&signer.session_record(chrono::Utc::now()))
            .await
            .unwrap();
        db.sync_catalog(&snapshot, CatalogSource::Manifest)
            .await
            .unwrap();
        let config = signer.gateway_config(overrides);
        let gateway = RunningGateway::start(&config, db.clone(), snapshot, Clock::System)
            .await
            .unwrap();
        Self {
            gateway,
            db,
            signer,
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// A signed call of `tool` with a fresh jti: the status and the JSON body (`Null` if none).
    pub async fn invoke(&self, tool: &str, arguments: Value) -> (u16, Value) {
        let jti = uuid::Uuid::new_v4().to_string();
        let body = self
            .signer
            .envelope(tool, arguments, &jti, chrono::Utc::now().timestamp());
        self.post_envelope(body).await
    }

    pub async fn post_envelope(&self, body: String) -> (u16, Value) {
        self.post_envelope_with(body, &[]).await
    }

    /// As [`Harness::post_envelope`], with extra request headers.
    pub async fn post_envelope_with(&self, body: String, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("http://{}/v1/invoke", self.gateway.local_addr))
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn shutdown(self) {
        self.gateway.shutdown().await;
    }
}

/// An exporter for `harness` on an ephemeral loopback port.
pub async fn exporter(harness: &Harness) -> MetricsExporter {
    MetricsExporter::start(
        "127.0.0.1:0".parse().unwrap(),
        harness.gateway.state.clone(),
    )
    .await
    .unwrap()
}

/// `GET /metrics` in the Prometheus text format 0.0.4.
pub async fn scrape(exporter: &MetricsExporter) -> String {
    let r = reqwest::get(format!("http://{}/metrics", exporter.local_addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    r.text().await.unwrap()
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}
