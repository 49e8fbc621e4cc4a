//! The CLI invocation pipeline (see the module documentation of [`crate::application::cli`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_seal_crds::compile::{DEFAULT_CPUS, DEFAULT_MEMORY, DEFAULT_PIDS, MAX_TIMEOUT_SECONDS};
use aegis_seal_crds::gateway::CliSettings;
use aegis_seal_crds::{CliToolEntry, SecretValue};
use chrono::Utc;
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::arguments::{self, CliArguments};
use super::judge::{JudgeRequest, SemanticJudge, Verdict};
use super::redact::redact_args;
use super::{
    CLI_TOOL_INVOCATION_COMPLETED, CLI_TOOL_INVOCATION_FAILED, CLI_TOOL_INVOCATION_STARTED,
    CLI_TOOL_SEMANTIC_REJECTED, CONTAINER_CLI_EXECUTION_FAILED, CONTAINER_CLI_NOT_RESOLVED,
    LABEL_EXECUTION_ID, LABEL_TOOL,
};
use crate::application::credential::{
    CredentialRequest, CredentialResolver, RegistryCredential, redact_text,
};
use crate::domain::policy::{POLICY_VIOLATION_BLOCKED, Violation};
use crate::infrastructure::container::{
    self, AuthScope, ContainerCli, Limits, NfsVolume, ResolveError, ResolveInput, RunError,
    RunOutput, RunSpec, VolumeMount, memory_flag,
};
use crate::infrastructure::http_client::HttpClient;
use crate::infrastructure::metrics::{ContainerRun, Metrics};
use crate::infrastructure::persistence::AuditEvent;
use crate::infrastructure::telemetry;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Most bytes kept of each of stdout and stderr (DESIGN §7).
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// Longest container name segment taken from an execution id.
const MAX_NAME_PART: usize = 64;

/// Settings of the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliEngineConfig {
    pub semantic_judge_url: Option<String>,
    /// Sent to the judge as a bearer token.
    pub judge_token: Option<String>,
    pub judge_timeout: Duration,
    pub nfs_server_host: String,
    pub nfs_port: u16,
    pub nfs_mount_port: u16,
    pub max_output_bytes: usize,
}

impl CliEngineConfig {
    pub fn from_settings(settings: &CliSettings) -> Self {
        Self {
            semantic_judge_url: settings.semantic_judge_url.clone(),
            // The config check refuses a `secret_key_ref` here; `env:` was resolved.
            judge_token: match &settings.semantic_judge_token {
                Some(SecretValue::Literal(token)) => Some(token.trim().to_owned()),
                _ => None,
            },
            judge_timeout: Duration::from_millis(settings.semantic_judge_timeout_ms),
            nfs_server_host: settings.nfs_server_host.clone(),
            nfs_port: settings.nfs_port,
            nfs_mount_port: settings.nfs_mount_port,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// One CLI tool call, authorized by the invocation pipeline.
#[derive(Debug, Clone, Copy)]
pub struct CliCall<'a> {
    pub execution_id: &'a str,
    pub tenant_id: Option<&'a str>,
    pub security_context: &'a str,
    pub tool: &'a CliToolEntry,
    pub arguments: &'a Value,
    /// For a HumanDelegated registry credential (B-17).
    pub user_token: Option<&'a str>,
    pub allows_human_delegated: bool,
    /// The SecurityContext's response bound, which lowers the per-stream output cap.
    pub max_response_bytes: Option<u64>,
}

/// A finished run: a non-zero exit code is a result, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

impl CliResult {
    pub fn to_json(&self) -> Value {
        json!({
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
        })
    }
}

/// Why a call produced no result; `body` is what the caller gets.
#[derive(Debug, Clone, PartialEq)]
pub struct CliError {
    pub status: StatusCode,
    pub body: Value,
}

impl CliError {
    fn new(status: StatusCode, body: Value) -> Self {
        Self { status, body }
    }

    fn bad_request(message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, json!({"error": message}))
    }

    /// The runbook's error, with the reason beside it.
    fn execution_failed(status: StatusCode, reason: &str) -> Self {
        Self::new(
            status,
            json!({"error": CONTAINER_CLI_EXECUTION_FAILED, "reason": reason}),
        )
    }
}

/// The result and the events to commit before answering.
#[derive(Debug)]
pub struct CliOutcome {
    pub result: Result<CliResult, CliError>,
    pub events: Vec<AuditEvent>,
}

/// Runs CLI tools; built once at startup and shared by every invocation.
#[derive(Debug)]
pub struct CliEngine {
    cli: Result<ContainerCli, ResolveError>,
    judge: SemanticJudge,
    config: CliEngineConfig,
    /// Where each run's outcome and duration are recorded.
    metrics: Option<Metrics>,
    /// Cancelled when the gateway stops with runs still going: each kills and removes its
    /// container and volumes, and its call is recorded as failed.
    stop: CancellationToken,
}

impl CliEngine {
    pub fn new(
        config: CliEngineConfig,
        cli: Result<ContainerCli, ResolveError>,
        http: HttpClient,
    ) -> Self {
        let judge = SemanticJudge::new(
            config.semantic_judge_url.as_deref(),
            config.judge_token.as_deref(),
            config.judge_timeout,
            http,
        );
        Self {
            cli,
            judge,
            config,
            metrics: None,
            stop: CancellationToken::new(),
        }
    }

    /// Ends the runs still going, and any started later (the gateway is stopping): each kills and
    /// removes its container and volumes, and its call fails with 503 and `CliToolInvocationFailed`.
    pub fn stop_runs(&self) {
        self.stop.cancel();
    }

    /// Records every container run in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Resolves the container CLI from the settings and the process environment and logs the
    /// outcome: `Container CLI resolved`, or the runbook's `failed to resolve container CLI: no
    /// podman or docker on PATH` (an error when CLI tools are configured, a warning otherwise).
    /// The gateway serves on either way (B-10).
    pub async fn start(
        settings: &CliSettings,
        http: HttpClient,
        cli_tools: &[Arc<CliToolEntry>],
    ) -> Self {
        let cli = container::resolve(&ResolveInput::from_process(
            settings.container_cli.as_deref(),
        ))
        .await;
        log_resolution(&cli, cli_tools.len());
        let engine = Self::new(CliEngineConfig::from_settings(settings), cli, http);
        let judged = cli_tools
            .iter()
            .filter(|t| t.require_semantic_judge)
            .count();
        if judged > 0 && !engine.judge.is_configured() {
            tracing::warn!(
                judged_tools = judged,
                "no usable semantic judge URL (cli.semantic_judge_url, SEAL_GATEWAY_SEMANTIC_JUDGE_URL): CLI tools that require the judge are rejected"
            );
        }
        engine
    }

    pub fn container_cli(&self) -> Result<&ContainerCli, &ResolveError> {
        self.cli.as_ref()
    }

    pub fn judge(&self) -> &SemanticJudge {
        &self.judge
    }

    /// The `container_cli` object of `/ready`.
    pub fn readiness(&self) -> Value {
        match &self.cli {
            Ok(cli) => json!({
                "resolved": true,
                "binary": cli.program.display().to_string(),
                "kind": cli.kind.as_str(),
                "version": cli.version,
            }),
            Err(e) => json!({
                "resolved": false,
                "error": CONTAINER_CLI_NOT_RESOLVED,
                "tried": e.tried(),
            }),
        }
    }

    /// Runs one call through the whole pipeline.
    pub async fn invoke(&self, call: CliCall<'_>, credentials: &CredentialResolver) -> CliOutcome {
        let started = Instant::now();
        let mut events = Vec::new();
        let result = self.pipeline(&call, credentials, &mut events).await;
        if let Some(metrics) = &self.metrics
            && let Some(run) = run_outcome(&result)
        {
            metrics.container_run(run, started.elapsed());
        }
        CliOutcome { result, events }
    }

    async fn pipeline(
        &self,
        call: &CliCall<'_>,
        credentials: &CredentialResolver,
        events: &mut Vec<AuditEvent>,
    ) -> Result<CliResult, CliError> {
        let tool = call.tool;
        let exec = call.execution_id;
        tracing::trace!(execution_id = exec, tool = %tool.tool_name, "CLI invocation received");
        let args = arguments::parse(call.arguments).map_err(|message| {
            tracing::debug!(execution_id = exec, tool = %tool.tool_name, "CLI invocation refused: {message}");
            CliError::bad_request(message)
        })?;

        if let Some(reason) = arguments::mount_outside_tenant(&args.fsal_mounts, call.tenant_id) {
            return Err(self.refuse_mount(call, events, reason));
        }
        self.gate(call, &args, events).await?;

        let cli = match &self.cli {
            Ok(cli) => cli.clone(),
            Err(e) => {
                return Err(self.fail(
                    call,
                    events,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("{e} ({})", e.tried()),
                ));
            }
        };
        if tool.docker_image.trim().is_empty() || tool.docker_image.starts_with('-') {
            return Err(self.fail(
                call,
                events,
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!(
                    "docker_image {:?} is not an image reference",
                    tool.docker_image
                ),
            ));
        }

        let registry = match &tool.registry_credential_path {
            None => None,
            Some(path) => {
                let outcome = credentials
                    .resolve_registry(CredentialRequest {
                        execution_id: exec,
                        tenant_id: call.tenant_id,
                        owner_tenant_id: tool.tenant_id.as_deref(),
                        path,
                        user_token: call.user_token,
                        allows_human_delegated: call.allows_human_delegated,
                        // A registry is no upstream a delegated token is bound to: with
                        // `delegated_audiences` set, it gets none.
                        destination: None,
                    })
                    .await;
                events.extend(outcome.events);
                match outcome.result {
                    Ok(credential) => Some(credential),
                    Err(e) => return Err(CliError::new(e.status, e.body())),
                }
            }
        };
        let secrets: Vec<String> = registry
            .as_ref()
            .map(|r| {
                r.secrets
                    .iter()
                    .cloned()
                    .chain([r.password.clone()])
                    .collect()
            })
            .unwrap_or_default();
        let result = self
            .login_and_run(call, &args, cli, registry.as_ref(), &secrets, events)
            .await;
        if let Some(registry) = registry {
            events.extend(credentials.release(registry.leases).await);
        }
        result
    }

    /// The allowlist, then the judge. A rejection is a 403 and a `CliToolSemanticRejected` event.
    async fn gate(
        &self,
        call: &CliCall<'_>,
        args: &CliArguments,
        events: &mut Vec<AuditEvent>,
    ) -> Result<(), CliError> {
        let tool = call.tool;
        let sub = &args.subcommand;
        let rejection = if !tool.allowed_subcommands.iter().any(|s| s == sub) {
            let reason = format!("subcommand '{sub}' is not in allowed_subcommands");
            Some(("allowlist", reason.clone(), reason))
        } else if tool.require_semantic_judge {
            tracing::trace!(execution_id = call.execution_id, tool = %tool.tool_name, subcommand = %sub, "asking the semantic judge");
            let started = Instant::now();
            let span = tracing::info_span!(target: telemetry::TARGET, "cli.semantic_judge");
            let verdict = self
                .judge
                .judge(&JudgeRequest {
                    tool_name: &tool.tool_name,
                    description: &tool.description,
                    subcommand: sub,
                    args: &args.args,
                    execution_id: call.execution_id,
                    security_context: call.security_context,
                    tenant_id: call.tenant_id,
                })
                .instrument(span.clone())
                .await;
            let allowed = matches!(verdict, Verdict::Allowed);
            telemetry::attribute(&span, "seal.judge.allowed", allowed);
            if !allowed {
                telemetry::fail(&span, "rejected by the semantic judge");
            }
            tracing::trace!(execution_id = call.execution_id, tool = %tool.tool_name, verdict = ?verdict, duration_ms = millis(started.elapsed()), "semantic judge verdict");
            match verdict {
                Verdict::Allowed => None,
                Verdict::Rejected { reason, shown } => Some(("semantic_judge", reason, shown)),
            }
        } else {
            None
        };
        let Some((rejected_by, reason, shown)) = rejection else {
            return Ok(());
        };
        tracing::warn!(
            execution_id = call.execution_id,
            tool = %tool.tool_name,
            subcommand = %sub,
            rejected_by,
            rejection_reason = %reason,
            "CLI invocation rejected"
        );
        events.push(self.event(
            CLI_TOOL_SEMANTIC_REJECTED,
            call,
            "rejected_at",
            json!({
                "requested_subcommand": sub,
                "rejection_reason": reason,
                "rejected_by": rejected_by,
                "security_context": call.security_context,
            }),
        ));
        Err(CliError::new(
            StatusCode::FORBIDDEN,
            json!({"error": "forbidden", "reason": shown}),
        ))
    }

    async fn login_and_run(
        &self,
        call: &CliCall<'_>,
        args: &CliArguments,
        cli: ContainerCli,
        registry: Option<&RegistryCredential>,
        secrets: &[String],
        events: &mut Vec<AuditEvent>,
    ) -> Result<CliResult, CliError> {
        let tool = call.tool;
        let exec = call.execution_id;
        let auth = match registry {
            None => None,
            Some(r) => {
                let auth = AuthScope::new().map_err(|e| {
                    self.fail(
                        call,
                        events,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("cannot create a registry auth directory: {e}"),
                    )
                })?;
                tracing::trace!(execution_id = exec, tool = %tool.tool_name, registry = %r.registry, "container registry login");
                if let Err(e) = cli
                    .login(&r.registry, &r.username, &r.password, &auth)
                    .await
                {
                    let reason = format!("container login failed: {}", redact_text(&e, secrets));
                    tracing::warn!(execution_id = exec, tool = %tool.tool_name, registry = %r.registry, "{reason}");
                    events.push(self.event(
                        CLI_TOOL_INVOCATION_FAILED,
                        call,
                        "failed_at",
                        json!({"reason": reason}),
                    ));
                    return Err(CliError::new(
                        StatusCode::BAD_GATEWAY,
                        json!({"error": reason}),
                    ));
                }
                Some(auth)
            }
        };

        let spec = self.run_spec(call, args);
        let shown_args = redact_args(&args.args, secrets);
        tracing::trace!(
            execution_id = exec,
            tool = %tool.tool_name,
            container = %spec.name,
            image = %tool.docker_image,
            subcommand = %args.subcommand,
            args = ?shown_args,
            mounts = spec.mounts.len(),
            timeout_s = spec.timeout.as_secs(),
            "starting CLI tool container"
        );
        events.push(self.event(
            CLI_TOOL_INVOCATION_STARTED,
            call,
            "started_at",
            json!({
                "docker_image": tool.docker_image,
                "command": args.subcommand,
                "args": shown_args,
                "container_name": spec.name,
                "fsal_mounts": args.fsal_mounts.iter().map(|m| json!({
                    "volume_id": m.volume_id, "mount_path": m.mount_path, "read_only": m.read_only,
                    "remote_path": m.remote_path,
                })).collect::<Vec<_>>(),
            }),
        ));

        // Its own task: a caller that goes away must not leave a container or a volume behind.
        let name = spec.name.clone();
        let span = tracing::info_span!(
            target: telemetry::TARGET,
            "cli.container_run",
            seal.tool_name = tool.tool_name.as_str(),
            container.image.name = tool.docker_image.as_str(),
        );
        let task = tokio::spawn(run_container(cli, spec, auth, self.stop.clone()));
        let outcome = match task.instrument(span.clone()).await {
            Ok(outcome) => outcome,
            Err(e) => Err(RunError::Io {
                program: "container task".into(),
                error: e.to_string(),
            }),
        };
        match &outcome {
            Ok(output) => {
                telemetry::attribute(&span, "process.exit.code", i64::from(output.exit_code));
                if output.exit_code != 0 {
                    telemetry::fail(&span, "nonzero exit");
                }
            }
            Err(RunError::TimedOut { .. }) => telemetry::fail(&span, "timed out"),
            Err(_) => telemetry::fail(&span, "container run failed"),
        }
        drop(span);
        match outcome {
            Ok(output) => {
                let result = self.completed(call, &name, output, secrets, events);
                Ok(result)
            }
            Err(RunError::TimedOut { after, cleanup }) => {
                let reason = ended(
                    &format!(
                        "CLI tool '{}' timed out after {}",
                        tool.tool_name,
                        secs(after)
                    ),
                    &name,
                    &cleanup,
                );
                tracing::warn!(execution_id = exec, tool = %tool.tool_name, container = %name, "{reason}");
                events.push(self.event(
                    CLI_TOOL_INVOCATION_COMPLETED,
                    call,
                    "completed_at",
                    json!({
                        "exit_code": null,
                        "stdout_bytes": null,
                        "stderr_bytes": null,
                        "duration_ms": millis(after),
                        "timed_out": true,
                        "container_name": name,
                    }),
                ));
                let mut error = self.fail(call, events, StatusCode::GATEWAY_TIMEOUT, &reason);
                if let Value::Object(body) = &mut error.body {
                    body.insert("timed_out".into(), json!(true));
                    body.insert("timeout_seconds".into(), json!(after.as_secs_f64()));
                }
                Err(error)
            }
            Err(RunError::Stopped { cleanup }) => {
                let reason = ended(
                    &format!(
                        "the gateway stopped while CLI tool '{}' ran",
                        tool.tool_name
                    ),
                    &name,
                    &cleanup,
                );
                Err(self.fail(call, events, StatusCode::SERVICE_UNAVAILABLE, &reason))
            }
            Err(e) => Err(self.fail(
                call,
                events,
                StatusCode::INTERNAL_SERVER_ERROR,
                &e.to_string(),
            )),
        }
    }

    fn completed(
        &self,
        call: &CliCall<'_>,
        name: &str,
        output: RunOutput,
        secrets: &[String],
        events: &mut Vec<AuditEvent>,
    ) -> CliResult {
        let text = |b: &[u8]| redact_text(&String::from_utf8_lossy(b), secrets).into_owned();
        let result = CliResult {
            exit_code: output.exit_code,
            stdout: text(&output.stdout.bytes),
            stderr: text(&output.stderr.bytes),
            stdout_truncated: output.stdout.truncated,
            stderr_truncated: output.stderr.truncated,
        };
        let duration_ms = millis(output.elapsed);
        tracing::info!(
            execution_id = call.execution_id,
            tool = %call.tool.tool_name,
            container = name,
            exit_code = output.exit_code,
            stdout_bytes = output.stdout.total,
            stderr_bytes = output.stderr.total,
            stdout_truncated = output.stdout.truncated,
            stderr_truncated = output.stderr.truncated,
            duration_ms,
            "CLI tool invocation completed"
        );
        events.push(self.event(
            CLI_TOOL_INVOCATION_COMPLETED,
            call,
            "completed_at",
            json!({
                "exit_code": output.exit_code,
                "stdout_bytes": output.stdout.total,
                "stderr_bytes": output.stderr.total,
                "stdout_truncated": output.stdout.truncated,
                "stderr_truncated": output.stderr.truncated,
                "duration_ms": duration_ms,
                "timed_out": false,
                "container_name": name,
            }),
        ));
        result
    }

    /// A workspace outside the caller's tenant: 403, `PolicyViolationBlocked` with SEAL code 2002
    /// (`path_outside_boundary`), before the judge or the container CLI sees the call.
    fn refuse_mount(
        &self,
        call: &CliCall<'_>,
        events: &mut Vec<AuditEvent>,
        reason: String,
    ) -> CliError {
        let violation = Violation::PathOutsideBoundary { path: reason };
        let message = violation.message();
        tracing::warn!(
            execution_id = call.execution_id,
            tool = %call.tool.tool_name,
            violation_type = violation.metric_label(),
            code = violation.code(),
            "{message}"
        );
        if let Some(metrics) = &self.metrics {
            metrics.policy_violation(violation.metric_label());
        }
        events.push(self.event(
            POLICY_VIOLATION_BLOCKED,
            call,
            "blocked_at",
            json!({
                "security_context": call.security_context,
                "violation_type": violation.metric_label(),
                "code": violation.code(),
                "reason": message,
            }),
        ));
        CliError::new(
            StatusCode::FORBIDDEN,
            json!({"error": "forbidden", "reason": message}),
        )
    }

    /// Logs the runbook's `container CLI execution failed`, records `CliToolInvocationFailed`, and
    /// makes the caller's error.
    fn fail(
        &self,
        call: &CliCall<'_>,
        events: &mut Vec<AuditEvent>,
        status: StatusCode,
        reason: &str,
    ) -> CliError {
        tracing::error!(
            execution_id = call.execution_id,
            tool = %call.tool.tool_name,
            status = status.as_u16(),
            reason,
            "{CONTAINER_CLI_EXECUTION_FAILED}"
        );
        events.push(self.event(
            CLI_TOOL_INVOCATION_FAILED,
            call,
            "failed_at",
            json!({"reason": format!("{CONTAINER_CLI_EXECUTION_FAILED}: {reason}"), "status": status.as_u16()}),
        ));
        CliError::execution_failed(status, reason)
    }

    /// A flat event: `execution_id`, `tool_name`, `tenant_id`, the given fields, and `<time_key>`.
    fn event(
        &self,
        event_type: &'static str,
        call: &CliCall<'_>,
        time_key: &str,
        fields: Value,
    ) -> AuditEvent {
        let mut payload = Map::new();
        payload.insert("execution_id".into(), json!(call.execution_id));
        payload.insert("tool_name".into(), json!(call.tool.tool_name));
        payload.insert("tenant_id".into(), json!(call.tenant_id));
        if let Value::Object(fields) = fields {
            payload.extend(fields);
        }
        payload.insert(time_key.into(), json!(Utc::now()));
        AuditEvent::new(event_type, payload)
    }

    fn run_spec(&self, call: &CliCall<'_>, args: &CliArguments) -> RunSpec {
        let tool = call.tool;
        let exec = safe_name(call.execution_id);
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        let run_id = &run_id[..12];
        let name = format!("seal-{exec}-{run_id}");
        let labels = vec![
            (LABEL_EXECUTION_ID.to_owned(), exec.clone()),
            (LABEL_TOOL.to_owned(), safe_name(&tool.tool_name)),
        ];
        let mut volumes = Vec::with_capacity(args.fsal_mounts.len());
        let mut mounts = Vec::with_capacity(args.fsal_mounts.len());
        // The server goes in the device too, not only in `addr=`: podman hands the volume to
        // mount(8), whose NFS helper reads the server from the device (a bare `:<path>` fails
        // there to resolve an empty host name); the kernel, which docker calls, takes either.
        let server = &self.config.nfs_server_host;
        let device_host = if server.contains(':') {
            format!("[{server}]")
        } else {
            server.clone()
        };
        for m in &args.fsal_mounts {
            let volume = format!(
                "aegis-cli-{exec}-{}-{run_id}",
                safe_part(&m.volume_id, MAX_NAME_PART)
            );
            let mut options = format!(
                "addr={},nfsvers=3,proto=tcp,port={},mountport={},soft,timeo=10,nolock",
                self.config.nfs_server_host, self.config.nfs_port, self.config.nfs_mount_port
            );
            if m.read_only {
                options.push_str(",ro");
            }
            volumes.push(NfsVolume {
                name: volume.clone(),
                options,
                device: format!("{device_host}:{}", m.remote_path),
            });
            mounts.push(VolumeMount {
                volume,
                target: m.mount_path.clone(),
                read_only: m.read_only,
            });
        }
        // The workspace is the working directory: `/workspace` if mounted, else the first mount.
        let workdir = mounts
            .iter()
            .find(|m| m.target == "/workspace")
            .or(mounts.first())
            .map(|m| m.target.clone());
        let mut max_output = self.config.max_output_bytes;
        if let Some(limit) = call.max_response_bytes {
            max_output = max_output.min(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        let mut command = Vec::with_capacity(args.args.len() + 1);
        command.push(args.subcommand.clone());
        command.extend(args.args.iter().cloned());
        RunSpec {
            name,
            labels,
            image: tool.docker_image.clone(),
            command,
            limits: limits(tool),
            volumes,
            mounts,
            workdir,
            timeout: Duration::from_secs(u64::from(
                tool.default_timeout_seconds.clamp(1, MAX_TIMEOUT_SECONDS),
            )),
            max_output_bytes: max_output,
        }
    }
}

/// Creates the volumes, runs, then removes the volumes and the auth directory, whatever happened.
async fn run_container(
    cli: ContainerCli,
    spec: RunSpec,
    auth: Option<AuthScope>,
    stop: CancellationToken,
) -> Result<RunOutput, RunError> {
    let labels = spec.labels.clone();
    let mut created = Vec::with_capacity(spec.volumes.len());
    let mut outcome = None;
    for volume in &spec.volumes {
        match cli.create_volume(volume, &labels).await {
            Ok(()) => created.push(volume.name.clone()),
            Err(e) => {
                outcome = Some(Err(RunError::Io {
                    program: cli.program.display().to_string(),
                    error: format!("cannot create the NFS volume {}: {e}", volume.name),
                }));
                break;
            }
        }
    }
    let outcome = match outcome {
        Some(failed) => failed,
        None => cli.run(&spec, auth.as_ref(), &stop).await,
    };
    for volume in created {
        if let Err(e) = cli.remove_volume(&volume).await {
            tracing::warn!(target: container::LOG_TARGET, volume = %volume, error = %e, "cannot remove an NFS volume");
        }
    }
    drop(auth);
    outcome
}

/// Why a run was ended, and what became of its container: `<why>; its container <name> was
/// killed and removed`, or `...; removing its container <name> failed: <e>`.
fn ended(why: &str, name: &str, cleanup: &Result<(), String>) -> String {
    match cleanup {
        Ok(()) => format!("{why}; its container {name} was killed and removed"),
        Err(e) => format!("{why}; removing its container {name} failed: {e}"),
    }
}

/// The tool's limits in the CLI's syntax, with the compile defaults where a value is unusable.
fn limits(tool: &CliToolEntry) -> Limits {
    let r = &tool.resources;
    let memory = r
        .memory
        .as_deref()
        .and_then(memory_flag)
        .or_else(|| memory_flag(DEFAULT_MEMORY))
        .unwrap_or_else(|| "256m".to_owned());
    let cpus = r
        .cpus
        .as_deref()
        .map(str::trim)
        .filter(|c| c.parse::<f64>().is_ok_and(|v| v > 0.0 && v <= 64.0))
        .unwrap_or(DEFAULT_CPUS)
        .to_owned();
    let pids = r.pids.filter(|p| *p > 0).unwrap_or(DEFAULT_PIDS);
    Limits { memory, cpus, pids }
}

/// How a call ended as a container run; `None` when it was refused before any run was attempted
/// (arguments, allowlist, judge, a user token refused for registry credentials): those are not runs.
fn run_outcome(result: &Result<CliResult, CliError>) -> Option<ContainerRun> {
    match result {
        Ok(r) if r.exit_code == 0 => Some(ContainerRun::Ok),
        Ok(_) => Some(ContainerRun::NonzeroExit),
        Err(e) if e.status == StatusCode::GATEWAY_TIMEOUT => Some(ContainerRun::TimedOut),
        Err(e) if e.status.is_server_error() => Some(ContainerRun::Failed),
        Err(_) => None,
    }
}

/// `[A-Za-z0-9_.-]` only (others become `-`), starting with an alphanumeric, at most
/// [`MAX_NAME_PART`] characters: valid in container, volume and label values of podman and docker.
fn safe_name(s: &str) -> String {
    safe_part(s, MAX_NAME_PART)
}

fn safe_part(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    while out.starts_with(['_', '.', '-']) {
        out.remove(0);
    }
    if out.is_empty() {
        out.push('x');
    }
    out
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Logs the resolution outcome (see [`CliEngine::start`]).
fn log_resolution(cli: &Result<ContainerCli, ResolveError>, cli_tools: usize) {
    match cli {
        Ok(cli) => tracing::info!(
            binary = %cli.program.display(),
            kind = cli.kind.as_str(),
            source = cli.source,
            version = %cli.version,
            "Container CLI resolved"
        ),
        Err(e) if cli_tools > 0 => tracing::error!(
            tried = %e.tried(),
            cli_tools,
            "{CONTAINER_CLI_NOT_RESOLVED}"
        ),
        Err(e) => tracing::warn!(tried = %e.tried(), "{CONTAINER_CLI_NOT_RESOLVED}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infrastructure::container::NO_CONTAINER_CLI;

    #[test]
    fn the_runbook_line_is_the_resolver_reason() {
        assert_eq!(
            CONTAINER_CLI_NOT_RESOLVED,
            format!("failed to resolve container CLI: {NO_CONTAINER_CLI}")
        );
    }

    #[test]
    fn names_are_safe_for_the_container_cli() {
        assert_eq!(safe_name("exec-0001"), "exec-0001");
        assert_eq!(safe_name("exec/../1 x"), "exec-..-1-x");
        assert_eq!(safe_name("--rm"), "rm");
        assert_eq!(safe_name(""), "x");
        assert_eq!(safe_name(&"a".repeat(500)).len(), MAX_NAME_PART);
    }
}
