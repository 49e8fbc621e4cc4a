//! The `SealGatewayConfig` file: discovery, `env:` indirection, `SEAL_GATEWAY_*` overrides and
//! validation (reference §11), and the manifests folder (DESIGN §3).

mod manifests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aegis_seal_crds::gateway::{
    AuditSettings, GatewaySettings, MAX_DRAIN_SECONDS, MAX_OBJECTS_PER_TENANT,
};
use aegis_seal_crds::manifest::strict;
use aegis_seal_crds::{API_VERSION, SecretValue};
use serde::Deserialize;

use crate::infrastructure::auth::operator::OperatorAuthConfig;

pub use manifests::{ManifestSet, fetch_documents, load_manifests};

/// File name looked for in the working directory, `~/.aegis/` and `/etc/aegis/`.
pub const CONFIG_FILE_NAME: &str = "seal-gateway-config.yaml";
pub const CONFIG_KIND: &str = "SealGatewayConfig";

/// A configuration problem, already phrased as the one line the gateway prints before it exits.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The file as written.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: ConfigMetadata,
    #[serde(default)]
    spec: GatewaySettings,
}

#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ConfigMetadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The settings the gateway runs with, with every secret resolved to its value.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// The file the settings came from; `None` means built-in defaults.
    pub source: Option<PathBuf>,
    pub metadata: ConfigMetadata,
    pub settings: GatewaySettings,
}

impl GatewayConfig {
    /// The database URL (a secret: never log it whole).
    pub fn database_url(&self) -> &str {
        literal(&self.settings.database.url)
    }

    pub fn bind_addr(&self) -> SocketAddr {
        // validate() proved it parses.
        self.settings
            .network
            .bind_addr
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 8089)))
    }
}

fn literal(v: &SecretValue) -> &str {
    match v {
        SecretValue::Literal(s) => s,
        SecretValue::FromSecret { .. } | SecretValue::Invalid(_) => "",
    }
}

/// Where to look for the file and which environment to read, so tests need not touch the process.
pub struct ConfigSources<'a> {
    /// `--config`: must exist.
    pub explicit: Option<&'a Path>,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub home: Option<PathBuf>,
    pub working_dir: PathBuf,
}

impl ConfigSources<'_> {
    /// The process's own environment, home and working directory.
    pub fn process(explicit: Option<&Path>) -> ConfigSources<'_> {
        ConfigSources {
            explicit,
            env: &|k| std::env::var(k).ok(),
            home: std::env::var_os("HOME").map(PathBuf::from),
            working_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        }
    }

    fn var(&self, key: &str) -> Option<String> {
        (self.env)(key)
    }

    /// A variable that is set and not blank.
    fn non_blank(&self, key: &str) -> Option<String> {
        self.var(key).filter(|v| !v.trim().is_empty())
    }

    /// A non-blank variable as a comma-separated list, each entry trimmed; blank entries are
    /// kept, so that validation can refuse them as the typos they are.
    fn comma_list(&self, key: &str) -> Option<Vec<String>> {
        self.non_blank(key).map(|list| {
            list.split(',')
                .map(|entry| entry.trim().to_owned())
                .collect()
        })
    }

    /// A set variable as a switch that is on for `true` (any case) and off for anything else.
    fn switch(&self, key: &str) -> Option<bool> {
        self.var(key).map(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    /// A variable that parses as a `T`; one that does not is ignored, as if unset.
    fn parsed<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.var(key).and_then(|v| v.trim().parse().ok())
    }
}

/// Finds, reads, resolves and validates the configuration.
pub fn load_config(sources: &ConfigSources<'_>) -> Result<GatewayConfig, ConfigError> {
    let path = discover(sources)?;
    let mut file = match &path {
        Some(path) => {
            tracing::info!("Loading SEAL gateway config from {path:?}");
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
            parse(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?
        }
        None => {
            tracing::warn!("No seal-gateway-config.yaml found; using defaults");
            ConfigFile {
                api_version: API_VERSION.into(),
                kind: CONFIG_KIND.into(),
                metadata: ConfigMetadata {
                    name: "aegis-seal-gateway".into(),
                    ..Default::default()
                },
                spec: GatewaySettings::default(),
            }
        }
    };
    resolve_env_references(&mut file.spec, sources);
    apply_overrides(&mut file.spec, sources);
    let where_ = path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    validate(&file).map_err(|e| ConfigError(format!("{where_}: {e}")))?;
    Ok(GatewayConfig {
        source: path,
        metadata: file.metadata,
        settings: file.spec,
    })
}

fn discover(sources: &ConfigSources<'_>) -> Result<Option<PathBuf>, ConfigError> {
    // An explicitly named file that is missing is an error, not a silent fall-through to defaults.
    let named = sources
        .explicit
        .map(Path::to_path_buf)
        .map(|p| (p, "--config"))
        .or_else(|| {
            sources
                .non_blank("SEAL_GATEWAY_CONFIG_PATH")
                .map(|p| (PathBuf::from(p), "SEAL_GATEWAY_CONFIG_PATH"))
        });
    if let Some((path, origin)) = named {
        return if path.is_file() {
            Ok(Some(path))
        } else {
            let problem = if path.exists() {
                "is not a file"
            } else {
                "does not exist"
            };
            Err(ConfigError(format!(
                "{}: config file named by {origin} {problem}",
                path.display()
            )))
        };
    }
    let mut candidates = vec![sources.working_dir.join(CONFIG_FILE_NAME)];
    if let Some(home) = &sources.home {
        candidates.push(home.join(".aegis").join(CONFIG_FILE_NAME));
    }
    candidates.push(PathBuf::from("/etc/aegis").join(CONFIG_FILE_NAME));
    Ok(candidates.into_iter().find(|p| p.is_file()))
}

fn parse(text: &str) -> Result<ConfigFile, String> {
    let value: serde_json::Value =
        serde_yaml::from_str(text).map_err(|e| format!("malformed YAML: {e}"))?;
    strict::<ConfigFile>(value).map_err(|(field, message)| match field {
        Some(field) => format!("{field}: {message}"),
        None => message,
    })
}

/// Replaces `env:VAR` values with the variable (reference §11.3). An unset or blank variable clears
/// the field, so a later `SEAL_GATEWAY_*` override may still fill it.
fn resolve_env_references(s: &mut GatewaySettings, sources: &ConfigSources<'_>) {
    let lookup = |v: &str| -> Option<Option<String>> {
        v.strip_prefix("env:")
            .map(|var| sources.non_blank(var.trim()))
    };
    let required = |field: &mut String| {
        if let Some(value) = lookup(field) {
            *field = value.unwrap_or_default();
        }
    };
    let optional = |field: &mut Option<String>| {
        if let Some(value) = field.as_deref().and_then(lookup) {
            *field = value;
        }
    };
    let secret = |field: &mut SecretValue| {
        if let SecretValue::Literal(v) = field
            && let Some(value) = lookup(v)
        {
            *v = value.unwrap_or_default();
        }
    };
    required(&mut s.network.bind_addr);
    required(&mut s.network.grpc_bind_addr);
    secret(&mut s.database.url);
    required(&mut s.auth.operator_jwks_uri);
    required(&mut s.auth.operator_jwt_issuer);
    required(&mut s.auth.operator_jwt_audience);
    required(&mut s.auth.seal_jwt_public_key_pem);
    required(&mut s.auth.seal_jwt_eddsa_public_key_pem);
    required(&mut s.auth.seal_jwt_issuer);
    required(&mut s.auth.seal_jwt_audience);
    optional(&mut s.credentials.openbao_addr);
    if let Some(token) = &mut s.credentials.openbao_token {
        secret(token);
    }
    required(&mut s.credentials.openbao_kv_mount);
    optional(&mut s.credentials.openbao_namespace);
    optional(&mut s.credentials.keycloak_token_exchange_url);
    optional(&mut s.credentials.keycloak_user_jwks_uri);
    optional(&mut s.credentials.keycloak_user_jwt_issuer);
    optional(&mut s.credentials.keycloak_user_jwt_audience);
    optional(&mut s.credentials.keycloak_client_id);
    if let Some(client_secret) = &mut s.credentials.keycloak_client_secret {
        secret(client_secret);
    }
    if let Some(key) = &mut s.audit.checkpoint_signing_key_pem {
        secret(key);
    }
    optional(&mut s.cli.container_cli);
    optional(&mut s.cli.semantic_judge_url);
    if let Some(token) = &mut s.cli.semantic_judge_token {
        secret(token);
    }
    optional(&mut s.cli.orchestrator_url);
    required(&mut s.cli.nfs_server_host);
    optional(&mut s.outbound.ca_file);
    optional(&mut s.outbound.client_certificate_file);
    optional(&mut s.outbound.client_key_file);
    if let Some(proxy) = &mut s.outbound.proxy_url {
        secret(proxy);
    }

    // Empty optional settings mean "unset".
    for field in [
        &mut s.credentials.openbao_addr,
        &mut s.credentials.openbao_namespace,
        &mut s.credentials.keycloak_token_exchange_url,
        &mut s.credentials.keycloak_client_id,
        &mut s.credentials.keycloak_user_jwks_uri,
        &mut s.credentials.keycloak_user_jwt_issuer,
        &mut s.credentials.keycloak_user_jwt_audience,
        &mut s.cli.container_cli,
        &mut s.cli.semantic_judge_url,
        &mut s.cli.orchestrator_url,
        &mut s.outbound.ca_file,
        &mut s.outbound.client_certificate_file,
        &mut s.outbound.client_key_file,
    ] {
        if field.as_deref().is_some_and(|v| v.trim().is_empty()) {
            *field = None;
        }
    }
    for field in [
        &mut s.credentials.openbao_token,
        &mut s.credentials.keycloak_client_secret,
        &mut s.audit.checkpoint_signing_key_pem,
        &mut s.cli.semantic_judge_token,
        &mut s.outbound.proxy_url,
    ] {
        if matches!(field, Some(SecretValue::Literal(v)) if v.trim().is_empty()) {
            *field = None;
        }
    }
}

/// The `SEAL_GATEWAY_*` environment overrides of reference §11.4.
fn apply_overrides(s: &mut GatewaySettings, src: &ConfigSources<'_>) {
    let set = |field: &mut String, key: &str| {
        if let Some(v) = src.non_blank(key) {
            *field = v;
        }
    };
    let set_opt = |field: &mut Option<String>, key: &str| {
        if let Some(v) = src.non_blank(key) {
            *field = Some(v);
        }
    };
    let set_secret = |field: &mut Option<SecretValue>, key: &str| {
        if let Some(v) = src.non_blank(key) {
            *field = Some(SecretValue::Literal(v));
        }
    };
    set(&mut s.network.bind_addr, "SEAL_GATEWAY_BIND");
    set(&mut s.network.grpc_bind_addr, "SEAL_GATEWAY_GRPC_BIND");
    if let Some(url) = src.non_blank("SEAL_GATEWAY_DB") {
        s.database.url = SecretValue::Literal(url);
    }
    if let Some(on) = src.switch("SEAL_GATEWAY_AUTH_DISABLED") {
        s.auth.disabled = on;
    }
    // These two are set even when empty, as upstream does.
    if let Some(v) = src.var("SEAL_GATEWAY_OPERATOR_JWKS_URI") {
        s.auth.operator_jwks_uri = v;
    }
    if let Some(v) = src.var("SEAL_GATEWAY_SEAL_JWT_PUBLIC_KEY_PEM") {
        s.auth.seal_jwt_public_key_pem = v;
    }
    if let Some(v) = src.var("SEAL_GATEWAY_SEAL_JWT_EDDSA_PUBLIC_KEY_PEM") {
        s.auth.seal_jwt_eddsa_public_key_pem = v;
    }
    if let Some(leeway) = src.parsed("SEAL_GATEWAY_SEAL_JWT_LEEWAY_SECS") {
        s.auth.seal_jwt_leeway_secs = leeway;
    }
    if let Some(ttl) = src.parsed("SEAL_GATEWAY_JWKS_CACHE_TTL_SECS") {
        s.auth.jwks_cache_ttl_secs = ttl;
    }
    set(
        &mut s.auth.operator_jwt_issuer,
        "SEAL_GATEWAY_OPERATOR_JWT_ISSUER",
    );
    set(
        &mut s.auth.operator_jwt_audience,
        "SEAL_GATEWAY_OPERATOR_JWT_AUDIENCE",
    );
    set_opt(
        &mut s.auth.operator_role_claim,
        "SEAL_GATEWAY_OPERATOR_ROLE_CLAIM",
    );
    if let Some(roles) = src.comma_list("SEAL_GATEWAY_OPERATOR_ACCEPTED_ROLES") {
        s.auth.operator_accepted_roles = Some(roles);
    }
    if let Some(roles) = src.comma_list("SEAL_GATEWAY_OPERATOR_READ_ONLY_ROLES") {
        s.auth.operator_read_only_roles = roles;
    }
    set(&mut s.auth.seal_jwt_issuer, "SEAL_GATEWAY_SEAL_JWT_ISSUER");
    set(
        &mut s.auth.seal_jwt_audience,
        "SEAL_GATEWAY_SEAL_JWT_AUDIENCE",
    );
    set_opt(
        &mut s.auth.seal_delegation_claim,
        "SEAL_GATEWAY_SEAL_DELEGATION_CLAIM",
    );
    set_opt(&mut s.credentials.openbao_addr, "SEAL_GATEWAY_OPENBAO_ADDR");
    set_secret(
        &mut s.credentials.openbao_token,
        "SEAL_GATEWAY_OPENBAO_TOKEN",
    );
    set(
        &mut s.credentials.openbao_kv_mount,
        "SEAL_GATEWAY_OPENBAO_KV_MOUNT",
    );
    set_opt(
        &mut s.credentials.keycloak_token_exchange_url,
        "SEAL_GATEWAY_KEYCLOAK_TOKEN_EXCHANGE_URL",
    );
    set_opt(
        &mut s.credentials.keycloak_client_id,
        "SEAL_GATEWAY_KEYCLOAK_CLIENT_ID",
    );
    set_secret(
        &mut s.credentials.keycloak_client_secret,
        "SEAL_GATEWAY_KEYCLOAK_CLIENT_SECRET",
    );
    set_opt(
        &mut s.credentials.openbao_namespace,
        "SEAL_GATEWAY_OPENBAO_NAMESPACE",
    );
    set_opt(
        &mut s.credentials.keycloak_user_jwks_uri,
        "SEAL_GATEWAY_KEYCLOAK_USER_JWKS_URI",
    );
    set_opt(
        &mut s.credentials.keycloak_user_jwt_issuer,
        "SEAL_GATEWAY_KEYCLOAK_USER_JWT_ISSUER",
    );
    set_opt(
        &mut s.credentials.keycloak_user_jwt_audience,
        "SEAL_GATEWAY_KEYCLOAK_USER_JWT_AUDIENCE",
    );
    if let Some(ms) = src.parsed("SEAL_GATEWAY_CREDENTIAL_REQUEST_TIMEOUT_MS") {
        s.credentials.request_timeout_ms = ms;
    }
    if let Some(n) = src.parsed("SEAL_GATEWAY_CREDENTIAL_MAX_RETRIES") {
        s.credentials.max_retries = n;
    }
    set_opt(&mut s.cli.container_cli, "SEAL_GATEWAY_CONTAINER_CLI");
    set_opt(
        &mut s.cli.semantic_judge_url,
        "SEAL_GATEWAY_SEMANTIC_JUDGE_URL",
    );
    set_secret(
        &mut s.cli.semantic_judge_token,
        "SEAL_GATEWAY_SEMANTIC_JUDGE_TOKEN",
    );
    if let Some(ms) = src.parsed("SEAL_GATEWAY_SEMANTIC_JUDGE_TIMEOUT_MS") {
        s.cli.semantic_judge_timeout_ms = ms;
    }
    set_opt(&mut s.cli.orchestrator_url, "SEAL_GATEWAY_ORCHESTRATOR_URL");
    set(&mut s.cli.nfs_server_host, "SEAL_GATEWAY_NFS_HOST");
    if let Some(port) = src.parsed("SEAL_GATEWAY_NFS_PORT") {
        s.cli.nfs_port = port;
    }
    if let Some(port) = src.parsed("SEAL_GATEWAY_NFS_MOUNT_PORT") {
        s.cli.nfs_mount_port = port;
    }
    set_opt(&mut s.outbound.ca_file, "SEAL_GATEWAY_OUTBOUND_CA_FILE");
    set_opt(
        &mut s.outbound.client_certificate_file,
        "SEAL_GATEWAY_OUTBOUND_CLIENT_CERTIFICATE_FILE",
    );
    set_opt(
        &mut s.outbound.client_key_file,
        "SEAL_GATEWAY_OUTBOUND_CLIENT_KEY_FILE",
    );
    set_secret(&mut s.outbound.proxy_url, "SEAL_GATEWAY_OUTBOUND_PROXY_URL");
    if let Some(list) = src.var("SEAL_GATEWAY_OUTBOUND_NO_PROXY") {
        s.outbound.no_proxy = list
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(str::to_owned)
            .collect();
    }
    if let Some(on) = src.switch("SEAL_GATEWAY_OUTBOUND_TENANT_UPSTREAMS_PUBLIC_ONLY") {
        s.outbound.tenant_upstreams_public_only = on;
    }
    if let Some(v) = src.var("SEAL_GATEWAY_UI_ENABLED") {
        s.ui.enabled = !v.trim().eq_ignore_ascii_case("false");
    }
    set_secret(
        &mut s.audit.checkpoint_signing_key_pem,
        "SEAL_GATEWAY_AUDIT_CHECKPOINT_SIGNING_KEY_PEM",
    );
    if let Some(secs) = src.parsed::<u64>("SEAL_GATEWAY_AUDIT_CHECKPOINT_INTERVAL_SECS") {
        s.audit.checkpoint_interval_secs = secs;
    }
    if let Some(days) = src.parsed::<u64>("SEAL_GATEWAY_AUDIT_RETENTION_DAYS") {
        // 0 (or out of range) turns retention off, so an env var can undo a file's setting.
        s.audit.retention_days = u32::try_from(days).ok().filter(|d| *d > 0);
    }
    if let Some(secs) = src.parsed::<u64>("SEAL_GATEWAY_AUDIT_PURGE_INTERVAL_SECS") {
        s.audit.purge_interval_secs = secs;
    }
    if let Some(n) = src.parsed::<u64>("SEAL_GATEWAY_AUDIT_PURGE_BATCH_SIZE") {
        s.audit.purge_batch_size = u32::try_from(n).unwrap_or(u32::MAX);
    }
}

fn validate(file: &ConfigFile) -> Result<(), String> {
    if file.api_version != API_VERSION {
        return Err(format!(
            "Invalid apiVersion: '{}'. Must be '{API_VERSION}'",
            file.api_version
        ));
    }
    if file.kind != CONFIG_KIND {
        return Err(format!(
            "Invalid kind: '{}'. Must be '{CONFIG_KIND}'",
            file.kind
        ));
    }
    if file.metadata.name.trim().is_empty() {
        return Err("metadata.name cannot be empty".into());
    }
    let s = &file.spec;
    for (field, value) in [
        ("spec.network.bind_addr", &s.network.bind_addr),
        ("spec.network.grpc_bind_addr", &s.network.grpc_bind_addr),
    ] {
        if value.trim().is_empty() {
            return Err(format!("{field} cannot be empty"));
        }
        if value.parse::<SocketAddr>().is_err() {
            return Err(format!(
                "{field}: \"{value}\" is not a socket address (e.g. 0.0.0.0:8089)"
            ));
        }
    }
    if s.network.max_header_bytes < 8192 {
        return Err("spec.network.max_header_bytes: must be at least 8192".into());
    }
    if s.network.max_body_bytes == 0 {
        return Err("spec.network.max_body_bytes: must be at least 1".into());
    }
    if !(1..=MAX_DRAIN_SECONDS).contains(&s.network.drain_seconds) {
        return Err(format!(
            "spec.network.drain_seconds: must be between 1 and {MAX_DRAIN_SECONDS}"
        ));
    }
    if !(1..=MAX_OBJECTS_PER_TENANT).contains(&s.control.max_objects_per_tenant) {
        return Err(format!(
            "spec.control.max_objects_per_tenant: must be between 1 and {MAX_OBJECTS_PER_TENANT}"
        ));
    }
    for (field, value) in s.secret_values() {
        match value {
            Some(SecretValue::FromSecret { .. }) => {
                return Err(format!(
                    "{field}: secret_key_ref is only understood in a SealGateway resource; use env:VAR in a config file"
                ));
            }
            Some(SecretValue::Invalid(_)) => {
                return Err(format!("{field}: {}", SecretValue::INVALID));
            }
            _ => {}
        }
    }
    let url = literal(&s.database.url);
    if url.trim().is_empty() {
        return Err("spec.database.url cannot be empty".into());
    }
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://"))
    {
        return Err(
            "spec.database.url: must start with sqlite:, postgres:// or postgresql://".into(),
        );
    }
    if !(1..=300_000).contains(&s.credentials.request_timeout_ms) {
        return Err("spec.credentials.request_timeout_ms: must be between 1 and 300000".into());
    }
    if s.credentials.max_retries > 3 {
        return Err("spec.credentials.max_retries: must be at most 3".into());
    }
    if let Some(SecretValue::Literal(token)) = &s.cli.semantic_judge_token
        && http::HeaderValue::try_from(format!("Bearer {}", token.trim())).is_err()
    {
        // The value is not repeated: it is a credential.
        return Err(
            "spec.cli.semantic_judge_token: holds characters an Authorization header cannot carry"
                .into(),
        );
    }
    if !(1..=60_000).contains(&s.cli.semantic_judge_timeout_ms) {
        return Err("spec.cli.semantic_judge_timeout_ms: must be between 1 and 60000".into());
    }
    // It goes into NFS mount options (`addr=<host>,...`): a comma or `=` would add options.
    let nfs_host = &s.cli.nfs_server_host;
    if !nfs_host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
    {
        return Err(format!(
            "spec.cli.nfs_server_host: \"{nfs_host}\" is not a host name or an IP address"
        ));
    }
    if let Some(SecretValue::Literal(url)) = &s.outbound.proxy_url {
        let usable = reqwest::Url::parse(url.trim())
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
        if !usable {
            // The value is not repeated: it may carry the proxy's password.
            return Err(
                "spec.outbound.proxy_url: not an http:// or https:// URL with a host".into(),
            );
        }
    }
    if let Some(entry) = s.outbound.no_proxy.iter().find(|e| e.trim().is_empty()) {
        return Err(format!(
            "spec.outbound.no_proxy: {entry:?} is empty: list host names, addresses or CIDR blocks"
        ));
    }
    if s.outbound.client_certificate_file.is_some() != s.outbound.client_key_file.is_some() {
        return Err(
            "spec.outbound.client_certificate_file and spec.outbound.client_key_file must be set together"
                .into(),
        );
    }
    if let Some(roles) = &s.auth.operator_accepted_roles {
        // An empty list would refuse every operator token; a blank entry is a typo in a list.
        if roles.is_empty() || roles.iter().any(|r| r.trim().is_empty()) {
            return Err(
                "spec.auth.operator_accepted_roles: list at least one role, none of them blank"
                    .into(),
            );
        }
    }
    if s.auth
        .seal_delegation_claim
        .as_deref()
        .is_some_and(|claim| claim.trim().is_empty())
    {
        return Err(
            "spec.auth.seal_delegation_claim: name the claim, or leave it out for no grant check"
                .into(),
        );
    }
    if s.auth
        .operator_read_only_roles
        .iter()
        .any(|r| r.trim().is_empty())
    {
        return Err("spec.auth.operator_read_only_roles: a role is blank".into());
    }
    let writers = OperatorAuthConfig::accepted_roles(&s.auth);
    if let Some(both) = s
        .auth
        .operator_read_only_roles
        .iter()
        .find(|r| writers.iter().any(|w| w == r.trim()))
    {
        return Err(format!(
            "spec.auth.operator_read_only_roles: {both:?} is also an accepted role \
             (operator_accepted_roles), which may write"
        ));
    }
    if !s.auth.disabled && s.auth.operator_jwks_uri.trim().is_empty() {
        return Err("spec.auth.operator_jwks_uri is required when auth is enabled".into());
    }
    validate_audit(&s.audit)
}

fn validate_audit(audit: &AuditSettings) -> Result<(), String> {
    if audit.checkpoint_interval_secs == 0 {
        return Err("spec.audit.checkpoint_interval_secs: must be at least 1".into());
    }
    if audit.purge_interval_secs == 0 {
        return Err("spec.audit.purge_interval_secs: must be at least 1".into());
    }
    if audit.purge_batch_size == 0 {
        return Err("spec.audit.purge_batch_size: must be at least 1".into());
    }
    if audit.retention_days == Some(0) {
        return Err(
            "spec.audit.retention_days: must be at least 1 (omit it to keep every event)".into(),
        );
    }
    if let Some(SecretValue::Literal(pem)) = &audit.checkpoint_signing_key_pem {
        crate::infrastructure::persistence::CheckpointSigner::from_pem(pem)
            .map_err(|e| format!("spec.audit.checkpoint_signing_key_pem: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
