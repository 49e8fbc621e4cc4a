//! Shared by the credential tests: the real OpenBao the test command starts, a fake Keycloak
//! (OIDC discovery, JWKS and an RFC 8693 token endpoint) on 127.0.0.1, log capture, and leak checks.
#![allow(dead_code)] // each test binary uses its own part

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use aegis_seal_crds::SecretValue;
use aegis_seal_crds::common::CredentialResolutionPath;
use aegis_seal_crds::gateway::CredentialSettings;
use aegis_seal_gateway::application::credential::{
    Credential, CredentialOutcome, CredentialRequest, CredentialResolver,
};
use aegis_seal_gateway::infrastructure::http_client::{HttpClient, HttpClientConfig};
use aegis_seal_gateway::infrastructure::persistence::{AuditEvent, Database};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use reqwest::Url;
use serde_json::{Value, json};

// Test-only RSA keys, generated once for these tests with
// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048` and used nowhere else: never trust them.
/// The fake identity provider's signing key (kid [`IDP_KID`]).
pub const IDP_RSA_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCwVddmyF0H1Y1G
rtTDdz2HwkMLA8QirmLCyefUsjWkclqUEnr4JptHIVKes61df18dc/nCAVr7AySY
dRNcaubYWFiRM7lXKku2n4e9XeQmR1Y9CpR+9C2clXWvB20lygCTdzMgPDTb7qMQ
aCeQZYU8jexxTRlmI6Fh8YAZRidF6ijMFK5GNx0c7O1+sXhzTa6EuRmfPrUGJmk/
530N1fxwZWslqc73zoZpTlNb6fqNaUhRzNqcBHoQWLq17IjIt+sbABWSYBLt6Jnc
Zy52q69RqlZ4nQGUA/uGk9afGH8lRlV6GS7X+5wOIl8Qxb2Q+q6+E1Hgtj4zWz5B
qbmk+lI7AgMBAAECggEAJ5dWch7ZeGlTu4OEhNCQcZtFx0LUtj62MOr5UNGkZqRA
Pw+5KV8trPZH4RcRfTUca3X/JTZ9sW8et9ZNfwoHg5quZAebfP0jm8DMztE2aPvK
WpE2Dx0O4qHSFvbRZFMq9vEj+wBZk+nMFeJ0w6Bvnk11QWkgo0SrttxsuP/90F3n
25VtlwWc1D43U7HTkBY2WkI4gcaKASrzsgpxTC+zi7bLwArpVZfFRXgxYiPQa0FN
CK1GAr7KZGkoNUo2zrtDbVim66w9uAJ1nIgKOg4YizZ5cWfAZ16aD/FYATbBrAR+
51hrxWo4kb8aDDEUzeX3ulOSsgHypFodRK2fQAdMQQKBgQDUh2NPexrwoAxG7c+Y
dgDqBdUx3zz29G1QPoC3A3ohg+5uh4yOouL+YaxPojUvbotTL+vGEiTxQod51oUa
S2q3VaM3q5AXtQdMbMq6u44tAzbZ9+TmtbuNq/Ehf1nO6mVlMwTe/D2H4qDMl6mm
i2h0GZG5/tNmnFFcN0Ue7IFUQQKBgQDUZ0HfmVKdNe/suWG6GTot1wJEvcmsVB0j
Lu3aW94XUlckBsbSNlU3eUsZAX6tMfUQxOZmk9zsHaeyWcyHTvGig8fFjDggYSle
68JduJZD9L9qlc1KRDmrE35Ey0heL5WmpOreTAujczv8CbEjEfHsar2CzbPAnGj6
LwRr/wUXewKBgBuAvcBOXQkgnRYctk2zj6C5SoKesgP/U5obzIpif86QhS12iyD2
QUvMFgFkK1/M/WixfeBu/qreAiwpL6Zcdh3tjiapJAd9XMluFrodhWOb0+BXLR8S
C4hk5NqB4XxeZuq2tH2qxMet80MmqUStK8JCgNJCANd5iSnW2TIMRxxBAoGBALNt
LsZ2PMW1RKJSz+1nVjBXCwGK2YyL2blY8XCeXnSRCC/U0avOXhpoijnre1lPdFfg
HUnV6rBDNOCC3zYGSDUi4WVN2DPyIAKhYiXNwpJRdEnTlgIAtD6CTw5KMy3tQJvv
gMCcuNAwjiGRBmQ7yoQOf1y56/jvp/aANVoNqf11AoGBAIntLAGADYutr5M9L5Mc
mhE2/vkwFg8qBK7pqAKuDZVVkuV0TwShTMj3gs67YR6txITmKQtRqWjDRgDieJHx
/JNxNIcdzlHrBKl6n5VoOWIChG5+TKhJ7Om4QBZVGoXPZMEiHTctyMENOU4U2wRQ
KbE/MBQny9KasxbauQzk+2mP
-----END PRIVATE KEY-----
";
/// Another key: an attacker's, or the IdP's next key after a rotation.
pub const OTHER_RSA_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCaAe3IODRNNuR8
dpyFccGmU4+KLy6SG2vg4sdZfM5hQfLRugFxDsJfQrgbBRUsN/XyD4HBATQ+zI3v
zfrKzvAbCikz9v1IQNkjWlq0UWI0lElRqndB/wIMAS+UyWv9lMN/MPJJBRx/ueoI
tqQzwQk8kBvjZMqjNaV9+izjVD3Pv16IN/QiTXKh6zHUncROEfFpuStZ5bUaYJ8I
re5hRPxKysMOcl2rxcIJ7Fnm6SEugWHIqxdm0+6Tw6SaIDPL3Nf0bk5SvFHV0Iq4
fbRBs5bHsD+vu/66H7QI6OOJGwuCqoRxVvSkKC2jw4bfXbV1vWmGzS/vsEdpZ54O
JBGl/E0BAgMBAAECggEACQjI7qBhbRAlyilZGDjqn7uyJWyMIlUKeIhFInpATxND
z8rGD+BKRbVPwIIFUnE788W2GmDcNDzirKkcJ66JBkUL0rkP9Z+cPUctH/vQM35p
aKmD0nLHp3WgWW2RcLA74ae45tCucc2xrW4tZr3RsWRQxn+gpX9dpGy7GmDUOW4M
pfYGl+tS+k8PoNTNSfSkuJRqdHhi9y7NVltUUy862coqKUfvpM7juIKPe6bVGOTV
qCWy4HYVOPUN/T887P1bWJq/D958XalGlkqnUA/QOVh1EnHL1+iUtcgK1XczWRdM
/iDOix+LiLzdCH7GSL2vQia8dMdPAIgVNTbhXURl4QKBgQDQrLVfccDBRXjEGZwA
g9fg4furrXBSdduYQufDJ8uc5pvjsBm4IZ2ct1uq7EuykRZK9Z0z7L1Hg1omEk2a
h+JbD/p4bNcyH4H4Z15BTPcBiDl/v07ObjH1xN2EdusX1rA7jxdSfqehjpfpPxR7
EP2/Hyg0VMGwGMgRGY8lgOc7eQKBgQC871eHE3BuzAN/BHV0XaiXBj/ggEmbibux
wvddoZTwHtR7Up7E/I3Kmima0l/atNyvnP5wPBBZBQHJOREDl6lcTMHmTe/DLWyv
thanA5PYU0uSkMfc+wdOLEnseLK+jEWGN3ZKjcYntvzRtTUqk+VBRbfJdoYPwElm
+ubawWGzyQKBgB4yoByrzYUqlItsWVMJwVfd3BnAA50rSRgDtp5bR+/wv2Z3uYEX
/EMNlcpqX5n7vQoj+Rfmjo2myIjx5SETwQIEke6TcaDjRl+4Nb+lb6ldGVUPTkw5
TimOz6+3tdXBT8eOsYVSpteOVxV992zHzLC3xY2tJkphi7JNzJVUziGhAoGAAj1w
MzjGx3mBvRrHbbbCje/UCAxdUwvB/uyJ1EFbK7Gh4Uhse3dnEvTa82v1GPm1+BsL
ZTdBFl0Z1VHo4rsElgSO8/UOl6jNNhQZlqdTNGhgZ/9xbyxGvOWHhtczf1DYbivw
KhgeNlBUFQRp+fRA7pIuCKRwGHW2KRNmc0eBqgkCgYB+bMDaUzUkwtfVOaTcCj5T
t87Nmpej8oypLv+ch6KXCoj1xn31qqgwrnhLJKazmGBJCUrJxd872aZjbgG1juMd
XBFueXAEIj7WAGP+zkhB3naRM2iPsCoUug76dpYWsTmwqoM9HCHUhujzuPSkf/ti
hlx/bxScOma2ZpM/SeiyEw==
-----END PRIVATE KEY-----
";

pub const IDP_KID: &str = "idp-rsa-1";
pub const CLIENT_ID: &str = "seal-gateway";
/// The audience user tokens are issued for.
pub const USER_AUDIENCE: &str = "aegis-ui";

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

/// The process-wide subscriber, with the runbook's filter for this module (plus the HTTP client).
pub fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter(
                "info,aegis_seal_gateway::application::credential=trace,\
                 aegis_seal_gateway::infrastructure::http_client=trace",
            )
            .with_writer(move || LogWriter(sink.clone()))
            .init();
        buffer
    })
    .clone()
}

pub fn logs_text() -> String {
    String::from_utf8_lossy(&capture_logs().lock().unwrap()).into_owned()
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

/// Every place a secret must never reach: the logs, the events, the error, and `Debug` output.
pub fn assert_no_leak(outcome: &CredentialOutcome, secrets: &[&str]) {
    let logs = logs_text();
    let events = events_text(&outcome.events);
    let error = match &outcome.result {
        Ok(credential) => format!("{credential:?}"),
        Err(e) => format!("{e:?} {} {}", e, e.body()),
    };
    for secret in secrets {
        assert!(!secret.is_empty());
        assert!(!logs.contains(secret), "a secret reached the logs:\n{logs}");
        assert!(
            !events.contains(secret),
            "a secret reached the events: {events}"
        );
        assert!(
            !error.contains(secret),
            "a secret reached the result: {error}"
        );
    }
}

pub fn events_text(events: &[AuditEvent]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {} {:?}",
                e.event_type,
                Value::Object(e.payload.clone()),
                e
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The only event of `outcome`, which must have type `event_type`.
pub fn only_event<'o>(outcome: &'o CredentialOutcome, event_type: &str) -> &'o AuditEvent {
    assert_eq!(
        outcome.events.len(),
        1,
        "one event expected: {}",
        events_text(&outcome.events)
    );
    assert_eq!(outcome.events[0].event_type, event_type);
    &outcome.events[0]
}

pub fn bearer(credential: &Credential) -> String {
    assert_eq!(credential.headers.len(), 1);
    let (name, value) = &credential.headers[0];
    assert_eq!(name, http::header::AUTHORIZATION);
    assert!(
        value.is_sensitive(),
        "the credential header is marked sensitive"
    );
    value.to_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------------
// The gateway side
// ---------------------------------------------------------------------------------------------

pub fn http_client() -> HttpClient {
    HttpClient::new(HttpClientConfig::default()).unwrap()
}

pub async fn sqlite_database() -> (Database, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/gateway.db", dir.path().display());
    (Database::connect(&url).await.unwrap(), dir)
}

/// The Postgres server the test command started. These tests never skip: without it they fail.
pub fn postgres_server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL must point at the test Postgres: run `eval \"$(scripts/services.sh start)\"` first"
        )
    })
}

/// A new, empty, migrated database on the test server.
pub async fn postgres_database() -> (Database, String) {
    let server = postgres_server_url();
    let name = unique("cred_");
    let pool = sqlx::PgPool::connect(&server).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (base, _) = server.rsplit_once('/').unwrap();
    let url = format!("{base}/{name}");
    (Database::connect(&url).await.unwrap(), url)
}

/// The upstream the tests' credentials are for.
pub const UPSTREAM: &str = "https://api.example.com";

pub fn request<'a>(
    execution_id: &'a str,
    path: &'a CredentialResolutionPath,
) -> CredentialRequest<'a> {
    CredentialRequest {
        execution_id,
        tenant_id: None,
        owner_tenant_id: None,
        path,
        user_token: None,
        allows_human_delegated: true,
        destination: Some(UPSTREAM),
    }
}

pub fn resolver(settings: &CredentialSettings, db: &Database) -> CredentialResolver {
    CredentialResolver::new(settings, http_client(), db.clone()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// OpenBao
// ---------------------------------------------------------------------------------------------

/// The real OpenBao dev server of `scripts/services.sh start`, with an admin client for setup.
pub struct Bao {
    pub addr: String,
    pub token: String,
    client: reqwest::Client,
}

impl Bao {
    pub fn from_env() -> Self {
        let get = |name: &str| {
            std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
                panic!(
                    "{name} is not set: these tests need the real OpenBao server; run \
                     `eval \"$(scripts/services.sh start)\"` first (it exports BAO_ADDR and BAO_TOKEN)"
                )
            })
        };
        Self {
            addr: get("BAO_ADDR").trim_end_matches('/').to_owned(),
            token: get("BAO_TOKEN"),
            client: reqwest::Client::new(),
        }
    }

    /// Credential settings pointing at this server with its root token.
    pub fn settings(&self) -> CredentialSettings {
        CredentialSettings {
            openbao_addr: Some(self.addr.clone()),
            openbao_token: Some(SecretValue::Literal(self.token.clone())),
            ..CredentialSettings::default()
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_in(None, method, path, body).await
    }

    pub async fn call_in(
        &self,
        namespace: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut builder = self
            .client
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.token);
        if let Some(ns) = namespace {
            builder = builder.header("X-Vault-Namespace", ns);
        }
        if let Some(body) = body {
            builder = builder.json(&body);
        }
        let response = builder.send().await.expect("OpenBao is reachable");
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A call that must succeed.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method.clone(), path, body).await;
        assert!(status.is_success(), "{method} {path}: {status} {value}");
        value
    }

    pub async fn write_kv(&self, key: &str, data: Value) {
        self.ok(
            Method::POST,
            &format!("secret/data/{key}"),
            Some(json!({ "data": data })),
        )
        .await;
    }

    /// Mounts the database secrets engine at `mount`, connected to the test Postgres, with role
    /// `role` creating a login role per lease.
    pub async fn database_engine(&self, mount: &str, role: &str) {
        let pg = Url::parse(&postgres_server_url()).unwrap();
        let connection_url = format!(
            "postgresql://{{{{username}}}}:{{{{password}}}}@{}:{}{}?sslmode=disable",
            pg.host_str().unwrap(),
            pg.port().unwrap_or(5432),
            pg.path()
        );
        self.ok(
            Method::POST,
            &format!("sys/mounts/{mount}"),
            Some(json!({"type": "database"})),
        )
        .await;
        self.ok(
            Method::POST,
            &format!("{mount}/config/pg"),
            Some(json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": connection_url,
                "username": pg.username(),
                "password": pg.password().unwrap_or("unused-with-trust-auth"),
                "allowed_roles": [role],
                "verify_connection": true,
            })),
        )
        .await;
        self.ok(
            Method::POST,
            &format!("{mount}/roles/{role}"),
            Some(json!({
                "db_name": "pg",
                "creation_statements": [
                    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"
                ],
                "default_ttl": "1h",
                "max_ttl": "2h",
            })),
        )
        .await;
    }

    /// A token with only the given policies.
    pub async fn token_with_policies(&self, policies: &[&str]) -> String {
        let created = self
            .ok(
                Method::POST,
                "auth/token/create",
                Some(json!({"policies": policies, "ttl": "1h", "no_default_policy": false})),
            )
            .await;
        created["auth"]["client_token"].as_str().unwrap().to_owned()
    }
}

/// Login roles on the test Postgres whose name contains `fragment`.
pub async fn postgres_roles_like(fragment: &str) -> Vec<String> {
    let pool = sqlx::PgPool::connect(&postgres_server_url()).await.unwrap();
    let roles: Vec<String> =
        sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE strpos(rolname, $1) > 0")
            .bind(fragment)
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    roles
}

// ---------------------------------------------------------------------------------------------
// A recording HTTP server
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Recorded {
    /// The `application/x-www-form-urlencoded` body as pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        let mut url = Url::parse("http://form.invalid/").unwrap();
        url.set_query(Some(std::str::from_utf8(&self.body).unwrap()));
        url.query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    pub fn form_value(&self, name: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

type Responder = dyn Fn(&str, &Recorded) -> (StatusCode, String) + Send + Sync;

/// An HTTP/1.1 server on 127.0.0.1 that records every request and answers with `respond(base, request)`.
pub struct FakeServer {
    pub base: String,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub hits: Arc<AtomicUsize>,
}

impl FakeServer {
    pub async fn start(
        respond: impl Fn(&str, &Recorded) -> (StatusCode, String) + Send + Sync + 'static,
    ) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let respond: Arc<Responder> = Arc::new(respond);
        // The responder is given the server's own base URL, known once it listens; it is set
        // before `start` returns, so before anyone can send a request.
        let known_base: Arc<OnceLock<String>> = Arc::default();
        let (shared_requests, shared_hits, shared_base) =
            (requests.clone(), hits.clone(), known_base.clone());
        let addr = crate::support::serve(move |request: hyper::Request<hyper::body::Incoming>| {
            let (requests, hits, respond, base) = (
                shared_requests.clone(),
                shared_hits.clone(),
                respond.clone(),
                shared_base.clone(),
            );
            async move {
                let (parts, body) = request.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let recorded = Recorded {
                    method: parts.method,
                    path: parts.uri.path().to_owned(),
                    headers: parts.headers,
                    body: body.to_vec(),
                };
                hits.fetch_add(1, Ordering::SeqCst);
                let base = base.get().expect("the base URL is set before any request");
                let (status, body) = respond(base, &recorded);
                requests.lock().unwrap().push(recorded);
                hyper::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap()
            }
        })
        .await;
        let base = format!("http://{addr}");
        known_base.set(base.clone()).unwrap();
        Self {
            base,
            requests,
            hits,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn requests_to(&self, path_suffix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.ends_with(path_suffix))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// A fake Keycloak: OIDC discovery, JWKS and the RFC 8693 token endpoint
// ---------------------------------------------------------------------------------------------

pub const REALM_PATH: &str = "/realms/test";
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// An audience the fake Keycloak knows no client for: `400 invalid_target`.
pub const UNKNOWN_AUDIENCE: &str = "unknown-service";

pub fn idp_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(IDP_RSA_PRIVATE_PEM.as_bytes()).unwrap()
}

pub fn other_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(OTHER_RSA_PRIVATE_PEM.as_bytes()).unwrap()
}

pub fn rsa_jwk(key: &EncodingKey, kid: &str) -> Value {
    let mut value =
        serde_json::to_value(Jwk::from_encoding_key(key, Algorithm::RS256).unwrap()).unwrap();
    value["kid"] = json!(kid);
    value["use"] = json!("sig");
    value["alg"] = json!("RS256");
    value
}

pub fn sign(claims: &Value, key: &EncodingKey, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

pub struct FakeKeycloak {
    pub server: FakeServer,
    pub client_secret: String,
    pub jwks: Arc<Mutex<Value>>,
    /// Tokens the token endpoint minted, in order.
    pub minted: Arc<Mutex<Vec<String>>>,
}

impl FakeKeycloak {
    pub async fn start() -> Self {
        let client_secret = unique("client-secret-");
        let jwks = Arc::new(Mutex::new(json!({
            // Keycloak publishes an encryption key beside the signing key.
            "keys": [
                rsa_jwk(&idp_key(), IDP_KID),
                {"kid": "enc-1", "kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"},
            ]
        })));
        let minted = Arc::new(Mutex::new(Vec::new()));
        let (secret, keys, tokens) = (client_secret.clone(), jwks.clone(), minted.clone());
        let server = FakeServer::start(move |base, request| {
            let issuer = format!("{base}{REALM_PATH}");
            let json_body = |v: Value| v.to_string();
            match (
                request.method.as_str(),
                request.path.strip_prefix(REALM_PATH),
            ) {
                ("GET", Some("/.well-known/openid-configuration")) => (
                    StatusCode::OK,
                    json_body(json!({
                        "issuer": issuer,
                        "jwks_uri": format!("{issuer}/protocol/openid-connect/certs"),
                        "token_endpoint": format!("{issuer}/protocol/openid-connect/token"),
                        "grant_types_supported": [TOKEN_EXCHANGE_GRANT],
                    })),
                ),
                ("GET", Some("/protocol/openid-connect/certs")) => {
                    (StatusCode::OK, keys.lock().unwrap().to_string())
                }
                ("POST", Some("/protocol/openid-connect/token")) => {
                    token_endpoint(&issuer, &secret, request, &tokens, &keys)
                }
                _ => (
                    StatusCode::NOT_FOUND,
                    json_body(json!({"error": "not found"})),
                ),
            }
        })
        .await;
        Self {
            server,
            client_secret,
            jwks,
            minted,
        }
    }

    pub fn issuer(&self) -> String {
        format!("{}{REALM_PATH}", self.server.base)
    }

    pub fn token_url(&self) -> String {
        format!("{}/protocol/openid-connect/token", self.issuer())
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/protocol/openid-connect/certs", self.issuer())
    }

    pub fn exchanges(&self) -> Vec<Recorded> {
        self.server.requests_to("/protocol/openid-connect/token")
    }

    /// A user token the IdP signed: `sub`, `iss`, `aud`, `exp` in 5 minutes; `extra` overrides.
    pub fn user_token(&self, sub: &str, extra: Value) -> String {
        let mut claims = json!({
            "iss": self.issuer(), "aud": USER_AUDIENCE, "sub": sub, "azp": "aegis-ui",
            "iat": now(), "exp": now() + 300, "jti": unique("jti-"),
        });
        if let (Value::Object(base), Value::Object(extra)) = (&mut claims, extra) {
            for (k, v) in extra {
                if v.is_null() {
                    base.remove(&k);
                } else {
                    base.insert(k, v);
                }
            }
        }
        sign(&claims, &idp_key(), Some(IDP_KID))
    }

    /// Settings for the exchange through this fake (issuer discovery, no explicit JWKS URI).
    pub fn settings(&self) -> CredentialSettings {
        CredentialSettings {
            keycloak_token_exchange_url: Some(self.token_url()),
            keycloak_client_id: Some(CLIENT_ID.into()),
            keycloak_client_secret: Some(SecretValue::Literal(self.client_secret.clone())),
            keycloak_user_jwt_issuer: Some(self.issuer()),
            keycloak_user_jwt_audience: Some(USER_AUDIENCE.into()),
            ..CredentialSettings::default()
        }
    }
}

/// RFC 8693 §2.1-2.3 as Keycloak answers it: client authentication first (401 `invalid_client`),
/// then the grant's parameters (400 `invalid_request`/`invalid_token`/`invalid_target`).
fn token_endpoint(
    issuer: &str,
    client_secret: &str,
    request: &Recorded,
    minted: &Mutex<Vec<String>>,
    jwks: &Mutex<Value>,
) -> (StatusCode, String) {
    let error = |status: StatusCode, code: &str, description: &str| {
        (
            status,
            json!({"error": code, "error_description": description}).to_string(),
        )
    };
    let content_type = request
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "form body expected",
        );
    }
    let form = |name: &str| request.form_value(name).unwrap_or_default();
    if form("grant_type") != TOKEN_EXCHANGE_GRANT {
        return error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Unsupported grant_type",
        );
    }
    if form("client_id") != CLIENT_ID || form("client_secret") != client_secret {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Invalid client or Invalid client credentials",
        );
    }
    if form("subject_token_type") != ACCESS_TOKEN_TYPE
        || form("requested_token_type") != ACCESS_TOKEN_TYPE
    {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Unsupported token type",
        );
    }
    // The subject token must verify against the realm's current keys.
    let subject_token = form("subject_token");
    let kid = jsonwebtoken::decode_header(&subject_token)
        .ok()
        .and_then(|h| h.kid);
    let key = kid.and_then(|kid| {
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(json!({
            "keys": jwks.lock().unwrap()["keys"].as_array().unwrap().iter()
                .filter(|k| k["use"] == "sig").cloned().collect::<Vec<_>>()
        }))
        .unwrap();
        set.find(&kid)
            .map(|jwk| DecodingKey::from_jwk(jwk).unwrap())
    });
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[USER_AUDIENCE]);
    let subject =
        key.and_then(|key| jsonwebtoken::decode::<Value>(&subject_token, &key, &validation).ok());
    let Some(subject) = subject else {
        return error(StatusCode::BAD_REQUEST, "invalid_token", "Invalid token");
    };
    let audience = form("audience");
    if audience.is_empty() || audience == UNKNOWN_AUDIENCE {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "Audience not found",
        );
    }
    let token = sign(
        &json!({
            "iss": issuer, "aud": audience, "azp": CLIENT_ID, "sub": subject.claims["sub"],
            "iat": now(), "exp": now() + 300, "jti": unique("exchanged-"),
        }),
        &idp_key(),
        Some(IDP_KID),
    );
    minted.lock().unwrap().push(token.clone());
    (
        StatusCode::OK,
        json!({
            "access_token": token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": 300,
        })
        .to_string(),
    )
}
