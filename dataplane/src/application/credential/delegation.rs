//! Where a user's delegated token may go (`credentials.delegated_audiences`).
//!
//! A `HumanDelegated` exchange gives the gateway a token of the calling user for the workflow's
//! `target_service`, which the workflow then sends to its own base URL. Whoever writes the
//! workflow picks both, so without a binding a tenant's workflow could ask for the user's token
//! to another service and send it to a host of its choosing. The binding names, per audience,
//! the origins its tokens may be sent to.

use std::collections::BTreeMap;

use reqwest::Url;

use super::Failure;

/// Audience -> the origins (serialized, `https://host[:port]`) its delegated tokens may be sent
/// to. Empty: no binding.
#[derive(Debug, Default)]
pub(super) struct DelegatedAudiences(BTreeMap<String, Vec<String>>);

impl DelegatedAudiences {
    /// Each origin must be `http(s)://host[:port]`, with no path, query or user info.
    pub(super) fn from_settings(map: &BTreeMap<String, Vec<String>>) -> Result<Self, String> {
        let mut audiences = BTreeMap::new();
        for (audience, origins) in map {
            let field = format!("spec.credentials.delegated_audiences.{audience}");
            if audience.trim().is_empty() {
                return Err(format!("{field}: an audience cannot be empty"));
            }
            let mut parsed = Vec::with_capacity(origins.len());
            for origin in origins {
                let url = Url::parse(origin.trim())
                    .map_err(|e| format!("{field}: {origin:?} is not a URL: {e}"))?;
                let bare = matches!(url.scheme(), "http" | "https")
                    && url.path() == "/"
                    && url.query().is_none()
                    && url.fragment().is_none()
                    && url.username().is_empty()
                    && url.password().is_none();
                if !bare {
                    return Err(format!(
                        "{field}: {origin:?} is not an origin (http(s)://host[:port], nothing after)"
                    ));
                }
                parsed.push(url.origin().ascii_serialization());
            }
            audiences.insert(audience.trim().to_owned(), parsed);
        }
        Ok(Self(audiences))
    }

    /// Whether a token for `audience` may be sent to `destination`, the base URL of the upstream
    /// the call goes to (`None`: the call has none, a container registry say).
    pub(super) fn check(&self, audience: &str, destination: Option<&str>) -> Result<(), Failure> {
        if self.0.is_empty() {
            return Ok(());
        }
        let audience = audience.trim();
        let origin = destination
            .and_then(|d| Url::parse(d).ok())
            .map(|u| u.origin().ascii_serialization());
        let allowed = self
            .0
            .get(audience)
            .zip(origin.as_ref())
            .is_some_and(|(origins, origin)| origins.contains(origin));
        if allowed {
            return Ok(());
        }
        let to = origin.as_deref().unwrap_or("a destination without a URL");
        let why = if self.0.contains_key(audience) {
            "not one of its origins"
        } else {
            "no origin is listed for it"
        };
        Err(Failure::forbidden(format!(
            "forbidden: a delegated token for \"{audience}\" may not be sent to {to}: {why} in \
             credentials.delegated_audiences"
        ))
        .at("human_delegated", audience))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audiences(map: &[(&str, &[&str])]) -> Result<DelegatedAudiences, String> {
        DelegatedAudiences::from_settings(
            &map.iter()
                .map(|(a, o)| (a.to_string(), o.iter().map(|s| s.to_string()).collect()))
                .collect(),
        )
    }

    #[test]
    fn a_token_goes_only_to_an_origin_listed_for_its_audience() {
        let a = audiences(&[(
            "payments",
            &["https://payments.example.com", "http://pay.internal:8080"],
        )])
        .unwrap();
        assert!(
            a.check("payments", Some("https://payments.example.com/v2/"))
                .is_ok()
        );
        assert!(
            a.check(" payments ", Some("http://pay.internal:8080"))
                .is_ok()
        );
        for (audience, destination) in [
            ("payments", Some("https://evil.example")),
            // Another port or scheme is another origin.
            ("payments", Some("https://payments.example.com:8443/")),
            ("payments", Some("http://payments.example.com/")),
            ("payments", None),
            ("search", Some("https://payments.example.com/")),
        ] {
            let failure = a.check(audience, destination).unwrap_err();
            assert_eq!(
                failure.status,
                http::StatusCode::FORBIDDEN,
                "{audience} {destination:?}"
            );
        }
        assert_eq!(
            a.check("payments", Some("https://evil.example/x"))
                .unwrap_err()
                .reason,
            "forbidden: a delegated token for \"payments\" may not be sent to https://evil.example: \
             not one of its origins in credentials.delegated_audiences"
        );
        assert_eq!(
            a.check("search", Some("https://search.example"))
                .unwrap_err()
                .reason,
            "forbidden: a delegated token for \"search\" may not be sent to https://search.example: \
             no origin is listed for it in credentials.delegated_audiences"
        );
    }

    #[test]
    fn without_a_binding_every_destination_is_allowed() {
        let none = audiences(&[]).unwrap();
        assert!(none.check("payments", Some("https://evil.example")).is_ok());
        assert!(none.check("payments", None).is_ok());
    }

    #[test]
    fn origins_are_bare() {
        for bad in [
            "https://pay.example.com/v1",
            "pay.example.com",
            "ftp://pay.example.com",
            "https://user@pay.example.com",
            "https://pay.example.com/?x=1",
        ] {
            let err = audiences(&[("payments", &[bad])]).err().unwrap();
            assert!(
                err.starts_with("spec.credentials.delegated_audiences.payments: "),
                "{bad}: {err}"
            );
        }
    }
}
