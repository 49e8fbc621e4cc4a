//! `CliTool`: an allowlisted command run in an ephemeral, network-less container.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{CredentialResolutionPath, ToolStatus};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "seal.100monkeys.ai",
    version = "v1",
    kind = "CliTool",
    namespaced,
    status = "ToolStatus",
    shortname = "sealcli",
    category = "seal",
    printcolumn = r#"{"name":"Tool","type":"string","jsonPath":".status.tool_name"}"#,
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".spec.tenant_id"}"#,
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.docker_image"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct CliToolSpec {
    /// The name agents call. Defaults to `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
    /// Owning tenant; absent means system-global.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub description: String,
    /// Image reference passed to the container CLI as is.
    pub docker_image: String,
    /// The only subcommands an agent may run (exact match, at least one).
    pub allowed_subcommands: Vec<String>,
    /// Ask the semantic judge before every run; the judge fails closed.
    #[serde(default)]
    pub require_semantic_judge: bool,
    /// Run time limit (1-300 s); the container is killed and removed when it passes.
    #[serde(default = "default_timeout_seconds")]
    pub default_timeout_seconds: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ContainerResources>,
    /// Credential used to log in to a private registry before the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_credential_path: Option<CredentialResolutionPath>,
}

/// Default run time limit of a CLI tool.
pub const DEFAULT_CLI_TIMEOUT_SECONDS: u32 = 60;

fn default_timeout_seconds() -> u32 {
    DEFAULT_CLI_TIMEOUT_SECONDS
}

/// Limits of one container run. Absent values take safe defaults.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ContainerResources {
    /// Memory limit as a Kubernetes quantity (`256Mi`, `1Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// CPU limit in cores (`"0.5"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    /// Maximum number of processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}
