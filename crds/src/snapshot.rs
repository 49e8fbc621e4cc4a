//! The Snapshot: everything a data plane serves, compiled and validated, in one serializable value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cli_tool::ContainerResources;
use crate::common::CredentialResolutionPath;
use crate::openapi::Operation;
use crate::security_context::Capability;
use crate::workflow::WorkflowStep;

/// What a data plane serves. Produced only by [`crate::compile`], so every entry in it is valid.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub workflows: Vec<WorkflowEntry>,
    pub cli_tools: Vec<CliToolEntry>,
    pub security_contexts: Vec<SecurityContextEntry>,
}

impl Snapshot {
    /// A stable content hash (`sha256:<hex>`), used to tell whether a reload changes anything.
    pub fn hash(&self) -> String {
        content_hash(self)
    }
}

/// `sha256:<hex>` of `value`'s JSON, as [`Snapshot::hash`] computes it. Exposed so a type that
/// serializes to the same JSON as a snapshot (the data plane's shared entries) hashes the same.
pub fn content_hash<T: Serialize + ?Sized>(value: &T) -> String {
    // The JSON is streamed into the digest rather than built first: for thousands of workflows it
    // is megabytes, which would all be live at once while a snapshot loads.
    let mut sink = DigestWriter(Sha256::new());
    // Serializing plain structs, vectors and BTreeMaps cannot fail and is deterministic.
    let _ = serde_json::to_writer(&mut sink, value);
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256:");
    for b in sink.0.finalize() {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Feeds what is written into a SHA-256 digest.
struct DigestWriter(Sha256);

impl std::io::Write for DigestWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The resource an entry was compiled from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceRef {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

impl std::fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct WorkflowEntry {
    pub source: ResourceRef,
    pub tool_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    pub description: String,
    pub input_schema: serde_json::Value,
    pub base_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_path: Option<CredentialResolutionPath>,
    /// The operations the steps call (not the whole document), keyed by operationId.
    pub operations: BTreeMap<String, Operation>,
    pub steps: Vec<WorkflowStep>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct CliToolEntry {
    pub source: ResourceRef,
    pub tool_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    pub description: String,
    pub docker_image: String,
    pub allowed_subcommands: Vec<String>,
    pub require_semantic_judge: bool,
    pub default_timeout_seconds: u32,
    pub resources: ContainerResources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_credential_path: Option<CredentialResolutionPath>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct SecurityContextEntry {
    pub source: ResourceRef,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    pub description: String,
    pub capabilities: Vec<Capability>,
    pub deny_list: Vec<String>,
}
