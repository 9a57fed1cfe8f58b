//! The status of an address (no client): phase, conditions, holder, address, node failure
//! records, built whole from one reconcile's observation, decision and outcome.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::aws::{AddressInfo, Ec2Error};
use crate::crd::{
    AddressStatus, ConditionReason, ConditionType, FailoverRecord, FloatingElasticIP,
    FloatingElasticIPStatus, HolderStatus, LeaseStatus, NodeRecord, Phase,
};
use crate::decide::{
    ChangeReason, Decision, Eligibility, FailureRecord, Finding, NodeHealth, Policy,
};

use super::observe::CandidateFacts;
use super::spec::ResolvedSpec;

/// The most a condition message holds, in bytes of UTF-8 (docs/semantics.md, "Status
/// size"). Kubernetes sets no limit on `Condition.message`, but the whole object must fit
/// etcd's 1.5 MiB, and messages are built from EC2 error text and lists of candidates.
pub(crate) const MAX_MESSAGE_BYTES: usize = 1024;

/// The most a `status.nodes[].lastFailureReason` holds, in bytes ("Kind: " included).
pub(crate) const MAX_FAILURE_REASON_BYTES: usize = 512;

/// The most records `status.nodes` holds. Records are not pruned when a node stops being a
/// candidate (they end at `failureTimeout` or on cleanup), so nodes replaced under a
/// `nodeSelector` would otherwise pile up; past the limit the newest bans are kept.
pub(crate) const MAX_NODE_RECORDS: usize = 128;

/// The longest node name (a DNS subdomain). A longer name cannot be a node: written into the
/// status by hand, its record is dropped, and a holder name is cut.
pub(crate) const MAX_NODE_NAME_BYTES: usize = 253;

/// What every free-text field ends with when it was cut.
pub(crate) const CUT_MARKER: &str = "…";

/// `text` cut to at most `max` bytes on a char boundary, ending in [`CUT_MARKER`] when cut.
/// Text already within `max` is returned unchanged, so a cut field read back from the
/// status and written again stays the same (no status write on every pass).
pub(crate) fn bounded(text: impl Into<String>, max: usize) -> String {
    let mut text = text.into();
    if text.len() <= max {
        return text;
    }
    // No room for the marker (a `max` below 3 bytes): cut without it.
    let marker = if max < CUT_MARKER.len() {
        ""
    } else {
        CUT_MARKER
    };
    let mut end = max - marker.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(marker);
    text
}

/// The conditions of one status, in the order they are set. A condition keeps its old
/// `lastTransitionTime` while its status is unchanged (an old condition of the same type
/// with the same status), and takes `now` when it is new or flips.
pub(super) struct Conditions<'a> {
    old: &'a [Condition],
    observed_generation: Option<i64>,
    now: Timestamp,
    set: Vec<Condition>,
}

impl<'a> Conditions<'a> {
    pub(super) fn new(
        old: &'a [Condition],
        observed_generation: Option<i64>,
        now: Timestamp,
    ) -> Self {
        Conditions {
            old,
            observed_generation,
            now,
            set: Vec::new(),
        }
    }

    /// Sets `type_` to `True` (`ok`) or `False`; the message is cut to [`MAX_MESSAGE_BYTES`].
    pub(super) fn set(
        &mut self,
        type_: ConditionType,
        ok: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> &mut Self {
        let (type_, status) = (type_.as_str(), if ok { "True" } else { "False" });
        let last_transition_time = self
            .old
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or(Time(self.now), |c| c.last_transition_time.clone());
        self.set.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: bounded(message, MAX_MESSAGE_BYTES),
            observed_generation: self.observed_generation,
            last_transition_time,
        });
        self
    }

    /// The conditions set, in order (old conditions not set again are dropped).
    pub(super) fn into_vec(self) -> Vec<Condition> {
        self.set
    }
}

/// The old conditions of `f`, for [`Conditions::new`].
fn old_conditions(f: &FloatingElasticIP) -> &[Condition] {
    f.status.as_ref().map_or(&[], |s| &s.conditions)
}

/// Status of an object that names an address another (older) object manages.
pub(super) fn conflict_status(
    f: &FloatingElasticIP,
    owner: &FloatingElasticIP,
    now: Timestamp,
) -> FloatingElasticIPStatus {
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
    let mut status = refused_status(f, ConditionReason::AddressConflict, message, now);
    status.address = Some(AddressStatus {
        allocation_id: f.spec.allocation_id.clone(),
        public_ip: f.spec.public_ip.clone(),
        ..Default::default()
    });
    status
}

/// Status of a claim no grant permits: `Degraded=True, NotPermitted` naming what is missing,
/// phase `Error`, and nothing about the address (a refused claim learns nothing about an
/// address it may not have, not even whether it exists) or any holder.
pub(super) fn not_permitted_status(
    f: &FloatingElasticIP,
    message: String,
    now: Timestamp,
) -> FloatingElasticIPStatus {
    let message = format!("not permitted: {message}");
    refused_status(f, ConditionReason::NotPermitted, message, now)
}

/// An object that must not touch its address (`reason`): phase `Error`, `Degraded=True`
/// with the reason, `Ready=False` with the phase as its reason; the counters kept.
fn refused_status(
    f: &FloatingElasticIP,
    reason: ConditionReason,
    message: String,
    now: Timestamp,
) -> FloatingElasticIPStatus {
    let old = f.status.clone().unwrap_or_default();
    let mut conditions = Conditions::new(&old.conditions, f.metadata.generation, now);
    conditions
        .set(
            ConditionType::Degraded,
            true,
            reason.as_str(),
            message.clone(),
        )
        .set(ConditionType::Ready, false, Phase::Error.as_str(), message);
    FloatingElasticIPStatus {
        phase: Some(Phase::Error),
        conditions: conditions.into_vec(),
        observed_generation: f.metadata.generation,
        failover_count: old.failover_count,
        last_failover: old.last_failover,
        planned_move_count: old.planned_move_count,
        last_planned_move: old.last_planned_move,
        last_cleanup_request_id: old.last_cleanup_request_id,
        ..Default::default()
    }
}

/// Status of an object whose release (on deletion) failed: the old status, phase `Blocked`,
/// the `Blocked` condition moved to the end. Its `lastTransitionTime` is `now` on every
/// failed release, even when it was already `True` (the old one is dropped first).
pub(super) fn blocked_release_status(
    f: &FloatingElasticIP,
    message: String,
    now: Timestamp,
) -> FloatingElasticIPStatus {
    let mut status = f.status.clone().unwrap_or_default();
    status.phase = Some(Phase::Blocked);
    status
        .conditions
        .retain(|c| c.type_ != ConditionType::Blocked.as_str());
    for c in &mut status.conditions {
        c.message = bounded(std::mem::take(&mut c.message), MAX_MESSAGE_BYTES);
    }
    let mut blocked = Conditions::new(&[], f.metadata.generation, now);
    blocked.set(
        ConditionType::Blocked,
        true,
        ConditionReason::DisassociateFailed.as_str(),
        message,
    );
    status.conditions.extend(blocked.into_vec());
    status
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
    pub(super) planned_move_count: i64,
    pub(super) last_planned_move: Option<FailoverRecord>,
    pub(super) transitions: i32,
    pub(super) cleanup_done: Option<String>,
    pub(super) action_error: Option<&'a Ec2Error>,
    pub(super) blocked: Option<&'a str>,
    pub(super) now: Timestamp,
}

pub(super) fn build_status(i: StatusInputs<'_>) -> FloatingElasticIPStatus {
    let phase = phase(&i);
    let old = i.f.status.as_ref();
    FloatingElasticIPStatus {
        phase: Some(phase),
        holder: holder_status(&i, old.and_then(|o| o.holder.as_ref())),
        address: address_status(&i, old.and_then(|o| o.address.as_ref())),
        lease: Some(LeaseStatus {
            name: i.f.lease_name(),
            transitions: i.transitions,
        }),
        nodes: node_records(i.failures, &i.spec.policy),
        conditions: conditions(&i, phase),
        failover_count: i.failover_count,
        last_failover: i.last_failover.map(bounded_record),
        planned_move_count: i.planned_move_count,
        last_planned_move: i.last_planned_move.map(bounded_record),
        last_cleanup_request_id: i.cleanup_done,
        observed_generation: i.f.metadata.generation,
    }
}

fn bounded_record(r: FailoverRecord) -> FailoverRecord {
    FailoverRecord {
        from: r.from.map(|n| bounded(n, MAX_NODE_NAME_BYTES)),
        to: bounded(r.to, MAX_NODE_NAME_BYTES),
        reason: bounded(r.reason, MAX_FAILURE_REASON_BYTES),
        ..r
    }
}

/// A completed holder change an operator asked for (a pin, `feip move`): counted in
/// `plannedMoveCount`, not in `failoverCount` (docs/semantics.md, "Counts").
pub(super) fn is_planned_move(reason: ChangeReason) -> bool {
    matches!(reason, ChangeReason::Pinned)
}

/// The counts and last records of `old` with `done` added to the one it belongs to.
pub(super) fn counted(
    old: &FloatingElasticIPStatus,
    done: Option<(FailoverRecord, ChangeReason)>,
) -> Counts {
    let mut c = Counts {
        failover_count: old.failover_count,
        last_failover: old.last_failover.clone(),
        planned_move_count: old.planned_move_count,
        last_planned_move: old.last_planned_move.clone(),
    };
    match done {
        Some((record, reason)) if is_planned_move(reason) => {
            c.planned_move_count += 1;
            c.last_planned_move = Some(record);
        }
        Some((record, _)) => {
            c.failover_count += 1;
            c.last_failover = Some(record);
        }
        None => {}
    }
    c
}

/// The completed-change counts of a status.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Counts {
    pub(super) failover_count: i64,
    pub(super) last_failover: Option<FailoverRecord>,
    pub(super) planned_move_count: i64,
    pub(super) last_planned_move: Option<FailoverRecord>,
}

/// The conditions, in this order: Associated, HolderHealthy, Degraded, Blocked, Ready.
fn conditions(i: &StatusInputs<'_>, phase: Phase) -> Vec<Condition> {
    let degraded = degraded(i);
    // Ready's reason is the phase; its message the Degraded one, when there is one.
    let ready_message = degraded
        .as_ref()
        .map_or_else(|| phase.as_str().to_string(), |(_, m)| m.clone());
    let is_degraded = degraded.is_some();
    let (degraded_reason, degraded_message) =
        degraded.unwrap_or((ConditionReason::AsExpected, "no problems".into()));
    let (blocked_reason, blocked_message) = match i.blocked {
        Some(m) => (ConditionReason::DisassociateFailed, m.to_string()),
        None => (ConditionReason::NotBlocked, "not blocked".into()),
    };
    let (associated_reason, associated_message) = associated(i);
    let (health_reason, health_message) = holder_health(i);
    let mut c = Conditions::new(old_conditions(i.f), i.f.metadata.generation, i.now);
    c.set(
        ConditionType::Associated,
        i.holder_on_target,
        associated_reason.as_str(),
        associated_message,
    )
    .set(
        ConditionType::HolderHealthy,
        i.holder_healthy,
        health_reason.as_str(),
        health_message,
    )
    .set(
        ConditionType::Degraded,
        is_degraded,
        degraded_reason.as_str(),
        degraded_message,
    )
    .set(
        ConditionType::Blocked,
        i.blocked.is_some(),
        blocked_reason.as_str(),
        blocked_message,
    )
    .set(
        ConditionType::Ready,
        matches!(phase, Phase::Active | Phase::Stopped),
        phase.as_str(),
        ready_message,
    );
    c.into_vec()
}

/// The phase: the first row of docs/semantics.md's "Phases" table that applies.
fn phase(i: &StatusInputs<'_>) -> Phase {
    let policy = &i.spec.policy;
    if i.blocked.is_some() {
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
        let nobody_electable = i.decision.notes.iter().any(|n| {
            matches!(
                n,
                Finding::NoEligibleCandidate { .. } | Finding::StoppedAfterAssociateFailure { .. }
            )
        });
        if nobody_electable {
            Phase::Failing
        } else {
            Phase::Pending
        }
    } else if !i.holder_on_target && !unknown_but_uncontradicted(i) {
        Phase::Associating
    } else if !i.holder_healthy {
        Phase::Failing
    } else {
        Phase::Active
    }
}

/// The address state is unknown (EC2 not answering past the read-age bound), the holder is
/// the one the last status showed on its target, and nothing says otherwise: the last known
/// phase stands (Active or Failing by the holder's health), with `Degraded=Ec2Unknown` telling
/// the unknown. Throttling alone must not read as `Associating` / `Ready=False`, which is
/// what an alert on Ready watches (docs/semantics.md, Phases).
fn unknown_but_uncontradicted(i: &StatusInputs<'_>) -> bool {
    let Some(old) = i.f.status.as_ref() else {
        return false;
    };
    i.current.is_none()
        && !i.address_missing
        && matches!(old.phase, Some(Phase::Active | Phase::Failing))
        && old.holder.as_ref().map(|h| h.node.as_str()) == i.holder
}

/// The `Associated` condition's reason and message (its status is `holder_on_target`).
fn associated(i: &StatusInputs<'_>) -> (ConditionReason, String) {
    let reason = if i.holder_on_target {
        ConditionReason::OnHolder
    } else if i.current.is_none() {
        ConditionReason::Unknown
    } else {
        ConditionReason::NotOnHolder
    };
    let message = match i.current {
        Some(a) if a.network_interface_id.is_some() => format!(
            "{} is associated with {} ({})",
            a.public_ip,
            a.network_interface_id.as_deref().unwrap_or_default(),
            a.private_ip.as_deref().unwrap_or("?")
        ),
        Some(a) => format!("{} is not associated", a.public_ip),
        None => "address state unknown".into(),
    };
    (reason, message)
}

/// The `HolderHealthy` condition's reason and message (its status is `holder_healthy`).
fn holder_health(i: &StatusInputs<'_>) -> (ConditionReason, String) {
    let holder_view = i
        .holder
        .and_then(|h| i.candidates.iter().find(|g| g.view.node == h));
    match holder_view.map(|g| &g.view.health) {
        Some(NodeHealth::Healthy) => (
            ConditionReason::Healthy,
            format!("{} is healthy", i.holder.unwrap_or_default()),
        ),
        Some(NodeHealth::Dead { reason }) => (ConditionReason::HolderDead, reason.clone()),
        Some(NodeHealth::Unknown { reason }) => {
            (ConditionReason::HolderHealthUnknown, reason.clone())
        }
        None => (
            ConditionReason::NoHolder,
            "no node holds the address".into(),
        ),
    }
}

/// The `Degraded` reason and message, `None` when nothing is wrong: the first that applies
/// of a missing address, a definite EC2 error, an unknown EC2 state, a finding of the
/// decision, unresolvable candidates.
fn degraded(i: &StatusInputs<'_>) -> Option<(ConditionReason, String)> {
    if i.address_missing {
        Some((ConditionReason::AddressNotFound, address_not_found(i.f)))
    } else if let Some(e) = i.action_error.filter(|e| !e.is_unknown()) {
        let reason = if e.blames_target() {
            ConditionReason::AssociateFailed
        } else {
            ConditionReason::Ec2Refused
        };
        Some((reason, e.to_string()))
    } else if let Some(reason) = ec2_unknown(i) {
        Some((
            ConditionReason::Ec2Unknown,
            format!("EC2 state unknown, retrying with backoff (no failover): {reason}"),
        ))
    } else {
        i.decision
            .notes
            .iter()
            .find_map(|n| degraded_by_finding(n, &i.spec.policy))
            .or_else(|| unresolvable_candidates(i.candidates))
    }
}

/// Why EC2's state is unknown: the decision's finding, else an unknown action error.
fn ec2_unknown(i: &StatusInputs<'_>) -> Option<String> {
    i.decision
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
        })
}

fn address_not_found(f: &FloatingElasticIP) -> String {
    match (&f.spec.allocation_id, &f.spec.public_ip) {
        (Some(a), _) => format!("the Elastic IP {a} does not exist in this account and region"),
        (None, Some(ip)) => format!("{ip} is not an Elastic IP of this account in this region"),
        (None, None) => "the Elastic IP does not exist in this account and region".into(),
    }
}

/// The `Degraded` reason and message a finding of the decision gives, if any.
fn degraded_by_finding(n: &Finding, policy: &Policy) -> Option<(ConditionReason, String)> {
    match n {
        Finding::ForeignAssociation {
            network_interface_id,
        } => Some((
            ConditionReason::ForeignAssociation,
            format!(
                "the address is associated with {network_interface_id}, outside the candidates; set allowTakeover to take it"
            ),
        )),
        Finding::NoEligibleCandidate { why } => {
            Some((ConditionReason::NoEligibleCandidate, why.clone()))
        }
        Finding::StoppedAfterAssociateFailure { node } => Some((
            ConditionReason::StoppedAfterAssociateFailure,
            format!("associate failed on {node}; run cleanup to retry"),
        )),
        Finding::DriftObserved {
            node,
            network_interface_id,
        } if policy.observe_only => Some((
            ConditionReason::DriftObserved,
            format!(
                "address is on {} instead of holder {node}",
                network_interface_id.as_deref().unwrap_or("nothing")
            ),
        )),
        Finding::HolderHealthUnknown { node, reason } => Some((
            ConditionReason::HolderHealthUnknown,
            format!("{node}: {reason}"),
        )),
        _ => None,
    }
}

/// The address is placed, but some candidates could never take it: say which and why
/// (a misspelt node, no providerID, an instance in another region or VPC).
/// Candidates without a free private IP come first (`NoFreePrivateIp`), naming which
/// addresses hold that node's IPs.
fn unresolvable_candidates(candidates: &[CandidateFacts]) -> Option<(ConditionReason, String)> {
    let (mut no_slot, mut broken) = (Vec::new(), Vec::new());
    for g in candidates {
        match &g.view.eligibility {
            Eligibility::NoFreeSlot { reason } => {
                no_slot.push(format!("{}: {reason}", g.view.node))
            }
            Eligibility::Unresolvable { reason } => {
                broken.push(format!("{}: {reason}", g.view.node))
            }
            _ => {}
        }
    }
    let reason = if no_slot.is_empty() {
        ConditionReason::CandidateUnresolvable
    } else {
        ConditionReason::NoFreePrivateIp
    };
    no_slot.append(&mut broken);
    (!no_slot.is_empty()).then(|| (reason, no_slot.join("; ")))
}

/// `status.holder`: the holder's target (or gathered instance); `since` is kept while the
/// holder is the same node.
fn holder_status(i: &StatusInputs<'_>, old: Option<&HolderStatus>) -> Option<HolderStatus> {
    i.holder.map(|h| {
        let g = i.candidates.iter().find(|g| g.view.node == h);
        let t = g.and_then(|g| g.view.target.as_ref());
        let since = old
            .filter(|o| o.node == h)
            .and_then(|o| o.since.clone())
            .unwrap_or(Time(i.now));
        HolderStatus {
            node: bounded(h, MAX_NODE_NAME_BYTES),
            instance_id: t
                .map(|t| t.instance_id.clone())
                .or_else(|| g.and_then(|g| g.instance_id.clone())),
            network_interface_id: t.map(|t| t.network_interface_id.clone()),
            private_ip_address: t.map(|t| t.private_ip.clone()),
            since: Some(since),
        }
    })
}

/// `status.address`: as EC2 reports it; when EC2 was not read, the old one, else the spec's.
fn address_status(i: &StatusInputs<'_>, old: Option<&AddressStatus>) -> Option<AddressStatus> {
    match i.current {
        Some(a) => Some(AddressStatus {
            allocation_id: Some(a.allocation_id.clone()),
            public_ip: Some(a.public_ip.clone()),
            association_id: a.association_id.clone(),
            network_interface_id: a.network_interface_id.clone(),
            private_ip_address: a.private_ip.clone(),
        }),
        None => old.cloned().or_else(|| {
            Some(AddressStatus {
                allocation_id: i.f.spec.allocation_id.clone(),
                public_ip: i.f.spec.public_ip.clone(),
                ..Default::default()
            })
        }),
    }
}

/// `status.nodes`: one record per node with failures; banned at the migration threshold,
/// until `failureTimeout` after the last failure when there is one. At most
/// [`MAX_NODE_RECORDS`]: banned records first, then the latest failures; in name order.
fn node_records(failures: &BTreeMap<String, FailureRecord>, policy: &Policy) -> Vec<NodeRecord> {
    let mut records: Vec<NodeRecord> = failures
        .iter()
        .filter(|(node, _)| node.len() <= MAX_NODE_NAME_BYTES)
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
                last_failure_reason: Some(bounded(
                    format!("{}: {}", rec.kind.as_str(), rec.reason),
                    MAX_FAILURE_REASON_BYTES,
                )),
                banned,
                banned_until,
            }
        })
        .collect();
    if records.len() > MAX_NODE_RECORDS {
        records.sort_by(|a, b| {
            (b.banned, &b.last_failure, &a.node).cmp(&(a.banned, &a.last_failure, &b.node))
        });
        records.truncate(MAX_NODE_RECORDS);
        records.sort_by(|a, b| a.node.cmp(&b.node));
    }
    records
}

#[cfg(test)]
mod count_tests {
    use super::*;

    fn record(to: &str, reason: ChangeReason) -> FailoverRecord {
        FailoverRecord {
            from: Some("a".into()),
            to: to.into(),
            reason: reason.as_str().into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_pinned_move_is_counted_apart_from_failovers() {
        let old = FloatingElasticIPStatus {
            failover_count: 3,
            last_failover: Some(record("b", ChangeReason::HolderDead)),
            ..Default::default()
        };
        let c = counted(
            &old,
            Some((record("c", ChangeReason::Pinned), ChangeReason::Pinned)),
        );
        assert_eq!((c.failover_count, c.planned_move_count), (3, 1));
        assert_eq!(c.last_failover.map(|r| r.to).as_deref(), Some("b"));
        assert_eq!(c.last_planned_move.map(|r| r.to).as_deref(), Some("c"));
    }

    #[test]
    fn failures_and_policies_are_failovers() {
        for reason in [
            ChangeReason::HolderDead,
            ChangeReason::HolderIneligible,
            ChangeReason::HolderRemoved,
            ChangeReason::HolderBanned,
            ChangeReason::Drift,
            ChangeReason::AssociateFailed,
            ChangeReason::Failback,
        ] {
            assert!(!is_planned_move(reason), "{reason:?}");
            let c = counted(
                &FloatingElasticIPStatus::default(),
                Some((record("b", reason), reason)),
            );
            assert_eq!(
                (c.failover_count, c.planned_move_count),
                (1, 0),
                "{reason:?}"
            );
        }
        assert!(is_planned_move(ChangeReason::Pinned));
    }

    #[test]
    fn nothing_completed_keeps_the_counts() {
        let old = FloatingElasticIPStatus {
            failover_count: 2,
            planned_move_count: 5,
            ..Default::default()
        };
        let c = counted(&old, None);
        assert_eq!((c.failover_count, c.planned_move_count), (2, 5));
    }
}
