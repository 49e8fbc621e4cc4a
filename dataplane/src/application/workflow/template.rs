//! Step templates: a strict Handlebars registry that emits JSON, and the context templates see.
//!
//! The context is `{"input": <arguments>, "steps": {"<step>": {"<key>": value}}, "state": {"input":
//! <arguments>, "<step>.<key>": value}}`. `steps` is the documented form (`{{json steps.create.id}}`);
//! `state` is the upstream gateway's (`{{lookup state "create.id"}}`) and is kept so its workflows
//! run unchanged. Strict mode makes a reference to anything absent an error instead of "".

use std::io::{self, Write};

use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext, RenderError,
    RenderErrorReason, ScopedJson,
};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

/// Largest text a step template may render.
pub const MAX_RENDERED_BYTES: usize = 1024 * 1024;

/// A registry for step templates: strict, values escaped for a JSON string, with the `json` helper
/// and a `lookup` that names what it could not find.
pub fn new_registry() -> Handlebars<'static> {
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    registry.register_escape_fn(escape_json_string);
    registry.register_helper("json", Box::new(json_helper));
    registry.register_helper("lookup", Box::new(StrictLookup));
    registry
}

/// What `{{x}}` writes: the value's text escaped as the inside of a JSON string (`"`, `\` and
/// controls; nothing else changes). Upstream's templates quote their values (`"{{input.title}}"`), and
/// without this an argument holding `", "owner": "x` would end the string and add keys of the
/// agent's choosing. Upstream's HTML escaping kept that out but mangled `&`, `<` and quotes; this
/// keeps it out and sends the value as it was. `{{{x}}}` still writes the text raw, for an author
/// who means it; `{{json x}}` writes a whole JSON value.
fn escape_json_string(text: &str) -> String {
    let quoted = serde_json::to_string(text).expect("a str always serializes");
    quoted[1..quoted.len() - 1].to_owned()
}

/// Parses what a template rendered, refusing an object that names a key twice. `serde_json` keeps
/// the last of two equal keys, so a raw `{{{x}}}` inside a string, fed `x","owner":"other`, would
/// silently replace a key the author fixed, such as the path parameter that picks the resource
/// the gateway's credential acts on. JSON names should be unique (RFC 8259 §4); here they must be.
pub fn parse_rendered(text: &str) -> Result<Value, String> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = UniqueKeys
        .deserialize(&mut deserializer)
        .map_err(|e| e.to_string())?;
    deserializer.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// Deserializes a [`Value`] as serde_json does, but an object with a repeated key is an error.
#[derive(Clone, Copy)]
struct UniqueKeys;

impl<'de> DeserializeSeed<'de> for UniqueKeys {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self)?;
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "key {key:?} appears twice in one object"
                )));
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// `{{json x}}`: `x` as JSON text (strings quoted and escaped, objects and arrays whole).
fn json_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let param = h
        .param(0)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex("json", 0))?;
    // Helpers receive missing parameters even in strict mode; a missing value is not `null`.
    if param.is_value_missing() {
        return Err(RenderError::strict_error(param.relative_path()));
    }
    let text = serde_json::to_string(param.value()).map_err(RenderErrorReason::SerdeError)?;
    out.write(&text)?;
    Ok(())
}

/// The built-in `lookup`, except that a miss in strict mode names the collection and the key.
#[derive(Clone, Copy)]
struct StrictLookup;

impl HelperDef for StrictLookup {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let collection = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("lookup", 0))?;
        let index = h
            .param(1)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("lookup", 1))?;
        let found = match collection.value() {
            Value::Array(items) => index
                .value()
                .as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| items.get(i)),
            Value::Object(map) => index.value().as_str().and_then(|k| map.get(k)),
            _ => None,
        };
        match found {
            Some(v) => Ok(ScopedJson::Derived(v.clone())),
            None if r.strict_mode() => {
                let base = collection.relative_path().map_or("<value>", String::as_str);
                let key = match index.value() {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Err(RenderErrorReason::MissingVariable(Some(format!("{base}.[{key}]"))).into())
            }
            None => Ok(ScopedJson::Derived(Value::Null)),
        }
    }
}

/// What templates of one invocation see; grows as steps extract values.
#[derive(Debug)]
pub struct TemplateScope {
    context: Context,
}

impl TemplateScope {
    pub fn new(arguments: &Value) -> Self {
        // `json!` would copy `arguments` by serializing it; `clone` copies it directly.
        let mut state = Map::new();
        state.insert("input".to_owned(), arguments.clone());
        let mut data = Map::new();
        data.insert("input".to_owned(), arguments.clone());
        data.insert("steps".to_owned(), Value::Object(Map::new()));
        data.insert("state".to_owned(), Value::Object(state));
        let data = Value::Object(data);
        Self {
            context: Context::from(data),
        }
    }

    /// Makes a step's extracted values visible to later templates, in both forms.
    pub fn record(&mut self, step: &str, extracted: Map<String, Value>) {
        let Value::Object(root) = self.context.data_mut() else {
            return;
        };
        if let Some(Value::Object(state)) = root.get_mut("state") {
            for (key, value) in &extracted {
                state.insert(format!("{step}.{key}"), value.clone());
            }
        }
        if let Some(Value::Object(steps)) = root.get_mut("steps") {
            steps.insert(step.to_owned(), Value::Object(extracted));
        }
    }

    /// The `steps` and `state` objects: every recorded step's extracted values in both forms,
    /// taken out of a scope no template will see again (moved, not copied).
    pub fn into_extracted(mut self) -> (Value, Value) {
        let Value::Object(root) = self.context.data_mut() else {
            return (json!({}), json!({}));
        };
        let mut take = |key| root.remove(key).unwrap_or_else(|| json!({}));
        (take("steps"), take("state"))
    }

    pub fn data(&self) -> &Value {
        self.context.data()
    }
}

/// Renders the template registered as `name`, refusing output longer than [`MAX_RENDERED_BYTES`].
/// The error is the failure reason as it is reported (without the step name).
pub fn render(
    registry: &Handlebars<'static>,
    name: &str,
    scope: &TemplateScope,
) -> Result<String, String> {
    let mut sink = BoundedSink::new(MAX_RENDERED_BYTES);
    let result = registry.render_with_context_to_write(name, &scope.context, &mut sink);
    if sink.exceeded {
        return Err(format!(
            "template output exceeds {MAX_RENDERED_BYTES} bytes"
        ));
    }
    result.map_err(|e| render_error_reason(&e))?;
    String::from_utf8(sink.buf).map_err(|e| format!("template output is not UTF-8: {e}"))
}

fn render_error_reason(e: &RenderError) -> String {
    let at = match (e.line_no, e.column_no) {
        (Some(line), Some(col)) => format!(" (line {line}, col {col})"),
        _ => String::new(),
    };
    match e.reason() {
        RenderErrorReason::MissingVariable(Some(path)) => {
            format!("template references a missing variable \"{path}\"{at}")
        }
        RenderErrorReason::MissingVariable(None) => {
            format!("template references a missing variable{at}")
        }
        reason => format!("template failed to render: {reason}{at}"),
    }
}

/// An in-memory writer that fails once the output would pass its limit.
struct BoundedSink {
    buf: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl BoundedSink {
    fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
            exceeded: false,
        }
    }
}

impl Write for BoundedSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("template output limit reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_object_may_not_name_a_key_twice() {
        assert_eq!(
            parse_rendered(r#"{"a": [1, {"b": 2.5}], "c": null}"#).unwrap(),
            json!({"a": [1, {"b": 2.5}], "c": null})
        );
        let injected = r#"{"org": "acme", "name": "r","org":"victim"}"#;
        let error = parse_rendered(injected).unwrap_err();
        assert!(
            error.starts_with(r#"key "org" appears twice in one object"#),
            "{error}"
        );
        assert!(parse_rendered(r#"{"a": {"x": 1, "x": 2}}"#).is_err());
        // Keys equal in different objects are fine; trailing text is not.
        assert!(parse_rendered(r#"[{"x": 1}, {"x": 2}]"#).is_ok());
        assert!(parse_rendered(r#"{} {}"#).is_err());
    }

    fn render_str(source: &str, scope: &TemplateScope) -> Result<String, String> {
        let mut registry = new_registry();
        registry.register_template_string("t", source).unwrap();
        render(&registry, "t", scope)
    }

    fn scope() -> TemplateScope {
        let mut scope = TemplateScope::new(&json!({"repo_name": "demo", "title": "<&\">", "n": 3}));
        let mut extracted = Map::new();
        extracted.insert("id".into(), json!(42));
        extracted.insert("tags".into(), json!(["a", "b"]));
        scope.record("create", extracted);
        scope
    }

    #[test]
    fn json_helper_renders_valid_json() {
        let s = scope();
        assert_eq!(
            render_str("{{json input.repo_name}}", &s).unwrap(),
            "\"demo\""
        );
        assert_eq!(
            render_str("{{json input.title}}", &s).unwrap(),
            r#""<&\">""#
        );
        assert_eq!(
            render_str("{{json steps.create.tags}}", &s).unwrap(),
            r#"["a","b"]"#
        );
        assert_eq!(
            render_str("{{json input}}", &s).unwrap(),
            r#"{"n":3,"repo_name":"demo","title":"<&\">"}"#
        );
        assert_eq!(
            render_str(r#"{{json (lookup state "create.id")}}"#, &s).unwrap(),
            "42"
        );
    }

    #[test]
    fn values_are_escaped_as_json_string_content_not_html() {
        assert_eq!(render_str("{{input.title}}", &scope()).unwrap(), r#"<&\">"#);
        assert_eq!(render_str("{{input.n}}", &scope()).unwrap(), "3");
        // A quoted value cannot be broken out of, whatever it holds.
        let s = TemplateScope::new(&json!({"x": "a\", \"owner\": \"evil\\\n\u{1}"}));
        let rendered = render_str(r#"{"owner": "o", "title": "{{input.x}}"}"#, &s).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&rendered).unwrap(),
            json!({"owner": "o", "title": "a\", \"owner\": \"evil\\\n\u{1}"})
        );
        // Triple braces write the text as it is.
        assert_eq!(render_str("{{{input.title}}}", &scope()).unwrap(), "<&\">");
    }

    #[test]
    fn both_context_forms_reach_extracted_values() {
        let s = scope();
        assert_eq!(render_str("{{steps.create.id}}", &s).unwrap(), "42");
        assert_eq!(
            render_str(r#"{{lookup state "create.id"}}"#, &s).unwrap(),
            "42"
        );
        assert_eq!(render_str("{{state.[create.id]}}", &s).unwrap(), "42");
        assert_eq!(render_str("{{state.input.n}}", &s).unwrap(), "3");
    }

    #[test]
    fn missing_variables_are_errors_that_name_the_variable() {
        let s = scope();
        assert_eq!(
            render_str("{\"x\": {{json steps.create.nope}}}", &s).unwrap_err(),
            "template references a missing variable \"steps.create.nope\" (line 1, col 7)"
        );
        assert_eq!(
            render_str("{{input.nope}}", &s).unwrap_err(),
            "template references a missing variable \"input.nope\" (line 1, col 1)"
        );
        assert_eq!(
            render_str(r#"{{lookup state "other.id"}}"#, &s).unwrap_err(),
            "template references a missing variable \"state.[other.id]\" (line 1, col 1)"
        );
        // `if` tests presence without failing, so optional values can default.
        assert_eq!(
            render_str("{{#if steps.other.id}}x{{else}}null{{/if}}", &s).unwrap(),
            "null"
        );
    }

    #[test]
    fn output_is_bounded() {
        let big = "x".repeat(MAX_RENDERED_BYTES);
        let s = TemplateScope::new(&json!({"big": big}));
        assert_eq!(
            render_str("{{input.big}}{{input.big}}", &s).unwrap_err(),
            format!("template output exceeds {MAX_RENDERED_BYTES} bytes")
        );
    }
}
