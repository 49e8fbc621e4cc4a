//! The Prometheus exporter: its own listener (`METRICS_BIND`:`METRICS_PORT`, default
//! `127.0.0.1:9092`), apart from the API port so the unauthenticated endpoint can stay on loopback.
//!
//! As upstream: `/health` answers `OK` and any other path serves the metrics. The exposition is
//! OpenMetrics when the scraper asks for it (`Accept: application/openmetrics-text`, as Prometheus
//! does), else the Prometheus text format 0.0.4.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::gateway::GatewayState;
use crate::infrastructure::metrics::TARGET;
use crate::presentation::http::Body;

const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exporter serving on its listener.
pub struct MetricsExporter {
    pub local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl MetricsExporter {
    /// Binds `addr` and serves the metrics of `state`; logs
    /// `Prometheus metrics exporter listening on {addr}`.
    pub async fn start(addr: SocketAddr, state: Arc<GatewayState>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        tracing::info!(target: TARGET, "Prometheus metrics exporter listening on {local_addr}");
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(listener, state, stopped));
        Ok(Self {
            local_addr,
            stop,
            task,
        })
    }

    /// Stops accepting scrapes.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn serve(listener: TcpListener, state: Arc<GatewayState>, mut stop: watch::Receiver<bool>) {
    let stopped = async move {
        // A closed channel means the owner is gone: stop as well.
        let _ = stop.wait_for(|s| *s).await.map(|_| ());
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let state = state.clone();
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(&state, &req)) }
                });
                tokio::spawn(async move {
                    let conn = auto::Builder::new(TokioExecutor::new());
                    if let Err(e) = conn.serve_connection(TokioIo::new(stream), service).await {
                        tracing::debug!(target: TARGET, error = %e, "metrics connection ended with an error");
                    }
                });
            }
            () = &mut stopped => break,
        }
    }
}

fn answer(state: &GatewayState, req: &Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/health" {
        return text(Body::from("OK"), "text/plain; charset=utf-8");
    }
    sample(state);
    let openmetrics = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let body = state.metrics.encode(openmetrics);
    let content_type = if openmetrics {
        OPENMETRICS_CONTENT_TYPE
    } else {
        PROMETHEUS_CONTENT_TYPE
    };
    text(Body::from(body), content_type)
}

/// Gauges read from the state at scrape time: nothing on the request path pays for them.
pub fn sample(state: &GatewayState) {
    let served = state.served.load();
    let s = &served.snapshot;
    state.metrics.snapshot(
        &served.hash,
        s.workflows.len(),
        s.cli_tools.len(),
        s.security_contexts.len(),
    );
    state
        .metrics
        .replay_store_size(state.invocation.replay.len());
    state.metrics.audit_queue_depth(state.audit.queue_depth());
}

fn text(body: Body, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
