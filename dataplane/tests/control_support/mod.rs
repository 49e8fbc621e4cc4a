//! Shared by the `control_*` tests: a real JWKS endpoint (hyper on 127.0.0.1) whose keys can
//! rotate or fail, operator tokens, an upstream API, and a gateway with operator authentication on.
#![allow(dead_code)] // each test binary uses its own part

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aegis_seal_crds::Snapshot;
use aegis_seal_gateway::application::clock::Clock;
use aegis_seal_gateway::gateway::RunningGateway;
use aegis_seal_gateway::infrastructure::config::{ConfigSources, load_config};
use aegis_seal_gateway::infrastructure::persistence::{CatalogSource, Database};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support;

pub const ISSUER: &str = "https://idp.test/realms/aegis";
pub const AUDIENCE: &str = "aegis-seal-gateway";

/// Test-only RSA 2048 key (`openssl genpkey -algorithm RSA`), used nowhere else: never trust it.
const RSA_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCm45KABonM+fJk
IqIvo3/w5eDI8jiMLE+F/MIant1ei+TpDvgqmn2pTQUhpIzdiljQ5NfcBc1F75WR
8EBbKnzb9okZ0yc3BVEqzCdhbEzYLvB7qRafOA5koej/dPsHt67Vo8afg8arad51
zlZwxGA+TMBljqiK/UJ79BxtGK5f9GEuvSprByb7xYLtj1M4PdmcN+OFhpVH91sB
PmrSRcuJJogWZBQLZDsTg5XCPCki0jhWnSF6QMUVqicbvdKymxdGEBKtSYVhgGyx
tSVWlCXhD1Nxrt4DLTMPgi+BiObNNTYf6PT36ETHL7ZHy8qi6DAw2gXPqHknJaem
Pl4ZtVObAgMBAAECggEAPy1QVNHk0alfNsQbpLAe62mCjl+Pw5S0qBLWwjAYukV4
KzgE/0/LuU8UXbeGsglA9RdklgDGRC7d7sjF/B0Z9kUegp26Lyx+nRZ64/kVIBOo
6w9IJo8Yd8UJSMeWjkXdVDfzJYjDqTljQzKQ65CTpJH2lZuLN06HoBf5uN0Kif0D
W6apALJl4NOoCtMMynO0CEccIjWB8Xe6VIU2PYGq+++ZWCFWXQnglkFU/qRck98S
pv1Onk9g7qmuelLp40AJ5REwvvq3rlmC/8jakK+39GUZ5ERKgcipLSAVXsFvq7cM
S6Xaj/VQTJjlMLhOCEf/sJhrJD7lxv1b+BNvpj0DBQKBgQDP4gqr6GhYGHJJAyqA
u327mV2N7P2xdolHSP8VDkR1q1h9a8qwBgI3A/DPPNx6fafTBfMKJK/ypLuI56n9
X6z+DKJ/dICU3Z8eZaoxlcU9Ihm7A1TCmiXesCF7yWxDvGR++q4d+VA2Zgyn7lew
aJwbcmmJt/8GJxix+GzkqyLOjwKBgQDNhHV71DCr59A3lXMvPyCvLH4CZLkzPaZl
75yPpqEIIUW4KVSojF5h5aZLtX2yY3CGrLEHgRb3g/qnOMtRJABwOts1EAWEvdZ9
AvZuEduuoqpEONu7ZQiZZBNAHbitEBiMZgOI85XUcPa1cras9n+SP5dk0n2W85Lx
PMtNLb5wNQKBgQCmomW1eP0zKJ1rgzstp5zYpM4GNyMAfqj52DyIb0BXJjsvhhkZ
0icyXFlKdVmyYkkFcW5pAhF7qaqdyj1L2cZ8ejpDemqbaa7jmdC8IHbTUyNW8gue
VhvnDj440LOU9E2GL4Eki7VNda3NatMlmCUSJzsL5s5o6yvzdNQs1DV5ZwKBgHl8
F0Z/g9XaTgbNXS1Mj7F9B2+6wo87niUbotx3jzETGfdm1xhbAV+1NLwEKK1OgrHZ
WzwoXr8pUP2QYP8x3OB6qiGPuvNglG2JVspx2/47QZLaWWlIq/Cga5C3APesUBaO
JwDJnIPb0roneTx86aQ12vRKSNr2WKIpYbPZmn0RAoGBAIMLbkb3CAb0S8ZHSEUI
H/l7CMG6JNeLeDb4Y02+fzAZD0YZ9VgKlHY95l1QX+PaVfnIUtgDE5H1ePi7rtzD
hRgUVgTHN/4+NvBt5vP5B60piqyYXLG8JfAMJ6LTdN70HIh/9fg2S8p1ViFNlPbS
3Ipg4pVT5tfFHP70WGg8rPXy
-----END PRIVATE KEY-----";

/// Ed25519 seeds of the two operator signing keys the IdP rotates between.
pub const KEY_1: [u8; 32] = [11; 32];
pub const KEY_2: [u8; 32] = [22; 32];

/// A JWKS endpoint serving whatever was last set; `None` answers 500 (the IdP is down).
pub struct JwksServer {
    pub uri: String,
    keys: Arc<Mutex<Option<Value>>>,
}

impl JwksServer {
    pub async fn start(jwks: Value) -> Self {
        let keys = Arc::new(Mutex::new(Some(jwks)));
        let shared = keys.clone();
        let addr = support::serve(move |_req| {
            let current = shared.lock().unwrap().clone();
            async move {
                let (status, body) = match current {
                    Some(jwks) => (200, jwks.to_string()),
                    None => (500, "down".to_owned()),
                };
                let mut response = http::Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                response
            }
        })
        .await;
        let uri = format!("http://{addr}/realms/aegis/certs");
        Self { uri, keys }
    }

    pub fn set(&self, jwks: Value) {
        *self.keys.lock().unwrap() = Some(jwks);
    }

    pub fn fail(&self) {
        *self.keys.lock().unwrap() = None;
    }
}

pub fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap()
}

pub fn rsa_jwk(kid: &str) -> Value {
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(&rsa_key(), Algorithm::RS256).unwrap())
            .unwrap();
    jwk["kid"] = json!(kid);
    jwk["use"] = json!("sig");
    jwk
}

/// PKCS#8 v1 for an Ed25519 seed: the fixed 16-byte prefix, then the seed.
pub fn ed_key(seed: [u8; 32]) -> EncodingKey {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    EncodingKey::from_ed_der(&der)
}

pub fn ed_jwk(seed: [u8; 32], kid: &str) -> Value {
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "x": URL_SAFE_NO_PAD.encode(public.as_bytes())})
}

/// The IdP's usual key set: EdDSA `key-1` and RS256 `rsa-1`.
pub fn standard_jwks() -> Value {
    json!({"keys": [ed_jwk(KEY_1, "key-1"), rsa_jwk("rsa-1")]})
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims that pass every check; `changes` overrides or (with `null`) removes members.
pub fn claims(changes: Value) -> Value {
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
        "exp": now() + 600, "iat": now(), "aegis_role": "operator",
    });
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

/// An EdDSA token signed with `seed` under `kid`.
pub fn ed_token(seed: [u8; 32], kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &ed_key(seed)).unwrap()
}

pub fn rs256_token(kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &rsa_key()).unwrap()
}

/// A valid operator token: of `tenant` (none: a tenant-less platform operator) with `role`.
pub fn operator(tenant: Option<&str>, role: &str) -> String {
    ed_token(
        KEY_1,
        "key-1",
        &claims(
            json!({"tenant_id": tenant, "aegis_role": role, "sub": format!("{role}@{}", tenant.unwrap_or("platform"))}),
        ),
    )
}

/// An upstream API: `POST /repos` answers `{"id": 7, "name": <body.name>}`; `GET /repos/{id}` answers
/// `{"id": <id>, "tags": ["a", "b"]}`; anything else 404.
pub async fn upstream() -> SocketAddr {
    support::serve(|req: http::Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (status, reply) = match (method.as_str(), path.as_str()) {
            ("POST", "/repos") => (200, json!({"id": 7, "name": body["name"]})),
            ("GET", p) if p.starts_with("/repos/") => (
                200,
                json!({"id": p.trim_start_matches("/repos/"), "tags": ["a", "b"]}),
            ),
            _ => (404, json!({"message": "not found"})),
        };
        let mut response = http::Response::new(Full::new(Bytes::from(reply.to_string())));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        response
    })
    .await
}

/// The OpenAPI document of [`upstream`].
pub fn openapi_document() -> Value {
    json!({
        "openapi": "3.0.0",
        "info": {"title": "repos", "version": "1"},
        "paths": {
            "/repos": {"post": {"operationId": "createRepo", "requestBody": {"content": {"application/json": {}}}}},
            "/repos/{id}": {"get": {"operationId": "getRepo", "parameters": [{"name": "id", "in": "path", "required": true}]}}
        }
    })
}

/// Manifests the gateway serves declaratively: a global workflow, CLI tool and security context.
pub fn manifest_snapshot(base_url: &str) -> Snapshot {
    let text = format!(
        r#"
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata: {{name: manifest-wf}}
spec:
  api_spec:
    base_url: {base_url}
    openapi: {{inline: {{openapi: 3.0.0, paths: {{/repos: {{post: {{operationId: createRepo}}}}}}}}}}
  steps: [{{name: create, operation_id: createRepo}}]
---
apiVersion: seal.100monkeys.ai/v1
kind: CliTool
metadata: {{name: manifest-cli}}
spec: {{docker_image: localhost/busybox, allowed_subcommands: [ls]}}
---
apiVersion: seal.100monkeys.ai/v1
kind: SecurityContext
metadata: {{name: manifest-ctx}}
spec: {{capabilities: [{{tool_pattern: "*"}}]}}
"#
    );
    support::snapshot_of(&text)
}

/// A gateway with operator authentication on, against `jwks_uri`.
pub struct Control {
    pub gateway: RunningGateway,
    pub base: String,
    pub client: reqwest::Client,
    pub db: Database,
}

/// Gateway settings for tests: operator auth against `jwks_uri` plus `extra` environment.
pub fn config(
    jwks_uri: &str,
    extra: &[(&str, &str)],
) -> aegis_seal_gateway::infrastructure::config::GatewayConfig {
    let dir = tempfile::tempdir().unwrap();
    let mut env: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in [
        ("SEAL_GATEWAY_BIND", "127.0.0.1:0"),
        ("SEAL_GATEWAY_AUTH_DISABLED", "false"),
        ("SEAL_GATEWAY_OPERATOR_JWKS_URI", jwks_uri),
        ("SEAL_GATEWAY_OPERATOR_JWT_ISSUER", ISSUER),
        ("SEAL_GATEWAY_OPERATOR_JWT_AUDIENCE", AUDIENCE),
    ] {
        env.push((k.into(), v.into()));
    }
    // Earlier entries win, so `extra` overrides the defaults above.
    let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    load_config(&ConfigSources {
        explicit: None,
        env: &lookup,
        home: Some(dir.path().to_path_buf()),
        working_dir: dir.path().to_path_buf(),
    })
    .expect("test config")
}

impl Control {
    /// A gateway with no manifests on a fresh SQLite file, whose folder the caller keeps alive.
    pub async fn on_sqlite(jwks_uri: &str, extra: &[(&str, &str)]) -> (Self, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let control = Self::start(
            &support::sqlite_url(dir.path()),
            Default::default(),
            jwks_uri,
            extra,
        )
        .await;
        (control, dir)
    }

    /// Connects `db_url`, mirrors `snapshot` as manifests do at start, and starts the gateway.
    pub async fn start(
        db_url: &str,
        snapshot: Snapshot,
        jwks_uri: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        Self::with_config(db_url, snapshot, config(jwks_uri, extra)).await
    }

    /// [`Control::start`] with settings of the caller's making (see [`config`]).
    pub async fn with_config(
        db_url: &str,
        snapshot: Snapshot,
        config: aegis_seal_gateway::infrastructure::config::GatewayConfig,
    ) -> Self {
        let db = Database::connect(db_url).await.unwrap();
        db.sync_catalog(&snapshot, CatalogSource::Manifest)
            .await
            .unwrap();
        let gateway = RunningGateway::start(&config, db.clone(), snapshot, Clock::System)
            .await
            .unwrap();
        Self {
            base: format!("http://{}", gateway.local_addr),
            gateway,
            client: reqwest::Client::new(),
            db,
        }
    }

    /// Sends a request; the status and the JSON body (`null` when empty or not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn shutdown(self) {
        self.gateway.shutdown().await;
    }
}

/// Names of the objects in a JSON list.
pub fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_owned())
        .collect()
}
