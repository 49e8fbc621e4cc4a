//! SEAL errors: one code, one HTTP status and one message per failure (reference §1.5-1.6, DESIGN §5).

use chrono::{SecondsFormat, Utc};
use http::StatusCode;
use serde_json::{Value, json};

/// Codes of the SEAL error registry used by this gateway.
pub mod code {
    pub const MALFORMED_ENVELOPE: u32 = 1000;
    pub const INVALID_SIGNATURE: u32 = 1001;
    pub const SIGNATURE_VERIFICATION_FAILED: u32 = 1002;
    /// Also stale envelopes and replays (B-1), as upstream and the runbook do.
    pub const TOKEN_EXPIRED: u32 = 1003;
    pub const TOKEN_VERIFICATION_FAILED: u32 = 1004;
    pub const SESSION_NOT_FOUND: u32 = 1005;
    pub const SESSION_INACTIVE: u32 = 1006;
    pub const TOOL_NOT_ALLOWED: u32 = 2000;
    pub const SCOPE_NOT_FOUND: u32 = 3001;
}

/// A refused invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealError {
    pub status: StatusCode,
    pub code: u32,
    pub message: String,
}

impl SealError {
    pub fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code::MALFORMED_ENVELOPE, message)
    }

    pub fn token(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            code::TOKEN_VERIFICATION_FAILED,
            message,
        )
    }

    /// The SEAL error body: `{"protocol","status","error":{"code","message","timestamp","request_id"}}`.
    pub fn body(&self, request_id: &str) -> Value {
        json!({
            "protocol": "seal/v1",
            "status": "error",
            "error": {
                "code": self.code,
                "message": self.message,
                // `+00:00`, not `Z`: the reference gateway's spelling (reference §1.6).
                "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, false),
                "request_id": request_id,
            }
        })
    }
}

impl std::fmt::Display for SealError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SEAL {})", self.message, self.code)
    }
}

impl std::error::Error for SealError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_the_reference_shape_with_a_plus_zero_offset_timestamp() {
        let body = SealError::token("security token missing jti").body("req-1");
        let error = &body["error"];
        assert_eq!(body["protocol"], "seal/v1");
        assert_eq!(body["status"], "error");
        assert_eq!(error["code"], code::TOKEN_VERIFICATION_FAILED);
        assert_eq!(error["message"], "security token missing jti");
        assert_eq!(error["request_id"], "req-1");
        let timestamp = error["timestamp"].as_str().unwrap();
        assert!(timestamp.ends_with("+00:00"), "{timestamp}");
        assert!(chrono::DateTime::parse_from_rfc3339(timestamp).is_ok());
    }
}
