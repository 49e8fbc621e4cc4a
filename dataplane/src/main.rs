//! `aegis-seal-gateway`: the data-plane process.

use std::path::PathBuf;
use std::process::ExitCode;

use aegis_seal_crds::Snapshot;
use aegis_seal_gateway::application::catalog::with_default_contexts;
use aegis_seal_gateway::application::clock::Clock;
use aegis_seal_gateway::gateway::RunningGateway;
use aegis_seal_gateway::infrastructure::config::{ConfigSources, load_config};
use aegis_seal_gateway::infrastructure::http_client::{HttpClient, HttpClientConfig};
use aegis_seal_gateway::infrastructure::persistence::{CatalogSource, Database};
use aegis_seal_gateway::infrastructure::reload::Watchers;
use aegis_seal_gateway::infrastructure::reload::config_map::{self, ConfigMapRef};
use aegis_seal_gateway::infrastructure::reload::folder::{FolderWatch, load_folder};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
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
    match runtime.block_on(run(cli)) {
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
    let cluster = cli
        .configmap
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(str::parse::<ConfigMapRef>)
        .transpose()?;
    let http = HttpClient::new(HttpClientConfig::default())
        .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?;
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
            let snapshot = config_map::fetch(&client, main).await?;
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
    let snapshot = with_default_contexts(snapshot);
    let db = Database::connect(config.database_url())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    db.sync_catalog(&snapshot, source).await?;
    let gateway = RunningGateway::start(&config, db, snapshot, Clock::System).await?;

    let mut watchers = Watchers::default();
    if let Some(watch) = folder_watch.filter(FolderWatch::watches_anything) {
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
    shutdown_signal().await;
    watchers.stop().await;
    gateway.shutdown().await;
    Ok(())
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
