//! `compile`: resources in, a validated [`Snapshot`] and one result per resource out. Pure: no I/O.
//!
//! Every problem is reported as `field: message`, one per problem, so a rejected resource's status
//! (or the one start-up line of a standalone gateway) says exactly what to fix.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::cli_tool::{CliTool, ContainerResources};
use crate::common::CredentialResolutionPath;
use crate::openapi;
use crate::security_context::SecurityContext;
use crate::snapshot::{CliToolEntry, ResourceRef, SecurityContextEntry, Snapshot, WorkflowEntry};
use crate::tenancy::NamespaceTenancy;
use crate::workflow::{OnError, Workflow};

/// Longest run time a CLI tool or a workflow step may be given.
pub const MAX_TIMEOUT_SECONDS: u32 = 300;
/// Most retries a step may ask for.
pub const MAX_RETRIES: u8 = 10;
/// Default container limits, applied where a CliTool sets none.
pub const DEFAULT_MEMORY: &str = "256Mi";
pub const DEFAULT_CPUS: &str = "1";
pub const DEFAULT_PIDS: u32 = 128;

/// Everything a gateway may serve, before validation.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    pub workflows: Vec<Workflow>,
    pub cli_tools: Vec<CliTool>,
    pub security_contexts: Vec<SecurityContext>,
    /// ConfigMaps that `openapi.config_map_ref` may name.
    pub config_maps: Vec<ConfigMap>,
    /// Documents of `openapi.url` sources, fetched by the caller: URL -> text, or why it could not be fetched.
    pub documents: BTreeMap<String, Result<String, String>>,
    /// Which tenant each namespace may serve; `None` trusts every resource's `tenant_id` (a
    /// manifests folder, whose files one operator owns).
    pub tenancy: Option<NamespaceTenancy>,
}

/// The outcome of [`compile`].
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    pub snapshot: Snapshot,
    /// One per input Workflow, CliTool and SecurityContext, in input order.
    pub results: Vec<ResourceResult>,
}

impl Compiled {
    /// The results of rejected resources.
    pub fn rejected(&self) -> impl Iterator<Item = &ResourceResult> {
        self.results.iter().filter(|r| !r.accepted())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceResult {
    pub resource: ResourceRef,
    /// The tool or context name the resource defines (after defaulting to `metadata.name`).
    pub name: String,
    pub problems: Vec<Problem>,
}

impl ResourceResult {
    pub fn accepted(&self) -> bool {
        self.problems.is_empty()
    }

    /// All problems on one line: `field: message; field: message`.
    pub fn message(&self) -> String {
        self.problems
            .iter()
            .map(Problem::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// One thing wrong with a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Path of the offending field, e.g. `spec.steps[1].extractors.repo_id`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        // Library errors (handlebars, YAML) span lines; a status message and a log line must not.
        let message: String = message.into();
        let message = message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        self.0.push(Problem {
            field: field.into(),
            message,
        });
    }
}

/// Validates every resource and builds the snapshot of the accepted ones.
/// The URLs the workflows read their OpenAPI documents from (sorted, each once): what to fetch
/// into [`Resources::documents`] before compiling. Only absolute http(s) URLs; compile refuses
/// the others without fetching.
pub fn openapi_urls<'a>(workflows: impl IntoIterator<Item = &'a Workflow>) -> Vec<String> {
    let urls: BTreeSet<&str> = workflows
        .into_iter()
        .filter_map(|w| w.spec.api_spec.openapi.url.as_deref())
        .filter(|url| is_http_url(url))
        .collect();
    urls.into_iter().map(str::to_owned).collect()
}

pub fn compile(resources: &Resources) -> Compiled {
    let mut results = Vec::new();
    let mut workflows = Vec::new();
    let mut cli_tools = Vec::new();
    let mut contexts = Vec::new();

    for wf in &resources.workflows {
        let (result, entry) = compile_workflow(wf, resources);
        results.push(result);
        workflows.push(entry);
    }
    for tool in &resources.cli_tools {
        let (result, entry) = compile_cli_tool(tool);
        results.push(result);
        cli_tools.push(entry);
    }
    for sc in &resources.security_contexts {
        let (result, entry) = compile_security_context(sc);
        results.push(result);
        contexts.push(entry);
    }

    // Names are unique per tenant: tools (workflows and CLI tools share one namespace, since an agent
    // calls either by name) and contexts separately. The oldest resource keeps the name.
    let metas: Vec<&ObjectMeta> = resources
        .workflows
        .iter()
        .map(|r| &r.metadata)
        .chain(resources.cli_tools.iter().map(|r| &r.metadata))
        .chain(resources.security_contexts.iter().map(|r| &r.metadata))
        .collect();
    let tenants: Vec<Option<&str>> = resources
        .workflows
        .iter()
        .map(|r| r.spec.tenant_id.as_deref())
        .chain(
            resources
                .cli_tools
                .iter()
                .map(|r| r.spec.tenant_id.as_deref()),
        )
        .chain(
            resources
                .security_contexts
                .iter()
                .map(|r| r.spec.tenant_id.as_deref()),
        )
        .collect();
    // Before names are handed out: a resource its namespace may not declare takes none.
    if let Some(tenancy) = &resources.tenancy {
        for (i, result) in results.iter_mut().enumerate() {
            result
                .problems
                .extend(tenancy.problem(metas[i].namespace.as_deref(), tenants[i]));
        }
    }
    let tool_count = resources.workflows.len() + resources.cli_tools.len();
    let mut order: Vec<usize> = (0..results.len()).collect();
    order.sort_by(|&a, &b| age_key(metas[a]).cmp(&age_key(metas[b])));
    let mut owners: HashMap<(bool, Option<&str>, String), usize> = HashMap::new();
    for i in order {
        if !results[i].accepted() {
            continue;
        }
        let is_tool = i < tool_count;
        let key = (is_tool, tenants[i], results[i].name.clone());
        if let Some(&owner) = owners.get(&key) {
            let (field, what) = if is_tool {
                (name_field(&results[i].resource.kind), "tool")
            } else {
                ("spec.context_name", "security context")
            };
            let message = format!(
                "{what} \"{}\" is already defined in {} by {}",
                results[i].name,
                tenant_phrase(tenants[i]),
                results[owner].resource
            );
            results[i].problems.push(Problem {
                field: field.into(),
                message,
            });
        } else {
            owners.insert(key, i);
        }
    }

    let accepted = |i: usize| results[i].accepted();
    let wf_n = resources.workflows.len();
    let cli_n = resources.cli_tools.len();
    let snapshot = Snapshot {
        workflows: workflows
            .into_iter()
            .enumerate()
            .filter_map(|(i, e)| e.filter(|_| accepted(i)))
            .collect(),
        cli_tools: cli_tools
            .into_iter()
            .enumerate()
            .filter_map(|(i, e)| e.filter(|_| accepted(wf_n + i)))
            .collect(),
        security_contexts: contexts
            .into_iter()
            .enumerate()
            .filter_map(|(i, e)| e.filter(|_| accepted(wf_n + cli_n + i)))
            .collect(),
    };
    Compiled { snapshot, results }
}

fn name_field(kind: &str) -> &'static str {
    if kind == "SecurityContext" {
        "spec.context_name"
    } else {
        "spec.tool_name"
    }
}

fn tenant_phrase(tenant: Option<&str>) -> String {
    match tenant {
        Some(t) => format!("tenant \"{t}\""),
        None => "the system-global scope".into(),
    }
}

/// Older first; resources without a creation time (manifest files) after those with one, by name.
fn age_key(
    meta: &ObjectMeta,
) -> (
    bool,
    Option<k8s_openapi::jiff::Timestamp>,
    Option<&str>,
    Option<&str>,
) {
    let created = meta.creation_timestamp.as_ref().map(|t| t.0);
    (
        created.is_none(),
        created,
        meta.namespace.as_deref(),
        meta.name.as_deref(),
    )
}

fn resource_ref(kind: &str, meta: &ObjectMeta) -> ResourceRef {
    ResourceRef {
        kind: kind.into(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone().unwrap_or_default(),
        generation: meta.generation,
    }
}

fn check_tool_name(problems: &mut Problems, field: &str, name: &str) {
    let valid = (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        problems.add(
            field,
            format!("\"{name}\" is not a valid tool name (1-128 characters of A-Z a-z 0-9 . _ -)"),
        );
    }
}

fn check_tenant(problems: &mut Problems, tenant: Option<&str>) {
    match tenant {
        Some(t) if t.trim().is_empty() => problems.add(
            "spec.tenant_id",
            "must not be empty (omit it for a system-global resource)",
        ),
        Some(t) if t.trim() != t => problems.add(
            "spec.tenant_id",
            format!("\"{t}\" has leading or trailing whitespace"),
        ),
        _ => {}
    }
}

fn check_credential_path(problems: &mut Problems, field: &str, path: &CredentialResolutionPath) {
    let empty = |s: &String| s.trim().is_empty();
    let missing = match path {
        CredentialResolutionPath::SystemJit {
            openbao_engine_path,
            role,
        } => [("openbao_engine_path", openbao_engine_path), ("role", role)]
            .into_iter()
            .filter(|(_, v)| empty(v))
            .map(|(k, _)| k)
            .collect::<Vec<_>>(),
        CredentialResolutionPath::HumanDelegated { target_service } => {
            if empty(target_service) {
                vec!["target_service"]
            } else {
                vec![]
            }
        }
        CredentialResolutionPath::Auto {
            system_jit_openbao_engine_path,
            system_jit_role,
            target_service,
        } => [
            (
                "system_jit_openbao_engine_path",
                system_jit_openbao_engine_path,
            ),
            ("system_jit_role", system_jit_role),
            ("target_service", target_service),
        ]
        .into_iter()
        .filter(|(_, v)| empty(v))
        .map(|(k, _)| k)
        .collect(),
        CredentialResolutionPath::StaticRef { key } => {
            if empty(key) {
                vec!["key"]
            } else {
                vec![]
            }
        }
        CredentialResolutionPath::UserBound { provider } => {
            if empty(provider) {
                vec!["provider"]
            } else {
                vec![]
            }
        }
    };
    for key in missing {
        let variant = match path {
            CredentialResolutionPath::SystemJit { .. } => "SystemJit",
            CredentialResolutionPath::HumanDelegated { .. } => "HumanDelegated",
            CredentialResolutionPath::Auto { .. } => "Auto",
            CredentialResolutionPath::StaticRef { .. } => "StaticRef",
            CredentialResolutionPath::UserBound { .. } => "UserBound",
        };
        problems.add(format!("{field}.{variant}.{key}"), "must not be empty");
    }
}

fn compile_workflow(
    wf: &Workflow,
    resources: &Resources,
) -> (ResourceResult, Option<WorkflowEntry>) {
    let spec = &wf.spec;
    let mut p = Problems::default();
    let source = resource_ref("Workflow", &wf.metadata);
    let tool_name = spec
        .tool_name
        .clone()
        .unwrap_or_else(|| source.name.clone());
    check_tool_name(&mut p, "spec.tool_name", &tool_name);
    check_tenant(&mut p, spec.tenant_id.as_deref());

    if spec.input_schema.get("type").and_then(Value::as_str) != Some("object") {
        p.add(
            "spec.input_schema",
            "must be a JSON Schema object with \"type\": \"object\"",
        );
    } else if let Err(e) = crate::workflow::input_validator(&spec.input_schema) {
        p.add(
            "spec.input_schema",
            format!("is not a usable JSON Schema: {e}"),
        );
    }
    let base_url = spec.api_spec.base_url.trim_end_matches('/').to_owned();
    if !is_http_url(&base_url) {
        p.add(
            "spec.api_spec.base_url",
            format!(
                "\"{}\" is not an absolute http(s) URL",
                spec.api_spec.base_url
            ),
        );
    }
    if let Some(path) = &spec.api_spec.credential_path {
        check_credential_path(&mut p, "spec.api_spec.credential_path", path);
    }

    let operations = load_operations(wf, resources, &mut p);

    if spec.steps.is_empty() {
        p.add("spec.steps", "a workflow needs at least one step");
    }
    let mut used = BTreeMap::new();
    let mut seen_steps: Vec<&str> = Vec::new();
    for (i, step) in spec.steps.iter().enumerate() {
        let f = format!("spec.steps[{i}]");
        if step.name.trim().is_empty() {
            p.add(format!("{f}.name"), "must not be empty");
        } else if seen_steps.contains(&step.name.as_str()) {
            p.add(
                format!("{f}.name"),
                format!("duplicate step name \"{}\"", step.name),
            );
        }
        seen_steps.push(&step.name);

        if let Some(ops) = &operations {
            match ops.get(&step.operation_id) {
                Some(op) => {
                    used.insert(step.operation_id.clone(), op.clone());
                }
                None => p.add(
                    format!("{f}.operation_id"),
                    format!(
                        "operationId \"{}\" is not defined in the OpenAPI document",
                        step.operation_id
                    ),
                ),
            }
        }
        if let Some(template) = &step.body_template
            && let Err(e) = handlebars::Template::compile(template)
        {
            p.add(
                format!("{f}.body_template"),
                format!("template does not compile: {e}"),
            );
        }
        for (key, path) in &step.extractors {
            if let Err(e) = serde_json_path::JsonPath::parse(path) {
                p.add(
                    format!("{f}.extractors.{key}"),
                    format!("invalid JSONPath \"{path}\": {e}"),
                );
            }
        }
        match (step.on_error, step.retries) {
            (OnError::Retry, Some(n)) if n == 0 || n > MAX_RETRIES => p.add(
                format!("{f}.retries"),
                format!("must be between 1 and {MAX_RETRIES} (got {n})"),
            ),
            (OnError::Fail | OnError::Continue, Some(_)) => {
                p.add(format!("{f}.retries"), "only valid with on_error: retry")
            }
            _ => {}
        }
        if let Some(t) = step.timeout_seconds
            && (t == 0 || t > MAX_TIMEOUT_SECONDS)
        {
            p.add(
                format!("{f}.timeout_seconds"),
                format!("must be between 1 and {MAX_TIMEOUT_SECONDS} (got {t})"),
            );
        }
    }

    let result = ResourceResult {
        resource: source.clone(),
        name: tool_name.clone(),
        problems: p.0,
    };
    let entry = result.accepted().then(|| WorkflowEntry {
        source,
        tool_name,
        tenant_id: spec.tenant_id.clone(),
        description: spec.description.clone(),
        input_schema: spec.input_schema.clone(),
        base_url,
        credential_path: spec.api_spec.credential_path.clone(),
        operations: used,
        steps: spec.steps.clone(),
    });
    (result, entry)
}

/// `http(s)://host[:port][/path]`, with a host name, IPv4 or bracketed IPv6 address and no user info.
fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|r| {
        let authority = r.split(['/', '?', '#']).next().unwrap_or_default();
        let host = if authority.starts_with('[') {
            authority.split_inclusive(']').next().unwrap_or_default()
        } else {
            authority.split(':').next().unwrap_or_default()
        };
        let port = &authority[host.len()..];
        let host_ok = if let Some(v6) = host.strip_prefix('[') {
            v6.strip_suffix(']')
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
        } else {
            is_host_name(host)
        };
        let port_ok = port.is_empty()
            || port
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        host_ok && port_ok
    })
}

/// Letters, digits, `-` and `.`, in labels that neither start nor end with `-` or `.`.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Finds, parses and reads the workflow's OpenAPI document; `None` (with a problem) when it cannot.
fn load_operations(
    wf: &Workflow,
    resources: &Resources,
    p: &mut Problems,
) -> Option<BTreeMap<String, openapi::Operation>> {
    let source = &wf.spec.api_spec.openapi;
    let field = "spec.api_spec.openapi";
    let set = [
        source.inline.is_some(),
        source.config_map_ref.is_some(),
        source.url.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        p.add(field, "set exactly one of inline, config_map_ref or url");
        return None;
    }
    let (doc_field, doc) = if let Some(inline) = &source.inline {
        (format!("{field}.inline"), Ok(inline.clone()))
    } else if let Some(cm_ref) = &source.config_map_ref {
        let f = format!("{field}.config_map_ref");
        let namespace = wf.metadata.namespace.as_deref();
        let at = namespace.map(|ns| format!("{ns}/")).unwrap_or_default();
        let Some(cm) = resources.config_maps.iter().find(|cm| {
            cm.metadata.name.as_deref() == Some(&cm_ref.name)
                && cm.metadata.namespace.as_deref() == namespace
        }) else {
            p.add(f, format!("ConfigMap {at}{} not found", cm_ref.name));
            return None;
        };
        let Some(text) = cm.data.as_ref().and_then(|d| d.get(&cm_ref.key)) else {
            p.add(
                f,
                format!(
                    "key \"{}\" not found in ConfigMap {at}{}",
                    cm_ref.key, cm_ref.name
                ),
            );
            return None;
        };
        (f, openapi::parse_document(text))
    } else {
        let url = source.url.as_deref().unwrap_or_default();
        let f = format!("{field}.url");
        if !is_http_url(url) {
            p.add(f, format!("\"{url}\" is not an absolute http(s) URL"));
            return None;
        }
        match resources.documents.get(url) {
            Some(Ok(text)) => (f, openapi::parse_document(text)),
            Some(Err(e)) => (f, Err(format!("could not fetch {url}: {e}"))),
            None => (f, Err(format!("{url} has not been fetched"))),
        }
    };
    match doc.and_then(|d| openapi::operations(&d)) {
        Ok(ops) => Some(ops),
        Err(e) => {
            p.add(doc_field, e);
            None
        }
    }
}

fn compile_cli_tool(tool: &CliTool) -> (ResourceResult, Option<CliToolEntry>) {
    let spec = &tool.spec;
    let mut p = Problems::default();
    let source = resource_ref("CliTool", &tool.metadata);
    let tool_name = spec
        .tool_name
        .clone()
        .unwrap_or_else(|| source.name.clone());
    check_tool_name(&mut p, "spec.tool_name", &tool_name);
    check_tenant(&mut p, spec.tenant_id.as_deref());
    if spec.docker_image.trim().is_empty() {
        p.add("spec.docker_image", "must not be empty");
    }
    if spec.allowed_subcommands.is_empty() {
        p.add(
            "spec.allowed_subcommands",
            "must list at least one subcommand",
        );
    }
    for (i, sub) in spec.allowed_subcommands.iter().enumerate() {
        if sub.is_empty() || sub.contains(char::is_whitespace) {
            p.add(
                format!("spec.allowed_subcommands[{i}]"),
                format!("\"{sub}\" is not a valid subcommand (one word, no spaces)"),
            );
        }
    }
    let t = spec.default_timeout_seconds;
    if t == 0 || t > MAX_TIMEOUT_SECONDS {
        p.add(
            "spec.default_timeout_seconds",
            format!("must be between 1 and {MAX_TIMEOUT_SECONDS} (got {t})"),
        );
    }
    let requested = spec.resources.clone().unwrap_or_default();
    if let Some(m) = &requested.memory
        && !is_memory_quantity(m)
    {
        p.add(
            "spec.resources.memory",
            format!("\"{m}\" is not a memory quantity of at least 6Mi (e.g. 256Mi, 1Gi, 512M)"),
        );
    }
    if let Some(c) = &requested.cpus
        && !c.parse::<f64>().is_ok_and(|v| (0.01..=64.0).contains(&v))
    {
        p.add(
            "spec.resources.cpus",
            format!("\"{c}\" is not a CPU count between 0.01 and 64 (e.g. \"0.5\")"),
        );
    }
    if requested.pids == Some(0) {
        p.add("spec.resources.pids", "must be at least 1");
    }
    if let Some(path) = &spec.registry_credential_path {
        check_credential_path(&mut p, "spec.registry_credential_path", path);
    }

    let result = ResourceResult {
        resource: source.clone(),
        name: tool_name.clone(),
        problems: p.0,
    };
    let entry = result.accepted().then(|| CliToolEntry {
        source,
        tool_name,
        tenant_id: spec.tenant_id.clone(),
        description: spec.description.clone(),
        docker_image: spec.docker_image.clone(),
        allowed_subcommands: spec.allowed_subcommands.clone(),
        require_semantic_judge: spec.require_semantic_judge,
        default_timeout_seconds: spec.default_timeout_seconds,
        resources: ContainerResources {
            memory: requested.memory.or_else(|| Some(DEFAULT_MEMORY.into())),
            cpus: requested.cpus.or_else(|| Some(DEFAULT_CPUS.into())),
            pids: requested.pids.or(Some(DEFAULT_PIDS)),
        },
        registry_credential_path: spec.registry_credential_path.clone(),
    });
    (result, entry)
}

/// Smallest memory limit container runtimes accept.
const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

/// A Kubernetes-style quantity (`256Mi`, `1G`, `67108864`) of at least [`MIN_MEMORY_BYTES`].
fn is_memory_quantity(q: &str) -> bool {
    let digits = q.bytes().take_while(u8::is_ascii_digit).count();
    let unit: u64 = match &q[digits..] {
        "" => 1,
        "k" | "K" => 1000,
        "M" => 1000 * 1000,
        "G" => 1000 * 1000 * 1000,
        "Ki" => 1024,
        "Mi" => 1024 * 1024,
        "Gi" => 1024 * 1024 * 1024,
        _ => return false,
    };
    q[..digits]
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .is_some_and(|bytes| bytes >= MIN_MEMORY_BYTES)
}

/// `*`, `prefix.*`, or an exact name with no `*`.
fn is_valid_pattern(pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let body = pattern.strip_suffix(".*").unwrap_or(pattern);
    !body.is_empty() && !body.contains('*') && !body.contains(char::is_whitespace)
}

fn compile_security_context(
    sc: &SecurityContext,
) -> (ResourceResult, Option<SecurityContextEntry>) {
    let spec = &sc.spec;
    let mut p = Problems::default();
    let source = resource_ref("SecurityContext", &sc.metadata);
    let name = spec
        .context_name
        .clone()
        .unwrap_or_else(|| source.name.clone());
    let valid_name = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid_name {
        p.add(
            "spec.context_name",
            format!("\"{name}\" must match ^[a-z][a-z0-9-]*$"),
        );
    }
    check_tenant(&mut p, spec.tenant_id.as_deref());
    const PATTERN_HINT: &str = "use \"*\", \"prefix.*\" or an exact tool name";
    for (i, cap) in spec.capabilities.iter().enumerate() {
        let f = format!("spec.capabilities[{i}]");
        if !is_valid_pattern(&cap.tool_pattern) {
            p.add(
                format!("{f}.tool_pattern"),
                format!(
                    "\"{}\" is not a valid pattern ({PATTERN_HINT})",
                    cap.tool_pattern
                ),
            );
        }
        if let Some(rl) = cap.rate_limit
            && (rl.calls == 0 || rl.per_seconds == 0)
        {
            p.add(
                format!("{f}.rate_limit"),
                "calls and per_seconds must both be at least 1",
            );
        }
        if cap.max_concurrent == Some(0) {
            p.add(format!("{f}.max_concurrent"), "must be at least 1");
        }
        for (j, d) in cap.domain_allowlist.iter().flatten().enumerate() {
            if !is_host_name(d) {
                // `*.example.com` is a common guess; `example.com` already covers its subdomains.
                p.add(
                    format!("{f}.domain_allowlist[{j}]"),
                    format!(
                        "\"{d}\" is not a host name (write example.com; it also matches api.example.com)"
                    ),
                );
            }
        }
        for (j, path) in cap.path_allowlist.iter().flatten().enumerate() {
            if !path.starts_with('/') {
                p.add(
                    format!("{f}.path_allowlist[{j}]"),
                    format!("\"{path}\" is not an absolute path"),
                );
            }
        }
    }
    for (i, pattern) in spec.deny_list.iter().enumerate() {
        if !is_valid_pattern(pattern) {
            p.add(
                format!("spec.deny_list[{i}]"),
                format!("\"{pattern}\" is not a valid pattern ({PATTERN_HINT})"),
            );
        }
    }

    let result = ResourceResult {
        resource: source.clone(),
        name: name.clone(),
        problems: p.0,
    };
    let entry = result.accepted().then(|| SecurityContextEntry {
        source,
        name,
        tenant_id: spec.tenant_id.clone(),
        description: spec.description.clone(),
        capabilities: spec.capabilities.clone(),
        deny_list: spec.deny_list.clone(),
    });
    (result, entry)
}
