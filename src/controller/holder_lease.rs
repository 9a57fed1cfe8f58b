//! The holder Lease (`feip-<name>`): what a write records ([`LeaseRecord`]), the failover an
//! unconfirmed Lease still carries, and the only code that writes or deletes one, each
//! request taking a [`MutationPermit`] by value right before it is sent.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, Resource, ResourceExt};

use crate::crd::{FloatingElasticIP, FloatingElasticIPStatus};
use crate::decide::ChangeReason;
use crate::leader::{Leadership, MutationPermit};

use super::context::PendingFailover;
use super::slots::{INTERFACE_ANNOTATION, PRIVATE_IP_ANNOTATION, SlotRecord};
use super::spec::ResolvedSpec;
use super::{Error, LEASE_LABEL, LEASE_LABEL_VALUE};

/// Lease annotation: the association to the holder was confirmed since it was elected.
pub(super) const CONFIRMED_ANNOTATION: &str = "feip.io/confirmed";
/// Lease annotation: why the current holder holds the address.
pub(super) const REASON_ANNOTATION: &str = "feip.io/reason";
/// Lease annotations of a failover not yet confirmed: previous holder and detection time.
pub(super) const FAILOVER_FROM_ANNOTATION: &str = "feip.io/failover-from";
pub(super) const DETECTED_AT_ANNOTATION: &str = "feip.io/detected-at";
/// Lease annotation: the leadership term ([`Leadership::epoch`]) of the replica that wrote
/// the Lease. A change not confirmed yet and stamped with an older term was decided by a
/// leader replaced since (`plan::superseded`).
pub(super) const EPOCH_ANNOTATION: &str = "feip.io/leader-epoch";

/// The leadership term a holder Lease was written in (`None`: written before terms were
/// recorded, or not by a leader).
pub(super) fn written_in(lease: &Lease) -> Option<i32> {
    lease
        .metadata
        .annotations
        .as_ref()?
        .get(EPOCH_ANNOTATION)?
        .parse()
        .ok()
}

/// The status already records this failover (a pass whose Lease confirmation failed wrote
/// it; the Lease still carries it), as a failover or as a planned move. Status times have
/// whole-second precision.
pub(super) fn already_recorded(status: &FloatingElasticIPStatus, p: &PendingFailover) -> bool {
    let same = |l: &crate::crd::FailoverRecord| {
        l.to == p.to
            && l.from == p.from
            && l.detected_at.as_ref().map(|t| t.0.as_second()) == Some(p.detected_at.as_second())
    };
    status.last_failover.as_ref().is_some_and(same)
        || status.last_planned_move.as_ref().is_some_and(same)
}

/// A failover recorded on the Lease by a previous leader (or before a restart) that may not be
/// in the status yet: the Lease keeps it, confirmed or not, until the status records it
/// (`plan::confirm_record`).
pub(super) fn pending_from_lease(lease: Option<&Lease>) -> Option<PendingFailover> {
    let lease = lease?;
    let a = lease.metadata.annotations.as_ref()?;
    Some(PendingFailover {
        from: Some(a.get(FAILOVER_FROM_ANNOTATION)?.clone()),
        to: lease.spec.as_ref()?.holder_identity.clone()?,
        reason: a
            .get(REASON_ANNOTATION)
            .and_then(|r| r.parse().ok())
            .unwrap_or(ChangeReason::HolderDead),
        detected_at: a.get(DETECTED_AT_ANNOTATION)?.parse().ok()?,
    })
}

pub(super) fn lease_duration(r: &ResolvedSpec) -> Duration {
    (r.monitor_interval * 3).max(Duration::from_secs(30))
}

/// What one holder-Lease write records.
pub(super) struct LeaseRecord<'a> {
    /// The node that holds (or is to hold) the address; `None` releases it.
    pub(super) holder: Option<&'a str>,
    pub(super) transitions: i32,
    /// The association to the holder was confirmed in EC2.
    pub(super) confirmed: bool,
    /// Why the holder holds the address (a change reason, "Created" or "Adopted").
    pub(super) reason: &'a str,
    /// A failover not yet confirmed: recorded so that a new leader completing it still
    /// reports it (status.lastFailover, failover count, duration metric).
    pub(super) failover: Option<FailoverStart<'a>>,
    /// `leaseDurationSeconds` (see [`lease_duration`]).
    pub(super) duration: Duration,
    /// The holder's slot (private IP and interface), recorded so that it survives restarts
    /// and leader changes.
    pub(super) slot: Option<SlotRecord>,
}

/// The start of a failover: the previous holder and when its failure was detected.
#[derive(Clone, Copy)]
pub(super) struct FailoverStart<'a> {
    pub(super) from: &'a str,
    pub(super) detected_at: Timestamp,
}

/// The holder Lease `record` describes, replacing `existing` (optimistic concurrency on its
/// resourceVersion). The acquire time is kept while the holder stays the same.
pub(super) fn lease_object(
    f: &FloatingElasticIP,
    existing: Option<&Lease>,
    record: &LeaseRecord<'_>,
    now: Timestamp,
) -> Result<Lease, Error> {
    let now = MicroTime(now);
    let owner = f.controller_owner_ref(&()).ok_or(Error::MissingUid)?;
    let old_spec = existing.and_then(|l| l.spec.as_ref());
    let prev_holder = old_spec.and_then(|s| s.holder_identity.as_deref());
    let acquire = if prev_holder == record.holder {
        old_spec
            .and_then(|s| s.acquire_time.clone())
            .or_else(|| Some(now.clone()))
    } else {
        Some(now.clone())
    };
    let mut lease: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": f.lease_name(),
            "namespace": f.namespace().unwrap_or_default(),
            "labels": {LEASE_LABEL: LEASE_LABEL_VALUE, "feip.io/name": f.name_any()},
            "annotations": {
                CONFIRMED_ANNOTATION: record.confirmed.to_string(),
                REASON_ANNOTATION: record.reason,
            },
        },
        "spec": {
            "leaseDurationSeconds": record.duration.as_secs(),
            "leaseTransitions": record.transitions,
        }
    }))?;
    lease.metadata.owner_references = Some(vec![owner]);
    if let (Some(start), Some(annotations)) = (record.failover, lease.metadata.annotations.as_mut())
    {
        annotations.insert(FAILOVER_FROM_ANNOTATION.into(), start.from.to_string());
        annotations.insert(DETECTED_AT_ANNOTATION.into(), start.detected_at.to_string());
    }
    if let (Some(slot), Some(annotations)) = (
        record
            .slot
            .as_ref()
            .filter(|s| Some(s.node.as_str()) == record.holder),
        lease.metadata.annotations.as_mut(),
    ) {
        annotations.insert(PRIVATE_IP_ANNOTATION.into(), slot.private_ip.clone());
        if let Some(eni) = &slot.network_interface_id {
            annotations.insert(INTERFACE_ANNOTATION.into(), eni.clone());
        }
    }
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = record.holder.map(str::to_string);
        spec.acquire_time = record.holder.and(acquire);
        spec.renew_time = record.holder.map(|_| now.clone());
    }
    if let Some(old) = existing {
        lease.metadata.resource_version = old.metadata.resource_version.clone();
    }
    Ok(lease)
}

/// Writes the holder Lease: replaces `existing`, or creates it, and returns the Lease as the
/// apiserver stored it. The permit is taken right before the request is sent; without one
/// nothing is written.
pub(super) async fn write(
    client: &Client,
    leadership: &Leadership,
    f: &FloatingElasticIP,
    existing: Option<&Lease>,
    record: &LeaseRecord<'_>,
) -> Result<Lease, Error> {
    let mut lease = lease_object(f, existing, record, Timestamp::now())?;
    let api: Api<Lease> = Api::namespaced(client.clone(), &f.namespace().unwrap_or_default());
    let permit = leadership
        .permit()
        .ok_or(Error::LeadershipLost("before the decision was written"))?;
    // The term of the window the write is sent in, so that a successor can tell a decision of
    // this term from its own when this write lands late.
    if let (Some(epoch), Some(annotations)) = (permit.epoch(), lease.metadata.annotations.as_mut())
    {
        annotations.insert(EPOCH_ANNOTATION.into(), epoch.to_string());
    }
    send(&api, permit, &lease).await
}

/// Deletes the holder Lease (finalizer cleanup); absent counts as deleted.
pub(super) async fn delete(
    client: &Client,
    leadership: &Leadership,
    f: &FloatingElasticIP,
) -> Result<(), Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &f.namespace().unwrap_or_default());
    let permit = leadership
        .permit()
        .ok_or(Error::LeadershipLost("before the holder lease was deleted"))?;
    send_delete(&api, permit, &f.lease_name()).await
}

/// The one place a holder Lease is deleted: it takes the permit by value.
/// A delete whose answer was lost may land later (a replace or create cannot overtake a
/// successor's write: the resourceVersion or the existing object refuses it), so its outcome
/// is unknown to the graceful hand-over.
async fn send_delete(api: &Api<Lease>, permit: MutationPermit, name: &str) -> Result<(), Error> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e @ kube::Error::Api(_)) => Err(e.into()),
        Err(e) => {
            permit.outcome_unknown();
            Err(e.into())
        }
    }
}

/// The one place a holder Lease is created or replaced (replaced when it carries the
/// resourceVersion it was read at): it takes the permit by value.
async fn send(api: &Api<Lease>, _permit: MutationPermit, lease: &Lease) -> Result<Lease, Error> {
    let name = lease.metadata.name.clone().unwrap_or_default();
    if lease.metadata.resource_version.is_some() {
        return Ok(api.replace(&name, &PostParams::default(), lease).await?);
    }
    match api.create(&PostParams::default(), lease).await {
        Ok(written) => Ok(written),
        // Our cache is behind: read and retry through the normal requeue.
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::LeaseCacheBehind),
        Err(e) => Err(e.into()),
    }
}
