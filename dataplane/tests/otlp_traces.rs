//! OpenTelemetry traces, as an operator turns them on: the real `aegis-seal-gateway` process with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a collector on 127.0.0.1 that speaks the OTLP/HTTP
//! contract (`POST /v1/traces`, protobuf `ExportTraceServiceRequest`, 200 with an empty
//! `ExportTraceServiceResponse`), a real upstream, and the real OpenBao for a credential. The
//! spans are read after SIGTERM: the gateway flushes its batch on the way out, so no timing
//! decides anything.
//!
//! And the log lines: the same calls with and without an endpoint print the same lines, none of
//! them prefixed by a span.
//!
//! And the CLI-tool path: containers on the real podman, and a real HTTP semantic judge on
//! 127.0.0.1 that allows or denies.

mod cli_support;
mod observability_support;
mod support;
mod tls_support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_seal_gateway::infrastructure::persistence::Database;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use observability_support::{KV_KEY, upstream, write_kv_token};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aegis-seal-gateway");
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const REPLAY_CALLER_SPAN: &str = "00f067aa0ba902b8";
/// What the CLI test's judge answers when the first argument is `forbidden`.
const CLI_JUDGE_DENIAL: &str = "forbidden-by-the-judge-in-otlp-traces";

/// What the collector received: each request's `Content-Type`, raw body and decoded message.
#[derive(Default)]
struct Received {
    content_types: Vec<String>,
    bodies: Vec<Bytes>,
    requests: Vec<ExportTraceServiceRequest>,
}

impl Received {
    /// Spans in every export so far.
    fn span_count(&self) -> usize {
        self.requests
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum()
    }
}

/// An OTLP/HTTP trace receiver on 127.0.0.1: `POST /v1/traces` only.
async fn collector() -> (SocketAddr, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let store = received.clone();
    let addr = support::serve(move |req: http::Request<hyper::body::Incoming>| {
        let store = store.clone();
        async move {
            if req.method() != http::Method::POST || req.uri().path() != "/v1/traces" {
                let mut r = http::Response::new(Full::new(Bytes::new()));
                *r.status_mut() = http::StatusCode::NOT_FOUND;
                return r;
            }
            let content_type = req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let decoded = ExportTraceServiceRequest::decode(body.clone());
            let mut store = store.lock().unwrap();
            store.content_types.push(content_type);
            store.bodies.push(body);
            let mut response = match decoded {
                Ok(request) => {
                    store.requests.push(request);
                    http::Response::new(Full::new(Bytes::from(
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )))
                }
                Err(_) => {
                    let mut r = http::Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = http::StatusCode::BAD_REQUEST;
                    r
                }
            };
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/x-protobuf"),
            );
            response
        }
    })
    .await;
    (addr, received)
}

/// `trace-tool` echoes the trace context its upstream got; `whoami` reads an OpenBao KV
/// credential; `denied-tool` is refused by the SecurityContext.
fn write_manifests(dir: &Path, upstream: SocketAddr) {
    let manifests = format!(
        r#"
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: trace-tool}}
spec:
  api_spec:
    base_url: http://{upstream}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/trace: {{post: {{operationId: trace}}}}}}}}}}
  steps: [{{name: echo, operation_id: trace}}]
---
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: whoami}}
spec:
  api_spec:
    base_url: http://{upstream}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/whoami: {{post: {{operationId: whoami}}}}}}}}}}
    credential_path: {{StaticRef: {{key: {KV_KEY}}}}}
  steps: [{{name: ask, operation_id: whoami}}]
---
apiVersion: seal.100monkeys.ai/v1
kind: SecurityContext
metadata: {{name: aegis-system-default}}
spec:
  capabilities: [{{tool_pattern: "*"}}]
  deny_list: [denied-tool]
"#
    );
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(dir.join("manifests/tools.yaml"), manifests).unwrap();
}

struct Gateway {
    child: Child,
    port: u16,
}

/// Starts the binary on a fresh SQLite file holding the vectors' session; `env` adds variables.
async fn start(
    dir: &Path,
    signer: &support::Signer,
    rust_log: &str,
    env: &[(&str, String)],
) -> Gateway {
    let url = support::sqlite_url(dir);
    let db = Database::connect(&url).await.unwrap();
    db.upsert_session(&signer.session_record(chrono::Utc::now()))
        .await
        .unwrap();
    db.close().await;
    let port = support::free_port();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_clear()
        .env("HOME", dir)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", rust_log)
        .env("NO_COLOR", "1")
        .env("METRICS_PORT", "0")
        .env("SEAL_GATEWAY_BIND", format!("127.0.0.1:{port}"))
        .env("SEAL_GATEWAY_AUTH_DISABLED", "true")
        .env("SEAL_GATEWAY_DB", &url)
        .env("SEAL_GATEWAY_MANIFESTS", dir.join("manifests"))
        .env(
            "SEAL_GATEWAY_SEAL_JWT_PUBLIC_KEY_PEM",
            &signer.rs256_public_key_pem,
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            && r.status() == 200
        {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("gateway exited early with {status}");
        }
        assert!(Instant::now() < deadline, "gateway not healthy within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Gateway { child, port }
}

impl Gateway {
    /// Posts `envelope` with `headers`: the status and the JSON body.
    async fn post(&self, envelope: String, headers: &[(&str, String)]) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/v1/invoke", self.port))
            .body(envelope);
        for (k, v) in headers {
            request = request.header(*k, v);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// SIGTERM, then everything the process printed. Waited for on a blocking thread: the
    /// collector runs on this test's runtime and must keep answering the final flush.
    async fn stop(self) -> Output {
        tokio::task::spawn_blocking(move || self.stop_blocking())
            .await
            .unwrap()
    }

    fn stop_blocking(self) -> Output {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = self.child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "exit {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn attr_text(value: &AnyValue) -> String {
    match value {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// The spans of `root` and of everything under it, by span id.
fn descendants<'a>(spans: &'a [Span], root: &Span) -> Vec<&'a Span> {
    let mut ids: HashSet<Vec<u8>> = HashSet::from([root.span_id.clone()]);
    let mut found = Vec::new();
    loop {
        let before = found.len();
        for span in spans {
            if !ids.contains(&span.span_id) && ids.contains(&span.parent_span_id) {
                ids.insert(span.span_id.clone());
                found.push(span);
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

#[tokio::test]
async fn invocations_are_exported_as_otlp_traces_joined_to_the_callers_trace() {
    let secret = format!("kv-token-{}", uuid::Uuid::new_v4().simple());
    let (bao, bao_token) = write_kv_token(&secret).await;
    let (collector, received) = collector().await;
    let upstream = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    write_manifests(dir.path(), upstream);
    let signer = support::Signer::from_vectors();
    let gateway = start(
        dir.path(),
        &signer,
        "info",
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}", collector.port()),
            ),
            ("SEAL_GATEWAY_OPENBAO_ADDR", bao),
            ("SEAL_GATEWAY_OPENBAO_TOKEN", bao_token.clone()),
        ],
    )
    .await;
    let now = chrono::Utc::now().timestamp();
    let traceparent = |parent: &str| {
        vec![
            ("traceparent", format!("00-{TRACE_ID}-{parent}-01")),
            ("tracestate", "vendor=abc".to_owned()),
        ]
    };

    let mut sent_envelopes = Vec::new();
    let traced = signer.envelope("trace-tool", json!({}), "jti-trace", now);
    sent_envelopes.push(traced.clone());
    let (status, body) = gateway.post(traced, &traceparent(CALLER_SPAN)).await;
    assert_eq!(status, 200, "{body}");
    let echoed = body["result"]["result"].clone();

    let whoami = signer.envelope("whoami", json!({}), "jti-whoami", now);
    sent_envelopes.push(whoami.clone());
    let (status, body) = gateway.post(whoami, &traceparent(CALLER_SPAN)).await;
    assert_eq!(status, 200, "{body}");

    let replayed = signer.envelope("trace-tool", json!({}), "jti-replayed", now);
    sent_envelopes.push(replayed.clone());
    // Its first use, from another span of the same caller trace, succeeds.
    let first_use = gateway
        .post(replayed.clone(), &traceparent("00f067aa0ba902b9"))
        .await;
    assert_eq!(first_use.0, 200);
    let (status, refusal) = gateway
        .post(replayed, &traceparent(REPLAY_CALLER_SPAN))
        .await;
    assert_eq!(status, 401, "{refusal}");
    let refusal_code = refusal["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("no SEAL code in {refusal}"));

    let out = gateway.stop().await;
    let logs = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        logs.contains(&format!(
            "exporting OpenTelemetry traces over OTLP/HTTP to http://127.0.0.1:{}/v1/traces",
            collector.port()
        )),
        "{logs}"
    );

    let received = received.lock().unwrap();
    assert!(
        !received.requests.is_empty(),
        "nothing exported; logs:\n{logs}"
    );
    assert!(
        received
            .content_types
            .iter()
            .all(|c| c == "application/x-protobuf"),
        "{:?}",
        received.content_types
    );
    let mut spans: Vec<Span> = Vec::new();
    for request in &received.requests {
        for resource_spans in &request.resource_spans {
            let resource = resource_spans.resource.as_ref().unwrap();
            assert_eq!(
                attr(&resource.attributes, "service.name").map(attr_text),
                Some("aegis-seal-gateway".to_owned())
            );
            for scope in &resource_spans.scope_spans {
                spans.extend(scope.spans.iter().cloned());
            }
        }
    }
    let describe = |s: &Span| {
        format!(
            "{} {} <- {}",
            s.name,
            hex(&s.span_id),
            hex(&s.parent_span_id)
        )
    };
    let all: Vec<String> = spans.iter().map(describe).collect();

    // The invocation whose caller sent CALLER_SPAN, traced end to end.
    let invoke_spans: Vec<&Span> = spans
        .iter()
        .filter(|s| hex(&s.parent_span_id) == CALLER_SPAN)
        .collect();
    assert_eq!(
        invoke_spans.len(),
        2,
        "two calls sent CALLER_SPAN: {all:#?}"
    );
    for span in &spans {
        assert_eq!(hex(&span.trace_id), TRACE_ID, "{}", describe(span));
    }
    let tool = |s: &&Span| attr(&s.attributes, "seal.tool_name").map(attr_text);
    let invoke = *invoke_spans
        .iter()
        .find(|s| tool(s).as_deref() == Some("trace-tool"))
        .unwrap_or_else(|| panic!("no invocation span of trace-tool: {all:#?}"));
    assert_eq!(invoke.name, "POST /v1/invoke");
    assert_eq!(invoke.kind, SpanKind::Server as i32);
    assert_eq!(
        attr(&invoke.attributes, "http.response.status_code").map(attr_text),
        Some("200".into())
    );
    assert_eq!(
        attr(&invoke.attributes, "seal.execution_id").map(attr_text),
        signer.session["execution_id"].as_str().map(str::to_owned)
    );
    assert!(attr(&invoke.attributes, "seal.tenant_id").is_some());
    let under = descendants(&spans, invoke);
    let names: HashSet<&str> = under.iter().map(|s| s.name.as_str()).collect();
    for stage in [
        "seal.verify_envelope",
        "seal.verify_token",
        "seal.replay_check",
        "seal.authorize",
        "seal.dispatch",
        "workflow.execute",
        "workflow.step",
        "seal.audit_commit",
        "POST",
    ] {
        assert!(
            names.contains(stage),
            "no {stage} under the invocation: {names:?}"
        );
    }
    // The upstream's parent is the gateway's CLIENT span of that request, in the caller's trace,
    // with the caller's tracestate.
    let sent = echoed["traceparent"].as_str().unwrap();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts[1], TRACE_ID, "{sent}");
    let client = under
        .iter()
        .find(|s| hex(&s.span_id) == parts[2])
        .unwrap_or_else(|| panic!("the upstream's parent {sent} is no exported span: {all:#?}"));
    assert_eq!(client.kind, SpanKind::Client as i32);
    assert_eq!(
        attr(&client.attributes, "http.response.status_code").map(attr_text),
        Some("200".into())
    );
    assert_eq!(echoed["tracestate"], "vendor=abc");

    // The credential exchange, with OpenBao's request under it.
    let whoami = *invoke_spans
        .iter()
        .find(|s| tool(s).as_deref() == Some("whoami"))
        .unwrap();
    let exchange = descendants(&spans, whoami)
        .into_iter()
        .find(|s| s.name == "credential.exchange")
        .unwrap_or_else(|| panic!("no credential.exchange: {all:#?}"));
    assert_eq!(
        attr(&exchange.attributes, "seal.resolution_path").map(attr_text),
        Some("static_ref".into())
    );
    assert!(
        descendants(&spans, exchange)
            .iter()
            .any(|s| s.kind == SpanKind::Client as i32),
        "OpenBao's request is not under the exchange: {all:#?}"
    );

    // The replay: its invocation span failed with the SEAL code, and so did the replay stage.
    let refused = spans
        .iter()
        .find(|s| hex(&s.parent_span_id) == REPLAY_CALLER_SPAN)
        .unwrap_or_else(|| panic!("no span of the replayed call: {all:#?}"));
    let status = refused.status.as_ref().unwrap();
    assert_eq!(status.code, StatusCode::Error as i32);
    assert_eq!(status.message, "replay detected: jti already seen");
    assert_eq!(
        attr(&refused.attributes, "seal.error_code").map(attr_text),
        Some(refusal_code.to_string())
    );
    let stage = descendants(&spans, refused)
        .into_iter()
        .find(|s| s.name == "seal.replay_check")
        .unwrap();
    assert_eq!(
        stage.status.as_ref().unwrap().code,
        StatusCode::Error as i32
    );
    assert!(
        !descendants(&spans, refused)
            .iter()
            .any(|s| s.name == "seal.dispatch"),
        "a refused call was dispatched"
    );

    // No token, credential or secret anywhere in what was exported: not the issued credential,
    // not the OpenBao token, not the callers' security tokens or envelope signatures.
    assert_nothing_exported(
        &received.bodies,
        &sent_envelopes,
        vec![secret.clone(), bao_token.clone()],
    );
}

/// The lines a gateway logs for the same calls: the workflow with a caller trace context, a
/// credential from OpenBao, a replay and a policy refusal, at `trace` for every module whose
/// lines are written inside exported spans.
async fn logged_lines(otlp: Option<SocketAddr>) -> Vec<String> {
    const RECIPE: &str = "info,aegis_seal_gateway::application=trace,aegis_seal_gateway::infrastructure::auth=trace,aegis_seal_gateway::infrastructure::http_client=trace";
    let secret = format!("kv-token-{}", uuid::Uuid::new_v4().simple());
    let (bao, bao_token) = write_kv_token(&secret).await;
    let upstream = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    write_manifests(dir.path(), upstream);
    let signer = support::Signer::from_vectors();
    let mut env = vec![
        ("SEAL_GATEWAY_OPENBAO_ADDR", bao),
        ("SEAL_GATEWAY_OPENBAO_TOKEN", bao_token),
    ];
    if let Some(collector) = otlp {
        env.push((
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", collector.port()),
        ));
    }
    let gateway = start(dir.path(), &signer, RECIPE, &env).await;
    let now = chrono::Utc::now().timestamp();
    let context = [("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))];
    for (tool, jti, status) in [
        ("trace-tool", "jti-1", 200),
        ("whoami", "jti-2", 200),
        ("trace-tool", "jti-2", 401),
        ("denied-tool", "jti-3", 403),
    ] {
        let envelope = signer.envelope(tool, json!({}), jti, now);
        let (got, body) = gateway.post(envelope, &context).await;
        assert_eq!(got, status, "{tool}: {body}");
    }
    let out = gateway.stop().await;
    let dir = dir.path().display().to_string();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        // Continuation lines (the generated checkpoint key) differ from run to run.
        .filter(|l| l.starts_with("20"))
        .map(|l| {
            let (_timestamp, rest) = l.split_once(' ').unwrap();
            // Ports, durations and counts differ from run to run; the words do not.
            let mut rest = rest.replace(&dir, "<dir>");
            // The snapshot's hash covers the upstream's port.
            if let Some(at) = rest.find("snapshot=sha256:") {
                rest.truncate(at + "snapshot=sha256:".len());
            }
            let mut normalized = String::new();
            let mut digits = false;
            for c in rest.chars() {
                if c.is_ascii_digit() {
                    if !digits {
                        normalized.push('N');
                    }
                    digits = true;
                } else {
                    digits = false;
                    normalized.push(c);
                }
            }
            normalized
        })
        .collect()
}

#[tokio::test]
async fn traces_leave_the_log_lines_as_they_were() {
    let without = logged_lines(None).await;
    let (collector, received) = collector().await;
    let mut with = logged_lines(Some(collector)).await;
    assert!(
        !received.lock().unwrap().requests.is_empty(),
        "nothing exported"
    );

    // The only line tracing adds says where traces go.
    let start_line = with
        .iter()
        .position(|l| l.contains("exporting OpenTelemetry traces over OTLP/HTTP to"))
        .expect("the start line of the exporter");
    let start_line = with.remove(start_line);
    assert!(
        start_line.starts_with(" INFO aegis_seal_gateway::infrastructure::telemetry: "),
        "{start_line}"
    );

    // The fmt format prints enclosing spans between the level and the target: none here, with
    // or without traces (an exported span in a log line would read `seal.invoke{...}: `).
    for line in without.iter().chain(&with) {
        let (level, rest) = line.trim_start().split_once(' ').unwrap();
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
            "{line}"
        );
        assert!(
            rest.trim_start().starts_with("aegis_seal_gateway"),
            "{line}"
        );
        assert!(!line.contains("seal.invoke"), "{line}");
    }
    // The calls logged what the runbook's recipes look for, from inside the spans.
    for expected in [
        "workflow started",
        "upstream request completed",
        "credential resolution completed",
        "replay detected: jti already seen",
        "envelope signature verified",
    ] {
        assert!(
            without.iter().any(|l| l.contains(expected)),
            "no {expected:?} in\n{}",
            without.join("\n")
        );
    }
    let mut without = without;
    without.sort();
    with.sort();
    assert_eq!(with, without);
}

/// A semantic judge on 127.0.0.1 that denies (with [`CLI_JUDGE_DENIAL`]) a call whose first
/// argument is `forbidden` and allows anything else; it counts the requests it answered.
async fn judge() -> (SocketAddr, Arc<Mutex<usize>>) {
    let asked = Arc::new(Mutex::new(0));
    let count = asked.clone();
    let addr = support::serve(move |req: http::Request<hyper::body::Incoming>| {
        let count = count.clone();
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            *count.lock().unwrap() += 1;
            let verdict = if request["args"][0] == "forbidden" {
                json!({"allowed": false, "reason": CLI_JUDGE_DENIAL})
            } else {
                json!({"allowed": true, "reason": null})
            };
            http::Response::new(Full::new(Bytes::from(verdict.to_string())))
        }
    })
    .await;
    (addr, asked)
}

/// The CLI tools `busybox` (`echo`, `sh`) and `judged-echo` (`echo`, asks the judge first), on the
/// local busybox image.
fn write_cli_manifests(dir: &Path) {
    let manifests = format!(
        r#"
apiVersion: seal.100monkeys.ai/v1
kind: CliTool
metadata: {{name: busybox}}
spec:
  description: busybox applets
  docker_image: {image}
  allowed_subcommands: [echo, sh]
  default_timeout_seconds: 30
  resources: {{memory: 64Mi, cpus: "0.5", pids: 32}}
---
apiVersion: seal.100monkeys.ai/v1
kind: CliTool
metadata: {{name: judged-echo}}
spec:
  docker_image: {image}
  allowed_subcommands: [echo]
  default_timeout_seconds: 30
  require_semantic_judge: true
---
apiVersion: seal.100monkeys.ai/v1
kind: SecurityContext
metadata: {{name: aegis-system-default}}
spec:
  capabilities: [{{tool_pattern: "*"}}]
"#,
        image = cli_support::image()
    );
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(dir.join("manifests/tools.yaml"), manifests).unwrap();
}

/// The status code of `span` (`Unset` when it has none).
fn status_of(span: &Span) -> (i32, String) {
    span.status
        .as_ref()
        .map(|s| (s.code, s.message.clone()))
        .unwrap_or((StatusCode::Unset as i32, String::new()))
}

#[tokio::test]
async fn cli_tool_runs_and_judge_verdicts_are_spans_under_the_invocation() {
    cli_support::require_podman();
    let (collector, received) = collector().await;
    let (judge, asked) = judge().await;
    let dir = tempfile::tempdir().unwrap();
    write_cli_manifests(dir.path());
    let signer = support::Signer::from_vectors();
    let gateway = start(
        dir.path(),
        &signer,
        "info",
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}", collector.port()),
            ),
            ("SEAL_GATEWAY_CONTAINER_CLI", cli_support::podman()),
            (
                "SEAL_GATEWAY_SEMANTIC_JUDGE_URL",
                format!("http://{judge}/judge"),
            ),
        ],
    )
    .await;
    let now = chrono::Utc::now().timestamp();
    // An argument that looks like a secret: the container gets it, no span does.
    let secret = format!("cli-secret-{}", uuid::Uuid::new_v4().simple());

    // Each call from its own caller span of the same trace: (tool, arguments, caller span,
    // expected status).
    let calls = [
        (
            "busybox",
            json!({"subcommand": "echo", "args": ["hello", format!("--token={secret}")]}),
            "00f067aa0ba90c01",
            200,
        ),
        (
            "busybox",
            json!({"subcommand": "sh", "args": ["-c", "exit 3"]}),
            "00f067aa0ba90c02",
            200,
        ),
        (
            "judged-echo",
            json!({"subcommand": "echo", "args": ["judged", "ok"]}),
            "00f067aa0ba90c03",
            200,
        ),
        (
            "judged-echo",
            json!({"subcommand": "echo", "args": ["forbidden"]}),
            "00f067aa0ba90c04",
            403,
        ),
    ];
    let mut sent_envelopes = Vec::new();
    let mut answers = Vec::new();
    for (i, (tool, arguments, caller, expected)) in calls.iter().enumerate() {
        let envelope = signer.envelope(tool, arguments.clone(), &format!("jti-cli-{i}"), now);
        sent_envelopes.push(envelope.clone());
        let headers = [("traceparent", format!("00-{TRACE_ID}-{caller}-01"))];
        let (status, body) = gateway.post(envelope, &headers).await;
        assert_eq!(status, *expected, "{tool} {arguments}: {body}");
        answers.push(body);
    }
    assert_eq!(
        answers[0]["result"]["stdout"],
        format!("hello --token={secret}\n")
    );
    assert_eq!(answers[1]["result"]["exit_code"], 3);
    assert_eq!(answers[2]["result"]["stdout"], "judged ok\n");
    assert_eq!(
        answers[3],
        json!({"error": "forbidden", "reason": CLI_JUDGE_DENIAL})
    );
    assert_eq!(*asked.lock().unwrap(), 2, "only judged-echo asks the judge");

    let out = gateway.stop().await;
    let logs = String::from_utf8_lossy(&out.stdout).into_owned();
    let received = received.lock().unwrap();
    assert!(
        !received.requests.is_empty(),
        "nothing exported; logs:\n{logs}"
    );
    let spans: Vec<Span> = received
        .requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| s.spans.iter().cloned())
        .collect();
    let describe = |s: &Span| {
        format!(
            "{} {} <- {} {:?}",
            s.name,
            hex(&s.span_id),
            hex(&s.parent_span_id),
            s.status
        )
    };
    let all: Vec<String> = spans.iter().map(describe).collect();
    for span in &spans {
        assert_eq!(hex(&span.trace_id), TRACE_ID, "{}", describe(span));
    }

    // Per call: its invocation span (the caller's span is its parent), that span's dispatch
    // stage, and the spans named `name` under the invocation.
    let invocation = |caller: &str| -> &Span {
        let found: Vec<&Span> = spans
            .iter()
            .filter(|s| hex(&s.parent_span_id) == caller)
            .collect();
        assert_eq!(found.len(), 1, "one span of caller {caller}: {all:#?}");
        found[0]
    };
    let named = |root: &Span, name: &str| -> Vec<&Span> {
        descendants(&spans, root)
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    };
    let dispatch_of = |invoke: &Span| -> Vec<u8> {
        let dispatch = named(invoke, "seal.dispatch");
        assert_eq!(dispatch.len(), 1, "{all:#?}");
        assert_eq!(dispatch[0].parent_span_id, invoke.span_id);
        dispatch[0].span_id.clone()
    };
    let image = cli_support::image();
    let container_run = |invoke: &Span, exit: i64| -> Span {
        assert_eq!(invoke.name, "POST /v1/invoke");
        assert_eq!(invoke.kind, SpanKind::Server as i32);
        let runs = named(invoke, "cli.container_run");
        assert_eq!(runs.len(), 1, "one container run: {all:#?}");
        let run = runs[0].clone();
        assert_eq!(
            run.parent_span_id,
            dispatch_of(invoke),
            "{}",
            describe(&run)
        );
        assert_eq!(run.kind, SpanKind::Internal as i32);
        for (key, value) in [
            (
                "seal.tool_name",
                attr(&invoke.attributes, "seal.tool_name").map(attr_text),
            ),
            ("container.image.name", Some(image.clone())),
            ("process.exit.code", Some(exit.to_string())),
        ] {
            assert_eq!(attr(&run.attributes, key).map(attr_text), value, "{key}");
        }
        assert_eq!(
            attr(&invoke.attributes, "http.response.status_code").map(attr_text),
            Some("200".into()),
            "a run that exited is a 200, whatever its exit code"
        );
        assert_eq!(
            status_of(invoke).0,
            StatusCode::Unset as i32,
            "{}",
            describe(invoke)
        );
        run
    };

    // busybox echo: exit 0, nothing failed, and no judge was asked.
    let invoke = invocation(calls[0].2);
    assert_eq!(
        attr(&invoke.attributes, "seal.tool_name").map(attr_text),
        Some("busybox".into())
    );
    assert_eq!(
        attr(&invoke.attributes, "seal.outcome").map(attr_text),
        Some("authorized".into())
    );
    let run = container_run(invoke, 0);
    assert_eq!(
        status_of(&run).0,
        StatusCode::Unset as i32,
        "{}",
        describe(&run)
    );
    assert!(named(invoke, "cli.semantic_judge").is_empty(), "{all:#?}");
    let under: HashSet<&str> = descendants(&spans, invoke)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    for stage in [
        "seal.verify_envelope",
        "seal.verify_token",
        "seal.replay_check",
        "seal.authorize",
        "seal.audit_commit",
    ] {
        assert!(
            under.contains(stage),
            "no {stage} under the invocation: {under:?}"
        );
    }

    // busybox sh -c 'exit 3': the run failed with its exit code; the call itself did not.
    let run = container_run(invocation(calls[1].2), 3);
    assert_eq!(
        status_of(&run),
        (StatusCode::Error as i32, "nonzero exit".into())
    );

    // judged-echo, allowed: the judge's span (with its request under it), then the run, both
    // under the dispatch stage.
    let invoke = invocation(calls[2].2);
    let run = container_run(invoke, 0);
    assert_eq!(status_of(&run).0, StatusCode::Unset as i32);
    let judged = named(invoke, "cli.semantic_judge");
    assert_eq!(judged.len(), 1, "{all:#?}");
    let verdict = judged[0];
    assert_eq!(verdict.parent_span_id, dispatch_of(invoke));
    assert_eq!(
        attr(&verdict.attributes, "seal.judge.allowed").map(attr_text),
        Some("true".into())
    );
    assert_eq!(status_of(verdict).0, StatusCode::Unset as i32);
    let request = descendants(&spans, verdict);
    assert_eq!(request.len(), 1, "the judge's request: {all:#?}");
    assert_eq!(request[0].kind, SpanKind::Client as i32);
    assert_eq!(request[0].name, "POST");
    assert_eq!(
        attr(&request[0].attributes, "http.response.status_code").map(attr_text),
        Some("200".into())
    );

    // judged-echo, denied: the judge's span and the invocation failed, nothing ran.
    let invoke = invocation(calls[3].2);
    let judged = named(invoke, "cli.semantic_judge");
    assert_eq!(judged.len(), 1, "{all:#?}");
    let verdict = judged[0];
    assert_eq!(verdict.parent_span_id, dispatch_of(invoke));
    assert_eq!(
        attr(&verdict.attributes, "seal.judge.allowed").map(attr_text),
        Some("false".into())
    );
    assert_eq!(
        status_of(verdict),
        (
            StatusCode::Error as i32,
            "rejected by the semantic judge".into()
        )
    );
    assert!(named(invoke, "cli.container_run").is_empty(), "{all:#?}");
    assert_eq!(
        attr(&invoke.attributes, "http.response.status_code").map(attr_text),
        Some("403".into())
    );
    assert_eq!(
        attr(&invoke.attributes, "seal.outcome").map(attr_text),
        Some("authorized".into())
    );
    assert_eq!(
        status_of(invoke),
        (StatusCode::Error as i32, "403 Forbidden".into())
    );

    // No token, signature, secret-looking argument or judge's reason in what was exported.
    assert_nothing_exported(
        &received.bodies,
        &sent_envelopes,
        vec![secret.clone(), CLI_JUDGE_DENIAL.to_owned()],
    );
}

/// No export body holds any of `needles`, nor the security token (whole, or its signature part)
/// or the signature of any envelope sent.
fn assert_nothing_exported(bodies: &[Bytes], sent_envelopes: &[String], mut needles: Vec<String>) {
    for envelope in sent_envelopes {
        let envelope: Value = serde_json::from_str(envelope).unwrap();
        let token = envelope["security_token"].as_str().unwrap();
        needles.push(token.to_owned());
        needles.push(token.rsplit('.').next().unwrap().to_owned());
        needles.push(envelope["signature"].as_str().unwrap().to_owned());
    }
    for body in bodies {
        for needle in &needles {
            assert!(
                !body.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} was exported"
            );
        }
    }
}

/// A collector served over TLS with a certificate of an internal CA: the gateway's spans reach it
/// when `OTEL_EXPORTER_OTLP_CERTIFICATE` names that CA, and none do without it.
#[tokio::test]
async fn a_collector_of_an_internal_ca_gets_traces_through_otel_exporter_otlp_certificate() {
    let ca = tls_support::Ca::new("Observability CA");
    let upstream = upstream().await;
    let signer = support::Signer::from_vectors();
    let now = chrono::Utc::now().timestamp();
    for trusted in [false, true] {
        let (collector, received) = collector().await;
        let tls = tls_support::tls_front(&ca, collector).await;
        let dir = tempfile::tempdir().unwrap();
        write_manifests(dir.path(), upstream);
        let ca_file = dir.path().join("observability-ca.crt");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let mut env = vec![(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("https://localhost:{}", tls.port()),
        )];
        if trusted {
            env.push((
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                ca_file.display().to_string(),
            ));
        }
        let gateway = start(dir.path(), &signer, "info", &env).await;
        let envelope = signer.envelope("trace-tool", json!({}), &format!("jti-tls-{trusted}"), now);
        let (status, body) = gateway.post(envelope, &[]).await;
        assert_eq!(status, 200, "{body}");
        // The exporter flushes at shutdown.
        let out = gateway.stop().await;
        let spans = received.lock().unwrap().span_count();
        if trusted {
            assert!(
                spans > 0,
                "no span exported:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        } else {
            assert_eq!(spans, 0, "an untrusted collector got spans");
        }
    }
}

/// The collector's CA renewed in place: the exporter reads the new file before its next export,
/// without a restart, and says so once.
#[tokio::test]
async fn a_renewed_collector_ca_is_taken_on_without_a_restart() {
    let ca = tls_support::Ca::new("Observability CA");
    let stale = tls_support::Ca::new("Retired Observability Certificate Authority");
    let upstream = upstream().await;
    let signer = support::Signer::from_vectors();
    let now = chrono::Utc::now().timestamp();
    let (collector, received) = collector().await;
    let tls = tls_support::tls_front(&ca, collector).await;
    let dir = tempfile::tempdir().unwrap();
    write_manifests(dir.path(), upstream);
    let ca_file = dir.path().join("observability-ca.crt");
    std::fs::write(&ca_file, &stale.pem).unwrap();
    let env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("https://localhost:{}", tls.port()),
        ),
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            ca_file.display().to_string(),
        ),
        // Export each batch at once, so the first one meets the stale CA.
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
    ];
    let gateway = start(dir.path(), &signer, "info", &env).await;
    let spans = || received.lock().unwrap().span_count();
    let call = |jti: &str| signer.envelope("trace-tool", json!({}), jti, now);
    assert_eq!(gateway.post(call("jti-stale-ca"), &[]).await.0, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(spans(), 0, "the collector is not trusted yet");

    std::fs::write(&ca_file, &ca.pem).unwrap();
    assert_eq!(gateway.post(call("jti-renewed-ca"), &[]).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while spans() == 0 {
        assert!(
            Instant::now() < deadline,
            "no span exported after the renewal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = gateway.stop().await;
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("trace export failed"), "{log}");
    assert_eq!(
        log.matches("trace exporter TLS files changed; new connections use the new certificates")
            .count(),
        1,
        "{log}"
    );
}
