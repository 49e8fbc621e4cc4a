//! Removing injected secrets from what an upstream sends back, before the agent sees it.

use std::borrow::Cow;

use serde_json::Value;

/// What a redacted secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";
/// Secrets shorter than this are not searched for: replacing every short substring would mangle
/// responses, and such values offer no protection anyway.
pub const MIN_REDACTED_LEN: usize = 4;

fn searchable(secrets: &[String]) -> impl Iterator<Item = &str> {
    secrets
        .iter()
        .map(String::as_str)
        .filter(|s| s.len() >= MIN_REDACTED_LEN)
}

/// Each secret as raw text may carry it: as is, and as a JSON string's content would (`"`, `\`
/// and control characters escaped, and `/` as `\/`, which some encoders write). Parsed JSON
/// needs only the first form; a body quoted as text needs them all.
fn textual_forms(secrets: &[String]) -> impl Iterator<Item = Cow<'_, str>> {
    searchable(secrets).flat_map(|secret| {
        let quoted = Value::from(secret).to_string();
        let escaped = quoted[1..quoted.len() - 1].to_owned();
        let solidus = escaped.replace('/', "\\/");
        let mut forms = vec![Cow::Borrowed(secret)];
        for form in [escaped, solidus] {
            if !forms.iter().any(|f| *f == form) {
                forms.push(Cow::Owned(form));
            }
        }
        forms
    })
}

/// `text` with every occurrence of every secret, plain or JSON-escaped, replaced by [`REDACTED`].
pub fn redact_text<'t>(text: &'t str, secrets: &[String]) -> Cow<'t, str> {
    let forms: Vec<_> = textual_forms(secrets).collect();
    replace_forms(text, &forms)
}

/// `text` with every occurrence of each of `forms` replaced by [`REDACTED`], borrowed when none
/// occurs (the usual case: most strings of a response carry no secret).
fn replace_forms<'t>(text: &'t str, forms: &[Cow<'_, str>]) -> Cow<'t, str> {
    let mut out = Cow::Borrowed(text);
    for form in forms {
        if out.contains(form.as_ref()) {
            out = Cow::Owned(out.replace(form.as_ref(), REDACTED));
        }
    }
    out
}

/// Redacts every string (values and object keys) of a JSON value in place; true if anything changed.
pub fn redact_json(value: &mut Value, secrets: &[String]) -> bool {
    // The forms are worked out once for the whole value, not once for each of its strings.
    let forms: Vec<_> = textual_forms(secrets).collect();
    !forms.is_empty() && redact_value(value, &forms)
}

fn redact_value(value: &mut Value, forms: &[Cow<'_, str>]) -> bool {
    match value {
        Value::String(s) => match replace_forms(s, forms) {
            Cow::Borrowed(_) => false,
            Cow::Owned(redacted) => {
                *s = redacted;
                true
            }
        },
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, item| redact_value(item, forms) | changed),
        Value::Object(map) => {
            let mut changed = false;
            // Only keys that carry a secret are renamed, so only those are copied.
            let renamed: Vec<(String, String)> = map
                .keys()
                .filter_map(|key| match replace_forms(key, forms) {
                    Cow::Borrowed(_) => None,
                    Cow::Owned(redacted) => Some((key.clone(), redacted)),
                })
                .collect();
            for (key, redacted) in renamed {
                if let Some(item) = map.remove(&key) {
                    map.insert(redacted, item);
                    changed = true;
                }
            }
            for item in map.values_mut() {
                changed |= redact_value(item, forms);
            }
            changed
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Redacts raw bytes (a non-JSON body), plain or JSON-escaped; invalid UTF-8 is searched
/// bytewise.
pub fn redact_bytes<'b>(body: &'b [u8], secrets: &[String]) -> Cow<'b, [u8]> {
    let mut out: Cow<'b, [u8]> = Cow::Borrowed(body);
    for secret in textual_forms(secrets) {
        let needle = secret.as_bytes();
        if out.windows(needle.len()).any(|w| w == needle) {
            let mut replaced = Vec::with_capacity(out.len());
            let mut rest: &[u8] = &out;
            while let Some(pos) = rest.windows(needle.len()).position(|w| w == needle) {
                replaced.extend_from_slice(&rest[..pos]);
                replaced.extend_from_slice(REDACTED.as_bytes());
                rest = &rest[pos + needle.len()..];
            }
            replaced.extend_from_slice(rest);
            out = Cow::Owned(replaced);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn redacts_values_keys_and_bytes() {
        let secrets = vec!["s3cr3t-token".to_owned(), "ab".to_owned()];
        let mut v = json!({"auth": "Bearer s3cr3t-token", "s3cr3t-token": [1, "x s3cr3t-token y"], "ab": "ab"});
        assert!(redact_json(&mut v, &secrets));
        assert_eq!(
            v,
            json!({"auth": "Bearer [REDACTED]", "[REDACTED]": [1, "x [REDACTED] y"], "ab": "ab"})
        );
        assert!(!redact_json(&mut v, &secrets));
        assert_eq!(
            redact_bytes(b"\xff s3cr3t-token s3cr3t-token", &secrets).as_ref(),
            b"\xff [REDACTED] [REDACTED]"
        );
        assert_eq!(redact_text("nothing", &secrets), "nothing");
    }

    #[test]
    fn a_renamed_key_keeps_its_value_redacted_and_its_siblings_untouched() {
        let secrets = vec!["tok-123456".to_owned()];
        let mut v = json!({
            "outer": {"tok-123456": {"deep": "Bearer tok-123456", "n": 1}, "kept": "plain"},
            "list": [{"x-tok-123456-y": null}, "quoted {\"t\":\"tok-123456\"}"],
        });
        assert!(redact_json(&mut v, &secrets));
        assert_eq!(
            v,
            json!({
                "outer": {"[REDACTED]": {"deep": "Bearer [REDACTED]", "n": 1}, "kept": "plain"},
                "list": [{"x-[REDACTED]-y": null}, "quoted {\"t\":\"[REDACTED]\"}"],
            })
        );
        let mut clean = json!({"a": ["b", {"c": "d"}]});
        assert!(!redact_json(&mut clean, &secrets));
        assert!(
            !redact_json(&mut v, &["abc".to_owned()]),
            "too short to search for"
        );
    }

    #[test]
    fn redacts_the_forms_a_json_encoder_writes() {
        let secrets = vec![r#"a/b"c\d"#.to_owned()];
        // serde_json's own escaping, and the `\/` some encoders (PHP's, Java's) add.
        for body in [r#"{"t":"a/b\"c\\d"}"#, r#"{"t":"a\/b\"c\\d"}"#] {
            assert_eq!(
                redact_text(body, &secrets),
                r#"{"t":"[REDACTED]"}"#,
                "{body}"
            );
            assert_eq!(
                redact_bytes(body.as_bytes(), &secrets).as_ref(),
                br#"{"t":"[REDACTED]"}"#
            );
        }
    }
}
