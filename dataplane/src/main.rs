//! `aegis-seal-gateway`: the data-plane process.

use std::path::PathBuf;
use std::process::ExitCode;

use aegis_seal_crds::Snapshot;
use aegis_seal_gateway::application::catalog::with_default_contexts;
use aegis_seal_gateway::application::clock::Clock;
use aegis_seal_gateway::gateway::RunningGateway;
use aegis_seal_gateway::infrastructure::config::{
    ConfigSources, ManifestSet, fetch_documents, load_config,
};
use aegis_seal_gateway::infrastructure::http_client::{HttpClient, HttpClientConfig};
use aegis_seal_gateway::infrastructure::persistence::{CatalogSource, Database};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(name = "aegis-seal-gateway", version, about)]
struct Cli {
    /// SealGatewayConfig file (default: discovered as the runbook describes).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Folder of Workflow, CliTool, SecurityContext and ConfigMap manifests to serve.
    #[arg(long, global = true, env = "SEAL_GATEWAY_MANIFESTS")]
    manifests: Option<PathBuf>,
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
    let snapshot = match &cli.manifests {
        Some(dir) => {
            let manifests = ManifestSet::read(dir)?;
            let http = HttpClient::new(HttpClientConfig::default())
                .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?;
            let documents = fetch_documents(&manifests.openapi_urls(), &http).await;
            let compiled = manifests.compile(documents)?;
            let s = &compiled.snapshot;
            tracing::info!(
                manifests = %dir.display(),
                workflows = s.workflows.len(),
                cli_tools = s.cli_tools.len(),
                security_contexts = s.security_contexts.len(),
                snapshot = %s.hash(),
                "manifests loaded"
            );
            compiled.snapshot
        }
        None => Snapshot::default(),
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

    let snapshot = with_default_contexts(snapshot);
    let db = Database::connect(config.database_url())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    db.sync_catalog(&snapshot, CatalogSource::Manifest).await?;
    let gateway = RunningGateway::start(&config, db, snapshot, Clock::System).await?;
    shutdown_signal().await;
    gateway.shutdown().await;
    Ok(())
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
