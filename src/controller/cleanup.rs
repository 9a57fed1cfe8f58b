//! Finalizer cleanup (client): release the association on deletion (unless retained,
//! observe-only, or not ours), then delete the holder Lease.
//!
//! Whether the association is ours is judged from the same data apply's ownership guard
//! uses (`observe::observe`: the candidates' resolved targets, the last known targets, the
//! status holder's target) plus the slot the holder Lease records, and only from complete
//! data: while a candidate's instance has not been described (a new leader, DescribeInstances
//! failing or throttled) the address's interface may be that candidate's target, so nothing
//! is decided. The finalizer stays, the status says what is missing (`Blocked=True,
//! ReleasePending`), and the release is retried with backoff. See [`judge`] for the rules
//! and what happens after [`RELEASE_FACTS_WAIT`].

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use jiff::Timestamp;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;

use crate::aws::{AddressInfo, Ec2Error};
use crate::crd::{ConditionReason, ConditionType, FloatingElasticIP, Management, ReleasePolicy};

use super::Error;
use super::context::{CONSISTENCY_WINDOW, Context, key, lock};
use super::holder_lease;
use super::observe::{self, AddressLookup, CandidateFacts, conflicting_owner};
use super::report::{patch_status, publish};
use super::slots::SlotRecord;
use super::spec::resolve;
use super::status::blocked_release_status;

/// How long after the deletion a release waits for missing instance facts before it falls
/// back to the holder Lease's recorded slot (see [`judge`]).
pub(super) const RELEASE_FACTS_WAIT: Duration = Duration::from_secs(300);

/// Deletion: release the association (unless retained or observe-only), then drop the Lease.
pub(super) async fn cleanup(
    f: Arc<FloatingElasticIP>,
    ctx: Arc<Context>,
) -> Result<Requeue, Error> {
    let k = key(&f);
    // A claim no grant permits, or one that lost an address conflict, never managed the
    // address: releasing it would take the owner's address away (or a victim's), and its
    // holder Lease (if a revoked grant left one) is left to the garbage collector.
    let permitted = ctx.verdict(&f).is_permitted();
    let retain = f.spec.release_policy == Some(ReleasePolicy::Retain)
        || f.spec.management == Some(Management::ObserveOnly)
        || !permitted
        || conflicting_owner(&f, &ctx.snapshot(&f), None, |o| {
            ctx.verdict(o).is_permitted()
        })
        .is_some();
    if !retain {
        release(&ctx, &f).await?;
    }
    if permitted {
        holder_lease::delete(&ctx.client, &ctx.leadership, &f).await?;
    }
    lock(&ctx.memory).remove(&k);
    lock(&ctx.slots).forget(&k);
    Ok(Requeue::await_change())
}

/// Releases the association if it is ours. `Err`: the finalizer stays (facts missing, the
/// release failed, or leadership lost) and the reconcile is retried with backoff.
async fn release(ctx: &Arc<Context>, f: &Arc<FloatingElasticIP>) -> Result<(), Error> {
    if !synced(&ctx.nodes) || !synced(&ctx.leases) {
        let msg = "the Node and holder-Lease caches are not synced yet".to_string();
        return Err(report_pending(ctx, f, msg).await);
    }
    // Missing instance facts make the release wait whatever a fresh read of the address
    // says, unless it moved onto a resolved target: judged on the monitor's last read first,
    // so that waiting out a DescribeInstances outage costs no DescribeAddresses per retry.
    if let AddressLookup::Found(last) = ctx.snapshot(f).address
        && let (Release::Pending(msg), wake_monitor) = ownership(ctx, f, &last)
    {
        if wake_monitor {
            ctx.monitor_wake.notify_one();
        }
        return Err(report_pending(ctx, f, msg).await);
    }
    let (allocs, ips): (Vec<String>, Vec<String>) = (
        f.spec.allocation_id.iter().cloned().collect(),
        f.spec.public_ip.iter().cloned().collect(),
    );
    let info = match ctx.ec2.describe_addresses(&allocs, &ips).await {
        Ok(current) => current.by_allocation.values().next().cloned(),
        Err(e) => {
            let msg = format!("the address could not be read before its release: {e}");
            return Err(report_pending(ctx, f, msg).await);
        }
    };
    // EC2 has no such address: nothing to release.
    let Some(info) = info else { return Ok(()) };
    if released_here(ctx, &info) {
        return Ok(());
    }
    let (verdict, wake_monitor) = ownership(ctx, f, &info);
    tracing::debug!(feip = %key(f), ?info, ?verdict, "release on deletion");
    match verdict {
        Release::Nothing(None) => Ok(()),
        Release::Nothing(Some(note)) => {
            publish(ctx, f, EventType::Normal, "NotReleased", note).await;
            Ok(())
        }
        Release::Pending(msg) => {
            if wake_monitor {
                ctx.monitor_wake.notify_one();
            }
            Err(report_pending(ctx, f, msg).await)
        }
        Release::Disassociate {
            association_id,
            why,
        } => disassociate(ctx, f, &info, &association_id, &why).await,
    }
}

/// DisassociateAddress under a permit; a failure sets `Blocked=True, DisassociateFailed`.
async fn disassociate(
    ctx: &Arc<Context>,
    f: &Arc<FloatingElasticIP>,
    info: &AddressInfo,
    association_id: &str,
    why: &str,
) -> Result<(), Error> {
    if !ctx.leadership.can_mutate() {
        return Err(Error::LeadershipLost("during release"));
    }
    match ctx.ec2.disassociate(&ctx.leadership, association_id).await {
        Ok(()) => {}
        Err(Ec2Error::NotSent { .. }) => return Err(Error::LeadershipLost("during release")),
        Err(e) => {
            let msg = format!("DisassociateAddress failed: {e}");
            return Err(report_blocked(ctx, f, ConditionReason::DisassociateFailed, msg).await);
        }
    }
    let mut released = info.clone();
    released.association_id = None;
    released.network_interface_id = None;
    released.private_ip = None;
    released.instance_id = None;
    lock(&ctx.view).record_unseen(released, info.association_id.clone());
    let note = format!("{} disassociated on deletion ({why})", info.public_ip);
    publish(ctx, f, EventType::Normal, "Released", note).await;
    Ok(())
}

/// `info` still shows the association this process released moments ago (a pass after the
/// release, before the finalizer's removal reached the cache): DescribeAddresses lags behind
/// the change (EC2's eventual consistency, as the monitor allows for), nothing is left to do.
fn released_here(ctx: &Context, info: &AddressInfo) -> bool {
    let view = lock(&ctx.view);
    let ours_unassociated = view
        .addresses
        .by_allocation
        .get(&info.allocation_id)
        .is_some_and(|a| a.association_id.is_none());
    ours_unassociated
        && info.association_id.is_some()
        && view.written.get(&info.allocation_id).is_some_and(|w| {
            w.at.elapsed() < CONSISTENCY_WINDOW
                && w.unseen_replacing.as_ref() == Some(&info.association_id)
        })
}

/// The release verdict from apply's ownership data, read from the caches at one instant.
/// Also: whether the monitor should read EC2 now (an instance never looked up).
fn ownership(ctx: &Context, f: &FloatingElasticIP, address: &AddressInfo) -> (Release, bool) {
    let mut spec = resolve(f);
    spec.probe = None; // judging ownership needs no probe verdict: start none
    let snapshot = ctx.snapshot(f);
    let mut readings = ctx.candidate_readings(f, &spec);
    let now = Timestamp::now();
    let observed = {
        let claims = lock(&ctx.slots);
        readings.slots = ctx.slot_inputs(f, &snapshot, &readings, spec.device_index, &claims);
        let found = observe::observe_address(&AddressLookup::Found(address.clone()));
        let lease = snapshot.lease.as_deref();
        ctx.remember(&key(f), |memory| {
            observe::observe(f, &spec, found, &readings, lease, memory, now)
        })
    };
    let waited = f
        .metadata
        .deletion_timestamp
        .as_ref()
        .and_then(|t| Duration::try_from(now.duration_since(t.0)).ok())
        .unwrap_or_default();
    let facts = Facts {
        candidates: &observed.candidates,
        lease_slot: observed.lease_slot.as_ref(),
        instances_error: readings.instances_error.as_deref(),
        waited,
    };
    let wake = readings.instances_error.is_none() && observed.needs_instance_read;
    (judge(address, &facts), wake)
}

/// What deleting the object does to the association.
#[derive(Debug, PartialEq, Eq)]
enum Release {
    /// Nothing of ours to release: unassociated, or on an interface that is not ours (the
    /// ownership guard, as apply judges it). The note, if any, goes to an event.
    Nothing(Option<String>),
    /// feip's own association; `why` says how that is known.
    Disassociate { association_id: String, why: String },
    /// Cannot tell yet: what is missing.
    Pending(String),
}

/// What [`judge`] decides from.
struct Facts<'a> {
    /// The candidates as apply observes them (targets with the last known and the status
    /// holder's targets filled in).
    candidates: &'a [CandidateFacts],
    /// The slot the holder Lease records (holder, interface, private IP).
    lease_slot: Option<&'a SlotRecord>,
    /// The last DescribeInstances error.
    instances_error: Option<&'a str>,
    /// Since the deletion.
    waited: Duration,
}

/// The release decision (no client). The association is ours, in order:
/// 1. when its interface is the target of a candidate, exactly as apply's ownership guard
///    judges it (an address on a candidate's other interface is foreign and stays);
/// 2. when it is on the slot (interface and private IP) the holder Lease records and the
///    holder can no longer be looked up (Node object deleted, providerID gone, instance gone,
///    or no longer a candidate): feip put it there;
/// 3. after [`RELEASE_FACTS_WAIT`] with candidates still not described: when it is on the
///    Lease's recorded slot (as 2, whatever the holder's state).
///
/// Otherwise, while some candidate's instance has not been described (its target unknown),
/// the release is pending: the finalizer stays and the message names those instances; after
/// the wait it keeps waiting and says so. With every candidate resolved and no match the
/// association is not ours and is left where it is.
fn judge(address: &AddressInfo, facts: &Facts<'_>) -> Release {
    let (Some(association_id), Some(eni)) =
        (&address.association_id, &address.network_interface_id)
    else {
        return Release::Nothing(None);
    };
    let ours = |why: String| Release::Disassociate {
        association_id: association_id.clone(),
        why,
    };
    if let Some(c) = facts.candidates.iter().find(|c| {
        c.view
            .target
            .as_ref()
            .is_some_and(|t| t.network_interface_id == *eni)
    }) {
        return ours(format!("on {}'s interface {eni}", c.view.node));
    }
    let unknown: Vec<&CandidateFacts> = facts
        .candidates
        .iter()
        .filter(|c| c.needs_instance_read && c.view.target.is_none())
        .collect();
    let recorded = facts.lease_slot.filter(|s| {
        s.network_interface_id.as_deref() == Some(eni.as_str())
            && address.private_ip.as_deref() == Some(s.private_ip.as_str())
    });
    if let Some(slot) = recorded {
        let holder = facts.candidates.iter().find(|c| c.view.node == slot.node);
        let gone = holder.is_none_or(|c| c.view.target.is_none() && !c.needs_instance_read);
        let on_slot = format!(
            "on {eni} {}, the slot its holder Lease records for {}",
            slot.private_ip, slot.node
        );
        if gone {
            return ours(format!("{on_slot}, which can no longer be looked up"));
        }
        if !unknown.is_empty() && facts.waited >= RELEASE_FACTS_WAIT {
            return ours(format!(
                "{on_slot}; candidates still not described after {}s",
                facts.waited.as_secs()
            ));
        }
    }
    if unknown.is_empty() {
        return Release::Nothing(Some(format!(
            "{} left on {eni}: not the target interface of any candidate (ownership guard)",
            address.public_ip
        )));
    }
    let missing: Vec<String> = unknown
        .iter()
        .map(|c| {
            let id = c.instance_id.as_deref().unwrap_or("?");
            format!("{id} (node {})", c.view.node)
        })
        .collect();
    let cause = facts.instances_error.map_or_else(
        || "no DescribeInstances answer yet".to_string(),
        |e| format!("DescribeInstances failing: {e}"),
    );
    let mut msg = format!(
        "release waits: whether {eni} is a candidate's interface needs instance {} described \
         ({cause})",
        missing.join(", ")
    );
    if facts.waited >= RELEASE_FACTS_WAIT {
        // No elapsed time in the text: an unchanged message is not written again.
        msg.push_str(&format!(
            "; over {}s since the deletion, and the holder Lease records no slot on {eni}: \
             still waiting (releasePolicy: Retain ends the deletion without a release)",
            RELEASE_FACTS_WAIT.as_secs()
        ));
    }
    Release::Pending(msg)
}

/// The reflector store has its first full list.
fn synced<K>(store: &Store<K>) -> bool
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

/// A release that waits for missing facts: `Blocked=True, ReleasePending` and a Warning
/// event (once per message); the finalizer stays.
async fn report_pending(ctx: &Context, f: &FloatingElasticIP, msg: String) -> Error {
    report_blocked(ctx, f, ConditionReason::ReleasePending, msg).await
}

/// Records a blocked release: Warning event + Blocked condition with `reason`, unless the
/// status says so already; the finalizer stays.
async fn report_blocked(
    ctx: &Context,
    f: &FloatingElasticIP,
    reason: ConditionReason,
    msg: String,
) -> Error {
    let event = match reason {
        ConditionReason::ReleasePending => "ReleasePending",
        _ => "Blocked",
    };
    let mut status = blocked_release_status(f, msg.clone(), Timestamp::now());
    let said = |c: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition| {
        c.type_ == ConditionType::Blocked.as_str() && c.status == "True"
    };
    let new = status.conditions.iter_mut().find(|c| said(c));
    if let Some(c) = new {
        c.reason = reason.as_str().to_string();
        let already = f.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|o| said(o) && o.reason == c.reason && o.message == c.message)
        });
        if already && reason == ConditionReason::ReleasePending {
            return Error::Blocked(msg);
        }
    }
    publish(ctx, f, EventType::Warning, event, msg.clone()).await;
    if let Err(e) = patch_status(ctx, f, status).await {
        tracing::debug!(error = %e, "blocked status not written");
    }
    Error::Blocked(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{CandidateView, Eligibility, NodeHealth, Target};

    fn target(instance: &str, eni: &str, ip: &str) -> Target {
        Target {
            instance_id: instance.into(),
            network_interface_id: eni.into(),
            private_ip: ip.into(),
        }
    }

    /// A candidate: resolved to `target`, or unresolved (`unknown`: its instance not
    /// described yet; otherwise it can no longer be looked up).
    fn candidate(node: &str, target: Option<Target>, unknown: bool) -> CandidateFacts {
        CandidateFacts {
            view: CandidateView {
                node: node.into(),
                priority: 0,
                health: NodeHealth::Healthy,
                eligibility: if target.is_some() || unknown {
                    Eligibility::Eligible
                } else {
                    Eligibility::Unresolvable {
                        reason: "node not found".into(),
                    }
                },
                healthy_since: None,
                target,
            },
            instance_id: unknown.then(|| format!("i-{node}")),
            vpc_id: None,
            instance_known: false,
            dead_since: None,
            probe_pending: false,
            needs_instance_read: unknown,
        }
    }

    fn on(eni: &str, ip: &str) -> AddressInfo {
        AddressInfo {
            allocation_id: "eipalloc-1".into(),
            public_ip: "203.0.113.1".into(),
            association_id: Some("eipassoc-1".into()),
            network_interface_id: Some(eni.into()),
            private_ip: Some(ip.into()),
            instance_id: None,
            tags: Default::default(),
        }
    }

    fn slot(node: &str, eni: &str, ip: &str) -> SlotRecord {
        SlotRecord {
            node: node.into(),
            network_interface_id: Some(eni.into()),
            private_ip: ip.into(),
        }
    }

    fn verdict(
        address: &AddressInfo,
        candidates: &[CandidateFacts],
        lease_slot: Option<&SlotRecord>,
        waited: Duration,
    ) -> Release {
        judge(
            address,
            &Facts {
                candidates,
                lease_slot,
                instances_error: Some("throttled"),
                waited,
            },
        )
    }

    /// What a verdict comes to.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Want {
        Released,
        Pending,
        Kept,
    }

    #[test]
    fn release_follows_the_ownership_guard_and_waits_for_missing_instances() {
        use Want::{Kept, Pending, Released};
        let t0 = target("i-0", "eni-0", "10.0.0.20");
        let t1 = target("i-1", "eni-1", "10.0.1.20");
        let lease = slot("n0", "eni-0", "10.0.0.20");
        let short = Duration::from_secs(5);
        let long = RELEASE_FACTS_WAIT;
        let resolved = [
            candidate("n0", Some(t0.clone()), false),
            candidate("n1", Some(t1.clone()), false),
        ];
        let n1_unknown = [
            candidate("n0", Some(t0.clone()), false),
            candidate("n1", None, true),
        ];
        let n0_gone = [
            candidate("n0", None, false),
            candidate("n1", Some(t1.clone()), false),
        ];
        let all_unknown = [candidate("n0", None, true), candidate("n1", None, true)];
        // Where the address is: n0's and n1's targets, n0's interface on another private IP
        // than its target or recorded slot, n0's second interface, a foreign interface.
        let (on_n0, on_n1) = (("eni-0", "10.0.0.20"), ("eni-1", "10.0.1.20"));
        let (other_ip, second_if, foreign) = (
            ("eni-0", "10.0.0.21"),
            ("eni-0b", "10.0.0.30"),
            ("eni-x", "10.9.9.9"),
        );
        // (case, address, candidates, the Lease records n0's slot, waited beyond the bound,
        // outcome)
        type Row<'a> = (
            &'a str,
            (&'a str, &'a str),
            &'a [CandidateFacts],
            bool,
            bool,
            Want,
        );
        let rows: &[Row<'_>] = &[
            ("on a target", on_n1, &resolved, false, false, Released),
            (
                "on a target, n1 unknown",
                on_n0,
                &n1_unknown,
                false,
                false,
                Released,
            ),
            (
                "on a target, other IP",
                other_ip,
                &resolved,
                false,
                false,
                Released,
            ),
            (
                "a candidate's 2nd interface",
                second_if,
                &resolved,
                true,
                false,
                Kept,
            ),
            (
                "foreign, all resolved",
                foreign,
                &resolved,
                true,
                true,
                Kept,
            ),
            (
                "foreign or not: n1 unknown",
                foreign,
                &n1_unknown,
                false,
                false,
                Pending,
            ),
            (
                "still unknown after the wait",
                foreign,
                &n1_unknown,
                true,
                true,
                Pending,
            ),
            (
                "holder gone, on its slot",
                on_n0,
                &n0_gone,
                true,
                false,
                Released,
            ),
            (
                "holder gone, other IP",
                other_ip,
                &n0_gone,
                true,
                false,
                Kept,
            ),
            (
                "holder no candidate",
                on_n0,
                &resolved[1..],
                true,
                false,
                Released,
            ),
            (
                "on its slot, not described",
                on_n0,
                &all_unknown,
                true,
                false,
                Pending,
            ),
            (
                "on its slot, after the wait",
                on_n0,
                &all_unknown,
                true,
                true,
                Released,
            ),
        ];
        for (case, (eni, ip), candidates, recorded, long_wait, want) in rows {
            let waited = if *long_wait { long } else { short };
            let r = verdict(&on(eni, ip), candidates, recorded.then_some(&lease), waited);
            let got = match &r {
                Release::Disassociate { association_id, .. } if association_id == "eipassoc-1" => {
                    Released
                }
                Release::Pending(_) => Pending,
                _ => Kept,
            };
            assert_eq!(got, *want, "{case}: {r:?}");
        }
        let unassociated = AddressInfo {
            association_id: None,
            network_interface_id: None,
            private_ip: None,
            ..on("eni-0", "10.0.0.20")
        };
        assert_eq!(
            verdict(&unassociated, &all_unknown, Some(&lease), short),
            Release::Nothing(None)
        );
    }

    #[test]
    fn a_pending_release_names_the_instances_and_the_cause() {
        let candidates = [
            candidate("n0", Some(target("i-0", "eni-0", "10.0.0.20")), false),
            candidate("n1", None, true),
        ];
        let Release::Pending(msg) = verdict(
            &on("eni-x", "10.9.9.9"),
            &candidates,
            None,
            RELEASE_FACTS_WAIT,
        ) else {
            panic!("pending expected");
        };
        assert!(msg.contains("i-n1 (node n1)"), "{msg}");
        assert!(
            msg.contains("DescribeInstances failing: throttled"),
            "{msg}"
        );
        assert!(msg.contains("still waiting"), "{msg}");
        let Release::Nothing(Some(note)) = verdict(
            &on("eni-x", "10.9.9.9"),
            &candidates[..1],
            None,
            Duration::ZERO,
        ) else {
            panic!("not ours expected");
        };
        assert!(
            note.contains("eni-x") && note.contains("ownership guard"),
            "{note}"
        );
    }
}
