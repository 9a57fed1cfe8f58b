use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use crate::aws::{AddressInfo, Ec2Error};
use crate::crd::{FailoverRecord, FloatingElasticIP};
use crate::decide::{
    self, Action, AddressObservation, Eligibility, FailureKind, Input, NodeHealth, Target,
};

use super::Error;
use super::context::{Context, PendingFailover, key, lock};
use super::holder_lease::{
    self, CONFIRMED_ANNOTATION, FailoverStart, LeaseRecord, REASON_ANNOTATION, already_recorded,
    lease_duration, pending_from_lease,
};
use super::observe::{
    Gathered, conflicting_owner, failures_from_status, gather_candidate, listed_candidates,
    observe_address, resolve, vpc_mismatches,
};
use super::status::{StatusInputs, build_status, conflict_status, patch_status, publish};

/// A reconcile that found mutations not allowed. A follower waits: gaining the leadership
/// triggers every address. A leader whose renewal is late (inside the safety margin, not yet
/// past the renew deadline) may get its mutation window back without any leadership change
/// and thus without a trigger, so it looks again shortly instead of dropping the reconcile.
pub(super) fn until_mutation_allowed(ctx: &Context) -> Requeue {
    if ctx.leadership.is_leader() {
        Requeue::requeue(Duration::from_millis(500))
    } else {
        Requeue::await_change()
    }
}

/// Jittered exponential backoff: 500ms, 1s, 2s, ... up to 30s.
pub(super) fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(500) * 2u32.saturating_pow(attempt.saturating_sub(1).min(6));
    let base = base.min(Duration::from_secs(30));
    let jitter = rand::random_range(0.8..1.2);
    base.mul_f64(jitter)
}

pub(super) async fn apply(f: Arc<FloatingElasticIP>, ctx: Arc<Context>) -> Result<Requeue, Error> {
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
            let record = LeaseRecord {
                holder: change.to.as_deref(),
                transitions,
                confirmed: false,
                reason: change.reason.as_str(),
                failover: change
                    .from
                    .as_deref()
                    .filter(|_| change.to.is_some())
                    .map(|from| FailoverStart { from, detected_at }),
                duration: lease_duration(&r),
            };
            holder_lease::write(&ctx.client, &ctx.leadership, &f, lease.as_deref(), &record)
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
            let record = LeaseRecord {
                holder: holder.as_deref(),
                transitions: 0,
                confirmed: false,
                reason: "Created",
                failover: None,
                duration: lease_duration(&r),
            };
            holder_lease::write(&ctx.client, &ctx.leadership, &f, None, &record).await?;
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
                            &ctx.leadership,
                            &allocation,
                            &target.network_interface_id,
                            &target.private_ip,
                        )
                        .await
                };
                match result {
                    // The window closed during the budget wait or the look: nothing was sent.
                    Err(Ec2Error::NotSent { .. }) => return Ok(until_mutation_allowed(&ctx)),
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
            match ctx.ec2.disassociate(&ctx.leadership, assoc).await {
                Err(Ec2Error::NotSent { .. }) => return Ok(until_mutation_allowed(&ctx)),
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
            let record = LeaseRecord {
                holder: lease_holder.as_deref(),
                transitions,
                confirmed: true,
                reason: &reason,
                failover: None,
                duration: lease_duration(&r),
            };
            if let Err(e) =
                holder_lease::write(&ctx.client, &ctx.leadership, &f, fresh.as_deref(), &record)
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

pub(super) fn static_reason(reason: &str) -> &'static str {
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

/// A fresh DescribeAddresses says the address is on `eni` (false when EC2 does not answer).
pub(super) async fn already_on(ctx: &Context, allocation_id: &str, eni: &str) -> bool {
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
pub(super) async fn confirm(
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
