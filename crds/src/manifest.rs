//! Parsing multi-document YAML manifests (the standalone gateway's `--manifests` folder) into resources.
//!
//! Strict where Kubernetes would be: an unknown kind, a missing or mistyped field, or a field the
//! resource does not have is an error naming the document and the field.

use std::fmt;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::common::API_VERSION;
use crate::compile::Resources;

/// Why one document of a manifest file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// 1-based position of the document in its file.
    pub document: usize,
    /// `Kind namespace/name` when the document got that far.
    pub resource: Option<String>,
    /// The offending field, when there is one.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(r) = &self.resource {
            write!(f, " ({r})")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Adds every document of `text` to `resources`. Nothing is added when any document is bad.
pub fn parse_manifests(text: &str, resources: &mut Resources) -> Result<(), ManifestError> {
    let mut parsed = Resources::default();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let err =
            |resource: Option<String>, field: Option<String>, message: String| ManifestError {
                document: n,
                resource,
                field,
                message: one_line(&message),
            };
        let value = Value::deserialize(document)
            .map_err(|e| err(None, None, format!("malformed YAML: {e}")))?;
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let meta = value.get("metadata");
        let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
        let namespace = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str);
        let label = Some(match (namespace, name) {
            (Some(ns), Some(name)) => format!("{kind} {ns}/{name}"),
            (None, Some(name)) => format!("{kind} {name}"),
            _ => kind.clone(),
        });
        if name.is_none_or(str::is_empty) {
            return Err(err(
                label,
                Some("metadata.name".into()),
                "is required".into(),
            ));
        }
        let expected = if kind == "ConfigMap" {
            "v1"
        } else {
            API_VERSION
        };
        match kind.as_str() {
            "Workflow" | "CliTool" | "SecurityContext" | "ConfigMap" if api_version != expected => {
                return Err(err(
                    label,
                    Some("apiVersion".into()),
                    format!("must be {expected}, found \"{api_version}\""),
                ));
            }
            "Workflow" => parsed
                .workflows
                .push(strict(value).map_err(|(f, m)| err(label, f, m))?),
            "CliTool" => parsed
                .cli_tools
                .push(strict(value).map_err(|(f, m)| err(label, f, m))?),
            "SecurityContext" => parsed
                .security_contexts
                .push(strict(value).map_err(|(f, m)| err(label, f, m))?),
            "ConfigMap" => parsed
                .config_maps
                .push(strict::<ConfigMap>(value).map_err(|(f, m)| err(label, f, m))?),
            "" => return Err(err(None, Some("kind".into()), "is required".into())),
            other => {
                return Err(err(
                    label,
                    Some("kind".into()),
                    format!(
                        "unsupported kind \"{other}\" (expected Workflow, CliTool, SecurityContext or ConfigMap)"
                    ),
                ));
            }
        }
    }
    resources.workflows.append(&mut parsed.workflows);
    resources.cli_tools.append(&mut parsed.cli_tools);
    resources
        .security_contexts
        .append(&mut parsed.security_contexts);
    resources.config_maps.append(&mut parsed.config_maps);
    Ok(())
}

/// Deserializes `value` as `T`, rejecting fields `T` does not have. Errors carry the field path.
pub fn strict<T: DeserializeOwned>(value: Value) -> Result<T, (Option<String>, String)> {
    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let result: Result<T, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut record));
    let parsed = result.map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        (field, e.into_inner().to_string())
    })?;
    match unknown.into_iter().next() {
        Some(field) => Err((Some(field), "unknown field".into())),
        None => Ok(parsed),
    }
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
