//! `SecurityContext`: which tools a session may call, and under which constraints.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::ToolStatus;

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "seal.100monkeys.ai",
    version = "v1",
    kind = "SecurityContext",
    namespaced,
    status = "ToolStatus",
    shortname = "sealsc",
    category = "seal",
    printcolumn = r#"{"name":"Context","type":"string","jsonPath":".status.tool_name"}"#,
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".spec.tenant_id"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct SecurityContextSpec {
    /// The name sessions refer to (`scp`). Defaults to `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_name: Option<String>,
    /// Owning tenant; absent means system-global.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub description: String,
    /// A call is allowed when any capability whose pattern matches the tool passes its
    /// constraints and rate limit; a refusal reports what the first matching one refused.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Tool patterns always refused, checked before the capabilities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_list: Vec<String>,
}

/// Permission to call the tools matching `tool_pattern`, within constraints.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Capability {
    /// `*`, `prefix.*` or an exact tool name.
    pub tool_pattern: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_allowlist: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_allowlist: Option<Vec<String>>,
    /// Base command -> allowed subcommands (an empty list allows any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subcommand_allowlist: Option<BTreeMap<String, Vec<String>>>,
    /// Hosts matched on label boundaries (`example.com` covers `api.example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_allowlist: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_size: Option<u64>,
    /// At most `calls` calls allowed by this capability in any `per_seconds` window, per session
    /// (SEAL execution); one more is refused (403, SEAL code 2005). Data-plane replicas on one
    /// Postgres database count one quota between them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// At most this many calls allowed by this capability run at once in one session (SEAL
    /// execution); one more is refused (403, SEAL code 2005) until one of them has answered.
    /// Data-plane replicas on one Postgres database count one limit between them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrent: Option<u32>,
}

impl Capability {
    /// Any use of the tools matching `tool_pattern`, without constraints.
    pub fn unconstrained(tool_pattern: impl Into<String>) -> Self {
        Self {
            tool_pattern: tool_pattern.into(),
            path_allowlist: None,
            command_allowlist: None,
            subcommand_allowlist: None,
            domain_allowlist: None,
            max_response_size: None,
            rate_limit: None,
            max_concurrent: None,
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub struct RateLimit {
    pub calls: u32,
    pub per_seconds: u32,
}
