//! The orchestrator and the agent: one session, and envelopes pre-signed in bulk before a run, each
//! with a fresh `jti`, a real RS256 security token and a real Ed25519 signature over the canonical
//! message the gateway computes (its own `Envelope::canonical_message`, so both sides agree).

use aegis_seal_gateway::domain::envelope::Envelope;
use anyhow::{Context, anyhow};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{Value, json};

use crate::affinity;

/// The keys of the data plane's SDK test vectors: an RS256 and an EdDSA token issuer, and an agent
/// seed. A benchmark needs real keys, not secret ones; these are already public.
const VECTORS: &str = include_str!("../../dataplane/tests/vectors/python-sdk.json");

/// The SecurityContext the bench's session runs under (see `manifests::security_context`).
pub const SECURITY_CONTEXT: &str = "bench-agents";
const TENANT: &str = "bench";

pub struct Signer {
    agent: SigningKey,
    /// Parsed once: `jsonwebtoken::encode` parses and validates the RSA key on every call (about
    /// 6 ms), which would make pre-signing most of the run.
    token_key: RsaKeyPair,
    random: SystemRandom,
    pub issuer: String,
    pub audience: String,
    pub rs256_public_key_pem: String,
    pub eddsa_public_key_pem: String,
    pub execution_id: String,
    agent_id: String,
}

/// What one envelope calls.
#[derive(Clone)]
pub struct Call {
    pub tool: &'static str,
    pub arguments: Value,
}

impl Signer {
    pub fn new() -> anyhow::Result<Self> {
        let vectors: Value = serde_json::from_str(VECTORS).context("reading the SDK vectors")?;
        let text = |v: &Value| -> anyhow::Result<String> {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("SDK vectors: expected a string, got {v}"))
        };
        let seed_hex = text(&vectors["agent_ed25519_seed_hex"])?;
        let seed: Vec<u8> = (0..seed_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&seed_hex[i..i + 2], 16))
            .collect::<Result<_, _>>()
            .context("agent seed hex")?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| anyhow!("the agent seed must be 32 bytes"))?;
        let issuer = &vectors["token_issuer"];
        let pem = text(&issuer["rs256_private_key_pem"])?;
        let der = STANDARD
            .decode(
                pem.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .context("RS256 issuer key PEM")?;
        let token_key =
            RsaKeyPair::from_pkcs8(&der).map_err(|e| anyhow!("RS256 issuer key: {e}"))?;
        Ok(Self {
            agent: SigningKey::from_bytes(&seed),
            token_key,
            random: SystemRandom::new(),
            issuer: text(&issuer["iss"])?,
            audience: text(&issuer["aud"])?,
            rs256_public_key_pem: text(&issuer["rs256_public_key_pem"])?,
            eddsa_public_key_pem: text(&issuer["eddsa_public_key_pem"])?,
            // Unique per run, so a reused Postgres database never mixes two runs' sessions.
            execution_id: format!("bench-{}", uuid::Uuid::new_v4().simple()),
            agent_id: "bench-agent".into(),
        })
    }

    /// The RS256 security token for `jti`, valid for ten minutes from `now`.
    fn token(&self, jti: &str, now: i64) -> anyhow::Result<String> {
        let claims = json!({
            "sub": self.agent_id, "exec_id": self.execution_id, "tenant_id": TENANT,
            "scp": SECURITY_CONTEXT, "wid": "bench://load-generator", "jti": jti,
            "iat": now, "exp": now + 600, "iss": self.issuer, "aud": self.audience,
        });
        let mut token = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.token_key.public_modulus_len()];
        self.token_key
            .sign(
                &RSA_PKCS1_SHA256,
                &self.random,
                token.as_bytes(),
                &mut signature,
            )
            .map_err(|_| anyhow!("signing the security token failed"))?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(token)
    }

    /// The body of `POST /v1/seal/sessions`, as the orchestrator registers the agent.
    pub fn session(&self) -> anyhow::Result<Value> {
        Ok(json!({
            "execution_id": self.execution_id, "agent_id": self.agent_id,
            "security_context": SECURITY_CONTEXT,
            "public_key_b64": STANDARD.encode(self.agent.verifying_key().to_bytes()),
            "security_token": self.token(&uuid::Uuid::new_v4().to_string(), unix_now())?,
            "allowed_tool_patterns": ["*"],
        }))
    }

    /// One signed envelope, dated `now`.
    pub fn envelope(&self, call: &Call, now: i64) -> anyhow::Result<Bytes> {
        let mut envelope = json!({
            "protocol": "seal/v1",
            "security_token": self.token(&uuid::Uuid::new_v4().to_string(), now)?,
            "signature": "",
            "payload": {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                        "params": {"name": call.tool, "arguments": call.arguments}},
            "timestamp": now,
        });
        let canonical = Envelope::parse(envelope.to_string().as_bytes())
            .and_then(|e| e.canonical_message())
            .map_err(|e| anyhow!("canonicalizing the envelope: {e}"))?;
        envelope["signature"] = STANDARD
            .encode(self.agent.sign(&canonical).to_bytes())
            .into();
        Ok(Bytes::from(envelope.to_string()))
    }

    /// `n` envelopes for `call`, signed on every core (the gateway is idle meanwhile): RS256
    /// signing is the slow part, about a millisecond each.
    pub fn presign(&self, call: &Call, n: usize) -> anyhow::Result<Vec<Bytes>> {
        let threads = affinity::cpus().max(1);
        let per_thread = n.div_ceil(threads);
        let now = unix_now();
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let count = per_thread.min(n.saturating_sub(t * per_thread));
                    scope.spawn(move || {
                        affinity::allow_all_cpus();
                        (0..count)
                            .map(|_| self.envelope(call, now))
                            .collect::<anyhow::Result<Vec<_>>>()
                    })
                })
                .collect();
            let mut all = Vec::with_capacity(n);
            for worker in workers {
                all.extend(
                    worker
                        .join()
                        .map_err(|_| anyhow!("a signing thread panicked"))??,
                );
            }
            Ok(all)
        })
    }
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
