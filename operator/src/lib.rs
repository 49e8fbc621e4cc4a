//! The SEAL Gateway operator: reconciles each SealGateway, with the Workflows, CliTools and
//! SecurityContexts it selects, into a running, hot-reloaded data plane; and generates the CRDs the
//! Helm chart ships.
//!
//! - [`selection`]: which resources a gateway serves (pure);
//! - [`desired`]: every object a gateway runs, from the gateway and its compiled resources (pure);
//! - [`status`]: the statuses a reconcile writes and the Events their transitions deserve (pure);
//! - [`documents`]: the OpenAPI documents workflows name by URL, fetched for compiling;
//! - [`reconcile`]: the reconciler and its error policy;
//! - [`controller`]: what triggers a reconcile, and the controller loop;
//! - [`leader`]: Lease-based leader election;
//! - [`metrics`] and [`server`]: `/metrics` and `/healthz`;
//! - [`crdgen`]: the CRD YAML files.

pub mod controller;
pub mod crdgen;
pub mod desired;
pub mod documents;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod selection;
pub mod server;
pub mod status;

/// Field manager of every server-side apply, and `app.kubernetes.io/managed-by` of what it applies.
pub const FIELD_MANAGER: &str = "aegis-seal-operator";

#[cfg(test)]
mod fixtures;
