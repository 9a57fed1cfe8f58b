//! Chaos tests: the failover engine under faults of the parts it depends on. Every test runs
//! the real controller in-process against a real kube-apiserver + etcd and moto behind the
//! fault proxy. Destructive tests (restarting the apiserver or etcd) own a private control
//! plane. Every wait has a deadline; the only sleeps pace injected faults (how long a node
//! stays down), they never stand in for waiting on a condition.
//!
//! Results are summarised in docs/reliability.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use feip::crd::Phase;
use feip::leader::Leadership;
use feip::testenv::scenario::{
    Scenario, active_on, condition, degraded_reason, forwarded_associations, holder, wait_leading,
    wait_ready,
};
use feip::testenv::tcp_proxy::client_via;
use feip::testenv::{
    AZ_A, AZ_C, Fault, FaultProxy, FaultRule, TcpProxy, TestController, ec2_client, wait_for,
};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};

/// Disassociates the scenario's address behind the controller's back (straight to moto).
async fn disassociate_externally(s: &Scenario) -> anyhow::Result<()> {
    let ec2 = ec2_client(s.moto.url()).await;
    let described = ec2
        .describe_addresses()
        .allocation_ids(&s.eip.allocation_id)
        .send()
        .await?;
    let assoc = described
        .addresses()
        .first()
        .and_then(|a| a.association_id())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| anyhow::anyhow!("the address is not associated"))?
        .to_string();
    ec2.disassociate_address()
        .association_id(assoc)
        .send()
        .await?;
    Ok(())
}

async fn lease_holder(s: &Scenario, name: &str) -> anyhow::Result<(Option<String>, i32)> {
    let spec = s
        .lease(name)
        .await?
        .and_then(|l| l.spec)
        .unwrap_or_default();
    Ok((
        spec.holder_identity.filter(|h| !h.is_empty()),
        spec.lease_transitions.unwrap_or_default(),
    ))
}

/// Waits until the holder Lease names `node` (the decision is durable).
async fn wait_lease_holder(s: &Scenario, name: &str, node: &str) -> anyhow::Result<i32> {
    wait_for(&format!("lease holder {node}"), s.wait, || async move {
        let (h, t) = lease_holder(s, name).await?;
        Ok((h.as_deref() == Some(node)).then_some(t))
    })
    .await
}

/// Waits until `proxy` has seen an AssociateAddress for `eni` (faulted or not).
async fn wait_associate_attempt(s: &Scenario, proxy: &FaultProxy, eni: &str) -> anyhow::Result<()> {
    wait_for(
        &format!("an AssociateAddress to {eni}"),
        s.wait,
        || async move {
            Ok(proxy
                .requests()
                .iter()
                .any(|r| {
                    r.action == "AssociateAddress"
                        && r.params.get("NetworkInterfaceId").map(String::as_str) == Some(eni)
                })
                .then_some(()))
        },
    )
    .await
}

async fn failover_events(s: &Scenario, name: &str) -> anyhow::Result<usize> {
    Ok(s.event_reasons(name)
        .await?
        .iter()
        .filter(|r| *r == "Failover")
        .count())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Restart {
    Apiserver,
    Etcd,
}

/// Restarts a part of the scenario's private control plane and waits until it serves again.
async fn restart(s: &Scenario, kind: Restart) -> anyhow::Result<Duration> {
    let started = Instant::now();
    match kind {
        Restart::Apiserver => s.cp.restart_apiserver().await?,
        // Down for 3s: longer than the holder's heartbeat margin (renewal every 1.5s, timeout
        // 2s), so heartbeat silence alone would call it dead.
        Restart::Etcd => s.cp.etcd_outage(Duration::from_secs(3)).await?,
    }
    Ok(started.elapsed())
}

/// The shared body of the restart tests (each on a private control plane):
/// 1. a restart while everything is healthy changes nothing: no failover, no remap;
/// 2. a restart in the middle of a failover (holder already moved in the Lease, AssociateAddress
///    in flight and hanging) is completed afterwards, once, with one holder.
async fn restart_during_failover(kind: Restart) -> anyhow::Result<()> {
    let mut s = Scenario::new_private(&format!("chaos-{kind:?}").to_lowercase(), &[]).await?;
    // Apiserver restart: the holder renews its heartbeat every 1.5s (within the 2s timeout),
    // the other node every 300ms: after the outage the other node's renewal is usually seen
    // first, the holder's up to 1.5s later, like a kubelet between two renewals; the watches
    // break and re-list. Etcd outage: the watches stay open and only writes stop, which the
    // controller learns from its own election requests stalling or failing. There both nodes
    // renew every 300ms, and the holder's kubelet comes back 1s after the others (see below).
    // Either way the heartbeat silence of the outage must not count as node death.
    let holder_interval = match kind {
        Restart::Apiserver => Duration::from_millis(1500),
        Restart::Etcd => Duration::from_millis(300),
    };
    s.add_node(AZ_A, |o| o.heartbeat_interval = holder_interval)
        .await?;
    s.add_node(AZ_C, |_| {}).await?;
    s.wait = Duration::from_secs(90);
    match kind {
        Restart::Apiserver => s.run().await?,
        Restart::Etcd => {
            // A leadership that outlives the outage (renew deadline 8s): the replica must not
            // rely on losing and regaining it to notice that nobody could write. What it sees
            // is its own election requests failing, then answered again.
            let mut o = s.options("replica-0");
            o.lease_duration = Duration::from_secs(10);
            o.renew_deadline = Duration::from_secs(8);
            o.safety_margin = Duration::from_secs(2);
            let c = TestController::start(s.client.clone(), &s.proxy.url(), o).await?;
            wait_ready(&c, s.wait).await?;
            s.controllers.push(c);
        }
    }
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_association(Some(s.eni(0))).await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    let (_, epoch) = lease_holder(&s, "web").await?;
    let mut leadership_changes = s.controllers[0].leadership.subscribe();
    leadership_changes.borrow_and_update();
    // The oldest resourceVersion among this scenario's nodes: a watch resumed from it after
    // the restart is what the controller's watchers do.
    let nodes: Api<Node> = Api::all(s.client.clone());
    let old_rv = nodes
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|n| {
            n.metadata
                .name
                .as_deref()
                .is_some_and(|x| x.starts_with(&s.ns))
        })
        .filter_map(|n| n.metadata.resource_version.as_deref()?.parse::<u64>().ok())
        .min()
        .unwrap_or_default()
        .to_string();

    // 1. Restart with every node healthy.
    let replica = &s.controllers[0];
    if kind == Restart::Etcd {
        // The holder's kubelet cannot renew through the outage and is late afterwards (a
        // kubelet in its retry backoff): 0.5s after the API answers this controller again,
        // within the 2s timeout counted from the end of the outage, but long after 2s of
        // silence counted across it (3s down, plus etcd's start). "The end of the outage" is
        // when the controller's own requests are answered again: the test's own readiness
        // check can notice it a second or more later on a loaded machine, which made a
        // lateness counted from that check (1s) exceed the timeout in about 1 of 5 runs.
        s.nodes[0].pause_heartbeat();
    }
    let recovered_before = replica.leadership.api_recovered_at();
    let took = restart(&s, kind).await?;
    if kind == Restart::Etcd {
        let recovered = wait_for(
            "the replica saw the API stall and recover",
            s.wait,
            || async {
                Ok(replica
                    .leadership
                    .api_recovered_at()
                    .filter(|at| Some(*at) != recovered_before))
            },
        )
        .await?;
        // The lateness itself (the fault's shape), counted from that recovery.
        tokio::time::sleep_until((recovered + Duration::from_millis(500)).into()).await;
        s.nodes[0].resume_heartbeat();
    }
    wait_leading(replica, s.wait).await?;
    let kept_leadership = !leadership_changes.has_changed()?;
    if kind == Restart::Etcd {
        assert!(
            kept_leadership,
            "the etcd outage ({took:?}) outlasted the 8s renew deadline: the test no longer exercises a write outage under a kept leadership"
        );
    }
    // A resumed watch from before the restart: does the apiserver answer 410 Gone (the
    // controller's watchers then re-list)?
    let gone = match nodes
        .watch(&WatchParams::default().timeout(2), &old_rv)
        .await
    {
        Ok(stream) => {
            use futures::TryStreamExt;
            let events: Vec<WatchEvent<Node>> = stream.try_collect().await.unwrap_or_default();
            events
                .iter()
                .any(|e| matches!(e, WatchEvent::Error(err) if err.code == 410))
        }
        Err(kube::Error::Api(st)) => st.code == 410,
        Err(_) => false,
    };
    s.wait_monitor_passes(4).await?;
    assert_eq!(
        lease_holder(&s, "web").await?,
        (Some(s.node(0).into()), epoch),
        "a {kind:?} restart moved the holder"
    );
    let st = s
        .wait_status("web", "still active on 0", |st| active_on(st, s.node(0)))
        .await?;
    assert_eq!(st.failover_count, 0, "a {kind:?} restart caused a failover");
    assert_eq!(
        forwarded_associations(&s.proxy, &s.eip.allocation_id),
        vec![s.eni(0).to_string()],
        "a {kind:?} restart caused a remap"
    );
    assert_eq!(
        lease_holder(&s, "web").await?,
        (Some(s.node(0).into()), epoch)
    );
    println!(
        "{kind:?} restart with healthy nodes: restart took {:.1}s, no failover, no remap, leadership {}; resumed watch from before: {}",
        took.as_secs_f64(),
        if kept_leadership {
            "kept"
        } else {
            "lost and regained"
        },
        if gone { "410 Gone" } else { "resumed" }
    );

    // 2. Restart mid-failover: the new holder is durable in the Lease and the association is
    // in flight (hanging) when the restart begins.
    s.proxy
        .inject(FaultRule::always("AssociateAddress", Fault::Hang));
    s.nodes[0].stop();
    let transitions = wait_lease_holder(&s, "web", s.node(1)).await?;
    assert_eq!(transitions, epoch + 1);
    wait_associate_attempt(&s, &s.proxy, s.eni(1)).await?;
    let took = restart(&s, kind).await?;
    s.proxy.clear_faults();
    s.wait_association(Some(s.eni(1))).await?;
    let st = s
        .wait_status("web", "failover completed on 1", |st| {
            active_on(st, s.node(1)) && st.failover_count == 1
        })
        .await?;
    assert_eq!(
        st.last_failover.as_ref().map(|l| l.to.as_str()),
        Some(s.node(1))
    );
    // The watches broke with the restart: the completed failover shows the controller kept
    // reconciling from fresh caches. And the failover happened exactly once.
    s.wait_monitor_passes(3).await?;
    assert_eq!(
        forwarded_associations(&s.proxy, &s.eip.allocation_id),
        vec![s.eni(0).to_string(), s.eni(1).to_string()],
        "exactly one remap for one failover"
    );
    assert_eq!(
        lease_holder(&s, "web").await?,
        (Some(s.node(1).into()), epoch + 1)
    );
    assert_eq!(
        s.moto.association(&s.eip.allocation_id).await?.as_deref(),
        Some(s.eni(1))
    );
    println!(
        "{kind:?} restart mid-failover: restart took {:.1}s; failover completed once ({}s detection to confirmation)",
        took.as_secs_f64(),
        st.last_failover
            .and_then(|l| l.duration_seconds)
            .unwrap_or_default()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_restart_causes_no_failover_and_completes_a_failover_in_flight()
-> anyhow::Result<()> {
    restart_during_failover(Restart::Apiserver).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_causes_no_failover_and_completes_a_failover_in_flight() -> anyhow::Result<()>
{
    restart_during_failover(Restart::Etcd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_failover_the_new_leader_completes_it_once() -> anyhow::Result<()> {
    let mut s = Scenario::new("chaos-kill", &[AZ_A, AZ_C]).await?;
    let a = s.start_controller("replica-a").await?;
    wait_leading(&a, s.wait).await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_association(Some(s.eni(0))).await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    let b = s.start_controller("replica-b").await?;
    wait_ready(&b, s.wait).await?;
    let (_, epoch) = lease_holder(&s, "web").await?;

    // a starts the failover: the new holder is written, the association hangs.
    s.proxy
        .inject(FaultRule::always("AssociateAddress", Fault::Hang));
    s.nodes[0].stop();
    wait_lease_holder(&s, "web", s.node(1)).await?;
    wait_associate_attempt(&s, &s.proxy, s.eni(1)).await?;
    assert_eq!(
        s.moto.association(&s.eip.allocation_id).await?.as_deref(),
        Some(s.eni(0)),
        "the hung call must not have reached EC2"
    );
    s.controllers.push(a);
    s.controllers[0].kill();
    s.proxy.clear_faults();

    wait_leading(&b, s.wait).await?;
    s.wait_association(Some(s.eni(1))).await?;
    let st = s
        .wait_status("web", "active on 1", |st| active_on(st, s.node(1)))
        .await?;
    s.wait_monitor_passes(3).await?;
    assert_eq!(
        forwarded_associations(&s.proxy, &s.eip.allocation_id),
        vec![s.eni(0).to_string(), s.eni(1).to_string()],
        "the new leader completed the failover with exactly one remap"
    );
    assert_eq!(
        lease_holder(&s, "web").await?,
        (Some(s.node(1).into()), epoch + 1)
    );
    let f = s.api.get("web").await?;
    assert!(
        f.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|x| x == feip::crd::FINALIZER),
        "the object is still managed"
    );
    assert_eq!(
        st.failover_count, 1,
        "the failover the old leader started is recorded by the new one: {st:?}"
    );
    assert_eq!(
        st.last_failover
            .as_ref()
            .map(|l| (l.from.as_deref(), l.to.as_str())),
        Some((Some(s.node(0)), s.node(1)))
    );
    s.controllers.push(b);
    Ok(())
}

/// Samples two replicas' `can_mutate()` every 10 ms (observation, not synchronisation).
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(Instant, bool, bool)>>,
}

impl Sampler {
    fn start(a: &Leadership, b: &Leadership) -> Self {
        let (a, b) = (a.clone(), b.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                // `a` on both sides of `b`, so a handover between reads is not a violation.
                let a1 = a.can_mutate();
                let bm = b.can_mutate();
                let a2 = a.can_mutate();
                samples.push((Instant::now(), a1 && a2, bm));
            }
            samples
        });
        Self { stop, task }
    }

    async fn finish(self) -> anyhow::Result<Vec<(Instant, bool, bool)>> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_leader_stops_mutating_before_the_new_leader_starts() -> anyhow::Result<()> {
    let mut s = Scenario::new("chaos-partition", &[AZ_A, AZ_C]).await?;
    // Replica a reaches the apiserver through a proxy that can be partitioned; it reaches EC2
    // through the scenario's fault proxy. Replica b reaches both directly, EC2 through its own
    // proxy, so each replica's EC2 calls are logged apart.
    let upstream: std::net::SocketAddr = s.cp.server().trim_start_matches("https://").parse()?;
    let api_proxy = TcpProxy::start(upstream).await?;
    let a_client = client_via(s.cp.admin_kubeconfig(), api_proxy.addr()).await?;
    let a = TestController::start(a_client, &s.proxy.url(), s.options("replica-a")).await?;
    wait_leading(&a, s.wait).await?;
    // Drift is repaired in place (threshold 3): replica a has a path to AssociateAddress that
    // no Lease write precedes, so only its leadership gate can stop it.
    s.create("web", s.spec(serde_json::json!({"migrationThreshold": 3})))
        .await?;
    s.wait_association(Some(s.eni(0))).await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    let b_ec2 = FaultProxy::start(s.moto.url()).await?;
    let b = TestController::start(s.client.clone(), &b_ec2.url(), s.options("replica-b")).await?;
    wait_ready(&b, s.wait).await?;
    let sampler = Sampler::start(&a.leadership, &b.leadership);

    // The partition: a loses the apiserver, keeps EC2. At the same moment the address drifts
    // (a sees it on its next monitor pass and wants to put it back on node 0) and node 0
    // dies (b, once leader, moves the address to node 1).
    let cut_at = Instant::now();
    api_proxy.pause();
    disassociate_externally(&s).await?;
    s.nodes[0].stop();

    wait_leading(&b, s.wait).await?;
    let b_led_after = cut_at.elapsed();
    s.wait_association(Some(s.eni(1))).await?;
    s.wait_status("web", "active on 1", |st| active_on(st, s.node(1)))
        .await?;
    assert!(!a.leadership.can_mutate() && !a.leadership.is_leader());

    // The partition heals: whatever a had in flight is delivered now, with its stale view.
    api_proxy.resume();
    s.wait_monitor_passes_on(&b_ec2, 4).await?;
    let st = s
        .wait_status("web", "still active on 1", |st| active_on(st, s.node(1)))
        .await?;
    let samples = sampler.finish().await?;

    assert!(
        samples.iter().all(|(_, am, bm)| !(*am && *bm)),
        "both replicas could mutate EC2 at the same time"
    );
    let a_last_allowed = samples
        .iter()
        .filter(|(_, am, _)| *am)
        .map(|(at, _, _)| *at)
        .max();
    let b_first_allowed = samples
        .iter()
        .filter(|(_, _, bm)| *bm)
        .map(|(at, _, _)| *at)
        .min()
        .ok_or_else(|| anyhow::anyhow!("b never led"))?;
    if let Some(a_last) = a_last_allowed {
        assert!(a_last < b_first_allowed, "a could still mutate after b led");
    }
    let mutating = |p: &FaultProxy| {
        p.requests()
            .into_iter()
            .filter(|r| r.action == "AssociateAddress" || r.action == "DisassociateAddress")
            .collect::<Vec<_>>()
    };
    let a_late: Vec<_> = mutating(&s.proxy)
        .into_iter()
        .filter(|r| r.at >= b_first_allowed)
        .collect();
    assert!(
        a_late.is_empty(),
        "the partitioned replica mutated EC2 after the new leader started: {a_late:?}"
    );
    let a_during: Vec<String> = mutating(&s.proxy)
        .into_iter()
        .filter(|r| r.at >= cut_at)
        .map(|r| r.action)
        .collect();
    assert_eq!(
        forwarded_associations(&b_ec2, &s.eip.allocation_id),
        vec![s.eni(1).to_string()],
        "the new leader moved the address once and never had to take it back"
    );
    assert_eq!(
        s.moto.association(&s.eip.allocation_id).await?.as_deref(),
        Some(s.eni(1))
    );
    assert_eq!(st.failover_count, 1, "{st:?}");
    let drift_seen_by_a = s.event_reasons("web").await?.iter().any(|r| r == "Drift");
    println!(
        "partition: b led {:.2}s after the cut; a's EC2 mutations after the cut: {a_during:?}; a reported the drift (delivered after the heal): {drift_seen_by_a}",
        b_led_after.as_secs_f64()
    );
    s.controllers.push(a);
    s.controllers.push(b);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_ec2_calls_stay_bounded_and_never_wedge_reconciliation() -> anyhow::Result<()> {
    let mut s = Scenario::new("chaos-hang", &[AZ_A, AZ_C]).await?;
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    // A second address whose reconciles must go on while web's EC2 calls hang.
    let eip2 = s.moto.allocate_address().await?;
    let mut other = s.spec(serde_json::json!({}));
    other["allocationId"] = eip2.allocation_id.clone().into();
    other["candidates"] = serde_json::json!([{"node": s.node(1)}, {"node": s.node(0)}]);
    s.create("other", other).await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    s.wait_status("other", "active on 1", |st| active_on(st, s.node(1)))
        .await?;

    // DescribeAddresses hangs: the monitor's calls time out (unknown), keep coming, and move
    // nothing.
    s.proxy
        .inject(FaultRule::always("DescribeAddresses", Fault::Hang));
    let hung_from = Instant::now();
    let st = s
        .wait_status("web", "Degraded=Ec2Unknown", |st| {
            degraded_reason(st) == Some("Ec2Unknown")
        })
        .await?;
    assert_eq!(holder(&st), Some(s.node(0)));
    let first = s.proxy.count("DescribeAddresses");
    s.wait_monitor_passes(3).await?;
    let describe_gap =
        hung_from.elapsed().as_secs_f64() / (s.proxy.count("DescribeAddresses") - first + 1) as f64;
    s.proxy.clear_faults();
    let st = s
        .wait_status("web", "recovers", |st| {
            active_on(st, s.node(0)) && degraded_reason(st).is_none()
        })
        .await?;
    assert_eq!(st.failover_count, 0);

    // AssociateAddress hangs during a failover: each attempt is bounded, retried with backoff,
    // and other addresses keep being reconciled meanwhile.
    s.proxy
        .inject(FaultRule::always("AssociateAddress", Fault::Hang));
    s.nodes[0].stop();
    wait_associate_attempt(&s, &s.proxy, s.eni(1)).await?;
    let st = s
        .wait_status("web", "Ec2Unknown while the associate hangs", |st| {
            degraded_reason(st) == Some("Ec2Unknown") && st.phase == Some(Phase::Associating)
        })
        .await?;
    assert_eq!(holder(&st), Some(s.node(1)));
    s.patch_spec(
        "other",
        serde_json::json!({"cleanup": {"requestId": "during-hang"}}),
    )
    .await?;
    s.wait_status("other", "other reconciled during the hang", |st| {
        st.last_cleanup_request_id.as_deref() == Some("during-hang")
    })
    .await?;
    // The failed attempt is retried: a second hung attempt arrives.
    let attempts = |p: &FaultProxy| {
        p.requests()
            .iter()
            .filter(|r| r.action == "AssociateAddress" && r.fault == Some(Fault::Hang))
            .count()
    };
    let before = attempts(&s.proxy);
    wait_for("a retried associate", s.wait, || async {
        Ok((attempts(&s.proxy) > before).then_some(()))
    })
    .await?;
    s.proxy.clear_faults();
    s.wait_association(Some(s.eni(1))).await?;
    let st = s
        .wait_status("web", "failover completes", |st| {
            active_on(st, s.node(1)) && st.failover_count == 1
        })
        .await?;
    assert_eq!(
        forwarded_associations(&s.proxy, &s.eip.allocation_id)
            .iter()
            .filter(|e| *e == s.eni(1))
            .count(),
        1,
        "one association to the new holder once EC2 answered"
    );
    println!(
        "hung EC2: a DescribeAddresses attempt every {describe_gap:.1}s while hanging; {} hung AssociateAddress attempts before recovery; failover took {}s",
        attempts(&s.proxy),
        st.last_failover
            .and_then(|l| l.duration_seconds)
            .unwrap_or_default()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watch_connections_do_not_flap_and_do_not_stop_reconciling() -> anyhow::Result<()> {
    let mut s = Scenario::new("chaos-watch", &[AZ_A, AZ_C]).await?;
    let upstream: std::net::SocketAddr = s.cp.server().trim_start_matches("https://").parse()?;
    let api_proxy = TcpProxy::start(upstream).await?;
    let client = client_via(s.cp.admin_kubeconfig(), api_proxy.addr()).await?;
    let c = TestController::start(client, &s.proxy.url(), s.options("replica-0")).await?;
    wait_ready(&c, s.wait).await?;
    s.controllers.push(c);
    // A heartbeat timeout well above kube-runtime's first watch retry backoff (800 ms).
    s.create(
        "web",
        s.spec(serde_json::json!({"health": {"heartbeatTimeout": "5s"}})),
    )
    .await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;

    // Every connection of the controller dropped, three times, a few seconds apart.
    for _ in 0..3 {
        let before = api_proxy.connections_accepted();
        api_proxy.reset();
        wait_for("the controller to reconnect", s.wait, || async {
            Ok((api_proxy.connections_accepted() > before).then_some(()))
        })
        .await?;
        s.wait_monitor_passes(2).await?;
    }
    let st = s
        .wait_status("web", "still active on 0", |st| active_on(st, s.node(0)))
        .await?;
    assert_eq!(st.failover_count, 0, "dropped watches caused a failover");
    assert_eq!(
        forwarded_associations(&s.proxy, &s.eip.allocation_id).len(),
        1
    );

    // The watches were re-established: a node failure is still seen and handled.
    s.nodes[0].stop();
    s.wait_association(Some(s.eni(1))).await?;
    s.wait_status("web", "failover after the watch breaks", |st| {
        active_on(st, s.node(1)) && st.failover_count == 1
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_and_probe_flapping_faster_than_thresholds_causes_no_ping_pong()
-> anyhow::Result<()> {
    let mut s = Scenario::new("chaos-flap", &[AZ_A, AZ_C]).await?;
    s.run().await?;
    // Dead after 2s without a heartbeat, or after 4 failed probes 500ms apart (2s).
    s.create(
        "web",
        s.spec(
            serde_json::json!({"health": {"heartbeatTimeout": "2s", "probe": {
            "type": "TCP", "period": "500ms", "timeout": "200ms", "failureThreshold": 4}}}),
        ),
    )
    .await?;
    s.wait_association(Some(s.eni(0))).await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    let (_, epoch) = lease_holder(&s, "web").await?;

    // The holder's machine stops for 1s (heartbeat and kubelet port), comes back for 0.6s,
    // ten times: each outage is half the thresholds. The sleeps are the fault's shape.
    let flaps = 10;
    for _ in 0..flaps {
        s.nodes[0].stop();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        s.nodes[0].resume().await?;
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    s.wait_monitor_passes(2).await?;
    let st = s
        .wait_status("web", "still active on 0", |st| active_on(st, s.node(0)))
        .await?;
    assert_eq!(st.failover_count, 0, "flapping moved the address: {st:?}");
    assert_eq!(
        forwarded_associations(&s.proxy, &s.eip.allocation_id).len(),
        1,
        "flapping caused a remap"
    );
    assert_eq!(
        lease_holder(&s, "web").await?,
        (Some(s.node(0).into()), epoch)
    );
    assert_eq!(failover_events(&s, "web").await?, 0);
    assert!(
        condition(&st, "HolderHealthy").is_some_and(|c| c.status == "True"),
        "{st:?}"
    );

    // Control: an outage longer than the thresholds does move it (the test can fail).
    s.nodes[0].stop();
    s.wait_association(Some(s.eni(1))).await?;
    println!("flapping: {flaps} outages of 1s (thresholds 2s): 0 failovers, 0 remaps");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_associate_whose_answer_is_lost_is_not_repeated() -> anyhow::Result<()> {
    let mut s = Scenario::new("chaos-lost", &[AZ_A, AZ_C]).await?;
    s.run().await?;
    // A long monitor interval: the controller's snapshot stays old, as it would between two
    // passes at the default 10s.
    s.create(
        "web",
        s.spec(serde_json::json!({"monitor": {"interval": "10s"}})),
    )
    .await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    // Both SDK attempts of the failover's AssociateAddress hang; meanwhile EC2 carries the
    // association out (done here straight in moto): the call "times out" at the controller
    // but happened, the classic unknown outcome.
    s.proxy
        .inject(FaultRule::times("AssociateAddress", 2, Fault::Hang));
    s.nodes[0].stop();
    wait_for("both attempts hanging", s.wait, || async {
        Ok((s.proxy.count("AssociateAddress") >= 2).then_some(()))
    })
    .await?;
    ec2_client(s.moto.url())
        .await
        .associate_address()
        .allocation_id(&s.eip.allocation_id)
        .network_interface_id(s.eni(1))
        .allow_reassociation(true)
        .send()
        .await?;
    let st = s
        .wait_status("web", "failover recorded", |st| {
            active_on(st, s.node(1)) && st.failover_count == 1
        })
        .await?;
    assert_eq!(
        forwarded_associations(&s.proxy, &s.eip.allocation_id),
        vec![s.eni(0).to_string()],
        "the controller repeated an associate that had already happened (a needless remap)"
    );
    println!(
        "lost answer: no repeated AssociateAddress; failover took {}s",
        st.last_failover
            .and_then(|l| l.duration_seconds)
            .unwrap_or_default()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_node_object_deleted_the_address_moves_on() -> anyhow::Result<()> {
    let mut s = Scenario::new("chaos-nodegone", &[AZ_A, AZ_C]).await?;
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_association(Some(s.eni(0))).await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    // The holder's Node object is deleted (kubectl delete node, a scale-down) while its
    // instance, and the address on its interface, stay: the address must move to node 1,
    // not be mistaken for somebody else's.
    s.nodes[0].delete().await?;
    s.wait_association(Some(s.eni(1))).await?;
    let st = s
        .wait_status("web", "active on 1", |st| active_on(st, s.node(1)))
        .await?;
    assert!(degraded_reason(&st) != Some("ForeignAssociation"), "{st:?}");
    Ok(())
}
