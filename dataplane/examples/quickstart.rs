//! The quickstart's other parties, so one command shows a signed call succeed:
//!
//! - `keys`: generates the orchestrator's token-signing key (Ed25519) and the agent's session key;
//! - `upstream`: a small repository API, the one `examples/quickstart/manifests` describe;
//! - `call`: registers a session (as the orchestrator does), signs an envelope (as the SEAL SDKs do),
//!   invokes the workflow, and prints the result and the audit rows the call wrote.
//!
//! `scripts/quickstart.sh` runs them in order around the gateway.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aegis_seal_gateway::domain::envelope::Envelope;
use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use sqlx::Row;

#[derive(Parser)]
#[command(about = "The SEAL Gateway quickstart's orchestrator, agent and upstream API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes issuer.pem, issuer.pub.pem and agent.key into DIR.
    Keys {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Serves the example repository API on BIND until stopped.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:8090")]
        bind: SocketAddr,
    },
    /// Registers a session, signs and sends one invocation, prints the result and its audit rows.
    Call {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "http://127.0.0.1:8089")]
        gateway: String,
        /// The gateway's SQLite database, to show the audit rows.
        #[arg(long)]
        database: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Keys { dir } => keys(&dir),
        Command::Upstream { bind } => upstream(bind).await,
        Command::Call {
            dir,
            gateway,
            database,
        } => call(&dir, &gateway, &database).await,
    }
}

fn random_key() -> anyhow::Result<SigningKey> {
    // Seed from the OS: uuid v4 draws 122 random bits from it; two of them make 32 bytes.
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    Ok(SigningKey::from_bytes(&seed))
}

fn keys(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let issuer = random_key()?;
    let pem = issuer
        .to_pkcs8_pem(Default::default())
        .context("encoding the issuer key")?;
    std::fs::write(dir.join("issuer.pem"), pem.as_bytes())?;
    let public = issuer
        .verifying_key()
        .to_public_key_pem(Default::default())
        .context("encoding the issuer public key")?;
    std::fs::write(dir.join("issuer.pub.pem"), public)?;
    std::fs::write(
        dir.join("agent.key"),
        STANDARD.encode(random_key()?.to_bytes()),
    )?;
    println!("keys written to {}", dir.display());
    Ok(())
}

/// The repository API: POST /repos, POST /repos/{id}/teams, GET /repos/{id}.
async fn upstream(bind: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    println!("example upstream API listening on {bind}");
    let repos: Arc<Mutex<HashMap<u64, Value>>> = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let repos = repos.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let repos = repos.clone();
                async move { Ok::<_, Infallible>(repository_api(req, &repos).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn repository_api(
    req: Request<Incoming>,
    repos: &Mutex<HashMap<u64, Value>>,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut repos = repos.lock().unwrap_or_else(|e| e.into_inner());
    let (status, out) = match (method, segments.as_slice()) {
        (Method::POST, ["repos"]) => {
            let id = repos.len() as u64 + 1;
            let repo =
                json!({"id": id, "name": input["name"], "private": input["private"], "teams": []});
            repos.insert(id, repo.clone());
            (StatusCode::CREATED, repo)
        }
        (Method::POST, ["repos", id, "teams"]) => {
            match id.parse().ok().and_then(|id| repos.get_mut(&id)) {
                Some(repo) => {
                    let grant = json!({"team": input["team"], "permission": input["permission"]});
                    if let Some(teams) = repo["teams"].as_array_mut() {
                        teams.push(grant.clone());
                    }
                    (StatusCode::OK, grant)
                }
                None => (
                    StatusCode::NOT_FOUND,
                    json!({"message": "no such repository"}),
                ),
            }
        }
        (Method::GET, ["repos", id]) => match id.parse().ok().and_then(|id: u64| repos.get(&id)) {
            Some(repo) => (StatusCode::OK, repo.clone()),
            None => (
                StatusCode::NOT_FOUND,
                json!({"message": "no such repository"}),
            ),
        },
        _ => (StatusCode::NOT_FOUND, json!({"message": "not found"})),
    };
    let mut response = Response::new(Full::new(Bytes::from(out.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

async fn call(dir: &Path, gateway: &str, database: &str) -> anyhow::Result<()> {
    let issuer = jsonwebtoken::EncodingKey::from_ed_pem(&std::fs::read(dir.join("issuer.pem"))?)
        .context("reading issuer.pem")?;
    let agent_seed = STANDARD.decode(std::fs::read_to_string(dir.join("agent.key"))?.trim())?;
    let agent = SigningKey::from_bytes(
        &agent_seed
            .try_into()
            .map_err(|_| anyhow::anyhow!("agent.key must hold 32 bytes"))?,
    );
    let client = reqwest::Client::new();
    let execution_id = format!("quickstart-{}", uuid::Uuid::new_v4().simple());
    let now = chrono::Utc::now().timestamp();

    // 1. The orchestrator registers the agent's session and mints its security token.
    let claims = json!({
        "sub": "quickstart-agent", "exec_id": execution_id, "tenant_id": "quickstart",
        "scp": "quickstart-agents", "wid": "quickstart://local", "jti": uuid::Uuid::new_v4().to_string(),
        "iat": now, "exp": now + 600, "iss": "aegis-orchestrator", "aud": "aegis-agents",
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &claims,
        &issuer,
    )?;
    let session = json!({
        "execution_id": execution_id, "agent_id": "quickstart-agent",
        "security_context": "quickstart-agents",
        "public_key_b64": STANDARD.encode(agent.verifying_key().to_bytes()),
        "security_token": token, "allowed_tool_patterns": ["*"],
    });
    let r = client
        .post(format!("{gateway}/v1/seal/sessions"))
        .json(&session)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "registering the session failed: {} {}",
            r.status(),
            r.text().await?
        );
    }
    println!("session {execution_id} registered");

    // 2. The agent signs a tools/call envelope the way the SEAL SDKs do.
    let arguments = json!({"repo_name": "hello-seal", "team": "platform"});
    let payload = json!({
        "jsonrpc": "2.0", "id": "req-1", "method": "tools/call",
        "params": {"name": "create_repository_with_teams", "arguments": arguments},
    });
    let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut envelope = json!({
        "protocol": "seal/v1", "security_token": token, "signature": "",
        "payload": payload, "timestamp": timestamp,
    });
    // The canonical message: keys sorted at every level, compact, whole seconds.
    let canonical = Envelope::parse(envelope.to_string().as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .canonical_message()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    envelope["signature"] = STANDARD.encode(agent.sign(&canonical).to_bytes()).into();

    // 3. The gateway verifies, authorizes and runs the workflow.
    let r = client
        .post(format!("{gateway}/v1/seal/invoke"))
        .json(&envelope)
        .send()
        .await?;
    let status = r.status();
    let body: Value = r.json().await?;
    println!("POST /v1/seal/invoke -> {status}");
    println!("{}", serde_json::to_string_pretty(&body)?);
    if !status.is_success() {
        bail!("the invocation failed");
    }

    // 4. What the gateway recorded, read the way the runbook reads it.
    let db = sqlx::SqlitePool::connect(database).await?;
    let rows = sqlx::query(
        "SELECT created_at, event_type, payload FROM gateway_events \
         WHERE payload->>'execution_id' = ? ORDER BY id",
    )
    .bind(&execution_id)
    .fetch_all(&db)
    .await?;
    println!("\naudit rows for {execution_id}:");
    for row in rows {
        let created: String = row.get("created_at");
        let event: String = row.get("event_type");
        let payload: String = row.get("payload");
        println!("  {created}  {event:<28} {payload}");
    }
    Ok(())
}
