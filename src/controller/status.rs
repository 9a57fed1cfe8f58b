//! The status of an address (no client): phase, conditions, holder, address, node failure
//! records, built whole from one reconcile's observation, decision and outcome.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::aws::{AddressInfo, Ec2Error};
use crate::crd::{
    AddressStatus, FailoverRecord, FloatingElasticIP, FloatingElasticIPStatus, HolderStatus,
    LeaseStatus, NodeRecord, Phase,
};
use crate::decide::{Decision, Eligibility, FailureRecord, Finding, NodeHealth};

use super::observe::CandidateFacts;
use super::spec::ResolvedSpec;

/// Status of an object that names an address another (older) object manages.
pub(super) fn conflict_status(
    f: &FloatingElasticIP,
    owner: &FloatingElasticIP,
    now: Timestamp,
) -> FloatingElasticIPStatus {
    let old = f.status.clone().unwrap_or_default();
    let address = f
        .spec
        .allocation_id
        .clone()
        .or_else(|| f.spec.public_ip.clone())
        .unwrap_or_default();
    let message = format!(
        "the Elastic IP {address} is also claimed by FloatingElasticIP {}/{}, created first, which manages it; this object will not touch the address while that one exists",
        owner.namespace().unwrap_or_default(),
        owner.name_any()
    );
    let condition = |type_: &str, status: &str, reason: &str| Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.clone(),
        observed_generation: f.metadata.generation,
        last_transition_time: old
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or(Time(now), |c| c.last_transition_time.clone()),
    };
    FloatingElasticIPStatus {
        phase: Some(Phase::Error),
        address: Some(AddressStatus {
            allocation_id: f.spec.allocation_id.clone(),
            public_ip: f.spec.public_ip.clone(),
            ..Default::default()
        }),
        conditions: vec![
            condition("Degraded", "True", "AddressConflict"),
            condition("Ready", "False", "AddressConflict"),
        ],
        observed_generation: f.metadata.generation,
        failover_count: old.failover_count,
        last_failover: old.last_failover,
        last_cleanup_request_id: old.last_cleanup_request_id,
        ..Default::default()
    }
}

pub(super) struct StatusInputs<'a> {
    pub(super) f: &'a FloatingElasticIP,
    pub(super) spec: &'a ResolvedSpec,
    pub(super) decision: &'a Decision,
    pub(super) candidates: &'a [CandidateFacts],
    pub(super) holder: Option<&'a str>,
    pub(super) holder_on_target: bool,
    pub(super) holder_healthy: bool,
    pub(super) current: Option<&'a AddressInfo>,
    pub(super) address_missing: bool,
    pub(super) failures: &'a BTreeMap<String, FailureRecord>,
    pub(super) failover_count: i64,
    pub(super) last_failover: Option<FailoverRecord>,
    pub(super) transitions: i32,
    pub(super) cleanup_done: Option<String>,
    pub(super) action_error: Option<&'a Ec2Error>,
    pub(super) blocked: Option<&'a str>,
    pub(super) now: Timestamp,
}

pub(super) fn build_status(i: StatusInputs<'_>) -> FloatingElasticIPStatus {
    let old = i.f.status.clone().unwrap_or_default();
    let generation = i.f.metadata.generation;
    let policy = &i.spec.policy;
    let holder_view = i
        .holder
        .and_then(|h| i.candidates.iter().find(|g| g.view.node == h));
    let finding = |name: &str| i.decision.notes.iter().find(|n| n.as_str() == name);
    let ec2_unknown = i
        .decision
        .notes
        .iter()
        .find_map(|n| match n {
            Finding::Ec2Unknown { reason } => Some(reason.clone()),
            _ => None,
        })
        .or_else(|| {
            i.action_error
                .filter(|e| e.is_unknown())
                .map(|e| e.to_string())
        });

    let phase = if i.blocked.is_some() {
        Phase::Blocked
    } else if policy.observe_only {
        Phase::Unmanaged
    } else if policy.stopped {
        Phase::Stopped
    } else if i.address_missing
        || i.action_error
            .is_some_and(|e| !e.is_unknown() && !e.blames_target())
    {
        Phase::Error
    } else if i.holder.is_none() {
        if finding("NoEligibleCandidate").is_some()
            || finding("StoppedAfterAssociateFailure").is_some()
        {
            Phase::Failing
        } else {
            Phase::Pending
        }
    } else if !i.holder_on_target {
        Phase::Associating
    } else if !i.holder_healthy {
        Phase::Failing
    } else {
        Phase::Active
    };

    let mut conds: Vec<Condition> = Vec::new();
    let mut set = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let last = old
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(i.now));
        conds.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: last,
        });
    };
    let associated_msg = match (i.current, i.holder) {
        (Some(a), _) if a.network_interface_id.is_some() => format!(
            "{} is associated with {} ({})",
            a.public_ip,
            a.network_interface_id.as_deref().unwrap_or_default(),
            a.private_ip.as_deref().unwrap_or("?")
        ),
        (Some(a), _) => format!("{} is not associated", a.public_ip),
        (None, _) => "address state unknown".into(),
    };
    set(
        "Associated",
        i.holder_on_target,
        if i.holder_on_target {
            "OnHolder"
        } else if i.current.is_none() {
            "Unknown"
        } else {
            "NotOnHolder"
        },
        associated_msg,
    );
    let holder_health_reason = match holder_view.map(|g| &g.view.health) {
        Some(NodeHealth::Healthy) => (
            "Healthy",
            format!("{} is healthy", i.holder.unwrap_or_default()),
        ),
        Some(NodeHealth::Dead { reason }) => ("HolderDead", reason.clone()),
        Some(NodeHealth::Unknown { reason }) => ("HolderHealthUnknown", reason.clone()),
        None => ("NoHolder", "no node holds the address".into()),
    };
    set(
        "HolderHealthy",
        i.holder_healthy,
        holder_health_reason.0,
        holder_health_reason.1,
    );
    let degraded: Option<(&str, String)> = if i.address_missing {
        Some((
            "AddressNotFound",
            match (&i.f.spec.allocation_id, &i.f.spec.public_ip) {
                (Some(a), _) => {
                    format!("the Elastic IP {a} does not exist in this account and region")
                }
                (None, Some(ip)) => {
                    format!("{ip} is not an Elastic IP of this account in this region")
                }
                (None, None) => "the Elastic IP does not exist in this account and region".into(),
            },
        ))
    } else if let Some(e) = i.action_error.filter(|e| !e.is_unknown()) {
        Some((
            if e.blames_target() {
                "AssociateFailed"
            } else {
                "Ec2Refused"
            },
            e.to_string(),
        ))
    } else if let Some(reason) = &ec2_unknown {
        Some((
            "Ec2Unknown",
            format!("EC2 state unknown, retrying with backoff (no failover): {reason}"),
        ))
    } else {
        i.decision.notes.iter().find_map(|n| match n {
            Finding::ForeignAssociation { network_interface_id } => Some((
                "ForeignAssociation",
                format!("the address is associated with {network_interface_id}, outside the candidates; set allowTakeover to take it"),
            )),
            Finding::NoEligibleCandidate { why } => Some(("NoEligibleCandidate", why.clone())),
            Finding::StoppedAfterAssociateFailure { node } => {
                Some(("StoppedAfterAssociateFailure", format!("associate failed on {node}; run cleanup to retry")))
            }
            Finding::DriftObserved { node, network_interface_id } if policy.observe_only => Some((
                "DriftObserved",
                format!("address is on {} instead of holder {node}", network_interface_id.as_deref().unwrap_or("nothing")),
            )),
            Finding::HolderHealthUnknown { node, reason } => Some(("HolderHealthUnknown", format!("{node}: {reason}"))),
            _ => None,
        })
        // The address is placed, but some candidates could never take it: say which and why
        // (a misspelt node, no providerID, an instance in another region or VPC).
        .or_else(|| {
            let broken: Vec<String> = i
                .candidates
                .iter()
                .filter_map(|g| match &g.view.eligibility {
                    Eligibility::Unresolvable { reason } => Some(format!("{}: {reason}", g.view.node)),
                    _ => None,
                })
                .collect();
            (!broken.is_empty()).then(|| ("CandidateUnresolvable", broken.join("; ")))
        })
    };
    match &degraded {
        Some((reason, msg)) => set("Degraded", true, reason, msg.clone()),
        None => set("Degraded", false, "AsExpected", "no problems".into()),
    }
    match i.blocked {
        Some(msg) => set("Blocked", true, "DisassociateFailed", msg.to_string()),
        None => set("Blocked", false, "NotBlocked", "not blocked".into()),
    }
    let ready = matches!(phase, Phase::Active | Phase::Stopped);
    set(
        "Ready",
        ready,
        match phase {
            Phase::Active => "Active",
            Phase::Stopped => "Stopped",
            Phase::Pending => "Pending",
            Phase::Associating => "Associating",
            Phase::Failing => "Failing",
            Phase::Unmanaged => "Unmanaged",
            Phase::Blocked => "Blocked",
            Phase::Error => "Error",
        },
        match &degraded {
            Some((_, m)) => m.clone(),
            None => format!("{phase:?}"),
        },
    );

    let holder_status = i.holder.map(|h| {
        let g = i.candidates.iter().find(|g| g.view.node == h);
        let t = g.and_then(|g| g.view.target.as_ref());
        let since = old
            .holder
            .as_ref()
            .filter(|o| o.node == h)
            .and_then(|o| o.since.clone())
            .unwrap_or(Time(i.now));
        HolderStatus {
            node: h.to_string(),
            instance_id: t
                .map(|t| t.instance_id.clone())
                .or_else(|| g.and_then(|g| g.instance_id.clone())),
            network_interface_id: t.map(|t| t.network_interface_id.clone()),
            private_ip_address: t.map(|t| t.private_ip.clone()),
            since: Some(since),
        }
    });
    let address = match i.current {
        Some(a) => Some(AddressStatus {
            allocation_id: Some(a.allocation_id.clone()),
            public_ip: Some(a.public_ip.clone()),
            association_id: a.association_id.clone(),
            network_interface_id: a.network_interface_id.clone(),
            private_ip_address: a.private_ip.clone(),
        }),
        None => old.address.clone().or_else(|| {
            Some(AddressStatus {
                allocation_id: i.f.spec.allocation_id.clone(),
                public_ip: i.f.spec.public_ip.clone(),
                ..Default::default()
            })
        }),
    };
    let nodes = i
        .failures
        .iter()
        .map(|(node, rec)| {
            let banned = rec.count >= policy.migration_threshold;
            let banned_until = policy
                .failure_timeout
                .filter(|_| banned)
                .and_then(|t| jiff::SignedDuration::try_from(t).ok())
                .and_then(|t| rec.last_failure.checked_add(t).ok())
                .map(Time);
            NodeRecord {
                node: node.clone(),
                failure_count: rec.count as i32,
                last_failure: Some(Time(rec.last_failure)),
                last_failure_reason: Some(format!("{}: {}", rec.kind.as_str(), rec.reason)),
                banned,
                banned_until,
            }
        })
        .collect();
    FloatingElasticIPStatus {
        phase: Some(phase),
        holder: holder_status,
        address,
        lease: Some(LeaseStatus {
            name: i.f.lease_name(),
            transitions: i.transitions,
        }),
        failover_count: i.failover_count,
        last_failover: i.last_failover,
        nodes,
        last_cleanup_request_id: i.cleanup_done,
        conditions: conds,
        observed_generation: generation,
    }
}
