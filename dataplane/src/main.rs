//! `aegis-seal-gateway`: the data-plane process.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use aegis_seal_crds::Snapshot;
use aegis_seal_gateway::application::clock::Clock;
use aegis_seal_gateway::application::registry;
use aegis_seal_gateway::gateway::RunningGateway;
use aegis_seal_gateway::infrastructure::config::{ConfigSources, load_config};
use aegis_seal_gateway::infrastructure::http_client::{HttpClient, HttpClientConfig};
use aegis_seal_gateway::infrastructure::metrics;
use aegis_seal_gateway::infrastructure::persistence::{
    CatalogSource, Database, checkpoint_signer, parse_public_key,
};
use aegis_seal_gateway::infrastructure::reload::Watchers;
use aegis_seal_gateway::infrastructure::reload::config_map::{self, ConfigMapRef};
use aegis_seal_gateway::infrastructure::reload::folder::{FolderWatch, load_folder};
use aegis_seal_gateway::infrastructure::telemetry;
use aegis_seal_gateway::presentation::metrics::MetricsExporter;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "aegis-seal-gateway", version, about)]
struct Cli {
    /// SealGatewayConfig file (default: discovered as the runbook describes).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Folder of Workflow, CliTool, SecurityContext and ConfigMap manifests to serve; reloaded
    /// when it changes (polled every 500 ms).
    #[arg(long, global = true, env = "SEAL_GATEWAY_MANIFESTS")]
    manifests: Option<PathBuf>,
    /// In a cluster: `<namespace>/<name>` of the ConfigMap holding the snapshot, read and watched
    /// through the Kubernetes API (the operator sets it). `--manifests` is then ignored.
    #[arg(long, global = true, env = "SEAL_GATEWAY_CONFIGMAP")]
    configmap: Option<String>,
    /// Serve the snapshot read at start: do not watch the manifests folder, the config file or
    /// the ConfigMap.
    #[arg(long, global = true)]
    no_watch: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the data plane (the default).
    Serve,
    /// Load and validate the configuration and manifests, then exit.
    Check,
    /// Audit trail integrity and retention (docs/audit.md).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check the hash chain of `gateway_events` and the signed checkpoints, offline. Exits 0 when
    /// the trail is intact, 1 naming the first broken row, 2 when the database cannot be read.
    Verify {
        #[arg(long, env = "SEAL_GATEWAY_DB")]
        database_url: String,
        /// Ed25519 public key the checkpoints must be signed with: a PEM file, PEM text or 32
        /// bytes in base64. Without it signatures are checked against the key stored with each
        /// checkpoint, which shows they are intact but not who made them.
        #[arg(long, allow_hyphen_values = true)]
        public_key: Option<String>,
    },
    /// Remove events created before a time, oldest first, in batches, recording each batch in a
    /// signed purge checkpoint so the chain stays verifiable.
    Purge {
        #[arg(long, env = "SEAL_GATEWAY_DB")]
        database_url: String,
        /// RFC 3339 time: events created before it are removed.
        #[arg(long)]
        before: chrono::DateTime<chrono::FixedOffset>,
        #[arg(long, default_value_t = 5000)]
        batch_size: u32,
        /// PKCS#8 PEM Ed25519 private key for the purge checkpoints; without it a key is
        /// generated for this run and its public key logged.
        #[arg(
            long,
            env = "SEAL_GATEWAY_AUDIT_CHECKPOINT_SIGNING_KEY_PEM",
            hide_env_values = true
        )]
        signing_key_pem: Option<String>,
    },
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if matches!(cli.command, Some(Command::Audit { .. }))
        && let Some(Command::Audit { command }) = cli.command.take()
    {
        // Offline commands: log lines only, never traces, and on stderr, so that a script reads
        // the verdict alone from stdout.
        tracing_subscriber::fmt()
            .with_env_filter(telemetry::log_filter(
                std::env::var("RUST_LOG").ok().as_deref(),
            ))
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
        return runtime.block_on(audit(command));
    }
    // Log lines, and OpenTelemetry traces when an OTLP endpoint is configured; the exporter's
    // requests run on this runtime.
    let telemetry = telemetry::init(&|name| std::env::var(name).ok(), runtime.handle().clone());
    let result = match telemetry {
        Ok(telemetry) => {
            let result = runtime.block_on(run(cli));
            // After the gateway stopped (its last spans closed), before the runtime goes.
            telemetry.shutdown();
            result
        }
        Err(e) => Err(anyhow::Error::msg(e)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line naming what is wrong: the file, the document, the field.
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = load_config(&ConfigSources::process(cli.config.as_deref()))?;
    let metrics_addr =
        metrics::listen_addr(&|name| std::env::var(name).ok()).map_err(anyhow::Error::msg)?;
    let cluster = cli
        .configmap
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(str::parse::<ConfigMapRef>)
        .transpose()?;
    // Fetches the manifests' OpenAPI documents by URL for the first snapshot, trusting what
    // upstream calls trust; the gateway's own client takes over once it runs.
    let http = HttpClient::new(HttpClientConfig::from_settings(&config.settings.outbound))
        .map_err(|e| anyhow::anyhow!("cannot build the outbound HTTP client: {e}"))?;
    let folder = match &cluster {
        Some(_) => None,
        None => cli.manifests.as_deref(),
    };
    // Fingerprinted before the first read, so a change made while starting is not missed.
    let folder_watch = (!cli.no_watch).then(|| FolderWatch::new(folder, config.source.as_deref()));

    let (snapshot, kube) = match &cluster {
        Some(main) => {
            if let Some(dir) = &cli.manifests {
                tracing::warn!(
                    manifests = %dir.display(),
                    "--manifests is ignored: in a cluster the snapshot comes from ConfigMap {main}"
                );
            }
            let client = config_map::client().await?;
            let snapshot = config_map::fetch_at_start(&client, main).await?;
            log_loaded(&snapshot, &format!("ConfigMap {main}"));
            (snapshot, Some((client, main.clone())))
        }
        None => match folder {
            Some(dir) => {
                let snapshot = load_folder(dir, &http).await?;
                log_loaded(&snapshot, &dir.display().to_string());
                (snapshot, None)
            }
            None => (Snapshot::default(), None),
        },
    };
    if matches!(cli.command, Some(Command::Check)) {
        println!("configuration and manifests are valid");
        return Ok(());
    }
    if config.settings.auth.disabled {
        tracing::warn!(
            "OPERATOR AUTHENTICATION IS DISABLED (auth.disabled): anyone who can reach this port may use the operator endpoints; SEAL envelopes are still verified"
        );
    }

    let serving = snapshot.hash();
    let source = match kube {
        Some(_) => CatalogSource::Kubernetes,
        None => CatalogSource::Manifest,
    };
    let db = Database::connect(config.database_url())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let sync = db.sync_catalog(&snapshot, source).await?;
    let gateway = RunningGateway::start(&config, db, snapshot, Clock::System).await?;
    registry::record_replaced(&gateway.state, source, &sync.replaced).await;
    // Unlike upstream, a metrics port that is taken does not stop the gateway: the data path
    // matters more than its scrape endpoint, and Prometheus reports the target down anyway.
    let exporter = match MetricsExporter::start(metrics_addr, gateway.state.clone()).await {
        Ok(exporter) => Some(exporter),
        Err(e) => {
            tracing::error!(
                target: metrics::TARGET,
                "Prometheus metrics exporter cannot listen on {metrics_addr}: {e}; serving without metrics"
            );
            None
        }
    };

    let mut watchers = Watchers::default();
    if let Some(watch) = folder_watch.filter(FolderWatch::watches_anything) {
        // The gateway's client, which takes renewed TLS files on.
        let http = gateway.state.workflows.http().clone();
        let stop = watchers.stop_signal();
        watchers.push(watch.spawn(gateway.state.clone(), config.settings.clone(), http, stop));
    }
    if let Some((client, main)) = kube
        && !cli.no_watch
    {
        let stop = watchers.stop_signal();
        watchers.push(config_map::spawn(
            gateway.state.clone(),
            client,
            main,
            serving,
            stop,
        ));
    }
    let failed = tokio::select! {
        () = shutdown_signal() => None,
        why = watchers.ended() => {
            tracing::error!("{why}; stopping, so that a restart brings hot reload back");
            Some(why)
        }
    };
    watchers.stop().await;
    if let Some(exporter) = exporter {
        exporter.shutdown().await;
    }
    gateway.shutdown().await;
    match failed {
        None => Ok(()),
        Some(why) => Err(anyhow::anyhow!(why)),
    }
}

/// `audit verify` and `audit purge`: offline, against a database URL, without the config file.
async fn audit(command: AuditCommand) -> ExitCode {
    let unreadable = |e: &dyn std::fmt::Display| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    };
    match command {
        AuditCommand::Verify {
            database_url,
            public_key,
        } => {
            let trusted = match public_key.as_deref().map(read_public_key).transpose() {
                Ok(key) => key,
                Err(e) => return unreadable(&e),
            };
            if let Err(e) = existing_sqlite_file(&database_url) {
                return unreadable(&e);
            }
            let db = match Database::connect(&database_url).await {
                Ok(db) => db,
                Err(e) => return unreadable(&e),
            };
            let outcome = db.verify_audit(trusted.as_ref()).await;
            db.close().await;
            match outcome {
                Err(e) => unreadable(&e),
                Ok(Err(broken)) => {
                    println!("audit trail BROKEN at {broken}");
                    ExitCode::FAILURE
                }
                Ok(Ok(report)) => {
                    let range = match (report.first_id, report.last_id) {
                        (Some(first), Some(last)) => format!("ids {first}..={last}"),
                        _ => "no rows".into(),
                    };
                    println!(
                        "audit trail intact: {} chained rows ({range}), {} rows from before the chain, {} checkpoints{}, {} events purged by retention",
                        report.rows,
                        report.unchained_rows,
                        report.checkpoints,
                        if report.trusted_key {
                            " signed by the given key"
                        } else {
                            " (signatures checked against their own stored keys: pass --public-key to check who signed)"
                        },
                        report.purged_events,
                    );
                    ExitCode::SUCCESS
                }
            }
        }
        AuditCommand::Purge {
            database_url,
            before,
            batch_size,
            signing_key_pem,
        } => {
            let settings = aegis_seal_crds::gateway::AuditSettings {
                checkpoint_signing_key_pem: signing_key_pem
                    .filter(|k| !k.trim().is_empty())
                    .map(aegis_seal_crds::SecretValue::Literal),
                ..Default::default()
            };
            let signer = match checkpoint_signer(&settings) {
                Ok(signer) => signer,
                Err(e) => return unreadable(&e),
            };
            let db = match Database::connect(&database_url).await {
                Ok(db) => db,
                Err(e) => return unreadable(&e),
            };
            let outcome = db
                .purge_audit(before.with_timezone(&chrono::Utc), batch_size, &signer)
                .await;
            db.close().await;
            match outcome {
                Ok(n) => {
                    println!("purged {n} audit events created before {before}");
                    ExitCode::SUCCESS
                }
                Err(e) => unreadable(&e),
            }
        }
    }
}

/// Connecting creates a missing SQLite file; verifying one that is not there must fail instead.
fn existing_sqlite_file(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Ok(());
    };
    let path = rest.trim_start_matches("//");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if path.starts_with(':') || std::path::Path::new(path).is_file() {
        Ok(())
    } else {
        Err(format!("{path}: no such SQLite database"))
    }
}

/// A public key given inline (PEM or base64) or as the path of a file holding one.
fn read_public_key(arg: &str) -> Result<ed25519_dalek::VerifyingKey, String> {
    let text = if arg.trim_start().starts_with("-----BEGIN") || !std::path::Path::new(arg).exists()
    {
        arg.to_owned()
    } else {
        std::fs::read_to_string(arg).map_err(|e| format!("{arg}: {e}"))?
    };
    parse_public_key(&text).map_err(|e| format!("--public-key: {e}"))
}

fn log_loaded(s: &Snapshot, origin: &str) {
    tracing::info!(
        origin,
        workflows = s.workflows.len(),
        cli_tools = s.cli_tools.len(),
        security_contexts = s.security_contexts.len(),
        snapshot = %s.hash(),
        "snapshot loaded"
    );
}

/// SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the gateway");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
