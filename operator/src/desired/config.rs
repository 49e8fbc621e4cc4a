//! The `SealGatewayConfig` file a data plane reads, built from a SealGateway's settings, and the
//! hash that rolls the pods when it changes.

use aegis_seal_crds::gateway::GatewaySettings;
use aegis_seal_crds::{API_VERSION, SecretKeyRef};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use aegis_seal_crds::snapshot_shards::hex;

/// Env vars carrying `secret_key_ref` values are this prefix and a number, from 0.
pub const SECRET_ENV_PREFIX: &str = "SEAL_GW_SECRET_";

/// The config file, and the env vars its `env:` references need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFile {
    pub yaml: String,
    pub secret_env: Vec<SecretEnv>,
}

/// One `secret_key_ref` of the settings, passed to the pod as an env var.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SecretEnv {
    /// `SEAL_GW_SECRET_<N>`.
    pub env: String,
    /// The setting it fills, e.g. `spec.database.url`.
    pub field: String,
    pub secret: SecretKeyRef,
}

/// The settings as a `SealGatewayConfig` document named `name`. A config file cannot hold
/// `secret_key_ref`, so each one, wherever it is in the settings, becomes `env:SEAL_GW_SECRET_<N>`,
/// numbered in the order of the fields' paths.
pub fn config_file(name: &str, settings: &GatewaySettings) -> Result<ConfigFile, String> {
    let mut spec = serde_json::to_value(settings).map_err(|e| e.to_string())?;
    let mut secret_env = Vec::new();
    replace_secret_refs(&mut spec, "spec", &mut secret_env)?;
    let document = json!({
        "apiVersion": API_VERSION,
        "kind": "SealGatewayConfig",
        "metadata": {"name": name},
        "spec": spec,
    });
    let yaml = serde_yaml::to_string(&document).map_err(|e| e.to_string())?;
    Ok(ConfigFile { yaml, secret_env })
}

fn replace_secret_refs(
    value: &mut Value,
    path: &str,
    out: &mut Vec<SecretEnv>,
) -> Result<(), String> {
    match value {
        Value::Object(map) => {
            if map.len() == 1
                && let Some(reference) = map.get("secret_key_ref")
            {
                let secret: SecretKeyRef = serde_json::from_value(reference.clone())
                    .map_err(|e| format!("{path}.secret_key_ref: {e}"))?;
                let env = format!("{SECRET_ENV_PREFIX}{}", out.len());
                *value = Value::String(format!("env:{env}"));
                out.push(SecretEnv {
                    env,
                    field: path.to_owned(),
                    secret,
                });
                return Ok(());
            }
            for (key, child) in map.iter_mut() {
                replace_secret_refs(child, &format!("{path}.{key}"), out)?;
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                replace_secret_refs(child, &format!("{path}[{i}]"), out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Hash (16 hex digits) of what a running data plane reads only when it starts: the whole config
/// file, its image and the Secrets its env vars come from. The data plane hot-reloads its snapshot,
/// never its settings (a changed config file is only checked and logged), so any change of the
/// settings must roll the pods; the snapshot, kept in the same ConfigMap, must not.
pub fn restart_hash(config: &ConfigFile, image: &str) -> String {
    let inputs = json!({
        "config": config.yaml,
        "image": image,
        "secret_env": config.secret_env,
    });
    // Serializing a json! value cannot fail.
    let bytes = serde_json::to_vec(&inputs).unwrap_or_default();
    hex(&Sha256::digest(&bytes)[..8])
}
