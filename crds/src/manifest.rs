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

/// Where a resource was read from: its document in a manifest file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestOrigin {
    /// 1-based position of the document in its file.
    pub document: usize,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

/// Adds every document of `text` to `resources`. Nothing is added when any document is bad.
pub fn parse_manifests(
    text: &str,
    resources: &mut Resources,
) -> Result<Vec<ManifestOrigin>, ManifestError> {
    let mut parsed = Resources::default();
    let mut origins = Vec::new();
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
        let text_at = |pointer: &str| {
            value
                .pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let kind = text_at("/kind").unwrap_or_default();
        let api_version = text_at("/apiVersion").unwrap_or_default();
        let name = text_at("/metadata/name").unwrap_or_default();
        let namespace = text_at("/metadata/namespace");
        let label = Some(match (&namespace, name.is_empty()) {
            (_, true) => kind.clone(),
            (Some(ns), false) => format!("{kind} {ns}/{name}"),
            (None, false) => format!("{kind} {name}"),
        });
        if name.is_empty() && !kind.is_empty() {
            return Err(err(
                label,
                Some("metadata.name".into()),
                "is required".into(),
            ));
        }
        origins.push(ManifestOrigin {
            document: n,
            kind: kind.clone(),
            namespace,
            name,
        });
        let expected = if kind == "ConfigMap" {
            "v1"
        } else {
            API_VERSION
        };
        // kube's generated types carry apiVersion and kind implicitly: they are checked here, and
        // removed so that strict parsing does not call them unknown.
        let mut value = value;
        if kind != "ConfigMap"
            && let Some(map) = value.as_object_mut()
        {
            map.remove("apiVersion");
            map.remove("kind");
        }
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
    Ok(origins)
}

/// Deserializes `value` as `T`, rejecting fields `T` does not have. Errors carry the field path.
pub fn strict<T: DeserializeOwned>(value: Value) -> Result<T, (Option<String>, String)> {
    // serde fills a struct from a list too, by position; a document must be a mapping.
    if !value.is_object() {
        return Err((None, "must be a mapping of keys to values".into()));
    }
    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(field_path(&path));
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

/// `spec.steps[1].colour`: the same spelling serde_path_to_error uses for type errors.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => {
            let parent = field_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
