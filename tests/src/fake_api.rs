//! A small, stateful, in-process Kubernetes API server for tests: enough of the real one's
//! behaviour for kube-runtime controllers (and a data plane's ConfigMap watch) to run against it.
//!
//! - every resource under `/api/v1/...` and `/apis/{group}/{version}/...`, namespaced or across
//!   namespaces, with a `status` subresource for any object;
//! - list (label and field selectors) and watch (newline-delimited events from a resourceVersion,
//!   with history, so no event between a list and its watch is lost; `timeoutSeconds` honoured);
//! - get, create (409 when it exists), replace (409 on a stale resourceVersion), delete (only
//!   marks `deletionTimestamp` while finalizers remain);
//! - patch: server-side apply (the applied object replaces the previous content; a single field
//!   manager owns everything, which is how the operator applies) and JSON merge patch;
//! - like the real server, a write that changes nothing is a no-op: no new resourceVersion, no
//!   event. Without that, a status-writing controller would reconcile for ever.
//!
//! Not modelled: field ownership between several managers, JSON patch, admission, defaulting,
//! garbage collection through ownerReferences, authorization.
//!
//! Test support: misuse (an object that does not exist, a port that cannot be bound) panics, as a
//! failed test assertion would.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

/// `group/version/resource` (core group: `/v1/configmaps`).
pub type ResourceKey = String;

/// One change, as a watch reports it.
#[derive(Clone, Debug)]
pub struct Change {
    pub resource_version: u64,
    pub resource: ResourceKey,
    pub kind: &'static str,
    pub object: Value,
}

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Asked for metadata only (`Accept: ...;as=PartialObjectMetadata[List]`), as
    /// `Api<PartialObjectMeta<K>>` does: answered with each object's metadata alone.
    pub metadata_only: bool,
}

/// `obj` as the API server answers the request: whole, or its metadata alone when the request
/// asked for metadata only.
fn as_requested(obj: &Value, metadata_only: bool) -> Value {
    if metadata_only {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
               "metadata": obj["metadata"].clone()})
    } else {
        obj.clone()
    }
}

#[derive(Default)]
struct State {
    /// (resource, namespace, name) -> object
    objects: BTreeMap<(ResourceKey, String, String), Value>,
    resource_version: u64,
    uid: u64,
    history: Vec<Change>,
    log: Vec<Logged>,
    /// Changes made, by requests or by the test.
    writes: usize,
}

pub struct FakeApi {
    state: Mutex<State>,
    changes: broadcast::Sender<Change>,
    pub addr: SocketAddr,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(value).unwrap_or_default())).boxed())
        .unwrap_or_default()
}

fn status_error(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    full(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": reason, "code": code.as_u16(), "message": message}),
    )
}

/// What a path names.
#[derive(Debug)]
struct Target {
    resource: ResourceKey,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => (format!("/{version}"), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (resource, name, status) = match rest {
        [resource] => (*resource, None, false),
        [resource, name] => (*resource, Some((*name).to_owned()), false),
        [resource, name, "status"] => (*resource, Some((*name).to_owned()), true),
        _ => return None,
    };
    Some(Target {
        resource: format!("{group_version}/{resource}"),
        namespace,
        name,
        status,
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_params(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// `a=b,c!=d,e,!f` against an object's labels.
fn labels_match(selector: &str, object: &Value) -> bool {
    let labels = object["metadata"]["labels"].as_object();
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            get(k.trim()) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            get(k.trim()) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            get(k.trim()).is_none()
        } else {
            get(term.trim()).is_some()
        }
    })
}

/// `metadata.name=x,metadata.namespace=y`.
fn fields_match(selector: &str, object: &Value) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (k, v, negate) = match term.split_once("!=") {
            Some((k, v)) => (k, v, true),
            None => match term.split_once("==").or_else(|| term.split_once('=')) {
                Some((k, v)) => (k, v, false),
                None => return false,
            },
        };
        let pointer = format!("/{}", k.trim().replace('.', "/"));
        let actual = object.pointer(&pointer).and_then(Value::as_str);
        (actual == Some(v.trim())) != negate
    })
}

/// RFC 7386.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// The object without what the server manages, to tell whether a write changes the spec.
fn content(object: &Value) -> Value {
    let mut v = object.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    v
}

impl FakeApi {
    /// Starts the server on `127.0.0.1:0`.
    pub async fn start() -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (changes, _) = broadcast::channel(4096);
        let api = Arc::new(Self {
            state: Mutex::default(),
            changes,
            addr,
        });
        let server = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let api = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.handle(req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        api
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig document for this server, for a process whose client comes from
    /// `kube::Client::try_default()`: write it to a file and name the file in `KUBECONFIG`.
    /// (`try_default` reads `KUBECONFIG` or `~/.kube/config` first, and only then the in-cluster
    /// service account, whose token file cannot be faked.)
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{}\"}}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake, namespace: default}}\ncurrent-context: fake\n",
            self.url()
        )
    }

    /// A kube client for this server, with `default` as its namespace.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores `object` (metadata completed), as a client's create or update would; an existing
    /// object keeps its status (see [`FakeApi::set_status`]).
    pub fn put(&self, resource: &str, object: Value) -> Value {
        let ns = object["metadata"]["namespace"].as_str().map(str::to_owned);
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut state = self.lock();
        let key = (resource.to_owned(), ns.unwrap_or_default(), name);
        let previous = state.objects.get(&key).cloned();
        self.commit(&mut state, key, previous, object, false)
            .unwrap_or_else(|(_, message)| panic!("{message}"))
    }

    /// Replaces an object's status, as the component owning it would.
    pub fn set_status(&self, resource: &str, namespace: &str, name: &str, status: Value) {
        let mut state = self.lock();
        let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
        let previous = state.objects.get(&key).cloned().expect("no such object");
        let mut next = previous.clone();
        next["status"] = status;
        let _ = self.commit(&mut state, key, Some(previous), next, true);
    }

    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(resource.to_owned(), namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn list(&self, resource: &str) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|((r, _, _), _)| r == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    /// Changes made so far (a no-op write is none).
    pub fn writes(&self) -> usize {
        self.lock().writes
    }

    /// Stores `next` in place of `previous` unless nothing changes; returns what is stored.
    /// `status_only` writes keep everything but the status from `previous`.
    fn commit(
        &self,
        state: &mut State,
        key: (ResourceKey, String, String),
        previous: Option<Value>,
        mut next: Value,
        status_only: bool,
    ) -> Result<Value, (StatusCode, String)> {
        if let Some(prev) = &previous {
            if status_only {
                let status = next["status"].take();
                next = prev.clone();
                next["status"] = status;
            } else if prev.get("status").is_some() && !key.0.ends_with("/events") {
                next["status"] = prev["status"].clone();
            }
            // Server-managed metadata survives every write.
            for field in [
                "uid",
                "creationTimestamp",
                "generation",
                "resourceVersion",
                "deletionTimestamp",
            ] {
                match prev["metadata"].get(field) {
                    Some(v) => next["metadata"][field] = v.clone(),
                    None => {
                        if let Some(m) = next["metadata"].as_object_mut() {
                            m.remove(field);
                        }
                    }
                }
            }
            if next.get("status").is_some_and(Value::is_null) {
                next.as_object_mut().map(|m| m.remove("status"));
            }
            if &next == prev {
                return Ok(next);
            }
            if content(&next) != content(prev) {
                let generation = prev["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                next["metadata"]["generation"] = json!(generation);
            }
        } else {
            state.uid += 1;
            next["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", state.uid));
            next["metadata"]["creationTimestamp"] = json!(
                k8s_openapi::jiff::Timestamp::now()
                    .strftime("%Y-%m-%dT%H:%M:%SZ")
                    .to_string()
            );
            next["metadata"]["generation"] = json!(1);
            if !key.1.is_empty() {
                next["metadata"]["namespace"] = json!(key.1);
            }
        }
        state.resource_version += 1;
        let rv = state.resource_version;
        next["metadata"]["resourceVersion"] = json!(rv.to_string());
        let kind = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        state.objects.insert(key.clone(), next.clone());
        self.record(state, key.0, kind, next.clone());
        Ok(next)
    }

    fn record(&self, state: &mut State, resource: ResourceKey, kind: &'static str, object: Value) {
        let change = Change {
            resource_version: state.resource_version,
            resource,
            kind,
            object,
        };
        state.writes += 1;
        state.history.push(change.clone());
        let _ = self.changes.send(change);
    }

    fn delete(
        &self,
        state: &mut State,
        key: (ResourceKey, String, String),
    ) -> Result<Value, (StatusCode, String)> {
        let Some(mut obj) = state.objects.get(&key).cloned() else {
            return Err((StatusCode::NOT_FOUND, format!("{} not found", key.2)));
        };
        let has_finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if obj["metadata"].get("deletionTimestamp").is_none() {
                obj["metadata"]["deletionTimestamp"] = json!(
                    k8s_openapi::jiff::Timestamp::now()
                        .strftime("%Y-%m-%dT%H:%M:%SZ")
                        .to_string()
                );
                state.resource_version += 1;
                obj["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
                state.objects.insert(key.clone(), obj.clone());
                self.record(state, key.0, "MODIFIED", obj.clone());
            }
            return Ok(obj);
        }
        state.objects.remove(&key);
        state.resource_version += 1;
        obj["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
        self.record(state, key.0, "DELETED", obj.clone());
        Ok(obj)
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or_default().to_owned();
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let metadata_only = parts
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("as=PartialObjectMetadata"));
        self.lock().log.push(Logged {
            method: parts.method.to_string(),
            path: path.clone(),
            query: query.clone(),
            metadata_only,
        });
        let Some(target) = parse_path(&path) else {
            return status_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{path}: no such API"),
            );
        };
        let params = query_params(&query);
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    return status_error(StatusCode::BAD_REQUEST, "BadRequest", e.to_string());
                }
            }
        };
        let result = match (&parts.method, &target.name) {
            (&Method::GET, None)
                if params.get("watch").is_some_and(|w| w == "true" || w == "1") =>
            {
                return self.watch(target, &params, metadata_only);
            }
            (&Method::GET, None) => Ok(self.list_response(&target, &params, metadata_only)),
            (&Method::GET, Some(name)) => {
                let key = (
                    target.resource.clone(),
                    target.namespace.clone().unwrap_or_default(),
                    name.clone(),
                );
                self.lock()
                    .objects
                    .get(&key)
                    .map(|obj| as_requested(obj, metadata_only))
                    .ok_or((StatusCode::NOT_FOUND, format!("{name} not found")))
            }
            (&Method::POST, None) => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let key = (
                    target.resource.clone(),
                    target.namespace.clone().unwrap_or_default(),
                    name.clone(),
                );
                let mut state = self.lock();
                if state.objects.contains_key(&key) {
                    Err((StatusCode::CONFLICT, format!("{name} already exists")))
                } else {
                    self.commit(&mut state, key, None, body, false)
                }
            }
            (&Method::PUT, Some(name)) => {
                let key = (
                    target.resource.clone(),
                    target.namespace.clone().unwrap_or_default(),
                    name.clone(),
                );
                let mut state = self.lock();
                match state.objects.get(&key).cloned() {
                    None => Err((StatusCode::NOT_FOUND, format!("{name} not found"))),
                    Some(prev) => {
                        let sent = body["metadata"]["resourceVersion"].as_str();
                        if sent.is_some() && sent != prev["metadata"]["resourceVersion"].as_str() {
                            Err((
                                StatusCode::CONFLICT,
                                format!(
                                    "the object {name} has been modified; please apply your changes to the latest version"
                                ),
                            ))
                        } else {
                            self.commit(&mut state, key, Some(prev), body, target.status)
                        }
                    }
                }
            }
            (&Method::PATCH, Some(name)) => {
                let key = (
                    target.resource.clone(),
                    target.namespace.clone().unwrap_or_default(),
                    name.clone(),
                );
                let mut state = self.lock();
                let prev = state.objects.get(&key).cloned();
                if content_type.starts_with("application/apply-patch") {
                    if params.get("fieldManager").is_none_or(String::is_empty) {
                        Err((
                            StatusCode::BAD_REQUEST,
                            "fieldManager is required for apply".into(),
                        ))
                    } else if target.status {
                        match prev {
                            None => Err((StatusCode::NOT_FOUND, format!("{name} not found"))),
                            Some(prev) => self.commit(&mut state, key, Some(prev), body, true),
                        }
                    } else {
                        self.commit(&mut state, key, prev, body, false)
                    }
                } else if content_type.starts_with("application/merge-patch") {
                    match prev {
                        None => Err((StatusCode::NOT_FOUND, format!("{name} not found"))),
                        Some(prev) => {
                            let mut next = prev.clone();
                            merge_patch(&mut next, &body);
                            self.commit(&mut state, key, Some(prev), next, target.status)
                        }
                    }
                } else {
                    Err((
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        format!("patch type {content_type} is not supported by the fake"),
                    ))
                }
            }
            (&Method::DELETE, Some(name)) => {
                let key = (
                    target.resource.clone(),
                    target.namespace.clone().unwrap_or_default(),
                    name.clone(),
                );
                let mut state = self.lock();
                self.delete(&mut state, key)
            }
            _ => Err((
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} {path}", parts.method),
            )),
        };
        match result {
            Ok(v) => {
                let status = if parts.method == Method::POST {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                full(status, &v)
            }
            Err((code, message)) => {
                let reason = match code {
                    StatusCode::NOT_FOUND => "NotFound",
                    StatusCode::CONFLICT => "Conflict",
                    _ => "BadRequest",
                };
                status_error(code, reason, message)
            }
        }
    }

    fn selected(
        target: &Target,
        params: &BTreeMap<String, String>,
        resource: &str,
        obj: &Value,
    ) -> bool {
        resource == target.resource
            && target
                .namespace
                .as_deref()
                .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
            && params
                .get("labelSelector")
                .is_none_or(|s| labels_match(s, obj))
            && params
                .get("fieldSelector")
                .is_none_or(|s| fields_match(s, obj))
    }

    fn list_response(
        &self,
        target: &Target,
        params: &BTreeMap<String, String>,
        metadata_only: bool,
    ) -> Value {
        let state = self.lock();
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|((r, _, _), obj)| Self::selected(target, params, r, obj))
            .map(|(_, obj)| as_requested(obj, metadata_only))
            .collect();
        let (api_version, kind) = if metadata_only {
            ("meta.k8s.io/v1", "PartialObjectMetadataList")
        } else {
            ("v1", "List")
        };
        json!({"apiVersion": api_version, "kind": kind,
               "metadata": {"resourceVersion": state.resource_version.to_string()},
               "items": items})
    }

    fn watch(
        self: Arc<Self>,
        target: Target,
        params: &BTreeMap<String, String>,
        metadata_only: bool,
    ) -> Response<Body> {
        let since: u64 = params
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = params
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290u64);
        let params = params.clone();
        // History and subscription under one lock: nothing falls between them.
        let (backlog, live) = {
            let state = self.lock();
            let backlog: Vec<Change> = if since == 0 {
                // "Any" version: start with the current objects, as ADDED.
                state
                    .objects
                    .iter()
                    .filter(|((r, _, _), obj)| Self::selected(&target, &params, r, obj))
                    .map(|((r, _, _), obj)| Change {
                        resource_version: 0,
                        resource: r.clone(),
                        kind: "ADDED",
                        object: obj.clone(),
                    })
                    .collect()
            } else {
                state
                    .history
                    .iter()
                    .filter(|c| c.resource_version > since)
                    .filter(|c| Self::selected(&target, &params, &c.resource, &c.object))
                    .cloned()
                    .collect()
            };
            (backlog, self.changes.subscribe())
        };
        let line = move |c: &Change| {
            let object = as_requested(&c.object, metadata_only);
            let mut bytes =
                serde_json::to_vec(&json!({"type": c.kind, "object": object})).unwrap_or_default();
            bytes.push(b'\n');
            Ok::<_, Infallible>(Frame::data(Bytes::from(bytes)))
        };
        let backlog = futures::stream::iter(backlog.iter().map(line).collect::<Vec<_>>());
        let live = futures::stream::unfold(live, move |mut rx| {
            let target_resource = target.resource.clone();
            let target = Target {
                resource: target_resource,
                namespace: target.namespace.clone(),
                name: None,
                status: false,
            };
            let params = params.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok(c)
                            if c.resource_version > since
                                && Self::selected(&target, &params, &c.resource, &c.object) =>
                        {
                            return Some((c, rx));
                        }
                        Ok(_) => continue,
                        // Lagging or closed: end the watch; the client watches again.
                        Err(_) => return None,
                    }
                }
            }
        })
        .map(move |c| line(&c));
        let stream = backlog
            .chain(live)
            .take_until(tokio::time::sleep(Duration::from_secs(timeout)));
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_selectors() {
        let t = parse_path("/api/v1/namespaces/tools/configmaps/edge-config").unwrap();
        assert_eq!(
            (
                t.resource.as_str(),
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.status
            ),
            ("/v1/configmaps", Some("tools"), Some("edge-config"), false)
        );
        let t =
            parse_path("/apis/seal.100monkeys.ai/v1/namespaces/tools/workflows/a/status").unwrap();
        assert_eq!(t.resource, "seal.100monkeys.ai/v1/workflows");
        assert!(t.status);
        let t = parse_path("/apis/apps/v1/deployments").unwrap();
        assert_eq!((t.namespace, t.name), (None, None));
        let obj = json!({"metadata": {"name": "x", "labels": {"a": "1", "b": "2"}}});
        assert!(labels_match("a=1,b", &obj));
        assert!(!labels_match("a=1,!b", &obj));
        assert!(labels_match("a!=2", &obj));
        assert!(fields_match("metadata.name=x", &obj));
        assert_eq!(
            percent_decode("seal.100monkeys.ai%2Fsnapshot-of%3Dedge"),
            "seal.100monkeys.ai/snapshot-of=edge"
        );
    }
}
