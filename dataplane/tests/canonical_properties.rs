//! Properties of the bytes an envelope's signature covers (`Envelope::canonical_message`), checked
//! on the envelopes the real Python and TypeScript SDKs produced (`tests/vectors`): the canonical
//! form does not depend on the payload's key order, the whitespace or the escape spelling on the
//! wire, numbers keep their spelling, and strings come out escaped as the SDKs escape them.
//!
//! The vectors' wire text is kept as it is (`RawValue`) and varied by the small order-preserving
//! JSON rewriter below: a `serde_json::Value` would sort every object and re-spell every number.

mod support;

use aegis_seal_gateway::domain::envelope::Envelope;
use aegis_seal_gateway::infrastructure::auth::envelope::{
    CanonicalForm, parse_session_key, verify_signature,
};
use ed25519_dalek::Signer as _;
use ed25519_dalek::VerifyingKey;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Rewritten envelopes checked per SDK vector case.
const VARIANTS_PER_CASE: u64 = 256;

#[derive(Deserialize)]
struct VectorFile {
    session: Session,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Session {
    public_key_b64: String,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    expect: String,
    /// The exact wire text.
    envelope: Box<RawValue>,
    /// The bytes the SDK signed, where the vector records them.
    #[serde(default)]
    canonical_message: Option<String>,
}

fn vectors(file: &str) -> VectorFile {
    let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("signed bytes are UTF-8")
}

// ---------------------------------------------------------------------------------------------
// A deterministic pseudo-random source: xorshift64, seeded from a counter through splitmix64.

struct XorShift(u64);

impl XorShift {
    fn seeded(counter: u64) -> Self {
        let mut z = counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The order-preserving rewriter: JSON text to a tree that keeps member order and every scalar's
// spelling, and back to text with keys shuffled, whitespace added or strings re-escaped.

/// A JSON value as text. Input is trusted to be valid JSON (the vectors, or text made here).
#[derive(Clone, Debug)]
enum Node {
    /// A number, `true`, `false` or `null`, as spelled.
    Literal(String),
    /// A string's raw text, quotes and escapes included.
    Str(String),
    Array(Vec<Node>),
    /// Members in document order; keys as raw string text.
    Object(Vec<(String, Node)>),
}

fn parse_tree(json: &str) -> Node {
    let mut reader = Reader { json, pos: 0 };
    let node = reader.value();
    reader.whitespace();
    assert_eq!(reader.pos, json.len(), "trailing text after the JSON value");
    node
}

struct Reader<'a> {
    json: &'a str,
    pos: usize,
}

impl Reader<'_> {
    fn peek(&self) -> u8 {
        self.json.as_bytes()[self.pos]
    }

    fn whitespace(&mut self) {
        while self.pos < self.json.len() && matches!(self.peek(), b' ' | b'\t' | b'\n' | b'\r') {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) {
        self.whitespace();
        assert_eq!(self.peek(), byte, "at byte {}", self.pos);
        self.pos += 1;
    }

    fn value(&mut self) -> Node {
        self.whitespace();
        match self.peek() {
            b'{' => {
                self.pos += 1;
                let mut members = Vec::new();
                self.whitespace();
                if self.peek() == b'}' {
                    self.pos += 1;
                    return Node::Object(members);
                }
                loop {
                    self.whitespace();
                    let key = self.string();
                    self.expect(b':');
                    members.push((key, self.value()));
                    self.whitespace();
                    self.pos += 1;
                    match self.json.as_bytes()[self.pos - 1] {
                        b',' => continue,
                        b'}' => return Node::Object(members),
                        other => panic!("unexpected {:?} in an object", other as char),
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                self.whitespace();
                if self.peek() == b']' {
                    self.pos += 1;
                    return Node::Array(items);
                }
                loop {
                    items.push(self.value());
                    self.whitespace();
                    self.pos += 1;
                    match self.json.as_bytes()[self.pos - 1] {
                        b',' => continue,
                        b']' => return Node::Array(items),
                        other => panic!("unexpected {:?} in an array", other as char),
                    }
                }
            }
            b'"' => Node::Str(self.string()),
            _ => {
                let start = self.pos;
                while self.pos < self.json.len()
                    && !matches!(
                        self.peek(),
                        b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'
                    )
                {
                    self.pos += 1;
                }
                Node::Literal(self.json[start..self.pos].to_owned())
            }
        }
    }

    fn string(&mut self) -> String {
        let start = self.pos;
        assert_eq!(self.peek(), b'"');
        self.pos += 1;
        loop {
            match self.peek() {
                b'\\' => self.pos += 2,
                b'"' => {
                    self.pos += 1;
                    return self.json[start..self.pos].to_owned();
                }
                _ => self.pos += 1,
            }
        }
    }
}

fn decode(raw_string: &str) -> String {
    serde_json::from_str(raw_string).expect("a JSON string")
}

impl Node {
    /// The member named `key` of an object.
    fn member(&self, key: &str) -> &Node {
        match self {
            Node::Object(members) => members
                .iter()
                .find(|(k, _)| decode(k) == key)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("no member {key}")),
            _ => panic!("not an object"),
        }
    }

    /// The same value with the members of every object shuffled (arrays keep their order).
    fn shuffled(&self, rng: &mut XorShift) -> Node {
        match self {
            Node::Object(members) => {
                let mut members: Vec<_> = members
                    .iter()
                    .map(|(k, v)| (k.clone(), v.shuffled(rng)))
                    .collect();
                rng.shuffle(&mut members);
                Node::Object(members)
            }
            Node::Array(items) => Node::Array(items.iter().map(|i| i.shuffled(rng)).collect()),
            scalar => scalar.clone(),
        }
    }

    /// Every object's decoded keys in document order, with the nesting marked.
    fn key_order(&self, out: &mut Vec<String>) {
        match self {
            Node::Object(members) => {
                out.push("{".into());
                for (k, v) in members {
                    out.push(decode(k));
                    v.key_order(out);
                }
                out.push("}".into());
            }
            Node::Array(items) => {
                out.push("[".into());
                items.iter().for_each(|i| i.key_order(out));
                out.push("]".into());
            }
            _ => {}
        }
    }

    /// Compact text with strings escaped as the SDKs escape them, members in document order or
    /// sorted by code point: the oracle for the gateway's two serializations.
    fn compact(&self, sorted: bool) -> String {
        match self {
            Node::Literal(spelling) => spelling.clone(),
            Node::Str(raw) => serde_json::to_string(&decode(raw)).unwrap(),
            Node::Array(items) => {
                let items: Vec<String> = items.iter().map(|i| i.compact(sorted)).collect();
                format!("[{}]", items.join(","))
            }
            Node::Object(members) => {
                let mut members: Vec<(String, &Node)> =
                    members.iter().map(|(k, v)| (decode(k), v)).collect();
                if sorted {
                    members.sort_by(|a, b| a.0.cmp(&b.0));
                }
                let members: Vec<String> = members
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{}:{}",
                            serde_json::to_string(k).unwrap(),
                            v.compact(sorted)
                        )
                    })
                    .collect();
                format!("{{{}}}", members.join(","))
            }
        }
    }

    /// Text of the same value, with random whitespace between tokens and/or every string
    /// (keys included) re-escaped at random; member order as in the tree.
    fn render(&self, rng: &mut XorShift, whitespace: bool, respell: bool, out: &mut String) {
        let gap = |rng: &mut XorShift, out: &mut String| {
            if whitespace {
                const GAPS: [&str; 7] = ["", "", " ", "\n", "\t", "\r\n", "\n    "];
                out.push_str(GAPS[rng.below(GAPS.len())]);
            }
        };
        let string = |raw: &str, rng: &mut XorShift, out: &mut String| {
            if respell {
                respelled(raw, rng, out);
            } else {
                out.push_str(raw);
            }
        };
        match self {
            Node::Literal(spelling) => out.push_str(spelling),
            Node::Str(raw) => string(raw, rng, out),
            Node::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    gap(rng, out);
                    item.render(rng, whitespace, respell, out);
                    gap(rng, out);
                }
                out.push(']');
            }
            Node::Object(members) => {
                out.push('{');
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    gap(rng, out);
                    string(key, rng, out);
                    gap(rng, out);
                    out.push(':');
                    gap(rng, out);
                    value.render(rng, whitespace, respell, out);
                    gap(rng, out);
                }
                out.push('}');
            }
        }
    }
}

/// The same string in another valid JSON spelling: `\/`, `\u` escapes (surrogate pairs beyond
/// the BMP, either hex case) for any character, `\u00xx` for the short escapes.
fn respelled(raw: &str, rng: &mut XorShift, out: &mut String) {
    fn unicode(c: char, rng: &mut XorShift, out: &mut String) {
        let mut units = [0u16; 2];
        for unit in c.encode_utf16(&mut units) {
            let hex = format!("{unit:04x}");
            out.push_str("\\u");
            out.push_str(&if rng.one_in(2) {
                hex.to_ascii_uppercase()
            } else {
                hex
            });
        }
    }
    out.push('"');
    for c in decode(raw).chars() {
        let short = match c {
            '"' => Some('"'),
            '\\' => Some('\\'),
            '\u{8}' => Some('b'),
            '\u{c}' => Some('f'),
            '\n' => Some('n'),
            '\r' => Some('r'),
            '\t' => Some('t'),
            _ => None,
        };
        match short {
            Some(s) if rng.one_in(2) => {
                out.push('\\');
                out.push(s);
            }
            Some(_) => unicode(c, rng, out),
            None if (c as u32) < 0x20 || rng.one_in(2) => unicode(c, rng, out),
            None if c == '/' && rng.one_in(2) => out.push_str("\\/"),
            None => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------------------------
// (1) The SDK vectors under key permutations, whitespace and escape spelling.

struct Checked {
    variants: u64,
    reordered: u64,
}

/// Every accept case of `file`, rewritten `VARIANTS_PER_CASE` times: the canonical bytes stay
/// those the SDK signed and the signature verifies over them; the wire-order bytes follow the
/// rewritten order.
fn check_vector_file(file: &str, seed_base: u64) -> Checked {
    let vectors = vectors(file);
    let key = parse_session_key(&vectors.session.public_key_b64).unwrap();
    let mut checked = Checked {
        variants: 0,
        reordered: 0,
    };
    let accepted: Vec<&Case> = vectors
        .cases
        .iter()
        .filter(|c| c.expect == "accept")
        .collect();
    assert!(!accepted.is_empty(), "{file} has no accept cases");
    for (case_index, case) in accepted.into_iter().enumerate() {
        let name = &case.name;
        let raw = case.envelope.get();
        let original = Envelope::parse(raw.as_bytes()).unwrap();
        let canonical = original.canonical_message().unwrap();
        let wire = original.wire_order_message().unwrap();
        if let Some(expected) = &case.canonical_message {
            assert_eq!(text(&canonical), *expected, "{name}: SDK canonical bytes");
        }
        assert_eq!(
            verify_signature(&original, &key),
            Ok(CanonicalForm::Sorted),
            "{name}: the vector itself"
        );

        let tree = parse_tree(raw);
        let payload = tree.member("payload");
        let token = serde_json::to_string(&original.security_token).unwrap();
        let message = |payload: &str| {
            format!(
                r#"{{"payload":{payload},"security_token":{token},"timestamp":{}}}"#,
                original.timestamp
            )
        };
        // The rewriter's oracle agrees with the gateway on the untouched vector.
        assert_eq!(text(&canonical), message(&payload.compact(true)), "{name}");
        assert_eq!(text(&wire), message(&payload.compact(false)), "{name}");
        let mut original_order = Vec::new();
        payload.key_order(&mut original_order);

        for i in 0..VARIANTS_PER_CASE {
            let mut rng = XorShift::seeded(seed_base + case_index as u64 * 100_000 + i);
            // Every fourth variant each: order only, + whitespace, + escapes, + both.
            let (whitespace, respell) = (i % 2 == 1, i % 4 >= 2);
            let variant = tree.shuffled(&mut rng);
            let mut body = String::new();
            variant.render(&mut rng, whitespace, respell, &mut body);
            let context = format!("{name} variant {i}: {body}");

            let envelope = Envelope::parse(body.as_bytes())
                .unwrap_or_else(|e| panic!("{context}: refused: {e:?}"));
            assert_eq!(
                text(&envelope.canonical_message().unwrap()),
                text(&canonical),
                "{context}"
            );
            // Same bytes and same signature verify alike; an unoptimized Ed25519 check costs
            // tens of milliseconds, so it runs on every 67th variant (all four kinds of rewrite).
            assert_eq!(envelope.signature, original.signature, "{context}");
            if i % 67 == 0 {
                assert_eq!(
                    verify_signature(&envelope, &key),
                    Ok(CanonicalForm::Sorted),
                    "{context}"
                );
            }

            let variant_payload = variant.member("payload");
            let wire_variant = text(&envelope.wire_order_message().unwrap());
            assert_eq!(
                wire_variant,
                message(&variant_payload.compact(false)),
                "{context}"
            );
            let mut order = Vec::new();
            variant_payload.key_order(&mut order);
            let reordered = order != original_order;
            assert_eq!(wire_variant != text(&wire), reordered, "{context}");
            checked.variants += 1;
            checked.reordered += u64::from(reordered);
        }
    }
    checked
}

#[test]
fn python_sdk_vectors_canonicalize_the_same_whatever_the_wire_order_spacing_and_escapes() {
    let checked = check_vector_file("python-sdk.json", 1_000_000);
    assert_eq!(checked.variants, 6 * VARIANTS_PER_CASE, "six accept cases");
    // Most shuffles reorder something: the permutations are real.
    assert!(
        checked.reordered * 10 > checked.variants * 9,
        "{}",
        checked.reordered
    );
}

#[test]
fn typescript_sdk_vectors_canonicalize_the_same_whatever_the_wire_order_spacing_and_escapes() {
    let checked = check_vector_file("typescript-sdk.json", 2_000_000);
    assert_eq!(
        checked.variants,
        3 * VARIANTS_PER_CASE,
        "three accept cases"
    );
    assert!(
        checked.reordered * 10 > checked.variants * 9,
        "{}",
        checked.reordered
    );
}

#[test]
fn the_rewriter_keeps_order_and_spelling() {
    let raw = "{ \"b\" : [1.0 ,{\"y\":1E+2, \"x\":\"\\u00e9\\/\"}], \"a\":-0 }";
    let tree = parse_tree(raw);
    assert_eq!(
        tree.compact(false),
        r#"{"b":[1.0,{"y":1E+2,"x":"é/"}],"a":-0}"#
    );
    assert_eq!(
        tree.compact(true),
        r#"{"a":-0,"b":[1.0,{"x":"é/","y":1E+2}]}"#
    );
    let mut rng = XorShift::seeded(7);
    let mut out = String::new();
    tree.render(&mut rng, false, false, &mut out);
    assert_eq!(out, r#"{"b":[1.0,{"y":1E+2,"x":"\u00e9\/"}],"a":-0}"#);
    for seed in 0..64 {
        let mut rng = XorShift::seeded(seed);
        let mut out = String::new();
        tree.render(&mut rng, true, true, &mut out);
        assert_eq!(
            parse_tree(&out).compact(false),
            tree.compact(false),
            "{out}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (2) Numbers: signed as spelled.

const TOKEN: &str = "t.o.k";
const NOW: i64 = 1_771_338_721;

fn body(payload: &str, signature: &str) -> String {
    format!(
        r#"{{"protocol":"seal/v1","security_token":"{TOKEN}","signature":"{signature}","payload":{payload},"timestamp":{NOW}}}"#
    )
}

/// The envelope around `payload`, signed as an SDK signs it: over the bytes the gateway computes
/// (each test asserts those first).
fn signed(signer: &support::Signer, payload: &str) -> Envelope {
    use base64::Engine;
    let unsigned = Envelope::parse(body(payload, "").as_bytes()).unwrap();
    let signature = signer.agent.sign(&unsigned.canonical_message().unwrap());
    let b64 = base64::engine::general_purpose::STANDARD.encode(signature.to_bytes());
    Envelope::parse(body(payload, &b64).as_bytes()).unwrap()
}

fn session_key(signer: &support::Signer) -> VerifyingKey {
    parse_session_key(signer.session["public_key_b64"].as_str().unwrap()).unwrap()
}

/// Number spellings, each with another spelling that a double cannot tell apart from it (the
/// same value, or for `1e400` another overflow): only the signed spelling may verify.
const SPELLINGS: [(&str, &str); 12] = [
    ("1.0", "1"),
    ("1e-07", "1e-7"),
    ("1E+2", "100"),
    ("-0", "0"),
    ("9007199254740993", "9007199254740992"),
    ("-0.0", "-0"),
    ("0.1", "0.10"),
    ("1e400", "1e401"),
    ("2.5E-3", "0.0025"),
    ("1e+21", "1e21"),
    ("12345678901234567000", "12345678901234567890"),
    ("-1.5e-300", "-15e-301"),
];

#[test]
fn number_spellings_are_kept_exactly() {
    let signer = support::Signer::from_vectors();
    let key = session_key(&signer);
    for (spelling, _) in SPELLINGS {
        let payload =
            format!("{{ \"x\" : [ {spelling} , {{\"v\":{spelling}\n}} ],\t\"n\":{spelling} }}");
        let envelope = signed(&signer, &payload);
        assert_eq!(
            text(&envelope.canonical_message().unwrap()),
            format!(
                r#"{{"payload":{{"n":{spelling},"x":[{spelling},{{"v":{spelling}}}]}},"security_token":"{TOKEN}","timestamp":{NOW}}}"#
            ),
            "{spelling}"
        );
        assert_eq!(
            text(&envelope.wire_order_message().unwrap()),
            format!(
                r#"{{"payload":{{"x":[{spelling},{{"v":{spelling}}}],"n":{spelling}}},"security_token":"{TOKEN}","timestamp":{NOW}}}"#
            ),
            "{spelling}"
        );
        assert_eq!(
            verify_signature(&envelope, &key),
            Ok(CanonicalForm::Sorted),
            "{spelling}"
        );
    }
}

#[test]
fn a_number_respelled_after_signing_breaks_the_signature() {
    let signer = support::Signer::from_vectors();
    let key = session_key(&signer);
    for (spelling, same_value) in SPELLINGS {
        let signed = signed(&signer, &format!(r#"{{"n":{spelling}}}"#));
        let respelled = Envelope::parse(
            body(&format!(r#"{{"n":{same_value}}}"#), &signed.signature).as_bytes(),
        )
        .unwrap();
        let err = verify_signature(&respelled, &key).unwrap_err();
        assert_eq!(
            err.code, 1002,
            "{spelling} -> {same_value}: {}",
            err.message
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (3) Strings: escaped as the SDKs escape them.

/// Wire spellings and the canonical one, as CPython's `json.dumps(ensure_ascii=False)` and
/// Node's `JSON.stringify` both write it: `"` `\` and the short escapes, other C0 controls as
/// lower-case `\u00xx`, everything else (DEL, `/`, U+2028, astral characters) raw UTF-8.
const ESCAPES: [(&str, &str); 20] = [
    (r#""say \"hi\"""#, r#""say \"hi\"""#),
    (r#""\u0022\u005C\u005c""#, r#""\"\\\\""#),
    (r#""back\\slash""#, r#""back\\slash""#),
    (r#""a\/b/c""#, r#""a/b/c""#),
    (r#""\b\f\n\r\t""#, r#""\b\f\n\r\t""#),
    (r#""\u0008\u000C\u000a\u000D\u0009""#, r#""\b\f\n\r\t""#),
    (
        r#""\u0000\u0001\u001F\u001f\u000B""#,
        r#""\u0000\u0001\u001f\u001f\u000b""#,
    ),
    ("\"\\u007F\u{7f}\"", "\"\u{7f}\u{7f}\""),
    (r#""\u00e9\u00E9""#, r#""éé""#),
    (r#""Grüße — 東京""#, r#""Grüße — 東京""#),
    (r#""\u6771\u4EAC""#, r#""東京""#),
    (r#""\u2028\u2029""#, "\"\u{2028}\u{2029}\""),
    ("\"\u{2028}\"", "\"\u{2028}\""),
    (r#""\uD83D\uDE00\ud83d\ude00""#, r#""😀😀""#),
    (r#""😀""#, r#""😀""#),
    (r#""\uFEFF\uFFFF\uE000""#, "\"\u{feff}\u{ffff}\u{e000}\""),
    (r#""\u0020~\u007e""#, r#"" ~~""#),
    (r#""""#, r#""""#),
    (r#""'single' <html> & \u003C""#, r#""'single' <html> & <""#),
    (r#""tab\there""#, r#""tab\there""#),
];

#[test]
fn strings_come_out_escaped_as_the_sdks_escape_them() {
    let signer = support::Signer::from_vectors();
    let key = session_key(&signer);
    for (wire, expected) in ESCAPES {
        // As a value and as a key.
        let envelope = signed(&signer, &format!(r#"{{"s": {wire}, {wire}: 1}}"#));
        let canonical = text(&envelope.canonical_message().unwrap());
        let sorted = if decode(expected).as_str() < "s" {
            format!(r#"{expected}:1,"s":{expected}"#)
        } else {
            format!(r#""s":{expected},{expected}:1"#)
        };
        assert_eq!(
            canonical,
            format!(r#"{{"payload":{{{sorted}}},"security_token":"{TOKEN}","timestamp":{NOW}}}"#),
            "{wire}"
        );
        assert_eq!(verify_signature(&envelope, &key), Ok(CanonicalForm::Sorted));
    }
}

#[test]
fn vector_strings_in_any_escape_spelling_give_the_sdk_bytes() {
    let mut compared = 0;
    for file in ["python-sdk.json", "typescript-sdk.json"] {
        for case in vectors(file).cases {
            let Some(expected) = case.canonical_message else {
                continue;
            };
            let tree = parse_tree(case.envelope.get());
            for seed in 0..64 {
                let mut rng = XorShift::seeded(3_000_000 + seed);
                let mut body = String::new();
                tree.render(&mut rng, false, true, &mut body);
                let envelope = Envelope::parse(body.as_bytes()).unwrap();
                assert_eq!(
                    text(&envelope.canonical_message().unwrap()),
                    expected,
                    "{}: {body}",
                    case.name
                );
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 5, "vectors with a recorded canonical_message");
}

#[test]
fn keys_sort_by_code_point_as_python_sort_keys_does() {
    // json.dumps({...}, sort_keys=True, separators=(",", ":"), ensure_ascii=False) in CPython.
    let envelope = Envelope::parse(
        body(
            r#"{"😀":9,"｡":8,"é":7,"z":6,"aa":5,"a\u0000":4,"a":3,"Z":2,"":1}"#,
            "",
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        text(&envelope.canonical_message().unwrap()),
        format!(
            r#"{{"payload":{{"":1,"Z":2,"a":3,"a\u0000":4,"aa":5,"z":6,"é":7,"｡":8,"😀":9}},"security_token":"{TOKEN}","timestamp":{NOW}}}"#
        )
    );
}

/// The TypeScript SDK sorts keys with `Object.keys(record).sort()`, by UTF-16 code unit, so a key
/// beyond the BMP (a surrogate pair, 0xD800..) sorts before one in U+E000..U+FFFF, where Python
/// (and the gateway's canonical form) sorts by code point. The gateway accepts both orders.
#[test]
fn typescript_sdk_key_order_beyond_the_bmp_verifies() {
    let signer = support::Signer::from_vectors();
    let key = session_key(&signer);
    // What createCanonicalMessage() signs for {"｡": 1, "😀": 2} (Node: ["😀", "｡"]).
    let ts_signed =
        format!(r#"{{"payload":{{"😀":2,"｡":1}},"security_token":"{TOKEN}","timestamp":{NOW}}}"#);
    use base64::Engine;
    let signature = base64::engine::general_purpose::STANDARD
        .encode(signer.agent.sign(ts_signed.as_bytes()).to_bytes());
    let envelope = Envelope::parse(body(r#"{"｡":1,"😀":2}"#, &signature).as_bytes()).unwrap();
    assert_eq!(verify_signature(&envelope, &key), Ok(CanonicalForm::Sorted));
}

#[test]
fn lone_surrogates_are_refused_not_rewritten() {
    // JSON.stringify writes a lone surrogate as "\ud800"; it has no UTF-8 form, so the gateway
    // refuses the payload (1000) rather than signing-checking some substitute.
    for payload in [r#"{"s":"\ud800"}"#, r#"{"\udc00":1}"#, r#"["a\ud83d"]"#] {
        let envelope = Envelope::parse(body(payload, "").as_bytes()).unwrap();
        assert_eq!(
            envelope.canonical_message().unwrap_err().code,
            1000,
            "{payload}"
        );
        assert_eq!(
            envelope.wire_order_message().unwrap_err().code,
            1000,
            "{payload}"
        );
    }
}
