//! Builders shared by the table tests: objects from JSON, candidate views, decisions, EC2
//! answers and errors, nodes, and a `StatusInputs` case that owns everything it borrows.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::aws::{AddressInfo, Ec2Error, InstanceInfo, InterfaceInfo};
use crate::crd::{FailoverRecord, FloatingElasticIP, FloatingElasticIPStatus};
use crate::decide::{
    Action, AddressObservation, CandidateView, Decision, Eligibility, FailureKind, FailureRecord,
    Finding, Input, NodeHealth, Policy, Target,
};
use crate::health::ProbeSignal;
use crate::kube_ext::NodeFacts;

use super::super::context::{CandidateReading, CandidateReadings};
use super::super::observe::{CandidateFacts, Listed, Observed, SlotInputs};
use super::super::slots::SlotRecord;
use super::super::spec::resolve;
use super::super::status::{StatusInputs, build_status};

pub(super) const ALLOC: &str = "eipalloc-0123456789abcdef0";
pub(super) const PUBLIC_IP: &str = "203.0.113.10";

/// A fixed "now": 2026-01-01T00:00:00Z.
pub(super) fn now() -> Timestamp {
    ts(0)
}

/// `now() + secs`.
pub(super) fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(1_767_225_600 + secs).expect("valid time")
}

/// A FloatingElasticIP `default/web` at generation 3 with `spec` and an optional status.
pub(super) fn feip_with(
    spec: serde_json::Value,
    status: Option<serde_json::Value>,
) -> FloatingElasticIP {
    let mut obj = serde_json::json!({
        "apiVersion": "feip.io/v1alpha1", "kind": "FloatingElasticIP",
        "metadata": {"name": "web", "namespace": "default", "generation": 3},
        "spec": spec,
    });
    if let Some(s) = status {
        obj["status"] = s;
    }
    serde_json::from_value(obj).expect("test object")
}

pub(super) fn feip(spec: serde_json::Value) -> FloatingElasticIP {
    feip_with(spec, None)
}

/// The usual spec: an allocation id and candidates a, b, merged with `extra`.
pub(super) fn spec(extra: serde_json::Value) -> serde_json::Value {
    let mut s = serde_json::json!({
        "allocationId": ALLOC,
        "candidates": [{"node": "a"}, {"node": "b"}],
    });
    if let (Some(base), Some(more)) = (s.as_object_mut(), extra.as_object()) {
        for (k, v) in more {
            if v.is_null() {
                base.remove(k);
            } else {
                base.insert(k.clone(), v.clone());
            }
        }
    }
    s
}

pub(super) fn target(node: &str) -> Target {
    Target {
        instance_id: format!("i-{node}"),
        network_interface_id: format!("eni-{node}"),
        private_ip: format!("10.0.0.{}", host_part(node)),
    }
}

/// A host number per node name ("a" is 11, "b" 12): distinct nodes get distinct private IPs,
/// as they do in a VPC.
fn host_part(node: &str) -> u32 {
    10 + node
        .bytes()
        .map(|b| u32::from(b.saturating_sub(b'a' - 1)))
        .sum::<u32>()
        % 240
}

/// A candidate with a resolved target.
pub(super) fn gathered(node: &str, health: NodeHealth, eligibility: Eligibility) -> CandidateFacts {
    CandidateFacts {
        view: CandidateView {
            node: node.into(),
            priority: 0,
            health,
            eligibility,
            healthy_since: None,
            target: Some(target(node)),
        },
        instance_id: Some(format!("i-{node}")),
        vpc_id: None,
        instance_known: true,
        dead_since: None,
        probe_pending: false,
        needs_instance_read: false,
    }
}

pub(super) fn healthy(node: &str) -> CandidateFacts {
    gathered(node, NodeHealth::Healthy, Eligibility::Eligible)
}

pub(super) fn dead(reason: &str) -> NodeHealth {
    NodeHealth::Dead {
        reason: reason.into(),
    }
}

pub(super) fn unknown(reason: &str) -> NodeHealth {
    NodeHealth::Unknown {
        reason: reason.into(),
    }
}

pub(super) fn unresolvable(reason: &str) -> Eligibility {
    Eligibility::Unresolvable {
        reason: reason.into(),
    }
}

pub(super) fn decision(holder: Option<&str>, notes: Vec<Finding>) -> Decision {
    Decision {
        holder: holder.map(str::to_string),
        change: None,
        record_failure: None,
        expire_failures: Vec::new(),
        action: Action::None,
        notes,
    }
}

/// The address as EC2 reports it, on `node`'s interface or unassociated.
pub(super) fn address_on(node: Option<&str>) -> AddressInfo {
    AddressInfo {
        allocation_id: ALLOC.into(),
        public_ip: PUBLIC_IP.into(),
        association_id: node.map(|n| format!("eipassoc-{n}")),
        network_interface_id: node.map(|n| format!("eni-{n}")),
        private_ip: node.map(|n| target(n).private_ip),
        instance_id: node.map(|n| format!("i-{n}")),
        tags: Default::default(),
    }
}

pub(super) fn definite(code: &str) -> Ec2Error {
    Ec2Error::Definite {
        operation: "AssociateAddress",
        code: code.into(),
        message: format!("{code} message"),
    }
}

pub(super) fn unknown_error(reason: &str) -> Ec2Error {
    Ec2Error::Unknown {
        operation: "AssociateAddress",
        reason: reason.into(),
        throttled: false,
    }
}

pub(super) fn failure(count: u32, at: Timestamp, kind: FailureKind, reason: &str) -> FailureRecord {
    FailureRecord {
        count,
        last_failure: at,
        kind,
        reason: reason.into(),
    }
}

/// Everything `StatusInputs` borrows, owned; defaults to the Active situation: `a` holds the
/// address, is healthy and the address is on its interface.
pub(super) struct StatusCase {
    pub(super) f: FloatingElasticIP,
    pub(super) decision: Decision,
    pub(super) gathered: Vec<CandidateFacts>,
    pub(super) holder: Option<String>,
    pub(super) holder_on_target: bool,
    pub(super) holder_healthy: bool,
    pub(super) current: Option<AddressInfo>,
    pub(super) address_missing: bool,
    pub(super) failures: BTreeMap<String, FailureRecord>,
    pub(super) failover_count: i64,
    pub(super) last_failover: Option<FailoverRecord>,
    pub(super) transitions: i32,
    pub(super) cleanup_done: Option<String>,
    pub(super) action_error: Option<Ec2Error>,
    pub(super) blocked: Option<String>,
    pub(super) now: Timestamp,
}

impl StatusCase {
    pub(super) fn active() -> Self {
        StatusCase {
            f: feip(spec(serde_json::json!({}))),
            decision: decision(Some("a"), Vec::new()),
            gathered: vec![healthy("a"), healthy("b")],
            holder: Some("a".into()),
            holder_on_target: true,
            holder_healthy: true,
            current: Some(address_on(Some("a"))),
            address_missing: false,
            failures: BTreeMap::new(),
            failover_count: 0,
            last_failover: None,
            transitions: 1,
            cleanup_done: None,
            action_error: None,
            blocked: None,
            now: now(),
        }
    }

    /// No holder, address unassociated.
    pub(super) fn no_holder(notes: Vec<Finding>) -> Self {
        StatusCase {
            decision: decision(None, notes),
            holder: None,
            holder_on_target: false,
            holder_healthy: false,
            current: Some(address_on(None)),
            ..Self::active()
        }
    }

    pub(super) fn run(&self) -> FloatingElasticIPStatus {
        let r = resolve(&self.f);
        build_status(StatusInputs {
            f: &self.f,
            spec: &r,
            decision: &self.decision,
            candidates: &self.gathered,
            holder: self.holder.as_deref(),
            holder_on_target: self.holder_on_target,
            holder_healthy: self.holder_healthy,
            current: self.current.as_ref(),
            address_missing: self.address_missing,
            failures: &self.failures,
            failover_count: self.failover_count,
            last_failover: self.last_failover.clone(),
            planned_move_count: 0,
            last_planned_move: None,
            transitions: self.transitions,
            cleanup_done: self.cleanup_done.clone(),
            action_error: self.action_error.as_ref(),
            blocked: self.blocked.as_deref(),
            now: self.now,
        })
    }
}

/// The condition `type_` of `status`; panics (test failure) when it is absent.
pub(super) fn cond<'a>(status: &'a FloatingElasticIPStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", status.conditions))
}

/// Asserts a condition's status, reason and that its message contains every `parts`.
#[track_caller]
pub(super) fn assert_cond(
    status: &FloatingElasticIPStatus,
    type_: &str,
    expected_status: &str,
    reason: &str,
    parts: &[&str],
) {
    let c = cond(status, type_);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        (expected_status, reason),
        "{type_}: {c:?}"
    );
    for p in parts {
        assert!(
            c.message.contains(p),
            "{type_} message {:?} lacks {p:?}",
            c.message
        );
    }
}

/// A Node from JSON (`metadata.name` = `name`, `rest` merged at the top level).
pub(super) fn node_json(name: &str, rest: serde_json::Value) -> Node {
    let mut obj =
        serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
    if let (Some(base), Some(more)) = (obj.as_object_mut(), rest.as_object()) {
        for (k, v) in more {
            if k == "metadata" {
                if let (Some(m), Some(extra)) = (base["metadata"].as_object_mut(), v.as_object()) {
                    for (mk, mv) in extra {
                        m.insert(mk.clone(), mv.clone());
                    }
                }
            } else {
                base.insert(k.clone(), v.clone());
            }
        }
    }
    serde_json::from_value(obj).expect("test node")
}

/// A typical ready node with labels, a providerID, a taint, conditions and addresses.
pub(super) fn typical_node() -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "labels": {"role": "edge", "feip.io/standby": "false"},
            "annotations": {"note": "x"},
        },
        "spec": {
            "providerID": "aws:///ap-northeast-1a/i-0abc",
            "taints": [{"key": "dedicated", "value": "edge", "effect": "NoSchedule"}],
        },
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
                 "lastHeartbeatTime": "2026-01-01T00:00:00Z"},
            ],
            "addresses": [
                {"type": "InternalIP", "address": "10.0.0.11"},
                {"type": "Hostname", "address": "ip-10-0-0-11"},
            ],
        },
    })
}

/// The controller's region in the candidate readings built here.
pub(super) const REGION: &str = "ap-northeast-1";

/// `node`'s Node facts: Ready, InternalIP, providerID `aws:///ap-northeast-1a/i-<node>`.
pub(super) fn node_facts(node: &str) -> NodeFacts {
    NodeFacts {
        provider_id: Some(format!("aws:///{REGION}a/i-{node}")),
        ready: vec!["True".into()],
        internal_ips: vec![target(node).private_ip],
        ..NodeFacts::default()
    }
}

/// `node`'s running instance in `vpc-1`, whose interface at device index 0 is `target(node)`
/// with one secondary private IP `10.0.1.<n>`.
pub(super) fn instance_of(node: &str) -> InstanceInfo {
    let t = target(node);
    InstanceInfo {
        instance_id: t.instance_id,
        state: "running".into(),
        vpc_id: Some("vpc-1".into()),
        availability_zone: Some(format!("{REGION}a")),
        interfaces: vec![InterfaceInfo {
            network_interface_id: t.network_interface_id,
            device_index: 0,
            primary_private_ip: t.private_ip.clone(),
            private_ips: vec![t.private_ip, secondary_ip(node)],
        }],
    }
}

/// The secondary private IP on `node`'s interface (see [`instance_of`]).
pub(super) fn secondary_ip(node: &str) -> String {
    format!("10.0.1.{}", host_part(node))
}

/// A candidate as the caches describe it: listed with priority 0, Node present, instance
/// described and covered, heartbeat fresh, no probe.
pub(super) fn reading(node: &str) -> CandidateReading {
    CandidateReading {
        listed: Listed {
            node: node.into(),
            priority: 0,
            private_ip: None,
        },
        node: Some(node_facts(node)),
        instance: Some(instance_of(node)),
        instance_covered: true,
        heartbeat_age: Some(Duration::from_secs(1)),
        probe: ProbeSignal::Off,
    }
}

/// The readings of `list` in [`REGION`], EC2 and the API answering.
pub(super) fn readings(list: Vec<CandidateReading>) -> CandidateReadings {
    CandidateReadings {
        list,
        region: Some(REGION.into()),
        instances_error: None,
        api_failing: false,
        heartbeat_gap: None,
        slots: SlotInputs::default(),
    }
}

/// What `observe` gives for `candidates` with `holder` recorded (unconfirmed) and the
/// address as EC2 reports it (`None`: not known).
pub(super) fn observed(
    candidates: Vec<CandidateFacts>,
    holder: Option<&str>,
    address: Option<AddressInfo>,
) -> Observed {
    let observation = match &address {
        Some(a) => match &a.network_interface_id {
            Some(eni) => AddressObservation::Associated {
                network_interface_id: eni.clone(),
                private_ip: a.private_ip.clone(),
                association_id: a.association_id.clone(),
            },
            None => AddressObservation::Unassociated,
        },
        None => AddressObservation::Unknown {
            reason: "not looked up yet".into(),
        },
    };
    // The Lease records the holder's slot (its target), as every write since slots does.
    let lease_slot = holder.and_then(|h| {
        let c = candidates.iter().find(|c| c.view.node == h)?;
        Some(SlotRecord::of(h, c.view.target.as_ref()?))
    });
    Observed {
        lease_slot,
        needs_address_read: false,
        input: Input {
            now: now(),
            policy: Policy::default(),
            candidates: candidates.iter().map(|c| c.view.clone()).collect(),
            holder: holder.map(str::to_string),
            holder_confirmed: false,
            failures: BTreeMap::new(),
            address: observation,
        },
        candidates,
        address,
        address_missing: false,
        cleanup_done: None,
        transitions: 0,
        probe_pending: false,
        needs_instance_read: false,
    }
}

/// A holder Lease `feip-web` held by `holder` with `annotations` and `transitions`.
pub(super) fn holder_lease(
    holder: Option<&str>,
    annotations: serde_json::Value,
    transitions: Option<i32>,
) -> Lease {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "feip-web", "namespace": "default", "annotations": annotations},
        "spec": {"holderIdentity": holder, "leaseTransitions": transitions},
    }))
    .expect("lease")
}

/// Asserts every row's `got == want`, naming each failing row.
#[track_caller]
pub(super) fn assert_rows<T: PartialEq + std::fmt::Debug>(rows: Vec<(&str, T, T)>) {
    let failed: Vec<String> = rows
        .into_iter()
        .filter(|(_, got, want)| got != want)
        .map(|(name, got, want)| format!("{name}:\n  got  {got:?}\n  want {want:?}"))
        .collect();
    assert!(failed.is_empty(), "rows failed:\n{}", failed.join("\n"));
}
