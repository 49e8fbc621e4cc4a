//! The HTTP face of the data plane: the hyper server, routing, handlers and error bodies.

pub mod control;
pub mod events;
pub mod http;
pub mod invoke;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod sessions;
pub mod tools;
