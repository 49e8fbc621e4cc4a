//! The envelope's Ed25519 signature, by the session's key, over the canonical message.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, VerifyingKey};

use crate::domain::envelope::Envelope;
use crate::domain::seal_error::{SealError, code};

/// The log target the runbook's recipe selects (`aegis_seal_gateway::infrastructure::auth`).
pub const TARGET: &str = "aegis_seal_gateway::infrastructure::auth";

/// Which serialization the signature matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanonicalForm {
    /// Keys sorted at every level: the RFC and the SDKs (by code point as Python does, or by
    /// UTF-16 code unit as the TypeScript SDK does).
    Sorted,
    /// The payload's wire order: signers written against upstream gateways.
    WireOrder,
}

/// A session key: standard base64 of the raw 32-byte Ed25519 public key.
pub fn parse_session_key(public_key_b64: &str) -> Result<VerifyingKey, SealError> {
    let bytes = STANDARD
        .decode(public_key_b64.trim())
        .map_err(|e| SealError::malformed(format!("invalid public key b64: {e}")))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| SealError::malformed("public key must be 32 bytes"))?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|e| SealError::malformed(format!("invalid public key: {e}")))?;
    if key.is_weak() {
        // A small-order key verifies signatures nobody made.
        return Err(SealError::malformed(
            "invalid public key: small-order point",
        ));
    }
    Ok(key)
}

/// Verifies the envelope's signature with `verify_strict`, trying the canonical form first.
pub fn verify_signature(
    envelope: &Envelope,
    key: &VerifyingKey,
) -> Result<CanonicalForm, SealError> {
    let raw = STANDARD.decode(envelope.signature.trim()).map_err(|e| {
        SealError::new(
            http::StatusCode::UNAUTHORIZED,
            code::INVALID_SIGNATURE,
            format!("invalid signature b64: {e}"),
        )
    })?;
    let raw: [u8; 64] = raw.try_into().map_err(|_| {
        SealError::new(
            http::StatusCode::UNAUTHORIZED,
            code::INVALID_SIGNATURE,
            "signature must be 64 bytes",
        )
    })?;
    let signature = Signature::from_bytes(&raw);

    let sorted = envelope.canonical_message()?;
    if key.verify_strict(&sorted, &signature).is_ok() {
        tracing::trace!(target: TARGET, form = "sorted", "envelope signature verified");
        return Ok(CanonicalForm::Sorted);
    }
    // Only an object holding both a key beyond the BMP and one in U+E000..U+FFFF sorts
    // differently in JavaScript; otherwise this is the same message and is not tried twice.
    let utf16 = envelope.utf16_sorted_message()?;
    if utf16 != sorted && key.verify_strict(&utf16, &signature).is_ok() {
        tracing::trace!(target: TARGET, form = "sorted-utf16", "envelope signature verified");
        return Ok(CanonicalForm::Sorted);
    }
    let wire = envelope.wire_order_message()?;
    if wire != sorted && key.verify_strict(&wire, &signature).is_ok() {
        tracing::debug!(target: TARGET, form = "wire-order", "envelope signature verified over the legacy wire-order form");
        return Ok(CanonicalForm::WireOrder);
    }
    tracing::warn!(target: TARGET, "signature verification failed: invalid signature for payload");
    Err(SealError::new(
        http::StatusCode::UNAUTHORIZED,
        code::SIGNATURE_VERIFICATION_FAILED,
        "signature verification failed: invalid signature for payload",
    ))
}
