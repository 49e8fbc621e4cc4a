//! The semantic judge: an HTTP service that approves or rejects a command's intent. It fails
//! closed (DESIGN B-9): unset, unreachable, slow, non-2xx or unintelligible means rejected, never
//! permitted.
//!
//! Request: `POST <semantic_judge_url>`, `Content-Type: application/json`, with
//! `Authorization: Bearer <semantic_judge_token>` when a token is set,
//! `{"tool_name", "tool", "subcommand", "args", "execution_id", "description", "security_context",
//! "tenant_id"}`. Response: `{"allowed": bool, "reason": string|null}`.

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::Url;
use serde::Deserialize;
use serde_json::json;

use crate::infrastructure::http_client::{HttpClient, HttpClientError, OutboundRequest};

/// Largest judge response read.
const MAX_JUDGE_RESPONSE_BYTES: u64 = 64 * 1024;
/// Longest judge reason recorded.
const MAX_REASON_CHARS: usize = 1024;
/// `rejection_reason` when no judge URL is configured.
pub const JUDGE_NOT_CONFIGURED: &str =
    "semantic judge not configured (SEAL_GATEWAY_SEMANTIC_JUDGE_URL unset)";
/// `rejection_reason` when the judge says no without a reason.
pub const JUDGE_DEFAULT_DENIAL: &str = "semantic judge rejected command intent";
/// What the caller is told when the judge could not be consulted (details go to the audit event).
pub const JUDGE_UNAVAILABLE_FOR_CALLER: &str =
    "the semantic judge could not be consulted; the call was rejected (fail closed)";

/// What the judge is asked about.
#[derive(Debug, Clone, Copy)]
pub struct JudgeRequest<'a> {
    pub tool_name: &'a str,
    pub description: &'a str,
    pub subcommand: &'a str,
    pub args: &'a [String],
    pub execution_id: &'a str,
    pub security_context: &'a str,
    pub tenant_id: Option<&'a str>,
}

/// The judge's decision, or a rejection because it could not decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Rejected {
        /// For the `CliToolSemanticRejected` event: the judge's reason, or what went wrong.
        reason: String,
        /// For the caller: the judge's reason, or a generic text when the judge failed (its
        /// address and errors are the operator's business).
        shown: String,
    },
}

impl Verdict {
    fn failed(reason: String) -> Self {
        Self::Rejected {
            reason,
            shown: JUDGE_UNAVAILABLE_FOR_CALLER.to_owned(),
        }
    }
}

#[derive(Deserialize)]
struct JudgeResponse {
    allowed: bool,
    #[serde(default)]
    reason: Option<String>,
}

/// The judge client.
#[derive(Debug, Clone)]
pub struct SemanticJudge {
    /// `Ok(None)`: not configured. `Err`: configured but not a usable URL.
    url: Result<Option<Url>, String>,
    /// `Authorization` value; marked sensitive so that no debug output shows it.
    authorization: Option<HeaderValue>,
    timeout: Duration,
    http: HttpClient,
}

impl SemanticJudge {
    pub fn new(
        url: Option<&str>,
        token: Option<&str>,
        timeout: Duration,
        http: HttpClient,
    ) -> Self {
        let url = match url.map(str::trim).filter(|u| !u.is_empty()) {
            None => Ok(None),
            Some(u) => match Url::parse(u) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(Some(url)),
                Ok(_) => Err(format!("semantic judge URL {u:?} is not an http(s) URL")),
                Err(e) => Err(format!("semantic judge URL {u:?} is invalid: {e}")),
            },
        };
        // A token that is not a valid header value cannot be sent: the judge is then unusable,
        // and every judged call is rejected naming the setting (fail closed).
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        let (url, authorization) = match token.map(|t| HeaderValue::try_from(format!("Bearer {t}")))
        {
            None => (url, None),
            Some(Ok(mut value)) => {
                value.set_sensitive(true);
                (url, Some(value))
            }
            Some(Err(_)) => (
                Err(
                    "semantic judge token (cli.semantic_judge_token) is not a valid header value"
                        .into(),
                ),
                None,
            ),
        };
        Self {
            url,
            authorization,
            timeout,
            http,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether a usable judge URL is configured.
    pub fn is_configured(&self) -> bool {
        matches!(self.url, Ok(Some(_)))
    }

    /// Asks the judge. Never fails open.
    pub async fn judge(&self, req: &JudgeRequest<'_>) -> Verdict {
        let url = match &self.url {
            Ok(Some(url)) => url.clone(),
            Ok(None) => return Verdict::failed(JUDGE_NOT_CONFIGURED.to_owned()),
            Err(e) => return Verdict::failed(e.clone()),
        };
        let body = json!({
            "tool_name": req.tool_name,
            "tool": req.tool_name,
            "subcommand": req.subcommand,
            "args": req.args,
            "execution_id": req.execution_id,
            "description": req.description,
            "security_context": req.security_context,
            "tenant_id": req.tenant_id,
        });
        let mut request = OutboundRequest::new(Method::POST, url);
        request
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(authorization) = &self.authorization {
            request.headers.insert(AUTHORIZATION, authorization.clone());
        }
        request.body = Some(Bytes::from(body.to_string()));
        request.timeout = Some(self.timeout);
        request.max_response_bytes = Some(MAX_JUDGE_RESPONSE_BYTES);
        let response = match self.http.send(request).await {
            Ok(r) => r,
            Err(HttpClientError::Timeout { .. }) => {
                return Verdict::failed(format!(
                    "semantic judge timeout after {}s",
                    self.timeout.as_secs_f64()
                ));
            }
            Err(HttpClientError::TooLarge { limit, .. }) => {
                return Verdict::failed(format!(
                    "semantic judge returned a response over {limit} bytes"
                ));
            }
            Err(e) => return Verdict::failed(format!("semantic judge unreachable: {e}")),
        };
        if !response.status.is_success() {
            return Verdict::failed(format!("semantic judge returned {}", response.status));
        }
        match serde_json::from_slice::<JudgeResponse>(&response.body) {
            Err(e) => Verdict::failed(format!(
                "semantic judge returned an unparseable response: {e}"
            )),
            Ok(JudgeResponse { allowed: true, .. }) => Verdict::Allowed,
            Ok(JudgeResponse { reason, .. }) => {
                let reason = reason
                    .map(|r| r.trim().chars().take(MAX_REASON_CHARS).collect::<String>())
                    .filter(|r| !r.is_empty())
                    .unwrap_or_else(|| JUDGE_DEFAULT_DENIAL.to_owned());
                Verdict::Rejected {
                    shown: reason.clone(),
                    reason,
                }
            }
        }
    }
}
