//! Reading the operations out of an OpenAPI 3 or Swagger 2 document (JSON or YAML).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One operation of the upstream API, as a workflow step needs it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Upper-case HTTP method.
    pub method: String,
    /// Path template, e.g. `/repos/{owner}/{repo}`.
    pub path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<Parameter>,
    /// Whether the operation declares a request body (OpenAPI 3 `requestBody`, Swagger 2 `in: body`).
    #[serde(default)]
    pub has_request_body: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Parameter {
    pub name: String,
    pub location: ParameterLocation,
    #[serde(default)]
    pub required: bool,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ParameterLocation {
    Path,
    Query,
    Header,
    Cookie,
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Parses document text (JSON or YAML) into a JSON value.
pub fn parse_document(text: &str) -> Result<Value, String> {
    // JSON first: it is the common case and its errors are clearer than YAML's for JSON input.
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Ok(v),
        Err(json_err) => match serde_yaml::from_str::<Value>(text) {
            Ok(v) => Ok(v),
            Err(yaml_err) => Err(if text.trim_start().starts_with('{') {
                format!("invalid JSON: {json_err}")
            } else {
                format!("invalid YAML: {yaml_err}")
            }),
        },
    }
}

/// Every operation of the document, keyed by `operationId`.
pub fn operations(doc: &Value) -> Result<BTreeMap<String, Operation>, String> {
    let root = doc.as_object().ok_or("the document is not an object")?;
    let swagger2 = match (root.get("openapi"), root.get("swagger")) {
        (Some(Value::String(v)), _) if v.starts_with("3.") => false,
        (_, Some(Value::String(v))) if v == "2.0" => true,
        _ => {
            return Err(
                "not an OpenAPI 3 or Swagger 2 document (expected `openapi: 3.x` or `swagger: \"2.0\"`)"
                    .into(),
            );
        }
    };
    let paths = root
        .get("paths")
        .and_then(Value::as_object)
        // The reference gateway's own words for this and for no operation at all (reference §5.1).
        .ok_or("OpenAPI spec missing paths")?;

    let mut out: BTreeMap<String, Operation> = BTreeMap::new();
    for (path, item) in paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        let shared = item.get("parameters");
        for method in METHODS {
            let Some(op) = item.get(method).and_then(Value::as_object) else {
                continue;
            };
            let Some(id) = op.get("operationId").and_then(Value::as_str) else {
                continue;
            };
            let mut parameters = Vec::new();
            let mut has_request_body = !swagger2 && op.contains_key("requestBody");
            // Operation-level parameters override path-level ones with the same name and location.
            for list in [shared, op.get("parameters")].into_iter().flatten() {
                for p in list.as_array().into_iter().flatten() {
                    let p = resolve_ref(doc, p)?;
                    let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
                    let location = match p.get("in").and_then(Value::as_str) {
                        Some("path") => ParameterLocation::Path,
                        Some("query") => ParameterLocation::Query,
                        Some("header") => ParameterLocation::Header,
                        Some("cookie") => ParameterLocation::Cookie,
                        Some("body") if swagger2 => {
                            has_request_body = true;
                            continue;
                        }
                        // formData and unknown locations carry no URL or header part.
                        _ => continue,
                    };
                    let required = location == ParameterLocation::Path
                        || p.get("required").and_then(Value::as_bool).unwrap_or(false);
                    parameters.retain(|q: &Parameter| !(q.name == name && q.location == location));
                    parameters.push(Parameter {
                        name: name.to_owned(),
                        location,
                        required,
                    });
                }
            }
            let operation = Operation {
                method: method.to_ascii_uppercase(),
                path: path.clone(),
                parameters,
                has_request_body,
            };
            if let Some(previous) = out.get(id) {
                return Err(format!(
                    "operationId \"{id}\" is defined twice ({} {} and {} {})",
                    previous.method, previous.path, operation.method, operation.path
                ));
            }
            out.insert(id.to_owned(), operation);
        }
    }
    if out.is_empty() {
        return Err("OpenAPI spec has no operationId definitions".into());
    }
    Ok(out)
}

/// Follows a local `$ref` (`#/components/parameters/X`, `#/parameters/X`).
fn resolve_ref<'a>(doc: &'a Value, node: &'a Value) -> Result<&'a Value, String> {
    let Some(reference) = node.get("$ref").and_then(Value::as_str) else {
        return Ok(node);
    };
    let pointer = reference
        .strip_prefix('#')
        .ok_or_else(|| format!("only local $ref is supported, found \"{reference}\""))?;
    doc.pointer(pointer)
        .ok_or_else(|| format!("$ref \"{reference}\" points at nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_openapi3_operations_with_parameters_and_bodies() {
        let doc = json!({
            "openapi": "3.0.3",
            "components": {"parameters": {"Owner": {"name": "owner", "in": "path", "required": true}}},
            "paths": {"/repos/{owner}/{repo}": {
                "parameters": [{"$ref": "#/components/parameters/Owner"}, {"name": "repo", "in": "path"}],
                "get": {"operationId": "getRepo", "parameters": [{"name": "X-Trace", "in": "header"}]},
                "patch": {"operationId": "updateRepo", "requestBody": {"content": {}}}
            }}
        });
        let ops = operations(&doc).unwrap();
        let get = &ops["getRepo"];
        assert_eq!(get.method, "GET");
        assert_eq!(get.path, "/repos/{owner}/{repo}");
        assert!(!get.has_request_body);
        let names: Vec<_> = get.parameters.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["owner", "repo", "X-Trace"]);
        assert!(
            get.parameters[1].required,
            "path parameters are always required"
        );
        assert!(ops["updateRepo"].has_request_body);
    }

    #[test]
    fn reads_swagger2_body_parameters_from_yaml() {
        let text = "swagger: \"2.0\"\npaths:\n  /teams:\n    post:\n      operationId: addTeam\n      parameters:\n        - {name: body, in: body}\n";
        let ops = operations(&parse_document(text).unwrap()).unwrap();
        assert!(ops["addTeam"].has_request_body);
        assert!(ops["addTeam"].parameters.is_empty());
    }

    #[test]
    fn rejects_documents_that_are_not_openapi() {
        assert_eq!(
            operations(&json!({"paths": {}})).unwrap_err(),
            "not an OpenAPI 3 or Swagger 2 document (expected `openapi: 3.x` or `swagger: \"2.0\"`)"
        );
        assert_eq!(
            operations(&json!({"openapi": "3.1.0", "paths": {"/a": {"get": {}}}})).unwrap_err(),
            "OpenAPI spec has no operationId definitions"
        );
        assert_eq!(
            operations(&json!({"openapi": "3.1.0", "paths": {
                "/a": {"get": {"operationId": "x"}}, "/b": {"post": {"operationId": "x"}}}}))
            .unwrap_err(),
            "operationId \"x\" is defined twice (GET /a and POST /b)"
        );
    }
}
