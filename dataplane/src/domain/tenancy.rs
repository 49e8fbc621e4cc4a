//! Who a caller is and which tenant it acts for (reference §4).

use serde_json::Value;

/// Only service accounts may act for a tenant other than their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    ServiceAccount,
    Consumer,
}

impl IdentityKind {
    /// `identity_kind` of `service_account`/`service-account` (any case), or a Keycloak
    /// `preferred_username` starting with `service-account-`, is a service account.
    pub fn from_claims(claims: &Value) -> Self {
        let kind = claims.get("identity_kind").and_then(Value::as_str);
        let username = claims.get("preferred_username").and_then(Value::as_str);
        let service = kind.is_some_and(|k| {
            k.eq_ignore_ascii_case("service_account") || k.eq_ignore_ascii_case("service-account")
        }) || username.is_some_and(|u| u.starts_with("service-account-"));
        if service {
            Self::ServiceAccount
        } else {
            Self::Consumer
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn service_accounts_are_recognised_by_kind_or_keycloak_username() {
        for claims in [
            json!({"identity_kind": "service_account"}),
            json!({"identity_kind": "Service-Account"}),
            json!({"preferred_username": "service-account-orchestrator"}),
        ] {
            assert_eq!(
                IdentityKind::from_claims(&claims),
                IdentityKind::ServiceAccount
            );
        }
        for claims in [
            json!({}),
            json!({"identity_kind": "consumer"}),
            json!({"preferred_username": "alice"}),
            json!({"identity_kind": 1}),
        ] {
            assert_eq!(IdentityKind::from_claims(&claims), IdentityKind::Consumer);
        }
    }
}
