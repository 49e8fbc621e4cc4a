//! The data-plane Deployment, its Service and its PodDisruptionBudget.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use aegis_seal_crds::gateway::{
    GatewaySettings, ImagePullPolicy, OutboundSettings, SealGatewaySpec, TracingSettings,
};
use aegis_seal_crds::{SecretKeyRef, SecretValue};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::SecretEnv;
use super::outbound_tls;
use super::{
    CONFIG_FILE_KEY, CONFIG_MOUNT_DIR, CONFIGMAP_ENV, DATA_DIR, DesiredError, GatewayContext,
    HTTP_PORT, METRICS_PORT, RESTART_HASH_ANNOTATION, RUN_AS_USER,
};

/// Container name of the data plane.
pub const CONTAINER_NAME: &str = "seal-gateway";

/// The data plane's pod grace period: on SIGTERM it drains in-flight calls for
/// `network.drain_seconds`, then stops the CLI tools still running and gives their calls 15 s to
/// remove their containers and commit their audit events; 5 s more cover the signal's delivery
/// and closing the database. Kubernetes' default of 30 s would kill it mid-drain.
fn grace_period_seconds(settings: &GatewaySettings) -> i64 {
    i64::from(settings.network.drain_seconds) + 20
}

/// The port the data plane's HTTP listener takes from its settings. The data plane serves no
/// gRPC (docs/observability.md), so `grpc_bind_addr` opens no port: a published one would only
/// refuse connections.
pub(super) fn http_port(settings: &GatewaySettings) -> Result<i32, DesiredError> {
    let port = |field: &str, value: &str| -> Result<i32, DesiredError> {
        value
            .trim()
            .parse::<SocketAddr>()
            .map(|a| i32::from(a.port()))
            .map_err(|_| DesiredError::InvalidSetting {
                field: field.into(),
                message: format!("\"{value}\" is not a socket address (e.g. 0.0.0.0:8089)"),
            })
    };
    // Checked although it opens no port: the data plane refuses to start without an address.
    port(
        "spec.network.grpc_bind_addr",
        &settings.network.grpc_bind_addr,
    )?;
    port("spec.network.bind_addr", &settings.network.bind_addr)
}

/// The standard OpenTelemetry variables the data plane reads at start (docs/observability.md,
/// "Traces"), for a SealGateway's `tracing` section; none without one, so a gateway that never
/// asked for traces keeps exactly the Deployment it had. Refuses what would stop the data plane
/// at start, so the mistake shows on the SealGateway instead of as a crash-looping pod. The
/// export is an outbound call like the others: it trusts the `outbound` CA file and presents its
/// client certificate (`OTEL_EXPORTER_OTLP_CERTIFICATE`, `..._CLIENT_CERTIFICATE`, `..._CLIENT_KEY`).
pub(super) fn tracing_env(
    tracing: Option<&TracingSettings>,
    outbound: &OutboundSettings,
) -> Result<Vec<EnvVar>, DesiredError> {
    let Some(tracing) = tracing else {
        return Ok(Vec::new());
    };
    let endpoint = tracing.endpoint.trim();
    let uri = endpoint.parse::<http::Uri>().ok();
    let http_url = uri.as_ref().is_some_and(|u| {
        u.scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"))
            && u.host().is_some_and(|h| !h.is_empty())
    });
    if !http_url {
        return Err(DesiredError::InvalidSetting {
            field: "spec.tracing.endpoint".into(),
            message: format!(
                "\"{endpoint}\" is not an http or https URL (e.g. http://otel-collector:4318)"
            ),
        });
    }
    let mut vars = vec![env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned())];
    if let Some(name) = &tracing.service_name {
        vars.push(env("OTEL_SERVICE_NAME", name.clone()));
    }
    if let Some(ratio) = tracing.sampler_ratio {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(DesiredError::InvalidSetting {
                field: "spec.tracing.sampler_ratio".into(),
                message: format!("{ratio} is not between 0.0 and 1.0"),
            });
        }
        // Parent-based: a caller's sampling decision wins, so its traces stay whole.
        vars.push(env(
            "OTEL_TRACES_SAMPLER",
            "parentbased_traceidratio".into(),
        ));
        vars.push(env("OTEL_TRACES_SAMPLER_ARG", ratio.to_string()));
    }
    if let Some(headers) = &tracing.headers {
        // The collector's credentials: a reference the kubelet resolves, never the value.
        vars.push(secret_env_var(
            "OTEL_EXPORTER_OTLP_HEADERS",
            &headers.secret_key_ref,
        ));
    }
    for (name, file) in [
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", &outbound.ca_file),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            &outbound.client_certificate_file,
        ),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &outbound.client_key_file),
    ] {
        if let Some(file) = file {
            vars.push(env(name, file.clone()));
        }
    }
    Ok(vars)
}

fn secret_env_var(name: &str, secret: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The settings the runbook's diagnostics read from the container's environment (`curl -H
/// "X-Vault-Token: $SEAL_GATEWAY_OPENBAO_TOKEN" "$SEAL_GATEWAY_OPENBAO_ADDR/v1/sys/health"`, the
/// Keycloak exchange, the judge), under those names, from the same values or Secrets as the config
/// file. The data plane reads these names as overrides of the file, which they equal; both are in
/// the pod template, so they change together. A value written as an `env:` reference is left out:
/// the data plane resolves those in the file only, and an override would replace the value it
/// names with the reference's text.
fn runbook_env(settings: &GatewaySettings) -> Vec<EnvVar> {
    let credentials = &settings.credentials;
    let plain = [
        ("SEAL_GATEWAY_OPENBAO_ADDR", &credentials.openbao_addr),
        (
            "SEAL_GATEWAY_KEYCLOAK_TOKEN_EXCHANGE_URL",
            &credentials.keycloak_token_exchange_url,
        ),
        (
            "SEAL_GATEWAY_KEYCLOAK_CLIENT_ID",
            &credentials.keycloak_client_id,
        ),
        (
            "SEAL_GATEWAY_SEMANTIC_JUDGE_URL",
            &settings.cli.semantic_judge_url,
        ),
    ];
    let secret = [
        ("SEAL_GATEWAY_OPENBAO_TOKEN", &credentials.openbao_token),
        (
            "SEAL_GATEWAY_KEYCLOAK_CLIENT_SECRET",
            &credentials.keycloak_client_secret,
        ),
    ];
    let literal =
        |name: &str, text: &String| (!text.starts_with("env:")).then(|| env(name, text.clone()));
    let plain = plain
        .into_iter()
        .filter_map(|(name, value)| literal(name, value.as_ref()?));
    let secret = secret
        .into_iter()
        .filter_map(|(name, value)| match value.as_ref()? {
            SecretValue::Literal(text) => literal(name, text),
            SecretValue::FromSecret { secret_key_ref } => {
                Some(secret_env_var(name, secret_key_ref))
            }
            // Refused before anything is built (`desired_objects`).
            SecretValue::Invalid(_) => None,
        });
    plain.chain(secret).collect()
}

fn env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        ..Default::default()
    }
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}

/// What the data-plane Deployment is made of beside the gateway's spec, each computed (and
/// checked) from it first.
pub(super) struct PodInputs<'a> {
    pub replicas: i32,
    pub http_port: i32,
    pub secret_env: &'a [SecretEnv],
    pub tracing_env: Vec<EnvVar>,
    pub tls: outbound_tls::Mounts,
    pub restart_hash: &'a str,
}

pub(super) fn deployment(
    ctx: &GatewayContext,
    inputs: PodInputs<'_>,
    spec: &SealGatewaySpec,
) -> Deployment {
    let PodInputs {
        replicas,
        http_port,
        secret_env,
        tracing_env,
        tls,
        restart_hash,
    } = inputs;
    let cli_containers = &spec.cli_containers;
    let mut env_vars = vec![
        env(
            CONFIGMAP_ENV,
            format!("{}/{}", ctx.namespace, ctx.config_map_name()),
        ),
        // The data plane's metrics listener defaults to loopback; the Service needs it reachable.
        env("METRICS_BIND", "0.0.0.0".into()),
        env("METRICS_PORT", METRICS_PORT.to_string()),
    ];
    env_vars.extend(secret_env.iter().map(|s| secret_env_var(&s.env, &s.secret)));
    env_vars.extend(runbook_env(&spec.settings));
    // In the pod template itself, so a change rolls the pods, as the data plane needs to take it on.
    env_vars.extend(tracing_env);

    let mut container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(ctx.image.clone()),
        image_pull_policy: Some(
            spec.image_pull_policy
                .map_or("IfNotPresent", ImagePullPolicy::as_str)
                .into(),
        ),
        args: Some(vec![
            "serve".into(),
            "--config".into(),
            format!("{CONFIG_MOUNT_DIR}/{CONFIG_FILE_KEY}"),
        ]),
        // A relative SQLite URL (the default `sqlite://gateway.db`) lands on the writable volume.
        working_dir: Some(DATA_DIR.into()),
        ports: Some(vec![port("http", http_port), port("metrics", METRICS_PORT)]),
        env: Some(env_vars),
        resources: spec.resources.clone(),
        // Start-up may wait for the snapshot ConfigMaps (up to 60 s) and run migrations: no
        // liveness verdict before it answers once.
        startup_probe: Some(http_probe("/health", 2, 45)),
        liveness_probe: Some(http_probe("/health", 10, 3)),
        readiness_probe: Some(http_probe("/ready", 5, 2)),
        security_context: Some(if cli_containers.enabled {
            podman_security_context()
        } else {
            restricted_security_context()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_MOUNT_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..Default::default()
            },
            VolumeMount {
                name: "data".into(),
                mount_path: DATA_DIR.into(),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let mut volumes = volumes(ctx);
    volumes.extend(tls.volumes);
    if let Some(mounts) = container.volume_mounts.as_mut() {
        mounts.extend(tls.mounts);
    }
    if cli_containers.enabled {
        // podman's image store, container state and runtime files: writable, per pod.
        for (name, path) in PODMAN_VOLUMES {
            volumes.push(Volume {
                name: name.into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            });
            if let Some(mounts) = container.volume_mounts.as_mut() {
                mounts.push(VolumeMount {
                    name: name.into(),
                    mount_path: path.into(),
                    ..Default::default()
                });
            }
        }
    }

    Deployment {
        metadata: ctx.metadata(ctx.name.clone()),
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(ctx.selector_labels()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(ctx.labels()),
                    annotations: Some(BTreeMap::from([
                        (RESTART_HASH_ANNOTATION.into(), restart_hash.to_owned()),
                        // Its emptyDirs hold nothing that outlives the pod (SQLite's file is lost
                        // with it anyway, as the quickstart preset says): the cluster autoscaler
                        // may move it.
                        (
                            SAFE_TO_EVICT_LOCAL_VOLUMES.into(),
                            empty_dirs(&volumes).join(","),
                        ),
                    ])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(ctx.name.clone()),
                    // The data plane watches its ConfigMap through the API with this token.
                    automount_service_account_token: Some(true),
                    // Service links would put `SEAL_GATEWAY_*_PORT`-style variables next to the
                    // data plane's own `SEAL_GATEWAY_*` overrides.
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(grace_period_seconds(&spec.settings)),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS_USER),
                        run_as_group: Some(RUN_AS_USER),
                        fs_group: Some(RUN_AS_USER),
                        seccomp_profile: Some(runtime_default_seccomp()),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    image_pull_secrets: (!spec.image_pull_secrets.is_empty())
                        .then(|| spec.image_pull_secrets.clone()),
                    volumes: Some(volumes),
                    // Replicas on different nodes where the cluster has them: one node's loss
                    // must not take the whole data plane.
                    topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                        max_skew: 1,
                        topology_key: "kubernetes.io/hostname".into(),
                        when_unsatisfiable: "ScheduleAnyway".into(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(ctx.selector_labels()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

pub(super) fn service(ctx: &GatewayContext) -> Service {
    let port = |name: &str, number: i32, app_protocol: Option<&str>| ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        app_protocol: app_protocol.map(Into::into),
        ..Default::default()
    };
    Service {
        metadata: ctx.metadata(ctx.name.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(ctx.selector_labels()),
            ports: Some(vec![
                port("http", HTTP_PORT, Some("http")),
                port("metrics", METRICS_PORT, Some("http")),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn pod_disruption_budget(ctx: &GatewayContext) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: ctx.metadata(ctx.name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(ctx.selector_labels()),
                ..Default::default()
            }),
            // Unready pods (every one of them while the database is down) protect nothing:
            // they must not block a node drain.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The cluster autoscaler's annotation naming the local volumes a pod may lose when moved.
const SAFE_TO_EVICT_LOCAL_VOLUMES: &str =
    "cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes";

/// Names of the `emptyDir` volumes.
fn empty_dirs(volumes: &[Volume]) -> Vec<&str> {
    volumes
        .iter()
        .filter(|v| v.empty_dir.is_some())
        .map(|v| v.name.as_str())
        .collect()
}

/// The config file, `/tmp` and the data folder: all a restricted data plane writes or reads.
fn volumes(ctx: &GatewayContext) -> Vec<Volume> {
    vec![
        // Only the config file: the snapshot is read through the API, never from the volume.
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: ctx.config_map_name(),
                items: Some(vec![KeyToPath {
                    key: CONFIG_FILE_KEY.into(),
                    path: CONFIG_FILE_KEY.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ]
}

/// The restricted Pod Security profile: the default, and all a data plane without CLI
/// containers needs.
fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..Default::default()
    }
}

/// What podman inside the pod needs (SealGateway `cli_containers.enabled`): root and a
/// privileged container, since it creates user, mount and network namespaces, cgroups and
/// overlay mounts for every CLI tool run. Those runs are themselves sandboxed by the data plane
/// (`--network none --read-only --cap-drop ALL`, non-root, limits).
fn podman_security_context() -> SecurityContext {
    SecurityContext {
        privileged: Some(true),
        allow_privilege_escalation: Some(true),
        read_only_root_filesystem: Some(false),
        run_as_non_root: Some(false),
        run_as_user: Some(0),
        run_as_group: Some(0),
        ..Default::default()
    }
}

/// Writable folders podman needs when `cli_containers.enabled`.
const PODMAN_VOLUMES: [(&str, &str); 3] = [
    ("containers-storage", "/var/lib/containers"),
    ("containers-run", "/run/containers"),
    ("containers-tmp", "/var/tmp"),
];
