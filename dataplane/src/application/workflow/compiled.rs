//! [`CompiledWorkflow`]: a snapshot's workflow entry with its templates and JSONPaths compiled, built
//! once per snapshot and shared by every invocation.

use std::sync::Arc;
use std::time::Duration;

use aegis_seal_crds::openapi::Operation;
use aegis_seal_crds::{OnError, WorkflowEntry};
use handlebars::Handlebars;
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
    pub(super) registry: Handlebars<'static>,
    pub(super) steps: Vec<CompiledStep>,
}

#[derive(Debug)]
pub(super) struct CompiledStep {
    pub name: String,
    /// Whether a template is registered under the step's name (a step without one renders `{}`).
    pub has_template: bool,
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
    /// Compiles every step's template and extractors. Entries come from `aegis_seal_crds::compile`,
    /// which has validated all of this already, so an error here means a snapshot built otherwise.
    pub fn compile(entry: Arc<WorkflowEntry>) -> Result<Self, String> {
        let mut registry = template::new_registry();
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
            let method = Method::from_bytes(operation.method.to_ascii_uppercase().as_bytes())
                .map_err(|_| {
                    format!(
                        "step \"{name}\": \"{}\" is not an HTTP method",
                        operation.method
                    )
                })?;
            if let Some(source) = &step.body_template {
                registry
                    .register_template_string(name, source)
                    .map_err(|e| {
                        format!(
                            "step \"{name}\": template does not compile: {}",
                            one_line(&e.to_string())
                        )
                    })?;
            }
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
                has_template: step.body_template.is_some(),
                method,
                operation: operation.clone(),
                extractors,
                on_error: step.on_error,
                attempts,
                timeout: Duration::from_secs(u64::from(timeout_seconds)),
            });
        }
        Ok(Self {
            workflow_id: workflow_id(&entry),
            entry,
            registry,
            steps,
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

fn workflow_id(entry: &WorkflowEntry) -> String {
    let source = &entry.source;
    match &source.namespace {
        Some(ns) => format!("{}/{ns}/{}", source.kind, source.name),
        None => format!("{}/{}", source.kind, source.name),
    }
}

fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
