//! Acting on the last EC2 read (spec rules 2 and 5): how old an address read may be when the
//! controller moves the address on it. Within the bound (twice the address's
//! `monitor.interval`) a definitely dead holder is replaced even while every Describe* call
//! is throttled; beyond it the move waits, and status says why; and an old read is never
//! the basis of taking an association somebody made since (a fresh read comes first).
//!
//! Results are summarised in docs/reliability.md.

use std::time::{Duration, Instant};

use feip::testenv::scenario::{Scenario, active_on, condition, wait_ready};
use feip::testenv::{AZ_A, AZ_C, Fault, FaultRule, TestController, ec2_client, wait_for};

fn storm(s: &Scenario) {
    for action in ["DescribeAddresses", "DescribeInstances"] {
        s.proxy.inject(FaultRule::always(action, Fault::Throttle));
    }
}

/// Associations of the scenario's address that reached EC2 since the log was cleared.
fn associates(s: &Scenario) -> usize {
    s.proxy
        .requests()
        .iter()
        .filter(|r| r.action == "AssociateAddress" && r.fault.is_none())
        .count()
}

/// The monitor reads every 4 s; the holder dies right after the first throttled read, when the
/// last good read is at most about 4 s old, and its death (heartbeat timeout 2 s) is known
/// about 2 s later: within the 8 s bound, the address moves during the storm, and the AssociateAddress answer is trusted
/// although no DescribeAddresses can confirm it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holder_is_replaced_during_a_read_storm_when_the_last_read_is_recent()
-> anyhow::Result<()> {
    let mut s = Scenario::new("storm-move", &[AZ_A, AZ_C]).await?;
    s.run().await?;
    s.create(
        "web",
        s.spec(serde_json::json!({"monitor": {"interval": "4s", "timeout": "800ms"}})),
    )
    .await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    s.wait_monitor_passes(1).await?;
    s.proxy.clear_log();

    storm(&s);
    // A monitor pass has failed: the last good read is up to one interval old.
    wait_for("a throttled DescribeAddresses", s.wait, || async {
        Ok((s.proxy.count("DescribeAddresses") > 0).then_some(()))
    })
    .await?;
    let killed = Instant::now();
    s.nodes[0].stop();
    s.wait_association(Some(s.eni(1))).await?;
    let moved = killed.elapsed();
    let describes_answered = s
        .proxy
        .requests()
        .iter()
        .filter(|r| r.action.starts_with("Describe") && r.fault.is_none())
        .count();
    assert_eq!(describes_answered, 0, "the storm lasted through the move");
    assert_eq!(associates(&s), 1, "one AssociateAddress");
    println!(
        "read storm: moved {:.2}s after the holder died, with every Describe* throttled",
        moved.as_secs_f64()
    );
    assert!(
        moved < Duration::from_secs(8),
        "the move took {moved:?}: it waited for the storm"
    );

    s.proxy.clear_faults();
    s.wait_status("web", "active on 1", |st| active_on(st, s.node(1)))
        .await?;
    Ok(())
}

/// With a 1 s monitor interval the bound is 2 s: a read storm that began before the holder
/// died leaves only reads too old to act on. The move waits for a fresh read, status names
/// the age and the bound, and once reads work again the address moves once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_too_old_to_act_on_holds_the_move_and_status_says_why() -> anyhow::Result<()> {
    let mut s = Scenario::new("storm-hold", &[AZ_A, AZ_C]).await?;
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    s.proxy.clear_log();

    storm(&s);
    let too_old = |st: &feip::crd::FloatingElasticIPStatus| {
        condition(st, "Degraded").is_some_and(|c| {
            c.reason == "Ec2Unknown" && c.message.contains("old") && c.message.contains("bound")
        })
    };
    // The last good read has aged past the bound before the holder dies.
    s.wait_status("web", "the read too old", too_old).await?;
    s.nodes[0].stop();
    // The holder's death is decided (the Lease names node 1); the EC2 move waits.
    let st = s
        .wait_status("web", "the move decided and the wait explained", |st| {
            too_old(st) && st.holder.as_ref().is_some_and(|h| h.node == s.node(1))
        })
        .await?;
    let msg = condition(&st, "Degraded").map(|c| c.message.clone());
    assert_eq!(associates(&s), 0, "nothing moved on an old read: {msg:?}");
    assert_eq!(
        s.moto.association(&s.eip.allocation_id).await?.as_deref(),
        Some(s.eni(0))
    );
    println!("read storm, old read: {msg:?}");

    s.proxy.clear_faults();
    s.wait_status("web", "active on 1", |st| active_on(st, s.node(1)))
        .await?;
    assert_eq!(associates(&s), 1, "one AssociateAddress after the storm");
    Ok(())
}

/// The monitor stalls (DescribeInstances answers after 3 s), so its address read ages past
/// the 2 s bound. Meanwhile an operator associates the address to a bastion, and then the
/// holder dies. The controller reads the address afresh before moving it, sees the foreign
/// association and leaves it (rule 5), instead of taking it with `AllowReassociation`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_association_made_after_an_old_read_is_not_taken() -> anyhow::Result<()> {
    let mut s = Scenario::new("storm-foreign", &[AZ_A, AZ_C]).await?;
    let bastion = s.moto.launch_instance(AZ_A).await?;
    // EC2 calls may take up to 2 x 2 s here (the margin and the lease grow with them), so a
    // monitor pass slowed to 3 s by DescribeInstances completes instead of timing out.
    let mut o = s.options("replica-0");
    o.ec2_timeout = Duration::from_secs(2);
    o.safety_margin = Duration::from_millis(4500);
    o.lease_duration = Duration::from_secs(8);
    o.renew_deadline = Duration::from_secs(6);
    let c = TestController::start(s.client.clone(), &s.proxy.url(), o).await?;
    wait_ready(&c, s.wait).await?;
    s.controllers.push(c);
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;

    // Each pass's DescribeInstances takes 3 s, so the address read a pass stores is over 3 s
    // old, above the 2 s bound.
    s.proxy.inject(FaultRule::always(
        "DescribeInstances",
        Fault::Latency(Duration::from_secs(3)),
    ));
    // Wait for a pass that is stuck in DescribeInstances: its address read predates what
    // follows.
    wait_for("a monitor pass stalled", s.wait, || async {
        let stalled = s.proxy.requests().iter().any(|r| {
            r.action == "DescribeInstances"
                && r.fault.is_some()
                && r.forwarded_at.is_none()
                && r.at.elapsed() < Duration::from_millis(500)
        });
        Ok(stalled.then_some(()))
    })
    .await?;
    s.proxy.clear_log();
    let ec2 = ec2_client(s.moto.url()).await;
    ec2.associate_address()
        .allocation_id(&s.eip.allocation_id)
        .network_interface_id(&bastion.network_interface_id)
        .allow_reassociation(true)
        .send()
        .await?;
    s.nodes[0].stop();

    let st = s
        .wait_status("web", "ForeignAssociation", |st| {
            condition(st, "Degraded").is_some_and(|c| c.reason == "ForeignAssociation")
        })
        .await?;
    assert_eq!(
        associates(&s),
        0,
        "the bastion's association was taken: {:?}",
        condition(&st, "Degraded")
    );
    assert_eq!(
        s.moto.association(&s.eip.allocation_id).await?.as_deref(),
        Some(bastion.network_interface_id.as_str())
    );
    Ok(())
}
