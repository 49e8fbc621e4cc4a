//! The `aegis-seal-gateway` binary as an operator runs it: version, start, stop on SIGTERM, restart
//! on the same database (SQLite and Postgres), and bad configuration failing with one line.

mod support;

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_aegis-seal-gateway");

fn gateway_command(dir: &Path, db_url: &str, port: u16) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_clear()
        .env("HOME", dir)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("SEAL_GATEWAY_BIND", format!("127.0.0.1:{port}"))
        .env("SEAL_GATEWAY_AUTH_DISABLED", "true")
        .env("SEAL_GATEWAY_DB", db_url);
    cmd
}

/// The body of `GET /health` when it answers 200; a plain blocking request needs no runtime.
fn health(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

fn wait_healthy(child: &mut Child, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(body) = health(port) {
            assert_eq!(body, "ok");
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("gateway exited early with {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("gateway not healthy within 30 s");
}

fn terminate(child: Child) -> Output {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait_with_output().unwrap()
}

fn run_and_stop(dir: &Path, url: &str) -> String {
    let port = support::free_port();
    let mut child = gateway_command(dir, url, port)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_healthy(&mut child, port);
    let out = terminate(child);
    let logs = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "exit {:?}; logs:\n{logs}", out.status);
    assert!(logs.contains(&format!("aegis-seal-gateway listening on 127.0.0.1:{port}")));
    assert!(logs.contains("SIGTERM received"), "{logs}");
    assert!(logs.contains("aegis-seal-gateway stopped"), "{logs}");
    logs
}

#[test]
fn version_prints_the_crate_version() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("aegis-seal-gateway {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn starts_stops_and_restarts_on_the_same_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = support::sqlite_url(dir.path());
    let first = run_and_stop(dir.path(), &url);
    assert!(
        first.contains("No seal-gateway-config.yaml found; using defaults"),
        "{first}"
    );
    assert!(dir.path().join("data/gateway.db").is_file());
    run_and_stop(dir.path(), &url);
}

#[test]
fn starts_stops_and_restarts_on_the_same_postgres_database() {
    let url = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(support::fresh_postgres_url());
    let dir = tempfile::tempdir().unwrap();
    run_and_stop(dir.path(), &url);
    run_and_stop(dir.path(), &url);
}

/// Runs the gateway expecting it to refuse to start; returns its one stderr line.
fn refused(dir: &Path, args: &[&str]) -> String {
    refused_with(dir, args, &[])
}

/// [`refused`], with more environment variables.
fn refused_with(dir: &Path, args: &[&str], env: &[(&str, &OsStr)]) -> String {
    let out = gateway_command(dir, &support::sqlite_url(dir), support::free_port())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr: {stderr:?}");
    assert!(
        !dir.join("data/gateway.db").exists(),
        "nothing is created before the configuration is valid"
    );
    lines[0].to_owned()
}

#[test]
fn bad_configuration_fails_at_start_with_one_line_naming_file_document_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("bad.yaml");

    std::fs::write(
        &config,
        "apiVersion: seal.100monkeys.ai/v1\nkind: SealGatewayConfig\nmetadata: {name: x}\nspec:\n  network: {bind_adr: x}\n",
    )
    .unwrap();
    let line = refused(d, &["--config", config.to_str().unwrap()]);
    assert_eq!(
        line,
        format!(
            "error: {}: spec.network.bind_adr: unknown field",
            config.display()
        )
    );

    std::fs::write(&config, "spec: [unclosed\n").unwrap();
    let line = refused(d, &["--config", config.to_str().unwrap()]);
    assert!(
        line.starts_with(&format!("error: {}: malformed YAML: ", config.display())),
        "{line}"
    );

    std::fs::write(
        &config,
        "apiVersion: seal.100monkeys.ai/v1\nkind: SealGatewayConfig\nmetadata: {name: x}\nspec:\n  cli: {nfs_port: many}\n",
    )
    .unwrap();
    let line = refused(d, &["--config", config.to_str().unwrap()]);
    assert!(
        line.starts_with(&format!("error: {}: spec.cli.nfs_port: ", config.display())),
        "{line}"
    );

    let missing = d.join("missing.yaml");
    let line = refused(d, &["--config", missing.to_str().unwrap()]);
    assert_eq!(
        line,
        format!(
            "error: {}: config file named by --config does not exist",
            missing.display()
        )
    );

    let manifests = d.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let file = manifests.join("tools.yaml");
    std::fs::write(
        &file,
        "apiVersion: seal.100monkeys.ai/v1\nkind: SecurityContext\nmetadata: {name: ok}\nspec: {}\n---\napiVersion: seal.100monkeys.ai/v1\nkind: CliTool\nmetadata: {name: git}\nspec: {docker_image: git, allowed_subcommands: [], default_timeout_seconds: 60}\n",
    )
    .unwrap();
    let line = refused(d, &["--manifests", manifests.to_str().unwrap()]);
    assert_eq!(
        line,
        format!(
            "error: {}: document 2 (CliTool git): spec.allowed_subcommands: must list at least one subcommand",
            file.display()
        )
    );

    std::fs::write(
        &file,
        "apiVersion: seal.100monkeys.ai/v1\nkind: CliTool\nmetadata: {name: git}\nspec: {docker_image: git, allowed_subcommands: [status], timeout: 5}\n",
    )
    .unwrap();
    let line = refused(d, &["--manifests", manifests.to_str().unwrap()]);
    assert_eq!(
        line,
        format!(
            "error: {}: document 1 (CliTool git): spec.timeout: unknown field",
            file.display()
        )
    );
}

#[test]
fn an_unusable_outbound_tls_file_fails_at_start_naming_the_setting_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let missing = d.join("corp-ca.crt");
    let line = refused_with(
        d,
        &[],
        &[("SEAL_GATEWAY_OUTBOUND_CA_FILE", missing.as_os_str())],
    );
    assert_eq!(
        line,
        format!(
            "error: cannot build the outbound HTTP client: HTTP client setup failed: outbound.ca_file {}: cannot read: No such file or directory (os error 2)",
            missing.display()
        )
    );

    let cert = d.join("tls.crt");
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let line = refused_with(
        d,
        &[],
        &[
            (
                "SEAL_GATEWAY_OUTBOUND_CLIENT_CERTIFICATE_FILE",
                cert.as_os_str(),
            ),
            ("SEAL_GATEWAY_OUTBOUND_CLIENT_KEY_FILE", cert.as_os_str()),
        ],
    );
    assert!(
        line.starts_with(&format!(
            "error: cannot build the outbound HTTP client: HTTP client setup failed: outbound.client_certificate_file {} with outbound.client_key_file {}: ",
            cert.display(),
            cert.display()
        )),
        "{line}"
    );
}

#[test]
fn an_unreadable_collector_certificate_fails_at_start_naming_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let missing = d.join("collector-ca.crt");
    let line = refused_with(
        d,
        &[],
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                OsStr::new("https://localhost:4318"),
            ),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", missing.as_os_str()),
        ],
    );
    assert_eq!(
        line,
        format!(
            "error: cannot build the OTLP HTTP client: OTEL_EXPORTER_OTLP_CERTIFICATE {}: cannot read: No such file or directory (os error 2)",
            missing.display()
        )
    );
}
