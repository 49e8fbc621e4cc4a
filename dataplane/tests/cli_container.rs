//! CLI tools in real podman containers: output and exit codes, the sandbox (read-only root, no
//! network, non-root, pids and memory limits), timeouts that leave nothing behind, concurrent
//! bounded output, NFS workspace mounts, and docker mode through podman's API socket.

mod cli_support;
mod support;

use std::time::{Duration, Instant};

use aegis_seal_crds::{CliToolEntry, ContainerResources};
use aegis_seal_gateway::application::cli::{
    CLI_TOOL_INVOCATION_COMPLETED, CLI_TOOL_INVOCATION_FAILED, CLI_TOOL_INVOCATION_STARTED,
    CONTAINER_CLI_EXECUTION_FAILED, CliEngine, DEFAULT_MAX_OUTPUT_BYTES,
};
use cli_support::*;
use serde_json::{Value, json};

fn sh(script: &str) -> Value {
    json!({"subcommand": "sh", "args": ["-c", script]})
}

#[tokio::test]
async fn output_and_exit_code_are_the_result_and_a_non_zero_exit_is_not_an_error() {
    let engine = podman_engine(config()).await;
    let (db, _dir) = sqlite_database().await;
    let creds = credentials(&db);
    let tool = tool("busybox", &["sh", "echo"]);

    let exec = execution_id();
    let out = invoke(
        &engine,
        &creds,
        &tool,
        &exec,
        json!({"subcommand": "echo", "args": ["hello", "; ls /"]}),
    )
    .await;
    let result = out.result.expect("echo runs");
    assert_eq!(result.exit_code, 0);
    assert_eq!(
        result.stdout, "hello ; ls /\n",
        "argv is passed without a shell"
    );
    assert!(!result.stdout_truncated && !result.stderr_truncated);

    let exec = execution_id();
    let out = invoke(
        &engine,
        &creds,
        &tool,
        &exec,
        sh("echo out; echo err >&2; exit 42"),
    )
    .await;
    let result = out.result.expect("a non-zero exit is a result");
    assert_eq!(
        (
            result.exit_code,
            result.stdout.as_str(),
            result.stderr.as_str()
        ),
        (42, "out\n", "err\n")
    );
    let started = only(&out.events, CLI_TOOL_INVOCATION_STARTED);
    assert_eq!(started.payload["command"], "sh");
    assert_eq!(
        started.payload["args"],
        json!(["-c", "echo out; echo err >&2; exit 42"])
    );
    assert_eq!(started.payload["docker_image"], image());
    assert_eq!(started.payload["execution_id"], exec.as_str());
    let completed = only(&out.events, CLI_TOOL_INVOCATION_COMPLETED);
    for (k, v) in [
        ("execution_id", json!(exec)),
        ("tool_name", json!("busybox")),
        ("exit_code", json!(42)),
        ("stdout_bytes", json!(4)),
        ("stderr_bytes", json!(4)),
        ("timed_out", json!(false)),
    ] {
        assert_eq!(completed.payload[k], v, "{k}");
    }
    assert!(completed.payload["duration_ms"].as_u64().is_some());
    assert!(completed.payload["completed_at"].as_str().is_some());
    db.append_events(&out.events).await.unwrap();
    assert_no_container(&exec, "--rm removed the container");
}

/// Podman's and docker's own failures (exit 125-127 with their own stderr line) are the runbook's
/// `container CLI execution failed`, not a result; a tool that exits 125 itself still is one.
/// `extra` are further tools and arguments that the CLI must fail to run.
async fn the_clis_own_failures_are_not_results(
    engine: &CliEngine,
    extra: &[(&str, CliToolEntry, Value)],
) {
    let (db, _dir) = sqlite_database().await;
    let creds = credentials(&db);
    let tool = tool("busybox", &["sh"]);
    let out = invoke(
        engine,
        &creds,
        &tool,
        &execution_id(),
        sh("echo mine >&2; exit 125"),
    )
    .await;
    let result = out.result.expect("the tool's own 125 is its result");
    assert_eq!((result.exit_code, result.stderr.as_str()), (125, "mine\n"));

    let mut missing_image = tool.clone();
    missing_image.docker_image = "localhost/seal-tests/no-such-image:1".into();
    let runs = [("an image that does not exist", missing_image, sh("true"))];
    for (what, tool, arguments) in runs.iter().chain(extra) {
        let exec = execution_id();
        let out = invoke(engine, &creds, tool, &exec, arguments.clone()).await;
        let error = out.result.expect_err(what);
        assert_eq!(error.status.as_u16(), 500, "{what}");
        assert_eq!(
            error.body["error"], CONTAINER_CLI_EXECUTION_FAILED,
            "{what}"
        );
        assert!(
            error.body["reason"]
                .as_str()
                .unwrap()
                .contains("did not run the container: "),
            "{what}: {}",
            error.body
        );
        only(&out.events, CLI_TOOL_INVOCATION_FAILED);
        assert!(
            events_of(&out.events, CLI_TOOL_INVOCATION_COMPLETED).is_empty(),
            "{what}"
        );
        assert_no_container(&exec, what);
    }
}

#[tokio::test]
async fn podmans_own_failures_are_not_results() {
    // (The docker CLI through podman's API socket reports this one as its own exit code 1.)
    let missing_command = (
        "a command the image does not have",
        tool("busybox", &["no-such-command"]),
        json!({"subcommand": "no-such-command"}),
    );
    the_clis_own_failures_are_not_results(&podman_engine(config()).await, &[missing_command]).await;
}

#[tokio::test]
async fn the_container_is_a_sandbox() {
    let engine = podman_engine(config()).await;
    let (db, _dir) = sqlite_database().await;
    let creds = credentials(&db);
    let tool = tool("busybox", &["sh"]);
    let probe = "id -u; id -g; \
        touch /rootfs-write 2>/dev/null && echo root-writable || echo root-read-only; \
        echo tmp > /tmp/t && cat /tmp/t; \
        ls /sys/class/net | tr '\\n' ' '; echo; \
        wget -q -T 2 -O - http://1.1.1.1/ >/dev/null 2>&1 && echo net-open || echo net-closed; \
        grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status";
    let out = invoke(&engine, &creds, &tool, &execution_id(), sh(probe)).await;
    let result = out.result.expect("the probe runs");
    let lines: Vec<&str> = result.stdout.lines().collect();
    assert_eq!(lines[0], "65534", "non-root user: {}", result.stdout);
    assert_eq!(lines[1], "65534");
    assert_eq!(lines[2], "root-read-only");
    assert_eq!(lines[3], "tmp", "/tmp is a writable tmpfs");
    assert_eq!(lines[4].trim(), "lo", "no network but loopback");
    assert_eq!(lines[5], "net-closed");
    assert!(
        lines[6].ends_with("0000000000000000"),
        "all capabilities dropped: {}",
        lines[6]
    );
    assert!(lines[7].ends_with('1'), "no new privileges: {}", lines[7]);
}

#[tokio::test]
async fn resource_limits_come_from_the_tool() {
    let engine = podman_engine(config()).await;
    let (db, _dir) = sqlite_database().await;
    let creds = credentials(&db);
    let mut tool = tool("busybox", &["sh"]);
    tool.resources = ContainerResources {
        memory: Some("64Mi".into()),
        cpus: Some("0.5".into()),
        pids: Some(32),
    };
    let out = invoke(
        &engine,
        &creds,
        &tool,
        &execution_id(),
        sh("cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
    )
    .await;
    let result = out.result.unwrap();
    assert_eq!(result.stdout, "67108864\n32\n50000\n", "{}", result.stderr);
}

#[tokio::test]
async fn a_fork_bomb_is_stopped_by_the_pids_limit() {
    let engine = podman_engine(config()).await;
    let (db, _dir) = sqlite_database().await;
    let creds = credentials(&db);
    let mut tool = tool("busybox", &["sh"]);
    tool.resources.pids = Some(32);
    let exec = execution_id();
    let out = invoke(
        &engine,
        &creds,
        &tool,
        &exec,
        // After starting the bomb the script forks nothing more: it counts (shell builtins only)
        // while the bomb fills the pids limit, then says it is still in control. A `sleep`
        // there raced the bomb for the last pids and failed now and then, ending the script.
        sh("bomb(){ bomb | bomb & }; bomb; i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo still-in-control"),
    )
    .await;
    let result = out.result.expect("the bomb is contained and the run ends");
    assert!(result.stdout.contains("still-in-control"), "{result:?}");
    assert!(
        result.stderr.contains("can't fork"),
        "the pids limit refused forks: {}",
        result.stderr
    );
    assert_no_container(&exec, "no container left");
}

#[tokio::test]
async fn a_memory_hog_is_killed() {
    let engine = podman_engine(config()).await;
    let (db, _dir) = sqlite_database().await;
    let creds = credentials(&db);
    let mut tool = tool("busybox", &["dd"]);
    tool.resources.memory = Some("32Mi".into());
    let exec = execution_id();
    let out = invoke(
        &engine,
        &creds,
        &tool,
        &exec,
        json!({"subcommand": "dd", "args": ["if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"]}),
    )
    .await;
    let result = out.result.expect("an OOM kill is a result");
    assert_eq!(result.exit_code, 137, "{result:?}");
    assert_eq!(
        only(&out.events, CLI_TOOL_INVOCATION_COMPLETED).payload["exit_code"],
        137
    );
    assert_no_container(&exec, "no container left");
}

#[tokio::test]
async fn a_run_past_its_timeout_is_killed_and_removed() {
    let engine = podman_engine(config()).await;
    let (db, _dir) = sqlite_database().await;
    let creds = credentials(&db);
    let mut tool = tool("sleeper", &["sleep"]);
    tool.default_timeout_seconds = 2;
    let exec = execution_id();
    let started = Instant::now();
    let out = invoke(
        &engine,
        &creds,
        &tool,
        &exec,
        json!({"subcommand": "sleep", "args": ["600"]}),
    )
    .await;
    let took = started.elapsed();
    let error = out.result.expect_err("a timeout is an error");
    assert_eq!(error.status, 504);
    assert_eq!(error.body["error"], CONTAINER_CLI_EXECUTION_FAILED);
    assert_eq!(error.body["timed_out"], true);
    let reason = error.body["reason"].as_str().unwrap();
    assert!(
        reason.contains("timed out after 2s") && reason.contains("killed and removed"),
        "{reason}"
    );
    // Killed at its timeout, not left to its 600 s (the bound is loose: podman is slow under load).
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(300),
        "{took:?}"
    );
    assert_no_container(&exec, "no container left");
    let completed = only(&out.events, CLI_TOOL_INVOCATION_COMPLETED);
    assert_eq!(completed.payload["timed_out"], true);
    assert_eq!(completed.payload["exit_code"], Value::Null);
    let failed = only(&out.events, CLI_TOOL_INVOCATION_FAILED);
    assert!(
        failed.payload["reason"]
            .as_str()
            .unwrap()
            .starts_with(CONTAINER_CLI_EXECUTION_FAILED)
    );
}

#[tokio::test]
async fn a_removal_that_cannot_be_checked_is_not_reported_as_done() {
    let dir = tempfile::tempdir().unwrap();
    let podman = which(&podman()).expect("podman on PATH");
    // A podman whose `ps` fails: after the kill and `rm`, nothing can confirm the container is gone.
    let wrapper = script(
        dir.path(),
        "podman",
        &format!(
            "if [ \"$1\" = ps ]; then echo 'ps is broken' >&2; exit 1; fi\nexec '{}' \"$@\"",
            podman.display()
        ),
    );
    let engine = CliEngine::new(
        config(),
        Ok(resolve(wrapper.to_str().unwrap()).await),
        http(),
    );
    let (db, _dir) = sqlite_database().await;
    let mut tool = tool("sleeper", &["sleep"]);
    tool.default_timeout_seconds = 2;
    let exec = execution_id();
    let out = invoke(
        &engine,
        &credentials(&db),
        &tool,
        &exec,
        json!({"subcommand": "sleep", "args": ["600"]}),
    )
    .await;
    let error = out.result.expect_err("a timeout is an error");
    assert_eq!(error.status, 504);
    let reason = error.body["reason"].as_str().unwrap();
    assert!(
        reason.contains("removing its container") && reason.contains("cannot confirm its removal"),
        "{reason}"
    );
    assert_no_container(&exec, "the real podman removed it");
}

#[tokio::test]
async fn a_run_stopped_with_the_gateway_is_killed_removed_and_recorded() {
    let engine = podman_engine(config()).await;
    let (db, _dir) = sqlite_database().await;
    let creds = credentials(&db);
    let tool = tool("sleeper", &["sleep"]);
    let exec = execution_id();
    let call = invoke(
        &engine,
        &creds,
        &tool,
        &exec,
        json!({"subcommand": "sleep", "args": ["600"]}),
    );
    let stop = async {
        // Stopped once its container runs, well inside its 60 s timeout.
        while containers_of(&exec).is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        engine.stop_runs();
    };
    let (out, ()) = tokio::join!(call, stop);
    let error = out.result.expect_err("a stopped run is an error");
    assert_eq!(error.status, 503);
    assert_eq!(error.body["error"], CONTAINER_CLI_EXECUTION_FAILED);
    let reason = error.body["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("the gateway stopped while CLI tool 'sleeper' ran")
            && reason.ends_with("was killed and removed"),
        "{reason}"
    );
    assert_no_container(&exec, "no container left");
    only(&out.events, CLI_TOOL_INVOCATION_STARTED);
    let failed = only(&out.events, CLI_TOOL_INVOCATION_FAILED);
    assert_eq!(failed.payload["status"], 503);
    assert!(events_of(&out.events, CLI_TOOL_INVOCATION_COMPLETED).is_empty());
    db.append_events(&out.events).await.unwrap();
}

#[tokio::test]
async fn stderr_filling_its_pipe_before_stdout_closes_does_not_deadlock() {
    let engine = podman_engine(config()).await;
    let (db, _dir) = sqlite_database().await;
    let creds = credentials(&db);
    let mut tool = tool("busybox", &["sh"]);
    // A deadlock would end at this timeout, as an error.
    tool.default_timeout_seconds = 60;
    let out = invoke(
        &engine,
        &creds,
        &tool,
        &execution_id(),
        sh("head -c 100000 /dev/zero | tr '\\0' e >&2; echo stdout-after"),
    )
    .await;
    let result = out.result.expect("no deadlock, no timeout");
    assert_eq!(result.stderr.len(), 100_000);
    assert_eq!(result.stdout, "stdout-after\n");
}

#[tokio::test]
async fn output_is_capped_at_one_mebibyte_per_stream_with_a_flag() {
    let engine = podman_engine(config()).await;
    let (db, _dir) = sqlite_database().await;
    let creds = credentials(&db);
    let tool = tool("busybox", &["sh"]);
    let out = invoke(
        &engine,
        &creds,
        &tool,
        &execution_id(),
        sh("head -c 5000000 /dev/zero | tr '\\0' o; head -c 5000000 /dev/zero | tr '\\0' e >&2; echo tail"),
    )
    .await;
    let result = out.result.unwrap();
    assert_eq!(result.stdout.len(), DEFAULT_MAX_OUTPUT_BYTES);
    assert_eq!(result.stderr.len(), DEFAULT_MAX_OUTPUT_BYTES);
    assert!(result.stdout_truncated && result.stderr_truncated);
    assert_eq!(result.exit_code, 0);
    let completed = only(&out.events, CLI_TOOL_INVOCATION_COMPLETED);
    assert_eq!(completed.payload["stdout_bytes"], 5_000_005);
    assert_eq!(completed.payload["stderr_bytes"], 5_000_000);
    assert_eq!(completed.payload["stdout_truncated"], true);
}

#[tokio::test]
async fn nfs_workspace_mounts_are_created_with_their_options_and_removed() {
    require_podman();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("argv.log");
    let wrapper = recording_podman(dir.path(), &log);
    let mut cfg = config();
    cfg.nfs_server_host = "10.1.2.3".into();
    let engine = aegis_seal_gateway::application::cli::CliEngine::new(
        cfg,
        Ok(resolve(wrapper.to_str().unwrap()).await),
        http(),
    );
    let (db, _tmp) = sqlite_database().await;
    let creds = credentials(&db);
    let tool = tool("busybox", &["pwd"]);
    let exec = execution_id();
    let out = invoke(
        &engine,
        &creds,
        &tool,
        &exec,
        json!({"subcommand": "pwd", "fsal_mounts": [
            {"volume_id": "vol-1", "mount_path": "/workspace", "remote_path": "/aegis/volumes/acme/vol-1", "read_only": true},
            {"volume_id": "vol 2", "mount_path": "/data/", "remote_path": "/aegis/volumes/acme/vol-2"}
        ]}),
    )
    .await;
    // No NFS server here: the mount itself fails inside podman, after every argument was accepted,
    // and that is podman's failure, not a result of the tool.
    let error = out
        .result
        .expect_err("a mount that fails is the container CLI's failure");
    assert_eq!(error.status.as_u16(), 500);
    assert_eq!(error.body["error"], CONTAINER_CLI_EXECUTION_FAILED);
    let reason = error.body["reason"].as_str().unwrap();
    assert!(
        reason.contains("did not run the container: Error: "),
        "{reason}"
    );
    assert!(
        !reason.contains("invalid mount option") && !reason.contains("unexpected key"),
        "podman accepted the mount options: {reason}"
    );
    only(&out.events, CLI_TOOL_INVOCATION_FAILED);
    let argv = std::fs::read_to_string(&log).unwrap();
    let creates: Vec<&str> = argv
        .lines()
        .filter(|l| l.starts_with("[volume][create]"))
        .collect();
    assert_eq!(creates.len(), 2, "{argv}");
    assert!(creates[0].contains(
        "[--driver][local][--opt][type=nfs][--opt][o=addr=10.1.2.3,nfsvers=3,proto=tcp,port=2049,mountport=20048,soft,timeo=10,nolock,ro][--opt][device=10.1.2.3:/aegis/volumes/acme/vol-1]"
    ), "{argv}");
    assert!(creates[1].contains("[o=addr=10.1.2.3,nfsvers=3,proto=tcp,port=2049,mountport=20048,soft,timeo=10,nolock][--opt][device=10.1.2.3:/aegis/volumes/acme/vol-2]"), "{argv}");
    let run = argv.lines().find(|l| l.starts_with("[run]")).unwrap();
    assert!(
        run.contains(&format!(
            "[--mount][type=volume,src=aegis-cli-{exec}-vol-1-"
        )),
        "{run}"
    );
    assert!(run.contains(",dst=/workspace,ro=true]"), "{run}");
    assert!(
        run.contains(&format!(
            "[--mount][type=volume,src=aegis-cli-{exec}-vol-2-"
        )),
        "{run}"
    );
    assert!(run.contains(",dst=/data]"), "{run}");
    assert!(run.contains("[-w][/workspace]"), "{run}");
    assert_eq!(
        argv.lines()
            .filter(|l| l.starts_with("[volume][rm][-f]"))
            .count(),
        2,
        "{argv}"
    );
    assert!(
        volumes_of(&exec).is_empty(),
        "volumes removed: {:?}",
        volumes_of(&exec)
    );
    assert_no_container(&exec, "no container left");
}

#[tokio::test]
async fn a_workspace_of_another_tenant_is_refused_before_any_volume_is_made() {
    require_podman();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("argv.log");
    let wrapper = recording_podman(dir.path(), &log);
    let engine = aegis_seal_gateway::application::cli::CliEngine::new(
        config(),
        Ok(resolve(wrapper.to_str().unwrap()).await),
        http(),
    );
    let (db, _tmp) = sqlite_database().await;
    let creds = credentials(&db);
    let tool = tool("busybox", &["pwd"]);
    for remote in ["/aegis/volumes/globex/vol-1", "/"] {
        let exec = execution_id();
        // The caller is tenant `acme` (`invoke`); its own first mount does not make the second one valid.
        let out = invoke(
            &engine,
            &creds,
            &tool,
            &exec,
            json!({"subcommand": "pwd", "fsal_mounts": [
                {"volume_id": "mine", "mount_path": "/workspace", "remote_path": "/aegis/volumes/acme/mine"},
                {"volume_id": "theirs", "mount_path": "/data", "remote_path": remote}
            ]}),
        )
        .await;
        let err = out.result.expect_err("another tenant's workspace");
        assert_eq!(err.status.as_u16(), 403);
        assert_eq!(
            err.body["reason"],
            format!(
                "path outside boundary: fsal_mounts[1].remote_path {remote} is not under /aegis/volumes/acme/"
            )
        );
        let blocked = only(&out.events, "PolicyViolationBlocked");
        assert_eq!(blocked.payload["violation_type"], "path_outside_boundary");
        assert_eq!(blocked.payload["code"], 2002);
        assert_eq!(blocked.payload["tenant_id"], "acme");
        assert_eq!(out.events.len(), 1, "nothing started: {:?}", out.events);
    }
    let argv = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !argv.contains("[volume]") && !argv.contains("[run]"),
        "the container CLI was not asked for anything: {argv}"
    );
}

/// A podman API service for the docker CLI, stopped (by its pid) when dropped.
struct PodmanService {
    child: std::process::Child,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl PodmanService {
    fn start() -> Self {
        require_podman();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("podman.sock");
        let child = std::process::Command::new(podman())
            .args([
                "system",
                "service",
                "--time=0",
                &format!("unix://{}", socket.display()),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "podman system service did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            socket,
            _dir: dir,
        }
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn docker_mode_through_podmans_api_socket_reports_the_real_exit_code() {
    let docker = which("docker").unwrap_or_else(|| {
        panic!("the docker CLI is not on PATH: docker mode is tested with the docker client against podman's API socket")
    });
    let service = PodmanService::start();
    let dir = tempfile::tempdir().unwrap();
    // As a deployment with a mounted /var/run/docker.sock would: DOCKER_HOST is inherited.
    let wrapper = script(
        dir.path(),
        "docker",
        &format!(
            "DOCKER_HOST=unix://{} exec '{}' \"$@\"",
            service.socket.display(),
            docker.display()
        ),
    );
    let cli = resolve(wrapper.to_str().unwrap()).await;
    assert_eq!(
        cli.kind,
        aegis_seal_gateway::infrastructure::container::CliKind::Docker,
        "{cli:?}"
    );
    let engine = aegis_seal_gateway::application::cli::CliEngine::new(config(), Ok(cli), http());
    the_clis_own_failures_are_not_results(&engine, &[]).await;
    let (db, _tmp) = sqlite_database().await;
    let creds = credentials(&db);
    let mut tool = tool("busybox", &["sh", "sleep"]);

    let exec = execution_id();
    let out = invoke(
        &engine,
        &creds,
        &tool,
        &exec,
        sh("echo hi; echo oops >&2; exit 7"),
    )
    .await;
    let result = out.result.expect("docker mode runs");
    assert_eq!(
        result.exit_code, 7,
        "docker run without --rm reports the exit code: {result:?}"
    );
    assert_eq!(
        (result.stdout.as_str(), result.stderr.as_str()),
        ("hi\n", "oops\n")
    );
    assert_no_container(&exec, "removed explicitly");

    let exec = execution_id();
    let out = invoke(
        &engine,
        &creds,
        &tool,
        &exec,
        sh("id -u; touch /x 2>/dev/null || echo read-only"),
    )
    .await;
    assert_eq!(out.result.unwrap().stdout, "65534\nread-only\n");

    tool.default_timeout_seconds = 2;
    let exec = execution_id();
    let out = invoke(
        &engine,
        &creds,
        &tool,
        &exec,
        json!({"subcommand": "sleep", "args": ["600"]}),
    )
    .await;
    assert_eq!(out.result.expect_err("timeout").status, 504);
    assert_no_container(&exec, "killed and removed");
}

#[tokio::test]
async fn concurrent_runs_do_not_interfere() {
    let engine = std::sync::Arc::new(podman_engine(config()).await);
    let (db, _dir) = sqlite_database().await;
    let creds = std::sync::Arc::new(credentials(&db));
    let tool = std::sync::Arc::new(tool("busybox", &["echo"]));
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (engine, creds, tool) = (engine.clone(), creds.clone(), tool.clone());
        tasks.push(tokio::spawn(async move {
            let out = invoke(
                &engine,
                &creds,
                &tool,
                "exec-shared",
                json!({"subcommand": "echo", "args": [i.to_string()]}),
            )
            .await;
            out.result.unwrap().stdout
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), format!("{i}\n"));
    }
}
