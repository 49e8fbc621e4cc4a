//! A reference for the HTTP plumbing: a proxy that only forwards. It answers each call with what
//! the upstream answered to the same `POST /fixed`, sent through the gateway's own `HttpClient`,
//! and does nothing else: no envelope, no policy, no audit.
//!
//! It runs on the gateway's core, like the gateway, so it pays what every gateway on that core
//! pays per call and the upstream called directly does not: hyper's server, the pooled client, and
//! two loopback writes (the answer and the upstream request), whose receivers' TCP processing the
//! kernel runs on the sending core. With the crypto ceiling in series, its CPU per call bounds
//! what any gateway that verifies and forwards each call can serve on this core.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;

use aegis_seal_gateway::infrastructure::http_client::{
    HttpClient, HttpClientConfig, OutboundRequest,
};
use anyhow::{Context, anyhow};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::Url;

use crate::affinity;

/// A running forwarder: its thread serves until the process ends.
pub struct Forwarder {
    pub addr: SocketAddr,
    /// The CPU-time clock of its thread (`pthread_getcpuclockid`).
    clock: libc::clockid_t,
    /// Never joined: the thread and so its clock live as long as the process.
    _thread: std::thread::JoinHandle<()>,
}

impl Forwarder {
    /// Starts the forwarder to `upstream` on a thread of its own, on the gateway's core when `pin`.
    pub fn start(upstream: SocketAddr, pin: bool) -> anyhow::Result<Self> {
        let target = Url::parse(&format!("http://{upstream}/fixed"))?;
        let client =
            Arc::new(HttpClient::new(HttpClientConfig::default()).map_err(|e| anyhow!("{e}"))?);
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (ready, started) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bench-forwarder".into())
            .spawn(move || match start_runtime(listener, pin) {
                Ok((runtime, listener)) => {
                    let _ = ready.send(Ok(()));
                    runtime.block_on(accept(listener, client, target));
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })?;
        started
            .recv()
            .context("the forwarder's thread ended before serving")?
            .context("starting the forwarder")?;
        let mut clock: libc::clockid_t = 0;
        // SAFETY: the pthread handle is a live thread's (it serves until the process ends), and
        // `clock` is a valid place for the result.
        let rc = unsafe { libc::pthread_getcpuclockid(thread.as_pthread_t(), &mut clock) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc))
                .context("the forwarder thread's CPU clock");
        }
        Ok(Self {
            addr,
            clock,
            _thread: thread,
        })
    }

    /// CPU seconds its thread has used so far.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid timespec to write into; the clock is a live thread's.
        if unsafe { libc::clock_gettime(self.clock, &mut now) } != 0 {
            return Err(std::io::Error::last_os_error())
                .context("reading the forwarder's CPU time");
        }
        Ok(now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9)
    }
}

/// On the forwarder's thread: pinned when asked, and tokio's current-thread runtime, which costs
/// less per task than the gateway's one-worker multi-thread runtime, so the bound errs generous.
fn start_runtime(
    listener: std::net::TcpListener,
    pin: bool,
) -> anyhow::Result<(tokio::runtime::Runtime, tokio::net::TcpListener)> {
    if pin {
        affinity::pin_current_thread(affinity::GATEWAY_CPU)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = {
        let _context = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    Ok((runtime, listener))
}

async fn accept(listener: tokio::net::TcpListener, client: Arc<HttpClient>, target: Url) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let (client, target) = (client.clone(), target.clone());
        tokio::spawn(async move {
            let forward = service_fn(move |req| forward(client.clone(), target.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), forward)
                .await;
        });
    }
}

async fn forward(
    client: Arc<HttpClient>,
    target: Url,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut outbound = OutboundRequest::new(Method::POST, target);
    outbound.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    outbound.body = Some(body);
    let (status, body) = match client.send(outbound).await {
        Ok(answer) => (answer.status, answer.body),
        Err(_) => (StatusCode::BAD_GATEWAY, Bytes::new()),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
