//! Adapters to the outside world: authentication, configuration files, the database.

pub mod auth;
pub mod config;
pub mod persistence;
