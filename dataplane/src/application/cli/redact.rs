//! Arguments that look like secrets, hidden before they reach an audit event or a log.
//!
//! Heuristic by nature: flags and `KEY=value` pairs whose name says secret, the value after such a
//! flag, well-known token shapes (JWTs, GitHub/GitLab/Slack/AWS/OpenAI-style keys, `Bearer ...`,
//! PEM keys) and passwords in URLs. Known secrets (a registry password) are always removed.

use crate::application::credential::{REDACTED, redact_text};

/// Name fragments that mark a flag or variable as secret.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "accesskey",
    "access_key",
    "access-key",
    "privatekey",
    "private_key",
    "private-key",
    "credential",
    "authorization",
];
/// Whole names that mark a flag as secret.
const SECRET_NAMES: &[&str] = &["auth", "pass", "pwd", "pw"];
/// Prefixes of well-known token formats, with the shortest plausible length.
const TOKEN_PREFIXES: &[(&str, usize)] = &[
    ("ghp_", 20),
    ("gho_", 20),
    ("ghu_", 20),
    ("ghs_", 20),
    ("ghr_", 20),
    ("github_pat_", 20),
    ("glpat-", 20),
    ("xoxb-", 15),
    ("xoxp-", 15),
    ("xoxa-", 15),
    ("xoxr-", 15),
    ("xoxs-", 15),
    ("sk-", 20),
    ("sk_live_", 16),
    ("rk_live_", 16),
    ("AKIA", 20),
    ("ASIA", 20),
    ("hvs.", 20),
    ("s.", 26),
];

fn secret_name(name: &str) -> bool {
    let name = name.trim_start_matches('-').to_ascii_lowercase();
    !name.is_empty()
        && (SECRET_NAMES.contains(&name.as_str()) || SECRET_WORDS.iter().any(|w| name.contains(w)))
}

fn looks_like_token(value: &str) -> bool {
    let v = value.trim();
    if v.contains(char::is_whitespace) {
        let lower = v.to_ascii_lowercase();
        return lower.starts_with("bearer ")
            || lower.starts_with("basic ")
            || lower.starts_with("token ")
            || v.contains("PRIVATE KEY-----");
    }
    let jwt = v.starts_with("eyJ")
        && v.split('.').count() == 3
        && v.split('.').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '=')
        });
    jwt || TOKEN_PREFIXES.iter().any(|(prefix, min)| {
        v.len() >= *min
            && v.starts_with(prefix)
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    })
}

/// `scheme://user:password@host...` with the password hidden; `None` if there is none.
fn url_password(value: &str) -> Option<String> {
    let (scheme, rest) = value.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let (userinfo, host) = authority.rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':')?;
    if password.is_empty() {
        return None;
    }
    Some(format!(
        "{scheme}://{user}:{REDACTED}@{host}{}",
        &rest[end..]
    ))
}

/// One argument, judged alone.
fn redact_one(arg: &str) -> Option<String> {
    if let Some((name, value)) = arg.split_once('=')
        && !value.is_empty()
        && secret_name(name)
    {
        return Some(format!("{name}={REDACTED}"));
    }
    if looks_like_token(arg) {
        return Some(REDACTED.to_owned());
    }
    if let Some((name, value)) = arg.split_once('=')
        && looks_like_token(value)
    {
        return Some(format!("{name}={REDACTED}"));
    }
    url_password(arg)
}

/// The arguments as they may be recorded.
pub fn redact_args(args: &[String], known_secrets: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for arg in args {
        let flag = arg.starts_with('-') && !arg.contains('=');
        let shown = if hide_next && !arg.starts_with('-') {
            REDACTED.to_owned()
        } else {
            redact_one(arg).unwrap_or_else(|| redact_text(arg, known_secrets).into_owned())
        };
        hide_next = flag && secret_name(arg);
        out.push(shown);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(args: &[&str]) -> Vec<String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        redact_args(&args, &["hunter22".to_owned()])
    }

    #[test]
    fn secret_flags_pairs_and_tokens_are_hidden() {
        assert_eq!(
            r(&[
                "--password",
                "p4ss",
                "--token=abc",
                "API_KEY=xyz",
                "-u",
                "bob"
            ]),
            [
                "--password",
                REDACTED,
                "--token=[REDACTED]",
                "API_KEY=[REDACTED]",
                "-u",
                "bob"
            ]
        );
        assert_eq!(
            r(&[
                "ghp_0123456789abcdefghijABCDEFGHIJ",
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"
            ]),
            [REDACTED, REDACTED]
        );
        assert_eq!(r(&["Bearer abc.def"]), [REDACTED]);
        assert_eq!(
            r(&["https://user:pw1@git.example.com/repo.git"]),
            ["https://user:[REDACTED]@git.example.com/repo.git"]
        );
        assert_eq!(r(&["--header=x-hunter22"]), ["--header=x-[REDACTED]"]);
    }

    #[test]
    fn ordinary_arguments_stay() {
        let plain = [
            "log",
            "--oneline",
            "--author=alice",
            "-n",
            "5",
            "0123456789abcdef0123456789abcdef01234567",
            "https://example.com/a?b=c",
            "/workspace/src",
        ];
        assert_eq!(r(&plain), plain);
    }
}
