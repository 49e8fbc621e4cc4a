//! The checked-in CRDs are what the code generates, and every schema is structural, as the
//! Kubernetes API server demands (it is not available here to say so itself).

use std::path::PathBuf;

use aegis_seal_operator::crdgen::{CRD_DIR, crd_files};
use serde_json::Value;

fn crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(CRD_DIR)
}

#[test]
fn checked_in_crds_match_the_generated_ones() {
    let files = crd_files().unwrap();
    assert_eq!(files.len(), 4);
    for (name, generated) in &files {
        let path = crd_dir().join(name);
        let on_disk =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            &on_disk == generated,
            "{} is stale: run `cargo run -p aegis-seal-operator --bin crdgen`",
            path.display()
        );
    }
    let extra: Vec<_> = std::fs::read_dir(crd_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !files.iter().any(|(f, _)| f == n))
        .collect();
    assert!(extra.is_empty(), "files crdgen does not write: {extra:?}");
}

/// The structural-schema rules of the Kubernetes documentation ("Specifying a structural schema").
fn structural_problems(node: &Value, path: &str, in_junctor: bool, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        out.push(format!("{path}: schema is not an object"));
        return;
    };
    for banned in ["$ref", "definitions", "$defs", "$schema"] {
        if obj.contains_key(banned) {
            out.push(format!("{path}: `{banned}` is not allowed"));
        }
    }
    if in_junctor {
        for banned in [
            "description",
            "type",
            "default",
            "additionalProperties",
            "nullable",
        ] {
            if obj.contains_key(banned) {
                out.push(format!("{path}: `{banned}` inside allOf/anyOf/oneOf/not"));
            }
        }
    }
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if !in_junctor && !obj.contains_key("type") && !preserve && !int_or_string {
        out.push(format!("{path}: no `type`"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        out.push(format!(
            "{path}: both `properties` and `additionalProperties`"
        ));
    }
    if obj.get("additionalProperties") == Some(&Value::Bool(false)) {
        out.push(format!("{path}: `additionalProperties: false`"));
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        if !in_junctor && obj.get("type").and_then(Value::as_str) != Some("object") {
            out.push(format!("{path}: `properties` on a non-object"));
        }
        for (k, v) in props {
            structural_problems(v, &format!("{path}.{k}"), in_junctor, out);
        }
    }
    if let Some(items) = obj.get("items") {
        structural_problems(items, &format!("{path}[]"), in_junctor, out);
    }
    if let Some(ap @ Value::Object(_)) = obj.get("additionalProperties") {
        structural_problems(ap, &format!("{path}{{}}"), in_junctor, out);
    }
    for junctor in ["allOf", "anyOf", "oneOf"] {
        let subs = obj.get(junctor).and_then(Value::as_array);
        for (i, sub) in subs.into_iter().flatten().enumerate() {
            structural_problems(sub, &format!("{path}.{junctor}[{i}]"), true, out);
        }
    }
    if let Some(not) = obj.get("not") {
        structural_problems(not, &format!("{path}.not"), true, out);
    }
}

#[test]
fn every_schema_is_structural() {
    for crd in aegis_seal_crds::custom_resource_definitions() {
        let name = crd.metadata.name.clone().unwrap();
        for version in &crd.spec.versions {
            let schema = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .unwrap();
            let schema = serde_json::to_value(schema).unwrap();
            let mut problems = Vec::new();
            structural_problems(&schema, &name, false, &mut problems);
            assert!(
                problems.is_empty(),
                "{name} is not structural:\n{}",
                problems.join("\n")
            );
            assert_eq!(schema["type"], "object");
            assert!(
                schema["properties"]["spec"].is_object(),
                "{name} has a spec"
            );
            assert!(
                schema["properties"]["status"].is_object(),
                "{name} has a status"
            );
            let subresources = version.subresources.as_ref().unwrap();
            assert!(
                subresources.status.is_some(),
                "{name} has a status subresource"
            );
        }
    }
}

#[test]
fn the_structural_check_catches_what_the_api_server_rejects() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "a": {"description": "no type"},
            "b": {"type": "object", "additionalProperties": false},
            "c": {"anyOf": [{"type": "string"}, {"type": "object"}]},
            "d": {"$ref": "#/definitions/X"}
        }
    });
    let mut problems = Vec::new();
    structural_problems(&bad, "x", false, &mut problems);
    for expected in [
        "x.a: no `type`",
        "x.b: `additionalProperties: false`",
        "x.c: no `type`",
        "x.c.anyOf[0]: `type` inside allOf/anyOf/oneOf/not",
        "x.d: `$ref` is not allowed",
    ] {
        assert!(
            problems.iter().any(|p| p == expected),
            "missing {expected:?} in {problems:?}"
        );
    }
}

#[test]
fn workflows_print_tool_tenant_accepted_and_age() {
    let crd = aegis_seal_crds::custom_resource_definitions()
        .into_iter()
        .find(|c| c.spec.names.kind == "Workflow")
        .unwrap();
    assert_eq!(crd.spec.group, "seal.100monkeys.ai");
    assert_eq!(crd.spec.scope, "Namespaced");
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1");
    let columns: Vec<_> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Tool", ".status.tool_name"),
            ("Tenant", ".spec.tenant_id"),
            (
                "Accepted",
                ".status.conditions[?(@.type==\"Accepted\")].status"
            ),
            ("Age", ".metadata.creationTimestamp"),
        ]
    );
}

/// Every integer narrower than 64 bits, as the operator reads it, with its `format`.
fn narrow_integers<'a>(node: &'a Value, path: &str, out: &mut Vec<(String, &'a Value)>) {
    match node {
        Value::Object(obj) => {
            if let Some(format) = obj.get("format").and_then(Value::as_str)
                && ["uint8", "uint16", "uint32", "int8", "int16", "int32"].contains(&format)
            {
                out.push((path.to_owned(), node));
            }
            for (key, child) in obj {
                narrow_integers(child, &format!("{path}.{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                narrow_integers(child, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The API server checks `minimum` and `maximum`, not `format`: an integer it accepted that does
/// not fit the operator's type fails every list of its kind, and so every gateway's reconcile.
#[test]
fn every_narrow_integer_is_bounded_by_its_type() {
    let mut checked = 0;
    for (name, yaml) in crd_files().unwrap() {
        let crd: Value = serde_yaml::from_str(&yaml).unwrap();
        let mut found = Vec::new();
        narrow_integers(&crd, &name, &mut found);
        for (path, node) in found {
            let (min, max) = match node["format"].as_str().unwrap() {
                "uint8" => (0.0, 255.0),
                "uint16" => (0.0, 65_535.0),
                "uint32" => (0.0, 4_294_967_295.0),
                "int8" => (-128.0, 127.0),
                "int16" => (-32_768.0, 32_767.0),
                _ => (-2_147_483_648.0, 2_147_483_647.0),
            };
            let minimum = node["minimum"].as_f64();
            let maximum = node["maximum"].as_f64();
            assert!(
                minimum.is_some_and(|m| m >= min) && maximum.is_some_and(|m| m <= max),
                "{path}: minimum {minimum:?}, maximum {maximum:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 10, "only {checked} integers found");
    // A tighter range of the type's own is kept.
    let gateway = crd_files()
        .unwrap()
        .into_iter()
        .find(|(name, _)| name.starts_with("sealgateways."))
        .unwrap()
        .1;
    assert!(
        gateway.contains("maximum: 3600.0"),
        "drain_seconds keeps its bound"
    );
}
