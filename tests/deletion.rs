//! Deletion (rule 9, finding M4 of the safety review): the release on deletion is decided
//! from the same ownership data as every other pass (targets, the status holder, the last
//! known targets, the Lease's recorded slot), and from complete data only. While the facts it
//! needs are missing (instances not described yet, EC2 failing) the finalizer stays and the
//! status says why; nothing is ever dropped on a guess. Real kube-apiserver + etcd, moto
//! behind the fault proxy, the controller in-process. Every wait has a deadline.

use feip::crd::FINALIZER;
use feip::testenv::scenario::{
    Scenario, active_on, condition, degraded_reason, wait_leading, wait_ready,
};
use feip::testenv::{AZ_A, AZ_C, Fault, FaultRule, ec2_client, wait_for};
use kube::ResourceExt;
use kube::api::DeleteParams;

/// What a deleted object came to: gone, or still there with its finalizer and a status
/// saying why the release waits.
#[derive(Debug)]
enum AfterDelete {
    Gone,
    Pending { message: String },
}

/// Waits until the object `name` is gone or reports a pending release (`Blocked=True`,
/// reason `ReleasePending`).
async fn gone_or_pending(s: &Scenario, name: &str) -> anyhow::Result<AfterDelete> {
    wait_for(
        &format!("{name} gone or its release pending"),
        s.wait,
        || async {
            let Some(f) = s.api.get_opt(name).await? else {
                return Ok(Some(AfterDelete::Gone));
            };
            Ok(f.status
                .as_ref()
                .and_then(|st| condition(st, "Blocked"))
                .filter(|c| c.status == "True" && c.reason == "ReleasePending")
                .map(|c| AfterDelete::Pending {
                    message: c.message.clone(),
                }))
        },
    )
    .await
}

async fn wait_gone(s: &Scenario, name: &str) -> anyhow::Result<()> {
    wait_for(&format!("{name} gone"), s.wait, || async {
        Ok(s.api.get_opt(name).await?.is_none().then_some(()))
    })
    .await
}

/// Case 1 of M4: the holder's Node object is deleted (its instance, and the address on its
/// interface, stay), then the object: the address is feip's own association and is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_holder_node_then_deleted_object_releases_the_address() -> anyhow::Result<()> {
    deleted_holder_node_then_deleted_object("del-nodegone", false).await
}

/// The same across a restart: the new leader never saw the Node; the status holder and the
/// holder Lease's recorded slot say the address is feip's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_holder_node_then_restart_then_deleted_object_releases_the_address()
-> anyhow::Result<()> {
    deleted_holder_node_then_deleted_object("del-nodegone-rs", true).await
}

async fn deleted_holder_node_then_deleted_object(name: &str, restart: bool) -> anyhow::Result<()> {
    // One candidate: with the Node gone nobody can take the address over, so it stays on
    // node 0's interface until the object is deleted.
    let mut s = Scenario::new(name, &[AZ_A]).await?;
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_association(Some(s.eni(0))).await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    s.nodes[0].delete().await?;
    s.wait_status("web", "holder seen gone", |st| {
        condition(st, "HolderHealthy").is_some_and(|c| c.status == "False")
    })
    .await?;
    if restart {
        restart_controller(&mut s).await?;
    }
    let before = s.proxy.count("DisassociateAddress");
    s.api.delete("web", &DeleteParams::default()).await?;
    wait_gone(&s, "web").await?;
    let released = s.proxy.count("DisassociateAddress") - before;
    let now = s.moto.association(&s.eip.allocation_id).await?;
    assert_eq!(
        (released, now.as_deref()),
        (1, None),
        "deleting the object must release feip's own association on the deleted node's \
         interface (DisassociateAddress calls, association left)"
    );
    let reasons = s.event_reasons("web").await?;
    assert!(
        reasons.iter().any(|r| r == "Released") && !reasons.iter().any(|r| r == "NotReleased"),
        "a Released event, and no NotReleased from a pass reading EC2 before it caught up: \
         {reasons:?}"
    );
    Ok(())
}

/// A graceful restart: the replica hands over to a new one (no memory of the old one's),
/// which leads once ready.
async fn restart_controller(s: &mut Scenario) -> anyhow::Result<()> {
    for c in &mut s.controllers {
        c.shutdown().await;
    }
    s.controllers.clear();
    let c = s.start_controller("replica-1").await?;
    wait_ready(&c, s.wait).await?;
    wait_leading(&c, s.wait).await?;
    s.controllers.push(c);
    Ok(())
}

/// Case 2 of M4: the address sits on a second interface (device index 1) of a candidate's
/// instance. Apply's ownership guard calls that foreign (the target is device index 0) and
/// never touches it; deleting the object must not touch it either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_object_leaves_a_foreign_association_on_a_candidates_other_interface()
-> anyhow::Result<()> {
    let mut s = Scenario::new("del-otherif", &[AZ_A, AZ_C]).await?;
    let second = s.moto.attach_interface(&s.instances[0], 1).await?;
    ec2_client(s.moto.url())
        .await
        .associate_address()
        .allocation_id(&s.eip.allocation_id)
        .network_interface_id(&second)
        .allow_reassociation(true)
        .send()
        .await?;
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_status("web", "ForeignAssociation", |st| {
        degraded_reason(st) == Some("ForeignAssociation")
    })
    .await?;
    s.wait_monitor_passes(2).await?;
    assert_eq!(s.proxy.count("AssociateAddress"), 0, "the guard holds");
    s.api.delete("web", &DeleteParams::default()).await?;
    wait_gone(&s, "web").await?;
    let released = s.proxy.count("DisassociateAddress");
    let now = s.moto.association(&s.eip.allocation_id).await?;
    assert_eq!(
        (released, now.as_deref()),
        (0, Some(second.as_str())),
        "deleting the object released an association apply reported as foreign \
         (DisassociateAddress calls, association left)"
    );
    Ok(())
}

/// Case 3 of M4: a new leader (a restart) while DescribeInstances fails: it cannot tell
/// whose interface the address is on. The finalizer stays and the status says why; once
/// EC2 answers, the release happens, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_waits_for_instance_facts_after_a_restart_then_releases_once() -> anyhow::Result<()>
{
    let mut s = Scenario::new("del-noinst", &[AZ_A, AZ_C]).await?;
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_association(Some(s.eni(0))).await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    // Restart: the new replica never gets a DescribeInstances answer.
    s.proxy
        .inject(FaultRule::always("DescribeInstances", Fault::ServerError));
    restart_controller(&mut s).await?;
    let before = s.proxy.count("DisassociateAddress");
    s.api.delete("web", &DeleteParams::default()).await?;
    let deleted = std::time::Instant::now();
    let after = gone_or_pending(&s, "web").await?;
    let pending_after = deleted.elapsed();
    let released = s.proxy.count("DisassociateAddress") - before;
    let message = match after {
        AfterDelete::Pending { message } => message,
        AfterDelete::Gone => anyhow::bail!(
            "the finalizer was dropped without the instance facts: {released} \
             DisassociateAddress, association left on {:?}",
            s.moto.association(&s.eip.allocation_id).await?
        ),
    };
    assert!(
        message.contains(&s.instances[0].instance_id),
        "the status names what is missing: {message}"
    );
    // It keeps waiting (and keeps its finalizer) while DescribeInstances fails. Every
    // monitor pass sends one DescribeAddresses and one DescribeInstances: more of the former
    // would be the retries of the release reading the address.
    let reads = |a| s.proxy.count(a);
    let (addresses, instances) = (reads("DescribeAddresses"), reads("DescribeInstances"));
    s.wait_monitor_passes(3).await?;
    let extra_reads = (reads("DescribeAddresses") - addresses)
        .saturating_sub(reads("DescribeInstances") - instances);
    let f = s.api.get("web").await?;
    assert!(
        f.finalizers().iter().any(|x| x == FINALIZER),
        "the finalizer stays"
    );
    assert_eq!(s.proxy.count("DisassociateAddress") - before, 0);
    assert_eq!(
        s.moto.association(&s.eip.allocation_id).await?.as_deref(),
        Some(s.eni(0))
    );
    assert!(
        s.event_reasons("web")
            .await?
            .iter()
            .any(|r| r == "ReleasePending"),
        "a ReleasePending event"
    );
    s.proxy.clear_faults();
    let cleared = std::time::Instant::now();
    wait_gone(&s, "web").await?;
    println!(
        "release pending {}ms after the delete ({message}); {extra_reads} DescribeAddresses \
         beyond the monitor's while pending; released {}ms after DescribeInstances recovered",
        pending_after.as_millis(),
        cleared.elapsed().as_millis()
    );
    let released = s.proxy.count("DisassociateAddress") - before;
    let now = s.moto.association(&s.eip.allocation_id).await?;
    assert_eq!(
        (released, now.as_deref()),
        (1, None),
        "once the instances are described: one release (DisassociateAddress calls, association left)"
    );
    Ok(())
}
