//! `POST /v1/invoke` and `POST /v1/seal/invoke`.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};

use crate::application::catalog::ToolRef;
use crate::application::cli::CliCall;
use crate::application::credential::{CredentialRequest, USER_TOKEN_HEADER};
use crate::application::invocation::{AuthorizedCall, Refusal};
use crate::application::workflow::{CompiledWorkflow, ExecutionContext, WorkflowEngine};
use crate::gateway::GatewayState;
use crate::infrastructure::http_client::{TraceContext, with_trace_context};
use crate::infrastructure::metrics::ToolPath;
use crate::infrastructure::persistence::{AuditEvent, PersistenceError};
use crate::infrastructure::telemetry;
use crate::presentation::http::{
    Body, error, json_response, result_response, seal_error, unavailable,
};
use tracing::Instrument;

const HANDLER: &str = "invoke_seal";

/// `route` is the path template (`/v1/invoke` or `/v1/seal/invoke`), for the span's name.
pub async fn invoke(
    state: &GatewayState,
    route: &'static str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response<Body> {
    // The SERVER span of the call (exported only when traces are on; docs/observability.md).
    // Its parent is the caller's `traceparent`; the pipeline's stages are its children.
    let span = tracing::info_span!(
        target: telemetry::TARGET,
        "seal.invoke",
        otel.name = if route == "/v1/seal/invoke" { "POST /v1/seal/invoke" } else { "POST /v1/invoke" },
        otel.kind = "server",
        http.request.method = "POST",
        http.route = route,
    );
    telemetry::set_remote_parent(&span, headers);
    let response = handle(state, headers, body, &span)
        .instrument(span.clone())
        .await;
    let status = response.status();
    telemetry::attribute(
        &span,
        "http.response.status_code",
        i64::from(status.as_u16()),
    );
    if !status.is_success() {
        telemetry::fail(&span, status.to_string());
    }
    response
}

async fn handle(
    state: &GatewayState,
    headers: &HeaderMap,
    body: Bytes,
    span: &tracing::Span,
) -> Response<Body> {
    // Counted until this call's events are committed (or it turns out to have none), so that the
    // audit writer can gather it into the group of the calls running beside it.
    let _on_the_way = state.audit.expect_events();
    // For HumanDelegated credentials (B-17); never logged, never forwarded.
    let user_token = headers
        .get(USER_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty());
    // The snapshot this request started with, whatever reloads happen meanwhile.
    let served = state.served.load_full();
    match state.invocation.authorize(&body, &served).await {
        Ok(call) => {
            // Checked here so that the values are not cloned when traces are off.
            if !span.is_disabled() {
                telemetry::attribute(span, "seal.tool_name", call.tool_name.clone());
                telemetry::attribute(span, "seal.execution_id", call.execution_id.clone());
                telemetry::attribute(span, "seal.tenant_id", call.tenant_id.clone());
                telemetry::attribute(span, "seal.outcome", "authorized");
            }
            // The caller's W3C trace context follows the call to every upstream.
            let trace = TraceContext::from_headers(headers);
            let stage = tracing::info_span!(target: telemetry::TARGET, "seal.dispatch");
            with_trace_context(trace, dispatch(state, user_token, call))
                .instrument(stage)
                .await
        }
        Err(Refusal::Seal { error, event }) => {
            telemetry::attribute(span, "seal.outcome", "refused");
            telemetry::attribute(span, "seal.error_code", i64::from(error.code));
            telemetry::fail(span, error.message.clone());
            if let Some(event) = event
                && let Err(e) = audit_commit(state, vec![event]).await
            {
                return unavailable(HANDLER, &e);
            }
            seal_error(&error)
        }
        Err(Refusal::Unavailable(e)) => {
            telemetry::attribute(span, "seal.outcome", "unavailable");
            unavailable(HANDLER, &e)
        }
    }
}

/// Waits for the group commit of the call's events, in a span of its own.
async fn audit_commit(
    state: &GatewayState,
    events: Vec<AuditEvent>,
) -> Result<(), PersistenceError> {
    let span = tracing::info_span!(
        target: telemetry::TARGET,
        "seal.audit_commit",
        seal.audit_events = events.len(),
    );
    let result = state.audit.write(events).instrument(span.clone()).await;
    if result.is_err() {
        telemetry::fail(&span, "audit commit failed");
    }
    result
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
    // The call's events are durable before the caller hears about it, and its running slot is
    // free: its work is done, so the slot goes back while the events commit, not after.
    let (committed, ()) = tokio::join!(
        audit_commit(state, events),
        state.invocation.finish(call.grant.running.take())
    );
    let response = match committed {
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
    // Before anything runs: arguments the workflow does not accept reach no credential and no
    // upstream.
    if let Err(reason) = workflow.check_arguments(&call.arguments) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "arguments do not match the input_schema of '{}': {reason}",
                call.tool_name
            ),
        );
    }
    // Started before the credential is resolved, as upstream records it: a call refused there
    // still shows that the workflow was invoked.
    events.push(WorkflowEngine::started_event(
        workflow,
        &call.execution_id,
        Some(&call.tenant_id),
    ));
    let credential = match &workflow.entry().credential_path {
        None => None,
        Some(path) => {
            let outcome = state
                .credentials
                .resolve(CredentialRequest {
                    execution_id: &call.execution_id,
                    tenant_id: Some(&call.tenant_id),
                    owner_tenant_id: workflow.entry().tenant_id.as_deref(),
                    path,
                    user_token,
                    allows_human_delegated: call.allows_human_delegated,
                    destination: Some(&workflow.entry().base_url),
                })
                .await;
            events.extend(outcome.events);
            match outcome.result {
                Ok(credential) => Some(credential),
                Err(e) => return json_response(e.status, &e.body()),
            }
        }
    };
    let (headers, secrets) = credential.as_ref().map_or((&[][..], &[][..]), |c| {
        (c.headers.as_slice(), c.secrets.as_slice())
    });
    let span = tracing::info_span!(
        target: telemetry::TARGET,
        "workflow.execute",
        seal.workflow = workflow.entry().tool_name.as_str(),
    );
    let outcome = state
        .workflows
        .execute_started(
            workflow,
            ExecutionContext {
                execution_id: &call.execution_id,
                tenant_id: Some(&call.tenant_id),
                arguments: &call.arguments,
                credential_headers: headers,
                secrets,
                max_response_bytes: call.grant.max_response_size,
            },
        )
        .instrument(span.clone())
        .await;
    if let Err(e) = &outcome.result {
        telemetry::fail(&span, format!("workflow failed with {}", e.status));
    }
    drop(span);
    let mut workflow_events = outcome.events;
    let response = match outcome.result {
        Ok(mut result) => {
            if let Some(c) = &credential {
                c.redact_json(&mut result);
            }
            result_response(result)
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
        Ok(result) => result_response(result.to_json()),
        Err(e) => json_response(e.status, &e.body),
    }
}
