//! The SEAL envelope on the wire, and the canonical bytes its Ed25519 signature covers.
//!
//! The canonical message is `{"payload":…,"security_token":…,"timestamp":<seconds>}` with keys sorted at
//! every level, no whitespace, raw UTF-8, and numbers spelled exactly as they arrived: the Python SDK
//! signs `1.0` and `1e-07`, the TypeScript SDK `1`, and re-formatting a parsed float would break both.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Write;

use chrono::DateTime;
use serde::Deserialize;
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

    /// The payload read once, from which every form of the signed message is written.
    pub fn messages(&self) -> Result<Messages<'_>, SealError> {
        Ok(Messages {
            envelope: self,
            payload: Reader::read(self.payload_raw.get())?,
        })
    }

    /// The bytes the RFC and both SDKs sign: keys sorted at every level.
    pub fn canonical_message(&self) -> Result<Vec<u8>, SealError> {
        Ok(self.messages()?.sorted())
    }

    /// See [`Messages::utf16_sorted`].
    pub fn utf16_sorted_message(&self) -> Result<Vec<u8>, SealError> {
        Ok(self.messages()?.utf16_sorted())
    }

    /// See [`Messages::wire_order`].
    pub fn wire_order_message(&self) -> Result<Vec<u8>, SealError> {
        Ok(self.messages()?.wire_order())
    }
}

/// The forms of an envelope's signed message, written from its payload read once.
pub struct Messages<'a> {
    envelope: &'a Envelope,
    payload: Node<'a>,
}

impl Messages<'_> {
    /// The bytes the RFC and both SDKs sign: keys sorted at every level.
    pub fn sorted(&self) -> Vec<u8> {
        self.message(Order::Sorted)
    }

    /// The sorted form as the TypeScript SDK writes it: `Object.keys().sort()` compares UTF-16
    /// code units, so a key beyond the BMP (a surrogate pair, 0xD800..) sorts before one in
    /// U+E000..U+FFFF, unlike code-point order. Identical to [`Self::sorted`] unless such keys
    /// share an object.
    pub fn utf16_sorted(&self) -> Vec<u8> {
        self.message(Order::SortedUtf16)
    }

    /// The bytes upstream gateways verified: the payload's keys in the order they arrived.
    /// Accepted as a fallback so that signers written against upstream keep working.
    pub fn wire_order(&self) -> Vec<u8> {
        self.message(Order::Wire)
    }

    fn message(&self, order: Order) -> Vec<u8> {
        let envelope = self.envelope;
        let mut out = Vec::with_capacity(
            envelope.payload_raw.get().len() + envelope.security_token.len() + 64,
        );
        out.extend_from_slice(b"{\"payload\":");
        write_canonical(&mut out, &self.payload, order);
        out.extend_from_slice(b",\"security_token\":");
        write_string(&mut out, &envelope.security_token);
        out.extend_from_slice(b",\"timestamp\":");
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{}", envelope.timestamp);
        out.push(b'}');
        out
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

/// A payload value, read once: objects and arrays as trees, strings decoded, numbers and literals
/// as spelled. Each form of the message is written from it. (Reading each container's text again
/// at each level, as serde's `RawValue`s invite, costs one pass per level of nesting: 0.2 s of CPU
/// for a 2 MiB payload 63 levels deep, before the signature is known to be good.)
enum Node<'a> {
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
    Array(Vec<Node<'a>>),
    String(Cow<'a, str>),
    /// A number, `true`, `false` or `null`, as it arrived.
    Literal(&'a str),
}

/// Objects with up to this many members are checked for duplicate keys by scanning the members
/// read so far, which allocates nothing; larger ones (rare in a tool call) use a set, so the check
/// stays linear.
const SCANNED_MEMBERS: usize = 16;

/// Reads JSON text that serde_json has already validated (the envelope's `payload` is a
/// `RawValue`), so it only splits tokens; what validation leaves to it is refusing duplicate keys
/// (two values under one key would let the signed bytes and the executed arguments disagree) and
/// bounding the depth.
struct Reader<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn read(text: &'a str) -> Result<Node<'a>, SealError> {
        Reader { text, pos: 0 }.value(0)
    }

    fn byte(&self) -> u8 {
        self.text.as_bytes()[self.pos]
    }

    fn skip_whitespace(&mut self) {
        while matches!(
            self.text.as_bytes().get(self.pos),
            Some(b' ' | b'\t' | b'\n' | b'\r')
        ) {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node<'a>, SealError> {
        if depth > MAX_DEPTH {
            return Err(SealError::malformed(format!(
                "payload nests deeper than {MAX_DEPTH} levels"
            )));
        }
        self.skip_whitespace();
        let start = self.pos;
        match self.byte() {
            b'{' => {
                self.pos += 1;
                let mut members: Vec<(Cow<'a, str>, Node<'a>)> = Vec::new();
                let mut seen: HashSet<Cow<'a, str>> = HashSet::new();
                loop {
                    self.skip_whitespace();
                    match self.byte() {
                        b'}' => break,
                        b',' => {
                            self.pos += 1;
                            continue;
                        }
                        _ => {}
                    }
                    let key = self.string()?;
                    let duplicate = if members.len() < SCANNED_MEMBERS {
                        members.iter().any(|(k, _)| *k == key)
                    } else {
                        if seen.is_empty() {
                            seen.extend(members.iter().map(|(k, _)| k.clone()));
                        }
                        !seen.insert(key.clone())
                    };
                    if duplicate {
                        return Err(self.duplicate(&key, start));
                    }
                    self.skip_whitespace();
                    self.pos += 1; // the `:`
                    let value = self.value(depth + 1)?;
                    members.push((key, value));
                }
                self.pos += 1;
                Ok(Node::Object(members))
            }
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_whitespace();
                    match self.byte() {
                        b']' => break,
                        b',' => {
                            self.pos += 1;
                            continue;
                        }
                        _ => items.push(self.value(depth + 1)?),
                    }
                }
                self.pos += 1;
                Ok(Node::Array(items))
            }
            b'"' => Ok(Node::String(self.string()?)),
            _ => {
                let rest = &self.text.as_bytes()[start..];
                let len = rest
                    .iter()
                    .position(|b| matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'))
                    .unwrap_or(rest.len());
                self.pos += len;
                Ok(Node::Literal(&self.text[start..self.pos]))
            }
        }
    }

    /// A string token's text, borrowed unless it holds escapes. A quote or a backslash is never
    /// part of a multi-byte character, so bytes can be scanned.
    fn string(&mut self) -> Result<Cow<'a, str>, SealError> {
        let start = self.pos;
        let bytes = self.text.as_bytes();
        let mut escaped = false;
        self.pos += 1;
        while bytes[self.pos] != b'"' {
            if bytes[self.pos] == b'\\' {
                escaped = true;
                self.pos += 1;
            }
            self.pos += 1;
        }
        self.pos += 1;
        let token = &self.text[start..self.pos];
        if escaped {
            serde_json::from_str::<String>(token)
                .map(Cow::Owned)
                .map_err(|e| SealError::malformed(format!("invalid payload JSON: {e}")))
        } else {
            Ok(Cow::Borrowed(&token[1..token.len() - 1]))
        }
    }

    /// The refusal of a repeated key, placed as serde_json places it in the object's own text:
    /// the line and column of the byte after the key.
    fn duplicate(&self, key: &str, object_start: usize) -> SealError {
        let read = &self.text.as_bytes()[object_start..self.pos];
        let line_start = read.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let line = 1 + read[..line_start].iter().filter(|&&b| b == b'\n').count();
        let column = read.len() - line_start;
        SealError::malformed(format!(
            "invalid payload JSON: duplicate key \"{key}\" at line {line} column {column}"
        ))
    }
}

/// Writes one value compactly: objects with their keys sorted (or in wire order), strings
/// re-escaped the way the SDKs' serializers escape them, numbers and literals as spelled.
fn write_canonical(out: &mut Vec<u8>, node: &Node<'_>, order: Order) {
    match node {
        Node::Object(members) => {
            let mut members: Vec<&(Cow<'_, str>, Node<'_>)> = members.iter().collect();
            match order {
                // Byte order of UTF-8 equals code-point order: what Python's sort_keys produces.
                Order::Sorted => members.sort_by(|a, b| a.0.cmp(&b.0)),
                Order::SortedUtf16 => {
                    members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()))
                }
                Order::Wire => {}
            }
            out.push(b'{');
            for (i, (key, value)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                write_canonical(out, value, order);
            }
            out.push(b'}');
        }
        Node::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, item, order);
            }
            out.push(b']');
        }
        Node::String(text) => write_string(out, text),
        Node::Literal(text) => out.extend_from_slice(text.as_bytes()),
    }
}

/// JSON string escaping as Python's `json.dumps(ensure_ascii=False)` and `JSON.stringify` do it:
/// `"` `\` and the short control escapes, other C0 controls as `\u00xx`, everything else raw.
fn write_string(out: &mut Vec<u8>, s: &str) {
    // serde_json's compact writer escapes exactly that set, lower-case hex included. Writing into
    // a Vec cannot fail.
    let _ = serde_json::to_writer(out, s);
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
    fn whitespace_anywhere_and_nested_duplicates_read_as_serde_json_reads_them() {
        let spaced = envelope(
            "{ \"b\" :\t[ 1 ,\r\n2.50 , { \"y\" : null , \"x\" : true } , [ ] , { } ] , \"a\" : \"\\u00e9\" }",
            "1",
        );
        let payload = |m: Vec<u8>| {
            let m = String::from_utf8(m).unwrap();
            m["{\"payload\":".len()..m.find(",\"security_token\"").unwrap()].to_owned()
        };
        assert_eq!(
            payload(spaced.canonical_message().unwrap()),
            r#"{"a":"é","b":[1,2.50,{"x":true,"y":null},[],{}]}"#
        );
        assert_eq!(
            payload(spaced.wire_order_message().unwrap()),
            r#"{"b":[1,2.50,{"y":null,"x":true},[],{}],"a":"é"}"#
        );
        // The position is in the repeating object's own text, as serde_json gives it.
        let nested = envelope("{\"o\": {\n  \"a\": 1,\n  \"a\": 2}}", "1");
        assert_eq!(
            nested.canonical_message().unwrap_err().message,
            "invalid payload JSON: duplicate key \"a\" at line 3 column 5"
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
