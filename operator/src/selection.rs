//! Which resources a SealGateway serves: its `resource_selector`, evaluated on metadata. Pure.

use std::collections::{BTreeMap, BTreeSet};

use aegis_seal_crds::gateway::NamespaceScope;
use aegis_seal_crds::{NamespaceTenancy, SealGateway, Workflow};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{Selector, SelectorExt};

/// `namespace/name`, the spelling of `status.gateways`.
pub fn gateway_key(gw: &SealGateway) -> String {
    format!(
        "{}/{}",
        gw.metadata.namespace.as_deref().unwrap_or_default(),
        gw.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Where a gateway looks for resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    All,
}

/// A gateway's `resource_selector`, parsed.
#[derive(Clone, Debug)]
pub struct Selection {
    pub scope: Scope,
    labels: Option<Selector>,
    tenancy: Option<NamespaceTenancy>,
}

/// The selector cannot be evaluated; says which part is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.resource_selector.{field}: {message}")]
pub struct SelectorError {
    field: &'static str,
    message: String,
}

impl SelectorError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

impl Selection {
    pub fn of(gw: &SealGateway) -> Result<Self, SelectorError> {
        let rs = &gw.spec.resource_selector;
        let home = gw.metadata.namespace.clone().unwrap_or_default();
        let labels = rs
            .selector
            .clone()
            .map(Selector::try_from)
            .transpose()
            .map_err(|e| SelectorError::new("selector", e.0))?;
        let (scope, tenancy) = match rs.namespaces {
            NamespaceScope::Same if rs.namespace_tenants.is_empty() => {
                (Scope::Namespace(home), None)
            }
            NamespaceScope::Same => {
                return Err(SelectorError::new(
                    "namespace_tenants",
                    "binds namespaces the gateway does not select: it needs namespaces: All",
                ));
            }
            NamespaceScope::All => (Scope::All, Some(tenancy(home, &rs.namespace_tenants)?)),
        };
        Ok(Self {
            scope,
            labels,
            tenancy,
        })
    }

    /// What `compile` checks each selected resource's tenant against: with every namespace
    /// selected, the namespaces' tenants; within the gateway's own namespace, nothing.
    pub fn tenancy(&self) -> Option<NamespaceTenancy> {
        self.tenancy.clone()
    }

    pub fn includes_namespace(&self, namespace: Option<&str>) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::Namespace(ns) => namespace == Some(ns.as_str()),
        }
    }

    /// Whether a resource with this metadata is selected.
    pub fn selects(&self, meta: &ObjectMeta) -> bool {
        let empty = BTreeMap::new();
        self.includes_namespace(meta.namespace.as_deref())
            && self
                .labels
                .as_ref()
                .is_none_or(|s| s.matches(meta.labels.as_ref().unwrap_or(&empty)))
    }
}

fn tenancy(
    home: String,
    bound: &BTreeMap<String, String>,
) -> Result<NamespaceTenancy, SelectorError> {
    let field = "namespace_tenants";
    if bound.contains_key(&home) {
        return Err(SelectorError::new(
            field,
            format!("\"{home}\" is the gateway's own namespace, which serves every tenant"),
        ));
    }
    if let Some((ns, tenant)) = bound
        .iter()
        .find(|(ns, t)| ns.is_empty() || t.trim().is_empty() || t.trim() != t.as_str())
    {
        return Err(SelectorError::new(
            field,
            format!(
                "\"{ns}\": \"{tenant}\" is not a namespace and a tenant id (both non-empty, without surrounding whitespace)"
            ),
        ));
    }
    Ok(NamespaceTenancy {
        home,
        bound: bound.clone(),
    })
}

/// `(namespace, name)` of every ConfigMap the workflows' `openapi.config_map_ref`s name, sorted.
pub fn referenced_config_maps<'a>(
    workflows: impl IntoIterator<Item = &'a Workflow>,
) -> BTreeSet<(String, String)> {
    workflows
        .into_iter()
        .filter_map(|wf| {
            let cm = wf.spec.api_spec.openapi.config_map_ref.as_ref()?;
            Some((
                wf.metadata.namespace.clone().unwrap_or_default(),
                cm.name.clone(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fixtures::{self, NS};

    fn meta(ns: &str, labels: serde_json::Value) -> ObjectMeta {
        serde_json::from_value(json!({"name": "x", "namespace": ns, "labels": labels})).unwrap()
    }

    #[test]
    fn same_namespace_is_the_default() {
        let s = Selection::of(&fixtures::gateway(json!({}))).unwrap();
        assert_eq!(s.scope, Scope::Namespace(NS.into()));
        assert!(s.selects(&meta(NS, json!({}))));
        assert!(!s.selects(&meta("other", json!({}))));
    }

    #[test]
    fn all_namespaces_and_label_selectors() {
        let gw = fixtures::gateway(json!({"resource_selector": {
            "namespaces": "All",
            "selector": {"matchLabels": {"team": "a"},
                         "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["test"]}]}
        }}));
        let s = Selection::of(&gw).unwrap();
        assert_eq!(s.scope, Scope::All);
        assert!(s.selects(&meta("other", json!({"team": "a"}))));
        assert!(s.selects(&meta(NS, json!({"team": "a", "tier": "prod"}))));
        assert!(!s.selects(&meta(NS, json!({"team": "a", "tier": "test"}))));
        assert!(!s.selects(&meta(NS, json!({"team": "b"}))));
        assert!(!s.selects(&meta(NS, json!({}))));
    }

    #[test]
    fn a_bad_operator_is_an_error() {
        let gw = fixtures::gateway(json!({"resource_selector": {
            "selector": {"matchExpressions": [{"key": "tier", "operator": "Like"}]}
        }}));
        let err = Selection::of(&gw).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.resource_selector.selector: ")
        );
    }

    #[test]
    fn namespace_tenants_bind_other_namespaces_only() {
        let of = |tenants: serde_json::Value| {
            Selection::of(&fixtures::gateway(json!({"resource_selector": {
                "namespaces": "All", "namespace_tenants": tenants
            }})))
        };
        let s = of(json!({"team-a": "acme"})).unwrap();
        let tenancy = s.tenancy().unwrap();
        assert_eq!(tenancy.home, NS);
        assert_eq!(tenancy.bound["team-a"], "acme");
        // Every namespace selected and none bound: only the gateway's own serves anything.
        assert!(of(json!({})).unwrap().tenancy().unwrap().bound.is_empty());
        assert_eq!(
            Selection::of(&fixtures::gateway(json!({})))
                .unwrap()
                .tenancy(),
            None
        );

        assert_eq!(
            of(json!({NS: "acme"})).unwrap_err().to_string(),
            "spec.resource_selector.namespace_tenants: \"tools\" is the gateway's own \
             namespace, which serves every tenant"
        );
        for bad in [
            json!({"team-a": " acme"}),
            json!({"team-a": ""}),
            json!({"": "acme"}),
        ] {
            let err = of(bad.clone()).unwrap_err().to_string();
            assert!(
                err.starts_with("spec.resource_selector.namespace_tenants: ")
                    && err.ends_with("is not a namespace and a tenant id (both non-empty, without surrounding whitespace)"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn referenced_config_maps_are_deduplicated_per_namespace() {
        let mut a = fixtures::workflow("a");
        a.spec.api_spec.openapi = serde_json::from_value(
            json!({"config_map_ref": {"name": "spec", "key": "openapi.json"}}),
        )
        .unwrap();
        let mut b = a.clone();
        b.metadata.name = Some("b".into());
        let mut c = a.clone();
        c.metadata.namespace = Some("other".into());
        let inline = fixtures::workflow("d");
        let refs = referenced_config_maps([&a, &b, &c, &inline]);
        assert_eq!(
            refs.into_iter().collect::<Vec<_>>(),
            [
                ("other".to_string(), "spec".to_string()),
                (NS.into(), "spec".into())
            ]
        );
        assert_eq!(gateway_key(&fixtures::gateway(json!({}))), "tools/edge");
    }
}
