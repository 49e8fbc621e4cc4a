//! What the gateway is measured against, in the same run, and what is timed inside this process:
//!
//! - the crypto ceiling: one Ed25519 envelope signature and one RS256 token verified per
//!   envelope, on one core, through the gateway's own `infrastructure::auth` code;
//! - a snapshot reload of many workflows, through the gateway's own `gateway::reload`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use aegis_seal_gateway::application::clock::Clock;
use aegis_seal_gateway::domain::envelope::Envelope;
use aegis_seal_gateway::gateway::RunningGateway;
use aegis_seal_gateway::infrastructure::auth::envelope::{parse_session_key, verify_signature};
use aegis_seal_gateway::infrastructure::auth::token::SealTokenVerifier;
use aegis_seal_gateway::infrastructure::config::{ConfigSources, load_config};
use aegis_seal_gateway::infrastructure::http_client::{HttpClient, HttpClientConfig};
use aegis_seal_gateway::infrastructure::persistence::{CatalogSource, Database};
use aegis_seal_gateway::infrastructure::reload::folder::load_folder;
use anyhow::{Context, anyhow};
use bytes::Bytes;

use crate::signer::{Signer, unix_now};
use crate::{affinity, manifests};

pub struct Ceiling {
    pub envelopes: usize,
    pub elapsed: Duration,
}

impl Ceiling {
    pub fn per_second(&self) -> f64 {
        self.envelopes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn micros_each(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e6 / self.envelopes.max(1) as f64
    }
}

/// Verifies every envelope's signature and token on the gateway's core, as the gateway does; the
/// parse is done beforehand and not timed.
pub fn crypto_ceiling(signer: &Signer, envelopes: &[Bytes], pin: bool) -> anyhow::Result<Ceiling> {
    let session = signer.session()?;
    let key = parse_session_key(session["public_key_b64"].as_str().unwrap_or_default())
        .map_err(|e| anyhow!("session key: {e}"))?;
    let settings = aegis_seal_crds::gateway::AuthSettings {
        seal_jwt_public_key_pem: signer.rs256_public_key_pem.clone(),
        seal_jwt_eddsa_public_key_pem: signer.eddsa_public_key_pem.clone(),
        ..Default::default()
    };
    let tokens = SealTokenVerifier::from_settings(&settings).map_err(|e| anyhow!(e))?;
    let parsed: Vec<Envelope> = envelopes
        .iter()
        .map(|b| Envelope::parse(b))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("parsing an envelope: {e}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if pin {
                    affinity::pin_current_thread(affinity::GATEWAY_CPU)?;
                }
                let now = unix_now();
                let start = Instant::now();
                for envelope in &parsed {
                    verify_signature(envelope, &key).map_err(|e| anyhow!("signature: {e}"))?;
                    tokens
                        .verify(&envelope.security_token, now)
                        .map_err(|e| anyhow!("token: {e}"))?;
                }
                Ok(Ceiling {
                    envelopes: parsed.len(),
                    elapsed: start.elapsed(),
                })
            })
            .join()
            .map_err(|_| anyhow!("the ceiling thread panicked"))?
    })
}

pub struct Reload {
    pub workflows: usize,
    /// Reading the manifests folder and compiling it into a snapshot (`load_folder`).
    pub load: Duration,
    /// Compiling templates and JSONPaths, mirroring the catalog tables, swapping (`gateway::reload`).
    pub swap: Duration,
}

/// Starts a gateway in this process serving `workflows` generated workflows, rewrites them, and
/// times the reload the folder watcher would do: `load_folder`, then `gateway::reload`.
pub async fn reload_in_process(
    dir: &Path,
    upstream: SocketAddr,
    workflows: usize,
    signer: &Signer,
) -> anyhow::Result<Reload> {
    let folder = dir.join("manifests");
    manifests::write(&folder, upstream, workflows, 1)?;
    let config_path = dir.join("seal-gateway-config.yaml");
    let database = format!("sqlite://{}", dir.join("gateway.db").display());
    std::fs::write(
        &config_path,
        manifests::config("127.0.0.1:0".parse()?, &database, signer),
    )?;
    let config = load_config(&ConfigSources {
        explicit: Some(&config_path),
        env: &|_| None,
        home: None,
        working_dir: dir.to_path_buf(),
    })?;
    let http = HttpClient::new(HttpClientConfig::default()).map_err(|e| anyhow!("{e}"))?;
    let snapshot = load_folder(&folder, &http).await?;
    let db = Database::connect(config.database_url())
        .await
        .map_err(|e| anyhow!("{e}"))?;
    db.sync_catalog(&snapshot, CatalogSource::Manifest).await?;
    let gateway = RunningGateway::start(&config, db, snapshot, Clock::System)
        .await
        .context("starting the in-process gateway")?;

    manifests::write(&folder, upstream, workflows, 2)?;
    let start = Instant::now();
    let snapshot = load_folder(&folder, &http).await?;
    let loaded = Instant::now();
    gateway
        .reload(snapshot, CatalogSource::Manifest)
        .await
        .map_err(|e| anyhow!("reload: {e}"))?;
    let swapped = Instant::now();
    gateway.shutdown().await;
    Ok(Reload {
        workflows,
        load: loaded - start,
        swap: swapped - loaded,
    })
}
