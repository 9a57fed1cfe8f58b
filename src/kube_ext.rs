//! Node facts, parsed once: the fields of a `Node` that feip's eligibility and health
//! verdicts read. Their hash is the change fingerprint that wakes a reconcile, so a signal
//! added here is both read and watched.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use crate::aws::instance_id_from_provider_id;
use crate::crd::STANDBY_LABEL;

/// Taints that mean the node is going away (cluster autoscaler, out-of-service, Karpenter).
const TERMINATING_TAINTS: [&str; 3] = [
    "ToBeDeletedByClusterAutoscaler",
    "node.kubernetes.io/out-of-service",
    "karpenter.sh/disrupted",
];

/// The Node fields feip depends on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeFacts {
    /// The `feip.io/standby` label's value.
    pub standby_label: Option<String>,
    pub unschedulable: Option<bool>,
    pub provider_id: Option<String>,
    /// Every taint's key and effect (values do not matter).
    pub taints: Vec<(String, String)>,
    /// Status of the Ready condition(s).
    pub ready: Vec<String>,
    /// Every InternalIP address, as written.
    pub internal_ips: Vec<String>,
}

impl NodeFacts {
    pub fn of(node: &Node) -> Self {
        let spec = node.spec.as_ref();
        let status = node.status.as_ref();
        Self {
            standby_label: node.labels().get(STANDBY_LABEL).cloned(),
            unschedulable: spec.and_then(|s| s.unschedulable),
            provider_id: spec.and_then(|s| s.provider_id.clone()),
            taints: spec
                .and_then(|s| s.taints.as_ref())
                .into_iter()
                .flatten()
                .map(|t| (t.key.clone(), t.effect.clone()))
                .collect(),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .filter(|c| c.type_ == "Ready")
                .map(|c| c.status.clone())
                .collect(),
            internal_ips: status
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP")
                .map(|a| a.address.clone())
                .collect(),
        }
    }

    /// The change fingerprint: equal facts, equal fingerprint.
    pub fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    /// Put in standby by an operator (`feip standby`).
    pub fn in_standby(&self) -> bool {
        self.standby_label.as_deref() == Some("true")
    }

    /// Cordoned, drained or marked for termination.
    pub fn cordoned(&self) -> bool {
        self.unschedulable == Some(true)
            || self
                .taints
                .iter()
                .any(|(key, _)| TERMINATING_TAINTS.contains(&key.as_str()))
    }

    /// The Ready condition's status (`None`: the node has none).
    pub fn ready(&self) -> Option<&str> {
        self.ready.first().map(String::as_str)
    }

    /// The first InternalIP, if it parses.
    pub fn internal_ip(&self) -> Option<IpAddr> {
        self.internal_ips.first().and_then(|a| a.parse().ok())
    }

    /// The EC2 instance id from `spec.providerID`.
    pub fn instance_id(&self) -> Option<String> {
        self.provider_id
            .as_deref()
            .and_then(instance_id_from_provider_id)
    }
}

/// Whether `labels` match a label selector; an invalid selector matches nothing.
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    use kube::core::SelectorExt as _;
    let Ok(s) = kube::core::Selector::try_from(sel.clone()) else {
        return false;
    };
    s.matches(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).expect("test node")
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "metadata": {"name": "n1", "labels": {"a": "b"}},
            "spec": {"providerID": "aws:///ap-northeast-1a/i-0abc"},
            "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [
                    {"type": "Hostname", "address": "n1"},
                    {"type": "InternalIP", "address": "10.0.0.5"}
                ]
            }
        })
    }

    #[test]
    fn facts_are_read_from_the_node() {
        let f = NodeFacts::of(&node(base()));
        assert_eq!(f.ready(), Some("True"));
        assert_eq!(f.internal_ip(), "10.0.0.5".parse().ok());
        assert_eq!(f.instance_id().as_deref(), Some("i-0abc"));
        assert!(!f.in_standby() && !f.cordoned());
    }

    #[test]
    fn standby_cordon_and_terminating_taints() {
        let mut j = base();
        j["metadata"]["labels"][STANDBY_LABEL] = "true".into();
        assert!(NodeFacts::of(&node(j)).in_standby());
        let mut j = base();
        j["metadata"]["labels"][STANDBY_LABEL] = "false".into();
        assert!(!NodeFacts::of(&node(j)).in_standby());
        let mut j = base();
        j["spec"]["unschedulable"] = true.into();
        assert!(NodeFacts::of(&node(j)).cordoned());
        for key in TERMINATING_TAINTS {
            let mut j = base();
            j["spec"]["taints"] = serde_json::json!([{"key": key, "effect": "NoSchedule"}]);
            assert!(NodeFacts::of(&node(j)).cordoned(), "{key}");
        }
        let mut j = base();
        j["spec"]["taints"] = serde_json::json!([{"key": "other", "effect": "NoSchedule"}]);
        assert!(!NodeFacts::of(&node(j)).cordoned());
    }

    #[test]
    fn a_missing_ready_condition_or_internal_ip_is_none() {
        let f = NodeFacts::of(&node(serde_json::json!({"metadata": {"name": "n"}})));
        assert_eq!(
            (f.ready(), f.internal_ip(), f.instance_id()),
            (None, None, None)
        );
    }

    #[test]
    fn selectors_match_labels() {
        let labels = BTreeMap::from([("role".to_string(), "edge".to_string())]);
        let sel = |j: serde_json::Value| -> LabelSelector { serde_json::from_value(j).unwrap() };
        assert!(selector_matches(
            &sel(serde_json::json!({"matchLabels": {"role": "edge"}})),
            &labels
        ));
        assert!(!selector_matches(
            &sel(serde_json::json!({"matchLabels": {"role": "db"}})),
            &labels
        ));
        assert!(selector_matches(
            &sel(serde_json::json!({"matchExpressions": [{"key": "role", "operator": "Exists"}]})),
            &labels
        ));
    }
}
