//! W3C Trace Context: the `traceparent` and `tracestate` a caller sends with an invocation reach
//! the upstream its workflow calls; a malformed one, or none, reaches nobody.

mod observability_support;
mod support;

use observability_support::{Harness, snapshot, upstream};
use serde_json::{Value, json};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn the_callers_trace_context_reaches_the_upstream() {
    let harness = Harness::start(snapshot(upstream().await, "unused:1"), &[]).await;
    let call = |headers: &'static [(&'static str, &'static str)]| {
        let harness = &harness;
        async move {
            let jti = uuid::Uuid::new_v4().to_string();
            let body = harness.signer.envelope(
                "trace-tool",
                json!({}),
                &jti,
                chrono::Utc::now().timestamp(),
            );
            let (status, body) = harness.post_envelope_with(body, headers).await;
            assert_eq!(status, 200, "{body}");
            body["result"]["result"].clone()
        }
    };

    let seen = call(&[("traceparent", TRACEPARENT), ("tracestate", "vendor=abc")]).await;
    assert_eq!(
        seen,
        json!({"traceparent": TRACEPARENT, "tracestate": "vendor=abc"})
    );

    let seen = call(&[
        ("traceparent", "00-not-a-trace-01"),
        ("tracestate", "vendor=abc"),
    ])
    .await;
    assert_eq!(
        seen,
        json!({"traceparent": Value::Null, "tracestate": Value::Null})
    );

    let seen = call(&[]).await;
    assert_eq!(
        seen,
        json!({"traceparent": Value::Null, "tracestate": Value::Null})
    );
    harness.shutdown().await;
}
