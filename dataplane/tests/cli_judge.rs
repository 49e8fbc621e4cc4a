//! The subcommand allowlist and the semantic judge, against a real HTTP judge on 127.0.0.1. The
//! judge fails closed (B-9): every failure is a 403 and a `CliToolSemanticRejected` event naming
//! the cause, which the runbook's query returns, on SQLite and on Postgres.

mod cli_support;
mod support;

use std::time::{Duration, Instant};

use aegis_seal_gateway::application::cli::{
    CLI_TOOL_INVOCATION_COMPLETED, CLI_TOOL_INVOCATION_STARTED, CLI_TOOL_SEMANTIC_REJECTED,
    CliEngine, JUDGE_DEFAULT_DENIAL, JUDGE_NOT_CONFIGURED,
};
use aegis_seal_gateway::infrastructure::persistence::AuditEvent;
use cli_support::*;
use serde_json::{Value, json};

fn judged_tool() -> aegis_seal_crds::CliToolEntry {
    let mut tool = tool("git-judged", &["echo"]);
    tool.require_semantic_judge = true;
    tool
}

async fn engine_with_judge(url: Option<String>) -> CliEngine {
    let mut cfg = config();
    cfg.semantic_judge_url = url;
    cfg.judge_timeout = Duration::from_secs(1);
    podman_engine(cfg).await
}

/// Asserts a 403 with its `CliToolSemanticRejected` event; returns the event.
fn rejected(out: &aegis_seal_gateway::application::cli::CliOutcome, exec: &str) -> AuditEvent {
    let error = out.result.as_ref().expect_err("rejected");
    assert_eq!(error.status, 403, "{:?}", error.body);
    assert_eq!(error.body["error"], "forbidden");
    let event = only(&out.events, CLI_TOOL_SEMANTIC_REJECTED).clone();
    assert_eq!(event.payload["execution_id"], exec);
    assert_eq!(event.payload["tool_name"], "git-judged");
    assert_eq!(event.payload["requested_subcommand"], "echo");
    assert_eq!(event.payload["security_context"], "aegis-system-default");
    assert!(event.payload["rejected_at"].as_str().is_some());
    assert!(
        events_of(&out.events, CLI_TOOL_INVOCATION_STARTED).is_empty(),
        "nothing ran"
    );
    event
}

#[tokio::test]
async fn every_judge_failure_rejects_the_call_and_the_runbook_query_shows_why() {
    let judge = Judge::start().await;
    let (db, _dir) = sqlite_database().await;
    let creds = credentials(&db);
    let tool = judged_tool();
    let call = json!({"subcommand": "echo", "args": ["--force"]});
    let mut all_events = Vec::new();
    let mut expect = Vec::new();

    // Denied with a reason: the caller and the audit both see the judge's reason.
    let exec = execution_id();
    let out = invoke(
        &engine_with_judge(Some(judge.url("/deny"))).await,
        &creds,
        &tool,
        &exec,
        call.clone(),
    )
    .await;
    let event = rejected(&out, &exec);
    assert_eq!(event.payload["rejection_reason"], JUDGE_DENIAL);
    assert_eq!(event.payload["rejected_by"], "semantic_judge");
    assert_eq!(
        out.result.as_ref().unwrap_err().body["reason"],
        JUDGE_DENIAL
    );
    all_events.extend(out.events);
    expect.push(JUDGE_DENIAL.to_owned());

    // Denied without a reason.
    let exec = execution_id();
    let out = invoke(
        &engine_with_judge(Some(judge.url("/deny-silent"))).await,
        &creds,
        &tool,
        &exec,
        call.clone(),
    )
    .await;
    assert_eq!(
        rejected(&out, &exec).payload["rejection_reason"],
        JUDGE_DEFAULT_DENIAL
    );
    all_events.extend(out.events);
    expect.push(JUDGE_DEFAULT_DENIAL.to_owned());

    // A 500 from the judge.
    let exec = execution_id();
    let out = invoke(
        &engine_with_judge(Some(judge.url("/error"))).await,
        &creds,
        &tool,
        &exec,
        call.clone(),
    )
    .await;
    let reason = rejected(&out, &exec).payload["rejection_reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(reason, "semantic judge returned 500 Internal Server Error");
    let shown = out.result.as_ref().unwrap_err().body["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !shown.contains("127.0.0.1"),
        "the judge's address is not shown to agents: {shown}"
    );
    all_events.extend(out.events);
    expect.push(reason);

    // A judge that hangs past the timeout.
    let exec = execution_id();
    let started = Instant::now();
    let out = invoke(
        &engine_with_judge(Some(judge.url("/hang"))).await,
        &creds,
        &tool,
        &exec,
        call.clone(),
    )
    .await;
    let took = started.elapsed();
    let reason = rejected(&out, &exec).payload["rejection_reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(reason, "semantic judge timeout after 1s");
    assert!(
        took < Duration::from_secs(5),
        "bounded by the judge timeout: {took:?}"
    );
    all_events.extend(out.events);
    expect.push(reason);

    // Nothing listens.
    let exec = execution_id();
    let out = invoke(
        &engine_with_judge(Some(refused_url())).await,
        &creds,
        &tool,
        &exec,
        call.clone(),
    )
    .await;
    let reason = rejected(&out, &exec).payload["rejection_reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.starts_with("semantic judge unreachable: "),
        "{reason}"
    );
    assert!(
        reason.to_lowercase().contains("connect"),
        "names the network error: {reason}"
    );
    all_events.extend(out.events);
    expect.push(reason);

    // An answer that is not a verdict.
    let exec = execution_id();
    let out = invoke(
        &engine_with_judge(Some(judge.url("/garbage"))).await,
        &creds,
        &tool,
        &exec,
        call.clone(),
    )
    .await;
    let reason = rejected(&out, &exec).payload["rejection_reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.starts_with("semantic judge returned an unparseable response"),
        "{reason}"
    );
    all_events.extend(out.events);
    expect.push(reason);

    // No judge configured.
    let exec = execution_id();
    let out = invoke(
        &engine_with_judge(None).await,
        &creds,
        &tool,
        &exec,
        call.clone(),
    )
    .await;
    assert_eq!(
        rejected(&out, &exec).payload["rejection_reason"],
        JUDGE_NOT_CONFIGURED
    );
    all_events.extend(out.events);
    expect.push(JUDGE_NOT_CONFIGURED.to_owned());

    // The runbook's diagnosis query returns every one of them, newest first, on both backends.
    let postgres = postgres_database().await;
    for db in [db, postgres] {
        for event in &all_events {
            db.append_events(std::slice::from_ref(event)).await.unwrap();
            // Distinct timestamps keep ORDER BY created_at DESC deterministic.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let rows = runbook_rejections(&db).await;
        let mut newest_first = expect.clone();
        newest_first.reverse();
        assert_eq!(
            rows,
            newest_first
                .iter()
                .map(|r| ("git-judged".to_owned(), r.clone()))
                .collect::<Vec<_>>(),
            "{:?}",
            db.backend()
        );
    }
}

#[tokio::test]
async fn an_allowing_judge_sees_the_call_and_the_command_runs() {
    let judge = Judge::start().await;
    let (db, _dir) = sqlite_database().await;
    let creds = credentials(&db);
    let tool = judged_tool();
    let exec = execution_id();
    let engine = engine_with_judge(Some(judge.url("/allow"))).await;
    let out = invoke(
        &engine,
        &creds,
        &tool,
        &exec,
        json!({"subcommand": "echo", "args": ["judged", "ok"]}),
    )
    .await;
    let result = out.result.expect("allowed");
    assert_eq!(result.stdout, "judged ok\n");
    assert!(events_of(&out.events, CLI_TOOL_SEMANTIC_REJECTED).is_empty());
    only(&out.events, CLI_TOOL_INVOCATION_COMPLETED);
    let requests = judge.requests();
    assert_eq!(requests.len(), 1);
    let (path, body) = &requests[0];
    assert_eq!(path, "/allow");
    for (k, v) in [
        ("tool_name", json!("git-judged")),
        ("tool", json!("git-judged")),
        ("subcommand", json!("echo")),
        ("args", json!(["judged", "ok"])),
        ("execution_id", json!(exec)),
        ("description", json!(tool.description)),
        ("security_context", json!("aegis-system-default")),
        ("tenant_id", json!("acme")),
    ] {
        assert_eq!(body[k], v, "{k} in {body}");
    }
}

#[tokio::test]
async fn a_judge_behind_authentication_gets_the_configured_bearer_token() {
    let judge = Judge::start().await;
    let (db, _dir) = sqlite_database().await;
    let creds = credentials(&db);
    let tool = judged_tool();
    let call = json!({"subcommand": "echo", "args": ["with", "token"]});

    // Without the token the judge answers 401: the call is rejected and the event says so.
    let exec = execution_id();
    let out = invoke(
        &engine_with_judge(Some(judge.url("/authenticated"))).await,
        &creds,
        &tool,
        &exec,
        call.clone(),
    )
    .await;
    let event = rejected(&out, &exec);
    assert_eq!(
        event.payload["rejection_reason"],
        "semantic judge returned 401 Unauthorized"
    );

    // With it the judge allows, and the command runs.
    let mut cfg = config();
    cfg.semantic_judge_url = Some(judge.url("/authenticated"));
    cfg.judge_token = Some(JUDGE_TOKEN.into());
    let exec = execution_id();
    let out = invoke(&podman_engine(cfg).await, &creds, &tool, &exec, call).await;
    assert_eq!(out.result.expect("allowed").stdout, "with token\n");
    assert!(events_of(&out.events, CLI_TOOL_SEMANTIC_REJECTED).is_empty());
}

#[tokio::test]
async fn the_allowlist_is_exact_and_checked_before_the_judge() {
    let judge = Judge::start().await;
    let (db, _dir) = sqlite_database().await;
    let creds = credentials(&db);
    let tool = judged_tool();
    let engine = engine_with_judge(Some(judge.url("/allow"))).await;
    for sub in ["rm", "ECHO", "echo ", "ech"] {
        let exec = execution_id();
        let out = invoke(&engine, &creds, &tool, &exec, json!({"subcommand": sub})).await;
        let error = out.result.as_ref().expect_err("not allowlisted");
        assert_eq!(error.status, 403);
        let event = only(&out.events, CLI_TOOL_SEMANTIC_REJECTED);
        assert_eq!(
            event.payload["rejection_reason"],
            format!("subcommand '{sub}' is not in allowed_subcommands")
        );
        assert_eq!(event.payload["rejected_by"], "allowlist");
        assert_eq!(event.payload["requested_subcommand"], sub);
    }
    assert!(
        judge.requests().is_empty(),
        "the judge is never asked about a refused subcommand"
    );
}

#[tokio::test]
async fn malformed_arguments_are_refused_before_anything_else() {
    let judge = Judge::start().await;
    let (db, _dir) = sqlite_database().await;
    let creds = credentials(&db);
    let tool = judged_tool();
    let engine = engine_with_judge(Some(judge.url("/allow"))).await;
    for (arguments, message) in [
        (json!({"args": ["x"]}), "CLI invocation requires subcommand"),
        (
            json!({"subcommand": "echo", "args": ["a", 1, true]}),
            "CLI invocation args[1] must be a string, not a number",
        ),
        (
            json!({"subcommand": "echo", "args": {"a": 1}}),
            "CLI invocation args must be an array of strings, not an object",
        ),
        (
            json!({"subcommand": "echo", "fsal_mounts": [{"volume_id": "v"}]}),
            "fsal_mounts[0].mount_path is required",
        ),
        (
            json!("echo"),
            "CLI invocation arguments must be an object, not a string",
        ),
    ] {
        let out = invoke(&engine, &creds, &tool, &execution_id(), arguments).await;
        let error = out.result.expect_err("refused");
        assert_eq!(error.status, 400);
        assert_eq!(error.body, json!({"error": message}));
        assert!(out.events.is_empty());
    }
    assert!(judge.requests().is_empty());
}

#[tokio::test]
async fn arguments_that_look_like_secrets_are_redacted_in_the_started_event() {
    let (db, _dir) = sqlite_database().await;
    let creds = credentials(&db);
    let engine = podman_engine(config()).await;
    let tool = tool("busybox", &["echo"]);
    let token = "ghp_0123456789abcdefghijABCDEFGHIJklmn";
    let out = invoke(
        &engine,
        &creds,
        &tool,
        &execution_id(),
        json!({"subcommand": "echo", "args": ["--password", "hunter2-pw", "--token=abc123", token, "plain"]}),
    )
    .await;
    assert_eq!(
        out.result.unwrap().stdout,
        format!("--password hunter2-pw --token=abc123 {token} plain\n"),
        "the command itself gets the real values"
    );
    let started = only(&out.events, CLI_TOOL_INVOCATION_STARTED);
    assert_eq!(
        started.payload["args"],
        json!([
            "--password",
            "[REDACTED]",
            "--token=[REDACTED]",
            "[REDACTED]",
            "plain"
        ])
    );
    let text = Value::Object(started.payload.clone()).to_string();
    assert!(!text.contains("hunter2-pw") && !text.contains(token) && !text.contains("abc123"));
}
