//! Turning a step's rendered JSON into an HTTP request for its OpenAPI operation.
//!
//! The rendered value is one JSON object. Its top-level keys named like the operation's path, query,
//! header and cookie parameters fill those parameters; the remaining keys are the JSON body. GET,
//! HEAD, DELETE, OPTIONS and TRACE carry no body unless the operation declares one. A rendered array
//! is the body itself (the operation can then have no path parameters).

use aegis_seal_crds::openapi::{Operation, ParameterLocation};
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use reqwest::Url;
use serde_json::{Map, Value};

/// The request a step sends, before credentials are added.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    pub url: Url,
    /// Header parameters plus `Accept` and `Content-Type`; never credentials.
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    /// Top-level keys left over on a method that sends no body.
    pub dropped_keys: Vec<String>,
}

/// Header parameters never taken from a call's arguments: those OpenAPI says to ignore (the
/// client sets them itself), and those that frame or route the request or belong to one hop (an
/// agent's `Host` would reach another virtual host behind a shared ingress, with the credential;
/// its `Content-Length` or `Transfer-Encoding` would corrupt the framing).
const IGNORED_HEADER_PARAMETERS: [&str; 13] = [
    "accept",
    "content-type",
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Whether requests of `method` carry a body when the operation declares none.
fn sends_body_by_default(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// Builds the request; the error is the failure reason as reported.
pub fn prepare(
    base_url: &str,
    method: &Method,
    operation: &Operation,
    rendered: Value,
) -> Result<PreparedRequest, String> {
    let (mut fields, array_body) = match rendered {
        Value::Object(map) => (map, None),
        Value::Array(items) => (Map::new(), Some(Value::Array(items))),
        other => {
            return Err(format!(
                "template must render a JSON object, got {}",
                kind_of(&other)
            ));
        }
    };

    let path = fill_path(method, &operation.path, operation, &mut fields)?;
    let base = base_url.trim_end_matches('/');
    let separator = if path.starts_with('/') { "" } else { "/" };
    let mut url = Url::parse(&format!("{base}{separator}{path}"))
        .map_err(|e| format!("the request URL {base}{separator}{path} is invalid: {e}"))?;

    let mut query: Vec<(String, String)> = Vec::new();
    let mut headers = HeaderMap::new();
    let mut cookies: Vec<String> = Vec::new();
    for param in &operation.parameters {
        let location = match param.location {
            ParameterLocation::Path => {
                fields.remove(&param.name);
                continue;
            }
            ParameterLocation::Header
                if IGNORED_HEADER_PARAMETERS
                    .iter()
                    .any(|h| param.name.eq_ignore_ascii_case(h)) =>
            {
                continue;
            }
            ParameterLocation::Query => "query",
            ParameterLocation::Header => "header",
            ParameterLocation::Cookie => "cookie",
        };
        let value = match fields.remove(&param.name) {
            None | Some(Value::Null) if param.required => {
                return Err(format!(
                    "missing required {location} parameter \"{}\" ({method} {})",
                    param.name, operation.path
                ));
            }
            None | Some(Value::Null) => continue,
            Some(v) => v,
        };
        let invalid = || {
            format!(
                "{location} parameter \"{}\" must be a string, number, boolean or an array of those",
                param.name
            )
        };
        let values: Vec<String> = match &value {
            Value::Array(items) => items
                .iter()
                .map(|v| scalar_text(v).ok_or_else(invalid))
                .collect::<Result<_, _>>()?,
            v => vec![scalar_text(v).ok_or_else(invalid)?],
        };
        match param.location {
            ParameterLocation::Query => {
                query.extend(values.into_iter().map(|v| (param.name.clone(), v)));
            }
            ParameterLocation::Header => {
                let name = HeaderName::from_bytes(param.name.as_bytes()).map_err(|_| {
                    format!(
                        "header parameter \"{}\" is not a valid header name",
                        param.name
                    )
                })?;
                let value = HeaderValue::from_str(&values.join(",")).map_err(|_| {
                    format!(
                        "header parameter \"{}\" has a value that is not a valid header value",
                        param.name
                    )
                })?;
                headers.insert(name, value);
            }
            ParameterLocation::Cookie => {
                for v in values {
                    cookies.push(format!("{}={}", param.name, percent_encode(&v)));
                }
            }
            ParameterLocation::Path => {}
        }
    }
    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (name, value) in &query {
            pairs.append_pair(name, value);
        }
    }
    if !cookies.is_empty() {
        let value = HeaderValue::from_str(&cookies.join("; "))
            .map_err(|_| "cookie parameters do not form a valid Cookie header".to_owned())?;
        headers.insert(COOKIE, value);
    }
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));

    let mut dropped_keys = Vec::new();
    let body = if sends_body_by_default(method) || operation.has_request_body {
        let body = array_body.unwrap_or(Value::Object(fields));
        let bytes = serde_json::to_vec(&body)
            .map_err(|e| format!("the request body could not be serialized: {e}"))?;
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Some(Bytes::from(bytes))
    } else {
        dropped_keys.extend(fields.keys().cloned());
        if array_body.is_some() {
            dropped_keys.push("<array body>".to_owned());
        }
        None
    };
    Ok(PreparedRequest {
        url,
        headers,
        body,
        dropped_keys,
    })
}

/// Replaces every `{name}` of the path template with the percent-encoded value of key `name`.
fn fill_path(
    method: &Method,
    template: &str,
    operation: &Operation,
    fields: &mut Map<String, Value>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else {
            break;
        };
        out.push_str(&rest[..open]);
        let name = &rest[open + 1..close];
        let value = match fields.remove(name) {
            None | Some(Value::Null) => {
                return Err(format!(
                    "missing path parameter \"{name}\" ({method} {})",
                    operation.path
                ));
            }
            Some(v) => v,
        };
        let text = scalar_text(&value).ok_or_else(|| {
            format!("path parameter \"{name}\" must be a string, number or boolean")
        })?;
        // An empty or dot segment would change which resource the path names.
        if text.is_empty() || text == "." || text == ".." {
            return Err(format!(
                "path parameter \"{name}\" must not be empty, \".\" or \"..\""
            ));
        }
        out.push_str(&percent_encode(&text));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A short description of a JSON value's type, for messages.
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_seal_crds::openapi::Parameter;
    use serde_json::json;

    fn op(
        method: &str,
        path: &str,
        params: &[(&str, ParameterLocation, bool)],
        body: bool,
    ) -> Operation {
        Operation {
            method: method.into(),
            path: path.into(),
            parameters: params
                .iter()
                .map(|(n, l, r)| Parameter {
                    name: (*n).into(),
                    location: *l,
                    required: *r,
                })
                .collect(),
            has_request_body: body,
        }
    }

    #[test]
    fn splits_parameters_from_the_body() {
        let op = op(
            "POST",
            "/repos/{owner}/{repo}/issues",
            &[
                ("owner", ParameterLocation::Path, true),
                ("repo", ParameterLocation::Path, true),
                ("page", ParameterLocation::Query, false),
                ("tag", ParameterLocation::Query, false),
                ("X-Trace", ParameterLocation::Header, false),
                ("session", ParameterLocation::Cookie, false),
            ],
            true,
        );
        let rendered = json!({
            "owner": "a b/c", "repo": 7, "page": 2, "tag": ["x", "y"], "X-Trace": "t-1",
            "session": "s 1", "title": "hi"
        });
        let req = prepare("http://h:1/api/", &Method::POST, &op, rendered).unwrap();
        assert_eq!(
            req.url.as_str(),
            "http://h:1/api/repos/a%20b%2Fc/7/issues?page=2&tag=x&tag=y"
        );
        assert_eq!(req.headers["x-trace"], "t-1");
        assert_eq!(req.headers["cookie"], "session=s%201");
        assert_eq!(req.headers["content-type"], "application/json");
        assert_eq!(req.body.unwrap(), Bytes::from_static(br#"{"title":"hi"}"#));
    }

    #[test]
    fn framing_routing_and_hop_headers_never_come_from_arguments() {
        let names = [
            "Host",
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "Proxy-Authorization",
            "Upgrade",
        ];
        let params: Vec<_> = names
            .iter()
            .map(|n| (*n, ParameterLocation::Header, false))
            .chain([("X-Trace", ParameterLocation::Header, false)])
            .collect();
        let op = op("POST", "/items", &params, true);
        let rendered = json!({
            "Host": "internal-admin.svc", "Content-Length": "0", "Transfer-Encoding": "chunked",
            "Connection": "close", "Proxy-Authorization": "Basic x", "Upgrade": "h2c",
            "X-Trace": "t-1"
        });
        let req = prepare("http://h", &Method::POST, &op, rendered).unwrap();
        for name in names {
            assert!(req.headers.get(name).is_none(), "{name}: {:?}", req.headers);
        }
        assert_eq!(req.headers["x-trace"], "t-1");
    }

    #[test]
    fn get_sends_no_body_unless_declared() {
        let get = op("GET", "/items", &[], false);
        let req = prepare("http://h", &Method::GET, &get, json!({"q": 1})).unwrap();
        assert!(req.body.is_none());
        assert!(req.headers.get("content-type").is_none());
        assert_eq!(req.dropped_keys, ["q"]);
        let declared = op("GET", "/items", &[], true);
        let req = prepare("http://h", &Method::GET, &declared, json!({"q": 1})).unwrap();
        assert_eq!(req.body.unwrap(), Bytes::from_static(br#"{"q":1}"#));
    }

    #[test]
    fn rejects_missing_and_unsafe_path_parameters() {
        let op = op(
            "GET",
            "/repos/{owner}",
            &[("owner", ParameterLocation::Path, true)],
            false,
        );
        let err = |v: Value| prepare("http://h", &Method::GET, &op, v).unwrap_err();
        assert_eq!(
            err(json!({})),
            "missing path parameter \"owner\" (GET /repos/{owner})"
        );
        assert_eq!(
            err(json!({"owner": ".."})),
            "path parameter \"owner\" must not be empty, \".\" or \"..\""
        );
        assert_eq!(
            err(json!({"owner": {"a": 1}})),
            "path parameter \"owner\" must be a string, number or boolean"
        );
        assert_eq!(
            err(json!("text")),
            "template must render a JSON object, got a string"
        );
    }

    #[test]
    fn requires_required_query_parameters() {
        let op = op("GET", "/s", &[("q", ParameterLocation::Query, true)], false);
        assert_eq!(
            prepare("http://h", &Method::GET, &op, json!({"q": null})).unwrap_err(),
            "missing required query parameter \"q\" (GET /s)"
        );
    }
}
