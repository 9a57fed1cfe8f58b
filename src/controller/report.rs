//! The controller's Kubernetes writes other than the holder Lease: the status (replaced as
//! a whole, only when it changed) and events.

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use crate::crd::{FloatingElasticIP, FloatingElasticIPStatus};

use super::Error;
use super::context::Context;

/// Writes the status only when it changed (saves API writes at scale).
pub(super) async fn patch_status(
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
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(patch))?;
    api.patch_status(
        &f.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await?;
    Ok(())
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
