//! `POST /v1/invoke` and `POST /v1/seal/invoke`.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use serde_json::json;

use crate::application::catalog::ToolRef;
use crate::application::cli::CliCall;
use crate::application::credential::{CredentialRequest, USER_TOKEN_HEADER};
use crate::application::invocation::{AuthorizedCall, Refusal};
use crate::application::workflow::{CompiledWorkflow, ExecutionContext};
use crate::gateway::GatewayState;
use crate::infrastructure::http_client::{TraceContext, with_trace_context};
use crate::infrastructure::metrics::ToolPath;
use crate::infrastructure::persistence::AuditEvent;
use crate::presentation::http::{Body, error, json_response, seal_error, unavailable};

const HANDLER: &str = "invoke_seal";

pub async fn invoke(state: &GatewayState, headers: &HeaderMap, body: Bytes) -> Response<Body> {
    // For HumanDelegated credentials (B-17); never logged, never forwarded.
    let user_token = headers
        .get(USER_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty());
    // The snapshot this request started with, whatever reloads happen meanwhile.
    let served = state.served.load_full();
    match state.invocation.authorize(&body, &served).await {
        Ok(call) => {
            // The caller's W3C trace context follows the call to every upstream.
            let trace = TraceContext::from_headers(headers);
            with_trace_context(trace, dispatch(state, user_token, call)).await
        }
        Err(Refusal::Seal { error, event }) => {
            if let Some(event) = event
                && let Err(e) = state.audit.write(vec![event]).await
            {
                return unavailable(HANDLER, &e);
            }
            seal_error(&error)
        }
        Err(Refusal::Unavailable(e)) => unavailable(HANDLER, &e),
    }
}

async fn dispatch(
    state: &GatewayState,
    user_token: Option<&str>,
    mut call: AuthorizedCall,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let mut events = std::mem::take(&mut call.events);
    // Labelled with the resolved tool's own name; a missing tool is `unknown` (and `workflow`, where
    // upstream looks last), so caller-chosen names never become series.
    let (tool_name, path) = match &call.tool {
        None => (None, ToolPath::Workflow),
        Some(ToolRef::Workflow(w)) => (Some(w.entry().tool_name.as_str()), ToolPath::Workflow),
        Some(ToolRef::CliTool(t)) => (Some(t.tool_name.as_str()), ToolPath::Cli),
    };
    let response = match &call.tool {
        None => error(
            StatusCode::NOT_FOUND,
            format!("tool '{}' not found", call.tool_name),
        ),
        Some(ToolRef::Workflow(workflow)) => {
            run_workflow(state, &call, workflow, user_token, &mut events).await
        }
        Some(ToolRef::CliTool(tool)) => {
            run_cli_tool(state, &call, tool, user_token, &mut events).await
        }
    };
    // The call's events are durable before the caller hears about it.
    let response = match state.audit.write(events).await {
        Ok(()) => response,
        Err(e) => unavailable(HANDLER, &e),
    };
    let ok = response.status().is_success();
    state
        .metrics
        .tool_invocation(tool_name, path, ok, started.elapsed());
    response
}

/// Obtains the workflow's credential, runs it, releases dynamic leases, and redacts the secrets
/// from what the agent sees.
async fn run_workflow(
    state: &GatewayState,
    call: &AuthorizedCall,
    workflow: &CompiledWorkflow,
    user_token: Option<&str>,
    events: &mut Vec<AuditEvent>,
) -> Response<Body> {
    let credential = match &workflow.entry().credential_path {
        None => None,
        Some(path) => {
            let outcome = state
                .credentials
                .resolve(CredentialRequest {
                    execution_id: &call.execution_id,
                    tenant_id: Some(&call.tenant_id),
                    path,
                    user_token,
                    allows_human_delegated: call.allows_human_delegated,
                })
                .await;
            events.extend(outcome.events);
            match outcome.result {
                Ok(credential) => Some(credential),
                Err(e) => return json_response(e.status, &e.body()),
            }
        }
    };
    let headers = credential
        .as_ref()
        .map(|c| c.headers.as_slice())
        .unwrap_or(&[]);
    let outcome = state
        .workflows
        .execute(
            workflow,
            ExecutionContext {
                execution_id: &call.execution_id,
                arguments: &call.arguments,
                credential_headers: headers,
                max_response_bytes: call.grant.max_response_size,
            },
        )
        .await;
    let mut workflow_events = outcome.events;
    let response = match outcome.result {
        Ok(mut result) => {
            if let Some(c) = &credential {
                c.redact_json(&mut result);
            }
            json_response(StatusCode::OK, &json!({"result": result}))
        }
        Err(mut e) => {
            if let Some(c) = &credential {
                e.reason = c.redact_text(&e.reason).into_owned();
            }
            json_response(e.status, &e.body())
        }
    };
    if let Some(credential) = credential {
        // Reasons may quote upstream bodies, which may echo the secret.
        for event in &mut workflow_events {
            let mut payload = serde_json::Value::Object(std::mem::take(&mut event.payload));
            credential.redact_json(&mut payload);
            if let serde_json::Value::Object(map) = payload {
                event.payload = map;
            }
        }
        events.append(&mut workflow_events);
        events.extend(state.credentials.release(credential.leases).await);
    } else {
        events.append(&mut workflow_events);
    }
    response
}

/// Runs a CLI tool: judge, registry login, container, all inside the CLI engine; the engine's
/// events join the call's.
async fn run_cli_tool(
    state: &GatewayState,
    call: &AuthorizedCall,
    tool: &aegis_seal_crds::CliToolEntry,
    user_token: Option<&str>,
    events: &mut Vec<AuditEvent>,
) -> Response<Body> {
    let outcome = state
        .cli
        .invoke(
            CliCall {
                execution_id: &call.execution_id,
                tenant_id: Some(&call.tenant_id),
                security_context: &call.security_context,
                tool,
                arguments: &call.arguments,
                user_token,
                allows_human_delegated: call.allows_human_delegated,
                max_response_bytes: call.grant.max_response_size,
            },
            &state.credentials,
        )
        .await;
    events.extend(outcome.events);
    match outcome.result {
        Ok(result) => json_response(StatusCode::OK, &json!({"result": result.to_json()})),
        Err(e) => json_response(e.status, &e.body),
    }
}
