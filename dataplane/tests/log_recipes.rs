//! The runbook's "Log Filter Recipes", each run against a gateway doing the matching work: the
//! lines a recipe promises appear, under the module paths the runbook names, and nothing below the
//! recipe's base level comes from anywhere else. And no secret reaches a log, even at `trace`.
//!
//! The filter is the `EnvFilter` the binary builds from `RUST_LOG`, parsed from the recipe string
//! and swapped in (reloaded) per test; the tests of this binary take turns, since the subscriber is
//! process-wide.

mod observability_support;
mod support;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use observability_support::{Harness, snapshot, upstream, write_kv_token};
use serde_json::json;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// One log event as the filter let it through.
#[derive(Debug, Clone)]
struct Line {
    level: Level,
    target: String,
    /// The message and every field, `Debug`-formatted as the fmt subscriber prints them.
    text: String,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.level, self.target, self.text)
    }
}

struct Capture(Arc<Mutex<Vec<Line>>>);

/// The fields of an event; for a `log` record (reqwest logs through `log`), its own target, as
/// the fmt subscriber of the binary shows it.
#[derive(Default)]
struct Fields {
    text: String,
    log_target: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "log.target" {
            self.log_target = Some(value.to_owned());
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.text, "{value:?} ");
            }
            name if name.starts_with("log.") => {}
            name => {
                let _ = write!(self.text, "{name}={value:?} ");
            }
        }
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        self.0.lock().unwrap().push(Line {
            level: *meta.level(),
            target: fields
                .log_target
                .unwrap_or_else(|| meta.target().to_owned()),
            text: fields.text,
        });
    }
}

struct Logs {
    lines: Arc<Mutex<Vec<Line>>>,
    filter: reload::Handle<EnvFilter, Registry>,
    turn: tokio::sync::Mutex<()>,
}

fn logs() -> &'static Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (filter, handle) = reload::Layer::new(EnvFilter::new("off"));
        tracing_subscriber::registry()
            .with(filter)
            .with(Capture(lines.clone()))
            .init();
        Logs {
            lines,
            filter: handle,
            turn: tokio::sync::Mutex::new(()),
        }
    })
}

/// Runs `work` with `RUST_LOG=<recipe>` and returns what was logged meanwhile.
async fn with_recipe<F, Fut>(recipe: &str, work: F) -> Vec<Line>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let logs = logs();
    let _turn = logs.turn.lock().await;
    let filter = EnvFilter::try_new(recipe).unwrap_or_else(|e| panic!("{recipe}: {e}"));
    logs.filter.reload(filter).unwrap();
    logs.lines.lock().unwrap().clear();
    work().await;
    logs.filter.reload(EnvFilter::new("off")).unwrap();
    std::mem::take(&mut *logs.lines.lock().unwrap())
}

fn dump(lines: &[Line]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// Some line at `level` under `target` (a module path prefix) contains `text`.
fn assert_logged(lines: &[Line], level: Level, target: &str, text: &str) {
    assert!(
        lines
            .iter()
            .any(|l| l.level == level && under(&l.target, target) && l.text.contains(text)),
        "no {level} {target}: {text:?} in\n{}",
        dump(lines)
    );
}

/// Every line more verbose than `base` comes from one of `selected` (module path prefixes).
fn assert_only(lines: &[Line], base: Level, selected: &[&str]) {
    for l in lines {
        // `Level` orders TRACE > DEBUG > INFO > WARN > ERROR (more verbose is greater).
        if l.level > base {
            assert!(
                selected.iter().any(|s| under(&l.target, s)),
                "{l} is not selected by the recipe (base {base}, selected {selected:?})"
            );
        }
    }
}

/// `target` is `module` or one of its submodules.
fn under(target: &str, module: &str) -> bool {
    target == module
        || target
            .strip_prefix(module)
            .is_some_and(|rest| rest.starts_with("::"))
}

const AUTH: &str = "aegis_seal_gateway::infrastructure::auth";
const WORKFLOW: &str = "aegis_seal_gateway::application::workflow";
const ENGINE: &str = "aegis_seal_gateway::application::workflow::engine";
const CLI: &str = "aegis_seal_gateway::application::cli";
const CREDENTIAL: &str = "aegis_seal_gateway::application::credential";
const PERSISTENCE: &str = "aegis_seal_gateway::infrastructure::persistence";
const HTTP_CLIENT: &str = "aegis_seal_gateway::infrastructure::http_client";

fn image() -> String {
    std::env::var("TEST_BUSYBOX_IMAGE")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "localhost/ci/busybox:latest".into())
}

fn podman() -> String {
    std::env::var("CONTAINER_CLI")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "podman".into())
}

/// Runs the `ok-tool` workflow once.
async fn run_workflow() {
    let harness = Harness::start(snapshot(upstream().await, &image()), &[]).await;
    let (status, body) = harness.invoke("ok-tool", json!({})).await;
    assert_eq!(status, 200, "{body}");
    harness.shutdown().await;
}

/// Waits (bounded) for the JTI sweep that runs when a gateway starts.
async fn start_and_sweep() {
    let harness = Harness::start(snapshot(upstream().await, &image()), &[]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !logs()
        .lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.text.contains("jti sweep finished"))
    {
        assert!(Instant::now() < deadline, "no JTI sweep within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    harness.shutdown().await;
}

#[tokio::test]
async fn trace_seal_envelope_verification() {
    let lines = with_recipe(
        "info,aegis_seal_gateway::infrastructure::auth=trace",
        || async {
            let harness = Harness::start(snapshot(upstream().await, &image()), &[]).await;
            assert_eq!(harness.invoke("ok-tool", json!({})).await.0, 200);
            let now = chrono::Utc::now().timestamp();
            let mut forged: serde_json::Value =
                serde_json::from_str(&harness.signer.envelope("ok-tool", json!({}), "jti-f", now))
                    .unwrap();
            forged["payload"]["params"]["arguments"] = json!({"changed": true});
            assert_eq!(harness.post_envelope(forged.to_string()).await.0, 401);
            // A signature that is not one at all (63 bytes) is refused with a line too.
            let mut garbled: serde_json::Value =
                serde_json::from_str(&harness.signer.envelope("ok-tool", json!({}), "jti-g", now))
                    .unwrap();
            garbled["signature"] = json!(STANDARD.encode([7u8; 63]));
            assert_eq!(harness.post_envelope(garbled.to_string()).await.0, 401);
            let replayed = harness.signer.envelope("ok-tool", json!({}), "jti-r", now);
            assert_eq!(harness.post_envelope(replayed.clone()).await.0, 200);
            assert_eq!(harness.post_envelope(replayed).await.0, 401);
            harness.shutdown().await;
        },
    )
    .await;
    assert_logged(&lines, Level::TRACE, AUTH, "envelope signature verified");
    assert_logged(
        &lines,
        Level::WARN,
        AUTH,
        "signature verification failed: invalid signature for payload",
    );
    assert_logged(
        &lines,
        Level::WARN,
        AUTH,
        "envelope rejected: signature must be 64 bytes",
    );
    assert_logged(
        &lines,
        Level::WARN,
        AUTH,
        "replay detected: jti already seen",
    );
    assert_only(&lines, Level::INFO, &[AUTH]);
}

#[tokio::test]
async fn trace_workflow_engine_end_to_end() {
    let lines = with_recipe(
        "info,aegis_seal_gateway::application::workflow=trace",
        run_workflow,
    )
    .await;
    assert_logged(&lines, Level::DEBUG, WORKFLOW, "workflow started");
    assert_logged(&lines, Level::DEBUG, WORKFLOW, "workflow completed");
    assert!(
        lines
            .iter()
            .any(|l| l.level == Level::TRACE && under(&l.target, WORKFLOW))
    );
    assert_only(&lines, Level::INFO, &[WORKFLOW]);
}

#[tokio::test]
async fn selective_per_module_trace() {
    let lines = with_recipe(
        "info,aegis_seal_gateway::application::workflow::engine=trace",
        run_workflow,
    )
    .await;
    assert_logged(&lines, Level::DEBUG, ENGINE, "workflow completed");
    assert!(
        lines
            .iter()
            .any(|l| l.level == Level::TRACE && under(&l.target, ENGINE))
    );
    assert_only(&lines, Level::INFO, &[ENGINE]);
}

#[tokio::test]
async fn trace_cli_invocation_pipeline() {
    let podman = podman();
    let lines = with_recipe(
        "info,aegis_seal_gateway::application::cli=trace",
        || async {
            let harness = Harness::start(
                snapshot(upstream().await, &image()),
                &[("SEAL_GATEWAY_CONTAINER_CLI", &podman)],
            )
            .await;
            let (status, body) = harness
                .invoke("busybox", json!({"subcommand": "echo", "args": ["hi"]}))
                .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                harness
                    .invoke("busybox", json!({"subcommand": "rm", "args": []}))
                    .await
                    .0,
                403
            );
            harness.shutdown().await;
        },
    )
    .await;
    assert_logged(&lines, Level::INFO, CLI, "Container CLI resolved");
    assert_logged(&lines, Level::TRACE, CLI, "CLI invocation received");
    assert_logged(&lines, Level::TRACE, CLI, "starting CLI tool container");
    assert_logged(&lines, Level::INFO, CLI, "CLI tool invocation completed");
    assert_logged(&lines, Level::WARN, CLI, "CLI invocation rejected");
    assert_only(&lines, Level::INFO, &[CLI]);
}

#[tokio::test]
async fn trace_credential_resolver() {
    let secret = format!("kv-token-{}", uuid::Uuid::new_v4().simple());
    let (bao, bao_token) = write_kv_token(&secret).await;
    let lines = with_recipe(
        "info,aegis_seal_gateway::application::credential=trace",
        || async {
            let harness = Harness::start(
                snapshot(upstream().await, &image()),
                &[
                    ("SEAL_GATEWAY_OPENBAO_ADDR", &bao),
                    ("SEAL_GATEWAY_OPENBAO_TOKEN", &bao_token),
                ],
            )
            .await;
            assert_eq!(harness.invoke("whoami", json!({})).await.0, 200);
            assert_eq!(harness.invoke("missing-secret", json!({})).await.0, 502);
            harness.shutdown().await;
        },
    )
    .await;
    assert_logged(
        &lines,
        Level::TRACE,
        CREDENTIAL,
        "credential resolution started",
    );
    assert_logged(
        &lines,
        Level::TRACE,
        CREDENTIAL,
        "credential resolution completed",
    );
    assert_logged(
        &lines,
        Level::WARN,
        CREDENTIAL,
        "credential exchange failed",
    );
    assert_only(&lines, Level::INFO, &[CREDENTIAL]);
    let text = dump(&lines);
    assert!(
        !text.contains(&secret),
        "the credential was logged:\n{text}"
    );
    assert!(!text.contains(&bao_token), "the OpenBao token was logged");
}

#[tokio::test]
async fn trace_jti_replay_sweep() {
    let lines = with_recipe(
        "info,aegis_seal_gateway::infrastructure::persistence=debug",
        start_and_sweep,
    )
    .await;
    assert_logged(&lines, Level::DEBUG, PERSISTENCE, "jti sweep finished");
    let sweep = lines
        .iter()
        .find(|l| l.text.contains("jti sweep finished"))
        .unwrap();
    assert!(sweep.text.contains("rows_purged="), "{sweep}");
    assert!(sweep.text.contains("duration_ms="), "{sweep}");
    assert!(
        lines.iter().all(|l| l.level != Level::TRACE),
        "{}",
        dump(&lines)
    );
    assert_only(&lines, Level::INFO, &[PERSISTENCE]);
}

#[tokio::test]
async fn database_only_debugging() {
    let lines = with_recipe(
        "warn,aegis_seal_gateway::infrastructure::persistence=debug,sqlx=info",
        start_and_sweep,
    )
    .await;
    assert_logged(&lines, Level::DEBUG, PERSISTENCE, "jti sweep finished");
    // The INFO startup lines of other modules are gone.
    assert!(
        !lines
            .iter()
            .any(|l| l.text.contains("aegis-seal-gateway listening on")),
        "{}",
        dump(&lines)
    );
    assert_only(&lines, Level::WARN, &[PERSISTENCE, "sqlx"]);
    assert!(
        lines
            .iter()
            .all(|l| !under(&l.target, "sqlx") || l.level <= Level::INFO)
    );
}

#[tokio::test]
async fn trace_http_client_to_upstream_apis() {
    let lines = with_recipe(
        "info,aegis_seal_gateway::infrastructure::http_client=trace,reqwest=debug",
        run_workflow,
    )
    .await;
    assert_logged(
        &lines,
        Level::TRACE,
        HTTP_CLIENT,
        "upstream request completed",
    );
    let request = lines
        .iter()
        .find(|l| l.text.contains("upstream request completed"))
        .unwrap();
    assert!(request.text.contains("method=POST"), "{request}");
    assert!(request.text.contains("/ok"), "{request}");
    assert!(request.text.contains("status=200"), "{request}");
    assert!(request.text.contains("duration_ms="), "{request}");
    assert_logged(&lines, Level::DEBUG, "reqwest", "starting new connection");
    assert_only(&lines, Level::INFO, &[HTTP_CLIENT, "reqwest"]);
}

#[tokio::test]
async fn quiet_noisy_infrastructure_crates() {
    let lines = with_recipe("info,sqlx=warn,h2=warn,hyper=warn,tonic=warn", run_workflow).await;
    assert_logged(
        &lines,
        Level::INFO,
        "aegis_seal_gateway",
        "aegis-seal-gateway listening on",
    );
    for l in &lines {
        if ["sqlx", "h2", "hyper", "tonic"]
            .iter()
            .any(|c| under(&l.target, c))
        {
            assert!(l.level <= Level::WARN, "{l}");
        }
    }
    assert_only(&lines, Level::INFO, &[]);
}

#[tokio::test]
async fn errors_only() {
    let podman = podman();
    let lines = with_recipe("error", || async {
        let harness = Harness::start(
            snapshot(upstream().await, &image()),
            &[("SEAL_GATEWAY_CONTAINER_CLI", &podman)],
        )
        .await;
        let (status, body) = harness
            .invoke("sleeper", json!({"subcommand": "sleep", "args": ["30"]}))
            .await;
        assert_eq!(status, 504, "{body}");
        assert_eq!(harness.invoke("ok-tool", json!({})).await.0, 200);
        assert_eq!(harness.invoke("failing-tool", json!({})).await.0, 502);
        harness.shutdown().await;
    })
    .await;
    assert_logged(&lines, Level::ERROR, CLI, "container CLI execution failed");
    assert!(
        lines.iter().all(|l| l.level == Level::ERROR),
        "{}",
        dump(&lines)
    );
}

#[tokio::test]
async fn issue_report_recipe() {
    let lines = with_recipe("info,aegis_seal_gateway=debug", run_workflow).await;
    assert_logged(
        &lines,
        Level::DEBUG,
        "aegis_seal_gateway::application::invocation",
        "tool call authorized",
    );
    assert_logged(
        &lines,
        Level::DEBUG,
        "aegis_seal_gateway::presentation::routes",
        "request",
    );
    assert!(
        lines.iter().all(|l| l.level != Level::TRACE),
        "{}",
        dump(&lines)
    );
    assert_only(&lines, Level::INFO, &["aegis_seal_gateway"]);
}

/// Maximum noise, on an invocation whose credential comes from OpenBao: every layer logs, the
/// dependencies too, and neither the issued credential nor the OpenBao token appears anywhere.
#[tokio::test]
async fn maximum_noise_never_logs_a_secret() {
    let secret = format!("kv-token-{}", uuid::Uuid::new_v4().simple());
    let (bao, bao_token) = write_kv_token(&secret).await;
    let lines = with_recipe("trace", || async {
        let harness = Harness::start(
            snapshot(upstream().await, &image()),
            &[
                ("SEAL_GATEWAY_OPENBAO_ADDR", &bao),
                ("SEAL_GATEWAY_OPENBAO_TOKEN", &bao_token),
            ],
        )
        .await;
        let (status, body) = harness.invoke("whoami", json!({})).await;
        assert_eq!(status, 200, "{body}");
        // The upstream echoed the credential; the agent sees it redacted.
        assert_eq!(
            body["result"]["result"]["authorization"],
            "Bearer [REDACTED]"
        );
        harness.shutdown().await;
    })
    .await;
    for module in [AUTH, WORKFLOW, CREDENTIAL, HTTP_CLIENT] {
        assert!(
            lines
                .iter()
                .any(|l| l.level == Level::TRACE && under(&l.target, module)),
            "no TRACE from {module}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| !under(&l.target, "aegis_seal_gateway") && l.level >= Level::DEBUG),
        "no dependency logs at trace"
    );
    let text = dump(&lines);
    assert!(!text.contains(&secret), "the credential was logged");
    assert!(!text.contains(&bao_token), "the OpenBao token was logged");
}
