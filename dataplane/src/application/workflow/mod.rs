//! Workflows: templated HTTP calls to an OpenAPI-described upstream.
//!
//! A [`CompiledWorkflow`] is built once per snapshot from a `WorkflowEntry`; a [`WorkflowEngine`]
//! executes it per invocation and hands back the result and the audit events, which the caller
//! commits before answering.

pub mod audit;
pub mod compiled;
pub mod engine;
pub mod request;
pub mod template;

pub use audit::{
    WORKFLOW_INVOCATION_COMPLETED, WORKFLOW_INVOCATION_FAILED, WORKFLOW_INVOCATION_STARTED,
    WORKFLOW_STEP_EXECUTED, WORKFLOW_STEP_FAILED,
};
pub use compiled::{CompiledWorkflow, DEFAULT_RETRIES, DEFAULT_STEP_TIMEOUT_SECONDS};
pub use engine::{ExecutionContext, WorkflowEngine, WorkflowError, WorkflowOutcome};
