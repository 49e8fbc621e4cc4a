//! The local upstream API: fixed JSON answers, so what is measured is the gateway, not the API.
//!
//! - `POST /fixed`: the one-step workflow's call, and the direct reference;
//! - `POST /repos`, `POST /repos/{id}/teams`, `GET /repos/{id}`: the three-step workflow's calls
//!   (the quickstart's repository API, without its state);
//! - `GET /v1/secret/data/bench`: OpenBao's KV v2 read of the static credential `bench`, for the
//!   workload both this gateway and upstream's run (upstream resolves a credential on every call).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub const FIXED: &str =
    r#"{"status":"ok","id":42,"items":[{"name":"a","size":1},{"name":"b","size":2}]}"#;
const REPO: &str = r#"{"id":42,"name":"bench","private":true,"teams":[]}"#;
const GRANT: &str = r#"{"team":"platform","permission":"push"}"#;
/// The KV v2 answer: `data.data.token` is what a `StaticRef` credential sends as a bearer token.
const KV_SECRET: &str = r#"{"request_id":"bench","lease_id":"","renewable":false,"lease_duration":0,"data":{"data":{"token":"bench-upstream-token"},"metadata":{"version":1,"destroyed":false}}}"#;
const REPO_WITH_TEAM: &str =
    r#"{"id":42,"name":"bench","private":true,"teams":[{"team":"platform","permission":"push"}]}"#;

/// Serves on a free port of 127.0.0.1 until the process ends.
pub async fn start() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // Read the body as a real API would, then ignore it.
    let _ = req.into_body().collect().await;
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let (status, body) = match (method, segments.as_slice()) {
        (Method::POST, ["fixed"]) => (StatusCode::OK, FIXED),
        (Method::POST, ["repos"]) => (StatusCode::CREATED, REPO),
        (Method::POST, ["repos", _, "teams"]) => (StatusCode::OK, GRANT),
        (Method::GET, ["repos", _]) => (StatusCode::OK, REPO_WITH_TEAM),
        (Method::GET, ["v1", "secret", "data", "bench"]) => (StatusCode::OK, KV_SECRET),
        _ => (StatusCode::NOT_FOUND, r#"{"message":"not found"}"#),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
