//! The controller: caches and watches, wake-up triggers, the EC2 monitor, and one reconcile
//! per address, one file per step (docs/development.md follows one through the files). A
//! reconcile reads the caches once (context), judges the candidates (observe), decides
//! ([`crate::decide`]), plans the effects (plan), writes the decision to the per-address Lease
//! (optimistic concurrency) before touching EC2, performs the EC2 action under a mutation
//! permit, confirms it, and reports status, conditions, events and metrics.
//!
//! EC2 is read by one monitor task with one batched DescribeAddresses (and one
//! DescribeInstances) per interval for all addresses, whatever their number; reconciles read
//! its snapshots. Mutations are confirmed with a Describe of the one address involved.

mod apply;
mod cleanup;
mod context;
mod holder_lease;
mod monitor;
mod observe;
mod plan;
mod report;
mod slots;
mod spec;
mod status;
mod triggers;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;

use crate::aws::Ec2;
use crate::crd::{FINALIZER, FloatingElasticIP};
use crate::grant::FloatingElasticIPGrant;
use crate::health::{Heartbeats, Probes};
use crate::leader::Leadership;
use crate::liveness::Liveness;
use crate::metrics::Metrics;

use apply::{apply, backoff, until_mutation_allowed};
use cleanup::cleanup;
use context::{Context, Ec2View, key, lock};
pub use context::{HeartbeatClient, Settings};
use monitor::monitor;
use triggers::{
    forward_changes, heartbeat_staleness_ticker, keep_referenced_probes, node_fingerprint,
    watch_leadership,
};

/// Field manager and event reporter name.
pub const MANAGER: &str = "feip-controller";
/// Label on every holder Lease feip manages.
pub const LEASE_LABEL: &str = "app.kubernetes.io/managed-by";
const LEASE_LABEL_VALUE: &str = "feip";

/// Errors of one reconcile; all are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
    #[error("release of the address is blocked: {0}")]
    Blocked(String),
    /// This replica's mutation window closed before a write it needed could be sent.
    #[error("leadership lost {0}")]
    LeadershipLost(&'static str),
    /// The holder Lease exists although the cache did not have it yet.
    #[error("holder lease exists; cache behind")]
    LeaseCacheBehind,
    #[error("object has no uid")]
    MissingUid,
    #[error("serialization: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    /// The `kind` label of `feip_reconcile_errors_total`. `timeout`: a Kubernetes call got no
    /// answer within its deadline (outcome unknown; see crate::kube_client).
    pub(super) fn kind(&self) -> &'static str {
        let kube_kind = |e: &kube::Error| {
            if crate::kube_client::is_timeout(e) {
                "timeout"
            } else {
                "kube"
            }
        };
        match self {
            Error::Kube(e) => kube_kind(e),
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.kind(),
                kube::runtime::finalizer::Error::AddFinalizer(e)
                | kube::runtime::finalizer::Error::RemoveFinalizer(e) => kube_kind(e),
                _ => "finalizer",
            },
            Error::Blocked(_) => "blocked",
            // One label for these, as before they had their own variants.
            Error::LeadershipLost(_)
            | Error::LeaseCacheBehind
            | Error::MissingUid
            | Error::Serialize(_) => "other",
        }
    }
}

/// Runs the controller until `shutdown` resolves. `ready` turns true once every cache synced;
/// `liveness` learns of every reconcile and of background tasks that end.
#[allow(clippy::too_many_arguments)] // the process wiring's handles, each used apart
pub async fn run(
    clients: crate::kube_client::KubeClients,
    ec2: Ec2,
    leadership: Leadership,
    metrics: Arc<Metrics>,
    liveness: Arc<Liveness>,
    settings: Settings,
    ready: tokio::sync::watch::Sender<bool>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    // Watches (and their LISTs) use their own client; everything a reconcile sends uses
    // `requests` (see crate::kube_client).
    let client = clients.watches.clone();
    let requests = clients.requests.clone();
    let feip_api: Api<FloatingElasticIP> = match settings.namespaces.as_slice() {
        [one] => Api::namespaced(client.clone(), one),
        _ => Api::all(client.clone()),
    };
    let changed = Arc::new(Notify::new());

    let (nodes, node_stream) = cache::<Node>(&client, watcher::Config::default());
    let lease_labels = format!("{LEASE_LABEL}={LEASE_LABEL_VALUE}");
    let (leases, lease_stream) =
        cache::<Lease>(&client, watcher::Config::default().labels(&lease_labels));

    let (grants, grant_stream) =
        cache::<FloatingElasticIPGrant>(&client, watcher::Config::default());
    let (namespaces, namespace_stream) = cache::<Namespace>(&client, watcher::Config::default());

    let controller = Controller::new(feip_api.clone(), watcher::Config::default());
    let feips = controller.store();
    let heartbeats = Arc::new(Heartbeats::default());
    let probes = Arc::new(Probes::new(changed.clone()));
    let (targeted, targeted_rx) = futures::channel::mpsc::unbounded();
    let ctx = Arc::new(Context {
        client: requests.clone(),
        ec2,
        leadership: leadership.clone(),
        metrics: metrics.clone(),
        recorder: Recorder::new(
            requests.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(settings.instance.clone()),
            },
        ),
        nodes,
        leases,
        feips,
        grants,
        namespaces,
        grants_synced: std::sync::atomic::AtomicBool::new(false),
        heartbeats: heartbeats.clone(),
        probes,
        view: Mutex::new(Ec2View::default()),
        memory: Mutex::new(HashMap::new()),
        slots: Mutex::new(slots::SlotClaims::default()),
        monitor_wake: Notify::new(),
        fresh_since_leadership: std::sync::atomic::AtomicBool::new(false),
        settings,
        targeted,
        dirty_nodes: Mutex::new(HashSet::new()),
        heartbeats_observed_since: Mutex::new(Instant::now()),
    });

    // Background tasks: caches, heartbeats, EC2 monitor, readiness, leadership changes. Each
    // runs for the life of the controller (readiness ends once ready); one that ends or
    // panics is reported to /healthz, since nothing would restart it.
    let (trigger_tx, trigger_rx) = futures::channel::mpsc::channel::<()>(16);
    let mut tasks = tokio::task::JoinSet::new();
    let mut names = HashMap::new();
    let mut spawn = |name: &'static str, fut: futures::future::BoxFuture<'static, ()>| {
        names.insert(tasks.spawn(fut).id(), name);
    };
    spawn(
        "node watch",
        Box::pin(watch_nodes(ctx.clone(), changed.clone(), node_stream)),
    );
    spawn(
        "heartbeat staleness ticker",
        Box::pin(heartbeat_staleness_ticker(ctx.clone(), changed.clone())),
    );
    spawn(
        "probe keeper",
        Box::pin(keep_referenced_probes(ctx.clone())),
    );
    spawn(
        "holder lease watch",
        Box::pin(watch_holder_leases(ctx.clone(), lease_stream)),
    );
    // The heartbeat watch notifies only when it (re)synced: a re-list after a gap (410 Gone,
    // apiserver restart), after which unchanged heartbeats must not look stale.
    let heartbeats_synced = Arc::new(Notify::new());
    let heartbeat_client = ctx
        .settings
        .heartbeat_client
        .as_ref()
        .map_or_else(|| client.clone(), |c| c.0.clone());
    spawn(
        "heartbeat watch",
        Box::pin(heartbeats.run(heartbeat_client, heartbeats_synced.clone())),
    );
    spawn(
        "heartbeat resync",
        Box::pin(restart_clocks_on_resync(
            ctx.clone(),
            changed.clone(),
            heartbeats_synced,
        )),
    );
    spawn(
        "EC2 monitor",
        Box::pin(monitor(ctx.clone(), trigger_tx.clone())),
    );
    spawn(
        "change forwarder",
        Box::pin(forward_changes(
            ctx.clone(),
            changed.clone(),
            trigger_tx.clone(),
        )),
    );
    spawn(
        "grant watch",
        Box::pin(watch_authority(
            ctx.clone(),
            grant_stream,
            namespace_stream,
            trigger_tx.clone(),
        )),
    );
    spawn(
        "leadership watch",
        Box::pin(watch_leadership(ctx.clone(), trigger_tx.clone())),
    );
    spawn("readiness", Box::pin(report_ready(ctx.clone(), ready)));
    let supervise = async {
        while let Some(ended) = tasks.join_next_with_id().await {
            let (id, how) = match ended {
                Ok((id, ())) => (id, "returned"),
                Err(e) if e.is_panic() => (e.id(), "panicked"),
                Err(e) => (e.id(), "was cancelled"),
            };
            let name = names.get(&id).copied().unwrap_or("unknown task");
            if name != "readiness" || how != "returned" {
                liveness.task_ended(name, how);
            }
        }
        std::future::pending::<()>().await;
    };

    let reconcile_liveness = liveness.clone();
    let controller = controller
        .with_config(kube::runtime::controller::Config::default().concurrency(16))
        .reconcile_all_on(trigger_rx)
        .reconcile_on(targeted_rx)
        .graceful_shutdown_on(shutdown)
        .run(
            move |obj, ctx| {
                let liveness = reconcile_liveness.clone();
                async move {
                    // Progress tracking for /healthz: running until this future ends or is
                    // dropped.
                    let _running = liveness.reconcile_started(key(&obj));
                    reconcile(obj, ctx).await
                }
            },
            error_policy,
            ctx,
        )
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::trace!(object = %obj, "reconciled"),
                Err(kube::runtime::controller::Error::ReconcilerFailed(e, obj)) => {
                    tracing::warn!(object = %obj, error = %e, "reconcile failed")
                }
                Err(e) => tracing::warn!(error = %e, "controller error"),
            }
        });
    tokio::select! {
        () = controller => {}
        () = supervise => {}
    }
    tasks.abort_all();
    Ok(())
}

/// Keeps the grant and namespace caches: re-judges every address when a grant changes, and
/// the addresses of one namespace when its labels do (a grant may select namespaces by
/// label). Marks the caches synced
/// once both listed, and triggers every address then.
async fn watch_authority(
    ctx: Arc<Context>,
    grants: impl futures::Stream<Item = Result<FloatingElasticIPGrant, watcher::Error>> + Send,
    namespaces: impl futures::Stream<Item = Result<Namespace, watcher::Error>> + Send,
    trigger: futures::channel::mpsc::Sender<()>,
) {
    enum Seen {
        Grant,
        Namespace(String, std::collections::BTreeMap<String, String>),
        Error(&'static str, watcher::Error),
    }
    let grants = grants.map(|r| r.map_or_else(|e| Seen::Error("grant", e), |_| Seen::Grant));
    let namespaces = namespaces.map(|r| {
        r.map_or_else(
            |e| Seen::Error("namespace", e),
            |n| Seen::Namespace(n.name_any(), n.labels().clone()),
        )
    });
    let mut labels: HashMap<String, std::collections::BTreeMap<String, String>> = HashMap::new();
    let mut both = std::pin::pin!(futures::stream::select(grants, namespaces));
    let synced = async {
        let _ = ctx.grants.wait_until_ready().await;
        let _ = ctx.namespaces.wait_until_ready().await;
    };
    tokio::pin!(synced);
    let mut is_synced = false;
    loop {
        let seen = tokio::select! {
            () = &mut synced, if !is_synced => {
                is_synced = true;
                ctx.grants_synced.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::debug!("grants and namespaces synced");
                let _ = trigger.clone().try_send(());
                continue;
            }
            seen = both.next() => seen,
        };
        match seen {
            None => return,
            // A full channel already holds a pending "reconcile all".
            Some(Seen::Grant) if is_synced => {
                let _ = trigger.clone().try_send(());
            }
            Some(Seen::Grant) => {}
            // A namespace's labels concern only its own addresses: namespaces come and go
            // all the time, and each must not reconcile every address.
            Some(Seen::Namespace(name, l)) => {
                let changed = labels.insert(name.clone(), l.clone()).as_ref() != Some(&l);
                if changed && is_synced {
                    for f in ctx.feips.state() {
                        if f.metadata.namespace.as_deref() == Some(name.as_str()) {
                            let _ = ctx.targeted.unbounded_send(ObjectRef::from_obj(&*f));
                        }
                    }
                }
            }
            Some(Seen::Error(what, e)) => {
                tracing::warn!(error = %e, "{what} watch failed; retrying");
            }
        }
    }
}

/// A cluster-wide cache of `K` and the stream that keeps it (touched objects, with backoff).
fn cache<K>(
    client: &Client,
    config: watcher::Config,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + use<K>,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector(writer, watcher(Api::<K>::all(client.clone()), config))
        .default_backoff()
        .touched_objects();
    (store, stream)
}

/// Re-evaluates at once when what makes a node eligible or healthy changes (its
/// [`NodeFacts`](crate::kube_ext::NodeFacts) fingerprint), not on every status update. A watch
/// error is a gap in heartbeat observation.
async fn watch_nodes(
    ctx: Arc<Context>,
    changed: Arc<Notify>,
    stream: impl futures::Stream<Item = Result<Node, watcher::Error>>,
) {
    let mut seen: HashMap<String, u64> = HashMap::new();
    stream
        .for_each(|r| {
            match r {
                Ok(node) => {
                    let print = node_fingerprint(&node);
                    if seen.insert(node.name_any(), print) != Some(print) {
                        lock(&ctx.dirty_nodes).insert(node.name_any());
                        changed.notify_one();
                    }
                }
                Err(e) => {
                    ctx.restart_heartbeat_clocks();
                    tracing::warn!(error = %e, "node watch error; retrying");
                }
            }
            futures::future::ready(())
        })
        .await;
}

/// Keeps the holder-Lease cache; a watch error is a gap in heartbeat observation.
async fn watch_holder_leases(
    ctx: Arc<Context>,
    stream: impl futures::Stream<Item = Result<Lease, watcher::Error>>,
) {
    stream
        .for_each(|r| {
            if let Err(e) = r {
                ctx.restart_heartbeat_clocks();
                tracing::warn!(error = %e, "holder lease watch error; retrying");
            }
            futures::future::ready(())
        })
        .await;
}

/// After the heartbeat watch re-listed, heartbeat clocks restart and everything is looked at.
async fn restart_clocks_on_resync(ctx: Arc<Context>, changed: Arc<Notify>, synced: Arc<Notify>) {
    loop {
        synced.notified().await;
        ctx.restart_heartbeat_clocks();
        changed.notify_one();
    }
}

/// Turns `ready` true once every cache synced.
async fn report_ready(ctx: Arc<Context>, ready: tokio::sync::watch::Sender<bool>) {
    let _ = ctx.nodes.wait_until_ready().await;
    tracing::debug!("node cache synced");
    let _ = ctx.leases.wait_until_ready().await;
    tracing::debug!("holder lease cache synced");
    while !ctx.grants_synced.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::debug!("grant and namespace caches synced");
    // The controller's own runner also waits on this store; a second long-lived waiter is not
    // reliably woken, so check readiness by polling instead.
    while tokio::time::timeout(Duration::ZERO, ctx.feips.wait_until_ready())
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::debug!("FloatingElasticIP cache synced");
    while !ctx.heartbeats.is_synced() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = ready.send(true);
    tracing::info!("caches synced; ready");
}

fn error_policy(obj: Arc<FloatingElasticIP>, err: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.reconcile_error(err.kind());
    let mut rt = lock(&ctx.memory);
    let r = rt.entry(key(&obj)).or_default();
    r.failed_attempts = r.failed_attempts.saturating_add(1);
    Requeue::requeue(backoff(r.failed_attempts))
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
    // No claim is judged before the grants are known (the sync triggers every address).
    if !ctx.grants_synced.load(std::sync::atomic::Ordering::SeqCst) {
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
