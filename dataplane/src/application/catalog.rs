//! The snapshot as served: entries indexed by tenant and name, with the tenancy rules of reference
//! §4.2: a tenant sees its own objects and system-global ones, its own shadowing a global one of the
//! same name, and another tenant's objects never.

use std::collections::HashMap;
use std::sync::Arc;

use aegis_seal_crds::security_context::Capability;
use aegis_seal_crds::{CliToolEntry, ResourceRef, SecurityContextEntry, Snapshot};

use crate::application::workflow::CompiledWorkflow;

/// A tool an agent can call.
#[derive(Clone)]
pub enum ToolRef {
    /// Templates and JSONPaths compiled once, when the snapshot was loaded.
    Workflow(Arc<CompiledWorkflow>),
    CliTool(Arc<CliToolEntry>),
}

impl std::fmt::Debug for ToolRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Workflow(w) => write!(f, "Workflow({})", w.tool_name()),
            Self::CliTool(t) => write!(f, "CliTool({})", t.tool_name),
        }
    }
}

/// The outcome of a scoped lookup.
#[derive(Debug, Clone)]
pub enum Lookup<T> {
    Found(T),
    /// Only another tenant has an object of that name.
    OtherTenant,
    Missing,
}

type Key = (Option<String>, String);

/// A snapshot ready to serve.
#[derive(Default)]
pub struct ServedSnapshot {
    pub snapshot: Snapshot,
    pub hash: String,
    tools: HashMap<Key, ToolRef>,
    contexts: HashMap<Key, Arc<SecurityContextEntry>>,
}

/// The contexts upstream seeds when there is no system-global one (reference §5.4).
pub const DEFAULT_CONTEXTS: [(&str, &[&str], &str); 3] = [
    (
        "aegis-system-default",
        &["*"],
        "Unrestricted default context allowing all tools",
    ),
    (
        "internal",
        &["*", "credentials.*"],
        "Internal platform context with full tool and credential access",
    ),
    (
        "zaru-free",
        &["*", "credentials.*"],
        "Zaru free-tier context with all tools and human-delegated credentials",
    ),
];

/// Adds the default contexts when the snapshot defines no system-global context, as upstream does.
pub fn with_default_contexts(mut snapshot: Snapshot) -> Snapshot {
    if snapshot
        .security_contexts
        .iter()
        .any(|c| c.tenant_id.is_none())
    {
        return snapshot;
    }
    for (name, patterns, description) in DEFAULT_CONTEXTS {
        snapshot.security_contexts.push(SecurityContextEntry {
            source: ResourceRef {
                kind: "SecurityContext".into(),
                namespace: None,
                name: name.into(),
                generation: None,
            },
            name: name.into(),
            tenant_id: None,
            description: description.into(),
            capabilities: patterns
                .iter()
                .map(|p| Capability {
                    tool_pattern: (*p).into(),
                    path_allowlist: None,
                    command_allowlist: None,
                    subcommand_allowlist: None,
                    domain_allowlist: None,
                    max_response_size: None,
                    rate_limit: None,
                })
                .collect(),
            deny_list: Vec::new(),
        });
    }
    snapshot
}

impl ServedSnapshot {
    /// Indexes the snapshot and compiles its workflows. Fails only for a snapshot that did not
    /// come from `crds::compile`, which validated every template and JSONPath.
    pub fn new(snapshot: Snapshot) -> Result<Self, String> {
        let mut tools = HashMap::new();
        for w in &snapshot.workflows {
            let compiled = CompiledWorkflow::compile(Arc::new(w.clone()))
                .map_err(|e| format!("workflow {}: {e}", w.tool_name))?;
            tools.insert(
                (w.tenant_id.clone(), w.tool_name.clone()),
                ToolRef::Workflow(Arc::new(compiled)),
            );
        }
        for t in &snapshot.cli_tools {
            tools.insert(
                (t.tenant_id.clone(), t.tool_name.clone()),
                ToolRef::CliTool(Arc::new(t.clone())),
            );
        }
        let contexts = snapshot
            .security_contexts
            .iter()
            .map(|c| ((c.tenant_id.clone(), c.name.clone()), Arc::new(c.clone())))
            .collect();
        Ok(Self {
            hash: snapshot.hash(),
            snapshot,
            tools,
            contexts,
        })
    }

    pub fn tool(&self, tenant: &str, name: &str) -> Lookup<ToolRef> {
        scoped(&self.tools, tenant, name)
    }

    pub fn security_context(&self, tenant: &str, name: &str) -> Lookup<Arc<SecurityContextEntry>> {
        scoped(&self.contexts, tenant, name)
    }
}

fn scoped<T: Clone>(map: &HashMap<Key, T>, tenant: &str, name: &str) -> Lookup<T> {
    let key = |t: Option<&str>| (t.map(str::to_owned), name.to_owned());
    if let Some(found) = map.get(&key(Some(tenant))).or_else(|| map.get(&key(None))) {
        return Lookup::Found(found.clone());
    }
    if map.keys().any(|(t, n)| n == name && t.is_some()) {
        Lookup::OtherTenant
    } else {
        Lookup::Missing
    }
}
