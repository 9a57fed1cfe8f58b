//! Planning (no client): a decision becomes the ordered effects of one reconcile (the
//! holder-Lease write, then at most one EC2 call), and the outcome of those effects becomes
//! the follow-up: Lease confirmation, the failover record, the pin to clear, when to look
//! again.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;

use crate::aws::{AddressInfo, Ec2Error};
use crate::crd::{FailoverRecord, FloatingElasticIP, FloatingElasticIPStatus};
use crate::decide::{
    Action, AddressObservation, ChangeReason, Decision, FailureRecord, NodeHealth, Target,
};

use super::context::PendingFailover;
use super::holder_lease::{
    CONFIRMED_ANNOTATION, FAILOVER_FROM_ANNOTATION, FailoverStart, LeaseRecord, REASON_ANNOTATION,
    already_recorded, lease_duration, pending_from_lease, written_in,
};
use super::observe::Observed;
use super::slots::SlotRecord;
use super::spec::ResolvedSpec;

/// An event to publish: type, reason, note.
pub(super) type EventNote = (EventType, &'static str, String);

/// A holder change to record before any EC2 call.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct PlannedChange {
    pub(super) from: Option<String>,
    pub(super) to: Option<String>,
    pub(super) reason: ChangeReason,
    /// When the previous holder's failure was detected (now, for other changes).
    pub(super) detected_at: Timestamp,
    /// The event published alongside the EC2 action: reason and note.
    pub(super) event: (&'static str, String),
}

impl PlannedChange {
    /// The failover to complete once the address is confirmed on the new holder.
    pub(super) fn pending(&self) -> Option<PendingFailover> {
        self.to.as_ref().map(|to| PendingFailover {
            from: self.from.clone(),
            to: to.clone(),
            reason: self.reason,
            detected_at: self.detected_at,
        })
    }
}

/// The one EC2 call of a reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Ec2Call {
    Associate {
        node: String,
        allocation_id: String,
        target: Target,
    },
    Disassociate {
        association_id: String,
    },
}

/// The effects of one decision, in the order they are carried out.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Plan {
    /// A holder change to write to the Lease first.
    pub(super) change: Option<PlannedChange>,
    /// No change, but the holder Lease does not exist yet: create it.
    pub(super) create_lease: bool,
    pub(super) ec2: Option<Ec2Call>,
    /// The holder once the Lease is written, whether its association is confirmed, and the
    /// Lease's transition count.
    pub(super) holder: Option<String>,
    pub(super) confirmed: bool,
    pub(super) transitions: i32,
    /// No change of holder, but its slot moves (see [`Retarget`]).
    pub(super) retarget: Option<Retarget>,
}

/// The holder stays and its slot moves: an edited `privateIpAddress` or
/// `networkInterface.deviceIndex`, its private IP given up to another address, or a slot not
/// recorded yet. The Lease records the new slot (unconfirmed) before the address moves there;
/// this is a planned move, not a failure.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Retarget {
    /// The reason the Lease already carries.
    pub(super) reason: String,
    /// A failover the Lease still carries.
    pub(super) failover: Option<(String, Timestamp)>,
    /// The slot the Lease recorded before (`None`: not recorded yet).
    pub(super) from: Option<SlotRecord>,
}

impl Plan {
    /// What the holder Lease records for the planned change, retarget or creation; `slot` is
    /// the holder's slot (see [`Observed::slot_of`]).
    pub(super) fn lease_record(
        &self,
        spec: &ResolvedSpec,
        slot: Option<SlotRecord>,
    ) -> Option<LeaseRecord<'_>> {
        let duration = lease_duration(spec);
        if let Some(r) = &self.retarget {
            return Some(LeaseRecord {
                holder: self.holder.as_deref(),
                transitions: self.transitions,
                confirmed: false,
                reason: &r.reason,
                failover: r.failover.as_ref().map(|(from, at)| FailoverStart {
                    from,
                    detected_at: *at,
                }),
                duration,
                slot,
            });
        }
        if let Some(c) = &self.change {
            return Some(LeaseRecord {
                holder: c.to.as_deref(),
                transitions: self.transitions,
                confirmed: false,
                reason: c.reason.as_str(),
                failover: c
                    .from
                    .as_deref()
                    .filter(|_| c.to.is_some())
                    .map(|from| FailoverStart {
                        from,
                        detected_at: c.detected_at,
                    }),
                duration,
                slot: slot.filter(|_| c.to.is_some()),
            });
        }
        self.create_lease.then_some(LeaseRecord {
            holder: self.holder.as_deref(),
            transitions: 0,
            confirmed: false,
            reason: "Created",
            failover: None,
            duration,
            slot,
        })
    }
}

/// The events a decision's failure bookkeeping calls for (`failures` already updated).
pub(super) fn failure_events(
    decision: &Decision,
    failures: &BTreeMap<String, FailureRecord>,
    threshold: u32,
) -> Vec<EventNote> {
    let Some((node, kind)) = &decision.record_failure else {
        return Vec::new();
    };
    let count = failures.get(node).map_or(0, |r| r.count);
    let mut events = vec![(
        EventType::Warning,
        "Drift",
        format!("address is not on holder {node} ({kind}); failure {count} of {threshold}"),
    )];
    if count >= threshold {
        events.push((
            EventType::Warning,
            "Banned",
            format!(
                "{node} reached the migration threshold ({count}) and is banned for this address"
            ),
        ));
    }
    events
}

/// The effects of `decision`: the Lease write first (a change, or the Lease's creation),
/// then the EC2 call. Nothing is written for an observe-only object.
pub(super) fn plan(
    spec: &ResolvedSpec,
    observed: &Observed,
    decision: &Decision,
    lease: Option<&Lease>,
    now: Timestamp,
) -> Plan {
    let policy = &spec.policy;
    let holder = observed.input.holder.clone();
    let mut plan = Plan {
        change: None,
        create_lease: false,
        ec2: None,
        holder: holder.clone(),
        confirmed: observed.input.holder_confirmed,
        transitions: observed.transitions,
        retarget: None,
    };
    if policy.observe_only {
        return plan;
    }
    match &decision.change {
        Some(change) => {
            if change.is_failover() && change.from != change.to {
                plan.transitions += 1;
            }
            let detected_at = change
                .from
                .as_ref()
                .and_then(|from| observed.candidates.iter().find(|c| &c.view.node == from))
                .and_then(|c| c.dead_since)
                .unwrap_or(now);
            let event_reason = if change.is_failover() {
                "Failover"
            } else if change.to.is_none() {
                "HolderReleased"
            } else {
                "HolderElected"
            };
            let note = format!(
                "holder {} -> {} ({})",
                change.from.as_deref().unwrap_or("none"),
                change.to.as_deref().unwrap_or("none"),
                change.reason.as_str()
            );
            plan.holder = change.to.clone();
            plan.confirmed = false;
            plan.change = Some(PlannedChange {
                from: change.from.clone(),
                to: change.to.clone(),
                reason: change.reason,
                detected_at,
                event: (event_reason, note),
            });
        }
        None if lease.is_none() => plan.create_lease = !policy.stopped,
        None => plan.retarget = retarget(observed, lease, holder.as_deref()),
    }
    plan.ec2 = match &decision.action {
        Action::Associate { node, target } => {
            observed.address.as_ref().map(|a| Ec2Call::Associate {
                node: node.clone(),
                allocation_id: a.allocation_id.clone(),
                target: target.clone(),
            })
        }
        Action::Disassociate {
            association_id: Some(id),
        } => Some(Ec2Call::Disassociate {
            association_id: id.clone(),
        }),
        _ => None,
    };
    plan
}

/// A holder change on the Lease that an earlier leader wrote and never confirmed, which this
/// leader (in term `epoch`) re-decides instead of carrying out (finding M2: a deposed
/// leader's Lease write held up in a partition lands after the handover, its
/// resourceVersion still current). The change is taken back when this leader's own view
/// contradicts it: the previous holder is healthy, the address is still on it, and deciding
/// from there (previous holder confirmed) changes nothing. Returns that previous holder and
/// the decision taken from there.
///
/// A change this leader cannot contradict (the previous holder dead or of unknown health,
/// the address moved already, a pin asking for it) is carried out as before: a leader that
/// died mid-failover is completed by its successor. A Lease without a term (written before
/// terms were recorded) is not re-decided.
pub(super) fn superseded(
    observed: &Observed,
    lease: Option<&Lease>,
    epoch: Option<i32>,
) -> Option<(String, Decision)> {
    let (epoch, lease) = (epoch?, lease?);
    let annotations = lease.metadata.annotations.as_ref()?;
    let confirmed = annotations
        .get(CONFIRMED_ANNOTATION)
        .is_some_and(|v| v == "true");
    if confirmed || written_in(lease)? >= epoch {
        return None;
    }
    let from = annotations.get(FAILOVER_FROM_ANNOTATION)?;
    if observed.input.holder.as_ref() == Some(from) {
        return None;
    }
    let previous = observed.candidates.iter().find(|c| &c.view.node == from)?;
    let on_previous = previous
        .view
        .target
        .as_ref()
        .is_some_and(|t| observed.address.as_ref().is_some_and(|a| a.is_on(t)));
    if previous.view.health != NodeHealth::Healthy || !on_previous {
        return None;
    }
    let mut before = observed.input.clone();
    before.holder = Some(from.clone());
    before.holder_confirmed = true;
    let d = crate::decide::decide(&before);
    (d.change.is_none() && d.action == Action::None).then(|| (from.clone(), d))
}

/// Takes a superseded change back (see [`superseded`]): the Lease names `previous` again,
/// which holds the address already, so there is no EC2 call; the change is no failover and
/// no planned move, and it is confirmed in the same pass.
pub(super) fn take_back(plan: &mut Plan, previous: String, epoch: Option<i32>, now: Timestamp) {
    let written_by = plan.holder.clone().unwrap_or_else(|| "none".into());
    let note = format!(
        "holder {written_by} -> {previous} (Superseded): an earlier leader's change {previous} -> {written_by} was never confirmed; leader term {} sees {previous} healthy and holding the address, so it is not carried out",
        epoch.map_or("unknown".into(), |e| e.to_string())
    );
    plan.transitions += 1;
    plan.holder = Some(previous.clone());
    plan.confirmed = false;
    plan.retarget = None;
    plan.create_lease = false;
    plan.ec2 = None;
    plan.change = Some(PlannedChange {
        // No previous holder on record: the change is not a failover to complete.
        from: None,
        to: Some(previous),
        reason: ChangeReason::Superseded,
        detected_at: now,
        event: ("Superseded", note),
    });
}

/// The holder's slot moves (see [`Retarget`]): its slot differs from the one its Lease
/// records, or the Lease records none and the association is not confirmed (a confirmed
/// Lease without a slot, written before slots existed, gets it with its next renewal).
fn retarget(observed: &Observed, lease: Option<&Lease>, holder: Option<&str>) -> Option<Retarget> {
    let slot = observed.slot_of(holder)?;
    let moved = match &observed.lease_slot {
        Some(recorded) => *recorded != slot,
        None => !observed.input.holder_confirmed,
    };
    if !moved {
        return None;
    }
    let annotations = lease.and_then(|l| l.metadata.annotations.as_ref());
    Some(Retarget {
        reason: annotations
            .and_then(|a| a.get(REASON_ANNOTATION).cloned())
            .unwrap_or_else(|| "Adopted".into()),
        failover: pending_from_lease(lease).and_then(|p| Some((p.from?, p.detected_at))),
        from: observed.lease_slot.clone(),
    })
}

/// What the EC2 step did.
#[derive(Clone, Debug, Default)]
pub(super) struct Outcome {
    /// The address as it is now (confirmed after a mutation).
    pub(super) current: Option<AddressInfo>,
    pub(super) error: Option<Ec2Error>,
    /// Why the release of the address is blocked (a failed disassociate).
    pub(super) blocked: Option<String>,
}

/// The follow-up of a reconcile once its effects ran.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Settlement {
    /// The address is on the holder's target interface.
    pub(super) holder_on_target: bool,
    pub(super) holder_healthy: bool,
    /// Write the Lease again: to confirm the association, or to renew it.
    pub(super) confirm_lease: bool,
    /// A `pin.clearWhenDone` pin whose node now holds the address.
    pub(super) clear_pin: Option<String>,
}

/// Confirmation bookkeeping: whether the holder has the address, and what to write.
/// `renewed_at` is the holder Lease's last renewal.
pub(super) fn settle(
    f: &FloatingElasticIP,
    spec: &ResolvedSpec,
    observed: &Observed,
    plan: &Plan,
    current: Option<&AddressInfo>,
    renewed_at: Option<Timestamp>,
    now: Timestamp,
) -> Settlement {
    let holder = plan.holder.as_deref();
    let holder_facts = holder.and_then(|h| observed.candidates.iter().find(|c| c.view.node == h));
    let holder_on_target = current.is_some_and(|info| {
        holder_facts
            .and_then(|c| c.view.target.as_ref())
            .is_some_and(|t| info.is_on(t))
    });
    let holder_healthy = holder_facts.is_some_and(|c| c.view.health == NodeHealth::Healthy);
    let holder_dead = holder_facts.is_none_or(|c| matches!(c.view.health, NodeHealth::Dead { .. }));
    let renew_due = renewed_at.is_none_or(|t| {
        now.duration_since(t)
            > jiff::SignedDuration::try_from(lease_duration(spec) / 2).unwrap_or_default()
    });
    // What the holder Lease promises (docs/semantics.md): a renewal vouches for the last
    // confirmed state while nothing contradicts it. An unknown (EC2 not answering, the
    // holder's health unreadable) is no contradiction, so it does not let the Lease lapse
    // under workloads that follow Lease expiry; a dead holder or the address seen elsewhere
    // does.
    let address_unknown =
        current.is_none() && matches!(observed.input.address, AddressObservation::Unknown { .. });
    let vouched = (holder_on_target || address_unknown) && !holder_dead;
    let confirm_lease = !spec.policy.observe_only
        && holder.is_some()
        && ((holder_on_target && !plan.confirmed) || (plan.confirmed && vouched && renew_due));
    let clear_pin = f
        .spec
        .pin
        .as_ref()
        .filter(|pin| {
            holder_on_target
                && pin.clear_when_done == Some(true)
                && holder == Some(pin.node.as_str())
        })
        .map(|pin| pin.node.clone());
    Settlement {
        holder_on_target,
        holder_healthy,
        confirm_lease,
        clear_pin,
    }
}

/// The Lease write that confirms (or renews) the holder once the address is on it. `reason`
/// is the one the Lease already carries; `pending` the failover this reconcile is about to
/// record in status.
pub(super) fn confirm_record<'a>(
    spec: &ResolvedSpec,
    plan: &'a Plan,
    reason: &'a str,
    pending: Option<&'a PendingFailover>,
    status: &FloatingElasticIPStatus,
    slot: Option<SlotRecord>,
) -> LeaseRecord<'a> {
    let holder = plan.holder.as_deref();
    // Until the status records it, the failover stays on the Lease: a successor (or this
    // process after a restart) completes it from there.
    let failover = pending
        .filter(|p| Some(p.to.as_str()) == holder && !already_recorded(status, p))
        .and_then(|p| {
            Some(FailoverStart {
                from: p.from.as_deref()?,
                detected_at: p.detected_at,
            })
        });
    LeaseRecord {
        holder,
        transitions: plan.transitions,
        confirmed: true,
        reason,
        failover,
        duration: lease_duration(spec),
        slot,
    }
}

/// A failover that completes now: its record for status, its duration and its reason.
pub(super) struct CompletedFailover {
    pub(super) record: FailoverRecord,
    pub(super) duration: Duration,
    pub(super) reason: ChangeReason,
}

/// The failover `pending` completes once the address is on `holder` (not when the status
/// already records it). Only a move from one node counts; a first election does not.
pub(super) fn completed_failover(
    pending: Option<&PendingFailover>,
    holder: Option<&str>,
    status: &FloatingElasticIPStatus,
    completed: Timestamp,
) -> Option<CompletedFailover> {
    let p = pending.filter(|p| Some(p.to.as_str()) == holder && !already_recorded(status, p))?;
    p.from.as_ref()?;
    let duration = completed.duration_since(p.detected_at).unsigned_abs();
    Some(CompletedFailover {
        record: FailoverRecord {
            from: p.from.clone(),
            to: p.to.clone(),
            reason: p.reason.as_str().to_string(),
            detected_at: Some(Time(p.detected_at)),
            completed_at: Some(Time(completed)),
            duration_seconds: Some(format!("{:.3}", duration.as_secs_f64())),
        },
        duration,
        reason: p.reason,
    })
}

/// When to look again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// In 200 ms: a target banned by this pass (move on to the next candidate), a change
    /// written to the Lease this pass (the next pass associates), or an EC2 call made whose
    /// result is not settled yet.
    Soon,
    /// After the address's next backoff step: any other EC2 error (unknown outcomes and
    /// refusals such as a failed disassociate or an unknown allocation, and a failed retry of
    /// a holder already banned). Errors of the reconcile itself back off in `error_policy`
    /// with the same counter.
    Backoff,
    /// After the address's next backoff step too: the holder is not on its target and nothing
    /// can be done about it now (EC2 unknown, the target unresolved, the address guarded or
    /// foreign, a dead holder nobody can replace, a banned holder waiting for its retry time).
    /// What would let it go on (an EC2 read, a Node or health change) triggers a reconcile;
    /// the timer is the safety net. Counts in the same counter as `Backoff`.
    Wait,
    /// After the monitor interval (jittered).
    Interval,
}

/// When to look again after a pass. `target_was_banned`: the pass associated to a node that
/// was banned already (kept because nobody else is eligible), so a refusal there is a failed
/// retry, not news that another candidate could answer.
pub(super) fn next(
    spec: &ResolvedSpec,
    decision: &Decision,
    plan: &Plan,
    outcome: &Outcome,
    holder_on_target: bool,
    target_was_banned: bool,
) -> Next {
    match &outcome.error {
        Some(e)
            if !e.is_unknown()
                && e.blames_target()
                && !target_was_banned
                && matches!(decision.action, Action::Associate { .. }) =>
        {
            Next::Soon
        }
        Some(_) => Next::Backoff,
        None if decision.change.is_some() || plan.retarget.is_some() => Next::Soon,
        None if plan.holder.is_some() && !holder_on_target && !spec.policy.observe_only => {
            if plan.ec2.is_some() {
                Next::Soon
            } else {
                Next::Wait
            }
        }
        None => Next::Interval,
    }
}
