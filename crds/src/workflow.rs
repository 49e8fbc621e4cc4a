//! `Workflow`: a tool that runs templated HTTP calls against an OpenAPI-described upstream.

use std::collections::BTreeMap;

use std::borrow::Cow;

use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::common::{ConfigMapKeyRef, CredentialResolutionPath, ToolStatus, free_form_object};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "seal.100monkeys.ai",
    version = "v1",
    kind = "Workflow",
    namespaced,
    status = "ToolStatus",
    shortname = "sealwf",
    category = "seal",
    printcolumn = r#"{"name":"Tool","type":"string","jsonPath":".status.tool_name"}"#,
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".spec.tenant_id"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct WorkflowSpec {
    /// The name agents call. Defaults to `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
    /// Owning tenant; absent means system-global.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the invocation arguments (`type: object`). Every call's arguments are
    /// checked against it before the workflow runs; only local `$ref`s resolve.
    #[serde(default = "default_input_schema")]
    #[schemars(schema_with = "free_form_object")]
    pub input_schema: serde_json::Value,
    pub api_spec: ApiSpecSource,
    pub steps: Vec<WorkflowStep>,
}

fn default_input_schema() -> serde_json::Value {
    serde_json::json!({"type": "object"})
}

/// The validator every call's arguments go through: `input_schema` compiled once, with only
/// local `$ref`s (nothing is fetched). Its error says why the schema is not usable.
pub fn input_validator(schema: &serde_json::Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .offline()
        .build(schema)
        .map_err(|e| e.to_string())
}

/// The upstream API a workflow calls.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ApiSpecSource {
    /// Base URL requests are sent to (the document's `servers` are not used).
    pub base_url: String,
    pub openapi: OpenApiSource,
    /// How to obtain the credential sent with each request; none means unauthenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_path: Option<CredentialResolutionPath>,
}

/// Where the OpenAPI 3 or Swagger 2 document comes from: exactly one of the three.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct OpenApiSource {
    /// The document itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub inline: Option<serde_json::Value>,
    /// A ConfigMap key holding the document as JSON or YAML text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeyRef>,
    /// An http(s) URL the document is fetched from: by the operator when it compiles the
    /// gateway's resources (an outcome is reused for 60 s, and read again at the next reconcile
    /// after that, at the latest at the 10-minute resync), or by the data plane when it loads a
    /// manifest folder. At most 10 s and 8 MiB; a failed fetch rejects the workflow, saying why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// One HTTP call of a workflow.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct WorkflowStep {
    /// Unique within the workflow; later steps read this step's extracts as `steps.<name>.<key>`.
    pub name: String,
    /// The OpenAPI operation to call.
    pub operation_id: String,
    /// Handlebars template rendering the request: path, query and header parameters and the JSON body.
    /// `{{json x}}` writes a JSON value; `{{x}}` writes text escaped for the inside of a JSON
    /// string (`"{{input.title}}"`), so an argument cannot end the string and add keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_template: Option<String>,
    /// Values to keep from the response: key -> JSONPath.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extractors: BTreeMap<String, String>,
    #[serde(default)]
    pub on_error: OnError,
    /// Attempts after the first when `on_error: retry` (1-10, default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u8>,
    /// Per-attempt timeout of the upstream call (1-300 s, default 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

/// What a failed step does to the workflow. Upstream spellings are accepted as aliases.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Stop and report the failure.
    #[default]
    #[serde(alias = "AbortWorkflow", alias = "abort")]
    Fail,
    /// Record the failure and go on with the next step.
    #[serde(alias = "Continue")]
    Continue,
    /// Try again (`retries` times, with backoff), then fail. Only when sending again cannot
    /// repeat what the upstream did: after 408, 429 or 503, or when the request never left; and,
    /// for GET, HEAD, PUT and DELETE, which may be sent twice (RFC 9110), also after another 5xx,
    /// a timeout or a connection lost mid-request. A 4xx, or a 2xx whose body is not JSON or whose
    /// extractors find nothing, fails at once.
    #[serde(alias = "RetryN")]
    Retry,
}

impl JsonSchema for OnError {
    fn schema_name() -> Cow<'static, str> {
        "OnError".into()
    }

    // Listed by hand so the API server accepts the upstream spellings too.
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "fail | continue | retry (upstream: AbortWorkflow | Continue | RetryN)",
            "type": "string",
            "enum": ["fail", "continue", "retry", "abort", "AbortWorkflow", "Continue", "RetryN"]
        })
    }

    fn inline_schema() -> bool {
        true
    }
}
