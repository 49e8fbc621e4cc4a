//! Shared by the data plane's integration tests: real databases of both kinds, and gateways.
#![allow(dead_code)] // each test binary uses its own part

use std::net::TcpListener;
use std::path::Path;

use aegis_seal_gateway::infrastructure::config::{ConfigSources, GatewayConfig, load_config};

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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
