//! [`CompiledWorkflow`]: a snapshot's workflow entry with its templates and JSONPaths compiled, built
//! once per snapshot and shared by every invocation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aegis_seal_crds::openapi::Operation;
use aegis_seal_crds::{OnError, WorkflowEntry};
use handlebars::{Handlebars, Template};
use http::Method;
use serde_json_path::JsonPath;

use super::template;

/// Attempts after the first when `on_error: retry` sets no `retries`.
pub const DEFAULT_RETRIES: u8 = 3;
/// Per-attempt timeout of a step that sets no `timeout_seconds`.
pub const DEFAULT_STEP_TIMEOUT_SECONDS: u32 = 15;

/// A workflow ready to execute.
#[derive(Debug)]
pub struct CompiledWorkflow {
    entry: Arc<WorkflowEntry>,
    workflow_id: String,
    /// Holds the step templates. Shared by the workflows of one snapshot (see [`compile_all`]),
    /// since each registry carries its own set of built-in helpers.
    ///
    /// [`compile_all`]: CompiledWorkflow::compile_all
    pub(super) registry: Arc<Handlebars<'static>>,
    pub(super) steps: Vec<CompiledStep>,
    /// `input_schema`, compiled: every call's arguments are checked against it. Shared by the
    /// snapshot's workflows with the same schema (most have `{"type": "object"}`).
    input: Arc<jsonschema::Validator>,
}

#[derive(Debug)]
pub(super) struct CompiledStep {
    pub name: String,
    /// The name the step's template is registered under in the workflow's registry (a step
    /// without one renders `{}`).
    pub template: Option<String>,
    pub method: Method,
    pub operation: Operation,
    pub extractors: Vec<Extractor>,
    pub on_error: OnError,
    /// 1, or 1 + retries with `on_error: retry`.
    pub attempts: u32,
    pub timeout: Duration,
}

#[derive(Debug)]
pub(super) struct Extractor {
    pub key: String,
    /// The JSONPath as written, for messages.
    pub source: String,
    pub path: JsonPath,
}

impl CompiledWorkflow {
    /// Compiles every step's template and extractors, with a registry of the workflow's own.
    /// Entries come from `aegis_seal_crds::compile`, which has validated all of this already, so
    /// an error here means a snapshot built otherwise.
    pub fn compile(entry: Arc<WorkflowEntry>) -> Result<Self, String> {
        let input = Arc::new(input_validator(&entry.input_schema)?);
        let mut registry = template::new_registry();
        let steps = compile_steps(&entry, &mut registry, "")?;
        Ok(Self::assemble(entry, Arc::new(registry), steps, input))
    }

    /// Compiles the workflows of one snapshot, in order, as [`compile`] would, but into one
    /// registry: one per workflow held about 1.8 kB of built-in helpers each (bench/README.md,
    /// finding 3). Templates are registered as `<index>/<step>`; each keeps its step name as its
    /// own, which is what rendering and its errors see. A workflow whose templates use partials
    /// keeps a registry of its own, since a partial is looked up by its registered name (a step's
    /// template may include another step's by name). An error names the workflow.
    ///
    /// [`compile`]: CompiledWorkflow::compile
    pub fn compile_all(entries: &[Arc<WorkflowEntry>]) -> Result<Vec<Self>, String> {
        enum Part {
            Own(CompiledWorkflow),
            Shared(
                Arc<WorkflowEntry>,
                Vec<CompiledStep>,
                Arc<jsonschema::Validator>,
            ),
        }
        let mut shared = template::new_registry();
        // Keyed by the schema's text: most schemas repeat (`{"type": "object"}`), and one
        // validator serves every workflow with the same one.
        let mut validators: HashMap<String, Arc<jsonschema::Validator>> = HashMap::new();
        let mut validator_for = |schema: &serde_json::Value| {
            let text = schema.to_string();
            if let Some(validator) = validators.get(&text) {
                return Ok(validator.clone());
            }
            let validator = Arc::new(input_validator(schema)?);
            validators.insert(text, validator.clone());
            Ok::<_, String>(validator)
        };
        let mut parts = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let part = if uses_partials(entry) {
                Self::compile(entry.clone()).map(Part::Own)
            } else {
                validator_for(&entry.input_schema).and_then(|input| {
                    compile_steps(entry, &mut shared, &format!("{index}/"))
                        .map(|steps| Part::Shared(entry.clone(), steps, input))
                })
            };
            parts.push(part.map_err(|e| format!("workflow {}: {e}", entry.tool_name))?);
        }
        let shared = Arc::new(shared);
        Ok(parts
            .into_iter()
            .map(|part| match part {
                Part::Own(workflow) => workflow,
                Part::Shared(entry, steps, input) => {
                    Self::assemble(entry, shared.clone(), steps, input)
                }
            })
            .collect())
    }

    fn assemble(
        entry: Arc<WorkflowEntry>,
        registry: Arc<Handlebars<'static>>,
        steps: Vec<CompiledStep>,
        input: Arc<jsonschema::Validator>,
    ) -> Self {
        Self {
            workflow_id: workflow_id(&entry),
            entry,
            registry,
            steps,
            input,
        }
    }

    /// Checks a call's arguments against `input_schema`. The first problem, as `<JSON pointer of
    /// the argument>: <what is wrong>`, with the argument's value left out (it may be a secret).
    pub fn check_arguments(&self, arguments: &serde_json::Value) -> Result<(), String> {
        self.input.validate(arguments).map_err(|e| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "/" } else { at.as_str() };
            format!("{at}: {}", e.masked())
        })
    }

    /// `Workflow/<namespace>/<name>` of the resource the entry was compiled from (`Workflow/<name>`
    /// without a namespace): stable across restarts and snapshot reloads, unlike a generated id.
    pub fn workflow_id(&self) -> &str {
        &self.workflow_id
    }

    pub fn tool_name(&self) -> &str {
        &self.entry.tool_name
    }

    pub fn entry(&self) -> &Arc<WorkflowEntry> {
        &self.entry
    }
}

fn input_validator(schema: &serde_json::Value) -> Result<jsonschema::Validator, String> {
    aegis_seal_crds::workflow::input_validator(schema).map_err(|e| format!("input_schema: {e}"))
}

/// Compiles the steps of `entry`, registering their templates in `registry` as `<prefix><step>`.
fn compile_steps(
    entry: &WorkflowEntry,
    registry: &mut Handlebars<'static>,
    prefix: &str,
) -> Result<Vec<CompiledStep>, String> {
    let mut steps = Vec::with_capacity(entry.steps.len());
    if entry.steps.is_empty() {
        return Err("the workflow has no steps".into());
    }
    for step in &entry.steps {
        let name = &step.name;
        if steps.iter().any(|s: &CompiledStep| &s.name == name) {
            return Err(format!("duplicate step name \"{name}\""));
        }
        let operation = entry.operations.get(&step.operation_id).ok_or_else(|| {
            format!(
                "step \"{name}\": operation \"{}\" is not among the workflow's operations",
                step.operation_id
            )
        })?;
        let method =
            Method::from_bytes(operation.method.to_ascii_uppercase().as_bytes()).map_err(|_| {
                format!(
                    "step \"{name}\": \"{}\" is not an HTTP method",
                    operation.method
                )
            })?;
        let template = match &step.body_template {
            Some(source) => {
                // Compiled under the step's name, as `register_template_string(name, ..)` would,
                // so messages and the render context name the step whatever the registry key.
                let compiled = Template::compile_with_name(source, name.clone()).map_err(|e| {
                    format!(
                        "step \"{name}\": template does not compile: {}",
                        one_line(&e.to_string())
                    )
                })?;
                let key = format!("{prefix}{name}");
                registry.register_template(&key, compiled);
                Some(key)
            }
            None => None,
        };
        let extractors = step
            .extractors
            .iter()
            .map(|(key, source)| {
                JsonPath::parse(source)
                    .map(|path| Extractor {
                        key: key.clone(),
                        source: source.clone(),
                        path,
                    })
                    .map_err(|e| {
                        format!("step \"{name}\": extractor \"{key}\": invalid JSONPath \"{source}\": {e}")
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let attempts = match step.on_error {
            OnError::Retry => 1 + u32::from(step.retries.unwrap_or(DEFAULT_RETRIES)),
            OnError::Fail | OnError::Continue => 1,
        };
        let timeout_seconds = step
            .timeout_seconds
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_STEP_TIMEOUT_SECONDS);
        steps.push(CompiledStep {
            name: name.clone(),
            template,
            method,
            operation: operation.clone(),
            extractors,
            on_error: step.on_error,
            attempts,
            timeout: Duration::from_secs(u64::from(timeout_seconds)),
        });
    }
    Ok(steps)
}

/// Whether any of the workflow's templates may include a partial (`{{> x}}`, `{{#> x}}`, with or
/// without `~`). Errs towards yes: text that only looks like one costs a registry, nothing else.
fn uses_partials(entry: &WorkflowEntry) -> bool {
    entry
        .steps
        .iter()
        .filter_map(|s| s.body_template.as_deref())
        .any(|source| {
            source.match_indices("{{").any(|(at, _)| {
                let rest = &source[at + 2..];
                let rest = rest.strip_prefix('~').unwrap_or(rest);
                let rest = rest.strip_prefix('#').unwrap_or(rest);
                rest.starts_with('>')
            })
        })
}

/// `Workflow/<namespace>/<name>` for a resource. Without a namespace, the name alone: for a REST
/// workflow that is its row id (which stands for its name), as `POST /v1/workflows` returned it
/// and as `workflows.id` and its `WorkflowRegistered` event hold it; for a manifest without a
/// namespace, its name.
fn workflow_id(entry: &WorkflowEntry) -> String {
    let source = &entry.source;
    match &source.namespace {
        Some(ns) => format!("{}/{ns}/{}", source.kind, source.name),
        None => source.name.clone(),
    }
}

fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::application::workflow::template::{TemplateScope, render};

    fn entry(tool: &str, steps: serde_json::Value) -> Arc<WorkflowEntry> {
        Arc::new(
            serde_json::from_value(json!({
                "source": {"kind": "Workflow", "name": tool},
                "tool_name": tool,
                "description": "",
                "input_schema": {},
                "base_url": "http://upstream.test",
                "operations": {"op": {"method": "post", "path": "/x"}},
                "steps": steps,
            }))
            .unwrap(),
        )
    }

    fn rendered(
        w: &CompiledWorkflow,
        step: usize,
        scope: &TemplateScope,
    ) -> Result<String, String> {
        let name = w.steps[step].template.as_deref().unwrap();
        render(&w.registry, name, scope)
    }

    #[test]
    fn a_snapshots_workflows_share_one_registry_and_render_as_if_alone() {
        let entries = [
            entry(
                "a",
                json!([{"name": "s", "operation_id": "op", "body_template": "{\"a\": {{json input.x}}}"}]),
            ),
            entry(
                "b",
                json!([
                    {"name": "s", "operation_id": "op", "body_template": "{\"b\": {{json input.x}}}"},
                    {"name": "t", "operation_id": "op"},
                    {"name": "u", "operation_id": "op", "body_template": "{{input.nope}}"}
                ]),
            ),
        ];
        let all = CompiledWorkflow::compile_all(&entries).unwrap();
        assert!(Arc::ptr_eq(&all[0].registry, &all[1].registry));
        let scope = TemplateScope::new(&json!({"x": 1}));
        for (shared, entry) in all.iter().zip(&entries) {
            let alone = CompiledWorkflow::compile(entry.clone()).unwrap();
            for (i, step) in alone.steps.iter().enumerate() {
                assert_eq!(step.template.is_some(), shared.steps[i].template.is_some());
                if step.template.is_some() {
                    assert_eq!(rendered(shared, i, &scope), rendered(&alone, i, &scope));
                }
            }
        }
        assert_eq!(rendered(&all[0], 0, &scope).unwrap(), "{\"a\": 1}");
        assert_eq!(rendered(&all[1], 0, &scope).unwrap(), "{\"b\": 1}");
        assert_eq!(
            rendered(&all[1], 2, &scope).unwrap_err(),
            "template references a missing variable \"input.nope\" (line 1, col 1)"
        );
    }

    #[test]
    fn a_workflow_using_partials_keeps_its_own_registry_so_step_names_resolve() {
        let entries = [
            entry(
                "plain",
                json!([{"name": "s", "operation_id": "op", "body_template": "{}"}]),
            ),
            entry(
                "partial",
                json!([
                    {"name": "inner", "operation_id": "op", "body_template": "{{json input.x}}"},
                    {"name": "outer", "operation_id": "op", "body_template": "[{{~> inner}}]"}
                ]),
            ),
        ];
        let all = CompiledWorkflow::compile_all(&entries).unwrap();
        assert!(!Arc::ptr_eq(&all[0].registry, &all[1].registry));
        let scope = TemplateScope::new(&json!({"x": 1}));
        assert_eq!(rendered(&all[1], 1, &scope).unwrap(), "[1]");
    }

    #[test]
    fn a_compile_error_names_the_workflow_and_the_step() {
        let entries = [entry(
            "bad",
            json!([{"name": "s", "operation_id": "op", "body_template": "{{#if}}"}]),
        )];
        let err = CompiledWorkflow::compile_all(&entries).unwrap_err();
        let alone = CompiledWorkflow::compile(entries[0].clone()).unwrap_err();
        assert_eq!(err, format!("workflow bad: {alone}"));
        assert!(
            err.starts_with("workflow bad: step \"s\": template does not compile:"),
            "{err}"
        );
    }
}
