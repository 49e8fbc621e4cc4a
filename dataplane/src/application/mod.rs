//! Use cases: invocation (verify, authorize, dispatch), sessions, workflows.

pub mod catalog;
pub mod cli;
pub mod clock;
pub mod credential;
pub mod invocation;
pub mod registry;
pub mod sessions;
pub mod workflow;
