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

pub(super) async fn publish(
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
