//! Operator JWT authentication for the operator endpoints (reference §3, decisions B-2, B-3, B-4).
//!
//! Tokens are verified against the identity provider's JWKS. The key set lives in an `ArcSwap`, so a
//! request whose key is cached never waits on a lock. Refreshes (TTL expiry or an unknown `kid`) go
//! through one `tokio::sync::Mutex`: concurrent callers wait for a single fetch, and fetches are
//! rate-limited by `min_refresh_interval`. When the IdP cannot be reached the last good key set is
//! served for `stale_for` after its TTL; after that, or when nothing was ever fetched, requests get
//! 503. Every token problem, role problems included, is a 401 (runbook, B-3) whose JSON body names
//! the failed check; the token itself never appears in a body or a log. A valid token whose roles
//! may only read (`operator_read_only_roles`) is refused a write with 403: it is not a token
//! problem, and a 401 would tell the client to get another token for the same role.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aegis_seal_crds::gateway::AuthSettings;
use arc_swap::ArcSwapOption;
use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use http::StatusCode;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use tracing::{debug, warn};

use crate::domain::tenancy::IdentityKind;
use crate::infrastructure::http_client::HttpClient;

/// Claim holding the operator role when `operator_role_claim` is unset.
pub const DEFAULT_ROLE_CLAIM: &str = "aegis_role";
/// Roles accepted when `operator_accepted_roles` is unset (B-2): the runbook's and the upstream
/// gateway's spellings.
pub const DEFAULT_ACCEPTED_ROLES: [&str; 4] = [
    "operator",
    "platform-admin",
    "aegis:operator",
    "aegis:admin",
];
/// Roles that make their holder a platform operator (B-4).
pub const PLATFORM_ROLES: [&str; 2] = ["platform-admin", "aegis:admin"];

const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_STALE_FOR: Duration = Duration::from_secs(60 * 60);
const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// A JWKS document larger than this is refused: real ones are a few KiB.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// JWK members are base64url; tolerate the padding some IdPs emit.
const JWK_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How operator JWTs are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorAuthConfig {
    pub jwks_uri: String,
    pub issuer: String,
    pub audience: String,
    /// Claim holding the role, a string or an array of strings. A dotted name (`realm_access.roles`)
    /// is followed into nested objects when no top-level claim has that exact name.
    pub role_claim: String,
    pub accepted_roles: Vec<String>,
    /// Roles accepted for reading only (`GET` and `HEAD`).
    pub read_only_roles: Vec<String>,
    /// How long a fetched JWKS is used before it is fetched again.
    pub cache_ttl: Duration,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Bound on one JWKS fetch: connect, headers and body.
    pub fetch_timeout: Duration,
    /// How long after its TTL a cached JWKS may still be used while the IdP is unreachable.
    pub stale_for: Duration,
    /// Refreshes (an unknown `kid`, or a retry after a failure) happen at most this often.
    pub min_refresh_interval: Duration,
}

impl OperatorAuthConfig {
    /// The roles that may read and write: `operator_accepted_roles`, or the defaults.
    pub fn accepted_roles(auth: &AuthSettings) -> Vec<String> {
        match &auth.operator_accepted_roles {
            Some(roles) => roles.iter().map(|r| r.trim().to_owned()).collect(),
            None => DEFAULT_ACCEPTED_ROLES.map(String::from).to_vec(),
        }
    }

    pub fn from_settings(auth: &AuthSettings) -> Self {
        let role_claim = auth
            .operator_role_claim
            .as_deref()
            .map(str::trim)
            .filter(|claim| !claim.is_empty())
            .unwrap_or(DEFAULT_ROLE_CLAIM);
        let cache_ttl = Duration::from_secs(auth.jwks_cache_ttl_secs);
        Self {
            jwks_uri: auth.operator_jwks_uri.clone(),
            issuer: auth.operator_jwt_issuer.clone(),
            audience: auth.operator_jwt_audience.clone(),
            role_claim: role_claim.to_owned(),
            accepted_roles: Self::accepted_roles(auth),
            read_only_roles: auth
                .operator_read_only_roles
                .iter()
                .map(|r| r.trim().to_owned())
                .collect(),
            cache_ttl,
            leeway: DEFAULT_LEEWAY,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            stale_for: DEFAULT_STALE_FOR,
            // An operator who asks for a short TTL (runbook: "Lower jwks_cache_ttl_secs if your IdP
            // rotates aggressively") already accepts a fetch per TTL; a longer refresh interval
            // would only delay picking up a rotated key, not bound the fetch rate further.
            min_refresh_interval: DEFAULT_MIN_REFRESH_INTERVAL.min(cache_ttl),
        }
    }
}

/// An authenticated operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorIdentity {
    pub subject: Option<String>,
    /// The `tenant_id` claim when it is a non-empty string; `None` for a tenant-less operator.
    pub tenant_id: Option<String>,
    /// Every string value of the role claim, accepted or not.
    pub roles: Vec<String>,
    pub identity_kind: IdentityKind,
    /// B-4: role `platform-admin`/`aegis:admin`, or no `tenant_id`.
    pub platform_operator: bool,
    /// None of its roles may write, one is among `operator_read_only_roles`: it may only read.
    pub read_only: bool,
}

impl OperatorIdentity {
    /// What `auth.disabled` grants: a platform operator with no tenant.
    pub fn unauthenticated_platform() -> Self {
        Self {
            subject: None,
            tenant_id: None,
            roles: Vec::new(),
            identity_kind: IdentityKind::Consumer,
            platform_operator: true,
            read_only: false,
        }
    }

    /// The owner of an object this operator creates: the tenant it names (a blank name is none),
    /// else its own (none for a tenant-less platform operator: system-global). Only a platform
    /// operator may name another tenant than its own; `Err` is the tenant it may not name.
    pub fn owner_for_create(&self, requested: Option<&str>) -> Result<Option<String>, String> {
        match requested.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(self.tenant_id.clone()),
            Some(t) if self.platform_operator || self.tenant_id.as_deref() == Some(t) => {
                Ok(Some(t.to_owned()))
            }
            Some(t) => Err(t.to_owned()),
        }
    }
}

/// Why an operator request was refused. Messages may quote claims or header values, never the token.
#[derive(Debug, thiserror::Error)]
pub enum OperatorAuthError {
    #[error("missing bearer token: send \"Authorization: Bearer <jwt>\"")]
    MissingToken,
    #[error("authorization header is not \"Bearer <jwt>\"")]
    NotBearer,
    #[error("malformed token: {0}")]
    MalformedToken(String),
    #[error("token algorithm {0:?} is not accepted (RS256, ES256 or EdDSA with a matching key)")]
    UnsupportedAlgorithm(String),
    #[error("{}", unknown_kid_message(.0.as_deref()))]
    UnknownKid(Option<String>),
    #[error("token signature does not verify")]
    BadSignature,
    #[error("{0}")]
    Expired(String),
    #[error("{0}")]
    NotYetValid(String),
    #[error("{}", issuer_message(.found.as_ref(), .expected))]
    Issuer {
        found: Option<Value>,
        expected: String,
    },
    #[error("{}", audience_message(.found.as_ref(), .expected))]
    Audience {
        found: Option<Value>,
        expected: String,
    },
    #[error("Missing {claim} claim in operator JWT")]
    MissingRole { claim: String },
    #[error("Insufficient role for SEAL operator access: {claim} is {roles:?}")]
    InsufficientRole { claim: String, roles: Vec<String> },
    #[error(
        "Read-only role for SEAL operator access: {claim} is {roles:?}, which may only read \
         (GET, HEAD); a {method} needs a role among operator_accepted_roles"
    )]
    ReadOnlyRole {
        claim: String,
        roles: Vec<String>,
        method: String,
    },
    #[error("operator JWKS unavailable: {0}")]
    JwksUnavailable(String),
}

fn unknown_kid_message(kid: Option<&str>) -> String {
    match kid {
        Some(kid) => format!("no key with kid {kid:?} in the operator JWKS"),
        None => "token header has no kid".to_owned(),
    }
}

fn issuer_message(found: Option<&Value>, expected: &str) -> String {
    let expected = Value::from(expected);
    match found {
        Some(found) => format!("token issuer {found} is not {expected}"),
        None => format!("token has no iss claim (expected {expected})"),
    }
}

fn audience_message(found: Option<&Value>, expected: &str) -> String {
    let expected = Value::from(expected);
    match found {
        Some(found) => format!("token audience {found} does not include {expected}"),
        None => format!("token has no aud claim (expected {expected})"),
    }
}

impl OperatorAuthError {
    /// 401 for every token problem (runbook "Operator JWT 401", B-3); 403 for a read-only
    /// operator's write; 503 when no usable JWKS exists.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::JwksUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::ReadOnlyRole { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `WWW-Authenticate` challenge of the 401 (RFC 6750 §3): the scheme, and why a token that
    /// came was not enough; no error for a request without a bearer token. `None` for the 503.
    pub fn challenge(&self) -> Option<&'static str> {
        match self {
            Self::JwksUnavailable(_) => None,
            Self::MissingToken | Self::NotBearer => Some(r#"Bearer realm="aegis-seal-gateway""#),
            Self::MissingRole { .. }
            | Self::InsufficientRole { .. }
            | Self::ReadOnlyRole { .. } => {
                Some(r#"Bearer realm="aegis-seal-gateway", error="insufficient_scope""#)
            }
            _ => Some(r#"Bearer realm="aegis-seal-gateway", error="invalid_token""#),
        }
    }

    /// The name of the failed check, as it appears in bodies and logs.
    pub fn check(&self) -> &'static str {
        match self {
            Self::MissingToken | Self::NotBearer | Self::MalformedToken(_) => "token",
            Self::UnsupportedAlgorithm(_) => "algorithm",
            Self::UnknownKid(_) => "kid",
            Self::BadSignature => "signature",
            Self::Expired(_) => "expiry",
            Self::NotYetValid(_) => "not_before",
            Self::Issuer { .. } => "issuer",
            Self::Audience { .. } => "audience",
            Self::MissingRole { .. }
            | Self::InsufficientRole { .. }
            | Self::ReadOnlyRole { .. } => "role",
            Self::JwksUnavailable(_) => "jwks",
        }
    }

    /// The JSON response body. The 503 body does not repeat the fetch error (it can name internal
    /// hosts); that is in the `JWKS fetch failed` log line.
    pub fn body(&self) -> Value {
        match self {
            Self::JwksUnavailable(_) => json!({
                "error": "operator JWKS unavailable",
                "check": self.check(),
                "message": "the operator JWKS could not be fetched and no cached copy is usable",
            }),
            Self::ReadOnlyRole { .. } => json!({
                "error": "forbidden",
                "check": self.check(),
                "message": self.to_string(),
            }),
            _ => json!({
                "error": "unauthorized",
                "check": self.check(),
                "message": self.to_string(),
            }),
        }
    }
}

/// A verification key from the JWKS, with the one algorithm it is used with.
struct VerifyKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

struct KeySet {
    keys: HashMap<String, Vec<VerifyKey>>,
    fetched_at: Instant,
}

enum Lookup<'a> {
    Found(&'a DecodingKey),
    /// The kid exists, but not for the token's algorithm.
    WrongAlgorithm,
    Missing,
}

impl KeySet {
    fn lookup(&self, kid: &str, algorithm: Algorithm) -> Lookup<'_> {
        match self.keys.get(kid) {
            None => Lookup::Missing,
            Some(keys) => keys
                .iter()
                .find(|k| k.algorithm == algorithm)
                .map_or(Lookup::WrongAlgorithm, |k| Lookup::Found(&k.key)),
        }
    }

    fn age(&self) -> Duration {
        self.fetched_at.elapsed()
    }
}

#[derive(Default)]
struct RefreshState {
    /// When the last fetch finished, successfully or not.
    last_attempt: Option<Instant>,
    /// Why the last fetch failed; `None` after a success.
    last_error: Option<String>,
}

/// Verifies operator JWTs. Cheap to share behind an `Arc`.
pub struct OperatorAuthenticator {
    config: OperatorAuthConfig,
    http: HttpClient,
    keys: ArcSwapOption<KeySet>,
    refresh: tokio::sync::Mutex<RefreshState>,
    validation: [(Algorithm, Validation); 3],
}

impl std::fmt::Debug for OperatorAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorAuthenticator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Signature only: every claim is checked by hand, so each failure gets its own check and message.
fn signature_only(algorithm: Algorithm) -> (Algorithm, Validation) {
    let mut validation = Validation::new(algorithm);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    (algorithm, validation)
}

impl OperatorAuthenticator {
    pub fn new(config: OperatorAuthConfig, http: HttpClient) -> Self {
        if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
            tracing::error!(
                "no jsonwebtoken crypto provider: every operator token will be refused"
            );
        }
        Self {
            config,
            http,
            keys: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            validation: [
                signature_only(Algorithm::RS256),
                signature_only(Algorithm::ES256),
                signature_only(Algorithm::EdDSA),
            ],
        }
    }

    pub fn config(&self) -> &OperatorAuthConfig {
        &self.config
    }

    /// Authenticates the `Authorization: Bearer <jwt>` header. Failures are logged here, once.
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<OperatorIdentity, OperatorAuthError> {
        let result = self.authenticate_inner(headers).await;
        if let Err(error) = &result {
            log_refusal(error);
        }
        result
    }

    /// Whether `operator` may make a request with `method`: a read-only operator may only read.
    /// The refusal is logged like an authentication failure.
    pub fn authorize(
        &self,
        operator: &OperatorIdentity,
        method: &http::Method,
    ) -> Result<(), OperatorAuthError> {
        if !operator.read_only || matches!(*method, http::Method::GET | http::Method::HEAD) {
            return Ok(());
        }
        let error = OperatorAuthError::ReadOnlyRole {
            claim: self.config.role_claim.clone(),
            roles: operator.roles.clone(),
            method: method.to_string(),
        };
        log_refusal(&error);
        Err(error)
    }

    async fn authenticate_inner(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<OperatorIdentity, OperatorAuthError> {
        let token = bearer_token(headers)?;
        let (algorithm, kid) = parse_header(token)?;
        let kid = kid.ok_or(OperatorAuthError::UnknownKid(None))?;
        let claims = self.verify_signature(token, &kid, algorithm).await?;
        self.check_claims(claims)
    }

    async fn verify_signature(
        &self,
        token: &str,
        kid: &str,
        algorithm: Algorithm,
    ) -> Result<Value, OperatorAuthError> {
        // Hot path: a fresh cached key, no lock and no await.
        let snapshot = self.keys.load_full();
        if let Some(set) = &snapshot
            && set.age() <= self.config.cache_ttl
        {
            match set.lookup(kid, algorithm) {
                Lookup::Found(key) => return self.decode(token, key, algorithm),
                Lookup::WrongAlgorithm => return Err(wrong_algorithm(algorithm)),
                Lookup::Missing => debug!(kid, "key not found in cached JWKS; refreshing"),
            }
        }
        let (set, last_error) = self.refresh(snapshot.as_ref()).await?;
        match set.lookup(kid, algorithm) {
            Lookup::Found(key) => self.decode(token, key, algorithm),
            Lookup::WrongAlgorithm => Err(wrong_algorithm(algorithm)),
            // The key may well exist (a rotation) while the endpoint cannot say so: that is the
            // endpoint's failure, not the token's.
            Lookup::Missing => Err(match last_error {
                Some(reason) => OperatorAuthError::JwksUnavailable(format!(
                    "{reason}; key {kid:?} is not in the JWKS cached before"
                )),
                None => OperatorAuthError::UnknownKid(Some(kid.to_owned())),
            }),
        }
    }

    fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        algorithm: Algorithm,
    ) -> Result<Value, OperatorAuthError> {
        if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
            return Err(OperatorAuthError::JwksUnavailable(
                "no jsonwebtoken crypto provider is available".into(),
            ));
        }
        let validation = self
            .validation
            .iter()
            .find(|(alg, _)| *alg == algorithm)
            .map(|(_, validation)| validation)
            .ok_or_else(|| wrong_algorithm(algorithm))?;
        match jsonwebtoken::decode::<Value>(token, key, validation) {
            Ok(data) => Ok(data.claims),
            Err(error) => Err(match error.kind() {
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidRsaKey(_)
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidEddsaKey
                | ErrorKind::InvalidKeyFormat => OperatorAuthError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
                    wrong_algorithm(algorithm)
                }
                ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                    OperatorAuthError::MalformedToken("token payload is not JSON".into())
                }
                ErrorKind::Base64(_) => {
                    OperatorAuthError::MalformedToken("token is not valid base64url".into())
                }
                other => OperatorAuthError::MalformedToken(format!("{other:?}")),
            }),
        }
    }

    /// Single-flight, rate-limited refresh. `seen` is the key set the caller found wanting.
    /// Returns the set to use and, when it is a stale one because fetching failed, why.
    async fn refresh(
        &self,
        seen: Option<&Arc<KeySet>>,
    ) -> Result<(Arc<KeySet>, Option<String>), OperatorAuthError> {
        let mut state = self.refresh.lock().await;
        let current = self.keys.load_full();
        // Someone refreshed while we waited for the lock: use their result, do not fetch again.
        if let Some(current) = &current
            && !seen.is_some_and(|seen| Arc::ptr_eq(seen, current))
        {
            return Ok((current.clone(), None));
        }
        if let Some(last) = state.last_attempt
            && last.elapsed() < self.config.min_refresh_interval
        {
            let set = self.usable(current, state.last_error.as_deref())?;
            return Ok((set, state.last_error.clone()));
        }
        debug!(uri = %self.config.jwks_uri, "Fetching JWKS");
        let fetched = self.fetch().await;
        state.last_attempt = Some(Instant::now());
        match fetched {
            Ok(set) => {
                let set = Arc::new(set);
                self.keys.store(Some(set.clone()));
                state.last_error = None;
                Ok((set, None))
            }
            Err(reason) => {
                let result = self.usable(current, Some(&reason));
                warn!(
                    uri = %self.config.jwks_uri,
                    error = %reason,
                    serving_stale = result.is_ok(),
                    "JWKS fetch failed"
                );
                state.last_error = Some(reason.clone());
                result.map(|set| (set, Some(reason)))
            }
        }
    }

    /// The cached set if it may still be used, given how the last fetch went.
    fn usable(
        &self,
        current: Option<Arc<KeySet>>,
        last_error: Option<&str>,
    ) -> Result<Arc<KeySet>, OperatorAuthError> {
        let limit = self.config.cache_ttl.saturating_add(self.config.stale_for);
        match current {
            Some(set) if last_error.is_none() || set.age() <= limit => Ok(set),
            Some(set) => Err(OperatorAuthError::JwksUnavailable(format!(
                "{}; cached JWKS is {} s old, beyond TTL plus stale_for ({} s)",
                last_error.unwrap_or("no fetch yet"),
                set.age().as_secs(),
                limit.as_secs()
            ))),
            None => Err(OperatorAuthError::JwksUnavailable(
                last_error.unwrap_or("no JWKS fetched yet").to_owned(),
            )),
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let timeout = self.config.fetch_timeout;
        match tokio::time::timeout(timeout, self.fetch_unbounded()).await {
            Ok(result) => result,
            Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
        }
    }

    async fn fetch_unbounded(&self) -> Result<KeySet, String> {
        let mut response = self
            .http
            .reqwest()
            .get(&self.config.jwks_uri)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("JWKS endpoint returned non-2xx status {status}"));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
        {
            return Err(format!(
                "JWKS response is larger than {MAX_JWKS_BYTES} bytes"
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!(
                    "JWKS response is larger than {MAX_JWKS_BYTES} bytes"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body)
    }

    fn check_claims(&self, claims: Value) -> Result<OperatorIdentity, OperatorAuthError> {
        let Value::Object(map) = &claims else {
            return Err(OperatorAuthError::MalformedToken(
                "token payload is not a JSON object".into(),
            ));
        };
        let config = &self.config;

        match map.get("iss") {
            Some(Value::String(iss)) if *iss == config.issuer => {}
            found => {
                return Err(OperatorAuthError::Issuer {
                    found: found.filter(|v| !v.is_null()).cloned(),
                    expected: config.issuer.clone(),
                });
            }
        }

        let audience_ok = match map.get("aud") {
            Some(Value::String(aud)) => *aud == config.audience,
            Some(Value::Array(auds)) => auds
                .iter()
                .any(|aud| aud.as_str() == Some(config.audience.as_str())),
            _ => false,
        };
        if !audience_ok {
            return Err(OperatorAuthError::Audience {
                found: map.get("aud").filter(|v| !v.is_null()).cloned(),
                expected: config.audience.clone(),
            });
        }

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let leeway = config.leeway.as_secs_f64();
        match map.get("exp") {
            None | Some(Value::Null) => {
                return Err(OperatorAuthError::Expired("token has no exp claim".into()));
            }
            Some(exp) => match exp.as_f64() {
                None => {
                    return Err(OperatorAuthError::Expired(
                        "exp claim is not a number".into(),
                    ));
                }
                Some(exp) if exp + leeway < now => {
                    return Err(OperatorAuthError::Expired(format!(
                        "token expired at {exp} (now {}, leeway {} s)",
                        now.floor(),
                        config.leeway.as_secs()
                    )));
                }
                Some(_) => {}
            },
        }
        match map.get("nbf") {
            None | Some(Value::Null) => {}
            Some(nbf) => match nbf.as_f64() {
                None => {
                    return Err(OperatorAuthError::NotYetValid(
                        "nbf claim is not a number".into(),
                    ));
                }
                Some(nbf) if nbf > now + leeway => {
                    return Err(OperatorAuthError::NotYetValid(format!(
                        "token is not valid before {nbf} (now {}, leeway {} s)",
                        now.floor(),
                        config.leeway.as_secs()
                    )));
                }
                Some(_) => {}
            },
        }

        let roles = match role_claim(&claims, &config.role_claim) {
            None | Some(Value::Null) => {
                return Err(OperatorAuthError::MissingRole {
                    claim: config.role_claim.clone(),
                });
            }
            Some(Value::String(role)) => vec![role.clone()],
            Some(Value::Array(values)) => values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(_) => Vec::new(),
        };
        let writes = roles.iter().any(|r| config.accepted_roles.contains(r));
        if !writes && !roles.iter().any(|r| config.read_only_roles.contains(r)) {
            return Err(OperatorAuthError::InsufficientRole {
                claim: config.role_claim.clone(),
                roles,
            });
        }

        let tenant_id = match map.get("tenant_id") {
            None => None,
            // Fail closed: a tenant we cannot read must not turn into a platform operator. An
            // empty one, or null, is what an IdP mapper without a value may emit for a tenant
            // operator.
            Some(Value::Null) => {
                return Err(OperatorAuthError::MalformedToken(
                    "tenant_id claim is null (a platform operator's token has none)".into(),
                ));
            }
            Some(Value::String(tenant)) if tenant.trim().is_empty() => {
                return Err(OperatorAuthError::MalformedToken(
                    "tenant_id claim is blank (a platform operator's token has none)".into(),
                ));
            }
            Some(Value::String(tenant)) => Some(tenant.clone()),
            Some(_) => {
                return Err(OperatorAuthError::MalformedToken(
                    "tenant_id claim is not a string".into(),
                ));
            }
        };
        let platform_operator =
            tenant_id.is_none() || roles.iter().any(|r| PLATFORM_ROLES.contains(&r.as_str()));
        Ok(OperatorIdentity {
            subject: map.get("sub").and_then(Value::as_str).map(str::to_owned),
            tenant_id,
            roles,
            identity_kind: IdentityKind::from_claims(&claims),
            platform_operator,
            read_only: !writes,
        })
    }
}

fn wrong_algorithm(algorithm: Algorithm) -> OperatorAuthError {
    OperatorAuthError::UnsupportedAlgorithm(format!("{algorithm:?}"))
}

fn log_refusal(error: &OperatorAuthError) {
    let check = error.check();
    match error {
        OperatorAuthError::MissingRole { claim } => {
            warn!(check, claim = %claim, "Missing {claim} claim in operator JWT");
        }
        OperatorAuthError::InsufficientRole { claim, roles } => {
            warn!(check, claim = %claim, role = ?roles, "Insufficient role for SEAL operator access");
        }
        OperatorAuthError::ReadOnlyRole {
            claim,
            roles,
            method,
        } => {
            warn!(check, claim = %claim, role = ?roles, method = %method, "Read-only role refused a write to a SEAL operator endpoint");
        }
        OperatorAuthError::JwksUnavailable(reason) => {
            warn!(check, error = %reason, "operator request refused: JWKS unavailable");
        }
        _ => warn!(check, error = %error, "operator token rejected"),
    }
}

/// The role claim by exact name, else by dotted path (`realm_access.roles`).
fn role_claim<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    claims.get(name).or_else(|| {
        if !name.contains('.') {
            return None;
        }
        name.split('.')
            .try_fold(claims, |value, segment| value.get(segment))
    })
}

fn bearer_token(headers: &http::HeaderMap) -> Result<&str, OperatorAuthError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(OperatorAuthError::MissingToken)?;
    let value = value.to_str().map_err(|_| OperatorAuthError::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(OperatorAuthError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(OperatorAuthError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(OperatorAuthError::MissingToken);
    }
    Ok(token)
}

/// Reads the JOSE header without trusting it: the algorithm and the key id.
fn parse_header(token: &str) -> Result<(Algorithm, Option<String>), OperatorAuthError> {
    let malformed = |reason: &str| OperatorAuthError::MalformedToken(reason.to_owned());
    let mut segments = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(malformed("not a compact JWS (header.payload.signature)"));
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed("token header is not base64url"))?;
    let header: Value =
        serde_json::from_slice(&header).map_err(|_| malformed("token header is not JSON"))?;
    let Value::Object(header) = header else {
        return Err(malformed("token header is not a JSON object"));
    };
    if header.contains_key("crit") {
        return Err(malformed("critical header parameters are not supported"));
    }
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.as_str(),
        _ => return Err(malformed("token header has no alg")),
    };
    let algorithm = match alg {
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        "EdDSA" => Algorithm::EdDSA,
        other => return Err(OperatorAuthError::UnsupportedAlgorithm(other.to_owned())),
    };
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(malformed("token header kid is not a string")),
    };
    Ok((algorithm, kid))
}

/// Parses a JWKS key by key: keys we cannot or will not use are skipped, never fatal.
fn parse_jwks(body: &[u8]) -> Result<KeySet, String> {
    let document: Value =
        serde_json::from_slice(body).map_err(|e| format!("Failed to parse JWKS response: {e}"))?;
    let Some(raw_keys) = document.get("keys").and_then(Value::as_array) else {
        return Err("Failed to parse JWKS response: no \"keys\" array".into());
    };
    let mut keys: HashMap<String, Vec<VerifyKey>> = HashMap::new();
    let mut usable = 0usize;
    for (index, raw) in raw_keys.iter().enumerate() {
        let kid = raw.get("kid").and_then(Value::as_str);
        match convert_key(raw) {
            Ok((kid, key)) => match keys.entry(kid) {
                Entry::Occupied(mut entry) => {
                    if entry.get().iter().any(|k| k.algorithm == key.algorithm) {
                        debug!(index, kid = %entry.key(), "skipping JWKS key: duplicate kid and algorithm");
                    } else {
                        entry.get_mut().push(key);
                        usable += 1;
                    }
                }
                Entry::Vacant(entry) => {
                    entry.insert(vec![key]);
                    usable += 1;
                }
            },
            Err(reason) => debug!(index, kid, reason, "skipping JWKS key"),
        }
    }
    if usable == 0 {
        return Err(format!(
            "JWKS has no usable key ({} skipped; RS256, ES256 and EdDSA keys with a kid are used)",
            raw_keys.len()
        ));
    }
    Ok(KeySet {
        keys,
        fetched_at: Instant::now(),
    })
}

fn convert_key(raw: &Value) -> Result<(String, VerifyKey), &'static str> {
    let text = |name: &str| raw.get(name).and_then(Value::as_str);
    let bytes = |name: &str| -> Result<Vec<u8>, &'static str> {
        let value = text(name).ok_or("missing key member")?;
        JWK_BASE64
            .decode(value)
            .map_err(|_| "key member is not base64url")
    };
    let kid = text("kid").filter(|kid| !kid.is_empty()).ok_or("no kid")?;
    if text("use").is_some_and(|u| u != "sig") {
        return Err("not a signature key (use)");
    }
    if let Some(ops) = raw.get("key_ops").and_then(Value::as_array)
        && !ops.iter().any(|op| op.as_str() == Some("verify"))
    {
        return Err("not a verification key (key_ops)");
    }
    let alg = text("alg");
    let (algorithm, key) = match text("kty").ok_or("no kty")? {
        "RSA" => {
            if alg.is_some_and(|a| a != "RS256") {
                return Err("RSA key for an algorithm other than RS256");
            }
            let n = bytes("n")?;
            let e = bytes("e")?;
            let n = strip_leading_zeros(&n);
            if n.len() < 256 {
                return Err("RSA modulus shorter than 2048 bits");
            }
            if e.is_empty() {
                return Err("empty RSA exponent");
            }
            (
                Algorithm::RS256,
                DecodingKey::from_rsa_raw_components(n, &e),
            )
        }
        "EC" => {
            if text("crv") != Some("P-256") {
                return Err("EC key on a curve other than P-256");
            }
            if alg.is_some_and(|a| a != "ES256") {
                return Err("EC key for an algorithm other than ES256");
            }
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates are not 32 bytes");
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (Algorithm::ES256, DecodingKey::from_ec_der(&point))
        }
        "OKP" => {
            if text("crv") != Some("Ed25519") {
                return Err("OKP key on a curve other than Ed25519");
            }
            if alg.is_some_and(|a| a != "EdDSA" && a != "Ed25519") {
                return Err("OKP key for an algorithm other than EdDSA");
            }
            let x = bytes("x")?;
            if x.len() != 32 {
                return Err("Ed25519 public key is not 32 bytes");
            }
            (Algorithm::EdDSA, DecodingKey::from_ed_der(&x))
        }
        _ => return Err("unsupported key type"),
    };
    Ok((kid.to_owned(), VerifyKey { algorithm, key }))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// An error with its sources: reqwest's top-level message hides the cause (refused, DNS, TLS).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
