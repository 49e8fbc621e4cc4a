use std::collections::BTreeMap;

use aegis_seal_crds::gateway::GatewaySettings;
use aegis_seal_crds::manifest::strict;
use aegis_seal_crds::{Compiled, Resources, compile};
use k8s_openapi::api::core::v1::{ConfigMap, EnvVar, EnvVarSource, SecretKeySelector, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;
use crate::fixtures::{self, GW, GW_UID, IMAGE, NS};
use aegis_seal_crds::snapshot_shards::{self, INDEX_KEY, MAX_CONFIG_MAP_BYTES};

fn compiled(workflows: usize) -> Compiled {
    compile(&Resources {
        workflows: (0..workflows)
            .map(|i| fixtures::workflow(&format!("wf-{i}")))
            .collect(),
        cli_tools: vec![fixtures::cli_tool("git")],
        security_contexts: vec![fixtures::security_context("default-ctx")],
        ..Default::default()
    })
}

fn desired(spec: Value) -> Desired {
    desired_objects(&fixtures::gateway(spec), &compiled(1), IMAGE).unwrap()
}

fn all_metadata(d: &Desired) -> Vec<(&'static str, &ObjectMeta)> {
    let mut v = vec![
        ("ServiceAccount", &d.service_account.metadata),
        ("Role", &d.role.metadata),
        ("RoleBinding", &d.role_binding.metadata),
        ("ConfigMap", &d.config_map.metadata),
        ("Service", &d.service.metadata),
        ("Deployment", &d.deployment.metadata),
        ("PodDisruptionBudget", &d.pod_disruption_budget.metadata),
    ];
    v.extend(
        d.snapshot_config_maps
            .iter()
            .map(|cm| ("ConfigMap", &cm.metadata)),
    );
    v
}

#[test]
fn every_object_is_named_labelled_and_owned_by_the_gateway() {
    let d = desired(json!({}));
    let names: Vec<_> = all_metadata(&d)
        .iter()
        .map(|(kind, m)| (*kind, m.name.clone().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("ServiceAccount", GW),
            ("Role", GW),
            ("RoleBinding", GW),
            ("ConfigMap", "edge-config"),
            ("Service", GW),
            ("Deployment", GW),
            ("PodDisruptionBudget", GW),
        ]
        .map(|(k, n)| (k, n.to_string()))
    );
    let labels = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "seal-gateway".to_string(),
        ),
        ("app.kubernetes.io/instance".into(), GW.into()),
        (
            "app.kubernetes.io/managed-by".into(),
            "aegis-seal-operator".into(),
        ),
        ("app.kubernetes.io/component".into(), "data-plane".into()),
    ]);
    for (kind, meta) in all_metadata(&d) {
        assert_eq!(meta.namespace.as_deref(), Some(NS), "{kind}");
        assert_eq!(meta.labels.as_ref(), Some(&labels), "{kind}");
        let owners = meta.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1, "{kind}");
        let o = &owners[0];
        assert_eq!(
            (
                o.api_version.as_str(),
                o.kind.as_str(),
                o.name.as_str(),
                o.uid.as_str()
            ),
            ("seal.100monkeys.ai/v1", "SealGateway", GW, GW_UID),
            "{kind}"
        );
        assert_eq!(o.controller, Some(true), "{kind}");
        assert_eq!(o.block_owner_deletion, Some(true), "{kind}");
    }
}

#[test]
fn the_pod_grace_period_follows_the_drain() {
    let d = desired(json!({"network": {"drain_seconds": 600}}));
    let pod = d.deployment.spec.template.spec.as_ref().unwrap();
    // 600 s of drain, 15 s for stopped CLI runs, 5 s of margin.
    assert_eq!(pod.termination_grace_period_seconds, Some(620));
}

#[test]
fn the_deployment_runs_the_data_plane_restricted() {
    let d = desired(json!({
        "replicas": 1,
        "resources": {"limits": {"memory": "512Mi"}, "requests": {"cpu": "100m"}}
    }));
    let deploy = &d.deployment;
    let spec = &deploy.spec;
    assert_eq!(spec.replicas, Some(1));
    let selector = spec.selector.match_labels.as_ref().unwrap();
    assert_eq!(selector.len(), 2);
    assert_eq!(selector["app.kubernetes.io/instance"], GW);
    let template_meta = spec.template.metadata.as_ref().unwrap();
    assert_eq!(
        template_meta.annotations.as_ref().unwrap()[RESTART_HASH_ANNOTATION],
        d.restart_hash
    );
    assert_eq!(d.restart_hash.len(), 16);
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(GW));
    assert_eq!(pod.automount_service_account_token, Some(true));
    assert_eq!(pod.enable_service_links, Some(false));
    // The data plane's default 30 s drain and 15 s for stopped CLI runs, with a margin.
    assert_eq!(pod.termination_grace_period_seconds, Some(50));
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(65532));
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );

    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some(IMAGE));
    assert_eq!(
        c.args.as_deref().unwrap(),
        [
            "serve",
            "--config",
            "/etc/seal-gateway/seal-gateway-config.yaml"
        ]
    );
    assert_eq!(c.working_dir.as_deref(), Some("/var/lib/seal-gateway"));
    let csc = c.security_context.as_ref().unwrap();
    assert_eq!(csc.run_as_non_root, Some(true));
    assert_eq!(csc.run_as_user, Some(65532));
    assert_eq!(csc.read_only_root_filesystem, Some(true));
    assert_eq!(csc.allow_privilege_escalation, Some(false));
    assert_eq!(
        csc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert!(csc.capabilities.as_ref().unwrap().add.is_none());
    assert_eq!(csc.privileged, None);
    assert_eq!(
        csc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );

    let ports: Vec<_> = c
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.as_deref().unwrap(), p.container_port))
        .collect();
    // No gRPC port: the data plane serves none, so a published one would only refuse connections.
    assert_eq!(ports, [("http", 8089), ("metrics", 9092)]);
    let startup = c.startup_probe.as_ref().unwrap();
    assert_eq!(
        (startup.period_seconds, startup.failure_threshold),
        (Some(2), Some(45)),
        "90 s to start, beyond the 60 s the data plane waits for its snapshot"
    );
    for (probe, path) in [
        (startup, "/health"),
        (c.liveness_probe.as_ref().unwrap(), "/health"),
        (c.readiness_probe.as_ref().unwrap(), "/ready"),
    ] {
        let get = probe.http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::String("http".into()));
    }
    let env: BTreeMap<_, _> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    assert_eq!(env["SEAL_GATEWAY_CONFIGMAP"], Some("tools/edge-config"));
    assert_eq!(env["METRICS_BIND"], Some("0.0.0.0"));
    assert_eq!(env["METRICS_PORT"], Some("9092"));
    let resources = c.resources.as_ref().unwrap();
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "512Mi");
    assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "100m");

    let mounts: Vec<_> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            ("config", "/etc/seal-gateway", Some(true)),
            ("tmp", "/tmp", None),
            ("data", "/var/lib/seal-gateway", None),
        ]
    );
    let volumes = pod.volumes.as_ref().unwrap();
    let config = volumes[0].config_map.as_ref().unwrap();
    assert_eq!(config.name, "edge-config");
    assert_eq!(config.items.as_ref().unwrap()[0].key, CONFIG_FILE_KEY);
    assert!(volumes[1].empty_dir.is_some() && volumes[2].empty_dir.is_some());
}

#[test]
fn cli_containers_make_the_data_plane_container_privileged_with_podman_storage() {
    let pod_of = |d: &Desired| d.deployment.spec.template.spec.clone().unwrap();
    let restricted = pod_of(&desired(json!({})));
    let podman = pod_of(&desired(json!({"cli_containers": {"enabled": true}})));

    let sc = restricted.containers[0].security_context.clone().unwrap();
    assert_eq!(
        (
            sc.privileged,
            sc.run_as_non_root,
            sc.read_only_root_filesystem
        ),
        (None, Some(true), Some(true))
    );
    let sc = podman.containers[0].security_context.clone().unwrap();
    assert_eq!(
        (sc.privileged, sc.allow_privilege_escalation, sc.run_as_user),
        (Some(true), Some(true), Some(0))
    );
    assert_eq!(
        sc.run_as_non_root,
        Some(false),
        "overrides the pod's runAsNonRoot"
    );
    assert_eq!(sc.capabilities, None, "privileged: nothing to drop or add");

    let mounts = |pod: &k8s_openapi::api::core::v1::PodSpec| -> Vec<(String, String)> {
        pod.containers[0]
            .volume_mounts
            .clone()
            .unwrap()
            .into_iter()
            .map(|m| (m.name, m.mount_path))
            .collect()
    };
    let added: Vec<_> = mounts(&podman)
        .into_iter()
        .filter(|m| !mounts(&restricted).contains(m))
        .collect();
    assert_eq!(
        added,
        [
            ("containers-storage".into(), "/var/lib/containers".into()),
            ("containers-run".into(), "/run/containers".into()),
            ("containers-tmp".into(), "/var/tmp".into()),
        ]
    );
    let volumes = podman.volumes.unwrap();
    for (name, _) in &added {
        let v = volumes.iter().find(|v| &v.name == name).unwrap();
        assert!(v.empty_dir.is_some(), "{name}");
    }

    // Every emptyDir is named for the cluster autoscaler, which may then move the pod.
    let evictable = |d: &Desired| {
        let meta = d.deployment.spec.template.metadata.clone();
        meta.unwrap().annotations.unwrap()
            ["cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes"]
            .clone()
    };
    assert_eq!(evictable(&desired(json!({}))), "tmp,data");
    assert_eq!(
        evictable(&desired(json!({"cli_containers": {"enabled": true}}))),
        "tmp,data,containers-storage,containers-run,containers-tmp"
    );
}

fn container_env(d: &Desired) -> Vec<EnvVar> {
    d.deployment.spec.template.spec.as_ref().unwrap().containers[0]
        .env
        .clone()
        .unwrap()
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// What every data-plane container gets, tracing or not.
fn base_env() -> Vec<EnvVar> {
    vec![
        value_env("SEAL_GATEWAY_CONFIGMAP", "tools/edge-config"),
        value_env("METRICS_BIND", "0.0.0.0"),
        value_env("METRICS_PORT", "9092"),
    ]
}

#[test]
fn tracing_sets_the_standard_otel_env_with_headers_from_a_secret() {
    let without = desired(json!({}));
    let with = desired(json!({"tracing": {
        "endpoint": "http://otel-collector.observability.svc:4318",
        "service_name": "seal-edge",
        "sampler_ratio": 0.25,
        "headers": {"secret_key_ref": {"name": "otel-auth", "key": "headers"}}
    }}));

    let mut expected = base_env();
    expected.extend([
        value_env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://otel-collector.observability.svc:4318",
        ),
        value_env("OTEL_SERVICE_NAME", "seal-edge"),
        value_env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        value_env("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        EnvVar {
            name: "OTEL_EXPORTER_OTLP_HEADERS".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: "otel-auth".into(),
                    key: "headers".into(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]);
    let env = container_env(&with);
    assert_eq!(env, expected);
    // As the API server receives it: a reference the kubelet resolves, no value of the Secret's.
    assert_eq!(
        serde_json::to_value(&env[7]).unwrap(),
        json!({"name": "OTEL_EXPORTER_OTLP_HEADERS",
               "valueFrom": {"secretKeyRef": {"name": "otel-auth", "key": "headers", "optional": false}}})
    );

    // The env is all tracing changes: the data plane reads it at start, from the pod template, so
    // it is neither in the config file nor anywhere else in the pod.
    assert_eq!(with.config_map, without.config_map);
    assert_eq!(with.restart_hash, without.restart_hash);
    let mut stripped = with.deployment.clone();
    stripped.spec.template.spec.as_mut().unwrap().containers[0].env = Some(base_env());
    assert_eq!(stripped, without.deployment);

    // Only the endpoint: the data plane's defaults (service name, parent-based always-on) apply.
    let endpoint_only = desired(json!({"tracing": {"endpoint": " https://otlp.example.com/ "}}));
    let mut expected = base_env();
    expected.push(value_env(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "https://otlp.example.com/",
    ));
    assert_eq!(container_env(&endpoint_only), expected);
    for (ratio, arg) in [(0.0, "0"), (1.0, "1"), (0.001, "0.001")] {
        let d = desired(json!({"tracing": {"endpoint": "http://c:4318", "sampler_ratio": ratio}}));
        let env = container_env(&d);
        assert_eq!(env[5], value_env("OTEL_TRACES_SAMPLER_ARG", arg), "{ratio}");
    }
}

#[test]
fn a_gateway_without_tracing_renders_no_otel_env() {
    for spec in [
        json!({}),
        json!({"cli_containers": {"enabled": true}}),
        json!({"replicas": 2, "database": {"url": {"secret_key_ref": {"name": "db", "key": "url"}}}}),
    ] {
        let env = container_env(&desired(spec.clone()));
        let otel: Vec<_> = env.iter().filter(|e| e.name.starts_with("OTEL_")).collect();
        assert!(otel.is_empty(), "{spec}: {otel:?}");
    }
    assert_eq!(container_env(&desired(json!({}))), base_env());
}

#[test]
fn unusable_tracing_settings_are_refused_with_a_reason() {
    let c = compiled(0);
    let err = |tracing: Value| {
        desired_objects(&fixtures::gateway(json!({"tracing": tracing})), &c, IMAGE).unwrap_err()
    };
    for endpoint in [
        "otel-collector:4318",
        "grpc://otel-collector:4317",
        "",
        "http://",
        "http://otel collector:4318",
    ] {
        let e = err(json!({"endpoint": endpoint}));
        assert_eq!(e.reason(), "InvalidSettings");
        assert_eq!(
            e.to_string(),
            format!(
                "spec.tracing.endpoint: \"{endpoint}\" is not an http or https URL (e.g. http://otel-collector:4318)"
            )
        );
    }
    for ratio in [1.5, -0.1] {
        assert_eq!(
            err(json!({"endpoint": "http://c:4318", "sampler_ratio": ratio})).to_string(),
            format!("spec.tracing.sampler_ratio: {ratio} is not between 0.0 and 1.0")
        );
    }
    // Headers come from a Secret only: a literal would put the collector's credentials in the
    // resource (and so in the Deployment).
    let literal =
        serde_json::from_value::<SealGateway>(fixtures::gateway_json(json!({"tracing": {
            "endpoint": "http://c:4318", "headers": "authorization=Bearer%20t"
        }})));
    assert!(literal.is_err());
}

#[test]
fn outbound_tls_mounts_whole_volumes_and_points_the_settings_at_them() {
    let d = desired(json!({"outbound_tls": {
        "ca": {"config_map_key_ref": {"name": "corp-trust", "key": "bundle.pem"}},
        "client_certificate_secret": "gateway-client-tls"
    }}));
    let pod = d.deployment.spec.template.spec.clone().unwrap();
    let volumes = pod.volumes.unwrap();
    let ca = volumes.iter().find(|v| v.name == "outbound-ca").unwrap();
    assert_eq!(
        serde_json::to_value(ca).unwrap(),
        json!({"name": "outbound-ca", "configMap": {
            "name": "corp-trust", "items": [{"key": "bundle.pem", "path": "ca.crt"}]
        }})
    );
    let client = volumes
        .iter()
        .find(|v| v.name == "outbound-client")
        .unwrap();
    assert_eq!(
        serde_json::to_value(client).unwrap(),
        json!({"name": "outbound-client", "secret": {
            "secretName": "gateway-client-tls",
            "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
            "defaultMode": 0o440
        }})
    );
    // Directories, not `subPath` files: the kubelet then swaps in a renewed Secret.
    let mounts = pod.containers[0].volume_mounts.clone().unwrap();
    for (name, dir) in [
        ("outbound-ca", "/etc/seal-gateway/outbound-ca"),
        ("outbound-client", "/etc/seal-gateway/outbound-client"),
    ] {
        let m = mounts.iter().find(|m| m.name == name).unwrap();
        assert_eq!(
            (m.mount_path.as_str(), m.read_only, m.sub_path.as_deref()),
            (dir, Some(true), None)
        );
    }
    let outbound = &config_document(&d).spec.outbound;
    assert_eq!(
        outbound.ca_file.as_deref(),
        Some("/etc/seal-gateway/outbound-ca/ca.crt")
    );
    assert_eq!(
        outbound.client_certificate_file.as_deref(),
        Some("/etc/seal-gateway/outbound-client/tls.crt")
    );
    assert_eq!(
        outbound.client_key_file.as_deref(),
        Some("/etc/seal-gateway/outbound-client/tls.key")
    );

    // A CA from a Secret (cert-manager's ca.crt); no client certificate.
    let d = desired(json!({"outbound_tls": {
        "ca": {"secret_key_ref": {"name": "upstream-ca", "key": "ca.crt"}}
    }}));
    let volumes = pod_volumes(&d);
    let ca = volumes.iter().find(|v| v.name == "outbound-ca").unwrap();
    let secret = ca.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("upstream-ca"));
    assert!(!volumes.iter().any(|v| v.name == "outbound-client"));
    let outbound = &config_document(&d).spec.outbound;
    assert!(outbound.client_certificate_file.is_none() && outbound.client_key_file.is_none());

    // Without outbound_tls the pod is as it was, and the settings' own files pass through.
    let d = desired(json!({"outbound": {"ca_file": "/etc/ssl/certs/corp.pem"}}));
    let volumes = pod_volumes(&d);
    assert_eq!(volumes.len(), 3);
    assert_eq!(
        config_document(&d).spec.outbound.ca_file.as_deref(),
        Some("/etc/ssl/certs/corp.pem")
    );
}

fn pod_volumes(d: &Desired) -> Vec<Volume> {
    let pod = d.deployment.spec.template.spec.as_ref().unwrap();
    pod.volumes.clone().unwrap()
}

#[test]
fn the_trace_export_trusts_the_outbound_ca_and_presents_the_outbound_client_certificate() {
    let d = desired(json!({
        "tracing": {"endpoint": "https://otel-collector.observability.svc:4318"},
        "outbound_tls": {
            "ca": {"config_map_key_ref": {"name": "corp-trust", "key": "ca.crt"}},
            "client_certificate_secret": "gateway-client-tls"
        }
    }));
    let mut expected = base_env();
    expected.extend([
        value_env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://otel-collector.observability.svc:4318",
        ),
        value_env(
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "/etc/seal-gateway/outbound-ca/ca.crt",
        ),
        value_env(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            "/etc/seal-gateway/outbound-client/tls.crt",
        ),
        value_env(
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            "/etc/seal-gateway/outbound-client/tls.key",
        ),
    ]);
    assert_eq!(container_env(&d), expected);

    // A CA file already in the image counts the same; without tracing there is no OTEL_* at all.
    let d = desired(json!({
        "tracing": {"endpoint": "https://c:4318"},
        "outbound": {"ca_file": "/etc/ssl/corp.pem"}
    }));
    assert!(container_env(&d).contains(&value_env(
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        "/etc/ssl/corp.pem"
    )));
    let d = desired(json!({"outbound": {"ca_file": "/etc/ssl/corp.pem"}}));
    assert_eq!(container_env(&d), base_env());
}

#[test]
fn unusable_outbound_tls_is_refused_with_a_reason() {
    let c = compiled(0);
    let err = |spec: Value| {
        desired_objects(&fixtures::gateway(spec), &c, IMAGE)
            .unwrap_err()
            .to_string()
    };
    let exactly_one =
        "spec.outbound_tls.ca: set exactly one of config_map_key_ref and secret_key_ref";
    assert_eq!(err(json!({"outbound_tls": {"ca": {}}})), exactly_one);
    assert_eq!(
        err(json!({"outbound_tls": {"ca": {
            "config_map_key_ref": {"name": "a", "key": "ca.crt"},
            "secret_key_ref": {"name": "b", "key": "ca.crt"}
        }}})),
        exactly_one
    );
    assert_eq!(
        err(json!({"outbound_tls": {"ca": {"secret_key_ref": {"name": " ", "key": "ca.crt"}}}})),
        "spec.outbound_tls.ca.secret_key_ref.name: \" \" is not the name of a ConfigMap or Secret (lowercase letters, digits, '-' and '.')"
    );
    assert_eq!(
        err(json!({"outbound_tls": {"client_certificate_secret": "Client_TLS"}})),
        "spec.outbound_tls.client_certificate_secret: \"Client_TLS\" is not the name of a ConfigMap or Secret (lowercase letters, digits, '-' and '.')"
    );
    assert_eq!(
        err(
            json!({"outbound_tls": {"ca": {"config_map_key_ref": {"name": "trust", "key": "../ca"}}}})
        ),
        "spec.outbound_tls.ca.config_map_key_ref.key: \"../ca\" is not a key of a ConfigMap or Secret"
    );
    assert_eq!(
        err(json!({
            "outbound": {"ca_file": "/etc/ssl/corp.pem"},
            "outbound_tls": {"ca": {"config_map_key_ref": {"name": "corp", "key": "ca.crt"}}}
        })),
        "spec.outbound.ca_file: set either spec.outbound_tls.ca (the operator mounts it) or spec.outbound.ca_file (a file already in the image), not both"
    );
    assert_eq!(
        err(json!({
            "outbound": {"client_key_file": "/k.pem"},
            "outbound_tls": {"client_certificate_secret": "client"}
        })),
        "spec.outbound.client_certificate_file: set either spec.outbound_tls.client_certificate_secret (the operator mounts it) or spec.outbound.client_certificate_file (a file already in the image), not both"
    );
}

#[test]
fn spec_image_and_listener_ports_are_used() {
    let d = desired(json!({
        "image": "registry.local/seal:2",
        "network": {"bind_addr": "0.0.0.0:9000", "grpc_bind_addr": "[::]:9001"}
    }));
    let c = &d.deployment.spec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.local/seal:2"));
    let ports: Vec<_> = c
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.container_port)
        .collect();
    // `grpc_bind_addr` opens no port (no gRPC is served).
    assert_eq!(ports, [9000, 9092]);
    // The Service keeps its well-known ports and targets the container's named ports.
    let svc: Vec<_> = d
        .service
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.port, p.target_port.clone()))
        .collect();
    assert_eq!(
        svc,
        [
            (
                "http".into(),
                8089,
                Some(IntOrString::String("http".into()))
            ),
            (
                "metrics".into(),
                9092,
                Some(IntOrString::String("metrics".into()))
            ),
        ]
    );
}

#[test]
fn service_pdb_and_rbac() {
    let d = desired(json!({}));
    let svc = d.service.spec.as_ref().unwrap();
    assert_eq!(svc.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(svc.selector.as_ref().unwrap().len(), 2);

    let pdb = d.pod_disruption_budget.spec.as_ref().unwrap();
    assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(pdb.min_available, None);
    assert_eq!(
        pdb.unhealthy_pod_eviction_policy.as_deref(),
        Some("AlwaysAllow"),
        "unready pods never block a drain"
    );

    let template = &d.deployment.spec.template;
    let spread = &template.spec.as_ref().unwrap().topology_spread_constraints;
    let spread = &spread.as_ref().unwrap()[0];
    assert_eq!(
        (
            spread.topology_key.as_str(),
            spread.when_unsatisfiable.as_str(),
            spread.max_skew
        ),
        ("kubernetes.io/hostname", "ScheduleAnyway", 1)
    );
    assert_eq!(
        spread.label_selector.as_ref().unwrap().match_labels,
        d.deployment.spec.selector.match_labels
    );
    assert_eq!(
        pdb.selector.as_ref().unwrap().match_labels,
        d.deployment.spec.selector.match_labels
    );

    let rules = d.role.rules.as_ref().unwrap();
    assert_eq!(rules.len(), 1);
    let rule = &rules[0];
    assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
    assert_eq!(
        rule.resources.as_deref(),
        Some(&["configmaps".to_string()][..])
    );
    assert_eq!(rule.verbs, ["get", "list", "watch"]);
    assert_eq!(
        rule.resource_names.as_deref(),
        Some(&["edge-config".to_string()][..])
    );

    let rb = &d.role_binding;
    assert_eq!(rb.role_ref.kind, "Role");
    assert_eq!(rb.role_ref.name, GW);
    let subject = &rb.subjects.as_ref().unwrap()[0];
    assert_eq!(
        (
            subject.kind.as_str(),
            subject.name.as_str(),
            subject.namespace.as_deref()
        ),
        ("ServiceAccount", GW, Some(NS))
    );
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigDocument {
    api_version: String,
    kind: String,
    metadata: ConfigMetadata,
    spec: GatewaySettings,
}

#[derive(Deserialize)]
struct ConfigMetadata {
    name: String,
}

fn config_document(d: &Desired) -> ConfigDocument {
    let yaml = &d.config_map.data.as_ref().unwrap()[CONFIG_FILE_KEY];
    let value: Value = serde_yaml::from_str(yaml).unwrap();
    strict(value).unwrap()
}

#[test]
fn the_config_file_is_a_strict_sealgatewayconfig_of_the_settings() {
    let d = desired(json!({
        "auth": {"disabled": true, "seal_jwt_issuer": "me"},
        "cli": {"semantic_judge_url": "http://judge:8080"}
    }));
    let doc = config_document(&d);
    assert_eq!(doc.api_version, "seal.100monkeys.ai/v1");
    assert_eq!(doc.kind, "SealGatewayConfig");
    assert_eq!(doc.metadata.name, GW);
    let gw = fixtures::gateway(json!({
        "auth": {"disabled": true, "seal_jwt_issuer": "me"},
        "cli": {"semantic_judge_url": "http://judge:8080"}
    }));
    assert_eq!(doc.spec, gw.spec.settings);
}

#[test]
fn runbook_env_leaves_out_env_references() {
    let d = desired(json!({
        "credentials": {"keycloak_client_id": "env:KC_ID", "keycloak_client_secret": "env:KC_SECRET"}
    }));
    let c = &d.deployment.spec.template.spec.as_ref().unwrap().containers[0];
    let names: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert!(
        !names.iter().any(|n| n.starts_with("SEAL_GATEWAY_KEYCLOAK")),
        "{names:?}"
    );
}

#[test]
fn secret_refs_become_env_references_and_secret_env_vars() {
    let d = desired(json!({
        "replicas": 2,
        "database": {"url": {"secret_key_ref": {"name": "db", "key": "url"}}},
        "credentials": {
            "openbao_addr": "http://openbao:8200",
            "openbao_token": {"secret_key_ref": {"name": "bao", "key": "token"}},
            "keycloak_client_secret": "literal-is-kept"
        },
        "cli": {"semantic_judge_url": "http://judge:8080"}
    }));
    let doc = config_document(&d);
    // Numbered in the order of the settings' paths: credentials.openbao_token < database.url.
    assert_eq!(
        doc.spec.credentials.openbao_token,
        Some(SecretValue::Literal("env:SEAL_GW_SECRET_0".into()))
    );
    assert_eq!(
        doc.spec.database.url,
        SecretValue::Literal("env:SEAL_GW_SECRET_1".into())
    );
    assert_eq!(
        doc.spec.credentials.keycloak_client_secret,
        Some(SecretValue::Literal("literal-is-kept".into()))
    );
    let yaml = &d.config_map.data.as_ref().unwrap()[CONFIG_FILE_KEY];
    assert!(!yaml.contains("secret_key_ref"), "{yaml}");

    let c = &d.deployment.spec.template.spec.as_ref().unwrap().containers[0];
    let secret_env: Vec<_> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
            assert!(e.value.is_none());
            Some((e.name.as_str(), r.name.as_str(), r.key.as_str(), r.optional))
        })
        .collect();
    assert_eq!(
        secret_env,
        [
            ("SEAL_GW_SECRET_0", "bao", "token", Some(false)),
            ("SEAL_GW_SECRET_1", "db", "url", Some(false)),
            // The runbook's diagnostics read the token under its own name.
            ("SEAL_GATEWAY_OPENBAO_TOKEN", "bao", "token", Some(false)),
        ]
    );
    let plain_env: Vec<_> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .filter(|e| e.name.starts_with("SEAL_GATEWAY_"))
        .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?)))
        .collect();
    assert_eq!(
        plain_env,
        [
            ("SEAL_GATEWAY_CONFIGMAP", "tools/edge-config"),
            ("SEAL_GATEWAY_OPENBAO_ADDR", "http://openbao:8200"),
            ("SEAL_GATEWAY_SEMANTIC_JUDGE_URL", "http://judge:8080"),
            ("SEAL_GATEWAY_KEYCLOAK_CLIENT_SECRET", "literal-is-kept"),
        ]
    );
    let fields: Vec<_> = config_file(GW, &fixtures::gateway(json!({
        "database": {"url": {"secret_key_ref": {"name": "db", "key": "url"}}},
        "credentials": {"keycloak_client_secret": {"secret_key_ref": {"name": "kc", "key": "s"}}}
    })).spec.settings)
    .unwrap()
    .secret_env
    .into_iter()
    .map(|s| s.field)
    .collect();
    assert_eq!(
        fields,
        [
            "spec.credentials.keycloak_client_secret",
            "spec.database.url"
        ]
    );
}

#[test]
fn every_settings_change_rolls_the_pods_and_nothing_else_does() {
    let base = json!({
        "network": {"bind_addr": "0.0.0.0:8089", "grpc_bind_addr": "0.0.0.0:50055"},
        "database": {"url": "postgres://db/seal"},
        "credentials": {"openbao_token": {"secret_key_ref": {"name": "bao", "key": "token"}}},
        "replicas": 1
    });
    let hash = |patch: Value| {
        let mut spec = base.clone();
        merge(&mut spec, patch);
        let d = desired(spec);
        (d.restart_hash, d.config_map)
    };
    let (original, original_cm) = hash(json!({}));

    // The data plane reads its settings once, at start: each of these must reach it by a restart.
    let restart = [
        json!({"network": {"bind_addr": "0.0.0.0:9000"}}),
        json!({"network": {"grpc_bind_addr": "0.0.0.0:9001"}}),
        json!({"network": {"max_body_bytes": 1024}}),
        json!({"database": {"url": "postgres://other/seal"}}),
        json!({"database": {"url": {"secret_key_ref": {"name": "db", "key": "url"}}}}),
        json!({"image": "registry.local/seal:2"}),
        json!({"auth": {"disabled": true}}),
        json!({"auth": {"operator_jwks_uri": "https://idp/jwks", "seal_jwt_leeway_secs": 5}}),
        json!({"credentials": {"openbao_addr": "http://bao:8200", "openbao_kv_mount": "kv"}}),
        json!({"credentials": {"openbao_token": {"secret_key_ref": {"name": "bao2", "key": "token"}}}}),
        json!({"credentials": {"openbao_token": {"secret_key_ref": {"name": "bao", "key": "other"}}}}),
        json!({"credentials": {"keycloak_client_secret": {"secret_key_ref": {"name": "kc", "key": "s"}}}}),
        json!({"cli": {"semantic_judge_url": "http://judge"}}),
        json!({"ui": {"enabled": false}}),
        json!({"audit": {"retention_days": 30}}),
        json!({"outbound": {"ca_file": "/etc/ssl/corp.pem"}}),
        json!({"outbound_tls": {"client_certificate_secret": "client-tls"}}),
    ];
    for patch in restart {
        let (h, _) = hash(patch.clone());
        assert_ne!(h, original, "{patch} must change the restart hash");
    }

    // The Deployment's own fields change the pod template by themselves, or not at all.
    for patch in [
        json!({"replicas": 2}),
        json!({"resources": {"limits": {"memory": "1Gi"}}}),
    ] {
        let (h, cm) = hash(patch.clone());
        assert_eq!(h, original, "{patch} must not change the restart hash");
        assert_eq!(cm, original_cm, "{patch} is not in the ConfigMap");
    }

    // A new snapshot reaches pods by hot reload only.
    let gw = fixtures::gateway(base.clone());
    let one = desired_objects(&gw, &compiled(1), IMAGE).unwrap();
    let two = desired_objects(&gw, &compiled(2), IMAGE).unwrap();
    assert_eq!(one.restart_hash, two.restart_hash);
    assert_eq!(one.deployment, two.deployment);
    assert_ne!(one.snapshot_hash, two.snapshot_hash);
    assert_ne!(one.config_map, two.config_map);
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

#[test]
fn more_than_one_replica_on_sqlite_is_refused() {
    let gw = |spec: Value| fixtures::gateway(spec);
    let c = compiled(1);
    for spec in [
        json!({"replicas": 2}),
        json!({"replicas": 3, "database": {"url": "sqlite:///var/lib/seal-gateway/gw.db"}}),
    ] {
        let err = desired_objects(&gw(spec.clone()), &c, IMAGE).unwrap_err();
        assert!(
            matches!(err, DesiredError::ReplicasNeedPostgres { .. }),
            "{spec}: {err}"
        );
        assert_eq!(err.reason(), "ReplicasRequirePostgres");
        let message = err.to_string();
        assert!(message.contains("SQLite"), "{message}");
        assert!(message.contains("postgres://"), "{message}");
    }
    assert!(
        desired_objects(&gw(json!({"replicas": 1})), &c, IMAGE).is_ok(),
        "one replica on SQLite is fine"
    );
    for spec in [
        json!({"replicas": 3, "database": {"url": "postgres://db/seal"}}),
        json!({"replicas": 3, "database": {"url": {"secret_key_ref": {"name": "db", "key": "url"}}}}),
    ] {
        let d = desired_objects(&gw(spec.clone()), &c, IMAGE).unwrap();
        assert_eq!(d.deployment.spec.replicas, Some(3), "{spec}");
    }
}

#[test]
fn unusable_specs_are_refused_with_a_reason() {
    let c = compiled(0);
    let err = |spec: Value| desired_objects(&fixtures::gateway(spec), &c, IMAGE).unwrap_err();
    assert_eq!(
        err(json!({"network": {"bind_addr": "localhost"}})).to_string(),
        "spec.network.bind_addr: \"localhost\" is not a socket address (e.g. 0.0.0.0:8089)"
    );
    // It opens no port, but the data plane would refuse to start on it.
    assert_eq!(
        err(json!({"network": {"grpc_bind_addr": "grpc"}})).to_string(),
        "spec.network.grpc_bind_addr: \"grpc\" is not a socket address (e.g. 0.0.0.0:8089)"
    );
    assert_eq!(
        err(json!({"replicas": -1})),
        DesiredError::NegativeReplicas(-1)
    );
    // Shapes the CRD cannot refuse: the resource still reads, and is refused by its field.
    for (spec, field) in [
        (
            json!({"database": {"url": {"secretKeyRef": {"name": "db", "key": "url"}}}}),
            "spec.database.url",
        ),
        (
            json!({"credentials": {"openbao_token": {"secret_key_ref": {"name": "bao", "key": "token", "optional": true}}}}),
            "spec.credentials.openbao_token",
        ),
        (
            json!({"outbound": {"proxy_url": 3128}}),
            "spec.outbound.proxy_url",
        ),
    ] {
        let e = err(spec.clone());
        assert_eq!(e.reason(), "InvalidSettings", "{spec}");
        assert_eq!(
            e.to_string(),
            format!("{field}: must be a string or {{secret_key_ref: {{name, key}}}}"),
            "{spec}"
        );
    }

    let mut gw = fixtures::gateway(json!({}));
    gw.metadata.name = Some("Edge.Gateway".into());
    assert!(matches!(
        desired_objects(&gw, &c, IMAGE),
        Err(DesiredError::InvalidName(_))
    ));
    let mut gw = fixtures::gateway(json!({}));
    gw.metadata.uid = None;
    assert_eq!(
        desired_objects(&gw, &c, IMAGE).unwrap_err(),
        DesiredError::MissingMetadata("metadata.uid")
    );
}

/// The snapshot's JSON, read back from the ConfigMaps the way a data plane does.
fn reassembled_json(d: &Desired) -> Vec<u8> {
    let maps: Vec<&ConfigMap> = std::iter::once(&d.config_map)
        .chain(&d.snapshot_config_maps)
        .collect();
    let index =
        snapshot_shards::parse_index(&d.config_map.data.as_ref().unwrap()[INDEX_KEY]).unwrap();
    snapshot_shards::reassemble_json(&index, |cm, key| {
        let map = maps
            .iter()
            .find(|m| m.metadata.name.as_deref() == Some(cm))?;
        map.binary_data.as_ref()?.get(key).map(|b| b.0.as_slice())
    })
    .unwrap()
}

fn annotation<'a>(cm: &'a ConfigMap, key: &str) -> &'a str {
    &cm.metadata.annotations.as_ref().unwrap()[key]
}

fn check_limits(d: &Desired, limits: &SnapshotLimits) {
    for cm in std::iter::once(&d.config_map).chain(&d.snapshot_config_maps) {
        assert!(
            config_maps::payload_bytes(cm) <= limits.max_config_map_bytes,
            "{:?} holds {} bytes",
            cm.metadata.name,
            config_maps::payload_bytes(cm)
        );
        for shard in cm.binary_data.iter().flatten() {
            assert!(shard.1.0.len() <= limits.max_shard_bytes);
        }
    }
}

#[test]
fn the_snapshot_is_stored_compressed_with_its_index_and_hash() {
    let c = compiled(3);
    let d = desired_objects(&fixtures::gateway(json!({})), &c, IMAGE).unwrap();
    assert_eq!(d.snapshot_hash, c.snapshot.hash());
    assert!(d.snapshot_config_maps.is_empty());
    assert_eq!(
        annotation(&d.config_map, SNAPSHOT_HASH_ANNOTATION),
        c.snapshot.hash()
    );
    assert_eq!(annotation(&d.config_map, SNAPSHOT_SHARDS_ANNOTATION), "1");
    assert_eq!(
        annotation(&d.config_map, SNAPSHOT_CONFIG_MAPS_ANNOTATION),
        "1"
    );
    let binary = d.config_map.binary_data.as_ref().unwrap();
    assert_eq!(binary.keys().collect::<Vec<_>>(), ["snapshot.json.gz.0"]);
    // gzip magic
    assert_eq!(&binary["snapshot.json.gz.0"].0[..2], &[0x1f, 0x8b]);
    let index: Value =
        serde_json::from_str(&d.config_map.data.as_ref().unwrap()[INDEX_KEY]).unwrap();
    assert_eq!(index["format"], "seal.100monkeys.ai/snapshot-shards/v1");
    assert_eq!(index["snapshot_hash"], c.snapshot.hash());
    assert_eq!(index["shards"][0]["config_map"], "edge-config");
    assert_eq!(index["shards"][0]["key"], "snapshot.json.gz.0");
    assert_eq!(
        reassembled_json(&d),
        serde_json::to_vec(&c.snapshot).unwrap()
    );
    // Deterministic: the same input applies the same bytes (an apply that changes nothing).
    assert_eq!(
        d,
        desired_objects(&fixtures::gateway(json!({})), &c, IMAGE).unwrap()
    );
}

/// `n` workflows, each described in a paragraph of its own; `ids` makes every word a 64-bit hex
/// id, which compresses poorly.
fn many_workflows(n: usize, words_per_description: usize) -> Compiled {
    many_workflows_with(n, words_per_description, false)
}

fn many_workflows_with(n: usize, words_per_description: usize, ids: bool) -> Compiled {
    const WORDS: [&str; 16] = [
        "repository",
        "team",
        "grant",
        "access",
        "create",
        "issue",
        "label",
        "branch",
        "protect",
        "review",
        "deploy",
        "release",
        "archive",
        "member",
        "invite",
        "audit",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let workflows = (0..n)
        .map(|i| {
            let description: Vec<String> = (0..words_per_description)
                .map(|_| {
                    let r = next();
                    if ids {
                        format!("{r:016x}")
                    } else {
                        format!("{}{}", WORDS[(r % 16) as usize], r % 997)
                    }
                })
                .collect();
            serde_json::from_value(fixtures::workflow_json(
                &format!("workflow-{i:04}"),
                &description.join(" "),
            ))
            .unwrap()
        })
        .collect();
    let c = compile(&Resources {
        workflows,
        ..Default::default()
    });
    assert_eq!(c.snapshot.workflows.len(), n);
    c
}

#[test]
fn two_thousand_workflows_fit_and_reassemble_byte_identically() {
    let c = many_workflows(2000, 40);
    let json = serde_json::to_vec(&c.snapshot).unwrap();
    assert!(
        json.len() > 2 * MAX_CONFIG_MAP_BYTES,
        "uncompressed the snapshot would not fit one ConfigMap: {} bytes",
        json.len()
    );
    let d = desired_objects(&fixtures::gateway(json!({})), &c, IMAGE).unwrap();
    check_limits(&d, &SnapshotLimits::default());
    let compressed: usize = d
        .config_map
        .binary_data
        .iter()
        .flatten()
        .map(|(_, b)| b.0.len())
        .sum();
    eprintln!(
        "2,000 workflows: {} bytes of JSON, {compressed} compressed",
        json.len()
    );
    assert_eq!(reassembled_json(&d), json);
    assert_eq!(d.snapshot_hash, c.snapshot.hash());
}

#[test]
fn a_snapshot_larger_than_one_config_map_spreads_over_several() {
    // Descriptions full of ids compress poorly: more than 1 MiB compressed.
    let c = many_workflows_with(2000, 80, true);
    let d = desired_objects(&fixtures::gateway(json!({})), &c, IMAGE).unwrap();
    let limits = SnapshotLimits::default();
    check_limits(&d, &limits);
    assert!(
        !d.snapshot_config_maps.is_empty(),
        "expected additional ConfigMaps"
    );
    let names: Vec<_> = d
        .snapshot_config_maps
        .iter()
        .map(|cm| cm.metadata.name.clone().unwrap())
        .collect();
    let expected: Vec<_> = (1..=names.len())
        .map(|i| format!("edge-snapshot-{i}"))
        .collect();
    assert_eq!(names, expected);
    for cm in &d.snapshot_config_maps {
        assert_eq!(cm.metadata.labels.as_ref().unwrap()[SNAPSHOT_OF_LABEL], GW);
        assert!(cm.data.is_none());
    }
    let shard_count: usize = std::iter::once(&d.config_map)
        .chain(&d.snapshot_config_maps)
        .map(|cm| cm.binary_data.iter().flatten().count())
        .sum();
    assert!(shard_count >= 2);
    assert_eq!(
        annotation(&d.config_map, SNAPSHOT_SHARDS_ANNOTATION),
        shard_count.to_string()
    );
    assert_eq!(
        annotation(&d.config_map, SNAPSHOT_CONFIG_MAPS_ANNOTATION),
        (names.len() + 1).to_string()
    );
    let mut role_names = vec!["edge-config".to_string()];
    role_names.extend(names);
    assert_eq!(
        d.role.rules.as_ref().unwrap()[0].resource_names.as_ref(),
        Some(&role_names)
    );
    assert_eq!(
        reassembled_json(&d),
        serde_json::to_vec(&c.snapshot).unwrap()
    );
}

#[test]
fn small_limits_spread_shards_and_a_cap_refuses_too_many() {
    let c = many_workflows(100, 40);
    let gw = fixtures::gateway(json!({}));
    let config_len = config_file(GW, &gw.spec.settings).unwrap().yaml.len();
    let shards = snapshot_shards::encode(&c.snapshot, 300)
        .unwrap()
        .shards
        .len();
    // Room in the main ConfigMap for the config, the index and one shard.
    let limits = SnapshotLimits {
        max_shard_bytes: 300,
        max_config_map_bytes: config_len + 1024 + 192 * shards + 300,
        max_config_maps: 64,
    };
    let d = desired_objects_with_limits(&gw, &c, IMAGE, &limits).unwrap();
    check_limits(&d, &limits);
    assert_eq!(d.config_map.binary_data.as_ref().unwrap().len(), 1);
    assert!(d.snapshot_config_maps.len() >= 2, "{shards} shards");
    assert_eq!(
        reassembled_json(&d),
        serde_json::to_vec(&c.snapshot).unwrap()
    );

    let capped = SnapshotLimits {
        max_config_maps: 2,
        ..limits
    };
    let err = desired_objects_with_limits(&gw, &c, IMAGE, &capped).unwrap_err();
    assert!(matches!(err, DesiredError::SnapshotTooLarge(_)), "{err}");
}

#[test]
fn image_pull_settings_reach_the_data_plane_pod() {
    let pod = |d: &Desired| d.deployment.spec.template.spec.clone().unwrap();
    let default = pod(&desired(json!({})));
    assert_eq!(
        default.containers[0].image_pull_policy.as_deref(),
        Some("IfNotPresent")
    );
    assert_eq!(default.image_pull_secrets, None);

    let private = pod(&desired(json!({
        "image": "registry.corp/seal-gateway:1.2",
        "image_pull_policy": "Always",
        "image_pull_secrets": [{"name": "corp-registry"}],
    })));
    assert_eq!(
        private.containers[0].image.as_deref(),
        Some("registry.corp/seal-gateway:1.2")
    );
    assert_eq!(
        private.containers[0].image_pull_policy.as_deref(),
        Some("Always")
    );
    assert_eq!(private.image_pull_secrets.unwrap()[0].name, "corp-registry");
}
