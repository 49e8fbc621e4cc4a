//! Executing a [`CompiledWorkflow`]: render each step, call the upstream, check and extract the
//! response, apply the step's `on_error`, and record the audit events.
//!
//! Logs (target `aegis_seal_gateway::application::workflow::engine`): `debug` for the start and end
//! of an invocation and for failed steps, `trace` for each step's request (method, URL without query,
//! body size, header names; credential values never) and response (status, duration, size).

use std::time::{Duration, Instant};

use aegis_seal_crds::OnError;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use serde_json::{Map, Value, json};

use super::audit::{EventLog, millis};
use super::compiled::{CompiledStep, CompiledWorkflow};
use super::request::{self, kind_of};
use super::template::{self, TemplateScope};
use crate::application::credential::redact_text;
use crate::infrastructure::http_client::{
    HttpClient, HttpClientError, OutboundRequest, OutboundResponse, redacted_url,
};
use crate::infrastructure::persistence::AuditEvent;
use crate::infrastructure::telemetry;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Most bytes of an upstream error body quoted in a failure reason.
pub const BODY_EXCERPT_BYTES: usize = 512;
/// Most top-level response keys listed when an extractor misses.
const LISTED_KEYS: usize = 20;
/// First retry delay; doubled per retry up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What one invocation runs with.
#[derive(Debug, Clone, Copy)]
pub struct ExecutionContext<'a> {
    pub execution_id: &'a str,
    /// The calling tenant, whose rows the events are: a system-global workflow's events belong to
    /// the tenant that invoked it, as the call's other events do.
    pub tenant_id: Option<&'a str>,
    /// The invocation arguments (`input` in templates).
    pub arguments: &'a Value,
    /// Added to every request; they replace template-supplied headers of the same name.
    pub credential_headers: &'a [(HeaderName, HeaderValue)],
    /// The credential's values, kept out of this engine's logs: a failure reason may quote an
    /// upstream body that echoes them. (The caller redacts the result and the events.)
    pub secrets: &'a [String],
    /// Overrides the HTTP client's response size bound.
    pub max_response_bytes: Option<u64>,
}

/// The result and the events to commit before answering. The engine writes nothing itself.
#[derive(Debug)]
pub struct WorkflowOutcome {
    /// `{"workflow_id", "execution_id", "result": <last response>, "steps": {step: {key: value}},
    /// "state": {"input": <arguments>, "<step>.<key>": value}}`.
    pub result: Result<Value, WorkflowError>,
    pub events: Vec<AuditEvent>,
}

/// Why an invocation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workflow step \"{failed_step}\" failed: {reason}")]
pub struct WorkflowError {
    /// 502 for upstream and transport failures, 500 for template, extractor and internal ones.
    pub status: StatusCode,
    pub failed_step: String,
    /// The exact error, also in the `WorkflowInvocationFailed` event.
    pub reason: String,
}

impl WorkflowError {
    /// The response body: `{"error": reason, "failed_step": step}`.
    pub fn body(&self) -> Value {
        json!({"error": self.reason, "failed_step": self.failed_step})
    }
}

/// Runs workflows over one shared, pooled [`HttpClient`].
#[derive(Debug, Clone)]
pub struct WorkflowEngine {
    http: HttpClient,
    /// Cancelled when the gateway stops after its drain: the runs still going end there.
    stop: CancellationToken,
}

/// Why a workflow cut short by [`WorkflowEngine::stop_runs`] failed.
pub const STOPPED: &str = "the gateway stopped while the workflow ran; the step's request was abandoned, and the upstream may or may not have acted on it";

struct StepSuccess {
    response: Value,
    extracted: Map<String, Value>,
}

struct StepFailure {
    status: StatusCode,
    reason: String,
    /// The response JSON, when the step failed only on an extractor.
    response: Option<Value>,
    /// What the extractors did find.
    extracted: Map<String, Value>,
    /// Whether `on_error: retry` may send the request again: only when the upstream did not
    /// answer, or answered that it failed or is overloaded. After a 2xx whose body or extractors
    /// disappoint, or a 4xx, sending again would only repeat what it did, and a POST repeated is
    /// a second payment, a second repository.
    retryable: bool,
}

impl StepFailure {
    fn template(reason: String) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            reason,
            response: None,
            extracted: Map::new(),
            retryable: false,
        }
    }

    fn upstream(reason: String, retryable: bool) -> Self {
        Self {
            status: StatusCode::BAD_GATEWAY,
            reason,
            response: None,
            extracted: Map::new(),
            retryable,
        }
    }
}

/// Answers worth another attempt: the upstream timed out, throttled, or failed on its side. A
/// request that is not idempotent (RFC 9110: POST, PATCH) is sent again only after an answer that
/// says it was not acted on (408, 429, 503): after a 500, 502 or 504 it may have been, and a
/// second POST is a second payment, a second repository.
fn retryable_status(status: StatusCode, method: &Method) -> bool {
    match status {
        StatusCode::REQUEST_TIMEOUT
        | StatusCode::TOO_MANY_REQUESTS
        | StatusCode::SERVICE_UNAVAILABLE => true,
        _ => status.is_server_error() && is_idempotent(method),
    }
}

/// RFC 9110 §9.2.2: sending it twice has the effect of sending it once.
fn is_idempotent(method: &Method) -> bool {
    method.is_safe() || *method == Method::PUT || *method == Method::DELETE
}

impl WorkflowEngine {
    pub fn new(http: HttpClient) -> Self {
        Self {
            http,
            stop: CancellationToken::new(),
        }
    }

    /// Ends the runs still going, and any started later (the gateway is stopping after its
    /// drain): each fails at the step it is in with 503 and `WorkflowInvocationFailed`, so that
    /// its record is written while the audit log still commits, and its leases are released.
    pub fn stop_runs(&self) {
        self.stop.cancel();
    }

    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// Runs the workflow; its events begin with `WorkflowInvocationStarted`.
    pub async fn execute(
        &self,
        wf: &CompiledWorkflow,
        ctx: ExecutionContext<'_>,
    ) -> WorkflowOutcome {
        let started = Self::started_event(wf, ctx.execution_id, ctx.tenant_id);
        let mut outcome = self.execute_started(wf, ctx).await;
        outcome.events.insert(0, started);
        outcome
    }

    /// `WorkflowInvocationStarted`, for a caller that records it itself before the run, as the
    /// invocation path does before resolving the workflow's credential (reference §6 steps 2-5),
    /// and then calls [`Self::execute_started`].
    pub fn started_event(
        wf: &CompiledWorkflow,
        execution_id: &str,
        tenant_id: Option<&str>,
    ) -> AuditEvent {
        let mut log = EventLog::new(wf.workflow_id(), execution_id, tenant_id, 1);
        log.started(wf.tool_name());
        log.into_events()
            .pop()
            .expect("started() records one event")
    }

    /// [`Self::execute`] without its `WorkflowInvocationStarted`, which the caller recorded.
    pub async fn execute_started(
        &self,
        wf: &CompiledWorkflow,
        ctx: ExecutionContext<'_>,
    ) -> WorkflowOutcome {
        let started = Instant::now();
        let workflow_id = wf.workflow_id();
        let mut log = EventLog::new(
            workflow_id,
            ctx.execution_id,
            ctx.tenant_id,
            wf.steps.len() + 1,
        );
        tracing::debug!(
            workflow_id,
            execution_id = ctx.execution_id,
            tool = wf.tool_name(),
            steps = wf.steps.len(),
            "workflow started"
        );

        let mut scope = TemplateScope::new(ctx.arguments);
        let mut last_response = json!({});
        for step in &wf.steps {
            let ran = tokio::select! {
                biased;
                () = self.stop.cancelled() => None,
                ran = self.run_step(wf, step, &scope, &ctx, &mut log) => Some(ran),
            };
            let Some(ran) = ran else {
                log.failed(&step.name, STOPPED);
                tracing::warn!(
                    workflow_id,
                    execution_id = ctx.execution_id,
                    step = %step.name,
                    "workflow stopped with the gateway"
                );
                return WorkflowOutcome {
                    result: Err(WorkflowError {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        failed_step: step.name.clone(),
                        reason: STOPPED.to_owned(),
                    }),
                    events: log.into_events(),
                };
            };
            match ran {
                Ok(done) => {
                    scope.record(&step.name, done.extracted);
                    last_response = done.response;
                }
                Err(failure) if step.on_error == OnError::Continue => {
                    tracing::debug!(
                        workflow_id,
                        execution_id = ctx.execution_id,
                        step = %step.name,
                        reason = %redact_text(&failure.reason, ctx.secrets),
                        "workflow step failed; continuing (on_error: continue)"
                    );
                    // Whatever the extractors found stays usable; the missing keys stay absent, so a
                    // later template that needs them fails in strict mode.
                    if let Some(response) = failure.response {
                        scope.record(&step.name, failure.extracted);
                        last_response = response;
                    }
                    log.step_failed(&step.name, &failure.reason);
                }
                Err(failure) => {
                    log.failed(&step.name, &failure.reason);
                    tracing::debug!(
                        workflow_id,
                        execution_id = ctx.execution_id,
                        failed_step = %step.name,
                        status = failure.status.as_u16(),
                        reason = %redact_text(&failure.reason, ctx.secrets),
                        duration_ms = millis(started.elapsed()),
                        "workflow failed"
                    );
                    return WorkflowOutcome {
                        result: Err(WorkflowError {
                            status: failure.status,
                            failed_step: step.name.clone(),
                            reason: failure.reason,
                        }),
                        events: log.into_events(),
                    };
                }
            }
        }

        let took = started.elapsed();
        log.completed(wf.steps.len(), took);
        tracing::debug!(
            workflow_id,
            execution_id = ctx.execution_id,
            duration_ms = millis(took),
            "workflow completed"
        );
        // Built by moving the last response and the steps in; `json!` would copy both.
        let mut result = Map::new();
        result.insert("workflow_id".to_owned(), workflow_id.into());
        result.insert("execution_id".to_owned(), ctx.execution_id.into());
        result.insert("result".to_owned(), last_response);
        let (steps, state) = scope.into_extracted();
        result.insert("steps".to_owned(), steps);
        // The upstream gateway's form, which its callers read: `input` and `"<step>.<key>"`.
        result.insert("state".to_owned(), state);
        WorkflowOutcome {
            result: Ok(Value::Object(result)),
            events: log.into_events(),
        }
    }

    /// Renders the step once, then sends it up to `step.attempts` times.
    async fn run_step(
        &self,
        wf: &CompiledWorkflow,
        step: &CompiledStep,
        scope: &TemplateScope,
        ctx: &ExecutionContext<'_>,
        log: &mut EventLog<'_>,
    ) -> Result<StepSuccess, StepFailure> {
        let text = if let Some(name) = &step.template {
            template::render(&wf.registry, name, scope).map_err(StepFailure::template)?
        } else {
            "{}".to_owned()
        };
        let rendered = template::parse_rendered(&text).map_err(|e| {
            StepFailure::template(format!("template did not render valid JSON: {e}"))
        })?;
        let prepared = request::prepare(
            &wf.entry().base_url,
            &step.method,
            &step.operation,
            rendered,
        )
        .map_err(StepFailure::template)?;

        let mut headers = prepared.headers;
        for (name, value) in ctx.credential_headers {
            let mut value = value.clone();
            // Keeps the value out of HTTP/2 header compression tables.
            value.set_sensitive(true);
            headers.insert(name.clone(), value);
        }
        tracing::trace!(
            workflow_id = wf.workflow_id(),
            execution_id = ctx.execution_id,
            step = %step.name,
            method = %step.method,
            url = %redacted_url(&prepared.url),
            body_bytes = prepared.body.as_ref().map_or(0, |b| b.len()),
            headers = ?headers.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            credential_headers = ctx.credential_headers.len(),
            dropped_keys = ?prepared.dropped_keys,
            "workflow step request (credential header values redacted)"
        );
        let request = OutboundRequest {
            method: step.method.clone(),
            url: prepared.url,
            headers,
            body: prepared.body,
            timeout: Some(step.timeout),
            max_response_bytes: ctx.max_response_bytes,
            // A tenant's own workflow goes where its tenant said.
            for_tenant: wf.entry().tenant_id.is_some(),
        };

        // Every attempt but the last sends a copy; the last (the only one, unless the step
        // retries) sends the request itself.
        for attempt in 1..step.attempts {
            match self
                .attempt(wf, step, request.clone(), attempt, ctx, log)
                .await
            {
                Ok(done) => return Ok(done),
                Err(failure) if !failure.retryable => return Err(failure),
                Err(failure) => {
                    let delay = backoff(attempt - 1);
                    tracing::debug!(
                        workflow_id = wf.workflow_id(),
                        execution_id = ctx.execution_id,
                        step = %step.name,
                        attempt,
                        retry_in_ms = millis(delay),
                        reason = %redact_text(&failure.reason, ctx.secrets),
                        "workflow step attempt failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
        let attempt = step.attempts;
        self.attempt(wf, step, request, attempt, ctx, log)
            .await
            .map_err(|mut failure| {
                if step.attempts > 1 {
                    failure.reason =
                        format!("{} (gave up after {attempt} attempts)", failure.reason);
                }
                failure
            })
    }

    /// One send: the response must be 2xx and JSON (or empty), and every extractor must match.
    async fn attempt(
        &self,
        wf: &CompiledWorkflow,
        step: &CompiledStep,
        request: OutboundRequest,
        attempt: u32,
        ctx: &ExecutionContext<'_>,
        log: &mut EventLog<'_>,
    ) -> Result<StepSuccess, StepFailure> {
        let method = request.method.clone();
        let shown = redacted_url(&request.url);
        let started = Instant::now();
        // Exported when traces are on: the step's attempt, parent of the request's CLIENT span.
        let span = tracing::info_span!(
            target: telemetry::TARGET,
            "workflow.step",
            seal.step = step.name.as_str(),
            seal.attempt = attempt,
            url.template = step.operation.path.as_str(),
        );
        let sent = self.http.send(request).instrument(span);
        let response = sent.await.map_err(|e| {
            // An oversize body still came with a status, which tells a 4xx from a 5xx.
            if let HttpClientError::TooLarge { status, .. } = &e {
                log.step_executed(&step.name, *status, started.elapsed(), attempt);
            }
            let status = match e {
                HttpClientError::Setup(_) | HttpClientError::InvalidRequest(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                _ => StatusCode::BAD_GATEWAY,
            };
            // No answer. Sent again when the request surely never left, or when sending it
            // twice does no harm: a timeout or a reset after sending says nothing about whether
            // the upstream acted. (A refused destination or request would only be refused again,
            // and an oversize answer was an answer.)
            let retryable = match &e {
                HttpClientError::Transport { unsent, .. } => *unsent || is_idempotent(&method),
                HttpClientError::Timeout { .. } => is_idempotent(&method),
                _ => false,
            };
            StepFailure {
                status,
                reason: e.to_string(),
                response: None,
                extracted: Map::new(),
                retryable,
            }
        })?;
        let took = started.elapsed();
        log.step_executed(&step.name, response.status, took, attempt);
        tracing::trace!(
            workflow_id = wf.workflow_id(),
            execution_id = ctx.execution_id,
            step = %step.name,
            attempt,
            status = response.status.as_u16(),
            duration_ms = millis(took),
            body_bytes = response.body.len(),
            "workflow step response"
        );

        if !response.status.is_success() {
            let mut reason = format!("upstream returned {} for {method} {shown}", response.status);
            let excerpt = body_excerpt(&response.body, ctx.secrets);
            if !excerpt.is_empty() {
                reason.push_str(": ");
                reason.push_str(&excerpt);
            }
            return Err(StepFailure::upstream(
                reason,
                retryable_status(response.status, &method),
            ));
        }
        let json = parse_body(&response).map_err(|e| {
            StepFailure::upstream(
                format!(
                    "upstream returned a body that is not JSON ({}, {}) for {method} {shown}: {e}",
                    response.status,
                    content_type(&response)
                ),
                false,
            )
        })?;

        let mut extracted = Map::new();
        let mut misses = Vec::new();
        for extractor in &step.extractors {
            match extractor.path.query(&json).first() {
                Some(value) => {
                    extracted.insert(extractor.key.clone(), value.clone());
                }
                None => misses.push(format!("\"{}\" ({})", extractor.key, extractor.source)),
            }
        }
        if misses.is_empty() {
            return Ok(StepSuccess {
                response: json,
                extracted,
            });
        }
        let noun = if misses.len() == 1 {
            "extractor"
        } else {
            "extractors"
        };
        let reason = format!(
            "{noun} {} matched nothing in the response ({})",
            misses.join(", "),
            describe_shape(&json)
        );
        Err(StepFailure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            reason,
            response: Some(json),
            extracted,
            retryable: false,
        })
    }
}

/// 50 ms × 2^retry, at most 1 s.
fn backoff(retry: u32) -> Duration {
    BASE_BACKOFF
        .saturating_mul(1u32 << retry.min(16))
        .min(MAX_BACKOFF)
}

/// An empty (or blank) body is `{}`.
fn parse_body(response: &OutboundResponse) -> Result<Value, serde_json::Error> {
    if response.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&response.body)
}

fn content_type(response: &OutboundResponse) -> String {
    response
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map_or_else(
            || "no content-type".to_owned(),
            |ct| format!("content-type {ct}"),
        )
}

/// At most [`BODY_EXCERPT_BYTES`] of the body, on one line, cut at a character boundary. The
/// secrets are redacted first: cut first, a secret across the cut would leave its start behind,
/// which no later redaction recognises.
fn body_excerpt(body: &[u8], secrets: &[String]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = redact_text(text.trim(), secrets);
    let mut end = text.len().min(BODY_EXCERPT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut excerpt: String = text[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if end < text.len() {
        excerpt.push('…');
    }
    excerpt
}

/// `top-level keys: a, b` for an object, else what the response is.
fn describe_shape(json: &Value) -> String {
    match json {
        Value::Object(map) if map.is_empty() => "the response is an empty object".to_owned(),
        Value::Object(map) => {
            let mut keys: Vec<&str> = map.keys().map(String::as_str).take(LISTED_KEYS).collect();
            let more = map.len().saturating_sub(LISTED_KEYS);
            let mut text = String::from("top-level keys: ");
            keys.sort_unstable();
            text.push_str(&keys.join(", "));
            if more > 0 {
                text.push_str(&format!(", and {more} more"));
            }
            text
        }
        other => format!("the response is {}", kind_of(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let ms: Vec<u128> = (0..6).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 1000]);
        assert_eq!(backoff(200), MAX_BACKOFF);
    }

    #[test]
    fn excerpts_are_bounded_and_on_one_line() {
        assert_eq!(body_excerpt(b"  {\"a\":\n1}  ", &[]), "{\"a\": 1}");
        let long = "é".repeat(400);
        let excerpt = body_excerpt(long.as_bytes(), &[]);
        assert!(excerpt.ends_with('…'));
        assert!(excerpt.len() - '…'.len_utf8() <= BODY_EXCERPT_BYTES);
    }

    #[test]
    fn a_secret_across_the_cut_leaves_nothing_behind() {
        let secret = "s3cr3t-token-0123456789".to_owned();
        // The secret starts 10 bytes before the cut.
        let body = format!("{}{secret} and more", "x".repeat(BODY_EXCERPT_BYTES - 10));
        let excerpt = body_excerpt(body.as_bytes(), std::slice::from_ref(&secret));
        assert!(!excerpt.contains("s3cr3t"), "{excerpt}");
        assert!(excerpt.contains("[REDACTED]"), "{excerpt}");
    }

    #[test]
    fn shapes_name_keys_or_kinds() {
        assert_eq!(
            describe_shape(&json!({"b": 1, "a": 2})),
            "top-level keys: a, b"
        );
        assert_eq!(describe_shape(&json!([1])), "the response is an array");
        assert_eq!(
            describe_shape(&json!({})),
            "the response is an empty object"
        );
    }
}
