//! The gateway's configuration and manifests for a run, written as JSON (which is YAML) into a
//! temporary folder.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{Value, json};

use crate::signer::{SECURITY_CONTEXT, Signer};

pub const ONE_STEP: &str = "bench_one_step";
pub const THREE_STEPS: &str = "bench_three_steps";
/// The one-step workflow with a `StaticRef` credential read from the KV store on every call: the
/// workload this gateway and upstream's are compared on.
pub const ONE_STEP_CREDENTIAL: &str = "bench_one_step_credential";
/// The static credential's KV key.
pub const CREDENTIAL_KEY: &str = "bench";
/// The one-step workflow under a capability with a `rate_limit` and a `max_concurrent`, both
/// far above what the bench reaches: what counting them costs a call (one statement each way on
/// Postgres, shared by replicas; nothing but memory on SQLite).
pub const ONE_STEP_LIMITED: &str = "bench_one_step_limited";
/// Refused by the context's deny list (`admin.*`) before anything runs.
pub const DENIED: &str = "admin.purge";

/// A `SealGatewayConfig`: operator authentication off (the bench is the orchestrator, on
/// loopback), both token issuer keys, the given database.
pub fn config(
    bind: SocketAddr,
    database_url: &str,
    signer: &Signer,
    upstream: SocketAddr,
) -> String {
    json!({
        "apiVersion": "seal.100monkeys.ai/v1",
        "kind": "SealGatewayConfig",
        "metadata": {"name": "bench"},
        "spec": {
            "network": {"bind_addr": bind.to_string(), "grpc_bind_addr": "127.0.0.1:0"},
            "database": {"url": database_url},
            "auth": {
                "disabled": true,
                "seal_jwt_public_key_pem": signer.rs256_public_key_pem,
                "seal_jwt_eddsa_public_key_pem": signer.eddsa_public_key_pem,
            },
            // The local upstream answers OpenBao's KV v2 read too.
            "credentials": {"openbao_addr": format!("http://{upstream}"), "openbao_token": "bench"},
        },
    })
    .to_string()
}

fn security_context() -> Value {
    json!({
        "apiVersion": "seal.100monkeys.ai/v1", "kind": "SecurityContext",
        "metadata": {"name": SECURITY_CONTEXT},
        "spec": {
            "description": "What the bench agent may call",
            // The limited capability first: the first capability that allows a call counts it.
            "capabilities": [
                {"tool_pattern": ONE_STEP_LIMITED, "max_concurrent": 1000,
                 "rate_limit": {"calls": 1_000_000_000, "per_seconds": 60}},
                {"tool_pattern": "*"},
            ],
            "deny_list": ["admin.*"],
        },
    })
}

fn workflow(tool: &str, upstream: SocketAddr, paths: Value, steps: Value) -> Value {
    json!({
        "apiVersion": "seal.100monkeys.ai/v1", "kind": "Workflow",
        "metadata": {"name": tool.replace('_', "-")},
        "spec": {
            "tool_name": tool,
            "description": format!("bench workflow {tool}"),
            "input_schema": {"type": "object"},
            "api_spec": {
                "base_url": format!("http://{upstream}"),
                "openapi": {"inline": {
                    "openapi": "3.0.3", "info": {"title": "bench upstream", "version": "1"},
                    "paths": paths,
                }},
            },
            "steps": steps,
        },
    })
}

/// One call to `POST /fixed`, with a template and one extraction.
pub fn one_step(tool: &str, upstream: SocketAddr) -> Value {
    workflow(
        tool,
        upstream,
        json!({"/fixed": {"post": {"operationId": "fixed"}}}),
        json!([{
            "name": "call", "operation_id": "fixed",
            "body_template": r#"{"name": {{json input.name}}}"#,
            "extractors": {"status": "$.status"},
        }]),
    )
}

/// [`one_step`] with a static credential from the KV store, sent as `Authorization: Bearer`.
fn one_step_credential(upstream: SocketAddr) -> Value {
    let mut w = one_step(ONE_STEP_CREDENTIAL, upstream);
    w["spec"]["api_spec"]["credential_path"] = json!({"StaticRef": {"key": CREDENTIAL_KEY}});
    w
}

/// The quickstart's shape: create, grant (templated from the first step's extracted id), read back.
fn three_steps(upstream: SocketAddr) -> Value {
    let id_param =
        json!([{"name": "repo_id", "in": "path", "required": true, "schema": {"type": "integer"}}]);
    workflow(
        THREE_STEPS,
        upstream,
        json!({
            "/repos": {"post": {"operationId": "createRepo"}},
            "/repos/{repo_id}/teams": {"post": {"operationId": "addTeam", "parameters": id_param}},
            "/repos/{repo_id}": {"get": {"operationId": "getRepo", "parameters": id_param}},
        }),
        json!([
            {"name": "create_repo", "operation_id": "createRepo",
             "body_template": r#"{"name": {{json input.name}}, "private": true}"#,
             "extractors": {"id": "$.id"}},
            {"name": "add_team", "operation_id": "addTeam",
             "body_template": r#"{"repo_id": {{json steps.create_repo.id}}, "team": {{json input.team}}, "permission": "push"}"#},
            {"name": "read_back", "operation_id": "getRepo",
             "body_template": r#"{"repo_id": {{json steps.create_repo.id}}}"#,
             "extractors": {"teams": "$.teams"}},
        ]),
    )
}

/// Writes the serving manifests: the context, the two workflows, and `extra` more one-step
/// workflows (`generation` changes their descriptions, so rewriting makes a new snapshot).
pub fn write(
    dir: &Path,
    upstream: SocketAddr,
    extra: usize,
    generation: u32,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let documents = [
        security_context(),
        one_step(ONE_STEP, upstream),
        one_step(ONE_STEP_LIMITED, upstream),
        one_step_credential(upstream),
        three_steps(upstream),
    ];
    std::fs::write(dir.join("bench.yaml"), multi_document(&documents))?;
    let generated: Vec<Value> = (0..extra)
        .map(|i| {
            let mut w = one_step(&format!("bench_generated_{i:05}"), upstream);
            w["spec"]["description"] =
                format!("generated workflow {i}, generation {generation}").into();
            w
        })
        .collect();
    let path = dir.join("generated.yaml");
    if generated.is_empty() {
        // An empty document set is not a manifest file.
        if path.exists() {
            std::fs::remove_file(path)?;
        }
    } else {
        std::fs::write(path, multi_document(&generated))?;
    }
    Ok(())
}

fn multi_document(documents: &[Value]) -> String {
    documents
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n---\n")
}
