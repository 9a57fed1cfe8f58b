//! Observation (no client): the caches' readings and the resolved spec in, the decision
//! input out. Candidate eligibility and targets, the health verdict per node, the network
//! guard, last known targets, the address lookup and ownership between objects.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::runtime::reflector::Store;

use crate::aws::AddressInfo;
use crate::crd::{FloatingElasticIP, FloatingElasticIPStatus};
use crate::decide::{
    AddressObservation, CandidateView, Eligibility, FailureKind, FailureRecord, Input, NodeHealth,
    Target,
};
use crate::health::{self, NodeSignals};
use crate::kube_ext::{NodeFacts, selector_matches};

use super::context::{AddressMemory, CandidateReading, CandidateReadings, Ec2View, Snapshot};
use super::holder_lease::CONFIRMED_ANNOTATION;
use super::slots::{self, Occupancy, OwnSlot, SlotError, SlotRecord};
use super::spec::ResolvedSpec;

/// A candidate as listed (spec order) with its priority and optional secondary private IP.
pub(super) struct Listed {
    pub(super) node: String,
    pub(super) priority: i32,
    pub(super) private_ip: Option<String>,
}

pub(super) fn listed_candidates(f: &FloatingElasticIP, nodes: &Store<Node>) -> Vec<Listed> {
    if let Some(c) = &f.spec.candidates {
        return c
            .iter()
            .map(|c| Listed {
                node: c.node.clone(),
                priority: c.priority.unwrap_or(0),
                private_ip: c.private_ip_address.clone(),
            })
            .collect();
    }
    let Some(sel) = &f.spec.node_selector else {
        return Vec::new();
    };
    let mut names: Vec<String> = nodes
        .state()
        .iter()
        .filter(|n| selector_matches(sel, n.labels()))
        .map(|n| n.name_any())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|node| Listed {
            node,
            priority: 0,
            private_ip: None,
        })
        .collect()
}

/// Everything known about one candidate.
#[derive(Clone, Debug)]
pub(super) struct CandidateFacts {
    pub(super) view: CandidateView,
    pub(super) instance_id: Option<String>,
    /// The instance as EC2 last described it (its VPC is the network guard's input).
    pub(super) vpc_id: Option<String>,
    /// The instance is known to EC2 (a missing one keeps its last known target).
    pub(super) instance_known: bool,
    pub(super) dead_since: Option<Timestamp>,
    /// The node's probe started moments ago and has no verdict yet.
    pub(super) probe_pending: bool,
    /// The instance was never looked up: the monitor should read EC2 now.
    pub(super) needs_instance_read: bool,
}

/// The context one candidate is judged in.
pub(super) struct Judging<'a> {
    pub(super) spec: &'a ResolvedSpec,
    pub(super) region: Option<&'a str>,
    pub(super) instances_error: Option<&'a str>,
    pub(super) api_failing: bool,
    /// Why heartbeat silence is no death for this address now (a heartbeat gap).
    pub(super) heartbeat_gap: Option<&'a str>,
    pub(super) now: Timestamp,
    /// `now` on the monotonic clock: what healthy-since (the failback hold-down) counts on.
    pub(super) mono: Instant,
    /// Which private IPs other addresses hold, and this address's own slot.
    pub(super) slots: &'a SlotInputs,
    /// The interface and private IP the address is associated with now.
    pub(super) current: Option<(&'a str, &'a str)>,
}

/// What slot picking reads (see [`super::slots`]).
#[derive(Clone, Debug, Default)]
pub(super) struct SlotInputs {
    /// The private IPs of the candidates' interfaces that other addresses hold.
    pub(super) occupancy: Occupancy,
    /// This address's slot: as this process recorded it, else as its Lease does.
    pub(super) recorded: Option<SlotRecord>,
}

/// One candidate's eligibility, target and health. `healthy_since` is the address's memory
/// of since when each candidate has been healthy (kept while healthy, monotonic).
pub(super) fn candidate_facts(
    j: &Judging<'_>,
    c: &CandidateReading,
    healthy_since: &mut HashMap<String, Instant>,
) -> CandidateFacts {
    let listed = &c.listed;
    let view = |health, eligibility, target| CandidateView {
        node: listed.node.clone(),
        priority: listed.priority,
        health,
        eligibility,
        healthy_since: None,
        target,
    };
    let Some(node) = &c.node else {
        healthy_since.remove(&listed.node);
        return CandidateFacts {
            view: view(
                NodeHealth::Dead {
                    reason: "Node object not found".into(),
                },
                Eligibility::Unresolvable {
                    reason: format!("node {} not found", listed.node),
                },
                None,
            ),
            instance_id: None,
            vpc_id: None,
            instance_known: false,
            dead_since: None,
            probe_pending: false,
            needs_instance_read: false,
        };
    };
    let instance_id = node.instance_id();
    let instance = c.instance.as_ref();
    let (eligibility, target) = eligibility_and_target(j, node, listed, c);
    let verdict = health::verdict(&NodeSignals {
        ready: node.ready(),
        heartbeat_age: c.heartbeat_age,
        heartbeat_timeout: j.spec.heartbeat_timeout,
        api_failing: j.api_failing,
        heartbeat_gap: j.heartbeat_gap,
        instance,
        instances_error: j.instances_error,
        probe: c.probe.clone(),
        now: j.now,
    });
    let since = if verdict.health == NodeHealth::Healthy {
        let start = *healthy_since.entry(listed.node.clone()).or_insert(j.mono);
        Some(healthy_since_wall(j.now, j.mono, start))
    } else {
        healthy_since.remove(&listed.node);
        None
    };
    let mut v = view(verdict.health, eligibility, target);
    v.healthy_since = since;
    CandidateFacts {
        view: v,
        needs_instance_read: instance_id.is_some() && instance.is_none() && !c.instance_covered,
        instance_id,
        vpc_id: instance.and_then(|i| i.vpc_id.clone()),
        instance_known: instance.is_some(),
        dead_since: verdict.dead_since,
        probe_pending: verdict.probe_pending,
    }
}

/// The wall-clock form of a monotonic healthy-since `start` that the decision compares with
/// `now` (finding L7): `now` minus the monotonic time elapsed since `start`. The decision's
/// `now - healthy_since` is then monotonic time, whatever the wall clock did meanwhile (a
/// forward step cannot satisfy the failback hold-down early, a backward one cannot delay it).
pub(super) fn healthy_since_wall(now: Timestamp, mono: Instant, start: Instant) -> Timestamp {
    let healthy_for = jiff::SignedDuration::try_from(mono.saturating_duration_since(start))
        .unwrap_or(jiff::SignedDuration::MAX);
    now.checked_sub(healthy_for).unwrap_or(Timestamp::MIN)
}

/// Eligibility (standby label, cordon/drain/termination taints, instance resolution) and the
/// interface + private IP the address would go to.
fn eligibility_and_target(
    j: &Judging<'_>,
    node: &NodeFacts,
    listed: &Listed,
    c: &CandidateReading,
) -> (Eligibility, Option<Target>) {
    let mut eligibility = if node.in_standby() {
        Eligibility::Standby
    } else if node.cordoned() {
        Eligibility::Cordoned
    } else {
        Eligibility::Eligible
    };
    let (target, problem) = match resolve_target(j, node, listed, c) {
        Ok(target) => (target, None),
        Err(TargetError::Unresolvable(reason)) => {
            (None, Some(Eligibility::Unresolvable { reason }))
        }
        Err(TargetError::NoFreeSlot { reason, target }) => {
            (Some(target), Some(Eligibility::NoFreeSlot { reason }))
        }
    };
    if let Some(problem) = problem
        && eligibility == Eligibility::Eligible
    {
        eligibility = problem;
    }
    (eligibility, target)
}

/// Why a candidate has no usable target.
enum TargetError {
    /// It can never take the address as configured.
    Unresolvable(String),
    /// Every usable private IP carries another address; `target` is the interface (for
    /// ownership), never to be associated.
    NoFreeSlot { reason: String, target: Target },
}

/// The candidate's target (its interface and its slot there); `Ok(None)` while its instance
/// is not looked up yet or EC2 is unknown.
fn resolve_target(
    j: &Judging<'_>,
    node: &NodeFacts,
    listed: &Listed,
    c: &CandidateReading,
) -> Result<Option<Target>, TargetError> {
    let unresolvable = TargetError::Unresolvable;
    let Some(p) = node.provider_id.as_deref() else {
        return Err(unresolvable("node has no spec.providerID".to_string()));
    };
    let Some(id) = node.instance_id() else {
        return Err(unresolvable(format!(
            "providerID {p:?} is not an AWS instance"
        )));
    };
    let Some(inst) = &c.instance else {
        if !c.instance_covered {
            return Ok(None); // not looked up yet or EC2 unknown: target stays unresolved
        }
        return Err(unresolvable(match zone_outside_region(p, j.region) {
            Some((zone, region)) => {
                format!("instance {id} is in {zone}, outside this controller's region {region}")
            }
            None => format!("instance {id} not found in EC2 (wrong account or region?)"),
        }));
    };
    let Some(eni) = inst.interface(j.spec.device_index) else {
        return Err(unresolvable(format!(
            "instance {} has no network interface at device index {}",
            inst.instance_id, j.spec.device_index
        )));
    };
    let on_eni = |eni_id: Option<&str>| eni_id.is_none_or(|e| e == eni.network_interface_id);
    let own = OwnSlot {
        explicit: listed.private_ip.as_deref(),
        recorded: j
            .slots
            .recorded
            .as_ref()
            .filter(|r| r.node == listed.node && on_eni(r.network_interface_id.as_deref()))
            .map(|r| r.private_ip.as_str()),
        current: j
            .current
            .filter(|(e, _)| *e == eni.network_interface_id)
            .map(|(_, ip)| ip),
    };
    let target = |private_ip: String| Target {
        instance_id: inst.instance_id.clone(),
        network_interface_id: eni.network_interface_id.clone(),
        private_ip,
    };
    match slots::pick(eni, own, &j.slots.occupancy) {
        Ok(ip) => Ok(Some(target(ip))),
        Err(e @ SlotError::NotOnInterface { .. }) => Err(unresolvable(e.to_string())),
        Err(e @ SlotError::NoFreeSlot { .. }) => Err(TargetError::NoFreeSlot {
            reason: e.to_string(),
            target: target(
                own.explicit
                    .map_or_else(|| eni.primary_private_ip.clone(), str::to_owned),
            ),
        }),
    }
}

pub(super) fn failures_from_status(
    status: &FloatingElasticIPStatus,
) -> BTreeMap<String, FailureRecord> {
    status
        .nodes
        .iter()
        .filter(|n| n.failure_count > 0)
        .map(|n| {
            let (kind, reason) = failure_reason(n.last_failure_reason.as_deref().unwrap_or(""));
            let record = FailureRecord {
                count: n.failure_count.max(0) as u32,
                last_failure: n
                    .last_failure
                    .as_ref()
                    .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
                kind,
                reason: reason.to_string(),
            };
            (n.node.clone(), record)
        })
        .collect()
}

/// Splits a status `lastFailureReason` ("Kind: reason", as `build_status` writes it) into
/// the kind and the reason. Text without a known kind is a drift with that text as reason.
fn failure_reason(text: &str) -> (FailureKind, &str) {
    let (head, rest) = text.split_once(':').unwrap_or((text, ""));
    match FailureKind::parse(head) {
        Some(kind) => (kind, rest.trim_start()),
        None => (FailureKind::Drift, text),
    }
}

/// A new `cleanup.requestId`: failure counts to reset, once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct CleanupRequest {
    pub(super) request_id: String,
    /// `None` = every node.
    pub(super) node: Option<String>,
}

/// The object's cleanup request when it has not been carried out yet.
pub(super) fn cleanup_request(f: &FloatingElasticIP) -> Option<CleanupRequest> {
    let c = f.spec.cleanup.as_ref()?;
    let done = f
        .status
        .as_ref()
        .and_then(|s| s.last_cleanup_request_id.as_deref());
    (done != Some(c.request_id.as_str())).then(|| CleanupRequest {
        request_id: c.request_id.clone(),
        node: c.node.clone(),
    })
}

/// Everything one reconcile observed, in the form the later steps use.
pub(super) struct Observed {
    pub(super) input: Input,
    pub(super) candidates: Vec<CandidateFacts>,
    pub(super) address: Option<AddressInfo>,
    /// EC2 has no such address.
    pub(super) address_missing: bool,
    /// The last cleanup request carried out (this one included).
    pub(super) cleanup_done: Option<String>,
    /// The holder Lease's transition count.
    pub(super) transitions: i32,
    /// A candidate's probe is about to give its first verdict.
    pub(super) probe_pending: bool,
    /// Some instance was never looked up: the monitor should read EC2 now.
    pub(super) needs_instance_read: bool,
    /// The slot the holder Lease records.
    pub(super) lease_slot: Option<SlotRecord>,
    /// The address was seen off its confirmed holder once: read EC2 again now.
    pub(super) needs_address_read: bool,
}

impl Observed {
    /// The facts of `node`, if it is a candidate.
    pub(super) fn candidate(&self, node: &str) -> Option<&CandidateFacts> {
        self.candidates.iter().find(|c| c.view.node == node)
    }

    /// The slot `holder` takes: its target, unless it has no free slot (or no target yet).
    pub(super) fn slot_of(&self, holder: Option<&str>) -> Option<SlotRecord> {
        let h = holder?;
        let c = self.candidate(h)?;
        if matches!(c.view.eligibility, Eligibility::NoFreeSlot { .. }) {
            return None;
        }
        c.view.target.as_ref().map(|t| SlotRecord::of(h, t))
    }
}

/// The observation of one reconcile (no client): candidates judged, the network guard, last
/// known targets, the decision input. `memory` is the address's in-memory state (healthy
/// since, last known targets), updated here.
pub(super) fn observe(
    f: &FloatingElasticIP,
    spec: &ResolvedSpec,
    address: AddressObserved,
    readings: &CandidateReadings,
    lease: Option<&Lease>,
    memory: &mut AddressMemory,
    now: Timestamp,
) -> Observed {
    let status = f.status.clone().unwrap_or_default();
    let mut failures = failures_from_status(&status);
    let cleanup = cleanup_request(f);
    if let Some(c) = &cleanup {
        match &c.node {
            Some(n) => {
                failures.remove(n);
            }
            None => failures.clear(),
        }
    }
    let judging = Judging {
        spec,
        region: readings.region.as_deref(),
        instances_error: readings.instances_error.as_deref(),
        api_failing: readings.api_failing,
        heartbeat_gap: readings.heartbeat_gap.as_deref(),
        now,
        // The monotonic clock is read here, at the edge: the judging itself takes it as input.
        mono: Instant::now(),
        slots: &readings.slots,
        current: address
            .info
            .as_ref()
            .and_then(|a| Some((a.network_interface_id.as_deref()?, a.private_ip.as_deref()?))),
    };
    let mut candidates: Vec<CandidateFacts> = readings
        .list
        .iter()
        .map(|c| candidate_facts(&judging, c, &mut memory.healthy_since))
        .collect();
    exclude_other_networks(&mut candidates, address.info.as_ref());
    keep_known_targets(&mut candidates, &mut memory.known_targets);
    let lease_spec = lease.and_then(|l| l.spec.as_ref());
    let holder = lease_spec
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty());
    holder_keeps_its_target(
        &mut candidates,
        &status,
        lease_spec.and_then(|s| s.holder_identity.as_deref()),
    );
    // The confirmation was of the slot the Lease records: a holder whose slot changed (an
    // edited privateIpAddress or deviceIndex, a slot given up to another address) is not
    // confirmed on its new target, so the address not being there is no drift.
    let lease_slot = lease.and_then(SlotRecord::from_lease);
    let same_slot = match (&holder, &lease_slot) {
        (Some(h), Some(slot)) => candidates
            .iter()
            .find(|c| &c.view.node == h)
            .and_then(|c| c.view.target.as_ref())
            .is_none_or(|t| slot.is(h, t)),
        _ => true,
    };
    let holder_confirmed = same_slot
        && lease
            .and_then(|l| l.metadata.annotations.as_ref())
            .and_then(|a| a.get(CONFIRMED_ANNOTATION))
            .is_some_and(|v| v == "true");
    let holder_target = holder
        .as_ref()
        .and_then(|h| candidates.iter().find(|c| &c.view.node == h))
        .and_then(|c| c.view.target.as_ref());
    let (observation, needs_address_read) = second_look(
        address.observation,
        holder_target.filter(|_| holder_confirmed),
        address.read,
        &mut memory.off_target,
    );
    Observed {
        input: Input {
            now,
            policy: spec.policy.clone(),
            candidates: candidates.iter().map(|c| c.view.clone()).collect(),
            holder,
            holder_confirmed,
            failures,
            address: observation,
        },
        needs_address_read,
        probe_pending: candidates.iter().any(|c| c.probe_pending),
        needs_instance_read: candidates.iter().any(|c| c.needs_instance_read),
        candidates,
        address: address.info,
        address_missing: address.missing,
        cleanup_done: cleanup
            .map(|c| c.request_id)
            .or(status.last_cleanup_request_id),
        transitions: lease_spec.and_then(|s| s.lease_transitions).unwrap_or(0),
        lease_slot,
    }
}

/// Drift needs a second look: the address off its confirmed holder's target counts only when
/// two DescribeAddresses in a row (distinct reads, `read`) show it. A single answer may be
/// stale or out of order (EC2 is eventually consistent, also across leaders); until the
/// second read the address counts as unknown, which moves nothing and counts nothing.
/// `streak` is the address's memory of (last read, reads) showing it off target. Returns the
/// observation to decide on and whether EC2 should be read again now.
pub(super) fn second_look(
    observation: AddressObservation,
    confirmed_target: Option<&Target>,
    read: u64,
    streak: &mut Option<(u64, u32)>,
) -> (AddressObservation, bool) {
    let off_target = confirmed_target.is_some_and(|t| match &observation {
        AddressObservation::Unknown { .. } => false,
        AddressObservation::Unassociated => true,
        AddressObservation::Associated {
            network_interface_id,
            private_ip,
            ..
        } => {
            *network_interface_id != t.network_interface_id
                || private_ip.as_deref().is_some_and(|ip| ip != t.private_ip)
        }
    });
    if !off_target {
        if !matches!(observation, AddressObservation::Unknown { .. }) {
            *streak = None;
        }
        return (observation, false);
    }
    let (last, reads) = streak.get_or_insert((read, 0));
    if *reads == 0 || *last != read {
        *last = read;
        *reads += 1;
    }
    if *reads >= 2 {
        return (observation, false);
    }
    let reason =
        "the address was seen off its holder once; reading EC2 again before counting drift";
    (
        AddressObservation::Unknown {
            reason: reason.into(),
        },
        true,
    )
}

/// Candidates in another VPC than the address's network are not eligible.
fn exclude_other_networks(candidates: &mut [CandidateFacts], address: Option<&AddressInfo>) {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(candidates[i].view.priority));
    let placed: Vec<Placement> = order
        .iter()
        .map(|&i| {
            let c = &candidates[i];
            Placement {
                node: c.view.node.clone(),
                vpc: c.vpc_id.clone(),
                eni: c
                    .view
                    .target
                    .as_ref()
                    .map(|t| t.network_interface_id.clone()),
            }
        })
        .collect();
    let on = address.and_then(|a| a.network_interface_id.as_deref());
    for (node, reason) in vpc_mismatches(&placed, on) {
        if let Some(c) = candidates.iter_mut().find(|c| c.view.node == node)
            && c.view.eligibility == Eligibility::Eligible
        {
            c.view.eligibility = Eligibility::Unresolvable { reason };
        }
    }
}

/// A candidate whose instance cannot be resolved any more (so it is not eligible) keeps its
/// last resolved target, for ownership only: an address on that interface stays ours. Not
/// when its instance is known and the interface or private IP no longer fits, and never for
/// an eligible node (a new instance not looked up yet must not get a stale target).
fn keep_known_targets(candidates: &mut [CandidateFacts], known: &mut HashMap<String, Target>) {
    for c in candidates.iter_mut() {
        match &c.view.target {
            Some(t) => {
                known.insert(c.view.node.clone(), t.clone());
            }
            None if c.view.eligibility != Eligibility::Eligible && !c.instance_known => {
                c.view.target = known.get(&c.view.node).cloned();
            }
            None => {}
        }
    }
}

/// The holder keeps its last known target (from status) when it can no longer be resolved
/// (its Node object deleted, its providerID gone): the address on that interface is feip's
/// own association, not a foreign one, and must still be moved off it. (Status survives a
/// restart or a change of leader; the in-memory targets do not.)
fn holder_keeps_its_target(
    candidates: &mut [CandidateFacts],
    status: &FloatingElasticIPStatus,
    lease_holder: Option<&str>,
) {
    if let Some(last) = status.holder.as_ref()
        && lease_holder == Some(last.node.as_str())
        && let (Some(instance_id), Some(eni), Some(ip)) = (
            &last.instance_id,
            &last.network_interface_id,
            &last.private_ip_address,
        )
        && let Some(c) = candidates.iter_mut().find(|c| {
            c.view.node == last.node
                && c.view.target.is_none()
                && c.view.eligibility != Eligibility::Eligible
        })
    {
        c.view.target = Some(Target {
            instance_id: instance_id.clone(),
            network_interface_id: eni.clone(),
            private_ip: ip.clone(),
        });
    }
}

/// What the monitor's last DescribeAddresses says about an object's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum AddressLookup {
    Found(AddressInfo),
    /// Looked up, and EC2 has no such address (in this account and region).
    Absent,
    /// No EC2 read yet since this replica became leader.
    NotReadSinceLeadership,
    /// The address is new to the monitor: the next read covers it.
    NotLookedUpYet,
    /// DescribeAddresses failed.
    Unreadable(String),
    NoAddressInSpec,
}

impl AddressLookup {
    /// Why the address's state is unknown (`None` when it was looked up).
    fn unknown_reason(&self) -> Option<String> {
        match self {
            AddressLookup::Found(_) | AddressLookup::Absent => None,
            AddressLookup::NotReadSinceLeadership => {
                Some("no EC2 read yet since this replica became leader".into())
            }
            AddressLookup::NotLookedUpYet => Some("not looked up yet".into()),
            AddressLookup::Unreadable(e) => Some(e.clone()),
            AddressLookup::NoAddressInSpec => Some("no address in spec".into()),
        }
    }

    /// The first reconcile after a restart or a leadership change waits for the monitor's
    /// read instead of reporting "EC2 unknown" for a moment.
    pub(super) fn read_pending(&self) -> bool {
        matches!(
            self,
            AddressLookup::NotReadSinceLeadership | AddressLookup::NotLookedUpYet
        )
    }
}

/// Whether the monitor has read EC2 since this replica became leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ec2Reads {
    SinceLeadership,
    NoneSinceLeadership,
}

/// The address in the EC2 view. A new leader acts only on EC2 data it read itself (`fresh`):
/// until then the address is unknown, so it decides nothing on EC2's behalf and adopts
/// whatever it then finds (no remap).
pub(super) fn lookup_address(
    view: &Ec2View,
    reads: Ec2Reads,
    f: &FloatingElasticIP,
    now: Instant,
    max_age: Duration,
) -> AddressLookup {
    if reads == Ec2Reads::NoneSinceLeadership {
        return AddressLookup::NotReadSinceLeadership;
    }
    if let Some(e) = &view.addresses_error {
        // While DescribeAddresses fails (a throttling storm), the last good read still counts
        // if it is recent enough to act on: a definitely dead holder is replaced on it rather
        // than after the storm. Older, the state is unknown and status says why.
        match view
            .addresses_at
            .map(|at| now.saturating_duration_since(at))
        {
            Some(age) if age <= max_age => {}
            // No age in the message: it is status text, and a message that changes on every
            // pass would rewrite the status (and wake the address again) on every pass.
            Some(_) => {
                return AddressLookup::Unreadable(format!(
                    "{e}; the last address read is older than the {}s bound for acting on one (twice monitor.interval)",
                    max_age.as_secs_f64()
                ));
            }
            None => return AddressLookup::Unreadable(e.clone()),
        }
    }
    find_in_view(view, f)
}

/// The address `f` names as the view's last reads have it, whatever their age: found,
/// absent (a read covered it and EC2 has none), not looked up yet, or none in the spec.
pub(super) fn find_in_view(view: &Ec2View, f: &FloatingElasticIP) -> AddressLookup {
    let (k, found) = match (&f.spec.allocation_id, &f.spec.public_ip) {
        (Some(a), _) => (a, view.addresses.by_allocation.get(a)),
        (None, Some(p)) => (p, view.addresses.by_public_ip.get(p)),
        (None, None) => return AddressLookup::NoAddressInSpec,
    };
    match found {
        Some(a) => AddressLookup::Found(a.clone()),
        None if view.covered.contains(k) => AddressLookup::Absent,
        None => AddressLookup::NotLookedUpYet,
    }
}

/// How old the last address read may be for a move to be decided on it (and, before a
/// mutation, without reading the address afresh): twice the address's monitor interval, so
/// normal monitor passes never need an extra read, while a stalled monitor or a read storm
/// cannot make feip act on an arbitrarily old picture (an association made since could be
/// taken; rule 5).
pub(super) fn max_read_age(monitor_interval: Duration) -> Duration {
    monitor_interval * 2
}

/// The address as `decide` sees it.
pub(super) struct AddressObserved {
    pub(super) observation: AddressObservation,
    pub(super) info: Option<AddressInfo>,
    /// EC2 has no such address.
    pub(super) missing: bool,
    /// Which DescribeAddresses (the view's read count) this comes from.
    pub(super) read: u64,
}

pub(super) fn observe_address(lookup: &AddressLookup) -> AddressObserved {
    match lookup {
        AddressLookup::Found(a) => AddressObserved {
            observation: match &a.network_interface_id {
                Some(eni) => AddressObservation::Associated {
                    network_interface_id: eni.clone(),
                    private_ip: a.private_ip.clone(),
                    association_id: a.association_id.clone(),
                },
                None => AddressObservation::Unassociated,
            },
            info: Some(a.clone()),
            missing: false,
            read: 0,
        },
        AddressLookup::Absent => AddressObserved {
            observation: AddressObservation::Unknown {
                reason: "address not found in EC2".into(),
            },
            info: None,
            missing: true,
            read: 0,
        },
        other => AddressObserved {
            observation: AddressObservation::Unknown {
                reason: other.unknown_reason().unwrap_or_default(),
            },
            info: None,
            missing: false,
            read: 0,
        },
    }
}

/// The availability zone of an `aws:///<zone>/<instance>` providerID when it is not in
/// `region` (EC2 only sees instances of its own region): `(zone, region)`.
pub(super) fn zone_outside_region(
    provider_id: &str,
    region: Option<&str>,
) -> Option<(String, String)> {
    let region = region?;
    let zone = provider_id
        .strip_prefix("aws://")?
        .trim_start_matches('/')
        .split('/')
        .next()
        .filter(|z| !z.is_empty() && !z.starts_with("i-"))?;
    (!zone.starts_with(region)).then(|| (zone.to_string(), region.to_string()))
}

/// Candidates whose instance is in another VPC than the address's network, with why.
///
/// An Elastic IP may legally be moved between the VPCs of a region, but candidates spread
/// over VPCs are a misconfiguration (a wrong node listed): feip never moves an address into
/// another network. The address's network is the VPC of the candidate interface it is on;
/// when it is on none, the VPC most candidates share (ties: the most preferred candidate's).
/// `candidates` are most preferred first.
pub(super) fn vpc_mismatches(
    candidates: &[Placement],
    associated_eni: Option<&str>,
) -> Vec<(String, String)> {
    let on = associated_eni.and_then(|eni| {
        candidates
            .iter()
            .find(|p| p.vpc.is_some() && p.eni.as_deref() == Some(eni))
    });
    let (reference, why) = match on {
        Some(Placement {
            node,
            vpc: Some(vpc),
            ..
        }) => (vpc.clone(), format!("where the address is (on {node})")),
        _ => {
            let mut counts: Vec<(&String, usize)> = Vec::new();
            for vpc in candidates.iter().filter_map(|p| p.vpc.as_ref()) {
                match counts.iter_mut().find(|(v, _)| *v == vpc) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((vpc, 1)),
                }
            }
            // max_by_key keeps the last maximum: iterate in reverse so ties go to the first.
            let Some((vpc, _)) = counts.iter().rev().max_by_key(|(_, n)| *n) else {
                return Vec::new();
            };
            ((*vpc).clone(), "shared by the other candidates".to_string())
        }
    };
    candidates
        .iter()
        .filter_map(|Placement { node, vpc, .. }| {
            let vpc = vpc.as_ref()?;
            (*vpc != reference).then(|| {
                (
                    node.clone(),
                    format!(
                        "instance is in {vpc}, not in the address's network {reference} ({why})"
                    ),
                )
            })
        })
        .collect()
}

/// Where a candidate would put the address: its VPC (if its instance is known) and its
/// interface (if resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Placement {
    pub(super) node: String,
    pub(super) vpc: Option<String>,
    pub(super) eni: Option<String>,
}

/// The address an object names, for conflict detection: its allocation id, resolved from the
/// public IP through the last DescribeAddresses when the object names an IP.
pub(super) fn address_identity(
    f: &FloatingElasticIP,
    ip_to_allocation: &HashMap<String, String>,
) -> Option<String> {
    match (&f.spec.allocation_id, &f.spec.public_ip) {
        (Some(a), _) => Some(a.clone()),
        (None, Some(ip)) => Some(
            ip_to_allocation
                .get(ip)
                .cloned()
                .unwrap_or_else(|| format!("publicIp/{ip}")),
        ),
        (None, None) => None,
    }
}

/// When several objects name the same address, the oldest (creation time, then namespace,
/// then name) of those the grants permit owns it: a claim no grant permits never owns an
/// address, however old (a squat). Returns the owner when it is not `me`; None when `me` owns the
/// address or nobody else names it.
pub(super) fn address_owner<'a>(
    me: &FloatingElasticIP,
    all: &'a [Arc<FloatingElasticIP>],
    identity: impl Fn(&FloatingElasticIP) -> Option<String>,
    permitted: impl Fn(&FloatingElasticIP) -> bool,
) -> Option<&'a Arc<FloatingElasticIP>> {
    let mine = identity(me)?;
    let rank = |f: &FloatingElasticIP| {
        (
            f.metadata
                .creation_timestamp
                .as_ref()
                .map_or(Timestamp::MAX, |t| t.0),
            f.metadata.namespace.clone().unwrap_or_default(),
            f.metadata.name.clone().unwrap_or_default(),
        )
    };
    let me_rank = rank(me);
    all.iter()
        .filter(|o| {
            (&o.metadata.namespace, &o.metadata.name) != (&me.metadata.namespace, &me.metadata.name)
        })
        .filter(|o| identity(o).as_deref() == Some(mine.as_str()))
        .filter(|o| permitted(o))
        .min_by_key(|o| rank(o))
        .filter(|o| rank(o) < me_rank)
}

/// The object that owns the address `f` names, if that is another object. `observed` is the
/// allocation id `f`'s address was just observed to have, when known.
pub(super) fn conflicting_owner(
    f: &FloatingElasticIP,
    snapshot: &Snapshot,
    observed: Option<&str>,
    permitted: impl Fn(&FloatingElasticIP) -> bool,
) -> Option<Arc<FloatingElasticIP>> {
    let mut ip_to_allocation = snapshot.ip_to_allocation.clone();
    if let (Some(ip), Some(a)) = (&f.spec.public_ip, observed) {
        ip_to_allocation.insert(ip.clone(), a.to_string());
    }
    address_owner(
        f,
        &snapshot.feips,
        |x| address_identity(x, &ip_to_allocation),
        permitted,
    )
    .cloned()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::controller::context::observed_age;

    fn feip(ns: &str, name: &str, created: i64, spec: serde_json::Value) -> Arc<FloatingElasticIP> {
        let mut f: FloatingElasticIP = serde_json::from_value(serde_json::json!({
            "apiVersion": "feip.io/v1alpha1", "kind": "FloatingElasticIP",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }))
        .expect("test object");
        f.metadata.creation_timestamp = Some(Time(
            Timestamp::from_second(1_767_225_600 + created).expect("valid time"),
        ));
        Arc::new(f)
    }

    fn alloc(id: &str) -> serde_json::Value {
        serde_json::json!({"allocationId": id, "candidates": [{"node": "a"}]})
    }

    fn owner_of(me: &FloatingElasticIP, all: &[Arc<FloatingElasticIP>]) -> Option<String> {
        let ips = HashMap::from([("203.0.113.10".to_string(), "eipalloc-1".to_string())]);
        address_owner(me, all, |f| address_identity(f, &ips), |_| true)
            .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
    }

    #[test]
    fn the_oldest_object_owns_a_shared_address() {
        let first = feip("a", "web", 0, alloc("eipalloc-1"));
        let second = feip("a", "web2", 5, alloc("eipalloc-1"));
        let other_ns = feip("b", "web", 9, alloc("eipalloc-1"));
        let unrelated = feip("a", "api", -100, alloc("eipalloc-2"));
        let all = vec![
            second.clone(),
            other_ns.clone(),
            first.clone(),
            unrelated.clone(),
        ];
        assert_eq!(owner_of(&first, &all), None, "the oldest manages it");
        assert_eq!(owner_of(&second, &all).as_deref(), Some("a/web"));
        assert_eq!(owner_of(&other_ns, &all).as_deref(), Some("a/web"));
        assert_eq!(owner_of(&unrelated, &all), None);
        // The object being reconciled may not be in the cache yet: it still compares.
        let newest = feip("c", "late", 50, alloc("eipalloc-1"));
        assert_eq!(owner_of(&newest, &all).as_deref(), Some("a/web"));
        let oldest = feip("c", "early", -50, alloc("eipalloc-1"));
        assert_eq!(owner_of(&oldest, &all), None);
    }

    #[test]
    fn a_claim_the_grants_refuse_never_owns_however_old() {
        let squat = feip("b", "squat", -1000, alloc("eipalloc-1"));
        let victim = feip("a", "web", 0, alloc("eipalloc-1"));
        let later = feip("a", "web2", 5, alloc("eipalloc-1"));
        let all = vec![squat.clone(), victim.clone(), later.clone()];
        let ips = HashMap::new();
        let owner = |me: &FloatingElasticIP| {
            address_owner(
                me,
                &all,
                |f| address_identity(f, &ips),
                |f| f.metadata.namespace.as_deref() == Some("a"),
            )
            .map(|o| o.name_any())
        };
        assert_eq!(owner(&victim), None, "the older squat does not count");
        assert_eq!(owner(&later).as_deref(), Some("web"));
    }

    #[test]
    fn equal_creation_times_fall_back_to_namespace_and_name() {
        let x = feip("b", "x", 0, alloc("eipalloc-1"));
        let y = feip("a", "y", 0, alloc("eipalloc-1"));
        let z = feip("a", "z", 0, alloc("eipalloc-1"));
        let all = vec![x.clone(), y.clone(), z.clone()];
        assert_eq!(owner_of(&x, &all).as_deref(), Some("a/y"));
        assert_eq!(owner_of(&z, &all).as_deref(), Some("a/y"));
        assert_eq!(owner_of(&y, &all), None);
    }

    #[test]
    fn a_public_ip_conflicts_with_its_allocation_id_once_resolved() {
        let by_alloc = feip("a", "web", 0, alloc("eipalloc-1"));
        let by_ip = feip(
            "b",
            "web",
            1,
            serde_json::json!({"publicIp": "203.0.113.10", "candidates": [{"node": "a"}]}),
        );
        let unresolved = feip(
            "b",
            "other",
            2,
            serde_json::json!({"publicIp": "198.51.100.7", "candidates": [{"node": "a"}]}),
        );
        let all = vec![by_alloc.clone(), by_ip.clone(), unresolved.clone()];
        assert_eq!(owner_of(&by_ip, &all).as_deref(), Some("a/web"));
        assert_eq!(owner_of(&unresolved, &all), None);
    }

    #[test]
    fn zones_outside_the_region_are_named() {
        let r = Some("ap-northeast-1");
        assert_eq!(
            zone_outside_region("aws:///eu-west-1a/i-0abc", r),
            Some(("eu-west-1a".into(), "ap-northeast-1".into()))
        );
        assert_eq!(
            zone_outside_region("aws:///ap-northeast-1c/i-0abc", r),
            None
        );
        assert_eq!(zone_outside_region("aws://ap-northeast-1a/i-0abc", r), None);
        assert_eq!(zone_outside_region("aws:///i-0abc", r), None);
        assert_eq!(zone_outside_region("aws:///eu-west-1a/i-0abc", None), None);
    }

    #[test]
    fn candidates_outside_the_address_network_are_found() {
        let c = |node: &str, vpc: Option<&str>, eni: Option<&str>| Placement {
            node: node.to_string(),
            vpc: vpc.map(str::to_string),
            eni: eni.map(str::to_string),
        };
        let nodes = |m: Vec<(String, String)>| m.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        let placed = vec![
            c("a", Some("vpc-1"), Some("eni-a")),
            c("b", Some("vpc-2"), Some("eni-b")),
            c("c", Some("vpc-1"), Some("eni-c")),
            c("d", None, None),
        ];
        // Unassociated: the VPC most candidates share.
        assert_eq!(nodes(vpc_mismatches(&placed, None)), ["b"]);
        // On a foreign interface: the same.
        assert_eq!(nodes(vpc_mismatches(&placed, Some("eni-x"))), ["b"]);
        // On b: b's VPC is the address's network, whatever the others say.
        assert_eq!(nodes(vpc_mismatches(&placed, Some("eni-b"))), ["a", "c"]);
        let why = vpc_mismatches(&placed, Some("eni-a"));
        assert!(
            why[0].1.contains("vpc-2") && why[0].1.contains("vpc-1"),
            "{why:?}"
        );
        // A tie goes to the most preferred (first) candidate's VPC.
        let tie = vec![c("x", Some("vpc-9"), None), c("y", Some("vpc-8"), None)];
        assert_eq!(nodes(vpc_mismatches(&tie, None)), ["y"]);
        // One VPC, or nothing known: nobody is flagged.
        assert!(vpc_mismatches(&placed[..1], None).is_empty());
        assert!(vpc_mismatches(&[c("d", None, None)], None).is_empty());
    }

    #[test]
    fn a_wall_clock_step_cannot_satisfy_the_hold_down() {
        let wall = |secs: i64| Timestamp::from_second(1_767_225_600 + secs).expect("valid time");
        let start = Instant::now();
        let mono = |secs| start + std::time::Duration::from_secs(secs);
        // Healthy since `start`; 10 s later (monotonic) the wall clock has jumped an hour ahead.
        let now = wall(3600 + 10);
        let since = healthy_since_wall(now, mono(10), start);
        assert_eq!(
            now.duration_since(since),
            jiff::SignedDuration::from_secs(10)
        );
        // A 5 min hold-down is not satisfied by the step, only by 5 min of monotonic time.
        let hold_down = jiff::SignedDuration::from_secs(300);
        assert!(now.duration_since(since) < hold_down);
        let later = wall(3600 + 300);
        assert!(later.duration_since(healthy_since_wall(later, mono(300), start)) >= hold_down);
        // A backward step does not delay it either.
        let back = wall(-3600 + 300);
        assert_eq!(
            back.duration_since(healthy_since_wall(back, mono(300), start)),
            hold_down
        );
    }

    #[test]
    fn heartbeat_age_is_capped_by_the_observed_span() {
        let s = Duration::from_secs;
        assert_eq!(observed_age(Some(s(50)), s(3)), Some(s(3)));
        assert_eq!(observed_age(Some(s(2)), s(300)), Some(s(2)));
        assert_eq!(observed_age(None, s(3)), None);
    }
}
