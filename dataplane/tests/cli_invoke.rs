//! Signed `POST /v1/invoke` calls to CLI tools, end to end: envelope, policy, allowlist, judge,
//! a real podman container, and the audit rows, on both database backends.

mod cli_support;
mod support;

use aegis_seal_gateway::application::clock::Clock;
use aegis_seal_gateway::gateway::RunningGateway;
use aegis_seal_gateway::infrastructure::persistence::{CatalogSource, Database};
use cli_support::{JUDGE_DENIAL, Judge, image, podman, require_podman, runbook_rejections};
use serde_json::{Value, json};
use sqlx::Row;

fn manifests() -> String {
    format!(
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
  require_semantic_judge: true
"#,
        image = image()
    )
}

/// Event types of one execution, oldest first.
async fn event_types(db: &Database, execution_id: &str) -> Vec<String> {
    match db {
        Database::Sqlite(p) => sqlx::query(
            "SELECT event_type FROM gateway_events WHERE payload->>'execution_id' = ? ORDER BY id",
        )
        .bind(execution_id)
        .fetch_all(p)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect(),
        Database::Postgres(p) => sqlx::query(
            "SELECT event_type FROM gateway_events WHERE payload->>'execution_id' = $1 ORDER BY id",
        )
        .bind(execution_id)
        .fetch_all(p)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect(),
    }
}

#[tokio::test]
async fn cli_tools_answer_signed_invocations_on_both_backends() {
    require_podman();
    let judge = Judge::start().await;
    let snapshot = support::snapshot_of(&manifests());
    let signer = support::Signer::from_vectors();

    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect(&url).await.unwrap();
        let now = chrono::Utc::now();
        db.upsert_session(&signer.session_record(now))
            .await
            .unwrap();
        db.sync_catalog(&snapshot, CatalogSource::Manifest)
            .await
            .unwrap();
        let judge_url = judge.url("/deny");
        let config = signer.gateway_config(&[
            ("SEAL_GATEWAY_CONTAINER_CLI", &podman()),
            ("SEAL_GATEWAY_SEMANTIC_JUDGE_URL", &judge_url),
        ]);
        let gateway = RunningGateway::start(&config, db.clone(), snapshot.clone(), Clock::System)
            .await
            .unwrap();
        let base = format!("http://{}", gateway.local_addr);
        let client = reqwest::Client::new();
        let send = |tool: &str, arguments: Value, jti: String| {
            let body = signer.envelope(tool, arguments, &jti, now.timestamp());
            let client = client.clone();
            let base = base.clone();
            async move {
                let r = client
                    .post(format!("{base}/v1/invoke"))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            }
        };

        let ready: Value = client
            .get(format!("{base}/ready"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready["status"], "ready", "{backend}: {ready}");
        assert_eq!(ready["cli_tools"], 2);
        assert_eq!(ready["container_cli"]["resolved"], true, "{ready}");
        assert_eq!(ready["container_cli"]["kind"], "podman");

        let (status, body) = send(
            "busybox",
            json!({"subcommand": "echo", "args": ["hello", "agent"]}),
            format!("{backend}-echo"),
        )
        .await;
        assert_eq!(status, 200, "{backend}: {body}");
        assert_eq!(
            body,
            json!({"result": {"exit_code": 0, "stdout": "hello agent\n", "stderr": "", "stdout_truncated": false, "stderr_truncated": false}})
        );
        assert_eq!(
            event_types(&db, "exec-0001").await,
            [
                "ToolCallAuthorized",
                "CliToolInvocationStarted",
                "CliToolInvocationCompleted"
            ],
            "{backend}"
        );

        let (status, body) = send(
            "busybox",
            json!({"subcommand": "sh", "args": ["-c", "cat /sys/fs/cgroup/pids/pids.max; exit 3"]}),
            format!("{backend}-exit"),
        )
        .await;
        assert_eq!(status, 200, "{backend}: {body}");
        assert_eq!(body["result"]["exit_code"], 3);
        assert_eq!(
            body["result"]["stdout"], "32\n",
            "the tool's resources apply"
        );

        let (status, body) = send(
            "busybox",
            json!({"subcommand": "echo", "args": ["a", 2]}),
            format!("{backend}-bad"),
        )
        .await;
        assert_eq!(status, 400, "{backend}: {body}");
        assert_eq!(
            body["error"],
            "CLI invocation args[1] must be a string, not a number"
        );

        let (status, body) = send(
            "busybox",
            json!({"subcommand": "rm", "args": ["-rf", "/"]}),
            format!("{backend}-rm"),
        )
        .await;
        assert_eq!(status, 403, "{backend}: {body}");
        assert_eq!(
            body["reason"],
            "subcommand 'rm' is not in allowed_subcommands"
        );

        let (status, body) = send(
            "judged-echo",
            json!({"subcommand": "echo", "args": ["x"]}),
            format!("{backend}-judged"),
        )
        .await;
        assert_eq!(status, 403, "{backend}: {body}");
        assert_eq!(body, json!({"error": "forbidden", "reason": JUDGE_DENIAL}));

        let rows = runbook_rejections(&db).await;
        assert_eq!(
            rows,
            [
                ("judged-echo".to_owned(), JUDGE_DENIAL.to_owned()),
                (
                    "busybox".to_owned(),
                    "subcommand 'rm' is not in allowed_subcommands".to_owned()
                ),
            ],
            "{backend}"
        );
        gateway.shutdown().await;
    }
}

/// A tool still running when the gateway stops outlives the drain (`network.drain_seconds`, 2 s
/// here): the gateway then stops it, its container is removed, and its call is recorded as failed
/// before the audit log closes.
#[tokio::test]
async fn a_cli_run_still_going_after_the_drain_is_stopped_removed_and_recorded() {
    require_podman();
    let snapshot = support::snapshot_of(&format!(
        r#"
apiVersion: seal.100monkeys.ai/v1
kind: CliTool
metadata: {{name: sleeper}}
spec:
  docker_image: {image}
  allowed_subcommands: [sleep]
  default_timeout_seconds: 300
"#,
        image = image()
    ));
    let mut signer = support::Signer::from_vectors();
    // A session of its own: its containers are found by this execution id while other tests run.
    let execution_id = "exec-stopped-with-the-gateway";
    signer.session["execution_id"] = json!(execution_id);
    let dir = tempfile::tempdir().unwrap();
    let url = support::sqlite_url(dir.path());
    let db = Database::connect(&url).await.unwrap();
    let now = chrono::Utc::now();
    db.upsert_session(&signer.session_record(now))
        .await
        .unwrap();
    let mut config = signer.gateway_config(&[("SEAL_GATEWAY_CONTAINER_CLI", &podman())]);
    config.settings.network.drain_seconds = 2;
    let gateway = RunningGateway::start(&config, db, snapshot, Clock::System)
        .await
        .unwrap();
    let body = signer.envelope(
        "sleeper",
        json!({"subcommand": "sleep", "args": ["600"]}),
        "jti-sleeper",
        now.timestamp(),
    );
    let address = format!("http://{}/v1/invoke", gateway.local_addr);
    // Its answer may never arrive (the connection closes with the drain); only the record counts.
    let call =
        tokio::spawn(async move { reqwest::Client::new().post(address).body(body).send().await });
    let started = std::time::Instant::now();
    while cli_support::containers_of(execution_id).is_empty() {
        assert!(
            started.elapsed().as_secs() < 60,
            "the container never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let stopping = std::time::Instant::now();
    gateway.shutdown().await;
    call.abort();
    // Not a timing check: the default drain alone is 30 s, so a shutdown this quick shows that
    // the configured 2 s applied.
    assert!(
        stopping.elapsed().as_secs() < 25,
        "{:?}",
        stopping.elapsed()
    );
    cli_support::assert_no_container(execution_id, "no container left");
    let db = Database::connect(&url).await.unwrap();
    assert_eq!(
        event_types(&db, execution_id).await,
        [
            "ToolCallAuthorized",
            "CliToolInvocationStarted",
            "CliToolInvocationFailed"
        ]
    );
    let Database::Sqlite(pool) = &db else {
        unreachable!()
    };
    let (status, reason): (i64, String) = sqlx::query_as(
        "SELECT payload->>'status', payload->>'reason' FROM gateway_events WHERE event_type = 'CliToolInvocationFailed'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(status, 503);
    assert!(
        reason.contains("the gateway stopped while CLI tool 'sleeper' ran"),
        "{reason}"
    );
    db.close().await;
}
