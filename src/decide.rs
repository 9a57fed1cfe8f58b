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
use std::fmt;
use std::time::Duration;

use jiff::Timestamp;

use crate::crd::FailbackPolicy;

/// Tri-state membership of one node, as the health monitor sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeHealth {
    Healthy,
    /// Definitely gone (probe failures, NotReady, stale heartbeat, instance not running).
    Dead {
        reason: String,
    },
    /// The health signals could not be read. Not a failure: never a reason to move away.
    Unknown {
        reason: String,
    },
}

/// Whether a node may hold the address, independent of its health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Eligibility {
    Eligible,
    /// `feip.io/standby=true` (pcs node standby).
    Standby,
    /// Cordoned or draining.
    Cordoned,
    /// The node cannot be mapped to an instance/ENI (no providerID, instance not found, ...).
    /// Treated like any other ineligibility.
    Unresolvable {
        reason: String,
    },
}

/// Where the address goes when a node holds it: its ENI and private IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub instance_id: String,
    pub network_interface_id: String,
    pub private_ip: String,
}

/// One candidate node as the controller sees it right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CandidateView {
    pub node: String,
    /// Higher wins; ties keep spec list order.
    pub priority: i32,
    pub health: NodeHealth,
    pub eligibility: Eligibility,
    /// When the node last became Healthy (failback hold-down). `None` = unknown, which never
    /// satisfies a non-zero hold-down.
    pub healthy_since: Option<Timestamp>,
    /// `None` = not resolved yet (EC2 has not answered): the node cannot be associated now.
    pub target: Option<Target>,
}

/// The last DescribeAddresses answer for this address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressObservation {
    /// EC2 error, timeout or throttling: nothing is known about the association.
    Unknown {
        reason: String,
    },
    Unassociated,
    Associated {
        network_interface_id: String,
        private_ip: Option<String>,
        association_id: Option<String>,
    },
}

/// Kind of a counted failure of one node for this address (Pacemaker's fail-count).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// The address was definitely found off the confirmed holder's target (monitor failure).
    Drift,
    /// AssociateAddress definitely failed for the node (start failure; bans at once).
    AssociateFailed,
}

impl FailureKind {
    /// Stable name for status (`lastFailureReason`), events and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Drift => "Drift",
            FailureKind::AssociateFailed => "AssociateFailed",
        }
    }

    /// Inverse of [`FailureKind::as_str`], for reading the kind back from status.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Drift" => Some(FailureKind::Drift),
            "AssociateFailed" => Some(FailureKind::AssociateFailed),
            _ => None,
        }
    }

    fn description(self) -> &'static str {
        match self {
            FailureKind::Drift => "the address was found off the holder's target",
            FailureKind::AssociateFailed => "AssociateAddress failed",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Failure count of one node for this address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureRecord {
    pub count: u32,
    pub last_failure: Timestamp,
    /// Kind of the last failure (decides e.g. whether a ban came from an associate failure).
    pub kind: FailureKind,
    /// Human-readable message of the last failure.
    pub reason: String,
}

/// The spec, reduced to what placement needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub failback: FailbackPolicy,
    /// With `Immediate`: how long a more preferred node must be healthy before moving back.
    pub hold_down: Duration,
    /// Failures at which a node is banned (Pacemaker migration-threshold). 0 is treated as 1.
    pub migration_threshold: u32,
    /// How long after its last failure a record (and its ban) expires. `None` = never.
    pub failure_timeout: Option<Duration>,
    /// Take the address even from an ENI outside the candidate set.
    pub allow_takeover: bool,
    /// `targetState: Stopped`: hold no node, release the association.
    pub stopped: bool,
    /// `management: ObserveOnly`: decide nothing, report only.
    pub observe_only: bool,
    /// `onAssociateFailure: Stop`: after a definite associate failure hold no node until the
    /// operator cleans up (or the failure expires) instead of trying the next candidate.
    pub stop_on_associate_failure: bool,
    /// Pinned node with optional expiry (pcs resource move).
    pub pin: Option<(String, Option<Timestamp>)>,
    /// Banned nodes with optional expiry (pcs resource ban).
    pub bans: Vec<(String, Option<Timestamp>)>,
}

impl Default for Policy {
    /// The spec defaults: stickiness, migration-threshold 1, failures never expire, no takeover.
    fn default() -> Self {
        Policy {
            failback: FailbackPolicy::Never,
            hold_down: Duration::ZERO,
            migration_threshold: 1,
            failure_timeout: None,
            allow_takeover: false,
            stopped: false,
            observe_only: false,
            stop_on_associate_failure: false,
            pin: None,
            bans: Vec::new(),
        }
    }
}

/// Everything one decision depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    pub now: Timestamp,
    pub policy: Policy,
    /// In spec list order.
    pub candidates: Vec<CandidateView>,
    /// Currently elected holder (from the per-FEIP Lease).
    pub holder: Option<String>,
    /// The association to `holder` was confirmed at least once since it was elected. Before
    /// that, "not on the holder" is the pending first association, not drift.
    pub holder_confirmed: bool,
    /// Failure records per node, including expired ones (the decision lists those to drop).
    pub failures: BTreeMap<String, FailureRecord>,
    pub address: AddressObservation,
}

/// Why the holder changed. Every change carries one (rule: no change without a reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeReason {
    /// The holder is definitely dead.
    HolderDead,
    /// The holder is standby, cordoned or unresolvable.
    HolderIneligible,
    /// The holder is no longer one of the candidates.
    HolderRemoved,
    /// The holder is banned (spec ban or failure count at the threshold).
    HolderBanned,
    /// The address drifted off the holder often enough to ban it.
    Drift,
    /// AssociateAddress definitely failed on the holder.
    AssociateFailed,
    /// An active pin names another eligible node.
    Pinned,
    /// `failback: Immediate` and a more preferred node has been healthy for the hold-down.
    Failback,
    /// No holder; the best eligible candidate was chosen.
    Elected,
    /// No holder; the address was already on a valid candidate, which becomes the holder.
    Adopted,
    /// `targetState: Stopped`.
    Stopped,
}

impl ChangeReason {
    /// Stable name for events, status (`lastFailover.reason`) and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeReason::HolderDead => "HolderDead",
            ChangeReason::HolderIneligible => "HolderIneligible",
            ChangeReason::HolderRemoved => "HolderRemoved",
            ChangeReason::HolderBanned => "HolderBanned",
            ChangeReason::Drift => "Drift",
            ChangeReason::AssociateFailed => "AssociateFailed",
            ChangeReason::Pinned => "Pinned",
            ChangeReason::Failback => "Failback",
            ChangeReason::Elected => "Elected",
            ChangeReason::Adopted => "Adopted",
            ChangeReason::Stopped => "Stopped",
        }
    }
}

impl fmt::Display for ChangeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A holder transition to record in the Lease, as an event and in status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderChange {
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: ChangeReason,
}

impl HolderChange {
    /// A move from one node to another (what `status.failoverCount` counts).
    pub fn is_failover(&self) -> bool {
        self.from.is_some() && self.to.is_some()
    }
}

/// The one EC2 mutation (if any) this reconcile should perform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// AssociateAddress to the target's ENI and private IP, `AllowReassociation=true`.
    Associate {
        node: String,
        target: Target,
    },
    /// DisassociateAddress (targetState Stopped).
    Disassociate {
        association_id: Option<String>,
    },
}

/// Something to surface as a condition or event; never changes what is decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The address state is unknown; nothing is mutated until EC2 answers.
    Ec2Unknown { reason: String },
    /// The holder's health is unknown; it keeps the address.
    HolderHealthUnknown { node: String, reason: String },
    /// Nobody can be elected (or the holder should move and nobody else can take it).
    NoEligibleCandidate { why: String },
    /// The address is on an ENI outside the candidate set and takeover is not allowed.
    ForeignAssociation { network_interface_id: String },
    /// The address is definitely not on the holder's target (`None` = unassociated).
    DriftObserved {
        node: String,
        network_interface_id: Option<String>,
    },
    /// The holder's target is not resolved yet; association waits for it.
    WaitingForTarget { node: String },
    /// `onAssociateFailure: Stop` after a definite associate failure on `node`: no node is
    /// elected until the failure is cleaned up or expires.
    StoppedAfterAssociateFailure { node: String },
}

impl Finding {
    /// Stable name for events and conditions.
    pub fn as_str(&self) -> &'static str {
        match self {
            Finding::Ec2Unknown { .. } => "Ec2Unknown",
            Finding::HolderHealthUnknown { .. } => "HolderHealthUnknown",
            Finding::NoEligibleCandidate { .. } => "NoEligibleCandidate",
            Finding::ForeignAssociation { .. } => "ForeignAssociation",
            Finding::DriftObserved { .. } => "DriftObserved",
            Finding::WaitingForTarget { .. } => "WaitingForTarget",
            Finding::StoppedAfterAssociateFailure { .. } => "StoppedAfterAssociateFailure",
        }
    }
}

/// The outcome of one [`decide`] call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The holder to write to the Lease (equal to `Input::holder` unless `change` is set).
    pub holder: Option<String>,
    pub change: Option<HolderChange>,
    /// A failure to count (see [`Decision::apply_to_failures`]).
    pub record_failure: Option<(String, FailureKind)>,
    /// Failure records that have expired and must be dropped.
    pub expire_failures: Vec<String>,
    pub action: Action,
    pub notes: Vec<Finding>,
}

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
    /// dead holder (kept only because nobody else is eligible: a remap would be wasted).
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
        let Some(target) = &c.target else {
            let node = h.to_owned();
            self.note(Finding::WaitingForTarget { node });
            return;
        };
        if !on_target(&input.address, target) {
            self.out.action = Action::Associate {
                node: h.to_owned(),
                target: target.clone(),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    const BASE: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    fn ts(offset_secs: i64) -> Timestamp {
        Timestamp::from_second(BASE + offset_secs).expect("valid timestamp")
    }

    fn target(name: &str) -> Target {
        Target {
            instance_id: format!("i-{name}"),
            network_interface_id: format!("eni-{name}"),
            private_ip: format!("ip-{name}"),
        }
    }

    fn node(name: &str, priority: i32) -> CandidateView {
        CandidateView {
            node: name.to_owned(),
            priority,
            health: NodeHealth::Healthy,
            eligibility: Eligibility::Eligible,
            healthy_since: Some(ts(-3600)),
            target: Some(target(name)),
        }
    }

    fn dead(mut c: CandidateView) -> CandidateView {
        c.health = NodeHealth::Dead {
            reason: "probe".into(),
        };
        c
    }

    fn unknown(mut c: CandidateView) -> CandidateView {
        c.health = NodeHealth::Unknown {
            reason: "apiserver timeout".into(),
        };
        c
    }

    fn with_elig(mut c: CandidateView, e: Eligibility) -> CandidateView {
        c.eligibility = e;
        c
    }

    fn on(name: &str) -> AddressObservation {
        AddressObservation::Associated {
            network_interface_id: format!("eni-{name}"),
            private_ip: Some(format!("ip-{name}")),
            association_id: Some(format!("eipassoc-{name}")),
        }
    }

    fn ec2_unknown() -> AddressObservation {
        AddressObservation::Unknown {
            reason: "RequestLimitExceeded".into(),
        }
    }

    /// What a simulated DescribeAddresses shows for an address on `eni` (None = unassociated)
    /// at sequence step `step`; unknown while EC2 is down.
    fn simulated_observation(
        ec2_down: bool,
        eni: Option<&str>,
        step: impl std::fmt::Display,
    ) -> AddressObservation {
        match eni {
            _ if ec2_down => ec2_unknown(),
            None => AddressObservation::Unassociated,
            Some(eni) => AddressObservation::Associated {
                network_interface_id: eni.to_string(),
                private_ip: Some(eni.replacen("eni-", "ip-", 1)),
                association_id: Some(format!("eipassoc-{step}")),
            },
        }
    }

    fn input(candidates: Vec<CandidateView>) -> Input {
        Input {
            now: ts(0),
            policy: Policy::default(),
            candidates,
            holder: None,
            holder_confirmed: false,
            failures: BTreeMap::new(),
            address: AddressObservation::Unassociated,
        }
    }

    /// Two healthy nodes, `a` holds and is confirmed, the address is on `a`.
    fn ab_held_by_a() -> Input {
        let mut i = input(vec![node("a", 0), node("b", 0)]);
        i.holder = Some("a".into());
        i.holder_confirmed = true;
        i.address = on("a");
        i
    }

    fn failure(count: u32, at: i64, kind: FailureKind) -> FailureRecord {
        FailureRecord {
            count,
            last_failure: ts(at),
            kind,
            reason: "test".into(),
        }
    }

    fn associate(name: &str) -> Action {
        Action::Associate {
            node: name.to_owned(),
            target: target(name),
        }
    }

    fn change(from: Option<&str>, to: Option<&str>, reason: ChangeReason) -> Option<HolderChange> {
        Some(HolderChange {
            from: from.map(Into::into),
            to: to.map(Into::into),
            reason,
        })
    }

    fn has(d: &Decision, kind: &str) -> bool {
        d.notes.iter().any(|n| n.as_str() == kind)
    }

    fn holder(d: &Decision) -> Option<&str> {
        d.holder.as_deref()
    }

    // ---- helpers ----

    #[test]
    fn preference_order_pin_then_priority_then_list_order() {
        let mut i = input(vec![node("a", 0), node("b", 5), node("c", 5), node("d", 1)]);
        let names = |i: &Input| -> Vec<String> {
            preference_order(i).iter().map(|c| c.node.clone()).collect()
        };
        assert_eq!(names(&i), ["b", "c", "d", "a"]);
        i.policy.pin = Some(("a".into(), None));
        assert_eq!(names(&i), ["a", "b", "c", "d"]);
        i.policy.pin = Some(("a".into(), Some(ts(0))));
        assert_eq!(names(&i), ["b", "c", "d", "a"], "expired pin is ignored");
    }

    #[test]
    fn record_failure_counts_and_bans_at_once_with_threshold() {
        let mut f = BTreeMap::new();
        record_failure(&mut f, "a", ts(0), FailureKind::Drift, "x", None);
        record_failure(&mut f, "a", ts(5), FailureKind::Drift, "y", None);
        assert_eq!(f["a"].count, 2);
        assert_eq!(f["a"].last_failure, ts(5));
        record_failure(
            &mut f,
            "b",
            ts(1),
            FailureKind::AssociateFailed,
            "z",
            Some(3),
        );
        assert_eq!(f["b"].count, 3);
        record_failure(
            &mut f,
            "a",
            ts(6),
            FailureKind::AssociateFailed,
            "z",
            Some(3),
        );
        assert_eq!(f["a"].count, 3, "max(count + 1, threshold)");
        assert_eq!(f["a"].kind, FailureKind::AssociateFailed);
    }

    #[test]
    fn is_banned_by_spec_ban_and_threshold() {
        let mut i = input(vec![node("a", 0), node("b", 0)]);
        i.policy.migration_threshold = 2;
        i.failures
            .insert("a".into(), failure(1, -10, FailureKind::Drift));
        assert!(!is_banned(&i, "a"));
        i.failures
            .insert("a".into(), failure(2, -10, FailureKind::Drift));
        assert!(is_banned(&i, "a"));
        i.policy.bans = vec![("b".into(), Some(ts(10)))];
        assert!(is_banned(&i, "b"));
        i.policy.bans = vec![("b".into(), Some(ts(0)))];
        assert!(!is_banned(&i, "b"), "ban expiring now is over");
    }

    #[test]
    fn stable_names() {
        assert_eq!(ChangeReason::HolderDead.as_str(), "HolderDead");
        assert_eq!(ChangeReason::Adopted.to_string(), "Adopted");
        for k in [FailureKind::Drift, FailureKind::AssociateFailed] {
            assert_eq!(FailureKind::parse(k.as_str()), Some(k));
        }
    }

    // ---- rule 1: failure records expire ----

    #[test]
    fn rule1_expired_failures_are_listed_and_ignored() {
        let mut i = input(vec![node("a", 10), node("b", 0)]);
        i.policy.failure_timeout = Some(Duration::from_secs(60));
        i.failures
            .insert("a".into(), failure(5, -60, FailureKind::Drift)); // exactly expired
        i.failures
            .insert("b".into(), failure(5, -59, FailureKind::Drift));
        let d = decide(&i);
        assert_eq!(d.expire_failures, ["a"]);
        assert_eq!(holder(&d), Some("a"), "expired ban no longer applies");
        assert_eq!(d.change, change(None, Some("a"), ChangeReason::Elected));
        assert_eq!(d.action, associate("a"));
    }

    #[test]
    fn rule1_no_timeout_never_expires() {
        let mut i = input(vec![node("a", 10), node("b", 0)]);
        i.failures
            .insert("a".into(), failure(1, -1_000_000, FailureKind::Drift));
        let d = decide(&i);
        assert!(d.expire_failures.is_empty());
        assert_eq!(holder(&d), Some("b"));
    }

    #[test]
    fn rule1_apply_to_failures_drops_expired_then_records() {
        let mut i = ab_held_by_a();
        i.policy.migration_threshold = 3;
        i.policy.failure_timeout = Some(Duration::from_secs(60));
        i.failures
            .insert("a".into(), failure(2, -100, FailureKind::Drift));
        i.address = on("b");
        let d = decide(&i);
        assert_eq!(d.record_failure, Some(("a".into(), FailureKind::Drift)));
        let mut f = i.failures.clone();
        d.apply_to_failures(&mut f, i.now);
        assert_eq!(f["a"].count, 1, "the expired count restarts");
    }

    // ---- rule 2: eligibility for election ----

    #[test]
    fn rule2_only_healthy_eligible_unbanned_resolved_nodes_are_elected() {
        let mut unresolved = node("e", 9);
        unresolved.target = None;
        let mut i = input(vec![
            unknown(node("a", 10)),
            with_elig(node("b", 10), Eligibility::Standby),
            with_elig(node("c", 10), Eligibility::Cordoned),
            with_elig(
                node("d", 10),
                Eligibility::Unresolvable {
                    reason: "no providerID".into(),
                },
            ),
            unresolved,
            node("f", 9),
            node("g", 0),
        ]);
        i.policy.bans = vec![("f".into(), None)];
        let d = decide(&i);
        assert_eq!(holder(&d), Some("g"));
        assert_eq!(d.action, associate("g"));
    }

    #[test]
    fn rule2_unknown_health_holder_is_kept() {
        let mut i = ab_held_by_a();
        i.candidates[0] = unknown(node("a", 0));
        i.candidates[1] = node("b", 100);
        i.policy.failback = FailbackPolicy::Immediate;
        let d = decide(&i);
        assert_eq!(d.change, None);
        assert_eq!(d.action, Action::None);
        assert!(has(&d, "HolderHealthUnknown"));
    }

    // ---- rule 3: stopped ----

    #[test]
    fn rule3_stopped_releases_and_holds_nobody() {
        let mut i = ab_held_by_a();
        i.policy.stopped = true;
        let d = decide(&i);
        assert_eq!(d.holder, None);
        assert_eq!(d.change, change(Some("a"), None, ChangeReason::Stopped));
        assert_eq!(
            d.action,
            Action::Disassociate {
                association_id: Some("eipassoc-a".into())
            }
        );
    }

    #[test]
    fn rule3_stopped_disassociates_from_any_candidate_without_holder() {
        let mut i = input(vec![node("a", 0), node("b", 0)]);
        i.policy.stopped = true;
        i.address = on("b");
        let d = decide(&i);
        assert_eq!(d.change, None);
        assert!(matches!(d.action, Action::Disassociate { .. }));
    }

    #[test]
    fn rule3_stopped_leaves_foreign_unassociated_and_unknown_alone() {
        let mut i = ab_held_by_a();
        i.policy.stopped = true;
        for address in [on("x"), AddressObservation::Unassociated, ec2_unknown()] {
            i.address = address;
            let d = decide(&i);
            assert_eq!(d.holder, None);
            assert_eq!(d.action, Action::None);
        }
    }

    // ---- rule 4: observe-only ----

    #[test]
    fn rule4_observe_only_reports_but_never_acts() {
        let mut i = ab_held_by_a();
        i.policy.observe_only = true;
        i.candidates[0] = dead(node("a", 0));
        i.address = AddressObservation::Unassociated;
        let d = decide(&i);
        assert_eq!((d.change.clone(), d.action.clone()), (None, Action::None));
        assert_eq!(holder(&d), Some("a"));
        assert_eq!(d.record_failure, None);
        assert!(has(&d, "DriftObserved"));

        i.address = on("x");
        let d = decide(&i);
        assert!(has(&d, "ForeignAssociation"));
        assert_eq!(d.action, Action::None);

        let mut i = input(vec![node("a", 0)]);
        i.policy.observe_only = true;
        let d = decide(&i);
        assert_eq!((d.holder, d.action), (None, Action::None), "no election");
    }

    // ---- rule 5: address unknown ----

    #[test]
    fn rule5_unknown_address_changes_nothing() {
        let mut i = ab_held_by_a();
        i.address = ec2_unknown();
        i.candidates[1] = node("b", 100);
        i.policy.failback = FailbackPolicy::Immediate;
        i.policy.pin = Some(("b".into(), None));
        let d = decide(&i);
        assert_eq!(d.change, None);
        assert_eq!(d.record_failure, None);
        assert_eq!(d.action, Action::None);
        assert!(has(&d, "Ec2Unknown"));
    }

    #[test]
    fn rule5_unknown_address_no_election() {
        let mut i = input(vec![node("a", 0)]);
        i.address = ec2_unknown();
        let d = decide(&i);
        assert_eq!((d.holder, d.action), (None, Action::None));
    }

    #[test]
    fn rule5_dead_holder_moves_in_lease_but_no_ec2_action() {
        let mut i = ab_held_by_a();
        i.address = ec2_unknown();
        i.candidates[0] = dead(node("a", 0));
        let d = decide(&i);
        assert_eq!(
            d.change,
            change(Some("a"), Some("b"), ChangeReason::HolderDead)
        );
        assert_eq!(d.action, Action::None);
        assert_eq!(d.record_failure, None);
    }

    // ---- rule 6: no holder ----

    #[test]
    fn rule6_adopts_existing_association_without_remap() {
        let mut i = input(vec![node("a", 10), unknown(node("b", 0))]);
        i.address = on("b");
        let d = decide(&i);
        assert_eq!(d.change, change(None, Some("b"), ChangeReason::Adopted));
        assert_eq!(d.action, Action::None);
    }

    #[test]
    fn rule6_does_not_adopt_invalid_candidate() {
        for b in [
            dead(node("b", 0)),
            with_elig(node("b", 0), Eligibility::Standby),
        ] {
            let mut i = input(vec![node("a", 0), b]);
            i.address = on("b");
            let d = decide(&i);
            assert_eq!(d.change, change(None, Some("a"), ChangeReason::Elected));
            assert_eq!(d.action, associate("a"));
        }
        let mut i = input(vec![node("a", 0), node("b", 0)]);
        i.policy.bans = vec![("b".into(), None)];
        i.address = on("b");
        assert_eq!(holder(&decide(&i)), Some("a"));
    }

    #[test]
    fn rule6_ownership_guard_and_takeover() {
        let mut i = input(vec![node("a", 0)]);
        i.address = on("x");
        let d = decide(&i);
        assert_eq!((d.holder.clone(), d.action.clone()), (None, Action::None));
        assert!(d.notes.contains(&Finding::ForeignAssociation {
            network_interface_id: "eni-x".into()
        }));

        i.policy.allow_takeover = true;
        let d = decide(&i);
        assert_eq!(d.change, change(None, Some("a"), ChangeReason::Elected));
        assert_eq!(d.action, associate("a"));
        assert!(!has(&d, "ForeignAssociation"));
    }

    #[test]
    fn rule6_elects_most_preferred_or_reports_why() {
        let i = input(vec![node("a", 0), node("b", 3)]);
        let d = decide(&i);
        assert_eq!(d.change, change(None, Some("b"), ChangeReason::Elected));
        assert_eq!(d.action, associate("b"));

        let i = input(vec![
            dead(node("a", 0)),
            with_elig(node("b", 0), Eligibility::Cordoned),
        ]);
        let d = decide(&i);
        assert_eq!((d.holder.clone(), d.action.clone()), (None, Action::None));
        let Some(Finding::NoEligibleCandidate { why }) = d.notes.first() else {
            panic!("expected NoEligibleCandidate, got {:?}", d.notes);
        };
        assert!(
            why.contains("a: dead") && why.contains("b: cordoned"),
            "{why}"
        );
    }

    // ---- rule 7: dead holder ----

    #[test]
    fn rule7_dead_holder_fails_over_without_counting_a_failure() {
        let mut i = ab_held_by_a();
        i.candidates[0] = dead(node("a", 0));
        let d = decide(&i);
        assert_eq!(
            d.change,
            change(Some("a"), Some("b"), ChangeReason::HolderDead)
        );
        assert_eq!(d.action, associate("b"));
        assert_eq!(d.record_failure, None);
        assert!(!is_banned(&i, "a"), "a stays eligible once healthy again");
    }

    #[test]
    fn rule7_dead_holder_with_address_gone_is_not_drift() {
        let mut i = ab_held_by_a();
        i.candidates[0] = dead(node("a", 0));
        i.address = AddressObservation::Unassociated;
        let d = decide(&i);
        assert_eq!(d.record_failure, None);
        assert_eq!(holder(&d), Some("b"));
    }

    #[test]
    fn rule7_dead_holder_kept_when_nobody_else_and_not_remapped() {
        let mut i = ab_held_by_a();
        i.candidates = vec![dead(node("a", 0)), dead(node("b", 0))];
        i.address = AddressObservation::Unassociated;
        let d = decide(&i);
        assert_eq!((holder(&d), d.change.clone()), (Some("a"), None));
        assert_eq!(d.action, Action::None, "no remap to a dead node");
        assert!(has(&d, "NoEligibleCandidate"));
    }

    // ---- rule 8: ineligible or banned holder ----

    #[test]
    fn rule8_ineligible_holder_moves_gracefully() {
        for (e, reason) in [
            (Eligibility::Standby, ChangeReason::HolderIneligible),
            (Eligibility::Cordoned, ChangeReason::HolderIneligible),
            (
                Eligibility::Unresolvable {
                    reason: "gone".into(),
                },
                ChangeReason::HolderIneligible,
            ),
        ] {
            let mut i = ab_held_by_a();
            i.candidates[0] = with_elig(node("a", 0), e);
            let d = decide(&i);
            assert_eq!(d.change, change(Some("a"), Some("b"), reason));
            assert_eq!(d.action, associate("b"));
        }
    }

    #[test]
    fn rule8_banned_holder_moves() {
        let mut i = ab_held_by_a();
        i.policy.bans = vec![("a".into(), Some(ts(100)))];
        let d = decide(&i);
        assert_eq!(
            d.change,
            change(Some("a"), Some("b"), ChangeReason::HolderBanned)
        );

        let mut i = ab_held_by_a();
        i.failures
            .insert("a".into(), failure(1, -5, FailureKind::Drift));
        let d = decide(&i);
        assert_eq!(
            d.change,
            change(Some("a"), Some("b"), ChangeReason::HolderBanned)
        );

        let mut i = ab_held_by_a();
        i.policy.bans = vec![("a".into(), Some(ts(-1)))];
        assert_eq!(decide(&i).change, None, "expired ban");
    }

    #[test]
    fn rule8_holder_removed_from_candidates_moves() {
        let mut i = ab_held_by_a();
        i.holder = Some("gone".into());
        let d = decide(&i);
        assert_eq!(
            d.change,
            change(Some("gone"), Some("a"), ChangeReason::HolderRemoved)
        );
        assert_eq!(d.action, Action::None, "the address is already on a");
    }

    #[test]
    fn rule8_no_alternative_keeps_and_reports() {
        let mut i = ab_held_by_a();
        i.candidates[0] = with_elig(node("a", 0), Eligibility::Standby);
        i.candidates[1] = dead(node("b", 0));
        let d = decide(&i);
        assert_eq!((holder(&d), d.change.clone()), (Some("a"), None));
        assert_eq!(d.action, Action::None);
        let Some(Finding::NoEligibleCandidate { why }) = d.notes.first() else {
            panic!("expected NoEligibleCandidate, got {:?}", d.notes);
        };
        assert!(
            why.contains("HolderIneligible") && why.contains("b: dead"),
            "{why}"
        );
    }

    // ---- associate failures (start failure) ----

    #[test]
    fn associate_failure_bans_and_tries_next() {
        let mut i = ab_held_by_a();
        i.holder_confirmed = false;
        i.address = AddressObservation::Unassociated;
        record_failure(
            &mut i.failures,
            "a",
            ts(0),
            FailureKind::AssociateFailed,
            "InvalidNetworkInterfaceID.NotFound",
            Some(1),
        );
        let d = decide(&i);
        assert_eq!(
            d.change,
            change(Some("a"), Some("b"), ChangeReason::AssociateFailed)
        );
        assert_eq!(d.action, associate("b"));
    }

    #[test]
    fn associate_failure_with_stop_policy_holds_nobody_until_cleanup() {
        let mut i = ab_held_by_a();
        i.holder_confirmed = false;
        i.address = AddressObservation::Unassociated;
        i.policy.stop_on_associate_failure = true;
        i.policy.migration_threshold = 2;
        record_failure(
            &mut i.failures,
            "a",
            ts(0),
            FailureKind::AssociateFailed,
            "x",
            Some(2),
        );
        let d = decide(&i);
        assert_eq!(
            d.change,
            change(Some("a"), None, ChangeReason::AssociateFailed)
        );
        assert_eq!(d.action, Action::None);
        assert!(has(&d, "StoppedAfterAssociateFailure"));

        i.holder = None;
        let d = decide(&i);
        assert_eq!((d.holder.clone(), d.action.clone()), (None, Action::None));
        assert!(has(&d, "StoppedAfterAssociateFailure"));

        i.failures.clear(); // cleanup
        assert_eq!(holder(&decide(&i)), Some("a"));
    }

    // ---- rule 9: drift ----

    #[test]
    fn rule9_drift_below_threshold_reassociates_to_holder() {
        let mut i = ab_held_by_a();
        i.policy.migration_threshold = 3;
        i.failures
            .insert("a".into(), failure(1, -5, FailureKind::Drift));
        i.address = on("b");
        let d = decide(&i);
        assert_eq!(d.change, None);
        assert_eq!(d.record_failure, Some(("a".into(), FailureKind::Drift)));
        assert_eq!(d.action, associate("a"));
        assert!(has(&d, "DriftObserved"));
    }

    #[test]
    fn rule9_drift_at_threshold_moves() {
        let mut i = ab_held_by_a();
        i.policy.migration_threshold = 2;
        i.failures
            .insert("a".into(), failure(1, -5, FailureKind::Drift));
        i.address = AddressObservation::Unassociated;
        let d = decide(&i);
        assert_eq!(d.change, change(Some("a"), Some("b"), ChangeReason::Drift));
        assert_eq!(d.record_failure, Some(("a".into(), FailureKind::Drift)));
        assert_eq!(d.action, associate("b"));
    }

    #[test]
    fn rule9_drift_onto_next_candidate_needs_no_remap() {
        let mut i = ab_held_by_a(); // threshold 1
        i.address = on("b");
        let d = decide(&i);
        assert_eq!(d.change, change(Some("a"), Some("b"), ChangeReason::Drift));
        assert_eq!(d.action, Action::None);
    }

    #[test]
    fn rule9_drift_at_threshold_without_alternative_reassociates() {
        let mut i = ab_held_by_a();
        i.candidates[1] = dead(node("b", 0));
        i.address = AddressObservation::Unassociated;
        let d = decide(&i);
        assert_eq!(d.change, None);
        assert_eq!(d.action, associate("a"));
        assert!(has(&d, "NoEligibleCandidate"));
    }

    #[test]
    fn rule9_drift_to_foreign_eni_is_reported_not_taken_back() {
        let mut i = ab_held_by_a();
        i.address = on("x");
        let d = decide(&i);
        assert_eq!((d.change.clone(), d.action.clone()), (None, Action::None));
        assert_eq!(d.record_failure, None);
        assert!(has(&d, "ForeignAssociation"));

        i.policy.allow_takeover = true;
        i.policy.migration_threshold = 2;
        let d = decide(&i);
        assert_eq!(d.record_failure, Some(("a".into(), FailureKind::Drift)));
        assert_eq!(d.action, associate("a"));
    }

    #[test]
    fn rule9_unconfirmed_holder_is_pending_not_drift() {
        let mut i = ab_held_by_a();
        i.holder_confirmed = false;
        for address in [AddressObservation::Unassociated, on("b")] {
            i.address = address;
            let d = decide(&i);
            assert_eq!(d.record_failure, None);
            assert_eq!(d.change, None);
            assert_eq!(d.action, associate("a"));
        }
    }

    // ---- rule 10: pin and failback ----

    #[test]
    fn rule10_pin_moves_to_eligible_pinned_node() {
        let mut i = ab_held_by_a();
        i.policy.pin = Some(("b".into(), Some(ts(60))));
        let d = decide(&i);
        assert_eq!(d.change, change(Some("a"), Some("b"), ChangeReason::Pinned));
        assert_eq!(d.action, associate("b"));

        i.candidates[1] = unknown(node("b", 0));
        assert_eq!(decide(&i).change, None, "pinned node must be healthy");

        i.candidates[1] = node("b", 0);
        i.policy.pin = Some(("b".into(), Some(ts(0))));
        assert_eq!(decide(&i).change, None, "expired pin");
    }

    #[test]
    fn rule10_failback_never_is_sticky() {
        let mut i = ab_held_by_a();
        i.candidates[1] = node("b", 100);
        let d = decide(&i);
        assert_eq!((d.change, d.action), (None, Action::None));
    }

    #[test]
    fn rule10_failback_immediate_after_hold_down() {
        let mut i = ab_held_by_a();
        i.candidates[1] = node("b", 100);
        i.policy.failback = FailbackPolicy::Immediate;
        i.policy.hold_down = Duration::from_secs(300);
        i.candidates[1].healthy_since = Some(ts(-299));
        assert_eq!(decide(&i).change, None, "hold-down not over");
        i.candidates[1].healthy_since = None;
        assert_eq!(decide(&i).change, None, "unknown since");
        i.candidates[1].healthy_since = Some(ts(-300));
        let d = decide(&i);
        assert_eq!(
            d.change,
            change(Some("a"), Some("b"), ChangeReason::Failback)
        );
        assert_eq!(d.action, associate("b"));
    }

    #[test]
    fn rule10_failback_only_to_strictly_more_preferred() {
        let mut i = ab_held_by_a(); // equal priority, a is first in list order
        i.holder = Some("b".into());
        i.address = on("b");
        i.policy.failback = FailbackPolicy::Immediate;
        let d = decide(&i);
        assert_eq!(
            d.change,
            change(Some("b"), Some("a"), ChangeReason::Failback)
        );
        i.holder = Some("a".into());
        i.address = on("a");
        assert_eq!(decide(&i).change, None);
    }

    // ---- rule 11: association only when needed ----

    #[test]
    fn rule11_no_remap_when_already_on_target() {
        let d = decide(&ab_held_by_a());
        assert_eq!(
            (d.change, d.action, d.record_failure),
            (None, Action::None, None)
        );

        let mut i = ab_held_by_a();
        i.address = AddressObservation::Associated {
            network_interface_id: "eni-a".into(),
            private_ip: None,
            association_id: None,
        };
        assert_eq!(decide(&i).action, Action::None);
    }

    #[test]
    fn rule11_wrong_private_ip_is_reassociated() {
        let mut i = ab_held_by_a();
        i.holder_confirmed = false;
        i.address = AddressObservation::Associated {
            network_interface_id: "eni-a".into(),
            private_ip: Some("10.1.1.1".into()),
            association_id: None,
        };
        assert_eq!(decide(&i).action, associate("a"));
    }

    #[test]
    fn rule11_waits_for_unresolved_target() {
        let mut i = ab_held_by_a();
        i.candidates[0].target = None;
        i.address = AddressObservation::Unassociated;
        let d = decide(&i);
        assert_eq!((d.change.clone(), d.action.clone()), (None, Action::None));
        assert!(
            d.notes
                .contains(&Finding::WaitingForTarget { node: "a".into() })
        );
    }

    // ---- property tests ----

    mod props {
        use super::*;
        use proptest::prelude::*;

        const MAX_NODES: usize = 6;

        fn name(i: usize) -> String {
            format!("n{i}")
        }

        fn arb_health() -> impl Strategy<Value = NodeHealth> {
            prop_oneof![
                3 => Just(NodeHealth::Healthy),
                1 => Just(NodeHealth::Dead { reason: "probe".into() }),
                1 => Just(NodeHealth::Unknown { reason: "timeout".into() }),
            ]
        }

        fn arb_eligibility() -> impl Strategy<Value = Eligibility> {
            prop_oneof![
                4 => Just(Eligibility::Eligible),
                1 => Just(Eligibility::Standby),
                1 => Just(Eligibility::Cordoned),
                1 => Just(Eligibility::Unresolvable { reason: "no providerID".into() }),
            ]
        }

        fn arb_candidate(i: usize) -> impl Strategy<Value = CandidateView> {
            (
                arb_health(),
                arb_eligibility(),
                -2i32..3,
                proptest::option::weighted(0.8, 0i64..1200),
                proptest::bool::weighted(0.85),
            )
                .prop_map(move |(health, eligibility, priority, since, resolved)| {
                    CandidateView {
                        node: name(i),
                        priority,
                        health,
                        eligibility,
                        healthy_since: since.map(|s| ts(-s)),
                        target: resolved.then(|| target(&name(i))),
                    }
                })
        }

        fn arb_candidates() -> impl Strategy<Value = Vec<CandidateView>> {
            (1..=MAX_NODES).prop_flat_map(|n| (0..n).map(arb_candidate).collect::<Vec<_>>())
        }

        fn arb_kind() -> impl Strategy<Value = FailureKind> {
            prop_oneof![Just(FailureKind::Drift), Just(FailureKind::AssociateFailed)]
        }

        fn arb_failures() -> impl Strategy<Value = BTreeMap<String, FailureRecord>> {
            proptest::collection::vec((0..MAX_NODES, 1u32..4, 0i64..2000, arb_kind()), 0..4)
                .prop_map(|v| {
                    v.into_iter()
                        .map(|(i, count, age, kind)| (name(i), failure(count, -age, kind)))
                        .collect()
                })
        }

        /// Address on a candidate's ENI (maybe with a wrong/missing private IP), on a
        /// non-candidate ENI, unassociated or unknown.
        fn arb_address() -> impl Strategy<Value = AddressObservation> {
            prop_oneof![
                1 => Just(ec2_unknown()),
                1 => Just(AddressObservation::Unassociated),
                4 => (0..MAX_NODES + 2, 0u8..4).prop_map(|(j, ip)| AddressObservation::Associated {
                    network_interface_id: format!("eni-{}", name(j)),
                    private_ip: match ip {
                        0 => None,
                        1 => Some("10.9.9.9".into()),
                        _ => Some(format!("ip-{}", name(j))),
                    },
                    association_id: Some(format!("eipassoc-{j}")),
                }),
            ]
        }

        fn arb_expiry() -> impl Strategy<Value = Option<Timestamp>> {
            proptest::option::of((-100i64..100).prop_map(ts))
        }

        fn arb_policy() -> impl Strategy<Value = Policy> {
            (
                (
                    prop_oneof![Just(FailbackPolicy::Never), Just(FailbackPolicy::Immediate)],
                    0u64..600,
                    0u32..4,
                    proptest::option::of(1u64..3000),
                    any::<bool>(),
                ),
                (
                    proptest::bool::weighted(0.1),
                    proptest::bool::weighted(0.1),
                    any::<bool>(),
                    proptest::option::weighted(0.3, (0..MAX_NODES + 1, arb_expiry())),
                    proptest::collection::vec((0..MAX_NODES + 1, arb_expiry()), 0..3),
                ),
            )
                .prop_map(
                    |(
                        (failback, hold, threshold, timeout, takeover),
                        (stopped, observe_only, stop_on, pin, bans),
                    )| Policy {
                        failback,
                        hold_down: Duration::from_secs(hold),
                        migration_threshold: threshold,
                        failure_timeout: timeout.map(Duration::from_secs),
                        allow_takeover: takeover,
                        stopped,
                        observe_only,
                        stop_on_associate_failure: stop_on,
                        pin: pin.map(|(i, e)| (name(i), e)),
                        bans: bans.into_iter().map(|(i, e)| (name(i), e)).collect(),
                    },
                )
        }

        fn arb_input() -> impl Strategy<Value = Input> {
            (
                arb_candidates(),
                arb_policy(),
                proptest::option::weighted(0.7, 0..MAX_NODES + 1),
                any::<bool>(),
                arb_failures(),
                arb_address(),
            )
                .prop_map(
                    |(candidates, policy, holder, holder_confirmed, failures, address)| Input {
                        now: ts(0),
                        policy,
                        candidates,
                        holder: holder.map(name),
                        holder_confirmed,
                        failures,
                        address,
                    },
                )
        }

        /// The holder is not dead, ineligible, banned or gone.
        fn holder_sound(i: &Input) -> bool {
            i.holder.as_deref().is_none_or(|h| {
                find(i, h).is_some_and(|c| {
                    !matches!(c.health, NodeHealth::Dead { .. })
                        && c.eligibility == Eligibility::Eligible
                        && !is_banned(i, h)
                })
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// (a) Every change has a reason and a lawful new holder; the decided holder and
            /// the action agree.
            #[test]
            fn changes_are_lawful(i in arb_input()) {
                let d = decide(&i);
                match &d.change {
                    None => prop_assert_eq!(&d.holder, &i.holder),
                    Some(ch) => {
                        prop_assert_eq!(&ch.from, &i.holder);
                        prop_assert_eq!(&ch.to, &d.holder);
                        prop_assert_ne!(&ch.from, &ch.to);
                        match ch.to.as_deref() {
                            Some(to) => {
                                let c = find(&i, to);
                                prop_assert!(c.is_some());
                                let c = c.expect("checked");
                                prop_assert!(
                                    eligible_for_election(&i, c)
                                        || (ch.reason == ChangeReason::Adopted && adoption_valid(&i, c)),
                                    "{:?} is not a lawful new holder", c
                                );
                            }
                            None => prop_assert!(matches!(
                                ch.reason,
                                ChangeReason::Stopped | ChangeReason::AssociateFailed
                            )),
                        }
                    }
                }
                match &d.action {
                    Action::None => {}
                    Action::Associate { node, target } => {
                        prop_assert_eq!(Some(node), d.holder.as_ref());
                        let c = find(&i, node).expect("holder is a candidate");
                        prop_assert_eq!(Some(target), c.target.as_ref());
                        prop_assert!(!on_target(&i.address, target), "needless remap");
                        prop_assert!(!matches!(i.address, AddressObservation::Unknown { .. }), "associate while unknown");
                        prop_assert!(i.policy.allow_takeover || foreign_eni(&i).is_none());
                    }
                    Action::Disassociate { .. } => {
                        prop_assert!(i.policy.stopped && !i.policy.observe_only);
                        prop_assert!(foreign_eni(&i).is_none());
                    }
                }
            }

            /// (b) Unknown address + sound holder: nothing changes, nothing is counted.
            #[test]
            fn unknown_address_changes_nothing(mut i in arb_input()) {
                i.address = ec2_unknown();
                i.policy.stopped = false;
                let d = decide(&i);
                prop_assert_eq!(&d.action, &Action::None);
                prop_assert_eq!(&d.record_failure, &None);
                if holder_sound(&i) {
                    prop_assert_eq!(&d.change, &None);
                    prop_assert_eq!(&d.holder, &i.holder);
                }
            }

            /// (c) Stickiness: a healthy, eligible, unbanned holder whose address is on its
            /// target keeps it under FailbackPolicy::Never without a pin.
            #[test]
            fn never_failback_is_sticky(mut i in arb_input(), k in 0..MAX_NODES) {
                let k = k % i.candidates.len();
                let h = i.candidates[k].node.clone();
                i.policy.failback = FailbackPolicy::Never;
                i.policy.pin = None;
                i.policy.stopped = false;
                i.policy.bans.retain(|(n, _)| *n != h);
                i.failures.remove(&h);
                let c = &mut i.candidates[k];
                c.health = NodeHealth::Healthy;
                c.eligibility = Eligibility::Eligible;
                let t = c.target.get_or_insert_with(|| target(&h)).clone();
                i.address = AddressObservation::Associated {
                    network_interface_id: t.network_interface_id,
                    private_ip: Some(t.private_ip),
                    association_id: None,
                };
                i.holder = Some(h.clone());
                let d = decide(&i);
                prop_assert_eq!(d.holder.as_deref(), Some(h.as_str()));
                prop_assert_eq!(&d.change, &None);
                prop_assert_eq!(&d.action, &Action::None);
                prop_assert_eq!(&d.record_failure, &None);
            }

            /// (d) A node whose only failure is older than the failure timeout is not banned,
            /// and its record is listed for removal.
            #[test]
            fn bans_expire(mut i in arb_input(), k in 0..MAX_NODES, t in 1u64..3000, extra in 0u64..3000, count in 1u32..10) {
                let node = name(k);
                i.policy.failure_timeout = Some(Duration::from_secs(t));
                i.policy.bans.retain(|(n, _)| *n != node);
                let age = i64::try_from(t + extra).expect("small");
                i.failures.insert(node.clone(), failure(count, -age, FailureKind::AssociateFailed));
                prop_assert!(!is_banned(&i, &node));
                prop_assert!(decide(&i).expire_failures.contains(&node));
            }

            /// (e) Observe-only never acts and never changes the holder.
            #[test]
            fn observe_only_is_inert(mut i in arb_input()) {
                i.policy.observe_only = true;
                let d = decide(&i);
                prop_assert_eq!(&d.action, &Action::None);
                prop_assert_eq!(&d.change, &None);
                prop_assert_eq!(&d.holder, &i.holder);
                prop_assert_eq!(&d.record_failure, &None);
            }

            /// (f) Event sequences applied through repeated decisions.
            #[test]
            fn sequences_keep_one_holder_and_ignore_unknowns(
                n in 2usize..5,
                threshold in 1u32..4,
                timeout in proptest::option::of(5u64..60),
                events in proptest::collection::vec(arb_event(), 1..60),
            ) {
                run_sequence(n, threshold, timeout, &events)?;
            }
        }

        #[derive(Clone, Debug)]
        enum Event {
            Die(usize),
            Return(usize),
            HealthUnknown(usize),
            Ec2Unknown(bool),
            /// The address moves by itself: to node j's ENI, unassociated, or foreign.
            Drift(Option<usize>),
            DriftForeign,
            Wait(i64),
        }

        fn arb_event() -> impl Strategy<Value = Event> {
            prop_oneof![
                2 => (0usize..4).prop_map(Event::Die),
                2 => (0usize..4).prop_map(Event::Return),
                2 => (0usize..4).prop_map(Event::HealthUnknown),
                2 => any::<bool>().prop_map(Event::Ec2Unknown),
                1 => proptest::option::of(0usize..4).prop_map(Event::Drift),
                1 => Just(Event::DriftForeign),
                2 => (1i64..30).prop_map(Event::Wait),
            ]
        }

        /// A simulated world: EC2 moves the address only on our Associate/Disassociate (or a
        /// drift event); the controller persists the holder, the confirmation flag and the
        /// failure records between passes exactly as the decision says.
        fn run_sequence(
            n: usize,
            threshold: u32,
            timeout: Option<u64>,
            events: &[Event],
        ) -> Result<(), TestCaseError> {
            let mut candidates: Vec<CandidateView> = (0..n).map(|i| node(&name(i), 0)).collect();
            let mut address: Option<String> = None; // ENI the address is on
            let mut ec2_down = false;
            let mut holder: Option<String> = None;
            let mut confirmed = false;
            let mut failures = BTreeMap::new();
            let mut now = ts(0);
            let policy = Policy {
                migration_threshold: threshold,
                failure_timeout: timeout.map(Duration::from_secs),
                ..Policy::default()
            };
            let quiet = [
                Event::Ec2Unknown(false),
                Event::Wait(1),
                Event::Wait(1),
                Event::Wait(1),
            ];
            for (step, ev) in events.iter().chain(quiet.iter()).enumerate() {
                now += SignedDuration::from_secs(1);
                match ev {
                    Event::Die(k) if *k < n => {
                        candidates[*k].health = NodeHealth::Dead {
                            reason: "probe".into(),
                        };
                    }
                    Event::Return(k) if *k < n => {
                        candidates[*k].health = NodeHealth::Healthy;
                        candidates[*k].healthy_since = Some(now);
                    }
                    Event::HealthUnknown(k) if *k < n => {
                        candidates[*k].health = NodeHealth::Unknown {
                            reason: "timeout".into(),
                        };
                    }
                    Event::Ec2Unknown(down) => ec2_down = *down,
                    Event::Drift(to) => {
                        address = to.filter(|k| *k < n).map(|k| format!("eni-{}", name(k)))
                    }
                    Event::DriftForeign => address = Some("eni-foreign".into()),
                    Event::Wait(s) => now += SignedDuration::from_secs(*s),
                    _ => {}
                }
                let observation = simulated_observation(ec2_down, address.as_deref(), step);
                let holder_eni = holder.as_ref().map(|h| format!("eni-{h}"));
                if !ec2_down && holder_eni.is_some() && holder_eni == address {
                    confirmed = true; // the controller saw the association on the holder
                }
                let input = Input {
                    now,
                    policy: policy.clone(),
                    candidates: candidates.clone(),
                    holder: holder.clone(),
                    holder_confirmed: confirmed,
                    failures: failures.clone(),
                    address: observation,
                };
                let d = decide(&input);

                if ec2_down {
                    prop_assert_eq!(&d.action, &Action::None);
                    prop_assert_eq!(&d.record_failure, &None);
                }
                // Only unknowns (EC2 or health) are abnormal: the holder must not change.
                let drifted = !ec2_down && holder_eni != address;
                let holder_dead_or_banned = holder.as_deref().is_some_and(|h| {
                    is_banned(&input, h)
                        || candidates
                            .iter()
                            .any(|c| c.node == h && matches!(c.health, NodeHealth::Dead { .. }))
                });
                if holder.is_some() && !drifted && !holder_dead_or_banned {
                    prop_assert_eq!(
                        &d.change,
                        &None,
                        "holder changed on unknowns only: {:?}",
                        input
                    );
                }

                // Apply the decision.
                if d.holder != holder {
                    confirmed = false;
                }
                holder = d.holder.clone();
                d.apply_to_failures(&mut failures, now);
                match &d.action {
                    Action::Associate { node, target } => {
                        prop_assert_eq!(
                            Some(node),
                            holder.as_ref(),
                            "EC2 only ever moves to the holder"
                        );
                        address = Some(target.network_interface_id.clone());
                    }
                    Action::Disassociate { .. } => address = None,
                    Action::None => {}
                }
            }

            // Liveness: after quiet passes with EC2 answering, if anybody can hold the address
            // and it is not foreign, the holder has it.
            let input = Input {
                now,
                policy,
                candidates: candidates.clone(),
                holder: holder.clone(),
                holder_confirmed: confirmed,
                failures: failures.clone(),
                address: AddressObservation::Unassociated,
            };
            let someone_eligible = candidates.iter().any(|c| eligible_for_election(&input, c));
            if someone_eligible && address.as_deref() != Some("eni-foreign") {
                prop_assert!(holder.is_some(), "nobody holds the address: {:?}", input);
                let holder_eni = holder.as_ref().map(|h| format!("eni-{h}"));
                let holder_alive = candidates.iter().any(|c| {
                    Some(&c.node) == holder.as_ref() && !matches!(c.health, NodeHealth::Dead { .. })
                });
                if holder_alive {
                    prop_assert_eq!(
                        holder_eni,
                        address,
                        "address not on the live holder: {:?}",
                        input
                    );
                }
            }
            Ok(())
        }
    }

    // ---- randomised world sequences: eligibility, refusals, bans, lagged reads, clock ----

    mod world_props {
        use super::*;
        use proptest::prelude::*;

        fn name(i: usize) -> String {
            format!("n{i}")
        }

        #[derive(Clone, Debug)]
        enum Ev {
            Die(usize),
            Return(usize),
            HealthUnknown(usize),
            Standby(usize),
            Cordon(usize),
            Unresolvable(usize),
            /// The node's instance is not looked up yet (no target).
            Unresolved(usize),
            Eligible(usize),
            Ec2Down(bool),
            /// The next AssociateAddress to this node is definitely refused.
            Refuse(usize),
            /// The address moves by itself (to a candidate, off, or foreign); with `true` the
            /// monitor read of this pass predates the move (EC2 reads lag).
            Drift(Option<usize>, bool),
            DriftForeign,
            Wait(i64),
            /// The wall clock steps back (NTP): expiries must not misbehave.
            ClockBack(i64),
            /// `pcs resource ban` with a lifetime.
            SpecBan(usize, i64),
        }

        fn arb_ev() -> impl Strategy<Value = Ev> {
            prop_oneof![
                3 => (0usize..5).prop_map(Ev::Die),
                3 => (0usize..5).prop_map(Ev::Return),
                2 => (0usize..5).prop_map(Ev::HealthUnknown),
                1 => (0usize..5).prop_map(Ev::Standby),
                1 => (0usize..5).prop_map(Ev::Cordon),
                1 => (0usize..5).prop_map(Ev::Unresolvable),
                1 => (0usize..5).prop_map(Ev::Unresolved),
                3 => (0usize..5).prop_map(Ev::Eligible),
                2 => any::<bool>().prop_map(Ev::Ec2Down),
                2 => (0usize..5).prop_map(Ev::Refuse),
                1 => (proptest::option::of(0usize..5), any::<bool>()).prop_map(|(k, l)| Ev::Drift(k, l)),
                1 => Just(Ev::DriftForeign),
                2 => (1i64..40).prop_map(Ev::Wait),
                1 => (1i64..30).prop_map(Ev::ClockBack),
                1 => (0usize..5, 1i64..60).prop_map(|(k, s)| Ev::SpecBan(k, s)),
            ]
        }

        /// Every holder change is justified by definite facts of its input (no change on
        /// unknowns), with the reason it gives.
        fn change_justified(i: &Input, ch: &HolderChange) -> Result<(), String> {
            let Some(h) = ch.from.as_deref() else {
                return match ch.reason {
                    ChangeReason::Elected | ChangeReason::Adopted => Ok(()),
                    r => Err(format!("{r} from no holder")),
                };
            };
            let c = find(i, h);
            let ok = match ch.reason {
                ChangeReason::HolderRemoved => c.is_none(),
                ChangeReason::HolderDead => {
                    c.is_some_and(|c| matches!(c.health, NodeHealth::Dead { .. }))
                }
                ChangeReason::HolderIneligible => {
                    c.is_some_and(|c| c.eligibility != Eligibility::Eligible)
                }
                ChangeReason::HolderBanned => is_banned(i, h),
                ChangeReason::AssociateFailed => {
                    failure_ban(i, h).is_some_and(|r| r.kind == FailureKind::AssociateFailed)
                }
                ChangeReason::Drift => {
                    i.holder_confirmed
                        && !matches!(i.address, AddressObservation::Unknown { .. })
                        && c.and_then(|c| c.target.as_ref())
                            .is_some_and(|t| !on_target(&i.address, t))
                }
                ChangeReason::Failback => {
                    i.policy.failback == FailbackPolicy::Immediate
                        && c.is_some_and(|c| c.health == NodeHealth::Healthy)
                }
                ChangeReason::Pinned => active_pin(i).is_some(),
                ChangeReason::Elected | ChangeReason::Adopted | ChangeReason::Stopped => false,
            };
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "{} -> {:?} ({}) not justified",
                    h, ch.to, ch.reason
                ))
            }
        }

        #[allow(clippy::too_many_arguments)] // the generated parameters of one world
        fn run_world(
            n: usize,
            threshold: u32,
            timeout: Option<u64>,
            immediate: bool,
            hold_down: u64,
            events: &[Ev],
        ) -> Result<(), TestCaseError> {
            let mut candidates: Vec<CandidateView> = (0..n).map(|i| node(&name(i), 0)).collect();
            let mut address: Option<String> = None;
            let mut ec2_down = false;
            let mut refuse: Vec<String> = Vec::new();
            let mut holder: Option<String> = None;
            let mut confirmed = false;
            let mut failures = BTreeMap::new();
            let mut now = ts(0);
            let mut policy = Policy {
                failback: if immediate {
                    FailbackPolicy::Immediate
                } else {
                    FailbackPolicy::Never
                },
                hold_down: Duration::from_secs(hold_down),
                migration_threshold: threshold,
                failure_timeout: timeout.map(Duration::from_secs),
                ..Policy::default()
            };
            // Quiet passes until one changes nothing (a fixpoint): every pending refusal met
            // and moved away from, every due expiry applied.
            let quiet: Vec<Ev> = std::iter::once(Ev::Ec2Down(false))
                .chain(std::iter::repeat_n(Ev::Wait(1), 100))
                .collect();
            for (step, ev) in events.iter().chain(quiet.iter()).enumerate() {
                now += SignedDuration::from_secs(1);
                let mut lagged: Option<Option<String>> = None;
                let k_ok = |k: &usize| *k < n;
                match ev {
                    Ev::Die(k) if k_ok(k) => {
                        candidates[*k].health = NodeHealth::Dead {
                            reason: "probe".into(),
                        };
                    }
                    Ev::Return(k) if k_ok(k) => {
                        if candidates[*k].health != NodeHealth::Healthy {
                            candidates[*k].healthy_since = Some(now);
                        }
                        candidates[*k].health = NodeHealth::Healthy;
                    }
                    Ev::HealthUnknown(k) if k_ok(k) => {
                        candidates[*k].health = NodeHealth::Unknown {
                            reason: "timeout".into(),
                        };
                        candidates[*k].healthy_since = None;
                    }
                    Ev::Standby(k) if k_ok(k) => candidates[*k].eligibility = Eligibility::Standby,
                    Ev::Cordon(k) if k_ok(k) => candidates[*k].eligibility = Eligibility::Cordoned,
                    Ev::Unresolvable(k) if k_ok(k) => {
                        candidates[*k].eligibility = Eligibility::Unresolvable {
                            reason: "no providerID".into(),
                        };
                    }
                    Ev::Unresolved(k) if k_ok(k) => candidates[*k].target = None,
                    Ev::Eligible(k) if k_ok(k) => {
                        candidates[*k].eligibility = Eligibility::Eligible;
                        candidates[*k].target = Some(target(&name(*k)));
                    }
                    Ev::Ec2Down(down) => ec2_down = *down,
                    Ev::Refuse(k) if k_ok(k) && !refuse.contains(&name(*k)) => {
                        refuse.push(name(*k))
                    }
                    Ev::Drift(to, lag) => {
                        let before = address.clone();
                        address = to.filter(|k| *k < n).map(|k| format!("eni-{}", name(k)));
                        if *lag {
                            lagged = Some(before);
                        }
                    }
                    Ev::DriftForeign => address = Some("eni-foreign".into()),
                    Ev::Wait(s) => now += SignedDuration::from_secs(*s),
                    Ev::ClockBack(s) => now -= SignedDuration::from_secs(*s),
                    Ev::SpecBan(k, s) if k_ok(k) => {
                        policy.bans.retain(|(b, _)| *b != name(*k));
                        policy
                            .bans
                            .push((name(*k), Some(now + SignedDuration::from_secs(*s))));
                    }
                    _ => {}
                }
                let seen = lagged.unwrap_or_else(|| address.clone());
                let observation = simulated_observation(ec2_down, seen.as_deref(), step);
                let holder_eni = holder.as_ref().map(|h| format!("eni-{h}"));
                if !ec2_down && holder_eni.is_some() && holder_eni == seen {
                    confirmed = true;
                }
                // Like the controller: a node that is not eligible keeps its last known target
                // (ownership of its interface); an eligible node's lookup completes within a
                // pass, so after the events every eligible node is resolved again.
                if step >= events.len() {
                    for c in candidates.iter_mut() {
                        if c.eligibility == Eligibility::Eligible && c.target.is_none() {
                            c.target = Some(target(&c.node));
                        }
                    }
                }
                let mut view = candidates.clone();
                for c in view.iter_mut() {
                    if c.eligibility != Eligibility::Eligible {
                        c.target.get_or_insert_with(|| target(&c.node));
                    }
                }
                let input = Input {
                    now,
                    policy: policy.clone(),
                    candidates: view,
                    holder: holder.clone(),
                    holder_confirmed: confirmed,
                    failures: failures.clone(),
                    address: observation.clone(),
                };
                let d = decide(&input);

                // One holder, a candidate; every change justified by definite facts.
                if let Some(h) = &d.holder {
                    prop_assert!(find(&input, h).is_some(), "holder {} is not a candidate", h);
                }
                if let Some(ch) = &d.change
                    && let Err(e) = change_justified(&input, ch)
                {
                    return Err(TestCaseError::fail(format!("{e}: {input:?}")));
                }
                // A failure is only ever counted on a definite, confirmed drift.
                if let Some((node, kind)) = &d.record_failure {
                    prop_assert_eq!(*kind, FailureKind::Drift);
                    prop_assert!(input.holder_confirmed && Some(node) == input.holder.as_ref());
                    let known = !matches!(observation, AddressObservation::Unknown { .. });
                    prop_assert!(known, "failure counted while EC2 is unknown");
                }
                if let Action::Associate { node, target: t } = &d.action {
                    prop_assert!(!ec2_down, "associate while EC2 is unknown");
                    prop_assert_eq!(Some(node), d.holder.as_ref());
                    let c = find(&input, node).expect("holder is a candidate");
                    prop_assert_eq!(Some(t), c.target.as_ref());
                    prop_assert!(
                        seen.as_deref() != Some("eni-foreign"),
                        "took a foreign address"
                    );
                    // A banned node is only re-associated when nobody else could hold it.
                    if is_banned(&input, node) {
                        prop_assert!(
                            !input
                                .candidates
                                .iter()
                                .any(|o| o.node != *node && eligible_for_election(&input, o)),
                            "associated to banned {} with an alternative: {:?}",
                            node,
                            input
                        );
                    }
                }

                // Apply it as the controller does.
                if d.holder != holder {
                    confirmed = false;
                }
                holder = d.holder.clone();
                d.apply_to_failures(&mut failures, now);
                if let Action::Associate { node, target: t } = &d.action {
                    if let Some(pos) = refuse.iter().position(|r| r == node) {
                        refuse.remove(pos);
                        record_failure(
                            &mut failures,
                            node,
                            now,
                            FailureKind::AssociateFailed,
                            "refused",
                            Some(threshold),
                        );
                        let after = Input {
                            failures: failures.clone(),
                            ..input.clone()
                        };
                        prop_assert!(is_banned(&after, node), "a refused node is banned at once");
                    } else {
                        address = Some(t.network_interface_id.clone());
                    }
                }
                // Expired failure records never survive a decision.
                if let Some(t) = policy.failure_timeout {
                    for (node, r) in &failures {
                        prop_assert!(
                            r.last_failure == now || !elapsed(r.last_failure, t, input.now),
                            "expired record of {} kept",
                            node
                        );
                    }
                }
                let noop = d.change.is_none()
                    && d.action == Action::None
                    && d.record_failure.is_none()
                    && d.expire_failures.is_empty();
                if step > events.len() && noop {
                    break;
                }
            }

            // Liveness once EC2 answers and nothing is refused: if anybody may hold a
            // non-foreign address, somebody does, and a live, resolved holder has it.
            let input = Input {
                now,
                policy,
                candidates: candidates.clone(),
                holder: holder.clone(),
                holder_confirmed: confirmed,
                failures,
                address: AddressObservation::Unassociated,
            };
            let someone = candidates.iter().any(|c| eligible_for_election(&input, c));
            if someone && refuse.is_empty() && address.as_deref() != Some("eni-foreign") {
                prop_assert!(holder.is_some(), "nobody holds the address: {:?}", input);
                let h = holder.as_deref().and_then(|h| find(&input, h));
                if let Some(h) =
                    h.filter(|h| !matches!(h.health, NodeHealth::Dead { .. }) && h.target.is_some())
                {
                    let want = format!("eni-{}", h.node);
                    prop_assert_eq!(
                        address.as_deref(),
                        Some(want.as_str()),
                        "address not on the live holder: {:?}",
                        input
                    );
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1500))]

            #[test]
            fn world_sequences_never_move_on_unknowns_and_stay_live(
                n in 2usize..5,
                threshold in 1u32..4,
                timeout in proptest::option::of(5u64..60),
                immediate in proptest::bool::weighted(0.3),
                hold_down in 0u64..20,
                events in proptest::collection::vec(arb_ev(), 1..80),
            ) {
                run_world(n, threshold, timeout, immediate, hold_down, &events)?;
            }
        }
    }
}
