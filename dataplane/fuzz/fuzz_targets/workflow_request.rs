//! An agent's arguments through a workflow step as the engine runs it: into the template scope,
//! rendered by the step registry with `{{json ...}}`, parsed back, and turned into the upstream
//! request by `request::prepare`. The arguments are the one thing an agent controls here, so every
//! invariant is about what they cannot do (any violation is a crash libFuzzer keeps):
//!
//! - nothing panics, whatever the values;
//! - neither `{{json x}}` nor a quoted `"{{x}}"` can be broken out of: the rendered text is JSON,
//!   and each field is exactly the value the agent sent;
//! - a path parameter is exactly one segment of the upstream URL, under the base URL's path, and
//!   decodes to the value's text; the scheme, host and port are the base URL's; the URL reads back
//!   unchanged (no normalization left to the upstream's URL parser);
//!   a value that would name another resource (empty, `.`, `..`) is refused, and only those;
//! - query values, the header and the cookie carry exactly their values, and nothing else is added;
//! - the body holds exactly the fields that are not parameters.
#![no_main]

use std::sync::LazyLock;

use aegis_seal_crds::openapi::{Operation, Parameter, ParameterLocation};
use aegis_seal_gateway::application::workflow::request::prepare;
use aegis_seal_gateway::application::workflow::template::{TemplateScope, new_registry, render};
use handlebars::Handlebars;
use http::Method;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value, json};

const BASE: &str = "http://upstream.internal:8080/api/";

/// The step: the arguments through `{{json}}`, as the documented templates write them, and one
/// quoted the way upstream's templates write them (`"{{input.note}}"`).
const TEMPLATE: &str = r#"{"owner": {{json input.owner}}, "repo": {{json input.repo}},
  "page": {{json input.page}}, "X-Trace": {{json input.trace}}, "session": {{json input.session}},
  "title": {{json input.title}}, "labels": {{json input.labels}}, "note": "{{input.note}}"}"#;

/// The step registry, compiled once as a snapshot's is.
static REGISTRY: LazyLock<Handlebars<'static>> = LazyLock::new(|| {
    let mut registry = new_registry();
    registry.register_template_string("step", TEMPLATE).unwrap();
    registry
});

#[derive(Arbitrary, Debug)]
struct Arguments {
    owner: Scalar,
    repo: Scalar,
    page: Option<Vec<Scalar>>,
    trace: Option<Scalar>,
    session: Option<Scalar>,
    title: String,
    labels: Vec<(String, Scalar)>,
    note: String,
}

#[derive(Arbitrary, Debug)]
enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn json(&self) -> Value {
        match self {
            Self::Text(s) => json!(s),
            Self::Int(i) => json!(i),
            // JSON has no NaN or infinities: an agent cannot send them.
            Self::Float(f) => serde_json::Number::from_f64(*f).map_or(json!(0), Value::Number),
            Self::Bool(b) => json!(b),
        }
    }
}

/// A parameter's text as the request carries it.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn optional(value: Option<&Scalar>) -> Value {
    value.map_or(Value::Null, Scalar::json)
}

fn operation() -> Operation {
    let param = |name: &str, location, required| Parameter {
        name: name.into(),
        location,
        required,
    };
    Operation {
        method: "POST".into(),
        path: "/repos/{owner}/{repo}/issues".into(),
        parameters: vec![
            param("owner", ParameterLocation::Path, true),
            param("repo", ParameterLocation::Path, true),
            param("page", ParameterLocation::Query, false),
            param("X-Trace", ParameterLocation::Header, false),
            param("session", ParameterLocation::Cookie, false),
        ],
        has_request_body: true,
    }
}

fuzz_target!(|arguments: Arguments| check(&arguments));

fn check(a: &Arguments) {
    let labels: Map<String, Value> = a
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.json()))
        .collect();
    let page = a
        .page
        .as_ref()
        .map_or(Value::Null, |p| p.iter().map(Scalar::json).collect());
    let input = json!({
        "owner": a.owner.json(), "repo": a.repo.json(), "page": page,
        "trace": optional(a.trace.as_ref()), "session": optional(a.session.as_ref()),
        "title": a.title, "labels": labels, "note": a.note,
    });

    let rendered = render(&REGISTRY, "step", &TemplateScope::new(&input))
        .unwrap_or_else(|e| panic!("a template over present arguments failed: {e}"));
    let rendered: Value = serde_json::from_str(&rendered)
        .unwrap_or_else(|e| panic!("the step rendered text that is not JSON ({e}): {rendered}"));
    for (field, arg) in [
        ("owner", "owner"),
        ("repo", "repo"),
        ("page", "page"),
        ("X-Trace", "trace"),
        ("session", "session"),
        ("title", "title"),
        ("labels", "labels"),
        ("note", "note"),
    ] {
        assert_eq!(
            rendered[field], input[arg],
            "{field} changed through its template"
        );
    }

    let (owner, repo) = (text(&input["owner"]), text(&input["repo"]));
    let trace = a.trace.as_ref().map(|t| text(&t.json()));
    let result = prepare(BASE, &Method::POST, &operation(), rendered);
    let names_another_resource = |t: &str| matches!(t, "" | "." | "..");
    let header_unfit = trace
        .as_deref()
        .is_some_and(|t| http::HeaderValue::from_str(t).is_err());
    let request = match result {
        Err(e) if names_another_resource(&owner) || names_another_resource(&repo) => {
            assert!(e.contains("must not be empty"), "{e}");
            return;
        }
        Err(e) if header_unfit => {
            assert!(e.contains("not a valid header value"), "{e}");
            return;
        }
        Err(e) => panic!("refused valid arguments: {e}: {a:?}"),
        Ok(_) if names_another_resource(&owner) || names_another_resource(&repo) => {
            panic!("a path parameter naming another resource was sent: {owner:?} / {repo:?}")
        }
        Ok(_) if header_unfit => panic!("an unfit header value was sent: {trace:?}"),
        Ok(request) => request,
    };

    // The URL: the base's origin, its path, one segment per parameter, stable when re-read.
    let url = &request.url;
    assert_eq!(
        (url.scheme(), url.host_str(), url.port()),
        ("http", Some("upstream.internal"), Some(8080))
    );
    assert!(url.fragment().is_none() && url.username().is_empty() && url.password().is_none());
    let segments: Vec<&str> = url.path_segments().expect("a base URL").collect();
    assert_eq!(segments.len(), 5, "{url}");
    assert_eq!(
        (segments[0], segments[1], segments[4]),
        ("api", "repos", "issues"),
        "{url}"
    );
    assert_eq!(
        percent_decode_str(segments[2]).collect::<Vec<u8>>(),
        owner.as_bytes(),
        "{url}"
    );
    assert_eq!(
        percent_decode_str(segments[3]).collect::<Vec<u8>>(),
        repo.as_bytes(),
        "{url}"
    );
    assert_eq!(
        url::Url::parse(url.as_str()).unwrap().as_str(),
        url.as_str()
    );

    // Query, header and cookie: exactly the values, nothing else.
    let expected_pages: Vec<(String, String)> = a
        .page
        .iter()
        .flatten()
        .map(|p| ("page".to_owned(), text(&p.json())))
        .collect();
    let pages: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(pages, expected_pages, "{url}");
    // (A header may carry UTF-8: HTTP passes bytes above 0x7f through as obs-text.)
    assert_eq!(
        request.headers.get("x-trace").map(|v| v.as_bytes()),
        trace.as_deref().map(str::as_bytes)
    );
    let cookie = request
        .headers
        .get("cookie")
        .map(|v| v.to_str().unwrap().to_owned());
    match a.session.as_ref().map(|s| text(&s.json())) {
        None => assert!(cookie.is_none()),
        Some(session) => {
            let cookie = cookie.expect("a cookie");
            let value = cookie
                .strip_prefix("session=")
                .expect("one cookie, named session");
            assert!(!value.contains([';', ' ', ',', '"']), "{cookie}");
            assert_eq!(
                percent_decode_str(value).collect::<Vec<u8>>(),
                session.as_bytes()
            );
        }
    }

    // The body: only what is not a parameter.
    let body: Value = serde_json::from_slice(&request.body.expect("a POST body")).unwrap();
    assert_eq!(
        body,
        json!({"title": a.title, "labels": input["labels"], "note": a.note})
    );
}
