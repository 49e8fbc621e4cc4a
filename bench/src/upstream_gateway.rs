//! The reference DESIGN §6 asks for beside the crypto ceiling: upstream's standalone gateway
//! (crates.io `aegis-seal-gateway` 1.2.0-beta), driven with the same envelopes, upstream, disk and
//! core pinning, on SQLite.
//!
//! Upstream is set up the way it is meant to be: a `SealGatewayConfig` file found through
//! `SEAL_GATEWAY_CONFIG_PATH`, then the spec, the workflow, the security context and the session
//! registered over its REST API. It resolves a workflow's credential on every call, so it is
//! compared on the workload with a `StaticRef` credential, which this gateway runs too.
//!
//! The envelopes suit both gateways: upstream signs over the payload in wire order and takes only
//! integer timestamps, and the bench sends sorted keys and integer seconds, so both canonical
//! forms are the same bytes.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};

use crate::gateway::{self, Gateway};
use crate::load;
use crate::manifests::{CREDENTIAL_KEY, ONE_STEP_CREDENTIAL};
use crate::signer::{SECURITY_CONTEXT, Signer};

/// The upstream version the README's install command names.
pub const VERSION: &str = "1.2.0-beta";

/// Upstream's configuration: operator authentication off, the bench's token issuer, SQLite in
/// `dir`, the local upstream as its OpenBao, the UI off.
fn config(
    bind: SocketAddr,
    grpc: SocketAddr,
    dir: &Path,
    signer: &Signer,
    kv: SocketAddr,
) -> Value {
    json!({
        "apiVersion": "seal.100monkeys.ai/v1",
        "kind": "SealGatewayConfig",
        "metadata": {"name": "bench-upstream"},
        "spec": {
            "network": {"bind_addr": bind.to_string(), "grpc_bind_addr": grpc.to_string()},
            "database": {"url": format!("sqlite://{}", dir.join("gateway.db").display())},
            "auth": {
                "disabled": true,
                // Required even with operator authentication off; no operator token is sent.
                "operator_jwt_issuer": "bench-operators",
                "operator_jwt_audience": "bench-upstream",
                "seal_jwt_public_key_pem": signer.rs256_public_key_pem,
                "seal_jwt_issuer": signer.issuer,
                "seal_jwt_audience": signer.audience,
            },
            "credentials": {"openbao_addr": format!("http://{kv}"), "openbao_token": "bench"},
            "ui": {"enabled": false},
        },
    })
}

/// Starts upstream's gateway pinned like this one and registers what the workload calls.
pub async fn start(
    binary: &Path,
    dir: &Path,
    signer: &Signer,
    upstream: SocketAddr,
    pin: Option<usize>,
) -> anyhow::Result<Gateway> {
    std::fs::create_dir_all(dir)?;
    let addr = gateway::free_addr()?;
    let config_path = dir.join("seal-gateway-config.yaml");
    let config = config(addr, gateway::free_addr()?, dir, signer, upstream);
    std::fs::write(&config_path, config.to_string())?;
    let mut command = Command::new(binary);
    command
        .current_dir(dir)
        .env("SEAL_GATEWAY_CONFIG_PATH", &config_path)
        .env("METRICS_BIND", "127.0.0.1")
        .env("METRICS_PORT", gateway::free_addr()?.port().to_string());
    let gw = Gateway::launch(
        command,
        dir.join("upstream-gateway.log"),
        addr,
        pin,
        "/health",
    )
    .await
    .context("starting upstream's gateway")?;

    let spec = register(
        &gw,
        "/v1/specs",
        json!({
            "name": "bench-upstream-api",
            "base_url": format!("http://{upstream}"),
            "inline_json": {"openapi": "3.0.3", "info": {"title": "bench upstream", "version": "1"},
                            "paths": {"/fixed": {"post": {"operationId": "fixed"}}}},
            "credential_path": {"StaticRef": {"key": CREDENTIAL_KEY}},
        }),
    )
    .await?;
    let spec_id = spec["id"]
        .as_str()
        .context("upstream's spec registration answered no id")?;
    // The same step as this gateway's one-step workflow; upstream has no `json` helper, and the
    // argument needs no escaping.
    register(
        &gw,
        "/v1/workflows",
        json!({
            "name": ONE_STEP_CREDENTIAL,
            "description": "bench workflow with a static credential",
            "input_schema": {"type": "object"},
            "api_spec_id": spec_id,
            "steps": [{"name": "call", "operation_id": "fixed",
                       "body_template": r#"{"name": "{{input.name}}"}"#,
                       "extractors": {"status": "$.status"}, "on_error": "AbortWorkflow"}],
        }),
    )
    .await?;
    register(
        &gw,
        "/v1/security-contexts",
        json!({
            "name": SECURITY_CONTEXT,
            "description": "What the bench agent may call",
            "capabilities": [{"tool_pattern": "*"}],
            "deny_list": ["admin.*"],
        }),
    )
    .await?;
    register(&gw, "/v1/seal/sessions", signer.session()?).await?;
    Ok(gw)
}

async fn register(gw: &Gateway, path: &'static str, body: Value) -> anyhow::Result<Value> {
    let (status, answer) = load::call(
        gw.addr,
        Method::POST,
        path,
        Bytes::from(serde_json::to_vec(&body)?),
    )
    .await?;
    if !(200..300).contains(&status) {
        bail!(
            "upstream's gateway refused POST {path}: {status} {}",
            String::from_utf8_lossy(&answer)
        );
    }
    Ok(serde_json::from_slice(&answer).unwrap_or(Value::Null))
}
