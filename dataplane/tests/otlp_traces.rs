//! OpenTelemetry traces, as an operator turns them on: the real `aegis-seal-gateway` process with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a collector on 127.0.0.1 that speaks the OTLP/HTTP
//! contract (`POST /v1/traces`, protobuf `ExportTraceServiceRequest`, 200 with an empty
//! `ExportTraceServiceResponse`), a real upstream, and the real OpenBao for a credential. The
//! spans are read after SIGTERM: the gateway flushes its batch on the way out, so no timing
//! decides anything.
//!
//! And the log lines: the same calls with and without an endpoint print the same lines, none of
//! them prefixed by a span.

mod observability_support;
mod support;

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_seal_gateway::infrastructure::persistence::Database;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
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

/// What the collector received: each request's `Content-Type`, raw body and decoded message.
#[derive(Default)]
struct Received {
    content_types: Vec<String>,
    bodies: Vec<Bytes>,
    requests: Vec<ExportTraceServiceRequest>,
}

/// An OTLP/HTTP trace receiver on 127.0.0.1: `POST /v1/traces` only.
async fn collector() -> (SocketAddr, Arc<Mutex<Received>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Received::default()));
    let store = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let store = store.clone();
                    async move {
                        if req.method() != http::Method::POST || req.uri().path() != "/v1/traces" {
                            let mut r = http::Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = http::StatusCode::NOT_FOUND;
                            return Ok::<_, Infallible>(r);
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
                        Ok(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
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
    let mut needles = vec![secret.clone(), bao_token.clone()];
    for envelope in &sent_envelopes {
        let envelope: Value = serde_json::from_str(envelope).unwrap();
        let token = envelope["security_token"].as_str().unwrap();
        needles.push(token.to_owned());
        needles.push(token.rsplit('.').next().unwrap().to_owned());
        needles.push(envelope["signature"].as_str().unwrap().to_owned());
    }
    for body in &received.bodies {
        for needle in &needles {
            assert!(
                !body.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} was exported"
            );
        }
    }
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
