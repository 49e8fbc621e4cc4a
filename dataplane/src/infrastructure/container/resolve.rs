//! Finding the container CLI at startup: `cli.container_cli`, then `SEAL_GATEWAY_CONTAINER_CLI`,
//! then `podman`, then `docker` on `PATH`; the first candidate whose `--version` succeeds wins.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{CliKind, ContainerCli, LOG_TARGET, NO_CONTAINER_CLI, command_for};

/// Longest `<cli> --version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Env variable consulted directly by the resolver (it is also a config override).
pub const CONTAINER_CLI_ENV: &str = "SEAL_GATEWAY_CONTAINER_CLI";

/// What resolution looks at. [`ResolveInput::from_process`] reads the real environment; tests
/// inject their own `PATH`.
#[derive(Debug, Clone, Default)]
pub struct ResolveInput {
    /// `cli.container_cli`, after env overrides.
    pub configured: Option<String>,
    /// `SEAL_GATEWAY_CONTAINER_CLI`.
    pub env: Option<String>,
    /// `PATH`.
    pub path: Option<OsString>,
}

impl ResolveInput {
    pub fn from_process(configured: Option<&str>) -> Self {
        Self {
            configured: configured.map(str::to_owned),
            env: std::env::var(CONTAINER_CLI_ENV).ok(),
            path: std::env::var_os("PATH"),
        }
    }
}

/// One candidate that was tried, and why it was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub source: &'static str,
    pub problem: String,
}

/// No candidate was usable. Displays as the runbook's reason; [`ResolveError::tried`] says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{NO_CONTAINER_CLI}")]
pub struct ResolveError {
    pub tried: Vec<Candidate>,
}

impl ResolveError {
    /// `podman: not on PATH; docker: not on PATH`, for logs and readiness.
    pub fn tried(&self) -> String {
        self.tried
            .iter()
            .map(|c| format!("{} ({}): {}", c.name, c.source, c.problem))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Resolves and validates the container CLI.
pub async fn resolve(input: &ResolveInput) -> Result<ContainerCli, ResolveError> {
    let clean = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let mut candidates: Vec<(String, &'static str)> = Vec::with_capacity(4);
    if let Some(c) = clean(&input.configured) {
        candidates.push((c, "cli.container_cli"));
    }
    if let Some(c) = clean(&input.env) {
        candidates.push((c, CONTAINER_CLI_ENV));
    }
    // A CLI named in the configuration is the only choice: falling back to another on `PATH`
    // would, say, run rootless podman where the operator chose docker and its host daemon.
    if candidates.is_empty() {
        candidates.push(("podman".into(), "PATH"));
        candidates.push(("docker".into(), "PATH"));
    }

    let mut tried = Vec::new();
    for (name, source) in candidates {
        if tried.iter().any(|c: &Candidate| c.name == name) {
            continue;
        }
        let located = locate(&name, input.path.as_deref());
        let outcome = match located {
            Ok(program) => validate(&program)
                .await
                .map(|(kind, version)| ContainerCli {
                    program,
                    kind,
                    version,
                    source,
                }),
            Err(problem) => Err(problem),
        };
        match outcome {
            Ok(cli) => {
                if !tried.is_empty() {
                    tracing::warn!(
                        target: LOG_TARGET,
                        binary = %cli.program.display(),
                        skipped = %ResolveError { tried: tried.clone() }.tried(),
                        "container CLI resolved after unusable candidates"
                    );
                }
                return Ok(cli);
            }
            Err(problem) => tried.push(Candidate {
                name,
                source,
                problem,
            }),
        }
    }
    Err(ResolveError { tried })
}

/// The binary a candidate names: a path (contains `/`) or a name searched on `path`.
fn locate(name: &str, path: Option<&OsStr>) -> Result<PathBuf, String> {
    if name.contains('/') {
        let mut program = PathBuf::from(name);
        if program.is_relative()
            && let Ok(cwd) = std::env::current_dir()
        {
            program = cwd.join(program);
        }
        return if is_executable(&program) {
            Ok(program)
        } else {
            Err("not found or not executable".into())
        };
    }
    let path = path.unwrap_or_default();
    std::env::split_paths(path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| "not on PATH".into())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `<cli> --version`; the dialect comes from what it prints (a podman-docker shim is podman).
async fn validate(program: &Path) -> Result<(CliKind, String), String> {
    let shown = program.display();
    let mut cmd = command_for(program);
    cmd.arg("--version");
    let output = match tokio::time::timeout(VERSION_TIMEOUT, cmd.output()).await {
        Err(_) => {
            return Err(format!(
                "'{shown} --version' did not finish within {} s",
                VERSION_TIMEOUT.as_secs()
            ));
        }
        Ok(Err(e)) => return Err(format!("failed to execute '{shown} --version': {e}")),
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "'{shown} --version' exited with {}: {}",
            output.status,
            stderr.trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let version = stdout.lines().next().unwrap_or_default().trim().to_owned();
    let lower = version.to_ascii_lowercase();
    let file_name = program
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let kind = if lower.contains("podman") {
        CliKind::Podman
    } else if lower.contains("docker") {
        CliKind::Docker
    } else if file_name.contains("podman") {
        CliKind::Podman
    } else {
        // Unknown dialect: docker's is the conservative one (explicit removal after the run).
        CliKind::Docker
    };
    Ok((kind, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_searched_on_path_and_paths_are_taken_as_given() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("podman");
        std::fs::write(&bin, "#!/bin/sh\necho podman version 9\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(locate("podman", Some(&path)), Ok(bin.clone()));
        assert_eq!(locate("docker", Some(&path)), Err("not on PATH".to_owned()));
        assert_eq!(locate(bin.to_str().unwrap(), None), Ok(bin.clone()));
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        assert!(locate(plain.to_str().unwrap(), None).is_err());
    }
}
