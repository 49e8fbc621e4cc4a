//! Unit tests for the `SealGatewayConfig` loader (reference §11.1–§11.4) and the manifests
//! folder.
//!
//! Every test runs in a [`Sandbox`]: a temporary home and working directory and an environment of
//! its own, so neither the process environment nor the real home directory is ever read. The one
//! path outside the sandbox that discovery looks at, `/etc/aegis/seal-gateway-config.yaml`, does
//! not exist on the machines these tests run on.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use aegis_seal_crds::gateway::{
    AuditSettings, AuthSettings, CliSettings, ControlSettings, CredentialSettings,
    DatabaseSettings, GatewaySettings, NetworkSettings, OutboundSettings, UiSettings,
};
use aegis_seal_crds::{SecretKeyRef, SecretValue};
use tempfile::TempDir;

use super::{CONFIG_FILE_NAME, ConfigMetadata, ConfigSources, GatewayConfig, load_config};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A temporary home and working directory, and the environment `load_config` sees.
struct Sandbox {
    home: TempDir,
    work: TempDir,
    env: HashMap<String, String>,
}

impl Sandbox {
    fn new() -> Self {
        Self::with_env(&[])
    }

    fn with_env(vars: &[(&str, &str)]) -> Self {
        Sandbox {
            home: TempDir::new().expect("temp home"),
            work: TempDir::new().expect("temp working dir"),
            env: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn set(&mut self, key: &str, value: &str) {
        self.env.insert(key.into(), value.into());
    }

    /// Writes `text` at `relative` (under the working directory), creating folders as needed.
    fn write(&self, relative: &str, text: &str) -> PathBuf {
        write_file(&self.work.path().join(relative), text)
    }

    /// Writes `./seal-gateway-config.yaml` in the working directory.
    fn write_config(&self, text: &str) -> PathBuf {
        self.write(CONFIG_FILE_NAME, text)
    }

    /// Writes `~/.aegis/seal-gateway-config.yaml`.
    fn write_home_config(&self, text: &str) -> PathBuf {
        write_file(
            &self.home.path().join(".aegis").join(CONFIG_FILE_NAME),
            text,
        )
    }

    fn load(&self) -> Result<GatewayConfig, String> {
        self.load_from(None, Some(self.home.path().to_path_buf()))
    }

    fn load_explicit(&self, path: &Path) -> Result<GatewayConfig, String> {
        self.load_from(Some(path), Some(self.home.path().to_path_buf()))
    }

    fn load_from(
        &self,
        explicit: Option<&Path>,
        home: Option<PathBuf>,
    ) -> Result<GatewayConfig, String> {
        let map = &self.env;
        let sources = ConfigSources {
            explicit,
            env: &|k| map.get(k).cloned(),
            home,
            working_dir: self.work.path().to_path_buf(),
        };
        load_config(&sources).map_err(|e| e.to_string())
    }

    /// Writes `./seal-gateway-config.yaml` and loads it; the error, if any, and the file's path.
    fn load_config_text(&self, text: &str) -> (PathBuf, Result<GatewayConfig, String>) {
        let path = self.write_config(text);
        (path, self.load())
    }
}

fn write_file(path: &Path, text: &str) -> PathBuf {
    fs::create_dir_all(path.parent().expect("a file has a parent")).expect("create folders");
    fs::write(path, text).expect("write file");
    path.to_path_buf()
}

/// A valid config file: the header, then `spec` (written at column 0, indented here).
fn config_yaml(spec: &str) -> String {
    let mut text = named_config("test-gateway", "");
    text.push_str("spec:\n");
    for line in spec.lines() {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// The header of a config file with `metadata.name: <name>`, and `spec` as given (may be empty).
fn named_config(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: seal.100monkeys.ai/v1\nkind: SealGatewayConfig\nmetadata:\n  name: {name}\n{spec}"
    )
}

/// Authentication off, so that a test need not provide a JWKS URI.
const AUTH_OFF: &str = "auth:\n  disabled: true";

fn literal(s: &str) -> Option<SecretValue> {
    Some(SecretValue::Literal(s.into()))
}

/// The settings of reference §11.1, spelled out (not taken from `Default`).
fn spec_defaults() -> GatewaySettings {
    GatewaySettings {
        network: NetworkSettings {
            bind_addr: "0.0.0.0:8089".into(),
            grpc_bind_addr: "0.0.0.0:50055".into(),
            max_body_bytes: 2 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            drain_seconds: 30,
        },
        database: DatabaseSettings {
            url: SecretValue::Literal("sqlite://gateway.db".into()),
        },
        auth: AuthSettings {
            disabled: false,
            operator_jwks_uri: String::new(),
            jwks_cache_ttl_secs: 300,
            operator_jwt_issuer: "aegis-keycloak".into(),
            operator_jwt_audience: "aegis-seal-gateway".into(),
            operator_role_claim: None,
            operator_accepted_roles: None,
            operator_read_only_roles: Vec::new(),
            seal_jwt_leeway_secs: 60,
            seal_jwt_eddsa_public_key_pem: String::new(),
            seal_jwt_public_key_pem: String::new(),
            seal_jwt_issuer: "aegis-orchestrator".into(),
            seal_jwt_audience: "aegis-agents".into(),
            seal_delegation_claim: None,
        },
        credentials: CredentialSettings {
            openbao_addr: None,
            openbao_token: None,
            openbao_kv_mount: "secret".into(),
            keycloak_token_exchange_url: None,
            keycloak_client_id: None,
            keycloak_client_secret: None,
            ..CredentialSettings::default()
        },
        cli: CliSettings {
            container_cli: None,
            semantic_judge_url: None,
            semantic_judge_token: None,
            semantic_judge_timeout_ms: 5000,
            orchestrator_url: None,
            nfs_server_host: "127.0.0.1".into(),
            nfs_port: 2049,
            nfs_mount_port: 20048,
        },
        ui: UiSettings { enabled: true },
        audit: AuditSettings {
            checkpoint_signing_key_pem: None,
            checkpoint_interval_secs: 300,
            retention_days: None,
            purge_interval_secs: 3600,
            purge_batch_size: 5000,
        },
        outbound: OutboundSettings {
            ca_file: None,
            client_certificate_file: None,
            client_key_file: None,
            proxy_url: None,
            no_proxy: Vec::new(),
            tenant_upstreams_public_only: false,
        },
        control: ControlSettings {
            max_objects_per_tenant: 1000,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Built-in defaults
// ---------------------------------------------------------------------------------------------

#[test]
fn without_any_file_the_builtin_defaults_are_used() {
    let sandbox = Sandbox::with_env(&[("SEAL_GATEWAY_AUTH_DISABLED", "true")]);
    let config = sandbox.load().expect("defaults load");

    assert_eq!(config.source, None);
    assert_eq!(
        config.metadata,
        ConfigMetadata {
            name: "aegis-seal-gateway".into(),
            version: None,
            labels: Default::default(),
        }
    );
    let mut expected = spec_defaults();
    expected.auth.disabled = true;
    assert_eq!(config.settings, expected);
    assert_eq!(config.bind_addr().to_string(), "0.0.0.0:8089");
    assert_eq!(config.database_url(), "sqlite://gateway.db");
    // The defaults of §11.1 one by one, so a failure names the setting.
    let s = &config.settings;
    assert_eq!(s.network.grpc_bind_addr, "0.0.0.0:50055");
    assert_eq!(s.auth.jwks_cache_ttl_secs, 300);
    assert_eq!(s.auth.operator_jwt_issuer, "aegis-keycloak");
    assert_eq!(s.auth.operator_jwt_audience, "aegis-seal-gateway");
    assert_eq!(s.auth.seal_jwt_issuer, "aegis-orchestrator");
    assert_eq!(s.auth.seal_jwt_audience, "aegis-agents");
    assert_eq!(s.credentials.openbao_kv_mount, "secret");
    assert_eq!(s.cli.nfs_server_host, "127.0.0.1");
    assert_eq!(s.cli.nfs_port, 2049);
    assert_eq!(s.cli.nfs_mount_port, 20048);
    assert!(s.ui.enabled);
}

#[test]
fn the_builtin_defaults_alone_fail_because_auth_needs_a_jwks_uri() {
    let err = Sandbox::new().load().unwrap_err();
    assert_eq!(
        err,
        "built-in defaults: spec.auth.operator_jwks_uri is required when auth is enabled"
    );
}

#[test]
fn the_builtin_defaults_with_a_jwks_uri_keep_auth_enabled() {
    let sandbox = Sandbox::with_env(&[("SEAL_GATEWAY_OPERATOR_JWKS_URI", "http://x")]);
    let config = sandbox.load().expect("defaults load");
    assert_eq!(config.source, None);
    let mut expected = spec_defaults();
    expected.auth.operator_jwks_uri = "http://x".into();
    assert_eq!(config.settings, expected);
}

#[test]
fn without_a_home_directory_the_builtin_defaults_are_still_used() {
    let sandbox = Sandbox::with_env(&[("SEAL_GATEWAY_AUTH_DISABLED", "true")]);
    let config = sandbox.load_from(None, None).expect("defaults load");
    assert_eq!(config.source, None);
}

// ---------------------------------------------------------------------------------------------
// Discovery order (reference §11.2)
// ---------------------------------------------------------------------------------------------

/// A sandbox with a config file in each of the four places, each with its own `metadata.name`.
/// Returns the explicit and the env-named paths (both outside the default places).
fn sandbox_with_every_candidate() -> (Sandbox, PathBuf, PathBuf) {
    let mut sandbox = Sandbox::new();
    let file = |name: &str| named_config(name, "spec:\n  auth: {disabled: true}\n");
    let explicit = sandbox.write("explicit/gateway.yaml", &file("from-explicit"));
    let named = sandbox.write("named/gateway.yaml", &file("from-env"));
    sandbox.write_config(&file("from-working-dir"));
    sandbox.write_home_config(&file("from-home"));
    sandbox.set("SEAL_GATEWAY_CONFIG_PATH", named.to_str().expect("utf-8"));
    (sandbox, explicit, named)
}

#[test]
fn an_explicit_config_path_comes_first() {
    let (sandbox, explicit, _) = sandbox_with_every_candidate();
    let config = sandbox.load_explicit(&explicit).expect("loads");
    assert_eq!(config.metadata.name, "from-explicit");
    assert_eq!(config.source, Some(explicit));
}

#[test]
fn seal_gateway_config_path_comes_second() {
    let (sandbox, _, named) = sandbox_with_every_candidate();
    let config = sandbox.load().expect("loads");
    assert_eq!(config.metadata.name, "from-env");
    assert_eq!(config.source, Some(named));
}

#[test]
fn the_working_directory_comes_third() {
    let (mut sandbox, _, _) = sandbox_with_every_candidate();
    sandbox.env.remove("SEAL_GATEWAY_CONFIG_PATH");
    let config = sandbox.load().expect("loads");
    assert_eq!(config.metadata.name, "from-working-dir");
    assert_eq!(
        config.source,
        Some(sandbox.work.path().join("seal-gateway-config.yaml"))
    );
}

#[test]
fn a_blank_seal_gateway_config_path_is_ignored() {
    let (mut sandbox, _, _) = sandbox_with_every_candidate();
    sandbox.set("SEAL_GATEWAY_CONFIG_PATH", "  ");
    let config = sandbox.load().expect("loads");
    assert_eq!(config.metadata.name, "from-working-dir");
}

#[test]
fn the_home_directory_comes_fourth() {
    let sandbox = Sandbox::new();
    let home_file = sandbox.write_home_config(&config_yaml(AUTH_OFF));
    let config = sandbox.load().expect("loads");
    assert_eq!(config.source, Some(home_file));
    assert_eq!(
        config.source,
        Some(sandbox.home.path().join(".aegis/seal-gateway-config.yaml"))
    );
}

#[test]
fn a_folder_named_like_the_config_file_is_not_a_config_file() {
    let sandbox = Sandbox::new();
    fs::create_dir(sandbox.work.path().join(CONFIG_FILE_NAME)).expect("mkdir");
    let home_file = sandbox.write_home_config(&config_yaml(AUTH_OFF));
    assert_eq!(sandbox.load().expect("loads").source, Some(home_file));
}

#[test]
fn an_explicit_path_that_does_not_exist_is_an_error() {
    let sandbox = Sandbox::new();
    // A file in the working directory must not be silently used instead.
    sandbox.write_config(&config_yaml(AUTH_OFF));
    let missing = sandbox.work.path().join("missing.yaml");
    let err = sandbox.load_explicit(&missing).unwrap_err();
    assert_eq!(
        err,
        format!(
            "{}: config file named by --config does not exist",
            missing.display()
        )
    );
}

#[test]
fn an_env_named_path_that_does_not_exist_is_an_error() {
    let mut sandbox = Sandbox::new();
    sandbox.write_config(&config_yaml(AUTH_OFF));
    sandbox.write_home_config(&config_yaml(AUTH_OFF));
    let missing = sandbox.work.path().join("nowhere/gateway.yaml");
    sandbox.set("SEAL_GATEWAY_CONFIG_PATH", missing.to_str().expect("utf-8"));
    let err = sandbox.load().unwrap_err();
    assert_eq!(
        err,
        format!(
            "{}: config file named by SEAL_GATEWAY_CONFIG_PATH does not exist",
            missing.display()
        )
    );
}

#[test]
fn an_explicit_path_wins_over_a_missing_env_named_path() {
    let mut sandbox = Sandbox::new();
    sandbox.set("SEAL_GATEWAY_CONFIG_PATH", "/nonexistent/seal-gateway.yaml");
    let explicit = sandbox.write("explicit.yaml", &config_yaml(AUTH_OFF));
    let config = sandbox.load_explicit(&explicit).expect("loads");
    assert_eq!(config.source, Some(explicit));
}

// ---------------------------------------------------------------------------------------------
// `env:` indirection (reference §11.3)
// ---------------------------------------------------------------------------------------------

/// Every field that supports `env:VAR`, each naming its own variable.
const ALL_ENV_REFERENCES: &str = "\
network:
  bind_addr: env:V_BIND
  grpc_bind_addr: env:V_GRPC
database:
  url: env:V_DB
auth:
  disabled: true
  operator_jwks_uri: env:V_JWKS
  operator_jwt_issuer: env:V_OP_ISS
  operator_jwt_audience: env:V_OP_AUD
  seal_jwt_public_key_pem: env:V_PEM
  seal_jwt_issuer: env:V_SEAL_ISS
  seal_jwt_audience: env:V_SEAL_AUD
credentials:
  openbao_addr: env:V_BAO_ADDR
  openbao_token: env:V_BAO_TOKEN
  openbao_kv_mount: env:V_KV
  keycloak_token_exchange_url: env:V_KC_URL
  keycloak_client_id: env:V_KC_ID
  keycloak_client_secret: env:V_KC_SECRET
cli:
  container_cli: env:V_CLI
  semantic_judge_url: env:V_JUDGE
  semantic_judge_token: env:V_JUDGE_TOKEN
  orchestrator_url: env:V_ORCH
  nfs_server_host: env:V_NFS
outbound:
  ca_file: env:V_CA
  client_certificate_file: env:V_CERT
  client_key_file: env:V_KEY
  proxy_url: env:V_PROXY";

#[test]
fn env_references_are_replaced_in_every_supported_field() {
    let pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n";
    let sandbox = Sandbox::with_env(&[
        ("V_BIND", "127.0.0.1:9000"),
        ("V_GRPC", "127.0.0.1:9001"),
        ("V_DB", "postgres://gw:pw@db/gw"),
        ("V_JWKS", "https://kc/jwks"),
        ("V_OP_ISS", "op-issuer"),
        ("V_OP_AUD", "op-audience"),
        ("V_PEM", pem),
        ("V_SEAL_ISS", "seal-issuer"),
        ("V_SEAL_AUD", "seal-audience"),
        ("V_BAO_ADDR", "http://bao:8200"),
        ("V_BAO_TOKEN", "s.token"),
        ("V_KV", "kv"),
        ("V_KC_URL", "https://kc/token"),
        ("V_KC_ID", "gateway"),
        ("V_KC_SECRET", "kc-secret"),
        ("V_CLI", "podman"),
        ("V_JUDGE", "http://judge"),
        ("V_JUDGE_TOKEN", "judge-token"),
        ("V_ORCH", "http://orchestrator"),
        ("V_NFS", "10.0.0.5"),
        ("V_CA", "/etc/ca.crt"),
        ("V_CERT", "/etc/tls.crt"),
        ("V_KEY", "/etc/tls.key"),
        ("V_PROXY", "http://gw:pw@proxy:3128"),
    ]);
    let (path, result) = sandbox.load_config_text(&config_yaml(ALL_ENV_REFERENCES));
    let config = result.expect("loads");
    assert_eq!(config.source, Some(path));
    assert_eq!(config.database_url(), "postgres://gw:pw@db/gw");
    assert_eq!(config.bind_addr().to_string(), "127.0.0.1:9000");
    let expected = GatewaySettings {
        network: NetworkSettings {
            bind_addr: "127.0.0.1:9000".into(),
            grpc_bind_addr: "127.0.0.1:9001".into(),
            ..spec_defaults().network
        },
        database: DatabaseSettings {
            url: SecretValue::Literal("postgres://gw:pw@db/gw".into()),
        },
        auth: AuthSettings {
            disabled: true,
            operator_jwks_uri: "https://kc/jwks".into(),
            jwks_cache_ttl_secs: 300,
            operator_jwt_issuer: "op-issuer".into(),
            operator_jwt_audience: "op-audience".into(),
            operator_role_claim: None,
            operator_accepted_roles: None,
            operator_read_only_roles: Vec::new(),
            seal_jwt_leeway_secs: 60,
            seal_jwt_eddsa_public_key_pem: String::new(),
            seal_jwt_public_key_pem: pem.into(),
            seal_jwt_issuer: "seal-issuer".into(),
            seal_jwt_audience: "seal-audience".into(),
            seal_delegation_claim: None,
        },
        credentials: CredentialSettings {
            openbao_addr: Some("http://bao:8200".into()),
            openbao_token: literal("s.token"),
            openbao_kv_mount: "kv".into(),
            keycloak_token_exchange_url: Some("https://kc/token".into()),
            keycloak_client_id: Some("gateway".into()),
            keycloak_client_secret: literal("kc-secret"),
            ..CredentialSettings::default()
        },
        cli: CliSettings {
            container_cli: Some("podman".into()),
            semantic_judge_url: Some("http://judge".into()),
            semantic_judge_token: literal("judge-token"),
            orchestrator_url: Some("http://orchestrator".into()),
            nfs_server_host: "10.0.0.5".into(),
            ..spec_defaults().cli
        },
        ui: UiSettings { enabled: true },
        audit: spec_defaults().audit,
        outbound: OutboundSettings {
            ca_file: Some("/etc/ca.crt".into()),
            client_certificate_file: Some("/etc/tls.crt".into()),
            client_key_file: Some("/etc/tls.key".into()),
            proxy_url: literal("http://gw:pw@proxy:3128"),
            no_proxy: Vec::new(),
            tenant_upstreams_public_only: false,
        },
        control: spec_defaults().control,
    };
    assert_eq!(config.settings, expected);
}

#[test]
fn env_references_to_unset_or_blank_variables_clear_the_field() {
    // network and database are left out: cleared, they would fail validation (tested below).
    let spec = ALL_ENV_REFERENCES
        .split_once("auth:")
        .map(|(_, rest)| format!("auth:{rest}"))
        .expect("has auth");
    for value in [None, Some(""), Some("   "), Some("\t\n")] {
        let mut sandbox = Sandbox::new();
        if let Some(value) = value {
            for var in [
                "V_JWKS",
                "V_OP_ISS",
                "V_OP_AUD",
                "V_PEM",
                "V_SEAL_ISS",
                "V_SEAL_AUD",
                "V_BAO_ADDR",
                "V_BAO_TOKEN",
                "V_KV",
                "V_KC_URL",
                "V_KC_ID",
                "V_KC_SECRET",
                "V_CLI",
                "V_JUDGE",
                "V_ORCH",
                "V_NFS",
            ] {
                sandbox.set(var, value);
            }
        }
        let (_, result) = sandbox.load_config_text(&config_yaml(&spec));
        let s = result
            .unwrap_or_else(|e| panic!("variables {value:?}: {e}"))
            .settings;
        // Required strings become empty ...
        assert_eq!(s.auth.operator_jwks_uri, "", "{value:?}");
        assert_eq!(s.auth.operator_jwt_issuer, "", "{value:?}");
        assert_eq!(s.auth.operator_jwt_audience, "", "{value:?}");
        assert_eq!(s.auth.seal_jwt_public_key_pem, "", "{value:?}");
        assert_eq!(s.auth.seal_jwt_issuer, "", "{value:?}");
        assert_eq!(s.auth.seal_jwt_audience, "", "{value:?}");
        assert_eq!(s.credentials.openbao_kv_mount, "", "{value:?}");
        assert_eq!(s.cli.nfs_server_host, "", "{value:?}");
        // ... optional strings and secrets become unset.
        assert_eq!(
            s.credentials,
            CredentialSettings {
                openbao_kv_mount: String::new(),
                ..spec_defaults().credentials
            },
            "{value:?}"
        );
        assert_eq!(s.cli.container_cli, None, "{value:?}");
        assert_eq!(s.cli.semantic_judge_url, None, "{value:?}");
        assert_eq!(s.cli.orchestrator_url, None, "{value:?}");
    }
}

#[test]
fn env_references_to_unset_listeners_or_database_fail_validation() {
    let cases = [
        (
            "network:\n  bind_addr: env:UNSET",
            "spec.network.bind_addr cannot be empty",
        ),
        (
            "network:\n  grpc_bind_addr: env:UNSET",
            "spec.network.grpc_bind_addr cannot be empty",
        ),
        (
            "database:\n  url: env:UNSET",
            "spec.database.url cannot be empty",
        ),
        (
            "database:\n  url: env:BLANK",
            "spec.database.url cannot be empty",
        ),
    ];
    for (spec, message) in cases {
        let sandbox = Sandbox::with_env(&[("BLANK", " ")]);
        let (path, result) = sandbox.load_config_text(&config_yaml(&format!("{AUTH_OFF}\n{spec}")));
        assert_eq!(
            result.unwrap_err(),
            format!("{}: {message}", path.display()),
            "{spec}"
        );
    }
}

#[test]
fn overrides_still_fill_fields_cleared_by_env_references() {
    let mut sandbox = Sandbox::new();
    for (var, value) in [
        ("SEAL_GATEWAY_BIND", "127.0.0.1:1"),
        ("SEAL_GATEWAY_GRPC_BIND", "127.0.0.1:2"),
        ("SEAL_GATEWAY_DB", "sqlite::memory:"),
        ("SEAL_GATEWAY_OPERATOR_JWKS_URI", "https://jwks"),
        ("SEAL_GATEWAY_OPERATOR_JWT_ISSUER", "iss"),
        ("SEAL_GATEWAY_OPERATOR_JWT_AUDIENCE", "aud"),
        ("SEAL_GATEWAY_SEAL_JWT_PUBLIC_KEY_PEM", "pem"),
        ("SEAL_GATEWAY_SEAL_JWT_ISSUER", "seal-iss"),
        ("SEAL_GATEWAY_SEAL_JWT_AUDIENCE", "seal-aud"),
        ("SEAL_GATEWAY_OPENBAO_ADDR", "http://bao"),
        ("SEAL_GATEWAY_OPENBAO_TOKEN", "token"),
        ("SEAL_GATEWAY_OPENBAO_KV_MOUNT", "kv"),
        ("SEAL_GATEWAY_KEYCLOAK_TOKEN_EXCHANGE_URL", "http://kc"),
        ("SEAL_GATEWAY_KEYCLOAK_CLIENT_ID", "client"),
        ("SEAL_GATEWAY_KEYCLOAK_CLIENT_SECRET", "secret"),
        ("SEAL_GATEWAY_CONTAINER_CLI", "docker"),
        ("SEAL_GATEWAY_SEMANTIC_JUDGE_URL", "http://judge"),
        ("SEAL_GATEWAY_ORCHESTRATOR_URL", "http://orch"),
        ("SEAL_GATEWAY_NFS_HOST", "nfs"),
    ] {
        sandbox.set(var, value);
    }
    // Every V_* variable is unset.
    let (_, result) = sandbox.load_config_text(&config_yaml(ALL_ENV_REFERENCES));
    let config = result.expect("loads");
    let s = &config.settings;
    assert_eq!(s.network.bind_addr, "127.0.0.1:1");
    assert_eq!(s.network.grpc_bind_addr, "127.0.0.1:2");
    assert_eq!(config.database_url(), "sqlite::memory:");
    assert_eq!(s.auth.operator_jwks_uri, "https://jwks");
    assert_eq!(s.auth.operator_jwt_issuer, "iss");
    assert_eq!(s.auth.operator_jwt_audience, "aud");
    assert_eq!(s.auth.seal_jwt_public_key_pem, "pem");
    assert_eq!(s.auth.seal_jwt_issuer, "seal-iss");
    assert_eq!(s.auth.seal_jwt_audience, "seal-aud");
    assert_eq!(
        s.credentials,
        CredentialSettings {
            openbao_addr: Some("http://bao".into()),
            openbao_token: literal("token"),
            openbao_kv_mount: "kv".into(),
            keycloak_token_exchange_url: Some("http://kc".into()),
            keycloak_client_id: Some("client".into()),
            keycloak_client_secret: literal("secret"),
            ..CredentialSettings::default()
        }
    );
    assert_eq!(s.cli.container_cli.as_deref(), Some("docker"));
    assert_eq!(s.cli.semantic_judge_url.as_deref(), Some("http://judge"));
    assert_eq!(s.cli.orchestrator_url.as_deref(), Some("http://orch"));
    assert_eq!(s.cli.nfs_server_host, "nfs");
}

#[test]
fn an_env_reference_is_resolved_before_its_override_applies() {
    // The override wins over a resolved reference too: overrides run last.
    let sandbox = Sandbox::with_env(&[
        ("MY_ADDR", "http://from-reference"),
        ("SEAL_GATEWAY_OPENBAO_ADDR", "http://from-override"),
    ]);
    let (_, result) = sandbox.load_config_text(&config_yaml(&format!(
        "{AUTH_OFF}\ncredentials:\n  openbao_addr: env:MY_ADDR"
    )));
    assert_eq!(
        result
            .expect("loads")
            .settings
            .credentials
            .openbao_addr
            .as_deref(),
        Some("http://from-override")
    );
}

#[test]
fn fields_without_env_support_keep_env_text_literally() {
    let sandbox = Sandbox::with_env(&[("ROLE", "role"), ("NAME", "name")]);
    let text = "\
apiVersion: seal.100monkeys.ai/v1
kind: SealGatewayConfig
metadata:
  name: env:NAME
  version: env:NAME
spec:
  auth:
    disabled: true
    operator_role_claim: env:ROLE
";
    let (_, result) = sandbox.load_config_text(text);
    let config = result.expect("loads");
    assert_eq!(config.metadata.name, "env:NAME");
    assert_eq!(config.metadata.version.as_deref(), Some("env:NAME"));
    assert_eq!(
        config.settings.auth.operator_role_claim.as_deref(),
        Some("env:ROLE")
    );
}

#[test]
fn empty_optional_values_in_the_file_mean_unset() {
    let sandbox = Sandbox::new();
    let spec = format!(
        "{AUTH_OFF}
credentials:
  openbao_addr: ''
  openbao_token: ' '
  keycloak_token_exchange_url: ''
  keycloak_client_id: ''
  keycloak_client_secret: ''
cli:
  container_cli: ''
  semantic_judge_url: '  '
  orchestrator_url: ''"
    );
    let (_, result) = sandbox.load_config_text(&config_yaml(&spec));
    let s = result.expect("loads").settings;
    assert_eq!(s.credentials, spec_defaults().credentials);
    assert_eq!(s.cli, spec_defaults().cli);
}

// ---------------------------------------------------------------------------------------------
// `SEAL_GATEWAY_*` overrides (reference §11.4)
// ---------------------------------------------------------------------------------------------

/// A file that sets every overridable setting to a value no override test uses.
const FILE_VALUES: &str = "\
network:
  bind_addr: 10.0.0.1:1000
  grpc_bind_addr: 10.0.0.1:2000
database:
  url: postgresql://file/db
auth:
  disabled: true
  operator_jwks_uri: https://file/jwks
  jwks_cache_ttl_secs: 111
  operator_jwt_issuer: file-op-iss
  operator_jwt_audience: file-op-aud
  operator_role_claim: file_role
  seal_jwt_public_key_pem: file-pem
  seal_jwt_issuer: file-seal-iss
  seal_jwt_audience: file-seal-aud
credentials:
  openbao_addr: http://file-bao
  openbao_token: file-token
  openbao_kv_mount: file-kv
  keycloak_token_exchange_url: http://file-kc
  keycloak_client_id: file-client
  keycloak_client_secret: file-secret
cli:
  container_cli: file-cli
  semantic_judge_url: http://file-judge
  semantic_judge_token: file-judge-token
  semantic_judge_timeout_ms: 7000
  orchestrator_url: http://file-orch
  nfs_server_host: file-nfs
  nfs_port: 1111
  nfs_mount_port: 2222
ui:
  enabled: false
outbound:
  ca_file: /file/ca.crt
  client_certificate_file: /file/tls.crt
  client_key_file: /file/tls.key
  proxy_url: http://file-proxy:3128
  no_proxy: [.svc, 10.0.0.0/8]";

fn file_values() -> GatewaySettings {
    GatewaySettings {
        network: NetworkSettings {
            bind_addr: "10.0.0.1:1000".into(),
            grpc_bind_addr: "10.0.0.1:2000".into(),
            ..spec_defaults().network
        },
        database: DatabaseSettings {
            url: SecretValue::Literal("postgresql://file/db".into()),
        },
        auth: AuthSettings {
            disabled: true,
            operator_jwks_uri: "https://file/jwks".into(),
            jwks_cache_ttl_secs: 111,
            operator_jwt_issuer: "file-op-iss".into(),
            operator_jwt_audience: "file-op-aud".into(),
            operator_role_claim: Some("file_role".into()),
            operator_accepted_roles: None,
            operator_read_only_roles: Vec::new(),
            seal_jwt_leeway_secs: 60,
            seal_jwt_eddsa_public_key_pem: String::new(),
            seal_jwt_public_key_pem: "file-pem".into(),
            seal_jwt_issuer: "file-seal-iss".into(),
            seal_jwt_audience: "file-seal-aud".into(),
            seal_delegation_claim: None,
        },
        credentials: CredentialSettings {
            openbao_addr: Some("http://file-bao".into()),
            openbao_token: literal("file-token"),
            openbao_kv_mount: "file-kv".into(),
            keycloak_token_exchange_url: Some("http://file-kc".into()),
            keycloak_client_id: Some("file-client".into()),
            keycloak_client_secret: literal("file-secret"),
            ..CredentialSettings::default()
        },
        cli: CliSettings {
            container_cli: Some("file-cli".into()),
            semantic_judge_url: Some("http://file-judge".into()),
            semantic_judge_token: literal("file-judge-token"),
            semantic_judge_timeout_ms: 7000,
            orchestrator_url: Some("http://file-orch".into()),
            nfs_server_host: "file-nfs".into(),
            nfs_port: 1111,
            nfs_mount_port: 2222,
        },
        ui: UiSettings { enabled: false },
        audit: spec_defaults().audit,
        outbound: OutboundSettings {
            ca_file: Some("/file/ca.crt".into()),
            client_certificate_file: Some("/file/tls.crt".into()),
            client_key_file: Some("/file/tls.key".into()),
            proxy_url: literal("http://file-proxy:3128"),
            no_proxy: vec![".svc".into(), "10.0.0.0/8".into()],
            tenant_upstreams_public_only: false,
        },
        control: spec_defaults().control,
    }
}

/// Loads [`FILE_VALUES`] with the given environment.
fn load_file_values(vars: &[(&str, &str)]) -> Result<GatewayConfig, String> {
    Sandbox::with_env(vars)
        .load_config_text(&config_yaml(FILE_VALUES))
        .1
}

#[test]
fn the_file_values_load_as_written() {
    let config = load_file_values(&[]).expect("loads");
    assert_eq!(config.settings, file_values());
    assert_eq!(config.database_url(), "postgresql://file/db");
}

#[test]
fn every_override_replaces_the_file_value() {
    let config = load_file_values(&[
        ("SEAL_GATEWAY_BIND", "127.0.0.1:8001"),
        ("SEAL_GATEWAY_GRPC_BIND", "127.0.0.1:8002"),
        ("SEAL_GATEWAY_DB", "postgres://env/db"),
        ("SEAL_GATEWAY_AUTH_DISABLED", "false"),
        ("SEAL_GATEWAY_OPERATOR_JWKS_URI", "https://env/jwks"),
        ("SEAL_GATEWAY_JWKS_CACHE_TTL_SECS", "60"),
        ("SEAL_GATEWAY_OPERATOR_JWT_ISSUER", "env-op-iss"),
        ("SEAL_GATEWAY_OPERATOR_JWT_AUDIENCE", "env-op-aud"),
        ("SEAL_GATEWAY_OPERATOR_ROLE_CLAIM", "env_role"),
        (
            "SEAL_GATEWAY_SEAL_JWT_PUBLIC_KEY_PEM",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
        ),
        ("SEAL_GATEWAY_SEAL_JWT_ISSUER", "env-seal-iss"),
        ("SEAL_GATEWAY_SEAL_JWT_AUDIENCE", "env-seal-aud"),
        ("SEAL_GATEWAY_OPENBAO_ADDR", "http://env-bao"),
        ("SEAL_GATEWAY_OPENBAO_TOKEN", "env-token"),
        ("SEAL_GATEWAY_OPENBAO_KV_MOUNT", "env-kv"),
        ("SEAL_GATEWAY_KEYCLOAK_TOKEN_EXCHANGE_URL", "http://env-kc"),
        ("SEAL_GATEWAY_KEYCLOAK_CLIENT_ID", "env-client"),
        ("SEAL_GATEWAY_KEYCLOAK_CLIENT_SECRET", "env-secret"),
        ("SEAL_GATEWAY_CONTAINER_CLI", "/usr/bin/podman"),
        ("SEAL_GATEWAY_SEMANTIC_JUDGE_URL", "http://env-judge"),
        ("SEAL_GATEWAY_SEMANTIC_JUDGE_TOKEN", "env-judge-token"),
        ("SEAL_GATEWAY_SEMANTIC_JUDGE_TIMEOUT_MS", "9000"),
        ("SEAL_GATEWAY_ORCHESTRATOR_URL", "http://env-orch"),
        ("SEAL_GATEWAY_OUTBOUND_CA_FILE", "/env/ca.crt"),
        (
            "SEAL_GATEWAY_OUTBOUND_CLIENT_CERTIFICATE_FILE",
            "/env/tls.crt",
        ),
        ("SEAL_GATEWAY_OUTBOUND_CLIENT_KEY_FILE", "/env/tls.key"),
        ("SEAL_GATEWAY_OUTBOUND_PROXY_URL", "https://env-proxy:3129"),
        (
            "SEAL_GATEWAY_OUTBOUND_NO_PROXY",
            " .cluster.local, 192.168.0.0/16 ,",
        ),
        ("SEAL_GATEWAY_OUTBOUND_TENANT_UPSTREAMS_PUBLIC_ONLY", "True"),
        ("SEAL_GATEWAY_NFS_HOST", "env-nfs"),
        ("SEAL_GATEWAY_NFS_PORT", "3049"),
        ("SEAL_GATEWAY_NFS_MOUNT_PORT", "30048"),
        ("SEAL_GATEWAY_UI_ENABLED", "true"),
    ])
    .expect("loads");
    let expected = GatewaySettings {
        network: NetworkSettings {
            bind_addr: "127.0.0.1:8001".into(),
            grpc_bind_addr: "127.0.0.1:8002".into(),
            ..spec_defaults().network
        },
        database: DatabaseSettings {
            url: SecretValue::Literal("postgres://env/db".into()),
        },
        auth: AuthSettings {
            disabled: false,
            operator_jwks_uri: "https://env/jwks".into(),
            jwks_cache_ttl_secs: 60,
            operator_jwt_issuer: "env-op-iss".into(),
            operator_jwt_audience: "env-op-aud".into(),
            operator_role_claim: Some("env_role".into()),
            operator_accepted_roles: None,
            operator_read_only_roles: Vec::new(),
            seal_jwt_leeway_secs: 60,
            seal_jwt_eddsa_public_key_pem: String::new(),
            seal_jwt_public_key_pem: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"
                .into(),
            seal_jwt_issuer: "env-seal-iss".into(),
            seal_jwt_audience: "env-seal-aud".into(),
            seal_delegation_claim: None,
        },
        credentials: CredentialSettings {
            openbao_addr: Some("http://env-bao".into()),
            openbao_token: literal("env-token"),
            openbao_kv_mount: "env-kv".into(),
            keycloak_token_exchange_url: Some("http://env-kc".into()),
            keycloak_client_id: Some("env-client".into()),
            keycloak_client_secret: literal("env-secret"),
            ..CredentialSettings::default()
        },
        cli: CliSettings {
            container_cli: Some("/usr/bin/podman".into()),
            semantic_judge_url: Some("http://env-judge".into()),
            semantic_judge_token: literal("env-judge-token"),
            semantic_judge_timeout_ms: 9000,
            orchestrator_url: Some("http://env-orch".into()),
            nfs_server_host: "env-nfs".into(),
            nfs_port: 3049,
            nfs_mount_port: 30048,
        },
        ui: UiSettings { enabled: true },
        audit: spec_defaults().audit,
        outbound: OutboundSettings {
            ca_file: Some("/env/ca.crt".into()),
            client_certificate_file: Some("/env/tls.crt".into()),
            client_key_file: Some("/env/tls.key".into()),
            proxy_url: literal("https://env-proxy:3129"),
            no_proxy: vec![".cluster.local".into(), "192.168.0.0/16".into()],
            tenant_upstreams_public_only: true,
        },
        control: spec_defaults().control,
    };
    assert_eq!(config.settings, expected);
    assert_eq!(config.database_url(), "postgres://env/db");
    assert_eq!(config.bind_addr().to_string(), "127.0.0.1:8001");
}

#[test]
fn blank_overrides_do_not_replace_the_file_value() {
    for blank in ["", "  ", "\t"] {
        let vars: Vec<(&str, &str)> = [
            "SEAL_GATEWAY_BIND",
            "SEAL_GATEWAY_GRPC_BIND",
            "SEAL_GATEWAY_DB",
            "SEAL_GATEWAY_JWKS_CACHE_TTL_SECS",
            "SEAL_GATEWAY_OPERATOR_JWT_ISSUER",
            "SEAL_GATEWAY_OPERATOR_JWT_AUDIENCE",
            "SEAL_GATEWAY_OPERATOR_ROLE_CLAIM",
            "SEAL_GATEWAY_SEAL_JWT_ISSUER",
            "SEAL_GATEWAY_SEAL_JWT_AUDIENCE",
            "SEAL_GATEWAY_OPENBAO_ADDR",
            "SEAL_GATEWAY_OPENBAO_TOKEN",
            "SEAL_GATEWAY_OPENBAO_KV_MOUNT",
            "SEAL_GATEWAY_KEYCLOAK_TOKEN_EXCHANGE_URL",
            "SEAL_GATEWAY_KEYCLOAK_CLIENT_ID",
            "SEAL_GATEWAY_KEYCLOAK_CLIENT_SECRET",
            "SEAL_GATEWAY_CONTAINER_CLI",
            "SEAL_GATEWAY_SEMANTIC_JUDGE_URL",
            "SEAL_GATEWAY_ORCHESTRATOR_URL",
            "SEAL_GATEWAY_NFS_HOST",
            "SEAL_GATEWAY_NFS_PORT",
            "SEAL_GATEWAY_NFS_MOUNT_PORT",
        ]
        .into_iter()
        .map(|k| (k, blank))
        .collect();
        let config = load_file_values(&vars).unwrap_or_else(|e| panic!("{blank:?}: {e}"));
        assert_eq!(config.settings, file_values(), "blank value {blank:?}");
    }
}

#[test]
fn blank_overrides_do_not_replace_the_defaults() {
    let vars = [
        ("SEAL_GATEWAY_AUTH_DISABLED", "true"),
        ("SEAL_GATEWAY_BIND", " "),
        ("SEAL_GATEWAY_DB", ""),
        ("SEAL_GATEWAY_OPENBAO_KV_MOUNT", " "),
        ("SEAL_GATEWAY_OPENBAO_ADDR", ""),
        ("SEAL_GATEWAY_NFS_HOST", ""),
    ];
    let config = Sandbox::with_env(&vars).load().expect("loads");
    let mut expected = spec_defaults();
    expected.auth.disabled = true;
    assert_eq!(config.settings, expected);
}

#[test]
fn auth_disabled_is_true_only_for_true_in_any_case() {
    for (value, disabled) in [
        ("true", true),
        ("TRUE", true),
        ("True", true),
        ("false", false),
        ("1", false),
        ("yes", false),
        ("", false),
    ] {
        let sandbox = Sandbox::with_env(&[
            ("SEAL_GATEWAY_AUTH_DISABLED", value),
            ("SEAL_GATEWAY_OPERATOR_JWKS_URI", "http://x"),
        ]);
        // From the built-in defaults (auth enabled) ...
        let loaded = sandbox.load().expect("loads");
        assert_eq!(loaded.settings.auth.disabled, disabled, "{value:?}");
        // ... and from a file that disables auth: any value but "true" turns it back on.
        sandbox.write_config(&config_yaml(AUTH_OFF));
        let loaded = sandbox.load().expect("loads");
        assert_eq!(
            loaded.settings.auth.disabled, disabled,
            "{value:?} over file"
        );
    }
}

#[test]
fn auth_disabled_set_to_anything_but_true_requires_a_jwks_uri() {
    let sandbox = Sandbox::with_env(&[("SEAL_GATEWAY_AUTH_DISABLED", "")]);
    let (path, result) = sandbox.load_config_text(&config_yaml(AUTH_OFF));
    assert_eq!(
        result.unwrap_err(),
        format!(
            "{}: spec.auth.operator_jwks_uri is required when auth is enabled",
            path.display()
        )
    );
}

#[test]
fn operator_jwks_uri_and_seal_public_key_are_overridden_even_when_empty() {
    let config = load_file_values(&[
        ("SEAL_GATEWAY_OPERATOR_JWKS_URI", ""),
        ("SEAL_GATEWAY_SEAL_JWT_PUBLIC_KEY_PEM", ""),
    ])
    .expect("loads (auth is disabled in the file)");
    assert_eq!(config.settings.auth.operator_jwks_uri, "");
    assert_eq!(config.settings.auth.seal_jwt_public_key_pem, "");

    // With auth enabled, an empty JWKS override is a validation error.
    let sandbox = Sandbox::with_env(&[("SEAL_GATEWAY_OPERATOR_JWKS_URI", "")]);
    let (path, result) = sandbox.load_config_text(&config_yaml(
        "auth:\n  disabled: false\n  operator_jwks_uri: https://file/jwks",
    ));
    assert_eq!(
        result.unwrap_err(),
        format!(
            "{}: spec.auth.operator_jwks_uri is required when auth is enabled",
            path.display()
        )
    );
}

#[test]
fn numeric_overrides_that_do_not_parse_are_ignored() {
    for bad in ["abc", "-1", "1.5", "99999999999999999999999", "0x10"] {
        let config = load_file_values(&[("SEAL_GATEWAY_JWKS_CACHE_TTL_SECS", bad)]).expect("loads");
        assert_eq!(config.settings.auth.jwks_cache_ttl_secs, 111, "{bad:?}");
    }
    for bad in ["abc", "-1", "65536", "70000"] {
        let config = load_file_values(&[
            ("SEAL_GATEWAY_NFS_PORT", bad),
            ("SEAL_GATEWAY_NFS_MOUNT_PORT", bad),
        ])
        .expect("loads");
        assert_eq!(config.settings.cli.nfs_port, 1111, "{bad:?}");
        assert_eq!(config.settings.cli.nfs_mount_port, 2222, "{bad:?}");
    }
    // The bounds themselves are valid.
    let config = load_file_values(&[
        ("SEAL_GATEWAY_JWKS_CACHE_TTL_SECS", "0"),
        ("SEAL_GATEWAY_NFS_PORT", "65535"),
    ])
    .expect("loads");
    assert_eq!(config.settings.auth.jwks_cache_ttl_secs, 0);
    assert_eq!(config.settings.cli.nfs_port, 65535);
}

#[test]
fn ui_enabled_is_false_only_for_false_in_any_case() {
    for (value, enabled) in [
        ("false", false),
        ("FALSE", false),
        ("False", false),
        ("true", true),
        ("0", true),
        ("no", true),
        ("", true),
    ] {
        // The file disables the UI: any value but "false" turns it back on.
        let config = load_file_values(&[("SEAL_GATEWAY_UI_ENABLED", value)]).expect("loads");
        assert_eq!(config.settings.ui.enabled, enabled, "{value:?}");
    }
}

#[test]
fn role_claim_override_sets_an_unset_claim() {
    let sandbox = Sandbox::with_env(&[
        ("SEAL_GATEWAY_AUTH_DISABLED", "true"),
        ("SEAL_GATEWAY_OPERATOR_ROLE_CLAIM", "groups"),
    ]);
    let config = sandbox.load().expect("loads");
    assert_eq!(
        config.settings.auth.operator_role_claim.as_deref(),
        Some("groups")
    );
}

#[test]
fn accepted_roles_come_from_a_comma_separated_override() {
    let sandbox = Sandbox::with_env(&[
        ("SEAL_GATEWAY_AUTH_DISABLED", "true"),
        (
            "SEAL_GATEWAY_OPERATOR_ACCEPTED_ROLES",
            " gateway-ops, platform-admin ",
        ),
    ]);
    let config = sandbox.load().expect("loads");
    assert_eq!(
        config.settings.auth.operator_accepted_roles,
        Some(vec!["gateway-ops".to_owned(), "platform-admin".to_owned()])
    );
}

#[test]
fn accepted_roles_cannot_be_empty_or_hold_a_blank() {
    for roles in ["[]", "[ops, \" \"]"] {
        let text = format!(
            "apiVersion: seal.100monkeys.ai/v1\nkind: SealGatewayConfig\nmetadata: {{name: r}}\n\
             spec: {{auth: {{disabled: true, operator_accepted_roles: {roles}}}}}\n"
        );
        assert_eq!(
            config_error(&text),
            "spec.auth.operator_accepted_roles: list at least one role, none of them blank",
            "{roles}"
        );
    }
    // The override cannot empty the list either: a blank variable is no override.
    let sandbox = Sandbox::with_env(&[
        ("SEAL_GATEWAY_AUTH_DISABLED", "true"),
        ("SEAL_GATEWAY_OPERATOR_ACCEPTED_ROLES", "ops,,admins"),
    ]);
    assert!(
        sandbox
            .load()
            .unwrap_err()
            .contains("operator_accepted_roles")
    );
}

#[test]
fn the_delegation_claim_comes_from_the_file_or_its_override_and_is_not_blank() {
    let sandbox = Sandbox::with_env(&[
        ("SEAL_GATEWAY_AUTH_DISABLED", "true"),
        ("SEAL_GATEWAY_SEAL_DELEGATION_CLAIM", "delegable_tenants"),
    ]);
    let config = sandbox.load().expect("loads");
    assert_eq!(
        config.settings.auth.seal_delegation_claim.as_deref(),
        Some("delegable_tenants")
    );
    assert_eq!(
        config_error(
            "apiVersion: seal.100monkeys.ai/v1\nkind: SealGatewayConfig\nmetadata: {name: r}\n\
             spec: {auth: {disabled: true, seal_delegation_claim: \" \"}}\n"
        ),
        "spec.auth.seal_delegation_claim: name the claim, or leave it out for no grant check"
    );
}

#[test]
fn read_only_roles_come_from_the_file_or_a_comma_separated_override_and_may_not_write() {
    let sandbox = Sandbox::with_env(&[
        ("SEAL_GATEWAY_AUTH_DISABLED", "true"),
        (
            "SEAL_GATEWAY_OPERATOR_READ_ONLY_ROLES",
            " aegis:auditor, dashboards ",
        ),
    ]);
    let config = sandbox.load().expect("loads");
    assert_eq!(
        config.settings.auth.operator_read_only_roles,
        ["aegis:auditor", "dashboards"]
    );

    let file = |auth: &str| {
        format!(
            "apiVersion: seal.100monkeys.ai/v1\nkind: SealGatewayConfig\nmetadata: {{name: r}}\n\
             spec: {{auth: {{disabled: true, {auth}}}}}\n"
        )
    };
    assert_eq!(
        config_error(&file("operator_read_only_roles: [auditor, \" \"]")),
        "spec.auth.operator_read_only_roles: a role is blank"
    );
    // A role that may write cannot also be read-only: the defaults' and a configured list's.
    assert_eq!(
        config_error(&file("operator_read_only_roles: [auditor, operator]")),
        "spec.auth.operator_read_only_roles: \"operator\" is also an accepted role \
         (operator_accepted_roles), which may write"
    );
    assert_eq!(
        config_error(&file(
            "operator_accepted_roles: [ops], operator_read_only_roles: [\" ops\"]"
        )),
        "spec.auth.operator_read_only_roles: \" ops\" is also an accepted role \
         (operator_accepted_roles), which may write"
    );
    let sandbox = Sandbox::new();
    let (_, result) = sandbox.load_config_text(&file(
        "operator_accepted_roles: [ops], operator_read_only_roles: [operator]",
    ));
    assert_eq!(
        result
            .expect("loads")
            .settings
            .auth
            .operator_read_only_roles,
        ["operator"]
    );
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation (reference §11.1)
// ---------------------------------------------------------------------------------------------

/// Loads `text` as `./seal-gateway-config.yaml` and returns the error with the path prefix removed.
fn config_error(text: &str) -> String {
    let sandbox = Sandbox::new();
    let (path, result) = sandbox.load_config_text(text);
    let err = result.unwrap_err();
    let prefix = format!("{}: ", path.display());
    assert!(!err.contains('\n'), "not one line: {err:?}");
    err.strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{err:?} does not start with {prefix:?}"))
        .to_owned()
}

#[test]
fn a_complete_file_loads() {
    let text = "\
apiVersion: seal.100monkeys.ai/v1
kind: SealGatewayConfig
metadata:
  name: complete
  version: \"1.0.0\"
  labels:
    team: platform
spec:
  network:
    bind_addr: \"[::1]:8089\"
    max_body_bytes: 1
    max_header_bytes: 8192
    drain_seconds: 600
  auth:
    operator_jwks_uri: https://kc/certs
";
    let sandbox = Sandbox::new();
    let (path, result) = sandbox.load_config_text(text);
    let config = result.expect("loads");
    assert_eq!(config.source, Some(path));
    assert_eq!(config.metadata.name, "complete");
    assert_eq!(config.metadata.version.as_deref(), Some("1.0.0"));
    assert_eq!(
        config.metadata.labels.get("team").map(String::as_str),
        Some("platform")
    );
    assert_eq!(config.bind_addr().to_string(), "[::1]:8089");
    assert_eq!(config.settings.network.max_body_bytes, 1);
    assert_eq!(config.settings.network.max_header_bytes, 8192);
    assert_eq!(config.settings.network.drain_seconds, 600);
    assert!(!config.settings.auth.disabled);
    // Everything not written keeps its default.
    assert_eq!(config.settings.cli, spec_defaults().cli);
    assert_eq!(config.database_url(), "sqlite://gateway.db");
}

#[test]
fn a_file_without_spec_uses_the_default_settings() {
    let sandbox = Sandbox::with_env(&[("SEAL_GATEWAY_OPERATOR_JWKS_URI", "http://x")]);
    let (_, result) = sandbox.load_config_text(&named_config("bare", ""));
    let config = result.expect("loads");
    assert_eq!(config.metadata.name, "bare");
    let mut expected = spec_defaults();
    expected.auth.operator_jwks_uri = "http://x".into();
    assert_eq!(config.settings, expected);
}

#[test]
fn wrong_api_version_is_rejected() {
    let text = config_yaml(AUTH_OFF).replace("seal.100monkeys.ai/v1", "x");
    assert_eq!(
        config_error(&text),
        "Invalid apiVersion: 'x'. Must be 'seal.100monkeys.ai/v1'"
    );
    let text = config_yaml(AUTH_OFF).replace("seal.100monkeys.ai/v1", "smcp.100monkeys.ai/v1");
    assert_eq!(
        config_error(&text),
        "Invalid apiVersion: 'smcp.100monkeys.ai/v1'. Must be 'seal.100monkeys.ai/v1'"
    );
    let text = config_yaml(AUTH_OFF).replace("apiVersion: seal.100monkeys.ai/v1\n", "");
    assert_eq!(
        config_error(&text),
        "Invalid apiVersion: ''. Must be 'seal.100monkeys.ai/v1'"
    );
}

#[test]
fn wrong_kind_is_rejected() {
    let text = config_yaml(AUTH_OFF).replace("kind: SealGatewayConfig", "kind: SealGateway");
    assert_eq!(
        config_error(&text),
        "Invalid kind: 'SealGateway'. Must be 'SealGatewayConfig'"
    );
    let text = config_yaml(AUTH_OFF).replace("kind: SealGatewayConfig", "kind: SmcpGatewayConfig");
    assert_eq!(
        config_error(&text),
        "Invalid kind: 'SmcpGatewayConfig'. Must be 'SealGatewayConfig'"
    );
}

#[test]
fn an_empty_metadata_name_is_rejected() {
    for name in ["''", "'   '"] {
        let text = config_yaml(AUTH_OFF).replace("name: test-gateway", &format!("name: {name}"));
        assert_eq!(
            config_error(&text),
            "metadata.name cannot be empty",
            "{name}"
        );
    }
    let text = config_yaml(AUTH_OFF).replace("metadata:\n  name: test-gateway\n", "");
    assert_eq!(config_error(&text), "metadata.name cannot be empty");
}

#[test]
fn listener_addresses_must_be_socket_addresses() {
    let cases = [
        ("bind_addr: ''", "spec.network.bind_addr cannot be empty"),
        ("bind_addr: '  '", "spec.network.bind_addr cannot be empty"),
        (
            "bind_addr: 0.0.0.0",
            "spec.network.bind_addr: \"0.0.0.0\" is not a socket address (e.g. 0.0.0.0:8089)",
        ),
        (
            "bind_addr: '0.0.0.0:99999'",
            "spec.network.bind_addr: \"0.0.0.0:99999\" is not a socket address (e.g. 0.0.0.0:8089)",
        ),
        (
            "grpc_bind_addr: ''",
            "spec.network.grpc_bind_addr cannot be empty",
        ),
        (
            "grpc_bind_addr: 'grpc:50055'",
            "spec.network.grpc_bind_addr: \"grpc:50055\" is not a socket address (e.g. 0.0.0.0:8089)",
        ),
    ];
    for (network, message) in cases {
        let text = config_yaml(&format!("{AUTH_OFF}\nnetwork:\n  {network}"));
        assert_eq!(config_error(&text), message, "{network}");
    }
}

#[test]
fn blank_listener_overrides_do_not_hide_a_bad_file_value() {
    let sandbox = Sandbox::with_env(&[("SEAL_GATEWAY_BIND", " ")]);
    let (path, result) = sandbox.load_config_text(&config_yaml(&format!(
        "{AUTH_OFF}\nnetwork:\n  bind_addr: nope"
    )));
    assert_eq!(
        result.unwrap_err(),
        format!(
            "{}: spec.network.bind_addr: \"nope\" is not a socket address (e.g. 0.0.0.0:8089)",
            path.display()
        )
    );
}

#[test]
fn database_url_must_have_a_known_scheme() {
    for url in ["mysql://db/gw", "gateway.db", "postgres:db", "http://db"] {
        let text = config_yaml(&format!("{AUTH_OFF}\ndatabase:\n  url: '{url}'"));
        assert_eq!(
            config_error(&text),
            "spec.database.url: must start with sqlite:, postgres:// or postgresql://",
            "{url}"
        );
    }
    for url in [
        "sqlite::memory:",
        "sqlite:gateway.db",
        "sqlite://gateway.db",
        "postgres://u:p@h/db",
        "postgresql://h/db",
    ] {
        let sandbox = Sandbox::new();
        let (_, result) = sandbox.load_config_text(&config_yaml(&format!(
            "{AUTH_OFF}\ndatabase:\n  url: '{url}'"
        )));
        assert_eq!(result.expect(url).database_url(), url);
    }
    let text = config_yaml(&format!("{AUTH_OFF}\ndatabase:\n  url: ''"));
    assert_eq!(config_error(&text), "spec.database.url cannot be empty");
}

#[test]
fn an_invalid_database_override_is_rejected_too() {
    let sandbox = Sandbox::with_env(&[
        ("SEAL_GATEWAY_AUTH_DISABLED", "true"),
        ("SEAL_GATEWAY_DB", "mysql://db"),
    ]);
    assert_eq!(
        sandbox.load().unwrap_err(),
        "built-in defaults: spec.database.url: must start with sqlite:, postgres:// or postgresql://"
    );
}

#[test]
fn secret_key_refs_are_refused_in_a_config_file() {
    let reference = "{secret_key_ref: {name: gw, key: value}}";
    for (spec, field) in [
        (
            format!("database:\n  url: {reference}"),
            "spec.database.url",
        ),
        (
            format!("credentials:\n  openbao_token: {reference}"),
            "spec.credentials.openbao_token",
        ),
        (
            format!("credentials:\n  keycloak_client_secret: {reference}"),
            "spec.credentials.keycloak_client_secret",
        ),
        (
            format!("cli:\n  semantic_judge_token: {reference}"),
            "spec.cli.semantic_judge_token",
        ),
        (
            format!("outbound:\n  proxy_url: {reference}"),
            "spec.outbound.proxy_url",
        ),
    ] {
        let text = config_yaml(&format!("{AUTH_OFF}\n{spec}"));
        assert_eq!(
            config_error(&text),
            format!(
                "{field}: secret_key_ref is only understood in a SealGateway resource; use env:VAR in a config file"
            )
        );
    }
}

#[test]
fn judge_timeouts_out_of_range_and_half_a_client_identity_are_refused() {
    for timeout in [0, 60_001] {
        let text = config_yaml(&format!(
            "{AUTH_OFF}\ncli:\n  semantic_judge_timeout_ms: {timeout}"
        ));
        assert_eq!(
            config_error(&text),
            "spec.cli.semantic_judge_timeout_ms: must be between 1 and 60000"
        );
    }
    for outbound in [
        "client_certificate_file: /tls.crt",
        "client_key_file: /tls.key",
    ] {
        let text = config_yaml(&format!("{AUTH_OFF}\noutbound:\n  {outbound}"));
        assert_eq!(
            config_error(&text),
            "spec.outbound.client_certificate_file and spec.outbound.client_key_file must be set together"
        );
    }
}

#[test]
fn an_nfs_server_that_would_add_mount_options_is_refused() {
    for host in ["10.0.0.5,nolock", "nfs=x", "nfs server"] {
        let text = config_yaml(&format!("{AUTH_OFF}\ncli:\n  nfs_server_host: \"{host}\""));
        assert_eq!(
            config_error(&text),
            format!("spec.cli.nfs_server_host: \"{host}\" is not a host name or an IP address")
        );
    }
    for host in ["nfs.storage.svc.cluster.local", "10.0.0.5", "fd00::5"] {
        let text = config_yaml(&format!("{AUTH_OFF}\ncli:\n  nfs_server_host: \"{host}\""));
        let (_, result) = Sandbox::with_env(&[]).load_config_text(&text);
        assert_eq!(result.unwrap().settings.cli.nfs_server_host, host);
    }
}

#[test]
fn a_judge_token_no_header_can_carry_is_refused_without_showing_it() {
    let sandbox = Sandbox::with_env(&[("SEAL_GATEWAY_SEMANTIC_JUDGE_TOKEN", "abc\u{7}def")]);
    let (path, result) = sandbox.load_config_text(&config_yaml(AUTH_OFF));
    assert_eq!(
        result.unwrap_err(),
        format!(
            "{}: spec.cli.semantic_judge_token: holds characters an Authorization header cannot carry",
            path.display()
        )
    );
}

#[test]
fn unusable_proxy_settings_are_refused_without_showing_the_url() {
    for url in [
        "proxy.corp:3128",
        "ftp://proxy.corp",
        "http://",
        "socks5://u:hunter2@p:1080",
    ] {
        let text = config_yaml(&format!("{AUTH_OFF}\noutbound:\n  proxy_url: \"{url}\""));
        let error = config_error(&text);
        assert_eq!(
            error, "spec.outbound.proxy_url: not an http:// or https:// URL with a host",
            "{url}"
        );
    }
    let text = config_yaml(&format!(
        "{AUTH_OFF}\noutbound:\n  proxy_url: http://p:3128\n  no_proxy: [.svc, \" \"]"
    ));
    assert_eq!(
        config_error(&text),
        "spec.outbound.no_proxy: \" \" is empty: list host names, addresses or CIDR blocks"
    );
}

#[test]
fn an_override_replaces_a_secret_key_ref_in_the_file() {
    // The override gives the value, so the reference never reaches validation.
    let sandbox = Sandbox::with_env(&[("SEAL_GATEWAY_OPENBAO_TOKEN", "tok")]);
    let (_, result) = sandbox.load_config_text(&config_yaml(&format!(
        "{AUTH_OFF}\ncredentials:\n  openbao_token: {{secret_key_ref: {{name: gw, key: t}}}}"
    )));
    assert_eq!(
        result.expect("loads").settings.credentials.openbao_token,
        literal("tok")
    );
    // Parsing itself understands the reference (it is validation that refuses it).
    let parsed: SecretValue =
        serde_yaml::from_str("{secret_key_ref: {name: gw, key: t}}").expect("parses");
    assert_eq!(
        parsed,
        SecretValue::FromSecret {
            secret_key_ref: SecretKeyRef {
                name: "gw".into(),
                key: "t".into()
            }
        }
    );
}

#[test]
fn request_size_limits_have_a_floor() {
    let text = config_yaml(&format!("{AUTH_OFF}\nnetwork:\n  max_header_bytes: 8191"));
    assert_eq!(
        config_error(&text),
        "spec.network.max_header_bytes: must be at least 8192"
    );
    let text = config_yaml(&format!("{AUTH_OFF}\nnetwork:\n  max_body_bytes: 0"));
    assert_eq!(
        config_error(&text),
        "spec.network.max_body_bytes: must be at least 1"
    );
}

#[test]
fn a_secret_setting_of_another_shape_is_refused_by_its_field() {
    let text = config_yaml(&format!(
        "{AUTH_OFF}\ndatabase:\n  url: {{secretKeyRef: {{name: db, key: url}}}}"
    ));
    assert_eq!(
        config_error(&text),
        "spec.database.url: must be a string or {secret_key_ref: {name, key}}"
    );
}

#[test]
fn the_drain_is_between_one_second_and_an_hour() {
    for (seconds, error) in [
        (
            "0",
            "spec.network.drain_seconds: must be between 1 and 3600",
        ),
        (
            "3601",
            "spec.network.drain_seconds: must be between 1 and 3600",
        ),
    ] {
        let text = config_yaml(&format!("{AUTH_OFF}\nnetwork:\n  drain_seconds: {seconds}"));
        assert_eq!(config_error(&text), error);
    }
    let text = config_yaml(&format!("{AUTH_OFF}\nnetwork:\n  drain_seconds: 3600"));
    let sandbox = Sandbox::new();
    let (_, result) = sandbox.load_config_text(&text);
    assert_eq!(result.expect("loads").settings.network.drain_seconds, 3600);
}

#[test]
fn the_tenant_object_quota_is_between_one_and_a_million() {
    for value in ["0", "1000001"] {
        let text = config_yaml(&format!(
            "{AUTH_OFF}\ncontrol:\n  max_objects_per_tenant: {value}"
        ));
        assert_eq!(
            config_error(&text),
            "spec.control.max_objects_per_tenant: must be between 1 and 1000000"
        );
    }
    let text = config_yaml(&format!(
        "{AUTH_OFF}\ncontrol:\n  max_objects_per_tenant: 5"
    ));
    let sandbox = Sandbox::new();
    let (_, result) = sandbox.load_config_text(&text);
    assert_eq!(
        result
            .expect("loads")
            .settings
            .control
            .max_objects_per_tenant,
        5
    );
}

#[test]
fn auth_enabled_without_a_jwks_uri_is_rejected() {
    let text = config_yaml("auth:\n  disabled: false\n  operator_jwks_uri: '  '");
    assert_eq!(
        config_error(&text),
        "spec.auth.operator_jwks_uri is required when auth is enabled"
    );
}

#[test]
fn malformed_yaml_is_reported_with_the_path() {
    for text in [
        "apiVersion: [unclosed\n",
        "spec:\n  network:\n    bind_addr: a\n   grpc_bind_addr: b\n",
        "key: value\n\tbad-tab: 1\n",
    ] {
        let err = config_error(text);
        assert!(err.starts_with("malformed YAML: "), "{text:?} gave {err:?}");
    }
}

#[test]
fn unknown_keys_are_reported_by_path() {
    let cases = [
        (
            config_yaml(&format!("{AUTH_OFF}\nnetwork:\n  bind_adr: 0.0.0.0:1")),
            "spec.network.bind_adr: unknown field",
        ),
        (
            config_yaml("auth:\n  disabled: true\n  jwks_ttl: 5"),
            "spec.auth.jwks_ttl: unknown field",
        ),
        (
            config_yaml(&format!("{AUTH_OFF}\nmetrics: {{}}")),
            "spec.metrics: unknown field",
        ),
        (
            config_yaml(&format!("{AUTH_OFF}\nreplicas: 2")),
            "spec.replicas: unknown field",
        ),
        (
            format!("{}status: {{}}\n", config_yaml(AUTH_OFF)),
            "status: unknown field",
        ),
        (
            config_yaml(AUTH_OFF).replace("  name: test-gateway\n", "  name: a\n  namespace: b\n"),
            "metadata.namespace: unknown field",
        ),
    ];
    for (text, message) in cases {
        assert_eq!(config_error(&text), message);
    }
    // A key a secret reference does not have makes the value match neither form.
    let text = config_yaml(&format!(
        "{AUTH_OFF}\ndatabase:\n  url: {{secret_key_ref: {{name: a, key: b, optional: true}}}}"
    ));
    let err = config_error(&text);
    assert!(err.starts_with("spec.database.url: "), "{err:?}");
}

#[test]
fn wrong_types_name_the_field() {
    let cases = [
        (
            config_yaml(&format!("{AUTH_OFF}\ncli:\n  nfs_port: \"abc\"")),
            "spec.cli.nfs_port: ",
        ),
        (
            config_yaml(&format!("{AUTH_OFF}\ncli:\n  nfs_mount_port: 70000")),
            "spec.cli.nfs_mount_port: ",
        ),
        (
            config_yaml("auth:\n  disabled: \"yes\""),
            "spec.auth.disabled: ",
        ),
        (
            config_yaml(&format!("{AUTH_OFF}\nnetwork:\n  max_body_bytes: -1")),
            "spec.network.max_body_bytes: ",
        ),
        (config_yaml(&format!("{AUTH_OFF}\nui: true")), "spec.ui: "),
        (
            config_yaml(AUTH_OFF).replace("  name: test-gateway\n", "  name: a\n  labels: [x]\n"),
            "metadata.labels: ",
        ),
    ];
    for (text, field) in cases {
        let err = config_error(&text);
        assert!(err.starts_with(field), "expected {field:?}..., got {err:?}");
        assert!(err.contains("invalid"), "{err:?}");
    }
}

#[test]
fn a_file_that_is_not_a_mapping_is_rejected() {
    for text in ["", "# only a comment\n", "- a list\n", "just text\n"] {
        let sandbox = Sandbox::new();
        let (path, result) = sandbox.load_config_text(text);
        let err = result.unwrap_err();
        assert!(
            err.starts_with(&format!("{}: ", path.display())),
            "{text:?} gave {err:?}"
        );
        assert!(!err.contains('\n'), "{err:?}");
    }
}

#[test]
fn an_unreadable_config_file_is_an_error() {
    let sandbox = Sandbox::new();
    let path = sandbox.write("binary.yaml", "");
    fs::write(&path, [0xff, 0xfe, 0x00, 0x80]).expect("write");
    let err = sandbox.load_explicit(&path).unwrap_err();
    assert!(
        err.starts_with(&format!("{}: cannot read: ", path.display())),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The manifests folder
// ---------------------------------------------------------------------------------------------

mod manifests {
    use std::fs;
    use std::path::Path;

    use tempfile::TempDir;

    use super::write_file;
    use crate::infrastructure::config::load_manifests;

    /// A ConfigMap holding an OpenAPI document, and a workflow using it: two documents and a
    /// trailing empty one.
    const ECHO_WORKFLOW: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: echo-openapi
data:
  openapi.yaml: |
    openapi: 3.0.3
    info: {title: Echo, version: "1"}
    paths:
      /echo:
        post:
          operationId: echoMessage
          requestBody:
            content:
              application/json:
                schema: {type: object}
          responses:
            "200": {description: the message back}
---
apiVersion: seal.100monkeys.ai/v1
kind: Workflow
metadata:
  name: echo-message
spec:
  tool_name: echo_message
  description: Echo a message
  input_schema:
    type: object
    properties:
      message: {type: string}
  api_spec:
    base_url: http://127.0.0.1:8090
    openapi:
      config_map_ref: {name: echo-openapi, key: openapi.yaml}
  steps:
    - name: echo
      operation_id: echoMessage
      body_template: '{"message": {{json input.message}}}'
      extractors:
        echoed: "$.message"
---
"#;

    const CLI_TOOL: &str = r#"apiVersion: seal.100monkeys.ai/v1
kind: CliTool
metadata:
  name: busybox
spec:
  docker_image: busybox:1.36
  allowed_subcommands: [echo, date]
"#;

    const SECURITY_CONTEXTS: &str = r#"---
apiVersion: seal.100monkeys.ai/v1
kind: SecurityContext
metadata:
  name: readers
spec:
  capabilities:
    - tool_pattern: echo_message
---
apiVersion: seal.100monkeys.ai/v1
kind: SecurityContext
metadata:
  name: operators
spec:
  capabilities:
    - tool_pattern: "*"
"#;

    fn write(dir: &Path, relative: &str, text: &str) -> String {
        write_file(&dir.join(relative), text).display().to_string()
    }

    /// A folder with `.yaml` and `.yml` files, a nested subfolder and files that are not manifests.
    fn valid_folder() -> TempDir {
        let dir = TempDir::new().expect("temp dir");
        write(dir.path(), "echo.yaml", ECHO_WORKFLOW);
        write(dir.path(), "tools/cli/busybox.yml", CLI_TOOL);
        write(dir.path(), "tools/contexts.yaml", SECURITY_CONTEXTS);
        write(dir.path(), "README.md", "# not a manifest: {{{");
        write(dir.path(), "tools/notes.txt", "kind: Nonsense");
        write(dir.path(), "echo.yaml.bak", "kind: Nonsense");
        dir
    }

    #[test]
    fn every_manifest_under_the_folder_is_compiled() {
        let dir = valid_folder();
        let compiled = load_manifests(dir.path()).expect("loads");

        assert_eq!(compiled.results.len(), 4);
        assert_eq!(compiled.rejected().count(), 0);
        let snapshot = &compiled.snapshot;
        let workflows: Vec<&str> = snapshot
            .workflows
            .iter()
            .map(|w| w.tool_name.as_str())
            .collect();
        assert_eq!(workflows, ["echo_message"]);
        let cli_tools: Vec<&str> = snapshot
            .cli_tools
            .iter()
            .map(|t| t.tool_name.as_str())
            .collect();
        assert_eq!(cli_tools, ["busybox"]);
        let mut contexts: Vec<&str> = snapshot
            .security_contexts
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        contexts.sort();
        assert_eq!(contexts, ["operators", "readers"]);

        // The OpenAPI document came from the ConfigMap.
        let workflow = &snapshot.workflows[0];
        let operation = &workflow.operations["echoMessage"];
        assert_eq!(operation.method, "POST");
        assert_eq!(operation.path, "/echo");
        assert!(operation.has_request_body);
        assert_eq!(workflow.base_url, "http://127.0.0.1:8090");
    }

    #[test]
    fn loading_is_deterministic() {
        let dir = valid_folder();
        let first = load_manifests(dir.path()).expect("loads");
        let second = load_manifests(dir.path()).expect("loads");
        assert_eq!(first.snapshot.hash(), second.snapshot.hash());
        assert_eq!(first.results, second.results);
    }

    #[test]
    fn an_empty_folder_gives_an_empty_snapshot() {
        let dir = TempDir::new().expect("temp dir");
        fs::create_dir(dir.path().join("empty-subfolder")).expect("mkdir");
        let compiled = load_manifests(dir.path()).expect("loads");
        assert!(compiled.results.is_empty());
        assert_eq!(compiled.snapshot, Default::default());
    }

    #[test]
    fn a_missing_folder_is_an_error() {
        let dir = TempDir::new().expect("temp dir");
        let missing = dir.path().join("missing");
        let err = load_manifests(&missing).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{}: cannot read manifests folder: ",
                missing.display()
            )),
            "{err:?}"
        );
    }

    #[test]
    fn a_document_that_does_not_parse_fails_the_whole_load() {
        let dir = valid_folder();
        let bad = write(
            dir.path(),
            "tools/zz-bad.yaml",
            &format!(
                "{CLI_TOOL}---\n{}",
                CLI_TOOL
                    .replace("name: busybox", "name: other")
                    .replace("docker_image:", "docker_imag:")
            ),
        );
        let err = load_manifests(dir.path()).unwrap_err().to_string();
        // docker_image is required, so the missing field is what serde reports first.
        assert_eq!(
            err,
            format!("{bad}: document 2 (CliTool other): spec: missing field `docker_image`")
        );
    }

    #[test]
    fn an_unknown_field_names_file_document_resource_and_field() {
        let dir = valid_folder();
        let bad = write(
            dir.path(),
            "tools/zz-bad.yml",
            &ECHO_WORKFLOW.replace("  description: Echo a message", "  descripton: Echo"),
        );
        let err = load_manifests(dir.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{bad}: document 2 (Workflow echo-message): spec.descripton: unknown field")
        );
    }

    #[test]
    fn a_rejected_resource_names_file_document_resource_and_field() {
        let dir = TempDir::new().expect("temp dir");
        write(dir.path(), "a/busybox.yaml", CLI_TOOL);
        let bad = write(
            dir.path(),
            "b/nested/echo.yaml",
            &ECHO_WORKFLOW.replace("operation_id: echoMessage", "operation_id: nope"),
        );
        let err = load_manifests(dir.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{bad}: document 2 (Workflow echo-message): spec.steps[0].operation_id: \
                 operationId \"nope\" is not defined in the OpenAPI document"
            )
        );
    }

    #[test]
    fn a_rejection_lists_every_problem_of_the_resource() {
        let dir = TempDir::new().expect("temp dir");
        let bad = write(
            dir.path(),
            "busybox.yaml",
            &CLI_TOOL
                .replace("name: busybox", "name: busybox\n  namespace: tools")
                .replace("[echo, date]", "[echo, 'two words']")
                .replace("docker_image: busybox:1.36", "docker_image: ''"),
        );
        let err = load_manifests(dir.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{bad}: document 1 (CliTool tools/busybox): spec.docker_image: must not be empty; \
                 spec.allowed_subcommands[1]: \"two words\" is not a valid subcommand (one word, no spaces)"
            )
        );
    }

    #[test]
    fn a_missing_config_map_is_a_rejection() {
        let dir = TempDir::new().expect("temp dir");
        let workflow = ECHO_WORKFLOW
            .split_once("---\n")
            .map(|(_, rest)| rest)
            .expect("two documents");
        let bad = write(dir.path(), "echo.yaml", workflow);
        let err = load_manifests(dir.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{bad}: document 1 (Workflow echo-message): spec.api_spec.openapi.config_map_ref: \
                 ConfigMap echo-openapi not found"
            )
        );
    }

    #[test]
    fn a_config_map_in_another_file_is_found() {
        let dir = TempDir::new().expect("temp dir");
        let (config_map, workflow) = ECHO_WORKFLOW.split_once("---\n").expect("two documents");
        write(dir.path(), "openapi/echo-openapi.yml", config_map);
        write(dir.path(), "workflows/echo.yaml", workflow);
        let compiled = load_manifests(dir.path()).expect("loads");
        assert_eq!(compiled.snapshot.workflows.len(), 1);
    }

    #[test]
    fn malformed_yaml_and_unknown_kinds_name_the_file_and_document() {
        let dir = TempDir::new().expect("temp dir");
        let bad = write(
            dir.path(),
            "bad.yaml",
            &format!("{CLI_TOOL}---\nkind: [oops\n"),
        );
        let err = load_manifests(dir.path()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{bad}: document 2: malformed YAML: ")),
            "{err:?}"
        );

        let dir = TempDir::new().expect("temp dir");
        let bad = write(
            dir.path(),
            "gateway.yaml",
            "apiVersion: seal.100monkeys.ai/v1\nkind: SealGateway\nmetadata:\n  name: gw\n",
        );
        let err = load_manifests(dir.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{bad}: document 1 (SealGateway gw): kind: unsupported kind \"SealGateway\" \
                 (expected Workflow, CliTool, SecurityContext or ConfigMap)"
            )
        );
    }

    #[test]
    fn a_resource_defined_in_two_files_names_the_second_file() {
        let dir = TempDir::new().expect("temp dir");
        let first = write(dir.path(), "a.yaml", CLI_TOOL);
        let second = write(dir.path(), "b.yaml", CLI_TOOL);
        let err = load_manifests(dir.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{second}: document 1: CliTool busybox is defined twice (first in {first} document 1)"
            )
        );
    }

    #[test]
    fn a_kubelet_mounted_configmap_folder_is_read_once() {
        let dir = TempDir::new().expect("temp dir");
        write(
            dir.path(),
            "..2026_11_29_01_00_00.000/busybox.yaml",
            CLI_TOOL,
        );
        std::os::unix::fs::symlink("..2026_11_29_01_00_00.000", dir.path().join("..data"))
            .expect("symlink");
        std::os::unix::fs::symlink("..data/busybox.yaml", dir.path().join("busybox.yaml"))
            .expect("symlink");
        let compiled = load_manifests(dir.path()).expect("loads");
        assert_eq!(compiled.snapshot.cli_tools.len(), 1);
    }
}

#[test]
fn a_config_file_must_be_a_mapping() {
    let sandbox = Sandbox::new();
    let (path, result) = sandbox.load_config_text("- seal.100monkeys.ai/v1\n- SealGatewayConfig\n");
    assert_eq!(
        result.unwrap_err(),
        format!("{}: must be a mapping of keys to values", path.display())
    );
}

#[test]
fn an_explicit_path_that_is_a_folder_is_not_a_file() {
    let sandbox = Sandbox::new();
    let folder = sandbox
        .write("conf.d/x", "")
        .parent()
        .unwrap()
        .to_path_buf();
    assert_eq!(
        sandbox.load_explicit(&folder).unwrap_err(),
        format!(
            "{}: config file named by --config is not a file",
            folder.display()
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Audit settings
// ---------------------------------------------------------------------------------------------

fn checkpoint_key_pem() -> String {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    ed25519_dalek::SigningKey::from_bytes(&[1u8; 32])
        .to_pkcs8_pem(Default::default())
        .expect("encode")
        .to_string()
}

#[test]
fn audit_settings_come_from_the_file_env_references_and_overrides() {
    let pem = checkpoint_key_pem();
    let mut sandbox = Sandbox::with_env(&[("AUDIT_KEY", &pem)]);
    sandbox.write_config(&config_yaml(&format!(
        "{AUTH_OFF}\naudit:\n  checkpoint_signing_key_pem: env:AUDIT_KEY\n  retention_days: 30\n  purge_batch_size: 100"
    )));
    let audit = sandbox.load().expect("loads").settings.audit;
    assert_eq!(audit.checkpoint_signing_key_pem, literal(&pem));
    assert_eq!(audit.retention_days, Some(30));
    assert_eq!(audit.purge_batch_size, 100);
    assert_eq!(audit.checkpoint_interval_secs, 300);

    sandbox.set("SEAL_GATEWAY_AUDIT_RETENTION_DAYS", "0");
    sandbox.set("SEAL_GATEWAY_AUDIT_CHECKPOINT_INTERVAL_SECS", "60");
    sandbox.set("SEAL_GATEWAY_AUDIT_PURGE_INTERVAL_SECS", "120");
    sandbox.set("SEAL_GATEWAY_AUDIT_PURGE_BATCH_SIZE", "7");
    sandbox.set("AUDIT_KEY", "");
    sandbox.set("SEAL_GATEWAY_AUDIT_CHECKPOINT_SIGNING_KEY_PEM", &pem);
    let audit = sandbox.load().expect("loads").settings.audit;
    assert_eq!(audit.retention_days, None, "0 turns retention off");
    assert_eq!(audit.checkpoint_interval_secs, 60);
    assert_eq!(audit.purge_interval_secs, 120);
    assert_eq!(audit.purge_batch_size, 7);
    assert_eq!(audit.checkpoint_signing_key_pem, literal(&pem));
}

#[test]
fn invalid_audit_settings_fail_at_load_naming_the_field() {
    for (audit, expected) in [
        (
            "checkpoint_signing_key_pem: not-a-key",
            "spec.audit.checkpoint_signing_key_pem: not a PKCS#8 PEM Ed25519 private key",
        ),
        (
            "purge_batch_size: 0",
            "spec.audit.purge_batch_size: must be at least 1",
        ),
        (
            "retention_days: 0",
            "spec.audit.retention_days: must be at least 1",
        ),
        (
            "checkpoint_interval_secs: 0",
            "spec.audit.checkpoint_interval_secs: must be at least 1",
        ),
    ] {
        let sandbox = Sandbox::new();
        sandbox.write_config(&config_yaml(&format!("{AUTH_OFF}\naudit:\n  {audit}")));
        let error = sandbox.load().unwrap_err();
        assert!(error.contains(expected), "{audit}: {error}");
    }
}
