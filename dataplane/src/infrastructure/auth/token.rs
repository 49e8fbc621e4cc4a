//! The SEAL security token: a JWT minted by the orchestrator, RS256 or EdDSA, with the session's
//! identity. Keys are parsed once at start; `exp`/`nbf` are checked against an injected clock.

use aegis_seal_crds::gateway::AuthSettings;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::{Map, Value};

use crate::domain::seal_error::{SealError, code};
use crate::domain::tenancy::{DelegationGrant, IdentityKind};

/// The claims a verified token carries.
#[derive(Debug, Clone, PartialEq)]
pub struct SealClaims {
    pub subject: String,
    pub execution_id: String,
    pub tenant_id: String,
    pub jti: String,
    /// The SecurityContext name the session runs under.
    pub scope: String,
    pub workload_id: String,
    pub expires_at: i64,
    pub identity_kind: IdentityKind,
    /// The tenants it may act for besides its own, when a service account.
    pub delegation: DelegationGrant,
}

/// Verifies security tokens against the configured keys, issuer and audience.
pub struct SealTokenVerifier {
    /// Each key with its validation rules, built once: a `Validation` holds sets of strings, and
    /// building them per token was a measurable share of each call.
    rs256: Option<(DecodingKey, Validation)>,
    eddsa: Option<(DecodingKey, Validation)>,
    leeway: i64,
    /// `auth.seal_delegation_claim`: where a service account's delegation grant is read.
    delegation_claim: Option<String>,
}

/// A token's claims as read before verification, to find the session (see
/// [`SealTokenVerifier::verify_read`]). Nothing in it is trusted until the token is verified.
#[derive(Debug)]
pub struct UnverifiedToken {
    /// The `exec_id` claim: it names the session whose key verifies the envelope.
    pub execution_id: String,
    claims: Map<String, Value>,
}

impl SealTokenVerifier {
    /// Parses the configured PEM keys. A key that is set but unreadable is a start-up error.
    pub fn from_settings(auth: &AuthSettings) -> Result<Self, String> {
        let rs256 = match auth.seal_jwt_public_key_pem.trim() {
            "" => None,
            pem => Some(DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| {
                format!("spec.auth.seal_jwt_public_key_pem: invalid RSA public key: {e}")
            })?),
        };
        let eddsa = match auth.seal_jwt_eddsa_public_key_pem.trim() {
            "" => None,
            pem => Some(DecodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| {
                format!("spec.auth.seal_jwt_eddsa_public_key_pem: invalid Ed25519 public key: {e}")
            })?),
        };
        let validation = |alg: Algorithm| {
            let mut validation = Validation::new(alg);
            validation.set_issuer(&[&auth.seal_jwt_issuer]);
            validation.set_audience(&[&auth.seal_jwt_audience]);
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            // Time claims are checked in `claims` against the gateway's clock, not the library's.
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.leeway = 0;
            validation
        };
        Ok(Self {
            rs256: rs256.map(|key| (key, validation(Algorithm::RS256))),
            eddsa: eddsa.map(|key| (key, validation(Algorithm::EdDSA))),
            leeway: i64::try_from(auth.seal_jwt_leeway_secs).unwrap_or(i64::MAX),
            delegation_claim: auth
                .seal_delegation_claim
                .as_deref()
                .map(str::trim)
                .filter(|claim| !claim.is_empty())
                .map(str::to_owned),
        })
    }

    /// Whether any key is configured: without one, no envelope can be accepted.
    pub fn is_configured(&self) -> bool {
        self.rs256.is_some() || self.eddsa.is_some()
    }

    /// Verifies signature, issuer, audience, `exp` and `nbf` (at `now`), and the SEAL claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<SealClaims, SealError> {
        let claims = self.check_signature::<Map<String, Value>>(token)?;
        self.claims(claims, now)
    }

    /// [`Self::verify`] for a token whose claims [`UnverifiedToken::read`] has already parsed: the
    /// library checks the signature and its claims without parsing them into a map once more.
    /// The outcome is the same, because the claims that parsed there are the very same bytes.
    pub fn verify_read(
        &self,
        token: &str,
        read: UnverifiedToken,
        now: i64,
    ) -> Result<SealClaims, SealError> {
        self.check_signature::<IgnoredAny>(token)?;
        self.claims(read.claims, now)
    }

    /// Checks the token's signature, `iss`, `aud` and required claims; `T` is what the library
    /// deserializes the claims into.
    fn check_signature<T: DeserializeOwned>(&self, token: &str) -> Result<T, SealError> {
        let header = decode_header(token)
            .map_err(|e| SealError::token(format!("security token invalid: {e}")))?;
        let (key, validation) = match header.alg {
            Algorithm::RS256 => self
                .rs256
                .as_ref()
                .ok_or_else(|| SealError::token("SEAL JWT public key is not configured (RS256)"))?,
            Algorithm::EdDSA => self
                .eddsa
                .as_ref()
                .ok_or_else(|| SealError::token("SEAL JWT public key is not configured (EdDSA)"))?,
            other => {
                return Err(SealError::token(format!(
                    "security token invalid: algorithm {other:?} is not accepted (RS256 or EdDSA)"
                )));
            }
        };
        decode::<T>(token, key, validation)
            .map(|data| data.claims)
            .map_err(|e| SealError::token(format!("security token invalid: {e}")))
    }

    /// `exp` and `nbf` at `now` with the configured leeway, then the SEAL claims.
    fn claims(&self, claims: Map<String, Value>, now: i64) -> Result<SealClaims, SealError> {
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or_else(|| SealError::token("security token invalid: exp is not an integer"))?;
        // Saturating: `exp` and the configured leeway may each be as large as an i64 holds.
        if expires_at.saturating_add(self.leeway) < now {
            return Err(SealError::new(
                http::StatusCode::UNAUTHORIZED,
                code::TOKEN_EXPIRED,
                "security token expired",
            ));
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf
                .as_i64()
                .ok_or_else(|| SealError::token("security token invalid: nbf is not an integer"))?;
            if nbf.saturating_sub(self.leeway) > now {
                return Err(SealError::token("security token is not valid yet (nbf)"));
            }
        }
        let text = |name: &str| -> Result<String, SealError> {
            match claims.get(name).and_then(Value::as_str).map(str::trim) {
                Some(v) if !v.is_empty() => Ok(v.to_owned()),
                _ => Err(SealError::token(format!("security token missing {name}"))),
            }
        };
        Ok(SealClaims {
            subject: text("sub")?,
            execution_id: text("exec_id")?,
            tenant_id: text("tenant_id")?,
            jti: text("jti")?,
            scope: text("scp")?,
            workload_id: match claims.get("wid") {
                // The reference's own words for a `wid` that is there but blank.
                Some(Value::String(v)) if v.trim().is_empty() => {
                    return Err(SealError::token("security token wid claim is empty"));
                }
                _ => text("wid")?,
            },
            expires_at,
            delegation: match &self.delegation_claim {
                None => DelegationGrant::Unchecked,
                Some(name) => DelegationGrant::from_claim(claims.get(name)),
            },
            identity_kind: IdentityKind::from_claims(&Value::Object(claims)),
        })
    }
}

impl UnverifiedToken {
    /// Reads the claims before verification, for the `exec_id` claim: it names the session whose
    /// key verifies the envelope. The claims are kept for [`SealTokenVerifier::verify_read`].
    pub fn read(token: &str) -> Result<Self, SealError> {
        let mut parts = token.split('.');
        let (Some(_), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SealError::token(
                "security token invalid: not a compact JWT",
            ));
        };
        let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|e| {
            SealError::token(format!("security token invalid: payload encoding: {e}"))
        })?;
        let claims: Map<String, Value> = serde_json::from_slice(&bytes)
            .map_err(|e| SealError::token(format!("security token invalid: payload JSON: {e}")))?;
        let execution_id = match claims.get("exec_id").and_then(Value::as_str) {
            Some(id) if !id.trim().is_empty() => id.to_owned(),
            _ => return Err(SealError::token("security token missing exec_id")),
        };
        Ok(Self {
            execution_id,
            claims,
        })
    }
}
