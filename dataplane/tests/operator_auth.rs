//! Operator JWT authentication against a real JWKS endpoint (a hyper server on 127.0.0.1).

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aegis_seal_crds::gateway::AuthSettings;
use aegis_seal_gateway::domain::tenancy::IdentityKind;
use aegis_seal_gateway::infrastructure::auth::operator::{
    OperatorAuthConfig, OperatorAuthError, OperatorAuthenticator, OperatorIdentity,
};
use aegis_seal_gateway::infrastructure::http_client::{HttpClient, HttpClientConfig};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::Full;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;

// Test-only keys, generated once for this file and used nowhere else: never trust them.
/// RSA 2048 (`openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`).
const RSA_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCpFmu7VrQrosQO
YrmB5C9sX51jiXHmzJdQ/XkfLJxJPAUpuR6IASblDqV5bPIhZ9Ne6arK3xhBy16y
3FTwb8SiAGPeIxpzPOjEE4p+owmgpvvo+C70qbiaKSg3wq1Tj5TvAflwxzqAIlBh
WI+sNjmZgeHJL62wEXt/RWvRCqFTyxlNuS83ktqIJnS8erz5XzKJBTMGSuypcci3
0CafTuslFoswxMTZfzIna7K6anjrAHMenzUCnKgflxOxu+d4R+MJeb7ezYzzcjre
zqOVMzM4hnlrTQLpkXiNqLgIb4PlRgNnRRnFMdv46DcpKk+PQz+fMNGwPfkOzuQ2
aUiFMYCZAgMBAAECggEAGPjdulJI07T7PaCpAxz/QAMzDHNNJigLJQP6cnc1Mb+y
h4H2l2GMLAIowDEt5W8fEYJzHfkq7PSrLMFLriLjqIVkOnd2vZQ+UE8Ogjtz/Y0L
4VFeJfY29FWlwe53iMLI3S+udlCGPExVELtypJ1xjlFXVk47WaiLU7WeAcaPIv+7
FM7ExUIIOC1VVQ/4B/3zXvSmfFRq4Ip1NZGOuhBCsSDlEN05bfV2HxibiUbjAZ/T
N1iiKh5GAD1EeQL1uRyOJc9IfLcOpKzoLRoqnY+TZcPdB6PoCzS3SxooHlWhH5Wk
QY2p1Y8GnID1OAPbeuQjaflcitKdGq96r+0uKRvS8QKBgQDnWgxppSF3h++NGNLs
5BhUqUp9YUmUqme0pULQxsbmRtAxPVWT0FlAEv1mBNNtitWekenZ6vq2Rx2q51bP
qyvPYwV4UmLFjnvYin4xo24hr615+i6EWaZ4oJzg7LDse4NRSF2fMtjYkUUb4gzz
FxV0LjHtPeJhnXUO+ExEOPXnxQKBgQC7GimEN0B/DsX0PrfWpLybrK6jGrS3KTCz
WQS35v/QJSSEl9Vvh6ggI6Vt2l6RfC5ntRmcS7L5h1kYpIjwO0n1fRpeFpKFs71P
oTFE6LFWsJExtUeoS7ZaXCWK+aHGwE7TreqJYJMJtk7SJaDTfyUjRo0Kyvv69maE
xiTlc1nuxQKBgHC8sM/KaESXOWTIdAB8Jl8bH/F5NyH66A5fee/C7anJWCqmeM1O
+i7/Efxk3aLDxNVAxXQrzYCFpy9hDCymfPLSjhfUDc23YSJkWppVyZUgxqhqAcD8
7uJZYhk5Pf3/Mj6pxPWPEZx3LfYocacD2LCE0k+JmId481IYLRIRr8MBAoGAOpRz
YTEHYYCXm+QzHOIRJ1CGkQygfiRIWi7J2mZZu6qVZ2o+ah/4FK/0cJOJPlW6FcBO
12+gBp5I1/1T3ptBibn0knbQw0nGQPNAAMo2E+VOYFjYqami22G0Y3HLI/Y79+yg
3Qg+oTDSNtuPIgjR8Nx69mEdSbLx4CpFjQ1zn90CgYAEgei4iMuY0nxXzYtVGYy+
MbmdlIhcsuALfEAUXK6KZPiR3YT7Bmbot3m2+Ew5fuk2hn/2I+t6bGYn3Q5KfFNW
ROAVumbB4Ba4AzYaTOJnE5qjFM5m+RIv4KSdVbT6qO/td3hCanXS63WpByd9oOu9
nLxgOE14mlPBLsLAupjOzA==
-----END PRIVATE KEY-----
";

/// P-256 (`openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`).
const P256_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg4CBlsDJTJ9v9SytI
0HXjXknr0ArVT3K3hTuwfXgXCpGhRANCAAQzQKRMQbftL3iLRDthDYon9gtShDEi
wfcTM4EYIn9dPxcLvgaoOu/spwkGpgj+x12nRrdzk8Y8jdKlNq4OJSOh
-----END PRIVATE KEY-----
";

/// The public half of a P-384 key (`openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384`):
/// a key the gateway does not use, published beside the good ones.
const P384_X: &str = "euco5bQbrKcdMceSd6OcipZavabgnKUp8ne9cOn1sZYRW7Nf_17tMmAYjAXLCWEU";
const P384_Y: &str = "6_a1r5IYyiFlcOoDK2fHSGR3qCG2OkS559fLK922Z5lUp5k0PY7Ro78Y9f8pxVuH";

const ISSUER: &str = "aegis-keycloak";
const AUDIENCE: &str = "aegis-seal-gateway";
const ED_SEED: [u8; 32] = [7u8; 32];

// ---------------------------------------------------------------------------------------------
// The JWKS endpoint
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serve,
    Fail,
    Hang,
}

struct ServerState {
    fetches: AtomicUsize,
    jwks: Mutex<Value>,
    mode: Mutex<Mode>,
    delay: Mutex<Duration>,
}

struct JwksServer {
    uri: String,
    state: Arc<ServerState>,
}

impl JwksServer {
    async fn start(jwks: Value) -> Self {
        let state = Arc::new(ServerState {
            fetches: AtomicUsize::new(0),
            jwks: Mutex::new(jwks),
            mode: Mutex::new(Mode::Serve),
            delay: Mutex::new(Duration::ZERO),
        });
        let shared = state.clone();
        let addr = support::serve(move |_request| answer(shared.clone())).await;
        let uri = format!("http://{addr}/realms/aegis/certs");
        Self { uri, state }
    }

    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    fn set_jwks(&self, jwks: Value) {
        *self.state.jwks.lock().unwrap() = jwks;
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }
}

async fn answer(state: Arc<ServerState>) -> hyper::Response<Full<Bytes>> {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mode = *state.mode.lock().unwrap();
    let (status, body) = match mode {
        Mode::Serve => (StatusCode::OK, state.jwks.lock().unwrap().to_string()),
        Mode::Fail => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "upstream down".to_owned(),
        ),
        Mode::Hang => std::future::pending().await,
    };
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------------------------

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap()
}

fn p256_key() -> EncodingKey {
    EncodingKey::from_ec_pem(P256_PRIVATE_PEM.as_bytes()).unwrap()
}

/// PKCS#8 v1 for an Ed25519 seed: the fixed 16-byte prefix, then the seed.
fn ed_key(seed: [u8; 32]) -> EncodingKey {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    EncodingKey::from_ed_der(&der)
}

fn with_kid(jwk: Jwk, kid: &str) -> Value {
    let mut value = serde_json::to_value(jwk).unwrap();
    value["kid"] = json!(kid);
    value["use"] = json!("sig");
    value
}

fn rsa_jwk(kid: &str) -> Value {
    with_kid(
        Jwk::from_encoding_key(&rsa_key(), Algorithm::RS256).unwrap(),
        kid,
    )
}

fn p256_jwk(kid: &str) -> Value {
    with_kid(
        Jwk::from_encoding_key(&p256_key(), Algorithm::ES256).unwrap(),
        kid,
    )
}

fn ed_jwk(kid: &str) -> Value {
    let public = ed25519_dalek::SigningKey::from_bytes(&ED_SEED).verifying_key();
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": URL_SAFE_NO_PAD.encode(public.as_bytes())})
}

fn standard_jwks() -> Value {
    json!({"keys": [rsa_jwk("rsa-1"), ed_jwk("ed-1"), p256_jwk("ec-1")]})
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims that pass every check; `changes` overrides or (with `null`) removes members.
fn claims(changes: Value) -> Value {
    let mut claims = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "exp": now() + 600,
        "iat": now(),
        "aegis_role": "operator",
        "tenant_id": "acme",
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

fn sign(algorithm: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn rs256(claims: &Value) -> String {
    sign(Algorithm::RS256, Some("rsa-1"), &rsa_key(), claims)
}

fn rs256_kid(kid: &str, claims: &Value) -> String {
    sign(Algorithm::RS256, Some(kid), &rsa_key(), claims)
}

fn bearer(token: &str) -> HeaderMap {
    authorization(&format!("Bearer {token}"))
}

fn authorization(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(value).unwrap(),
    );
    headers
}

/// A token assembled by hand, for headers `jsonwebtoken` will not produce.
fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

// ---------------------------------------------------------------------------------------------
// The authenticator under test
// ---------------------------------------------------------------------------------------------

fn config(server: &JwksServer) -> OperatorAuthConfig {
    OperatorAuthConfig {
        jwks_uri: server.uri.clone(),
        ..OperatorAuthConfig::from_settings(&AuthSettings::default())
    }
}

fn authenticator(config: OperatorAuthConfig) -> Arc<OperatorAuthenticator> {
    let http = HttpClient::new(HttpClientConfig::default()).expect("the default client builds");
    Arc::new(OperatorAuthenticator::new(config, http))
}

async fn standard() -> (JwksServer, Arc<OperatorAuthenticator>) {
    let server = JwksServer::start(standard_jwks()).await;
    let auth = authenticator(config(&server));
    (server, auth)
}

/// Asserts a 401 for `check` and returns the body's message.
fn assert_unauthorized(result: Result<OperatorIdentity, OperatorAuthError>, check: &str) -> String {
    let error = result.expect_err("the token must be refused");
    assert_eq!(error.status(), StatusCode::UNAUTHORIZED, "{error}");
    assert_eq!(error.check(), check, "{error}");
    let body = error.body();
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(body["check"], check);
    body["message"].as_str().unwrap().to_owned()
}

fn assert_unavailable(result: Result<OperatorIdentity, OperatorAuthError>) {
    let error = result.expect_err("the request must be refused");
    assert!(
        matches!(error, OperatorAuthError::JwksUnavailable(_)),
        "{error:?}"
    );
    assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error.check(), "jwks");
    let body = error.body();
    assert_eq!(body["error"], "operator JWKS unavailable");
    assert_eq!(body["check"], "jwks");
    assert!(
        !body.to_string().contains("127.0.0.1"),
        "the body names no host: {body}"
    );
}

/// Log lines written by this test binary (the subscriber is process-wide).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("aegis_seal_gateway=debug")
            .with_writer(move || LogWriter(sink.clone()))
            .init();
        buffer
    })
    .clone()
}

fn logs_text() -> String {
    String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned()
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

/// Every test sits in `operator::` so that `cargo nextest run -p aegis-seal-gateway operator` selects them.
mod operator {
    use super::*;

    // ---------------------------------------------------------------------------------------------
    // Accepted tokens
    // ---------------------------------------------------------------------------------------------

    #[tokio::test]
    async fn rs256_token_yields_the_operator_identity() {
        let (server, auth) = standard().await;

        let identity = auth
            .authenticate(&bearer(&rs256(&claims(json!({})))))
            .await
            .unwrap();
        assert_eq!(
            identity,
            OperatorIdentity {
                subject: Some("alice".into()),
                tenant_id: Some("acme".into()),
                roles: vec!["operator".into()],
                identity_kind: IdentityKind::Consumer,
                platform_operator: false,
                read_only: false,
            }
        );

        // Lower-case scheme, role array with a platform role, a Keycloak service account.
        let token = rs256(&claims(json!({
            "aegis_role": ["viewer", "platform-admin"],
            "preferred_username": "service-account-orchestrator",
        })));
        let identity = auth
            .authenticate(&authorization(&format!("bearer {token}")))
            .await
            .unwrap();
        assert_eq!(identity.tenant_id.as_deref(), Some("acme"));
        assert_eq!(identity.roles, ["viewer", "platform-admin"]);
        assert!(identity.platform_operator);
        assert_eq!(identity.identity_kind, IdentityKind::ServiceAccount);

        // No tenant_id makes a tenant-less platform operator (B-4).
        let token = rs256(&claims(
            json!({"tenant_id": Value::Null, "identity_kind": "service_account"}),
        ));
        let identity = auth.authenticate(&bearer(&token)).await.unwrap();
        assert_eq!(identity.tenant_id, None);
        assert!(identity.platform_operator);
        assert_eq!(identity.identity_kind, IdentityKind::ServiceAccount);

        // The role value `aegis:admin` is a platform role too.
        let token = rs256(&claims(json!({"aegis_role": "aegis:admin"})));
        assert!(
            auth.authenticate(&bearer(&token))
                .await
                .unwrap()
                .platform_operator
        );

        assert_eq!(
            server.fetches(),
            1,
            "one fetch serves every request within the TTL"
        );
    }

    #[tokio::test]
    async fn eddsa_and_es256_tokens_are_accepted() {
        let (_server, auth) = standard().await;

        let token = sign(
            Algorithm::EdDSA,
            Some("ed-1"),
            &ed_key(ED_SEED),
            &claims(json!({"aegis_role": "aegis:operator", "sub": "bob"})),
        );
        let identity = auth.authenticate(&bearer(&token)).await.unwrap();
        assert_eq!(identity.subject.as_deref(), Some("bob"));
        assert_eq!(identity.roles, ["aegis:operator"]);
        assert_eq!(identity.tenant_id.as_deref(), Some("acme"));
        assert!(!identity.platform_operator);

        let token = sign(
            Algorithm::ES256,
            Some("ec-1"),
            &p256_key(),
            &claims(json!({})),
        );
        let identity = auth.authenticate(&bearer(&token)).await.unwrap();
        assert_eq!(identity.roles, ["operator"]);
    }

    #[tokio::test]
    async fn unusable_jwks_entries_do_not_break_the_good_keys() {
        captured_logs();
        let mut kidless = rsa_jwk("x");
        kidless.as_object_mut().unwrap().remove("kid");
        let mut rs384 = rsa_jwk("rsa-384");
        rs384["alg"] = json!("RS384");
        let mut encryption = rsa_jwk("rsa-enc");
        encryption["use"] = json!("enc");
        let jwks = json!({"keys": [
            {"kty": "EC", "crv": "P-384", "kid": "ec-384", "alg": "ES384", "x": P384_X, "y": P384_Y},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"},
            kidless,
            rs384,
            encryption,
            {"kty": "RSA", "kid": "broken", "n": "!!!", "e": "AQAB"},
            {"kid": "no-kty"},
            "not even an object",
            {"kty": "OKP", "crv": "X25519", "kid": "x25519", "x": "AAAA"},
            rsa_jwk("rsa-1"),
            ed_jwk("ed-1"),
        ]});
        let server = JwksServer::start(jwks).await;
        let auth = authenticator(config(&server));

        auth.authenticate(&bearer(&rs256(&claims(json!({})))))
            .await
            .unwrap();
        let ed = sign(
            Algorithm::EdDSA,
            Some("ed-1"),
            &ed_key(ED_SEED),
            &claims(json!({})),
        );
        auth.authenticate(&bearer(&ed)).await.unwrap();

        // The skipped keys are simply absent.
        let message = assert_unauthorized(
            auth.authenticate(&bearer(&rs256_kid("rsa-enc", &claims(json!({})))))
                .await,
            "kid",
        );
        assert_eq!(message, "no key with kid \"rsa-enc\" in the operator JWKS");
        assert_eq!(server.fetches(), 1);

        let text = logs_text();
        assert!(text.contains("skipping JWKS key"), "{text}");
        assert!(
            text.contains("EC key on a curve other than P-256"),
            "{text}"
        );
    }

    // ---------------------------------------------------------------------------------------------
    // Refused tokens
    // ---------------------------------------------------------------------------------------------

    #[tokio::test]
    async fn header_problems_are_401_without_touching_the_jwks() {
        let (server, auth) = standard().await;

        let message = assert_unauthorized(auth.authenticate(&HeaderMap::new()).await, "token");
        assert!(message.contains("missing bearer token"), "{message}");
        assert!(matches!(
            auth.authenticate(&HeaderMap::new()).await,
            Err(OperatorAuthError::MissingToken)
        ));

        for value in ["Basic YWxpY2U6c2VjcmV0", "Bearer", "Token abc.def.ghi"] {
            let result = auth.authenticate(&authorization(value)).await;
            assert!(
                matches!(result, Err(OperatorAuthError::NotBearer)),
                "{value}: {result:?}"
            );
            assert_unauthorized(auth.authenticate(&authorization(value)).await, "token");
        }
        let mut non_ascii = HeaderMap::new();
        non_ascii.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        );
        assert!(matches!(
            auth.authenticate(&non_ascii).await,
            Err(OperatorAuthError::NotBearer)
        ));

        for garbage in [
            "garbage",
            "a.b",
            "a.b.c.d.e",
            "!!!.e30.sig",
            "e30.e30.sig",
            "WzFd.e30.sig",
        ] {
            let result = auth.authenticate(&bearer(garbage)).await;
            assert!(
                matches!(result, Err(OperatorAuthError::MalformedToken(_))),
                "{garbage}: {result:?}"
            );
            assert_unauthorized(auth.authenticate(&bearer(garbage)).await, "token");
        }
        assert_eq!(
            server.fetches(),
            0,
            "a token that cannot be parsed never causes a fetch"
        );
    }

    #[tokio::test]
    async fn hs256_none_and_algorithm_confusion_are_refused() {
        let (_server, auth) = standard().await;

        let hs256 = sign(
            Algorithm::HS256,
            Some("rsa-1"),
            &EncodingKey::from_secret(b"a-shared-secret-the-attacker-chose").unwrap(),
            &claims(json!({})),
        );
        let message = assert_unauthorized(auth.authenticate(&bearer(&hs256)).await, "algorithm");
        assert!(message.contains("\"HS256\""), "{message}");

        let none = raw_token(
            &json!({"alg": "none", "kid": "rsa-1"}),
            &claims(json!({})),
            b"",
        );
        let none = none.trim_end_matches('.').to_owned() + ".";
        let message = assert_unauthorized(auth.authenticate(&bearer(&none)).await, "algorithm");
        assert!(message.contains("\"none\""), "{message}");

        // An RS256 header naming the Ed25519 key, and an EdDSA header naming the RSA key.
        let confused = rs256_kid("ed-1", &claims(json!({})));
        assert_unauthorized(auth.authenticate(&bearer(&confused)).await, "algorithm");
        let confused = sign(
            Algorithm::EdDSA,
            Some("rsa-1"),
            &ed_key(ED_SEED),
            &claims(json!({})),
        );
        assert_unauthorized(auth.authenticate(&bearer(&confused)).await, "algorithm");

        // A key embedded in the header is never trusted.
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("attacker".into());
        header.jwk = Some(serde_json::from_value(rsa_jwk("attacker")).unwrap());
        let embedded = jsonwebtoken::encode(&header, &claims(json!({})), &rsa_key()).unwrap();
        assert_unauthorized(auth.authenticate(&bearer(&embedded)).await, "kid");

        let critical = raw_token(
            &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}),
            &claims(json!({})),
            b"sig",
        );
        assert_unauthorized(auth.authenticate(&bearer(&critical)).await, "token");
    }

    #[tokio::test]
    async fn bad_signatures_are_refused() {
        let (_server, auth) = standard().await;

        // Signed by another Ed25519 key under the published kid.
        let forged = sign(
            Algorithm::EdDSA,
            Some("ed-1"),
            &ed_key([8u8; 32]),
            &claims(json!({})),
        );
        let message = assert_unauthorized(auth.authenticate(&bearer(&forged)).await, "signature");
        assert_eq!(message, "token signature does not verify");

        // A valid RS256 token whose payload was swapped for a more generous one.
        let genuine = rs256(&claims(json!({"aegis_role": "viewer"})));
        let parts: Vec<&str> = genuine.split('.').collect();
        let generous =
            URL_SAFE_NO_PAD.encode(claims(json!({"aegis_role": "platform-admin"})).to_string());
        let tampered = format!("{}.{}.{}", parts[0], generous, parts[2]);
        assert_unauthorized(auth.authenticate(&bearer(&tampered)).await, "signature");

        // A token without kid.
        let kidless = sign(Algorithm::RS256, None, &rsa_key(), &claims(json!({})));
        let message = assert_unauthorized(auth.authenticate(&bearer(&kidless)).await, "kid");
        assert_eq!(message, "token header has no kid");
    }

    #[tokio::test]
    async fn unknown_kid_is_refused_after_one_refresh() {
        let server = JwksServer::start(standard_jwks()).await;
        let auth = authenticator(OperatorAuthConfig {
            min_refresh_interval: Duration::ZERO,
            ..config(&server)
        });
        auth.authenticate(&bearer(&rs256(&claims(json!({})))))
            .await
            .unwrap();
        assert_eq!(server.fetches(), 1);

        let token = rs256_kid("rotated-away", &claims(json!({})));
        let error = auth.authenticate(&bearer(&token)).await.unwrap_err();
        assert_eq!(
            server.fetches(),
            2,
            "an unknown kid refreshes the JWKS once"
        );
        assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            error.body(),
            json!({
                "error": "unauthorized",
                "check": "kid",
                "message": "no key with kid \"rotated-away\" in the operator JWKS",
            })
        );
    }

    #[tokio::test]
    async fn issuer_is_required_and_checked() {
        let logs = captured_logs();
        let (_server, auth) = standard().await;

        let token = rs256(&claims(json!({"iss": "x"})));
        let error = auth.authenticate(&bearer(&token)).await.unwrap_err();
        assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            error.body(),
            json!({
                "error": "unauthorized",
                "check": "issuer",
                "message": "token issuer \"x\" is not \"aegis-keycloak\"",
            })
        );
        assert!(!error.body().to_string().contains(&token));

        let message = assert_unauthorized(
            auth.authenticate(&bearer(&rs256(&claims(json!({"iss": null})))))
                .await,
            "issuer",
        );
        assert_eq!(
            message,
            "token has no iss claim (expected \"aegis-keycloak\")"
        );

        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        assert!(text.contains("operator token rejected"), "{text}");
        assert!(text.contains("check=\"issuer\""), "{text}");
        assert!(!text.contains(&token), "the token is never logged");
        assert!(
            !text.contains(token.split('.').nth(2).unwrap()),
            "not even its signature"
        );
    }

    #[tokio::test]
    async fn audience_is_required_and_may_be_an_array() {
        let (_server, auth) = standard().await;

        let message = assert_unauthorized(
            auth.authenticate(&bearer(&rs256(&claims(json!({"aud": "other"})))))
                .await,
            "audience",
        );
        assert_eq!(
            message,
            "token audience \"other\" does not include \"aegis-seal-gateway\""
        );

        let message = assert_unauthorized(
            auth.authenticate(&bearer(&rs256(&claims(json!({"aud": null})))))
                .await,
            "audience",
        );
        assert_eq!(
            message,
            "token has no aud claim (expected \"aegis-seal-gateway\")"
        );

        let token = rs256(&claims(json!({"aud": ["account", "other"]})));
        let message = assert_unauthorized(auth.authenticate(&bearer(&token)).await, "audience");
        assert_eq!(
            message,
            "token audience [\"account\",\"other\"] does not include \"aegis-seal-gateway\""
        );

        let token = rs256(&claims(json!({"aud": ["account", AUDIENCE]})));
        auth.authenticate(&bearer(&token)).await.unwrap();
    }

    #[tokio::test]
    async fn expiry_and_not_before_honour_the_leeway() {
        let (_server, auth) = standard().await;

        let expired = rs256(&claims(json!({"exp": now() - 120})));
        let message = assert_unauthorized(auth.authenticate(&bearer(&expired)).await, "expiry");
        assert!(message.starts_with("token expired at "), "{message}");
        assert!(matches!(
            auth.authenticate(&bearer(&expired)).await,
            Err(OperatorAuthError::Expired(_))
        ));

        let within_leeway = rs256(&claims(json!({"exp": now() - 30})));
        auth.authenticate(&bearer(&within_leeway)).await.unwrap();

        let message = assert_unauthorized(
            auth.authenticate(&bearer(&rs256(&claims(json!({"exp": null})))))
                .await,
            "expiry",
        );
        assert_eq!(message, "token has no exp claim");
        let message = assert_unauthorized(
            auth.authenticate(&bearer(&rs256(&claims(json!({"exp": "soon"})))))
                .await,
            "expiry",
        );
        assert_eq!(message, "exp claim is not a number");

        let early = rs256(&claims(json!({"nbf": now() + 600})));
        let message = assert_unauthorized(auth.authenticate(&bearer(&early)).await, "not_before");
        assert!(
            message.starts_with("token is not valid before "),
            "{message}"
        );
        assert!(matches!(
            auth.authenticate(&bearer(&early)).await,
            Err(OperatorAuthError::NotYetValid(_))
        ));

        let slightly_early = rs256(&claims(json!({"nbf": now() + 30})));
        auth.authenticate(&bearer(&slightly_early)).await.unwrap();
    }

    #[tokio::test]
    async fn role_must_be_present_and_accepted() {
        let logs = captured_logs();
        let (_server, auth) = standard().await;

        let token = rs256(&claims(json!({"aegis_role": null})));
        let error = auth.authenticate(&bearer(&token)).await.unwrap_err();
        assert!(matches!(error, OperatorAuthError::MissingRole { .. }));
        assert_eq!(
            error.status(),
            StatusCode::UNAUTHORIZED,
            "role problems are 401 (B-3)"
        );
        assert_eq!(
            error.body(),
            json!({
                "error": "unauthorized",
                "check": "role",
                "message": "Missing aegis_role claim in operator JWT",
            })
        );

        for role in [
            json!("viewer"),
            json!(["viewer", "auditor"]),
            json!([]),
            json!(42),
        ] {
            let token = rs256(&claims(json!({"aegis_role": role})));
            let error = auth.authenticate(&bearer(&token)).await.unwrap_err();
            assert!(
                matches!(error, OperatorAuthError::InsufficientRole { .. }),
                "{role}: {error:?}"
            );
            assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(error.check(), "role");
            assert!(
                error
                    .to_string()
                    .starts_with("Insufficient role for SEAL operator access")
            );
        }

        for role in [
            "operator",
            "platform-admin",
            "aegis:operator",
            "aegis:admin",
        ] {
            let token = rs256(&claims(json!({"aegis_role": ["viewer", role]})));
            let identity = auth.authenticate(&bearer(&token)).await.unwrap();
            assert_eq!(identity.roles, ["viewer", role]);
        }

        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        assert!(
            text.contains("Missing aegis_role claim in operator JWT"),
            "{text}"
        );
        assert!(
            text.contains("Insufficient role for SEAL operator access"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_read_only_role_may_read_and_is_refused_a_write_with_403() {
        let server = JwksServer::start(standard_jwks()).await;
        let settings = AuthSettings {
            operator_jwks_uri: server.uri.clone(),
            operator_read_only_roles: vec![" aegis:auditor ".into()],
            ..AuthSettings::default()
        };
        let auth = authenticator(OperatorAuthConfig::from_settings(&settings));
        let logs = captured_logs();

        let token = rs256(&claims(json!({"aegis_role": ["viewer", "aegis:auditor"]})));
        let auditor = auth.authenticate(&bearer(&token)).await.unwrap();
        assert!(auditor.read_only);
        assert_eq!(auditor.tenant_id.as_deref(), Some("acme"));
        for method in [Method::GET, Method::HEAD] {
            auth.authorize(&auditor, &method).unwrap();
        }
        for method in [Method::POST, Method::PUT, Method::DELETE] {
            let error = auth.authorize(&auditor, &method).unwrap_err();
            assert_eq!(error.status(), StatusCode::FORBIDDEN);
            assert_eq!(
                error.challenge(),
                Some(r#"Bearer realm="aegis-seal-gateway", error="insufficient_scope""#)
            );
            assert_eq!(
                error.body(),
                json!({
                    "error": "forbidden",
                    "check": "role",
                    "message": format!(
                        "Read-only role for SEAL operator access: aegis_role is [\"viewer\", \
                         \"aegis:auditor\"], which may only read (GET, HEAD); a {method} needs \
                         a role among operator_accepted_roles"
                    ),
                })
            );
        }

        // A role that may write as well makes a writer; the other roles are as before.
        let token = rs256(&claims(
            json!({"aegis_role": ["aegis:auditor", "operator"]}),
        ));
        let writer = auth.authenticate(&bearer(&token)).await.unwrap();
        assert!(!writer.read_only);
        auth.authorize(&writer, &Method::DELETE).unwrap();
        let token = rs256(&claims(json!({"aegis_role": "viewer"})));
        assert_unauthorized(auth.authenticate(&bearer(&token)).await, "role");
        // Without the setting, the same auditor's token is refused outright.
        let (_server, default) = standard().await;
        let token = rs256(&claims(json!({"aegis_role": "aegis:auditor"})));
        assert_unauthorized(default.authenticate(&bearer(&token)).await, "role");

        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        assert!(
            text.contains("Read-only role refused a write to a SEAL operator endpoint"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn role_claim_and_accepted_roles_are_configurable() {
        let server = JwksServer::start(standard_jwks()).await;
        let settings = AuthSettings {
            operator_jwks_uri: server.uri.clone(),
            operator_role_claim: Some("groups".into()),
            ..AuthSettings::default()
        };
        let settings = AuthSettings {
            operator_accepted_roles: Some(vec![" gateway-ops ".into()]),
            ..settings
        };
        let auth = authenticator(OperatorAuthConfig::from_settings(&settings));
        let token = rs256(&claims(
            json!({"groups": ["gateway-ops"], "aegis_role": null}),
        ));
        auth.authenticate(&bearer(&token)).await.unwrap();
        let token = rs256(&claims(json!({"groups": "operator"})));
        assert_unauthorized(auth.authenticate(&bearer(&token)).await, "role");

        // Keycloak's default place for realm roles, by dotted path.
        let auth = authenticator(OperatorAuthConfig {
            role_claim: "realm_access.roles".into(),
            ..config(&server)
        });
        let token = rs256(&claims(
            json!({"realm_access": {"roles": ["offline_access", "operator"]}, "aegis_role": null}),
        ));
        assert_eq!(
            auth.authenticate(&bearer(&token)).await.unwrap().roles,
            ["offline_access", "operator"]
        );
    }

    #[tokio::test]
    async fn a_tenant_id_that_is_not_a_string_is_refused() {
        let (_server, auth) = standard().await;
        let token = rs256(&claims(json!({"tenant_id": 17})));
        let message = assert_unauthorized(auth.authenticate(&bearer(&token)).await, "token");
        assert!(message.contains("tenant_id"), "{message}");
    }

    /// A blank or null tenant is what an IdP mapper without a value may emit for a tenant
    /// operator: it is refused, never read as the absent claim of a platform operator.
    #[tokio::test]
    async fn a_blank_tenant_id_is_refused_not_made_a_platform_operator() {
        let (_server, auth) = standard().await;
        for blank in ["", "  "] {
            let token = rs256(&claims(json!({"tenant_id": blank})));
            let message = assert_unauthorized(auth.authenticate(&bearer(&token)).await, "token");
            assert!(message.contains("tenant_id claim is blank"), "{message}");
        }
        // Some mappers write null for a user without the attribute: the same.
        let mut with_null = claims(json!({}));
        with_null["tenant_id"] = Value::Null;
        let token = rs256(&with_null);
        let message = assert_unauthorized(auth.authenticate(&bearer(&token)).await, "token");
        assert!(message.contains("tenant_id claim is null"), "{message}");
    }

    // ---------------------------------------------------------------------------------------------
    // The JWKS cache
    // ---------------------------------------------------------------------------------------------

    #[tokio::test]
    async fn the_cache_ttl_is_respected() {
        let server = JwksServer::start(standard_jwks()).await;
        let auth = authenticator(OperatorAuthConfig {
            cache_ttl: Duration::from_millis(500),
            min_refresh_interval: Duration::ZERO,
            ..config(&server)
        });
        let token = rs256(&claims(json!({})));
        for _ in 0..5 {
            auth.authenticate(&bearer(&token)).await.unwrap();
        }
        assert_eq!(server.fetches(), 1);

        tokio::time::sleep(Duration::from_millis(700)).await;
        auth.authenticate(&bearer(&token)).await.unwrap();
        auth.authenticate(&bearer(&token)).await.unwrap();
        assert_eq!(
            server.fetches(),
            2,
            "an expired cache is fetched again, once"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_unknown_kid_refreshes_once_for_concurrent_callers() {
        let server = JwksServer::start(standard_jwks()).await;
        let auth = authenticator(OperatorAuthConfig {
            min_refresh_interval: Duration::ZERO,
            ..config(&server)
        });
        auth.authenticate(&bearer(&rs256(&claims(json!({})))))
            .await
            .unwrap();
        assert_eq!(server.fetches(), 1);

        // The IdP rotates to a new kid; the fetch is slow so that every caller overlaps it.
        server.set_jwks(json!({"keys": [rsa_jwk("rsa-2"), ed_jwk("ed-1")]}));
        server.set_delay(Duration::from_millis(300));
        let token = rs256_kid("rsa-2", &claims(json!({})));
        let start = Arc::new(tokio::sync::Barrier::new(20));
        let callers: Vec<_> = (0..20)
            .map(|_| {
                let (auth, token, start) = (auth.clone(), token.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    auth.authenticate(&bearer(&token)).await
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap().unwrap();
        }
        assert_eq!(server.fetches(), 2, "twenty callers, one refresh");
    }

    #[tokio::test]
    async fn unknown_kid_refreshes_are_rate_limited() {
        let server = JwksServer::start(standard_jwks()).await;
        let auth = authenticator(OperatorAuthConfig {
            min_refresh_interval: Duration::from_millis(800),
            ..config(&server)
        });
        auth.authenticate(&bearer(&rs256(&claims(json!({})))))
            .await
            .unwrap();
        assert_eq!(server.fetches(), 1);

        // Just after a fetch, random kids cause no further fetches.
        for i in 0..10 {
            let token = rs256_kid(&format!("random-{i}"), &claims(json!({})));
            assert_unauthorized(auth.authenticate(&bearer(&token)).await, "kid");
        }
        assert_eq!(server.fetches(), 1);

        tokio::time::sleep(Duration::from_millis(1000)).await;
        for i in 0..10 {
            let token = rs256_kid(&format!("random-{i}"), &claims(json!({})));
            assert_unauthorized(auth.authenticate(&bearer(&token)).await, "kid");
        }
        assert_eq!(server.fetches(), 2, "one refresh per interval");

        // A key rotated in during the quiet period is picked up by the next allowed refresh.
        server.set_jwks(json!({"keys": [rsa_jwk("rsa-1"), rsa_jwk("rsa-2")]}));
        let rotated = rs256_kid("rsa-2", &claims(json!({})));
        assert_unauthorized(auth.authenticate(&bearer(&rotated)).await, "kid");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        auth.authenticate(&bearer(&rotated)).await.unwrap();
        assert_eq!(server.fetches(), 3);
    }

    #[tokio::test]
    async fn a_stale_cache_is_served_while_the_idp_fails_within_stale_for() {
        let logs = captured_logs();
        let server = JwksServer::start(standard_jwks()).await;
        let auth = authenticator(OperatorAuthConfig {
            cache_ttl: Duration::from_millis(200),
            stale_for: Duration::from_secs(60),
            min_refresh_interval: Duration::ZERO,
            ..config(&server)
        });
        let token = rs256(&claims(json!({})));
        auth.authenticate(&bearer(&token)).await.unwrap();

        server.set_mode(Mode::Fail);
        tokio::time::sleep(Duration::from_millis(300)).await;
        auth.authenticate(&bearer(&token)).await.unwrap();
        assert_eq!(server.fetches(), 2, "the refresh was attempted");
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        assert!(text.contains("JWKS fetch failed"), "{text}");
        // A key the stale copy lacks (a rotation the IdP cannot announce now) is the endpoint's
        // failure: 503, not a 401 blaming the token.
        assert_unavailable(
            auth.authenticate(&bearer(&rs256_kid("rsa-3", &claims(json!({})))))
                .await,
        );

        // Recovery: the next refresh replaces the stale copy.
        server.set_mode(Mode::Serve);
        server.set_jwks(json!({"keys": [rsa_jwk("rsa-1"), rsa_jwk("rsa-3")]}));
        auth.authenticate(&bearer(&rs256_kid("rsa-3", &claims(json!({})))))
            .await
            .unwrap();
        assert_eq!(server.fetches(), 4);
    }

    #[tokio::test]
    async fn a_stale_cache_beyond_stale_for_gives_503() {
        let server = JwksServer::start(standard_jwks()).await;
        let auth = authenticator(OperatorAuthConfig {
            cache_ttl: Duration::from_millis(100),
            stale_for: Duration::from_millis(200),
            min_refresh_interval: Duration::ZERO,
            ..config(&server)
        });
        let token = rs256(&claims(json!({})));
        auth.authenticate(&bearer(&token)).await.unwrap();

        server.set_mode(Mode::Fail);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_unavailable(auth.authenticate(&bearer(&token)).await);
    }

    #[tokio::test]
    async fn an_unreachable_idp_with_nothing_cached_gives_503() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/certs", closed.local_addr().unwrap());
        drop(closed);
        let auth = authenticator(OperatorAuthConfig {
            jwks_uri: uri,
            ..OperatorAuthConfig::from_settings(&AuthSettings::default())
        });
        let token = rs256(&claims(json!({})));
        assert_unavailable(auth.authenticate(&bearer(&token)).await);

        // A failing IdP is not hammered: within the refresh interval the failure is answered from memory.
        let server = JwksServer::start(standard_jwks()).await;
        server.set_mode(Mode::Fail);
        let auth = authenticator(config(&server));
        for _ in 0..5 {
            assert_unavailable(auth.authenticate(&bearer(&token)).await);
        }
        assert_eq!(server.fetches(), 1);
    }

    #[tokio::test]
    async fn a_hanging_jwks_endpoint_is_bounded_by_the_fetch_timeout() {
        let server = JwksServer::start(standard_jwks()).await;
        server.set_mode(Mode::Hang);
        let auth = authenticator(OperatorAuthConfig {
            fetch_timeout: Duration::from_millis(300),
            min_refresh_interval: Duration::ZERO,
            cache_ttl: Duration::from_millis(200),
            ..config(&server)
        });
        let token = rs256(&claims(json!({})));

        let started = Instant::now();
        assert_unavailable(auth.authenticate(&bearer(&token)).await);
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
        assert!(
            elapsed < Duration::from_secs(5),
            "bounded by the fetch timeout: {elapsed:?}"
        );

        // With a cached copy, a hanging IdP costs one bounded wait and the stale keys are served.
        server.set_mode(Mode::Serve);
        auth.authenticate(&bearer(&token)).await.unwrap();
        server.set_mode(Mode::Hang);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        auth.authenticate(&bearer(&token)).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_jwks_without_usable_keys_is_a_failed_fetch() {
        captured_logs();
        let server =
            JwksServer::start(json!({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]})).await;
        let auth = authenticator(config(&server));
        assert_unavailable(auth.authenticate(&bearer(&rs256(&claims(json!({}))))).await);

        let server = JwksServer::start(json!({"not": "a jwks"})).await;
        let auth = authenticator(config(&server));
        assert_unavailable(auth.authenticate(&bearer(&rs256(&claims(json!({}))))).await);

        let text = logs_text();
        assert!(text.contains("JWKS fetch failed"), "{text}");
        assert!(text.contains("JWKS has no usable key"), "{text}");
        assert!(text.contains("Failed to parse JWKS response"), "{text}");
    }

    // ---------------------------------------------------------------------------------------------
    // Configuration
    // ---------------------------------------------------------------------------------------------

    #[test]
    fn config_from_settings_uses_the_documented_defaults() {
        let config = OperatorAuthConfig::from_settings(&AuthSettings::default());
        assert_eq!(config.issuer, "aegis-keycloak");
        assert_eq!(config.audience, "aegis-seal-gateway");
        assert_eq!(config.role_claim, "aegis_role");
        assert_eq!(
            config.accepted_roles,
            [
                "operator",
                "platform-admin",
                "aegis:operator",
                "aegis:admin"
            ]
        );
        assert_eq!(config.cache_ttl, Duration::from_secs(300));
        assert_eq!(config.leeway, Duration::from_secs(60));
        assert_eq!(config.fetch_timeout, Duration::from_secs(5));
        assert_eq!(config.stale_for, Duration::from_secs(3600));
        assert_eq!(config.min_refresh_interval, Duration::from_secs(10));

        let settings = AuthSettings {
            operator_jwks_uri: "https://idp.example/certs".into(),
            jwks_cache_ttl_secs: 30,
            operator_jwt_issuer: "https://idp.example/realms/aegis".into(),
            operator_jwt_audience: "gateway".into(),
            operator_role_claim: Some("roles".into()),
            ..AuthSettings::default()
        };
        let config = OperatorAuthConfig::from_settings(&settings);
        assert_eq!(config.jwks_uri, "https://idp.example/certs");
        assert_eq!(config.cache_ttl, Duration::from_secs(30));
        assert_eq!(config.issuer, "https://idp.example/realms/aegis");
        assert_eq!(config.audience, "gateway");
        assert_eq!(config.role_claim, "roles");

        let blank = AuthSettings {
            operator_role_claim: Some("  ".into()),
            ..AuthSettings::default()
        };
        assert_eq!(
            OperatorAuthConfig::from_settings(&blank).role_claim,
            "aegis_role"
        );
    }

    #[test]
    fn auth_disabled_grants_a_tenantless_platform_operator() {
        let identity = OperatorIdentity::unauthenticated_platform();
        assert_eq!(identity.tenant_id, None);
        assert!(identity.platform_operator);
        assert_eq!(identity.identity_kind, IdentityKind::Consumer);
        assert_eq!(identity.subject, None);
        assert!(identity.roles.is_empty());
    }
}
