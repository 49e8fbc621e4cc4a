//! Adapters to the outside world: configuration files, the database.

pub mod config;
pub mod persistence;
