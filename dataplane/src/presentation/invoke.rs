//! `POST /v1/invoke` and `POST /v1/seal/invoke`.

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::json;

use crate::application::catalog::{ServedSnapshot, ToolRef};
use crate::application::invocation::{AuthorizedCall, Refusal};
use crate::gateway::GatewayState;
use crate::presentation::http::{Body, error, json_response, seal_error, unavailable};

const HANDLER: &str = "invoke_seal";

pub async fn invoke(state: &GatewayState, body: Bytes) -> Response<Body> {
    // The snapshot this request started with, whatever reloads happen meanwhile.
    let served = state.served.load_full();
    match state.invocation.authorize(&body, &served).await {
        Ok(call) => dispatch(state, &served, call).await,
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
    _served: &ServedSnapshot,
    call: AuthorizedCall,
) -> Response<Body> {
    let events = call.events;
    let response = match &call.tool {
        None => error(
            StatusCode::NOT_FOUND,
            format!("tool '{}' not found", call.tool_name),
        ),
        Some(ToolRef::Workflow(_)) => json_response(
            StatusCode::NOT_IMPLEMENTED,
            &json!({"error": "workflow execution is not available in this build"}),
        ),
        Some(ToolRef::CliTool(_)) => json_response(
            StatusCode::NOT_IMPLEMENTED,
            &json!({"error": "CLI tool execution is not available in this build"}),
        ),
    };
    // The call's events are durable before the caller hears about it.
    if let Err(e) = state.audit.write(events).await {
        return unavailable(HANDLER, &e);
    }
    response
}
