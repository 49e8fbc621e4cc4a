//! Arbitrary bytes through `Envelope::parse`, and every envelope that parses through both
//! serializations of the signed bytes. Invariants (any violation is a crash libFuzzer keeps):
//!
//! - nothing panics, whatever the input;
//! - `canonical_message()` and `wire_order_message()` succeed or fail together;
//! - the canonical message is JSON whose top-level keys are exactly `payload`, `security_token`,
//!   `timestamp`, in that order, carrying the envelope's token and timestamp;
//! - its payload is compact, has its keys strictly ascending at every level, escapes strings the
//!   way the SDKs do (only `"` `\` and C0 controls, lower-case `\u00xx`), and means the same
//!   JSON value as the payload that arrived;
//! - re-parsing an envelope built from the canonical payload gives the same canonical bytes (and
//!   a wire-order message equal to them), and one built from the wire-order payload gives the same
//!   canonical bytes and the same wire-order bytes.
#![no_main]

use std::fmt;

use aegis_seal_gateway::domain::envelope::Envelope;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| check(data));

fn check(data: &[u8]) {
    let Ok(envelope) = Envelope::parse(data) else {
        return;
    };
    let canonical = envelope.canonical_message();
    let wire = envelope.wire_order_message();
    let (canonical, wire) = match (canonical, wire) {
        (Ok(c), Ok(w)) => (c, w),
        (Err(_), Err(_)) => return,
        (c, w) => panic!("the two serializations disagree on validity: {c:?} vs {w:?}"),
    };

    let parts = top_level(&canonical, &envelope);
    let wire_parts = top_level(&wire, &envelope);

    // The canonical payload: compact, sorted, SDK escaping, same value as what arrived.
    let payload = parts.payload.get();
    check_compact_and_escaped(payload);
    check_sorted(payload, 0);
    check_same_value(envelope.payload_raw.get(), payload);
    check_compact_and_escaped(wire_parts.payload.get());
    check_same_value(envelope.payload_raw.get(), wire_parts.payload.get());

    // Idempotence: the canonical payload is a fixed point of both serializations.
    let again = rebuild(&envelope, payload, parts.timestamp.get());
    assert_eq!(
        signed(&again, Order::Sorted),
        lossy(&canonical),
        "canonicalizing the canonical payload changed it"
    );
    assert_eq!(
        signed(&again, Order::Wire),
        lossy(&canonical),
        "a sorted payload's wire order is not its canonical form"
    );

    // The wire-order payload canonicalizes to the same bytes and is its own wire order.
    let again = rebuild(&envelope, wire_parts.payload.get(), parts.timestamp.get());
    assert_eq!(
        signed(&again, Order::Sorted),
        lossy(&canonical),
        "the wire-order payload canonicalizes differently"
    );
    assert_eq!(
        signed(&again, Order::Wire),
        lossy(&wire),
        "the wire-order serialization is not idempotent"
    );
}

enum Order {
    Sorted,
    Wire,
}

/// A rebuilt envelope's signed bytes, which must exist: its payload was serialized once already.
fn signed(envelope: &Envelope, order: Order) -> String {
    let message = match order {
        Order::Sorted => envelope.canonical_message(),
        Order::Wire => envelope.wire_order_message(),
    };
    lossy(&message.unwrap_or_else(|e| panic!("a serialized payload is refused: {e:?}")))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

struct Parts {
    payload: Box<RawValue>,
    timestamp: Box<RawValue>,
}

/// Parses a signed message with serde_json, checking its keys, their order and the token and
/// timestamp it carries.
fn top_level(message: &[u8], envelope: &Envelope) -> Parts {
    let text = std::str::from_utf8(message).expect("signed message is UTF-8");
    let members = ordered_members(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    let keys: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["payload", "security_token", "timestamp"], "{text}");
    let mut members = members.into_iter().map(|(_, v)| v);
    let (payload, token, timestamp) = (
        members.next().unwrap(),
        members.next().unwrap(),
        members.next().unwrap(),
    );
    let token: String = serde_json::from_str(token.get()).expect("security_token is a string");
    assert_eq!(token, envelope.security_token);
    assert_eq!(timestamp.get(), envelope.timestamp.to_string());
    Parts { payload, timestamp }
}

/// An envelope around `payload`, with the original's other fields.
fn rebuild(envelope: &Envelope, payload: &str, timestamp: &str) -> Envelope {
    let text = format!(
        r#"{{"protocol":{},"security_token":{},"signature":{},"payload":{payload},"timestamp":{timestamp}}}"#,
        serde_json::to_string(&envelope.protocol).unwrap(),
        serde_json::to_string(&envelope.security_token).unwrap(),
        serde_json::to_string(&envelope.signature).unwrap(),
    );
    let again = Envelope::parse(text.as_bytes())
        .unwrap_or_else(|e| panic!("rebuilt envelope refused: {e:?}: {text}"));
    assert_eq!(again.timestamp, envelope.timestamp);
    assert_eq!(again.security_token, envelope.security_token);
    again
}

/// No whitespace outside strings; inside them only the escapes Python's
/// `json.dumps(ensure_ascii=False)` and `JSON.stringify` write.
fn check_compact_and_escaped(json: &str) {
    let bytes = json.as_bytes();
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'"' => in_string = false,
                b'\\' => {
                    let esc = bytes[i + 1];
                    match esc {
                        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => i += 1,
                        b'u' => {
                            let hex = &json[i + 2..i + 6];
                            let code = u32::from_str_radix(hex, 16).unwrap();
                            let short = matches!(code, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d);
                            assert!(
                                code < 0x20 && !short && hex == hex.to_ascii_lowercase(),
                                "escape \\u{hex} in {json}"
                            );
                            i += 5;
                        }
                        other => panic!("escape \\{} in {json}", other as char),
                    }
                }
                _ => assert!(b >= 0x20, "raw control {b:#x} in {json}"),
            }
        } else {
            match b {
                b'"' => in_string = true,
                b' ' | b'\t' | b'\n' | b'\r' => panic!("whitespace at {i} in {json}"),
                _ => {}
            }
        }
        i += 1;
    }
    assert!(!in_string, "unterminated string in {json}");
}

/// Keys strictly ascending by UTF-8 bytes (code points) in every object.
fn check_sorted(json: &str, depth: usize) {
    assert!(depth <= 200, "runaway nesting");
    match json.as_bytes().first() {
        Some(b'{') => {
            let members = ordered_members(json).expect("object parses");
            for pair in members.windows(2) {
                assert!(
                    pair[0].0.as_bytes() < pair[1].0.as_bytes(),
                    "keys {:?} then {:?} in {json}",
                    pair[0].0,
                    pair[1].0
                );
            }
            for (_, value) in &members {
                check_sorted(value.get(), depth + 1);
            }
        }
        Some(b'[') => {
            let items: Vec<Box<RawValue>> = serde_json::from_str(json).expect("array parses");
            for item in &items {
                check_sorted(item.get(), depth + 1);
            }
        }
        _ => {}
    }
}

/// Both texts denote the same JSON value (objects compared as maps). Numbers serde_json cannot
/// hold (`1e400`) must be refused by both.
fn check_same_value(arrived: &str, signed: &str) {
    let a = serde_json::from_str::<serde_json::Value>(arrived);
    let b = serde_json::from_str::<serde_json::Value>(signed);
    match (a, b) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "value changed: {arrived} -> {signed}"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("value readability changed: {a:?} vs {b:?}: {arrived} -> {signed}"),
    }
}

/// An object's members in document order (serde_json's `Map` would sort them).
fn ordered_members(json: &str) -> Result<Vec<(String, Box<RawValue>)>, serde_json::Error> {
    struct Ordered(Vec<(String, Box<RawValue>)>);
    impl<'de> Deserialize<'de> for Ordered {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Ordered;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                    let mut out = Vec::new();
                    while let Some(key) = map.next_key::<String>()? {
                        out.push((key, map.next_value()?));
                    }
                    Ok(Ordered(out))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Ordered>(json).map(|o| o.0)
}
