//! The `FloatingElasticIP` API (`feip.io/v1alpha1`).
//!
//! One object names one Elastic IP and the nodes that may hold it. The spec mirrors what a
//! Pacemaker user could say about an EIP resource (location scores, stickiness,
//! migration-threshold, failure-timeout, move/ban/clear, cleanup, disable, unmanage); the
//! status is what `crm_mon` never showed. Everything that can be checked without talking to EC2
//! is checked at admission by the OpenAPI schema and CEL rules declared here.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// API group of every feip resource.
pub const GROUP: &str = "feip.io";
/// Finalizer that guarantees the association is released before the object disappears.
pub const FINALIZER: &str = "feip.io/release";
/// Node label that makes a node ineligible (Pacemaker's `pcs node standby`).
pub const STANDBY_LABEL: &str = "feip.io/standby";

/// Keeps one AWS Elastic IP associated with exactly one healthy candidate node.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "feip.io",
    version = "v1alpha1",
    kind = "FloatingElasticIP",
    plural = "floatingelasticips",
    shortname = "feip",
    namespaced,
    status = "FloatingElasticIPStatus",
    category = "all",
    printcolumn(name = "Address", type_ = "string", json_path = ".status.address.publicIp"),
    printcolumn(name = "Holder", type_ = "string", json_path = ".status.holder.node"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Failovers", type_ = "integer", json_path = ".status.failoverCount"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    selectable = ".spec.allocationId",
    selectable = ".spec.publicIp",
    validation = Rule::new("size(self.metadata.name) <= 63").message("metadata.name must be at most 63 characters (it is a label value on the holder Lease)"),
)]
#[x_kube(
    validation = Rule::new("has(self.allocationId) != has(self.publicIp)").message("exactly one of spec.allocationId or spec.publicIp must be set"),
    validation = Rule::new("(has(self.candidates) && size(self.candidates) > 0) != has(self.nodeSelector)").message("exactly one candidate source must be set: a non-empty spec.candidates list or spec.nodeSelector"),
    validation = Rule::new("has(self.allocationId) == has(oldSelf.allocationId) && has(self.publicIp) == has(oldSelf.publicIp) && (!has(self.allocationId) || self.allocationId == oldSelf.allocationId) && (!has(self.publicIp) || self.publicIp == oldSelf.publicIp)").message("the Elastic IP of a FloatingElasticIP is immutable: create a new object to manage another address"),
    validation = Rule::new("!has(self.pin) || !has(self.candidates) || self.candidates.exists(c, c.node == self.pin.node)").message("spec.pin.node must be one of spec.candidates"),
    validation = Rule::new("!has(self.pin) || !has(self.bans) || !self.bans.exists(b, b.node == self.pin.node)").message(kube::core::Message::Expression("'spec.pin.node ' + self.pin.node + ' is also in spec.bans: a node cannot be pinned and banned at the same time'".into())),
    validation = Rule::new("!has(self.nodeSelector) || !has(self.nodeSelector.matchExpressions) || self.nodeSelector.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist'] && ((e.operator in ['In', 'NotIn']) == (has(e.values) && size(e.values) > 0)))").message("spec.nodeSelector.matchExpressions: operator must be In, NotIn, Exists or DoesNotExist; In and NotIn need values, Exists and DoesNotExist take none"),
)]
#[serde(rename_all = "camelCase")]
pub struct FloatingElasticIPSpec {
    /// Allocation id of the Elastic IP (`eipalloc-...`). Exactly one of allocationId / publicIp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^eipalloc-[0-9a-f]{8,17}$"))]
    pub allocation_id: Option<String>,

    /// Public IPv4 address of the Elastic IP. Exactly one of allocationId / publicIp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("isIP(self) && ip(self).family() == 4").message("spec.publicIp must be an IPv4 address"),
        validation = Rule::new("!isIP(self) || ip(self).family() != 4 || (ip(self).isGlobalUnicast() && !['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10'].exists(c, cidr(c).containsIP(self)))").message(kube::core::Message::Expression("'spec.publicIp ' + self + ' is not a public address: an Elastic IP is a public IPv4 address (not private, shared, loopback, link-local, multicast, broadcast or unspecified)'".into())),
    )]
    #[schemars(length(max = 15))]
    pub public_ip: Option<String>,

    /// Candidate nodes in order of preference (Pacemaker location constraints). Higher
    /// `priority` wins; equal priorities keep list order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["node".into()]))]
    pub candidates: Option<Vec<Candidate>>,

    /// Alternative to `candidates`: every node matching this selector is a candidate, ordered
    /// by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "node_selector_schema")]
    pub node_selector: Option<LabelSelector>,

    /// Which network interface of the holder's instance receives the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interface: Option<NetworkInterfaceSelector>,

    /// What happens when a preferred node becomes healthy again while another node holds
    /// the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback: Option<Failback>,

    /// Failures of one node (for this address) after which the node is banned.
    /// Pacemaker's migration-threshold. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub migration_threshold: Option<i32>,

    /// How long after its last failure a node's failure count and ban expire.
    /// Pacemaker's failure-timeout; "0s" (default) keeps them until cleanup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s') && duration(self) <= duration('8760h')").message("spec.failureTimeout must be between 0s and 8760h"))]
    pub failure_timeout: Option<Duration>,

    /// What to do when AssociateAddress definitely fails on a node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "associate_failure_schema")]
    pub on_associate_failure: Option<AssociateFailurePolicy>,

    /// EC2 monitoring ("is the address still where it should be?").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<Monitor>,

    /// Node health signals beyond Node Ready and the kubelet heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,

    /// Take the address even when it is associated with an instance outside the candidate
    /// set. Off by default: such an address is reported, never taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_takeover: Option<bool>,

    /// `Started` (default) keeps the address on a node; `Stopped` disassociates it and holds
    /// no node (pcs resource disable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "target_state_schema")]
    pub target_state: Option<TargetState>,

    /// `Managed` (default) or `ObserveOnly`: monitor and report, never mutate EC2
    /// (pcs resource unmanage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "management_schema")]
    pub management: Option<Management>,

    /// What deleting this object does to the association.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "release_policy_schema")]
    pub release_policy: Option<ReleasePolicy>,

    /// Prefer this node over every other healthy candidate (pcs resource move).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<Pin>,

    /// Nodes that must not hold the address (pcs resource ban), optionally until a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["node".into()]))]
    pub bans: Option<Vec<Ban>>,

    /// Reset failure counts and failure bans (pcs resource cleanup). Each new `requestId`
    /// triggers one reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<Cleanup>,
}

/// One candidate node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// Node name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub node: String,
    /// Higher wins. Default 0; ties keep list order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: Option<i32>,
    /// A secondary private IPv4 address of the node's interface to map the EIP to, instead of
    /// the interface's primary private IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    #[x_kube(validation = Rule::new("isIP(self) && ip(self).family() == 4").message("privateIpAddress must be an IPv4 address"))]
    pub private_ip_address: Option<String>,
}

/// Which ENI of the instance gets the address.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInterfaceSelector {
    /// Device index of the interface (default 0, the primary interface).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31))]
    pub device_index: Option<i32>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.holdDown) || self.policy == 'Immediate'").message("failback.holdDown is only meaningful with policy Immediate"))]
pub struct Failback {
    /// `Never` (default, Pacemaker resource-stickiness=INFINITY) or `Immediate`.
    pub policy: FailbackPolicy,
    /// With `Immediate`: how long a preferred node must stay healthy before the address
    /// moves back to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s') && duration(self) <= duration('24h')").message("failback.holdDown must be between 0s and 24h"))]
    pub hold_down: Option<Duration>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum FailbackPolicy {
    #[default]
    Never,
    Immediate,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum AssociateFailurePolicy {
    /// Ban the node and try the next candidate (default).
    #[default]
    TryNext,
    /// Ban the node and leave the address unassociated until an operator acts.
    Stop,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.timeout) || duration(self.timeout) <= duration(has(self.interval) ? self.interval : '10s')").message(kube::core::Message::Expression("'monitor.timeout (' + self.timeout + ') must not exceed monitor.interval (' + (has(self.interval) ? self.interval : '10s, the default') + ')'".into())))]
pub struct Monitor {
    /// How often the address is checked (one batched DescribeAddresses for all addresses).
    /// Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('1h')").message("monitor.interval must be between 1s and 1h"))]
    pub interval: Option<Duration>,
    /// How long after an AssociateAddress the change may take to show in DescribeAddresses
    /// (EC2 is eventually consistent) before the outcome counts as unknown and is retried.
    /// Default 5s. (The timeout of each EC2 request is the controller's `--ec2-timeout`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('100ms') && duration(self) <= duration('60s')").message("monitor.timeout must be between 100ms and 60s"))]
    pub timeout: Option<Duration>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// A node whose kubelet heartbeat Lease has not changed for this long is dead.
    /// Default 40s (Kubernetes' node-monitor-grace-period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('1h')").message("health.heartbeatTimeout must be between 1s and 1h"))]
    pub heartbeat_timeout: Option<Duration>,
    /// Active probe of each candidate's InternalIP. Default: TCP connect to the kubelet port
    /// 10250 every 1s, 3 failures = dead. `type: None` turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.path) || self.type == 'HTTP'").message("probe.path is only valid with type HTTP"),
    validation = Rule::new("!has(self.timeout) || duration(self.timeout) <= duration(has(self.period) ? self.period : '1s')").message(kube::core::Message::Expression("'probe.timeout (' + self.timeout + ') must not exceed probe.period (' + (has(self.period) ? self.period : '1s, the default') + ')'".into())),
    validation = Rule::new("self.type != 'None' || (!has(self.port) && !has(self.path))").message("a probe of type None takes no port or path"),
)]
pub struct Probe {
    /// `TCP` (default), `HTTP` (GET, any 2xx/3xx is success) or `None`.
    #[serde(default, rename = "type")]
    pub kind: ProbeType,
    /// Port on the node's InternalIP. Default 10250 (kubelet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// HTTP path (type HTTP only). Default `/healthz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), regex(pattern = r"^/\S*$"))]
    pub path: Option<String>,
    /// Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('100ms') && duration(self) <= duration('5m')").message("probe.period must be between 100ms and 5m"))]
    pub period: Option<Duration>,
    /// Default 1s (or the period, when shorter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10ms') && duration(self) <= duration('1m')").message("probe.timeout must be between 10ms and 1m"))]
    pub timeout: Option<Duration>,
    /// Consecutive failures that make a node dead. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: Option<i32>,
    /// Consecutive successes that make a dead node alive again. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub success_threshold: Option<i32>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum ProbeType {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "None")]
    None,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum TargetState {
    #[default]
    Started,
    Stopped,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum Management {
    #[default]
    Managed,
    ObserveOnly,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum ReleasePolicy {
    /// Disassociate the address when the object is deleted (default).
    #[default]
    Disassociate,
    /// Leave the association in place.
    Retain,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Pin {
    /// Node to move the address to and keep it on while that node is healthy.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub node: String,
    /// The pin ends at this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// The controller removes the pin once the address is confirmed on the node
    /// (`feip move` sets this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_when_done: Option<bool>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Ban {
    /// Node that must not hold the address.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub node: String,
    /// The ban ends at this time; absent = until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Cleanup {
    /// Any new value triggers one reset; the controller records the last one it handled in
    /// `status.lastCleanupRequestId`.
    #[schemars(length(min = 1, max = 128))]
    pub request_id: String,
    /// Reset only this node's counts; absent = every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub node: Option<String>,
}

/// Observed state, written only by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FloatingElasticIPStatus {
    /// Pending, Associating, Active, Failing, Stopped, Unmanaged, Blocked or Error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<HolderStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<AddressStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseStatus>,
    /// Completed node -> node changes feip made on its own (a failure, a policy: failback,
    /// standby, cordon); operator moves (`Pinned`) are in `plannedMoveCount`.
    #[serde(default)]
    pub failover_count: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverRecord>,
    /// Completed node -> node changes an operator asked for (a pin: `feip move`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub planned_move_count: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_planned_move: Option<FailoverRecord>,
    /// Per-node failure counts and bans.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_cleanup_request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Phase {
    Pending,
    Associating,
    Active,
    Failing,
    Stopped,
    Unmanaged,
    Blocked,
    Error,
}

impl Phase {
    /// Every phase, in declaration order.
    pub const ALL: &'static [Phase] = &[
        Phase::Pending,
        Phase::Associating,
        Phase::Active,
        Phase::Failing,
        Phase::Stopped,
        Phase::Unmanaged,
        Phase::Blocked,
        Phase::Error,
    ];

    /// The name as serialized in `status.phase` (and the `Ready` condition's reason).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Associating => "Associating",
            Phase::Active => "Active",
            Phase::Failing => "Failing",
            Phase::Stopped => "Stopped",
            Phase::Unmanaged => "Unmanaged",
            Phase::Blocked => "Blocked",
            Phase::Error => "Error",
        }
    }
}

/// The types of `status.conditions` (docs/semantics.md, "Conditions").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    Associated,
    HolderHealthy,
    Degraded,
    Blocked,
    Ready,
}

impl ConditionType {
    /// Every type, in the order `build_status` sets them.
    pub const ALL: &'static [ConditionType] = &[
        ConditionType::Associated,
        ConditionType::HolderHealthy,
        ConditionType::Degraded,
        ConditionType::Blocked,
        ConditionType::Ready,
    ];

    /// The condition's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Associated => "Associated",
            ConditionType::HolderHealthy => "HolderHealthy",
            ConditionType::Degraded => "Degraded",
            ConditionType::Blocked => "Blocked",
            ConditionType::Ready => "Ready",
        }
    }
}

/// The reasons of `status.conditions`, grouped by the condition that uses them
/// (docs/semantics.md, "Conditions"). `Ready`'s reason is always the phase
/// ([`Phase::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionReason {
    // Associated
    OnHolder,
    NotOnHolder,
    Unknown,
    // HolderHealthy
    Healthy,
    HolderDead,
    HolderHealthUnknown,
    NoHolder,
    // Degraded
    AsExpected,
    AddressNotFound,
    AssociateFailed,
    Ec2Refused,
    Ec2Unknown,
    ForeignAssociation,
    NoEligibleCandidate,
    StoppedAfterAssociateFailure,
    DriftObserved,
    CandidateUnresolvable,
    /// Degraded: some candidate's interface has no private IP free of other addresses (one
    /// Elastic IP per private IP).
    NoFreePrivateIp,
    /// Degraded: another (older) object manages the same address.
    AddressConflict,
    /// Degraded: no FloatingElasticIPGrant permits the claim; the message names what is
    /// missing.
    NotPermitted,
    // Blocked
    NotBlocked,
    DisassociateFailed,
    /// Blocked: a release on deletion waits for facts it needs (the address, the candidates'
    /// instances); the message names them.
    ReleasePending,
}

impl ConditionReason {
    /// Every reason, in declaration order.
    pub const ALL: &'static [ConditionReason] = &[
        ConditionReason::OnHolder,
        ConditionReason::NotOnHolder,
        ConditionReason::Unknown,
        ConditionReason::Healthy,
        ConditionReason::HolderDead,
        ConditionReason::HolderHealthUnknown,
        ConditionReason::NoHolder,
        ConditionReason::AsExpected,
        ConditionReason::AddressNotFound,
        ConditionReason::AssociateFailed,
        ConditionReason::Ec2Refused,
        ConditionReason::Ec2Unknown,
        ConditionReason::ForeignAssociation,
        ConditionReason::NoEligibleCandidate,
        ConditionReason::StoppedAfterAssociateFailure,
        ConditionReason::DriftObserved,
        ConditionReason::CandidateUnresolvable,
        ConditionReason::NoFreePrivateIp,
        ConditionReason::AddressConflict,
        ConditionReason::NotPermitted,
        ConditionReason::NotBlocked,
        ConditionReason::DisassociateFailed,
        ConditionReason::ReleasePending,
    ];

    /// The condition's `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionReason::OnHolder => "OnHolder",
            ConditionReason::NotOnHolder => "NotOnHolder",
            ConditionReason::Unknown => "Unknown",
            ConditionReason::Healthy => "Healthy",
            ConditionReason::HolderDead => "HolderDead",
            ConditionReason::HolderHealthUnknown => "HolderHealthUnknown",
            ConditionReason::NoHolder => "NoHolder",
            ConditionReason::AsExpected => "AsExpected",
            ConditionReason::AddressNotFound => "AddressNotFound",
            ConditionReason::AssociateFailed => "AssociateFailed",
            ConditionReason::Ec2Refused => "Ec2Refused",
            ConditionReason::Ec2Unknown => "Ec2Unknown",
            ConditionReason::ForeignAssociation => "ForeignAssociation",
            ConditionReason::NoEligibleCandidate => "NoEligibleCandidate",
            ConditionReason::StoppedAfterAssociateFailure => "StoppedAfterAssociateFailure",
            ConditionReason::DriftObserved => "DriftObserved",
            ConditionReason::CandidateUnresolvable => "CandidateUnresolvable",
            ConditionReason::NoFreePrivateIp => "NoFreePrivateIp",
            ConditionReason::AddressConflict => "AddressConflict",
            ConditionReason::NotPermitted => "NotPermitted",
            ConditionReason::NotBlocked => "NotBlocked",
            ConditionReason::DisassociateFailed => "DisassociateFailed",
            ConditionReason::ReleasePending => "ReleasePending",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HolderStatus {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interface_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub association_id: Option<String>,
    /// Network interface the address is associated with right now, as EC2 reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interface_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip_address: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseStatus {
    pub name: String,
    #[serde(default)]
    pub transitions: i32,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub to: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// Detection to confirmed association, in seconds (e.g. "1.234").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub node: String,
    #[serde(default)]
    pub failure_count: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_reason: Option<String>,
    #[serde(default)]
    pub banned: bool,
    /// Set when the ban expires by itself (failureTimeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub banned_until: Option<Time>,
}

/// Schema of an optional enum field: the enum's own schema, without the `null` that schemars
/// adds for an `Option`. The field is then not nullable, so the apiserver prunes an explicit
/// `null` (from a template or a tool that writes every field) and the default applies, as for
/// an absent field; with `null` in the enum it rejected the manifest with a message listing
/// `null` among the supported values.
fn optional_enum<T: schemars::JsonSchema>(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    g.subschema_for::<T>()
}

// One function per field type: schemars names a `schema_with` schema after its function.
fn associate_failure_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    optional_enum::<AssociateFailurePolicy>(g)
}
fn target_state_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    optional_enum::<TargetState>(g)
}
fn management_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    optional_enum::<Management>(g)
}
fn release_policy_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    optional_enum::<ReleasePolicy>(g)
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters (alphanumerics, `-`, `_`, `.`, alphanumeric at both ends).
const LABEL_KEY: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
/// A label value: empty, or at most 63 characters like a key's name.
const LABEL_VALUE: &str = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$";

/// Schema of `spec.nodeSelector`: a label selector whose keys and values are checked at
/// admission like a Deployment's (an invalid selector was accepted and then matched no node,
/// reported only as "no candidates"), with bounds that keep its rules cheap.
fn node_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let key_rule = format!("self.all(k, k.matches(r'{LABEL_KEY}') && size(k) <= 317)");
    let key_message = format!(
        "'spec.nodeSelector.matchLabels: ' + self.filter(k, !(k.matches(r'{LABEL_KEY}') && size(k) <= 317))[0] + ' is not a valid label key (an optional DNS subdomain prefix and /, then at most 63 characters: alphanumerics, -, _ or ., beginning and ending with an alphanumeric)'"
    );
    schemars::json_schema!({
        "type": "object",
        "properties": {
            "matchLabels": {
                "description": "Node labels that must all match.",
                "type": "object",
                "maxProperties": 32,
                "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE},
                "x-kubernetes-validations": [{"rule": key_rule, "messageExpression": key_message}],
            },
            "matchExpressions": {
                "description": "Label requirements that must all match.",
                "type": "array",
                "maxItems": 32,
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string", "maxLength": 317, "pattern": LABEL_KEY},
                        "operator": {"type": "string", "maxLength": 16},
                        "values": {
                            "type": "array",
                            "maxItems": 64,
                            "items": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE},
                        },
                    },
                },
            },
        },
    })
}

/// Schema of every duration field: a Go duration string the apiserver's CEL `duration()` can
/// parse, so the CEL bounds on the field never fail with a parse error.
pub(crate) fn duration_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "maxLength": 32,
        "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$",
    })
}

impl FloatingElasticIP {
    /// Name of the per-object Lease that records the elected holder.
    pub fn lease_name(&self) -> String {
        format!("feip-{}", kube::ResourceExt::name_any(self))
    }
}

/// The CRD as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&FloatingElasticIP::crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crd_is_current() {
        let committed = include_str!("../crds/floatingelasticips.feip.io.yaml");
        let generated = crd_yaml().expect("crd serialises");
        assert!(
            committed == generated,
            "crds/floatingelasticips.feip.io.yaml is stale: run hack/gen-crd.sh (it writes this file and the chart's copy)"
        );
    }

    #[test]
    fn phase_names_are_the_serialized_names() {
        for p in Phase::ALL {
            assert_eq!(
                serde_json::to_value(p).expect("phase serialises"),
                serde_json::json!(p.as_str())
            );
        }
    }

    #[test]
    fn condition_names_are_the_variant_names() {
        for t in ConditionType::ALL {
            assert_eq!(format!("{t:?}"), t.as_str());
        }
        for r in ConditionReason::ALL {
            assert_eq!(format!("{r:?}"), r.as_str());
        }
    }

    #[test]
    fn minimal_spec_round_trips() {
        let spec: FloatingElasticIPSpec = serde_json::from_value(serde_json::json!({
            "allocationId": "eipalloc-0123456789abcdef0",
            "candidates": [{"node": "node-a"}, {"node": "node-b", "priority": 10}],
            "failureTimeout": "10m",
        }))
        .expect("valid spec");
        assert_eq!(spec.candidates.as_ref().map(Vec::len), Some(2));
        assert_eq!(
            std::time::Duration::from(spec.failure_timeout.expect("set")),
            std::time::Duration::from_secs(600)
        );
    }
}
