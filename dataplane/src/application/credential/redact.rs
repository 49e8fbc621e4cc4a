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

/// `text` with every occurrence of every secret replaced by [`REDACTED`].
pub fn redact_text<'t>(text: &'t str, secrets: &[String]) -> Cow<'t, str> {
    let mut out = Cow::Borrowed(text);
    for secret in searchable(secrets) {
        if out.contains(secret) {
            out = Cow::Owned(out.replace(secret, REDACTED));
        }
    }
    out
}

/// Redacts every string (values and object keys) of a JSON value in place; true if anything changed.
pub fn redact_json(value: &mut Value, secrets: &[String]) -> bool {
    if searchable(secrets).next().is_none() {
        return false;
    }
    redact_value(value, secrets)
}

fn redact_value(value: &mut Value, secrets: &[String]) -> bool {
    match value {
        Value::String(s) => match redact_text(s, secrets) {
            Cow::Borrowed(_) => false,
            Cow::Owned(redacted) => {
                *s = redacted;
                true
            }
        },
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, item| redact_value(item, secrets) | changed),
        Value::Object(map) => {
            let mut changed = false;
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let redacted_key = redact_text(&key, secrets).into_owned();
                if redacted_key != key
                    && let Some(mut item) = map.remove(&key)
                {
                    redact_value(&mut item, secrets);
                    map.insert(redacted_key, item);
                    changed = true;
                } else if let Some(item) = map.get_mut(&key) {
                    changed |= redact_value(item, secrets);
                }
            }
            changed
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Redacts raw bytes (a non-JSON body); invalid UTF-8 is searched bytewise.
pub fn redact_bytes<'b>(body: &'b [u8], secrets: &[String]) -> Cow<'b, [u8]> {
    let mut out: Cow<'b, [u8]> = Cow::Borrowed(body);
    for secret in searchable(secrets) {
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
}
