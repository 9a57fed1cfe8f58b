//! What a reconcile reads: the shared [`Context`] (clients, caches, the EC2 view, per-address
//! memory), and the snapshots that read every cache and lock a reconcile needs at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;

use crate::aws::{AddressInfo, AddressSnapshot, Ec2, InstanceInfo};
use crate::crd::FloatingElasticIP;
use crate::decide::{ChangeReason, Target};
use crate::grant::{AddressFacts, CandidateFacts, Claim, FloatingElasticIPGrant, Verdict};
use crate::health::{Heartbeats, ProbeSignal, ProbeSpec, Probes, heartbeat};
use crate::kube_ext::NodeFacts;
use crate::leader::Leadership;
use crate::metrics::Metrics;

use super::observe::{
    AddressLookup, Ec2Reads, Listed, SlotInputs, listed_candidates, lookup_address,
};
use super::slots::{self, OtherAddress, SlotClaims, SlotRecord};
use super::spec::ResolvedSpec;

/// Controller settings (from flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to watch; empty = all.
    pub namespaces: Vec<String>,
    /// Name reported on events (usually the pod name).
    pub instance: String,
    /// The client of the heartbeat-Lease watch; `None`: the main client. A test hook, so a
    /// test can stall that one watch while the rest of the API keeps working.
    pub heartbeat_client: Option<HeartbeatClient>,
}

/// A kube client carried in settings (kube's `Client` has no `Debug`).
#[derive(Clone)]
pub struct HeartbeatClient(pub Client);

impl std::fmt::Debug for HeartbeatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeartbeatClient(..)")
    }
}

/// What the monitor task last learned from EC2.
#[derive(Default)]
pub(super) struct Ec2View {
    pub(super) addresses: AddressSnapshot,
    /// Keys (allocation ids and public IPs) covered by the last successful DescribeAddresses.
    pub(super) covered: HashSet<String>,
    pub(super) addresses_at: Option<Instant>,
    pub(super) addresses_error: Option<String>,
    /// Last good DescribeInstances answers (kept across errors: targets change rarely, and a
    /// transient error must not make one of our own interfaces look foreign).
    pub(super) instances: BTreeMap<String, InstanceInfo>,
    pub(super) instances_covered: HashSet<String>,
    pub(super) instances_error: Option<String>,
    /// Addresses this process changed and when: newer than a DescribeAddresses that was
    /// already in flight, or than one that still shows the association this change replaced
    /// (EC2 is eventually consistent), whose stale answer must not read as drift.
    pub(super) written: HashMap<String, Written>,
    /// Successful DescribeAddresses merged so far (tells one read from the next).
    pub(super) address_reads: u64,
}

/// How long after a change of ours a DescribeAddresses answer that still shows the
/// association the change replaced is taken as stale (EC2's eventual consistency) rather than
/// as news. AWS documents no bound; lags of seconds are common, this allows for more.
pub(super) const CONSISTENCY_WINDOW: Duration = Duration::from_secs(30);

/// One change of an address by this process.
#[derive(Clone, Debug)]
pub(super) struct Written {
    pub(super) at: Instant,
    /// The change was not seen in a DescribeAddresses yet: answers showing this association
    /// id (the one the change replaced; `None`: unassociated) are stale within the window.
    pub(super) unseen_replacing: Option<Option<String>>,
}

impl Ec2View {
    /// Records a change made by this process and seen confirmed by a DescribeAddresses.
    pub(super) fn record(&mut self, info: AddressInfo) {
        self.insert_written(info, None);
    }

    /// Records a change EC2 accepted but no DescribeAddresses has shown yet: `replaced` is the
    /// association id the address had before (`None`: unassociated).
    pub(super) fn record_unseen(&mut self, info: AddressInfo, replaced: Option<String>) {
        self.insert_written(info, Some(replaced));
    }

    fn insert_written(&mut self, info: AddressInfo, unseen_replacing: Option<Option<String>>) {
        self.written.insert(
            info.allocation_id.clone(),
            Written {
                at: Instant::now(),
                unseen_replacing,
            },
        );
        self.addresses.insert(info);
    }
}

/// In-memory state per address that does not need to survive a restart.
#[derive(Clone, Default)]
pub(super) struct AddressMemory {
    /// Since when each candidate has been healthy, on the monotonic clock (the failback
    /// hold-down: a wall-clock step must not satisfy it early).
    pub(super) healthy_since: HashMap<String, Instant>,
    pub(super) pending: Option<PendingFailover>,
    pub(super) failed_attempts: u32,
    /// The backoff step last scheduled: until when. A pass that runs earlier (woken by a
    /// watch event, such as its own status write) does not take another step, so the delay
    /// doubles per elapsed step, not per pass (see `apply::after`).
    pub(super) backoff_until: Option<Instant>,
    pub(super) blocked: Option<String>,
    /// Last resolved target per candidate, used while its instance cannot be looked up (Node
    /// deleted, providerID gone, EC2 not answering): an address on that interface stays ours.
    pub(super) known_targets: HashMap<String, Target>,
    /// (last read, reads) in a row that showed the address off its confirmed holder: drift
    /// counts from the second (see `observe::second_look`).
    pub(super) off_target: Option<(u64, u32)>,
    /// An AssociateAddress to this target whose outcome is unknown (timed out), and when: it
    /// may have happened, so it is read back, and not resent while EC2 may still be catching
    /// up (see `apply::associate`).
    pub(super) unknown_associate: Option<(Target, Instant)>,
    /// The holder this process last wrote to the Lease as a decision. An unconfirmed Lease
    /// naming another node was decided elsewhere (a previous leader, or this process before a
    /// restart), whose AssociateAddress may have been sent: it is treated as an associate of
    /// unknown outcome (read back before resending, see `apply::act`).
    pub(super) decided_here: Option<String>,
    /// The object and holder Lease as this process last wrote them: a cache older than
    /// these is not decided from (see [`super::report::OwnWrites`]).
    pub(super) own_writes: super::report::OwnWrites,
}

#[derive(Clone, Debug)]
pub(super) struct PendingFailover {
    pub(super) from: Option<String>,
    pub(super) to: String,
    pub(super) reason: ChangeReason,
    pub(super) detected_at: Timestamp,
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub ec2: Ec2,
    pub leadership: Leadership,
    pub metrics: Arc<Metrics>,
    pub(super) recorder: Recorder,
    pub(super) nodes: Store<Node>,
    pub(super) leases: Store<Lease>,
    pub(super) feips: Store<FloatingElasticIP>,
    /// The admin's grants and the namespaces (their labels) that decide which claims are
    /// permitted (crate::grant).
    pub(super) grants: Store<FloatingElasticIPGrant>,
    pub(super) namespaces: Store<Namespace>,
    /// Both caches above have synced: until then no claim is judged (an empty cache would
    /// refuse every claim for a moment after each start).
    pub(super) grants_synced: std::sync::atomic::AtomicBool,
    pub(super) heartbeats: Arc<Heartbeats>,
    pub(super) probes: Arc<Probes>,
    pub(super) view: Mutex<Ec2View>,
    pub(super) memory: Mutex<HashMap<String, AddressMemory>>,
    /// The slots (private IPs) this replica recorded per address; one lock for the whole
    /// decision that uses them (see [`super::slots`]).
    pub(super) slots: Mutex<SlotClaims>,
    /// Wakes the monitor early (a new address or instance to learn about).
    pub(super) monitor_wake: Notify,
    /// Set once the monitor has read EC2 after this replica became leader: a new leader acts
    /// only on fresh EC2 data, so it adopts the current association instead of remapping.
    pub(super) fresh_since_leadership: std::sync::atomic::AtomicBool,
    pub(super) settings: Settings,
    /// Reconciles of single addresses: a change that concerns some addresses (one node's
    /// health, one address in EC2) must not queue all of them ahead of the one that needs to
    /// fail over.
    pub(super) targeted: futures::channel::mpsc::UnboundedSender<ObjectRef<FloatingElasticIP>>,
    /// Nodes whose eligibility or heartbeat verdict changed since `forward_changes` last ran.
    pub(super) dirty_nodes: Mutex<HashSet<String>>,
    /// Since when this replica has watched heartbeats without a gap: reset when a kube watch
    /// fails and when the heartbeat watch re-lists (a 410 after an apiserver restart); the
    /// end of an API outage seen by the election loop counts as a gap as well. Staleness is
    /// only counted over observed time (rule 7), so an API outage never makes a node look dead
    /// (rule 2): see [`Context::heartbeat_age`].
    pub(super) heartbeats_observed_since: Mutex<Instant>,
}

impl Context {
    /// Time since `node`'s heartbeat last changed, counting only the time this replica has
    /// been observing heartbeats without a gap.
    pub(super) fn heartbeat_age(&self, node: &str) -> Option<Duration> {
        observed_age(self.heartbeats.age(node), self.heartbeat_observing_for())
    }

    /// How long this replica has observed heartbeats without a gap: since the last error of
    /// the node or holder-Lease watch, the last error, re-list or stall of the heartbeat watch
    /// itself, and the end of an API outage seen by the election.
    fn heartbeat_observing_for(&self) -> Duration {
        // The API failing this replica's own requests and then answering again is a gap too:
        // a write outage (etcd down) keeps watches open but stops every kubelet's renewals.
        let since_recovery = self
            .leadership
            .api_recovered_at()
            .map_or(Duration::MAX, |at| at.elapsed());
        let since = (*lock(&self.heartbeats_observed_since)).max(self.heartbeats.observed_since());
        since.elapsed().min(since_recovery)
    }

    /// How long the heartbeat watch has seen no node renew, over observed time.
    pub(super) fn heartbeat_watch_idle(&self) -> Option<Duration> {
        observed_age(self.heartbeats.idle(), self.heartbeat_observing_for())
    }

    /// Every cache and lock read a reconcile needs about its address and its ownership, at
    /// one instant.
    pub(super) fn snapshot(&self, f: &FloatingElasticIP) -> Snapshot {
        let reads = if self
            .fresh_since_leadership
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            Ec2Reads::SinceLeadership
        } else {
            Ec2Reads::NoneSinceLeadership
        };
        let ns = f.namespace().unwrap_or_default();
        let max_age = super::observe::max_read_age(super::spec::resolve(f).monitor_interval);
        let now = Instant::now();
        let view = lock(&self.view);
        Snapshot {
            address: lookup_address(&view, reads, f, now, max_age),
            address_read_age: view
                .addresses_at
                .map(|at| now.saturating_duration_since(at)),
            max_read_age: max_age,
            ec2_unreadable: view.addresses_error.is_some(),
            address_reads: view.address_reads,
            ip_to_allocation: view
                .addresses
                .by_public_ip
                .iter()
                .map(|(ip, a)| (ip.clone(), a.allocation_id.clone()))
                .collect(),
            feips: self.feips.state(),
            lease: self
                .leases
                .get(&ObjectRef::new(&f.lease_name()).within(&ns)),
        }
    }

    /// The grants' verdict on the claim `f` makes (docs/security.md), from the caches: the
    /// namespace's labels, the address's allocation id and EC2 tags from the last
    /// DescribeAddresses, the listed candidates' labels.
    pub(super) fn verdict(&self, f: &FloatingElasticIP) -> Verdict {
        let address = {
            let view = lock(&self.view);
            address_facts(&view, f)
        };
        let ns = f.namespace().unwrap_or_default();
        let namespace_labels = self
            .namespaces
            .get(&ObjectRef::new(&ns))
            .map(|n| n.labels().clone());
        let candidates = listed_candidates(f, &self.nodes)
            .into_iter()
            .map(|c| CandidateFacts {
                labels: self
                    .nodes
                    .get(&ObjectRef::new(&c.node))
                    .map(|n| n.labels().clone()),
                node: c.node,
            })
            .collect();
        let claim = Claim::of(f, address, namespace_labels, candidates);
        crate::grant::evaluate(&self.grants.state(), &claim)
    }

    /// What the caches say about each candidate: its Node, instance, heartbeat and probe. A
    /// probe the address asks for starts here on first use (its verdict triggers a reconcile).
    pub(super) fn candidate_readings(
        &self,
        f: &FloatingElasticIP,
        spec: &ResolvedSpec,
    ) -> CandidateReadings {
        let listed = listed_candidates(f, &self.nodes);
        let (mut list, instances_error) = {
            let view = lock(&self.view);
            let list: Vec<CandidateReading> = listed
                .into_iter()
                .map(|listed| {
                    let node = self
                        .nodes
                        .get(&ObjectRef::new(&listed.node))
                        .map(|n| NodeFacts::of(&n));
                    let id = node.as_ref().and_then(NodeFacts::instance_id);
                    CandidateReading {
                        instance: id.as_ref().and_then(|id| view.instances.get(id).cloned()),
                        instance_covered: id
                            .as_ref()
                            .is_some_and(|id| view.instances_covered.contains(id)),
                        node,
                        listed,
                        heartbeat_age: None,
                        probe: ProbeSignal::Off,
                    }
                })
                .collect();
            (list, view.instances_error.clone())
        };
        for c in list.iter_mut().filter(|c| c.node.is_some()) {
            c.heartbeat_age = self.heartbeat_age(&c.listed.node);
            c.probe = self.probe_signal(c.node.as_ref(), spec);
        }
        let ages: Vec<Duration> = list.iter().filter_map(|c| c.heartbeat_age).collect();
        let heartbeat_gap =
            heartbeat::heartbeat_gap(&ages, spec.heartbeat_timeout, self.heartbeat_watch_idle());
        CandidateReadings {
            heartbeat_gap,
            list,
            region: self.ec2.region().map(str::to_string),
            instances_error,
            api_failing: self.leadership.api_failing_since().is_some(),
            slots: SlotInputs::default(),
        }
    }

    fn probe_signal(&self, node: Option<&NodeFacts>, spec: &ResolvedSpec) -> ProbeSignal {
        let Some(probe) = &spec.probe else {
            return ProbeSignal::Off;
        };
        let Some(ip) = node.and_then(NodeFacts::internal_ip) else {
            return ProbeSignal::NoInternalIp;
        };
        let state = self.probes.state(&probe.of(ip));
        ProbeSignal::Observed {
            ip,
            port: probe.port,
            failure_threshold: probe.failure_threshold,
            status: state.status,
            since_wall: state.since_wall,
            starting: state.since.elapsed() < probe.period * 2 + probe.timeout,
        }
    }

    /// Every probe some address of this replica asks for: the probe of each candidate's
    /// InternalIP (see [`Context::probe_signal`]). What keeps a probe running between the
    /// reconciles of an address with a long monitor interval ([`Probes::keep`]).
    pub(super) fn referenced_probes(&self) -> HashSet<ProbeSpec> {
        let mut referenced = HashSet::new();
        for f in self.feips.state() {
            let Some(probe) = super::spec::resolve(&f).probe else {
                continue;
            };
            for listed in listed_candidates(&f, &self.nodes) {
                let ip = self
                    .nodes
                    .get(&ObjectRef::new(&listed.node))
                    .and_then(|n| NodeFacts::of(&n).internal_ip());
                if let Some(ip) = ip {
                    referenced.insert(probe.of(ip));
                }
            }
        }
        referenced
    }

    /// Which private IPs of `f`'s candidates other addresses hold, and `f`'s own slot, as
    /// `claims` (this replica's records, under the decision's lock) and the Leases say.
    pub(super) fn slot_inputs(
        &self,
        f: &FloatingElasticIP,
        snapshot: &Snapshot,
        readings: &CandidateReadings,
        device_index: i32,
        claims: &SlotClaims,
    ) -> SlotInputs {
        let lease_slot = |x: &FloatingElasticIP| {
            let ns = x.namespace().unwrap_or_default();
            self.leases
                .get(&ObjectRef::new(&x.lease_name()).within(&ns))
                .and_then(|l| SlotRecord::from_lease(&l))
        };
        let me = key(f);
        let wanted: HashSet<String> = readings
            .list
            .iter()
            .filter_map(|c| c.instance.as_ref()?.interface(device_index))
            .flat_map(slots::private_ips)
            .collect();
        let my_allocation = match &snapshot.address {
            AddressLookup::Found(a) => Some(a.allocation_id.clone()),
            _ => f.spec.allocation_id.clone(),
        };
        let keys: Vec<(String, &FloatingElasticIP, Option<String>)> = snapshot
            .feips
            .iter()
            .map(|x| {
                let allocation = x.spec.allocation_id.clone().or_else(|| {
                    let ip = x.spec.public_ip.as_ref()?;
                    snapshot.ip_to_allocation.get(ip).cloned()
                });
                (key(x), x.as_ref(), allocation)
            })
            .filter(|(k, _, _)| *k != me)
            .collect();
        let others = keys.iter().map(|(k, x, allocation)| OtherAddress {
            key: k,
            allocation_id: allocation.as_deref(),
            slot: claims.slot_of(k, || lease_slot(x)),
        });
        let view = lock(&self.view);
        SlotInputs {
            occupancy: slots::occupancy(others, my_allocation.as_deref(), &view.addresses, &wanted),
            recorded: claims.slot_of(&me, || lease_slot(f)),
        }
    }

    /// Reads or changes the address's in-memory state (under its lock, nothing copied).
    pub(super) fn remember<R>(&self, key: &str, change: impl FnOnce(&mut AddressMemory) -> R) -> R {
        change(lock(&self.memory).entry(key.to_string()).or_default())
    }

    /// A gap in observation (a watch failed or re-listed): heartbeat clocks restart as if
    /// this process had just started.
    pub(super) fn restart_heartbeat_clocks(&self) {
        *lock(&self.heartbeats_observed_since) = Instant::now();
    }
}

/// A heartbeat age as observed: never longer than the span observed without a gap. After a
/// gap a node gets a whole timeout to show a renewal before it counts as dead.
pub(super) fn observed_age(age: Option<Duration>, observing_for: Duration) -> Option<Duration> {
    age.map(|a| a.min(observing_for))
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) fn key(obj: &FloatingElasticIP) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The reads of [`Context::snapshot`].
pub(super) struct Snapshot {
    pub(super) address: AddressLookup,
    /// How old the last successful DescribeAddresses was when this snapshot was taken.
    pub(super) address_read_age: Option<Duration>,
    /// How old it may be to act on (see [`super::observe::max_read_age`]).
    pub(super) max_read_age: Duration,
    /// The last DescribeAddresses failed.
    pub(super) ec2_unreadable: bool,
    /// The view's read count (see [`Ec2View::address_reads`]).
    pub(super) address_reads: u64,
    /// Public IP -> allocation id, from the last DescribeAddresses (for ownership).
    pub(super) ip_to_allocation: HashMap<String, String>,
    /// Every FloatingElasticIP in the cache (for ownership).
    pub(super) feips: Vec<Arc<FloatingElasticIP>>,
    /// The address's holder Lease.
    pub(super) lease: Option<Arc<Lease>>,
}

/// The reads of [`Context::candidate_readings`].
pub(super) struct CandidateReadings {
    pub(super) list: Vec<CandidateReading>,
    /// This controller's EC2 region.
    pub(super) region: Option<String>,
    /// The last DescribeInstances error.
    pub(super) instances_error: Option<String>,
    /// The API is failing this replica's own requests.
    pub(super) api_failing: bool,
    /// Why the candidates' heartbeat silence is no death now (see
    /// [`heartbeat::heartbeat_gap`]).
    pub(super) heartbeat_gap: Option<String>,
    /// Which private IPs other addresses hold and this address's own slot (read under the
    /// slot lock, right before deciding).
    pub(super) slots: SlotInputs,
}

/// One candidate as the caches describe it.
pub(super) struct CandidateReading {
    pub(super) listed: Listed,
    /// `None`: no Node object of that name.
    pub(super) node: Option<NodeFacts>,
    pub(super) instance: Option<InstanceInfo>,
    /// The instance was part of the last DescribeInstances request.
    pub(super) instance_covered: bool,
    pub(super) heartbeat_age: Option<Duration>,
    pub(super) probe: ProbeSignal,
}

/// What the last DescribeAddresses says about the address `f` names. An address the read
/// covered and did not find has no tags (no tag grant matches it); one not read yet has
/// unknown tags.
fn address_facts(view: &Ec2View, f: &FloatingElasticIP) -> AddressFacts {
    let spec = AddressFacts {
        allocation_id: f.spec.allocation_id.clone(),
        public_ip: f.spec.public_ip.clone(),
        tags: None,
    };
    match super::observe::find_in_view(view, f) {
        AddressLookup::Found(info) => AddressFacts {
            allocation_id: Some(info.allocation_id),
            public_ip: Some(info.public_ip),
            tags: Some(info.tags),
        },
        AddressLookup::Absent => AddressFacts {
            tags: Some(BTreeMap::new()),
            ..spec
        },
        _ => spec,
    }
}
