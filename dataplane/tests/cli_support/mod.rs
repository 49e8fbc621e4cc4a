//! Shared by the CLI-tool tests: the real podman and busybox image of `scripts/services.sh start`,
//! an engine wired to them, a real HTTP semantic judge on 127.0.0.1, and the runbook's SQL.
#![allow(dead_code)] // each test binary uses its own part

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aegis_seal_crds::gateway::CredentialSettings;
use aegis_seal_crds::{CliToolEntry, ContainerResources, ResourceRef};
use aegis_seal_gateway::application::cli::{
    CliCall, CliEngine, CliEngineConfig, CliOutcome, DEFAULT_MAX_OUTPUT_BYTES,
};
use aegis_seal_gateway::application::credential::CredentialResolver;
use aegis_seal_gateway::infrastructure::container::{self, ContainerCli, ResolveInput};
use aegis_seal_gateway::infrastructure::http_client::{HttpClient, HttpClientConfig};
use aegis_seal_gateway::infrastructure::persistence::{AuditEvent, Database};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use sqlx::Row;

use crate::support;

/// The runbook's query ("Semantic Judge Unreachable"), verbatim.
pub const RUNBOOK_REJECTIONS_SQL: &str =
    "SELECT created_at, payload->>'tool_name' AS tool, payload->>'rejection_reason' AS reason
FROM gateway_events
WHERE event_type = 'CliToolSemanticRejected'
ORDER BY created_at DESC LIMIT 20;";

/// The local image `scripts/services.sh start` builds (`FROM scratch`, busybox-static).
pub fn image() -> String {
    std::env::var("TEST_BUSYBOX_IMAGE")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "localhost/ci/busybox:latest".into())
}

/// The podman binary these tests drive (`CONTAINER_CLI`, default `podman`).
pub fn podman() -> String {
    std::env::var("CONTAINER_CLI")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "podman".into())
}

/// Fails the test, clearly, when podman or the image is missing: these tests never skip.
pub fn require_podman() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let hint = "the CLI-tool tests need podman with runc and the local busybox image: run \
                    `eval \"$(scripts/services.sh start)\"` first (scripts/test.sh does)";
        let version = std::process::Command::new(podman())
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run `{} --version`: {e}. {hint}", podman()))?;
        if !version.status.success() {
            return Err(format!("`{} --version` failed. {hint}", podman()));
        }
        let exists = std::process::Command::new(podman())
            .args(["image", "exists", &image()])
            .status()
            .map_err(|e| format!("cannot run podman: {e}. {hint}"))?;
        if !exists.success() {
            return Err(format!("the image {} does not exist. {hint}", image()));
        }
        Ok(())
    });
    if let Err(e) = checked {
        panic!("{e}");
    }
}

pub fn http() -> HttpClient {
    HttpClient::new(HttpClientConfig::default()).unwrap()
}

pub fn config() -> CliEngineConfig {
    CliEngineConfig {
        semantic_judge_url: None,
        judge_token: None,
        judge_timeout: Duration::from_secs(5),
        nfs_server_host: "127.0.0.1".into(),
        nfs_port: 2049,
        nfs_mount_port: 20048,
        max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
    }
}

/// Resolves `cli` (a name on PATH or a path) as `cli.container_cli`.
pub async fn resolve(cli: &str) -> ContainerCli {
    container::resolve(&ResolveInput {
        configured: Some(cli.to_owned()),
        env: None,
        path: std::env::var_os("PATH"),
    })
    .await
    .unwrap_or_else(|e| panic!("cannot resolve {cli}: {e} ({})", e.tried()))
}

/// An engine on the real podman.
pub async fn podman_engine(config: CliEngineConfig) -> CliEngine {
    require_podman();
    CliEngine::new(config, Ok(resolve(&podman()).await), http())
}

/// A CLI tool on the busybox image, whose entrypoint-less image runs `<subcommand> <args>`.
pub fn tool(name: &str, subcommands: &[&str]) -> CliToolEntry {
    CliToolEntry {
        source: ResourceRef {
            kind: "CliTool".into(),
            namespace: None,
            name: name.into(),
            generation: None,
        },
        tool_name: name.into(),
        tenant_id: None,
        description: format!("{name}: busybox applets for tests"),
        docker_image: image(),
        allowed_subcommands: subcommands.iter().map(|s| s.to_string()).collect(),
        require_semantic_judge: false,
        default_timeout_seconds: 60,
        resources: ContainerResources {
            memory: Some("256Mi".into()),
            cpus: Some("1".into()),
            pids: Some(128),
        },
        registry_credential_path: None,
    }
}

pub async fn sqlite_database() -> (Database, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/gateway.db", dir.path().display());
    (Database::connect(&url).await.unwrap(), dir)
}

/// A fresh database on the Postgres server of the test command (never skipped).
pub async fn postgres_database() -> Database {
    let server = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!("DATABASE_URL must point at a Postgres server: run `eval \"$(scripts/services.sh start)\"`")
    });
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(&server).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (base, _) = server.rsplit_once('/').unwrap();
    Database::connect(&format!("{base}/{name}")).await.unwrap()
}

pub fn credentials(db: &Database) -> CredentialResolver {
    CredentialResolver::new(&CredentialSettings::default(), http(), db.clone()).unwrap()
}

pub fn credentials_with(settings: &CredentialSettings, db: &Database) -> CredentialResolver {
    CredentialResolver::new(settings, http(), db.clone()).unwrap()
}

pub fn execution_id() -> String {
    format!("exec-{}", uuid::Uuid::new_v4().simple())
}

/// Runs one call as the invocation pipeline would.
pub async fn invoke(
    engine: &CliEngine,
    credentials: &CredentialResolver,
    tool: &CliToolEntry,
    execution_id: &str,
    arguments: Value,
) -> CliOutcome {
    engine
        .invoke(
            CliCall {
                execution_id,
                tenant_id: Some("acme"),
                security_context: "aegis-system-default",
                tool,
                arguments: &arguments,
                user_token: None,
                allows_human_delegated: false,
                max_response_bytes: None,
            },
            credentials,
        )
        .await
}

pub fn events_of<'e>(events: &'e [AuditEvent], event_type: &str) -> Vec<&'e AuditEvent> {
    events
        .iter()
        .filter(|e| e.event_type == event_type)
        .collect()
}

pub fn only<'e>(events: &'e [AuditEvent], event_type: &str) -> &'e AuditEvent {
    let found = events_of(events, event_type);
    assert_eq!(
        found.len(),
        1,
        "expected one {event_type} in {:?}",
        events.iter().map(|e| e.event_type).collect::<Vec<_>>()
    );
    found[0]
}

/// Names of containers (any state) labelled with this execution id.
pub fn containers_of(execution_id: &str) -> Vec<String> {
    let out = std::process::Command::new(podman())
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=seal.100monkeys.ai/execution-id={execution_id}"),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// No container (in any state) is labelled with this execution id: it was removed.
pub fn assert_no_container(execution_id: &str, why: &str) {
    let left = containers_of(execution_id);
    assert!(left.is_empty(), "{why}: {left:?}");
}

/// Names of volumes labelled with this execution id.
pub fn volumes_of(execution_id: &str) -> Vec<String> {
    let out = std::process::Command::new(podman())
        .args([
            "volume",
            "ls",
            "--filter",
            &format!("label=seal.100monkeys.ai/execution-id={execution_id}"),
            "--format",
            "{{.Name}}",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// An executable shell script (a container CLI wrapper, for instance).
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A wrapper around podman that records each argv (one line, each argument in brackets) in `log`.
pub fn recording_podman(dir: &Path, log: &Path) -> PathBuf {
    let podman = which(&podman()).expect("podman on PATH");
    script(
        dir,
        "podman",
        &format!(
            "for a in \"$@\"; do printf '[%s]' \"$a\"; done >> '{}'\necho >> '{}'\nexec '{}' \"$@\"",
            log.display(),
            log.display(),
            podman.display()
        ),
    )
}

pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Rows of the runbook's rejection query: (tool, reason).
pub async fn runbook_rejections(db: &Database) -> Vec<(String, String)> {
    let sql = sqlx::AssertSqlSafe(RUNBOOK_REJECTIONS_SQL.to_owned());
    let rows = match db {
        Database::Sqlite(p) => sqlx::query(sql).fetch_all(p).await.unwrap(),
        Database::Postgres(p) => {
            return sqlx::query(sql)
                .fetch_all(p)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get("tool"), r.get("reason")))
                .collect();
        }
    };
    rows.iter()
        .map(|r| (r.get("tool"), r.get("reason")))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The semantic judge
// ---------------------------------------------------------------------------------------------

/// A real HTTP judge on 127.0.0.1. Paths choose the behaviour:
/// `/allow`, `/deny` (with a reason), `/deny-silent` (no reason), `/error` (500), `/hang` (answers
/// after 30 s), `/garbage` (200, not JSON). Every request body is recorded.
pub struct Judge {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<(String, Value)>>>,
}

pub const JUDGE_DENIAL: &str = "rewriting history is not allowed for agents";
/// The token the judge's `/authenticated` route expects, and its `Authorization` header.
pub const JUDGE_TOKEN: &str = "judge-secret-7f3a";
const JUDGE_BEARER: &str = "Bearer judge-secret-7f3a";

impl Judge {
    pub async fn start() -> Self {
        let requests: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let recorded = requests.clone();
        let addr = support::serve(move |req: http::Request<hyper::body::Incoming>| {
            let recorded = recorded.clone();
            async move {
                let path = req.uri().path().to_owned();
                let authorized = req.headers().get(http::header::AUTHORIZATION)
                    == Some(&http::HeaderValue::from_static(JUDGE_BEARER));
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let parsed = serde_json::from_slice(&body).unwrap_or(Value::Null);
                recorded.lock().unwrap().push((path.clone(), parsed));
                let (status, body) = match path.as_str() {
                    "/allow" => (200, json!({"allowed": true, "reason": null}).to_string()),
                    "/deny" => (
                        200,
                        json!({"allowed": false, "reason": JUDGE_DENIAL}).to_string(),
                    ),
                    "/deny-silent" => (200, json!({"allowed": false}).to_string()),
                    // A judge behind authentication, as in production.
                    "/authenticated" if authorized => {
                        (200, json!({"allowed": true, "reason": null}).to_string())
                    }
                    "/authenticated" => (401, json!({"error": "unauthorized"}).to_string()),
                    "/error" => (500, json!({"error": "model overloaded"}).to_string()),
                    "/hang" => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        (200, json!({"allowed": true}).to_string())
                    }
                    _ => (200, "<html>not a verdict</html>".to_owned()),
                };
                let mut response = http::Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                response
            }
        })
        .await;
        Self { addr, requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<(String, Value)> {
        self.requests.lock().unwrap().clone()
    }
}

/// A URL on which nothing listens (the port was just released).
pub fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/judge")
}
