//! Hot reload (DESIGN §4.5): a new snapshot is validated, then swapped in whole by
//! [`gateway::reload`]; an invalid one is refused, logged (WARN, naming the file, document and
//! field, or the ConfigMap and what is wrong with it), counted in [`ReloadStats`], and the last good
//! snapshot keeps serving.
//!
//! - [`folder`]: standalone, polls the manifests folder and the config file;
//! - [`config_map`]: in a cluster, watches the gateway's ConfigMaps through the API.

pub mod config_map;
pub mod folder;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aegis_seal_crds::Snapshot;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::gateway::{self, GatewayState, ReloadError};
use crate::infrastructure::persistence::CatalogSource;

/// How long a stopping watcher may take before it is aborted.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What hot reload has done since the start.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// New snapshots swapped in.
    pub reloads: AtomicU64,
    /// Changes refused (unreadable, invalid); each time, the last good snapshot kept serving.
    pub reload_failures: AtomicU64,
}

impl ReloadStats {
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }
}

/// Logs and counts a refused change.
pub(crate) fn refuse(state: &GatewayState, origin: &str, reason: &str) {
    state.reload.reload_failures.fetch_add(1, Ordering::Relaxed);
    state.metrics.reload(false);
    let serving = state.served.load().hash.clone();
    tracing::warn!(
        origin,
        serving = %serving,
        "configuration change refused, the last good snapshot keeps serving: {reason}"
    );
}

/// What became of a snapshot offered to [`apply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Served now (or already).
    Served,
    /// Refused as it is: offering it again changes nothing.
    Refused,
    /// Not served because the database could not be read or written: offer it again later.
    Deferred,
}

/// Completes at `at`, or never.
pub(crate) async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// When a deferred change is offered again: 1 s after the first deferral, then twice the
/// previous wait, at most 30 s.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retry {
    pub(crate) at: tokio::time::Instant,
    pub(crate) wait: Duration,
}

impl Retry {
    const FIRST: Duration = Duration::from_secs(1);
    const LONGEST: Duration = Duration::from_secs(30);

    /// The retry after a deferral; `previous` is the one that led to it, if any.
    pub(crate) fn after(previous: Option<Self>) -> Self {
        let wait = previous.map_or(Self::FIRST, |p| (p.wait * 2).min(Self::LONGEST));
        Self {
            at: tokio::time::Instant::now() + wait,
            wait,
        }
    }
}

/// Serves `snapshot` if it is valid; otherwise refuses it (logged and counted), and the last good
/// snapshot keeps serving.
pub(crate) async fn apply(
    state: &GatewayState,
    snapshot: Snapshot,
    source: CatalogSource,
    origin: &str,
) -> Applied {
    let before = state.served.load().hash.clone();
    match gateway::reload(state, snapshot, source).await {
        Ok(hash) => {
            if hash != before {
                state.reload.reloads.fetch_add(1, Ordering::Relaxed);
                state.metrics.reload(true);
                let s = &state.served.load().snapshot;
                tracing::info!(
                    origin,
                    snapshot = %hash,
                    previous = %before,
                    workflows = s.workflows.len(),
                    cli_tools = s.cli_tools.len(),
                    security_contexts = s.security_contexts.len(),
                    "configuration change served"
                );
            }
            Applied::Served
        }
        Err(e) => {
            refuse(state, origin, &e.to_string());
            match e {
                ReloadError::Invalid(_) => Applied::Refused,
                ReloadError::Database(_) => Applied::Deferred,
            }
        }
    }
}

/// The running watchers; [`Watchers::stop`] ends them.
pub struct Watchers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Default for Watchers {
    fn default() -> Self {
        Self {
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }
}

impl Watchers {
    /// What a watcher waits on to stop.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn push(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Resolves when a watcher ends before it was told to stop (it panicked: a watcher runs
    /// until stopped), with why; never when there is none. The process should then exit so that
    /// it is restarted, rather than serve on with a hot reload that is silently gone.
    pub async fn ended(&mut self) -> String {
        if self.tasks.is_empty() {
            return std::future::pending().await;
        }
        let (result, index, _) = futures::future::select_all(self.tasks.iter_mut()).await;
        self.tasks.swap_remove(index);
        match result {
            Ok(()) => "a reload watcher ended".to_owned(),
            Err(e) if e.is_panic() => format!("a reload watcher panicked: {e}"),
            Err(e) => format!("a reload watcher was cancelled: {e}"),
        }
    }

    /// Signals every watcher to stop and waits (bounded) for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for mut task in self.tasks {
            if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
                tracing::warn!("a reload watcher did not stop in time; aborting it");
                task.abort();
            }
        }
    }
}

/// Resolves when `stop` says so, or when its sender is gone.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watcher_that_panics_is_reported_and_one_that_runs_is_not() {
        let mut watchers = Watchers::default();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), watchers.ended())
                .await
                .is_err(),
            "no watcher: nothing ends"
        );
        let mut stop = watchers.stop_signal();
        watchers.push(tokio::spawn(async move { stopped(&mut stop).await }));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), watchers.ended())
                .await
                .is_err(),
            "a running watcher has not ended"
        );
        watchers.push(tokio::spawn(async { panic!("boom") }));
        let why = tokio::time::timeout(Duration::from_secs(5), watchers.ended())
            .await
            .unwrap();
        assert!(why.starts_with("a reload watcher panicked"), "{why}");
        // The others still stop as they should.
        tokio::time::timeout(Duration::from_secs(5), watchers.stop())
            .await
            .unwrap();
    }
}
