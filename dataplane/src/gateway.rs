//! A running data plane: shared state, background tasks, the listener, and an orderly stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aegis_seal_crds::Snapshot;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::application::catalog::{Entries, ServedSnapshot};
use crate::application::cli::CliEngine;
use crate::application::clock::Clock;
use crate::application::credential::CredentialResolver;
use crate::application::invocation::InvocationService;
use crate::application::registry::{self, Registry};
use crate::application::sessions::SessionCache;
use crate::application::workflow::WorkflowEngine;
use crate::domain::policy::RateLimiter;
use crate::infrastructure::auth::operator::{OperatorAuthConfig, OperatorAuthenticator};
use crate::infrastructure::auth::token::SealTokenVerifier;
use crate::infrastructure::config::GatewayConfig;
use crate::infrastructure::http_client::{HttpClient, HttpClientConfig};
use crate::infrastructure::metrics::Metrics;
use crate::infrastructure::persistence::{
    AuditTasks, AuditWriter, CallLimits, CatalogSource, Database, LEASE_RENEWAL, PersistenceError,
    ReplayGuard, RunningSlots,
};
use crate::infrastructure::reload::ReloadStats;
use crate::presentation::server;

/// How often expired jtis are purged and sessions past their `expires_at` marked `Expired`.
pub const JTI_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// What every request handler can reach.
pub struct GatewayState {
    pub db: Database,
    /// The Prometheus series, served by `presentation::metrics` on its own listener.
    pub metrics: Metrics,
    /// The snapshot being served; swapped whole on reload, so a request keeps the one it started with.
    pub served: ArcSwap<ServedSnapshot>,
    pub invocation: InvocationService,
    pub audit: AuditWriter,
    pub workflows: WorkflowEngine,
    /// CLI tools; holds the container CLI resolved at startup, if any (B-10).
    pub cli: CliEngine,
    pub credentials: CredentialResolver,
    /// `None` when operator authentication is disabled by configuration.
    pub operator_auth: Option<OperatorAuthenticator>,
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    /// On shutdown, how long in-flight calls may take before the CLI runs and workflows still
    /// going are stopped (`network.drain_seconds`).
    pub drain: Duration,
    /// `control.max_objects_per_tenant`.
    pub max_objects_per_tenant: u32,
    /// What hot reload has served and refused.
    pub reload: ReloadStats,
    /// The declarative snapshot beside the REST objects; orders every change of `served`.
    pub registry: Registry,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A gateway serving on its listener.
pub struct RunningGateway {
    pub local_addr: SocketAddr,
    pub state: Arc<GatewayState>,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    /// Keeps the shared `max_concurrent` slots of this replica's running calls (Postgres).
    lease_renewer: JoinHandle<()>,
    /// Serves REST writes made through other replicas.
    rest_follower: JoinHandle<()>,
    /// Signs audit checkpoints on a timer and purges expired events (docs/audit.md).
    audit_tasks: AuditTasks,
    sessions_gauge: JoinHandle<()>,
    /// Takes renewed outbound TLS files on.
    tls_follower: JoinHandle<()>,
}

impl RunningGateway {
    /// Binds the configured address and starts serving `snapshot`, with time read from `clock`.
    pub async fn start(
        config: &GatewayConfig,
        db: Database,
        snapshot: Snapshot,
        clock: Clock,
    ) -> Result<Self, StartError> {
        let auth = &config.settings.auth;
        let tokens = SealTokenVerifier::from_settings(auth).map_err(StartError::Config)?;
        if !tokens.is_configured() {
            tracing::warn!(
                "no SEAL token key configured (seal_jwt_public_key_pem, seal_jwt_eddsa_public_key_pem): every invocation will be refused"
            );
        }
        let metrics = Metrics::new();
        let http = HttpClient::new(HttpClientConfig::from_settings(&config.settings.outbound))
            .map_err(|e| StartError::Config(format!("cannot build the outbound HTTP client: {e}")))?
            .with_metrics(metrics.clone());
        let operator_auth = (!auth.disabled).then(|| {
            OperatorAuthenticator::new(OperatorAuthConfig::from_settings(auth), http.clone())
        });
        // Served: the declarative snapshot plus the REST objects stored in the database.
        let base = Entries::from(snapshot);
        let revision = db
            .catalog_revision()
            .await
            .map_err(|e| StartError::Config(format!("cannot read catalog_revision: {e}")))?;
        let served = registry::served_for(&db, &base)
            .await
            .map_err(|e| StartError::Config(e.to_string()))?;
        let credentials =
            CredentialResolver::new(&config.settings.credentials, http.clone(), db.clone())
                .map_err(StartError::Config)?;
        let cli = CliEngine::start(
            &config.settings.cli,
            http.clone(),
            &served.snapshot.cli_tools,
        )
        .await;
        let replay = ReplayGuard::start(db.clone(), clock.now())
            .await
            .map_err(|e| StartError::Config(format!("cannot load the replay set: {e}")))?;
        let credentials = credentials.with_metrics(metrics.clone());
        let cli = cli.with_metrics(metrics.clone());
        let invocation = InvocationService {
            tokens,
            sessions: SessionCache::new(db.clone()),
            replay: replay.clone(),
            limiter: RateLimiter::new(),
            limits: CallLimits::for_database(&db),
            clock,
            metrics: metrics.clone(),
        };

        let addr = config.bind_addr();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartError::Listen { addr, source })?;
        let network = &config.settings.network;
        let sessions_gauge = tokio::spawn(metrics.clone().refresh_sessions_active(db.clone()));
        let tls_follower = tokio::spawn(http.clone().follow_tls_files());
        let state = Arc::new(GatewayState {
            audit: AuditWriter::start(db.clone(), metrics.clone(), replay.pending()),
            metrics,
            db,
            served: ArcSwap::from_pointee(served),
            workflows: WorkflowEngine::new(http),
            cli,
            credentials,
            invocation,
            operator_auth,
            max_body_bytes: network.max_body_bytes,
            max_header_bytes: usize::try_from(network.max_header_bytes).unwrap_or(usize::MAX),
            drain: Duration::from_secs(u64::from(network.drain_seconds)),
            max_objects_per_tenant: config.settings.control.max_objects_per_tenant,
            reload: ReloadStats::default(),
            registry: Registry::new(base, revision),
        });
        let audit_tasks = AuditTasks::start(&config.settings.audit, state.db.clone())
            .map_err(StartError::Config)?;
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(server::serve(listener, state.clone(), stopped));
        let sweeper = tokio::spawn(sweep(state.clone()));
        let lease_renewer = tokio::spawn(renew_leases(state.invocation.limits.running.clone()));
        let rest_follower = tokio::spawn(registry::follow_rest_writes(state.clone()));
        release_freed_memory();
        tracing::info!("aegis-seal-gateway listening on {local_addr}");
        Ok(Self {
            local_addr,
            state,
            stop,
            server,
            sweeper,
            lease_renewer,
            rest_follower,
            audit_tasks,
            sessions_gauge,
            tls_follower,
        })
    }

    /// Serves a new snapshot: compiled, mirrored into the catalog tables, then swapped in whole.
    /// In-flight requests finish on the snapshot they started with. On error nothing changes.
    pub async fn reload(
        &self,
        snapshot: Snapshot,
        source: CatalogSource,
    ) -> Result<String, ReloadError> {
        reload(&self.state, snapshot, source).await
    }

    /// Stops accepting, drains in-flight requests (their audit events commit), then closes the pool.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.server.await {
            tracing::error!(error = %e, "server task failed");
        }
        self.sweeper.abort();
        // After the drain: the calls it waited for kept their slots' leases alive until the end.
        self.lease_renewer.abort();
        self.rest_follower.abort();
        // First uses of calls that wrote no event, not yet carried by an audit commit (SQLite).
        if let Err(e) = self.state.invocation.replay.flush().await {
            tracing::error!(error = %e, "could not record the last jtis");
        }
        // After the drain every accepted event is committed: sign the final head.
        self.audit_tasks.stop(&self.state.db).await;
        self.sessions_gauge.abort();
        self.tls_follower.abort();
        self.state.db.close().await;
        tracing::info!("aegis-seal-gateway stopped");
    }
}

/// Why a snapshot was not served.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// It cannot be served as it is (a template or JSONPath that does not compile, a conflict
    /// with a REST object): offering it again changes nothing.
    #[error("{0}")]
    Invalid(String),
    /// The database could not be read or written: the same snapshot may be served once it can.
    #[error("{0}")]
    Database(String),
}

/// See [`RunningGateway::reload`]; usable by watchers that hold only the state. The REST objects
/// stay served beside the new snapshot; the returned hash is that of everything served.
pub async fn reload(
    state: &GatewayState,
    snapshot: Snapshot,
    source: CatalogSource,
) -> Result<String, ReloadError> {
    let mut base = state.registry.lock().await;
    // Moved, not copied: the base and the served snapshot share these entries.
    let (snapshot, base_hash) = off_the_runtime(move || {
        let hash = snapshot.hash();
        (Entries::from(snapshot), hash)
    })
    .await
    .map_err(|e| ReloadError::Invalid(format!("hashing the snapshot failed: {e}")))?;
    if base.hash() == base_hash {
        return Ok(state.served.load().hash.clone());
    }
    // Built before the catalog tables change, so an invalid snapshot leaves everything as it was.
    let served = registry::served_for(&state.db, &snapshot).await?;
    let sync = state
        .db
        .sync_catalog(&snapshot, source)
        .await
        .map_err(|e| ReloadError::Database(format!("catalog update failed: {e}")))?;
    let hash = served.hash.clone();
    let previous = state.served.swap(Arc::new(served));
    let previous_base = base.replace(snapshot, base_hash);
    drop(base);
    tracing::info!(snapshot = %hash, "snapshot reloaded");
    registry::record_replaced(state, source, &sync.replaced).await;
    // Freeing thousands of compiled workflows, then trimming the heap, is CPU work too. (Calls
    // still in flight on the previous snapshot hold it, and the last of them frees it.)
    let _ = off_the_runtime(move || {
        drop((previous, previous_base));
        release_freed_memory();
    })
    .await;
    Ok(hash)
}

/// Runs a reload's CPU-bound work on a thread of its own, at a lower priority than the calls:
/// reading, hashing and compiling thousands of workflows takes tens of milliseconds, and under a
/// one-core CPU limit the runtime has a single worker, so every call in flight would wait for the
/// whole reload. On tokio's blocking pool the work still took its full share of the core from
/// the worker; at `nice` 10 the kernel lets a woken worker run first, and the reload takes the
/// time the calls leave. A panic in `work` comes back as an error, so the change is refused and
/// the last good snapshot keeps serving.
pub(crate) async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("seal-reload".into())
        .spawn(move || {
            yield_to_calls();
            let _ = done.send(work());
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    result.await.map_err(|_| "it panicked".to_owned())
}

/// Lowers this thread's priority (Linux gives each thread its own nice value).
fn yield_to_calls() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes no pointers; `gettid` names this thread only.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS as _, libc::gettid() as _, RELOAD_NICE);
    }
}

/// The reload thread's nice value: a weight of 110 against the calls' 1024.
#[cfg(target_os = "linux")]
const RELOAD_NICE: libc::c_int = 10;

/// Gives freed heap pages back to the OS. Loading a snapshot allocates several times what it
/// keeps (YAML, JSON, compiled templates), and glibc keeps freed arena pages resident, so without
/// this the load's peak would stay the process's RSS (bench/README.md, "RSS with 2,000 workflows").
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only returns free arena memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Purges expired jtis, rate-limit logs and running slots, and marks sessions past their expiry
/// `Expired`, every [`JTI_SWEEP_INTERVAL`]; the first sweep runs at start.
async fn sweep(state: Arc<GatewayState>) {
    let mut tick = tokio::time::interval(JTI_SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = state.invocation.clock.now();
        if let Err(e) = state.invocation.replay.sweep(now).await {
            tracing::warn!(
                target: PERSISTENCE_TARGET,
                error = %e,
                "JTI cleanup failed: {e}"
            );
        }
        log_sweep(
            state.db.sweep_rate_limits().await,
            "rate-limit logs past their window deleted",
            "rate-limit log sweep failed",
        );
        log_sweep(
            state.db.sweep_running_slots().await,
            "running-slot keys without a live slot deleted",
            "running slot sweep failed",
        );
        log_sweep(
            state.db.expire_sessions(now).await,
            "sessions past their expiry marked Expired",
            "session expiry failed",
        );
    }
}

const PERSISTENCE_TARGET: &str = "aegis_seal_gateway::infrastructure::persistence";

/// One sweep's outcome: the rows it changed at debug, a failure as a warning (the next sweep
/// tries again).
fn log_sweep(result: Result<u64, PersistenceError>, done: &str, failed: &str) {
    match result {
        Ok(0) => {}
        Ok(rows) => tracing::debug!(target: PERSISTENCE_TARGET, rows, "{done}"),
        Err(e) => tracing::warn!(target: PERSISTENCE_TARGET, error = %e, "{failed}: {e}"),
    }
}

/// Renews the leases of this replica's running calls' shared slots every [`LEASE_RENEWAL`]
/// (nothing to do on SQLite, whose slots are in memory). A failed renewal is tried again at the
/// next tick; a lease outlives two failures in a row.
async fn renew_leases(slots: RunningSlots) {
    if matches!(slots, RunningSlots::InProcess(_)) {
        return;
    }
    let mut tick = tokio::time::interval(LEASE_RENEWAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = slots.renew().await {
            tracing::warn!(
                target: PERSISTENCE_TARGET,
                error = %e,
                "running slot lease renewal failed: {e}"
            );
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn reload_work_runs_beside_the_runtime_at_a_lower_priority_and_a_panic_is_an_error() {
        // The one worker keeps running tasks while the work waits for one of them.
        let (ran, wait) = std::sync::mpsc::channel::<()>();
        let work = off_the_runtime(move || {
            wait.recv().unwrap();
            // SAFETY: as in `yield_to_calls`.
            unsafe { libc::getpriority(libc::PRIO_PROCESS as _, libc::gettid() as _) }
        });
        let task = tokio::spawn(async move { ran.send(()).unwrap() });
        let nice = work.await.unwrap();
        task.await.unwrap();
        assert!(nice >= RELOAD_NICE, "nice {nice}");

        let panicked = off_the_runtime(|| panic!("a template engine bug")).await;
        assert_eq!(panicked.unwrap_err(), "it panicked");
    }
}
