//! The pure decision core: who should hold the address, and what (if anything) to do to EC2.
//!
//! Everything the controller knows on one reconcile goes in as an [`Input`] (node health and
//! eligibility, the resolved targets, the per-FEIP holder Lease, failure counts, the last
//! DescribeAddresses answer, the policy from the spec and the current time); [`decide`] returns
//! a [`Decision`]. There is no IO, no clock and no async here, so every rule of the failover
//! spec (`failover-semantics.md`, sections 2 and 3) is checked by table and property tests.
//!
//! The controller applies a decision in this order: write the holder to the Lease (and the
//! change as event + status), apply [`Decision::apply_to_failures`] to the failure records, and
//! only then perform the [`Action`]. A holder change is thus durable before EC2 is touched.
//!
//! Key semantics (Pacemaker's, made safer):
//! - Unknown is not failure: an unknown address observation or unknown node health never moves
//!   the address and never counts a failure.
//! - Stickiness: with `FailbackPolicy::Never` a healthy holder keeps the address.
//! - Failure counts (drift, definite associate failures) ban a node at the migration threshold;
//!   they expire after `failure_timeout`. Node loss is not a resource failure and is not counted.
//! - No needless remaps: an association is only requested when the address is known not to be
//!   on the holder's target already; an existing association to a valid candidate is adopted.
//! - Ownership guard: an address associated outside the candidate set is never taken unless
//!   takeover is allowed.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use crate::crd::FailbackPolicy;

mod model;
pub use model::{
    Action, AddressObservation, CandidateView, ChangeReason, Decision, Eligibility, FailureKind,
    FailureRecord, Finding, HolderChange, Input, NodeHealth, Policy, Target, UnknownChangeReason,
};

impl Decision {
    /// Applies this decision's failure bookkeeping: drops expired records, then counts the
    /// recorded failure (a definite associate failure is recorded by the controller itself
    /// with [`record_failure`] and a ban threshold, since only it sees the EC2 error).
    pub fn apply_to_failures(
        &self,
        failures: &mut BTreeMap<String, FailureRecord>,
        now: Timestamp,
    ) {
        for node in &self.expire_failures {
            failures.remove(node);
        }
        if let Some((node, kind)) = &self.record_failure {
            record_failure(failures, node, now, *kind, kind.description(), None);
        }
    }
}

/// Counts one failure of `node`. With `ban_threshold: Some(t)` the count becomes at least `t`,
/// so a definite associate failure bans the node at once (start-failure-is-fatal).
pub fn record_failure(
    failures: &mut BTreeMap<String, FailureRecord>,
    node: &str,
    now: Timestamp,
    kind: FailureKind,
    reason: impl Into<String>,
    ban_threshold: Option<u32>,
) {
    let reason = reason.into();
    let record = failures
        .entry(node.to_owned())
        .and_modify(|r| {
            r.count = r.count.saturating_add(1);
            r.last_failure = now;
            r.kind = kind;
            r.reason.clone_from(&reason);
        })
        .or_insert_with(|| FailureRecord {
            count: 1,
            last_failure: now,
            kind,
            reason: reason.clone(),
        });
    if let Some(t) = ban_threshold {
        record.count = record.count.max(t);
    }
}

/// `since + d <= now`; an overflowing sum is "never".
fn elapsed(since: Timestamp, d: Duration, now: Timestamp) -> bool {
    since.checked_add(d).is_ok_and(|t| t <= now)
}

/// An optional expiry is active until it is reached.
fn active(expires_at: Option<Timestamp>, now: Timestamp) -> bool {
    expires_at.is_none_or(|e| now < e)
}

fn threshold(policy: &Policy) -> u32 {
    policy.migration_threshold.max(1)
}

fn failure_expired(record: &FailureRecord, policy: &Policy, now: Timestamp) -> bool {
    policy
        .failure_timeout
        .is_some_and(|t| elapsed(record.last_failure, t, now))
}

/// The failure record of `node` unless it has expired.
fn live_failure<'a>(input: &'a Input, node: &str) -> Option<&'a FailureRecord> {
    input
        .failures
        .get(node)
        .filter(|r| !failure_expired(r, &input.policy, input.now))
}

fn spec_banned(input: &Input, node: &str) -> bool {
    input
        .policy
        .bans
        .iter()
        .any(|(n, exp)| n == node && active(*exp, input.now))
}

/// The live failure record of `node` if it has reached the migration threshold.
fn failure_ban<'a>(input: &'a Input, node: &str) -> Option<&'a FailureRecord> {
    live_failure(input, node).filter(|r| r.count >= threshold(&input.policy))
}

/// The first retry of a holder banned by a failed associate, and the longest pause between
/// retries: kept because nobody else is eligible, it is retried 1 s, 2 s, 4 s, ... up to 30 s
/// after its last failure, never in a loop that would spend the account's mutating budget.
pub const ASSOCIATE_RETRY_FIRST: Duration = Duration::from_secs(1);
pub const ASSOCIATE_RETRY_MAX: Duration = Duration::from_secs(30);

/// How long after its last failure a node banned by failed associates may be tried again:
/// [`ASSOCIATE_RETRY_FIRST`] doubling with each failure past the threshold, at most
/// [`ASSOCIATE_RETRY_MAX`].
pub fn associate_retry_delay(count: u32, threshold: u32) -> Duration {
    let past = count.saturating_sub(threshold).min(16);
    ASSOCIATE_RETRY_FIRST
        .saturating_mul(1u32 << past)
        .min(ASSOCIATE_RETRY_MAX)
}

/// A holder banned by failed associates whose retry time has not come (`plan_association`
/// leaves it alone until then).
fn associate_retry_pending(input: &Input, node: &str) -> bool {
    failure_ban(input, node)
        .filter(|r| r.kind == FailureKind::AssociateFailed)
        .is_some_and(|r| {
            let delay = associate_retry_delay(r.count, threshold(&input.policy));
            !elapsed(r.last_failure, delay, input.now)
        })
}

/// A node is banned by an unexpired spec ban, or by an unexpired failure count at the
/// migration threshold.
pub fn is_banned(input: &Input, node: &str) -> bool {
    spec_banned(input, node) || failure_ban(input, node).is_some()
}

/// The pinned node, while the pin has not expired.
pub fn active_pin(input: &Input) -> Option<&str> {
    input
        .policy
        .pin
        .as_ref()
        .filter(|(_, exp)| active(*exp, input.now))
        .map(|(n, _)| n.as_str())
}

/// Candidates from most to least preferred: an active pin first, then priority descending;
/// equal priorities keep spec list order (stable sort).
pub fn preference_order(input: &Input) -> Vec<&CandidateView> {
    let pin = active_pin(input);
    let mut order: Vec<&CandidateView> = input.candidates.iter().collect();
    order.sort_by_key(|c| (Some(c.node.as_str()) != pin, Reverse(c.priority)));
    order
}

/// May `c` be chosen by a new election or a move? Only a definitely healthy, eligible,
/// unbanned node with a resolved target: unknown health is not enough to move *to* a node.
pub fn eligible_for_election(input: &Input, c: &CandidateView) -> bool {
    c.eligibility == Eligibility::Eligible
        && c.health == NodeHealth::Healthy
        && c.target.is_some()
        && !is_banned(input, &c.node)
}

/// May an existing association to `c` be adopted without a remap? Like election, but unknown
/// health is accepted: the address is already there and unknown is not failure.
pub fn adoption_valid(input: &Input, c: &CandidateView) -> bool {
    c.eligibility == Eligibility::Eligible
        && !matches!(c.health, NodeHealth::Dead { .. })
        && c.target.is_some()
        && !is_banned(input, &c.node)
}

fn find<'a>(input: &'a Input, node: &str) -> Option<&'a CandidateView> {
    input.candidates.iter().find(|c| c.node == node)
}

/// Is the address on this target (same ENI, and the same private IP when EC2 reports one)?
fn on_target(address: &AddressObservation, target: &Target) -> bool {
    match address {
        AddressObservation::Associated {
            network_interface_id,
            private_ip,
            ..
        } => {
            *network_interface_id == target.network_interface_id
                && private_ip
                    .as_deref()
                    .is_none_or(|ip| ip == target.private_ip)
        }
        _ => false,
    }
}

fn associated_eni(address: &AddressObservation) -> Option<&str> {
    match address {
        AddressObservation::Associated {
            network_interface_id,
            ..
        } => Some(network_interface_id),
        _ => None,
    }
}

/// The ENI the address is on, if that ENI is not the resolved target of any candidate.
/// Ownership is judged against resolved targets only: an ENI we cannot attribute is treated
/// as foreign (the safe side of the ownership guard). The controller keeps the last known
/// target of a node so that a transient EC2 error does not make its own ENI look foreign.
fn foreign_eni(input: &Input) -> Option<&str> {
    associated_eni(&input.address).filter(|eni| {
        !input.candidates.iter().any(|c| {
            c.target
                .as_ref()
                .is_some_and(|t| t.network_interface_id == *eni)
        })
    })
}

/// Why `c` cannot be elected, or `None` if it can.
fn ineligible_reason(input: &Input, c: &CandidateView) -> Option<String> {
    let why = match (&c.eligibility, &c.health) {
        (Eligibility::Standby, _) => "standby".to_owned(),
        (Eligibility::Cordoned, _) => "cordoned".to_owned(),
        (Eligibility::Unresolvable { reason }, _) => format!("unresolvable ({reason})"),
        (Eligibility::NoFreeSlot { reason }, _) => reason.clone(),
        (_, NodeHealth::Dead { reason }) => format!("dead ({reason})"),
        (_, NodeHealth::Unknown { reason }) => format!("health unknown ({reason})"),
        (Eligibility::Eligible, NodeHealth::Healthy) => {
            if spec_banned(input, &c.node) {
                "banned".to_owned()
            } else if let Some(r) = failure_ban(input, &c.node) {
                format!(
                    "{} failure(s), last {}, reached migration threshold {}",
                    r.count,
                    r.kind,
                    threshold(&input.policy)
                )
            } else if c.target.is_none() {
                "instance/ENI not resolved yet".to_owned()
            } else {
                return None;
            }
        }
    };
    Some(why)
}

/// A node banned by a live associate failure (for `onAssociateFailure: Stop`).
fn associate_failure_ban(input: &Input) -> Option<&str> {
    input.candidates.iter().find_map(|c| {
        failure_ban(input, &c.node)
            .filter(|r| r.kind == FailureKind::AssociateFailed)
            .map(|_| c.node.as_str())
    })
}

/// Decides the holder and the EC2 action for one reconcile. Pure: same input, same decision.
pub fn decide(input: &Input) -> Decision {
    let policy = &input.policy;
    let expire_failures = input
        .failures
        .iter()
        .filter(|(_, r)| failure_expired(r, policy, input.now))
        .map(|(n, _)| n.clone())
        .collect();
    let mut planner = Planner {
        input,
        known: !matches!(input.address, AddressObservation::Unknown { .. }),
        foreign: foreign_eni(input),
        out: Decision {
            holder: input.holder.clone(),
            change: None,
            record_failure: None,
            expire_failures,
            action: Action::None,
            notes: Vec::new(),
        },
    };
    planner.common_findings();
    if policy.observe_only {
        planner.observe();
    } else if policy.stopped {
        planner.stop();
    } else {
        planner.manage();
    }
    planner.out
}

struct Planner<'a> {
    input: &'a Input,
    /// The address observation is not Unknown.
    known: bool,
    /// The address is on an ENI outside the candidate set.
    foreign: Option<&'a str>,
    out: Decision,
}

impl<'a> Planner<'a> {
    fn note(&mut self, finding: Finding) {
        self.out.notes.push(finding);
    }

    fn set_holder(&mut self, to: Option<&str>, reason: ChangeReason) {
        let to = to.map(str::to_owned);
        if to == self.input.holder {
            return;
        }
        self.out.change = Some(HolderChange {
            from: self.input.holder.clone(),
            to: to.clone(),
            reason,
        });
        self.out.holder = to;
    }

    /// The ownership guard is in force: foreign ENI and no takeover allowed.
    fn guarded(&self) -> bool {
        self.foreign.is_some() && !self.input.policy.allow_takeover
    }

    /// The most preferred candidate that may be elected, other than `except`.
    fn best_eligible(&self, except: Option<&str>) -> Option<&'a CandidateView> {
        let input = self.input;
        preference_order(input)
            .into_iter()
            .find(|c| Some(c.node.as_str()) != except && eligible_for_election(input, c))
    }

    /// Why nobody other than `except` can be elected.
    fn why_none(&self, except: Option<&str>) -> String {
        let parts: Vec<String> = self
            .input
            .candidates
            .iter()
            .filter(|c| Some(c.node.as_str()) != except)
            .filter_map(|c| ineligible_reason(self.input, c).map(|w| format!("{}: {w}", c.node)))
            .collect();
        if parts.is_empty() {
            if except.is_some() {
                "no other candidate".to_owned()
            } else {
                "no candidates".to_owned()
            }
        } else {
            parts.join("; ")
        }
    }

    fn common_findings(&mut self) {
        if let AddressObservation::Unknown { reason } = &self.input.address {
            self.note(Finding::Ec2Unknown {
                reason: reason.clone(),
            });
        }
        if let Some(h) = self.input.holder.as_deref()
            && let Some(c) = find(self.input, h)
            && let NodeHealth::Unknown { reason } = &c.health
        {
            self.note(Finding::HolderHealthUnknown {
                node: h.to_owned(),
                reason: reason.clone(),
            });
        }
    }

    /// The holder's resolved target, if the address is definitely not on it.
    fn holder_off_target(&self) -> Option<&'a Target> {
        let input = self.input;
        let h = input.holder.as_deref()?;
        let target = find(input, h)?.target.as_ref()?;
        (self.known && !on_target(&input.address, target)).then_some(target)
    }

    fn drift_finding(&self, node: &str) -> Finding {
        Finding::DriftObserved {
            node: node.to_owned(),
            network_interface_id: associated_eni(&self.input.address).map(str::to_owned),
        }
    }

    /// ObserveOnly: the holder and EC2 are left alone; only report.
    fn observe(&mut self) {
        if let Some(eni) = self.foreign {
            self.note(Finding::ForeignAssociation {
                network_interface_id: eni.to_owned(),
            });
        }
        if let Some(h) = self.input.holder.as_deref()
            && self.holder_off_target().is_some()
        {
            let finding = self.drift_finding(h);
            self.note(finding);
        }
    }

    /// Stopped: hold no node; release the address if it is on one of ours. An address on a
    /// foreign ENI is not ours to release; an unknown one is retried on a later pass.
    fn stop(&mut self) {
        self.set_holder(None, ChangeReason::Stopped);
        // Associated and not foreign = on the resolved target ENI of one of the candidates.
        if let AddressObservation::Associated { association_id, .. } = &self.input.address
            && self.foreign.is_none()
        {
            self.out.action = Action::Disassociate {
                association_id: association_id.clone(),
            };
        }
    }

    fn manage(&mut self) {
        if let Some(eni) = self.foreign
            && self.guarded()
        {
            self.note(Finding::ForeignAssociation {
                network_interface_id: eni.to_owned(),
            });
        }
        match self.input.holder.as_deref() {
            None => self.elect(),
            Some(h) => self.keep_or_move(h),
        }
        self.plan_association();
    }

    /// No holder: adopt an existing association to a valid candidate (no remap), otherwise
    /// elect the most preferred eligible node. Both need to know where the address is, so
    /// nothing happens while the address is unknown.
    fn elect(&mut self) {
        let input = self.input;
        if !self.known {
            return;
        }
        if let Some(eni) = associated_eni(&input.address)
            && let Some(c) = input.candidates.iter().find(|c| {
                c.target
                    .as_ref()
                    .is_some_and(|t| t.network_interface_id == eni)
            })
            && adoption_valid(input, c)
        {
            self.set_holder(Some(&c.node), ChangeReason::Adopted);
            return;
        }
        if self.guarded() {
            return;
        }
        if input.policy.stop_on_associate_failure
            && let Some(node) = associate_failure_ban(input)
        {
            self.note(Finding::StoppedAfterAssociateFailure {
                node: node.to_owned(),
            });
            return;
        }
        match self.best_eligible(None) {
            Some(c) => self.set_holder(Some(&c.node), ChangeReason::Elected),
            None => {
                let why = self.why_none(None);
                self.note(Finding::NoEligibleCandidate { why });
            }
        }
    }

    /// Why the current holder must give the address up, from definite facts only.
    fn forced_reason(&self, h: &str) -> Option<ChangeReason> {
        let input = self.input;
        let Some(c) = find(input, h) else {
            return Some(ChangeReason::HolderRemoved);
        };
        if matches!(c.health, NodeHealth::Dead { .. }) {
            Some(ChangeReason::HolderDead)
        } else if c.eligibility != Eligibility::Eligible {
            Some(ChangeReason::HolderIneligible)
        } else if spec_banned(input, h) {
            Some(ChangeReason::HolderBanned)
        } else {
            failure_ban(input, h).map(|r| match r.kind {
                FailureKind::AssociateFailed => ChangeReason::AssociateFailed,
                FailureKind::Drift => ChangeReason::HolderBanned,
            })
        }
    }

    /// There is a holder: keep it unless a definite fact forces a move (dead, ineligible,
    /// banned, drift at the threshold) or an optional move applies (pin, failback).
    ///
    /// Forced moves are decided even while the address is unknown or foreign: they rest on
    /// definite Kubernetes facts, and the controller writes the new holder to the Lease first
    /// and associates on a later pass once EC2 answers (and only if the guard allows). Drift,
    /// pin and failback need the address state, so they wait for it.
    fn keep_or_move(&mut self, h: &str) {
        let input = self.input;
        let mut forced = self.forced_reason(h);
        if forced.is_none()
            && input.holder_confirmed
            && !self.guarded()
            && self.holder_off_target().is_some()
        {
            // Monitor failure (on-fail=restart): count it; below the threshold the address is
            // re-associated to the holder, at the threshold the holder is banned and moves.
            let finding = self.drift_finding(h);
            self.note(finding);
            self.out.record_failure = Some((h.to_owned(), FailureKind::Drift));
            let count = live_failure(input, h).map_or(0, |r| r.count);
            if count.saturating_add(1) >= threshold(&input.policy) {
                forced = Some(ChangeReason::Drift);
            }
        }
        if let Some(reason) = forced {
            if reason == ChangeReason::AssociateFailed && input.policy.stop_on_associate_failure {
                self.note(Finding::StoppedAfterAssociateFailure { node: h.to_owned() });
                self.set_holder(None, reason);
                return;
            }
            match self.best_eligible(Some(h)) {
                Some(c) => self.set_holder(Some(&c.node), reason),
                None => {
                    // Nothing better: keep the holder (never leave the address unowned just
                    // because the holder is imperfect) and say why.
                    let why = format!(
                        "holder {h} should move ({reason}) but nobody else is eligible: {}",
                        self.why_none(Some(h))
                    );
                    self.note(Finding::NoEligibleCandidate { why });
                }
            }
            return;
        }
        if !self.known || self.guarded() {
            return;
        }
        if let Some(p) = active_pin(input)
            && p != h
            && let Some(c) = find(input, p)
            && eligible_for_election(input, c)
        {
            self.set_holder(Some(p), ChangeReason::Pinned);
            return;
        }
        let holder_healthy = find(input, h).is_some_and(|c| c.health == NodeHealth::Healthy);
        if input.policy.failback == FailbackPolicy::Immediate && holder_healthy {
            // The most preferred node ahead of the holder that is eligible and has stayed
            // healthy for the hold-down (a flapping node does not pull the address back).
            let better = preference_order(input)
                .into_iter()
                .take_while(|c| c.node != h)
                .find(|c| {
                    eligible_for_election(input, c)
                        && c.healthy_since
                            .is_some_and(|s| elapsed(s, input.policy.hold_down, input.now))
                });
            if let Some(c) = better {
                self.set_holder(Some(&c.node), ChangeReason::Failback);
            }
        }
    }

    /// Associate the decided holder when the address is known not to be on its target.
    /// Never while the address is unknown, never against the ownership guard, and never to a
    /// dead holder (kept only because nobody else is eligible: a remap would be wasted); a
    /// holder banned by failed associates only once its retry time came
    /// ([`associate_retry_delay`]).
    fn plan_association(&mut self) {
        let input = self.input;
        if !self.known || self.guarded() {
            return;
        }
        let Some(h) = self.out.holder.as_deref() else {
            return;
        };
        let Some(c) = find(input, h) else {
            return;
        };
        if matches!(c.health, NodeHealth::Dead { .. }) {
            return;
        }
        if let Eligibility::NoFreeSlot { .. } = c.eligibility {
            // Kept because nobody else is eligible; associating would displace another
            // address from its private IP.
            return;
        }
        let Some(target) = &c.target else {
            let node = h.to_owned();
            self.note(Finding::WaitingForTarget { node });
            return;
        };
        if !on_target(&input.address, target) && associate_retry_pending(input, h) {
            // Banned by failed associates and kept because nobody else is eligible: retried
            // with backoff, not on every pass (each status write of a failure is a pass).
            return;
        }
        if !on_target(&input.address, target) {
            self.out.action = Action::Associate {
                node: h.to_owned(),
                target: target.clone(),
            };
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod props;
