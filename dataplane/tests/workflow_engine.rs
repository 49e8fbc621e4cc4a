//! The workflow engine and the outbound HTTP client against a real hyper upstream on 127.0.0.1,
//! described by an OpenAPI document and compiled from a manifest the way the gateway loads them.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use aegis_seal_crds::{API_VERSION, Resources, compile, parse_manifests};
use aegis_seal_gateway::application::credential::REDACTED;
use aegis_seal_gateway::application::workflow::{
    CompiledWorkflow, ExecutionContext, WORKFLOW_INVOCATION_COMPLETED, WORKFLOW_INVOCATION_FAILED,
    WORKFLOW_INVOCATION_STARTED, WORKFLOW_STEP_EXECUTED, WORKFLOW_STEP_FAILED, WorkflowEngine,
    WorkflowOutcome,
};
use aegis_seal_gateway::infrastructure::http_client::{
    HttpClient, HttpClientConfig, HttpClientError, OutboundRequest,
};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

const SECRET: &str = "Bearer s3cr3t-credential";
const EXEC: &str = "exec-0001";
/// The tenant whose call runs the (system-global) workflows below.
const CALLING_TENANT: &str = "acme";
const WORKFLOW_ID: &str = "Workflow/team-a/repo-setup";
const LIMIT: u64 = 64 * 1024;
const BIG: usize = 100_000;

// ---------------------------------------------------------------------------------------------
// The fake upstream.

type Body = BoxBody<Bytes, Infallible>;

#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Call {
    fn json_body(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

struct State {
    addr: SocketAddr,
    calls: Mutex<Vec<Call>>,
    flaky: AtomicUsize,
}

struct Upstream {
    state: Arc<State>,
}

impl Upstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let state = Arc::new(State {
            addr: listener.local_addr().unwrap(),
            calls: Mutex::new(Vec::new()),
            flaky: AtomicUsize::new(0),
        });
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, state.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { state }
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.state.addr)
    }

    fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().unwrap().clone()
    }

    fn calls_to(&self, path: &str) -> usize {
        self.calls().iter().filter(|c| c.path == path).count()
    }
}

fn json_response(status: u16, value: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .unwrap()
}

fn redirect(location: String) -> Response<Body> {
    Response::builder()
        .status(302)
        .header("location", location)
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}

/// A body sent in 1000-byte chunks without a Content-Length.
struct Chunks(usize);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.0 == 0 {
            return Poll::Ready(None);
        }
        self.0 -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b' '; 1000])))))
    }
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let call = Call {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body: body.to_vec(),
    };
    state.calls.lock().unwrap().push(call.clone());
    let body_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let segments: Vec<&str> = call.path.trim_start_matches('/').split('/').collect();
    let port = state.addr.port();
    let response = match (call.method.as_str(), segments.as_slice()) {
        (_, ["echo", owner]) => json_response(
            200,
            json!({
                "method": call.method,
                "owner": owner,
                "query": call.query,
                "x_trace": call.headers.get("x-trace").map(|v| v.to_str().unwrap()),
                "content_type": call.headers.get("content-type").map(|v| v.to_str().unwrap()),
                "body": body_json,
                "body_len": body.len(),
            }),
        ),
        ("POST", ["orgs", org, "repos"]) => json_response(
            201,
            json!({"id": 101, "name": body_json["name"], "owner": {"login": org}}),
        ),
        ("PUT", ["teams", team, "repos", repo_id]) => json_response(
            200,
            json!({"team": team, "repo_id": repo_id.parse::<u64>().unwrap(), "permission": body_json["permission"]}),
        ),
        ("GET", ["missing"]) => json_response(404, json!({"message": "Not Found"})),
        // An upstream that quotes the credential it refuses.
        ("GET", ["denied"]) => json_response(
            401,
            json!({"error": format!("token {:?} refused", call.headers.get("authorization"))}),
        ),
        ("GET" | "POST", ["boom"]) => json_response(500, json!({"error": "database exploded"})),
        ("GET", ["text"]) => Response::builder()
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"hello, not json")).boxed())
            .unwrap(),
        ("GET", ["big"]) => json_response(200, json!({"data": "x".repeat(BIG)})),
        ("GET", ["big-chunked"]) => Response::new(Chunks(BIG / 1000).boxed()),
        ("GET" | "POST", ["slow"]) => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            json_response(200, json!({}))
        }
        ("GET" | "POST", ["flaky"]) => {
            let n = state.flaky.fetch_add(1, Ordering::SeqCst) + 1;
            if n < 3 {
                json_response(503, json!({"error": "try again"}))
            } else {
                json_response(200, json!({"ok": true, "attempt": n}))
            }
        }
        ("GET", ["empty"]) => Response::builder()
            .status(204)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap(),
        ("GET", ["shape"]) => json_response(200, json!({"name": "x", "url": "y"})),
        ("GET", ["redirect-same"]) => redirect("/shape".into()),
        ("GET", ["redirect-loop", n]) => {
            redirect(format!("/redirect-loop/{}", n.parse::<u32>().unwrap() + 1))
        }
        ("GET", ["redirect-metadata"]) => {
            redirect("http://169.254.169.254/latest/meta-data/".into())
        }
        ("GET", ["redirect-other-origin"]) => redirect(format!("http://localhost:{port}/shape")),
        _ => json_response(418, json!({"unexpected": call.path})),
    };
    Ok(response)
}

fn openapi() -> Value {
    let get = |id: &str| json!({"get": {"operationId": id}});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "fake upstream", "version": "1"},
        "paths": {
            "/echo/{owner}": {
                "parameters": [{"name": "owner", "in": "path", "required": true}],
                "get": {"operationId": "echoGet", "parameters": [
                    {"name": "page", "in": "query"},
                    {"name": "tags", "in": "query"},
                    {"name": "X-Trace", "in": "header"}
                ]},
                "post": {"operationId": "echoPost", "parameters": [{"name": "page", "in": "query"}],
                         "requestBody": {"content": {"application/json": {}}}},
                "delete": {"operationId": "echoDelete"}
            },
            "/orgs/{org}/repos": {"post": {"operationId": "createRepo",
                "parameters": [{"name": "org", "in": "path", "required": true}],
                "requestBody": {"content": {"application/json": {}}}}},
            "/teams/{team}/repos/{repo_id}": {"put": {"operationId": "addTeam",
                "parameters": [{"name": "team", "in": "path"}, {"name": "repo_id", "in": "path"}],
                "requestBody": {"content": {"application/json": {}}}}},
            "/missing": get("missing"),
            "/denied": get("denied"),
            "/boom": {"get": {"operationId": "boom"}, "post": {"operationId": "boomPost"}},
            "/text": get("text"),
            "/big": get("big"),
            "/big-chunked": get("bigChunked"),
            "/slow": {"get": {"operationId": "slow"}, "post": {"operationId": "slowPost"}},
            "/flaky": {"get": {"operationId": "flaky"}, "post": {"operationId": "flakyPost"}},
            "/empty": get("empty"),
            "/shape": get("shape"),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Compiles a workflow manifest through `parse_manifests` and `compile`, as the gateway does.
fn workflow(base_url: &str, steps: Value) -> CompiledWorkflow {
    let manifest = json!({
        "apiVersion": API_VERSION,
        "kind": "Workflow",
        "metadata": {"name": "repo-setup", "namespace": "team-a"},
        "spec": {
            "tool_name": "setup_repo",
            "description": "creates a repository and gives a team access",
            "api_spec": {"base_url": base_url, "openapi": {"inline": openapi()}},
            "steps": steps,
        }
    });
    let mut resources = Resources::default();
    parse_manifests(&manifest.to_string(), &mut resources).unwrap();
    let compiled = compile(&resources);
    let problems: Vec<String> = compiled.rejected().map(|r| r.message()).collect();
    assert!(problems.is_empty(), "{problems:?}");
    CompiledWorkflow::compile(Arc::new(compiled.snapshot.workflows[0].clone())).unwrap()
}

fn client(config: HttpClientConfig) -> HttpClient {
    HttpClient::new(config).unwrap()
}

fn engine() -> WorkflowEngine {
    WorkflowEngine::new(client(HttpClientConfig {
        max_response_bytes: LIMIT,
        ..HttpClientConfig::default()
    }))
}

fn credentials() -> Vec<(HeaderName, HeaderValue)> {
    vec![(
        http::header::AUTHORIZATION,
        HeaderValue::from_static(SECRET),
    )]
}

async fn run(engine: &WorkflowEngine, wf: &CompiledWorkflow, arguments: Value) -> WorkflowOutcome {
    let creds = credentials();
    engine
        .execute(
            wf,
            ExecutionContext {
                execution_id: EXEC,
                tenant_id: Some(CALLING_TENANT),
                arguments: &arguments,
                credential_headers: &creds,
                secrets: &[],
                max_response_bytes: None,
            },
        )
        .await
}

fn event_types(outcome: &WorkflowOutcome) -> Vec<&'static str> {
    outcome.events.iter().map(|e| e.event_type).collect()
}

fn payloads<'a>(outcome: &'a WorkflowOutcome, event_type: &str) -> Vec<&'a Map<String, Value>> {
    outcome
        .events
        .iter()
        .filter(|e| e.event_type == event_type)
        .map(|e| &e.payload)
        .collect()
}

fn is_rfc3339_utc(v: &Value) -> bool {
    let s = v.as_str().unwrap();
    s.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

/// Checks the error, its body, and the closing `WorkflowInvocationFailed` event.
fn assert_failed(outcome: &WorkflowOutcome, status: StatusCode, step: &str, reason: &str) {
    let err = outcome.result.as_ref().unwrap_err();
    assert_eq!(err.reason, reason);
    assert_eq!(err.status, status, "{reason}");
    assert_eq!(err.failed_step, step);
    assert_eq!(err.body(), json!({"error": reason, "failed_step": step}));

    let types = event_types(outcome);
    assert_eq!(types.first(), Some(&WORKFLOW_INVOCATION_STARTED));
    assert_eq!(types.last(), Some(&WORKFLOW_INVOCATION_FAILED), "{types:?}");
    assert!(!types.contains(&WORKFLOW_INVOCATION_COMPLETED));
    let failed = payloads(outcome, WORKFLOW_INVOCATION_FAILED)[0];
    let keys: Vec<&str> = failed.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "execution_id",
            "failed_at",
            "failed_step",
            "reason",
            "workflow_id"
        ]
    );
    assert_eq!(failed["workflow_id"], WORKFLOW_ID);
    assert_eq!(failed["execution_id"], EXEC);
    assert_eq!(failed["failed_step"], step);
    assert_eq!(failed["reason"], reason);
    assert!(is_rfc3339_utc(&failed["failed_at"]));
}

fn step_statuses(outcome: &WorkflowOutcome) -> Vec<(String, u64)> {
    payloads(outcome, WORKFLOW_STEP_EXECUTED)
        .iter()
        .map(|p| {
            (
                p["step_name"].as_str().unwrap().to_owned(),
                p["http_status"].as_u64().unwrap(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Success paths.

#[tokio::test]
async fn three_steps_pass_extracted_values_in_both_template_forms() {
    let up = Upstream::start().await;
    let wf = workflow(
        &up.base_url(),
        json!([
            {"name": "create", "operation_id": "createRepo",
             "body_template": r#"{"org": {{json input.org}}, "name": {{json input.repo_name}}, "private": true}"#,
             "extractors": {"id": "$.id", "login": "$.owner.login"}},
            {"name": "grant", "operation_id": "addTeam",
             "body_template": r#"{"team": {{json input.team}}, "repo_id": {{json steps.create.id}}, "permission": "push"}"#,
             "extractors": {"repo_id": "$.repo_id"}},
            {"name": "verify", "operation_id": "echoGet",
             "body_template": r#"{"owner": {{json (lookup state "create.login")}}, "page": {{lookup state "grant.repo_id"}}}"#}
        ]),
    );
    assert_eq!(wf.workflow_id(), WORKFLOW_ID);
    let outcome = run(
        &engine(),
        &wf,
        json!({"org": "acme", "repo_name": "demo", "team": "core"}),
    )
    .await;

    let result = outcome.result.as_ref().unwrap();
    assert_eq!(result["workflow_id"], WORKFLOW_ID);
    assert_eq!(result["execution_id"], EXEC);
    assert_eq!(
        result["steps"],
        json!({"create": {"id": 101, "login": "acme"}, "grant": {"repo_id": 101}, "verify": {}})
    );
    // The upstream gateway's result form, kept for its callers: the arguments and each
    // extracted value under `"<step>.<key>"`.
    assert_eq!(
        result["state"],
        json!({
            "input": {"org": "acme", "repo_name": "demo", "team": "core"},
            "create.id": 101,
            "create.login": "acme",
            "grant.repo_id": 101
        })
    );
    assert_eq!(result["result"]["owner"], "acme");
    assert_eq!(result["result"]["query"], "page=101");

    let calls = up.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(
        (calls[0].method.as_str(), calls[0].path.as_str()),
        ("POST", "/orgs/acme/repos")
    );
    assert_eq!(
        calls[0].json_body(),
        json!({"name": "demo", "private": true})
    );
    assert_eq!(
        (calls[1].method.as_str(), calls[1].path.as_str()),
        ("PUT", "/teams/core/repos/101")
    );
    assert_eq!(calls[1].json_body(), json!({"permission": "push"}));
    assert_eq!(calls[2].path, "/echo/acme");
    assert!(calls[2].body.is_empty(), "GET carries no body");
    for call in &calls {
        assert_eq!(call.headers["authorization"], SECRET);
        assert_eq!(call.headers["accept"], "application/json");
    }

    assert_eq!(
        event_types(&outcome),
        [
            WORKFLOW_INVOCATION_STARTED,
            WORKFLOW_STEP_EXECUTED,
            WORKFLOW_STEP_EXECUTED,
            WORKFLOW_STEP_EXECUTED,
            WORKFLOW_INVOCATION_COMPLETED
        ]
    );
    let started = payloads(&outcome, WORKFLOW_INVOCATION_STARTED)[0];
    assert_eq!(started["name"], "setup_repo");
    assert_eq!(started["workflow_id"], WORKFLOW_ID);
    assert_eq!(started["execution_id"], EXEC);
    assert!(is_rfc3339_utc(&started["started_at"]));
    assert_eq!(
        step_statuses(&outcome),
        [
            ("create".into(), 201),
            ("grant".into(), 200),
            ("verify".into(), 200)
        ]
    );
    let executed = payloads(&outcome, WORKFLOW_STEP_EXECUTED)[0];
    assert!(executed["duration_ms"].is_u64());
    assert!(is_rfc3339_utc(&executed["executed_at"]));
    let completed = payloads(&outcome, WORKFLOW_INVOCATION_COMPLETED)[0];
    assert_eq!(completed["total_steps"], 3);
    assert!(completed["duration_ms"].is_u64());
    assert!(is_rfc3339_utc(&completed["completed_at"]));
    assert!(
        outcome
            .events
            .iter()
            .all(|e| e.tenant_id.as_deref() == Some(CALLING_TENANT)),
        "a system-global workflow's events belong to the tenant that called it"
    );
}

#[tokio::test]
async fn path_query_and_header_parameters_come_from_the_rendered_object() {
    let up = Upstream::start().await;
    let wf = workflow(
        &up.base_url(),
        json!([
            {"name": "get", "operation_id": "echoGet",
             "body_template": r#"{"owner": {{json input.owner}}, "page": 2, "tags": ["x", "y z"], "X-Trace": "t-1", "stray": 1}"#},
            {"name": "post", "operation_id": "echoPost",
             "body_template": r#"{"owner": "o", "page": 3, "title": "hello", "labels": ["a"]}"#},
            {"name": "delete", "operation_id": "echoDelete",
             "body_template": r#"{"owner": "o", "ignored": true}"#}
        ]),
    );
    let outcome = run(&engine(), &wf, json!({"owner": "a b/c?"})).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);

    let calls = up.calls();
    assert_eq!(calls[0].path, "/echo/a%20b%2Fc%3F");
    assert_eq!(calls[0].query.as_deref(), Some("page=2&tags=x&tags=y+z"));
    assert_eq!(calls[0].headers["x-trace"], "t-1");
    assert!(calls[0].body.is_empty());
    assert!(calls[0].headers.get("content-type").is_none());

    assert_eq!(calls[1].method, "POST");
    assert_eq!(calls[1].query.as_deref(), Some("page=3"));
    assert_eq!(calls[1].headers["content-type"], "application/json");
    assert_eq!(
        calls[1].json_body(),
        json!({"title": "hello", "labels": ["a"]})
    );

    assert_eq!(calls[2].method, "DELETE");
    assert!(calls[2].body.is_empty(), "DELETE without a declared body");
}

#[tokio::test]
async fn a_step_without_template_renders_an_empty_object_and_empty_bodies_are_empty_objects() {
    let up = Upstream::start().await;
    let wf = workflow(
        &up.base_url(),
        json!([{"name": "ping", "operation_id": "empty"}]),
    );
    let outcome = run(&engine(), &wf, json!({})).await;
    let result = outcome.result.as_ref().unwrap();
    assert_eq!(result["result"], json!({}));
    assert_eq!(step_statuses(&outcome), [("ping".into(), 204)]);
    assert!(up.calls()[0].body.is_empty());
}

#[tokio::test]
async fn values_reach_the_upstream_as_sent_and_cannot_add_keys() {
    let up = Upstream::start().await;
    let wf = workflow(
        &up.base_url(),
        json!([{"name": "post", "operation_id": "echoPost",
                "body_template": r#"{"owner": "o", "role": "reader", "title": {{json input.title}}, "quoted": "{{input.plain}}"}"#}]),
    );
    let title = "<&\">\\ and\nnewline";
    // Upstream's templates quote values; one that tries to close its string stays inside it.
    let plain = "a<b&c>' \", \"owner\": \"evil\", \"role\": \"admin";
    let outcome = run(&engine(), &wf, json!({"title": title, "plain": plain})).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    let call = &up.calls()[0];
    assert_eq!(call.path, "/echo/o");
    assert_eq!(
        call.json_body(),
        json!({"role": "reader", "title": title, "quoted": plain})
    );
}

#[tokio::test]
async fn the_execute_future_can_be_spawned() {
    let up = Upstream::start().await;
    let wf = Arc::new(workflow(
        &up.base_url(),
        json!([{"name": "ping", "operation_id": "shape", "extractors": {"name": "$.name"}}]),
    ));
    let engine = engine();
    let task = tokio::spawn(async move {
        let args = json!({});
        engine
            .execute(
                &wf,
                ExecutionContext {
                    execution_id: "spawned",
                    tenant_id: None,
                    arguments: &args,
                    credential_headers: &[],
                    secrets: &[],
                    max_response_bytes: None,
                },
            )
            .await
    });
    let outcome = task.await.unwrap();
    assert_eq!(outcome.result.unwrap()["steps"]["ping"]["name"], "x");
}

// ---------------------------------------------------------------------------------------------
// Failure classes: status, reason, and the WorkflowInvocationFailed event.

#[tokio::test]
async fn strict_templates_fail_on_missing_variables() {
    let up = Upstream::start().await;
    let wf = workflow(
        &up.base_url(),
        json!([{"name": "post", "operation_id": "echoPost",
                "body_template": r#"{"owner": "o", "v": {{json input.nope}}}"#}]),
    );
    let outcome = run(&engine(), &wf, json!({"yes": 1})).await;
    assert_failed(
        &outcome,
        StatusCode::INTERNAL_SERVER_ERROR,
        "post",
        "template references a missing variable \"input.nope\" (line 1, col 21)",
    );
    assert_eq!(
        event_types(&outcome),
        [WORKFLOW_INVOCATION_STARTED, WORKFLOW_INVOCATION_FAILED]
    );
    assert!(up.calls().is_empty());
}

#[tokio::test]
async fn a_template_that_is_not_json_fails_with_the_parser_error() {
    let up = Upstream::start().await;
    let wf = workflow(
        &up.base_url(),
        json!([{"name": "post", "operation_id": "echoPost",
                "body_template": r#"{"owner": {{input.owner}}}"#}]),
    );
    let outcome = run(&engine(), &wf, json!({"owner": "acme"})).await;
    assert_failed(
        &outcome,
        StatusCode::INTERNAL_SERVER_ERROR,
        "post",
        "template did not render valid JSON: expected value at line 1 column 11",
    );
    assert!(up.calls().is_empty());
}

#[tokio::test]
async fn a_missing_path_parameter_is_a_template_failure() {
    let up = Upstream::start().await;
    let wf = workflow(
        &up.base_url(),
        json!([{"name": "get", "operation_id": "echoGet", "body_template": r#"{"page": 1}"#}]),
    );
    let outcome = run(&engine(), &wf, json!({})).await;
    assert_failed(
        &outcome,
        StatusCode::INTERNAL_SERVER_ERROR,
        "get",
        "missing path parameter \"owner\" (GET /echo/{owner})",
    );
    assert!(up.calls().is_empty());
}

#[tokio::test]
async fn upstream_4xx_and_5xx_fail_with_502_status_and_body_excerpt() {
    let up = Upstream::start().await;
    let base = up.base_url();
    for (route, status, text) in [
        (
            "missing",
            404,
            r#"404 Not Found for GET {base}/missing: {"message":"Not Found"}"#,
        ),
        (
            "boom",
            500,
            r#"500 Internal Server Error for GET {base}/boom: {"error":"database exploded"}"#,
        ),
    ] {
        let wf = workflow(&base, json!([{"name": "call", "operation_id": route}]));
        let outcome = run(&engine(), &wf, json!({})).await;
        let reason = format!("upstream returned {}", text.replace("{base}", &base));
        assert_failed(&outcome, StatusCode::BAD_GATEWAY, "call", &reason);
        // The step's own event tells a 4xx (our request) from a 5xx (their service).
        assert_eq!(step_statuses(&outcome), [("call".into(), status)]);
        assert_eq!(
            event_types(&outcome),
            [
                WORKFLOW_INVOCATION_STARTED,
                WORKFLOW_STEP_EXECUTED,
                WORKFLOW_INVOCATION_FAILED
            ]
        );
    }
}

#[tokio::test]
async fn a_non_json_body_fails_with_502() {
    let up = Upstream::start().await;
    let wf = workflow(
        &up.base_url(),
        json!([{"name": "call", "operation_id": "text"}]),
    );
    let outcome = run(&engine(), &wf, json!({})).await;
    assert_failed(
        &outcome,
        StatusCode::BAD_GATEWAY,
        "call",
        &format!(
            "upstream returned a body that is not JSON (200 OK, content-type text/plain) for GET {}/text: expected value at line 1 column 1",
            up.base_url()
        ),
    );
    assert_eq!(step_statuses(&outcome), [("call".into(), 200)]);
}

#[tokio::test]
async fn an_extractor_miss_names_the_path_and_the_response_keys() {
    let up = Upstream::start().await;
    let wf = workflow(
        &up.base_url(),
        json!([{"name": "probe", "operation_id": "shape",
                "extractors": {"name": "$.name", "id": "$.data.id"}}]),
    );
    let outcome = run(&engine(), &wf, json!({})).await;
    assert_failed(
        &outcome,
        StatusCode::INTERNAL_SERVER_ERROR,
        "probe",
        "extractor \"id\" ($.data.id) matched nothing in the response (top-level keys: name, url)",
    );
    assert_eq!(step_statuses(&outcome), [("probe".into(), 200)]);
}

#[tokio::test]
async fn a_slow_upstream_times_out_with_502() {
    let up = Upstream::start().await;
    let wf = workflow(
        &up.base_url(),
        json!([{"name": "wait", "operation_id": "slow", "timeout_seconds": 1}]),
    );
    let started = Instant::now();
    let outcome = run(&engine(), &wf, json!({})).await;
    let took = started.elapsed();
    assert_failed(
        &outcome,
        StatusCode::BAD_GATEWAY,
        "wait",
        &format!(
            "timeout: GET {}/slow: no complete response within 1000 ms",
            up.base_url()
        ),
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(
        step_statuses(&outcome).is_empty(),
        "no response, no step event"
    );
}

#[tokio::test]
async fn an_oversize_body_fails_with_502_whether_or_not_its_length_is_announced() {
    let up = Upstream::start().await;
    for route in ["big", "bigChunked"] {
        let wf = workflow(
            &up.base_url(),
            json!([{"name": "fetch", "operation_id": route}]),
        );
        let outcome = run(&engine(), &wf, json!({})).await;
        let path = if route == "big" { "big" } else { "big-chunked" };
        assert_failed(
            &outcome,
            StatusCode::BAD_GATEWAY,
            "fetch",
            &format!(
                "response too large: GET {}/{path} returned 200 OK with a body over the limit of {LIMIT} bytes",
                up.base_url()
            ),
        );
        assert_eq!(step_statuses(&outcome), [("fetch".into(), 200)]);
    }

    // The invocation's own bound overrides the client's.
    let wf = workflow(
        &up.base_url(),
        json!([{"name": "fetch", "operation_id": "big", "extractors": {"data": "$.data"}}]),
    );
    let args = json!({});
    let outcome = engine()
        .execute(
            &wf,
            ExecutionContext {
                execution_id: EXEC,
                tenant_id: None,
                arguments: &args,
                credential_headers: &[],
                secrets: &[],
                max_response_bytes: Some(1024 * 1024),
            },
        )
        .await;
    let result = outcome.result.unwrap();
    assert_eq!(
        result["steps"]["fetch"]["data"].as_str().unwrap().len(),
        BIG
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_failure() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let base = format!("http://{closed}");
    let wf = workflow(&base, json!([{"name": "ping", "operation_id": "empty"}]));
    let outcome = run(&engine(), &wf, json!({})).await;
    let err = outcome.result.as_ref().unwrap_err();
    let prefix = format!("transport error: GET {base}/empty: ");
    assert!(err.reason.starts_with(&prefix), "{}", err.reason);
    assert!(err.reason.contains("Connection refused"), "{}", err.reason);
    assert_failed(
        &outcome,
        StatusCode::BAD_GATEWAY,
        "ping",
        &err.reason.clone(),
    );
    assert!(step_statuses(&outcome).is_empty());
}

#[tokio::test]
async fn a_link_local_destination_is_refused_without_connecting() {
    let wf = workflow(
        "http://169.254.169.254",
        json!([{"name": "steal", "operation_id": "empty"}]),
    );
    let started = Instant::now();
    let outcome = run(&engine(), &wf, json!({})).await;
    // Well under the 5 s connect timeout a connection attempt would wait for.
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_failed(
        &outcome,
        StatusCode::BAD_GATEWAY,
        "steal",
        "blocked destination: 169.254.169.254 is a cloud metadata address \
         (link-local and cloud metadata destinations are refused unless allow_link_local is set)",
    );
}

#[tokio::test]
async fn a_tenants_workflow_reaches_public_addresses_only_when_so_configured() {
    let up = Upstream::start().await;
    let steps = json!([{"name": "ping", "operation_id": "empty"}]);
    let global = workflow(&up.base_url(), steps.clone());
    let tenant_owned = |base_url: &str| {
        let mut entry = global.entry().as_ref().clone();
        entry.tenant_id = Some("acme".into());
        entry.base_url = base_url.into();
        CompiledWorkflow::compile(Arc::new(entry)).unwrap()
    };
    let strict = WorkflowEngine::new(client(HttpClientConfig {
        tenant_upstreams_public_only: true,
        ..HttpClientConfig::default()
    }));

    // Off (the default), a tenant's workflow may call an internal service.
    let outcome = run(&engine(), &tenant_owned(&up.base_url()), json!({})).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    // On, it may not: not by address, nor by a name that resolves to one.
    let by_name = up.base_url().replace("127.0.0.1", "localhost");
    for (base_url, reason) in [
        (up.base_url(), "127.0.0.1 is a loopback address"),
        (by_name.clone(), "localhost resolves to"),
    ] {
        let outcome = run(&strict, &tenant_owned(&base_url), json!({})).await;
        let err = outcome.result.as_ref().unwrap_err();
        assert!(
            err.reason
                .starts_with(&format!("blocked destination: {reason}"))
                && err.reason.ends_with(
                    "(a tenant's upstream must be a public address: \
                     outbound.tenant_upstreams_public_only is set)"
                ),
            "{}",
            err.reason
        );
        assert_failed(
            &outcome,
            StatusCode::BAD_GATEWAY,
            "ping",
            &err.reason.clone(),
        );
    }
    // The platform's own (system-global) workflows are not held to it.
    let outcome = run(&strict, &global, json!({})).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    assert_eq!(
        up.calls().len(),
        2,
        "the refused calls never reached the upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// on_error.

#[tokio::test]
async fn continue_records_the_failure_and_lets_optional_values_default() {
    let up = Upstream::start().await;
    let wf = workflow(
        &up.base_url(),
        json!([
            {"name": "probe", "operation_id": "shape", "on_error": "continue",
             "extractors": {"name": "$.name", "id": "$.id"}},
            {"name": "down", "operation_id": "boom", "on_error": "Continue"},
            {"name": "post", "operation_id": "echoPost",
             "body_template": r#"{"owner": {{json steps.probe.name}}, "id": {{#if steps.probe.id}}{{json steps.probe.id}}{{else}}null{{/if}}}"#}
        ]),
    );
    let outcome = run(&engine(), &wf, json!({})).await;
    let result = outcome.result.as_ref().unwrap();
    assert_eq!(result["steps"], json!({"probe": {"name": "x"}, "post": {}}));
    assert_eq!(up.calls()[2].path, "/echo/x");
    assert_eq!(up.calls()[2].json_body(), json!({"id": null}));

    assert_eq!(
        event_types(&outcome),
        [
            WORKFLOW_INVOCATION_STARTED,
            WORKFLOW_STEP_EXECUTED,
            WORKFLOW_STEP_FAILED,
            WORKFLOW_STEP_EXECUTED,
            WORKFLOW_STEP_FAILED,
            WORKFLOW_STEP_EXECUTED,
            WORKFLOW_INVOCATION_COMPLETED
        ]
    );
    let failed = payloads(&outcome, WORKFLOW_STEP_FAILED);
    assert_eq!(failed[0]["step_name"], "probe");
    assert_eq!(
        failed[0]["reason"],
        "extractor \"id\" ($.id) matched nothing in the response (top-level keys: name, url)"
    );
    assert_eq!(failed[0]["on_error"], "continue");
    assert_eq!(failed[1]["step_name"], "down");
    assert_eq!(
        step_statuses(&outcome),
        [
            ("probe".into(), 200),
            ("down".into(), 500),
            ("post".into(), 200)
        ]
    );
}

#[tokio::test]
async fn a_later_template_needing_a_continued_steps_value_fails() {
    let up = Upstream::start().await;
    let wf = workflow(
        &up.base_url(),
        json!([
            {"name": "lookup", "operation_id": "missing", "on_error": "continue",
             "extractors": {"id": "$.id"}},
            {"name": "use", "operation_id": "echoPost",
             "body_template": r#"{"owner": "o", "id": {{json steps.lookup.id}}}"#}
        ]),
    );
    let outcome = run(&engine(), &wf, json!({})).await;
    assert_failed(
        &outcome,
        StatusCode::INTERNAL_SERVER_ERROR,
        "use",
        "template references a missing variable \"steps.lookup.id\" (line 1, col 22)",
    );
    assert_eq!(up.calls_to("/echo/o"), 0);
}

/// A raw `{{{x}}}` (upstream's spelling, which kept HTML escaping out) writes the argument as is,
/// so one holding `","org":"victim` would end the string and name the key again. serde_json keeps
/// the last of two equal keys, which would send the request to the agent's choice of resource
/// with the gateway's credential; a key named twice fails the step instead.
#[tokio::test]
async fn a_key_named_twice_by_a_raw_value_fails_the_step() {
    let up = Upstream::start().await;
    let wf = workflow(
        &up.base_url(),
        json!([{"name": "create", "operation_id": "createRepo",
                "body_template": r#"{"org": "acme", "name": "{{{input.name}}}"}"#}]),
    );
    let outcome = run(&engine(), &wf, json!({"name": r#"r","org":"victim"#})).await;
    let failure = outcome.result.as_ref().expect_err("the step fails");
    assert_eq!(failure.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        failure
            .reason
            .contains(r#"key "org" appears twice in one object"#),
        "{}",
        failure.reason
    );
    assert!(up.calls().is_empty(), "{:?}", up.calls());
}

#[tokio::test]
async fn retry_backs_off_and_succeeds_on_the_third_attempt() {
    let up = Upstream::start().await;
    let wf = workflow(
        &up.base_url(),
        json!([{"name": "flaky", "operation_id": "flaky", "on_error": "retry",
                "extractors": {"attempt": "$.attempt"}}]),
    );
    let started = Instant::now();
    let outcome = run(&engine(), &wf, json!({})).await;
    let result = outcome.result.as_ref().unwrap();
    assert_eq!(result["steps"]["flaky"]["attempt"], 3);
    assert_eq!(up.calls_to("/flaky"), 3);
    // Two back-offs: 50 ms, then 100 ms.
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(
        step_statuses(&outcome),
        [
            ("flaky".into(), 503),
            ("flaky".into(), 503),
            ("flaky".into(), 200)
        ]
    );
    let attempts: Vec<u64> = payloads(&outcome, WORKFLOW_STEP_EXECUTED)
        .iter()
        .map(|p| p["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert_eq!(
        event_types(&outcome).last(),
        Some(&WORKFLOW_INVOCATION_COMPLETED)
    );
}

#[tokio::test]
async fn retry_gives_up_after_its_retries() {
    let up = Upstream::start().await;
    let wf = workflow(
        &up.base_url(),
        json!([{"name": "down", "operation_id": "boom", "on_error": "retry", "retries": 1}]),
    );
    let outcome = run(&engine(), &wf, json!({})).await;
    assert_failed(
        &outcome,
        StatusCode::BAD_GATEWAY,
        "down",
        &format!(
            r#"upstream returned 500 Internal Server Error for GET {}/boom: {{"error":"database exploded"}} (gave up after 2 attempts)"#,
            up.base_url()
        ),
    );
    assert_eq!(up.calls_to("/boom"), 2);
}

/// `on_error: retry` sends again only when the upstream surely did not act, or when acting twice
/// does no harm: no answer or a 5xx for an idempotent method, 408, 429 or 503 for any. A POST
/// that created its repository (201) but whose extractor finds nothing, a 4xx, or a 2xx that is
/// not JSON would only be repeated: one request each, and the step fails as is.
#[tokio::test]
async fn retry_never_repeats_a_request_the_upstream_acted_on_or_refused() {
    let up = Upstream::start().await;
    let created = workflow(
        &up.base_url(),
        json!([{"name": "create", "operation_id": "createRepo", "on_error": "retry", "retries": 3,
                "body_template": r#"{"org": "acme", "name": "r"}"#,
                "extractors": {"payment_id": "$.payment_id"}}]),
    );
    let outcome = run(&engine(), &created, json!({})).await;
    assert_failed(
        &outcome,
        StatusCode::INTERNAL_SERVER_ERROR,
        "create",
        r#"extractor "payment_id" ($.payment_id) matched nothing in the response (top-level keys: id, name, owner)"#,
    );
    assert_eq!(
        up.calls_to("/orgs/acme/repos"),
        1,
        "the repository was created once"
    );

    for (operation, path) in [("missing", "/missing"), ("text", "/text")] {
        let wf = workflow(
            &up.base_url(),
            json!([{"name": "once", "operation_id": operation, "on_error": "retry", "retries": 3}]),
        );
        let outcome = run(&engine(), &wf, json!({})).await;
        let failure = outcome.result.as_ref().expect_err("the step fails");
        assert!(!failure.reason.contains("gave up"), "{}", failure.reason);
        assert_eq!(up.calls_to(path), 1, "{path}");
    }

    // A POST answered 500, or not answered in time, may have been acted on: sent once. (The
    // same GET is sent again: `retry_gives_up_after_its_retries`.)
    for (operation, path) in [("boomPost", "/boom"), ("slowPost", "/slow")] {
        let wf = workflow(
            &up.base_url(),
            json!([{"name": "once", "operation_id": operation, "on_error": "retry", "retries": 2,
                    "timeout_seconds": 1}]),
        );
        let outcome = run(&engine(), &wf, json!({})).await;
        let failure = outcome.result.as_ref().expect_err("the step fails");
        assert!(!failure.reason.contains("gave up"), "{}", failure.reason);
        assert_eq!(up.calls_to(path), 1, "{operation}");
    }
    // A 503 says the upstream did not act: a POST is sent again.
    let wf = workflow(
        &up.base_url(),
        json!([{"name": "again", "operation_id": "flakyPost", "on_error": "retry"}]),
    );
    let outcome = run(&engine(), &wf, json!({})).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result.err());
    assert_eq!(up.calls_to("/flaky"), 3);
}

// ---------------------------------------------------------------------------------------------
// The HTTP client on its own.

fn get(url: &str) -> OutboundRequest {
    OutboundRequest::new(Method::GET, url.parse().unwrap())
}

#[tokio::test]
async fn the_client_refuses_blocked_destinations_before_connecting() {
    let http = client(HttpClientConfig::default());
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://169.254.1.1:8080/",
        "http://[fe80::1]/",
        "http://[fd00:ec2::254]/",
        "http://metadata.google.internal/computeMetadata/v1/",
    ] {
        let err = http.send(get(url)).await.unwrap_err();
        assert!(
            matches!(err, HttpClientError::BlockedDestination(_)),
            "{url}: {err}"
        );
        assert_eq!(err.class(), "blocked_destination");
    }
}

#[tokio::test]
async fn redirects_are_limited_same_origin_and_checked() {
    let up = Upstream::start().await;
    let http = client(HttpClientConfig::default());
    let base = up.base_url();

    let ok = http
        .send(get(&format!("{base}/redirect-same")))
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body, Bytes::from_static(br#"{"name":"x","url":"y"}"#));

    let err = http
        .send(get(&format!("{base}/redirect-loop/0")))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("transport error: GET {base}/redirect-loop/0: too many redirects (more than 5)")
    );
    // The original request and five redirects.
    assert_eq!(
        up.calls()
            .iter()
            .filter(|c| c.path.starts_with("/redirect-loop/"))
            .count(),
        6
    );

    let err = http
        .send(get(&format!("{base}/redirect-metadata")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, HttpClientError::BlockedDestination(_)),
        "{err}"
    );

    let err = http
        .send(get(&format!("{base}/redirect-other-origin")))
        .await
        .unwrap_err();
    let port = up.state.addr.port();
    assert_eq!(
        err.to_string(),
        format!(
            "transport error: GET {base}/redirect-other-origin: redirect to another origin (http://localhost:{port}) refused"
        )
    );
    let allowing = client(HttpClientConfig {
        allow_cross_origin_redirects: true,
        ..HttpClientConfig::default()
    });
    let ok = allowing
        .send(get(&format!("{base}/redirect-other-origin")))
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn the_client_hides_query_strings_in_errors() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let http = client(HttpClientConfig::default());
    let err = http
        .send(get(&format!("http://{closed}/x?api_key=hunter2")))
        .await
        .unwrap_err();
    assert_eq!(err.class(), "transport");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("transport error: GET http://{closed}/x?…: ")),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Logs.

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// This thread's log lines under `filter`, collected until the guard drops.
    fn start(filter: &str) -> (Self, tracing::subscriber::DefaultGuard) {
        let captured = Self::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter(filter)
            .with_writer(move || sink.clone())
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn trace_logs_describe_requests_but_never_credentials_or_queries() {
    let (captured, _guard) = Captured::start("aegis_seal_gateway=trace");

    let up = Upstream::start().await;
    let wf = workflow(
        &up.base_url(),
        json!([
            {"name": "get", "operation_id": "echoGet",
             "body_template": r#"{"owner": "o", "page": "query-secret-77"}"#},
            {"name": "fail", "operation_id": "missing"}
        ]),
    );
    let outcome = run(&engine(), &wf, json!({})).await;
    assert!(outcome.result.is_err());

    let logs = captured.text();
    for expected in [
        "aegis_seal_gateway::application::workflow::engine",
        "aegis_seal_gateway::infrastructure::http_client",
        "workflow started",
        "workflow step request",
        "upstream request completed",
        "status=404",
        "workflow failed",
        "/echo/o?…",
    ] {
        assert!(logs.contains(expected), "missing {expected:?} in:\n{logs}");
    }
    assert!(!logs.contains("s3cr3t"), "{logs}");
    assert!(!logs.contains("query-secret-77"), "{logs}");
}

/// A failure reason quoting an upstream body that echoes the credential has the credential's
/// value redacted, in the reason and in the logs (the caller redacts the result and the events).
#[tokio::test]
async fn failure_logs_never_quote_the_credential() {
    let (captured, _guard) = Captured::start("aegis_seal_gateway=debug");

    let up = Upstream::start().await;
    let wf = workflow(
        &up.base_url(),
        json!([{"name": "denied", "operation_id": "denied"}]),
    );
    let creds = credentials();
    let secrets = vec![SECRET.trim_start_matches("Bearer ").to_owned()];
    let args = json!({});
    let outcome = engine()
        .execute(
            &wf,
            ExecutionContext {
                execution_id: EXEC,
                tenant_id: None,
                arguments: &args,
                credential_headers: &creds,
                secrets: &secrets,
                max_response_bytes: None,
            },
        )
        .await;
    let reason = &outcome.result.as_ref().unwrap_err().reason;
    assert!(
        reason.contains(&format!("Bearer {REDACTED}")) && !reason.contains("s3cr3t"),
        "the reason quotes the body, redacted: {reason}"
    );

    let logs = captured.text();
    assert!(logs.contains("workflow failed"), "{logs}");
    assert!(logs.contains(REDACTED), "{logs}");
    assert!(!logs.contains("s3cr3t"), "{logs}");
}
