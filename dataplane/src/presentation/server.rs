//! The hyper server: HTTP/1.1 and h2c on one port, bounded heads and bodies, graceful shutdown.
//!
//! hyper drops a request's handler when its client hangs up. For a read that is what we want. A
//! request that changes something must not be cut off that way, though: an invocation
//! dropped between its upstream call and its audit commit has acted and left no record (and, on
//! SQLite, no durable jti). So those run as tasks of their own, which finish whatever the client
//! does, and shutdown waits for them as it waits for connections.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::gateway::GatewayState;
use crate::presentation::http::{Body, error};
use crate::presentation::routes;

/// After the drain (`network.drain_seconds`): how long calls get to end once their CLI tools and
/// workflows were stopped (a container's kill and removal, leases released, the audit commit).
/// The pod's grace period covers both (`operator::desired::workload`).
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// Accepts connections until `shutdown` flips, then stops accepting and drains open connections.
pub async fn serve(
    listener: TcpListener,
    state: Arc<GatewayState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(state.max_header_bytes)
        .header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(state.max_header_bytes).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();
    let detached = TaskTracker::new();
    let stopped = async move {
        // A closed channel means the owner is gone: stop as well.
        let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
    };
    tokio::pin!(stopped);

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let detached = detached.clone();
                let service = service_fn(move |req| {
                    let state = state.clone();
                    let detached = detached.clone();
                    async move { Ok::<_, Infallible>(handle(state, req, &detached).await) }
                });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut stopped => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: no longer accepting connections, draining in-flight requests");
    detached.close();
    let drained = async {
        graceful.shutdown().await;
        // Requests whose clients hung up are no connection's any more, but still in flight.
        detached.wait().await;
    };
    tokio::select! {
        () = drained => tracing::info!("all connections drained"),
        () = tokio::time::sleep(state.drain) => {
            tracing::warn!("drain timed out after {}s; closing remaining connections", state.drain.as_secs());
            // CLI tools may run for minutes, and workflows for as long as their steps' timeouts
            // and retries allow. Stopped now, CLI runs remove their containers and volumes, and
            // both record their calls as failed while the audit log still commits.
            state.cli.stop_runs();
            state.workflows.stop_runs();
            if tokio::time::timeout(STOP_GRACE, detached.wait()).await.is_err() {
                tracing::warn!(
                    "calls still running {}s after their CLI tools and workflows were stopped are dropped unrecorded",
                    STOP_GRACE.as_secs()
                );
            }
        }
    }
}

/// Routes the request; one that is not safe (RFC 9110: anything but GET, HEAD, OPTIONS and TRACE)
/// runs as a task of its own, so that it finishes even when its client hangs up.
async fn handle(
    state: Arc<GatewayState>,
    req: Request<Incoming>,
    detached: &TaskTracker,
) -> Response<Body> {
    if req.method().is_safe() {
        return routes::handle(state, req).await;
    }
    match detached.spawn(routes::handle(state, req)).await {
        Ok(response) => response,
        // As if the handler had run here: the panic ends this connection's task.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only when the runtime itself is shutting down.
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is shutting down",
        ),
    }
}
