//! Heartbeat observation gaps (issue 12, finding H3): when every candidate's kubelet heartbeat
//! goes silent at once, or only this controller's heartbeat-Lease watch stalls, the silence is
//! an observation problem (unknown), not node death: nothing moves. One node's heartbeat
//! stopping while the others renew is still a failover. Real kube-apiserver + etcd, moto
//! behind the fault proxy, the controller in-process.
//!
//! Timings: kubelet-like proportions, scaled down. Heartbeats renew every 4 s, the heartbeat
//! timeout is 10 s. Node 0 (the holder) renews 3.6 s before node 1, and the silence starts
//! right after node 1 renewed, so the holder's heartbeat is the first to age out (6.4 s into
//! the silence) while node 1's is still 3.6 s within its timeout: the order that moved the
//! address A -> B in the review's measurement.
//!
//! Also here (issue 12, finding M7): a probe keeps running for an address whose monitor
//! interval is longer than the probe's idle garbage-collection age.

use std::time::{Duration, Instant};

use feip::controller::HeartbeatClient;
use feip::testenv::scenario::{
    Scenario, active_on, forwarded_associations, wait_association_of, wait_ready,
};
use feip::testenv::tcp_proxy::client_via;
use feip::testenv::{AZ_A, AZ_C, TcpProxy, TestController, wait_for};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

const INTERVAL: Duration = Duration::from_secs(4);
/// How far node 1's renewals trail node 0's.
const STAGGER: Duration = Duration::from_millis(3600);
const TIMEOUT_SECS: u64 = 10;
/// How long the silence lasts: the heartbeat timeout plus 30 s.
const SILENCE: Duration = Duration::from_secs(TIMEOUT_SECS + 30);

/// Two nodes renewing every [`INTERVAL`], an address on node 0 with a TCP probe of the kubelet
/// port (which keeps answering throughout), `heartbeat_client` for the controller's heartbeat
/// watch. Returns once the address is Active on node 0.
async fn setup(name: &str, heartbeat_client: Option<HeartbeatClient>) -> anyhow::Result<Scenario> {
    let mut s = Scenario::new(name, &[]).await?;
    for az in [AZ_A, AZ_C] {
        s.add_node(az, |o| o.heartbeat_interval = INTERVAL).await?;
    }
    let mut opts = s.options("replica-0");
    opts.heartbeat_client = heartbeat_client;
    let c = TestController::start(s.client.clone(), &s.proxy.url(), opts).await?;
    wait_ready(&c, s.wait).await?;
    s.controllers.push(c);
    s.create(
        "web",
        s.spec(serde_json::json!({"health": {
            "heartbeatTimeout": format!("{TIMEOUT_SECS}s"),
            "probe": {"type": "TCP", "period": "1s", "timeout": "500ms", "failureThreshold": 3},
        }})),
    )
    .await?;
    s.wait_association(Some(s.eni(0))).await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    Ok(s)
}

async fn renew_time(s: &Scenario, i: usize) -> anyhow::Result<Option<MicroTime>> {
    s.nodes[i].heartbeat_renew_time().await
}

/// Waits until node `i` renews its heartbeat (its renewTime changes from now).
async fn next_renewal(s: &Scenario, i: usize) -> anyhow::Result<()> {
    let before = renew_time(s, i).await?;
    wait_for(&format!("node {i} to renew"), s.wait, || {
        let before = before.clone();
        async move { Ok((renew_time(s, i).await? != before).then_some(())) }
    })
    .await
}

/// Restarts the heartbeats so node 1 renews [`STAGGER`] after node 0, and returns right after
/// one of node 1's renewals: node 0 last renewed about `STAGGER` ago. (The sleep shapes the
/// renewal phases; it does not wait for anything.)
async fn stagger_and_wait_for_node1(s: &Scenario) -> anyhow::Result<()> {
    s.nodes[0].resume_heartbeat();
    tokio::time::sleep(STAGGER).await;
    s.nodes[1].resume_heartbeat();
    next_renewal(s, 1).await?; // the renewal at resume
    next_renewal(s, 1).await?; // one interval later: node 0 renewed STAGGER before
    Ok(())
}

/// The address's holder Lease: (holder, transitions).
async fn lease_holder(s: &Scenario) -> anyhow::Result<(Option<String>, i32)> {
    let spec = s
        .lease("web")
        .await?
        .and_then(|l| l.spec)
        .unwrap_or_default();
    Ok((
        spec.holder_identity.filter(|h| !h.is_empty()),
        spec.lease_transitions.unwrap_or_default(),
    ))
}

/// For `span`, checks every 250 ms that the holder Lease and the AssociateAddress count stay
/// what they were; fails with when and where the address moved otherwise.
async fn nothing_moves_for(s: &Scenario, span: Duration, what: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let lease = lease_holder(s).await?;
    let associates = forwarded_associations(&s.proxy, &s.eip.allocation_id);
    while started.elapsed() < span {
        let now = lease_holder(s).await?;
        let sent = forwarded_associations(&s.proxy, &s.eip.allocation_id);
        if now != lease || sent != associates {
            let st = s.api.get("web").await?.status;
            anyhow::bail!(
                "{what}: the address moved {:.1}s in: lease {lease:?} -> {now:?}, \
                 AssociateAddress targets {associates:?} -> {sent:?}, last failover {:?}",
                started.elapsed().as_secs_f64(),
                st.and_then(|st| st.last_failover)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Waits for the status to record the failover to node 1, and checks it was a `HolderDead`.
async fn holder_dead_failover_to_node1(s: &Scenario) -> anyhow::Result<()> {
    let st = s
        .wait_status("web", "failover recorded", |st| {
            active_on(st, s.node(1)) && st.last_failover.is_some()
        })
        .await?;
    assert_eq!(
        st.last_failover.as_ref().map(|l| l.reason.as_str()),
        Some("HolderDead"),
        "{st:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kubelet_silent_at_once_is_no_failover() -> anyhow::Result<()> {
    let s = setup("hb-all-silent", None).await?;
    stagger_and_wait_for_node1(&s).await?;
    for n in &s.nodes {
        n.pause_heartbeat();
    }
    nothing_moves_for(&s, SILENCE, "every kubelet silent").await?;
    let st = s.api.get("web").await?.status.unwrap_or_default();
    assert_eq!(st.failover_count, 0, "{st:?}");

    // Node 1's kubelet comes back, node 0's stays silent: heartbeats are being recorded again,
    // so node 0's silence is now a death (within a timeout: the first renewal after a
    // cluster-wide silence of 15 s is a gap and restarts the clocks).
    let started = Instant::now();
    s.nodes[1].resume_heartbeat();
    wait_association_of(
        s.moto,
        &s.eip.allocation_id,
        Some(s.eni(1)),
        Duration::from_secs(TIMEOUT_SECS + 10),
    )
    .await?;
    holder_dead_failover_to_node1(&s).await?;
    println!(
        "every kubelet silent for {}s (timeout {TIMEOUT_SECS}s): 0 failovers; then node 1 \
         renewed again and the address moved {:.1}s later",
        SILENCE.as_secs(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_heartbeat_watch_is_no_failover() -> anyhow::Result<()> {
    // The heartbeat watch alone goes through its own proxy; everything else (caches, status,
    // election) stays on the direct connection.
    let cp = feip::testenv::ControlPlane::shared()?;
    let upstream: std::net::SocketAddr = cp.server().trim_start_matches("https://").parse()?;
    let hb_proxy = TcpProxy::start(upstream).await?;
    let hb_client = client_via(cp.admin_kubeconfig(), hb_proxy.addr()).await?;
    let s = setup("hb-watch-stall", Some(HeartbeatClient(hb_client))).await?;
    stagger_and_wait_for_node1(&s).await?;
    hb_proxy.pause();
    nothing_moves_for(&s, SILENCE, "heartbeat watch stalled").await?;
    let st = s.api.get("web").await?.status.unwrap_or_default();
    assert_eq!(st.failover_count, 0, "{st:?}");

    // The watch delivers again: still no move.
    hb_proxy.resume();
    s.wait_monitor_passes(3).await?;
    nothing_moves_for(&s, Duration::from_secs(3), "after the watch resumed").await?;
    s.wait_status("web", "still active on 0", |st| active_on(st, s.node(0)))
        .await?;

    // Control: the watch still works, a real death behind it is seen.
    let started = Instant::now();
    s.nodes[0].pause_heartbeat();
    s.wait_association(Some(s.eni(1))).await?;
    println!(
        "heartbeat watch stalled for {}s: 0 failovers; afterwards one kubelet's silence moved \
         the address in {:.1}s",
        SILENCE.as_secs(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_kubelet_silent_while_the_others_renew_fails_over() -> anyhow::Result<()> {
    let s = setup("hb-one-silent", None).await?;
    stagger_and_wait_for_node1(&s).await?;
    let (_, transitions) = lease_holder(&s).await?;
    let started = Instant::now();
    s.nodes[0].pause_heartbeat();
    s.wait_association(Some(s.eni(1))).await?;
    let took = started.elapsed();
    holder_dead_failover_to_node1(&s).await?;
    assert_eq!(
        lease_holder(&s).await?,
        (Some(s.node(1).to_string()), transitions + 1)
    );
    // Node 0 last renewed about STAGGER before its pause: it ages out TIMEOUT - STAGGER after.
    let bound = Duration::from_secs(TIMEOUT_SECS) + Duration::from_secs(3);
    assert!(
        took < bound,
        "one kubelet's silence took {took:?} to move the address (bound {bound:?})"
    );
    println!(
        "one kubelet silent (timeout {TIMEOUT_SECS}s): address moved {:.1}s after the pause",
        took.as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_keeps_running_for_an_address_with_a_long_monitor_interval() -> anyhow::Result<()> {
    let mut s = Scenario::new("probe-gc", &[]).await?;
    for az in [AZ_A, AZ_C] {
        s.add_node(az, |o| o.http_port = Some(8080)).await?;
    }
    s.run().await?;
    // "slow" reconciles every 2 min (+-10 %) on its own; only its HTTP probe sees the app die.
    s.create(
        "slow",
        s.spec(serde_json::json!({
            "monitor": {"interval": "2m"},
            "health": {"heartbeatTimeout": "40s", "probe": {"type": "HTTP", "port": 8080,
                "path": "/healthz", "period": "1s", "timeout": "500ms", "failureThreshold": 3}},
        })),
    )
    .await?;
    // "fast", another address on the same nodes, makes the monitor (and with it the probe
    // garbage collection) run every second, as any short interval in the cluster does.
    let other = s.moto.allocate_address().await?;
    s.create(
        "fast",
        s.spec(serde_json::json!({"allocationId": other.allocation_id})),
    )
    .await?;
    for name in ["slow", "fast"] {
        s.wait_status(name, "active on 0", |st| active_on(st, s.node(0)))
            .await?;
    }
    // Past the 60 s idle age after which an unwanted probe is dropped, and well before the
    // slow address's next timer (108 s at the earliest). The sleep is the test's subject.
    tokio::time::sleep(Duration::from_secs(75)).await;
    s.nodes[0].set_http_healthy(false);
    let took = wait_association_of(
        s.moto,
        &s.eip.allocation_id,
        Some(s.eni(1)),
        Duration::from_secs(90),
    )
    .await?;
    // Three failed probes 1 s apart, then one reconcile.
    let bound = Duration::from_secs(10);
    assert!(
        took < bound,
        "the app on node 0 failed 75 s after Active; the address moved {:.1}s later (bound \
         {bound:?})",
        took.as_secs_f64()
    );
    println!(
        "probe with a 2 min monitor interval, app failing 75 s after Active: moved in {:.1}s",
        took.as_secs_f64()
    );
    Ok(())
}
