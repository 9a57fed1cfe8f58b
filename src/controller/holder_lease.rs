use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};

use crate::crd::{FloatingElasticIP, FloatingElasticIPStatus};

use super::context::{Context, PendingFailover};
use super::observe::Resolved;
use super::{Error, LEASE_LABEL, LEASE_LABEL_VALUE};

/// Lease annotation: the association to the holder was confirmed since it was elected.
pub(super) const CONFIRMED_ANNOTATION: &str = "feip.io/confirmed";
/// Lease annotation: why the current holder holds the address.
pub(super) const REASON_ANNOTATION: &str = "feip.io/reason";
/// Lease annotations of a failover not yet confirmed: previous holder and detection time.
pub(super) const FAILOVER_FROM_ANNOTATION: &str = "feip.io/failover-from";
pub(super) const DETECTED_AT_ANNOTATION: &str = "feip.io/detected-at";

/// The status already records this failover (a pass whose Lease confirmation failed wrote
/// it; the Lease still carries it). Status times have whole-second precision.
pub(super) fn already_recorded(status: &FloatingElasticIPStatus, p: &PendingFailover) -> bool {
    status.last_failover.as_ref().is_some_and(|l| {
        l.to == p.to
            && l.from == p.from
            && l.detected_at.as_ref().map(|t| t.0.as_second()) == Some(p.detected_at.as_second())
    })
}

/// An unfinished failover recorded on the Lease by a previous leader (or before a restart).
pub(super) fn pending_from_lease(
    lease: Option<&Lease>,
    confirmed: bool,
) -> Option<PendingFailover> {
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

pub(super) fn lease_duration(r: &Resolved) -> Duration {
    (r.monitor_interval * 3).max(Duration::from_secs(30))
}

#[allow(clippy::too_many_arguments)] // one call site per purpose; a struct would only rename them
pub(super) async fn write_lease(
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
