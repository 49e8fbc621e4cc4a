//! Shared by `seal_refusals` and `tenancy_refusals`: a gateway at a frozen clock that trusts the
//! vectors' RS256 token key, envelopes carrying chosen claims signed as the SDKs sign them, the
//! SEAL error body, and the `gateway_events` rows a call leaves.
#![allow(dead_code)] // each test binary uses its own part

use aegis_seal_crds::Snapshot;
use aegis_seal_gateway::application::clock::Clock;
use aegis_seal_gateway::gateway::RunningGateway;
use aegis_seal_gateway::infrastructure::persistence::Database;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use sqlx::Row;

use crate::support;

/// The gateway's clock, frozen; envelopes are dated at this instant, so freshness never interferes.
pub const NOW: i64 = 1_771_338_721;

/// What a refusal must answer: HTTP status, SEAL code, message.
pub type Expected = (u16, u64, &'static str);

pub fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW, 0).unwrap()
}

/// The vectors' token issuer: its RS256 and EdDSA key pairs, as PEM.
fn token_issuer() -> Value {
    let path = format!(
        "{}/tests/vectors/python-sdk.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    file["token_issuer"].clone()
}

/// The vectors' RS256 token key (`support::Signer` keeps its own private).
fn token_key() -> jsonwebtoken::EncodingKey {
    let issuer = token_issuer();
    let pem = issuer["rs256_private_key_pem"].as_str().unwrap();
    jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
}

/// The vectors' EdDSA token key, and the public key a gateway trusts it with.
pub fn eddsa_token_key() -> (jsonwebtoken::EncodingKey, String) {
    let issuer = token_issuer();
    let private = issuer["eddsa_private_key_pem"].as_str().unwrap();
    let public = issuer["eddsa_public_key_pem"].as_str().unwrap();
    (
        jsonwebtoken::EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
        public.to_owned(),
    )
}

/// One row of `gateway_events`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub event_type: String,
    pub tenant_id: Option<String>,
    pub payload: Value,
}

/// The rows with an id above `after`, in id order.
pub async fn events_after(db: &Database, after: i64) -> Vec<EventRow> {
    let sql = "SELECT event_type, tenant_id, CAST(payload AS TEXT) FROM gateway_events \
               WHERE id > $1 ORDER BY id";
    let rows: Vec<(String, Option<String>, String)> = match db {
        Database::Sqlite(p) => sqlx::query_as(sqlx::AssertSqlSafe(sql.replace('$', "?")))
            .bind(after)
            .fetch_all(p)
            .await
            .unwrap(),
        Database::Postgres(p) => sqlx::query_as(sql).bind(after).fetch_all(p).await.unwrap(),
    };
    rows.into_iter()
        .map(|(event_type, tenant_id, payload)| EventRow {
            event_type,
            tenant_id,
            payload: serde_json::from_str(&payload).unwrap(),
        })
        .collect()
}

/// The newest row's id (0 for an empty table).
pub async fn last_event_id(db: &Database) -> i64 {
    let sql = "SELECT COALESCE(MAX(id), 0) AS n FROM gateway_events";
    match db {
        Database::Sqlite(p) => sqlx::query(sql).fetch_one(p).await.unwrap().get("n"),
        Database::Postgres(p) => sqlx::query(sql).fetch_one(p).await.unwrap().get("n"),
    }
}

/// `status` and `body` are exactly `expected`, in the SEAL error body (checklist #56):
/// `{"protocol":"seal/v1","status":"error","error":{"code","message","timestamp","request_id"}}`,
/// nothing more, with an RFC 3339 timestamp and a UUIDv4 request id.
pub fn assert_seal_error(what: &str, status: u16, body: &Value, expected: Expected) {
    let error = &body["error"];
    assert_eq!(
        (status, error["code"].as_u64(), error["message"].as_str()),
        (expected.0, Some(expected.1), Some(expected.2)),
        "{what}: {body}"
    );
    let keys = |v: &Value| {
        let mut keys: Vec<String> = v
            .as_object()
            .unwrap_or_else(|| panic!("{what}: not an object: {body}"))
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(
        keys(body),
        ["error", "protocol", "status"],
        "{what}: {body}"
    );
    assert_eq!(
        (&body["protocol"], &body["status"]),
        (&json!("seal/v1"), &json!("error")),
        "{what}"
    );
    assert_eq!(
        keys(error),
        ["code", "message", "request_id", "timestamp"],
        "{what}: {body}"
    );
    let timestamp = error["timestamp"].as_str().unwrap();
    assert!(
        DateTime::parse_from_rfc3339(timestamp).is_ok(),
        "{what}: {timestamp}"
    );
    let request_id = uuid::Uuid::parse_str(error["request_id"].as_str().unwrap()).unwrap();
    assert_eq!(request_id.get_version_num(), 4, "{what}: {body}");
}

/// A gateway on a database whose sessions are already stored, at the frozen clock, that trusts the
/// vectors' RS256 token key.
pub struct SealGateway {
    pub gateway: RunningGateway,
    pub db: Database,
    signer: support::Signer,
    client: reqwest::Client,
    token_key: jsonwebtoken::EncodingKey,
}

impl SealGateway {
    /// Starts on `db`, serving `snapshot`, with `config` (environment-style) beside the token key.
    pub async fn start(db: Database, snapshot: Snapshot, config: &[(&str, &str)]) -> Self {
        let signer = support::Signer::from_vectors();
        let config = signer.gateway_config(config);
        let gateway = RunningGateway::start(&config, db.clone(), snapshot, Clock::fixed(now()))
            .await
            .unwrap();
        Self {
            gateway,
            db,
            signer,
            client: reqwest::Client::new(),
            token_key: token_key(),
        }
    }

    /// Every claim the gateway requires, valid for the vectors' session and token issuer, with a
    /// `jti` of its own, and `changes` set over them.
    pub fn claims(&self, jti: &str, changes: Value) -> Map<String, Value> {
        let s = &self.signer.session;
        let Value::Object(mut claims) = json!({
            "sub": s["agent_id"], "exec_id": s["execution_id"], "tenant_id": s["tenant_id"],
            "scp": s["security_context"], "wid": "docker://test", "jti": jti,
            "iat": NOW, "exp": NOW + 3600, "iss": self.signer.issuer, "aud": self.signer.audience,
        }) else {
            unreachable!()
        };
        let Value::Object(changes) = changes else {
            panic!("changes are an object: {changes}")
        };
        claims.extend(changes);
        claims
    }

    /// An RS256 token of `claims`, signed by the vectors' key.
    pub fn token(&self, claims: &Map<String, Value>) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            claims,
            &self.token_key,
        )
        .unwrap()
    }

    /// An unsigned envelope of a `tools/call` of `params`, dated `NOW`, carrying `token`.
    pub fn envelope(token: &str, params: Value) -> Value {
        json!({
            "protocol": "seal/v1", "security_token": token, "signature": "",
            "payload": {"jsonrpc": "2.0", "id": "req-1", "method": "tools/call", "params": params},
            "timestamp": NOW,
        })
    }

    /// `envelope` with its `signature` set: the session's agent key over its canonical message,
    /// whatever its other members say.
    pub fn sign(&self, mut envelope: Value) -> Value {
        use base64::Engine;
        use ed25519_dalek::Signer as _;
        let parsed =
            aegis_seal_gateway::domain::envelope::Envelope::parse(envelope.to_string().as_bytes())
                .unwrap();
        let signature = self.signer.agent.sign(&parsed.canonical_message().unwrap());
        envelope["signature"] = base64::engine::general_purpose::STANDARD
            .encode(signature.to_bytes())
            .into();
        envelope
    }

    /// Posts `envelope` as it is: the status, the JSON body (`null` if none), and the audit rows
    /// it left.
    pub async fn post(&self, envelope: &Value) -> (u16, Value, Vec<EventRow>) {
        let before = last_event_id(&self.db).await;
        let response = self
            .client
            .post(format!("http://{}/v1/invoke", self.gateway.local_addr))
            .header("content-type", "application/json")
            .body(envelope.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body, events_after(&self.db, before).await)
    }

    /// Posts a `tools/call` of `params`, dated `NOW` and signed by the session's agent key, carrying
    /// `claims` in an RS256 token signed by the vectors' key: the status, the JSON body (`null` if
    /// none), and the audit rows it left.
    pub async fn invoke(
        &self,
        claims: &Map<String, Value>,
        params: Value,
    ) -> (u16, Value, Vec<EventRow>) {
        let envelope = self.sign(Self::envelope(&self.token(claims), params));
        self.post(&envelope).await
    }
}
