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

    let messages = envelope.messages()?;
    let sorted = messages.sorted();
    if key.verify_strict(&sorted, &signature).is_ok() {
        tracing::trace!(target: TARGET, form = "sorted", "envelope signature verified");
        return Ok(CanonicalForm::Sorted);
    }
    // Only an object holding both a key beyond the BMP and one in U+E000..U+FFFF sorts
    // differently in JavaScript; otherwise this is the same message and is not tried twice.
    let utf16 = messages.utf16_sorted();
    if utf16 != sorted && key.verify_strict(&utf16, &signature).is_ok() {
        tracing::trace!(target: TARGET, form = "sorted-utf16", "envelope signature verified");
        return Ok(CanonicalForm::Sorted);
    }
    let wire = messages.wire_order();
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

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer as _, SigningKey};

    use super::*;

    // §1.8 inputs: RFC 8032 test key 1.
    const SEED_HEX: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const PUBLIC_HEX: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const PUBLIC_B64: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
    const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZ2VudC03ZjNjIiwiZXhlY19pZCI6ImV4ZWMtMDAwMSIsInRlbmFudF9pZCI6ImFjbWUiLCJpZGVudGl0eV9raW5kIjoiY29uc3VtZXIiLCJzY3AiOiJhZWdpcy1zeXN0ZW0tZGVmYXVsdCIsIndpZCI6ImRvY2tlcjovLzhhOWY3YjNjIiwianRpIjoiNmYxYzJkNGUtMWIyYS00YzNkLTllOGYtMGExYjJjM2Q0ZTVmIiwiaWF0IjoxNzcxMzM4NzAwLCJleHAiOjE3NzEzNDIzMDAsImlzcyI6ImFlZ2lzLW9yY2hlc3RyYXRvciIsImF1ZCI6ImFlZ2lzLWFnZW50cyJ9.c2lnbmF0dXJl";
    const SIG_SORTED: &str =
        "sR/fqvPk9Z1o8ChnHaZHngl7cT5Kgou37ohzkKnzgi68+C9iJkXb0SjvJKwXffKRRCAUbJ2eBSgbOHxBf+jKAw==";
    const SIG_WIRE: &str =
        "dnmvts9XW5r9kN2BPDH3GSOZ0KrHZQgt49z9RTNcGgWBZ2Kqyk7nBNMKCCaz1ESzQrm5VYOvHF99aCt/TOZUAQ==";
    const C2_TOKEN: &str = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJl";
    const SIG_C2: &str =
        "xsXhC8K7RAOQCHv3t5gSqF6yZ2Slz5jYV829jP6aZ8JFuZy1V5Qk1/q2gjBgS9DHp6fIKhSSpSjh+g6wXtU1BQ==";
    const PAYLOAD_INSERTION: &str = r#"{"jsonrpc":"2.0","id":"req-0001","method":"tools/call","params":{"name":"create_repository_with_teams","arguments":{"repo_name":"demo","org":"acme"}}}"#;
    const PAYLOAD_SORTED: &str = r#"{"id":"req-0001","jsonrpc":"2.0","method":"tools/call","params":{"arguments":{"org":"acme","repo_name":"demo"},"name":"create_repository_with_teams"}}"#;
    const REFUSED: &str = "signature verification failed: invalid signature for payload";

    fn hex32(hex: &str) -> [u8; 32] {
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        bytes.try_into().unwrap()
    }

    fn signing_key() -> SigningKey {
        SigningKey::from_bytes(&hex32(SEED_HEX))
    }

    fn key() -> VerifyingKey {
        parse_session_key(PUBLIC_B64).unwrap()
    }

    fn envelope(token: &str, signature: &str, payload: &str, timestamp: &str) -> Envelope {
        Envelope::parse(
            format!(
                r#"{{"protocol":"seal/v1","security_token":"{token}","signature":"{signature}","payload":{payload},"timestamp":{timestamp}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn refused() -> SealError {
        SealError::new(
            http::StatusCode::UNAUTHORIZED,
            code::SIGNATURE_VERIFICATION_FAILED,
            REFUSED,
        )
    }

    fn sign(message: &[u8]) -> String {
        STANDARD.encode(signing_key().sign(message).to_bytes())
    }

    #[test]
    fn spec_1_8_session_key_is_rfc8032_test_key_1() {
        let key = key();
        assert_eq!(key.to_bytes(), hex32(PUBLIC_HEX));
        assert_eq!(signing_key().verifying_key(), key);
        // Surrounding whitespace is tolerated, as in a hand-edited session row.
        assert_eq!(parse_session_key(&format!(" {PUBLIC_B64}\n")).unwrap(), key);
    }

    #[test]
    fn spec_1_8_signatures_are_the_deterministic_ed25519_signatures_of_the_vectors() {
        // Ed25519 signing is deterministic: re-signing the pinned bytes gives the pinned values.
        let sorted = format!(
            "{{\"payload\":{PAYLOAD_SORTED},\"security_token\":\"{TOKEN}\",\"timestamp\":1771338721}}"
        );
        let wire = format!(
            "{{\"payload\":{PAYLOAD_INSERTION},\"security_token\":\"{TOKEN}\",\"timestamp\":1771338721}}"
        );
        let c2 = format!(
            "{{\"payload\":{{\"id\":1,\"jsonrpc\":\"2.0\",\"method\":\"test\"}},\"security_token\":\"{C2_TOKEN}\",\"timestamp\":1708261921}}"
        );
        assert_eq!(sign(sorted.as_bytes()), SIG_SORTED);
        assert_eq!(sign(wire.as_bytes()), SIG_WIRE);
        assert_eq!(sign(c2.as_bytes()), SIG_C2);
        // And the product builds exactly those bytes for the SDK-ordered arrival.
        let e = envelope(TOKEN, SIG_SORTED, PAYLOAD_INSERTION, "1771338721");
        assert_eq!(e.canonical_message().unwrap(), sorted.as_bytes());
        assert_eq!(e.wire_order_message().unwrap(), wire.as_bytes());
    }

    #[test]
    fn spec_1_8_upstream_wire_format_envelope_verifies_sorted() {
        let e = Envelope::parse(
            format!(
                "{{\"protocol\":\"seal/v1\",\n \"security_token\":\"{TOKEN}\",\n \"signature\":\"{SIG_SORTED}\",\n \"payload\":{PAYLOAD_SORTED},\n \"container_id\":null,\n \"timestamp\":1771338721}}"
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(verify_signature(&e, &key()), Ok(CanonicalForm::Sorted));
    }

    #[test]
    fn spec_1_8_sdk_wire_format_envelope_verifies_sorted() {
        // Upstream answered 401/1002 here (wire-order mismatch); the target must accept it.
        let e = Envelope::parse(
            format!(
                "{{\"protocol\":\"seal/v1\",\n \"security_token\":\"{TOKEN}\",\n \"signature\":\"{SIG_SORTED}\",\n \"payload\":{PAYLOAD_INSERTION},\n \"timestamp\":\"2026-02-17T14:32:01.000Z\"}}"
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(verify_signature(&e, &key()), Ok(CanonicalForm::Sorted));
        // The same with the integer timestamp upstream would have needed.
        let e = envelope(TOKEN, SIG_SORTED, PAYLOAD_INSERTION, "1771338721");
        assert_eq!(verify_signature(&e, &key()), Ok(CanonicalForm::Sorted));
    }

    #[test]
    fn spec_1_8_wire_order_signature_is_accepted_as_wire_order() {
        let e = envelope(TOKEN, SIG_WIRE, PAYLOAD_INSERTION, "1771338721");
        assert_eq!(verify_signature(&e, &key()), Ok(CanonicalForm::WireOrder));
        let e = envelope(
            TOKEN,
            SIG_WIRE,
            PAYLOAD_INSERTION,
            "\"2026-02-17T14:32:01.000Z\"",
        );
        assert_eq!(verify_signature(&e, &key()), Ok(CanonicalForm::WireOrder));
    }

    #[test]
    fn spec_1_8_wire_order_signature_is_refused_when_the_payload_arrives_in_another_order() {
        // Sent sorted, the payload's wire order is the sorted form: the wire-order signature
        // covers bytes no form of this envelope produces.
        let e = envelope(TOKEN, SIG_WIRE, PAYLOAD_SORTED, "1771338721");
        assert_eq!(verify_signature(&e, &key()), Err(refused()));
        // Any third order of the same content is refused too.
        let shuffled = r#"{"params":{"arguments":{"repo_name":"demo","org":"acme"},"name":"create_repository_with_teams"},"method":"tools/call","id":"req-0001","jsonrpc":"2.0"}"#;
        let e = envelope(TOKEN, SIG_WIRE, shuffled, "1771338721");
        assert_eq!(verify_signature(&e, &key()), Err(refused()));
        // ...while the sorted signature still verifies whatever the order.
        let e = envelope(TOKEN, SIG_SORTED, shuffled, "1771338721");
        assert_eq!(verify_signature(&e, &key()), Ok(CanonicalForm::Sorted));
    }

    #[test]
    fn spec_1_8_rfc_appendix_c2_vector_verifies() {
        for (payload, timestamp) in [
            (r#"{"id":1,"jsonrpc":"2.0","method":"test"}"#, "1708261921"),
            (
                r#"{"jsonrpc":"2.0","method":"test","id":1}"#,
                "\"2024-02-18T13:12:01.000Z\"",
            ),
        ] {
            let e = envelope(C2_TOKEN, SIG_C2, payload, timestamp);
            assert_eq!(
                verify_signature(&e, &key()),
                Ok(CanonicalForm::Sorted),
                "{payload}"
            );
        }
        // The RFC's own ISO spelling (2026-02-17T14:32:01Z = 1771338721) is not the signed second.
        let e = envelope(
            C2_TOKEN,
            SIG_C2,
            r#"{"id":1,"jsonrpc":"2.0","method":"test"}"#,
            "\"2026-02-17T14:32:01.000Z\"",
        );
        assert_eq!(verify_signature(&e, &key()), Err(refused()));
    }

    #[test]
    fn spec_1_8_signatures_over_other_bytes_are_refused_with_1002() {
        let c2_payload = r#"{"id":1,"jsonrpc":"2.0","method":"test"}"#;
        for e in [
            // One argument changed.
            envelope(
                TOKEN,
                SIG_SORTED,
                &PAYLOAD_SORTED.replace("\"acme\"", "\"acme2\""),
                "1771338721",
            ),
            // A number respelled: 1 and 1.0 are different bytes.
            envelope(
                C2_TOKEN,
                SIG_C2,
                r#"{"id":1.0,"jsonrpc":"2.0","method":"test"}"#,
                "1708261921",
            ),
            // Timestamp one second off.
            envelope(TOKEN, SIG_SORTED, PAYLOAD_SORTED, "1771338722"),
            envelope(C2_TOKEN, SIG_C2, c2_payload, "1708261920"),
            // Another token.
            envelope(C2_TOKEN, SIG_SORTED, PAYLOAD_SORTED, "1771338721"),
            // Another vector's signature.
            envelope(TOKEN, SIG_C2, PAYLOAD_SORTED, "1771338721"),
            envelope(C2_TOKEN, SIG_WIRE, c2_payload, "1708261921"),
        ] {
            assert_eq!(verify_signature(&e, &key()), Err(refused()), "{e:?}");
        }
        // The right bytes under another key.
        let other = SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        let e = envelope(TOKEN, SIG_SORTED, PAYLOAD_SORTED, "1771338721");
        assert_eq!(verify_signature(&e, &other), Err(refused()));
        // A single flipped bit of the signature.
        let mut raw = STANDARD.decode(SIG_SORTED).unwrap();
        raw[10] ^= 1;
        let e = envelope(TOKEN, &STANDARD.encode(&raw), PAYLOAD_SORTED, "1771338721");
        assert_eq!(verify_signature(&e, &key()), Err(refused()));
    }

    #[test]
    fn undecodable_signatures_are_refused_with_1001() {
        let e = envelope(TOKEN, "not base64!", PAYLOAD_SORTED, "1771338721");
        let err = verify_signature(&e, &key()).unwrap_err();
        assert_eq!(err.status, http::StatusCode::UNAUTHORIZED);
        assert_eq!(err.code, code::INVALID_SIGNATURE);
        assert!(
            err.message.starts_with("invalid signature b64: "),
            "{}",
            err.message
        );
        // 63 bytes: the §1.8 signature short of its last byte.
        let raw = STANDARD.decode(SIG_SORTED).unwrap();
        let e = envelope(
            TOKEN,
            &STANDARD.encode(&raw[..63]),
            PAYLOAD_SORTED,
            "1771338721",
        );
        assert_eq!(
            verify_signature(&e, &key()),
            Err(SealError::new(
                http::StatusCode::UNAUTHORIZED,
                code::INVALID_SIGNATURE,
                "signature must be 64 bytes",
            ))
        );
    }

    /// Reference §1.3 TARGET ("use `verify_strict`"; upstream's `verify` accepts small-order
    /// keys): a session key of small order, under which a signature nobody made can verify, is
    /// refused when it is read, though it decodes as a curve point.
    #[test]
    fn a_small_order_session_key_is_refused() {
        for (what, b64) in [
            // y = 0: a point of order 4.
            (
                "32 zero bytes",
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            ),
            // y = 1: the identity.
            (
                "the identity",
                "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            ),
        ] {
            let bytes: [u8; 32] = STANDARD.decode(b64).unwrap().try_into().unwrap();
            assert!(
                VerifyingKey::from_bytes(&bytes).is_ok(),
                "{what} is a point"
            );
            assert_eq!(
                parse_session_key(b64),
                Err(SealError::malformed(
                    "invalid public key: small-order point"
                )),
                "{what}"
            );
        }
    }

    /// Ed25519's group order L, little-endian: 2^252 + 27742317777372353535851937790883648493.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    /// Reference §1.3 TARGET (`verify_strict`): a signature whose S is replaced by S + L, the same
    /// scalar modulo L (so the verification equation still holds) but not its canonical
    /// encoding, is refused: otherwise anyone could make a second valid signature of a signed
    /// envelope.
    #[test]
    fn a_signature_with_a_non_canonical_s_is_refused() {
        let e = envelope(TOKEN, SIG_SORTED, PAYLOAD_SORTED, "1771338721");
        assert_eq!(verify_signature(&e, &key()), Ok(CanonicalForm::Sorted));

        let mut raw = STANDARD.decode(SIG_SORTED).unwrap();
        let mut carry = 0u16;
        for (byte, l) in raw[32..].iter_mut().zip(L) {
            let sum = u16::from(*byte) + u16::from(l) + carry;
            *byte = sum as u8;
            carry = sum >> 8;
        }
        // S < L < 2^253, so S + L fits the 32 bytes, and even the top three bits stay clear: only
        // the canonical-scalar check can tell it from S.
        assert_eq!(carry, 0);
        assert_eq!(raw[63] & 0xe0, 0);
        let malleated = STANDARD.encode(&raw);
        assert_ne!(malleated, SIG_SORTED);
        let e = envelope(TOKEN, &malleated, PAYLOAD_SORTED, "1771338721");
        assert_eq!(verify_signature(&e, &key()), Err(refused()));
    }

    /// `Object.keys().sort()` in the TypeScript SDK orders by UTF-16 code unit: U+1F600 (D83D DE00)
    /// before U+E000, the reverse of Python's code-point order. Both are the sorted form.
    #[test]
    fn utf16_sorted_signature_verifies_as_sorted_and_a_third_order_as_wire_order() {
        let payload = "{\"\u{1F600}\":1,\"a\":{\"\u{FFFF}\":2,\"\u{10000}\":3},\"\u{E000}\":5}";
        let code_point = "{\"payload\":{\"a\":{\"\u{FFFF}\":2,\"\u{10000}\":3},\"\u{E000}\":5,\"\u{1F600}\":1},\"security_token\":\"t.o.k\",\"timestamp\":9}";
        let utf16 = "{\"payload\":{\"a\":{\"\u{10000}\":3,\"\u{FFFF}\":2},\"\u{1F600}\":1,\"\u{E000}\":5},\"security_token\":\"t.o.k\",\"timestamp\":9}";
        let wire =
            format!("{{\"payload\":{payload},\"security_token\":\"t.o.k\",\"timestamp\":9}}");
        let probe = envelope("t.o.k", "", payload, "9");
        assert_eq!(probe.canonical_message().unwrap(), code_point.as_bytes());
        assert_eq!(probe.utf16_sorted_message().unwrap(), utf16.as_bytes());
        assert_eq!(probe.wire_order_message().unwrap(), wire.as_bytes());

        for (signed, expected) in [
            (code_point.to_owned(), Ok(CanonicalForm::Sorted)),
            (utf16.to_owned(), Ok(CanonicalForm::Sorted)),
            (wire.clone(), Ok(CanonicalForm::WireOrder)),
            // UTF-16 order at the top level only, code-point order inside: no form.
            (
                "{\"payload\":{\"a\":{\"\u{FFFF}\":2,\"\u{10000}\":3},\"\u{1F600}\":1,\"\u{E000}\":5},\"security_token\":\"t.o.k\",\"timestamp\":9}".to_owned(),
                Err(refused()),
            ),
        ] {
            let e = envelope("t.o.k", &sign(signed.as_bytes()), payload, "9");
            assert_eq!(verify_signature(&e, &key()), expected, "{signed}");
        }
    }
}
