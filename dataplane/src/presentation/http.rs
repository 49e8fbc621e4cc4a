//! Response and body helpers shared by the handlers.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use crate::domain::seal_error::SealError;
use crate::infrastructure::persistence::{PersistenceError, log_pool_starvation};

pub type Body = Full<Bytes>;

pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    // The same compact text as `to_string`, written straight into the buffer rather than through
    // `fmt`; it cannot fail for a `Value`.
    let mut response = Response::new(Body::from(serde_json::to_vec(body).unwrap_or_default()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Every 503 here is passing (a starved pool, an IdP or JWKS outage, a credential store that
    // cannot be reached, a gateway stopping): say when to try again, as DESIGN's B-6 asks.
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// A 200 with `{"result": result}`: the result is moved into the body, not copied (as `json!`
/// would copy it).
pub fn result_response(result: Value) -> Response<Body> {
    let mut body = Map::new();
    body.insert("result".to_owned(), result);
    json_response(StatusCode::OK, &Value::Object(body))
}

pub fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json_response(status, &json!({"error": message.into()}))
}

pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = status;
    response
}

/// A SEAL error body with a fresh request id.
pub fn seal_error(e: &SealError) -> Response<Body> {
    json_response(e.status, &e.body(&uuid::Uuid::new_v4().to_string()))
}

/// The database could not serve the request: 503 (with `Retry-After`), and the runbook's log line
/// when the pool is starved.
pub fn unavailable(handler: &str, e: &PersistenceError) -> Response<Body> {
    if matches!(e, PersistenceError::PoolTimedOut) {
        log_pool_starvation(handler, e);
    } else {
        tracing::error!(handler, error = %e, "database unavailable");
    }
    error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// Reads a whole request body, refusing more than `limit` bytes (413) while it streams in.
pub async fn read_body(body: Incoming, limit: u64) -> Result<Bytes, Response<Body>> {
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, limit_usize).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("could not read the request body: {e}"),
        )),
    }
}

pub fn too_large(limit: u64) -> Response<Body> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body exceeds {limit} bytes"),
    )
}

/// `%XX` and `+` decoding of one query value; malformed escapes are kept as they are.
pub fn percent_decode(value: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(high), Some(low)) => {
                out.push(high << 4 | low);
                i += 2;
            }
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_503_says_when_to_try_again() {
        // A credential store's starved pool, answered through the credential error's own body.
        let response = json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "database error: pool acquire timed out"}),
        );
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        let response = unavailable("test", &PersistenceError::WriterStopped);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        for status in [
            StatusCode::OK,
            StatusCode::BAD_GATEWAY,
            StatusCode::CONFLICT,
        ] {
            let response = json_response(status, &json!({}));
            assert!(response.headers().get(RETRY_AFTER).is_none(), "{status}");
        }
    }
}
