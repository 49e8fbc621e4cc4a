//! What the gateway is measured against, in the same run, and what is timed inside this process:
//!
//! - the crypto ceiling: one Ed25519 envelope signature and one RS256 token verified per
//!   envelope, on one core, through the gateway's own `infrastructure::auth` code;
//! - the disk alone: what the SQLite audit writer's commits and checkpoints ask of the file
//!   system the database is on, at the fixed rate, without SQLite or the gateway;
//! - a snapshot reload of many workflows, through the gateway's own `gateway::reload`.

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use aegis_seal_gateway::application::clock::Clock;
use aegis_seal_gateway::domain::envelope::Envelope;
use aegis_seal_gateway::gateway::RunningGateway;
use aegis_seal_gateway::infrastructure::auth::envelope::{parse_session_key, verify_signature};
use aegis_seal_gateway::infrastructure::auth::token::SealTokenVerifier;
use aegis_seal_gateway::infrastructure::config::{ConfigSources, load_config};
use aegis_seal_gateway::infrastructure::http_client::{HttpClient, HttpClientConfig};
use aegis_seal_gateway::infrastructure::persistence::{CatalogSource, Database};
use aegis_seal_gateway::infrastructure::reload::folder::load_folder;
use anyhow::{Context, anyhow};
use bytes::Bytes;
use hdrhistogram::Histogram;

use crate::signer::{Signer, unix_now};
use crate::{affinity, manifests};

pub struct Ceiling {
    pub envelopes: usize,
    pub elapsed: Duration,
}

impl Ceiling {
    pub fn per_second(&self) -> f64 {
        self.envelopes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn micros_each(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e6 / self.envelopes.max(1) as f64
    }
}

/// Verifies every envelope's signature and token on the gateway's core, as the gateway does; the
/// parse is done beforehand and not timed.
pub fn crypto_ceiling(signer: &Signer, envelopes: &[Bytes], pin: bool) -> anyhow::Result<Ceiling> {
    let session = signer.session()?;
    let key = parse_session_key(session["public_key_b64"].as_str().unwrap_or_default())
        .map_err(|e| anyhow!("session key: {e}"))?;
    let settings = aegis_seal_crds::gateway::AuthSettings {
        seal_jwt_public_key_pem: signer.rs256_public_key_pem.clone(),
        seal_jwt_eddsa_public_key_pem: signer.eddsa_public_key_pem.clone(),
        ..Default::default()
    };
    let tokens = SealTokenVerifier::from_settings(&settings).map_err(|e| anyhow!(e))?;
    let parsed: Vec<Envelope> = envelopes
        .iter()
        .map(|b| Envelope::parse(b))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("parsing an envelope: {e}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if pin {
                    affinity::pin_current_thread(affinity::GATEWAY_CPU)?;
                }
                let now = unix_now();
                let start = Instant::now();
                for envelope in &parsed {
                    verify_signature(envelope, &key).map_err(|e| anyhow!("signature: {e}"))?;
                    tokens
                        .verify(&envelope.security_token, now)
                        .map_err(|e| anyhow!("token: {e}"))?;
                }
                Ok(Ceiling {
                    envelopes: parsed.len(),
                    elapsed: start.elapsed(),
                })
            })
            .join()
            .map_err(|_| anyhow!("the ceiling thread panicked"))?
    })
}

/// WAL frames a one-call SQLite commit writes: the audit rows, their four indexes and the jti
/// (measured from a copy of the gateway's WAL with `dbstat`; bench/README.md, third round).
const FRAMES_PER_COMMIT: usize = 17;
/// A WAL frame's header, written before its 4 KiB page.
const FRAME_HEADER: usize = 24;
/// A WAL frame: its header and one 4 KiB page.
const FRAME_BYTES: usize = FRAME_HEADER + 4096;
/// The commits are written round this region of a file, allocated beforehand, as the gateway's
/// WAL is overwritten in place once it has its bounded size.
const LOG_BYTES: usize = 16 << 20;
/// How often the gateway checkpoints under load, and how many distinct pages one copies then.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(25);
const PAGES_PER_CHECKPOINT: usize = 40;

/// The disk alone, doing what the gateway's SQLite audit writer asks of it, without SQLite or the
/// gateway: on the gateway's core, `commits` commits at `per_second`, each writing a commit's
/// frames to a log file as SQLite does, two `pwrite`s a frame (its header, then its page), and no
/// sync (the gateway runs `synchronous = NORMAL`, so a commit only writes); and beside them every
/// 25 ms a checkpoint's work on its own thread: `fsync` of the log, `PAGES_PER_CHECKPOINT` pages
/// written into a database file, `fsync` of it (SQLite's bundled build syncs with `fsync`).
/// Returns the commits' latencies in µs: what the file system alone adds to a commit, with the
/// checkpoints it must share the disk with. A commit due while the previous one was still writing
/// is timed from when it was due.
pub fn disk_alone(
    dir: &Path,
    per_second: f64,
    commits: usize,
    pin: bool,
) -> anyhow::Result<Histogram<u64>> {
    std::fs::create_dir_all(dir)?;
    let create = |name: &str| {
        let path = dir.join(name);
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))
            .map(|file| (file, path))
    };
    let (log, log_path) = create("disk-probe-wal")?;
    let (db, db_path) = create("disk-probe-db")?;
    log.write_all_at(&vec![0; LOG_BYTES], 0)?;
    log.sync_all()?;
    // Not zeros, so that no layer below can tell the writes apart from real pages.
    let commit: Vec<u8> = (0..FRAMES_PER_COMMIT * FRAME_BYTES)
        .map(|i| (i % 251) as u8)
        .collect();
    let page: Vec<u8> = commit[..4096].to_vec();
    let mut latency = Histogram::new_with_bounds(1, 60_000_000, 3)?;
    let done = std::sync::atomic::AtomicBool::new(false);
    let measured = std::thread::scope(|scope| {
        let checkpointer = scope.spawn(|| -> anyhow::Result<()> {
            if pin {
                affinity::pin_current_thread(affinity::GATEWAY_CPU)?;
            }
            // The database grows as the audit table does: new pages past the end, plus the
            // same hot index pages again.
            let mut next_page = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(CHECKPOINT_EVERY);
                log.sync_all()?;
                for i in 0..PAGES_PER_CHECKPOINT as u64 {
                    let at = if i % 2 == 0 { next_page + i } else { i };
                    db.write_all_at(&page, at * 4096)?;
                }
                next_page += PAGES_PER_CHECKPOINT as u64 / 2;
                db.sync_all()?;
            }
            Ok(())
        });
        let writer = scope.spawn(|| -> anyhow::Result<()> {
            if pin {
                affinity::pin_current_thread(affinity::GATEWAY_CPU)?;
            }
            let interval = Duration::from_secs_f64(1.0 / per_second.max(1e-3));
            let start = Instant::now();
            let mut offset = 0;
            for i in 0..commits {
                let due = start + interval * i as u32;
                let ready = Instant::now();
                let from = if ready > due {
                    due
                } else {
                    std::thread::sleep(due - ready);
                    Instant::now()
                };
                for (n, frame) in commit.chunks(FRAME_BYTES).enumerate() {
                    let at = (offset + n * FRAME_BYTES) as u64;
                    log.write_all_at(&frame[..FRAME_HEADER], at)?;
                    log.write_all_at(&frame[FRAME_HEADER..], at + FRAME_HEADER as u64)?;
                }
                latency.record(from.elapsed().as_micros().max(1) as u64)?;
                offset = (offset + commit.len()) % (LOG_BYTES - commit.len());
            }
            Ok(())
        });
        let written = writer.join();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let checkpointed = checkpointer.join();
        written.map_err(|_| anyhow!("the disk probe's writer panicked"))??;
        checkpointed.map_err(|_| anyhow!("the disk probe's checkpointer panicked"))??;
        anyhow::Ok(())
    });
    std::fs::remove_file(&log_path)?;
    std::fs::remove_file(&db_path)?;
    measured?;
    Ok(latency)
}

pub struct Reload {
    pub workflows: usize,
    /// Reading the manifests folder and compiling it into a snapshot (`load_folder`).
    pub load: Duration,
    /// Compiling templates and JSONPaths, mirroring the catalog tables, swapping (`gateway::reload`).
    pub swap: Duration,
}

/// Starts a gateway in this process serving `workflows` generated workflows, rewrites them, and
/// times the reload the folder watcher would do: `load_folder`, then `gateway::reload`.
pub async fn reload_in_process(
    dir: &Path,
    database_url: &str,
    upstream: SocketAddr,
    workflows: usize,
    signer: &Signer,
) -> anyhow::Result<Reload> {
    let folder = dir.join("manifests");
    manifests::write(&folder, upstream, workflows, 1)?;
    let config_path = dir.join("seal-gateway-config.yaml");
    std::fs::write(
        &config_path,
        manifests::config("127.0.0.1:0".parse()?, database_url, signer, upstream),
    )?;
    let config = load_config(&ConfigSources {
        explicit: Some(&config_path),
        env: &|_| None,
        home: None,
        working_dir: dir.to_path_buf(),
    })?;
    let http = HttpClient::new(HttpClientConfig::default()).map_err(|e| anyhow!("{e}"))?;
    let snapshot = load_folder(&folder, &http).await?;
    let db = Database::connect(config.database_url())
        .await
        .map_err(|e| anyhow!("{e}"))?;
    db.sync_catalog(&snapshot, CatalogSource::Manifest).await?;
    let gateway = RunningGateway::start(&config, db, snapshot, Clock::System)
        .await
        .context("starting the in-process gateway")?;

    manifests::write(&folder, upstream, workflows, 2)?;
    let start = Instant::now();
    let snapshot = load_folder(&folder, &http).await?;
    let loaded = Instant::now();
    gateway
        .reload(snapshot, CatalogSource::Manifest)
        .await
        .map_err(|e| anyhow!("reload: {e}"))?;
    let swapped = Instant::now();
    gateway.shutdown().await;
    Ok(Reload {
        workflows,
        load: loaded - start,
        swap: swapped - loaded,
    })
}
