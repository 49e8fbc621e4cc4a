//! Bounded, retried requests to OpenBao and Keycloak, and the small text helpers they share.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use reqwest::Url;
use serde_json::Value;

use crate::infrastructure::http_client::{
    HttpClient, HttpClientError, OutboundRequest, OutboundResponse,
};

/// Largest OpenBao or Keycloak answer read: real ones are a few KiB.
pub(super) const MAX_RESPONSE_BYTES: u64 = 1024 * 1024;
/// Most bytes of a non-JSON error body quoted in a reason.
const BODY_EXCERPT_CHARS: usize = 200;
/// Pause before the retry.
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// Whether a request may be sent twice without a visible effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Idempotency {
    /// Reads and revocations: retried after transport errors, timeouts and 5xx answers.
    Safe,
    /// Minting requests (dynamic credentials, token exchange): retried after 5xx answers and
    /// connections never made, not after a timeout or a transport error once the request may
    /// have been sent: the first request may have minted something already.
    Minting,
}

/// The outbound client with the credential exchange's time bound and retry budget.
#[derive(Debug, Clone)]
pub(super) struct Transport {
    pub(super) http: HttpClient,
    pub(super) timeout: Duration,
    pub(super) max_retries: u32,
}

impl Transport {
    pub(super) fn request(&self, method: Method, url: Url, headers: HeaderMap) -> OutboundRequest {
        OutboundRequest {
            method,
            url,
            headers,
            body: None,
            timeout: Some(self.timeout),
            max_response_bytes: Some(MAX_RESPONSE_BYTES),
            for_tenant: false,
        }
    }

    /// Sends `request`, retrying within the budget. A 5xx answer that survives the retries is
    /// returned as a response, so the caller can quote it.
    pub(super) async fn send(
        &self,
        what: &'static str,
        request: OutboundRequest,
        idempotency: Idempotency,
    ) -> Result<OutboundResponse, HttpClientError> {
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let last = attempt > self.max_retries;
            let result = self.http.send(request.clone()).await;
            let retry = match &result {
                Ok(response) => response.status.is_server_error(),
                // A minting call that may have been sent is not repeated: what it minted (a
                // lease, a token) would be lost, never revoked.
                Err(HttpClientError::Transport { unsent, .. }) => {
                    *unsent || idempotency == Idempotency::Safe
                }
                Err(HttpClientError::Timeout { .. }) => idempotency == Idempotency::Safe,
                Err(_) => false,
            };
            if !retry || last {
                return result;
            }
            let cause = match &result {
                Ok(response) => format!("status {}", response.status.as_u16()),
                Err(e) => e.class().to_owned(),
            };
            tracing::trace!(what, attempt, cause = %cause, "credential request failed; retrying once more");
            tokio::time::sleep(RETRY_DELAY).await;
        }
    }
}

/// A header value built from a secret: marked sensitive, and never shown in errors.
pub(super) fn secret_header(value: &str) -> Result<HeaderValue, String> {
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| "contains characters not allowed in an HTTP header".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}

/// `application/x-www-form-urlencoded` (WHATWG): unreserved bytes as-is, space as `+`, the rest %XX.
pub(super) fn form_encode(pairs: &[(&str, &str)]) -> Bytes {
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_component(name, &mut out);
        out.push('=');
        encode_component(value, &mut out);
    }
    Bytes::from(out)
}

fn encode_component(text: &str, out: &mut String) {
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
}

/// OpenBao's `{"errors": [...]}` as text: the messages joined by `; `, `[]` for an empty list, else
/// a short excerpt of the body.
pub(super) fn openbao_errors(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => match map.get("errors") {
            Some(Value::Array(errors)) if errors.is_empty() => "[]".to_owned(),
            Some(Value::Array(errors)) => errors
                .iter()
                .flat_map(|e| match e {
                    Value::String(s) => unfold_multierror(s),
                    other => vec![other.to_string()],
                })
                .collect::<Vec<_>>()
                .join("; "),
            _ => excerpt(body),
        },
        _ => excerpt(body),
    }
}

/// OpenBao wraps some errors in Go's multierror text (`1 error occurred:\n\t* permission denied\n\n`):
/// the inner messages are kept as they are, one line each; other text keeps its words on one line.
fn unfold_multierror(text: &str) -> Vec<String> {
    let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default().trim();
    let is_multierror = header.ends_with("occurred:")
        && header
            .split_whitespace()
            .next()
            .is_some_and(|n| n.parse::<u32>().is_ok());
    if !is_multierror {
        return vec![one_line(text)];
    }
    let inner: Vec<String> = lines
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("* "))
        .map(one_line)
        .collect();
    if inner.is_empty() {
        vec![one_line(text)]
    } else {
        inner
    }
}

/// An OAuth error answer (RFC 6749 §5.2) as text: `error (error_description)`, else an excerpt.
pub(super) fn oauth_error(body: &[u8]) -> String {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body)
        && let Some(error) = map.get("error").and_then(Value::as_str)
    {
        return match map.get("error_description").and_then(Value::as_str) {
            Some(description) if !description.is_empty() => format!("{error} ({description})"),
            _ => error.to_owned(),
        };
    }
    excerpt(body)
}

/// The start of a body, on one line.
pub(super) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    let mut shown: String = text
        .chars()
        .take(BODY_EXCERPT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > BODY_EXCERPT_CHARS {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_follows_whatwg() {
        let body = form_encode(&[("grant_type", "urn:a b"), ("x", "é&=+/~")]);
        assert_eq!(&body[..], b"grant_type=urn%3Aa+b&x=%C3%A9%26%3D%2B%2F%7E");
    }

    #[test]
    fn openbao_errors_are_quoted_verbatim() {
        assert_eq!(openbao_errors(br#"{"errors":[]}"#), "[]");
        assert_eq!(
            openbao_errors(br#"{"errors":["permission denied"]}"#),
            "permission denied"
        );
        assert_eq!(openbao_errors(br#"{"errors":["a","b"]}"#), "a; b");
        assert_eq!(
            openbao_errors(br#"{"errors":["1 error occurred:\n\t* permission denied\n\n"]}"#),
            "permission denied"
        );
        assert_eq!(
            openbao_errors(br#"{"errors":["2 errors occurred:\n\t* a\n\t* b c\n\n", "x\ny"]}"#),
            "a; b c; x y"
        );
        assert_eq!(openbao_errors(b"<html>\nbad gateway"), "<html> bad gateway");
        assert_eq!(openbao_errors(b""), "(empty body)");
    }

    #[test]
    fn oauth_errors_name_the_code() {
        assert_eq!(
            oauth_error(
                br#"{"error":"invalid_client","error_description":"Invalid client credentials"}"#
            ),
            "invalid_client (Invalid client credentials)"
        );
        assert_eq!(
            oauth_error(br#"{"error":"invalid_target"}"#),
            "invalid_target"
        );
    }
}
