//! `/openapi.json` and `/api-docs`: the OpenAPI 3.0 document of the HTTP API.
//!
//! Request bodies are described by the schemas `schemars` derives from the very types the handlers
//! deserialize (and from the custom resources' types they share), so the document cannot drift
//! from what the server accepts. `schemars` is already the API crate's schema generator; a second
//! one (utoipa) would describe the same types twice.

use std::sync::OnceLock;

use aegis_seal_crds::{CredentialResolutionPath, WorkflowStep};
use http::{HeaderValue, Response, StatusCode};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::cli_tools::RegisterCliToolRequest;
use super::contexts::UpsertSecurityContextRequest;
use super::explorer::ApiExplorerRequest;
use super::specs::RegisterSpecRequest;
use super::workflows::RegisterWorkflowRequest;
use crate::presentation::http::{Body, json_response};

/// How one operation is documented.
struct Operation {
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    /// Behind operator JWT authentication.
    operator: bool,
    /// The request body's schema.
    body: Option<fn(&mut SchemaGenerator) -> Value>,
    /// Statuses besides those every operation of its kind may answer.
    responses: &'static [(u16, &'static str)],
}

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    generator.subschema_for::<T>().to_value()
}

/// The SEAL envelope (reference §1.1); parsed by hand, so described by hand.
fn envelope(_: &mut SchemaGenerator) -> Value {
    json!({
        "type": "object",
        "required": ["protocol", "security_token", "signature", "payload", "timestamp"],
        "properties": {
            "protocol": {"type": "string", "example": "seal/v1"},
            "security_token": {"type": "string", "description": "JWT with tenant, session and identity claims"},
            "signature": {"type": "string", "description": "base64 Ed25519 signature of the canonical message"},
            "payload": {"type": "object", "description": "JSON-RPC 2.0 tools/call request"},
            "timestamp": {"description": "integer seconds or RFC 3339 string"}
        }
    })
}

/// `POST /v1/seal/sessions` (reference §2.4.4).
fn session(_: &mut SchemaGenerator) -> Value {
    json!({
        "type": "object",
        "required": ["execution_id", "agent_id", "security_context", "public_key_b64", "security_token"],
        "properties": {
            "execution_id": {"type": "string"},
            "agent_id": {"type": "string"},
            "security_context": {"type": "string"},
            "public_key_b64": {"type": "string", "description": "the agent's Ed25519 public key, base64"},
            "security_token": {"type": "string"},
            "session_status": {"type": "string", "enum": ["Active", "Expired", "Revoked"]},
            "expires_at": {"type": "string", "format": "date-time"},
            "allowed_tool_patterns": {"type": "array", "items": {"type": "string"}},
            "tenant_id": {"type": "string", "description": "the tenant the session is for; another than the operator's own only from a platform operator"}
        }
    })
}

/// What `/v1/invoke` and its alias `/v1/seal/invoke` answer.
const INVOKE_RESPONSES: &[(u16, &str)] = &[
    (200, "tool result"),
    (
        400,
        "malformed envelope, or arguments outside the tool's input_schema",
    ),
    (401, "verification failed"),
    (403, "refused by policy or tenancy"),
    (404, "unknown tool"),
    (413, "body too large"),
    (500, "template or internal failure"),
    (502, "upstream or credential failure"),
    (503, "database unavailable (Retry-After)"),
];

const OPERATIONS: &[Operation] = &[
    Operation {
        method: "get",
        path: "/health",
        tag: "Health",
        summary: "Liveness; never touches the database",
        operator: false,
        body: None,
        responses: &[(200, "ok")],
    },
    Operation {
        method: "get",
        path: "/ready",
        tag: "Health",
        summary: "Readiness: a database round trip and the served snapshot",
        operator: false,
        body: None,
        responses: &[(200, "ready"), (503, "database unavailable")],
    },
    Operation {
        method: "post",
        path: "/v1/invoke",
        tag: "Invocation",
        summary: "Invoke a tool with a SEAL envelope",
        operator: false,
        body: Some(envelope),
        responses: INVOKE_RESPONSES,
    },
    Operation {
        method: "post",
        path: "/v1/seal/invoke",
        tag: "Invocation",
        summary: "Alias of /v1/invoke",
        operator: false,
        body: Some(envelope),
        responses: INVOKE_RESPONSES,
    },
    Operation {
        method: "post",
        path: "/v1/seal/sessions",
        tag: "SEAL Sessions",
        summary: "Provision or update a session",
        operator: true,
        body: Some(session),
        responses: &[
            (200, "updated"),
            (201, "created"),
            (400, "invalid session"),
            (403, "tenant mismatch"),
            (409, "session revoked"),
        ],
    },
    Operation {
        method: "get",
        path: "/v1/seal/sessions",
        tag: "SEAL Sessions",
        summary: "Active sessions (never their tokens)",
        operator: true,
        body: None,
        responses: &[(200, "sessions")],
    },
    Operation {
        method: "get",
        path: "/v1/seal/sessions/{id}",
        tag: "SEAL Sessions",
        summary: "One session",
        operator: true,
        body: None,
        responses: &[
            (200, "session"),
            (403, "tenant mismatch"),
            (404, "not found"),
        ],
    },
    Operation {
        method: "delete",
        path: "/v1/seal/sessions/{id}",
        tag: "SEAL Sessions",
        summary: "Revoke a session (terminal)",
        operator: true,
        body: None,
        responses: &[(200, "revoked"), (404, "not found or already revoked")],
    },
    Operation {
        method: "get",
        path: "/v1/tools",
        tag: "Tools",
        summary: "Tools the operator's tenant can call",
        operator: true,
        body: None,
        responses: &[(200, "tools")],
    },
    Operation {
        method: "get",
        path: "/v1/specs",
        tag: "API Specs",
        summary: "API specs visible to the operator",
        operator: true,
        body: None,
        responses: &[(200, "specs")],
    },
    Operation {
        method: "post",
        path: "/v1/specs",
        tag: "API Specs",
        summary: "Register an API spec",
        operator: true,
        body: Some(schema::<RegisterSpecRequest>),
        responses: &[
            (200, "deduplicated"),
            (201, "created"),
            (400, "invalid"),
            (
                403,
                "tenant mismatch, or the tenant's object quota is reached",
            ),
            (409, "name taken"),
            (422, "document could not be fetched"),
        ],
    },
    Operation {
        method: "get",
        path: "/v1/specs/{id}",
        tag: "API Specs",
        summary: "One API spec with its document",
        operator: true,
        body: None,
        responses: &[(200, "spec"), (403, "tenant mismatch"), (404, "not found")],
    },
    Operation {
        method: "put",
        path: "/v1/specs/{id}",
        tag: "API Specs",
        summary: "Replace an API spec (its workflows must still compile)",
        operator: true,
        body: Some(schema::<RegisterSpecRequest>),
        responses: &[
            (200, "updated"),
            (400, "invalid"),
            (403, "tenant mismatch"),
            (404, "not found"),
            (409, "declarative or name taken"),
            (422, "document could not be fetched"),
        ],
    },
    Operation {
        method: "delete",
        path: "/v1/specs/{id}",
        tag: "API Specs",
        summary: "Delete an unused API spec",
        operator: true,
        body: None,
        responses: &[
            (200, "deleted, or not there"),
            (403, "tenant mismatch"),
            (409, "used by workflows"),
        ],
    },
    Operation {
        method: "get",
        path: "/v1/workflows",
        tag: "Workflows",
        summary: "Workflows visible to the operator (REST, manifests and custom resources)",
        operator: true,
        body: None,
        responses: &[(200, "workflows")],
    },
    Operation {
        method: "post",
        path: "/v1/workflows",
        tag: "Workflows",
        summary: "Register a workflow",
        operator: true,
        body: Some(schema::<RegisterWorkflowRequest>),
        responses: &[
            (201, "created"),
            (400, "invalid"),
            (
                403,
                "tenant mismatch, or the tenant's object quota is reached",
            ),
            (409, "name taken or owned by a custom resource"),
        ],
    },
    Operation {
        method: "get",
        path: "/v1/workflows/{id}",
        tag: "Workflows",
        summary: "One workflow",
        operator: true,
        body: None,
        responses: &[
            (200, "workflow"),
            (403, "tenant mismatch"),
            (404, "not found"),
        ],
    },
    Operation {
        method: "put",
        path: "/v1/workflows/{id}",
        tag: "Workflows",
        summary: "Replace a workflow (its tenant never changes)",
        operator: true,
        body: Some(schema::<RegisterWorkflowRequest>),
        responses: &[
            (200, "updated"),
            (400, "invalid"),
            (403, "tenant mismatch"),
            (404, "not found"),
            (409, "declarative or name taken"),
        ],
    },
    Operation {
        method: "delete",
        path: "/v1/workflows/{id}",
        tag: "Workflows",
        summary: "Delete a workflow",
        operator: true,
        body: None,
        responses: &[
            (200, "deleted, or not there"),
            (403, "tenant mismatch"),
            (409, "owned by a custom resource"),
        ],
    },
    Operation {
        method: "get",
        path: "/v1/cli-tools",
        tag: "CLI Tools",
        summary: "CLI tools visible to the operator",
        operator: true,
        body: None,
        responses: &[(200, "CLI tools")],
    },
    Operation {
        method: "post",
        path: "/v1/cli-tools",
        tag: "CLI Tools",
        summary: "Register or replace a CLI tool",
        operator: true,
        body: Some(schema::<RegisterCliToolRequest>),
        responses: &[
            (200, "replaced"),
            (201, "created"),
            (400, "invalid"),
            (
                403,
                "tenant mismatch, or the tenant's object quota is reached",
            ),
            (409, "name taken or owned by a custom resource"),
        ],
    },
    Operation {
        method: "get",
        path: "/v1/cli-tools/{name}",
        tag: "CLI Tools",
        summary: "One CLI tool (?tenant_id= picks the tenant)",
        operator: true,
        body: None,
        responses: &[
            (200, "CLI tool"),
            (400, "ambiguous"),
            (403, "tenant mismatch"),
            (404, "not found"),
        ],
    },
    Operation {
        method: "put",
        path: "/v1/cli-tools/{name}",
        tag: "CLI Tools",
        summary: "Replace a CLI tool",
        operator: true,
        body: Some(schema::<RegisterCliToolRequest>),
        responses: &[
            (200, "replaced"),
            (400, "invalid"),
            (403, "tenant mismatch"),
            (404, "not found"),
            (409, "owned by a custom resource"),
        ],
    },
    Operation {
        method: "delete",
        path: "/v1/cli-tools/{name}",
        tag: "CLI Tools",
        summary: "Delete a CLI tool",
        operator: true,
        body: None,
        responses: &[
            (200, "deleted, or not there"),
            (400, "ambiguous"),
            (403, "tenant mismatch"),
            (409, "owned by a custom resource"),
        ],
    },
    Operation {
        method: "get",
        path: "/v1/security-contexts",
        tag: "Security Contexts",
        summary: "Security contexts visible to the operator",
        operator: true,
        body: None,
        responses: &[(200, "security contexts")],
    },
    Operation {
        method: "post",
        path: "/v1/security-contexts",
        tag: "Security Contexts",
        summary: "Register or replace a security context",
        operator: true,
        body: Some(schema::<UpsertSecurityContextRequest>),
        responses: &[
            (200, "replaced"),
            (201, "created"),
            (400, "invalid"),
            (
                403,
                "tenant mismatch, or the tenant's object quota is reached",
            ),
            (409, "owned by a custom resource"),
        ],
    },
    Operation {
        method: "get",
        path: "/v1/security-contexts/{name}",
        tag: "Security Contexts",
        summary: "One security context (?tenant_id= picks the tenant)",
        operator: true,
        body: None,
        responses: &[
            (200, "security context"),
            (400, "ambiguous"),
            (403, "tenant mismatch"),
            (404, "not found"),
        ],
    },
    Operation {
        method: "put",
        path: "/v1/security-contexts/{name}",
        tag: "Security Contexts",
        summary: "Replace a security context",
        operator: true,
        body: Some(schema::<UpsertSecurityContextRequest>),
        responses: &[
            (200, "replaced"),
            (400, "invalid"),
            (403, "tenant mismatch"),
            (404, "not found"),
            (409, "owned by a custom resource"),
        ],
    },
    Operation {
        method: "delete",
        path: "/v1/security-contexts/{name}",
        tag: "Security Contexts",
        summary: "Delete a security context",
        operator: true,
        body: None,
        responses: &[
            (200, "deleted, or not there"),
            (400, "ambiguous"),
            (403, "tenant mismatch"),
            (409, "owned by a custom resource"),
        ],
    },
    Operation {
        method: "post",
        path: "/v1/explorer",
        tag: "Explorer",
        summary: "Call one operation of a registered API spec and slice the response",
        operator: true,
        body: Some(schema::<ApiExplorerRequest>),
        responses: &[
            (200, "sliced response"),
            (400, "invalid"),
            (403, "tenant mismatch"),
            (404, "spec or operation not found"),
            (502, "upstream or credential failure"),
        ],
    },
    Operation {
        method: "get",
        path: "/v1/events",
        tag: "Audit",
        summary: "Audit events, newest first, tenant-scoped, cursor-paginated",
        operator: true,
        body: None,
        responses: &[
            (200, "a page of events"),
            (400, "invalid filter"),
            (403, "tenant mismatch"),
        ],
    },
    Operation {
        method: "get",
        path: "/openapi.json",
        tag: "Documentation",
        summary: "This document",
        operator: false,
        body: None,
        responses: &[(200, "OpenAPI document")],
    },
    Operation {
        method: "get",
        path: "/api-docs",
        tag: "Documentation",
        summary: "A page rendering this document",
        operator: false,
        body: None,
        responses: &[(200, "HTML")],
    },
];

fn parameters(path: &str, operator: bool) -> Vec<Value> {
    let mut params = Vec::new();
    for name in ["id", "name"] {
        if path.contains(&format!("{{{name}}}")) {
            params.push(
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}),
            );
        }
    }
    if path == "/v1/events" {
        for (name, description) in [
            ("event_type", "e.g. WorkflowInvocationFailed"),
            ("execution_id", "one execution's events"),
            (
                "tenant_id",
                "a platform operator's filter; a tenant operator sees its own only",
            ),
            ("since", "RFC 3339, inclusive"),
            ("until", "RFC 3339, exclusive"),
            ("order", "desc (default) or asc"),
            ("limit", "1-1000, default 100"),
            ("cursor", "next_cursor of the previous page"),
        ] {
            params.push(json!({"name": name, "in": "query", "required": false,
                               "description": description, "schema": {"type": "string"}}));
        }
    }
    if operator && path.ends_with("{name}") {
        params.push(json!({
            "name": "tenant_id", "in": "query", "required": false,
            "description": "the tenant whose object is meant (empty: system-global)",
            "schema": {"type": "string"}
        }));
    }
    params
}

fn build() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    // Shared vocabulary, listed so clients find them by name.
    generator.subschema_for::<CredentialResolutionPath>();
    generator.subschema_for::<WorkflowStep>();
    let mut paths = Map::new();
    for op in OPERATIONS {
        let mut responses = Map::new();
        for (status, description) in op.responses {
            let content = if op.path == "/api-docs" {
                json!({"text/html": {"schema": {"type": "string"}}})
            } else if op.path == "/health" {
                json!({"text/plain": {"schema": {"type": "string"}}})
            } else if *status < 300 {
                json!({"application/json": {"schema": {}}})
            } else {
                json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}})
            };
            responses.insert(
                status.to_string(),
                json!({"description": description, "content": content}),
            );
        }
        if op.operator && op.method != "get" {
            const READ_ONLY: &str =
                "the operator's role may only read (operator_read_only_roles; `check` is `role`)";
            match responses.get_mut("403") {
                Some(refused) => {
                    let description = format!(
                        "{}; or {READ_ONLY}",
                        refused["description"].as_str().unwrap_or_default()
                    );
                    refused["description"] = Value::String(description);
                }
                None => {
                    responses.insert("403".into(), json!({"description": READ_ONLY, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AuthError"}}}}));
                }
            }
        }
        if op.operator {
            responses.insert("401".into(), json!({"description": "operator token refused; `check` names the failed check", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AuthError"}}}}));
            responses.insert("503".into(), json!({"description": "operator JWKS or database unavailable", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
        }
        let mut operation = json!({
            "tags": [op.tag],
            "summary": op.summary,
            "operationId": format!("{}{}", op.method, op.path.replace(['/', '{', '}', '-', '.'], "_")),
            "responses": responses,
        });
        let params = parameters(op.path, op.operator);
        if !params.is_empty() {
            operation["parameters"] = Value::Array(params);
        }
        if let Some(body) = op.body {
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": body(&mut generator)}}
            });
        }
        if op.operator {
            operation["security"] = json!([{"bearer_jwt": []}]);
        }
        let item = paths
            .entry(op.path)
            .or_insert_with(|| Value::Object(Map::new()));
        item[op.method] = operation;
    }
    let mut schemas = generator.take_definitions(true);
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}),
    );
    schemas.insert(
        "AuthError".into(),
        json!({"type": "object", "required": ["error", "check"], "properties": {
            "error": {"type": "string"},
            "check": {"type": "string", "enum": ["token", "algorithm", "kid", "signature", "expiry", "not_before", "issuer", "audience", "role", "jwks"]},
            "message": {"type": "string"}
        }}),
    );
    let tags: Vec<Value> = [
        "Health",
        "API Specs",
        "Workflows",
        "CLI Tools",
        "Tools",
        "SEAL Sessions",
        "Security Contexts",
        "Invocation",
        "Explorer",
        "Audit",
        "Documentation",
    ]
    .iter()
    .map(|t| json!({"name": t}))
    .collect();
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "AEGIS SEAL Tooling Gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": env!("CARGO_PKG_DESCRIPTION"),
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer_jwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    })
}

/// The document, built once.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(build)
}

pub fn openapi_json() -> Response<Body> {
    json_response(StatusCode::OK, document())
}

/// A self-contained page (no CDN: gateways often run without internet access) that lists the
/// operations and schemas of `/openapi.json`.
pub fn api_docs() -> Response<Body> {
    let mut response = Response::new(Body::from(API_DOCS_HTML));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

const API_DOCS_HTML: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SEAL Gateway API</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#222}
h2{border-bottom:1px solid #ccc;padding-top:1rem}
details{margin:.3rem 0;border:1px solid #ddd;border-radius:4px;padding:.3rem .6rem}
summary{cursor:pointer}.m{display:inline-block;width:4.5rem;font-weight:bold;text-transform:uppercase}
.lock{color:#a60}pre{background:#f6f6f6;padding:.5rem;overflow:auto;font-size:.85rem}
</style></head><body>
<h1 id="title">SEAL Gateway API</h1>
<p>The OpenAPI document is at <a href="/openapi.json">/openapi.json</a>. Operations marked
<span class="lock">&#128274;</span> need <code>Authorization: Bearer &lt;operator JWT&gt;</code>.</p>
<div id="ops">Loading&hellip;</div>
<script>
fetch('/openapi.json').then(r => r.json()).then(doc => {
  document.getElementById('title').textContent = doc.info.title + ' ' + doc.info.version;
  const byTag = {};
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      (byTag[op.tags[0]] = byTag[op.tags[0]] || []).push([method, path, op]);
    }
  }
  const root = document.getElementById('ops');
  root.textContent = '';
  const el = (tag, text) => { const e = document.createElement(tag); if (text) e.textContent = text; return e; };
  for (const [tag, ops] of Object.entries(byTag)) {
    root.appendChild(el('h2', tag));
    for (const [method, path, op] of ops) {
      const d = el('details'), s = el('summary');
      const m = el('span', method); m.className = 'm'; s.appendChild(m);
      s.appendChild(el('code', path));
      if (op.security) { const l = el('span', ' \u{1F512}'); l.className = 'lock'; s.appendChild(l); }
      s.appendChild(el('span', ' \u2014 ' + op.summary));
      d.appendChild(s);
      if (op.requestBody) {
        d.appendChild(el('h4', 'Request body'));
        d.appendChild(el('pre', JSON.stringify(op.requestBody.content['application/json'].schema, null, 2)));
      }
      d.appendChild(el('h4', 'Responses'));
      const ul = el('ul');
      for (const [status, r] of Object.entries(op.responses)) ul.appendChild(el('li', status + ': ' + r.description));
      d.appendChild(ul);
      root.appendChild(d);
    }
  }
  root.appendChild(el('h2', 'Schemas'));
  for (const [name, schema] of Object.entries(doc.components.schemas)) {
    const d = el('details'); d.appendChild(el('summary', name));
    d.appendChild(el('pre', JSON.stringify(schema, null, 2))); root.appendChild(d);
  }
}).catch(e => { document.getElementById('ops').textContent = 'Could not load /openapi.json: ' + e; });
</script></body></html>
"#;
