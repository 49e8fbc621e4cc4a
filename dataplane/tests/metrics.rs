//! Prometheus metrics: the upstream table (reference §12.1) name for name, type for type, label for
//! label and bucket for bucket; bounded cardinality whatever callers send; the operator additions;
//! and the exporter as the binary runs it (`METRICS_BIND`/`METRICS_PORT`, its log line).

mod observability_support;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use observability_support::{Harness, exporter, sample, scrape, snapshot, upstream};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_aegis-seal-gateway");

const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Reference §12.1: name, type, label names (the gRPC pair is absent: there is no gRPC listener).
const REFERENCE: [(&str, &str, &[&str]); 8] = [
    ("aegis_seal_attestations_total", "counter", &["outcome"]),
    ("aegis_seal_signature_failures_total", "counter", &[]),
    ("aegis_seal_sessions_active", "gauge", &[]),
    (
        "aegis_tool_policy_violations_total",
        "counter",
        &["violation_type"],
    ),
    (
        "aegis_tool_invocations_total",
        "counter",
        &["tool_name", "path", "status"],
    ),
    (
        "aegis_tool_invocation_duration_seconds",
        "histogram",
        &["tool_name", "path"],
    ),
    (
        "aegis_seal_http_requests_total",
        "counter",
        &["method", "path_template", "status_code"],
    ),
    (
        "aegis_seal_http_request_duration_seconds",
        "histogram",
        &["method", "path_template"],
    ),
];

/// `# TYPE` of every family.
fn types(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            (name.to_owned(), kind.to_owned())
        })
        .collect()
}

/// Samples as (series name, labels) for every line that is not a comment.
fn samples(exposition: &str) -> Vec<(String, BTreeMap<String, String>)> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, _value) = line.rsplit_once(' ').unwrap();
            match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, labels)) => {
                    let labels = labels
                        .trim_end_matches('}')
                        .split("\",")
                        .map(|pair| {
                            let (k, v) = pair.split_once("=\"").unwrap();
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            }
        })
        .collect()
}

#[tokio::test]
async fn names_types_labels_and_buckets_match_the_reference_table() {
    let upstream = upstream().await;
    let harness = Harness::start(snapshot(upstream, "unused:1"), &[]).await;
    let exporter = exporter(&harness).await;

    // Pre-registered at zero, before any traffic.
    let before = scrape(&exporter).await;
    assert_eq!(
        sample(&before, r#"aegis_seal_attestations_total{outcome="ok"}"#),
        Some(0.0),
        "{before}"
    );
    assert_eq!(
        sample(&before, "aegis_seal_signature_failures_total"),
        Some(0.0)
    );
    for outcome in ["ok", "refused"] {
        let series = format!(r#"aegis_seal_outbound_tls_reloads_total{{outcome="{outcome}"}}"#);
        assert_eq!(sample(&before, &series), Some(0.0), "{series}");
    }

    assert_eq!(harness.invoke("ok-tool", json!({})).await.0, 200);
    assert_eq!(harness.invoke("no-such-tool", json!({})).await.0, 404);
    assert_eq!(harness.invoke("denied-tool", json!({})).await.0, 403);
    let replayed = harness.signer.envelope(
        "ok-tool",
        json!({}),
        "jti-replayed",
        chrono::Utc::now().timestamp(),
    );
    assert_eq!(harness.post_envelope(replayed.clone()).await.0, 200);
    assert_eq!(harness.post_envelope(replayed).await.0, 401);
    let mut forged: serde_json::Value = serde_json::from_str(&harness.signer.envelope(
        "ok-tool",
        json!({}),
        "jti-forged",
        chrono::Utc::now().timestamp(),
    ))
    .unwrap();
    forged["payload"]["params"]["arguments"] = json!({"changed": true});
    assert_eq!(harness.post_envelope(forged.to_string()).await.0, 401);
    // Path parameters collapse into the route's template.
    let base = format!("http://{}", harness.gateway.local_addr);
    for path in [
        "/v1/seal/sessions/exec-0001",
        "/v1/seal/sessions/exec-0001/",
        "/v1/workflows/4f1c",
        "/openapi.json",
    ] {
        reqwest::get(format!("{base}{path}")).await.unwrap();
    }

    let text = scrape(&exporter).await;
    let types = types(&text);
    let samples = samples(&text);
    for (name, kind, labels) in REFERENCE {
        assert_eq!(
            types.get(name).map(String::as_str),
            Some(kind),
            "{name}\n{text}"
        );
        let expected: BTreeSet<&str> = labels.iter().copied().collect();
        let series: Vec<_> = samples
            .iter()
            .filter(|(n, _)| {
                n == name
                    || (kind == "histogram"
                        && [
                            format!("{name}_bucket"),
                            format!("{name}_sum"),
                            format!("{name}_count"),
                        ]
                        .contains(n))
            })
            .collect();
        assert!(!series.is_empty(), "no samples of {name}\n{text}");
        for (n, l) in &series {
            let keys: BTreeSet<&str> = l
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "le")
                .collect();
            assert_eq!(keys, expected, "{n}{l:?}");
        }
        if kind == "histogram" {
            // Per series, the bucket bounds are exactly the reference's, then +Inf.
            let mut bounds: BTreeMap<Vec<(String, String)>, Vec<String>> = BTreeMap::new();
            for (n, l) in &series {
                if n.ends_with("_bucket") {
                    let key = l
                        .iter()
                        .filter(|(k, _)| *k != "le")
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    bounds.entry(key).or_default().push(l["le"].clone());
                }
            }
            assert!(!bounds.is_empty());
            for (series, les) in bounds {
                let (inf, finite) = les.split_last().unwrap();
                assert_eq!(inf, "+Inf", "{name}{series:?}");
                let finite: Vec<f64> = finite.iter().map(|b| b.parse().unwrap()).collect();
                assert_eq!(finite, BUCKETS, "{name}{series:?}");
            }
        }
    }
    assert!(!text.contains("aegis_seal_grpc"), "no gRPC listener");

    // Label values: the upstream vocabularies, resolved tool names or `unknown`.
    let outcomes = [
        "ok",
        "signature_invalid",
        "replay",
        "expired",
        "unauthorized",
        "context_mismatch",
        "tool_not_allowed",
        "forbidden",
        "malformed",
    ];
    for (n, l) in &samples {
        if n == "aegis_seal_attestations_total" {
            assert!(outcomes.contains(&l["outcome"].as_str()), "{l:?}");
        }
        if n == "aegis_tool_invocations_total" {
            assert!(
                ["ok-tool", "unknown"].contains(&l["tool_name"].as_str()),
                "{l:?}"
            );
            assert!(["cli", "workflow"].contains(&l["path"].as_str()), "{l:?}");
            assert!(["ok", "error"].contains(&l["status"].as_str()), "{l:?}");
        }
    }
    for (series, value) in [
        (r#"aegis_seal_attestations_total{outcome="ok"}"#, 3.0),
        (r#"aegis_seal_attestations_total{outcome="replay"}"#, 1.0),
        (r#"aegis_seal_attestations_total{outcome="forbidden"}"#, 1.0),
        (
            r#"aegis_seal_attestations_total{outcome="signature_invalid"}"#,
            1.0,
        ),
        ("aegis_seal_signature_failures_total", 1.0),
        (
            r#"aegis_tool_policy_violations_total{violation_type="tool_denied"}"#,
            1.0,
        ),
        (
            r#"aegis_tool_invocations_total{tool_name="ok-tool",path="workflow",status="ok"}"#,
            2.0,
        ),
        (
            r#"aegis_tool_invocations_total{tool_name="unknown",path="workflow",status="error"}"#,
            1.0,
        ),
        (
            r#"aegis_seal_http_requests_total{method="POST",path_template="/v1/invoke",status_code="200"}"#,
            2.0,
        ),
        (
            r#"aegis_seal_http_requests_total{method="POST",path_template="/v1/invoke",status_code="401"}"#,
            2.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
    }
    for template in [
        "/v1/seal/sessions/{execution_id}",
        "/v1/workflows/{id}",
        "/openapi.json",
    ] {
        assert!(
            text.contains(&format!(
                "aegis_seal_http_requests_total{{method=\"GET\",path_template=\"{template}\","
            )),
            "{template}\n{text}"
        );
    }
    assert_eq!(
        sample(
            &text,
            r#"aegis_seal_http_requests_total{method="GET",path_template="/v1/seal/sessions/{execution_id}",status_code="200"}"#
        ),
        Some(2.0)
    );

    // Beyond upstream: the served snapshot, the replay store, the audit writer, the upstreams.
    let hash = harness.gateway.state.served.load().hash.clone();
    assert_eq!(
        sample(
            &text,
            &format!(r#"aegis_seal_snapshot_info{{hash="{hash}"}}"#)
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"aegis_seal_snapshot_objects{kind="workflow"}"#),
        Some(5.0)
    );
    assert_eq!(
        sample(&text, r#"aegis_seal_snapshot_objects{kind="cli_tool"}"#),
        Some(2.0)
    );
    // Every envelope that reached the replay check left its jti: four first uses.
    assert_eq!(sample(&text, "aegis_seal_replay_store_jtis"), Some(4.0));
    assert_eq!(sample(&text, "aegis_seal_audit_queue_depth"), Some(0.0));
    assert!(sample(&text, r#"aegis_seal_audit_commits_total{outcome="ok"}"#).unwrap() >= 1.0);
    assert_eq!(
        sample(&text, r#"aegis_seal_audit_commits_total{outcome="error"}"#),
        Some(0.0)
    );
    assert!(sample(&text, "aegis_seal_audit_events_committed_total").unwrap() >= 5.0);
    assert_eq!(
        sample(
            &text,
            &format!(
                r#"aegis_seal_upstream_requests_total{{upstream="{upstream}",outcome="2xx"}}"#
            )
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"aegis_seal_snapshot_reloads_total{outcome="refused"}"#
        ),
        Some(0.0)
    );

    // The session gauge counts at start, then every 15 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(&exporter).await;
        if sample(&text, "aegis_seal_sessions_active") == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sessions_active never 1:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // OpenMetrics on request, as Prometheus asks for it.
    let r = reqwest::Client::new()
        .get(format!("http://{}/metrics", exporter.local_addr))
        .header("accept", "application/openmetrics-text;version=1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let open = r.text().await.unwrap();
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(open.contains("# TYPE aegis_seal_attestations counter"));
    let health = reqwest::get(format!("http://{}/health", exporter.local_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(health, "OK");

    exporter.shutdown().await;
    harness.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_chosen_names_paths_and_methods_never_add_series() {
    let upstream = upstream().await;
    let harness = std::sync::Arc::new(Harness::start(snapshot(upstream, "unused:1"), &[]).await);
    let exporter = exporter(&harness).await;
    let series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();

    // Every label value the calls below can produce, once.
    assert_eq!(harness.invoke("warm-up-unknown", json!({})).await.0, 404);
    let client = reqwest::Client::new();
    let base = format!("http://{}", harness.gateway.local_addr);
    let weird = |i: usize| http::Method::from_bytes(format!("X{i}").as_bytes()).unwrap();
    assert_eq!(
        client
            .request(weird(0), format!("{base}/nowhere/0"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let warm = scrape(&exporter).await;

    // 10,000 calls naming tools that do not exist, 64 at a time (group commits stay large).
    const CALLS: usize = 10_000;
    const WORKERS: usize = 64;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        let harness = harness.clone();
        tasks.spawn(async move {
            for i in (worker..CALLS).step_by(WORKERS) {
                let (status, _) = harness
                    .invoke(&format!("no-such-tool-{i}"), json!({}))
                    .await;
                assert_eq!(status, 404);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    // And 1,000 requests to unrouted paths with made-up methods.
    for i in 1..=1000 {
        let status = client
            .request(weird(i), format!("{base}/nowhere/{i}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404);
    }

    let after = scrape(&exporter).await;
    assert_eq!(
        series(&after),
        series(&warm),
        "series grew:\n--- before\n{warm}\n--- after\n{after}"
    );
    assert_eq!(
        sample(
            &after,
            r#"aegis_tool_invocations_total{tool_name="unknown",path="workflow",status="error"}"#
        ),
        Some((CALLS + 1) as f64)
    );
    assert_eq!(
        sample(
            &after,
            r#"aegis_seal_http_requests_total{method="other",path_template="unknown_path",status_code="404"}"#
        ),
        Some(1001.0)
    );
    assert!(!after.contains("no-such-tool"));
    exporter.shutdown().await;
    if let Ok(harness) = std::sync::Arc::try_unwrap(harness) {
        harness.shutdown().await;
    }
}

#[tokio::test]
async fn credential_exchanges_and_container_runs_are_counted_by_outcome() {
    let token = format!("kv-token-{}", uuid::Uuid::new_v4().simple());
    let (bao, bao_token) = observability_support::write_kv_token(&token).await;
    let upstream = upstream().await;
    let image = cli_image();
    let podman = podman();
    let harness = Harness::start(
        snapshot(upstream, &image),
        &[
            ("SEAL_GATEWAY_OPENBAO_ADDR", &bao),
            ("SEAL_GATEWAY_OPENBAO_TOKEN", &bao_token),
            ("SEAL_GATEWAY_CONTAINER_CLI", &podman),
        ],
    )
    .await;
    let exporter = exporter(&harness).await;

    assert_eq!(harness.invoke("whoami", json!({})).await.0, 200);
    assert_eq!(harness.invoke("missing-secret", json!({})).await.0, 502);
    let (status, body) = harness
        .invoke("busybox", json!({"subcommand": "echo", "args": ["hi"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = harness
        .invoke(
            "busybox",
            json!({"subcommand": "sh", "args": ["-c", "exit 3"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["exit_code"], 3, "{body}");
    // Refused before any run: not a container run.
    assert_eq!(
        harness
            .invoke("busybox", json!({"subcommand": "rm", "args": []}))
            .await
            .0,
        403
    );

    let text = scrape(&exporter).await;
    for (series, value) in [
        (
            r#"aegis_seal_credential_exchanges_total{resolution_path="static_ref",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"aegis_seal_credential_exchanges_total{resolution_path="static_ref",outcome="failed"}"#,
            1.0,
        ),
        (
            r#"aegis_seal_credential_exchange_duration_seconds_count{resolution_path="static_ref"}"#,
            2.0,
        ),
        (r#"aegis_seal_container_runs_total{outcome="ok"}"#, 1.0),
        (
            r#"aegis_seal_container_runs_total{outcome="nonzero_exit"}"#,
            1.0,
        ),
        ("aegis_seal_container_run_duration_seconds_count", 2.0),
        (
            r#"aegis_tool_invocations_total{tool_name="busybox",path="cli",status="ok"}"#,
            2.0,
        ),
        (
            r#"aegis_tool_invocations_total{tool_name="busybox",path="cli",status="error"}"#,
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
    }
    // OpenBao is an upstream too: its latency is measured under its own host:port.
    let bao_host = reqwest::Url::parse(&bao).unwrap();
    let bao_label = format!(
        "{}:{}",
        bao_host.host_str().unwrap(),
        bao_host.port_or_known_default().unwrap()
    );
    assert!(
        sample(
            &text,
            &format!(
                r#"aegis_seal_upstream_requests_total{{upstream="{bao_label}",outcome="2xx"}}"#
            )
        )
        .is_some(),
        "{text}"
    );
    assert!(!text.contains(&token));
    exporter.shutdown().await;
    harness.shutdown().await;
}

fn cli_image() -> String {
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

fn binary(dir: &Path, port: u16, metrics_port: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_clear()
        .env("HOME", dir)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("SEAL_GATEWAY_BIND", format!("127.0.0.1:{port}"))
        .env("SEAL_GATEWAY_AUTH_DISABLED", "true")
        .env("SEAL_GATEWAY_DB", support::sqlite_url(dir))
        .env("METRICS_PORT", metrics_port)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn terminate(child: Child) -> String {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Scrapes until `series` has `value`, or fails after a generous deadline.
async fn wait_for(metrics: &str, series: &str, value: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(metrics).await
            && let Ok(text) = r.text().await
            && sample(&text, series) == Some(value)
        {
            return text;
        }
        assert!(Instant::now() < deadline, "{series} never reached {value}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_binary_serves_metrics_on_its_own_port_and_counts_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let bad = binary(dir.path(), support::free_port(), "ninety")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("Invalid METRICS_PORT=ninety: "), "{stderr}");

    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let context = "apiVersion: seal.100monkeys.ai/v1\nkind: SecurityContext\nmetadata: {name: ctx}\nspec:\n  capabilities: [{tool_pattern: \"*\"}]\n";
    std::fs::write(manifests.join("ctx.yaml"), context).unwrap();
    let metrics_port = support::free_port();
    let child = binary(dir.path(), support::free_port(), &metrics_port.to_string())
        .env("SEAL_GATEWAY_MANIFESTS", &manifests)
        .spawn()
        .unwrap();
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    wait_for(
        &metrics,
        r#"aegis_seal_snapshot_reloads_total{outcome="refused"}"#,
        0.0,
    )
    .await;
    assert_eq!(
        reqwest::get(format!("http://127.0.0.1:{metrics_port}/health"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "OK"
    );

    // A broken manifest is refused and counted; the fix is served and counted.
    std::fs::write(manifests.join("broken.yaml"), "kind: Workflow\nspec: [\n").unwrap();
    wait_for(
        &metrics,
        r#"aegis_seal_snapshot_reloads_total{outcome="refused"}"#,
        1.0,
    )
    .await;
    std::fs::write(
        manifests.join("broken.yaml"),
        context.replace("name: ctx", "name: ctx2"),
    )
    .unwrap();
    let text = wait_for(
        &metrics,
        r#"aegis_seal_snapshot_reloads_total{outcome="ok"}"#,
        1.0,
    )
    .await;
    assert_eq!(
        sample(
            &text,
            r#"aegis_seal_snapshot_objects{kind="security_context"}"#
        ),
        Some(2.0),
        "{text}"
    );

    let logs = terminate(child);
    let line = logs
        .lines()
        .find(|l| l.contains("Prometheus metrics exporter listening on"))
        .unwrap_or_else(|| panic!("no exporter line:\n{logs}"));
    assert!(
        line.contains(&format!(
            "aegis_seal_gateway::infrastructure::metrics: Prometheus metrics exporter listening on 127.0.0.1:{metrics_port}"
        )),
        "{line}"
    );
}
