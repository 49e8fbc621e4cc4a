//! Keycloak: verification of the caller's user token against the user-token JWKS (B-17), and the
//! RFC 8693 token exchange of a verified token for one scoped to the target service.
//!
//! The user token, the client secret and the exchanged token appear in no log line, event or error.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Url;
use serde_json::Value;

use super::Failure;
use super::transport::{Idempotency, Transport, excerpt, form_encode, oauth_error};
use crate::infrastructure::http_client::redacted_url;

pub(super) const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub(super) const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// How long a fetched JWKS is used before it is fetched again.
const JWKS_TTL: Duration = Duration::from_secs(300);
/// An unknown `kid` triggers a refetch at most this often.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// A cached JWKS may still be used this long when the IdP cannot be reached.
const STALE_FOR: Duration = Duration::from_secs(3600);
/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 60;
/// Asymmetric algorithms only: a user token signed with a shared secret is never accepted.
const ACCEPTED_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The RFC 8693 client.
pub(super) struct Keycloak {
    pub(super) exchange_url: Option<Url>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<String>,
    pub(super) transport: Transport,
}

impl std::fmt::Debug for Keycloak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keycloak")
            .field(
                "exchange_url",
                &self.exchange_url.as_ref().map(redacted_url),
            )
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// What the exchange needs, checked before the user token is verified or sent anywhere.
pub(super) struct ExchangeConfig<'a> {
    url: &'a Url,
    client_id: &'a str,
    client_secret: &'a str,
}

impl Keycloak {
    /// The preconditions of an exchange for `target_service`, in the reference's order.
    pub(super) fn config(&self, target_service: &str) -> Result<ExchangeConfig<'_>, Failure> {
        if target_service.trim().is_empty() {
            return Err(Failure::exchange(
                "validation error: human delegated target_service cannot be empty",
            ));
        }
        let url = self.exchange_url.as_ref().ok_or_else(|| {
            Failure::exchange(
                "internal error: SEAL_GATEWAY_KEYCLOAK_TOKEN_EXCHANGE_URL is required",
            )
        })?;
        let client_id = self.client_id.as_deref().ok_or_else(|| {
            Failure::exchange("internal error: SEAL_GATEWAY_KEYCLOAK_CLIENT_ID is required")
        })?;
        let client_secret = self.client_secret.as_deref().ok_or_else(|| {
            Failure::exchange("internal error: SEAL_GATEWAY_KEYCLOAK_CLIENT_SECRET is required")
        })?;
        Ok(ExchangeConfig {
            url,
            client_id,
            client_secret,
        })
    }

    /// Exchanges a verified `subject_token` for an access token with audience `target_service`.
    pub(super) async fn exchange(
        &self,
        config: &ExchangeConfig<'_>,
        subject_token: &str,
        target_service: &str,
    ) -> Result<String, Failure> {
        let target_service = target_service.trim();
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        let mut request = self
            .transport
            .request(Method::POST, config.url.clone(), headers);
        request.body = Some(form_encode(&[
            ("grant_type", GRANT_TYPE),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("subject_token", subject_token),
            ("audience", target_service),
            ("client_id", config.client_id),
            ("client_secret", config.client_secret),
        ]));
        tracing::trace!(
            url = %redacted_url(config.url),
            audience = target_service,
            client_id = config.client_id,
            "requesting Keycloak token exchange"
        );
        let response = self
            .transport
            .send("keycloak_token_exchange", request, Idempotency::Minting)
            .await
            .map_err(|e| {
                Failure::exchange(format!("http error: Keycloak token exchange failed: {e}"))
            })?;
        if !response.status.is_success() {
            let detail = oauth_error(&response.body);
            let status = response.status;
            if status == http::StatusCode::UNAUTHORIZED {
                tracing::warn!(
                    status = status.as_u16(),
                    client_id = config.client_id,
                    audience = target_service,
                    error = %detail,
                    "Keycloak token exchange returned 401: check keycloak_client_id/keycloak_client_secret, \
                     the client's token-exchange permission and the audience"
                );
            } else {
                tracing::warn!(
                    status = status.as_u16(),
                    client_id = config.client_id,
                    audience = target_service,
                    error = %detail,
                    "Keycloak token exchange returned {}",
                    status.as_u16()
                );
            }
            return Err(Failure::exchange(format!(
                "http error: Keycloak token exchange returned {status}: {detail}"
            )));
        }
        let body: Value = serde_json::from_slice(&response.body).map_err(|e| {
            Failure::exchange(format!(
                "serialization error: invalid Keycloak token exchange response: {e}"
            ))
        })?;
        match body.get("access_token").and_then(Value::as_str) {
            Some(token) if !token.is_empty() => {
                tracing::trace!(
                    audience = target_service,
                    "Keycloak token exchange succeeded"
                );
                Ok(token.to_owned())
            }
            _ => Err(Failure::exchange(
                "serialization error: invalid Keycloak token exchange response: missing access_token",
            )),
        }
    }
}

/// One verification key of the user-token JWKS, with the algorithms it may be used with.
struct UserKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

struct KeySet {
    keys: Vec<UserKey>,
    fetched_at: Instant,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    /// The last refetch for an unknown `kid`.
    last_forced: Option<Instant>,
    last_error: Option<String>,
    /// The `jwks_uri` found by OpenID discovery, when none is configured.
    discovered: Option<Url>,
}

/// Verifies user tokens (`X-Seal-User-Token`) against the configured JWKS.
pub(super) struct UserTokenVerifier {
    pub(super) jwks_uri: Option<Url>,
    pub(super) issuer: Option<String>,
    pub(super) audience: Option<String>,
    pub(super) transport: Transport,
    keys: Mutex<Option<Arc<KeySet>>>,
    refresh: tokio::sync::Mutex<RefreshState>,
}

impl std::fmt::Debug for UserTokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserTokenVerifier")
            .field("jwks_uri", &self.jwks_uri.as_ref().map(redacted_url))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

fn rejected(why: impl std::fmt::Display) -> Failure {
    Failure::unauthorized(format!("unauthorized: user token rejected: {why}"))
}

impl UserTokenVerifier {
    pub(super) fn new(
        jwks_uri: Option<Url>,
        issuer: Option<String>,
        audience: Option<String>,
        transport: Transport,
    ) -> Self {
        Self {
            jwks_uri,
            issuer,
            audience,
            transport,
            keys: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
        }
    }

    /// The token's claims once its signature, `exp`, `nbf` and (when configured) `iss` and `aud`
    /// check out. A bad token is a 401; an IdP that cannot be reached is a 502.
    pub(super) async fn verify(
        &self,
        token: &str,
    ) -> Result<serde_json::Map<String, Value>, Failure> {
        if self.jwks_uri.is_none() && self.issuer.is_none() {
            return Err(Failure::exchange(
                "internal error: SEAL_GATEWAY_KEYCLOAK_USER_JWKS_URI or SEAL_GATEWAY_KEYCLOAK_USER_JWT_ISSUER \
                 is required to verify user tokens",
            ));
        }
        if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
            return Err(Failure::exchange(
                "internal error: no jsonwebtoken crypto provider is available",
            ));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| rejected("malformed token (not a JWS compact serialization)"))?;
        let algorithm = header.alg;
        if !ACCEPTED_ALGORITHMS.contains(&algorithm) {
            return Err(rejected(format!("algorithm {algorithm:?} is not accepted")));
        }
        let kid = header.kid.as_deref();

        let mut set = self.key_set(false).await?;
        if !has_candidate(&set, kid, algorithm) && kid.is_some() {
            tracing::trace!(kid, "user token key not in cached JWKS; refreshing");
            set = self.key_set(true).await?;
        }
        let candidates: Vec<&UserKey> = set
            .keys
            .iter()
            .filter(|k| matches_kid(k, kid) && k.algorithms.contains(&algorithm))
            .collect();
        if candidates.is_empty() {
            return Err(rejected(match kid {
                Some(kid) => {
                    format!("no {algorithm:?} key with kid {kid:?} in the user-token JWKS")
                }
                None => format!("no {algorithm:?} key in the user-token JWKS"),
            }));
        }

        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);

        let mut last_error = None;
        for candidate in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(
                token,
                &candidate.key,
                &validation,
            ) {
                Ok(data) => {
                    let subject_present = data.claims.get("sub").is_some_and(|s| s.is_string());
                    tracing::trace!(
                        kid = candidate.kid.as_deref(),
                        algorithm = ?algorithm,
                        subject_present,
                        "user token verified"
                    );
                    return Ok(data.claims);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(rejected(match last_error {
            Some(e) => describe(&e),
            None => "signature does not verify".to_owned(),
        }))
    }

    /// The cached key set, fetched when missing, past its TTL, or (with `force`) when a `kid` is
    /// unknown. Fetches are single-flight and rate-limited; a stale set covers an IdP outage.
    async fn key_set(&self, force: bool) -> Result<Arc<KeySet>, Failure> {
        let cached = self.cached();
        if let Some(set) = &cached
            && !force
            && set.fetched_at.elapsed() <= JWKS_TTL
        {
            return Ok(set.clone());
        }
        let mut state = match &cached {
            // A set past its TTL while another call fetches its successor: it serves meanwhile,
            // within the stale bound, rather than every call queueing behind one fetch (up to
            // its timeout and retries while the IdP is down).
            Some(set) if !force => match self.refresh.try_lock() {
                Ok(state) => state,
                Err(_) if set.fetched_at.elapsed() <= JWKS_TTL.saturating_add(STALE_FOR) => {
                    return Ok(set.clone());
                }
                Err(_) => self.refresh.lock().await,
            },
            _ => self.refresh.lock().await,
        };
        let current = self.cached();
        // Someone refreshed while we waited for the lock: use their result.
        if let Some(current) = &current
            && !cached
                .as_ref()
                .is_some_and(|seen| Arc::ptr_eq(seen, current))
        {
            return Ok(current.clone());
        }
        // Unknown kids refetch at most once per interval, and a failing IdP is not asked again
        // within it: neither a flood of made-up kids nor an outage turns into a flood of fetches.
        let throttled = if force {
            state
                .last_forced
                .is_some_and(|t| t.elapsed() < MIN_REFRESH_INTERVAL)
        } else {
            state.last_error.is_some()
                && state
                    .last_attempt
                    .is_some_and(|t| t.elapsed() < MIN_REFRESH_INTERVAL)
        };
        if throttled {
            return match &current {
                Some(current) => usable(current, state.last_error.as_deref()),
                None => Err(Failure::exchange(format!(
                    "http error: user-token JWKS unavailable: {}",
                    state.last_error.as_deref().unwrap_or("no JWKS fetched yet")
                ))),
            };
        }
        if force {
            state.last_forced = Some(Instant::now());
        }
        let fetched = self.fetch(&mut state).await;
        state.last_attempt = Some(Instant::now());
        match fetched {
            Ok(set) => {
                let set = Arc::new(set);
                if let Ok(mut slot) = self.keys.lock() {
                    *slot = Some(set.clone());
                }
                state.last_error = None;
                Ok(set)
            }
            Err(reason) => {
                tracing::warn!(error = %reason, "user-token JWKS fetch failed");
                state.last_error = Some(reason.clone());
                match &current {
                    Some(current) => usable(current, Some(&reason)),
                    None => Err(Failure::exchange(format!(
                        "http error: user-token JWKS unavailable: {reason}"
                    ))),
                }
            }
        }
    }

    fn cached(&self) -> Option<Arc<KeySet>> {
        self.keys.lock().ok().and_then(|slot| slot.clone())
    }

    async fn fetch(&self, state: &mut RefreshState) -> Result<KeySet, String> {
        let uri = match (&self.jwks_uri, &state.discovered) {
            (Some(uri), _) | (None, Some(uri)) => uri.clone(),
            (None, None) => {
                let uri = self.discover().await?;
                state.discovered = Some(uri.clone());
                uri
            }
        };
        let body = self.get_json("user_token_jwks", &uri).await?;
        let keys = parse_jwks(&body)?;
        tracing::trace!(
            url = %redacted_url(&uri),
            keys = keys.len(),
            "user-token JWKS fetched"
        );
        Ok(KeySet {
            keys,
            fetched_at: Instant::now(),
        })
    }

    /// `{issuer}/.well-known/openid-configuration` → `jwks_uri`, whose document must name the issuer.
    async fn discover(&self) -> Result<Url, String> {
        let issuer = self
            .issuer
            .as_deref()
            .ok_or("no user-token JWKS URI or issuer is configured")?;
        let url = Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        ))
        .map_err(|e| format!("issuer {issuer:?} is not a URL: {e}"))?;
        let document = self.get_json("openid_discovery", &url).await?;
        match document.get("issuer").and_then(Value::as_str) {
            Some(found) if found == issuer => {}
            found => {
                return Err(format!(
                    "OpenID configuration at {} names issuer {found:?}, not {issuer:?}",
                    redacted_url(&url)
                ));
            }
        }
        let jwks_uri = document
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                format!(
                    "OpenID configuration at {} has no jwks_uri",
                    redacted_url(&url)
                )
            })?;
        let jwks_uri = Url::parse(jwks_uri)
            .map_err(|e| format!("OpenID configuration jwks_uri is not a URL: {e}"))?;
        tracing::trace!(jwks_uri = %redacted_url(&jwks_uri), "user-token JWKS discovered");
        Ok(jwks_uri)
    }

    async fn get_json(&self, what: &'static str, url: &Url) -> Result<Value, String> {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        let request = self.transport.request(Method::GET, url.clone(), headers);
        let response = self
            .transport
            .send(what, request, Idempotency::Safe)
            .await
            .map_err(|e| e.to_string())?;
        if !response.status.is_success() {
            return Err(format!(
                "{} returned {}: {}",
                redacted_url(url),
                response.status,
                excerpt(&response.body)
            ));
        }
        serde_json::from_slice(&response.body)
            .map_err(|e| format!("{} returned invalid JSON: {e}", redacted_url(url)))
    }
}

fn usable(set: &Arc<KeySet>, last_error: Option<&str>) -> Result<Arc<KeySet>, Failure> {
    if last_error.is_none() || set.fetched_at.elapsed() <= JWKS_TTL.saturating_add(STALE_FOR) {
        Ok(set.clone())
    } else {
        Err(Failure::exchange(format!(
            "http error: user-token JWKS unavailable: {}; cached copy is {} s old",
            last_error.unwrap_or("no fetch yet"),
            set.fetched_at.elapsed().as_secs()
        )))
    }
}

fn matches_kid(key: &UserKey, kid: Option<&str>) -> bool {
    match kid {
        Some(kid) => key.kid.as_deref() == Some(kid),
        None => true,
    }
}

fn has_candidate(set: &KeySet, kid: Option<&str>, algorithm: Algorithm) -> bool {
    set.keys
        .iter()
        .any(|k| matches_kid(k, kid) && k.algorithms.contains(&algorithm))
}

/// The signing keys of a JWKS. Encryption keys, shared-secret keys and keys this build cannot use
/// are skipped rather than failing the whole set (Keycloak publishes `RSA-OAEP` keys beside them).
fn parse_jwks(body: &Value) -> Result<Vec<UserKey>, String> {
    let Some(Value::Array(raw_keys)) = body.get("keys") else {
        return Err("JWKS has no keys array".to_owned());
    };
    let mut keys = Vec::new();
    for raw in raw_keys {
        if raw
            .get("use")
            .and_then(Value::as_str)
            .is_some_and(|u| u != "sig")
        {
            continue;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
            continue;
        };
        let family: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
            // Shared secrets are never accepted for user tokens.
            _ => continue,
        };
        // A key that names its algorithm is used with that one only.
        let algorithms = match jwk.common.key_algorithm.and_then(key_algorithm) {
            Some(named) if family.contains(&named) => vec![named],
            Some(_) => continue,
            None if jwk.common.key_algorithm.is_some() => continue,
            None => family,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.push(UserKey {
            kid: jwk.common.key_id.clone(),
            algorithms,
            key,
        });
    }
    if keys.is_empty() {
        return Err("JWKS has no usable signing keys".to_owned());
    }
    Ok(keys)
}

fn key_algorithm(named: KeyAlgorithm) -> Option<Algorithm> {
    Some(match named {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A verification failure in words; never the token.
fn describe(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature => "signature does not verify".to_owned(),
        ErrorKind::ExpiredSignature => "token has expired".to_owned(),
        ErrorKind::ImmatureSignature => "token is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidIssuer => "issuer does not match".to_owned(),
        ErrorKind::InvalidAudience => "audience does not match".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("token has no {claim} claim"),
        ErrorKind::InvalidAlgorithm => "algorithm does not match the key".to_owned(),
        ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::Base64(_)
        | ErrorKind::InvalidToken => "malformed token".to_owned(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infrastructure::http_client::{HttpClient, HttpClientConfig};

    fn verifier() -> UserTokenVerifier {
        let http = HttpClient::new(HttpClientConfig::default()).unwrap();
        UserTokenVerifier::new(
            Some("http://127.0.0.1:9/jwks".parse().unwrap()),
            None,
            None,
            Transport {
                http,
                timeout: Duration::from_secs(5),
                max_retries: 1,
            },
        )
    }

    /// Past its TTL, the cached set serves every call while one fetches its successor: nobody
    /// else waits for that fetch (a hanging IdP held each call for its whole timeout).
    #[tokio::test]
    async fn a_stale_set_serves_while_another_call_refreshes_it() {
        let verifier = verifier();
        let old = Arc::new(KeySet {
            keys: Vec::new(),
            fetched_at: Instant::now()
                .checked_sub(JWKS_TTL + Duration::from_secs(60))
                .unwrap(),
        });
        *verifier.keys.lock().unwrap() = Some(old.clone());
        // Another call is fetching.
        let fetching = verifier.refresh.lock().await;
        let set = tokio::time::timeout(Duration::from_secs(1), verifier.key_set(false))
            .await
            .expect("served without waiting for the fetch")
            .unwrap();
        assert!(Arc::ptr_eq(&set, &old));
        // A forced refresh (an unknown kid) does wait: the stale set cannot answer it.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), verifier.key_set(true))
                .await
                .is_err()
        );
        drop(fetching);
    }
}
