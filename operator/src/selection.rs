//! Which resources a SealGateway serves: its `resource_selector`, evaluated on metadata. Pure.

use std::collections::{BTreeMap, BTreeSet};

use aegis_seal_crds::gateway::NamespaceScope;
use aegis_seal_crds::{SealGateway, Workflow};
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
}

/// The label selector cannot be evaluated; says which part is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.resource_selector.selector: {0}")]
pub struct SelectorError(pub String);

impl Selection {
    pub fn of(gw: &SealGateway) -> Result<Self, SelectorError> {
        let rs = &gw.spec.resource_selector;
        let scope = match rs.namespaces {
            NamespaceScope::Same => {
                Scope::Namespace(gw.metadata.namespace.clone().unwrap_or_default())
            }
            NamespaceScope::All => Scope::All,
        };
        let labels = rs
            .selector
            .clone()
            .map(Selector::try_from)
            .transpose()
            .map_err(|e| SelectorError(e.0))?;
        Ok(Self { scope, labels })
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
