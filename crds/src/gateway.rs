//! `SealGateway` and the settings it shares with the standalone `SealGatewayConfig` file.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LocalObjectReference, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ConfigMapKeyRef, FromSecret, SecretKeyRef, SecretValue};

/// A data plane: its settings (the `spec` of `SealGatewayConfig`), its size, and which resources it serves.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "seal.100monkeys.ai",
    version = "v1",
    kind = "SealGateway",
    namespaced,
    status = "SealGatewayStatus",
    shortname = "sealgw",
    category = "seal",
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Workflows","type":"integer","jsonPath":".status.workflows"}"#,
    printcolumn = r#"{"name":"Snapshot","type":"string","jsonPath":".status.snapshot_hash","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct SealGatewaySpec {
    /// Data-plane pods (more than one needs Postgres).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Data-plane image; defaults to the operator's own release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// When the data-plane pods pull `image`; `IfNotPresent` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Secrets (`kubernetes.io/dockerconfigjson`, in the gateway's namespace) the data-plane pods
    /// pull `image` with, from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default)]
    pub resource_selector: ResourceSelector,
    /// Whether the data-plane pod may run CLI tools' containers itself.
    #[serde(default)]
    pub cli_containers: CliContainers,
    /// OpenTelemetry traces of the data plane; absent, tracing is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSettings>,
    /// Certificates of the data plane's outbound HTTPS, mounted into its pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_tls: Option<OutboundTls>,
    #[serde(flatten)]
    pub settings: GatewaySettings,
}

/// A container's `imagePullPolicy`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// CLI tools run in containers started by podman inside the data-plane pod. That needs a
/// privileged container running as root (podman creates namespaces, cgroups and overlay mounts),
/// so it is off by default: the pod then runs under the restricted Pod Security profile and CLI
/// tool calls fail with `container CLI execution failed`, and the status's `CliToolsRunnable`
/// condition is False while CLI tools are served. Enabling it requires the namespace to admit
/// privileged pods (`pod-security.kubernetes.io/enforce: privileged`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct CliContainers {
    /// Run the data-plane container privileged, as root, with writable podman storage.
    #[serde(default)]
    pub enabled: bool,
}

/// OpenTelemetry traces exported over OTLP/HTTP (docs/observability.md, "Traces"). The data plane
/// reads these from the standard `OTEL_*` environment at start, not from its config file: the
/// operator sets them on the data-plane container, and a change rolls the pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct TracingSettings {
    /// Base URL of the collector's OTLP/HTTP receiver, e.g.
    /// `http://otel-collector.observability.svc:4318`; spans are POSTed to `<endpoint>/v1/traces`
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`). gRPC (port 4317) is not supported.
    #[schemars(pattern(r"^https?://[^\s/?#]+"))]
    pub endpoint: String,
    /// `service.name` of the exported spans (`OTEL_SERVICE_NAME`); `aegis-seal-gateway` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub service_name: Option<String>,
    /// Share of root traces sampled, 0.0 to 1.0; a caller's sampled flag is always honoured
    /// (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`). Unset: every trace is sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sampler_ratio: Option<f64>,
    /// Headers sent with every export, typically the collector's credentials: a Secret key whose
    /// value is `key=value,...` with URL-encoded values (`OTEL_EXPORTER_OTLP_HEADERS`), e.g.
    /// `authorization=Bearer%20<token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<FromSecret>,
}

/// Certificates for every HTTPS request the data plane makes (its `outbound` settings), mounted
/// by the operator from the gateway's namespace. A change of these references rolls the pods; a
/// renewed Secret or ConfigMap reaches running pods through the kubelet and is used for new
/// connections, without a restart.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboundTls {
    /// CA certificates (PEM) trusted in addition to the system's: one key of a ConfigMap (e.g. a
    /// trust-manager bundle) or of a Secret (e.g. the `ca.crt` of a cert-manager certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaBundleRef>,
    /// Name of a `kubernetes.io/tls` Secret (`tls.crt` and `tls.key`, e.g. issued by
    /// cert-manager) whose certificate is presented to servers that ask for one (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub client_certificate_secret: Option<String>,
}

/// Where a CA bundle is: exactly one of the two references.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaBundleRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<ConfigMapKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// Which Workflow, CliTool and SecurityContext resources a gateway serves.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ResourceSelector {
    #[serde(default)]
    pub namespaces: NamespaceScope,
    /// Only resources whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// With `namespaces: All`: namespace -> the one tenant its resources serve (their
    /// `tenant_id` must name it). Resources in any other namespace than the gateway's own are
    /// refused, and only the gateway's own namespace may declare system-global ones.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_tenants: BTreeMap<String, String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum NamespaceScope {
    /// The SealGateway's own namespace.
    #[default]
    Same,
    /// Every namespace.
    All,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SealGatewayStatus {
    /// `Ready` and `Accepted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(
        default,
        rename = "observedGeneration",
        skip_serializing_if = "Option::is_none"
    )]
    pub observed_generation: Option<i64>,
    /// Hash of the snapshot the data plane was last given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_hash: Option<String>,
    #[serde(default)]
    pub workflows: u32,
    #[serde(default)]
    pub cli_tools: u32,
    #[serde(default)]
    pub security_contexts: u32,
    #[serde(default)]
    pub ready_replicas: i32,
}

/// Every setting of a data plane: the `spec` of the `SealGatewayConfig` file, and the settings part of a
/// SealGateway. Each section and key is optional and defaults as the reference §11.1 says.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct GatewaySettings {
    #[serde(default)]
    pub network: NetworkSettings,
    #[serde(default)]
    pub database: DatabaseSettings,
    #[serde(default)]
    pub auth: AuthSettings,
    #[serde(default)]
    pub credentials: CredentialSettings,
    #[serde(default)]
    pub cli: CliSettings,
    #[serde(default)]
    pub ui: UiSettings,
    #[serde(default)]
    pub audit: AuditSettings,
    #[serde(default)]
    pub outbound: OutboundSettings,
    #[serde(default)]
    pub control: ControlSettings,
}

impl GatewaySettings {
    /// Every setting that may hold a secret, by its path in a config file.
    pub fn secret_values(&self) -> [(&'static str, Option<&SecretValue>); 6] {
        [
            ("spec.database.url", Some(&self.database.url)),
            (
                "spec.credentials.openbao_token",
                self.credentials.openbao_token.as_ref(),
            ),
            (
                "spec.credentials.keycloak_client_secret",
                self.credentials.keycloak_client_secret.as_ref(),
            ),
            (
                "spec.audit.checkpoint_signing_key_pem",
                self.audit.checkpoint_signing_key_pem.as_ref(),
            ),
            (
                "spec.cli.semantic_judge_token",
                self.cli.semantic_judge_token.as_ref(),
            ),
            ("spec.outbound.proxy_url", self.outbound.proxy_url.as_ref()),
        ]
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct NetworkSettings {
    /// HTTP listener (HTTP/1.1 and h2c).
    #[serde(default = "default_bind_addr")]
    pub bind_addr: String,
    /// The upstream gateway's gRPC listener address: accepted and checked, so its config files
    /// load unchanged, but no gRPC is served and no port is opened for it.
    #[serde(default = "default_grpc_bind_addr")]
    pub grpc_bind_addr: String,
    /// Largest accepted request body.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Largest accepted request head (request line and headers).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: u32,
    /// On SIGTERM: how long in-flight calls may take to finish before the CLI tools still running
    /// are stopped. Raise it above the longest CLI tool's timeout so rollouts never cut a run
    /// short; the operator sets the pod's grace period to this plus 20 s.
    #[serde(default = "default_drain_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub drain_seconds: u32,
}

pub const DEFAULT_BIND_ADDR: &str = "0.0.0.0:8089";
pub const DEFAULT_GRPC_BIND_ADDR: &str = "0.0.0.0:50055";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://gateway.db";

fn default_bind_addr() -> String {
    DEFAULT_BIND_ADDR.into()
}
fn default_grpc_bind_addr() -> String {
    DEFAULT_GRPC_BIND_ADDR.into()
}
fn default_max_body_bytes() -> u64 {
    2 * 1024 * 1024
}
fn default_max_header_bytes() -> u32 {
    64 * 1024
}
/// Longest accepted `network.drain_seconds`: a pod's grace period beyond an hour holds nodes
/// back from draining.
pub const MAX_DRAIN_SECONDS: u32 = 3600;
fn default_drain_seconds() -> u32 {
    30
}

impl Default for NetworkSettings {
    fn default() -> Self {
        Self {
            bind_addr: default_bind_addr(),
            grpc_bind_addr: default_grpc_bind_addr(),
            max_body_bytes: default_max_body_bytes(),
            max_header_bytes: default_max_header_bytes(),
            drain_seconds: default_drain_seconds(),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct DatabaseSettings {
    /// `sqlite://path` (the default, `sqlite://gateway.db`) or `postgres://...`.
    #[serde(default = "default_database_url")]
    pub url: SecretValue,
}

fn default_database_url() -> SecretValue {
    SecretValue::Literal(DEFAULT_DATABASE_URL.into())
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: default_database_url(),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct AuthSettings {
    /// Turns operator-endpoint authentication off. Never affects envelope verification.
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub operator_jwks_uri: String,
    #[serde(default = "default_jwks_cache_ttl_secs")]
    pub jwks_cache_ttl_secs: u64,
    #[serde(default = "default_operator_jwt_issuer")]
    pub operator_jwt_issuer: String,
    #[serde(default = "default_operator_jwt_audience")]
    pub operator_jwt_audience: String,
    /// Claim holding the operator role; `aegis_role` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_role_claim: Option<String>,
    /// Roles accepted in that claim; when unset, `operator`, `platform-admin`, `aegis:operator` and
    /// `aegis:admin`. A token holding `platform-admin` or `aegis:admin` (or no `tenant_id`) acts as a
    /// platform operator, whatever this list says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub operator_accepted_roles: Option<Vec<String>>,
    /// Roles that may only read the operator endpoints (`GET` and `HEAD`: sessions, tools,
    /// events and the REST objects), for auditors and dashboards. A token whose roles are among
    /// these and not among `operator_accepted_roles` is refused anything else with 403. None by
    /// default; a role may not be in both lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operator_read_only_roles: Vec<String>,
    /// PEM RSA public key verifying RS256 SEAL security tokens.
    #[serde(default)]
    pub seal_jwt_public_key_pem: String,
    /// PEM Ed25519 public key verifying EdDSA SEAL security tokens.
    #[serde(default)]
    pub seal_jwt_eddsa_public_key_pem: String,
    /// Clock skew tolerated on the security token's `exp` and `nbf`.
    #[serde(default = "default_seal_jwt_leeway_secs")]
    pub seal_jwt_leeway_secs: u64,
    #[serde(default = "default_seal_jwt_issuer")]
    pub seal_jwt_issuer: String,
    #[serde(default = "default_seal_jwt_audience")]
    pub seal_jwt_audience: String,
    /// Claim of the SEAL security token listing the tenants a service account may act for
    /// through `params._meta.tenant_id`: a string or an array of strings, `*` for every tenant
    /// (the runbook's "delegation grant in the issuer"). When set, a service account is refused
    /// any other tenant than its token's that the claim does not list; when unset, any service
    /// account may act for any tenant, as upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_delegation_claim: Option<String>,
}

fn default_jwks_cache_ttl_secs() -> u64 {
    300
}
fn default_operator_jwt_issuer() -> String {
    "aegis-keycloak".into()
}
fn default_operator_jwt_audience() -> String {
    "aegis-seal-gateway".into()
}
fn default_seal_jwt_leeway_secs() -> u64 {
    60
}
fn default_seal_jwt_issuer() -> String {
    "aegis-orchestrator".into()
}
fn default_seal_jwt_audience() -> String {
    "aegis-agents".into()
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            disabled: false,
            operator_jwks_uri: String::new(),
            jwks_cache_ttl_secs: default_jwks_cache_ttl_secs(),
            operator_jwt_issuer: default_operator_jwt_issuer(),
            operator_jwt_audience: default_operator_jwt_audience(),
            operator_role_claim: None,
            operator_accepted_roles: None,
            operator_read_only_roles: Vec::new(),
            seal_jwt_public_key_pem: String::new(),
            seal_jwt_eddsa_public_key_pem: String::new(),
            seal_jwt_leeway_secs: default_seal_jwt_leeway_secs(),
            seal_jwt_issuer: default_seal_jwt_issuer(),
            seal_jwt_audience: default_seal_jwt_audience(),
            seal_delegation_claim: None,
        }
    }
}

/// Where per-invocation upstream credentials come from (reference §5.6): OpenBao (dynamic secrets and
/// KV v2) and Keycloak (RFC 8693 token exchange of a verified user token).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct CredentialSettings {
    /// OpenBao (Vault API) address, e.g. `https://openbao.vault.svc:8200`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openbao_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openbao_token: Option<SecretValue>,
    /// Mount of the KV v2 engine read by `StaticRef` and `UserBound`.
    #[serde(default = "default_openbao_kv_mount")]
    pub openbao_kv_mount: String,
    /// OpenBao namespace, sent as `X-Vault-Namespace` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openbao_namespace: Option<String>,
    /// Keycloak token endpoint used for the RFC 8693 exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keycloak_token_exchange_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keycloak_client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keycloak_client_secret: Option<SecretValue>,
    /// JWKS that user tokens (`X-Seal-User-Token`) must verify against before they are exchanged.
    /// When unset, it is discovered from `keycloak_user_jwt_issuer`'s OpenID configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keycloak_user_jwks_uri: Option<String>,
    /// Required `iss` of user tokens (checked when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keycloak_user_jwt_issuer: Option<String>,
    /// Required `aud` of user tokens (checked when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keycloak_user_jwt_audience: Option<String>,
    /// Bound on each OpenBao or Keycloak request, from connecting to the last byte.
    #[serde(default = "default_credential_request_timeout_ms")]
    #[schemars(range(min = 1, max = 300_000))]
    pub request_timeout_ms: u64,
    /// Retries after a transport error or a 5xx answer (never after a 4xx), at most 3.
    #[serde(default = "default_credential_max_retries")]
    #[schemars(range(max = 3))]
    pub max_retries: u32,
    /// Where a user's delegated token may go: audience (`target_service`) -> the origins
    /// (`https://host[:port]`) of the upstreams it may be sent to. When set, a `HumanDelegated`
    /// exchange (also through `Auto` and `UserBound`) happens only for a listed audience and an
    /// upstream of one of its origins, so a workflow cannot send the token to a host of its
    /// author's choosing. Empty: no binding.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub delegated_audiences: BTreeMap<String, Vec<String>>,
}

fn default_openbao_kv_mount() -> String {
    "secret".into()
}
fn default_credential_request_timeout_ms() -> u64 {
    5000
}
fn default_credential_max_retries() -> u32 {
    1
}

impl Default for CredentialSettings {
    fn default() -> Self {
        Self {
            openbao_addr: None,
            openbao_token: None,
            openbao_kv_mount: default_openbao_kv_mount(),
            openbao_namespace: None,
            keycloak_token_exchange_url: None,
            keycloak_client_id: None,
            keycloak_client_secret: None,
            keycloak_user_jwks_uri: None,
            keycloak_user_jwt_issuer: None,
            keycloak_user_jwt_audience: None,
            request_timeout_ms: default_credential_request_timeout_ms(),
            max_retries: default_credential_max_retries(),
            delegated_audiences: BTreeMap::new(),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct CliSettings {
    /// Path or name of the container CLI; auto-detects podman, then docker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_cli: Option<String>,
    /// The semantic judge CLI tools with `require_semantic_judge` are checked by (fail closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic_judge_url: Option<String>,
    /// Sent to the judge as `Authorization: Bearer <token>` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic_judge_token: Option<SecretValue>,
    /// Bound on one judge call, from connecting to the last byte; past it the call is rejected.
    #[serde(default = "default_semantic_judge_timeout_ms")]
    #[schemars(range(min = 1, max = 60_000))]
    pub semantic_judge_timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orchestrator_url: Option<String>,
    #[serde(default = "default_nfs_server_host")]
    pub nfs_server_host: String,
    #[serde(default = "default_nfs_port")]
    pub nfs_port: u16,
    #[serde(default = "default_nfs_mount_port")]
    pub nfs_mount_port: u16,
}

fn default_semantic_judge_timeout_ms() -> u64 {
    5000
}
fn default_nfs_server_host() -> String {
    "127.0.0.1".into()
}
fn default_nfs_port() -> u16 {
    2049
}
fn default_nfs_mount_port() -> u16 {
    20048
}

impl Default for CliSettings {
    fn default() -> Self {
        Self {
            container_cli: None,
            semantic_judge_url: None,
            semantic_judge_token: None,
            semantic_judge_timeout_ms: default_semantic_judge_timeout_ms(),
            orchestrator_url: None,
            nfs_server_host: default_nfs_server_host(),
            nfs_port: default_nfs_port(),
            nfs_mount_port: default_nfs_mount_port(),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct UiSettings {
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_true() -> bool {
    true
}

impl Default for UiSettings {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Every HTTP request the data plane makes: workflow steps' upstream APIs, OpenBao, Keycloak, the
/// semantic judge, JWKS documents and OpenAPI documents fetched by URL. HTTPS servers are trusted
/// by the system's certificate store plus `ca_file`. The files are re-read when they change (a
/// rotated Secret), for new connections. Requests go direct unless `proxy_url` is set; the
/// `HTTP_PROXY`-style environment variables are not read.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct OutboundSettings {
    /// PEM file of CA certificates trusted in addition to the system's, for servers signed by an
    /// internal CA. In a SealGateway, set `outbound_tls.ca` instead: the operator mounts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// PEM file of the client certificate (and its chain) presented to servers that ask for one
    /// (mutual TLS). Requires `client_key_file`. In a SealGateway, set
    /// `outbound_tls.client_certificate_secret` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_file: Option<String>,
    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<String>,
    /// Egress proxy for every request not matched by `no_proxy`: `http://[user:password@]host:port`
    /// (or `https://`). HTTPS goes through it with `CONNECT`; the proxy then resolves the
    /// destination names, so it must refuse link-local and metadata addresses itself (literal
    /// addresses and known metadata names are still refused here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<SecretValue>,
    /// Destinations reached directly despite `proxy_url`, as in `NO_PROXY`: host names (each also
    /// matches its subdomains), IP addresses and CIDR blocks, e.g. `[.svc, .cluster.local, 10.0.0.0/8]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_proxy: Vec<String>,
    /// Tenants' upstreams must be public addresses: a tenant's workflow steps, and the OpenAPI
    /// documents and explorer calls tenant operators ask for, never reach a loopback, private,
    /// shared, unique-local, link-local or reserved address, checked on literal addresses and on
    /// every address a name resolves to (through `proxy_url`, on literal addresses only). Set it
    /// where tenants register their own specs or custom resources; system-global workflows, which
    /// platform operators own, may still call internal services.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tenant_upstreams_public_only: bool,
}

/// The REST control plane (`/v1/specs`, `/v1/workflows`, `/v1/cli-tools`,
/// `/v1/security-contexts`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ControlSettings {
    /// Most objects (specs, workflows, CLI tools and security contexts together) a tenant may
    /// register over REST. Every replica holds and compiles every REST object, so without a bound
    /// one tenant could exhaust the gateway for all. System-global objects, which only platform
    /// operators register, are not counted.
    #[serde(default = "default_max_objects_per_tenant")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_objects_per_tenant: u32,
}

/// Largest accepted `control.max_objects_per_tenant`.
pub const MAX_OBJECTS_PER_TENANT: u32 = 1_000_000;

fn default_max_objects_per_tenant() -> u32 {
    1000
}

impl Default for ControlSettings {
    fn default() -> Self {
        Self {
            max_objects_per_tenant: default_max_objects_per_tenant(),
        }
    }
}

/// Audit trail integrity and retention (`gateway_events`, docs/audit.md).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct AuditSettings {
    /// PKCS#8 PEM Ed25519 private key that signs audit checkpoints (in a SealGateway, a
    /// `secret_key_ref`). Unset: each process generates one at start and logs its public key, so
    /// checkpoints prove the trail intact but not who signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_signing_key_pem: Option<SecretValue>,
    /// How often the head of the hash chain is signed into `audit_checkpoints`.
    #[serde(default = "default_checkpoint_interval_secs")]
    pub checkpoint_interval_secs: u64,
    /// Events older than this many days are purged; unset keeps every event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    /// How often the retention purge runs.
    #[serde(default = "default_purge_interval_secs")]
    pub purge_interval_secs: u64,
    /// Rows deleted per purge transaction, so a purge never holds the table for long.
    #[serde(default = "default_purge_batch_size")]
    pub purge_batch_size: u32,
}

fn default_checkpoint_interval_secs() -> u64 {
    300
}
fn default_purge_interval_secs() -> u64 {
    3600
}
fn default_purge_batch_size() -> u32 {
    5000
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            checkpoint_signing_key_pem: None,
            checkpoint_interval_secs: default_checkpoint_interval_secs(),
            retention_days: None,
            purge_interval_secs: default_purge_interval_secs(),
            purge_batch_size: default_purge_batch_size(),
        }
    }
}
