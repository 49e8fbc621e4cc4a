//! Unit tests for `aegis_seal_crds::compile`: every validation rule has a failing case asserting its
//! exact `field: message`, and a rejected resource never reaches the snapshot while valid ones do.
//!
//! Resources are written as YAML manifests and read with `parse_manifests`. Most cases start from
//! one valid resource of each kind (`WORKFLOW`, `CLI_TOOL`, `SECURITY_CONTEXT`) and change exactly
//! the field under test with a JSON merge patch (RFC 7386, written as YAML; `null` removes a key).

use std::collections::BTreeMap;

use aegis_seal_crds::compile::{
    DEFAULT_CPUS, DEFAULT_MEMORY, DEFAULT_PIDS, MAX_RETRIES, MAX_TIMEOUT_SECONDS,
};
use aegis_seal_crds::openapi::{Operation, Parameter, ParameterLocation};
use aegis_seal_crds::{
    Compiled, ContainerResources, CredentialResolutionPath, OnError, Problem, ResourceRef,
    Resources, Snapshot, compile, parse_manifests,
};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A valid workflow: two steps over an inline OpenAPI 3 document that defines three operations.
const WORKFLOW: &str = r#"
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata:
  name: get-repo
  namespace: tools
  generation: 4
spec:
  tool_name: github.get_repo
  description: Reads one repository and files an issue
  input_schema:
    type: object
    properties:
      owner: {type: string}
      repo: {type: string}
  api_spec:
    base_url: https://api.github.com/
    openapi:
      inline:
        openapi: 3.0.3
        info: {title: GitHub, version: "1"}
        paths:
          "/repos/{owner}/{repo}":
            parameters:
              - {name: owner, in: path}
              - {name: repo, in: path}
            get: {operationId: getRepo}
            delete: {operationId: deleteRepo}
          "/repos/{owner}/{repo}/issues":
            post:
              operationId: createIssue
              parameters:
                - {name: owner, in: path}
                - {name: repo, in: path}
                - {name: X-Trace, in: header}
              requestBody: {content: {}}
  steps:
    - name: fetch
      operation_id: getRepo
      body_template: '{"owner": "{{owner}}", "repo": "{{repo}}"}'
      extractors:
        id: $.id
    - name: report
      operation_id: createIssue
      on_error: retry
      retries: 2
      timeout_seconds: 30
"#;

/// A valid CLI tool that sets no limits (so every default applies).
const CLI_TOOL: &str = r#"
apiVersion: seal.100monkeys.ai/v1
kind: CliTool
metadata:
  name: kubectl
  namespace: tools
spec:
  description: Read-only kubectl
  docker_image: bitnami/kubectl:1.31
  allowed_subcommands: [get, describe]
"#;

/// A valid security context.
const SECURITY_CONTEXT: &str = r#"
apiVersion: seal.100monkeys.ai/v1
kind: SecurityContext
metadata:
  name: readonly
  namespace: tools
spec:
  description: Read-only access
  capabilities:
    - tool_pattern: github.*
      domain_allowlist: [api.github.com]
      path_allowlist: [/repos]
      rate_limit: {calls: 10, per_seconds: 60}
    - tool_pattern: kubectl
      max_concurrent: 2
    - tool_pattern: "*"
  deny_list: [github.delete_repo]
"#;

/// Handlebars' error for the template `{{`, on one line.
const HANDLEBARS_UNCLOSED: &str = "template does not compile: Template error: invalid handlebars syntax: \
    expected identifier, subexpression, leading_tilde_to_omit_whitespace, or path_inline \
    --> Template error in \"Unnamed\":1:3 | 0 | {{ |-- | = reason: invalid handlebars syntax: \
    expected identifier, subexpression, leading_tilde_to_omit_whitespace, or path_inline";
const TOOL_NAME_HINT: &str = "is not a valid tool name (1-128 characters of A-Z a-z 0-9 . _ -)";
const PATTERN_HINT: &str = "is not a valid pattern (use \"*\", \"prefix.*\" or an exact tool name)";

/// Applies a JSON merge patch (written as YAML) to a YAML manifest.
fn patch(base: &str, patch: &str) -> String {
    let mut doc: Value = serde_yaml::from_str(base).expect("base manifest is YAML");
    let patch: Value = serde_yaml::from_str(patch).expect("patch is YAML");
    merge(&mut doc, patch);
    serde_yaml::to_string(&doc).expect("a JSON value serializes as YAML")
}

fn merge(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let Value::Object(map) = target else {
                unreachable!()
            };
            for (key, value) in fields {
                if value.is_null() {
                    map.remove(&key);
                } else {
                    merge(map.entry(key).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other,
    }
}

fn workflow(p: &str) -> String {
    patch(WORKFLOW, p)
}

fn cli_tool(p: &str) -> String {
    patch(CLI_TOOL, p)
}

fn security_context(p: &str) -> String {
    patch(SECURITY_CONTEXT, p)
}

/// Parses manifests that must be valid.
fn resources(docs: &[&str]) -> Resources {
    let mut r = Resources::default();
    for doc in docs {
        if let Err(e) = parse_manifests(doc, &mut r) {
            panic!("manifest does not parse: {e}\n{doc}");
        }
    }
    r
}

fn problems(expected: &[(&str, &str)]) -> Vec<Problem> {
    expected
        .iter()
        .map(|(field, message)| Problem {
            field: (*field).into(),
            message: (*message).into(),
        })
        .collect()
}

fn source(kind: &str, namespace: Option<&str>, name: &str) -> ResourceRef {
    ResourceRef {
        kind: kind.into(),
        namespace: namespace.map(Into::into),
        name: name.into(),
        generation: None,
    }
}

/// Every entry of the snapshot, as `Kind namespace/name`.
fn served(snapshot: &Snapshot) -> Vec<String> {
    let mut out: Vec<String> = snapshot
        .workflows
        .iter()
        .map(|e| e.source.to_string())
        .chain(snapshot.cli_tools.iter().map(|e| e.source.to_string()))
        .chain(
            snapshot
                .security_contexts
                .iter()
                .map(|e| e.source.to_string()),
        )
        .collect();
    out.sort();
    out
}

/// The result of the resource `Kind namespace/name` (or `Kind name`).
fn result_of<'a>(compiled: &'a Compiled, resource: &str) -> &'a aegis_seal_crds::ResourceResult {
    compiled
        .results
        .iter()
        .find(|r| r.resource.to_string() == resource)
        .unwrap_or_else(|| panic!("no result for {resource}: {:#?}", compiled.results))
}

/// Compiles `bad` together with `extra` and one valid companion of each kind, then asserts that
/// `bad` (the only resource in its manifest) is rejected with exactly `expected`, that it is absent
/// from the snapshot, and that every companion is accepted and served.
fn assert_rejected_with(mut extra: Resources, bad: &str, expected: &[(&str, &str)]) {
    let alone = resources(&[bad]);
    let (kind, meta) = match (
        alone.workflows.first(),
        alone.cli_tools.first(),
        alone.security_contexts.first(),
    ) {
        (Some(wf), None, None) => ("Workflow", &wf.metadata),
        (None, Some(tool), None) => ("CliTool", &tool.metadata),
        (None, None, Some(sc)) => ("SecurityContext", &sc.metadata),
        _ => panic!("`bad` must hold exactly one Workflow, CliTool or SecurityContext"),
    };
    let bad_ref = source(
        kind,
        meta.namespace.as_deref(),
        meta.name.as_deref().unwrap(),
    );

    let companions = [
        workflow("{metadata: {name: companion-wf}, spec: {tool_name: companion.workflow}}"),
        cli_tool("{metadata: {name: companion-cli}, spec: {tool_name: companion.cli}}"),
        security_context("{metadata: {name: companion-sc}, spec: {context_name: companion}}"),
    ];
    for doc in [bad]
        .into_iter()
        .chain(companions.iter().map(String::as_str))
    {
        parse_manifests(doc, &mut extra).unwrap();
    }
    let compiled = compile(&extra);

    let result = result_of(&compiled, &bad_ref.to_string());
    assert_eq!(result.problems, problems(expected), "problems of {bad_ref}");
    let message = expected
        .iter()
        .map(|(f, m)| format!("{f}: {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    assert_eq!(result.message(), message);
    assert!(!result.accepted());

    let rejected: Vec<String> = compiled
        .rejected()
        .map(|r| r.resource.to_string())
        .collect();
    assert_eq!(rejected, [bad_ref.to_string()]);
    assert_eq!(
        served(&compiled.snapshot),
        [
            "CliTool tools/companion-cli",
            "SecurityContext tools/companion-sc",
            "Workflow tools/companion-wf",
        ],
        "only the companions are served, never {bad_ref}"
    );
}

fn assert_rejected(bad: &str, expected: &[(&str, &str)]) {
    assert_rejected_with(Resources::default(), bad, expected);
}

/// Compiles manifests that must all be accepted.
fn compile_valid(docs: &[&str]) -> Compiled {
    let compiled = compile(&resources(docs));
    let rejected: Vec<String> = compiled
        .rejected()
        .map(|r| format!("{}: {}", r.resource, r.message()))
        .collect();
    assert!(rejected.is_empty(), "unexpectedly rejected: {rejected:#?}");
    compiled
}

fn config_map(namespace: Option<&str>, name: &str, data: &[(&str, &str)]) -> String {
    let mut doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": data.iter().map(|(k, v)| (k.to_string(), Value::from(*v))).collect::<serde_json::Map<_, _>>(),
    });
    if let Some(ns) = namespace {
        doc["metadata"]["namespace"] = ns.into();
    }
    serde_yaml::to_string(&doc).unwrap()
}

/// A workflow whose OpenAPI document is read from a ConfigMap key.
fn workflow_from_config_map(name: &str, key: &str) -> String {
    workflow(&format!(
        "spec: {{api_spec: {{openapi: {{inline: null, config_map_ref: {{name: {name}, key: {key}}}}}}}}}"
    ))
}

/// A workflow whose OpenAPI document is fetched from `url`.
fn workflow_from_url(url: &str) -> String {
    workflow(&format!(
        "spec: {{api_spec: {{openapi: {{inline: null, url: '{url}'}}}}}}"
    ))
}

/// The inline document of `WORKFLOW`, as YAML text.
fn openapi_text() -> String {
    let doc: Value = serde_yaml::from_str(WORKFLOW).unwrap();
    serde_yaml::to_string(&doc["spec"]["api_spec"]["openapi"]["inline"]).unwrap()
}

/// A minimal workflow with one step whose step fields are `step` (YAML flow mapping body).
fn workflow_step(step: &str) -> String {
    workflow(&format!(
        "spec: {{steps: [{{name: only, operation_id: getRepo, {step}}}]}}"
    ))
}

// ---------------------------------------------------------------------------------------------
// Valid resources and the snapshot
// ---------------------------------------------------------------------------------------------

#[test]
fn the_fixtures_compile_and_results_follow_input_order() {
    let compiled = compile_valid(&[SECURITY_CONTEXT, CLI_TOOL, WORKFLOW]);
    let results: Vec<(String, String)> = compiled
        .results
        .iter()
        .map(|r| (r.resource.to_string(), r.name.clone()))
        .collect();
    // Workflows first, then CLI tools, then security contexts, whatever the manifest order.
    assert_eq!(
        results,
        [
            ("Workflow tools/get-repo".into(), "github.get_repo".into()),
            ("CliTool tools/kubectl".into(), "kubectl".into()),
            ("SecurityContext tools/readonly".into(), "readonly".into()),
        ]
    );
    assert!(compiled.results.iter().all(|r| r.message().is_empty()));
    assert_eq!(compiled.rejected().count(), 0);
    assert_eq!(
        served(&compiled.snapshot),
        [
            "CliTool tools/kubectl",
            "SecurityContext tools/readonly",
            "Workflow tools/get-repo"
        ]
    );
}

/// name, operation_id, on_error, retries, timeout_seconds
type StepSummary<'a> = (&'a str, &'a str, OnError, Option<u8>, Option<u32>);

#[test]
fn a_workflow_with_an_inline_document_keeps_only_the_operations_its_steps_use() {
    let compiled = compile_valid(&[WORKFLOW]);
    let [entry] = compiled.snapshot.workflows.as_slice() else {
        panic!("one workflow expected: {:#?}", compiled.snapshot);
    };
    let path = |name: &str| Parameter {
        name: name.into(),
        location: ParameterLocation::Path,
        required: true,
    };
    let expected: BTreeMap<String, Operation> = [
        (
            "getRepo".to_string(),
            Operation {
                method: "GET".into(),
                path: "/repos/{owner}/{repo}".into(),
                parameters: vec![path("owner"), path("repo")],
                has_request_body: false,
            },
        ),
        (
            "createIssue".to_string(),
            Operation {
                method: "POST".into(),
                path: "/repos/{owner}/{repo}/issues".into(),
                parameters: vec![
                    path("owner"),
                    path("repo"),
                    Parameter {
                        name: "X-Trace".into(),
                        location: ParameterLocation::Header,
                        required: false,
                    },
                ],
                has_request_body: true,
            },
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(entry.operations, expected, "deleteRepo is not used");
    assert_eq!(
        entry.source,
        ResourceRef {
            kind: "Workflow".into(),
            namespace: Some("tools".into()),
            name: "get-repo".into(),
            generation: Some(4),
        }
    );
    assert_eq!(entry.tool_name, "github.get_repo");
    assert_eq!(entry.tenant_id, None);
    assert_eq!(entry.description, "Reads one repository and files an issue");
    assert_eq!(
        entry.base_url, "https://api.github.com",
        "trailing slash removed"
    );
    assert_eq!(entry.credential_path, None);
    assert_eq!(
        entry.input_schema,
        serde_json::json!({"type": "object", "properties": {
            "owner": {"type": "string"}, "repo": {"type": "string"}}})
    );
    let steps: Vec<StepSummary> = entry
        .steps
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.operation_id.as_str(),
                s.on_error,
                s.retries,
                s.timeout_seconds,
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("fetch", "getRepo", OnError::Fail, None, None),
            ("report", "createIssue", OnError::Retry, Some(2), Some(30)),
        ]
    );
    assert_eq!(
        entry.steps[0].body_template.as_deref(),
        Some(r#"{"owner": "{{owner}}", "repo": "{{repo}}"}"#)
    );
    assert_eq!(entry.steps[0].extractors["id"], "$.id");
}

#[test]
fn a_workflow_keeps_its_tenant_and_credential_path() {
    let compiled = compile_valid(&[&workflow(
        "spec: {tenant_id: acme, api_spec: {credential_path: {StaticRef: {key: github/token}}}}",
    )]);
    let entry = &compiled.snapshot.workflows[0];
    assert_eq!(entry.tenant_id.as_deref(), Some("acme"));
    assert_eq!(
        entry.credential_path,
        Some(CredentialResolutionPath::StaticRef {
            key: "github/token".into()
        })
    );
}

#[test]
fn input_schema_defaults_to_an_empty_object_schema() {
    let compiled = compile_valid(&[&workflow("spec: {input_schema: null}")]);
    assert_eq!(
        compiled.snapshot.workflows[0].input_schema,
        serde_json::json!({"type": "object"})
    );
}

#[test]
fn tool_name_defaults_to_metadata_name() {
    let compiled = compile_valid(&[
        &workflow("{metadata: {name: repo-reader}, spec: {tool_name: null}}"),
        CLI_TOOL,
        &security_context("spec: {context_name: null}"),
    ]);
    let names: Vec<&str> = compiled.results.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["repo-reader", "kubectl", "readonly"]);
    assert_eq!(compiled.snapshot.workflows[0].tool_name, "repo-reader");
    assert_eq!(compiled.snapshot.cli_tools[0].tool_name, "kubectl");
    assert_eq!(compiled.snapshot.security_contexts[0].name, "readonly");
}

#[test]
fn an_explicit_tool_name_overrides_metadata_name() {
    let compiled = compile_valid(&[
        &cli_tool("spec: {tool_name: k8s.kubectl}"),
        &security_context("spec: {context_name: read-only-v2}"),
    ]);
    assert_eq!(compiled.results[0].name, "k8s.kubectl");
    assert_eq!(compiled.snapshot.cli_tools[0].tool_name, "k8s.kubectl");
    assert_eq!(compiled.results[1].name, "read-only-v2");
    assert_eq!(compiled.snapshot.security_contexts[0].name, "read-only-v2");
}

#[test]
fn cli_tool_defaults() {
    assert_eq!(DEFAULT_MEMORY, "256Mi");
    assert_eq!(DEFAULT_CPUS, "1");
    assert_eq!(DEFAULT_PIDS, 128);
    let compiled = compile_valid(&[CLI_TOOL]);
    let [entry] = compiled.snapshot.cli_tools.as_slice() else {
        panic!("one CLI tool expected");
    };
    assert_eq!(
        entry.resources,
        ContainerResources {
            memory: Some("256Mi".into()),
            cpus: Some("1".into()),
            pids: Some(128),
        }
    );
    assert_eq!(entry.default_timeout_seconds, 60);
    assert!(!entry.require_semantic_judge);
    assert_eq!(entry.tool_name, "kubectl");
    assert_eq!(entry.tenant_id, None);
    assert_eq!(entry.description, "Read-only kubectl");
    assert_eq!(entry.docker_image, "bitnami/kubectl:1.31");
    assert_eq!(entry.allowed_subcommands, ["get", "describe"]);
    assert_eq!(entry.registry_credential_path, None);
    assert_eq!(entry.source, source("CliTool", Some("tools"), "kubectl"));
}

#[test]
fn cli_tool_defaults_fill_only_the_limits_not_set() {
    let compiled = compile_valid(&[
        &cli_tool("{metadata: {name: a}, spec: {resources: {memory: 1Gi}}}"),
        &cli_tool("{metadata: {name: b}, spec: {resources: {cpus: '0.5', pids: 10}}}"),
        &cli_tool("{metadata: {name: c}, spec: {resources: {}}}"),
    ]);
    let limits: Vec<&ContainerResources> = compiled
        .snapshot
        .cli_tools
        .iter()
        .map(|e| &e.resources)
        .collect();
    let limit = |memory: &str, cpus: &str, pids: u32| ContainerResources {
        memory: Some(memory.into()),
        cpus: Some(cpus.into()),
        pids: Some(pids),
    };
    assert_eq!(
        limits,
        [
            &limit("1Gi", "1", 128),
            &limit("256Mi", "0.5", 10),
            &limit("256Mi", "1", 128)
        ]
    );
}

#[test]
fn cli_tool_keeps_explicit_settings() {
    let compiled = compile_valid(&[&cli_tool(
        "spec: {tenant_id: acme, require_semantic_judge: true, default_timeout_seconds: 120, \
         registry_credential_path: {SystemJit: {openbao_engine_path: registry, role: pull}}}",
    )]);
    let entry = &compiled.snapshot.cli_tools[0];
    assert!(entry.require_semantic_judge);
    assert_eq!(entry.default_timeout_seconds, 120);
    assert_eq!(entry.tenant_id.as_deref(), Some("acme"));
    assert_eq!(
        entry.registry_credential_path,
        Some(CredentialResolutionPath::SystemJit {
            openbao_engine_path: "registry".into(),
            role: "pull".into()
        })
    );
}

#[test]
fn security_context_entry_keeps_its_rules() {
    let compiled = compile_valid(&[&security_context("spec: {tenant_id: acme}")]);
    let [entry] = compiled.snapshot.security_contexts.as_slice() else {
        panic!("one security context expected");
    };
    assert_eq!(entry.name, "readonly");
    assert_eq!(entry.tenant_id.as_deref(), Some("acme"));
    assert_eq!(entry.description, "Read-only access");
    let patterns: Vec<&str> = entry
        .capabilities
        .iter()
        .map(|c| c.tool_pattern.as_str())
        .collect();
    assert_eq!(patterns, ["github.*", "kubectl", "*"]);
    assert_eq!(entry.deny_list, ["github.delete_repo"]);
    let rl = entry.capabilities[0].rate_limit.unwrap();
    assert_eq!((rl.calls, rl.per_seconds), (10, 60));
    assert_eq!(entry.capabilities[0].max_concurrent, None);
    assert_eq!(entry.capabilities[1].max_concurrent, Some(2));
}

#[test]
fn an_empty_input_compiles_to_an_empty_snapshot() {
    let compiled = compile(&Resources::default());
    assert!(compiled.results.is_empty());
    assert_eq!(compiled.snapshot, Snapshot::default());
}

// ---------------------------------------------------------------------------------------------
// Snapshot::hash
// ---------------------------------------------------------------------------------------------

#[test]
fn hash_of_the_empty_snapshot_is_the_sha256_of_its_json() {
    // sha256 of `{"workflows":[],"cli_tools":[],"security_contexts":[]}`
    assert_eq!(
        Snapshot::default().hash(),
        "sha256:a1b194b69c0a3a267cd029f1c330c09f8c4485f7c0a6ed7c1017b899d8edc463"
    );
}

#[test]
fn hash_is_stable_across_compilations() {
    let docs = [WORKFLOW, CLI_TOOL, SECURITY_CONTEXT];
    let first = compile_valid(&docs).snapshot.hash();
    let second = compile_valid(&docs).snapshot.hash();
    assert_eq!(first, second);
    assert!(first.starts_with("sha256:"), "{first}");
    let hex = &first["sha256:".len()..];
    assert_eq!(hex.len(), 64, "{first}");
    assert!(
        hex.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{first}"
    );
    assert_ne!(first, Snapshot::default().hash());
    // A snapshot that went through JSON hashes the same.
    let json = serde_json::to_string(&compile_valid(&docs).snapshot).unwrap();
    let back: Snapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back.hash(), first);
}

#[test]
fn hash_changes_when_content_changes() {
    let base = compile_valid(&[WORKFLOW, CLI_TOOL, SECURITY_CONTEXT])
        .snapshot
        .hash();
    let variants = [
        [
            workflow("spec: {description: changed}"),
            CLI_TOOL.into(),
            SECURITY_CONTEXT.into(),
        ],
        [
            WORKFLOW.into(),
            cli_tool("spec: {resources: {pids: 129}}"),
            SECURITY_CONTEXT.into(),
        ],
        [
            WORKFLOW.into(),
            CLI_TOOL.into(),
            security_context("spec: {deny_list: [github.delete_repo, github.fork]}"),
        ],
        [
            workflow("metadata: {generation: 5}"),
            CLI_TOOL.into(),
            SECURITY_CONTEXT.into(),
        ],
    ];
    let mut seen = vec![base.clone()];
    for docs in &variants {
        let docs: Vec<&str> = docs.iter().map(String::as_str).collect();
        let hash = compile_valid(&docs).snapshot.hash();
        assert!(!seen.contains(&hash), "{hash} repeats for {docs:#?}");
        seen.push(hash);
    }
}

#[test]
fn a_rejected_resource_does_not_change_the_hash() {
    let base = compile_valid(&[WORKFLOW, CLI_TOOL]).snapshot.hash();
    let with_rejected = compile(&resources(&[
        WORKFLOW,
        CLI_TOOL,
        &cli_tool("{metadata: {name: broken}, spec: {docker_image: ''}}"),
    ]));
    assert_eq!(with_rejected.rejected().count(), 1);
    assert_eq!(with_rejected.snapshot.hash(), base);
}

// ---------------------------------------------------------------------------------------------
// Rules shared by all kinds: tool name, tenant, credential paths
// ---------------------------------------------------------------------------------------------

#[test]
fn workflow_tool_name_must_be_valid() {
    assert_rejected(
        &workflow("spec: {tool_name: get repo}"),
        &[("spec.tool_name", &format!("\"get repo\" {TOOL_NAME_HINT}"))],
    );
    assert_rejected(
        &workflow("spec: {tool_name: 'github/get'}"),
        &[(
            "spec.tool_name",
            &format!("\"github/get\" {TOOL_NAME_HINT}"),
        )],
    );
    assert_rejected(
        &workflow("spec: {tool_name: ''}"),
        &[("spec.tool_name", &format!("\"\" {TOOL_NAME_HINT}"))],
    );
    assert_rejected(
        &workflow("spec: {tool_name: dépôt}"),
        &[("spec.tool_name", &format!("\"dépôt\" {TOOL_NAME_HINT}"))],
    );
}

#[test]
fn tool_name_length_is_1_to_128() {
    let long = "a".repeat(129);
    assert_rejected(
        &cli_tool(&format!("spec: {{tool_name: {long}}}")),
        &[("spec.tool_name", &format!("\"{long}\" {TOOL_NAME_HINT}"))],
    );
    let max = "a".repeat(128);
    let compiled = compile_valid(&[
        &cli_tool(&format!("spec: {{tool_name: {max}}}")),
        &workflow("spec: {tool_name: x}"),
        &cli_tool("{metadata: {name: other}, spec: {tool_name: A.Z_a-z.0-9}}"),
    ]);
    assert_eq!(compiled.snapshot.cli_tools[0].tool_name, max);
    assert_eq!(compiled.snapshot.cli_tools[1].tool_name, "A.Z_a-z.0-9");
}

#[test]
fn cli_tool_tool_name_must_be_valid() {
    assert_rejected(
        &cli_tool("spec: {tool_name: 'kubectl*'}"),
        &[("spec.tool_name", &format!("\"kubectl*\" {TOOL_NAME_HINT}"))],
    );
}

#[test]
fn tenant_must_not_be_empty() {
    const MSG: &str = "must not be empty (omit it for a system-global resource)";
    assert_rejected(
        &workflow("spec: {tenant_id: ''}"),
        &[("spec.tenant_id", MSG)],
    );
    assert_rejected(
        &cli_tool("spec: {tenant_id: '   '}"),
        &[("spec.tenant_id", MSG)],
    );
    assert_rejected(
        &security_context("spec: {tenant_id: ''}"),
        &[("spec.tenant_id", MSG)],
    );
    // " acme" and "acme" would otherwise be two tenants that look alike.
    assert_rejected(
        &workflow("spec: {tenant_id: ' acme'}"),
        &[(
            "spec.tenant_id",
            "\" acme\" has leading or trailing whitespace",
        )],
    );
}

#[test]
fn base_url_accepts_ports_and_ipv6_literals() {
    compile_valid(&[
        &workflow(
            "{metadata: {name: a}, spec: {tool_name: a, api_spec: {base_url: 'http://127.0.0.1:8080/v1'}}}",
        ),
        &workflow(
            "{metadata: {name: b}, spec: {tool_name: b, api_spec: {base_url: 'http://[::1]:8080'}}}",
        ),
    ]);
}

#[test]
fn wildcard_domains_are_refused_with_a_hint() {
    assert_rejected(
        &security_context(
            "spec: {capabilities: [{tool_pattern: '*', domain_allowlist: ['*.example.com', 'a@b', \"a\\tb.com\"]}]}",
        ),
        &[
            (
                "spec.capabilities[0].domain_allowlist[0]",
                "\"*.example.com\" is not a host name (write example.com; it also matches api.example.com)",
            ),
            (
                "spec.capabilities[0].domain_allowlist[1]",
                "\"a@b\" is not a host name (write example.com; it also matches api.example.com)",
            ),
            (
                "spec.capabilities[0].domain_allowlist[2]",
                "\"a\tb.com\" is not a host name (write example.com; it also matches api.example.com)",
            ),
        ],
    );
}

#[test]
fn workflow_credential_path_fields_must_not_be_empty() {
    let field = "spec.api_spec.credential_path";
    let cases: [(&str, Vec<String>); 6] = [
        (
            "{SystemJit: {openbao_engine_path: '', role: ' '}}",
            vec![
                format!("{field}.SystemJit.openbao_engine_path"),
                format!("{field}.SystemJit.role"),
            ],
        ),
        (
            "{SystemJit: {openbao_engine_path: db, role: ''}}",
            vec![format!("{field}.SystemJit.role")],
        ),
        (
            "{HumanDelegated: {target_service: ''}}",
            vec![format!("{field}.HumanDelegated.target_service")],
        ),
        (
            "{Auto: {system_jit_openbao_engine_path: '', system_jit_role: '', target_service: ''}}",
            vec![
                format!("{field}.Auto.system_jit_openbao_engine_path"),
                format!("{field}.Auto.system_jit_role"),
                format!("{field}.Auto.target_service"),
            ],
        ),
        (
            "{StaticRef: {key: ''}}",
            vec![format!("{field}.StaticRef.key")],
        ),
        (
            "{UserBound: {provider: \"\\t\"}}",
            vec![format!("{field}.UserBound.provider")],
        ),
    ];
    for (path, fields) in cases {
        let expected: Vec<(&str, &str)> = fields
            .iter()
            .map(|f| (f.as_str(), "must not be empty"))
            .collect();
        assert_rejected(
            &workflow(&format!("spec: {{api_spec: {{credential_path: {path}}}}}")),
            &expected,
        );
    }
}

#[test]
fn complete_credential_paths_are_accepted() {
    for path in [
        "{SystemJit: {openbao_engine_path: db, role: reader}}",
        "{HumanDelegated: {target_service: github}}",
        "{Auto: {system_jit_openbao_engine_path: db, system_jit_role: r, target_service: s}}",
        "{StaticRef: {key: github/token}}",
        "{UserBound: {provider: github}}",
    ] {
        compile_valid(&[
            &workflow(&format!("spec: {{api_spec: {{credential_path: {path}}}}}")),
            &cli_tool(&format!("spec: {{registry_credential_path: {path}}}")),
        ]);
    }
}

#[test]
fn cli_tool_registry_credential_path_fields_must_not_be_empty() {
    assert_rejected(
        &cli_tool("spec: {registry_credential_path: {StaticRef: {key: ''}}}"),
        &[(
            "spec.registry_credential_path.StaticRef.key",
            "must not be empty",
        )],
    );
    assert_rejected(
        &cli_tool(
            "spec: {registry_credential_path: {Auto: {system_jit_openbao_engine_path: kv, \
             system_jit_role: '', target_service: registry}}}",
        ),
        &[(
            "spec.registry_credential_path.Auto.system_jit_role",
            "must not be empty",
        )],
    );
}

// ---------------------------------------------------------------------------------------------
// Workflow rules
// ---------------------------------------------------------------------------------------------

#[test]
fn input_schema_must_be_an_object_schema() {
    const MSG: &str = "must be a JSON Schema object with \"type\": \"object\"";
    for schema in [
        "{type: array}",
        // `null` removes `type` (merge patch), leaving a schema without one.
        "{type: null}",
        "{type: [object]}",
        "{type: Object}",
    ] {
        assert_rejected(
            &workflow(&format!("spec: {{input_schema: {schema}}}")),
            &[("spec.input_schema", MSG)],
        );
    }
}

#[test]
fn base_url_must_be_an_absolute_http_url() {
    for url in [
        "ftp://api.github.com",
        "api.github.com",
        "https://",
        "https:///",
        "http://?q=1",
        "https://api github.com",
        "",
        "HTTPS://api.github.com",
        "https://:443",
        "https://@",
        "https://user:pw@api.github.com",
        "https://api.github.com:0",
        "https://api.github.com:99999",
        "https://-bad-.example.com",
        "http://[not-v6]",
    ] {
        assert_rejected(
            &workflow(&format!("spec: {{api_spec: {{base_url: '{url}'}}}}")),
            &[(
                "spec.api_spec.base_url",
                &format!("\"{url}\" is not an absolute http(s) URL"),
            )],
        );
    }
}

#[test]
fn base_url_accepts_http_and_https_and_drops_trailing_slashes() {
    let compiled = compile_valid(&[
        &workflow(
            "{metadata: {name: a}, spec: {tool_name: a, api_spec: {base_url: 'http://localhost:8080'}}}",
        ),
        &workflow(
            "{metadata: {name: b}, spec: {tool_name: b, api_spec: {base_url: 'https://example.com/api/v3//'}}}",
        ),
    ]);
    let urls: Vec<&str> = compiled
        .snapshot
        .workflows
        .iter()
        .map(|w| w.base_url.as_str())
        .collect();
    assert_eq!(
        urls,
        ["http://localhost:8080", "https://example.com/api/v3"]
    );
}

#[test]
fn openapi_source_must_be_exactly_one() {
    const MSG: &str = "set exactly one of inline, config_map_ref or url";
    assert_rejected(
        &workflow("spec: {api_spec: {openapi: {inline: null}}}"),
        &[("spec.api_spec.openapi", MSG)],
    );
    assert_rejected(
        &workflow("spec: {api_spec: {openapi: {url: 'https://example.com/openapi.json'}}}"),
        &[("spec.api_spec.openapi", MSG)],
    );
    assert_rejected(
        &workflow(
            "spec: {api_spec: {openapi: {inline: null, url: 'https://example.com/o.json', \
             config_map_ref: {name: specs, key: github}}}}",
        ),
        &[("spec.api_spec.openapi", MSG)],
    );
}

#[test]
fn openapi_from_a_config_map_in_the_same_namespace() {
    let mut r = resources(&[
        &config_map(Some("tools"), "specs", &[("github.yaml", &openapi_text())]),
        &workflow_from_config_map("specs", "github.yaml"),
    ]);
    let compiled = compile(&r);
    assert_eq!(compiled.rejected().count(), 0, "{:#?}", compiled.results);
    let ops: Vec<&String> = compiled.snapshot.workflows[0].operations.keys().collect();
    assert_eq!(ops, ["createIssue", "getRepo"]);

    // JSON text is read too.
    let doc: Value = serde_yaml::from_str(&openapi_text()).unwrap();
    r.config_maps.clear();
    parse_manifests(
        &config_map(
            Some("tools"),
            "specs",
            &[("github.yaml", &serde_json::to_string(&doc).unwrap())],
        ),
        &mut r,
    )
    .unwrap();
    assert_eq!(compile(&r).rejected().count(), 0);
}

#[test]
fn config_map_must_exist_in_the_workflow_namespace() {
    assert_rejected(
        &workflow_from_config_map("specs", "github.yaml"),
        &[(
            "spec.api_spec.openapi.config_map_ref",
            "ConfigMap tools/specs not found",
        )],
    );
    // Same name in another namespace, or without a namespace, does not count.
    assert_rejected_with(
        resources(&[
            &config_map(Some("other"), "specs", &[("github.yaml", &openapi_text())]),
            &config_map(None, "specs", &[("github.yaml", &openapi_text())]),
            &config_map(Some("tools"), "spec", &[("github.yaml", &openapi_text())]),
        ]),
        &workflow_from_config_map("specs", "github.yaml"),
        &[(
            "spec.api_spec.openapi.config_map_ref",
            "ConfigMap tools/specs not found",
        )],
    );
}

#[test]
fn config_map_of_a_workflow_without_namespace_is_named_without_one() {
    let wf = workflow(
        "{metadata: {namespace: null}, spec: {api_spec: {openapi: {inline: null, \
         config_map_ref: {name: specs, key: github.yaml}}}}}",
    );
    let compiled = compile(&resources(&[&wf]));
    assert_eq!(
        compiled.results[0].problems,
        problems(&[(
            "spec.api_spec.openapi.config_map_ref",
            "ConfigMap specs not found"
        )])
    );
    assert!(compiled.snapshot.workflows.is_empty());

    // A namespace-less ConfigMap matches a namespace-less workflow.
    let compiled = compile(&resources(&[
        &config_map(None, "specs", &[("github.yaml", &openapi_text())]),
        &wf,
    ]));
    assert_eq!(compiled.rejected().count(), 0, "{:#?}", compiled.results);
    assert_eq!(compiled.snapshot.workflows.len(), 1);
}

#[test]
fn config_map_key_must_exist() {
    assert_rejected_with(
        resources(&[&config_map(
            Some("tools"),
            "specs",
            &[("gitlab.yaml", &openapi_text())],
        )]),
        &workflow_from_config_map("specs", "github.yaml"),
        &[(
            "spec.api_spec.openapi.config_map_ref",
            "key \"github.yaml\" not found in ConfigMap tools/specs",
        )],
    );
    // A ConfigMap without any data.
    assert_rejected_with(
        resources(&[
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: specs, namespace: tools}\n",
        ]),
        &workflow_from_config_map("specs", "github.yaml"),
        &[(
            "spec.api_spec.openapi.config_map_ref",
            "key \"github.yaml\" not found in ConfigMap tools/specs",
        )],
    );
}

#[test]
fn config_map_document_must_parse() {
    let field = "spec.api_spec.openapi.config_map_ref";
    let cases = [
        (
            "{\"openapi\": \"3.0.0\",",
            "invalid JSON: EOF while parsing a value at line 1 column 20",
        ),
        (
            "openapi: [3.0.0\npaths: {}\n",
            "invalid YAML: did not find expected ',' or ']' at line 2 column 6, while parsing a flow sequence at line 1 column 10",
        ),
    ];
    for (text, message) in cases {
        assert_rejected_with(
            resources(&[&config_map(Some("tools"), "specs", &[("doc", text)])]),
            &workflow_from_config_map("specs", "doc"),
            &[(field, message)],
        );
    }
}

#[test]
fn openapi_document_must_be_openapi_with_operations() {
    let field = "spec.api_spec.openapi.inline";
    let cases = [
        (
            "{paths: {/a: {get: {operationId: a}}}}",
            "not an OpenAPI 3 or Swagger 2 document (expected `openapi: 3.x` or `swagger: \"2.0\"`)",
        ),
        (
            "{swagger: '1.2', paths: {/a: {get: {operationId: a}}}}",
            "not an OpenAPI 3 or Swagger 2 document (expected `openapi: 3.x` or `swagger: \"2.0\"`)",
        ),
        ("{openapi: 3.1.0}", "OpenAPI spec missing paths"),
        (
            "{openapi: 3.1.0, paths: {/a: {get: {summary: no id}}}}",
            "OpenAPI spec has no operationId definitions",
        ),
        (
            "{openapi: 3.1.0, paths: {/a: {get: {operationId: x}}, /b: {put: {operationId: x}}}}",
            "operationId \"x\" is defined twice (GET /a and PUT /b)",
        ),
        (
            "{openapi: 3.1.0, paths: {/a: {get: {operationId: getRepo, parameters: [{$ref: '#/components/parameters/Nope'}]}}}}",
            "$ref \"#/components/parameters/Nope\" points at nothing",
        ),
        (
            "{openapi: 3.1.0, paths: {/a: {get: {operationId: getRepo, parameters: [{$ref: 'other.yaml#/P'}]}}}}",
            "only local $ref is supported, found \"other.yaml#/P\"",
        ),
    ];
    for (doc, message) in cases {
        // `inline: null` first so the patch replaces the document instead of merging into it.
        let wf = patch(
            &workflow("spec: {api_spec: {openapi: {inline: null}}}"),
            &format!("spec: {{api_spec: {{openapi: {{inline: {doc}}}}}}}"),
        );
        assert_rejected(&wf, &[(field, message)]);
    }
}

#[test]
fn inline_document_that_is_not_an_object_is_rejected() {
    // `inline` is any JSON value to serde; the compile step insists on an object.
    let wf = patch(
        &workflow("spec: {api_spec: {openapi: {inline: null}}}"),
        "spec: {api_spec: {openapi: {inline: [1, 2]}}}",
    );
    assert_rejected(
        &wf,
        &[(
            "spec.api_spec.openapi.inline",
            "the document is not an object",
        )],
    );
}

#[test]
fn url_source_must_be_http_and_fetched() {
    let field = "spec.api_spec.openapi.url";
    assert_rejected(
        &workflow_from_url("file:///etc/openapi.json"),
        &[(
            field,
            "\"file:///etc/openapi.json\" is not an absolute http(s) URL",
        )],
    );
    assert_rejected(
        &workflow_from_url("https://specs.example.com/github.json"),
        &[(
            field,
            "https://specs.example.com/github.json has not been fetched",
        )],
    );
    let mut fetched = Resources::default();
    fetched.documents.insert(
        "https://specs.example.com/github.json".into(),
        Err("HTTP 404 Not Found".into()),
    );
    assert_rejected_with(
        fetched,
        &workflow_from_url("https://specs.example.com/github.json"),
        &[(
            field,
            "could not fetch https://specs.example.com/github.json: HTTP 404 Not Found",
        )],
    );
    // A fetch error spanning lines is reported on one line.
    let mut fetched = Resources::default();
    fetched.documents.insert(
        "https://specs.example.com/github.json".into(),
        Err("connection refused\n  caused by: tcp\n".into()),
    );
    assert_rejected_with(
        fetched,
        &workflow_from_url("https://specs.example.com/github.json"),
        &[(
            field,
            "could not fetch https://specs.example.com/github.json: connection refused caused by: tcp",
        )],
    );
    // Fetched, but not a document.
    let mut fetched = Resources::default();
    fetched.documents.insert(
        "https://specs.example.com/github.json".into(),
        Ok("{\"openapi\": ".into()),
    );
    assert_rejected_with(
        fetched,
        &workflow_from_url("https://specs.example.com/github.json"),
        &[(
            field,
            "invalid JSON: EOF while parsing a value at line 1 column 12",
        )],
    );
}

#[test]
fn url_source_uses_the_fetched_document() {
    let mut r = resources(&[&workflow_from_url("https://specs.example.com/github.yaml")]);
    r.documents.insert(
        "https://specs.example.com/github.yaml".into(),
        Ok(openapi_text()),
    );
    let compiled = compile(&r);
    assert_eq!(compiled.rejected().count(), 0, "{:#?}", compiled.results);
    let ops: Vec<&String> = compiled.snapshot.workflows[0].operations.keys().collect();
    assert_eq!(ops, ["createIssue", "getRepo"]);
}

#[test]
fn a_workflow_needs_a_step() {
    assert_rejected(
        &workflow("spec: {steps: []}"),
        &[("spec.steps", "a workflow needs at least one step")],
    );
}

#[test]
fn step_names_must_be_non_empty_and_unique() {
    assert_rejected(
        &workflow("spec: {steps: [{name: '', operation_id: getRepo}]}"),
        &[("spec.steps[0].name", "must not be empty")],
    );
    // Two empty names are two empty names, not a duplicate.
    assert_rejected(
        &workflow(
            "spec: {steps: [{name: '', operation_id: getRepo}, {name: '', operation_id: getRepo}]}",
        ),
        &[
            ("spec.steps[0].name", "must not be empty"),
            ("spec.steps[1].name", "must not be empty"),
        ],
    );
    assert_rejected(
        &workflow(
            "spec: {steps: [{name: a, operation_id: getRepo}, {name: ' ', operation_id: getRepo}]}",
        ),
        &[("spec.steps[1].name", "must not be empty")],
    );
    assert_rejected(
        &workflow(
            "spec: {steps: [{name: a, operation_id: getRepo}, {name: b, operation_id: getRepo}, \
             {name: a, operation_id: createIssue}, {name: a, operation_id: getRepo}]}",
        ),
        &[
            ("spec.steps[2].name", "duplicate step name \"a\""),
            ("spec.steps[3].name", "duplicate step name \"a\""),
        ],
    );
}

#[test]
fn step_operation_must_be_in_the_document() {
    assert_rejected(
        &workflow(
            "spec: {steps: [{name: a, operation_id: getRepo}, {name: b, operation_id: getrepo}]}",
        ),
        &[(
            "spec.steps[1].operation_id",
            "operationId \"getrepo\" is not defined in the OpenAPI document",
        )],
    );
}

#[test]
fn unknown_operations_are_not_checked_when_the_document_is_unusable() {
    // Only the document problem is reported, not one per step.
    assert_rejected(
        &workflow(
            "spec: {api_spec: {openapi: {inline: null}}, steps: [{name: a, operation_id: nope}]}",
        ),
        &[(
            "spec.api_spec.openapi",
            "set exactly one of inline, config_map_ref or url",
        )],
    );
}

#[test]
fn body_template_must_compile() {
    assert_rejected(
        &workflow_step("body_template: '{{#if a}}x{{/each}}'"),
        &[(
            "spec.steps[0].body_template",
            // Handlebars' multi-line error, on one line.
            "template does not compile: Template error: helper \"if\" was opened, but \"each\" is closing \
             --> Template error in \"Unnamed\":1:11 | 0 | {{#if a}}x{{/each}} |-----------^------- | \
             = reason: helper \"if\" was opened, but \"each\" is closing",
        )],
    );
    assert_rejected(
        &workflow_step("body_template: '{{'"),
        &[("spec.steps[0].body_template", HANDLEBARS_UNCLOSED)],
    );
}

#[test]
fn extractors_must_be_valid_jsonpath() {
    assert_rejected(
        &workflow_step("extractors: {id: $.id, name: 'name', bad: '$[?'}"),
        &[
            (
                "spec.steps[0].extractors.bad",
                "invalid JSONPath \"$[?\": at position 3, in long-hand segment, parser error",
            ),
            (
                "spec.steps[0].extractors.name",
                "invalid JSONPath \"name\": at position 0, parser error",
            ),
        ],
    );
}

#[test]
fn retries_must_be_in_range_with_retry() {
    assert_eq!(MAX_RETRIES, 10);
    for n in [0, 11, 255] {
        assert_rejected(
            &workflow_step(&format!("on_error: retry, retries: {n}")),
            &[(
                "spec.steps[0].retries",
                &format!("must be between 1 and 10 (got {n})"),
            )],
        );
    }
    let compiled = compile_valid(&[&workflow(
        "spec: {steps: [{name: a, operation_id: getRepo, on_error: retry, retries: 1}, \
             {name: b, operation_id: getRepo, on_error: retry, retries: 10}, \
             {name: c, operation_id: getRepo, on_error: retry}]}",
    )]);
    let retries: Vec<Option<u8>> = compiled.snapshot.workflows[0]
        .steps
        .iter()
        .map(|s| s.retries)
        .collect();
    assert_eq!(retries, [Some(1), Some(10), None]);
}

#[test]
fn retries_are_only_valid_with_retry() {
    for on_error in ["fail", "continue", "AbortWorkflow", "Continue", "abort"] {
        assert_rejected(
            &workflow_step(&format!("on_error: {on_error}, retries: 3")),
            &[("spec.steps[0].retries", "only valid with on_error: retry")],
        );
    }
    // Without on_error a step fails, so retries are refused too.
    assert_rejected(
        &workflow_step("retries: 1"),
        &[("spec.steps[0].retries", "only valid with on_error: retry")],
    );
}

#[test]
fn step_timeout_must_be_in_range() {
    assert_eq!(MAX_TIMEOUT_SECONDS, 300);
    for t in [0, 301, 86400] {
        assert_rejected(
            &workflow_step(&format!("timeout_seconds: {t}")),
            &[(
                "spec.steps[0].timeout_seconds",
                &format!("must be between 1 and 300 (got {t})"),
            )],
        );
    }
    compile_valid(&[&workflow(
        "spec: {steps: [{name: a, operation_id: getRepo, timeout_seconds: 1}, \
         {name: b, operation_id: getRepo, timeout_seconds: 300}]}",
    )]);
}

#[test]
fn on_error_accepts_upstream_spellings() {
    let compiled = compile_valid(&[&workflow(
        "spec: {steps: [\
         {name: a, operation_id: getRepo, on_error: AbortWorkflow}, \
         {name: b, operation_id: getRepo, on_error: abort}, \
         {name: c, operation_id: getRepo, on_error: fail}, \
         {name: d, operation_id: getRepo, on_error: Continue}, \
         {name: e, operation_id: getRepo, on_error: continue}, \
         {name: f, operation_id: getRepo, on_error: RetryN, retries: 4}, \
         {name: g, operation_id: getRepo, on_error: retry}, \
         {name: h, operation_id: getRepo}]}",
    )]);
    let on_error: Vec<OnError> = compiled.snapshot.workflows[0]
        .steps
        .iter()
        .map(|s| s.on_error)
        .collect();
    use OnError::*;
    assert_eq!(
        on_error,
        [Fail, Fail, Fail, Continue, Continue, Retry, Retry, Fail]
    );
    // RetryN is `retry`, so its retries are range-checked.
    assert_rejected(
        &workflow_step("on_error: RetryN, retries: 11"),
        &[("spec.steps[0].retries", "must be between 1 and 10 (got 11)")],
    );
    // Serialized with the canonical spelling.
    assert_eq!(
        serde_json::to_value([Fail, Continue, Retry]).unwrap(),
        serde_json::json!(["fail", "continue", "retry"])
    );
    let parsed: Vec<OnError> =
        serde_json::from_str(r#"["AbortWorkflow", "Continue", "RetryN"]"#).unwrap();
    assert_eq!(parsed, [Fail, Continue, Retry]);
}

#[test]
fn every_workflow_problem_is_reported_in_order() {
    assert_rejected(
        &workflow(
            "spec: {tool_name: 'bad name', tenant_id: '', input_schema: {type: string}, \
             api_spec: {base_url: 'localhost', credential_path: {HumanDelegated: {target_service: ''}}}, \
             steps: [{name: '', operation_id: nope, body_template: '{{', extractors: {k: 'x'}, \
             on_error: continue, retries: 2, timeout_seconds: 0}]}",
        ),
        &[
            ("spec.tool_name", &format!("\"bad name\" {TOOL_NAME_HINT}")),
            (
                "spec.tenant_id",
                "must not be empty (omit it for a system-global resource)",
            ),
            (
                "spec.input_schema",
                "must be a JSON Schema object with \"type\": \"object\"",
            ),
            (
                "spec.api_spec.base_url",
                "\"localhost\" is not an absolute http(s) URL",
            ),
            (
                "spec.api_spec.credential_path.HumanDelegated.target_service",
                "must not be empty",
            ),
            ("spec.steps[0].name", "must not be empty"),
            (
                "spec.steps[0].operation_id",
                "operationId \"nope\" is not defined in the OpenAPI document",
            ),
            ("spec.steps[0].body_template", HANDLEBARS_UNCLOSED),
            (
                "spec.steps[0].extractors.k",
                "invalid JSONPath \"x\": at position 0, parser error",
            ),
            ("spec.steps[0].retries", "only valid with on_error: retry"),
            (
                "spec.steps[0].timeout_seconds",
                "must be between 1 and 300 (got 0)",
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// CliTool rules
// ---------------------------------------------------------------------------------------------

#[test]
fn docker_image_must_not_be_empty() {
    for image in ["''", "'  '"] {
        assert_rejected(
            &cli_tool(&format!("spec: {{docker_image: {image}}}")),
            &[("spec.docker_image", "must not be empty")],
        );
    }
}

#[test]
fn allowed_subcommands_must_not_be_empty() {
    assert_rejected(
        &cli_tool("spec: {allowed_subcommands: []}"),
        &[(
            "spec.allowed_subcommands",
            "must list at least one subcommand",
        )],
    );
}

#[test]
fn allowed_subcommands_must_be_single_words() {
    assert_rejected(
        &cli_tool("spec: {allowed_subcommands: [get, '', 'get pods', \"logs\\t-f\", describe]}"),
        &[
            (
                "spec.allowed_subcommands[1]",
                "\"\" is not a valid subcommand (one word, no spaces)",
            ),
            (
                "spec.allowed_subcommands[2]",
                "\"get pods\" is not a valid subcommand (one word, no spaces)",
            ),
            (
                "spec.allowed_subcommands[3]",
                "\"logs\t-f\" is not a valid subcommand (one word, no spaces)",
            ),
        ],
    );
}

#[test]
fn default_timeout_must_be_in_range() {
    for t in [0, 301] {
        assert_rejected(
            &cli_tool(&format!("spec: {{default_timeout_seconds: {t}}}")),
            &[(
                "spec.default_timeout_seconds",
                &format!("must be between 1 and 300 (got {t})"),
            )],
        );
    }
    let compiled = compile_valid(&[
        &cli_tool("{metadata: {name: a}, spec: {default_timeout_seconds: 1}}"),
        &cli_tool("{metadata: {name: b}, spec: {default_timeout_seconds: 300}}"),
    ]);
    let timeouts: Vec<u32> = compiled
        .snapshot
        .cli_tools
        .iter()
        .map(|t| t.default_timeout_seconds)
        .collect();
    assert_eq!(timeouts, [1, 300]);
}

#[test]
fn memory_must_be_a_quantity() {
    for m in [
        "", "lots", "1.5Gi", "256MB", "Mi", "-1Gi", "256 Mi", "1Ti", "256mi", "0", "0Mi", "5Mi",
        "512k",
    ] {
        assert_rejected(
            &cli_tool(&format!("spec: {{resources: {{memory: '{m}'}}}}")),
            &[(
                "spec.resources.memory",
                &format!(
                    "\"{m}\" is not a memory quantity of at least 6Mi (e.g. 256Mi, 1Gi, 512M)"
                ),
            )],
        );
    }
    let valid = [
        "268435456",
        "6Mi",
        "6291456",
        "512M",
        "1G",
        "8192Ki",
        "256Mi",
        "2Gi",
    ];
    let docs: Vec<String> = valid
        .iter()
        .enumerate()
        .map(|(i, m)| {
            cli_tool(&format!(
                "{{metadata: {{name: t{i}}}, spec: {{resources: {{memory: '{m}'}}}}}}"
            ))
        })
        .collect();
    let compiled = compile_valid(&docs.iter().map(String::as_str).collect::<Vec<_>>());
    let memory: Vec<&str> = compiled
        .snapshot
        .cli_tools
        .iter()
        .map(|t| t.resources.memory.as_deref().unwrap())
        .collect();
    assert_eq!(memory, valid);
}

#[test]
fn cpus_must_be_between_0_and_64() {
    for c in [
        "0", "0.0", "-1", "64.5", "65", "one", "", "NaN", "inf", " 1", "0.001", "1e-9",
    ] {
        assert_rejected(
            &cli_tool(&format!("spec: {{resources: {{cpus: '{c}'}}}}")),
            &[(
                "spec.resources.cpus",
                &format!("\"{c}\" is not a CPU count between 0.01 and 64 (e.g. \"0.5\")"),
            )],
        );
    }
    let valid = ["0.01", "0.5", "2", "64"];
    let docs: Vec<String> = valid
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cli_tool(&format!(
                "{{metadata: {{name: t{i}}}, spec: {{resources: {{cpus: '{c}'}}}}}}"
            ))
        })
        .collect();
    let compiled = compile_valid(&docs.iter().map(String::as_str).collect::<Vec<_>>());
    let cpus: Vec<&str> = compiled
        .snapshot
        .cli_tools
        .iter()
        .map(|t| t.resources.cpus.as_deref().unwrap())
        .collect();
    assert_eq!(cpus, valid);
}

#[test]
fn pids_must_be_at_least_1() {
    assert_rejected(
        &cli_tool("spec: {resources: {pids: 0}}"),
        &[("spec.resources.pids", "must be at least 1")],
    );
    let compiled = compile_valid(&[&cli_tool("spec: {resources: {pids: 1}}")]);
    assert_eq!(compiled.snapshot.cli_tools[0].resources.pids, Some(1));
}

#[test]
fn every_cli_tool_problem_is_reported_in_order() {
    assert_rejected(
        &cli_tool(
            "spec: {tool_name: 'a b', tenant_id: ' ', docker_image: '', allowed_subcommands: ['x y'], \
             default_timeout_seconds: 0, resources: {memory: big, cpus: '100', pids: 0}, \
             registry_credential_path: {UserBound: {provider: ''}}}",
        ),
        &[
            ("spec.tool_name", &format!("\"a b\" {TOOL_NAME_HINT}")),
            (
                "spec.tenant_id",
                "must not be empty (omit it for a system-global resource)",
            ),
            ("spec.docker_image", "must not be empty"),
            (
                "spec.allowed_subcommands[0]",
                "\"x y\" is not a valid subcommand (one word, no spaces)",
            ),
            (
                "spec.default_timeout_seconds",
                "must be between 1 and 300 (got 0)",
            ),
            (
                "spec.resources.memory",
                "\"big\" is not a memory quantity of at least 6Mi (e.g. 256Mi, 1Gi, 512M)",
            ),
            (
                "spec.resources.cpus",
                "\"100\" is not a CPU count between 0.01 and 64 (e.g. \"0.5\")",
            ),
            ("spec.resources.pids", "must be at least 1"),
            (
                "spec.registry_credential_path.UserBound.provider",
                "must not be empty",
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// SecurityContext rules
// ---------------------------------------------------------------------------------------------

#[test]
fn context_name_must_match_the_pattern() {
    for name in [
        "ReadOnly",
        "1readonly",
        "-readonly",
        "read_only",
        "read.only",
        "",
        "réad",
    ] {
        assert_rejected(
            &security_context(&format!("spec: {{context_name: '{name}'}}")),
            &[(
                "spec.context_name",
                &format!("\"{name}\" must match ^[a-z][a-z0-9-]*$"),
            )],
        );
    }
    compile_valid(&[
        &security_context("spec: {context_name: a}"),
        &security_context("{metadata: {name: other}, spec: {context_name: read-only-2-}}"),
    ]);
}

#[test]
fn context_name_defaulted_from_metadata_name_is_checked_too() {
    assert_rejected(
        &security_context("{metadata: {name: read.only}, spec: {context_name: null}}"),
        &[(
            "spec.context_name",
            "\"read.only\" must match ^[a-z][a-z0-9-]*$",
        )],
    );
}

#[test]
fn tool_patterns_must_be_valid() {
    for pattern in [
        "",
        "github*",
        "*.github",
        ".*",
        "github.*.*",
        "git hub",
        "**",
        "*.*",
    ] {
        assert_rejected(
            &security_context(&format!(
                "spec: {{capabilities: [{{tool_pattern: kubectl}}, {{tool_pattern: '{pattern}'}}]}}"
            )),
            &[(
                "spec.capabilities[1].tool_pattern",
                &format!("\"{pattern}\" {PATTERN_HINT}"),
            )],
        );
    }
    compile_valid(&[&security_context(
        "spec: {capabilities: [{tool_pattern: '*'}, {tool_pattern: 'github.*'}, \
         {tool_pattern: github.get_repo}, {tool_pattern: 'a.b.*'}]}",
    )]);
}

#[test]
fn rate_limit_values_must_be_at_least_1() {
    for rl in [
        "{calls: 0, per_seconds: 60}",
        "{calls: 10, per_seconds: 0}",
        "{calls: 0, per_seconds: 0}",
    ] {
        assert_rejected(
            &security_context(&format!(
                "spec: {{capabilities: [{{tool_pattern: '*', rate_limit: {rl}}}]}}"
            )),
            &[(
                "spec.capabilities[0].rate_limit",
                "calls and per_seconds must both be at least 1",
            )],
        );
    }
    compile_valid(&[&security_context(
        "spec: {capabilities: [{tool_pattern: '*', rate_limit: {calls: 1, per_seconds: 1}}]}",
    )]);
}

#[test]
fn max_concurrent_must_be_at_least_1() {
    assert_rejected(
        &security_context("spec: {capabilities: [{tool_pattern: '*', max_concurrent: 0}]}"),
        &[("spec.capabilities[0].max_concurrent", "must be at least 1")],
    );
    compile_valid(&[&security_context(
        "spec: {capabilities: [{tool_pattern: '*', max_concurrent: 1}]}",
    )]);
}

#[test]
fn domain_allowlist_entries_must_be_host_names() {
    assert_rejected(
        &security_context(
            "spec: {capabilities: [{tool_pattern: '*', domain_allowlist: \
             [api.github.com, 'https://github.com', 'github.com:443', 'github.com/x', '', '  ', 'git hub.com']}]}",
        ),
        &[
            (
                "spec.capabilities[0].domain_allowlist[1]",
                "\"https://github.com\" is not a host name (write example.com; it also matches api.example.com)",
            ),
            (
                "spec.capabilities[0].domain_allowlist[2]",
                "\"github.com:443\" is not a host name (write example.com; it also matches api.example.com)",
            ),
            (
                "spec.capabilities[0].domain_allowlist[3]",
                "\"github.com/x\" is not a host name (write example.com; it also matches api.example.com)",
            ),
            (
                "spec.capabilities[0].domain_allowlist[4]",
                "\"\" is not a host name (write example.com; it also matches api.example.com)",
            ),
            (
                "spec.capabilities[0].domain_allowlist[5]",
                "\"  \" is not a host name (write example.com; it also matches api.example.com)",
            ),
            (
                "spec.capabilities[0].domain_allowlist[6]",
                "\"git hub.com\" is not a host name (write example.com; it also matches api.example.com)",
            ),
        ],
    );
}

#[test]
fn path_allowlist_entries_must_be_absolute() {
    assert_rejected(
        &security_context(
            "spec: {capabilities: [{tool_pattern: '*'}, {tool_pattern: kubectl, \
             path_allowlist: [/workspace, workspace, '', ./x]}]}",
        ),
        &[
            (
                "spec.capabilities[1].path_allowlist[1]",
                "\"workspace\" is not an absolute path",
            ),
            (
                "spec.capabilities[1].path_allowlist[2]",
                "\"\" is not an absolute path",
            ),
            (
                "spec.capabilities[1].path_allowlist[3]",
                "\"./x\" is not an absolute path",
            ),
        ],
    );
}

#[test]
fn deny_list_patterns_must_be_valid() {
    assert_rejected(
        &security_context("spec: {deny_list: ['github.*', 'delete*', '*', '']}"),
        &[
            ("spec.deny_list[1]", &format!("\"delete*\" {PATTERN_HINT}")),
            ("spec.deny_list[3]", &format!("\"\" {PATTERN_HINT}")),
        ],
    );
}

#[test]
fn every_security_context_problem_is_reported_in_order() {
    assert_rejected(
        &security_context(
            "spec: {context_name: Bad, tenant_id: '', capabilities: [\
             {tool_pattern: 'x*', rate_limit: {calls: 0, per_seconds: 1}, domain_allowlist: ['a:1'], path_allowlist: [rel]}], \
             deny_list: ['*x']}",
        ),
        &[
            ("spec.context_name", "\"Bad\" must match ^[a-z][a-z0-9-]*$"),
            (
                "spec.tenant_id",
                "must not be empty (omit it for a system-global resource)",
            ),
            (
                "spec.capabilities[0].tool_pattern",
                &format!("\"x*\" {PATTERN_HINT}"),
            ),
            (
                "spec.capabilities[0].rate_limit",
                "calls and per_seconds must both be at least 1",
            ),
            (
                "spec.capabilities[0].domain_allowlist[0]",
                "\"a:1\" is not a host name (write example.com; it also matches api.example.com)",
            ),
            (
                "spec.capabilities[0].path_allowlist[0]",
                "\"rel\" is not an absolute path",
            ),
            ("spec.deny_list[0]", &format!("\"*x\" {PATTERN_HINT}")),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Names unique per tenant
// ---------------------------------------------------------------------------------------------

#[test]
fn workflow_and_cli_tool_share_the_tool_namespace_by_namespace_and_name_without_timestamps() {
    // No creation timestamps: the first by namespace/name keeps the name, whatever the input order.
    let compiled = compile(&resources(&[
        &workflow("{metadata: {name: zeta}, spec: {tool_name: repo}}"),
        &cli_tool("{metadata: {name: alpha}, spec: {tool_name: repo}}"),
    ]));
    let wf = result_of(&compiled, "Workflow tools/zeta");
    assert_eq!(
        wf.problems,
        problems(&[(
            "spec.tool_name",
            "tool \"repo\" is already defined in the system-global scope by CliTool tools/alpha"
        )])
    );
    assert!(result_of(&compiled, "CliTool tools/alpha").accepted());
    assert_eq!(served(&compiled.snapshot), ["CliTool tools/alpha"]);
}

#[test]
fn duplicate_tool_names_order_by_namespace_before_name() {
    let compiled = compile(&resources(&[
        &cli_tool("{metadata: {name: a, namespace: zz}, spec: {tool_name: repo}}"),
        &cli_tool("{metadata: {name: z, namespace: aa}, spec: {tool_name: repo}}"),
    ]));
    assert_eq!(served(&compiled.snapshot), ["CliTool aa/z"]);
    assert_eq!(
        result_of(&compiled, "CliTool zz/a").message(),
        "spec.tool_name: tool \"repo\" is already defined in the system-global scope by CliTool aa/z"
    );
}

#[test]
fn the_oldest_resource_keeps_a_tool_name() {
    let compiled = compile(&resources(&[
        &workflow(
            "{metadata: {name: alpha, creationTimestamp: '2024-03-01T10:00:00Z'}, \
             spec: {tool_name: repo, tenant_id: acme}}",
        ),
        &cli_tool(
            "{metadata: {name: zeta, creationTimestamp: '2024-02-29T23:59:59Z'}, \
             spec: {tool_name: repo, tenant_id: acme}}",
        ),
    ]));
    assert_eq!(
        result_of(&compiled, "Workflow tools/alpha").problems,
        problems(&[(
            "spec.tool_name",
            "tool \"repo\" is already defined in tenant \"acme\" by CliTool tools/zeta"
        )])
    );
    assert!(result_of(&compiled, "CliTool tools/zeta").accepted());
    assert_eq!(served(&compiled.snapshot), ["CliTool tools/zeta"]);
}

#[test]
fn a_resource_with_a_timestamp_wins_over_one_without() {
    let compiled = compile(&resources(&[
        &cli_tool("{metadata: {name: aaa}, spec: {tool_name: repo}}"),
        &cli_tool(
            "{metadata: {name: zzz, creationTimestamp: '2030-01-01T00:00:00Z'}, spec: {tool_name: repo}}",
        ),
    ]));
    assert_eq!(served(&compiled.snapshot), ["CliTool tools/zzz"]);
    assert_eq!(
        result_of(&compiled, "CliTool tools/aaa").message(),
        "spec.tool_name: tool \"repo\" is already defined in the system-global scope by CliTool tools/zzz"
    );
}

#[test]
fn creation_timestamps_compare_as_instants_across_offsets() {
    // 2024-01-01T01:00:00+02:00 is 2023-12-31T23:00:00Z, older than 2024-01-01T00:00:00Z.
    let compiled = compile(&resources(&[
        &cli_tool(
            "{metadata: {name: utc, creationTimestamp: '2024-01-01T00:00:00Z'}, spec: {tool_name: repo}}",
        ),
        &cli_tool(
            "{metadata: {name: offset, creationTimestamp: '2024-01-01T01:00:00+02:00'}, spec: {tool_name: repo}}",
        ),
    ]));
    assert_eq!(served(&compiled.snapshot), ["CliTool tools/offset"]);
}

#[test]
fn creation_timestamps_with_fractional_seconds_compare_as_instants() {
    let compiled = compile(&resources(&[
        &cli_tool(
            "{metadata: {name: later, creationTimestamp: '2024-01-01T00:00:00.5Z'}, spec: {tool_name: repo}}",
        ),
        &cli_tool(
            "{metadata: {name: earlier, creationTimestamp: '2024-01-01T00:00:00Z'}, spec: {tool_name: repo}}",
        ),
    ]));
    assert_eq!(served(&compiled.snapshot), ["CliTool tools/earlier"]);
}

#[test]
fn every_later_duplicate_names_the_owner() {
    let compiled = compile(&resources(&[
        &workflow(
            "{metadata: {name: b, creationTimestamp: '2024-01-02T00:00:00Z'}, spec: {tool_name: repo}}",
        ),
        &workflow(
            "{metadata: {name: c, creationTimestamp: '2024-01-03T00:00:00Z'}, spec: {tool_name: repo}}",
        ),
        &cli_tool(
            "{metadata: {name: a, creationTimestamp: '2024-01-01T00:00:00Z'}, spec: {tool_name: repo}}",
        ),
    ]));
    let messages: Vec<(String, String)> = compiled
        .results
        .iter()
        .map(|r| (r.resource.to_string(), r.message()))
        .collect();
    let dup = "spec.tool_name: tool \"repo\" is already defined in the system-global scope by CliTool tools/a";
    assert_eq!(
        messages,
        [
            ("Workflow tools/b".to_string(), dup.to_string()),
            ("Workflow tools/c".to_string(), dup.to_string()),
            ("CliTool tools/a".to_string(), String::new()),
        ]
    );
    assert_eq!(served(&compiled.snapshot), ["CliTool tools/a"]);
}

#[test]
fn a_cli_tool_loses_a_duplicate_on_spec_tool_name_even_when_the_name_is_defaulted() {
    let compiled = compile(&resources(&[
        &workflow("{metadata: {name: a}, spec: {tool_name: kubectl}}"),
        CLI_TOOL, // tool name `kubectl` from metadata.name, in tools/kubectl: after tools/a
    ]));
    assert_eq!(
        result_of(&compiled, "CliTool tools/kubectl").problems,
        problems(&[(
            "spec.tool_name",
            "tool \"kubectl\" is already defined in the system-global scope by Workflow tools/a"
        )])
    );
    assert_eq!(served(&compiled.snapshot), ["Workflow tools/a"]);
}

#[test]
fn a_rejected_resource_does_not_hold_its_name() {
    let compiled = compile(&resources(&[
        &cli_tool(
            "{metadata: {name: old, creationTimestamp: '2020-01-01T00:00:00Z'}, \
             spec: {tool_name: repo, docker_image: ''}}",
        ),
        &workflow(
            "{metadata: {name: new, creationTimestamp: '2024-01-01T00:00:00Z'}, spec: {tool_name: repo}}",
        ),
    ]));
    assert_eq!(
        result_of(&compiled, "CliTool tools/old").problems,
        problems(&[("spec.docker_image", "must not be empty")])
    );
    assert!(result_of(&compiled, "Workflow tools/new").accepted());
    assert_eq!(served(&compiled.snapshot), ["Workflow tools/new"]);
}

#[test]
fn the_same_tool_name_in_different_tenants_is_fine() {
    let compiled = compile_valid(&[
        &workflow("{metadata: {name: a}, spec: {tool_name: repo, tenant_id: acme}}"),
        &workflow("{metadata: {name: b}, spec: {tool_name: repo, tenant_id: globex}}"),
        &cli_tool("{metadata: {name: c}, spec: {tool_name: repo}}"),
        &security_context("{metadata: {name: d}, spec: {context_name: repo, tenant_id: acme}}"),
        &security_context("{metadata: {name: e}, spec: {context_name: repo, tenant_id: globex}}"),
        &security_context("{metadata: {name: f}, spec: {context_name: repo}}"),
    ]);
    assert_eq!(compiled.snapshot.workflows.len(), 2);
    assert_eq!(compiled.snapshot.cli_tools.len(), 1);
    assert_eq!(compiled.snapshot.security_contexts.len(), 3);
}

#[test]
fn tools_and_security_contexts_do_not_share_names() {
    let compiled = compile_valid(&[CLI_TOOL, &security_context("spec: {context_name: kubectl}")]);
    assert_eq!(
        served(&compiled.snapshot),
        ["CliTool tools/kubectl", "SecurityContext tools/readonly"]
    );
}

#[test]
fn security_context_names_are_unique_per_tenant() {
    let compiled = compile(&resources(&[
        &security_context(
            "{metadata: {name: young, creationTimestamp: '2024-06-01T00:00:00Z'}, \
             spec: {context_name: readonly, tenant_id: acme}}",
        ),
        &security_context(
            "{metadata: {name: old, creationTimestamp: '2024-05-01T00:00:00Z'}, \
             spec: {context_name: readonly, tenant_id: acme}}",
        ),
        &security_context(
            "{metadata: {name: global, creationTimestamp: '2024-07-01T00:00:00Z'}, \
             spec: {context_name: readonly}}",
        ),
    ]));
    assert_eq!(
        result_of(&compiled, "SecurityContext tools/young").problems,
        problems(&[(
            "spec.context_name",
            "security context \"readonly\" is already defined in tenant \"acme\" by SecurityContext tools/old"
        )])
    );
    assert!(result_of(&compiled, "SecurityContext tools/old").accepted());
    assert!(result_of(&compiled, "SecurityContext tools/global").accepted());
    assert_eq!(
        served(&compiled.snapshot),
        ["SecurityContext tools/global", "SecurityContext tools/old"]
    );
}

#[test]
fn duplicate_security_context_in_the_global_scope_without_namespaces() {
    let compiled = compile(&resources(&[
        "apiVersion: seal.100monkeys.ai/v1\nkind: SecurityContext\nmetadata: {name: b}\nspec: {context_name: ops}\n",
        "apiVersion: seal.100monkeys.ai/v1\nkind: SecurityContext\nmetadata: {name: a}\nspec: {context_name: ops}\n",
    ]));
    assert_eq!(
        result_of(&compiled, "SecurityContext b").message(),
        "spec.context_name: security context \"ops\" is already defined in the system-global scope by SecurityContext a"
    );
    assert_eq!(served(&compiled.snapshot), ["SecurityContext a"]);
}

// ---------------------------------------------------------------------------------------------
// parse_manifests
// ---------------------------------------------------------------------------------------------

fn manifest_error(text: &str) -> String {
    let mut r = Resources::default();
    let err = parse_manifests(text, &mut r).expect_err("the manifest must be refused");
    assert!(
        r.workflows.is_empty()
            && r.cli_tools.is_empty()
            && r.security_contexts.is_empty()
            && r.config_maps.is_empty(),
        "nothing is added when a document is bad"
    );
    err.to_string()
}

#[test]
fn parse_manifests_reads_every_kind_from_one_multi_document_text() {
    let text = format!(
        "{WORKFLOW}---\n{CLI_TOOL}---\n{SECURITY_CONTEXT}---\n{}---\n",
        config_map(Some("tools"), "specs", &[("k", "v")])
    );
    let mut r = Resources::default();
    parse_manifests(&text, &mut r).unwrap();
    assert_eq!(
        (
            r.workflows.len(),
            r.cli_tools.len(),
            r.security_contexts.len(),
            r.config_maps.len()
        ),
        (1, 1, 1, 1)
    );
    // A second call appends.
    parse_manifests(CLI_TOOL, &mut r).unwrap();
    assert_eq!(r.cli_tools.len(), 2);
    // Empty text and empty documents add nothing.
    parse_manifests("", &mut r).unwrap();
    parse_manifests("---\n---\n", &mut r).unwrap();
    assert_eq!(r.cli_tools.len(), 2);
}

#[test]
fn parse_manifests_rejects_an_unknown_kind() {
    assert_eq!(
        manifest_error(&format!(
            "{CLI_TOOL}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: prod}}\n"
        )),
        "document 2 (Deployment prod/web): kind: unsupported kind \"Deployment\" \
         (expected Workflow, CliTool, SecurityContext or ConfigMap)"
    );
    assert_eq!(
        manifest_error("apiVersion: v1\nmetadata: {name: x}\n"),
        "document 1: kind: is required"
    );
}

#[test]
fn parse_manifests_reports_an_unknown_field_with_its_path() {
    // List positions are spelled as type errors spell them: `[1]`.
    assert_eq!(
        manifest_error(&workflow(
            "spec: {steps: [{name: a, operation_id: getRepo}, {name: b, operation_id: getRepo, colour: red}]}"
        )),
        "document 1 (Workflow tools/get-repo): spec.steps[1].colour: unknown field"
    );
    assert_eq!(
        manifest_error(&security_context("spec: {scope: all}")),
        "document 1 (SecurityContext tools/readonly): spec.scope: unknown field"
    );
    assert_eq!(
        manifest_error(&cli_tool("{spek: {}}")),
        "document 1 (CliTool tools/kubectl): spek: unknown field"
    );
    assert_eq!(
        manifest_error(&format!(
            "{}data: {{k: v}}\nbinaryData2: {{}}\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: specs, namespace: tools}\n"
        )),
        "document 1 (ConfigMap tools/specs): binaryData2: unknown field"
    );
}

#[test]
fn parse_manifests_reports_an_unknown_field_under_an_optional_struct_with_its_path() {
    assert_eq!(
        manifest_error(&cli_tool("spec: {resources: {disk: 1Gi}}")),
        "document 1 (CliTool tools/kubectl): spec.resources.disk: unknown field"
    );
}

#[test]
fn parse_manifests_reports_a_wrong_type_with_its_path() {
    assert_eq!(
        manifest_error(&cli_tool("spec: {default_timeout_seconds: sixty}")),
        "document 1 (CliTool tools/kubectl): spec.default_timeout_seconds: \
         invalid type: string \"sixty\", expected u32"
    );
    assert_eq!(
        manifest_error(&workflow_step("retries: 256, on_error: retry")),
        "document 1 (Workflow tools/get-repo): spec.steps[0].retries: invalid value: integer `256`, expected u8"
    );
    assert_eq!(
        manifest_error(&workflow_step("on_error: explode")),
        "document 1 (Workflow tools/get-repo): spec.steps[0].on_error: unknown variant `explode`, \
         expected one of `AbortWorkflow`, `abort`, `fail`, `Continue`, `continue`, `RetryN`, `retry`"
    );
    assert_eq!(
        manifest_error(&cli_tool("spec: {docker_image: null}")),
        "document 1 (CliTool tools/kubectl): spec: missing field `docker_image`"
    );
}

fn manifest_error_value(text: &str) -> aegis_seal_crds::ManifestError {
    let mut r = Resources::default();
    parse_manifests(text, &mut r).expect_err("the manifest must be refused")
}

#[test]
fn parse_manifests_requires_metadata_name() {
    for (text, document, kind) in [
        (cli_tool("metadata: {name: null}"), 1, "CliTool"),
        (cli_tool("metadata: {name: ''}"), 1, "CliTool"),
        (cli_tool("metadata: null"), 1, "CliTool"),
        (
            format!("{SECURITY_CONTEXT}---\nkind: Workflow\n"),
            2,
            "Workflow",
        ),
    ] {
        let err = manifest_error_value(&text);
        assert_eq!(err.document, document, "{err}");
        assert_eq!(err.field.as_deref(), Some("metadata.name"), "{err}");
        assert_eq!(err.message, "is required", "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("document {document} ({kind}")),
            "{err}"
        );
        assert!(
            err.to_string().ends_with("): metadata.name: is required"),
            "{err}"
        );
    }
}

#[test]
fn parse_manifests_names_only_the_kind_when_metadata_name_is_missing() {
    assert_eq!(
        manifest_error(&cli_tool("metadata: {name: null}")),
        "document 1 (CliTool): metadata.name: is required"
    );
    assert_eq!(
        manifest_error("apiVersion: seal.100monkeys.ai/v1\nkind: Workflow\n"),
        "document 1 (Workflow): metadata.name: is required"
    );
}

#[test]
fn parse_manifests_checks_api_version() {
    assert_eq!(
        manifest_error(&cli_tool("apiVersion: seal.100monkeys.ai/v2")),
        "document 1 (CliTool tools/kubectl): apiVersion: must be seal.100monkeys.ai/v1, found \"seal.100monkeys.ai/v2\""
    );
    assert_eq!(
        manifest_error(
            "kind: ConfigMap\napiVersion: seal.100monkeys.ai/v1\nmetadata: {name: specs}\n"
        ),
        "document 1 (ConfigMap specs): apiVersion: must be v1, found \"seal.100monkeys.ai/v1\""
    );
}

#[test]
fn parse_manifests_rejects_malformed_yaml() {
    assert_eq!(
        manifest_error(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\nkind: [CliTool\nmetadata: {}\n"
        ),
        "document 2: malformed YAML: did not find expected ',' or ']' at line 6 column 9, \
         while parsing a flow sequence at line 5 column 7"
    );
    assert_eq!(
        manifest_error("kind: CliTool\n  metadata: x\n"),
        "document 1: malformed YAML: mapping values are not allowed in this context at line 2 column 11"
    );
}

#[test]
fn input_schema_must_be_a_usable_json_schema() {
    for (schema, why) in [
        (
            "{type: object, properties: {n: {type: nope}}}",
            "\"nope\" is not valid under any of the schemas listed in the 'anyOf' keyword",
        ),
        (
            "{type: object, properties: {n: {type: string, pattern: '('}}}",
            "\"(\" is not a \"regex\"",
        ),
        // Remote references are never fetched: the gateway checks arguments offline.
        (
            "{type: object, $ref: 'https://schemas.example/repo.json'}",
            "Resource 'https://schemas.example/repo.json' is not present in a registry and retrieving it failed: Retrieval is disabled, cannot fetch https://schemas.example/repo.json",
        ),
    ] {
        assert_rejected(
            &workflow(&format!("spec: {{input_schema: {schema}}}")),
            &[(
                "spec.input_schema",
                &format!("is not a usable JSON Schema: {why}"),
            )],
        );
    }
}

#[test]
fn a_namespace_serves_only_the_tenant_its_gateway_binds_it_to() {
    let mut r = resources(&[
        // Older than the rest, so it would own the name `repo` in tenant acme if it were served.
        &workflow(
            "{metadata: {name: squatter, namespace: team-b, creationTimestamp: '2024-01-01T00:00:00Z'}, \
             spec: {tool_name: repo, tenant_id: acme}}",
        ),
        &workflow(
            "{metadata: {name: repo, namespace: team-a, creationTimestamp: '2024-06-01T00:00:00Z'}, \
             spec: {tool_name: repo, tenant_id: acme}}",
        ),
        &cli_tool("{metadata: {namespace: team-a}, spec: {tenant_id: null}}"),
        &security_context("{metadata: {namespace: team-c}, spec: {tenant_id: acme}}"),
        &security_context("{metadata: {name: global}, spec: {tenant_id: null}}"),
    ]);
    r.tenancy = Some(aegis_seal_crds::NamespaceTenancy {
        home: "tools".into(),
        bound: BTreeMap::from([
            ("team-a".into(), "acme".into()),
            ("team-b".into(), "globex".into()),
        ]),
    });
    let compiled = compile(&r);
    assert_eq!(
        result_of(&compiled, "Workflow team-b/squatter").problems,
        problems(&[(
            "spec.tenant_id",
            "namespace \"team-b\" serves tenant \"globex\" only, and this resource names tenant \"acme\""
        )])
    );
    assert_eq!(
        result_of(&compiled, "CliTool team-a/kubectl").problems,
        problems(&[(
            "spec.tenant_id",
            "namespace \"team-a\" serves tenant \"acme\" only, and this resource is system-global \
             (no tenant_id), which only the gateway's own namespace \"tools\" may declare"
        )])
    );
    assert_eq!(
        result_of(&compiled, "SecurityContext team-c/readonly").problems[0].field,
        "metadata.namespace"
    );
    assert_eq!(
        served(&compiled.snapshot),
        ["SecurityContext tools/global", "Workflow team-a/repo"]
    );

    // Without a binding (a manifests folder), every tenant_id is trusted.
    r.tenancy = None;
    assert_eq!(
        compile(&r).rejected().count(),
        1,
        "only the younger `repo` loses its name"
    );
}
