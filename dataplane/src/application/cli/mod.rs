//! CLI tools: an allowlisted command in an ephemeral, network-less, read-only container, optionally
//! approved by a semantic judge that fails closed.
//!
//! Pipeline (reference §7.2, DESIGN B-9/B-10): arguments -> exact subcommand allowlist -> semantic
//! judge (when the tool requires it) -> container CLI present -> registry login (isolated auth
//! file) -> `CliToolInvocationStarted` -> NFS volumes -> run (limits, timeout, bounded output) ->
//! cleanup -> `CliToolInvocationCompleted`. The engine returns the result and the audit events;
//! the caller commits the events before answering.
//!
//! Logs: targets under `aegis_seal_gateway::application::cli` (the runbook recipe
//! `info,aegis_seal_gateway::application::cli=trace`): `trace` for each stage, `debug` for refused
//! arguments, `info` for completed runs, `warn` for rejections and timeouts, `error`
//! `container CLI execution failed` for runs that could not happen or finish. At startup,
//! `failed to resolve container CLI: no podman or docker on PATH` when no container CLI is usable.

pub mod arguments;
pub mod engine;
pub mod judge;
pub mod redact;

pub use arguments::{CliArguments, FsalMount};
pub use engine::{
    CliCall, CliEngine, CliEngineConfig, CliError, CliOutcome, CliResult, DEFAULT_MAX_OUTPUT_BYTES,
};
pub use judge::{JUDGE_DEFAULT_DENIAL, JUDGE_NOT_CONFIGURED, SemanticJudge, Verdict};

pub const CLI_TOOL_INVOCATION_STARTED: &str = "CliToolInvocationStarted";
pub const CLI_TOOL_INVOCATION_COMPLETED: &str = "CliToolInvocationCompleted";
pub const CLI_TOOL_SEMANTIC_REJECTED: &str = "CliToolSemanticRejected";
/// The run could not happen or finish (no container CLI, spawn or login failure, timeout).
pub const CLI_TOOL_INVOCATION_FAILED: &str = "CliToolInvocationFailed";

/// The runbook's error for a CLI invocation that could not run (error body and log).
pub const CONTAINER_CLI_EXECUTION_FAILED: &str = "container CLI execution failed";
/// The runbook's startup line when no container CLI is usable.
pub const CONTAINER_CLI_NOT_RESOLVED: &str =
    "failed to resolve container CLI: no podman or docker on PATH";

/// Label keys put on every container and volume, so a run can be found and killed.
pub const LABEL_EXECUTION_ID: &str = "seal.100monkeys.ai/execution-id";
pub const LABEL_TOOL: &str = "seal.100monkeys.ai/tool";
