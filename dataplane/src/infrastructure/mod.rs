//! Adapters to the outside world: authentication, configuration files, the database.

pub mod auth;
pub mod config;
pub mod container;
pub mod http_client;
pub mod metrics;
pub mod persistence;
pub mod reload;
pub mod telemetry;
