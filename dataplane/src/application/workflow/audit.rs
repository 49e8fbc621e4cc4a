//! The audit events of a workflow invocation. Payloads are flat JSON objects with RFC 3339 UTC times,
//! so the runbook's `payload->>'execution_id'` queries work on both database backends.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use http::StatusCode;
use serde_json::{Map, Value};

use crate::infrastructure::persistence::AuditEvent;

pub const WORKFLOW_INVOCATION_STARTED: &str = "WorkflowInvocationStarted";
/// One per attempt of a step that got an HTTP response, whatever its status.
pub const WORKFLOW_STEP_EXECUTED: &str = "WorkflowStepExecuted";
/// A step failed and `on_error: continue` let the workflow go on.
pub const WORKFLOW_STEP_FAILED: &str = "WorkflowStepFailed";
pub const WORKFLOW_INVOCATION_COMPLETED: &str = "WorkflowInvocationCompleted";
/// The invocation failed: always written, whatever the failure class.
pub const WORKFLOW_INVOCATION_FAILED: &str = "WorkflowInvocationFailed";

/// Collects one invocation's events, in order.
pub(super) struct EventLog<'a> {
    workflow_id: &'a str,
    execution_id: &'a str,
    tenant_id: Option<&'a str>,
    events: Vec<AuditEvent>,
}

impl<'a> EventLog<'a> {
    pub fn new(
        workflow_id: &'a str,
        execution_id: &'a str,
        tenant_id: Option<&'a str>,
        capacity: usize,
    ) -> Self {
        Self {
            workflow_id,
            execution_id,
            tenant_id,
            events: Vec::with_capacity(capacity),
        }
    }

    pub fn started(&mut self, name: &str) {
        self.push(WORKFLOW_INVOCATION_STARTED, "started_at", |p| {
            p.insert("name".into(), name.into());
        });
    }

    pub fn step_executed(&mut self, step: &str, status: StatusCode, took: Duration, attempt: u32) {
        self.push(WORKFLOW_STEP_EXECUTED, "executed_at", |p| {
            p.insert("step_name".into(), step.into());
            p.insert("http_status".into(), status.as_u16().into());
            p.insert("duration_ms".into(), millis(took).into());
            p.insert("attempt".into(), attempt.into());
        });
    }

    pub fn step_failed(&mut self, step: &str, reason: &str) {
        self.push(WORKFLOW_STEP_FAILED, "failed_at", |p| {
            p.insert("step_name".into(), step.into());
            p.insert("reason".into(), reason.into());
            p.insert("on_error".into(), "continue".into());
        });
    }

    pub fn completed(&mut self, total_steps: usize, took: Duration) {
        self.push(WORKFLOW_INVOCATION_COMPLETED, "completed_at", |p| {
            p.insert("total_steps".into(), total_steps.into());
            p.insert("duration_ms".into(), millis(took).into());
        });
    }

    pub fn failed(&mut self, step: &str, reason: &str) {
        self.push(WORKFLOW_INVOCATION_FAILED, "failed_at", |p| {
            p.insert("failed_step".into(), step.into());
            p.insert("reason".into(), reason.into());
        });
    }

    pub fn into_events(self) -> Vec<AuditEvent> {
        self.events
    }

    fn push(
        &mut self,
        event_type: &'static str,
        time_field: &str,
        fill: impl FnOnce(&mut Map<String, Value>),
    ) {
        let now = Utc::now();
        let mut payload = Map::new();
        payload.insert("workflow_id".into(), self.workflow_id.into());
        payload.insert("execution_id".into(), self.execution_id.into());
        fill(&mut payload);
        payload.insert(
            time_field.into(),
            now.to_rfc3339_opts(SecondsFormat::Millis, true).into(),
        );
        let mut event = AuditEvent::new(event_type, payload);
        // The tenant goes to the event's own column, keeping the payload to the documented fields.
        event.tenant_id = self.tenant_id.map(str::to_owned);
        event.created_at = now;
        self.events.push(event);
    }
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
