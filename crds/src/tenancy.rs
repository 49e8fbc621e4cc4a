//! Which tenant the resources of a namespace may serve.
//!
//! A gateway that selects namespaces other than its own would otherwise trust whatever
//! `tenant_id` their writers put in a spec. A team could then publish a tool in another tenant's
//! catalog, where that tenant's agents call it with their arguments and the credentials the
//! gateway resolves under `tenant-<id>/`, or a system-global one that every tenant sees. Only the
//! SealGateway's writers may say which namespace serves which tenant.

use std::collections::BTreeMap;

use crate::compile::Problem;

/// A gateway's binding of namespaces to tenants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceTenancy {
    /// The SealGateway's own namespace. Whoever writes there can change the gateway itself, so
    /// its resources may name any tenant, or none (system-global).
    pub home: String,
    /// Every other namespace the gateway serves, with the one tenant its resources must name.
    pub bound: BTreeMap<String, String>,
}

impl NamespaceTenancy {
    /// Why a resource in `namespace` that names `tenant` must not be served, if it must not.
    pub fn problem(&self, namespace: Option<&str>, tenant: Option<&str>) -> Option<Problem> {
        let namespace = namespace.unwrap_or_default();
        if namespace == self.home {
            return None;
        }
        let Some(bound) = self.bound.get(namespace) else {
            return Some(Problem {
                field: "metadata.namespace".into(),
                message: format!(
                    "namespace \"{namespace}\" is bound to no tenant: the gateway serves resources \
                     outside its own namespace \"{}\" only from the namespaces its \
                     spec.resource_selector.namespace_tenants binds",
                    self.home
                ),
            });
        };
        let names = match tenant {
            Some(t) if t == bound => return None,
            Some(t) => format!("names tenant \"{t}\""),
            None => format!(
                "is system-global (no tenant_id), which only the gateway's own namespace \"{}\" \
                 may declare",
                self.home
            ),
        };
        Some(Problem {
            field: "spec.tenant_id".into(),
            message: format!(
                "namespace \"{namespace}\" serves tenant \"{bound}\" only, and this resource {names}"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenancy() -> NamespaceTenancy {
        NamespaceTenancy {
            home: "platform".into(),
            bound: BTreeMap::from([("team-a".into(), "acme".into())]),
        }
    }

    #[test]
    fn the_home_namespace_serves_any_tenant_or_none() {
        assert_eq!(tenancy().problem(Some("platform"), Some("globex")), None);
        assert_eq!(tenancy().problem(Some("platform"), None), None);
    }

    #[test]
    fn a_bound_namespace_serves_its_tenant_only() {
        let t = tenancy();
        assert_eq!(t.problem(Some("team-a"), Some("acme")), None);
        let other = t.problem(Some("team-a"), Some("globex")).unwrap();
        assert_eq!(
            other.to_string(),
            "spec.tenant_id: namespace \"team-a\" serves tenant \"acme\" only, and this resource \
             names tenant \"globex\""
        );
        let global = t.problem(Some("team-a"), None).unwrap();
        assert_eq!(
            global.to_string(),
            "spec.tenant_id: namespace \"team-a\" serves tenant \"acme\" only, and this resource \
             is system-global (no tenant_id), which only the gateway's own namespace \"platform\" \
             may declare"
        );
    }

    #[test]
    fn an_unbound_namespace_serves_nothing() {
        let problem = tenancy().problem(Some("team-b"), Some("acme")).unwrap();
        assert_eq!(problem.field, "metadata.namespace");
        assert_eq!(
            problem.message,
            "namespace \"team-b\" is bound to no tenant: the gateway serves resources outside its \
             own namespace \"platform\" only from the namespaces its \
             spec.resource_selector.namespace_tenants binds"
        );
        assert!(tenancy().problem(None, None).is_some());
    }
}
