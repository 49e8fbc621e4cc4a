//! Per-invocation upstream credentials (reference §5.6, DESIGN B-5 and B-17).
//!
//! A [`CredentialResolver`] turns a workflow's (or a CLI tool's registry) `CredentialResolutionPath`
//! into what the upstream request needs:
//!
//! | path | source |
//! |---|---|
//! | `SystemJit` | OpenBao dynamic secret `GET /v1/[tenant-<tenant>/]<engine>/creds/<role>`: token = `data.token`, else `data.password` (database engines: the generated user's password, sent as `Bearer <password>` as upstream does; the lease is recorded and revoked by [`CredentialResolver::release`]) |
//! | `StaticRef` | OpenBao KV v2 `GET /v1/<kv_mount>/data/[tenant-<owner>/]<key>`: `data.data.token`, else `.value`. The key is its author's choice, so a tenant's workflow, spec or CLI tool reads only under its own `tenant-<owner>/` (reference §13.11); a system-global one reads the key as written |
//! | `HumanDelegated` | the `X-Seal-User-Token`, verified against the user-token JWKS, exchanged at Keycloak (RFC 8693) for a token with audience `target_service`, if `delegated_audiences` lets it go to the call's upstream |
//! | `Auto` | `HumanDelegated` when a user token came with the call, else `SystemJit` |
//! | `UserBound` | the caller's active binding in the orchestrator's `credential_bindings`/`credential_grants` tables (Postgres only, read-only), then a KV read of its `secret_path`; without a binding, `HumanDelegated(provider)` when a user token came, else 401 |
//!
//! Every request to OpenBao or Keycloak is bounded in time (`request_timeout_ms`) and retried at
//! most `max_retries` times after a transport error or a 5xx answer, never after a 4xx.
//!
//! Outcomes: success gives `Authorization: Bearer <token>` (marked sensitive) and a
//! `CredentialExchangeCompleted` event; failure gives 502 (B-5), 401 (user token missing or
//! rejected) or 403 (human-delegated credentials not allowed by the security context) and, except
//! for the two gating refusals that precede resolution, a `CredentialExchangeFailed` event whose
//! flat `reason` quotes OpenBao's or Keycloak's status and error text verbatim.
//!
//! No secret (OpenBao token, client secret, user token, issued credential) is ever logged, put in
//! an event or an error, or shown by `Debug`. Logs: target `aegis_seal_gateway::application::credential`,
//! one `trace` line per step.

mod delegation;
mod keycloak;
mod openbao;
mod redact;
mod transport;

use std::time::{Duration, Instant};

use aegis_seal_crds::SecretValue;
use aegis_seal_crds::common::CredentialResolutionPath;
use aegis_seal_crds::gateway::CredentialSettings;
use chrono::Utc;
use http::{HeaderName, HeaderValue, StatusCode};
use reqwest::Url;
use serde_json::{Map, Value, json};

use crate::infrastructure::http_client::HttpClient;
use crate::infrastructure::metrics::Metrics;
use crate::infrastructure::persistence::{AuditEvent, Database, PersistenceError};
use crate::infrastructure::telemetry;
use tracing::Instrument;

use delegation::DelegatedAudiences;
use keycloak::{Keycloak, UserTokenVerifier};
use openbao::OpenBao;
use transport::Transport;

pub use redact::{MIN_REDACTED_LEN, REDACTED, redact_bytes, redact_json, redact_text};

pub const CREDENTIAL_EXCHANGE_COMPLETED: &str = "CredentialExchangeCompleted";
pub const CREDENTIAL_EXCHANGE_FAILED: &str = "CredentialExchangeFailed";
pub const CREDENTIAL_LEASE_REVOKED: &str = "CredentialLeaseRevoked";
pub const CREDENTIAL_LEASE_REVOKE_FAILED: &str = "CredentialLeaseRevokeFailed";
/// The request header that carries the caller's user token (B-17).
pub const USER_TOKEN_HEADER: &str = "x-seal-user-token";
/// Registry used for registry credentials that name none.
pub const DEFAULT_REGISTRY: &str = "index.docker.io";
/// Username of registry credentials made from an exchanged token.
pub const OAUTH_REGISTRY_USERNAME: &str = "oauth2accesstoken";

/// Most retries allowed by configuration.
const MAX_RETRIES_CAP: u32 = 3;
const MAX_TIMEOUT_MS: u64 = 300_000;

/// The orchestrator's bindings, read-only; the gateway never creates these tables.
const USER_BINDING_SQL: &str = "SELECT cb.secret_path::text FROM credential_bindings cb \
     JOIN credential_grants cg ON cg.binding_id = cb.id \
     WHERE cb.owner_user_id::text = $1 AND cb.provider::text = $2 AND cb.status::text = 'active' \
     AND (cb.tenant_id IS NULL OR cb.tenant_id::text = $3) LIMIT 1";
/// Postgres `undefined_table`.
const UNDEFINED_TABLE: &str = "42P01";

/// One credential resolution.
#[derive(Clone, Copy)]
pub struct CredentialRequest<'a> {
    pub execution_id: &'a str,
    /// The calling tenant: SystemJit reads under its `tenant-<tenant>/` mounts.
    pub tenant_id: Option<&'a str>,
    /// The tenant owning the workflow, spec or CLI tool whose `path` this is; `None` for a
    /// system-global one. A `StaticRef` key is read under `tenant-<owner>/`.
    pub owner_tenant_id: Option<&'a str>,
    pub path: &'a CredentialResolutionPath,
    /// The `X-Seal-User-Token` header (a leading `Bearer ` is tolerated).
    pub user_token: Option<&'a str>,
    /// The security context has a capability `*` or `credentials.*`.
    pub allows_human_delegated: bool,
    /// The base URL of the upstream the credential is for, where there is one: a delegated
    /// token goes only where `credentials.delegated_audiences` allows.
    pub destination: Option<&'a str>,
}

impl std::fmt::Debug for CredentialRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialRequest")
            .field("execution_id", &self.execution_id)
            .field("tenant_id", &self.tenant_id)
            .field("owner_tenant_id", &self.owner_tenant_id)
            .field("path", &self.path.label())
            .field("user_token", &self.user_token.map(|_| "<redacted>"))
            .field("allows_human_delegated", &self.allows_human_delegated)
            .field("destination", &self.destination)
            .finish()
    }
}

/// A dynamic-secret lease to revoke when the invocation ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub lease_id: String,
    pub execution_id: String,
    pub tenant_id: Option<String>,
}

/// What the upstream requests of one invocation carry.
#[must_use = "leases must be passed to CredentialResolver::release when the invocation ends"]
pub struct Credential {
    /// `Authorization: Bearer <token>`, marked sensitive.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Dynamic-secret leases: hand them to [`CredentialResolver::release`] when the invocation ends,
    /// whether it succeeded or not.
    pub leases: Vec<Lease>,
    /// Values to redact from upstream responses before the agent sees them.
    pub secrets: Vec<String>,
}

impl Credential {
    /// Replaces the injected secrets in a JSON response; true if anything was redacted.
    pub fn redact_json(&self, value: &mut Value) -> bool {
        redact_json(value, &self.secrets)
    }

    /// Replaces the injected secrets in a text.
    pub fn redact_text<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        redact_text(text, &self.secrets)
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("leases", &self.leases)
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

/// Credentials for `podman login` (CliTool `registry_credential_path`).
#[must_use = "leases must be passed to CredentialResolver::release when the invocation ends"]
pub struct RegistryCredential {
    pub registry: String,
    pub username: String,
    pub password: String,
    pub leases: Vec<Lease>,
    /// Values to redact from the CLI's output.
    pub secrets: Vec<String>,
}

impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("leases", &self.leases)
            .finish()
    }
}

/// Why no credential was issued. `reason` holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct CredentialError {
    /// 502 for exchange failures (B-5), 401 for a missing or rejected user token, 403 when the
    /// security context does not allow human-delegated credentials, 503 when the database is starved.
    pub status: StatusCode,
    pub reason: String,
}

impl CredentialError {
    /// The JSON error body for the caller. An exchange failure says so before OpenBao's or
    /// Keycloak's own words (reference B-5); its audit event keeps those words alone.
    pub fn body(&self) -> Value {
        if self.status == StatusCode::BAD_GATEWAY {
            json!({ "error": format!("credential exchange failed: {}", self.reason) })
        } else {
            json!({ "error": self.reason })
        }
    }
}

/// The result of [`CredentialResolver::resolve`] and the events to commit before answering.
#[derive(Debug)]
pub struct CredentialOutcome {
    pub result: Result<Credential, CredentialError>,
    pub events: Vec<AuditEvent>,
}

/// The result of [`CredentialResolver::resolve_registry`] and the events to commit.
#[derive(Debug)]
pub struct RegistryOutcome {
    pub result: Result<RegistryCredential, CredentialError>,
    pub events: Vec<AuditEvent>,
}

/// A failure inside the module, before it becomes a [`CredentialError`].
#[derive(Debug)]
pub(crate) struct Failure {
    status: StatusCode,
    reason: String,
    /// False for the gating refusals that precede resolution: they write no event.
    audited: bool,
    /// A lease obtained before the failure: revoked at once.
    lease_id: Option<String>,
    /// The path taken and what it asked (the OpenBao path read, the audience), when it got that
    /// far: what the runbook's diagnosis needs to reproduce the failing request.
    attempted: Option<(&'static str, String)>,
}

impl Failure {
    fn exchange(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_GATEWAY,
            reason: reason.into(),
            audited: true,
            lease_id: None,
            attempted: None,
        }
    }

    /// The same failure, met on `effective` while asking for `target`.
    fn at(self, effective: &'static str, target: &str) -> Self {
        Self {
            attempted: Some((effective, target.to_owned())),
            ..self
        }
    }

    fn exchange_with_lease(reason: impl Into<String>, lease_id: Option<String>) -> Self {
        Self {
            lease_id,
            ..Self::exchange(reason)
        }
    }

    fn unauthorized(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            ..Self::exchange(reason)
        }
    }

    fn forbidden(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            ..Self::exchange(reason)
        }
    }

    /// A refusal before resolution starts: no event (reference §5.6 "gating").
    fn gate(status: StatusCode, reason: &str) -> Self {
        Self {
            status,
            reason: reason.to_owned(),
            audited: false,
            lease_id: None,
            attempted: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Bearer,
    Registry,
}

/// Where the material came from; it decides the field names and error texts.
enum Material {
    Dynamic(Map<String, Value>),
    Kv(Map<String, Value>),
    UserBoundKv(Map<String, Value>),
    Exchanged(String),
}

struct Obtained {
    /// The path actually taken (`Auto` and `UserBound` resolve to another).
    effective: &'static str,
    target: String,
    material: Material,
    lease_id: Option<String>,
}

enum Issued {
    Bearer(Credential),
    Registry(RegistryCredential),
}

/// Resolves credentials; built once from the settings and shared by every invocation.
pub struct CredentialResolver {
    openbao: OpenBao,
    keycloak: Keycloak,
    verifier: UserTokenVerifier,
    /// Where exchanged user tokens may be sent.
    delegated_audiences: DelegatedAudiences,
    db: Database,
    timeout: Duration,
    /// Configured secrets, scrubbed from every reason.
    config_secrets: Vec<String>,
    /// Where each resolution's outcome and duration are recorded.
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for CredentialResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialResolver")
            .field("openbao", &self.openbao)
            .field("keycloak", &self.keycloak)
            .field("verifier", &self.verifier)
            .field("backend", &self.db.backend())
            .finish_non_exhaustive()
    }
}

fn optional_url(field: &str, value: Option<&String>) -> Result<Option<Url>, String> {
    let Some(value) = value.map(|v| v.trim()).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let url = Url::parse(value)
        .map_err(|e| format!("spec.credentials.{field}: {value:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(format!(
            "spec.credentials.{field}: {value:?} is not an http(s) URL"
        ));
    }
    Ok(Some(url))
}

fn optional_text(value: Option<&String>) -> Option<String> {
    value
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn secret(field: &str, value: Option<&SecretValue>) -> Result<Option<String>, String> {
    match value {
        None => Ok(None),
        Some(SecretValue::Literal(v)) if v.trim().is_empty() => Ok(None),
        Some(SecretValue::Literal(v)) => Ok(Some(v.trim().to_owned())),
        Some(SecretValue::FromSecret { .. }) => Err(format!(
            "spec.credentials.{field}: secret_key_ref must be resolved to a value before the data plane starts"
        )),
        Some(SecretValue::Invalid(_)) => Err(format!(
            "spec.credentials.{field}: {}",
            SecretValue::INVALID
        )),
    }
}

impl CredentialResolver {
    /// Checks the settings' URLs; missing settings are reported per call, as the reference says.
    pub fn new(
        settings: &CredentialSettings,
        http: HttpClient,
        db: Database,
    ) -> Result<Self, String> {
        let timeout = Duration::from_millis(settings.request_timeout_ms.clamp(1, MAX_TIMEOUT_MS));
        let transport = Transport {
            http,
            timeout,
            max_retries: settings.max_retries.min(MAX_RETRIES_CAP),
        };
        let openbao_token = secret("openbao_token", settings.openbao_token.as_ref())?;
        let client_secret = secret(
            "keycloak_client_secret",
            settings.keycloak_client_secret.as_ref(),
        )?;
        let config_secrets = [&openbao_token, &client_secret]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        Ok(Self {
            openbao: OpenBao {
                addr: optional_url("openbao_addr", settings.openbao_addr.as_ref())?,
                token: openbao_token,
                namespace: optional_text(settings.openbao_namespace.as_ref()),
                kv_mount: settings.openbao_kv_mount.clone(),
                transport: transport.clone(),
            },
            keycloak: Keycloak {
                exchange_url: optional_url(
                    "keycloak_token_exchange_url",
                    settings.keycloak_token_exchange_url.as_ref(),
                )?,
                client_id: optional_text(settings.keycloak_client_id.as_ref()),
                client_secret,
                transport: transport.clone(),
            },
            verifier: UserTokenVerifier::new(
                optional_url(
                    "keycloak_user_jwks_uri",
                    settings.keycloak_user_jwks_uri.as_ref(),
                )?,
                optional_text(settings.keycloak_user_jwt_issuer.as_ref()),
                optional_text(settings.keycloak_user_jwt_audience.as_ref()),
                transport,
            ),
            delegated_audiences: DelegatedAudiences::from_settings(&settings.delegated_audiences)?,
            db,
            timeout,
            config_secrets,
            metrics: None,
        })
    }

    /// Records every resolution in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Resolves the `Authorization` header of one invocation's upstream requests.
    pub async fn resolve(&self, req: CredentialRequest<'_>) -> CredentialOutcome {
        let (result, events) = self.run(req, Purpose::Bearer).await;
        CredentialOutcome {
            result: result.and_then(|issued| match issued {
                Issued::Bearer(credential) => Ok(credential),
                Issued::Registry(_) => Err(internal_mismatch()),
            }),
            events,
        }
    }

    /// Resolves `podman login` credentials for a CLI tool's `registry_credential_path`.
    pub async fn resolve_registry(&self, req: CredentialRequest<'_>) -> RegistryOutcome {
        let (result, events) = self.run(req, Purpose::Registry).await;
        RegistryOutcome {
            result: result.and_then(|issued| match issued {
                Issued::Registry(credential) => Ok(credential),
                Issued::Bearer(_) => Err(internal_mismatch()),
            }),
            events,
        }
    }

    /// Revokes dynamic-secret leases of an invocation (called after the workflow ends, success or
    /// failure). One `CredentialLeaseRevoked` or `CredentialLeaseRevokeFailed` event per lease.
    pub async fn release(&self, leases: Vec<Lease>) -> Vec<AuditEvent> {
        let mut events = Vec::with_capacity(leases.len());
        for lease in leases {
            let result = self.openbao.revoke(&lease.lease_id).await;
            events.push(self.revoke_event(&lease, result));
        }
        events
    }

    fn revoke_event(&self, lease: &Lease, result: Result<(), String>) -> AuditEvent {
        let mut payload = Map::new();
        payload.insert("execution_id".into(), json!(lease.execution_id));
        payload.insert("lease_id".into(), json!(lease.lease_id));
        if let Some(tenant) = &lease.tenant_id {
            payload.insert("tenant_id".into(), json!(tenant));
        }
        match result {
            Ok(()) => {
                tracing::trace!(
                    execution_id = %lease.execution_id,
                    lease_id = %lease.lease_id,
                    "credential lease revoked"
                );
                payload.insert("revoked_at".into(), json!(Utc::now()));
                AuditEvent::new(CREDENTIAL_LEASE_REVOKED, payload)
            }
            Err(reason) => {
                let reason = self.scrub(reason, &[]);
                tracing::warn!(
                    execution_id = %lease.execution_id,
                    lease_id = %lease.lease_id,
                    reason = %reason,
                    "credential lease revocation failed; the secret stays valid until its lease expires"
                );
                payload.insert("reason".into(), json!(reason));
                payload.insert("failed_at".into(), json!(Utc::now()));
                AuditEvent::new(CREDENTIAL_LEASE_REVOKE_FAILED, payload)
            }
        }
    }

    async fn run(
        &self,
        req: CredentialRequest<'_>,
        purpose: Purpose,
    ) -> (Result<Issued, CredentialError>, Vec<AuditEvent>) {
        let started = Instant::now();
        let label = req.path.label();
        let user_token = user_token(req.user_token);
        let tenant = req.tenant_id.map(str::trim).filter(|t| !t.is_empty());
        tracing::trace!(
            execution_id = req.execution_id,
            resolution_path = label,
            tenant_id = tenant,
            user_token_present = user_token.is_some(),
            allows_human_delegated = req.allows_human_delegated,
            purpose = ?purpose,
            "credential resolution started"
        );
        let mut events = Vec::new();
        // Exported when traces are on; OpenBao's and Keycloak's requests are its children. No
        // attribute carries a token, a secret or a reason (reasons may quote upstream bodies).
        let span = tracing::info_span!(
            target: telemetry::TARGET,
            "credential.exchange",
            seal.resolution_path = label,
            seal.execution_id = req.execution_id,
        );
        let obtained = self
            .obtain(&req, tenant, user_token, purpose)
            .instrument(span.clone())
            .await;
        let issued = match obtained {
            Ok(obtained) => {
                let lease_id = obtained.lease_id.clone();
                let effective = obtained.effective;
                let target = obtained.target.clone();
                match issue(obtained, purpose, &req, tenant) {
                    Ok(issued) => Ok((issued, effective, target, lease_id)),
                    Err(reason) => Err(Failure::exchange_with_lease(reason, lease_id)),
                }
            }
            Err(failure) => Err(failure),
        };
        if let Err(failure) = &issued {
            telemetry::attribute(
                &span,
                "http.response.status_code",
                i64::from(failure.status.as_u16()),
            );
            telemetry::fail(
                &span,
                format!("credential resolution failed with {}", failure.status),
            );
        }
        drop(span);
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Some(metrics) = &self.metrics {
            let status = issued.as_ref().err().map(|f| f.status);
            metrics.credential_exchange(label, status, started.elapsed());
        }
        match issued {
            Ok((issued, effective, target, lease_id)) => {
                let mut payload = Map::new();
                payload.insert("execution_id".into(), json!(req.execution_id));
                payload.insert("resolution_path".into(), json!(label));
                payload.insert("effective_path".into(), json!(effective));
                payload.insert("target_service".into(), json!(target));
                if let Some(lease_id) = &lease_id {
                    payload.insert("lease_id".into(), json!(lease_id));
                }
                if let Some(tenant) = tenant {
                    payload.insert("tenant_id".into(), json!(tenant));
                }
                payload.insert("duration_ms".into(), json!(elapsed_ms));
                payload.insert("completed_at".into(), json!(Utc::now()));
                events.push(AuditEvent::new(CREDENTIAL_EXCHANGE_COMPLETED, payload));
                tracing::trace!(
                    execution_id = req.execution_id,
                    resolution_path = label,
                    effective_path = effective,
                    target_service = %target,
                    lease = lease_id.is_some(),
                    duration_ms = elapsed_ms,
                    "credential resolution completed"
                );
                (Ok(issued), events)
            }
            Err(failure) => {
                let reason = self.scrub(failure.reason, &[user_token.unwrap_or_default()]);
                if failure.audited {
                    let mut payload = Map::new();
                    payload.insert("execution_id".into(), json!(req.execution_id));
                    payload.insert("resolution_path".into(), json!(label));
                    if let Some((effective, target)) = &failure.attempted {
                        payload.insert("effective_path".into(), json!(effective));
                        payload.insert("target_service".into(), json!(target));
                    }
                    payload.insert("reason".into(), json!(reason));
                    payload.insert("status".into(), json!(failure.status.as_u16()));
                    if let Some(tenant) = tenant {
                        payload.insert("tenant_id".into(), json!(tenant));
                    }
                    payload.insert("failed_at".into(), json!(Utc::now()));
                    events.push(AuditEvent::new(CREDENTIAL_EXCHANGE_FAILED, payload));
                }
                if failure.status.is_server_error() {
                    tracing::warn!(
                        execution_id = req.execution_id,
                        resolution_path = label,
                        status = failure.status.as_u16(),
                        reason = %reason,
                        "credential exchange failed"
                    );
                } else {
                    tracing::info!(
                        execution_id = req.execution_id,
                        resolution_path = label,
                        status = failure.status.as_u16(),
                        reason = %reason,
                        "credential request refused"
                    );
                }
                if let Some(lease_id) = failure.lease_id {
                    let lease = Lease {
                        lease_id,
                        execution_id: req.execution_id.to_owned(),
                        tenant_id: tenant.map(str::to_owned),
                    };
                    events.extend(self.release(vec![lease]).await);
                }
                (
                    Err(CredentialError {
                        status: failure.status,
                        reason,
                    }),
                    events,
                )
            }
        }
    }

    /// The reason without any configured secret, the user token, or `extra` values.
    fn scrub(&self, reason: String, extra: &[&str]) -> String {
        let mut secrets: Vec<String> = self.config_secrets.clone();
        secrets.extend(extra.iter().map(|s| (*s).to_owned()));
        secrets.retain(|s| !s.is_empty());
        match redact_text(&reason, &secrets) {
            std::borrow::Cow::Borrowed(_) => reason,
            std::borrow::Cow::Owned(scrubbed) => scrubbed,
        }
    }

    async fn obtain(
        &self,
        req: &CredentialRequest<'_>,
        tenant: Option<&str>,
        user_token: Option<&str>,
        purpose: Purpose,
    ) -> Result<Obtained, Failure> {
        match req.path {
            CredentialResolutionPath::SystemJit {
                openbao_engine_path,
                role,
            } => self.dynamic(tenant, openbao_engine_path, role).await,
            CredentialResolutionPath::StaticRef { key } => {
                self.static_ref(req.owner_tenant_id, key).await
            }
            CredentialResolutionPath::HumanDelegated { target_service } => {
                let Some(token) = user_token else {
                    return Err(Failure::gate(StatusCode::UNAUTHORIZED, "unauthorized"));
                };
                if !req.allows_human_delegated {
                    return Err(Failure::gate(StatusCode::FORBIDDEN, "forbidden"));
                }
                self.delegated(req, token, target_service, false).await
            }
            CredentialResolutionPath::Auto {
                system_jit_openbao_engine_path,
                system_jit_role,
                target_service,
            } => match user_token {
                Some(token) => {
                    if !req.allows_human_delegated {
                        return Err(Failure::gate(StatusCode::FORBIDDEN, "forbidden"));
                    }
                    self.delegated(req, token, target_service, false).await
                }
                None => {
                    self.dynamic(tenant, system_jit_openbao_engine_path, system_jit_role)
                        .await
                }
            },
            CredentialResolutionPath::UserBound { provider } => {
                self.user_bound(req, tenant, user_token, provider, purpose)
                    .await
            }
        }
    }

    async fn dynamic(
        &self,
        tenant: Option<&str>,
        engine: &str,
        role: &str,
    ) -> Result<Obtained, Failure> {
        let prefix = tenant.map(|t| format!("tenant-{t}/")).unwrap_or_default();
        let target = format!(
            "{prefix}{}/creds/{}",
            engine.trim().trim_matches('/'),
            role.trim()
        );
        let secret = self
            .openbao
            .dynamic(tenant, engine, role)
            .await
            .map_err(|f| f.at("system_jit", &target))?;
        Ok(Obtained {
            effective: "system_jit",
            target,
            material: Material::Dynamic(secret.data),
            lease_id: secret.lease_id,
        })
    }

    async fn static_ref(&self, owner: Option<&str>, key: &str) -> Result<Obtained, Failure> {
        let prefix = owner.map(|t| format!("tenant-{t}/")).unwrap_or_default();
        let target = format!(
            "{}/data/{prefix}{}",
            self.openbao.kv_mount.trim().trim_matches('/'),
            key.trim().trim_matches('/')
        );
        let data = self
            .openbao
            .kv(owner, key)
            .await
            .map_err(|f| f.at("static_ref", &target))?;
        Ok(Obtained {
            effective: "static_ref",
            target,
            material: Material::Kv(data),
            lease_id: None,
        })
    }

    /// Checks the exchange settings and that the token may go where the call goes
    /// (`delegated_audiences`), verifies the user token (unless done already), exchanges it.
    async fn delegated(
        &self,
        req: &CredentialRequest<'_>,
        user_token: &str,
        target_service: &str,
        verified: bool,
    ) -> Result<Obtained, Failure> {
        let effective = "human_delegated";
        let config = self.keycloak.config(target_service)?;
        // Before the exchange: a token that may not go where the call goes is never obtained.
        self.delegated_audiences
            .check(target_service, req.destination)?;
        if !verified {
            self.verifier.verify(user_token).await?;
        }
        let token = self
            .keycloak
            .exchange(&config, user_token, target_service)
            .await
            .map_err(|f| f.at(effective, target_service.trim()))?;
        Ok(Obtained {
            effective,
            target: target_service.trim().to_owned(),
            material: Material::Exchanged(token),
            lease_id: None,
        })
    }

    async fn user_bound(
        &self,
        req: &CredentialRequest<'_>,
        tenant: Option<&str>,
        user_token: Option<&str>,
        provider: &str,
        purpose: Purpose,
    ) -> Result<Obtained, Failure> {
        let provider = provider.trim();
        if provider.is_empty() {
            return Err(Failure::exchange(
                "validation error: UserBound provider cannot be empty",
            ));
        }
        // The user id selects whose secret is read: it comes from a verified token only.
        let subject = match user_token {
            Some(token) => {
                let claims = self.verifier.verify(token).await?;
                match claims.get("sub").and_then(Value::as_str) {
                    Some(sub) if !sub.is_empty() => Some(sub.to_owned()),
                    _ => {
                        return Err(Failure::unauthorized(
                            "unauthorized: user token rejected: token has no sub claim",
                        ));
                    }
                }
            }
            None => None,
        };
        let binding = match &subject {
            Some(subject) => {
                self.binding(subject, provider, tenant.unwrap_or_default())
                    .await?
            }
            None => None,
        };
        if let Some(secret_path) = binding {
            tracing::trace!(provider, "credential binding found; reading its KV secret");
            let data = self
                .openbao
                .kv(None, &secret_path)
                .await
                .map_err(|f| f.at("user_bound", &secret_path))?;
            return Ok(Obtained {
                effective: "user_bound",
                target: provider.to_owned(),
                material: Material::UserBoundKv(data),
                lease_id: None,
            });
        }
        tracing::trace!(
            provider,
            user_token_present = user_token.is_some(),
            "no credential binding"
        );
        match (purpose, user_token) {
            (Purpose::Bearer, Some(token)) => {
                if !req.allows_human_delegated {
                    return Err(Failure::forbidden(
                        "forbidden: no credential binding, and the security context does not allow \
                         human-delegated credentials",
                    ));
                }
                self.delegated(req, token, provider, true).await
            }
            (Purpose::Registry, Some(_)) => Err(Failure::unauthorized(format!(
                "unauthorized: no active credential binding for provider {provider:?}"
            ))),
            (_, None) => Err(Failure::unauthorized("unauthorized")),
        }
    }

    /// The caller's active binding for `provider`, from the orchestrator's tables (Postgres only).
    async fn binding(
        &self,
        user: &str,
        provider: &str,
        tenant: &str,
    ) -> Result<Option<String>, Failure> {
        let Database::Postgres(pool) = &self.db else {
            tracing::trace!("credential bindings live in Postgres; none on SQLite");
            return Ok(None);
        };
        let query = sqlx::query_scalar::<_, String>(USER_BINDING_SQL)
            .bind(user)
            .bind(provider)
            .bind(tenant)
            .fetch_optional(pool);
        match tokio::time::timeout(self.timeout, query).await {
            Err(_) => Err(Failure::exchange(format!(
                "database error: credential binding lookup took longer than {} ms",
                self.timeout.as_millis()
            ))),
            Ok(Ok(path)) => Ok(path),
            Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() == Some(UNDEFINED_TABLE) => {
                tracing::trace!(
                    "credential_bindings/credential_grants tables are absent; no bindings"
                );
                Ok(None)
            }
            Ok(Err(e)) => {
                let error = PersistenceError::from(e);
                if matches!(error, PersistenceError::PoolTimedOut) {
                    crate::infrastructure::persistence::log_pool_starvation("credential", &error);
                    return Err(Failure {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        ..Failure::exchange("database error: pool acquire timed out")
                    });
                }
                Err(Failure::exchange(error.to_string()))
            }
        }
    }
}

fn internal_mismatch() -> CredentialError {
    CredentialError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        reason: "internal error: credential of the wrong kind".to_owned(),
    }
}

/// The token from `X-Seal-User-Token`, without a `Bearer ` prefix; blank means none.
fn user_token(header: Option<&str>) -> Option<&str> {
    let token = header?.trim();
    let token = match (token.get(..6), token.get(6..)) {
        (Some(scheme), Some(rest))
            if scheme.eq_ignore_ascii_case("bearer")
                && (rest.is_empty() || rest.starts_with(char::is_whitespace)) =>
        {
            rest.trim_start()
        }
        _ => token,
    };
    (!token.is_empty()).then_some(token)
}

/// The first of `names` present in `fields`: `Ok(None)` when none is, an error when it is not a string.
fn field<'m>(
    fields: &'m Map<String, Value>,
    names: &[&str],
    source: &str,
) -> Result<Option<&'m str>, String> {
    for name in names {
        match fields.get(*name) {
            None | Some(Value::Null) => continue,
            Some(Value::String(value)) => return Ok(Some(value)),
            Some(_) => {
                return Err(format!(
                    "serialization error: invalid {source} response: field {name} is not a string"
                ));
            }
        }
    }
    Ok(None)
}

/// Field names whose string values are treated as secrets to redact.
const SECRET_FIELDS: [&str; 6] = [
    "token",
    "password",
    "value",
    "secret_key",
    "secret",
    "access_token",
];

fn secret_values(fields: &Map<String, Value>, also: &str) -> Vec<String> {
    let mut secrets = vec![also.to_owned()];
    for name in SECRET_FIELDS {
        if let Some(Value::String(v)) = fields.get(name)
            && !secrets.contains(v)
        {
            secrets.push(v.clone());
        }
    }
    secrets
}

fn issue(
    obtained: Obtained,
    purpose: Purpose,
    req: &CredentialRequest<'_>,
    tenant: Option<&str>,
) -> Result<Issued, String> {
    let leases: Vec<Lease> = obtained
        .lease_id
        .iter()
        .map(|lease_id| Lease {
            lease_id: lease_id.clone(),
            execution_id: req.execution_id.to_owned(),
            tenant_id: tenant.map(str::to_owned),
        })
        .collect();
    match purpose {
        Purpose::Bearer => {
            let (token, secrets) = match &obtained.material {
                Material::Dynamic(data) => {
                    let token = field(data, &["token", "password"], "OpenBao JIT")?.ok_or(
                        "serialization error: OpenBao JIT response missing token/password field",
                    )?;
                    (token.to_owned(), secret_values(data, token))
                }
                Material::Kv(data) => {
                    let token = field(data, &["token", "value"], "OpenBao KV")?.ok_or(
                        "serialization error: OpenBao KV response missing token/value field",
                    )?;
                    (token.to_owned(), secret_values(data, token))
                }
                Material::UserBoundKv(data) => {
                    let token = field(data, &["token", "value"], "OpenBao KV")?.ok_or(
                        "serialization error: user-bound OpenBao KV secret missing token/value field",
                    )?;
                    (token.to_owned(), secret_values(data, token))
                }
                Material::Exchanged(token) => (token.clone(), vec![token.clone()]),
            };
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                "serialization error: the credential contains characters not allowed in an HTTP header"
                    .to_owned()
            })?;
            value.set_sensitive(true);
            Ok(Issued::Bearer(Credential {
                headers: vec![(http::header::AUTHORIZATION, value)],
                leases,
                secrets,
            }))
        }
        Purpose::Registry => {
            let (registry, username, password, secrets) = match &obtained.material {
                Material::Dynamic(data) | Material::Kv(data) => {
                    let source = if matches!(obtained.material, Material::Dynamic(_)) {
                        "OpenBao JIT"
                    } else {
                        "OpenBao KV"
                    };
                    let registry = field(data, &["registry", "server", "host"], source)?
                        .unwrap_or(DEFAULT_REGISTRY);
                    let username = field(data, &["username", "user", "access_key"], source)?
                        .ok_or_else(|| {
                            format!(
                                "serialization error: {source} secret missing username/user/access_key field"
                            )
                        })?;
                    let password =
                        field(data, &["password", "secret_key", "token", "value"], source)?
                            .ok_or_else(|| {
                                format!(
                                    "serialization error: {source} secret missing password/secret_key/token/value field"
                                )
                            })?;
                    (
                        registry.to_owned(),
                        username.to_owned(),
                        password.to_owned(),
                        secret_values(data, password),
                    )
                }
                Material::UserBoundKv(data) => {
                    let password = field(data, &["token", "value"], "OpenBao KV")?.ok_or(
                        "serialization error: user-bound OpenBao KV secret missing token/value field",
                    )?;
                    (
                        obtained.target.clone(),
                        OAUTH_REGISTRY_USERNAME.to_owned(),
                        password.to_owned(),
                        secret_values(data, password),
                    )
                }
                Material::Exchanged(token) => (
                    obtained.target.clone(),
                    OAUTH_REGISTRY_USERNAME.to_owned(),
                    token.clone(),
                    vec![token.clone()],
                ),
            };
            Ok(Issued::Registry(RegistryCredential {
                registry,
                username,
                password,
                leases,
                secrets,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_token_header_forms() {
        assert_eq!(user_token(None), None);
        assert_eq!(user_token(Some("  ")), None);
        assert_eq!(user_token(Some("Bearer ")), None);
        assert_eq!(user_token(Some("bearer abc")), Some("abc"));
        assert_eq!(user_token(Some(" abc ")), Some("abc"));
    }

    #[test]
    fn fields_prefer_the_first_name_and_refuse_non_strings() {
        let data: Map<String, Value> =
            serde_json::from_value(json!({"token": null, "password": "pw", "n": 1})).unwrap();
        assert_eq!(field(&data, &["token", "password"], "X"), Ok(Some("pw")));
        assert_eq!(field(&data, &["missing"], "X"), Ok(None));
        assert!(field(&data, &["n"], "X").is_err());
    }
}
