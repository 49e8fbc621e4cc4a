//! What a SealGateway should run: every Kubernetes object the operator applies for it, computed
//! from the gateway and its compiled resources alone. Pure: no I/O, no clock.

mod config;
mod config_maps;
mod outbound_tls;
mod rbac;
mod workload;

use std::collections::BTreeMap;

use aegis_seal_crds::{Compiled, SealGateway, SecretValue};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

pub use config::{ConfigFile, SECRET_ENV_PREFIX, SecretEnv, config_file, restart_hash};
pub use config_maps::SnapshotLimits;

/// `app.kubernetes.io/name` of everything a gateway runs.
pub const APP_NAME: &str = "seal-gateway";
/// `app.kubernetes.io/component` of everything a gateway runs.
pub const COMPONENT: &str = "data-plane";
/// Key of the `SealGatewayConfig` file in the main ConfigMap, and its file name in the pod.
pub const CONFIG_FILE_KEY: &str = "seal-gateway-config.yaml";
/// Where the main ConfigMap's config file is mounted.
pub const CONFIG_MOUNT_DIR: &str = "/etc/seal-gateway";
/// Writable data directory (SQLite) and the container's working directory.
pub const DATA_DIR: &str = "/var/lib/seal-gateway";
pub const HTTP_PORT: i32 = 8089;
pub const METRICS_PORT: i32 = 9092;
/// Non-root user and group of the data-plane container (distroless `nonroot`).
pub const RUN_AS_USER: i64 = 65532;

/// Pod-template annotation: hash of the config file, image and Secret references, which a running
/// data plane reads only at start.
pub const RESTART_HASH_ANNOTATION: &str = "seal.100monkeys.ai/restart-hash";
/// ConfigMap annotation: `Snapshot::hash()` of the snapshot it holds.
pub const SNAPSHOT_HASH_ANNOTATION: &str = "seal.100monkeys.ai/snapshot-hash";
/// ConfigMap annotation: number of shards the snapshot is split into.
pub const SNAPSHOT_SHARDS_ANNOTATION: &str = "seal.100monkeys.ai/snapshot-shards";
/// ConfigMap annotation: number of ConfigMaps the shards are spread over (the main one included).
pub const SNAPSHOT_CONFIG_MAPS_ANNOTATION: &str = "seal.100monkeys.ai/snapshot-config-maps";
/// Label of the additional snapshot ConfigMaps: the gateway they belong to.
pub const SNAPSHOT_OF_LABEL: &str = "seal.100monkeys.ai/snapshot-of";
/// Env var telling the data plane which ConfigMap (`namespace/name`) to watch.
pub const CONFIGMAP_ENV: &str = "SEAL_GATEWAY_CONFIGMAP";

/// Every object a SealGateway runs, all owned by it.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    /// Additional ConfigMaps holding snapshot shards (`<gw>-snapshot-<i>`, i from 1); written
    /// before the main ConfigMap, whose index refers to them.
    pub snapshot_config_maps: Vec<ConfigMap>,
    /// `<gw>-config`: the config file, the snapshot index and the first shards.
    pub config_map: ConfigMap,
    pub service: Service,
    pub deployment: Deployment,
    pub pod_disruption_budget: PodDisruptionBudget,
    /// `Snapshot::hash()` of the snapshot written.
    pub snapshot_hash: String,
    /// Value of [`RESTART_HASH_ANNOTATION`].
    pub restart_hash: String,
}

/// Why a SealGateway's spec cannot be turned into objects. Each message is one line, fit for a
/// status condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DesiredError {
    #[error(
        "spec.replicas is {replicas}, but the database is SQLite ({url}): a SQLite file belongs to one pod, so run one replica or set spec.database.url to a postgres:// URL"
    )]
    ReplicasNeedPostgres { replicas: i32, url: String },
    #[error("spec.replicas must not be negative (got {0})")]
    NegativeReplicas(i32),
    #[error("{field}: {message}")]
    InvalidSetting { field: String, message: String },
    #[error(
        "metadata.name \"{0}\" cannot name the gateway's Service: use at most 63 lowercase letters, digits and '-', starting with a letter"
    )]
    InvalidName(String),
    #[error("the SealGateway has no {0} yet")]
    MissingMetadata(&'static str),
    #[error("the snapshot does not fit: {0}")]
    SnapshotTooLarge(String),
    #[error("cannot encode the snapshot: {0}")]
    Encode(String),
}

impl DesiredError {
    /// The `reason` of the condition that reports this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ReplicasNeedPostgres { .. } => "ReplicasRequirePostgres",
            Self::NegativeReplicas(_) | Self::InvalidSetting { .. } => "InvalidSettings",
            Self::InvalidName(_) => "InvalidName",
            Self::MissingMetadata(_) => "MissingMetadata",
            Self::SnapshotTooLarge(_) => "SnapshotTooLarge",
            Self::Encode(_) => "EncodingFailed",
        }
    }
}

/// Every object `gw` runs, given its compiled resources and the image to use when `spec.image` is unset.
pub fn desired_objects(
    gw: &SealGateway,
    compiled: &Compiled,
    operator_image: &str,
) -> Result<Desired, DesiredError> {
    desired_objects_with_limits(gw, compiled, operator_image, &SnapshotLimits::default())
}

/// [`desired_objects`] with other ConfigMap size limits (tests exercise spreading with small ones).
pub fn desired_objects_with_limits(
    gw: &SealGateway,
    compiled: &Compiled,
    operator_image: &str,
    limits: &SnapshotLimits,
) -> Result<Desired, DesiredError> {
    let ctx = GatewayContext::new(gw, operator_image)?;
    let spec = &gw.spec;
    if let Some((field, _)) = spec
        .settings
        .secret_values()
        .into_iter()
        .find(|(_, value)| matches!(value, Some(SecretValue::Invalid(_))))
    {
        return Err(DesiredError::InvalidSetting {
            field: field.into(),
            message: SecretValue::INVALID.into(),
        });
    }
    let replicas = spec.replicas.unwrap_or(1);
    if replicas < 0 {
        return Err(DesiredError::NegativeReplicas(replicas));
    }
    if replicas > 1
        && let SecretValue::Literal(url) = &spec.settings.database.url
        && url.trim_start().starts_with("sqlite:")
    {
        return Err(DesiredError::ReplicasNeedPostgres {
            replicas,
            url: url.clone(),
        });
    }
    let http_port = workload::http_port(&spec.settings)?;
    let mut settings = spec.settings.clone();
    let tls_mounts = outbound_tls::mounts(spec.outbound_tls.as_ref(), &mut settings)?;
    let tracing_env = workload::tracing_env(spec.tracing.as_ref(), &settings.outbound)?;

    let config = config_file(&ctx.name, &settings).map_err(DesiredError::Encode)?;
    let restart_hash = restart_hash(&config, &ctx.image);
    let maps = config_maps::snapshot_config_maps(&ctx, &config.yaml, &compiled.snapshot, limits)?;
    let config_map_names: Vec<String> = std::iter::once(&maps.main)
        .chain(&maps.extra)
        .filter_map(|cm| cm.metadata.name.clone())
        .collect();

    Ok(Desired {
        service_account: rbac::service_account(&ctx),
        role: rbac::role(&ctx, config_map_names),
        role_binding: rbac::role_binding(&ctx),
        snapshot_hash: maps.snapshot_hash.clone(),
        snapshot_config_maps: maps.extra,
        config_map: maps.main,
        service: workload::service(&ctx),
        deployment: workload::deployment(
            &ctx,
            workload::PodInputs {
                replicas,
                http_port,
                secret_env: &config.secret_env,
                tracing_env,
                tls: tls_mounts,
                restart_hash: &restart_hash,
            },
            spec,
        ),
        pod_disruption_budget: workload::pod_disruption_budget(&ctx),
        restart_hash,
    })
}

/// What every object of one gateway shares: names, labels, owner.
pub(crate) struct GatewayContext {
    pub name: String,
    pub namespace: String,
    pub image: String,
    pub owner: OwnerReference,
}

impl GatewayContext {
    fn new(gw: &SealGateway, operator_image: &str) -> Result<Self, DesiredError> {
        let name = gw
            .metadata
            .name
            .clone()
            .ok_or(DesiredError::MissingMetadata("metadata.name"))?;
        if !is_dns_label(&name) {
            return Err(DesiredError::InvalidName(name));
        }
        let namespace = gw
            .metadata
            .namespace
            .clone()
            .ok_or(DesiredError::MissingMetadata("metadata.namespace"))?;
        let mut owner = gw
            .controller_owner_ref(&())
            .ok_or(DesiredError::MissingMetadata("metadata.uid"))?;
        owner.controller = Some(true);
        // Foreground deletion of the gateway waits for what it runs.
        owner.block_owner_deletion = Some(true);
        let image = gw
            .spec
            .image
            .clone()
            .filter(|i| !i.trim().is_empty())
            .unwrap_or_else(|| operator_image.to_owned());
        Ok(Self {
            name,
            namespace,
            image,
            owner,
        })
    }

    pub fn config_map_name(&self) -> String {
        format!("{}-config", self.name)
    }

    /// `app.kubernetes.io/name` and `instance`: what selects the gateway's pods.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".into(), APP_NAME.into()),
            ("app.kubernetes.io/instance".into(), self.name.clone()),
        ])
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels();
        labels.insert(
            "app.kubernetes.io/managed-by".into(),
            crate::FIELD_MANAGER.into(),
        );
        labels.insert("app.kubernetes.io/component".into(), COMPONENT.into());
        labels
    }

    pub fn metadata(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.owner.clone()]),
            ..Default::default()
        }
    }
}

/// An RFC 1035 label, as a Service name must be.
fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests;
