//! The SEAL Gateway data plane.
//!
//! Module paths are part of the product: the runbook's `RUST_LOG` recipes select logs by them
//! (`aegis_seal_gateway::infrastructure::persistence`, `::infrastructure::auth`, ...).

pub mod application;
pub mod domain;
pub mod gateway;
pub mod infrastructure;
pub mod presentation;
