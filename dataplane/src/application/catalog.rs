//! The snapshot as served: entries indexed by tenant and name, with the tenancy rules of reference
//! §4.2: a tenant sees its own objects and system-global ones, its own shadowing a global one of the
//! same name, and another tenant's objects never.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use aegis_seal_crds::security_context::Capability;
use aegis_seal_crds::{
    CliToolEntry, ResourceRef, SecurityContextEntry, Snapshot, WorkflowEntry, content_hash,
};
use serde::Serialize;
use serde::ser::SerializeStruct;

use crate::application::workflow::CompiledWorkflow;
use crate::infrastructure::persistence::CatalogEntries;

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

/// Objects by name, then by owner: a lookup borrows the caller's strings (no key is built), and
/// telling "another tenant's" from "missing" needs no scan of the other names.
type Scoped<T> = HashMap<String, Owners<T>>;

/// The objects sharing one name.
struct Owners<T> {
    global: Option<T>,
    tenants: HashMap<String, T>,
}

impl<T> Default for Owners<T> {
    fn default() -> Self {
        Self {
            global: None,
            tenants: HashMap::new(),
        }
    }
}

/// A snapshot's entries, each behind an `Arc`. The declarative base, the served snapshot (base plus
/// REST objects) and the compiled workflows share one copy of each entry; cloning [`Snapshot`]s for
/// each of them kept three copies of every workflow live while loading (bench/README.md, finding 3).
#[derive(Default, Clone, Debug)]
pub struct Entries {
    pub workflows: Vec<Arc<WorkflowEntry>>,
    pub cli_tools: Vec<Arc<CliToolEntry>>,
    pub security_contexts: Vec<Arc<SecurityContextEntry>>,
}

impl From<Snapshot> for Entries {
    /// Moves each entry into its `Arc`; nothing is copied.
    fn from(snapshot: Snapshot) -> Self {
        Self {
            workflows: snapshot.workflows.into_iter().map(Arc::new).collect(),
            cli_tools: snapshot.cli_tools.into_iter().map(Arc::new).collect(),
            security_contexts: snapshot
                .security_contexts
                .into_iter()
                .map(Arc::new)
                .collect(),
        }
    }
}

impl Entries {
    /// [`Snapshot::hash`] of the same entries: they serialize to the same JSON.
    pub fn hash(&self) -> String {
        content_hash(self)
    }
}

impl CatalogEntries for Entries {
    fn workflows(&self) -> impl ExactSizeIterator<Item = &WorkflowEntry> {
        self.workflows.iter().map(|w| &**w)
    }
    fn cli_tools(&self) -> impl ExactSizeIterator<Item = &CliToolEntry> {
        self.cli_tools.iter().map(|t| &**t)
    }
    fn security_contexts(&self) -> impl ExactSizeIterator<Item = &SecurityContextEntry> {
        self.security_contexts.iter().map(|c| &**c)
    }
}

/// Field for field what `Snapshot`'s derived `Serialize` writes, so the hash is the same.
impl Serialize for Entries {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Snapshot", 3)?;
        s.serialize_field("workflows", &Shared(&self.workflows))?;
        s.serialize_field("cli_tools", &Shared(&self.cli_tools))?;
        s.serialize_field("security_contexts", &Shared(&self.security_contexts))?;
        s.end()
    }
}

/// A list of shared entries serialized as the entries themselves (serde's `rc` feature is off).
struct Shared<'a, T>(&'a [Arc<T>]);

impl<T: Serialize> Serialize for Shared<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|e| &**e))
    }
}

/// A snapshot ready to serve.
#[derive(Default)]
pub struct ServedSnapshot {
    pub snapshot: Entries,
    pub hash: String,
    tools: Scoped<ToolRef>,
    contexts: Scoped<Arc<SecurityContextEntry>>,
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

/// The default contexts, built once: served entries are told from declared or registered ones by
/// identity ([`is_default_context`]), not by name.
static DEFAULTS: LazyLock<Vec<Arc<SecurityContextEntry>>> = LazyLock::new(|| {
    DEFAULT_CONTEXTS
        .iter()
        .map(|(name, patterns, description)| {
            Arc::new(SecurityContextEntry {
                source: ResourceRef {
                    kind: "SecurityContext".into(),
                    namespace: None,
                    name: (*name).into(),
                    generation: None,
                },
                name: (*name).into(),
                tenant_id: None,
                description: (*description).into(),
                capabilities: patterns
                    .iter()
                    .map(|p| Capability::unconstrained(*p))
                    .collect(),
                deny_list: Vec::new(),
            })
        })
        .collect()
});

/// Adds the default contexts when nothing served (declared or registered over REST) is a
/// system-global context, as upstream seeds them when it has none. Registering or declaring one
/// takes all three away.
pub fn add_default_contexts(entries: &mut Entries) {
    if entries
        .security_contexts
        .iter()
        .any(|c| c.tenant_id.is_none())
    {
        return;
    }
    entries.security_contexts.extend(DEFAULTS.iter().cloned());
}

/// Whether a served context is one of the defaults [`add_default_contexts`] added.
pub fn is_default_context(context: &Arc<SecurityContextEntry>) -> bool {
    DEFAULTS.iter().any(|d| Arc::ptr_eq(d, context))
}

impl ServedSnapshot {
    /// Indexes the snapshot and compiles its workflows. Fails only for a snapshot that did not
    /// come from `crds::compile`, which validated every template and JSONPath.
    pub fn new(snapshot: Entries) -> Result<Self, String> {
        let mut tools = Scoped::new();
        for compiled in CompiledWorkflow::compile_all(&snapshot.workflows)? {
            let w = compiled.entry().clone();
            insert(
                &mut tools,
                &w.tenant_id,
                &w.tool_name,
                ToolRef::Workflow(Arc::new(compiled)),
            );
        }
        for t in &snapshot.cli_tools {
            insert(
                &mut tools,
                &t.tenant_id,
                &t.tool_name,
                ToolRef::CliTool(t.clone()),
            );
        }
        let mut contexts = Scoped::new();
        for c in &snapshot.security_contexts {
            insert(&mut contexts, &c.tenant_id, &c.name, c.clone());
        }
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

/// Adds an object; a later one with the same tenant and name replaces the earlier, as before.
fn insert<T>(map: &mut Scoped<T>, tenant: &Option<String>, name: &str, value: T) {
    let owners = map.entry(name.to_owned()).or_default();
    match tenant {
        None => owners.global = Some(value),
        Some(t) => {
            owners.tenants.insert(t.clone(), value);
        }
    }
}

/// The tenant's own object, else the system-global one; else whether another tenant has one.
fn scoped<T: Clone>(map: &Scoped<T>, tenant: &str, name: &str) -> Lookup<T> {
    let Some(owners) = map.get(name) else {
        return Lookup::Missing;
    };
    match owners.tenants.get(tenant).or(owners.global.as_ref()) {
        Some(found) => Lookup::Found(found.clone()),
        None if owners.tenants.is_empty() => Lookup::Missing,
        None => Lookup::OtherTenant,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_entries_hash_as_the_snapshot_they_came_from() {
        let mut entries = Entries::default();
        add_default_contexts(&mut entries);
        let snapshot = Snapshot {
            security_contexts: entries
                .security_contexts
                .iter()
                .map(|c| (**c).clone())
                .collect(),
            ..Snapshot::default()
        };
        assert_eq!(entries.hash(), snapshot.hash());
        assert_eq!(Entries::default().hash(), Snapshot::default().hash());
    }

    #[test]
    fn defaults_are_added_only_without_a_system_global_context() {
        let mut entries = Entries::default();
        add_default_contexts(&mut entries);
        let names: Vec<&str> = entries
            .security_contexts
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["aegis-system-default", "internal", "zaru-free"]);
        assert!(entries.security_contexts.iter().all(is_default_context));

        // A tenant's context is not a system-global one; a copy of a default is not a default.
        let own = |tenant: Option<&str>| {
            let mut c = (*DEFAULTS[0]).clone();
            c.tenant_id = tenant.map(str::to_owned);
            Arc::new(c)
        };
        let mut tenant_only = Entries {
            security_contexts: vec![own(Some("acme"))],
            ..Entries::default()
        };
        add_default_contexts(&mut tenant_only);
        assert_eq!(tenant_only.security_contexts.len(), 4);
        let mut global = Entries {
            security_contexts: vec![own(None)],
            ..Entries::default()
        };
        add_default_contexts(&mut global);
        assert_eq!(global.security_contexts.len(), 1);
        assert!(!is_default_context(&global.security_contexts[0]));
    }

    fn scoped_map(entries: &[(Option<&str>, &str, u32)]) -> Scoped<u32> {
        let mut map = Scoped::new();
        for (tenant, name, value) in entries {
            insert(&mut map, &tenant.map(str::to_owned), name, *value);
        }
        map
    }

    #[test]
    fn a_tenant_sees_its_own_then_global_objects_and_never_another_tenants() {
        let map = scoped_map(&[
            (None, "shared", 1),
            (Some("acme"), "shared", 2),
            (Some("acme"), "private", 3),
            (Some("acme"), "private", 4),
        ]);
        let found = |tenant, name| match scoped(&map, tenant, name) {
            Lookup::Found(v) => Some(v),
            _ => None,
        };
        assert_eq!(found("acme", "shared"), Some(2));
        assert_eq!(found("other", "shared"), Some(1));
        // The later of two entries with the same tenant and name wins.
        assert_eq!(found("acme", "private"), Some(4));
        assert!(matches!(
            scoped(&map, "other", "private"),
            Lookup::OtherTenant
        ));
        assert!(matches!(scoped(&map, "acme", "absent"), Lookup::Missing));
    }
}
