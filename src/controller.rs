//! The reconcile glue: gathers the inputs of [`crate::decide`] from the caches (nodes,
//! heartbeats, probes, EC2 snapshots, holder Leases), writes the decision to the per-address
//! Lease (optimistic concurrency) before touching EC2, performs the EC2 action while this
//! replica's leadership is valid, confirms it, and reports status, conditions, events and
//! metrics.
//!
//! EC2 is read by one monitor task with one batched DescribeAddresses (and one
//! DescribeInstances) per interval for all addresses, whatever their number; reconciles read
//! its snapshots. Mutations are confirmed with a Describe of the one address involved.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Notify;

use crate::aws::{
    AddressInfo, AddressSnapshot, Ec2, Ec2Error, InstanceInfo, instance_id_from_provider_id,
};
use crate::crd::{
    AddressStatus, FINALIZER, FailoverRecord, FloatingElasticIP, FloatingElasticIPStatus,
    HolderStatus, LeaseStatus, Management, NodeRecord, Phase, ProbeType, ReleasePolicy,
    STANDBY_LABEL, TargetState,
};
use crate::decide::{
    self, Action, AddressObservation, CandidateView, Decision, Eligibility, FailureKind,
    FailureRecord, Finding, Input, NodeHealth, Policy, Target,
};
use crate::health::{Heartbeats, ProbeSpec, ProbeStatus, Probes};
use crate::leader::Leadership;
use crate::telemetry::Metrics;

/// Field manager and event reporter name.
pub const MANAGER: &str = "feip-controller";
/// Label on every holder Lease feip manages.
pub const LEASE_LABEL: &str = "app.kubernetes.io/managed-by";
const LEASE_LABEL_VALUE: &str = "feip";
/// Lease annotation: the association to the holder was confirmed since it was elected.
const CONFIRMED_ANNOTATION: &str = "feip.io/confirmed";
/// Lease annotation: why the current holder holds the address.
const REASON_ANNOTATION: &str = "feip.io/reason";
/// Lease annotations of a failover not yet confirmed: previous holder and detection time.
const FAILOVER_FROM_ANNOTATION: &str = "feip.io/failover-from";
const DETECTED_AT_ANNOTATION: &str = "feip.io/detected-at";

/// Defaults of the spec (section 2 of the product spec).
pub const DEFAULT_MONITOR_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(40);
pub const DEFAULT_PROBE_PORT: u16 = 10250;
pub const DEFAULT_PROBE_PERIOD: Duration = Duration::from_secs(1);
pub const DEFAULT_PROBE_FAILURES: u32 = 3;

/// Errors of one reconcile; all are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
    #[error("release of the address is blocked: {0}")]
    Blocked(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.kind(),
                kube::runtime::finalizer::Error::AddFinalizer(_)
                | kube::runtime::finalizer::Error::RemoveFinalizer(_) => "kube",
                _ => "finalizer",
            },
            Error::Blocked(_) => "blocked",
            Error::Other(_) => "other",
        }
    }
}

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
struct Ec2View {
    addresses: AddressSnapshot,
    /// Keys (allocation ids and public IPs) covered by the last successful DescribeAddresses.
    covered: HashSet<String>,
    addresses_at: Option<Instant>,
    addresses_error: Option<String>,
    /// Last good DescribeInstances answers (kept across errors: targets change rarely, and a
    /// transient error must not make one of our own interfaces look foreign).
    instances: BTreeMap<String, InstanceInfo>,
    instances_covered: HashSet<String>,
    instances_error: Option<String>,
    /// Addresses this process changed (confirmed) and when: newer than a DescribeAddresses
    /// that was already in flight, whose stale answer must not read as drift.
    written: HashMap<String, Instant>,
}

impl Ec2View {
    /// Records a confirmed change made by this process.
    fn record(&mut self, info: AddressInfo) {
        self.written
            .insert(info.allocation_id.clone(), Instant::now());
        self.addresses.insert(info);
    }
}

/// In-memory state per address that does not need to survive a restart.
#[derive(Default)]
struct Runtime {
    healthy_since: HashMap<String, Timestamp>,
    pending: Option<PendingFailover>,
    failed_attempts: u32,
    blocked: Option<String>,
    /// Last resolved target per candidate, used while its instance cannot be looked up (Node
    /// deleted, providerID gone, EC2 not answering): an address on that interface stays ours.
    known_targets: HashMap<String, Target>,
}

#[derive(Clone, Debug)]
struct PendingFailover {
    from: Option<String>,
    to: String,
    reason: String,
    detected_at: Timestamp,
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub ec2: Ec2,
    pub leadership: Leadership,
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    nodes: Store<Node>,
    leases: Store<Lease>,
    feips: Store<FloatingElasticIP>,
    heartbeats: Arc<Heartbeats>,
    probes: Arc<Probes>,
    view: Mutex<Ec2View>,
    runtime: Mutex<HashMap<String, Runtime>>,
    /// Wakes the monitor early (a new address or instance to learn about).
    monitor_wake: Notify,
    /// Set once the monitor has read EC2 after this replica became leader: a new leader acts
    /// only on fresh EC2 data, so it adopts the current association instead of remapping.
    fresh_since_leadership: std::sync::atomic::AtomicBool,
    settings: Settings,
    /// Reconciles of single addresses: a change that concerns some addresses (one node's
    /// health, one address in EC2) must not queue all of them ahead of the one that needs to
    /// fail over.
    targeted: futures::channel::mpsc::UnboundedSender<ObjectRef<FloatingElasticIP>>,
    /// Nodes whose eligibility or heartbeat verdict changed since `forward_changes` last ran.
    dirty_nodes: Mutex<HashSet<String>>,
    /// Since when this replica has watched heartbeats without a gap: reset when a kube watch
    /// fails and when the heartbeat watch re-lists (a 410 after an apiserver restart); the
    /// end of an API outage seen by the election loop counts as a gap as well. Staleness is
    /// only counted over observed time (rule 7), so an API outage never makes a node look dead
    /// (rule 2): see [`Context::heartbeat_age`].
    heartbeats_observed_since: Mutex<Instant>,
}

impl Context {
    /// Time since `node`'s heartbeat last changed, counting only the time this replica has
    /// been observing heartbeats without a gap.
    fn heartbeat_age(&self, node: &str) -> Option<Duration> {
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
    fn restart_heartbeat_clocks(&self) {
        *lock(&self.heartbeats_observed_since) = Instant::now();
    }
}

/// A heartbeat age as observed: never longer than the span observed without a gap. After a
/// gap a node gets a whole timeout to show a renewal before it counts as dead.
fn observed_age(age: Option<Duration>, observing_for: Duration) -> Option<Duration> {
    age.map(|a| a.min(observing_for))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn key(obj: &FloatingElasticIP) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Runs the controller until `shutdown` resolves. `ready` turns true once every cache synced.
pub async fn run(
    client: Client,
    ec2: Ec2,
    leadership: Leadership,
    metrics: Arc<Metrics>,
    settings: Settings,
    ready: tokio::sync::watch::Sender<bool>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let feip_api: Api<FloatingElasticIP> = match settings.namespaces.as_slice() {
        [one] => Api::namespaced(client.clone(), one),
        _ => Api::all(client.clone()),
    };
    let changed = Arc::new(Notify::new());

    let (nodes, node_writer) = reflector::store();
    let node_stream = reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let (leases, lease_writer) = reflector::store();
    let lease_cfg =
        watcher::Config::default().labels(&format!("{LEASE_LABEL}={LEASE_LABEL_VALUE}"));
    let lease_stream = reflector(
        lease_writer,
        watcher(Api::<Lease>::all(client.clone()), lease_cfg),
    )
    .default_backoff()
    .touched_objects();

    let controller = Controller::new(feip_api.clone(), watcher::Config::default());
    let feips = controller.store();
    let heartbeats = Arc::new(Heartbeats::default());
    let probes = Arc::new(Probes::new(changed.clone()));
    let (targeted, targeted_rx) = futures::channel::mpsc::unbounded();
    let ctx = Arc::new(Context {
        client: client.clone(),
        ec2,
        leadership: leadership.clone(),
        metrics: metrics.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(settings.instance.clone()),
            },
        ),
        nodes: nodes.clone(),
        leases: leases.clone(),
        feips: feips.clone(),
        heartbeats: heartbeats.clone(),
        probes,
        view: Mutex::new(Ec2View::default()),
        runtime: Mutex::new(HashMap::new()),
        monitor_wake: Notify::new(),
        fresh_since_leadership: std::sync::atomic::AtomicBool::new(false),
        settings,
        targeted,
        dirty_nodes: Mutex::new(HashSet::new()),
        heartbeats_observed_since: Mutex::new(Instant::now()),
    });

    // Background tasks: caches, heartbeats, EC2 monitor, readiness, leadership changes.
    let (trigger_tx, trigger_rx) = futures::channel::mpsc::channel::<()>(16);
    let mut tasks = tokio::task::JoinSet::new();
    {
        // Re-evaluate at once when what makes a node eligible or healthy changes (standby
        // label, cordon, taints, Ready, providerID, InternalIP), not on every status update.
        let changed = changed.clone();
        let dirty = ctx.clone();
        let mut seen: HashMap<String, u64> = HashMap::new();
        tasks.spawn(node_stream.for_each(move |r| {
            match r {
                Ok(node) => {
                    let print = node_fingerprint(&node);
                    if seen.insert(node.name_any(), print) != Some(print) {
                        lock(&dirty.dirty_nodes).insert(node.name_any());
                        changed.notify_one();
                    }
                }
                Err(e) => {
                    dirty.restart_heartbeat_clocks();
                    tracing::warn!(error = %e, "node watch error; retrying");
                }
            }
            futures::future::ready(())
        }));
    }
    tasks.spawn(heartbeat_staleness_ticker(ctx.clone(), changed.clone()));
    {
        let gap = ctx.clone();
        tasks.spawn(lease_stream.for_each(move |r| {
            if let Err(e) = r {
                gap.restart_heartbeat_clocks();
                tracing::warn!(error = %e, "holder lease watch error; retrying");
            }
            futures::future::ready(())
        }));
    }
    // The heartbeat watch notifies only when it (re)synced: a re-list after a gap (410 Gone,
    // apiserver restart), after which unchanged heartbeats must not look stale.
    let heartbeats_synced = Arc::new(Notify::new());
    tasks.spawn(
        heartbeats
            .clone()
            .run(client.clone(), heartbeats_synced.clone()),
    );
    {
        let (ctx, changed) = (ctx.clone(), changed.clone());
        tasks.spawn(async move {
            loop {
                heartbeats_synced.notified().await;
                ctx.restart_heartbeat_clocks();
                changed.notify_one();
            }
        });
    }
    tasks.spawn(monitor(ctx.clone(), trigger_tx.clone()));
    tasks.spawn(forward_changes(
        ctx.clone(),
        changed.clone(),
        trigger_tx.clone(),
    ));
    tasks.spawn(watch_leadership(ctx.clone(), trigger_tx.clone()));
    {
        let (nodes, leases, feips, heartbeats) = (
            nodes.clone(),
            leases.clone(),
            feips.clone(),
            heartbeats.clone(),
        );
        tasks.spawn(async move {
            let _ = nodes.wait_until_ready().await;
            tracing::debug!("node cache synced");
            let _ = leases.wait_until_ready().await;
            tracing::debug!("holder lease cache synced");
            // The controller's own runner also waits on this store; a second long-lived waiter
            // is not reliably woken, so check readiness by polling instead.
            while tokio::time::timeout(Duration::ZERO, feips.wait_until_ready())
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tracing::debug!("FloatingElasticIP cache synced");
            while !heartbeats.is_synced() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = ready.send(true);
            tracing::info!("caches synced; ready");
        });
    }

    controller
        .with_config(kube::runtime::controller::Config::default().concurrency(16))
        .reconcile_all_on(trigger_rx)
        .reconcile_on(targeted_rx)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::trace!(object = %obj, "reconciled"),
                Err(kube::runtime::controller::Error::ReconcilerFailed(e, obj)) => {
                    tracing::warn!(object = %obj, error = %e, "reconcile failed")
                }
                Err(e) => tracing::warn!(error = %e, "controller error"),
            }
        })
        .await;
    tasks.abort_all();
    Ok(())
}

/// Hash of the Node fields feip's eligibility and health verdicts depend on.
fn node_fingerprint(node: &Node) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    node.labels().get(STANDBY_LABEL).hash(&mut h);
    if let Some(spec) = &node.spec {
        spec.unschedulable.hash(&mut h);
        spec.provider_id.hash(&mut h);
        for t in spec.taints.iter().flatten() {
            (&t.key, &t.effect).hash(&mut h);
        }
    }
    if let Some(status) = &node.status {
        for c in status
            .conditions
            .iter()
            .flatten()
            .filter(|c| c.type_ == "Ready")
        {
            c.status.hash(&mut h);
        }
        for a in status
            .addresses
            .iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
        {
            a.address.hash(&mut h);
        }
    }
    h.finish()
}

/// A heartbeat going stale is the absence of an event, so nothing would wake the controller:
/// every 250 ms, check whether any node crossed any heartbeat timeout in use and trigger a
/// re-evaluation when one did.
async fn heartbeat_staleness_ticker(ctx: Arc<Context>, changed: Arc<Notify>) {
    let mut last: HashMap<String, usize> = HashMap::new();
    // At most 250 ms between checks, and no later than the next crossing due (a fixed 250 ms
    // tick added up to 250 ms to every heartbeat failover).
    let max_pause = Duration::from_millis(250);
    let mut pause = Duration::ZERO;
    loop {
        tokio::time::sleep(pause).await;
        pause = max_pause;
        if !ctx.leadership.is_leader() {
            continue;
        }
        // Only the timeouts of the addresses that list a node matter for it: one address with
        // a short timeout must not make every node "cross" it between two kubelet renewals.
        // (Node selectors apply to every node.)
        let mut per_node: HashMap<String, Vec<Duration>> = HashMap::new();
        let mut everywhere: Vec<Duration> = Vec::new();
        for f in ctx.feips.state() {
            let t = f
                .spec
                .health
                .as_ref()
                .and_then(|h| h.heartbeat_timeout)
                .map_or(DEFAULT_HEARTBEAT_TIMEOUT, Duration::from);
            match &f.spec.candidates {
                Some(c) => {
                    for c in c {
                        let v = per_node.entry(c.node.clone()).or_default();
                        if !v.contains(&t) {
                            v.push(t);
                        }
                    }
                }
                None if !everywhere.contains(&t) => everywhere.push(t),
                None => {}
            }
        }
        let mut any = false;
        for node in ctx.nodes.state() {
            let name = node.name_any();
            let Some(age) = ctx.heartbeat_age(&name) else {
                continue;
            };
            let relevant = || {
                per_node
                    .get(&name)
                    .into_iter()
                    .flatten()
                    .chain(everywhere.iter())
            };
            let crossed = relevant().filter(|t| age > **t).count();
            if let Some(due) = relevant().filter_map(|t| t.checked_sub(age)).min() {
                pause = pause.min(due + Duration::from_millis(1));
            }
            if last.insert(name.clone(), crossed) != Some(crossed) {
                lock(&ctx.dirty_nodes).insert(name);
                any = true;
            }
        }
        if any {
            changed.notify_one();
        }
    }
}

/// Turns health changes into reconciles of just the addresses that list an affected node (a
/// changed probe, heartbeat verdict or Node); a change that names no node (the heartbeat
/// cache synced) reconciles everything (coalesced).
async fn forward_changes(
    ctx: Arc<Context>,
    changed: Arc<Notify>,
    mut all: futures::channel::mpsc::Sender<()>,
) {
    loop {
        changed.notified().await;
        let ips: HashSet<IpAddr> = ctx.probes.take_changed().into_iter().collect();
        let mut nodes = std::mem::take(&mut *lock(&ctx.dirty_nodes));
        if ips.is_empty() && nodes.is_empty() {
            let _ = all.try_send(());
            continue;
        }
        if !ips.is_empty() {
            for n in ctx.nodes.state() {
                if internal_ip(&n).is_some_and(|ip| ips.contains(&ip)) {
                    nodes.insert(n.name_any());
                }
            }
        }
        for f in ctx.feips.state() {
            let affected = match &f.spec.candidates {
                Some(c) => c.iter().any(|c| nodes.contains(&c.node)),
                None => true, // a node selector: membership may have changed too
            };
            if affected {
                let _ = ctx.targeted.unbounded_send(ObjectRef::from_obj(&*f));
            }
        }
    }
}

fn internal_ip(node: &Node) -> Option<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
        .and_then(|a| a.address.parse::<IpAddr>().ok())
}

/// Reconciles the addresses whose EC2 state a monitor pass found changed (by allocation id
/// or public IP): an unchanged snapshot needs no reconcile beyond each address's own timer.
fn reconcile_addresses(ctx: &Context, keys: &HashSet<String>) {
    if keys.is_empty() {
        return;
    }
    for f in ctx.feips.state() {
        let hit = f
            .spec
            .allocation_id
            .as_ref()
            .is_some_and(|a| keys.contains(a))
            || f.spec.public_ip.as_ref().is_some_and(|p| keys.contains(p));
        if hit {
            let _ = ctx.targeted.unbounded_send(ObjectRef::from_obj(&*f));
        }
    }
}

async fn watch_leadership(ctx: Arc<Context>, mut tx: futures::channel::mpsc::Sender<()>) {
    let mut rx = ctx.leadership.subscribe();
    let mut led_before = false;
    loop {
        let leader = *rx.borrow_and_update();
        ctx.metrics.set_leader(leader);
        ctx.fresh_since_leadership
            .store(false, std::sync::atomic::Ordering::SeqCst);
        if leader {
            tracing::info!("leading: reading EC2 before acting");
            // Regaining a leadership this replica lost means its own API writes failed for a
            // while: kubelets' renewals may have failed alike, so heartbeat clocks restart. A
            // follower taking over keeps its clocks: it watched the silence without a gap.
            if led_before {
                ctx.restart_heartbeat_clocks();
            }
            led_before = true;
            ctx.monitor_wake.notify_one();
        } else {
            tracing::info!("not leading: no decisions, no EC2 mutations");
            let _ = tx.try_send(());
        }
        // A new leader's reconciles are triggered by its first EC2 read (the monitor pass
        // just woken): before it they could only publish "EC2 unknown", writing every status
        // twice per leadership change.
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The shortest monitor interval any address asks for.
fn monitor_interval(feips: &Store<FloatingElasticIP>) -> Duration {
    feips
        .state()
        .iter()
        .filter_map(|f| {
            f.spec
                .monitor
                .as_ref()
                .and_then(|m| m.interval)
                .map(Duration::from)
        })
        .min()
        .unwrap_or(DEFAULT_MONITOR_INTERVAL)
        .max(Duration::from_secs(1))
}

/// One batched DescribeAddresses (and DescribeInstances) per interval for every address.
async fn monitor(ctx: Arc<Context>, mut trigger: futures::channel::mpsc::Sender<()>) {
    let mut last = Instant::now() - Duration::from_secs(3600);
    loop {
        let interval = monitor_interval(&ctx.feips);
        let next = last + interval;
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = ctx.monitor_wake.notified() => {
                // Coalesce bursts of wake-ups (many new addresses at once) into one call.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        ctx.probes.collect_garbage(Duration::from_secs(60));
        if !ctx.leadership.is_leader() {
            // Followers do not spend the account's EC2 budget.
            last = Instant::now();
            continue;
        }
        last = Instant::now();
        let feips = ctx.feips.state();
        ctx.metrics.set_managed_addresses(feips.len());
        let mut alloc_ids: Vec<String> = feips
            .iter()
            .filter_map(|f| f.spec.allocation_id.clone())
            .collect();
        let mut public_ips: Vec<String> = feips
            .iter()
            .filter_map(|f| f.spec.public_ip.clone())
            .collect();
        alloc_ids.sort();
        alloc_ids.dedup();
        public_ips.sort();
        public_ips.dedup();
        let mut instance_ids: Vec<String> = ctx
            .nodes
            .state()
            .iter()
            .filter_map(|n| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.provider_id.as_deref())
                    .and_then(instance_id_from_provider_id)
            })
            .collect();
        instance_ids.sort();
        instance_ids.dedup();

        let started = Instant::now();
        let addresses = ctx.ec2.describe_addresses(&alloc_ids, &public_ips).await;
        let instances = ctx.ec2.describe_instances(&instance_ids).await;
        // What this pass changed: everything after errors, new instance data or a leadership
        // change; otherwise only the addresses that moved or were looked up for the first time.
        let mut everything = !ctx
            .fresh_since_leadership
            .load(std::sync::atomic::Ordering::SeqCst);
        let mut changed_keys: HashSet<String> = HashSet::new();
        {
            let mut view = lock(&ctx.view);
            everything |= view.addresses_error.is_some() || view.instances_error.is_some();
            everything |= addresses.is_err() || instances.is_err();
            everything |= instances.as_ref().is_ok_and(|m| *m != view.instances);
            match addresses {
                Ok(mut snapshot) => {
                    // What this process confirmed after the read started is newer than the
                    // read: keep it (a stale answer would look like drift and move the address
                    // again).
                    let newer: Vec<AddressInfo> = view
                        .written
                        .iter()
                        .filter(|(_, at)| **at >= started)
                        .filter_map(|(id, _)| view.addresses.by_allocation.get(id).cloned())
                        .collect();
                    for a in newer {
                        snapshot.insert(a);
                    }
                    view.written.retain(|_, at| *at >= started);
                    for (id, a) in &snapshot.by_allocation {
                        if view.addresses.by_allocation.get(id) != Some(a) {
                            changed_keys.insert(id.clone());
                            changed_keys.insert(a.public_ip.clone());
                        }
                    }
                    for (id, a) in &view.addresses.by_allocation {
                        if !snapshot.by_allocation.contains_key(id) {
                            changed_keys.insert(id.clone());
                            changed_keys.insert(a.public_ip.clone());
                        }
                    }
                    for k in alloc_ids.iter().chain(public_ips.iter()) {
                        if !view.covered.contains(k) {
                            changed_keys.insert(k.clone());
                        }
                    }
                    view.addresses = snapshot;
                    view.covered = alloc_ids.iter().chain(public_ips.iter()).cloned().collect();
                    view.addresses_at = Some(started);
                    view.addresses_error = None;
                }
                Err(e) => view.addresses_error = Some(e.to_string()),
            }
            match instances {
                Ok(map) => {
                    view.instances = map;
                    view.instances_covered = instance_ids.into_iter().collect();
                    view.instances_error = None;
                }
                Err(e) => view.instances_error = Some(e.to_string()),
            }
            if view.addresses_error.is_none() {
                ctx.fresh_since_leadership
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        if everything {
            let _ = trigger.try_send(());
        } else {
            reconcile_addresses(&ctx, &changed_keys);
        }
    }
}

/// A reconcile that found mutations not allowed. A follower waits: gaining the leadership
/// triggers every address. A leader whose renewal is late (inside the safety margin, not yet
/// past the renew deadline) may get its mutation window back without any leadership change
/// and thus without a trigger, so it looks again shortly instead of dropping the reconcile.
fn until_mutation_allowed(ctx: &Context) -> Requeue {
    if ctx.leadership.is_leader() {
        Requeue::requeue(Duration::from_millis(500))
    } else {
        Requeue::await_change()
    }
}

fn error_policy(obj: Arc<FloatingElasticIP>, err: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.reconcile_error(err.kind());
    let mut rt = lock(&ctx.runtime);
    let r = rt.entry(key(&obj)).or_default();
    r.failed_attempts = r.failed_attempts.saturating_add(1);
    Requeue::requeue(backoff(r.failed_attempts))
}

/// Jittered exponential backoff: 500ms, 1s, 2s, ... up to 30s.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(500) * 2u32.saturating_pow(attempt.saturating_sub(1).min(6));
    let base = base.min(Duration::from_secs(30));
    let jitter = rand::random_range(0.8..1.2);
    base.mul_f64(jitter)
}

async fn reconcile(obj: Arc<FloatingElasticIP>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    if !ctx.settings.namespaces.is_empty()
        && !ctx
            .settings
            .namespaces
            .iter()
            .any(|n| Some(n.as_str()) == obj.metadata.namespace.as_deref())
    {
        return Ok(Requeue::await_change());
    }
    // Only the leader decides and writes; followers wait for leadership (a trigger arrives).
    if !ctx.leadership.can_mutate() {
        return Ok(until_mutation_allowed(&ctx));
    }
    let started = Instant::now();
    let api: Api<FloatingElasticIP> = Api::namespaced(
        ctx.client.clone(),
        obj.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let result = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            FinalizerEvent::Apply(o) => apply(o, ctx.clone()).await,
            FinalizerEvent::Cleanup(o) => cleanup(o, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconcile(started.elapsed());
    result
}

/// The spec, resolved against defaults.
struct Resolved {
    policy: Policy,
    monitor_interval: Duration,
    /// How long a mutation may take to become visible in DescribeAddresses.
    confirm_timeout: Duration,
    heartbeat_timeout: Duration,
    probe: Option<(u16, Option<String>, Duration, Duration, u32, u32)>,
    device_index: i32,
}

fn resolve(f: &FloatingElasticIP, now: Timestamp) -> Resolved {
    let s = &f.spec;
    let d = |x: Option<kube::core::Duration>| x.map(Duration::from);
    let to_ts = |t: &Option<Time>| t.as_ref().map(|t| t.0);
    let failure_timeout = d(s.failure_timeout).filter(|t| !t.is_zero());
    let _ = now;
    let policy = Policy {
        failback: s.failback.as_ref().map(|f| f.policy).unwrap_or_default(),
        hold_down: s
            .failback
            .as_ref()
            .and_then(|f| d(f.hold_down))
            .unwrap_or_default(),
        migration_threshold: s.migration_threshold.unwrap_or(1).max(1) as u32,
        failure_timeout,
        allow_takeover: s.allow_takeover.unwrap_or(false),
        stopped: s.target_state == Some(TargetState::Stopped),
        observe_only: s.management == Some(Management::ObserveOnly),
        stop_on_associate_failure: s.on_associate_failure
            == Some(crate::crd::AssociateFailurePolicy::Stop),
        pin: s
            .pin
            .as_ref()
            .map(|p| (p.node.clone(), to_ts(&p.expires_at))),
        bans: s
            .bans
            .iter()
            .flatten()
            .map(|b| (b.node.clone(), to_ts(&b.expires_at)))
            .collect(),
    };
    let probe_cfg = s
        .health
        .as_ref()
        .and_then(|h| h.probe.clone())
        .unwrap_or_default();
    let probe = match probe_cfg.kind {
        ProbeType::None => None,
        kind => {
            let period = d(probe_cfg.period).unwrap_or(DEFAULT_PROBE_PERIOD);
            let timeout = d(probe_cfg.timeout)
                .unwrap_or(Duration::from_secs(1))
                .min(period);
            let path = (kind == ProbeType::Http)
                .then(|| probe_cfg.path.clone().unwrap_or_else(|| "/healthz".into()));
            Some((
                probe_cfg.port.map_or(DEFAULT_PROBE_PORT, |p| p as u16),
                path,
                period,
                timeout,
                probe_cfg
                    .failure_threshold
                    .map_or(DEFAULT_PROBE_FAILURES, |v| v.max(1) as u32),
                probe_cfg.success_threshold.map_or(1, |v| v.max(1) as u32),
            ))
        }
    };
    Resolved {
        policy,
        confirm_timeout: s
            .monitor
            .as_ref()
            .and_then(|m| d(m.timeout))
            .unwrap_or(DEFAULT_CONFIRM_TIMEOUT),
        monitor_interval: s
            .monitor
            .as_ref()
            .and_then(|m| d(m.interval))
            .unwrap_or(DEFAULT_MONITOR_INTERVAL),
        heartbeat_timeout: s
            .health
            .as_ref()
            .and_then(|h| d(h.heartbeat_timeout))
            .unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT),
        probe,
        device_index: s
            .network_interface
            .as_ref()
            .and_then(|n| n.device_index)
            .unwrap_or(0),
    }
}

/// A candidate as listed (spec order) with its priority and optional secondary private IP.
struct Listed {
    node: String,
    priority: i32,
    private_ip: Option<String>,
}

fn listed_candidates(f: &FloatingElasticIP, nodes: &Store<Node>) -> Vec<Listed> {
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

fn selector_matches(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    use kube::core::SelectorExt as _;
    let Ok(s) = kube::core::Selector::try_from(sel.clone()) else {
        return false;
    };
    s.matches(labels)
}

/// Everything known about one candidate.
struct Gathered {
    view: CandidateView,
    instance_id: Option<String>,
    dead_since: Option<Timestamp>,
    /// The node's probe started moments ago and has no verdict yet.
    probe_pending: bool,
}

fn gather_candidate(
    ctx: &Context,
    r: &Resolved,
    listed: &Listed,
    rt: &mut Runtime,
    now: Timestamp,
) -> Gathered {
    let node = ctx.nodes.get(&ObjectRef::new(&listed.node));
    let mut dead_since = None;
    let mut probe_pending = false;
    let view = |health, eligibility, target| CandidateView {
        node: listed.node.clone(),
        priority: listed.priority,
        health,
        eligibility,
        healthy_since: None,
        target,
    };
    let Some(node) = node else {
        rt.healthy_since.remove(&listed.node);
        return Gathered {
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
            dead_since: None,
            probe_pending: false,
        };
    };

    // Eligibility: standby label, cordon/drain/termination taints, instance resolution.
    let labels = node.labels();
    let spec = node.spec.clone().unwrap_or_default();
    let terminating_taint = spec.taints.iter().flatten().any(|t| {
        t.key == "ToBeDeletedByClusterAutoscaler"
            || t.key == "node.kubernetes.io/out-of-service"
            || t.key == "karpenter.sh/disrupted"
    });
    let provider = spec.provider_id.as_deref();
    let instance_id = provider.and_then(instance_id_from_provider_id);
    let (instance, instances_covered, instances_error) = {
        let v = lock(&ctx.view);
        let i = instance_id
            .as_ref()
            .and_then(|id| v.instances.get(id).cloned());
        let covered = instance_id
            .as_ref()
            .is_some_and(|id| v.instances_covered.contains(id));
        (i, covered, v.instances_error.clone())
    };
    if instance_id.is_some() && instance.is_none() && !instances_covered {
        ctx.monitor_wake.notify_one();
    }
    let mut target = None;
    let mut eligibility = if labels.get(STANDBY_LABEL).is_some_and(|v| v == "true") {
        Eligibility::Standby
    } else if spec.unschedulable == Some(true) || terminating_taint {
        Eligibility::Cordoned
    } else {
        Eligibility::Eligible
    };
    let unresolvable = match (provider, &instance_id, &instance) {
        (None, _, _) => Some("node has no spec.providerID".to_string()),
        (Some(p), None, _) => Some(format!("providerID {p:?} is not an AWS instance")),
        (Some(p), Some(id), None) if instances_covered => Some(
            match zone_outside_region(p, ctx.ec2.sdk().config().region().map(|r| r.as_ref())) {
                Some((zone, region)) => {
                    format!("instance {id} is in {zone}, outside this controller's region {region}")
                }
                None => format!("instance {id} not found in EC2 (wrong account or region?)"),
            },
        ),
        (_, Some(_), None) => None, // not looked up yet or EC2 unknown: target stays unresolved
        (_, Some(_), Some(inst)) => match inst.interface(r.device_index) {
            None => Some(format!(
                "instance {} has no network interface at device index {}",
                inst.instance_id, r.device_index
            )),
            Some(eni) => {
                let ip = listed
                    .private_ip
                    .clone()
                    .unwrap_or_else(|| eni.primary_private_ip.clone());
                if eni.private_ips.contains(&ip) || ip == eni.primary_private_ip {
                    target = Some(Target {
                        instance_id: inst.instance_id.clone(),
                        network_interface_id: eni.network_interface_id.clone(),
                        private_ip: ip,
                    });
                    None
                } else {
                    Some(format!(
                        "private IP {ip} is not on interface {}",
                        eni.network_interface_id
                    ))
                }
            }
        },
    };
    if let Some(reason) = unresolvable
        && eligibility == Eligibility::Eligible
    {
        eligibility = Eligibility::Unresolvable { reason };
    }

    // Health: any definite "dead" signal wins; an unreadable signal is unknown.
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    let mut dead: Option<String> = None;
    let mut unknown: Option<String> = None;
    match ready.as_deref() {
        Some("True") => {}
        Some(other) => dead = Some(format!("node Ready={other}")),
        None => unknown = Some("node has no Ready condition".into()),
    }
    if dead.is_none()
        && let Some(age) = ctx.heartbeat_age(&listed.node)
        && age > r.heartbeat_timeout
    {
        if ctx.leadership.api_failing_since().is_some() {
            // Kubelets cannot renew through an API that cannot serve this replica either.
            unknown = Some(format!(
                "kubelet heartbeat unchanged for {}s while the API is failing this controller's requests",
                age.as_secs()
            ));
        } else {
            dead = Some(format!(
                "kubelet heartbeat unchanged for {}s",
                age.as_secs()
            ));
            dead_since = Some(
                now - jiff::SignedDuration::try_from(age - r.heartbeat_timeout).unwrap_or_default(),
            );
        }
    }
    if dead.is_none()
        && let Some(inst) = &instance
        && !inst.is_running()
    {
        if inst.state == "pending" {
            unknown = Some("instance is pending".into());
        } else {
            dead = Some(format!("instance {} is {}", inst.instance_id, inst.state));
        }
    }
    if instance.is_none() && instances_error.is_some() && unknown.is_none() {
        // No instance data at all yet: cannot tell.
        unknown = instances_error.map(|e| format!("instance state unknown: {e}"));
    }
    if let Some((port, path, period, timeout, failures, successes)) = &r.probe {
        let ip = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse::<IpAddr>().ok());
        match ip {
            None => {
                if unknown.is_none() {
                    unknown = Some("node has no InternalIP to probe".into());
                }
            }
            Some(ip) => {
                let state = ctx.probes.state(&ProbeSpec {
                    ip,
                    port: *port,
                    http_path: path.clone(),
                    period: *period,
                    timeout: *timeout,
                    failure_threshold: *failures,
                    success_threshold: *successes,
                });
                match state.status {
                    ProbeStatus::Dead if dead.is_none() => {
                        dead = Some(format!("probe of {ip}:{port} failed {failures} times"));
                        dead_since = Some(state.since_wall);
                    }
                    ProbeStatus::Unknown if unknown.is_none() => {
                        unknown = Some("probe has no verdict yet".into());
                        probe_pending = state.since.elapsed() < *period * 2 + *timeout;
                    }
                    _ => {}
                }
            }
        }
    }
    let health = match (dead, unknown) {
        (Some(reason), _) => NodeHealth::Dead { reason },
        (None, Some(reason)) => NodeHealth::Unknown { reason },
        (None, None) => NodeHealth::Healthy,
    };
    let healthy_since = if health == NodeHealth::Healthy {
        Some(*rt.healthy_since.entry(listed.node.clone()).or_insert(now))
    } else {
        rt.healthy_since.remove(&listed.node);
        None
    };
    let mut v = view(health, eligibility, target);
    v.healthy_since = healthy_since;
    Gathered {
        view: v,
        instance_id,
        dead_since,
        probe_pending,
    }
}

fn failures_from_status(status: &FloatingElasticIPStatus) -> BTreeMap<String, FailureRecord> {
    status
        .nodes
        .iter()
        .filter(|n| n.failure_count > 0)
        .map(|n| {
            let kind = n
                .last_failure_reason
                .as_deref()
                .and_then(|r| FailureKind::parse(r.split(':').next().unwrap_or_default()))
                .unwrap_or(FailureKind::Drift);
            let record = FailureRecord {
                count: n.failure_count.max(0) as u32,
                last_failure: n
                    .last_failure
                    .as_ref()
                    .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
                kind,
                reason: n.last_failure_reason.clone().unwrap_or_default(),
            };
            (n.node.clone(), record)
        })
        .collect()
}

/// The address as EC2 last reported it, or None while unknown / not yet looked up.
fn observe_address(
    ctx: &Context,
    f: &FloatingElasticIP,
) -> Result<Option<AddressInfo>, (bool, String)> {
    // A new leader acts only on EC2 data it read itself: until then the address is unknown,
    // so it decides nothing on EC2's behalf and adopts whatever it then finds (no remap).
    if !ctx
        .fresh_since_leadership
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        return Err((
            false,
            "no EC2 read yet since this replica became leader".into(),
        ));
    }
    let v = lock(&ctx.view);
    if let Some(e) = &v.addresses_error {
        return Err((false, e.clone()));
    }
    let (k, found) = match (&f.spec.allocation_id, &f.spec.public_ip) {
        (Some(a), _) => (a.clone(), v.addresses.by_allocation.get(a).cloned()),
        (None, Some(p)) => (p.clone(), v.addresses.by_public_ip.get(p).cloned()),
        (None, None) => return Err((true, "no address in spec".into())),
    };
    if found.is_some() {
        return Ok(found);
    }
    if v.covered.contains(&k) {
        Ok(None)
    } else {
        Err((false, "not looked up yet".into()))
    }
}

async fn apply(f: Arc<FloatingElasticIP>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    // Until EC2 has been read for this address (by this leader) nothing would be decided,
    // and publishing "EC2 unknown" for a moment would write every status twice per restart or
    // leadership change (2,000 writes at 1,000 addresses): wait for the read, which the woken
    // monitor makes and which reconciles the address. (When EC2 cannot be read, the reconcile
    // goes on and reports that instead.)
    let read_pending = !ctx
        .fresh_since_leadership
        .load(std::sync::atomic::Ordering::SeqCst)
        || matches!(observe_address(&ctx, &f), Err((false, reason)) if reason == "not looked up yet");
    if f.status.is_some() && read_pending && lock(&ctx.view).addresses_error.is_none() {
        ctx.monitor_wake.notify_one();
        // The read triggers the reconcile; the timer is only a safety net (polling every
        // 200 ms meant 15,000 idle reconciles per restart at 1,000 addresses).
        return Ok(Requeue::requeue(Duration::from_secs(2)));
    }
    let now = Timestamp::now();
    let k = key(&f);
    let r = resolve(&f, now);
    let ns = f.namespace().unwrap_or_default();
    let lease_name = f.lease_name();
    let lease = ctx.leases.get(&ObjectRef::new(&lease_name).within(&ns));
    let status = f.status.clone().unwrap_or_default();

    // Failure bookkeeping, including a declarative cleanup request.
    let mut failures = failures_from_status(&status);
    let mut cleanup_done = status.last_cleanup_request_id.clone();
    if let Some(c) = &f.spec.cleanup
        && status.last_cleanup_request_id.as_deref() != Some(c.request_id.as_str())
    {
        match &c.node {
            Some(n) => {
                failures.remove(n);
            }
            None => failures.clear(),
        }
        cleanup_done = Some(c.request_id.clone());
        publish(
            &ctx,
            &f,
            EventType::Normal,
            "Cleanup",
            format!(
                "failure counts reset ({})",
                c.node.as_deref().unwrap_or("all nodes")
            ),
        )
        .await;
    }

    // Address observation.
    let address = observe_address(&ctx, &f);
    let (observation, address_info, address_missing) = match &address {
        Ok(Some(a)) => (
            match &a.network_interface_id {
                Some(eni) => AddressObservation::Associated {
                    network_interface_id: eni.clone(),
                    private_ip: a.private_ip.clone(),
                    association_id: a.association_id.clone(),
                },
                None => AddressObservation::Unassociated,
            },
            Some(a.clone()),
            false,
        ),
        Ok(None) => (
            AddressObservation::Unknown {
                reason: "address not found in EC2".into(),
            },
            None,
            true,
        ),
        Err((_, reason)) => {
            if reason == "not looked up yet" {
                ctx.monitor_wake.notify_one();
            }
            (
                AddressObservation::Unknown {
                    reason: reason.clone(),
                },
                None,
                false,
            )
        }
    };

    // Several objects naming one Elastic IP: only the oldest manages it; the others report
    // the conflict and never write a holder Lease or call EC2 (ownership between tenants).
    // This object's address is the one just observed (a public IP resolved to its allocation).
    let observed_allocation = address_info.as_ref().map(|a| a.allocation_id.as_str());
    if let Some(owner) = conflicting_owner(&ctx, &f, observed_allocation) {
        let new_status = conflict_status(&f, &owner, now);
        let first_report = status
            .conditions
            .iter()
            .all(|c| !(c.type_ == "Degraded" && c.reason == "AddressConflict"));
        let message = new_status
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        patch_status(&ctx, &f, new_status).await?;
        if first_report {
            publish(&ctx, &f, EventType::Warning, "AddressConflict", message).await;
        }
        return Ok(Requeue::requeue(r.monitor_interval));
    }

    // Candidates.
    let listed = listed_candidates(&f, &ctx.nodes);
    let mut gathered: Vec<Gathered> = {
        let mut rt = lock(&ctx.runtime);
        let rt = rt.entry(k.clone()).or_default();
        listed
            .iter()
            .map(|l| gather_candidate(&ctx, &r, l, rt, now))
            .collect()
    };
    // Candidates in another VPC than the address's network are not eligible.
    {
        let mut order: Vec<usize> = (0..gathered.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(gathered[i].view.priority));
        let placed: Vec<(String, Option<String>, Option<String>)> = {
            let v = lock(&ctx.view);
            order
                .iter()
                .map(|&i| {
                    let g = &gathered[i];
                    let vpc = g
                        .instance_id
                        .as_ref()
                        .and_then(|id| v.instances.get(id))
                        .and_then(|inst| inst.vpc_id.clone());
                    let eni = g
                        .view
                        .target
                        .as_ref()
                        .map(|t| t.network_interface_id.clone());
                    (g.view.node.clone(), vpc, eni)
                })
                .collect()
        };
        let on = address_info
            .as_ref()
            .and_then(|a| a.network_interface_id.as_deref());
        for (node, reason) in vpc_mismatches(&placed, on) {
            if let Some(g) = gathered.iter_mut().find(|g| g.view.node == node)
                && g.view.eligibility == Eligibility::Eligible
            {
                g.view.eligibility = Eligibility::Unresolvable { reason };
            }
        }
    }
    // A candidate whose instance cannot be resolved any more (so it is not eligible) keeps its
    // last resolved target, for ownership only: an address on that interface stays ours. Not
    // when its instance is known and the interface or private IP no longer fits, and never
    // for an eligible node (a new instance not looked up yet must not get a stale target).
    {
        let instances: HashSet<String> = lock(&ctx.view).instances.keys().cloned().collect();
        let mut rt = lock(&ctx.runtime);
        let rt = rt.entry(k.clone()).or_default();
        for g in gathered.iter_mut() {
            match &g.view.target {
                Some(t) => {
                    rt.known_targets.insert(g.view.node.clone(), t.clone());
                }
                None if g.view.eligibility != Eligibility::Eligible
                    && g.instance_id
                        .as_ref()
                        .is_none_or(|id| !instances.contains(id)) =>
                {
                    g.view.target = rt.known_targets.get(&g.view.node).cloned();
                }
                None => {}
            }
        }
    }
    // The holder keeps its last known target (from status) when it can no longer be resolved
    // (its Node object deleted, its providerID gone): the address on that interface is feip's
    // own association, not a foreign one, and must still be moved off it. (Status survives a
    // restart or a change of leader; the runtime memory above does not.)
    if let Some(last) = status.holder.as_ref()
        && lease
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.holder_identity.as_deref())
            == Some(last.node.as_str())
        && let (Some(instance_id), Some(eni), Some(ip)) = (
            &last.instance_id,
            &last.network_interface_id,
            &last.private_ip_address,
        )
        && let Some(g) = gathered.iter_mut().find(|g| {
            g.view.node == last.node
                && g.view.target.is_none()
                && g.view.eligibility != Eligibility::Eligible
        })
    {
        g.view.target = Some(Target {
            instance_id: instance_id.clone(),
            network_interface_id: eni.clone(),
            private_ip: ip.clone(),
        });
    }
    // A probe started moments ago (this replica just started or became leader, a new
    // candidate) has no verdict yet: wait for it (its verdict triggers a reconcile) instead of
    // publishing a transient "health unknown" status and writing the status twice (2,000
    // status writes per restart at 1,000 addresses). Unknown health never moves an address.
    if gathered.iter().any(|g| g.probe_pending) && cleanup_done == status.last_cleanup_request_id {
        return Ok(Requeue::requeue(Duration::from_secs(1)));
    }

    let holder = lease
        .as_ref()
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty());
    let holder_confirmed = lease
        .as_ref()
        .and_then(|l| l.metadata.annotations.as_ref())
        .and_then(|a| a.get(CONFIRMED_ANNOTATION))
        .is_some_and(|v| v == "true");

    let input = Input {
        now,
        policy: r.policy.clone(),
        candidates: gathered.iter().map(|g| g.view.clone()).collect(),
        holder: holder.clone(),
        holder_confirmed,
        failures: failures.clone(),
        address: observation.clone(),
    };
    let decision = decide::decide(&input);
    tracing::debug!(feip = %k, ?holder, holder_confirmed, address = ?input.address, candidates = ?input.candidates, ?decision, "decided");
    decision.apply_to_failures(&mut failures, now);
    if let Some((node, kind)) = &decision.record_failure {
        let count = failures.get(node).map_or(0, |r| r.count);
        publish(
            &ctx,
            &f,
            EventType::Warning,
            "Drift",
            format!(
                "address is not on holder {node} ({kind}); failure {count} of {}",
                r.policy.migration_threshold
            ),
        )
        .await;
        if count >= r.policy.migration_threshold {
            publish(
                &ctx,
                &f,
                EventType::Warning,
                "Banned",
                format!("{node} reached the migration threshold ({count}) and is banned for this address"),
            )
            .await;
        }
    }

    // 1. Write the decision to the Lease before any EC2 mutation.
    let mut lease_holder = holder.clone();
    let mut confirmed = holder_confirmed;
    let mut transitions = lease
        .as_ref()
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0);
    if !r.policy.observe_only {
        if let Some(change) = &decision.change {
            if change.from.is_some() && change.to.is_some() && change.from != change.to {
                transitions += 1;
            }
            let detected_at = change
                .from
                .as_ref()
                .and_then(|from| gathered.iter().find(|g| &g.view.node == from))
                .and_then(|g| g.dead_since)
                .unwrap_or(now);
            write_lease(
                &ctx,
                &f,
                lease.as_deref(),
                change.to.as_deref(),
                transitions,
                false,
                change.reason.as_str(),
                change
                    .from
                    .as_deref()
                    .filter(|_| change.to.is_some())
                    .map(|from| (from, detected_at)),
                &r,
            )
            .await?;
            lease_holder = change.to.clone();
            confirmed = false;
            {
                let mut rt = lock(&ctx.runtime);
                let rt = rt.entry(k.clone()).or_default();
                rt.pending = change.to.as_ref().map(|to| PendingFailover {
                    from: change.from.clone(),
                    to: to.clone(),
                    reason: change.reason.as_str().to_string(),
                    detected_at,
                });
            }
            ctx.metrics.holder_change(change.reason.as_str());
            let msg = format!(
                "holder {} -> {} ({})",
                change.from.as_deref().unwrap_or("none"),
                change.to.as_deref().unwrap_or("none"),
                change.reason.as_str()
            );
            // detected_at at full precision (status times are whole seconds): feip-bench reads it.
            tracing::info!(feip = %k, %msg, %detected_at, "holder change");
            let reason = if change.is_failover() {
                "Failover"
            } else if change.to.is_none() {
                "HolderReleased"
            } else {
                "HolderElected"
            };
            // Published alongside, not before, the EC2 action: an Event write is not part of
            // the decision (the Lease is) and took 10-30 ms of every failover.
            let (ctx, f) = (ctx.clone(), f.clone());
            tokio::spawn(async move { publish(&ctx, &f, EventType::Normal, reason, msg).await });
        } else if lease.is_none() && !r.policy.stopped {
            write_lease(
                &ctx,
                &f,
                None,
                holder.as_deref(),
                0,
                false,
                "Created",
                None,
                &r,
            )
            .await?;
        }
    }

    // 2. EC2 action, only while leadership is valid with its safety margin.
    let mut action_error: Option<Ec2Error> = None;
    let mut current = address_info.clone();
    let mut blocked = None;
    match &decision.action {
        Action::Associate { node, target } if !r.policy.observe_only => {
            let allocation = address_info.as_ref().map(|a| a.allocation_id.clone());
            if let Some(allocation) = allocation {
                if !ctx.leadership.can_mutate() {
                    return Ok(until_mutation_allowed(&ctx));
                }
                // After a failed pass (an associate that timed out may still have happened),
                // look before repeating it: the snapshot may predate it (rule 3).
                let retrying = lock(&ctx.runtime)
                    .get(&k)
                    .is_some_and(|rt| rt.failed_attempts > 0);
                let result = if retrying
                    && already_on(&ctx, &allocation, &target.network_interface_id).await
                {
                    Ok(String::new())
                } else {
                    ctx.ec2
                        .associate(
                            &allocation,
                            &target.network_interface_id,
                            &target.private_ip,
                        )
                        .await
                };
                match result {
                    Ok(_) => match confirm(
                        &ctx,
                        &allocation,
                        &target.network_interface_id,
                        r.confirm_timeout,
                    )
                    .await
                    {
                        Ok(info) => {
                            current = Some(info.clone());
                            lock(&ctx.view).record(info.clone());
                            publish(
                                &ctx,
                                &f,
                                EventType::Normal,
                                "Associated",
                                format!(
                                    "address associated with {node} ({} {})",
                                    target.network_interface_id, target.private_ip
                                ),
                            )
                            .await;
                        }
                        Err(e) => action_error = Some(e),
                    },
                    Err(e) => {
                        if !e.is_unknown() && e.blames_target() {
                            let threshold = r.policy.migration_threshold;
                            decide::record_failure(
                                &mut failures,
                                node,
                                now,
                                FailureKind::AssociateFailed,
                                e.to_string(),
                                Some(threshold),
                            );
                            publish(
                                &ctx,
                                &f,
                                EventType::Warning,
                                "AssociateFailed",
                                format!("{node} banned after a failed associate: {e}"),
                            )
                            .await;
                        }
                        action_error = Some(e);
                    }
                }
            }
        }
        Action::Disassociate {
            association_id: Some(assoc),
        } if !r.policy.observe_only => {
            if !ctx.leadership.can_mutate() {
                return Ok(until_mutation_allowed(&ctx));
            }
            match ctx.ec2.disassociate(assoc).await {
                Ok(()) => {
                    if let Some(c) = current.as_mut() {
                        c.association_id = None;
                        c.network_interface_id = None;
                        c.private_ip = None;
                        c.instance_id = None;
                        lock(&ctx.view).record(c.clone());
                    }
                    publish(
                        &ctx,
                        &f,
                        EventType::Normal,
                        "Disassociated",
                        "address disassociated (targetState Stopped)".into(),
                    )
                    .await;
                }
                Err(e) => {
                    blocked = Some(e.to_string());
                    publish(
                        &ctx,
                        &f,
                        EventType::Warning,
                        "Blocked",
                        format!("disassociate failed: {e}"),
                    )
                    .await;
                    action_error = Some(e);
                }
            }
        }
        _ => {}
    }

    // 3. Confirmation bookkeeping: lease renew/confirm, failover completion, pin clearing.
    let on_target = |info: &Option<AddressInfo>, node: &str| -> bool {
        let Some(info) = info else { return false };
        gathered
            .iter()
            .find(|g| g.view.node == node)
            .and_then(|g| g.view.target.as_ref())
            .is_some_and(|t| {
                info.network_interface_id.as_deref() == Some(t.network_interface_id.as_str())
            })
    };
    let holder_on_target = lease_holder
        .as_deref()
        .is_some_and(|h| on_target(&current, h));
    let holder_view = lease_holder
        .as_ref()
        .and_then(|h| gathered.iter().find(|g| &g.view.node == h));
    let holder_healthy = holder_view.is_some_and(|g| g.view.health == NodeHealth::Healthy);
    if !r.policy.observe_only && lease_holder.is_some() {
        let renew_due = lease
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.renew_time.as_ref())
            .is_none_or(|t| {
                now.duration_since(t.0)
                    > jiff::SignedDuration::try_from(lease_duration(&r) / 2).unwrap_or_default()
            });
        if holder_on_target && (!confirmed || (holder_healthy && renew_due)) {
            // Reuse the freshest Lease (ours may have just been written).
            let fresh = ctx.leases.get(&ObjectRef::new(&lease_name).within(&ns));
            let reason = fresh
                .as_ref()
                .and_then(|l| l.metadata.annotations.as_ref())
                .and_then(|a| a.get(REASON_ANNOTATION).cloned())
                .unwrap_or_else(|| "Adopted".into());
            if let Err(e) = write_lease(
                &ctx,
                &f,
                fresh.as_deref(),
                lease_holder.as_deref(),
                transitions,
                true,
                &reason,
                None,
                &r,
            )
            .await
            {
                tracing::debug!(feip = %k, error = %e, "lease confirm deferred");
            }
        }
    }
    let mut last_failover = status.last_failover.clone();
    let mut failover_count = status.failover_count;
    // A completed failover stays pending until the status recording it is written: if that
    // write fails, the next pass records it again instead of losing it.
    let mut settle_pending = false;
    if holder_on_target {
        settle_pending = true;
        let pending = lock(&ctx.runtime)
            .get(&k)
            .and_then(|rt| rt.pending.clone())
            .or_else(|| pending_from_lease(lease.as_deref(), holder_confirmed));
        if let Some(p) = pending
            .filter(|p| Some(&p.to) == lease_holder.as_ref() && !already_recorded(&status, p))
        {
            // Completion is now (after the confirming Describe), not the start of this pass.
            let completed = Timestamp::now();
            let duration = completed.duration_since(p.detected_at).unsigned_abs();
            if p.from.is_some() {
                failover_count += 1;
                ctx.metrics.failover(static_reason(&p.reason), duration);
                publish(
                    &ctx,
                    &f,
                    EventType::Normal,
                    "FailoverComplete",
                    format!(
                        "address confirmed on {} {:.3}s after detection ({})",
                        p.to,
                        duration.as_secs_f64(),
                        p.reason
                    ),
                )
                .await;
                last_failover = Some(FailoverRecord {
                    from: p.from.clone(),
                    to: p.to.clone(),
                    reason: p.reason.clone(),
                    detected_at: Some(Time(p.detected_at)),
                    completed_at: Some(Time(completed)),
                    duration_seconds: Some(format!("{:.3}", duration.as_secs_f64())),
                });
            }
        }
        if let Some(pin) = &f.spec.pin
            && pin.clear_when_done == Some(true)
            && lease_holder.as_deref() == Some(pin.node.as_str())
        {
            let api: Api<FloatingElasticIP> = Api::namespaced(ctx.client.clone(), &ns);
            let patch = serde_json::json!({"spec": {"pin": null}});
            api.patch(
                &f.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
            publish(
                &ctx,
                &f,
                EventType::Normal,
                "MoveComplete",
                format!("moved to {}; pin cleared", pin.node),
            )
            .await;
        }
    }

    // 4. Status.
    {
        let mut rt = lock(&ctx.runtime);
        let rt = rt.entry(k.clone()).or_default();
        rt.blocked = blocked.clone();
        if action_error.is_none() {
            rt.failed_attempts = 0;
        }
    }
    let new_status = build_status(StatusInputs {
        f: &f,
        r: &r,
        decision: &decision,
        gathered: &gathered,
        holder: lease_holder.as_deref(),
        holder_on_target,
        holder_healthy,
        current: current.as_ref(),
        address_missing,
        failures: &failures,
        failover_count,
        last_failover,
        transitions,
        cleanup_done,
        action_error: action_error.as_ref(),
        blocked: blocked.as_deref(),
        now,
    });
    patch_status(&ctx, &f, new_status).await?;
    if settle_pending && let Some(rt) = lock(&ctx.runtime).get_mut(&k) {
        rt.pending = None;
    }

    // 5. When to look again.
    let soon = Duration::from_millis(200);
    let requeue = match &action_error {
        // A banned target: move on to the next candidate at once. Other definite errors
        // (a refused disassociate, an unknown allocation) back off like unknown ones.
        Some(e)
            if !e.is_unknown()
                && e.blames_target()
                && matches!(decision.action, Action::Associate { .. }) =>
        {
            soon
        }
        Some(_) => {
            let attempts = {
                let mut rt = lock(&ctx.runtime);
                let rt = rt.entry(k.clone()).or_default();
                rt.failed_attempts = rt.failed_attempts.saturating_add(1);
                rt.failed_attempts
            };
            backoff(attempts)
        }
        None if decision.change.is_some()
            || (lease_holder.is_some() && !holder_on_target && !r.policy.observe_only) =>
        {
            soon
        }
        // Jittered, so addresses reconciled together (a restart) spread over the interval
        // instead of arriving in bursts that delay an urgent reconcile.
        None => r.monitor_interval.mul_f64(rand::random_range(0.9..1.1)),
    };
    Ok(Requeue::requeue(requeue))
}

fn static_reason(reason: &str) -> &'static str {
    use decide::ChangeReason::*;
    for r in [
        HolderDead,
        HolderIneligible,
        HolderRemoved,
        HolderBanned,
        Drift,
        AssociateFailed,
        Pinned,
        Failback,
        Elected,
        Adopted,
        Stopped,
    ] {
        if r.as_str() == reason {
            return r.as_str();
        }
    }
    "Other"
}

/// The availability zone of an `aws:///<zone>/<instance>` providerID when it is not in
/// `region` (EC2 only sees instances of its own region): `(zone, region)`.
fn zone_outside_region(provider_id: &str, region: Option<&str>) -> Option<(String, String)> {
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
/// `candidates` = (node, VPC if known, interface if resolved), most preferred first.
fn vpc_mismatches(
    candidates: &[(String, Option<String>, Option<String>)],
    associated_eni: Option<&str>,
) -> Vec<(String, String)> {
    let on = associated_eni.and_then(|eni| {
        candidates
            .iter()
            .find(|(_, vpc, e)| vpc.is_some() && e.as_deref() == Some(eni))
    });
    let (reference, why) = match on {
        Some((node, Some(vpc), _)) => (vpc.clone(), format!("where the address is (on {node})")),
        _ => {
            let mut counts: Vec<(&String, usize)> = Vec::new();
            for vpc in candidates.iter().filter_map(|(_, v, _)| v.as_ref()) {
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
        .filter_map(|(node, vpc, _)| {
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

/// The address an object names, for conflict detection: its allocation id, resolved from the
/// public IP through the last DescribeAddresses when the object names an IP.
fn address_identity(
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
/// then name) owns it. Returns the owner when it is not `me`; None when `me` owns the
/// address or nobody else names it.
fn address_owner<'a>(
    me: &FloatingElasticIP,
    all: &'a [Arc<FloatingElasticIP>],
    identity: impl Fn(&FloatingElasticIP) -> Option<String>,
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
        .min_by_key(|o| rank(o))
        .filter(|o| rank(o) < me_rank)
}

/// The object that owns the address `f` names, if that is another object. `observed` is the
/// allocation id `f`'s address was just observed to have, when known.
fn conflicting_owner(
    ctx: &Context,
    f: &FloatingElasticIP,
    observed: Option<&str>,
) -> Option<Arc<FloatingElasticIP>> {
    let mut ip_to_allocation: HashMap<String, String> = lock(&ctx.view)
        .addresses
        .by_public_ip
        .iter()
        .map(|(ip, a)| (ip.clone(), a.allocation_id.clone()))
        .collect();
    if let (Some(ip), Some(a)) = (&f.spec.public_ip, observed) {
        ip_to_allocation.insert(ip.clone(), a.to_string());
    }
    let all = ctx.feips.state();
    address_owner(f, &all, |x| address_identity(x, &ip_to_allocation)).cloned()
}

/// Status of an object that names an address another (older) object manages.
fn conflict_status(
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

/// The status already records this failover (a pass whose Lease confirmation failed wrote
/// it; the Lease still carries it). Status times have whole-second precision.
fn already_recorded(status: &FloatingElasticIPStatus, p: &PendingFailover) -> bool {
    status.last_failover.as_ref().is_some_and(|l| {
        l.to == p.to
            && l.from == p.from
            && l.detected_at.as_ref().map(|t| t.0.as_second()) == Some(p.detected_at.as_second())
    })
}

/// An unfinished failover recorded on the Lease by a previous leader (or before a restart).
fn pending_from_lease(lease: Option<&Lease>, confirmed: bool) -> Option<PendingFailover> {
    let lease = lease.filter(|_| !confirmed)?;
    let a = lease.metadata.annotations.as_ref()?;
    Some(PendingFailover {
        from: Some(a.get(FAILOVER_FROM_ANNOTATION)?.clone()),
        to: lease.spec.as_ref()?.holder_identity.clone()?,
        reason: a
            .get(REASON_ANNOTATION)
            .cloned()
            .unwrap_or_else(|| "HolderDead".into()),
        detected_at: a.get(DETECTED_AT_ANNOTATION)?.parse().ok()?,
    })
}

/// A fresh DescribeAddresses says the address is on `eni` (false when EC2 does not answer).
async fn already_on(ctx: &Context, allocation_id: &str, eni: &str) -> bool {
    match ctx
        .ec2
        .describe_addresses(&[allocation_id.to_string()], &[])
        .await
    {
        Ok(snap) => snap
            .by_allocation
            .get(allocation_id)
            .is_some_and(|a| a.network_interface_id.as_deref() == Some(eni)),
        Err(_) => false,
    }
}

/// Confirms a mutation with DescribeAddresses and backoff (EC2 is eventually consistent).
async fn confirm(
    ctx: &Context,
    allocation_id: &str,
    eni: &str,
    timeout: Duration,
) -> Result<AddressInfo, Ec2Error> {
    let mut wait = Duration::from_millis(50);
    let deadline = Instant::now() + timeout;
    loop {
        let snap = ctx
            .ec2
            .describe_addresses(&[allocation_id.to_string()], &[])
            .await?;
        if let Some(a) = snap.by_allocation.get(allocation_id)
            && a.network_interface_id.as_deref() == Some(eni)
        {
            return Ok(a.clone());
        }
        if Instant::now() > deadline {
            return Err(Ec2Error::Unknown {
                operation: "DescribeAddresses",
                reason: format!("association not visible after {timeout:?}"),
                throttled: false,
            });
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

fn lease_duration(r: &Resolved) -> Duration {
    (r.monitor_interval * 3).max(Duration::from_secs(30))
}

#[allow(clippy::too_many_arguments)] // one call site per purpose; a struct would only rename them
async fn write_lease(
    ctx: &Context,
    f: &FloatingElasticIP,
    existing: Option<&Lease>,
    holder: Option<&str>,
    transitions: i32,
    confirmed: bool,
    reason: &str,
    failover: Option<(&str, Timestamp)>,
    r: &Resolved,
) -> Result<(), Error> {
    if !ctx.leadership.can_mutate() {
        return Err(Error::Other(
            "leadership lost before the decision was written".into(),
        ));
    }
    let ns = f.namespace().unwrap_or_default();
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), &ns);
    let now = MicroTime(Timestamp::now());
    let owner = f
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Other("object has no uid".into()))?;
    let prev_holder = existing
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.holder_identity.clone());
    let acquire = if prev_holder.as_deref() == holder {
        existing
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.acquire_time.clone())
            .or_else(|| Some(now.clone()))
    } else {
        Some(now.clone())
    };
    let mut lease: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": f.lease_name(),
            "namespace": ns,
            "labels": {LEASE_LABEL: LEASE_LABEL_VALUE, "feip.io/name": f.name_any()},
            "annotations": {CONFIRMED_ANNOTATION: confirmed.to_string(), REASON_ANNOTATION: reason},
        },
        "spec": {
            "leaseDurationSeconds": lease_duration(r).as_secs(),
            "leaseTransitions": transitions,
        }
    }))
    .map_err(|e| Error::Other(e.to_string()))?;
    lease.metadata.owner_references = Some(vec![owner]);
    // An unfinished failover is recorded on the Lease too, so a new leader that completes it
    // still reports it (status.lastFailover, failover count, duration metric).
    if let (Some((from, detected_at)), Some(annotations)) =
        (failover, lease.metadata.annotations.as_mut())
    {
        annotations.insert(FAILOVER_FROM_ANNOTATION.into(), from.to_string());
        annotations.insert(DETECTED_AT_ANNOTATION.into(), detected_at.to_string());
    }
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = holder.map(str::to_string);
        spec.acquire_time = holder.and(acquire);
        spec.renew_time = holder.map(|_| now.clone());
    }
    match existing {
        Some(old) => {
            lease.metadata.resource_version = old.metadata.resource_version.clone();
            api.replace(&f.lease_name(), &PostParams::default(), &lease)
                .await?;
        }
        None => match api.create(&PostParams::default(), &lease).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Our cache is behind: read and retry through the normal requeue.
                return Err(Error::Other("holder lease exists; cache behind".into()));
            }
            Err(e) => return Err(e.into()),
        },
    }
    Ok(())
}

struct StatusInputs<'a> {
    f: &'a FloatingElasticIP,
    r: &'a Resolved,
    decision: &'a Decision,
    gathered: &'a [Gathered],
    holder: Option<&'a str>,
    holder_on_target: bool,
    holder_healthy: bool,
    current: Option<&'a AddressInfo>,
    address_missing: bool,
    failures: &'a BTreeMap<String, FailureRecord>,
    failover_count: i64,
    last_failover: Option<FailoverRecord>,
    transitions: i32,
    cleanup_done: Option<String>,
    action_error: Option<&'a Ec2Error>,
    blocked: Option<&'a str>,
    now: Timestamp,
}

fn build_status(i: StatusInputs<'_>) -> FloatingElasticIPStatus {
    let old = i.f.status.clone().unwrap_or_default();
    let generation = i.f.metadata.generation;
    let policy = &i.r.policy;
    let holder_view = i
        .holder
        .and_then(|h| i.gathered.iter().find(|g| g.view.node == h));
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
                .gathered
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
        let g = i.gathered.iter().find(|g| g.view.node == h);
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

/// Writes the status only when it changed (saves API writes at scale).
async fn patch_status(
    ctx: &Context,
    f: &FloatingElasticIP,
    status: FloatingElasticIPStatus,
) -> Result<(), Error> {
    if f.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<FloatingElasticIP> =
        Api::namespaced(ctx.client.clone(), &f.namespace().unwrap_or_default());
    // Replace .status as a whole: a merge patch would keep fields and list entries that the
    // new status no longer has (an expired ban, a cleared holder).
    let patch: Vec<serde_json::Value> =
        vec![serde_json::json!({"op": "add", "path": "/status", "value": status})];
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(patch))
        .map_err(|e| Error::Other(e.to_string()))?;
    api.patch_status(
        &f.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    f: &FloatingElasticIP,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &f.object_ref(&())).await {
        tracing::debug!(error = %e, "event not published");
    }
}

/// Deletion: release the association (unless retained or observe-only), then drop the Lease.
async fn cleanup(f: Arc<FloatingElasticIP>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let k = key(&f);
    let ns = f.namespace().unwrap_or_default();
    // An object that lost an address conflict never managed the address: releasing it would
    // take the owner's address away.
    let retain = f.spec.release_policy == Some(ReleasePolicy::Retain)
        || f.spec.management == Some(Management::ObserveOnly)
        || conflicting_owner(&ctx, &f, None).is_some();
    if !retain {
        let (allocs, ips): (Vec<String>, Vec<String>) = (
            f.spec.allocation_id.iter().cloned().collect(),
            f.spec.public_ip.iter().cloned().collect(),
        );
        let current = ctx
            .ec2
            .describe_addresses(&allocs, &ips)
            .await
            .map_err(|e| {
                blocked(
                    &ctx,
                    &f,
                    format!("cannot read the address before release: {e}"),
                )
            })?;
        let info = current.by_allocation.values().next().cloned();
        // Only release an association to one of our candidates (ownership guard).
        let ours = info
            .as_ref()
            .and_then(|a| a.network_interface_id.as_ref())
            .is_some_and(|eni| {
                let v = lock(&ctx.view);
                listed_candidates(&f, &ctx.nodes).iter().any(|l| {
                    ctx.nodes
                        .get(&ObjectRef::new(&l.node))
                        .and_then(|n| n.spec.clone())
                        .and_then(|s| s.provider_id)
                        .and_then(|p| instance_id_from_provider_id(&p))
                        .and_then(|id| v.instances.get(&id).cloned())
                        .is_some_and(|i| {
                            i.interfaces.iter().any(|x| &x.network_interface_id == eni)
                        })
                })
            });
        tracing::debug!(feip = %k, ?info, ours, "releasing on deletion");
        if let (Some(info), true) = (&info, ours)
            && let Some(assoc) = &info.association_id
        {
            if !ctx.leadership.can_mutate() {
                return Err(Error::Other("leadership lost during release".into()));
            }
            ctx.ec2
                .disassociate(assoc)
                .await
                .map_err(|e| blocked(&ctx, &f, format!("DisassociateAddress failed: {e}")))?;
            let mut released = info.clone();
            released.association_id = None;
            released.network_interface_id = None;
            released.private_ip = None;
            released.instance_id = None;
            lock(&ctx.view).record(released);
            publish(
                &ctx,
                &f,
                EventType::Normal,
                "Released",
                format!("{} disassociated on deletion", info.public_ip),
            )
            .await;
        }
    }
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &ns);
    match leases
        .delete(&f.lease_name(), &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    lock(&ctx.runtime).remove(&k);
    Ok(Requeue::await_change())
}

/// Records a blocked release: Warning event + Blocked condition; the finalizer stays.
fn blocked(ctx: &Arc<Context>, f: &Arc<FloatingElasticIP>, msg: String) -> Error {
    let (ctx, f, m) = (ctx.clone(), f.clone(), msg.clone());
    tokio::spawn(async move {
        publish(&ctx, &f, EventType::Warning, "Blocked", m.clone()).await;
        let mut status = f.status.clone().unwrap_or_default();
        status.phase = Some(Phase::Blocked);
        status.conditions.retain(|c| c.type_ != "Blocked");
        status.conditions.push(Condition {
            type_: "Blocked".into(),
            status: "True".into(),
            reason: "DisassociateFailed".into(),
            message: m,
            observed_generation: f.metadata.generation,
            last_transition_time: Time(Timestamp::now()),
        });
        if let Err(e) = patch_status(&ctx, &f, status).await {
            tracing::debug!(error = %e, "blocked status not written");
        }
    });
    Error::Blocked(msg)
}

/// Lists every FEIP (for the CLI and tests).
pub async fn list_all(client: &Client) -> Result<Vec<FloatingElasticIP>, kube::Error> {
    Ok(Api::<FloatingElasticIP>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items)
}

#[cfg(test)]
mod reliability_tests {
    use super::*;

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
        address_owner(me, all, |f| address_identity(f, &ips))
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
        let c = |node: &str, vpc: Option<&str>, eni: Option<&str>| {
            (
                node.to_string(),
                vpc.map(str::to_string),
                eni.map(str::to_string),
            )
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
    fn heartbeat_age_is_capped_by_the_observed_span() {
        let s = Duration::from_secs;
        assert_eq!(observed_age(Some(s(50)), s(3)), Some(s(3)));
        assert_eq!(observed_age(Some(s(2)), s(300)), Some(s(2)));
        assert_eq!(observed_age(None, s(3)), None);
    }
}
