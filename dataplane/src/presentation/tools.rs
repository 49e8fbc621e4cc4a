//! `GET /v1/tools`: the tools an operator's tenant can call (reference §2.4.6).

use http::{Response, StatusCode};
use serde_json::{Value, json};

use crate::gateway::GatewayState;
use crate::infrastructure::auth::operator::OperatorIdentity;
use crate::presentation::http::{Body, json_response};

pub fn list(state: &GatewayState, operator: &OperatorIdentity) -> Response<Body> {
    let served = state.served.load();
    // A tenant sees its own tools and system-global ones; a platform operator sees every tool.
    let visible = |tenant: &Option<String>| {
        operator.platform_operator || tenant.is_none() || tenant == &operator.tenant_id
    };
    let s = &served.snapshot;
    let workflows = s
        .workflows
        .iter()
        .filter(|w| visible(&w.tenant_id))
        .map(|w| {
            json!({
                "name": w.tool_name,
                "description": w.description,
                "kind": "workflow",
                "input_schema": w.input_schema,
                "tags": ["workflow"],
                "category": "external",
                "tenant_id": w.tenant_id,
            })
        });
    let cli_tools = s
        .cli_tools
        .iter()
        .filter(|t| visible(&t.tenant_id))
        .map(|t| {
            let mut tags = vec!["cli"];
            if t.require_semantic_judge {
                tags.push("judged");
            }
            json!({
                "name": t.tool_name,
                "description": t.description,
                "kind": "cli",
                "input_schema": {
                    "type": "object",
                    "properties": {
                        "subcommand": {"type": "string", "enum": t.allowed_subcommands},
                        "args": {"type": "array", "items": {"type": "string"}},
                    },
                    "required": ["subcommand"],
                },
                "tags": tags,
                "category": "external",
                "tenant_id": t.tenant_id,
            })
        });
    json_response(
        StatusCode::OK,
        &Value::Array(workflows.chain(cli_tools).collect()),
    )
}
