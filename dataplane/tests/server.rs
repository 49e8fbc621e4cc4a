//! The hyper server in-process: health and readiness, limits, protocols, pool starvation, shutdown.

mod support;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aegis_seal_crds::Snapshot;
use aegis_seal_gateway::application::catalog::{Entries, add_default_contexts};
use aegis_seal_gateway::application::clock::Clock;
use aegis_seal_gateway::gateway::RunningGateway;
use aegis_seal_gateway::infrastructure::persistence::{Database, PoolSettings};
use aegis_seal_gateway::infrastructure::telemetry;

/// Log lines written by any gateway in this test binary (the subscriber is process-wide).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        // The binary's own filter for RUST_LOG=info: the lines exactly as a pod's log shows them.
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter(telemetry::log_filter(Some("info")))
            .with_writer(move || LogWriter(sink.clone()))
            .init();
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One connection, given up on quickly: a test that holds it starves the request path.
const ONE_CONNECTION: PoolSettings = PoolSettings {
    max_connections: 1,
    min_connections: 0,
    acquire_timeout: Duration::from_millis(300),
    idle_timeout: Duration::from_secs(60),
};

/// The runbook's line, exactly as a pod's log shows it.
fn assert_starvation_logged(logs: &Mutex<Vec<u8>>, backend: &str) {
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("ERROR sqlx::pool: database pool acquire timed out — request path starved"),
        "{backend}: runbook log line missing from:\n{text}"
    );
}

async fn start(db: Database) -> RunningGateway {
    let config = support::gateway_config(&[]);
    RunningGateway::start(&config, db, Snapshot::default(), Clock::System)
        .await
        .unwrap()
}

async fn sqlite(dir: &tempfile::TempDir, pool: PoolSettings) -> Database {
    Database::connect_with(&support::sqlite_url(dir.path()), pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn health_never_touches_the_database_and_ready_reports_starvation() {
    let logs = captured_logs();
    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect_with(&url, ONE_CONNECTION).await.unwrap();
        let gateway = start(db.clone()).await;
        let base = format!("http://{}", gateway.local_addr);
        let client = reqwest::Client::new();

        let ready = client.get(format!("{base}/ready")).send().await.unwrap();
        assert_eq!(ready.status(), 200, "{backend}");
        let body: serde_json::Value = ready.json().await.unwrap();
        assert_eq!(body["status"], "ready");
        // With nothing declared, the served snapshot is the built-in default SecurityContexts.
        let mut served = Entries::default();
        add_default_contexts(&mut served);
        assert_eq!(body["snapshot_hash"], served.hash());

        // Take the only connection: the request path is starved.
        let held_sqlite = match &db {
            Database::Sqlite(p) => Some(p.acquire().await.unwrap()),
            Database::Postgres(_) => None,
        };
        let held_pg = match &db {
            Database::Postgres(p) => Some(p.acquire().await.unwrap()),
            Database::Sqlite(_) => None,
        };

        let health = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(
            health.status(),
            200,
            "{backend}: /health must not wait for the pool"
        );
        assert_eq!(
            health.headers()["content-type"],
            "text/plain; charset=utf-8"
        );
        assert_eq!(health.text().await.unwrap(), "ok");

        let ready = client.get(format!("{base}/ready")).send().await.unwrap();
        assert_eq!(ready.status(), 503, "{backend}");
        assert_eq!(ready.headers()["retry-after"], "1");
        let body: serde_json::Value = ready.json().await.unwrap();
        assert_eq!(body["error"], "database pool acquire timeout");

        assert_starvation_logged(&logs, backend);
        drop((held_sqlite, held_pg));
        gateway.shutdown().await;
    }
}

#[tokio::test]
async fn a_starved_pool_answers_an_invocation_503_and_the_retried_envelope_still_counts() {
    let logs = captured_logs();
    let signer = support::Signer::from_vectors();
    for (backend, url, _dir) in support::both_backends().await {
        let db = Database::connect_with(&url, ONE_CONNECTION).await.unwrap();
        let now = chrono::Utc::now();
        // Stored, not registered through the API: the session is not cached, so the call must read it.
        db.upsert_session(&signer.session_record(now))
            .await
            .unwrap();
        let config = signer.gateway_config(&[]);
        let gateway =
            RunningGateway::start(&config, db.clone(), Snapshot::default(), Clock::System)
                .await
                .unwrap();
        let invoke = format!("http://{}/v1/invoke", gateway.local_addr);
        let envelope = signer.envelope(
            "no-such-tool",
            serde_json::json!({}),
            &uuid::Uuid::new_v4().to_string(),
            now.timestamp(),
        );
        let client = reqwest::Client::new();

        // Take the only connection: the invocation cannot read its session.
        let held = match &db {
            Database::Sqlite(p) => Box::new(p.acquire().await.unwrap()) as Box<dyn std::any::Any>,
            Database::Postgres(p) => Box::new(p.acquire().await.unwrap()),
        };
        let starved = client
            .post(&invoke)
            .body(envelope.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(starved.status(), 503, "{backend}");
        assert_eq!(starved.headers()["retry-after"], "1", "{backend}");
        let body: serde_json::Value = starved.json().await.unwrap();
        assert_eq!(body["error"], "database pool acquire timeout", "{backend}");
        assert_starvation_logged(&logs, backend);

        // Nothing was consumed: the agent's retry of the same envelope is verified and reaches
        // the catalog (no such tool), not refused as a replay.
        drop(held);
        let retried = client.post(&invoke).body(envelope).send().await.unwrap();
        let status = retried.status();
        let body: serde_json::Value = retried.json().await.unwrap();
        assert_eq!(status, 404, "{backend}: {body}");
        gateway.shutdown().await;
    }
}

#[tokio::test]
async fn unknown_paths_wrong_methods_and_oversized_bodies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(sqlite(&dir, PoolSettings::SQLITE).await).await;
    let base = format!("http://{}", gateway.local_addr);
    let client = reqwest::Client::new();

    let r = client.get(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().await.unwrap(), "");

    let r = client.post(format!("{base}/health")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");

    let limit = gateway.state.max_body_bytes;
    assert_eq!(limit, 2 * 1024 * 1024, "default body limit");
    let r = client
        .post(format!("{base}/v1/invoke"))
        .body(vec![b'x'; usize::try_from(limit).unwrap() + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], format!("request body exceeds {limit} bytes"));
    gateway.shutdown().await;
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(sqlite(&dir, PoolSettings::SQLITE).await).await;
    let addr = gateway.local_addr;
    let status = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        let big = "a".repeat(128 * 1024);
        let request = format!("GET /health HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
        // The server may close before reading everything; what it answered is what counts.
        let _ = stream.write_all(request.as_bytes());
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        String::from_utf8_lossy(&response).into_owned()
    })
    .await
    .unwrap();
    assert!(
        status.starts_with("HTTP/1.1 431"),
        "expected 431 Request Header Fields Too Large, got {status:?}"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn speaks_http2_cleartext_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(sqlite(&dir, PoolSettings::SQLITE).await).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = client
        .get(format!("http://{}/health", gateway.local_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.text().await.unwrap(), "ok");
    gateway.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_closes_idle_keep_alive_connections() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(sqlite(&dir, PoolSettings::SQLITE).await).await;
    let addr = gateway.local_addr;
    // An idle keep-alive connection must not hold the shutdown up.
    let client = reqwest::Client::new();
    let r = client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");

    tokio::time::timeout(Duration::from_secs(10), gateway.shutdown())
        .await
        .expect("shutdown drains promptly");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}
