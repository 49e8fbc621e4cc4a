//! `bench`: how fast a verified invocation is, as ratios measured side by side in one run.
//!
//! Starts a local upstream and the real gateway binary (pinned to core 0, on SQLite and, when
//! `DATABASE_URL` is set, on a fresh Postgres database), drives it from core 1 with pre-signed
//! envelopes, and reports each workload against references measured in the same run: the crypto
//! ceiling, the upstream called directly, the disk alone (the audit writer's commits and
//! checkpoints without SQLite), and with `--upstream-gateway` upstream's own gateway on the same
//! workload. See `bench/README.md`.
//!
//!   cargo run --release -p bench            # the full run, under two minutes
//!   cargo run -p bench -- --smoke           # a tiny run, seconds (CI)

mod affinity;
mod forwarder;
mod gateway;
mod load;
mod manifests;
mod reference;
mod report;
mod signer;
mod upstream;
mod upstream_gateway;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http::Method;
use serde_json::json;
use sqlx::Executor;

use crate::forwarder::Forwarder;
use crate::gateway::Gateway;
use crate::load::{Outcome, Pace, Requests};
use crate::manifests::{DENIED, ONE_STEP, ONE_STEP_CREDENTIAL, ONE_STEP_LIMITED, THREE_STEPS};
use crate::report::{Row, Usage};
use crate::signer::{Call, Signer};

#[derive(Parser)]
#[command(about = "Load generator and side-by-side references for the SEAL Gateway")]
struct Args {
    /// A tiny run that only proves everything still works (seconds; no meaningful figures).
    #[arg(long)]
    smoke: bool,
    /// Requests per closed-loop workload (default 10000; smoke 40).
    #[arg(long)]
    requests: Option<usize>,
    /// Connections of a closed-loop workload, each sending its next request on each answer.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Requests per second of the fixed-rate workloads (default 1000; smoke 200).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds each fixed-rate workload lasts (default 3; smoke 0.3).
    #[arg(long)]
    rate_seconds: Option<f64>,
    /// Workflows loaded for the memory and reload figures (default 2000; smoke 20).
    #[arg(long)]
    workflows: Option<usize>,
    /// The gateway binary (default: built by cargo in this build's profile).
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// Do not pin the gateway and the load generator to separate cores.
    #[arg(long)]
    no_pin: bool,
    /// Upstream's standalone gateway (`cargo install aegis-seal-gateway --version 1.2.0-beta
    /// --locked --root target/upstream-gateway`), measured beside this one on the credential
    /// workload.
    #[arg(long, env = "BENCH_UPSTREAM_GATEWAY")]
    upstream_gateway: Option<PathBuf>,
}

struct Sizes {
    requests: usize,
    concurrency: usize,
    rate: f64,
    rate_requests: usize,
    workflows: usize,
    ceiling_envelopes: usize,
}

impl Sizes {
    fn of(args: &Args) -> Self {
        let (requests, rate, seconds, workflows, ceiling) = if args.smoke {
            (40, 200.0, 0.3, 20, 20)
        } else {
            (10_000, 1000.0, 3.0, 2000, 2000)
        };
        let rate = args.rate.unwrap_or(rate);
        Self {
            requests: args.requests.unwrap_or(requests),
            concurrency: args.concurrency.max(1),
            rate,
            rate_requests: (rate * args.rate_seconds.unwrap_or(seconds)).ceil() as usize,
            workflows: args.workflows.unwrap_or(workflows),
            ceiling_envelopes: ceiling,
        }
    }

    fn closed(&self) -> Pace {
        Pace::Concurrency(self.concurrency)
    }

    fn open(&self) -> Pace {
        Pace::Rate {
            per_second: self.rate,
            connections: 16,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pin = !args.no_pin && affinity::can_pin();
    if pin {
        // Before the runtime starts, so its threads (client and upstream) inherit core 1.
        affinity::pin_current_thread(affinity::CLIENT_CPU).context("pinning the bench")?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args, pin))
}

/// The calls the workloads make.
struct Calls {
    one_step: Call,
    one_step_limited: Call,
    one_step_credential: Call,
    three_steps: Call,
    denied: Call,
}

/// What one gateway (one database) measured.
struct Backend {
    database: &'static str,
    one_step_closed: Outcome,
    one_step_open: Outcome,
    /// The limited workload, closed loop and fixed rate.
    limited_closed: Outcome,
    limited_open: Outcome,
    /// The credential workload, closed loop and fixed rate (SQLite only).
    credential: Option<(Outcome, Outcome)>,
}

/// The credential workload's name, on this gateway and on upstream's.
const CREDENTIAL_WORKLOAD: &str = "1-step + KV credential";
const UPSTREAM_CREDENTIAL_WORKLOAD: &str = "upstream gw 1.2.0-beta: 1-step + KV credential";
/// The limited workload's name.
const LIMITED_WORKLOAD: &str = "1-step + rate_limit, max_concurrent";
/// The references' names: the upstream called directly, and through a proxy that only forwards.
const DIRECT: &str = "upstream direct";
const FORWARDING: &str = "forwarding only";

async fn run(args: Args, pin: bool) -> anyhow::Result<()> {
    let sizes = Sizes::of(&args);
    let binary = match &args.gateway {
        Some(path) => path.clone(),
        None => gateway::binary()?,
    };
    // After the build, which is cargo's time, not the benchmark's.
    let started = Instant::now();
    let signer = Signer::new()?;
    let upstream = upstream::start().await?;
    let calls = Calls {
        one_step: Call {
            tool: ONE_STEP,
            arguments: json!({"name": "bench"}),
        },
        one_step_limited: Call {
            tool: ONE_STEP_LIMITED,
            arguments: json!({"name": "bench"}),
        },
        one_step_credential: Call {
            tool: ONE_STEP_CREDENTIAL,
            arguments: json!({"name": "bench"}),
        },
        three_steps: Call {
            tool: THREE_STEPS,
            arguments: json!({"name": "bench", "team": "platform"}),
        },
        denied: Call {
            tool: DENIED,
            arguments: json!({}),
        },
    };
    let work = tempfile::tempdir()?;
    let mut rows = Vec::new();

    progress("crypto ceiling");
    let envelopes = signer.presign(&calls.one_step, sizes.ceiling_envelopes)?;
    let ceiling = reference::crypto_ceiling(&signer, &envelopes, pin)?;

    // The references that are not gateways: the upstream called directly, and through a proxy
    // that only forwards; each closed, then at the fixed rate.
    let direct = Requests::post_same("/fixed", Bytes::from_static(br#"{"name":"bench"}"#), 0);
    let forwarder = Forwarder::start(upstream, pin)?;
    let mut forwarding_cpu = f64::NAN;
    for (workload, addr) in [(DIRECT, upstream), (FORWARDING, forwarder.addr)] {
        progress(workload);
        for (pace, count) in [
            (sizes.closed(), sizes.requests),
            (sizes.open(), sizes.rate_requests),
        ] {
            let requests = Requests {
                count,
                ..direct.clone()
            };
            let cpu = forwarder.cpu_seconds()?;
            let outcome = load::run(addr, &requests, pace).await?;
            if workload == FORWARDING && matches!(pace, Pace::Concurrency(_)) {
                forwarding_cpu = (forwarder.cpu_seconds()? - cpu) * 1e6 / count.max(1) as f64;
            }
            rows.push(Row {
                workload,
                database: "-",
                pace,
                expected: 200,
                outcome,
                gateway: None,
                verifies: false,
            });
        }
    }
    let (direct_open, forwarding_open) = (rows.len() - 3, rows.len() - 1);

    let gateway_cpu = pin.then_some(affinity::GATEWAY_CPU);
    let runner = Runner {
        binary: &binary,
        signer: &signer,
        upstream,
        sizes: &sizes,
        calls: &calls,
        pin: gateway_cpu,
    };
    let sqlite_dir = work.path().join("sqlite");
    let sqlite_url = format!("sqlite://{}", sqlite_dir.join("gateway.db").display());
    // Before any gateway runs: for a while after one stops, the disk is still discarding its
    // removed WAL (online discard on this mount), and that would be in the floor.
    progress("disk alone");
    let disk = reference::disk_alone(&sqlite_dir, sizes.rate, sizes.rate_requests, pin)?;
    let mut backends = vec![
        runner
            .measure(&sqlite_dir, &sqlite_url, "sqlite", true, &mut rows)
            .await?,
    ];
    let postgres = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty());
    if let Some(url) = &postgres {
        let database = TempDatabase::create(url).await?;
        let measured = runner
            .measure(
                &work.path().join("postgres"),
                &database.url,
                "postgres",
                false,
                &mut rows,
            )
            .await;
        database.drop().await?;
        backends.push(measured?);
    }

    let upstream_gateway = match &args.upstream_gateway {
        Some(binary) => Some(
            runner
                .measure_upstream(binary, &work.path().join("upstream-gateway"), &mut rows)
                .await?,
        ),
        None => None,
    };

    let sqlite_file = |dir: PathBuf| {
        let url = format!("sqlite://{}", dir.join("gateway.db").display());
        (dir, url)
    };
    let mut at_scale = vec![
        runner
            .at_scale(
                "sqlite",
                sqlite_file(work.path().join("scale-sqlite")),
                sqlite_file(work.path().join("reload-sqlite")),
            )
            .await?,
    ];
    if let Some(base) = &postgres {
        // A database each, so that the catalog mirror starts empty, as on a first install.
        let (served, reloaded) = (
            TempDatabase::create(base).await?,
            TempDatabase::create(base).await?,
        );
        let measured = runner
            .at_scale(
                "postgres",
                (work.path().join("scale-postgres"), served.url.clone()),
                (work.path().join("reload-postgres"), reloaded.url.clone()),
            )
            .await;
        served.drop().await?;
        reloaded.drop().await?;
        at_scale.push(measured?);
    }

    let mut out = report::table(&rows, ceiling.per_second());
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "crypto ceiling: {:.0} envelopes/s on one core ({:.1} µs each: one Ed25519 signature and one RS256 token verified by aegis_seal_gateway::infrastructure::auth)",
        ceiling.per_second(),
        ceiling.micros_each()
    );
    let direct = &rows[direct_open].outcome;
    let forwarding = &rows[forwarding_open].outcome;
    let forwarding_closed = &rows[forwarding_open - 1].outcome;
    let _ = writeln!(
        out,
        "forwarding only (hyper's server and the gateway's HttpClient on the gateway's core, each call sent on to the upstream, nothing else): {:.0} req/s at {}, {:.1} µs of CPU a call; at {:.0} req/s p50 {:+.3} ms, p99 {:+.3} ms over the upstream direct",
        forwarding_closed.throughput(),
        sizes.closed(),
        forwarding_cpu,
        sizes.rate,
        forwarding.ms(0.5) - direct.ms(0.5),
        forwarding.ms(0.99) - direct.ms(0.99),
    );
    // The crypto and the forwarding, one after the other on one core: what a gateway that did
    // nothing else per call would serve.
    let bound = 1e6 / (ceiling.micros_each() + forwarding_cpu);
    let _ = writeln!(
        out,
        "verify-and-forward bound: {:.1} µs of crypto and {:.1} µs of forwarding a call in series, {:.0} req/s, {:.2}x the ceiling (the most a gateway that verifies and forwards each call serves on this core)",
        ceiling.micros_each(),
        forwarding_cpu,
        bound,
        bound / ceiling.per_second(),
    );
    for b in &backends {
        let _ = writeln!(
            out,
            "{}: 1-step throughput {:.2}x the ceiling (target >= 0.8), {:.2}x the verify-and-forward bound; added latency at {:.0} req/s p50 {:+.3} ms, p99 {:+.3} ms (target p99 <= 1 ms), over forwarding only p50 {:+.3} ms, p99 {:+.3} ms",
            b.database,
            b.one_step_closed.throughput() / ceiling.per_second(),
            b.one_step_closed.throughput() / bound,
            sizes.rate,
            b.one_step_open.ms(0.5) - direct.ms(0.5),
            b.one_step_open.ms(0.99) - direct.ms(0.99),
            b.one_step_open.ms(0.5) - forwarding.ms(0.5),
            b.one_step_open.ms(0.99) - forwarding.ms(0.99),
        );
    }
    for b in &backends {
        let _ = writeln!(
            out,
            "{}: counting a rate_limit and a max_concurrent ({LIMITED_WORKLOAD}): {:.2}x the 1-step throughput; at {:.0} req/s p50 {:+.3} ms, p99 {:+.3} ms over the 1-step workflow",
            b.database,
            b.limited_closed.throughput() / b.one_step_closed.throughput(),
            sizes.rate,
            b.limited_open.ms(0.5) - b.one_step_open.ms(0.5),
            b.limited_open.ms(0.99) - b.one_step_open.ms(0.99),
        );
    }
    if let (Some((theirs_closed, theirs_open)), Some((ours_closed, ours_open))) =
        (&upstream_gateway, &backends[0].credential)
    {
        let closed_cpu = |workload: &str| {
            rows.iter()
                .find(|r| r.workload == workload && matches!(r.pace, Pace::Concurrency(_)))
                .and_then(Row::cpu_micros_per_request)
                .unwrap_or(f64::NAN)
        };
        let (ours_cpu, theirs_cpu) = (
            closed_cpu(CREDENTIAL_WORKLOAD),
            closed_cpu(UPSTREAM_CREDENTIAL_WORKLOAD),
        );
        // A gateway that cannot keep the rate up queues the calls, and its latencies are then
        // the queue's; say so rather than let them read as service times.
        let behind = |o: &Outcome| {
            if o.throughput() < 0.95 * sizes.rate {
                format!(
                    " (served {:.0} req/s of the {:.0} offered)",
                    o.throughput(),
                    sizes.rate
                )
            } else {
                String::new()
            }
        };
        let _ = writeln!(
            out,
            "upstream's gateway {}, same workload ({CREDENTIAL_WORKLOAD}, sqlite, same core): this gateway {:.2}x its throughput ({:.0} against {:.0} req/s) at {:.2}x less gateway CPU per call; at {:.0} req/s p50 {:.3} against {:.3} ms, p99 {:.3} against {:.3} ms{}{}",
            upstream_gateway::VERSION,
            ours_closed.throughput() / theirs_closed.throughput(),
            ours_closed.throughput(),
            theirs_closed.throughput(),
            theirs_cpu / ours_cpu,
            sizes.rate,
            ours_open.ms(0.5),
            theirs_open.ms(0.5),
            ours_open.ms(0.99),
            theirs_open.ms(0.99),
            behind(ours_open),
            behind(theirs_open),
        );
    }
    let _ = writeln!(
        out,
        "disk alone: a one-call SQLite commit's WAL frames written at {:.0}/s beside a checkpoint's syncs every 25 ms, on core 0: commit p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (what the file system alone adds to a commit)",
        sizes.rate,
        disk.value_at_quantile(0.5) as f64 / 1000.0,
        disk.value_at_quantile(0.99) as f64 / 1000.0,
        disk.max() as f64 / 1000.0,
    );
    for AtScale {
        database,
        memory,
        reload,
    } in &at_scale
    {
        let _ = writeln!(
            out,
            "{} workflows loaded ({database}, idle after start): RSS {:.1} MiB, peak {:.1} MiB (target <= 64 MiB)",
            sizes.workflows, memory.rss, memory.peak
        );
        let _ = writeln!(
            out,
            "reload of {} workflows ({database}), in process: load_folder {:.0} ms + gateway::reload {:.0} ms = {:.0} ms (target < 1 s); through the folder watcher, seen on /ready: {:.0} ms (includes up to 500 ms of polling)",
            reload.workflows,
            ms(reload.load),
            ms(reload.swap),
            ms(reload.load + reload.swap),
            ms(memory.observed_reload),
        );
        let [idle, reloading] = &memory.health;
        let _ = writeln!(
            out,
            "/health at {:.0}/s for {:.1} s ({database}), idle: p99 {:.3} ms, max {:.3} ms; through that reload: p99 {:.3} ms, max {:.3} ms",
            sizes.rate,
            RELOAD_PROBE.as_secs_f64(),
            idle.ms(0.99),
            idle.max_ms(),
            reloading.ms(0.99),
            reloading.max_ms(),
        );
    }
    let _ = writeln!(
        out,
        "machine: {} cores, {}; gateway {}; run took {:.0} s (after building the gateway)",
        affinity::cpus(),
        cpu_model(),
        if pin {
            "pinned to core 0, load generator and upstream on core 1"
        } else {
            "not pinned"
        },
        started.elapsed().as_secs_f64()
    );
    println!("{out}");
    // Not a threshold: a status other than the workload's own means something is broken.
    let unexpected: u64 = rows.iter().map(Row::unexpected).sum();
    if unexpected > 0 {
        bail!("{unexpected} responses had an unexpected status (see the errors column)");
    }
    Ok(())
}

/// One workload against a running gateway: its outcome, and the gateway's CPU, syscalls and peak
/// RSS during it.
async fn measured_run(
    gw: &Gateway,
    workload: &'static str,
    database: &'static str,
    pace: Pace,
    expected: u16,
    requests: Requests,
    verifies: bool,
) -> anyhow::Result<Row> {
    progress(&format!("  {workload} ({pace})"));
    gw.reset_peak_rss()?;
    let (cpu, syscalls) = (gw.cpu_seconds()?, gw.rw_syscalls()?);
    let outcome = load::run(gw.addr, &requests, pace).await?;
    Ok(Row {
        workload,
        database,
        pace,
        expected,
        gateway: Some(Usage {
            cpu_seconds: gw.cpu_seconds()? - cpu,
            peak_rss_mib: gw.peak_rss_mib()?,
            rw_syscalls: gw.rw_syscalls()?.saturating_sub(syscalls),
        }),
        verifies,
        outcome,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A progress line on stderr, stamped with the seconds since the first one.
fn progress(what: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let since = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("bench: {since:6.1}s {what}");
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The figures of a gateway serving many workflows, on one database.
struct AtScale {
    database: &'static str,
    memory: Memory,
    reload: reference::Reload,
}

struct Memory {
    rss: f64,
    peak: f64,
    observed_reload: Duration,
    /// `/health` at the fixed rate for [`RELOAD_PROBE`]: idle, then from just before the folder
    /// is rewritten.
    health: [Outcome; 2],
}

/// How long `/health` is called for, idle and during the folder watcher's reload: longer than
/// the watcher's 500 ms poll plus the reload.
const RELOAD_PROBE: Duration = Duration::from_millis(1500);

/// What every gateway run shares.
struct Runner<'a> {
    binary: &'a Path,
    signer: &'a Signer,
    upstream: std::net::SocketAddr,
    sizes: &'a Sizes,
    calls: &'a Calls,
    pin: Option<usize>,
}

impl Runner<'_> {
    async fn start(
        &self,
        dir: &Path,
        database_url: &str,
        workflows: usize,
    ) -> anyhow::Result<Gateway> {
        let folder = dir.join("manifests");
        manifests::write(&folder, self.upstream, workflows, 1)?;
        let config = dir.join("seal-gateway-config.yaml");
        let addr = gateway::free_addr()?;
        std::fs::write(
            &config,
            manifests::config(addr, database_url, self.signer, self.upstream),
        )?;
        Gateway::start(self.binary, &config, &folder, addr, self.pin).await
    }

    /// Every workload against one gateway; `all` false runs the one-step workflow only.
    async fn measure(
        &self,
        dir: &Path,
        database_url: &str,
        database: &'static str,
        all: bool,
        rows: &mut Vec<Row>,
    ) -> anyhow::Result<Backend> {
        progress(&format!("gateway on {database}"));
        let gw = self.start(dir, database_url, 0).await?;
        let session = serde_json::to_vec(&self.signer.session()?)?;
        let (status, body) =
            load::call(gw.addr, Method::POST, "/v1/seal/sessions", session.into()).await?;
        if !(200..300).contains(&status) {
            bail!(
                "registering the session: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        let s = self.sizes;
        // Warm up: connections to the upstream, the session cache, the allocator.
        let warm = self
            .signer
            .presign(&self.calls.one_step, 200.min(s.requests))?;
        load::run(
            gw.addr,
            &Requests::post_each("/v1/invoke", warm),
            s.closed(),
        )
        .await?;

        let run = async |workload, pace: Pace, expected, requests: Requests, verifies| {
            measured_run(&gw, workload, database, pace, expected, requests, verifies).await
        };
        let invoke = |call: &Call, n| -> anyhow::Result<Requests> {
            Ok(Requests::post_each(
                "/v1/invoke",
                self.signer.presign(call, n)?,
            ))
        };
        let mut measured = Vec::new();
        if all {
            measured.push(
                run(
                    "health",
                    s.closed(),
                    200,
                    Requests::get("/health", s.requests),
                    false,
                )
                .await?,
            );
        }
        let closed = run(
            "1-step workflow",
            s.closed(),
            200,
            invoke(&self.calls.one_step, s.requests)?,
            true,
        )
        .await?;
        let open = run(
            "1-step workflow",
            s.open(),
            200,
            invoke(&self.calls.one_step, s.rate_requests)?,
            true,
        )
        .await?;
        let limited_closed = run(
            LIMITED_WORKLOAD,
            s.closed(),
            200,
            invoke(&self.calls.one_step_limited, s.requests)?,
            true,
        )
        .await?;
        let limited_open = run(
            LIMITED_WORKLOAD,
            s.open(),
            200,
            invoke(&self.calls.one_step_limited, s.rate_requests)?,
            true,
        )
        .await?;
        let mut credential = None;
        if all {
            let closed = run(
                CREDENTIAL_WORKLOAD,
                s.closed(),
                200,
                invoke(&self.calls.one_step_credential, s.requests)?,
                true,
            )
            .await?;
            let open = run(
                CREDENTIAL_WORKLOAD,
                s.open(),
                200,
                invoke(&self.calls.one_step_credential, s.rate_requests)?,
                true,
            )
            .await?;
            credential = Some((closed.outcome.clone(), open.outcome.clone()));
            measured.push(closed);
            measured.push(open);
            let n = s.requests / 2;
            measured.push(
                run(
                    "3-step workflow",
                    s.closed(),
                    200,
                    invoke(&self.calls.three_steps, n)?,
                    true,
                )
                .await?,
            );
            measured.push(
                run(
                    "policy-rejected",
                    s.closed(),
                    403,
                    invoke(&self.calls.denied, n)?,
                    true,
                )
                .await?,
            );
            // One envelope sent again and again: the first is served, every other is a replay.
            let once = self.signer.presign(&self.calls.one_step, 1)?.remove(0);
            load::run(
                gw.addr,
                &Requests::post_same("/v1/invoke", once.clone(), 1),
                s.closed(),
            )
            .await?;
            measured.push(
                run(
                    "replayed",
                    s.closed(),
                    401,
                    Requests::post_same("/v1/invoke", once, n),
                    true,
                )
                .await?,
            );
        }
        gw.stop()?;
        let backend = Backend {
            database,
            one_step_closed: closed.outcome.clone(),
            one_step_open: open.outcome.clone(),
            limited_closed: limited_closed.outcome.clone(),
            limited_open: limited_open.outcome.clone(),
            credential,
        };
        let health = if all { Some(measured.remove(0)) } else { None };
        rows.extend(health);
        rows.push(closed);
        rows.push(open);
        rows.push(limited_closed);
        rows.push(limited_open);
        rows.extend(measured);
        Ok(backend)
    }

    /// Upstream's gateway on the credential workload, after the same warm-up as this one's.
    async fn measure_upstream(
        &self,
        binary: &Path,
        dir: &Path,
        rows: &mut Vec<Row>,
    ) -> anyhow::Result<(Outcome, Outcome)> {
        progress(&format!(
            "upstream's gateway {} on sqlite",
            upstream_gateway::VERSION
        ));
        let gw = upstream_gateway::start(binary, dir, self.signer, self.upstream, self.pin).await?;
        let s = self.sizes;
        let invoke = |n| -> anyhow::Result<Requests> {
            Ok(Requests::post_each(
                "/v1/invoke",
                self.signer.presign(&self.calls.one_step_credential, n)?,
            ))
        };
        load::run(gw.addr, &invoke(200.min(s.requests))?, s.closed()).await?;
        // A fifth of the closed loop: at upstream's pace (about 340 req/s here) the full 10,000
        // outlast the envelopes' 30 s freshness window, and the rest would be refused as stale.
        let closed = (s.requests / 5).max(1);
        let mut measured = Vec::new();
        for (pace, n) in [(s.closed(), closed), (s.open(), s.rate_requests)] {
            let requests = invoke(n)?;
            measured.push(
                measured_run(
                    &gw,
                    UPSTREAM_CREDENTIAL_WORKLOAD,
                    "sqlite",
                    pace,
                    200,
                    requests,
                    true,
                )
                .await?,
            );
        }
        // Upstream has no graceful shutdown (SIGTERM ends it with that signal): killed on drop.
        drop(gw);
        let outcomes = (measured[0].outcome.clone(), measured[1].outcome.clone());
        rows.extend(measured);
        Ok(outcomes)
    }

    /// [`Self::memory`], then [`reference::reload_in_process`], each in a folder and database of
    /// its own: `(folder, database URL)`.
    async fn at_scale(
        &self,
        database: &'static str,
        (served_dir, served_url): (PathBuf, String),
        (reloaded_dir, reloaded_url): (PathBuf, String),
    ) -> anyhow::Result<AtScale> {
        let workflows = self.sizes.workflows;
        progress(&format!("{workflows} workflows loaded ({database})"));
        let memory = self.memory(&served_dir, &served_url, workflows).await?;
        progress(&format!(
            "reload of {workflows} workflows in process ({database})"
        ));
        let reload = reference::reload_in_process(
            &reloaded_dir,
            &reloaded_url,
            self.upstream,
            workflows,
            self.signer,
        )
        .await?;
        Ok(AtScale {
            database,
            memory,
            reload,
        })
    }

    /// RSS with `workflows` workflows loaded, then a folder rewrite timed until `/ready` serves it.
    /// `/health` is called at the fixed rate throughout the reload, and as long again while
    /// nothing changes: a reload that held the runtime would show in the first one's tail.
    async fn memory(
        &self,
        dir: &Path,
        database_url: &str,
        workflows: usize,
    ) -> anyhow::Result<Memory> {
        let gw = self.start(dir, database_url, workflows).await?;
        let rss = gw.rss_mib()?;
        let peak = gw.peak_rss_mib()?;
        let before = gw.snapshot_hash().await?;
        let probe = |count| {
            let addr = gw.addr;
            let pace = self.sizes.open();
            tokio::spawn(
                async move { load::run(addr, &Requests::get("/health", count), pace).await },
            )
        };
        let probe_count = (self.sizes.rate * RELOAD_PROBE.as_secs_f64()).ceil() as usize;
        let idle = probe(probe_count).await??;
        let reloading = probe(probe_count);
        // Written off this thread, which runs the probe's clients.
        let (folder, upstream) = (dir.join("manifests"), self.upstream);
        tokio::task::spawn_blocking(move || manifests::write(&folder, upstream, workflows, 2))
            .await??;
        let start = Instant::now();
        while gw.snapshot_hash().await? == before {
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "the rewritten folder was not served within 30 s:\n{}",
                    gw.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let observed_reload = start.elapsed();
        let reloading = reloading.await??;
        gw.stop()?;
        for outcome in [&idle, &reloading] {
            if outcome.statuses.keys().any(|&status| status != 200) {
                bail!(
                    "/health answered other than 200 around the reload: {:?}",
                    outcome.statuses
                );
            }
        }
        Ok(Memory {
            rss,
            peak,
            observed_reload,
            health: [idle, reloading],
        })
    }
}

/// `base` (a Postgres URL) naming database `name` instead of its own; the query string is kept.
fn with_database(base: &str, name: &str) -> String {
    let (main, query) = match base.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (base, None),
    };
    let authority = main.find("://").map(|i| i + 3).unwrap_or(0);
    let server = match main[authority..].find('/') {
        Some(i) => &main[..authority + i],
        None => main,
    };
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// A database of its own on the `DATABASE_URL` server, dropped after the run.
struct TempDatabase {
    admin: sqlx::PgPool,
    name: String,
    url: String,
}

impl TempDatabase {
    async fn create(base: &str) -> anyhow::Result<Self> {
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(base)
            .await
            .context("connecting to DATABASE_URL")?;
        let name = format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        // The name is ours (hex), so formatting it into the statement is safe.
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        let url = with_database(base, &name);
        Ok(Self { admin, name, url })
    }

    async fn drop(self) -> anyhow::Result<()> {
        self.admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .await?;
        self.admin.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn names_another_database_on_the_same_server() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5433/postgres", "bench_1"),
            "postgres://u:p@127.0.0.1:5433/bench_1"
        );
        assert_eq!(
            with_database("postgres://u@localhost/db?sslmode=disable", "bench_1"),
            "postgres://u@localhost/bench_1?sslmode=disable"
        );
        assert_eq!(
            with_database("postgresql://localhost:5432", "bench_1"),
            "postgresql://localhost:5432/bench_1"
        );
    }
}
