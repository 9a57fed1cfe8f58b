use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;

use crate::aws::{AddressInfo, AddressSnapshot, Ec2, InstanceInfo};
use crate::crd::FloatingElasticIP;
use crate::decide::Target;
use crate::health::{Heartbeats, Probes};
use crate::leader::Leadership;
use crate::metrics::Metrics;

/// Controller settings (from flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to watch; empty = all.
    pub namespaces: Vec<String>,
    /// Name reported on events (usually the pod name).
    pub instance: String,
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
    /// Addresses this process changed (confirmed) and when: newer than a DescribeAddresses
    /// that was already in flight, whose stale answer must not read as drift.
    pub(super) written: HashMap<String, Instant>,
}

impl Ec2View {
    /// Records a confirmed change made by this process.
    pub(super) fn record(&mut self, info: AddressInfo) {
        self.written
            .insert(info.allocation_id.clone(), Instant::now());
        self.addresses.insert(info);
    }
}

/// In-memory state per address that does not need to survive a restart.
#[derive(Default)]
pub(super) struct Runtime {
    pub(super) healthy_since: HashMap<String, Timestamp>,
    pub(super) pending: Option<PendingFailover>,
    pub(super) failed_attempts: u32,
    pub(super) blocked: Option<String>,
    /// Last resolved target per candidate, used while its instance cannot be looked up (Node
    /// deleted, providerID gone, EC2 not answering): an address on that interface stays ours.
    pub(super) known_targets: HashMap<String, Target>,
}

#[derive(Clone, Debug)]
pub(super) struct PendingFailover {
    pub(super) from: Option<String>,
    pub(super) to: String,
    pub(super) reason: String,
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
    pub(super) heartbeats: Arc<Heartbeats>,
    pub(super) probes: Arc<Probes>,
    pub(super) view: Mutex<Ec2View>,
    pub(super) runtime: Mutex<HashMap<String, Runtime>>,
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
        // The API failing this replica's own requests and then answering again is a gap too:
        // a write outage (etcd down) keeps watches open but stops every kubelet's renewals.
        let since_recovery = self
            .leadership
            .api_recovered_at()
            .map_or(Duration::MAX, |at| at.elapsed());
        observed_age(
            self.heartbeats.age(node),
            lock(&self.heartbeats_observed_since)
                .elapsed()
                .min(since_recovery),
        )
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
