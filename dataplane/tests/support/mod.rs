//! Shared by the data plane's integration tests: real databases of both kinds, gateways, and HTTP
//! servers on 127.0.0.1 for the peers they talk to.
#![allow(dead_code)] // each test binary uses its own part

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;

use aegis_seal_crds::{Resources, Snapshot, compile, parse_manifests};
use aegis_seal_gateway::infrastructure::config::{ConfigSources, GatewayConfig, load_config};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// The Postgres server the test command started. Postgres tests never skip: without it they fail.
pub fn postgres_server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL must point at a Postgres server: run scripts/test.sh, which starts one"
        )
    })
}

/// A new, empty database on the test server, so tests do not see each other's rows.
pub async fn fresh_postgres_url() -> String {
    let server = postgres_server_url();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(&server)
        .await
        .expect("connect to DATABASE_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .expect("create a test database");
    pool.close().await;
    let (base, _) = server
        .rsplit_once('/')
        .expect("DATABASE_URL has a database name");
    format!("{base}/{name}")
}

/// `n` replicas' counters (`make` of a database, each on its own connection pool, as in a
/// cluster) on a fresh Postgres database, and one more connection to it for the test itself.
pub async fn postgres_replicas<T>(
    n: usize,
    make: impl Fn(&aegis_seal_gateway::infrastructure::persistence::Database) -> T,
) -> (
    aegis_seal_gateway::infrastructure::persistence::Database,
    Vec<T>,
) {
    use aegis_seal_gateway::infrastructure::persistence::Database;
    let url = fresh_postgres_url().await;
    let mut replicas = Vec::new();
    for _ in 0..n {
        replicas.push(make(&Database::connect(&url).await.unwrap()));
    }
    (Database::connect(&url).await.unwrap(), replicas)
}

/// A SQLite file in a folder that does not exist yet (the gateway must create it).
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}/data/gateway.db", dir.display())
}

/// One database URL of each backend, with the temp folder that keeps the SQLite one alive.
pub async fn both_backends() -> Vec<(&'static str, String, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite_url(dir.path());
    vec![
        ("sqlite", sqlite, dir),
        (
            "postgres",
            fresh_postgres_url().await,
            tempfile::tempdir().unwrap(),
        ),
    ]
}

/// The snapshot of `manifests` (`---`-separated YAML), compiled as the folder loader compiles it.
/// Panics naming every rejected resource, so that no test runs on less than it wrote.
pub fn snapshot_of(manifests: &str) -> Snapshot {
    let mut resources = Resources::default();
    parse_manifests(manifests, &mut resources).unwrap();
    let compiled = compile(&resources);
    let problems: Vec<String> = compiled.rejected().map(|r| r.message()).collect();
    assert!(problems.is_empty(), "{problems:?}");
    compiled.snapshot
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real HTTP/1.1 server on 127.0.0.1 (an ephemeral port) that answers every request with
/// `handler`: for the peers that speak a public contract over the wire, such as an upstream API,
/// OpenBao, Keycloak, a JWKS endpoint, a semantic judge or an OTLP collector. Returns its address
/// once it listens; it serves each connection on a task of its own until the runtime ends, and a
/// failed `accept` is skipped.
pub async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(http::Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = http::Response<Full<Bytes>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = handler(request);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Settings for an in-process gateway on an ephemeral port, from environment-style overrides.
pub fn gateway_config(overrides: &[(&str, &str)]) -> GatewayConfig {
    let dir = tempfile::tempdir().unwrap();
    let mut env: Vec<(String, String)> = vec![
        ("SEAL_GATEWAY_BIND".into(), "127.0.0.1:0".into()),
        ("SEAL_GATEWAY_AUTH_DISABLED".into(), "true".into()),
    ];
    env.extend(
        overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    load_config(&ConfigSources {
        explicit: None,
        env: &lookup,
        home: Some(dir.path().to_path_buf()),
        working_dir: dir.path().to_path_buf(),
    })
    .expect("test config")
}

/// Signs envelopes the way the SEAL SDKs do, with the keys of `tests/vectors/python-sdk.json`.
pub struct Signer {
    pub agent: ed25519_dalek::SigningKey,
    token_key: jsonwebtoken::EncodingKey,
    pub rs256_public_key_pem: String,
    pub issuer: String,
    pub audience: String,
    pub session: serde_json::Value,
}

impl Signer {
    /// [`gateway_config`] trusting this signer's RS256 token key, plus `overrides`.
    pub fn gateway_config(&self, overrides: &[(&str, &str)]) -> GatewayConfig {
        let mut env = vec![(
            "SEAL_GATEWAY_SEAL_JWT_PUBLIC_KEY_PEM",
            self.rs256_public_key_pem.as_str(),
        )];
        env.extend_from_slice(overrides);
        gateway_config(&env)
    }

    pub fn from_vectors() -> Self {
        let path = format!(
            "{}/tests/vectors/python-sdk.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let seed = file["agent_ed25519_seed_hex"].as_str().unwrap();
        let seed: Vec<u8> = (0..seed.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&seed[i..i + 2], 16).unwrap())
            .collect();
        let issuer = &file["token_issuer"];
        Self {
            agent: ed25519_dalek::SigningKey::from_bytes(&seed.try_into().unwrap()),
            token_key: jsonwebtoken::EncodingKey::from_rsa_pem(
                issuer["rs256_private_key_pem"].as_str().unwrap().as_bytes(),
            )
            .unwrap(),
            rs256_public_key_pem: issuer["rs256_public_key_pem"].as_str().unwrap().into(),
            issuer: issuer["iss"].as_str().unwrap().into(),
            audience: issuer["aud"].as_str().unwrap().into(),
            session: file["session"].clone(),
        }
    }

    /// A signed envelope for `tool`, dated `now`, whose token carries `jti`.
    pub fn envelope(
        &self,
        tool: &str,
        arguments: serde_json::Value,
        jti: &str,
        now: i64,
    ) -> String {
        use base64::Engine;
        use ed25519_dalek::Signer as _;
        let claims = serde_json::json!({
            "sub": self.session["agent_id"], "exec_id": self.session["execution_id"],
            "tenant_id": self.session["tenant_id"], "scp": self.session["security_context"],
            "wid": "docker://test", "jti": jti, "iat": now, "exp": now + 3600,
            "iss": self.issuer, "aud": self.audience,
        });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &self.token_key,
        )
        .unwrap();
        let payload = serde_json::json!({
            "jsonrpc": "2.0", "id": "req-1", "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        });
        let unsigned = serde_json::json!({
            "protocol": "seal/v1", "security_token": token, "signature": "",
            "payload": payload, "timestamp": now,
        });
        let parsed =
            aegis_seal_gateway::domain::envelope::Envelope::parse(unsigned.to_string().as_bytes())
                .unwrap();
        let signature = self.agent.sign(&parsed.canonical_message().unwrap());
        let mut envelope = unsigned;
        envelope["signature"] = base64::engine::general_purpose::STANDARD
            .encode(signature.to_bytes())
            .into();
        envelope.to_string()
    }

    /// The session row the vectors' envelopes belong to.
    pub fn session_record(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> aegis_seal_gateway::infrastructure::persistence::SessionRecord {
        let text = |k: &str| self.session[k].as_str().unwrap().to_owned();
        aegis_seal_gateway::infrastructure::persistence::SessionRecord {
            execution_id: text("execution_id"),
            agent_id: text("agent_id"),
            security_context: text("security_context"),
            public_key_b64: text("public_key_b64"),
            security_token: "stored-by-the-orchestrator".into(),
            status: aegis_seal_gateway::infrastructure::persistence::SessionStatus::Active,
            expires_at: now + chrono::Duration::hours(1),
            allowed_tool_patterns: vec!["*".into()],
            tenant_id: self.session["tenant_id"].as_str().map(str::to_owned),
        }
    }
}

/// Statements of this database's other connections now running `function`, waiting for a lock
/// or not.
pub async fn statements_running(pool: &sqlx::PgPool, function: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() AND state = 'active' AND query LIKE '%' || $1 || '%'",
    )
    .bind(function)
    .fetch_one(pool)
    .await
    .expect("read pg_stat_activity")
}

/// Waits (up to 10 s) until `n` statements of this database's other connections run `function`.
pub async fn wait_for_statements(pool: &sqlx::PgPool, function: &str, n: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while statements_running(pool, function).await != n {
        assert!(
            std::time::Instant::now() < deadline,
            "{n} statements never ran {function}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// `synchronous_commit` within a transaction that runs `statement` on a session where it is on,
/// and after that transaction.
pub async fn synchronous_commit_around(
    pool: &sqlx::PgPool,
    statement: &'static str,
) -> [String; 2] {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET synchronous_commit = on")
        .execute(&mut *conn)
        .await
        .unwrap();
    let show = "SELECT current_setting('synchronous_commit')";
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    sqlx::query(statement).execute(&mut *tx).await.unwrap();
    let within: String = sqlx::query_scalar(show).fetch_one(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let after: String = sqlx::query_scalar(show)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    [within, after]
}
