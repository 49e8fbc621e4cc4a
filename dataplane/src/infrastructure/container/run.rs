//! One hardened container run, and the commands around it: registry login into an isolated auth
//! file, NFS volumes, and kill-and-remove on timeout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{CliKind, ContainerCli, LOG_TARGET};

/// Longest a housekeeping command (kill, rm, volume create/rm) may take.
const HOUSEKEEPING_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a registry login may take.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes of a housekeeping command's stderr quoted in an error.
const STDERR_EXCERPT: usize = 1024;
/// The unprivileged user every container runs as (`nobody`).
pub const CONTAINER_USER: &str = "65534:65534";
/// The only writable path of a container's root file system.
pub const TMPFS: &str = "/tmp:rw,size=16m";

/// Container limits, in the CLI's syntax (see [`memory_flag`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub memory: String,
    pub cpus: String,
    pub pids: u32,
}

/// A named volume mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    pub volume: String,
    pub target: String,
    pub read_only: bool,
}

/// An NFS volume created before the run and removed after it. Creating it with `volume create
/// --opt ...` passes each option as its own argument, so the comma-separated NFS options need no
/// quoting, and podman (whose `--mount` has no `volume-opt`) and docker read them alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsVolume {
    pub name: String,
    /// The NFS mount options (`o=`), e.g. `addr=10.0.0.2,nfsvers=3,...`.
    pub options: String,
    /// `<server>:<remote_path>` (an IPv6 server in brackets).
    pub device: String,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// Unique per run, so the container can be found and killed.
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub image: String,
    /// The image's entrypoint receives these (the subcommand, then its arguments).
    pub command: Vec<String>,
    pub limits: Limits,
    pub volumes: Vec<NfsVolume>,
    pub mounts: Vec<VolumeMount>,
    pub workdir: Option<String>,
    pub timeout: Duration,
    /// Most bytes kept of each of stdout and stderr; the rest is read and discarded.
    pub max_output_bytes: usize,
}

/// One captured output stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// At most the run's `max_output_bytes`.
    pub bytes: Vec<u8>,
    /// Everything the container wrote, kept or not.
    pub total: u64,
    pub truncated: bool,
}

/// A finished run. A non-zero exit code is a result, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    /// The container's exit code (137 when killed by the OOM killer), or -1 when the CLI process
    /// itself died from a signal.
    pub exit_code: i32,
    pub stdout: Captured,
    pub stderr: Captured,
    pub elapsed: Duration,
}

/// Why a run produced no exit code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("failed to spawn {program}: {error}")]
    Spawn { program: String, error: String },
    #[error("failed to read the output of {program}: {error}")]
    Io { program: String, error: String },
    /// The container CLI failed before the tool ran (see [`CliKind::own_failure`]).
    #[error("{program} did not run the container: {message}")]
    NotRun { program: String, message: String },
    /// The gateway stopped while the tool ran.
    #[error("stopped with the gateway")]
    Stopped {
        /// `Err` when the container could not be confirmed killed and removed.
        cleanup: Result<(), String>,
    },
    #[error("timed out after {}", seconds(*.after))]
    TimedOut {
        after: Duration,
        /// `Err` when the container could not be confirmed killed and removed.
        cleanup: Result<(), String>,
    },
}

/// `2s`, `1.5s`.
pub fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// A Kubernetes memory quantity (`256Mi`, `1Gi`, `512M`, `67108864`) as podman and docker take it
/// (`256m`, `1g`, `512000000b`): their `k`, `m` and `g` are binary units. `None` if unparseable.
pub fn memory_flag(quantity: &str) -> Option<String> {
    let q = quantity.trim();
    let digits = q.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = q.get(..digits)?.parse().ok()?;
    if n == 0 {
        return None;
    }
    let bytes = |unit: u64| n.checked_mul(unit).map(|b| format!("{b}b"));
    match q.get(digits..)? {
        "" => bytes(1),
        "Ki" => Some(format!("{n}k")),
        "Mi" => Some(format!("{n}m")),
        "Gi" => Some(format!("{n}g")),
        "Ti" => n.checked_mul(1024).map(|g| format!("{g}g")),
        "k" | "K" => bytes(1000),
        "M" => bytes(1000 * 1000),
        "G" => bytes(1000 * 1000 * 1000),
        "T" => bytes(1000 * 1000 * 1000 * 1000),
        _ => None,
    }
}

/// A private registry login for one invocation: its own auth file in its own 0700 directory,
/// removed when this is dropped, so concurrent invocations never share (or race on) credentials.
#[derive(Debug)]
pub struct AuthScope {
    dir: PathBuf,
}

impl AuthScope {
    pub fn new() -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("seal-registry-auth-{}", uuid::Uuid::new_v4()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// podman's `--authfile`.
    pub fn auth_file(&self) -> PathBuf {
        self.dir.join("auth.json")
    }
}

impl Drop for AuthScope {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(target: LOG_TARGET, dir = %self.dir.display(), error = %e, "cannot remove a registry auth directory");
        }
    }
}

impl ContainerCli {
    /// A command carrying the invocation's registry login, if any: `--authfile` for podman (added
    /// by the callers), `DOCKER_CONFIG` for docker.
    fn command_with(&self, auth: Option<&AuthScope>) -> tokio::process::Command {
        let mut cmd = self.command();
        if let (CliKind::Docker, Some(auth)) = (self.kind, auth) {
            cmd.env("DOCKER_CONFIG", auth.dir());
        }
        cmd
    }

    /// The `run` argv (without the program).
    pub fn run_argv(&self, spec: &RunSpec, auth: Option<&AuthScope>) -> Vec<String> {
        let mut argv: Vec<String> = vec!["run".into()];
        if self.kind == CliKind::Podman {
            argv.push("--rm".into());
        }
        for flag in [
            "--network",
            "none",
            "--read-only",
            "--security-opt",
            "no-new-privileges",
            "--cap-drop",
            "ALL",
            "--user",
            CONTAINER_USER,
            "--tmpfs",
            TMPFS,
        ] {
            argv.push(flag.into());
        }
        let pids = spec.limits.pids.to_string();
        for (flag, value) in [
            ("--memory", spec.limits.memory.as_str()),
            ("--memory-swap", spec.limits.memory.as_str()),
            ("--cpus", spec.limits.cpus.as_str()),
            ("--pids-limit", pids.as_str()),
            ("--name", spec.name.as_str()),
        ] {
            argv.push(flag.into());
            argv.push(value.into());
        }
        for (k, v) in &spec.labels {
            argv.push("--label".into());
            argv.push(format!("{k}={v}"));
        }
        if let (CliKind::Podman, Some(auth)) = (self.kind, auth) {
            argv.push("--authfile".into());
            argv.push(auth.auth_file().display().to_string());
        }
        for m in &spec.mounts {
            argv.push("--mount".into());
            let mut value = format!("type=volume,src={},dst={}", m.volume, m.target);
            if m.read_only {
                value.push_str(",ro=true");
            }
            argv.push(value);
        }
        if let Some(dir) = &spec.workdir {
            argv.push("-w".into());
            argv.push(dir.clone());
        }
        argv.push(spec.image.clone());
        argv.extend(spec.command.iter().cloned());
        argv
    }

    /// Runs the container: stdout and stderr read concurrently, each kept up to the limit while
    /// streaming; on timeout the container is killed and removed by name.
    /// Runs the container to its end, its timeout, or `stop`; the latter two kill and remove it.
    pub async fn run(
        &self,
        spec: &RunSpec,
        auth: Option<&AuthScope>,
        stop: &CancellationToken,
    ) -> Result<RunOutput, RunError> {
        let argv = self.run_argv(spec, auth);
        let program = self.program.display().to_string();
        tracing::trace!(target: LOG_TARGET, container = %spec.name, program = %program, argc = argv.len(), "starting container");
        let mut cmd = self.command_with(auth);
        cmd.args(&argv);
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| RunError::Spawn {
            program: program.clone(),
            error: e.to_string(),
        })?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let limit = spec.max_output_bytes;
        let finished = tokio::select! {
            finished = tokio::time::timeout(spec.timeout, async {
                tokio::join!(capture(stdout, limit), capture(stderr, limit), child.wait())
            }) => finished,
            () = stop.cancelled() => {
                let cleanup = self.kill_and_remove(&spec.name, &mut child).await;
                return Err(RunError::Stopped { cleanup });
            }
        };
        match finished {
            Ok((Ok(stdout), Ok(stderr), Ok(status))) => {
                let elapsed = started.elapsed();
                if self.kind == CliKind::Docker
                    && let Err(e) = self.remove_container(&spec.name).await
                {
                    tracing::warn!(target: LOG_TARGET, container = %spec.name, error = %e, "cannot remove a finished container");
                }
                let exit_code = status.code().unwrap_or(-1);
                if let Some(message) = self.kind.own_failure(exit_code, &stderr.bytes) {
                    return Err(RunError::NotRun { program, message });
                }
                Ok(RunOutput {
                    exit_code,
                    stdout,
                    stderr,
                    elapsed,
                })
            }
            Ok((out, err, status)) => {
                // Reading a pipe or waiting failed: the container's state is unknown, so end it.
                let error = [out.err(), err.err(), status.err()]
                    .into_iter()
                    .flatten()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                if let Err(e) = self.kill_and_remove(&spec.name, &mut child).await {
                    tracing::warn!(target: LOG_TARGET, container = %spec.name, error = %e, "cannot remove a container after an I/O error");
                }
                Err(RunError::Io { program, error })
            }
            Err(_) => {
                let cleanup = self.kill_and_remove(&spec.name, &mut child).await;
                Err(RunError::TimedOut {
                    after: spec.timeout,
                    cleanup,
                })
            }
        }
    }

    /// Kills the container and the CLI process, then removes the container, and checks it is gone.
    async fn kill_and_remove(
        &self,
        name: &str,
        child: &mut tokio::process::Child,
    ) -> Result<(), String> {
        if let Err(e) = self.housekeeping(&["kill", name], None).await {
            tracing::debug!(target: LOG_TARGET, container = name, error = %e, "kill after timeout");
        }
        if let Err(e) = child.start_kill() {
            tracing::debug!(target: LOG_TARGET, container = name, error = %e, "the CLI process had already exited");
        }
        let _ = tokio::time::timeout(HOUSEKEEPING_TIMEOUT, child.wait()).await;
        // The CLI may still have been creating the container when it was killed: retry briefly.
        let mut last = Ok(());
        for attempt in 0..5u64 {
            last = self.remove_container(name).await;
            match self.container_exists(name).await {
                Ok(false) => return last,
                Ok(true) => {}
                // Not knowing is not "gone": the reason must not claim a removal nobody saw.
                Err(e) => last = Err(format!("cannot confirm its removal: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
        }
        match last {
            Ok(()) => Err(format!("container {name} still exists after removal")),
            Err(e) => Err(e),
        }
    }

    /// `rm -f <name>`; a container that is already gone is not an error.
    pub async fn remove_container(&self, name: &str) -> Result<(), String> {
        match self.housekeeping(&["rm", "-f", name], None).await {
            Err(e) if is_missing(&e) => Ok(()),
            other => other.map(drop),
        }
    }

    async fn container_exists(&self, name: &str) -> Result<bool, String> {
        let filter = format!("name=^{name}$");
        let out = self
            .housekeeping(
                &["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"],
                None,
            )
            .await?;
        Ok(out.lines().any(|l| l.trim() == name))
    }

    /// `login --username <u> --password-stdin <registry>` into the scope's own auth file; the
    /// password goes through stdin, never argv.
    pub async fn login(
        &self,
        registry: &str,
        username: &str,
        password: &str,
        auth: &AuthScope,
    ) -> Result<(), String> {
        let mut cmd = self.command_with(Some(auth));
        cmd.arg("login");
        if self.kind == CliKind::Podman {
            cmd.arg("--authfile").arg(auth.auth_file());
        }
        cmd.args(["--username", username, "--password-stdin", registry])
            .stdin(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("failed to spawn: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            let mut line = Vec::with_capacity(password.len() + 1);
            line.extend_from_slice(password.as_bytes());
            line.push(b'\n');
            stdin
                .write_all(&line)
                .await
                .map_err(|e| format!("cannot pass the password: {e}"))?;
        }
        let output = tokio::time::timeout(LOGIN_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| format!("no answer within {}", seconds(LOGIN_TIMEOUT)))?
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(())
        } else {
            Err(excerpt(&output.stderr, &output.status))
        }
    }

    /// `volume create --driver local --opt type=nfs --opt o=<options> --opt device=<device>`.
    pub async fn create_volume(
        &self,
        volume: &NfsVolume,
        labels: &[(String, String)],
    ) -> Result<(), String> {
        let o = format!("o={}", volume.options);
        let device = format!("device={}", volume.device);
        let mut args: Vec<&str> = vec![
            "volume", "create", "--driver", "local", "--opt", "type=nfs", "--opt", &o, "--opt",
            &device,
        ];
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for l in &labels {
            args.push("--label");
            args.push(l);
        }
        args.push(&volume.name);
        self.housekeeping(&args, None).await.map(drop)
    }

    /// `volume rm -f <name>`; a volume that is already gone is not an error.
    pub async fn remove_volume(&self, name: &str) -> Result<(), String> {
        match self.housekeeping(&["volume", "rm", "-f", name], None).await {
            Err(e) if is_missing(&e) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Runs a short command; its stdout, or its stderr as the error.
    async fn housekeeping(
        &self,
        args: &[&str],
        auth: Option<&AuthScope>,
    ) -> Result<String, String> {
        let mut cmd = self.command_with(auth);
        cmd.args(args);
        tracing::trace!(target: LOG_TARGET, args = ?args, "container CLI command");
        let output = tokio::time::timeout(HOUSEKEEPING_TIMEOUT, cmd.output())
            .await
            .map_err(|_| {
                format!(
                    "`{}` did not finish within {}",
                    args.join(" "),
                    seconds(HOUSEKEEPING_TIMEOUT)
                )
            })?
            .map_err(|e| format!("failed to spawn {}: {e}", self.program.display()))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(excerpt(&output.stderr, &output.status))
        }
    }
}

fn is_missing(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("no such container")
        || e.contains("no such volume")
        || e.contains("no container with name")
}

fn excerpt(stderr: &[u8], status: &std::process::ExitStatus) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        return format!("exited with {status}");
    }
    let mut end = text.len().min(STDERR_EXCERPT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Reads a stream to its end, keeping the first `limit` bytes.
async fn capture<R: AsyncRead + Unpin>(
    reader: Option<R>,
    limit: usize,
) -> std::io::Result<Captured> {
    let mut captured = Captured::default();
    let Some(mut reader) = reader else {
        return Ok(captured);
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(captured);
        }
        captured.total += n as u64;
        let room = limit.saturating_sub(captured.bytes.len());
        if n > room {
            captured.truncated = true;
        }
        captured.bytes.extend_from_slice(&buf[..n.min(room)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_quantities_become_cli_units() {
        assert_eq!(memory_flag("256Mi").as_deref(), Some("256m"));
        assert_eq!(memory_flag("1Gi").as_deref(), Some("1g"));
        assert_eq!(memory_flag("64Ki").as_deref(), Some("64k"));
        assert_eq!(memory_flag("2Ti").as_deref(), Some("2048g"));
        assert_eq!(memory_flag("512M").as_deref(), Some("512000000b"));
        assert_eq!(memory_flag("1G").as_deref(), Some("1000000000b"));
        assert_eq!(memory_flag("67108864").as_deref(), Some("67108864b"));
        assert_eq!(memory_flag("1.5Gi"), None);
        assert_eq!(memory_flag("lots"), None);
        assert_eq!(memory_flag("0Mi"), None);
    }

    fn cli(kind: CliKind) -> ContainerCli {
        ContainerCli {
            program: "/usr/bin/podman".into(),
            kind,
            version: "podman version 4.3.1".into(),
            source: "PATH",
        }
    }

    fn spec() -> RunSpec {
        RunSpec {
            name: "seal-exec-1-abc".into(),
            labels: vec![("seal.100monkeys.ai/tool".into(), "git".into())],
            image: "localhost/tools/git:1".into(),
            command: vec!["log".into(), "--oneline".into(), "; rm -rf /".into()],
            limits: Limits {
                memory: "256m".into(),
                cpus: "0.5".into(),
                pids: 64,
            },
            volumes: vec![],
            mounts: vec![VolumeMount {
                volume: "aegis-cli-exec-1-v1".into(),
                target: "/workspace".into(),
                read_only: true,
            }],
            workdir: Some("/workspace".into()),
            timeout: Duration::from_secs(5),
            max_output_bytes: 1024,
        }
    }

    #[test]
    fn podman_argv_is_hardened_and_shell_free() {
        let argv = cli(CliKind::Podman).run_argv(&spec(), None);
        assert_eq!(
            argv.join(" "),
            "run --rm --network none --read-only --security-opt no-new-privileges --cap-drop ALL \
             --user 65534:65534 --tmpfs /tmp:rw,size=16m --memory 256m --memory-swap 256m --cpus 0.5 \
             --pids-limit 64 --name seal-exec-1-abc --label seal.100monkeys.ai/tool=git \
             --mount type=volume,src=aegis-cli-exec-1-v1,dst=/workspace,ro=true -w /workspace \
             localhost/tools/git:1 log --oneline ; rm -rf /"
        );
        // The shell metacharacters stay one argument.
        assert_eq!(argv.last().map(String::as_str), Some("; rm -rf /"));
    }

    #[test]
    fn docker_argv_has_no_rm_and_auth_goes_through_the_environment() {
        let auth = AuthScope::new().unwrap();
        let argv = cli(CliKind::Docker).run_argv(&spec(), Some(&auth));
        assert_eq!(argv[..3], ["run", "--network", "none"]);
        assert!(!argv.iter().any(|a| a == "--rm" || a == "--authfile"));
        let argv = cli(CliKind::Podman).run_argv(&spec(), Some(&auth));
        let i = argv.iter().position(|a| a == "--authfile").unwrap();
        assert!(argv[i + 1].starts_with(auth.dir().to_str().unwrap()));
        let dir = auth.dir().to_owned();
        drop(auth);
        assert!(!dir.exists());
    }

    #[tokio::test]
    async fn capture_keeps_the_limit_and_counts_the_rest() {
        let data = vec![b'x'; 200_000];
        let c = capture(Some(&data[..]), 1000).await.unwrap();
        assert_eq!(c.bytes.len(), 1000);
        assert_eq!(c.total, 200_000);
        assert!(c.truncated);
        let c = capture(Some(&data[..10]), 1000).await.unwrap();
        assert_eq!((c.bytes.len(), c.truncated), (10, false));
    }
}
