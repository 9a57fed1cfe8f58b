//! Wake-ups: what makes an address be reconciled besides its own requeue timer. Node facts,
//! heartbeat verdicts and probe verdicts that change reconcile just the addresses listing the
//! affected node (`Context::targeted`, fed to `Controller::reconcile_on`); a leadership change
//! or an EC2 error reconciles everything (`reconcile_all_on`).
//!
//! `reconcile_on` needs kube's `unstable-runtime` feature: an API kube may change between
//! releases (check it on every kube upgrade). `.watches()` mappers are not used instead because
//! a heartbeat verdict is not an object change, the targeting is per node across up to
//! thousands of addresses, and `forward_changes` coalesces bursts of changes into one pass.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;

use super::context::{Context, lock};
use super::spec::DEFAULT_HEARTBEAT_TIMEOUT;
use crate::health::heartbeat;
use crate::kube_ext::NodeFacts;

/// The change fingerprint of a Node: the hash of the facts feip's eligibility and health
/// verdicts read ([`NodeFacts`]), so a change of any of them wakes the addresses that list
/// the node, and nothing else does.
pub(super) fn node_fingerprint(node: &Node) -> u64 {
    NodeFacts::of(node).fingerprint()
}

/// A heartbeat going stale is the absence of an event, so nothing would wake the controller:
/// every 250 ms, check whether any node crossed any heartbeat timeout in use and trigger a
/// re-evaluation when one did. Also when a node renews again after a silence longer than half
/// a timeout (the bound under which a candidate shows that heartbeats are being recorded,
/// see [`heartbeat::fresh_bound`]): that turns its fellow candidates' silence from unknown
/// into death. Going *over* half a timeout wakes nothing: it only turns a death into unknown
/// (status), and waking every address of a node each time a renewal is late under load
/// would be churn.
pub(super) async fn heartbeat_staleness_ticker(ctx: Arc<Context>, changed: Arc<Notify>) {
    let mut last: HashMap<String, usize> = HashMap::new();
    let mut last_half: HashMap<String, usize> = HashMap::new();
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
            let timeout = f
                .spec
                .health
                .as_ref()
                .and_then(|h| h.heartbeat_timeout)
                .map_or(DEFAULT_HEARTBEAT_TIMEOUT, Duration::from);
            match &f.spec.candidates {
                Some(c) => {
                    for c in c {
                        let v = per_node.entry(c.node.clone()).or_default();
                        if !v.contains(&timeout) {
                            v.push(timeout);
                        }
                    }
                }
                None if !everywhere.contains(&timeout) => everywhere.push(timeout),
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
            let half = relevant()
                .filter(|t| age > heartbeat::fresh_bound(**t))
                .count();
            let renewed_after_silence = last_half
                .insert(name.clone(), half)
                .is_some_and(|before| half < before);
            if last.insert(name.clone(), crossed) != Some(crossed) || renewed_after_silence {
                lock(&ctx.dirty_nodes).insert(name);
                any = true;
            }
        }
        if any {
            changed.notify_one();
        }
    }
}

/// How often the probes some address references are marked wanted: well within the 60 s
/// idle age after which the monitor drops a probe.
const PROBE_KEEP_PERIOD: Duration = Duration::from_secs(10);

/// Keeps every referenced probe running (finding M7): an address reconciles only every
/// `monitor.interval` (up to 1 h), so without this its probe would be dropped 60 s after a
/// reconcile and a failure only its probe sees would wait for the address's next timer. A
/// probe no address references any more is still dropped after the idle age.
pub(super) async fn keep_referenced_probes(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(PROBE_KEEP_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if ctx.leadership.is_leader() {
            ctx.probes.keep(&ctx.referenced_probes());
        }
    }
}

/// Turns health changes into reconciles of just the addresses that list an affected node (a
/// changed probe, heartbeat verdict or Node); a change that names no node (the heartbeat
/// cache synced) reconciles everything (coalesced).
pub(super) async fn forward_changes(
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

pub(super) fn internal_ip(node: &Node) -> Option<IpAddr> {
    NodeFacts::of(node).internal_ip()
}

/// Reconciles the addresses whose EC2 state a monitor pass found changed (by allocation id
/// or public IP): an unchanged snapshot needs no reconcile beyond each address's own timer.
pub(super) fn reconcile_addresses(ctx: &Context, keys: &HashSet<String>) {
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

pub(super) async fn watch_leadership(
    ctx: Arc<Context>,
    mut tx: futures::channel::mpsc::Sender<()>,
) {
    let mut rx = ctx.leadership.subscribe();
    let mut led_before = false;
    loop {
        let leader = *rx.borrow_and_update();
        ctx.metrics.set_leader(leader);
        ctx.fresh_since_leadership
            .store(false, std::sync::atomic::Ordering::SeqCst);
        // The slots this replica recorded may be older than what another leader wrote since:
        // the Leases are the record again.
        super::context::lock(&ctx.slots).clear();
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
