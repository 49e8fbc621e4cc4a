//! The data plane's identity and its only permission: reading its own ConfigMaps.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::GatewayContext;

pub(super) fn service_account(ctx: &GatewayContext) -> ServiceAccount {
    ServiceAccount {
        metadata: ctx.metadata(ctx.name.clone()),
        ..Default::default()
    }
}

/// get/list/watch on the named ConfigMaps only. With `resourceNames`, list and watch work when
/// they name the object: `fieldSelector=metadata.name=<name>`.
pub(super) fn role(ctx: &GatewayContext, config_maps: Vec<String>) -> Role {
    Role {
        metadata: ctx.metadata(ctx.name.clone()),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            resource_names: Some(config_maps),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..Default::default()
        }]),
    }
}

pub(super) fn role_binding(ctx: &GatewayContext) -> RoleBinding {
    RoleBinding {
        metadata: ctx.metadata(ctx.name.clone()),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: ctx.name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: ctx.name.clone(),
            namespace: Some(ctx.namespace.clone()),
            ..Default::default()
        }]),
    }
}
