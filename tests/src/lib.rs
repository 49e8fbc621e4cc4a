//! End-to-end tests across the SEAL Gateway crates live in `tests/`; this library holds what they
//! and the other crates' tests share:
//!
//! - [`fake_api`]: a small, stateful Kubernetes API server, for the operator's controllers and the
//!   data plane's ConfigMap watch (no real API server can run on the test machines).

pub mod fake_api;
