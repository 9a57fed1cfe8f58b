//! The decision core's inputs and outputs: what `decide` reads about the world and what it
//! returns. Plain data, no logic beyond naming.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;

use crate::crd::FailbackPolicy;

/// `as_str`, each variant's stable name, from one list per enum. Fieldless enums (`as_str(self)`)
/// also get a `Display` that writes the name and `ALL`, every variant in declaration order;
/// since `as_str` matches exhaustively, a variant missing from the list does not compile.
macro_rules! stable_names {
    ($(#[$doc:meta])* $ty:ident::as_str(self) { $($variant:ident => $name:literal,)+ }) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant,)+];

            $(#[$doc])*
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
    ($(#[$doc:meta])* $ty:ident::as_str(&self) { $($variant:ident => $name:literal,)+ }) => {
        impl $ty {
            $(#[$doc])*
            pub fn as_str(&self) -> &'static str {
                match self {
                    $($ty::$variant { .. } => $name,)+
                }
            }
        }
    };
}

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
    /// Every usable private IP of the node's interface carries another address (one Elastic
    /// IP per private IP). `target` keeps the interface for ownership; the address is never
    /// associated there (that would knock the other address off).
    NoFreeSlot {
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

stable_names! {
    /// Stable name for status (`lastFailureReason`), events and metrics labels.
    FailureKind::as_str(self) {
        Drift => "Drift",
        AssociateFailed => "AssociateFailed",
    }
}

impl FailureKind {
    /// Inverse of [`FailureKind::as_str`], for reading the kind back from status.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Drift" => Some(FailureKind::Drift),
            "AssociateFailed" => Some(FailureKind::AssociateFailed),
            _ => None,
        }
    }

    pub(crate) fn description(self) -> &'static str {
        match self {
            FailureKind::Drift => "the address was found off the holder's target",
            FailureKind::AssociateFailed => "AssociateAddress failed",
        }
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
    /// Not decided here: the controller took back a change an earlier leader wrote and never
    /// confirmed, because this leader sees the previous holder healthy and still holding the
    /// address (a deposed leader's delayed write, fencing).
    Superseded,
}

stable_names! {
    /// Stable name for events, status (`lastFailover.reason`) and metrics labels.
    ChangeReason::as_str(self) {
        HolderDead => "HolderDead",
        HolderIneligible => "HolderIneligible",
        HolderRemoved => "HolderRemoved",
        HolderBanned => "HolderBanned",
        Drift => "Drift",
        AssociateFailed => "AssociateFailed",
        Pinned => "Pinned",
        Failback => "Failback",
        Elected => "Elected",
        Adopted => "Adopted",
        Stopped => "Stopped",
        Superseded => "Superseded",
    }
}

/// A string that is not the [`ChangeReason::as_str`] name of any reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown change reason {0:?}")]
pub struct UnknownChangeReason(pub String);

/// Inverse of [`ChangeReason::as_str`], e.g. for reading a reason back from the Lease or status.
impl FromStr for ChangeReason {
    type Err = UnknownChangeReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ChangeReason::ALL
            .iter()
            .copied()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownChangeReason(s.to_owned()))
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

stable_names! {
    /// Stable name for events and conditions.
    Finding::as_str(&self) {
        Ec2Unknown => "Ec2Unknown",
        HolderHealthUnknown => "HolderHealthUnknown",
        NoEligibleCandidate => "NoEligibleCandidate",
        ForeignAssociation => "ForeignAssociation",
        DriftObserved => "DriftObserved",
        WaitingForTarget => "WaitingForTarget",
        StoppedAfterAssociateFailure => "StoppedAfterAssociateFailure",
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
