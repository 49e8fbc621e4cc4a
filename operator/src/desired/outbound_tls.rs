//! `spec.outbound_tls`: the CA bundle and the client certificate of the data plane's outbound
//! HTTPS, mounted from the gateway's namespace, and the `outbound` settings that point at them.
//!
//! Whole volumes are mounted, never single files (`subPath`), so that the kubelet swaps in a
//! renewed Secret or ConfigMap and the data plane takes it on without a restart.

use aegis_seal_crds::gateway::{GatewaySettings, OutboundTls};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, KeyToPath, SecretVolumeSource, Volume, VolumeMount,
};

use super::DesiredError;

/// Where the CA bundle is mounted, and its file name there.
pub const CA_DIR: &str = "/etc/seal-gateway/outbound-ca";
pub const CA_FILE: &str = "ca.crt";
/// Where the client certificate's `kubernetes.io/tls` Secret is mounted.
pub const CLIENT_DIR: &str = "/etc/seal-gateway/outbound-client";
/// Read by the owner and the pod's `fsGroup` only: the directory holds a private key.
const CLIENT_FILE_MODE: i32 = 0o440;

/// The volumes of a gateway's `outbound_tls` and their mounts in the data-plane container.
#[derive(Debug, Default)]
pub(super) struct Mounts {
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
}

/// The volumes for `tls`, with `settings.outbound` pointed at them. Refuses a name or key the
/// API server would refuse, a CA given both ways or neither, and a file set both ways: `spec.outbound.*_file` names a file already in the
/// image, `outbound_tls` one the operator mounts.
pub(super) fn mounts(
    tls: Option<&OutboundTls>,
    settings: &mut GatewaySettings,
) -> Result<Mounts, DesiredError> {
    let mut out = Mounts::default();
    let Some(tls) = tls else {
        return Ok(out);
    };
    if let Some(ca) = &tls.ca {
        if settings.outbound.ca_file.is_some() {
            return Err(both("spec.outbound.ca_file", "spec.outbound_tls.ca"));
        }
        let item = |key: String| {
            Some(vec![KeyToPath {
                key,
                path: CA_FILE.into(),
                ..Default::default()
            }])
        };
        let volume = match (&ca.config_map_key_ref, &ca.secret_key_ref) {
            (Some(cm), None) => Volume {
                config_map: Some(ConfigMapVolumeSource {
                    name: object_name("spec.outbound_tls.ca.config_map_key_ref.name", &cm.name)?,
                    items: item(key("spec.outbound_tls.ca.config_map_key_ref.key", &cm.key)?),
                    ..Default::default()
                }),
                ..Volume::default()
            },
            (None, Some(secret)) => Volume {
                secret: Some(SecretVolumeSource {
                    secret_name: Some(object_name(
                        "spec.outbound_tls.ca.secret_key_ref.name",
                        &secret.name,
                    )?),
                    items: item(key("spec.outbound_tls.ca.secret_key_ref.key", &secret.key)?),
                    ..Default::default()
                }),
                ..Volume::default()
            },
            _ => {
                return Err(DesiredError::InvalidSetting {
                    field: "spec.outbound_tls.ca".into(),
                    message: "set exactly one of config_map_key_ref and secret_key_ref".into(),
                });
            }
        };
        out.push("outbound-ca", volume, CA_DIR);
        settings.outbound.ca_file = Some(format!("{CA_DIR}/{CA_FILE}"));
    }
    if let Some(secret) = &tls.client_certificate_secret {
        if settings.outbound.client_certificate_file.is_some()
            || settings.outbound.client_key_file.is_some()
        {
            return Err(both(
                "spec.outbound.client_certificate_file",
                "spec.outbound_tls.client_certificate_secret",
            ));
        }
        let items = ["tls.crt", "tls.key"]
            .map(|key| KeyToPath {
                key: key.into(),
                path: key.into(),
                ..Default::default()
            })
            .to_vec();
        let volume = Volume {
            secret: Some(SecretVolumeSource {
                secret_name: Some(object_name(
                    "spec.outbound_tls.client_certificate_secret",
                    secret,
                )?),
                items: Some(items),
                default_mode: Some(CLIENT_FILE_MODE),
                ..Default::default()
            }),
            ..Volume::default()
        };
        out.push("outbound-client", volume, CLIENT_DIR);
        settings.outbound.client_certificate_file = Some(format!("{CLIENT_DIR}/tls.crt"));
        settings.outbound.client_key_file = Some(format!("{CLIENT_DIR}/tls.key"));
    }
    Ok(out)
}

impl Mounts {
    fn push(&mut self, name: &str, volume: Volume, dir: &str) {
        self.volumes.push(Volume {
            name: name.into(),
            ..volume
        });
        self.mounts.push(VolumeMount {
            name: name.into(),
            mount_path: dir.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
}

/// A ConfigMap's or Secret's name: refused here, with the field, rather than by the API server
/// as a Deployment it will not create.
fn object_name(field: &str, name: &str) -> Result<String, DesiredError> {
    let valid = (1..=253).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !valid {
        return Err(DesiredError::InvalidSetting {
            field: field.into(),
            message: format!(
                "{name:?} is not the name of a ConfigMap or Secret (lowercase letters, digits, '-' and '.')"
            ),
        });
    }
    Ok(name.to_owned())
}

/// A key of a ConfigMap or Secret, as the API server accepts it in a volume's items.
fn key(field: &str, key: &str) -> Result<String, DesiredError> {
    let valid = (1..=253).contains(&key.len())
        && key != "."
        && !key.starts_with("..")
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(DesiredError::InvalidSetting {
            field: field.into(),
            message: format!("{key:?} is not a key of a ConfigMap or Secret"),
        });
    }
    Ok(key.to_owned())
}

fn both(file: &str, mounted: &str) -> DesiredError {
    DesiredError::InvalidSetting {
        field: file.into(),
        message: format!(
            "set either {mounted} (the operator mounts it) or {file} (a file already in the image), not both"
        ),
    }
}
