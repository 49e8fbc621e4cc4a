//! W3C Trace Context propagation: the `traceparent` (and `tracestate`) a caller sent with an
//! invocation travels, unchanged, on every outbound request made while serving it (workflow steps,
//! OpenBao, Keycloak, the semantic judge), so a tracing backend can join the upstreams' spans to the
//! caller's trace. With traces off the gateway records no spans of its own, so it forwards the
//! context as the specification allows a non-participating intermediary to. With traces exported
//! (infrastructure/telemetry.rs) it participates instead: the caller's context is the parent of the
//! invocation's span, and each outbound request carries its own CLIENT span's context, in the same
//! trace, with the caller's `tracestate`.
//!
//! The context is a task-local set around the invocation's dispatch, not a parameter threaded
//! through every layer: the outbound client is shared, and whatever it sends on the invocation's
//! task belongs to that invocation.

use std::future::Future;

use http::{HeaderMap, HeaderValue};

use crate::infrastructure::telemetry;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
/// Longest `tracestate` forwarded (the specification's limit for propagation is 512 characters).
const MAX_TRACESTATE: usize = 512;

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// A valid `traceparent`, and its `tracestate` if one came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: HeaderValue,
    tracestate: Option<HeaderValue>,
}

impl TraceContext {
    /// The caller's context, if its `traceparent` is well-formed (version `00`, lower-case hex,
    /// non-zero ids). Anything else is dropped rather than forwarded: a malformed header would make
    /// upstreams start broken traces, and it is caller-controlled input.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let traceparent = headers.get(TRACEPARENT)?;
        if !valid_traceparent(traceparent.to_str().ok()?) {
            return None;
        }
        let tracestate = headers
            .get(TRACESTATE)
            .filter(|v| v.len() <= MAX_TRACESTATE && v.to_str().is_ok())
            .cloned();
        Some(Self {
            traceparent: traceparent.clone(),
            tracestate,
        })
    }
}

fn valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    matches!(parts.as_slice(), [version, trace_id, parent_id, flags]
        if *version == "00"
            && hex(trace_id, 32)
            && nonzero(trace_id)
            && hex(parent_id, 16)
            && nonzero(parent_id)
            && hex(flags, 2))
}

/// Runs `work` with `context` (if any) forwarded on its outbound requests.
pub async fn with_trace_context<F: Future>(context: Option<TraceContext>, work: F) -> F::Output {
    match context {
        Some(context) => CURRENT.scope(context, work).await,
        None => work.await,
    }
}

/// Adds a trace context to `headers`, unless they carry one already: the gateway's own current
/// span (the request's CLIENT span) when traces are exported, else the caller's context of the
/// current task, forwarded unchanged.
pub(super) fn forward(headers: &mut HeaderMap) {
    if headers.contains_key(TRACEPARENT) || telemetry::inject_current(headers) {
        return;
    }
    let _ = CURRENT.try_with(|context| {
        headers.insert(TRACEPARENT, context.traceparent.clone());
        if let Some(state) = &context.tracestate {
            headers.insert(TRACESTATE, state.clone());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_version_00_contexts_are_kept() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(valid_traceparent(ok));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(!valid_traceparent(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_context_is_forwarded_only_inside_its_scope() {
        let mut incoming = HeaderMap::new();
        incoming.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        incoming.insert(TRACESTATE, HeaderValue::from_static("vendor=x"));
        let context = TraceContext::from_headers(&incoming);
        assert!(context.is_some());
        let outgoing = with_trace_context(context, async {
            let mut h = HeaderMap::new();
            forward(&mut h);
            h
        })
        .await;
        assert_eq!(outgoing, incoming);
        let mut outside = HeaderMap::new();
        forward(&mut outside);
        assert!(outside.is_empty());
    }
}
