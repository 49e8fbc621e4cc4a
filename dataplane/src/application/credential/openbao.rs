//! OpenBao (Vault API): dynamic secrets (`<engine>/creds/<role>`), KV v2 reads and lease revocation.
//!
//! Every error text carries OpenBao's HTTP status and its `errors` list verbatim (runbook: "the reason
//! field on the audit event is the precise OpenBao error string"). The token never leaves the
//! `X-Vault-Token` header, which is marked sensitive.

use http::{HeaderMap, HeaderName, Method};
use reqwest::Url;
use serde_json::{Map, Value};

use super::Failure;
use super::transport::{Idempotency, Transport, openbao_errors, secret_header};

const VAULT_TOKEN: HeaderName = HeaderName::from_static("x-vault-token");
const VAULT_NAMESPACE: HeaderName = HeaderName::from_static("x-vault-namespace");

/// What a dynamic-secret read returned.
pub(super) struct DynamicSecret {
    /// The `data` object.
    pub(super) data: Map<String, Value>,
    /// The lease to revoke when the invocation ends; `None` for engines that issue no lease.
    pub(super) lease_id: Option<String>,
}

pub(super) struct OpenBao {
    pub(super) addr: Option<Url>,
    pub(super) token: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) kv_mount: String,
    pub(super) transport: Transport,
}

impl std::fmt::Debug for OpenBao {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenBao")
            .field("addr", &self.addr.as_ref().map(Url::as_str))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("namespace", &self.namespace)
            .field("kv_mount", &self.kv_mount)
            .finish_non_exhaustive()
    }
}

impl OpenBao {
    /// `{addr}/v1/<segments...>` with the token (and namespace) headers.
    fn request_parts(&self, segments: &[&str]) -> Result<(Url, HeaderMap), Failure> {
        let Some(addr) = &self.addr else {
            return Err(Failure::exchange(
                "internal error: SEAL_GATEWAY_OPENBAO_ADDR is required",
            ));
        };
        let Some(token) = self.token.as_deref() else {
            return Err(Failure::exchange(
                "internal error: SEAL_GATEWAY_OPENBAO_TOKEN is required",
            ));
        };
        let mut url = addr.clone();
        url.set_query(None);
        url.set_fragment(None);
        {
            let Ok(mut path) = url.path_segments_mut() else {
                return Err(Failure::exchange(
                    "internal error: SEAL_GATEWAY_OPENBAO_ADDR is not a base URL",
                ));
            };
            path.pop_if_empty().push("v1").extend(segments);
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            VAULT_TOKEN,
            secret_header(token).map_err(|e| {
                Failure::exchange(format!("internal error: SEAL_GATEWAY_OPENBAO_TOKEN {e}"))
            })?,
        );
        if let Some(namespace) = &self.namespace {
            let value = http::HeaderValue::from_str(namespace).map_err(|_| {
                Failure::exchange(
                    "internal error: openbao_namespace contains characters not allowed in a header",
                )
            })?;
            headers.insert(VAULT_NAMESPACE, value);
        }
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        Ok((url, headers))
    }

    /// `GET {addr}/v1/[tenant-<tenant>/]<engine>/creds/<role>`.
    pub(super) async fn dynamic(
        &self,
        tenant: Option<&str>,
        engine: &str,
        role: &str,
    ) -> Result<DynamicSecret, Failure> {
        let engine = engine.trim().trim_matches('/');
        let role = role.trim();
        if engine.is_empty() || role.is_empty() {
            return Err(Failure::exchange(
                "validation error: SystemJit requires non-empty openbao_engine_path and role",
            ));
        }
        if role.contains('/') {
            // `<role>/...` would address another endpoint of the engine.
            return Err(Failure::exchange(
                "validation error: SystemJit role must be a single path segment",
            ));
        }
        let tenant_segment = tenant_segment(tenant)?;
        let mut segments: Vec<&str> = Vec::new();
        if let Some(prefix) = &tenant_segment {
            segments.push(prefix);
        }
        segments.extend(path_segments("openbao_engine_path", engine)?);
        segments.push("creds");
        segments.extend(path_segments("role", role)?);
        let (url, headers) = self.request_parts(&segments)?;
        tracing::trace!(
            url = %crate::infrastructure::http_client::redacted_url(&url),
            namespace = self.namespace.as_deref(),
            "requesting OpenBao dynamic credentials"
        );
        let request = self.transport.request(Method::GET, url, headers);
        let response = self
            .transport
            .send("openbao_dynamic", request, Idempotency::Minting)
            .await
            .map_err(|e| {
                Failure::exchange(format!("http error: OpenBao JIT request failed: {e}"))
            })?;
        if !response.status.is_success() {
            return Err(Failure::exchange(format!(
                "http error: OpenBao JIT request returned {}: {}",
                response.status,
                openbao_errors(&response.body)
            )));
        }
        let body: Value = serde_json::from_slice(&response.body).map_err(|e| {
            Failure::exchange(format!(
                "serialization error: invalid OpenBao JIT response: {e}"
            ))
        })?;
        let lease_id = body
            .get("lease_id")
            .and_then(Value::as_str)
            .filter(|l| !l.is_empty())
            .map(str::to_owned);
        let data = match body.get("data") {
            Some(Value::Object(data)) => data.clone(),
            _ => {
                return Err(Failure::exchange_with_lease(
                    "serialization error: OpenBao JIT response missing data",
                    lease_id,
                ));
            }
        };
        tracing::trace!(
            lease = lease_id.is_some(),
            fields = ?data.keys().collect::<Vec<_>>(),
            "OpenBao dynamic credentials issued"
        );
        Ok(DynamicSecret { data, lease_id })
    }

    /// `GET {addr}/v1/<kv_mount>/data/[tenant-<tenant>/]<key>` (KV v2): the nested `data.data`
    /// object.
    pub(super) async fn kv(
        &self,
        tenant: Option<&str>,
        key: &str,
    ) -> Result<Map<String, Value>, Failure> {
        let key = key.trim().trim_matches('/');
        if key.is_empty() {
            return Err(Failure::exchange(
                "validation error: StaticRef key cannot be empty",
            ));
        }
        let mount = self.kv_mount.trim().trim_matches('/');
        if mount.is_empty() {
            return Err(Failure::exchange(
                "internal error: openbao_kv_mount cannot be empty",
            ));
        }
        let tenant_segment = tenant_segment(tenant)?;
        let mut segments = path_segments("openbao_kv_mount", mount)?;
        segments.push("data");
        segments.extend(tenant_segment.as_deref());
        segments.extend(path_segments("key", key)?);
        let (url, headers) = self.request_parts(&segments)?;
        tracing::trace!(
            url = %crate::infrastructure::http_client::redacted_url(&url),
            namespace = self.namespace.as_deref(),
            "reading OpenBao KV v2 secret"
        );
        let request = self.transport.request(Method::GET, url, headers);
        let response = self
            .transport
            .send("openbao_kv", request, Idempotency::Safe)
            .await
            .map_err(|e| {
                Failure::exchange(format!("http error: OpenBao KV request failed: {e}"))
            })?;
        if !response.status.is_success() {
            return Err(Failure::exchange(format!(
                "http error: OpenBao KV request returned {}: {}",
                response.status,
                openbao_errors(&response.body)
            )));
        }
        let body: Value = serde_json::from_slice(&response.body).map_err(|e| {
            Failure::exchange(format!(
                "serialization error: invalid OpenBao KV response: {e}"
            ))
        })?;
        match body.get("data").and_then(|d| d.get("data")) {
            Some(Value::Object(data)) => {
                tracing::trace!(
                    fields = ?data.keys().collect::<Vec<_>>(),
                    "OpenBao KV v2 secret read"
                );
                Ok(data.clone())
            }
            _ => Err(Failure::exchange(
                "serialization error: OpenBao KV response missing nested data object",
            )),
        }
    }

    /// `PUT {addr}/v1/sys/leases/revoke {"lease_id": ...}`: the dynamic secret stops working.
    pub(super) async fn revoke(&self, lease_id: &str) -> Result<(), String> {
        let (url, mut headers) = self
            .request_parts(&["sys", "leases", "revoke"])
            .map_err(|f| f.reason)?;
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let mut request = self.transport.request(Method::PUT, url, headers);
        request.body = Some(
            serde_json::json!({ "lease_id": lease_id })
                .to_string()
                .into(),
        );
        let response = self
            .transport
            .send("openbao_revoke", request, Idempotency::Safe)
            .await
            .map_err(|e| format!("http error: OpenBao lease revoke request failed: {e}"))?;
        if response.status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "http error: OpenBao lease revoke returned {}: {}",
                response.status,
                openbao_errors(&response.body)
            ))
        }
    }
}

/// `tenant-<tenant>`, the segment every OpenBao path of a tenant's credentials starts with.
fn tenant_segment(tenant: Option<&str>) -> Result<Option<String>, Failure> {
    match tenant {
        Some(t) if t.contains('/') || t.trim().is_empty() => Err(Failure::exchange(
            "validation error: tenant id is not a valid OpenBao path segment",
        )),
        Some(t) => Ok(Some(format!("tenant-{t}"))),
        None => Ok(None),
    }
}

/// The `/`-separated segments of a configured path; `.`, `..` and empty segments are refused, so a
/// name cannot climb to another endpoint (`sys/...`). Each segment is percent-encoded when pushed.
fn path_segments<'a>(what: &str, path: &'a str) -> Result<Vec<&'a str>, Failure> {
    let segments: Vec<&str> = path.split('/').collect();
    for segment in &segments {
        check_segment(what, segment)?;
    }
    Ok(segments)
}

fn check_segment(what: &str, segment: &str) -> Result<(), Failure> {
    if segment.is_empty() || matches!(segment, "." | "..") {
        return Err(Failure::exchange(format!(
            "validation error: {what} has an empty, '.' or '..' path segment"
        )));
    }
    Ok(())
}
