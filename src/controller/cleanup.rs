//! Finalizer cleanup (client): release the association on deletion (unless retained,
//! observe-only, or the address is not on a candidate), then delete the holder Lease.

use std::sync::Arc;

use jiff::Timestamp;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use crate::aws::{Ec2Error, instance_id_from_provider_id};
use crate::crd::{FloatingElasticIP, Management, ReleasePolicy};

use super::Error;
use super::context::{Context, key, lock};
use super::holder_lease;
use super::observe::{conflicting_owner, listed_candidates};
use super::report::{patch_status, publish};
use super::status::blocked_release_status;

/// Deletion: release the association (unless retained or observe-only), then drop the Lease.
pub(super) async fn cleanup(
    f: Arc<FloatingElasticIP>,
    ctx: Arc<Context>,
) -> Result<Requeue, Error> {
    let k = key(&f);
    // An object that lost an address conflict never managed the address: releasing it would
    // take the owner's address away.
    let retain = f.spec.release_policy == Some(ReleasePolicy::Retain)
        || f.spec.management == Some(Management::ObserveOnly)
        || conflicting_owner(&f, &ctx.snapshot(&f), None).is_some();
    if !retain {
        let (allocs, ips): (Vec<String>, Vec<String>) = (
            f.spec.allocation_id.iter().cloned().collect(),
            f.spec.public_ip.iter().cloned().collect(),
        );
        let current = ctx
            .ec2
            .describe_addresses(&allocs, &ips)
            .await
            .map_err(|e| {
                report_blocked_release(
                    &ctx,
                    &f,
                    format!("cannot read the address before release: {e}"),
                )
            })?;
        let info = current.by_allocation.values().next().cloned();
        // Only release an association to one of our candidates (ownership guard).
        let ours = info
            .as_ref()
            .and_then(|a| a.network_interface_id.as_ref())
            .is_some_and(|eni| {
                let v = lock(&ctx.view);
                listed_candidates(&f, &ctx.nodes).iter().any(|l| {
                    ctx.nodes
                        .get(&ObjectRef::new(&l.node))
                        .and_then(|n| n.spec.clone())
                        .and_then(|s| s.provider_id)
                        .and_then(|p| instance_id_from_provider_id(&p))
                        .and_then(|id| v.instances.get(&id).cloned())
                        .is_some_and(|i| {
                            i.interfaces.iter().any(|x| &x.network_interface_id == eni)
                        })
                })
            });
        tracing::debug!(feip = %k, ?info, ours, "releasing on deletion");
        if let (Some(info), true) = (&info, ours)
            && let Some(assoc) = &info.association_id
        {
            if !ctx.leadership.can_mutate() {
                return Err(Error::LeadershipLost("during release"));
            }
            ctx.ec2
                .disassociate(&ctx.leadership, assoc)
                .await
                .map_err(|e| match e {
                    Ec2Error::NotSent { .. } => Error::LeadershipLost("during release"),
                    e => {
                        report_blocked_release(&ctx, &f, format!("DisassociateAddress failed: {e}"))
                    }
                })?;
            let mut released = info.clone();
            released.association_id = None;
            released.network_interface_id = None;
            released.private_ip = None;
            released.instance_id = None;
            lock(&ctx.view).record_unseen(released, info.association_id.clone());
            publish(
                &ctx,
                &f,
                EventType::Normal,
                "Released",
                format!("{} disassociated on deletion", info.public_ip),
            )
            .await;
        }
    }
    holder_lease::delete(&ctx.client, &ctx.leadership, &f).await?;
    lock(&ctx.memory).remove(&k);
    lock(&ctx.slots).forget(&k);
    Ok(Requeue::await_change())
}

/// Records a blocked release: Warning event + Blocked condition; the finalizer stays.
fn report_blocked_release(ctx: &Arc<Context>, f: &Arc<FloatingElasticIP>, msg: String) -> Error {
    let (ctx, f, m) = (ctx.clone(), f.clone(), msg.clone());
    tokio::spawn(async move {
        publish(&ctx, &f, EventType::Warning, "Blocked", m.clone()).await;
        let status = blocked_release_status(&f, m, Timestamp::now());
        if let Err(e) = patch_status(&ctx, &f, status).await {
            tracing::debug!(error = %e, "blocked status not written");
        }
    });
    Error::Blocked(msg)
}
