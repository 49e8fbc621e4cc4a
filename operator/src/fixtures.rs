//! Resources the unit tests share.

use aegis_seal_crds::{CliTool, SealGateway, SecurityContext, Workflow};
use serde_json::{Value, json};

pub const NS: &str = "tools";
pub const GW: &str = "edge";
pub const GW_UID: &str = "0b6c2b9e-5d1f-4a43-9c36-6f1d0d0e7a11";
pub const IMAGE: &str = "ghcr.io/100monkeys-ai/aegis-seal-gateway:0.1.0";

pub fn gateway_json(spec: Value) -> Value {
    json!({
        "apiVersion": "seal.100monkeys.ai/v1",
        "kind": "SealGateway",
        "metadata": {"name": GW, "namespace": NS, "uid": GW_UID, "generation": 3, "resourceVersion": "100"},
        "spec": spec,
    })
}

pub fn gateway(spec: Value) -> SealGateway {
    serde_json::from_value(gateway_json(spec)).unwrap()
}

pub fn openapi_doc() -> Value {
    json!({
        "openapi": "3.0.0",
        "info": {"title": "example", "version": "1"},
        "paths": {
            "/repos": {"post": {"operationId": "createRepo", "requestBody": {"content": {}}}},
            "/repos/{id}": {"get": {"operationId": "getRepo",
                "parameters": [{"name": "id", "in": "path", "required": true}]}}
        }
    })
}

/// A valid Workflow calling `createRepo`; `description` lets tests vary its size.
pub fn workflow_json(name: &str, description: &str) -> Value {
    json!({
        "apiVersion": "seal.100monkeys.ai/v1",
        "kind": "Workflow",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 2,
                     "resourceVersion": "7", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "description": description,
            "input_schema": {"type": "object", "required": ["repo_name"],
                             "properties": {"repo_name": {"type": "string"}}},
            "api_spec": {"base_url": "https://api.example.com",
                         "openapi": {"inline": openapi_doc()},
                         "credential_path": {"StaticRef": {"key": "example/token"}}},
            "steps": [
                {"name": "create_repo", "operation_id": "createRepo",
                 "body_template": "{\"name\": {{json input.repo_name}}}", "extractors": {"repo_id": "$.id"}},
                {"name": "get_repo", "operation_id": "getRepo",
                 "body_template": "{\"id\": {{json steps.create_repo.repo_id}}}"}
            ]
        }
    })
}

pub fn workflow(name: &str) -> Workflow {
    serde_json::from_value(workflow_json(name, "Create a repository")).unwrap()
}

pub fn cli_tool(name: &str) -> CliTool {
    serde_json::from_value(json!({
        "apiVersion": "seal.100monkeys.ai/v1",
        "kind": "CliTool",
        "metadata": {"name": name, "namespace": NS, "generation": 1},
        "spec": {"docker_image": "localhost/git:1", "allowed_subcommands": ["status"]}
    }))
    .unwrap()
}

pub fn security_context(name: &str) -> SecurityContext {
    serde_json::from_value(json!({
        "apiVersion": "seal.100monkeys.ai/v1",
        "kind": "SecurityContext",
        "metadata": {"name": name, "namespace": NS, "generation": 1},
        "spec": {"capabilities": [{"tool_pattern": "*"}]}
    }))
    .unwrap()
}
