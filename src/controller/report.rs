//! The controller's Kubernetes writes other than the holder Lease: the status (replaced as
//! a whole, only when it changed, fenced on the resourceVersion it was built from) and
//! events; and what this process last wrote, so that no pass decides from a watch cache
//! older than its own writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use crate::crd::{FloatingElasticIP, FloatingElasticIPStatus};

use super::Error;
use super::context::{Context, key};

/// How long after a write of ours a cache that does not show it yet is taken as lagging (and
/// our written object used instead). Past it the cache wins again: the object may have been
/// deleted and recreated, and every write is fenced anyway.
pub(super) const OWN_WRITE_WINDOW: Duration = Duration::from_secs(10);

/// The FloatingElasticIP and holder Lease as this process last wrote them (the apiserver's
/// answers), and when.
#[derive(Clone, Default)]
pub(super) struct OwnWrites {
    pub(super) feip: Option<(Arc<FloatingElasticIP>, Instant)>,
    pub(super) lease: Option<(Arc<Lease>, Instant)>,
}

/// A resourceVersion as a number. The apiserver issues etcd revisions, which only grow;
/// Kubernetes documents them as opaque, so one that is not a number is never taken as older.
fn revision<K: Resource>(o: &K) -> Option<u64> {
    o.meta().resource_version.as_deref()?.parse().ok()
}

/// The newer of a cached object and the one this process wrote (`ours`, within
/// [`OWN_WRITE_WINDOW`]): ours when the cache has an older revision, or none yet (a Lease
/// just created).
pub(super) fn newest<K: Resource>(
    cached: Option<Arc<K>>,
    ours: Option<&(Arc<K>, Instant)>,
) -> Option<Arc<K>> {
    let Some((ours, _)) = ours.filter(|(_, at)| at.elapsed() < OWN_WRITE_WINDOW) else {
        return cached;
    };
    match cached {
        None => Some(ours.clone()),
        Some(c) => match (revision(c.as_ref()), revision(ours.as_ref())) {
            (Some(cached_rv), Some(our_rv)) if our_rv > cached_rv => Some(ours.clone()),
            _ => Some(c),
        },
    }
}

/// `f` as the cache handed it, or as this process last wrote it when the cache is behind.
pub(super) fn newest_feip(ctx: &Context, f: Arc<FloatingElasticIP>) -> Arc<FloatingElasticIP> {
    let ours = ctx.remember(&key(&f), |m| m.own_writes.feip.clone());
    newest(Some(f.clone()), ours.as_ref()).unwrap_or(f)
}

/// The holder Lease from the cache, or as this process last wrote it when the cache is behind.
pub(super) fn newest_lease(
    ctx: &Context,
    k: &str,
    cached: Option<Arc<Lease>>,
) -> Option<Arc<Lease>> {
    let ours = ctx.remember(k, |m| m.own_writes.lease.clone());
    newest(cached, ours.as_ref())
}

pub(super) fn wrote_lease(ctx: &Context, k: &str, lease: Lease) {
    ctx.remember(k, |m| {
        m.own_writes.lease = Some((Arc::new(lease), Instant::now()))
    });
}

fn wrote_feip(ctx: &Context, f: FloatingElasticIP) {
    ctx.remember(&key(&f), |m| {
        m.own_writes.feip = Some((Arc::new(f), Instant::now()))
    });
}

/// What became of a status write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StatusWrite {
    /// The status already was this one: nothing sent.
    Unchanged,
    Written,
    /// The object changed since `f` was read (its resourceVersion): nothing written.
    Conflict,
}

/// The object's resourceVersion was not the one the patch carries (409 Conflict).
fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Writes the status only when it changed (saves API writes at scale), and only onto the
/// object `f` is: the patch sets `metadata.resourceVersion` to `f`'s, which the apiserver
/// takes as a precondition (409 when the object changed since). A status built from an older
/// object (a lagging cache, a slow or deposed leader) never overwrites a newer one's counts
/// and bans. (A JSON-patch `test` op would fence as well, but its failure is a 422 that reads
/// like any invalid request.)
pub(super) async fn patch_status(
    ctx: &Context,
    f: &FloatingElasticIP,
    status: FloatingElasticIPStatus,
) -> Result<StatusWrite, Error> {
    if f.status.as_ref() == Some(&status) {
        return Ok(StatusWrite::Unchanged);
    }
    let api: Api<FloatingElasticIP> =
        Api::namespaced(ctx.client.clone(), &f.namespace().unwrap_or_default());
    // Replace .status as a whole: a merge patch would keep fields and list entries that the
    // new status no longer has (an expired ban, a cleared holder).
    let mut patch = Vec::new();
    if let Some(rv) = &f.metadata.resource_version {
        patch.push(
            serde_json::json!({"op": "replace", "path": "/metadata/resourceVersion", "value": rv}),
        );
    }
    patch.push(serde_json::json!({"op": "add", "path": "/status", "value": status}));
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(patch))?;
    match api
        .patch_status(
            &f.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(written) => {
            wrote_feip(ctx, written);
            Ok(StatusWrite::Written)
        }
        Err(e) if is_conflict(&e) => {
            tracing::debug!(feip = %key(f), error = %e, "status not written: the object changed");
            Ok(StatusWrite::Conflict)
        }
        Err(e) => Err(e.into()),
    }
}

/// What became of a pin clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PinClear {
    Cleared,
    /// The pin no longer names `node` (a newer `feip move`, or already cleared): kept.
    Changed,
}

/// Removes `spec.pin` only while it still names `node` (a `test` on `/spec/pin/node`), so a
/// newer `feip move` written meanwhile survives.
pub(super) async fn remove_pin(
    ctx: &Context,
    f: &FloatingElasticIP,
    node: &str,
) -> Result<PinClear, Error> {
    let api: Api<FloatingElasticIP> =
        Api::namespaced(ctx.client.clone(), &f.namespace().unwrap_or_default());
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "test", "path": "/spec/pin/node", "value": node},
        {"op": "remove", "path": "/spec/pin"},
    ]))?;
    match api
        .patch(
            &f.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(written) => {
            wrote_feip(ctx, written);
            Ok(PinClear::Cleared)
        }
        // A failed test (or a pin already gone) is 422; a conflict 409.
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 409 => {
            tracing::info!(feip = %key(f), pinned = node, reason = %s.message, "pin not cleared: it changed");
            Ok(PinClear::Changed)
        }
        Err(e) => Err(e.into()),
    }
}

/// Longest event note the API accepts (events.k8s.io/v1 `note`: 1 kB).
pub(super) const MAX_EVENT_NOTE_BYTES: usize = 1024;

/// The `action` and `note` of one event. The event recorder folds events with the same
/// reason and action into one series, and a series keeps the note of its first occurrence:
/// with the reason as action, nineteen different holder changes read as nineteen times the
/// first one. The action therefore carries a digest of the note: repeats of one note still
/// aggregate (a failure retried with backoff), a different note is an event of its own.
pub(super) fn event_fields(reason: &str, note: String) -> (String, String) {
    let note = super::status::bounded(note, MAX_EVENT_NOTE_BYTES);
    // FNV-1a: stable across processes and releases (a restarted controller keeps adding to
    // the same series), unlike std's randomly keyed hasher.
    let digest = note.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    // `action` may hold 128 characters; reasons are short PascalCase words.
    let action = format!("{}-{digest:016x}", super::status::bounded(reason, 100));
    (action, note)
}

pub(super) async fn publish(
    ctx: &Context,
    f: &FloatingElasticIP,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let (action, note) = event_fields(reason, note);
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action,
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &f.object_ref(&())).await {
        tracing::debug!(error = %e, "event not published");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(rv: Option<&str>) -> Arc<Lease> {
        let mut l = Lease::default();
        l.metadata.resource_version = rv.map(str::to_string);
        Arc::new(l)
    }

    fn rv(l: Option<Arc<Lease>>) -> Option<String> {
        l.and_then(|l| l.metadata.resource_version.clone())
    }

    #[test]
    fn a_cache_older_than_our_write_gives_way_to_it() {
        let ours = (lease(Some("120")), Instant::now());
        assert_eq!(
            rv(newest(Some(lease(Some("119"))), Some(&ours))),
            Some("120".into())
        );
        // Revisions compare as numbers, not as text.
        let ours = (lease(Some("1000")), Instant::now());
        assert_eq!(
            rv(newest(Some(lease(Some("999"))), Some(&ours))),
            Some("1000".into())
        );
    }

    #[test]
    fn a_cache_as_new_or_newer_than_our_write_wins() {
        let ours = (lease(Some("120")), Instant::now());
        assert_eq!(
            rv(newest(Some(lease(Some("120"))), Some(&ours))),
            Some("120".into())
        );
        assert_eq!(
            rv(newest(Some(lease(Some("121"))), Some(&ours))),
            Some("121".into())
        );
        assert_eq!(rv(newest(Some(lease(Some("5"))), None)), Some("5".into()));
    }

    #[test]
    fn an_object_not_in_the_cache_yet_is_ours() {
        let ours = (lease(Some("7")), Instant::now());
        assert_eq!(rv(newest(None, Some(&ours))), Some("7".into()));
        assert_eq!(rv(newest::<Lease>(None, None)), None);
    }

    #[test]
    fn revisions_that_are_not_numbers_leave_the_cache_in_charge() {
        let ours = (lease(Some("b")), Instant::now());
        assert_eq!(
            rv(newest(Some(lease(Some("a"))), Some(&ours))),
            Some("a".into())
        );
        let ours = (lease(None), Instant::now());
        assert_eq!(
            rv(newest(Some(lease(Some("3"))), Some(&ours))),
            Some("3".into())
        );
    }

    #[test]
    fn our_write_counts_only_within_the_window() {
        let Some(long_ago) = Instant::now().checked_sub(OWN_WRITE_WINDOW + Duration::from_secs(1))
        else {
            return; // a monotonic clock younger than the window (just booted): nothing to test
        };
        let ours = (lease(Some("120")), long_ago);
        assert_eq!(
            rv(newest(Some(lease(Some("119"))), Some(&ours))),
            Some("119".into())
        );
        assert_eq!(rv(newest(None, Some(&ours))), None);
    }
}
