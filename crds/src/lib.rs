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
pub mod workflow;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
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
pub use workflow::{ApiSpecSource, OnError, OpenApiSource, Workflow, WorkflowSpec, WorkflowStep};

/// Every CustomResourceDefinition of the API, in a stable order.
pub fn custom_resource_definitions() -> Vec<CustomResourceDefinition> {
    vec![
        SealGateway::crd(),
        Workflow::crd(),
        CliTool::crd(),
        SecurityContext::crd(),
    ]
}
