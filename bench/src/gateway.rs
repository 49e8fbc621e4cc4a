//! The real gateway: its binary started as a child process (`serve --config --manifests`), so its
//! CPU time and peak RSS can be read from /proc and it can be pinned to one core.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::Method;
use serde_json::Value;

use crate::{affinity, load};

/// The `aegis-seal-gateway` binary of this build's profile, built (or found up to date) by cargo:
/// one package cannot depend on another's binary.
pub fn binary() -> anyhow::Result<PathBuf> {
    let mut build = Command::new(env!("CARGO"));
    build.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "--quiet",
        "-p",
        "aegis-seal-gateway",
        "--bin",
        "aegis-seal-gateway",
        "--message-format=json",
    ]);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let out = build
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build for the gateway")?;
    if !out.status.success() {
        bail!("cargo build of aegis-seal-gateway failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo did not report the aegis-seal-gateway executable")
}

pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    /// Answers 200 once the process serves: `/ready` here, `/health` for upstream's gateway.
    ready_path: &'static str,
}

impl Gateway {
    /// Starts `binary serve --config <config> --manifests <manifests>` and waits until `/ready`.
    pub async fn start(
        binary: &Path,
        config: &Path,
        manifests: &Path,
        addr: SocketAddr,
        pin: Option<usize>,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--manifests")
            .arg(manifests);
        Self::launch(command, config.with_extension("log"), addr, pin, "/ready").await
    }

    /// Starts `command` with its output in `log`, pinned to `pin`, and waits until
    /// `GET ready_path` answers 200.
    pub async fn launch(
        mut command: Command,
        log: PathBuf,
        addr: SocketAddr,
        pin: Option<usize>,
        ready_path: &'static str,
    ) -> anyhow::Result<Self> {
        let out = std::fs::File::create(&log)?;
        let binary = PathBuf::from(command.get_program());
        command
            .env(
                "RUST_LOG",
                std::env::var("BENCH_GATEWAY_LOG").unwrap_or("info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        if let Some(cpu) = pin {
            affinity::pin_child(&mut command, cpu);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut gateway = Self {
            child,
            addr,
            log,
            ready_path,
        };
        gateway.wait_ready().await?;
        Ok(gateway)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = self.ready().await {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the gateway exited with {status}:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "the gateway was not ready within 60 s:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn ready(&self) -> anyhow::Result<(u16, Bytes)> {
        load::call(self.addr, Method::GET, self.ready_path, Bytes::new()).await
    }

    /// The snapshot hash `/ready` reports.
    pub async fn snapshot_hash(&self) -> anyhow::Result<String> {
        let (_, body) = self.ready().await?;
        let ready: Value = serde_json::from_slice(&body)?;
        Ok(ready["snapshot_hash"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The last lines of the gateway's log, for a failure message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// User plus system CPU seconds so far.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("/proc/<pid>/stat without a command name")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15; `rest` starts at field 3.
        let ticks: u64 = fields
            .get(11..13)
            .context("/proc/<pid>/stat too short")?
            .iter()
            .map(|f| f.parse::<u64>())
            .sum::<Result<u64, _>>()?;
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
        Ok(ticks as f64 / per_second as f64)
    }

    /// Read- and write-family syscalls so far (`syscr` + `syscw` of `/proc/<pid>/io`, which
    /// keeps the counts of threads that have exited): `read`, `pread64`, `write`, `pwrite64`,
    /// `writev`, so each WAL frame's two `pwrite`s, each `writev` of a response or an upstream
    /// request, each eventfd wake-up. Socket `recv` and `send` are not in it. A count, unlike a
    /// time, does not depend on how busy the machine is.
    pub fn rw_syscalls(&self) -> anyhow::Result<u64> {
        let io = self.proc_file("io")?;
        Ok(proc_field(&io, "io", "syscr:")? + proc_field(&io, "io", "syscw:")?)
    }

    fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        proc_field(&self.proc_file("status")?, "status", field)
    }

    fn proc_file(&self, name: &str) -> anyhow::Result<String> {
        let path = format!("/proc/{}/{name}", self.pid());
        std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
    }

    /// Resident memory now, in MiB.
    pub fn rss_mib(&self) -> anyhow::Result<f64> {
        Ok(self.status_kib("VmRSS:")? as f64 / 1024.0)
    }

    /// Peak resident memory since start or the last [`Self::reset_peak_rss`], in MiB.
    pub fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        Ok(self.status_kib("VmHWM:")? as f64 / 1024.0)
    }

    /// Restarts the peak-RSS count (`/proc/<pid>/clear_refs`, value 5), so each workload reports
    /// its own peak.
    pub fn reset_peak_rss(&self) -> anyhow::Result<()> {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5")
            .context("resetting the peak RSS")
    }

    /// SIGTERM, and waits for the orderly stop.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.pid())?;
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the gateway stopped with {status}:\n{}", self.log_tail());
        }
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // After stop() this finds the child already reaped; on an early error it ends it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number after `field` in the text of `/proc/<pid>/<file>` (`status` or `io`), a `kB`
/// unit dropped.
fn proc_field(text: &str, file: &str, field: &str) -> anyhow::Result<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/<pid>/{file}"))
}
