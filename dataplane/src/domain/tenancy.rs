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

/// The tenants a service account may act for besides its token's own: its "delegation grant in
/// the issuer" (runbook, Tenant Boundary Violation; reference B-4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DelegationGrant {
    /// No grant claim is configured (`auth.seal_delegation_claim`): any tenant, as upstream.
    Unchecked,
    /// The configured claim's tenants; `*` among them is every tenant.
    Tenants(Vec<String>),
}

impl DelegationGrant {
    /// The grant a token's claim holds: a string or an array of strings. A claim that is absent,
    /// or of another type, grants nothing: a grant the gateway cannot read is no grant.
    pub fn from_claim(value: Option<&Value>) -> Self {
        let tenants = match value {
            Some(Value::String(tenant)) => vec![tenant.clone()],
            Some(Value::Array(values)) => values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        Self::Tenants(tenants)
    }

    pub fn allows(&self, tenant: &str) -> bool {
        match self {
            Self::Unchecked => true,
            Self::Tenants(tenants) => tenants.iter().any(|t| t == "*" || t == tenant),
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

    #[test]
    fn a_delegation_grant_lists_tenants_or_all_and_an_unreadable_one_grants_nothing() {
        assert!(DelegationGrant::Unchecked.allows("globex"));
        let grant = |claim: Value| DelegationGrant::from_claim(Some(&claim));
        assert!(grant(json!("globex")).allows("globex"));
        assert!(!grant(json!("globex")).allows("initech"));
        let two = grant(json!(["globex", 7, "initech"]));
        assert!(two.allows("globex") && two.allows("initech") && !two.allows("acme"));
        assert!(grant(json!(["*"])).allows("anyone"));
        // Exact names only: no prefix, case or whitespace matching.
        for near in ["Globex", "globex ", "glob"] {
            assert!(!grant(json!(["globex"])).allows(near), "{near}");
        }
        for nothing in [json!(null), json!(true), json!({"globex": true}), json!([])] {
            assert!(!grant(nothing.clone()).allows("globex"), "{nothing}");
        }
        assert!(!DelegationGrant::from_claim(None).allows("globex"));
    }
}
