//! Carrying a plan out (client): the holder Lease, then the EC2 call under a permit, its
//! confirmation, the settlement writes, the status. `apply` is one reconcile, step by step.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use crate::aws::{AddressInfo, Ec2Error};
use crate::crd::{ConditionReason, ConditionType, FailoverRecord, FloatingElasticIP};
use crate::decide::{self, Decision, FailureKind, FailureRecord, Target};
use crate::grant::Verdict;

use super::Error;
use super::context::{CandidateReadings, Context, PendingFailover, Snapshot, key, lock};
use super::holder_lease::{self, REASON_ANNOTATION, pending_from_lease};
use super::observe::{self, AddressLookup, Observed, conflicting_owner};
use super::plan::{self, Ec2Call, EventNote, Next, Outcome, Plan, Settlement};
use super::report::{
    PinClear, StatusWrite, newest_feip, newest_lease, patch_status, publish, remove_pin,
    wrote_lease,
};
use super::spec::{ResolvedSpec, resolve};
use super::status::{
    StatusInputs, build_status, conflict_status, counted, is_planned_move, not_permitted_status,
};

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

/// One reconcile of a managed address: observe, decide, plan, then carry the plan out in
/// order (holder Lease, EC2, confirmation), settle, report, and say when to look again.
pub(super) async fn apply(f: Arc<FloatingElasticIP>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    // Nothing is decided from a cache older than this process's own last writes.
    let f = newest_feip(&ctx, f);
    let mut snapshot = ctx.snapshot(&f);
    snapshot.lease = newest_lease(&ctx, &key(&f), snapshot.lease.take());
    if let Some(wait) = wait_for_ec2_read(&ctx, &f, &snapshot) {
        return Ok(wait);
    }
    let (now, k, spec) = (Timestamp::now(), key(&f), resolve(&f));
    if let Some(c) = observe::cleanup_request(&f) {
        let nodes = c.node.as_deref().unwrap_or("all nodes");
        let note = format!("failure counts reset ({nodes})");
        publish(&ctx, &f, EventType::Normal, "Cleanup", note).await;
    }
    let mut address = observe::observe_address(&snapshot.address);
    address.read = snapshot.address_reads;
    if snapshot.address == AddressLookup::NotLookedUpYet {
        ctx.monitor_wake.notify_one();
    }
    // A claim no grant permits writes no holder Lease, calls no EC2 and starts no probe; an
    // older claim the grants refuse does not own the address (docs/security.md).
    if let Verdict::NotPermitted { message } = ctx.verdict(&f) {
        let status = not_permitted_status(&f, message, now);
        return report_refused(&ctx, &f, status, ConditionReason::NotPermitted, &spec).await;
    }
    let allocation = address.info.as_ref().map(|a| a.allocation_id.as_str());
    let permitted = |o: &FloatingElasticIP| ctx.verdict(o).is_permitted();
    if let Some(owner) = conflicting_owner(&f, &snapshot, allocation, permitted) {
        let status = conflict_status(&f, &owner, now);
        return report_refused(&ctx, &f, status, ConditionReason::AddressConflict, &spec).await;
    }
    let mut readings = ctx.candidate_readings(&f, &spec);
    let lease = snapshot.lease.as_deref();
    let Some(Decided {
        observed,
        decision,
        mut failures,
        plan,
    }) = decide_with_slots(&ctx, &f, &spec, &snapshot, address, &mut readings, now)
    else {
        // A probe started moments ago (this replica just started or became leader, a new
        // candidate) has no verdict yet: wait for it (its verdict triggers a reconcile)
        // instead of publishing a transient "health unknown" status and writing the status
        // twice (2,000 status writes per restart at 1,000 addresses). Unknown health never
        // moves an address.
        return Ok(Requeue::requeue(Duration::from_secs(1)));
    };
    let threshold = spec.policy.migration_threshold;
    publish_all(
        &ctx,
        &f,
        plan::failure_events(&decision, &failures, threshold),
    )
    .await;
    let pass = Pass {
        f: &f,
        key: &k,
        spec: &spec,
        observed: &observed,
        decision: &decision,
        plan: &plan,
        lease,
        read_age: snapshot.address_read_age,
        max_read_age: snapshot.max_read_age,
        now,
    };

    write_decision(&ctx, &pass).await?;
    let Some(outcome) = act(&ctx, &pass, &mut failures).await else {
        return Ok(until_mutation_allowed(&ctx));
    };
    let settled = pass.settle(&outcome);
    let pending = pass.pending_failover(&ctx);
    confirm_lease(&ctx, &pass, &settled, pending.as_ref()).await;
    let failover = complete_failover(&ctx, &pass, &settled, pending.as_ref()).await;
    clear_pin(&ctx, &f, &settled).await?;
    // `report` resets the backoff counter after a pass without an EC2 error; a pass that
    // could do nothing (`Next::Wait`) continues it.
    let attempts = ctx.remember(&k, |m| m.failed_attempts);
    report(&ctx, &pass, &outcome, &settled, &failures, failover).await?;
    let target_was_banned = match &decision.action {
        decide::Action::Associate { node, .. } => decide::is_banned(&observed.input, node),
        _ => false,
    };
    let next = plan::next(
        &spec,
        &decision,
        &plan,
        &outcome,
        settled.holder_on_target,
        target_was_banned,
    );
    Ok(Requeue::requeue(after(&ctx, &k, &spec, next, attempts)))
}

/// What one reconcile decided and planned.
struct Decided {
    observed: Observed,
    decision: Decision,
    /// The failure records with the decision's bookkeeping applied.
    failures: BTreeMap<String, FailureRecord>,
    plan: Plan,
}

/// Observes, decides, plans and claims the holder's slot under the slot lock: two addresses
/// deciding at once never pick the same private IP (so nothing in here awaits). `None`: a
/// candidate's probe has no verdict yet, wait for it.
fn decide_with_slots(
    ctx: &Context,
    f: &FloatingElasticIP,
    spec: &ResolvedSpec,
    snapshot: &Snapshot,
    address: observe::AddressObserved,
    readings: &mut CandidateReadings,
    now: Timestamp,
) -> Option<Decided> {
    let k = key(f);
    let lease = snapshot.lease.as_deref();
    let mut claims = lock(&ctx.slots);
    readings.slots = ctx.slot_inputs(f, snapshot, readings, spec.device_index, &claims);
    let observed = ctx.remember(&k, |memory| {
        observe::observe(f, spec, address, readings, lease, memory, now)
    });
    if observed.needs_instance_read || observed.needs_address_read {
        ctx.monitor_wake.notify_one();
    }
    if observed.probe_pending && observe::cleanup_request(f).is_none() {
        return None;
    }
    let mut decision = decide::decide(&observed.input);
    let epoch = ctx.leadership.epoch();
    let taken_back =
        plan::superseded(&observed, lease, epoch).filter(|_| !spec.policy.observe_only);
    if let Some((previous, before)) = &taken_back {
        tracing::warn!(feip = %k, %previous, ?epoch, "an earlier leader's unconfirmed holder change is contradicted by this leader's view; taking it back");
        decision = before.clone();
    }
    tracing::debug!(feip = %k, input = ?observed.input, ?decision, "decided");
    let mut failures = observed.input.failures.clone();
    decision.apply_to_failures(&mut failures, now);
    let mut plan = plan::plan(spec, &observed, &decision, lease, now);
    if let Some((previous, _)) = taken_back {
        plan::take_back(&mut plan, previous, epoch, now);
    }
    if !spec.policy.observe_only {
        claims.set(&k, observed.slot_of(plan.holder.as_deref()));
    }
    Some(Decided {
        observed,
        decision,
        failures,
        plan,
    })
}

/// One reconcile once it is planned: what the effects read.
struct Pass<'a> {
    f: &'a Arc<FloatingElasticIP>,
    key: &'a str,
    spec: &'a ResolvedSpec,
    observed: &'a Observed,
    decision: &'a Decision,
    plan: &'a Plan,
    /// The holder Lease as the reconcile found it.
    lease: Option<&'a Lease>,
    /// Age of the address read the decision rests on, and how old it may be to act on.
    read_age: Option<Duration>,
    max_read_age: Duration,
    now: Timestamp,
}

impl Pass<'_> {
    /// The failover not completed yet: this process's, or the one a previous leader (or this
    /// process before a restart) recorded on the Lease.
    fn pending_failover(&self, ctx: &Context) -> Option<PendingFailover> {
        ctx.remember(self.key, |m| m.pending.clone())
            .or_else(|| pending_from_lease(self.lease))
    }

    fn settle(&self, outcome: &Outcome) -> Settlement {
        let renewed_at = self
            .lease
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0);
        plan::settle(
            self.f,
            self.spec,
            self.observed,
            self.plan,
            outcome.current.as_ref(),
            renewed_at,
            self.now,
        )
    }
}

/// Until EC2 has been read for this address (by this leader) nothing would be decided, and
/// publishing "EC2 unknown" for a moment would write every status twice per restart or
/// leadership change (2,000 writes at 1,000 addresses): wait for the read, which the woken
/// monitor makes and which reconciles the address. (When EC2 cannot be read, the reconcile
/// goes on and reports that instead.)
fn wait_for_ec2_read(ctx: &Context, f: &FloatingElasticIP, snapshot: &Snapshot) -> Option<Requeue> {
    if f.status.is_none() || !snapshot.address.read_pending() || snapshot.ec2_unreadable {
        return None;
    }
    ctx.monitor_wake.notify_one();
    // The read triggers the reconcile; the timer is only a safety net (polling every 200 ms
    // meant 15,000 idle reconciles per restart at 1,000 addresses).
    Some(Requeue::requeue(Duration::from_secs(2)))
}

/// An object that must not touch its address: another object owns it (several naming one
/// Elastic IP: ownership between tenants) or no grant permits the claim. It reports why
/// (`Degraded=True, reason`; an event when the reason is new) and never writes a holder Lease
/// or calls EC2.
async fn report_refused(
    ctx: &Context,
    f: &FloatingElasticIP,
    new_status: crate::crd::FloatingElasticIPStatus,
    reason: ConditionReason,
    spec: &ResolvedSpec,
) -> Result<Requeue, Error> {
    let degraded = |c: &&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition| {
        c.type_ == ConditionType::Degraded.as_str()
    };
    let old_message = f
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(degraded))
        .filter(|c| c.reason == reason.as_str())
        .map(|c| c.message.clone());
    let message = new_status
        .conditions
        .iter()
        .find(degraded)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    let news = old_message.as_ref() != Some(&message);
    patch_status(ctx, f, new_status).await?;
    if news {
        publish(ctx, f, EventType::Warning, reason.as_str(), message).await;
    }
    Ok(Requeue::requeue(spec.monitor_interval))
}

/// Step 1: the decision goes to the holder Lease before any EC2 mutation.
async fn write_decision(ctx: &Arc<Context>, pass: &Pass<'_>) -> Result<(), Error> {
    let slot = pass.observed.slot_of(pass.plan.holder.as_deref());
    let Some(record) = pass.plan.lease_record(pass.spec, slot.clone()) else {
        return Ok(());
    };
    let (plan, k) = (pass.plan, pass.key);
    let existing = pass
        .lease
        .filter(|_| plan.change.is_some() || plan.retarget.is_some());
    let written =
        holder_lease::write(&ctx.client, &ctx.leadership, pass.f, existing, &record).await?;
    wrote_lease(ctx, pass.key, written);
    if existing.is_some() || pass.lease.is_none() {
        ctx.remember(k, |m| m.decided_here = plan.holder.clone());
    }
    if let (Some(r), Some(to)) = (&plan.retarget, &slot) {
        let from = r
            .from
            .as_ref()
            .map_or("unrecorded".into(), |s| s.private_ip.clone());
        let note = format!(
            "{} keeps the address; its private IP moves {from} -> {} (planned, not a failure)",
            to.node, to.private_ip
        );
        tracing::info!(feip = %k, %note, "slot change");
        if r.from.is_some() {
            publish(ctx, pass.f, EventType::Normal, "Retargeted", note).await;
        }
    }
    let Some(change) = &pass.plan.change else {
        return Ok(());
    };
    ctx.remember(pass.key, |m| m.pending = change.pending());
    ctx.metrics.holder_change(change.reason.as_str());
    let (reason, msg) = change.event.clone();
    // detected_at at full precision (status times are whole seconds): feip-bench reads it.
    tracing::info!(feip = %pass.key, %msg, detected_at = %change.detected_at, "holder change");
    // Published alongside, not before, the EC2 action: an Event write is not part of the
    // decision (the Lease is) and took 10-30 ms of every failover.
    let (ctx, f) = (ctx.clone(), pass.f.clone());
    tokio::spawn(async move { publish(&ctx, &f, EventType::Normal, reason, msg).await });
    Ok(())
}

/// Step 2: the EC2 call, only while this replica's leadership allows it. `None`: the window
/// closed before anything was sent.
async fn act(
    ctx: &Context,
    pass: &Pass<'_>,
    failures: &mut BTreeMap<String, FailureRecord>,
) -> Option<Outcome> {
    let (f, k, spec, now) = (pass.f.as_ref(), pass.key, pass.spec, pass.now);
    let mut outcome = Outcome {
        current: pass.observed.address.clone(),
        ..Outcome::default()
    };
    match &pass.plan.ec2 {
        None => {}
        Some(Ec2Call::Associate { node, target, .. }) => {
            let current = pass.observed.address.as_ref()?;
            if !ctx.leadership.can_mutate() {
                return None;
            }
            inherit_decision(ctx, k, pass.plan.confirmed, node, target);
            if let Err(e) = read_afresh_if_old(ctx, pass, current).await {
                outcome.error = Some(e);
                return Some(outcome);
            }
            match associate(ctx, k, current, target, spec.confirm_timeout).await {
                Err(Ec2Error::NotSent { .. }) => return None,
                Ok(info) => {
                    let note = format!(
                        "address associated with {node} ({} {})",
                        target.network_interface_id, target.private_ip
                    );
                    outcome.current = Some(info);
                    publish(ctx, f, EventType::Normal, "Associated", note).await;
                }
                Err(e) => {
                    // AlreadyAssociated: associated by somebody since the read (we did not
                    // ask to reassociate), which is no fault of the node.
                    let raced = e.code() == Some("Resource.AlreadyAssociated");
                    if !e.is_unknown() && e.blames_target() && !raced {
                        let threshold = spec.policy.migration_threshold;
                        let (kind, reason) = (FailureKind::AssociateFailed, e.to_string());
                        decide::record_failure(failures, node, now, kind, reason, Some(threshold));
                        let note = format!("{node} banned after a failed associate: {e}");
                        publish(ctx, f, EventType::Warning, "AssociateFailed", note).await;
                    }
                    outcome.error = Some(e);
                }
            }
        }
        Some(Ec2Call::Disassociate { association_id }) => {
            if !ctx.leadership.can_mutate() {
                return None;
            }
            match ctx.ec2.disassociate(&ctx.leadership, association_id).await {
                Err(Ec2Error::NotSent { .. }) => return None,
                Ok(()) => {
                    if let Some(c) = outcome.current.as_mut() {
                        let replaced = c.association_id.take();
                        c.network_interface_id = None;
                        c.private_ip = None;
                        c.instance_id = None;
                        lock(&ctx.view).record_unseen(c.clone(), replaced);
                    }
                    let note = "address disassociated (targetState Stopped)".to_string();
                    publish(ctx, f, EventType::Normal, "Disassociated", note).await;
                }
                Err(e) => {
                    outcome.blocked = Some(e.to_string());
                    let note = format!("disassociate failed: {e}");
                    publish(ctx, f, EventType::Warning, "Blocked", note).await;
                    outcome.error = Some(e);
                }
            }
        }
    }
    Some(outcome)
}

/// Before an associate decided on an address read older than the bound (the monitor is
/// stalled: slow DescribeInstances, a starved budget), the address is read afresh. If it
/// changed meanwhile (somebody associated it elsewhere), nothing is sent: the fresh state goes
/// into the view and the next pass decides on it (rule 5: an association made since is not
/// taken with `AllowReassociation`). A failing fresh read leaves the state unknown.
async fn read_afresh_if_old(
    ctx: &Context,
    pass: &Pass<'_>,
    current: &AddressInfo,
) -> Result<(), Ec2Error> {
    if pass.read_age.is_none_or(|age| age <= pass.max_read_age) {
        return Ok(());
    }
    let fresh = read_one(ctx, &current.allocation_id)
        .await
        .map_err(|e| Ec2Error::Unknown {
            operation: "DescribeAddresses",
            // No age in status text (it would change, and rewrite the status, every pass).
            reason: format!(
                "the last address read is older than the {}s bound for acting on one, and a fresh read failed: {e}",
                pass.max_read_age.as_secs_f64()
            ),
            throttled: false,
        })?;
    let Some(fresh) = fresh else {
        return Ok(());
    };
    fn association(a: &AddressInfo) -> (&Option<String>, &Option<String>, &Option<String>) {
        (&a.association_id, &a.network_interface_id, &a.private_ip)
    }
    if association(&fresh) == association(current) {
        return Ok(());
    }
    tracing::info!(feip = %pass.key, ?fresh, "address changed since the last read; deciding again");
    lock(&ctx.view).addresses.insert(fresh);
    Err(Ec2Error::Unknown {
        operation: "DescribeAddresses",
        reason: "the address changed since the last read; deciding again on a fresh one".into(),
        throttled: false,
    })
}

/// An unconfirmed holder decision that this process did not write (a previous leader's, cut
/// short by a handover or a crash) may have had its AssociateAddress sent, possibly landing
/// only now: it is handled like an associate of unknown outcome, read back and not resent
/// before EC2 can show it, so a handover does not cost a second remap.
fn inherit_decision(ctx: &Context, k: &str, confirmed: bool, node: &str, target: &Target) {
    if confirmed {
        return;
    }
    ctx.remember(k, |m| {
        if m.decided_here.as_deref() != Some(node) && m.unknown_associate.is_none() {
            tracing::info!(feip = %k, %node, "holder decided elsewhere and not confirmed; reading it back before associating");
            m.unknown_associate = Some((target.clone(), Instant::now()));
            m.decided_here = Some(node.to_owned());
        }
    });
}

/// How long after an AssociateAddress with an unknown outcome it is only read back, not
/// resent: longer than the usual lag of DescribeAddresses behind a change.
const UNKNOWN_ASSOCIATE_SETTLE: Duration = Duration::from_secs(2);

/// AssociateAddress, then its confirmation. After a failed pass (an associate that timed out
/// may still have happened) it reads the outcome back before repeating it: the snapshot may
/// predate it, and a resend is a second (charged) remap.
///
/// A successful AssociateAddress is definite: the association exists. When DescribeAddresses
/// does not show it within the confirmation timeout (EC2 is eventually consistent), the
/// answer is trusted and recorded, and reads that still show the replaced association are
/// taken as stale for [`super::context::CONSISTENCY_WINDOW`] (no drift, no second remap).
async fn associate(
    ctx: &Context,
    k: &str,
    current: &AddressInfo,
    target: &Target,
    confirm_timeout: Duration,
) -> Result<AddressInfo, Ec2Error> {
    let (allocation_id, eni) = (
        current.allocation_id.as_str(),
        target.network_interface_id.as_str(),
    );
    let unknown_since = ctx.remember(k, |m| {
        m.unknown_associate
            .as_ref()
            .filter(|(t, _)| t == target)
            .map(|(_, at)| *at)
    });
    let retrying = unknown_since.is_some() || ctx.remember(k, |m| m.failed_attempts > 0);
    let sent = if retrying && already_on(ctx, allocation_id, target).await {
        None
    } else if unknown_since.is_some_and(|at| at.elapsed() < UNKNOWN_ASSOCIATE_SETTLE) {
        // The attempt whose answer was lost may still show up (eventual consistency): a
        // resend now would likely be a second, charged remap to the same place.
        return Err(Ec2Error::Unknown {
            operation: "AssociateAddress",
            reason: "the previous attempt's outcome is not visible yet; reading it back before resending".into(),
            throttled: false,
        });
    } else {
        // Reassociation only takes what the read showed: from an unassociated read, an
        // association somebody made since makes EC2 refuse instead of feip taking it.
        let reassociate = current.association_id.is_some();
        let sent = ctx
            .ec2
            .associate(
                &ctx.leadership,
                allocation_id,
                eni,
                &target.private_ip,
                reassociate,
            )
            .await;
        if let Err(e) = &sent
            && e.is_unknown()
            && !matches!(e, Ec2Error::NotSent { .. })
        {
            ctx.remember(k, |m| {
                m.unknown_associate = Some((target.clone(), Instant::now()))
            });
        }
        Some(sent?)
    };
    ctx.remember(k, |m| m.unknown_associate = None);
    match (
        confirm(ctx, allocation_id, target, confirm_timeout).await,
        sent,
    ) {
        (Ok(info), _) => {
            lock(&ctx.view).record(info.clone());
            Ok(info)
        }
        (Err(e), Some(association_id)) if !association_id.is_empty() => {
            tracing::info!(
                feip = %k, %association_id, error = %e,
                "association not visible yet; trusting AssociateAddress's answer"
            );
            let info = AddressInfo {
                association_id: Some(association_id),
                network_interface_id: Some(eni.to_owned()),
                private_ip: Some(target.private_ip.clone()),
                instance_id: Some(target.instance_id.clone()),
                ..current.clone()
            };
            let replaced = current.association_id.clone();
            lock(&ctx.view).record_unseen(info.clone(), replaced);
            Ok(info)
        }
        (Err(e), _) => Err(e),
    }
}

/// Step 3: the Lease confirmed (or renewed) once the address is on the holder. A failed
/// confirmation is retried by the next pass.
async fn confirm_lease(
    ctx: &Context,
    pass: &Pass<'_>,
    settled: &Settlement,
    pending: Option<&PendingFailover>,
) {
    if !settled.confirm_lease {
        return;
    }
    // Reuse the freshest Lease (ours may have just been written, the cache may lag).
    let f = pass.f.as_ref();
    let ns = f.namespace().unwrap_or_default();
    let cached = ctx.leases.get(&ObjectRef::new(&f.lease_name()).within(&ns));
    let fresh = newest_lease(ctx, pass.key, cached);
    let reason = fresh
        .as_ref()
        .and_then(|l| l.metadata.annotations.as_ref())
        .and_then(|a| a.get(REASON_ANNOTATION).cloned())
        .unwrap_or_else(|| "Adopted".into());
    let status = newest_feip(ctx, pass.f.clone())
        .status
        .clone()
        .unwrap_or_default();
    let slot = pass.observed.slot_of(pass.plan.holder.as_deref());
    let record = plan::confirm_record(pass.spec, pass.plan, &reason, pending, &status, slot);
    match holder_lease::write(&ctx.client, &ctx.leadership, f, fresh.as_deref(), &record).await {
        Ok(written) => wrote_lease(ctx, pass.key, written),
        Err(e) => tracing::debug!(feip = %pass.key, error = %e, "lease confirm deferred"),
    }
}

/// A `clearWhenDone` pin whose node holds the address is removed, unless it changed since
/// (a newer `feip move` stays).
async fn clear_pin(
    ctx: &Context,
    f: &FloatingElasticIP,
    settled: &Settlement,
) -> Result<(), Error> {
    let Some(node) = &settled.clear_pin else {
        return Ok(());
    };
    if remove_pin(ctx, f, node).await? == PinClear::Changed {
        return Ok(());
    }
    let note = format!("moved to {node}; pin cleared");
    publish(ctx, f, EventType::Normal, "MoveComplete", note).await;
    Ok(())
}

/// The failover (or planned move) this pass completes (the address is on the new holder),
/// unless the status (the newest this process knows) records it already. Its metric and
/// event follow the status write that records it (`report`). The pending failover is this
/// process's, or the one a previous leader recorded on the Lease.
async fn complete_failover(
    ctx: &Context,
    pass: &Pass<'_>,
    settled: &Settlement,
    pending: Option<&PendingFailover>,
) -> Option<plan::CompletedFailover> {
    if !settled.holder_on_target {
        return None;
    }
    let status = newest_feip(ctx, pass.f.clone())
        .status
        .clone()
        .unwrap_or_default();
    let completed = Timestamp::now(); // after the confirming Describe, not the pass's start
    let holder = pass.plan.holder.as_deref();
    plan::completed_failover(pending, holder, &status, completed)
}

/// The metric and event of a completed change the status now records.
async fn announce_completed(ctx: &Context, f: &FloatingElasticIP, done: &plan::CompletedFailover) {
    if is_planned_move(done.reason) {
        ctx.metrics.planned_move(done.reason.as_str());
    } else {
        ctx.metrics.failover(done.reason.as_str(), done.duration);
    }
    let note = format!(
        "address confirmed on {} {:.3}s after detection ({})",
        done.record.to,
        done.duration.as_secs_f64(),
        done.record.reason
    );
    publish(ctx, f, EventType::Normal, "FailoverComplete", note).await;
}

/// Step 4: the status, built whole from the newest object this process knows (its own
/// writes of this pass included) and written once (only when it changed), fenced on that
/// object's resourceVersion. When the object changed meanwhile it is read again: a change
/// of the spec or metadata only (a `feip move`) gets the status rebuilt on it; a newer
/// status (another writer) is not overwritten, and the next pass builds on it.
async fn report(
    ctx: &Context,
    pass: &Pass<'_>,
    outcome: &Outcome,
    settled: &Settlement,
    failures: &BTreeMap<String, FailureRecord>,
    done: Option<plan::CompletedFailover>,
) -> Result<(), Error> {
    ctx.remember(pass.key, |m| {
        m.blocked = outcome.blocked.clone();
        if outcome.error.is_none() {
            m.failed_attempts = 0;
            m.backoff_until = None;
        }
    });
    let base = newest_feip(ctx, pass.f.clone());
    let mut written = patch_status(
        ctx,
        &base,
        status_on(pass, outcome, settled, failures, done.as_ref(), &base),
    )
    .await?;
    if written == StatusWrite::Conflict {
        let api: Api<FloatingElasticIP> =
            Api::namespaced(ctx.client.clone(), &base.namespace().unwrap_or_default());
        let fresh = api.get(&base.name_any()).await?;
        if fresh.status == base.status {
            // Only spec or metadata changed (a newer `feip move`): the status goes onto the
            // fresh object, still observing the generation this pass decided for.
            let mut on = fresh;
            on.metadata.generation = base.metadata.generation;
            let new_status = status_on(pass, outcome, settled, failures, done.as_ref(), &on);
            written = patch_status(ctx, &on, new_status).await?;
        }
    }
    if written == StatusWrite::Conflict {
        // The pending change stays: the next pass (the object's change triggers one) records
        // it on the newer status.
        tracing::info!(feip = %pass.key, "status not written: a newer status exists; the next pass builds on it");
        return Ok(());
    }
    if let Some(done) = &done {
        announce_completed(ctx, pass.f, done).await;
    }
    // A completed failover stays pending until the status recording it is written: if that
    // write fails, the next pass records it again instead of losing it.
    if settled.holder_on_target {
        ctx.remember(pass.key, |m| m.pending = None);
    }
    Ok(())
}

/// Two records of one holder change (status times have whole-second precision).
fn same_change(a: &FailoverRecord, b: &FailoverRecord) -> bool {
    let second = |r: &FailoverRecord| r.detected_at.as_ref().map(|t| t.0.as_second());
    a.from == b.from && a.to == b.to && second(a) == second(b)
}

/// The status this pass reports, on top of `base`'s (its counts, old conditions).
fn status_on(
    pass: &Pass<'_>,
    outcome: &Outcome,
    settled: &Settlement,
    failures: &BTreeMap<String, FailureRecord>,
    done: Option<&plan::CompletedFailover>,
    base: &FloatingElasticIP,
) -> crate::crd::FloatingElasticIPStatus {
    let old = base.status.clone().unwrap_or_default();
    // Recorded already in `base` (another pass wrote it): not counted twice.
    let done = done
        .filter(|d| {
            let same =
                |l: &Option<FailoverRecord>| l.as_ref().is_some_and(|l| same_change(l, &d.record));
            !same(&old.last_failover) && !same(&old.last_planned_move)
        })
        .map(|d| (d.record.clone(), d.reason));
    let counts = counted(&old, done);
    build_status(StatusInputs {
        f: base,
        spec: pass.spec,
        decision: pass.decision,
        candidates: &pass.observed.candidates,
        holder: pass.plan.holder.as_deref(),
        holder_on_target: settled.holder_on_target,
        holder_healthy: settled.holder_healthy,
        current: outcome.current.as_ref(),
        address_missing: pass.observed.address_missing,
        failures,
        failover_count: counts.failover_count,
        last_failover: counts.last_failover,
        planned_move_count: counts.planned_move_count,
        last_planned_move: counts.last_planned_move,
        transitions: pass.plan.transitions,
        cleanup_done: pass.observed.cleanup_done.clone(),
        action_error: outcome.error.as_ref(),
        blocked: outcome.blocked.as_deref(),
        now: pass.now,
    })
}

async fn publish_all(ctx: &Context, f: &FloatingElasticIP, events: Vec<EventNote>) {
    for (type_, reason, note) in events {
        publish(ctx, f, type_, reason, note).await;
    }
}

/// The requeue delay for `next`; a backoff step counts the address's failed attempt.
/// `attempts`: the counter before this pass's `report` (which resets it when the pass had no
/// EC2 error): a `Wait` continues from there, so passes that can do nothing back off
/// exponentially instead of polling.
fn after(ctx: &Context, k: &str, spec: &ResolvedSpec, next: Next, attempts: u32) -> Duration {
    match next {
        Next::Soon => Duration::from_millis(200),
        Next::Backoff | Next::Wait => ctx.remember(k, |m| {
            let now = Instant::now();
            let before = if next == Next::Wait {
                attempts.max(m.failed_attempts)
            } else {
                m.failed_attempts
            };
            // Woken before the step scheduled last ran out (a watch event, often this
            // pass's own status write): wait out that step instead of taking the next one.
            // Counting passes instead made a 10 s EC2 hang reach the 30 s cap within
            // seconds, and its recovery wait for it.
            if before > 0
                && let Some(left) = m
                    .backoff_until
                    .map(|until| until.saturating_duration_since(now))
                    .filter(|left| !left.is_zero())
            {
                m.failed_attempts = before;
                return left;
            }
            m.failed_attempts = before.saturating_add(1);
            let delay = backoff(m.failed_attempts);
            m.backoff_until = Some(now + delay);
            delay
        }),
        // Jittered, so addresses reconciled together (a restart) spread over the interval
        // instead of arriving in bursts that delay an urgent reconcile.
        Next::Interval => spec.monitor_interval.mul_f64(rand::random_range(0.9..1.1)),
    }
}

/// A fresh DescribeAddresses says the address is on `target` (false when EC2 does not answer).
pub(super) async fn already_on(ctx: &Context, allocation_id: &str, target: &Target) -> bool {
    read_one(ctx, allocation_id)
        .await
        .is_ok_and(|a| a.is_some_and(|a| a.is_on(target)))
}

/// One address read afresh (a one-id DescribeAddresses); `None`: EC2 has no such address.
async fn read_one(ctx: &Context, allocation_id: &str) -> Result<Option<AddressInfo>, Ec2Error> {
    let mut snap = ctx
        .ec2
        .describe_addresses(&[allocation_id.to_string()], &[])
        .await?;
    Ok(snap.by_allocation.remove(allocation_id))
}

/// Confirms a mutation with DescribeAddresses and backoff (EC2 is eventually consistent).
pub(super) async fn confirm(
    ctx: &Context,
    allocation_id: &str,
    target: &Target,
    timeout: Duration,
) -> Result<AddressInfo, Ec2Error> {
    let mut wait = Duration::from_millis(50);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(a) = read_one(ctx, allocation_id).await?
            && a.is_on(target)
        {
            return Ok(a);
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
