//! The HTTP face of the data plane: the hyper server, routing and error bodies.

pub mod routes;
pub mod server;
