//! Types shared by several resources: credential paths, secret values, status.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// API group of every SEAL resource.
pub const GROUP: &str = "seal.100monkeys.ai";
/// API version of every SEAL resource.
pub const VERSION: &str = "v1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "seal.100monkeys.ai/v1";

/// How the gateway obtains the credential for an upstream call (reference §5.6).
///
/// Externally tagged, exactly as upstream spells it: `{StaticRef: {key: example/token}}`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub enum CredentialResolutionPath {
    /// OpenBao dynamic secret: `<engine>/creds/<role>`.
    SystemJit {
        openbao_engine_path: String,
        role: String,
    },
    /// Keycloak RFC 8693 token exchange of the caller's user token.
    HumanDelegated { target_service: String },
    /// HumanDelegated when a user token is present, else SystemJit.
    Auto {
        system_jit_openbao_engine_path: String,
        system_jit_role: String,
        target_service: String,
    },
    /// OpenBao KV v2 secret under `openbao_kv_mount`: `<key>` for a system-global resource,
    /// `tenant-<tenant_id>/<key>` for a tenant's.
    StaticRef { key: String },
    /// A per-user credential binding (Postgres only).
    UserBound { provider: String },
}

impl CredentialResolutionPath {
    /// The label used in audit events and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::SystemJit { .. } => "system_jit",
            Self::HumanDelegated { .. } => "human_delegated",
            Self::Auto { .. } => "auto",
            Self::StaticRef { .. } => "static_ref",
            Self::UserBound { .. } => "user_bound",
        }
    }
}

/// A reference to one key of a Kubernetes Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// A setting that may hold a secret.
///
/// In the config file it is a string, optionally `env:VAR` (read from the environment at start).
/// In a SealGateway resource it may instead be `{secret_key_ref: {name, key}}`, which the operator
/// turns into an environment variable of the data-plane pod.
///
/// Any other shape deserializes as [`SecretValue::Invalid`], which both the data plane and the
/// operator refuse by name. The CRD cannot refuse it (a structural schema has no "string or
/// object"), and a resource that failed to deserialize would fail every list of its kind, so one
/// mistyped SealGateway would stop the operator for all of them.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum SecretValue {
    Literal(String),
    FromSecret {
        secret_key_ref: SecretKeyRef,
    },
    /// Neither a string nor `{secret_key_ref: {name, key}}`, as written.
    Invalid(serde_json::Value),
}

impl SecretValue {
    /// What is wrong with an [`SecretValue::Invalid`] value.
    pub const INVALID: &str = "must be a string or {secret_key_ref: {name, key}}";
}

impl JsonSchema for SecretValue {
    fn schema_name() -> Cow<'static, str> {
        "SecretValue".into()
    }

    // A string or an object: a structural schema cannot say "one of two types", so the node keeps
    // unknown fields and the data plane and operator check the shape themselves.
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A string (in the config file also `env:VAR`) or `{secret_key_ref: {name, key}}`.",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

/// A setting that only a Secret may hold: `{secret_key_ref: {name, key}}`, the same shape as a
/// [`SecretValue`] taken from a Secret, with no literal form, so the value never sits in the
/// resource. The operator passes it to the data-plane container as `valueFrom.secretKeyRef`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FromSecret {
    pub secret_key_ref: SecretKeyRef,
}

/// A reference to one key of a ConfigMap in the resource's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigMapKeyRef {
    pub name: String,
    pub key: String,
}

/// Status shared by Workflow, CliTool and SecurityContext.
///
/// Several SealGateways may select one resource, and may judge it differently (a tool name
/// defined twice among what one gateway selects is refused there only). So each gateway writes
/// its own entry in `acceptance`, and `conditions` and `gateways` are derived from all entries:
/// whichever gateway writes the status, it writes the same.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ToolStatus {
    /// `Accepted`: True when every gateway that selects the resource accepted it; False with the
    /// problems when one refused it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` these conditions describe.
    #[serde(
        default,
        rename = "observedGeneration",
        skip_serializing_if = "Option::is_none"
    )]
    pub observed_generation: Option<i64>,
    /// The name agents call (`spec.tool_name` or `metadata.name`), as compiled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
    /// SealGateways (`namespace/name`) that serve this resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Each selecting SealGateway's own verdict, one entry per gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["gateway"]))]
    pub acceptance: Vec<GatewayAcceptance>,
}

/// One SealGateway's verdict on a resource it selects.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct GatewayAcceptance {
    /// The gateway, `namespace/name`.
    pub gateway: String,
    /// Whether it compiled the resource without problems, and so serves it.
    pub accepted: bool,
    /// Its problems with the resource, when it refused it: `field: message; field: message`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The `metadata.generation` it compiled.
    #[serde(
        default,
        rename = "observedGeneration",
        skip_serializing_if = "Option::is_none"
    )]
    pub observed_generation: Option<i64>,
}

/// Schema for free-form JSON objects (OpenAPI documents, JSON Schemas).
pub(crate) fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_secret_value_of_any_shape_reads() {
        let read = |v: serde_json::Value| serde_json::from_value::<SecretValue>(v).unwrap();
        assert_eq!(read(json!("x")), SecretValue::Literal("x".into()));
        assert_eq!(
            read(json!({"secret_key_ref": {"name": "db", "key": "url"}})),
            SecretValue::FromSecret {
                secret_key_ref: SecretKeyRef {
                    name: "db".into(),
                    key: "url".into()
                }
            }
        );
        for odd in [
            json!(5432),
            json!({"secretKeyRef": {"name": "db", "key": "url"}}),
            json!({"secret_key_ref": {"name": "db", "key": "url", "optional": true}}),
        ] {
            assert_eq!(read(odd.clone()), SecretValue::Invalid(odd));
        }
    }
}
