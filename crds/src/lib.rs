//! The SEAL Gateway API: the four custom resources, the settings a data plane runs with, the compiled
//! [`Snapshot`] a data plane serves, [`compile`], which turns resources into a snapshot, and
//! [`snapshot_shards`], the format a snapshot travels in through ConfigMaps. No I/O.

pub mod cli_tool;
pub mod common;
pub mod compile;
pub mod gateway;
pub mod manifest;
pub mod openapi;
pub mod security_context;
pub mod snapshot;
pub mod snapshot_shards;
pub mod tenancy;
pub mod workflow;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

pub use cli_tool::{CliTool, CliToolSpec, ContainerResources};
pub use common::{
    API_VERSION, ConfigMapKeyRef, CredentialResolutionPath, FromSecret, GROUP, GatewayAcceptance,
    SecretKeyRef, SecretValue, ToolStatus, VERSION,
};
pub use compile::{Compiled, Problem, ResourceResult, Resources, compile, openapi_urls};
pub use gateway::{GatewaySettings, SealGateway, SealGatewaySpec, SealGatewayStatus};
pub use manifest::{ManifestError, ManifestOrigin, parse_manifests};
pub use security_context::{Capability, RateLimit, SecurityContext, SecurityContextSpec};
pub use snapshot::{
    CliToolEntry, ResourceRef, SecurityContextEntry, Snapshot, WorkflowEntry, content_hash,
};
pub use tenancy::NamespaceTenancy;
pub use workflow::{ApiSpecSource, OnError, OpenApiSource, Workflow, WorkflowSpec, WorkflowStep};

/// Every CustomResourceDefinition of the API, in a stable order.
pub fn custom_resource_definitions() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        SealGateway::crd(),
        Workflow::crd(),
        CliTool::crd(),
        SecurityContext::crd(),
    ];
    for version in crds.iter_mut().flat_map(|crd| crd.spec.versions.iter_mut()) {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|v| v.open_api_v3_schema.as_mut())
        {
            bound_integers(schema);
        }
    }
    crds
}

/// Gives every integer the range of the Rust type that reads it. The API server checks `minimum`
/// and `maximum` but not `format`, and an object it accepted that the operator cannot read fails
/// the whole list of its kind: one Workflow with `timeout_seconds: 5000000000` would stop every
/// gateway that selects its namespace. (64-bit integers need nothing: the API server itself
/// refuses what does not fit in an `int64`.)
fn bound_integers(schema: &mut JSONSchemaProps) {
    let range = match schema.format.as_deref() {
        Some("uint8") => Some((0.0, f64::from(u8::MAX))),
        Some("uint16") => Some((0.0, f64::from(u16::MAX))),
        Some("uint32") => Some((0.0, f64::from(u32::MAX))),
        Some("int8") => Some((f64::from(i8::MIN), f64::from(i8::MAX))),
        Some("int16") => Some((f64::from(i16::MIN), f64::from(i16::MAX))),
        Some("int32") => Some((f64::from(i32::MIN), f64::from(i32::MAX))),
        _ => None,
    };
    if let Some((min, max)) = range {
        schema.minimum = Some(schema.minimum.map_or(min, |m| m.max(min)));
        schema.maximum = Some(schema.maximum.map_or(max, |m| m.min(max)));
    }
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.all_of.iter_mut().flatten())
        .chain(schema.any_of.iter_mut().flatten())
        .chain(schema.one_of.iter_mut().flatten())
        .chain(schema.not.as_deref_mut());
    let items: Vec<&mut JSONSchemaProps> = match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(item)) => vec![item.as_mut()],
        Some(JSONSchemaPropsOrArray::Schemas(items)) => items.iter_mut().collect(),
        None => Vec::new(),
    };
    let additional = match schema.additional_properties.as_mut() {
        Some(JSONSchemaPropsOrBool::Schema(value)) => Some(value.as_mut()),
        _ => None,
    };
    for child in children.chain(items).chain(additional) {
        bound_integers(child);
    }
}
