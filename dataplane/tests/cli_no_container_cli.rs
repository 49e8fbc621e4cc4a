//! Without podman or docker (B-10): the runbook's startup line, readiness reporting it, workflows
//! still served, and CLI calls failing with the runbook's `container CLI execution failed`.

mod cli_support;
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aegis_seal_gateway::application::cli::{
    CLI_TOOL_INVOCATION_FAILED, CLI_TOOL_INVOCATION_STARTED, CONTAINER_CLI_EXECUTION_FAILED,
    CONTAINER_CLI_NOT_RESOLVED, CliEngine,
};
use aegis_seal_gateway::infrastructure::container::{self, ResolveInput};
use aegis_seal_gateway::infrastructure::persistence::Database;
use cli_support::*;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aegis-seal-gateway");

#[tokio::test]
async fn the_resolver_finds_nothing_on_a_path_without_podman_or_docker() {
    let empty = tempfile::tempdir().unwrap();
    let path = Some(empty.path().as_os_str().to_owned());
    let e = container::resolve(&ResolveInput {
        configured: None,
        env: None,
        path: path.clone(),
    })
    .await
    .unwrap_err();
    assert_eq!(
        format!("failed to resolve container CLI: {e}"),
        CONTAINER_CLI_NOT_RESOLVED
    );
    assert_eq!(
        e.tried(),
        "podman (PATH): not on PATH; docker (PATH): not on PATH"
    );

    // A configured binary that is not there is reported, and no other is taken in its place,
    // not even a working one on PATH.
    let on_path = tempfile::tempdir().unwrap();
    script(on_path.path(), "podman", "echo 'podman version 4.3.1'");
    let e = container::resolve(&ResolveInput {
        configured: Some("/opt/nowhere/podman".into()),
        env: Some("also-missing".into()),
        path: Some(on_path.path().as_os_str().to_owned()),
    })
    .await
    .unwrap_err();
    assert_eq!(
        e.tried(),
        "/opt/nowhere/podman (cli.container_cli): not found or not executable; also-missing (SEAL_GATEWAY_CONTAINER_CLI): not on PATH"
    );
    let found = container::resolve(&ResolveInput {
        configured: None,
        env: None,
        path: Some(on_path.path().as_os_str().to_owned()),
    })
    .await
    .expect("the same podman, found on PATH when none is configured");
    assert_eq!(found.source, "PATH");

    // A binary whose --version fails is not usable either.
    let broken = script(empty.path(), "podman", "echo 'cannot connect' >&2; exit 3");
    let e = container::resolve(&ResolveInput {
        configured: Some(broken.display().to_string()),
        env: None,
        path: Some(empty.path().as_os_str().to_owned()),
    })
    .await
    .unwrap_err();
    assert!(
        e.tried()
            .contains("--version' exited with exit status: 3: cannot connect"),
        "{}",
        e.tried()
    );
}

#[tokio::test]
async fn a_cli_call_without_a_container_cli_fails_with_the_runbook_error() {
    let empty = tempfile::tempdir().unwrap();
    let cli = container::resolve(&ResolveInput {
        configured: None,
        env: None,
        path: Some(empty.path().as_os_str().to_owned()),
    })
    .await;
    let engine = CliEngine::new(config(), cli, http());
    assert_eq!(engine.readiness()["error"], CONTAINER_CLI_NOT_RESOLVED);
    let (db, _dir) = sqlite_database().await;
    let exec = execution_id();
    let out = invoke(
        &engine,
        &credentials(&db),
        &tool("busybox", &["echo"]),
        &exec,
        json!({"subcommand": "echo"}),
    )
    .await;
    let error = out.result.expect_err("no container CLI");
    assert_eq!(error.status, 500);
    assert_eq!(error.body["error"], CONTAINER_CLI_EXECUTION_FAILED);
    assert!(
        error.body["reason"]
            .as_str()
            .unwrap()
            .starts_with("no podman or docker on PATH")
    );
    let failed = only(&out.events, CLI_TOOL_INVOCATION_FAILED);
    assert_eq!(failed.payload["execution_id"], exec.as_str());
    assert!(
        failed.payload["reason"]
            .as_str()
            .unwrap()
            .starts_with(CONTAINER_CLI_EXECUTION_FAILED)
    );
    assert!(events_of(&out.events, CLI_TOOL_INVOCATION_STARTED).is_empty());
}

/// An upstream API for the workflow: `POST /ok` answers `{"id": 7}`.
async fn upstream() -> std::net::SocketAddr {
    support::serve(|_req| async {
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"id": 7}"#,
        )))
    })
    .await
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

#[tokio::test]
async fn the_binary_without_podman_or_docker_logs_the_runbook_line_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let empty_path = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let upstream = upstream().await;
    std::fs::write(
        manifests.join("tools.yaml"),
        format!(
            "apiVersion: seal.100monkeys.ai/v1\nkind: CliTool\nmetadata: {{name: busybox}}\nspec:\n  docker_image: {}\n  allowed_subcommands: [echo]\n\
             ---\napiVersion: seal.100monkeys.ai/v1\nkind: Workflow\nmetadata: {{name: ok-tool}}\nspec:\n  api_spec:\n    base_url: http://{upstream}\n\
             \x20   openapi: {{inline: {{openapi: 3.0.0, paths: {{/ok: {{post: {{operationId: ok}}}}}}}}}}\n  steps: [{{name: call, operation_id: ok}}]\n",
            image()
        ),
    )
    .unwrap();
    let db_url = format!("sqlite://{}/gateway.db", dir.path().display());
    let signer = support::Signer::from_vectors();
    let now = chrono::Utc::now();
    {
        let db = Database::connect(&db_url).await.unwrap();
        db.upsert_session(&signer.session_record(now))
            .await
            .unwrap();
        db.close().await;
    }
    let port = support::free_port();
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .env("HOME", dir.path())
        // Nothing on this PATH: no podman, no docker.
        .env("PATH", empty_path.path())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("SEAL_GATEWAY_BIND", format!("127.0.0.1:{port}"))
        .env("SEAL_GATEWAY_AUTH_DISABLED", "true")
        .env("SEAL_GATEWAY_DB", &db_url)
        .env("SEAL_GATEWAY_MANIFESTS", &manifests)
        .env(
            "SEAL_GATEWAY_SEAL_JWT_PUBLIC_KEY_PEM",
            &signer.rs256_public_key_pem,
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        if let Some((200, body)) = get(port, "/ready") {
            break body;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "gateway exited with {status}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(Instant::now() < deadline, "gateway not ready within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["cli_tools"], 1);
    assert_eq!(ready["container_cli"]["resolved"], false);
    assert_eq!(ready["container_cli"]["error"], CONTAINER_CLI_NOT_RESOLVED);

    let envelope = signer.envelope(
        "busybox",
        json!({"subcommand": "echo", "args": ["hi"]}),
        "jti-no-cli",
        now.timestamp(),
    );
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/invoke"))
        .body(envelope)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], CONTAINER_CLI_EXECUTION_FAILED, "{body}");

    // Workflows are served all the same.
    let envelope = signer.envelope("ok-tool", json!({}), "jti-workflow", now.timestamp());
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/invoke"))
        .body(envelope)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["result"]["result"], json!({"id": 7}), "{body}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{logs}");
    let startup = logs
        .lines()
        .find(|l| l.contains(CONTAINER_CLI_NOT_RESOLVED))
        .unwrap_or_else(|| panic!("no startup line in:\n{logs}"));
    assert!(
        startup.contains("ERROR"),
        "CLI tools are configured: {startup}"
    );
    assert!(
        startup.contains("aegis_seal_gateway::application::cli"),
        "{startup}"
    );
    let failure = logs
        .lines()
        .find(|l| l.contains(CONTAINER_CLI_EXECUTION_FAILED))
        .unwrap_or_else(|| panic!("no invocation failure in:\n{logs}"));
    assert!(failure.contains("exec-0001"), "{failure}");
    let served = logs
        .find("aegis-seal-gateway listening")
        .expect("the gateway served");
    assert!(
        logs.find(CONTAINER_CLI_NOT_RESOLVED).unwrap() < served,
        "logged at startup"
    );
}
