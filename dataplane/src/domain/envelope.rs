//! The SEAL envelope on the wire, and the canonical bytes its Ed25519 signature covers.
//!
//! The canonical message is `{"payload":…,"security_token":…,"timestamp":<seconds>}` with keys sorted at
//! every level, no whitespace, raw UTF-8, and numbers spelled exactly as they arrived: the Python SDK
//! signs `1.0` and `1e-07`, the TypeScript SDK `1`, and re-formatting a parsed float would break both.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::io::Write;

use chrono::DateTime;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::seal_error::SealError;

/// The only protocol version there is.
pub const PROTOCOL: &str = "seal/v1";
/// Deepest JSON nesting accepted in a payload: canonicalization recurses, so it is bounded.
pub const MAX_DEPTH: usize = 64;

/// An envelope as it arrived, parsed once.
#[derive(Debug)]
pub struct Envelope {
    pub protocol: String,
    pub security_token: String,
    pub signature: String,
    /// The payload's exact bytes, for canonicalization.
    pub payload_raw: Box<RawValue>,
    /// Unix seconds (an RFC 3339 timestamp floored to the second, as the SDKs sign it).
    pub timestamp: i64,
    pub container_id: Option<String>,
}

#[derive(Deserialize)]
struct WireEnvelope {
    protocol: String,
    security_token: String,
    signature: String,
    payload: Box<RawValue>,
    timestamp: Box<RawValue>,
    #[serde(default)]
    container_id: Option<String>,
}

impl Envelope {
    /// Parses the request body. Unknown top-level fields are ignored, duplicates refused.
    pub fn parse(body: &[u8]) -> Result<Self, SealError> {
        let wire: WireEnvelope = serde_json::from_slice(body)
            .map_err(|e| SealError::malformed(format!("malformed envelope: {e}")))?;
        let timestamp = parse_timestamp(wire.timestamp.get())?;
        Ok(Self {
            protocol: wire.protocol,
            security_token: wire.security_token,
            signature: wire.signature,
            payload_raw: wire.payload,
            timestamp,
            container_id: wire.container_id,
        })
    }

    /// The bytes the RFC and both SDKs sign: keys sorted at every level.
    pub fn canonical_message(&self) -> Result<Vec<u8>, SealError> {
        self.message(Order::Sorted)
    }

    /// The sorted form as the TypeScript SDK writes it: `Object.keys().sort()` compares UTF-16
    /// code units, so a key beyond the BMP (a surrogate pair, 0xD800..) sorts before one in
    /// U+E000..U+FFFF, unlike code-point order. Identical to [`Self::canonical_message`] unless
    /// such keys share an object.
    pub fn utf16_sorted_message(&self) -> Result<Vec<u8>, SealError> {
        self.message(Order::SortedUtf16)
    }

    /// The bytes upstream gateways verified: the payload's keys in the order they arrived.
    /// Accepted as a fallback so that signers written against upstream keep working.
    pub fn wire_order_message(&self) -> Result<Vec<u8>, SealError> {
        self.message(Order::Wire)
    }

    fn message(&self, order: Order) -> Result<Vec<u8>, SealError> {
        let mut out =
            Vec::with_capacity(self.payload_raw.get().len() + self.security_token.len() + 64);
        out.extend_from_slice(b"{\"payload\":");
        write_canonical(&mut out, self.payload_raw.get(), order, 0)?;
        out.extend_from_slice(b",\"security_token\":");
        write_string(&mut out, &self.security_token);
        out.extend_from_slice(b",\"timestamp\":");
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{}", self.timestamp);
        out.push(b'}');
        Ok(out)
    }
}

/// Integer seconds (upstream) or an RFC 3339 string (RFC, SDKs). Floats and other types are refused.
fn parse_timestamp(raw: &str) -> Result<i64, SealError> {
    let invalid = || {
        SealError::malformed(format!(
            "invalid envelope timestamp {raw}: expected integer Unix seconds or an RFC 3339 string"
        ))
    };
    if raw.starts_with('"') {
        let text: String = serde_json::from_str(raw).map_err(|_| invalid())?;
        let instant = DateTime::parse_from_rfc3339(&text).map_err(|_| invalid())?;
        Ok(instant.timestamp())
    } else {
        raw.parse::<i64>().map_err(|_| invalid())
    }
}

#[derive(Clone, Copy)]
enum Order {
    Sorted,
    SortedUtf16,
    Wire,
}

/// Writes one JSON value compactly: objects with their keys sorted (or in wire order), strings
/// re-escaped the way the SDKs' serializers escape them, numbers and literals as spelled.
fn write_canonical(
    out: &mut Vec<u8>,
    raw: &str,
    order: Order,
    depth: usize,
) -> Result<(), SealError> {
    if depth > MAX_DEPTH {
        return Err(SealError::malformed(format!(
            "payload nests deeper than {MAX_DEPTH} levels"
        )));
    }
    let invalid = |e: serde_json::Error| SealError::malformed(format!("invalid payload JSON: {e}"));
    match raw.trim_start().as_bytes().first() {
        Some(b'{') => {
            let members: Members = serde_json::from_str(raw).map_err(invalid)?;
            let mut members = members.0;
            match order {
                // Byte order of UTF-8 equals code-point order: what Python's sort_keys produces.
                Order::Sorted => members.sort_by(|a, b| a.0.cmp(&b.0)),
                Order::SortedUtf16 => {
                    members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()))
                }
                Order::Wire => {}
            }
            out.push(b'{');
            for (i, (key, value)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                write_canonical(out, value.get(), order, depth + 1)?;
            }
            out.push(b'}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(raw).map_err(invalid)?;
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, item.get(), order, depth + 1)?;
            }
            out.push(b']');
        }
        Some(b'"') => {
            let Text(text) = serde_json::from_str(raw).map_err(invalid)?;
            write_string(out, &text);
        }
        // Numbers, true, false, null: RawValue has validated them; keep their spelling.
        Some(_) => out.extend_from_slice(raw.trim().as_bytes()),
        None => return Err(SealError::malformed("invalid payload JSON: empty value")),
    }
    Ok(())
}

/// JSON string escaping as Python's `json.dumps(ensure_ascii=False)` and `JSON.stringify` do it:
/// `"` `\` and the short control escapes, other C0 controls as `\u00xx`, everything else raw.
fn write_string(out: &mut Vec<u8>, s: &str) {
    // serde_json's compact writer escapes exactly that set, lower-case hex included. Writing into
    // a Vec cannot fail.
    let _ = serde_json::to_writer(out, s);
}

/// A JSON string's text, borrowed from the input unless it holds escapes (serde's own `Cow`
/// impl always copies).
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor(std::marker::PhantomData))
    }
}

/// Objects with up to this many members are checked for duplicate keys by scanning the members
/// read so far, which allocates nothing; larger ones (rare in a tool call) use a set, so the check
/// stays linear.
const SCANNED_MEMBERS: usize = 16;

/// An object's members in wire order, refusing duplicate keys: two values under one key would let
/// the signed bytes and the executed arguments disagree.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for MembersVisitor<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members: Vec<(Cow<'a, str>, &'a RawValue)> = Vec::new();
                let mut seen: HashSet<Cow<'a, str>> = HashSet::new();
                while let Some(Text(key)) = map.next_key()? {
                    let duplicate = if members.len() < SCANNED_MEMBERS {
                        members.iter().any(|(k, _)| *k == key)
                    } else {
                        if seen.is_empty() {
                            seen.extend(members.iter().map(|(k, _)| k.clone()));
                        }
                        !seen.insert(key.clone())
                    };
                    if duplicate {
                        return Err(de::Error::custom(format!("duplicate key \"{key}\"")));
                    }
                    let value: &'a RawValue = map.next_value()?;
                    members.push((key, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(payload: &str, timestamp: &str) -> Envelope {
        Envelope::parse(
            format!(
                r#"{{"protocol":"seal/v1","security_token":"t.o.k","signature":"c2ln","payload":{payload},"timestamp":{timestamp}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn sorts_keys_at_every_level_and_keeps_number_spelling() {
        let e = envelope(
            r#"{"b": {"z": [3, {"y": 1.0, "x": 1e-07}], "a": null}, "a": "é\u00e9\n\u0001/"}"#,
            "1771338721",
        );
        assert_eq!(
            String::from_utf8(e.canonical_message().unwrap()).unwrap(),
            "{\"payload\":{\"a\":\"éé\\n\\u0001/\",\"b\":{\"a\":null,\"z\":[3,{\"x\":1e-07,\"y\":1.0}]}},\"security_token\":\"t.o.k\",\"timestamp\":1771338721}"
        );
        assert_eq!(
            String::from_utf8(e.wire_order_message().unwrap()).unwrap(),
            "{\"payload\":{\"b\":{\"z\":[3,{\"y\":1.0,\"x\":1e-07}],\"a\":null},\"a\":\"éé\\n\\u0001/\"},\"security_token\":\"t.o.k\",\"timestamp\":1771338721}"
        );
    }

    #[test]
    fn timestamps_are_integer_seconds_or_rfc3339_floored() {
        assert_eq!(envelope("{}", "1771338721").timestamp, 1771338721);
        assert_eq!(
            envelope("{}", "\"2026-02-17T14:32:01.999Z\"").timestamp,
            1771338721
        );
        assert_eq!(
            envelope("{}", "\"2026-02-17T15:32:01+01:00\"").timestamp,
            1771338721
        );
        for bad in ["1.5", "\"yesterday\"", "null", "[1]", "1e3"] {
            let body = format!(
                r#"{{"protocol":"seal/v1","security_token":"t","signature":"s","payload":{{}},"timestamp":{bad}}}"#
            );
            let err = Envelope::parse(body.as_bytes()).unwrap_err();
            assert_eq!(err.code, 1000, "{bad}");
            assert!(
                err.message.starts_with("invalid envelope timestamp"),
                "{bad}: {}",
                err.message
            );
        }
    }

    #[test]
    fn refuses_duplicate_keys_and_deep_nesting() {
        let e = envelope(r#"{"a": 1, "a": 2}"#, "1");
        let err = e.canonical_message().unwrap_err().message;
        assert!(
            err.starts_with("invalid payload JSON: duplicate key \"a\""),
            "{err}"
        );
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 2), "]".repeat(MAX_DEPTH + 2));
        let e = envelope(&deep, "1");
        assert_eq!(
            e.canonical_message().unwrap_err().message,
            format!("payload nests deeper than {MAX_DEPTH} levels")
        );
        let body = br#"{"protocol":"seal/v1","protocol":"x","security_token":"t","signature":"s","payload":{},"timestamp":1}"#;
        assert!(
            Envelope::parse(body)
                .unwrap_err()
                .message
                .contains("duplicate field")
        );
    }

    #[test]
    fn refuses_duplicate_keys_in_large_objects_and_behind_escapes() {
        // Past SCANNED_MEMBERS members the check uses a set; the message and position are the same.
        let members: Vec<String> = (0..40).map(|i| format!("\"k{i}\": {i}")).collect();
        for (dup_at, column) in [(3, 41), (30, 327)] {
            let mut members = members.clone();
            members.insert(dup_at + 1, format!("\"k{dup_at}\": 0"));
            let e = envelope(&format!("{{{}}}", members.join(", ")), "1");
            assert_eq!(
                e.canonical_message().unwrap_err().message,
                format!(
                    "invalid payload JSON: duplicate key \"k{dup_at}\" at line 1 column {column}"
                )
            );
        }
        // Keys compare by their text, whatever their escapes.
        let e = envelope(r#"{"ab": 1, "\u0061b": 2}"#, "1");
        assert!(
            e.canonical_message()
                .unwrap_err()
                .message
                .starts_with("invalid payload JSON: duplicate key \"ab\""),
        );
        let escaped = envelope(r#"{"k\u00e9\n": "v\u00e9\t", "a": "plain"}"#, "1");
        assert_eq!(
            String::from_utf8(escaped.canonical_message().unwrap()).unwrap(),
            "{\"payload\":{\"a\":\"plain\",\"ké\\n\":\"vé\\t\"},\"security_token\":\"t.o.k\",\"timestamp\":1}"
        );
    }

    #[test]
    fn canonical_form_is_stable_under_key_permutations() {
        let a = envelope(
            r#"{"x": {"k1": 1, "k2": [true, {"p": "q", "o": 2}]}, "y": "z"}"#,
            "5",
        );
        let b = envelope(
            r#"{"y": "z", "x": {"k2": [true, {"o": 2, "p": "q"}], "k1": 1}}"#,
            "5",
        );
        assert_eq!(
            a.canonical_message().unwrap(),
            b.canonical_message().unwrap()
        );
        assert_ne!(
            a.wire_order_message().unwrap(),
            b.wire_order_message().unwrap()
        );
    }

    // ---- §1.8 worked example, byte for byte ----

    /// The §1.8 security token (its third segment is a placeholder, irrelevant to the Ed25519 step).
    const SPEC_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZ2VudC03ZjNjIiwiZXhlY19pZCI6ImV4ZWMtMDAwMSIsInRlbmFudF9pZCI6ImFjbWUiLCJpZGVudGl0eV9raW5kIjoiY29uc3VtZXIiLCJzY3AiOiJhZWdpcy1zeXN0ZW0tZGVmYXVsdCIsIndpZCI6ImRvY2tlcjovLzhhOWY3YjNjIiwianRpIjoiNmYxYzJkNGUtMWIyYS00YzNkLTllOGYtMGExYjJjM2Q0ZTVmIiwiaWF0IjoxNzcxMzM4NzAwLCJleHAiOjE3NzEzNDIzMDAsImlzcyI6ImFlZ2lzLW9yY2hlc3RyYXRvciIsImF1ZCI6ImFlZ2lzLWFnZW50cyJ9.c2lnbmF0dXJl";
    const SPEC_SIG_SORTED: &str =
        "sR/fqvPk9Z1o8ChnHaZHngl7cT5Kgou37ohzkKnzgi68+C9iJkXb0SjvJKwXffKRRCAUbJ2eBSgbOHxBf+jKAw==";
    /// The payload as the SDK builds it (insertion order).
    const SPEC_PAYLOAD_INSERTION: &str = r#"{"jsonrpc":"2.0","id":"req-0001","method":"tools/call","params":{"name":"create_repository_with_teams","arguments":{"repo_name":"demo","org":"acme"}}}"#;
    /// The same payload with keys sorted at every level (the upstream wire-format example).
    const SPEC_PAYLOAD_SORTED: &str = r#"{"id":"req-0001","jsonrpc":"2.0","method":"tools/call","params":{"arguments":{"org":"acme","repo_name":"demo"},"name":"create_repository_with_teams"}}"#;

    fn sha256_hex(bytes: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn spec_sorted_message() -> String {
        format!(
            "{{\"payload\":{SPEC_PAYLOAD_SORTED},\"security_token\":\"{SPEC_TOKEN}\",\"timestamp\":1771338721}}"
        )
    }

    fn spec_wire_message() -> String {
        format!(
            "{{\"payload\":{SPEC_PAYLOAD_INSERTION},\"security_token\":\"{SPEC_TOKEN}\",\"timestamp\":1771338721}}"
        )
    }

    /// The §1.8 "upstream wire format" envelope: integer timestamp, payload sent already sorted.
    fn spec_upstream_wire_envelope() -> Envelope {
        Envelope::parse(
            format!(
                "{{\"protocol\":\"seal/v1\",\n \"security_token\":\"{SPEC_TOKEN}\",\n \"signature\":\"{SPEC_SIG_SORTED}\",\n \"payload\":{SPEC_PAYLOAD_SORTED},\n \"container_id\":null,\n \"timestamp\":1771338721}}"
            )
            .as_bytes(),
        )
        .unwrap()
    }

    /// The §1.8 "SDK wire format" envelope: ISO timestamp, payload in insertion order.
    fn spec_sdk_wire_envelope() -> Envelope {
        Envelope::parse(
            format!(
                "{{\"protocol\":\"seal/v1\",\n \"security_token\":\"{SPEC_TOKEN}\",\n \"signature\":\"{SPEC_SIG_SORTED}\",\n \"payload\":{SPEC_PAYLOAD_INSERTION},\n \"timestamp\":\"2026-02-17T14:32:01.000Z\"}}"
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn spec_1_8_expected_messages_hash_to_the_spec_digests() {
        // Guards the literals below: the spec's sha256 values are over exactly these bytes.
        assert_eq!(
            sha256_hex(spec_sorted_message().as_bytes()),
            "1d595c816159b2833ba322e2b286ca57871f1353efc00dfd30f9ef0253be9dee"
        );
        assert_eq!(
            sha256_hex(spec_wire_message().as_bytes()),
            "a3472e1c5514377586d92e4e78548e6d1112071e50d782b1f7db565958625266"
        );
    }

    #[test]
    fn spec_1_8_sdk_wire_envelope_canonicalizes_to_the_sorted_vector() {
        let e = spec_sdk_wire_envelope();
        assert_eq!(e.protocol, PROTOCOL);
        assert_eq!(e.security_token, SPEC_TOKEN);
        assert_eq!(e.signature, SPEC_SIG_SORTED);
        assert_eq!(e.timestamp, 1771338721);
        assert_eq!(e.container_id, None);
        assert_eq!(e.payload_raw.get(), SPEC_PAYLOAD_INSERTION);
        let sorted = e.canonical_message().unwrap();
        assert_eq!(
            String::from_utf8(sorted.clone()).unwrap(),
            spec_sorted_message()
        );
        assert_eq!(
            sha256_hex(&sorted),
            "1d595c816159b2833ba322e2b286ca57871f1353efc00dfd30f9ef0253be9dee"
        );
        // No key here leaves the BMP: the UTF-16 ordering is the same message.
        assert_eq!(e.utf16_sorted_message().unwrap(), sorted);
        // Upstream's message for the same arrival: the payload's wire order.
        let wire = e.wire_order_message().unwrap();
        assert_eq!(
            String::from_utf8(wire.clone()).unwrap(),
            spec_wire_message()
        );
        assert_eq!(
            sha256_hex(&wire),
            "a3472e1c5514377586d92e4e78548e6d1112071e50d782b1f7db565958625266"
        );
    }

    #[test]
    fn spec_1_8_upstream_wire_envelope_gives_the_sorted_vector_in_every_order() {
        let e = spec_upstream_wire_envelope();
        assert_eq!(e.timestamp, 1771338721);
        assert_eq!(e.container_id, None);
        assert_eq!(e.signature, SPEC_SIG_SORTED);
        let expected = spec_sorted_message();
        for message in [
            e.canonical_message().unwrap(),
            e.utf16_sorted_message().unwrap(),
            e.wire_order_message().unwrap(),
        ] {
            assert_eq!(String::from_utf8(message.clone()).unwrap(), expected);
            assert_eq!(
                sha256_hex(&message),
                "1d595c816159b2833ba322e2b286ca57871f1353efc00dfd30f9ef0253be9dee"
            );
        }
    }

    #[test]
    fn spec_1_8_rfc_appendix_c2_vector() {
        let e = Envelope::parse(
            br#"{"protocol":"seal/v1","security_token":"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJl","signature":"xsXhC8K7RAOQCHv3t5gSqF6yZ2Slz5jYV829jP6aZ8JFuZy1V5Qk1/q2gjBgS9DHp6fIKhSSpSjh+g6wXtU1BQ==","payload":{"jsonrpc":"2.0","method":"test","id":1},"timestamp":1708261921}"#,
        )
        .unwrap();
        let sorted = e.canonical_message().unwrap();
        assert_eq!(
            String::from_utf8(sorted.clone()).unwrap(),
            r#"{"payload":{"id":1,"jsonrpc":"2.0","method":"test"},"security_token":"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJl","timestamp":1708261921}"#
        );
        assert_eq!(
            sha256_hex(&sorted),
            "f49043299f12f278397fa2502fb1566432c506c83a162bc271b3666f8618b837"
        );
        assert_eq!(
            String::from_utf8(e.wire_order_message().unwrap()).unwrap(),
            r#"{"payload":{"jsonrpc":"2.0","method":"test","id":1},"security_token":"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJl","timestamp":1708261921}"#
        );
        // The RFC's ISO spelling of that instant is inconsistent (§1.8 note): 1708261921 is
        // 2024-02-18T13:12:01Z, and that string canonicalizes to the same seconds.
        let iso = Envelope::parse(
            br#"{"protocol":"seal/v1","security_token":"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJl","signature":"","payload":{"id":1,"jsonrpc":"2.0","method":"test"},"timestamp":"2024-02-18T13:12:01.000Z"}"#,
        )
        .unwrap();
        assert_eq!(iso.timestamp, 1708261921);
        assert_eq!(iso.canonical_message().unwrap(), sorted);
    }

    #[test]
    fn utf16_order_differs_from_code_point_order_only_across_the_surrogate_range() {
        // U+1F600 is the surrogate pair D83D DE00 in UTF-16, which sorts before U+E000 there,
        // but after it by code point (and by UTF-8 byte).
        let e = envelope(
            "{\"\u{1F600}\": 1, \"a\": {\"\u{FFFF}\": 2, \"\u{10000}\": 3, \"\u{D7FF}\": 4}, \"\u{E000}\": 5}",
            "7",
        );
        assert_eq!(
            String::from_utf8(e.canonical_message().unwrap()).unwrap(),
            "{\"payload\":{\"a\":{\"\u{D7FF}\":4,\"\u{FFFF}\":2,\"\u{10000}\":3},\"\u{E000}\":5,\"\u{1F600}\":1},\"security_token\":\"t.o.k\",\"timestamp\":7}"
        );
        assert_eq!(
            String::from_utf8(e.utf16_sorted_message().unwrap()).unwrap(),
            "{\"payload\":{\"a\":{\"\u{D7FF}\":4,\"\u{10000}\":3,\"\u{FFFF}\":2},\"\u{1F600}\":1,\"\u{E000}\":5},\"security_token\":\"t.o.k\",\"timestamp\":7}"
        );
        assert_eq!(
            String::from_utf8(e.wire_order_message().unwrap()).unwrap(),
            "{\"payload\":{\"\u{1F600}\":1,\"a\":{\"\u{FFFF}\":2,\"\u{10000}\":3,\"\u{D7FF}\":4},\"\u{E000}\":5},\"security_token\":\"t.o.k\",\"timestamp\":7}"
        );
        // Escaped spellings of the same keys (a surrogate-pair escape included) order the same.
        let escaped = envelope(
            r#"{"\ud83d\ude00": 1, "a": {"\uffff": 2, "\ud800\udc00": 3, "\ud7ff": 4}, "\ue000": 5}"#,
            "7",
        );
        assert_eq!(
            escaped.canonical_message().unwrap(),
            e.canonical_message().unwrap()
        );
        assert_eq!(
            escaped.utf16_sorted_message().unwrap(),
            e.utf16_sorted_message().unwrap()
        );
    }
}
