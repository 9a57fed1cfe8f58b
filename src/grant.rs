//! The `FloatingElasticIPGrant` API (`feip.io/v1alpha1`, cluster-scoped): which namespaces'
//! FloatingElasticIPs may claim which Elastic IPs, with which candidate nodes, takeover and
//! probes. Grants are written by the cluster admin; a FloatingElasticIP is only the tenant's
//! request. A claim that no grant covers gets `Degraded=NotPermitted` (the message names what
//! is missing) and the controller neither writes its holder Lease nor calls EC2 for it, and it
//! never owns its address (docs/security.md).
//!
//! [`evaluate`] is the whole decision, with no IO: the controller gathers the facts (the
//! namespace's labels, the address's allocation id and EC2 tags, the candidates' labels) and
//! asks it.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::Duration;
use kube::{CustomResource, KubeSchema, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::crd::{FloatingElasticIP, ProbeType};
use crate::kube_ext::selector_matches;

/// The kubelet port: the default probe, allowed by every grant.
pub const DEFAULT_PROBE_PORT: i32 = 10250;
/// The shortest probe period a grant allows unless it says otherwise (the default period).
pub const DEFAULT_MIN_PROBE_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// Grants the FloatingElasticIPs of some namespaces the right to claim some Elastic IPs.
// Two printer columns of type string read as a duplicated attribute to clippy.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "feip.io",
    version = "v1alpha1",
    kind = "FloatingElasticIPGrant",
    plural = "floatingelasticipgrants",
    shortname = "feipgrant",
    printcolumn(name = "Namespaces", type_ = "string", json_path = ".spec.namespaces"),
    printcolumn(name = "Addresses", type_ = "string", json_path = ".spec.addresses"),
    printcolumn(
        name = "Takeover",
        type_ = "boolean",
        json_path = ".spec.allowTakeover"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FloatingElasticIPGrantSpec {
    /// The namespaces whose FloatingElasticIPs this grant covers.
    pub namespaces: NamespaceGrant,
    /// The Elastic IPs they may claim.
    pub addresses: AddressGrant,
    /// The nodes their claims may name as candidates (every candidate must be one).
    pub nodes: NodeGrant,
    /// Whether their claims may set `spec.allowTakeover` (take an address associated with an
    /// instance outside the candidates). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_takeover: Option<bool>,
    /// Which probes their claims may ask the controller to run. Absent: only the default
    /// TCP probe of the kubelet port 10250, with a period of at least 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<ProbeGrant>,
}

/// Namespaces: every namespace, or those named and those matching the selector.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.all) ? (self.all && !has(self.names) && !has(self.selector)) : (has(self.names) && size(self.names) > 0 || has(self.selector))").message("spec.namespaces: set all: true, or names and/or selector (not both all and a list)")
)]
pub struct NamespaceGrant {
    /// Every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    /// Namespaces by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub names: Option<Vec<NamespaceName>>,
    /// Namespaces whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// A namespace name (a DNS label).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct NamespaceName(
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub String,
);

/// Elastic IPs: every address of the account, or those listed and those carrying the tags.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.all) ? (self.all && !has(self.allocationIds) && !has(self.publicIps) && !has(self.tags)) : ((has(self.allocationIds) && size(self.allocationIds) > 0) || (has(self.publicIps) && size(self.publicIps) > 0) || (has(self.tags) && size(self.tags) > 0))").message("spec.addresses: set all: true, or allocationIds, publicIps and/or tags (not both all and a list)")
)]
pub struct AddressGrant {
    /// Every Elastic IP the controller's AWS credentials reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    /// Elastic IPs by allocation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub allocation_ids: Option<Vec<AllocationId>>,
    /// Elastic IPs by public IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub public_ips: Option<Vec<PublicIp>>,
    /// Elastic IPs carrying every one of these EC2 tags (key: value), as DescribeAddresses
    /// reports them: the AWS account admin stays the authority over which address is whose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub tags: Option<BTreeMap<String, String>>,
}

/// An allocation id (`eipalloc-...`).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct AllocationId(#[schemars(regex(pattern = r"^eipalloc-[0-9a-f]{8,17}$"))] pub String);

/// A public IPv4 address.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct PublicIp(
    #[schemars(
        length(max = 15),
        regex(
            pattern = r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$"
        )
    )]
    pub String,
);

/// Nodes: every node, or those named and those matching the selector.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.all) ? (self.all && !has(self.names) && !has(self.selector)) : (has(self.names) && size(self.names) > 0 || has(self.selector))").message("spec.nodes: set all: true, or names and/or selector (not both all and a list)")
)]
pub struct NodeGrant {
    /// Every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    /// Nodes by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub names: Option<Vec<NodeName>>,
    /// Nodes whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// A node name (a DNS subdomain).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct NodeName(
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub String,
);

/// Probe limits.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.anyPort) && self.anyPort && has(self.ports))").message("spec.probes: set anyPort: true or ports, not both")
)]
pub struct ProbeGrant {
    /// Any port may be probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any_port: Option<bool>,
    /// Ports that may be probed besides the kubelet's 10250 (always allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub ports: Option<Vec<ProbePort>>,
    /// The shortest probe period allowed. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crd::duration_schema")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('100ms') && duration(self) <= duration('5m')").message("spec.probes.minPeriod must be between 100ms and 5m"))]
    pub min_period: Option<Duration>,
}

/// A TCP port.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct ProbePort(#[schemars(range(min = 1, max = 65535))] pub i32);

/// The CRD as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&FloatingElasticIPGrant::crd())
}

/// What is known about the Elastic IP a claim names.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AddressFacts {
    /// From the spec, or resolved from the public IP by DescribeAddresses.
    pub allocation_id: Option<String>,
    /// From the spec, or from DescribeAddresses.
    pub public_ip: Option<String>,
    /// The address's EC2 tags; `None` until DescribeAddresses has answered for it.
    pub tags: Option<BTreeMap<String, String>>,
}

/// One candidate of a claim and its Node's labels (`None`: no such Node).
#[derive(Clone, Debug, PartialEq)]
pub struct CandidateFacts {
    pub node: String,
    pub labels: Option<BTreeMap<String, String>>,
}

/// Everything a claim asks for, with the facts needed to judge it.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    pub namespace: String,
    /// The namespace's labels; `None` when the Namespace is not (yet) in the cache.
    pub namespace_labels: Option<BTreeMap<String, String>>,
    pub address: AddressFacts,
    pub candidates: Vec<CandidateFacts>,
    pub takeover: bool,
    /// The probe it asks for: `None` for `type: None`.
    pub probe: Option<ProbeAsk>,
}

/// The probe a claim asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeAsk {
    pub port: i32,
    pub period: std::time::Duration,
}

impl Claim {
    /// The claim of `f`, given the address facts and two look-ups: a namespace's labels and a
    /// node's labels.
    pub fn of(
        f: &FloatingElasticIP,
        address: AddressFacts,
        namespace_labels: Option<BTreeMap<String, String>>,
        candidates: Vec<CandidateFacts>,
    ) -> Claim {
        let probe = f.spec.health.as_ref().and_then(|h| h.probe.as_ref());
        let probe = match probe {
            Some(p) if p.kind == ProbeType::None => None,
            Some(p) => Some(ProbeAsk {
                port: p.port.unwrap_or(DEFAULT_PROBE_PORT),
                period: p.period.map_or(DEFAULT_MIN_PROBE_PERIOD, |d| d.into()),
            }),
            None => Some(ProbeAsk {
                port: DEFAULT_PROBE_PORT,
                period: DEFAULT_MIN_PROBE_PERIOD,
            }),
        };
        Claim {
            namespace: f.namespace().unwrap_or_default(),
            namespace_labels,
            address,
            candidates,
            takeover: f.spec.allow_takeover.unwrap_or(false),
            probe,
        }
    }
}

/// The verdict on a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The named grant covers everything the claim asks for.
    Permitted { grant: String },
    /// No grant does; the message names what is missing (for `Degraded=NotPermitted`).
    NotPermitted { message: String },
}

impl Verdict {
    pub fn is_permitted(&self) -> bool {
        matches!(self, Verdict::Permitted { .. })
    }
}

/// Judges a claim against every grant. The first grant (by name) that covers the whole claim
/// permits it. Otherwise the message explains the closest miss: the grants for the namespace
/// and the address and what each one lacks, or that no grant gives the namespace that
/// address.
pub fn evaluate(grants: &[Arc<FloatingElasticIPGrant>], claim: &Claim) -> Verdict {
    let mut grants: Vec<&FloatingElasticIPGrant> = grants.iter().map(|g| g.as_ref()).collect();
    grants.sort_by_key(|g| g.name_any());
    let address = describe_address(&claim.address);
    if claim.namespace_labels.is_none()
        && grants.iter().any(|g| g.spec.namespaces.selector.is_some())
        && !grants
            .iter()
            .any(|g| covers_namespace(&g.spec.namespaces, claim))
    {
        return Verdict::NotPermitted {
            message: format!(
                "namespace {} is not known yet (its labels decide some grants)",
                claim.namespace
            ),
        };
    }
    let mut tags_unknown = false;
    let mut misses = Vec::new();
    for g in &grants {
        if !covers_namespace(&g.spec.namespaces, claim) {
            continue;
        }
        match covers_address(&g.spec.addresses, &claim.address) {
            Coverage::Yes => {}
            Coverage::No => continue,
            Coverage::Unknown => {
                tags_unknown = true;
                continue;
            }
        }
        let lacks = lacks(&g.spec, claim);
        if lacks.is_empty() {
            return Verdict::Permitted {
                grant: g.name_any(),
            };
        }
        misses.push(format!("grant {}: {}", g.name_any(), lacks.join("; ")));
    }
    let message = if !misses.is_empty() {
        format!(
            "namespace {} may claim {address}, but not like this: {}",
            claim.namespace,
            misses.join(" | ")
        )
    } else if tags_unknown {
        format!("{address}: waiting for its EC2 tags (a grant matches by tag)")
    } else if grants.is_empty() {
        "no FloatingElasticIPGrant exists: the cluster admin grants namespaces their Elastic IPs (docs/security.md)".to_string()
    } else {
        format!(
            "no FloatingElasticIPGrant gives namespace {} the Elastic IP {address}",
            claim.namespace
        )
    };
    Verdict::NotPermitted { message }
}

fn describe_address(a: &AddressFacts) -> String {
    match (&a.allocation_id, &a.public_ip) {
        (Some(id), Some(ip)) => format!("{ip} ({id})"),
        (Some(id), None) => id.clone(),
        (None, Some(ip)) => ip.clone(),
        (None, None) => "the address".into(),
    }
}

fn covers_namespace(g: &NamespaceGrant, claim: &Claim) -> bool {
    if g.all == Some(true) {
        return true;
    }
    let named = g.names.iter().flatten().any(|n| n.0 == claim.namespace);
    let selected = match (&g.selector, &claim.namespace_labels) {
        (Some(sel), Some(labels)) => selector_matches(sel, labels),
        _ => false,
    };
    named || selected
}

enum Coverage {
    Yes,
    No,
    /// Only the address's tags could decide, and they are not known yet.
    Unknown,
}

fn covers_address(g: &AddressGrant, a: &AddressFacts) -> Coverage {
    if g.all == Some(true) {
        return Coverage::Yes;
    }
    let by_id = a
        .allocation_id
        .as_ref()
        .is_some_and(|id| g.allocation_ids.iter().flatten().any(|x| &x.0 == id));
    let by_ip = a
        .public_ip
        .as_ref()
        .is_some_and(|ip| g.public_ips.iter().flatten().any(|x| &x.0 == ip));
    if by_id || by_ip {
        return Coverage::Yes;
    }
    match (&g.tags, &a.tags) {
        (Some(want), _) if want.is_empty() => Coverage::No,
        (Some(want), Some(have)) => {
            if want.iter().all(|(k, v)| have.get(k) == Some(v)) {
                Coverage::Yes
            } else {
                Coverage::No
            }
        }
        (Some(_), None) => Coverage::Unknown,
        (None, _) => Coverage::No,
    }
}

fn covers_node(g: &NodeGrant, c: &CandidateFacts) -> bool {
    if g.all == Some(true) {
        return true;
    }
    let named = g.names.iter().flatten().any(|n| n.0 == c.node);
    let selected = match (&g.selector, &c.labels) {
        (Some(sel), Some(labels)) => selector_matches(sel, labels),
        _ => false,
    };
    named || selected
}

/// What the claim asks for beyond the grant (empty: nothing).
fn lacks(g: &FloatingElasticIPGrantSpec, claim: &Claim) -> Vec<String> {
    let mut out = Vec::new();
    let outside: Vec<&str> = claim
        .candidates
        .iter()
        .filter(|c| !covers_node(&g.nodes, c))
        .map(|c| c.node.as_str())
        .collect();
    if !outside.is_empty() {
        out.push(format!(
            "candidate node(s) {} not granted",
            outside.join(", ")
        ));
    }
    if claim.takeover && g.allow_takeover != Some(true) {
        out.push("spec.allowTakeover is not allowed".into());
    }
    if let Some(p) = claim.probe {
        let limits = g.probes.clone().unwrap_or_default();
        let port_ok = p.port == DEFAULT_PROBE_PORT
            || limits.any_port == Some(true)
            || limits.ports.iter().flatten().any(|x| x.0 == p.port);
        if !port_ok {
            out.push(format!("probe port {} is not allowed", p.port));
        }
        let min: std::time::Duration = limits
            .min_period
            .map_or(DEFAULT_MIN_PROBE_PERIOD, |d| d.into());
        if p.period < min {
            out.push(format!(
                "probe period {:?} is below the allowed minimum {:?}",
                p.period, min
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(name: &str, spec: serde_json::Value) -> Arc<FloatingElasticIPGrant> {
        let spec: FloatingElasticIPGrantSpec = serde_json::from_value(spec).expect("grant spec");
        Arc::new(FloatingElasticIPGrant::new(name, spec))
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn claim(ns: &str, alloc: &str) -> Claim {
        Claim {
            namespace: ns.into(),
            namespace_labels: Some(labels(&[("team", ns)])),
            address: AddressFacts {
                allocation_id: Some(alloc.into()),
                public_ip: Some("52.16.0.9".into()),
                tags: Some(labels(&[("feip.io/tenant", ns)])),
            },
            candidates: vec![
                CandidateFacts {
                    node: "n0".into(),
                    labels: Some(labels(&[("pool", ns)])),
                },
                CandidateFacts {
                    node: "n1".into(),
                    labels: Some(labels(&[("pool", ns)])),
                },
            ],
            takeover: false,
            probe: Some(ProbeAsk {
                port: DEFAULT_PROBE_PORT,
                period: DEFAULT_MIN_PROBE_PERIOD,
            }),
        }
    }

    fn unrestricted() -> Arc<FloatingElasticIPGrant> {
        grant(
            "everything",
            serde_json::json!({
                "namespaces": {"all": true}, "addresses": {"all": true}, "nodes": {"all": true},
                "allowTakeover": true, "probes": {"anyPort": true, "minPeriod": "100ms"},
            }),
        )
    }

    fn team(ns: &str) -> Arc<FloatingElasticIPGrant> {
        grant(
            ns,
            serde_json::json!({
                "namespaces": {"names": [ns]},
                "addresses": {"tags": {"feip.io/tenant": ns}},
                "nodes": {"selector": {"matchLabels": {"pool": ns}}},
            }),
        )
    }

    fn message(v: Verdict) -> String {
        match v {
            Verdict::NotPermitted { message } => message,
            Verdict::Permitted { grant } => panic!("permitted by {grant}"),
        }
    }

    #[test]
    fn without_grants_nothing_is_permitted() {
        let m = message(evaluate(&[], &claim("a", "eipalloc-00000001")));
        assert!(m.contains("no FloatingElasticIPGrant exists"), "{m}");
    }

    #[test]
    fn the_unrestricted_grant_permits_everything() {
        let mut c = claim("a", "eipalloc-00000001");
        c.takeover = true;
        c.probe = Some(ProbeAsk {
            port: 22,
            period: std::time::Duration::from_millis(100),
        });
        c.candidates[0].labels = None;
        assert_eq!(
            evaluate(&[unrestricted()], &c),
            Verdict::Permitted {
                grant: "everything".into()
            }
        );
    }

    #[test]
    fn a_team_grant_covers_its_namespace_its_tagged_addresses_and_its_nodes() {
        let grants = [team("a"), team("b")];
        assert_eq!(
            evaluate(&grants, &claim("a", "eipalloc-00000001")),
            Verdict::Permitted { grant: "a".into() }
        );
        // Team b claiming team a's address (tagged for a): nothing grants it.
        let mut c = claim("b", "eipalloc-00000001");
        c.address.tags = Some(labels(&[("feip.io/tenant", "a")]));
        let m = message(evaluate(&grants, &c));
        assert!(
            m.contains("no FloatingElasticIPGrant gives namespace b the Elastic IP 52.16.0.9 (eipalloc-00000001)"),
            "{m}"
        );
        // An untagged address: nobody's.
        c.address.tags = Some(BTreeMap::new());
        assert!(!evaluate(&grants, &c).is_permitted());
    }

    #[test]
    fn each_missing_right_is_named() {
        let grants = [team("a")];
        let mut c = claim("a", "eipalloc-00000001");
        c.candidates.push(CandidateFacts {
            node: "victim-node".into(),
            labels: Some(labels(&[("pool", "b")])),
        });
        c.candidates.push(CandidateFacts {
            node: "gone".into(),
            labels: None,
        });
        c.takeover = true;
        c.probe = Some(ProbeAsk {
            port: 22,
            period: std::time::Duration::from_millis(200),
        });
        let m = message(evaluate(&grants, &c));
        for want in [
            "namespace a may claim 52.16.0.9 (eipalloc-00000001), but not like this: grant a:",
            "candidate node(s) victim-node, gone not granted",
            "spec.allowTakeover is not allowed",
            "probe port 22 is not allowed",
            "probe period 200ms is below the allowed minimum 1s",
        ] {
            assert!(m.contains(want), "{want:?} missing from {m:?}");
        }
    }

    #[test]
    fn probe_ports_and_periods_follow_the_grant() {
        let g = grant(
            "a",
            serde_json::json!({
                "namespaces": {"names": ["a"]}, "addresses": {"allocationIds": ["eipalloc-00000001"]},
                "nodes": {"all": true}, "probes": {"ports": [8080], "minPeriod": "500ms"},
            }),
        );
        let mut c = claim("a", "eipalloc-00000001");
        for (port, ms, ok) in [
            (8080, 500, true),
            (10250, 500, true),
            (8080, 499, false),
            (8081, 1000, false),
        ] {
            c.probe = Some(ProbeAsk {
                port,
                period: std::time::Duration::from_millis(ms),
            });
            assert_eq!(
                evaluate(std::slice::from_ref(&g), &c).is_permitted(),
                ok,
                "port {port} period {ms}ms"
            );
        }
        c.probe = None;
        assert!(evaluate(&[g], &c).is_permitted(), "type None asks nothing");
    }

    #[test]
    fn namespaces_by_selector_and_addresses_by_ip() {
        let g = grant(
            "sel",
            serde_json::json!({
                "namespaces": {"selector": {"matchLabels": {"team": "a"}}},
                "addresses": {"publicIps": ["52.16.0.9"]}, "nodes": {"names": ["n0", "n1"]},
            }),
        );
        let mut c = claim("a", "eipalloc-00000001");
        assert!(evaluate(std::slice::from_ref(&g), &c).is_permitted());
        c.namespace_labels = Some(labels(&[("team", "b")]));
        assert!(!evaluate(std::slice::from_ref(&g), &c).is_permitted());
        c.namespace_labels = None;
        let m = message(evaluate(&[g], &c));
        assert!(m.contains("namespace a is not known yet"), "{m}");
    }

    #[test]
    fn tags_not_read_yet_wait() {
        let mut c = claim("a", "eipalloc-00000001");
        c.address.tags = None;
        let m = message(evaluate(&[team("a")], &c));
        assert!(m.contains("waiting for its EC2 tags"), "{m}");
    }

    #[test]
    fn the_first_grant_by_name_that_covers_the_claim_wins() {
        let narrow = team("a");
        let wide = grant(
            "z-wide",
            serde_json::json!({
                "namespaces": {"names": ["a"]}, "addresses": {"all": true},
                "nodes": {"all": true}, "allowTakeover": true,
            }),
        );
        let mut c = claim("a", "eipalloc-00000001");
        c.takeover = true;
        assert_eq!(
            evaluate(&[wide.clone(), narrow.clone()], &c),
            Verdict::Permitted {
                grant: "z-wide".into()
            },
            "a grant that lacks something does not hide another that covers it"
        );
        c.takeover = false;
        assert_eq!(
            evaluate(&[wide, narrow], &c),
            Verdict::Permitted { grant: "a".into() }
        );
    }

    #[test]
    fn committed_crd_is_current() {
        let committed = include_str!("../crds/floatingelasticipgrants.feip.io.yaml");
        let generated = crd_yaml().expect("crd serialises");
        assert!(
            committed == generated,
            "crds/floatingelasticipgrants.feip.io.yaml is stale: run hack/gen-crd.sh"
        );
    }
}
