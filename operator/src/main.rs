//! `aegis-seal-operator`: reconciles SealGateways into running data planes.
//!
//! Every replica serves `/healthz` and `/metrics`; only the holder of the leader Lease runs the
//! controller. SIGTERM stops the controller after the reconciles in flight, then releases the Lease
//! so a standby takes over at once. A leader that loses its Lease exits, to rejoin as a candidate.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use aegis_seal_operator::leader::{LeaderElector, LeaseLock};
use aegis_seal_operator::metrics::Metrics;
use aegis_seal_operator::reconcile::Context;
use aegis_seal_operator::{controller, server};
use anyhow::Context as _;
use clap::Parser;
use kube::{Api, Client};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing_subscriber::EnvFilter;

/// How long in-flight reconciles may take to finish on shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(name = "aegis-seal-operator", version, about)]
struct Cli {
    /// Address of the `/healthz` and `/metrics` listener.
    #[arg(long, env = "SEAL_OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Data-plane image for SealGateways without `spec.image`.
    #[arg(
        long,
        env = "SEAL_GATEWAY_IMAGE",
        default_value = concat!("ghcr.io/100monkeys-ai/aegis-seal-gateway:", env!("CARGO_PKG_VERSION"))
    )]
    gateway_image: String,
    /// This replica's name in the leader Lease and in Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Namespace of the leader Lease (default: the client's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    #[arg(long, default_value = "aegis-seal-operator")]
    lease_name: String,
    /// Seconds a leader may go without renewing before another replica takes over.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..))]
    lease_duration_secs: u64,
    /// Run the controller without a Lease (a single replica, or local development).
    #[arg(long)]
    no_leader_election: bool,
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
        Ok(code) => code,
        Err(e) => {
            // kube's errors already carry their causes: one level of context is enough.
            let message = match e.source() {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            };
            tracing::error!("{message}");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = Client::try_default()
        .await
        .context("cannot configure the Kubernetes client")?;
    let metrics = Arc::new(Metrics::default());
    let (stop, stopping) = watch::channel(false);
    let stop = Arc::new(stop);

    let listener = TcpListener::bind(cli.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", cli.http_addr))?;
    tracing::info!(addr = %cli.http_addr, "serving /healthz and /metrics");
    let http = tokio::spawn(server::serve(listener, metrics.clone(), stopping.clone()));
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal_stop.send_replace(true);
    });

    let identity = cli.identity.clone().unwrap_or_else(hostname);
    let ctx = Arc::new(Context::new(
        client.clone(),
        cli.gateway_image.clone(),
        Some(identity.clone()),
        metrics.clone(),
    ));

    let lost = if cli.no_leader_election {
        tracing::warn!("leader election is off: run only one replica");
        metrics.set_leader(true);
        lead(client, ctx, stopped(stopping.clone())).await;
        false
    } else {
        let namespace = cli
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let lock = LeaseLock::new(
            Api::namespaced(client.clone(), &namespace),
            cli.lease_name.clone(),
            identity,
            Duration::from_secs(cli.lease_duration_secs),
        );
        let elector = LeaderElector::new(lock, metrics.clone());
        let acquired = tokio::select! {
            at = elector.acquire() => Some(at),
            () = stopped(stopping.clone()) => None,
        };
        if let Some(acquired) = acquired {
            let (end, ended) = oneshot::channel::<()>();
            let controller = tokio::spawn(lead(client, ctx, async move {
                let _ = ended.await;
            }));
            elector
                .lead(
                    acquired,
                    controller,
                    end,
                    stopped(stopping.clone()),
                    STOP_TIMEOUT,
                )
                .await
        } else {
            false
        }
    };

    stop.send_replace(true);
    let _ = http.await;
    if lost {
        tracing::error!("exiting after losing leadership; a restart rejoins the election");
        return Ok(ExitCode::FAILURE);
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn lead(
    client: Client,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    tracing::info!("starting the SealGateway controller");
    controller::run(client, ctx, shutdown).await;
}

async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("aegis-seal-operator-{}", std::process::id()))
}

/// SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = ctrl_c => tracing::info!("SIGINT received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
