//! A running data plane: shared state, the listener, and an orderly stop.

use std::net::SocketAddr;
use std::sync::Arc;

use aegis_seal_crds::Snapshot;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::infrastructure::config::GatewayConfig;
use crate::infrastructure::persistence::Database;
use crate::presentation::server;

/// What every request handler can reach.
pub struct GatewayState {
    pub db: Database,
    /// The snapshot being served; swapped whole on reload, so a request keeps the one it started with.
    pub snapshot: ArcSwap<Snapshot>,
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
}

/// A gateway serving on its listener.
pub struct RunningGateway {
    pub local_addr: SocketAddr,
    pub state: Arc<GatewayState>,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl RunningGateway {
    /// Binds the configured address and starts serving `snapshot`.
    pub async fn start(
        config: &GatewayConfig,
        db: Database,
        snapshot: Snapshot,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.bind_addr()).await?;
        let local_addr = listener.local_addr()?;
        let network = &config.settings.network;
        let state = Arc::new(GatewayState {
            db,
            snapshot: ArcSwap::from_pointee(snapshot),
            max_body_bytes: network.max_body_bytes,
            max_header_bytes: usize::try_from(network.max_header_bytes).unwrap_or(usize::MAX),
        });
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(server::serve(listener, state.clone(), stopped));
        tracing::info!("aegis-seal-gateway listening on {local_addr}");
        Ok(Self {
            local_addr,
            state,
            stop,
            server,
        })
    }

    /// Stops accepting, drains in-flight requests, then closes the database pool.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.server.await {
            tracing::error!(error = %e, "server task failed");
        }
        self.state.db.close().await;
        tracing::info!("aegis-seal-gateway stopped");
    }
}
