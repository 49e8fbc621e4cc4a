//! The container CLI (podman or docker): finding it at startup, and running one hardened,
//! ephemeral container per CLI tool invocation.
//!
//! Every command is an argv passed to the binary directly, never through a shell. Children get a
//! scrubbed environment: the gateway's own settings (`SEAL_GATEWAY_*`, tokens) never reach the CLI,
//! while what the CLI needs to find its engine (`DOCKER_HOST`, `CONTAINER_HOST`, `XDG_*`, ...) does.
//!
//! Logs use the target [`LOG_TARGET`], under `aegis_seal_gateway::application::cli`, so the runbook's
//! "Trace CLI invocation pipeline" recipe (`info,aegis_seal_gateway::application::cli=trace`) shows
//! the container commands along with the rest of the pipeline.

mod resolve;
mod run;

pub use resolve::{Candidate, ResolveError, ResolveInput, resolve};
pub use run::{
    AuthScope, Captured, Limits, NfsVolume, RunError, RunOutput, RunSpec, VolumeMount, memory_flag,
};

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;

/// The log target of this module (see the module documentation).
pub const LOG_TARGET: &str = "aegis_seal_gateway::application::cli::container";

/// The runbook's reason when no usable container CLI exists (logged after
/// `failed to resolve container CLI: `).
pub const NO_CONTAINER_CLI: &str = "no podman or docker on PATH";

/// Which command-line dialect the binary speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CliKind {
    Podman,
    /// The docker CLI, against a Docker engine or podman's Docker-compatible API socket. Runs are
    /// not started with `--rm`: through podman's API `docker run --rm` always reports exit code 0,
    /// so the container is removed explicitly after its exit code was read.
    Docker,
}

impl CliKind {
    /// The CLI's own error, when a run ended before the tool ran: podman and docker exit with 125
    /// when the error is theirs (an unknown image, a refused daemon), 126 when the container could
    /// not start (a volume that would not mount) and 127 when its command does not exist, and then
    /// write their own line to stderr, `Error: ...` from podman, `docker: ...` from docker. A tool
    /// that exits with one of those codes itself is told apart by that line; one that also writes
    /// it is taken for a failed run, its stderr line in the reason.
    pub fn own_failure(self, exit_code: i32, stderr: &[u8]) -> Option<String> {
        if !matches!(exit_code, 125..=127) {
            return None;
        }
        let prefix = match self {
            Self::Podman => "Error: ",
            Self::Docker => "docker: ",
        };
        String::from_utf8_lossy(stderr)
            .lines()
            .find(|line| line.starts_with(prefix))
            .map(|line| line.trim().to_owned())
    }
}

impl CliKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Podman => "podman",
            Self::Docker => "docker",
        }
    }
}

/// A resolved, validated container CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerCli {
    /// Absolute path of the binary.
    pub program: PathBuf,
    pub kind: CliKind,
    /// First line of `<cli> --version`.
    pub version: String,
    /// Where it came from: `cli.container_cli`, `SEAL_GATEWAY_CONTAINER_CLI` or `PATH`.
    pub source: &'static str,
}

/// Environment variables passed to the container CLI; everything else is dropped.
const ENV_EXACT: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "TZ",
    "TMPDIR",
    "REGISTRY_AUTH_FILE",
    "STORAGE_DRIVER",
    "STORAGE_OPTS",
    "BUILDAH_ISOLATION",
    "_CONTAINERS_USERNS_CONFIGURED",
    "_CONTAINERS_ROOTLESS_UID",
];
const ENV_PREFIXES: &[&str] = &["DOCKER_", "CONTAINER", "XDG_", "LC_", "PODMAN_"];

fn passed_to_cli(name: &str) -> bool {
    ENV_EXACT.contains(&name) || ENV_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The scrubbed environment children of the gateway get.
fn child_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| k.to_str().is_some_and(passed_to_cli))
        .collect()
}

impl ContainerCli {
    /// A command for this CLI: scrubbed environment, no stdin, killed if dropped.
    pub fn command(&self) -> tokio::process::Command {
        command_for(&self.program)
    }
}

fn command_for(program: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear()
        .envs(child_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_engine_related_variables_reach_the_cli() {
        assert!(passed_to_cli("DOCKER_HOST"));
        assert!(passed_to_cli("CONTAINER_HOST"));
        assert!(passed_to_cli("CONTAINERS_REGISTRIES_CONF"));
        assert!(passed_to_cli("XDG_RUNTIME_DIR"));
        assert!(passed_to_cli("PATH"));
        assert!(!passed_to_cli("SEAL_GATEWAY_OPENBAO_TOKEN"));
        assert!(!passed_to_cli("BAO_TOKEN"));
        assert!(!passed_to_cli("AWS_SECRET_ACCESS_KEY"));
        assert!(!passed_to_cli("DATABASE_URL"));
    }
}
