//! The load generator: hyper HTTP/1.1 clients over keep-alive connections, at a fixed concurrency
//! (closed loop: each connection sends its next request when the last one answered) or at a fixed
//! rate (open loop: request i is due at start + i/rate, and a late one counts from when it was due).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What a run sends: request `i` carries `bodies[i % bodies.len()]` (none for a GET).
#[derive(Clone)]
pub struct Requests {
    pub method: Method,
    pub path: &'static str,
    pub bodies: Arc<Vec<Bytes>>,
    pub count: usize,
}

impl Requests {
    pub fn get(path: &'static str, count: usize) -> Self {
        Self {
            method: Method::GET,
            path,
            bodies: Arc::new(Vec::new()),
            count,
        }
    }

    /// One request per body.
    pub fn post_each(path: &'static str, bodies: Vec<Bytes>) -> Self {
        Self {
            method: Method::POST,
            path,
            count: bodies.len(),
            bodies: Arc::new(bodies),
        }
    }

    /// The same body `count` times (a replay).
    pub fn post_same(path: &'static str, body: Bytes, count: usize) -> Self {
        Self {
            method: Method::POST,
            path,
            bodies: Arc::new(vec![body]),
            count,
        }
    }

    fn request(&self, i: usize) -> Request<Full<Bytes>> {
        let body = if self.bodies.is_empty() {
            Bytes::new()
        } else {
            self.bodies[i % self.bodies.len()].clone()
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = http::Uri::from_static(self.path);
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("127.0.0.1"),
        );
        if self.method == Method::POST {
            request.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
        }
        request
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Pace {
    Concurrency(usize),
    Rate { per_second: f64, connections: usize },
}

impl std::fmt::Display for Pace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Concurrency(c) => write!(f, "c={c}"),
            Self::Rate { per_second, .. } => write!(f, "{per_second:.0}/s"),
        }
    }
}

/// What a run measured.
#[derive(Clone)]
pub struct Outcome {
    /// Microseconds.
    pub latency: Histogram<u64>,
    /// Responses by status; 0 counts connection errors.
    pub statuses: BTreeMap<u16, u64>,
    pub elapsed: Duration,
}

impl Outcome {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)
                .context("creating a latency histogram")?,
            statuses: BTreeMap::new(),
            elapsed: Duration::ZERO,
        })
    }

    fn merge(&mut self, other: Outcome) -> anyhow::Result<()> {
        self.latency
            .add(&other.latency)
            .context("merging latency histograms")?;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        Ok(())
    }

    pub fn requests(&self) -> u64 {
        self.statuses.values().sum()
    }

    pub fn throughput(&self) -> f64 {
        self.requests() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Milliseconds at `quantile`.
    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1000.0
    }
}

/// Runs `requests` against `addr` at `pace`.
pub async fn run(addr: SocketAddr, requests: &Requests, pace: Pace) -> anyhow::Result<Outcome> {
    let lanes = match pace {
        Pace::Concurrency(c) | Pace::Rate { connections: c, .. } => c.max(1),
    };
    // Connected before the clock starts: a run measures requests, not handshakes.
    let mut senders = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        senders.push(connect(addr).await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(lanes);
    for (lane, sender) in senders.into_iter().enumerate() {
        let requests = requests.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut lane_state = Lane {
                addr,
                sender: Some(sender),
                outcome: Outcome::new()?,
            };
            match pace {
                Pace::Concurrency(_) => loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests.count {
                        break;
                    }
                    let sent = Instant::now();
                    lane_state.send(requests.request(i), sent).await;
                },
                Pace::Rate { per_second, .. } => {
                    for i in (lane..requests.count).step_by(lanes) {
                        let due = start + Duration::from_secs_f64(i as f64 / per_second);
                        // On time: latency counts from the send (the timer's own slack is not
                        // the server's). Late because the last response was slow: from when it
                        // was due, so a stall is not hidden (coordinated omission).
                        let from = if Instant::now() < due {
                            tokio::time::sleep_until(due.into()).await;
                            Instant::now()
                        } else {
                            due
                        };
                        lane_state.send(requests.request(i), from).await;
                    }
                }
            }
            anyhow::Ok(lane_state.outcome)
        }));
    }
    let mut total = Outcome::new()?;
    for task in tasks {
        total.merge(task.await.context("a client task panicked")??)?;
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

struct Lane {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
    outcome: Outcome,
}

impl Lane {
    /// Sends one request and records its status and latency; a broken connection is counted
    /// (status 0) and replaced.
    async fn send(&mut self, request: Request<Full<Bytes>>, from: Instant) {
        let status = match self.exchange(request).await {
            Ok(status) => status,
            Err(_) => {
                self.sender = None;
                0
            }
        };
        let micros = u64::try_from(from.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.outcome.latency.saturating_record(micros.max(1));
        *self.outcome.statuses.entry(status).or_default() += 1;
    }

    async fn exchange(&mut self, request: Request<Full<Bytes>>) -> anyhow::Result<u16> {
        let sender = match &mut self.sender {
            Some(sender) => sender,
            None => self.sender.insert(connect(self.addr).await?),
        };
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        // Read to the end, so the connection can carry the next request.
        response.into_body().collect().await?;
        Ok(status)
    }
}

/// One keep-alive HTTP/1.1 connection.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the peer closes; a failure shows up as the next
        // request's error.
        let _ = connection.await;
    });
    Ok(sender)
}

/// One request on a fresh connection: its status and body (setup calls, not measured).
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &'static str,
    body: Bytes,
) -> anyhow::Result<(u16, Bytes)> {
    let requests = Requests {
        method,
        path,
        bodies: Arc::new(vec![body]),
        count: 1,
    };
    let mut sender = connect(addr).await?;
    sender.ready().await?;
    let response = sender.send_request(requests.request(0)).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
