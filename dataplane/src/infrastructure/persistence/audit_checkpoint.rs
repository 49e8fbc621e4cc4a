//! Signed checkpoints of the audit chain (`audit_checkpoints`). A checkpoint pins the chain head
//! (id and hash) under an Ed25519 signature: whoever rewrites rows must then also rewrite every
//! later row *and* forge the signature. Purges write one too, recording what they removed, so the
//! chain stays verifiable from its oldest remaining row.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sqlx::Row;

use super::events::sqlite_time;
use super::{Database, PersistenceError};

/// Signs checkpoints. Cheap to clone.
#[derive(Clone)]
pub struct CheckpointSigner {
    key: SigningKey,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("CheckpointSigner")
            .field("public_key", &self.public_key_b64())
            .finish()
    }
}

impl CheckpointSigner {
    /// A PKCS#8 PEM Ed25519 private key (`openssl genpkey -algorithm ed25519`).
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        SigningKey::from_pkcs8_pem(pem.trim())
            .map(|key| Self { key })
            .map_err(|e| format!("not a PKCS#8 PEM Ed25519 private key: {e}"))
    }

    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, String> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("no random source: {e}"))?;
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn public_key_b64(&self) -> String {
        STANDARD.encode(self.key.verifying_key().to_bytes())
    }

    /// The public key as `audit verify --public-key` takes it.
    pub fn public_key_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap_or_default()
    }
}

/// Reads an Ed25519 public key: SPKI PEM (`openssl pkey -pubout`) or 32 bytes in base64.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text)
            .map_err(|e| format!("not an Ed25519 public key PEM: {e}"));
    }
    let bytes = STANDARD
        .decode(text)
        .map_err(|_| "not a PEM public key nor base64".to_owned())?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "an Ed25519 public key is 32 bytes".to_owned())?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    Periodic,
    Purge,
}

impl CheckpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Periodic => "periodic",
            Self::Purge => "purge",
        }
    }
}

/// One row of `audit_checkpoints`.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub id: i64,
    pub kind: String,
    pub last_event_id: i64,
    pub last_hash: String,
    pub purged_through_id: Option<i64>,
    pub purged_through_hash: Option<String>,
    pub purged_events: i64,
    pub public_key: String,
    pub signature: String,
    pub created_at: DateTime<Utc>,
}

impl Checkpoint {
    /// What the signature covers: every column but the row id, one per line.
    fn signed_message(&self) -> String {
        signed_message(
            &self.kind,
            self.created_at,
            self.last_event_id,
            &self.last_hash,
            self.purged_through_id,
            self.purged_through_hash.as_deref(),
            self.purged_events,
        )
    }

    /// Checks the signature, against `trusted` when given, else against the key stored in the row
    /// (which proves the row is intact but not who wrote it).
    pub fn verify_signature(&self, trusted: Option<&VerifyingKey>) -> Result<(), String> {
        let stored = parse_public_key(&self.public_key)?;
        if let Some(trusted) = trusted
            && trusted != &stored
        {
            return Err("signed by another key than the one given".into());
        }
        let signature = STANDARD
            .decode(&self.signature)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or_else(|| "the signature is malformed".to_owned())?;
        stored
            .verify_strict(self.signed_message().as_bytes(), &signature)
            .map_err(|_| "the signature does not match the checkpoint".to_owned())
    }
}

fn signed_message(
    kind: &str,
    created_at: DateTime<Utc>,
    last_event_id: i64,
    last_hash: &str,
    purged_through_id: Option<i64>,
    purged_through_hash: Option<&str>,
    purged_events: i64,
) -> String {
    let optional = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    format!(
        "seal-audit-checkpoint-v1\n{kind}\n{}\n{last_event_id}\n{last_hash}\n{}\n{}\n{purged_events}",
        created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        optional(purged_through_id.map(|i| i.to_string())),
        optional(purged_through_hash.map(str::to_owned)),
    )
}

/// What a purge removed: rows up to `through_id`, the last of which had `through_hash`.
#[derive(Debug, Clone, PartialEq)]
pub struct Purged {
    pub through_id: i64,
    pub through_hash: Option<String>,
    pub events: i64,
}

/// A signed checkpoint ready to insert.
pub(super) struct NewCheckpoint {
    pub kind: CheckpointKind,
    pub created_at: DateTime<Utc>,
    pub last_event_id: i64,
    pub last_hash: String,
    pub purged: Option<Purged>,
    pub public_key: String,
    pub signature: String,
}

impl NewCheckpoint {
    pub fn sign(
        signer: &CheckpointSigner,
        kind: CheckpointKind,
        head: (i64, String),
        purged: Option<Purged>,
    ) -> Self {
        let created_at = Utc::now().trunc_subsecs(6);
        let message = signed_message(
            kind.as_str(),
            created_at,
            head.0,
            &head.1,
            purged.as_ref().map(|p| p.through_id),
            purged.as_ref().and_then(|p| p.through_hash.as_deref()),
            purged.as_ref().map_or(0, |p| p.events),
        );
        Self {
            kind,
            created_at,
            last_event_id: head.0,
            last_hash: head.1,
            purged,
            public_key: signer.public_key_b64(),
            signature: STANDARD.encode(signer.key.sign(message.as_bytes()).to_bytes()),
        }
    }
}

const INSERT_SQLITE: &str = "INSERT INTO audit_checkpoints (kind, last_event_id, last_hash, purged_through_id, purged_through_hash, purged_events, public_key, signature, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)";
const INSERT_POSTGRES: &str = "INSERT INTO audit_checkpoints (kind, last_event_id, last_hash, purged_through_id, purged_through_hash, purged_events, public_key, signature, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

pub(super) async fn insert_sqlite(
    conn: &mut sqlx::SqliteConnection,
    c: &NewCheckpoint,
) -> Result<(), PersistenceError> {
    sqlx::query(INSERT_SQLITE)
        .bind(c.kind.as_str())
        .bind(c.last_event_id)
        .bind(&c.last_hash)
        .bind(c.purged.as_ref().map(|p| p.through_id))
        .bind(c.purged.as_ref().and_then(|p| p.through_hash.clone()))
        .bind(c.purged.as_ref().map_or(0, |p| p.events))
        .bind(&c.public_key)
        .bind(&c.signature)
        .bind(sqlite_time(c.created_at))
        .execute(conn)
        .await?;
    Ok(())
}

pub(super) async fn insert_postgres(
    conn: &mut sqlx::PgConnection,
    c: &NewCheckpoint,
) -> Result<(), PersistenceError> {
    sqlx::query(INSERT_POSTGRES)
        .bind(c.kind.as_str())
        .bind(c.last_event_id)
        .bind(&c.last_hash)
        .bind(c.purged.as_ref().map(|p| p.through_id))
        .bind(c.purged.as_ref().and_then(|p| p.through_hash.clone()))
        .bind(c.purged.as_ref().map_or(0, |p| p.events))
        .bind(&c.public_key)
        .bind(&c.signature)
        .bind(c.created_at)
        .execute(conn)
        .await?;
    Ok(())
}

impl Database {
    /// Signs the chain head into `audit_checkpoints`, unless the newest checkpoint already names
    /// it (an idle gateway does not add a row per interval). Returns the checkpointed event id.
    pub async fn checkpoint_audit(
        &self,
        signer: &CheckpointSigner,
    ) -> Result<Option<i64>, PersistenceError> {
        let Some(head) = self.audit_head().await? else {
            return Ok(None);
        };
        let latest = self.latest_checkpointed_event().await?;
        if latest == Some(head.0) {
            return Ok(None);
        }
        let id = head.0;
        let checkpoint = NewCheckpoint::sign(signer, CheckpointKind::Periodic, head, None);
        match self {
            Self::Sqlite(pool) => insert_sqlite(&mut *pool.acquire().await?, &checkpoint).await?,
            Self::Postgres(pool) => {
                insert_postgres(&mut *pool.acquire().await?, &checkpoint).await?
            }
        }
        Ok(Some(id))
    }

    async fn latest_checkpointed_event(&self) -> Result<Option<i64>, PersistenceError> {
        const SQL: &str = "SELECT MAX(last_event_id) FROM audit_checkpoints";
        Ok(match self {
            Self::Sqlite(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
            Self::Postgres(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
        })
    }

    /// Every checkpoint, oldest first.
    pub async fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>, PersistenceError> {
        const SQL: &str = "SELECT id, kind, last_event_id, last_hash, purged_through_id, purged_through_hash, purged_events, public_key, signature, created_at FROM audit_checkpoints ORDER BY id";
        match self {
            Self::Sqlite(pool) => {
                let rows = sqlx::query(SQL).fetch_all(pool).await?;
                rows.iter()
                    .map(|r| {
                        let created: String = r.try_get(9)?;
                        let created_at = DateTime::parse_from_rfc3339(&created)
                            .map(|t| t.with_timezone(&Utc))
                            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                        checkpoint_from(r, created_at)
                    })
                    .collect()
            }
            Self::Postgres(pool) => {
                let rows = sqlx::query(SQL).fetch_all(pool).await?;
                rows.iter()
                    .map(|r| checkpoint_from(r, r.try_get(9)?))
                    .collect()
            }
        }
    }
}

fn checkpoint_from<'r, R>(
    r: &'r R,
    created_at: DateTime<Utc>,
) -> Result<Checkpoint, PersistenceError>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Checkpoint {
        id: r.try_get(0)?,
        kind: r.try_get(1)?,
        last_event_id: r.try_get(2)?,
        last_hash: r.try_get(3)?,
        purged_through_id: r.try_get(4)?,
        purged_through_hash: r.try_get(5)?,
        purged_events: r.try_get(6)?,
        public_key: r.try_get(7)?,
        signature: r.try_get(8)?,
        created_at,
    })
}
