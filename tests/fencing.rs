//! Fenced writes (issue 12 item 5, findings M1/M2 of the safety review): the controller's
//! Kubernetes writes never rest on a cache older than its own last write, and a write made
//! from an old reading does not overwrite a newer one (counts, bans, an operator's newer
//! `feip move`). Real kube-apiserver + etcd, moto behind the fault proxy, the controller
//! in-process. Every wait has a deadline; nothing sleeps.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use feip::crd::FloatingElasticIP;
use feip::testenv::scenario::{
    Scenario, active_on, forwarded_associations, wait_leading, wait_ready,
};
use feip::testenv::tcp_proxy::client_via;
use feip::testenv::{AZ_A, AZ_C, Fault, FaultRule, TestController, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ApiResource, DynamicObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP proxy to the apiserver that delays what the server sends on a connection while the
/// client has sent nothing on it for a while: the events of a watch (pushed long after its
/// request) arrive `lag` late, the answers to requests (which follow the request at once) do
/// not. A watch cache that lags behind the controller's own writes, as under load.
struct LaggingWatches {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

/// Server bytes that follow client bytes within this are an answer, later ones are pushed.
const ANSWER_WITHIN: Duration = Duration::from_millis(150);

impl LaggingWatches {
    async fn start(upstream: SocketAddr, lag: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(upstream).await {
                        relay(inbound, outbound, lag).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for LaggingWatches {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(inbound: TcpStream, outbound: TcpStream, lag: Duration) {
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let last_sent = Arc::new(Mutex::new(Instant::now()));
    let sent = last_sent.clone();
    let upstream = async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = in_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            *sent.lock().unwrap() = Instant::now();
            if out_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = out_write.shutdown().await;
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let downstream_read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut due_prev = Instant::now();
        while let Ok(n) = out_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let now = Instant::now();
            let pushed = now.duration_since(*last_sent.lock().unwrap()) > ANSWER_WITHIN;
            // Order is kept: nothing overtakes a delayed chunk.
            let due = (if pushed { now + lag } else { now }).max(due_prev);
            due_prev = due;
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let downstream_write = async move {
        // The network's delay, not a synchronisation.
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            if in_write.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = in_write.shutdown().await;
    };
    tokio::join!(upstream, downstream_read, downstream_write);
}

/// Starts the scenario's replica with its kube connections through [`LaggingWatches`].
async fn run_with_lagging_watches(
    s: &mut Scenario,
    lag: Duration,
) -> anyhow::Result<LaggingWatches> {
    let server: SocketAddr =
        s.cp.server()
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .parse()?;
    let proxy = LaggingWatches::start(server, lag).await?;
    let client = client_via(s.cp.admin_kubeconfig(), proxy.addr).await?;
    let c = TestController::start(client, &s.proxy.url(), s.options("replica-0")).await?;
    wait_ready(&c, s.wait).await?;
    s.controllers.push(c);
    Ok(proxy)
}

/// Completed node -> node holder changes the status records: failovers plus planned moves
/// (read as raw JSON so that the count is the same whichever fields the status has).
async fn recorded_changes(s: &Scenario, name: &str) -> anyhow::Result<(i64, serde_json::Value)> {
    let ar = ApiResource::erase::<FloatingElasticIP>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(s.client.clone(), &s.ns, &ar);
    let status = api
        .get(name)
        .await?
        .data
        .get("status")
        .cloned()
        .unwrap_or_default();
    let count = |field: &str| status.get(field).and_then(serde_json::Value::as_i64);
    let total = count("failoverCount").unwrap_or(0) + count("plannedMoveCount").unwrap_or(0);
    Ok((total, status))
}

async fn lease_transitions(s: &Scenario, name: &str) -> anyhow::Result<i32> {
    Ok(s.lease(name)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0))
}

/// Completed holder changes the replica's metrics count (failovers and planned moves).
fn completed_in_metrics(c: &TestController) -> f64 {
    c.metrics
        .encode()
        .lines()
        .filter(|l| {
            l.starts_with("feip_failovers_total{") || l.starts_with("feip_planned_moves_total{")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `feip move NAME --to NODE`: the pin the CLI writes.
async fn feip_move(s: &Scenario, name: &str, node: &str) -> anyhow::Result<()> {
    s.patch_spec(name, feip::cli::move_patch(node)).await
}

/// Waits until the (slowed) AssociateAddress to `eni` has reached the EC2 proxy, which means
/// the decision is on the Lease (it is written first); returns the request's sequence number.
async fn wait_slow_associate(s: &Scenario, eni: &str) -> anyhow::Result<u64> {
    wait_for(&format!("an AssociateAddress to {eni}"), s.wait, || async {
        Ok(s.proxy
            .requests()
            .iter()
            .find(|r| {
                r.action == "AssociateAddress"
                    && r.params.get("NetworkInterfaceId").map(String::as_str) == Some(eni)
            })
            .map(|r| r.seq))
    })
    .await
}

/// The request `seq` was still unanswered at `at`: what the test did then happened while the
/// associate was in flight (otherwise the test would not exercise the race it is about).
fn assert_pending_at(s: &Scenario, seq: u64, at: Instant, what: &str) -> anyhow::Result<()> {
    let answered = s
        .proxy
        .requests()
        .iter()
        .find(|r| r.seq == seq)
        .and_then(|r| r.answered_at);
    anyhow::ensure!(
        answered.is_none_or(|a| a > at),
        "{what} came after the slow AssociateAddress was answered: the race was not exercised"
    );
    Ok(())
}

/// Many `feip move`s in a row, each started as soon as the previous one is done (pin cleared,
/// status active on the new node): every holder change on the Lease is counted once in the
/// status. The pass after a completed move can read the object from a watch cache that does
/// not have that pass's status write yet; a status built from it overwrote the count.
#[tokio::test]
async fn back_to_back_moves_are_each_counted_once() -> anyhow::Result<()> {
    const MOVES: usize = 20;
    let mut s = Scenario::new("fence-moves", &[AZ_A, AZ_C]).await?;
    let _lag = run_with_lagging_watches(&mut s, Duration::from_millis(400)).await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    let start = lease_transitions(&s, "web").await?;
    let mut lost_at = Vec::new();
    for i in 0..MOVES {
        let to = (i + 1) % 2;
        feip_move(&s, "web", s.node(to)).await?;
        wait_for("the move done (pin cleared)", s.wait, || async {
            let f = s.api.get("web").await?;
            let done = f.spec.pin.is_none()
                && f.status
                    .as_ref()
                    .is_some_and(|st| active_on(st, s.node(to)));
            Ok(done.then_some(()))
        })
        .await
        .map_err(|e| anyhow::anyhow!("move {} to {}: {e}", i + 1, s.node(to)))?;
        let (recorded, _) = recorded_changes(&s, "web").await?;
        let changes = i64::from(lease_transitions(&s, "web").await? - start);
        if recorded < changes {
            lost_at.push((i + 1, changes - recorded));
        }
    }
    // Let the passes after the last move run, then compare.
    s.wait_monitor_passes(2).await?;
    let changes = i64::from(lease_transitions(&s, "web").await? - start);
    let (recorded, status) = recorded_changes(&s, "web").await?;
    assert_eq!(changes, MOVES as i64, "Lease transitions");
    assert_eq!(
        recorded, changes,
        "{MOVES} moves, {changes} Lease transitions, {recorded} recorded in status; \
         short after moves (move, missing): {lost_at:?}; status: {status}"
    );
    let counted = completed_in_metrics(&s.controllers[0]);
    assert_eq!(
        counted, MOVES as f64,
        "{MOVES} moves, feip_failovers_total + feip_planned_moves_total = {counted}"
    );
    let last = status
        .get("lastPlannedMove")
        .or_else(|| status.get("lastFailover"))
        .and_then(|l| l.get("to"))
        .and_then(serde_json::Value::as_str);
    assert_eq!(last, Some(s.node(MOVES % 2)), "{status}");
    assert_eq!(
        s.proxy.count("AssociateAddress"),
        MOVES + 1,
        "one remap per move (plus the first association)"
    );
    Ok(())
}

/// M2 scenario 1: `feip move --to n1`, and while n1's (slow) AssociateAddress runs, `feip move
/// --to n2`. The pass completing n1 must not clear the operator's newer pin: the address ends
/// on n2 with the pin cleared by the pass that completes n2.
#[tokio::test]
async fn a_newer_move_survives_the_completion_of_the_previous_one() -> anyhow::Result<()> {
    let mut s = Scenario::new("fence-pin", &[AZ_A, AZ_C, AZ_A]).await?;
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    s.proxy.inject(FaultRule::times(
        "AssociateAddress",
        1,
        Fault::Latency(Duration::from_millis(450)),
    ));
    feip_move(&s, "web", s.node(1)).await?;
    let slow = wait_slow_associate(&s, s.eni(1)).await?;
    // The operator's second command, while n1's AssociateAddress is still in flight.
    let moved_at = Instant::now();
    feip_move(&s, "web", s.node(2)).await?;
    assert_pending_at(&s, slow, moved_at, "the move to n2")?;
    s.wait_association(Some(s.eni(2)))
        .await
        .map_err(|e| anyhow::anyhow!("the newer move to n2 was lost (address not on n2): {e}"))?;
    let st = s
        .wait_status("web", "active on 2", |st| active_on(st, s.node(2)))
        .await?;
    wait_for("the pin to n2 cleared once done", s.wait, || async {
        Ok(s.api.get("web").await?.spec.pin.is_none().then_some(()))
    })
    .await?;
    assert_eq!(
        s.moto.association(&s.eip.allocation_id).await?.as_deref(),
        Some(s.eni(2)),
        "{st:?}"
    );
    let reasons = s.event_reasons("web").await?;
    let completed = reasons.iter().filter(|r| *r == "MoveComplete").count();
    assert_eq!(
        completed, 1,
        "only the move to n2 completes a pin: {reasons:?}"
    );
    Ok(())
}

/// M2 scenario 2: a status written by someone else while a pass is in flight (another leader
/// recording a failover, here written by the test) is not overwritten by that pass's status,
/// which was built from the object as it was before.
#[tokio::test]
async fn a_pass_in_flight_does_not_overwrite_a_newer_status() -> anyhow::Result<()> {
    let mut s = Scenario::new("fence-status", &[AZ_A, AZ_C]).await?;
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    s.proxy.inject(FaultRule::times(
        "AssociateAddress",
        1,
        Fault::Latency(Duration::from_millis(450)),
    ));
    feip_move(&s, "web", s.node(1)).await?;
    let slow = wait_slow_associate(&s, s.eni(1)).await?;
    // While the associate is in flight, a newer status: 7 failovers recorded elsewhere.
    let written_at = Instant::now();
    let patch = serde_json::json!({"status": {"failoverCount": 7}});
    s.api
        .patch_status(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    assert_pending_at(&s, slow, written_at, "the newer status")?;
    s.wait_association(Some(s.eni(1))).await?;
    wait_for("the move done (pin cleared)", s.wait, || async {
        let f = s.api.get("web").await?;
        let done =
            f.spec.pin.is_none() && f.status.as_ref().is_some_and(|st| active_on(st, s.node(1)));
        Ok(done.then_some(()))
    })
    .await?;
    s.wait_monitor_passes(2).await?;
    let (_, status) = recorded_changes(&s, "web").await?;
    let failovers = status
        .get("failoverCount")
        .and_then(serde_json::Value::as_i64);
    println!("after the move: {status}");
    assert!(
        failovers.is_some_and(|n| n >= 7),
        "the newer status's count was overwritten: failoverCount {failovers:?}; status: {status}"
    );
    Ok(())
}

/// The leader Lease's transition count: the epoch of the replica that leads.
async fn leader_epoch(s: &Scenario) -> anyhow::Result<i32> {
    let api: Api<Lease> = Api::namespaced(s.client.clone(), &s.ns);
    Ok(api
        .get("feip-controller")
        .await?
        .spec
        .and_then(|l| l.lease_transitions)
        .unwrap_or(0))
}

/// M2 scenario 3: a deposed leader decided a failover n0 -> n1 (from a view the new leader
/// does not share) and its holder-Lease PUT was held up in a partition; it lands after the
/// handover, its resourceVersion still current because nobody wrote the Lease since. The new
/// leader sees n0 healthy with the address on it: it does not carry out the old decision (no
/// AssociateAddress, no failover recorded) and puts the Lease back on n0.
///
/// The test sends that PUT itself, with what the deposed leader's write carries: the new
/// holder unconfirmed, the failover's start, and the deposed leader's epoch.
#[tokio::test]
async fn a_deposed_leaders_delayed_decision_is_not_carried_out() -> anyhow::Result<()> {
    let mut s = Scenario::new("fence-epoch", &[AZ_A, AZ_C]).await?;
    let mut a = s.start_controller("replica-a").await?;
    wait_leading(&a, s.wait).await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    let old_epoch = leader_epoch(&s).await?;
    let b = s.start_controller("replica-b").await?;
    wait_ready(&b, s.wait).await?;
    a.shutdown().await;
    wait_leading(&b, s.wait).await?;
    assert!(
        leader_epoch(&s).await? > old_epoch,
        "b leads in a later epoch"
    );
    s.controllers.push(b);
    s.wait_monitor_passes(2).await?;
    let associations = forwarded_associations(&s.proxy, &s.eip.allocation_id);

    // The delayed PUT of the deposed leader lands now.
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), &s.ns);
    let mut lease = s.lease("web").await?.expect("holder lease");
    let transitions = lease.spec.as_ref().and_then(|l| l.lease_transitions);
    let annotations = lease.metadata.annotations.get_or_insert_default();
    annotations.insert("feip.io/confirmed".into(), "false".into());
    annotations.insert("feip.io/reason".into(), "HolderDead".into());
    annotations.insert("feip.io/failover-from".into(), s.node(0).into());
    annotations.insert(
        "feip.io/detected-at".into(),
        jiff::Timestamp::now().to_string(),
    );
    annotations.insert("feip.io/leader-epoch".into(), old_epoch.to_string());
    annotations.insert(
        "feip.io/private-ip".into(),
        s.instances[1].private_ip.clone(),
    );
    annotations.insert(
        "feip.io/network-interface".into(),
        s.instances[1].network_interface_id.clone(),
    );
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = Some(s.node(1).into());
        spec.lease_transitions = transitions.map(|t| t + 1);
    }
    leases
        .replace("feip-web", &kube::api::PostParams::default(), &lease)
        .await?;

    // Whatever the new leader makes of it, it ends with a confirmed Lease.
    let lease = wait_for("the holder Lease confirmed again", s.wait, || async {
        let l = s.lease("web").await?;
        let confirmed = l
            .as_ref()
            .and_then(|l| l.metadata.annotations.as_ref())
            .and_then(|a| a.get("feip.io/confirmed"))
            .is_some_and(|v| v == "true");
        Ok(l.filter(|_| confirmed))
    })
    .await?;
    s.wait_monitor_passes(2).await?;
    let holder = lease.spec.and_then(|l| l.holder_identity);
    assert_eq!(
        holder.as_deref(),
        Some(s.node(0)),
        "the deposed leader's decision was carried out"
    );
    assert_eq!(
        forwarded_associations(&s.proxy, &s.eip.allocation_id),
        associations,
        "no AssociateAddress for the superseded decision"
    );
    assert_eq!(
        s.moto.association(&s.eip.allocation_id).await?.as_deref(),
        Some(s.eni(0))
    );
    let (recorded, status) = recorded_changes(&s, "web").await?;
    assert_eq!(recorded, 0, "no failover recorded: {status}");
    let st = s
        .wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    assert_eq!(st.failover_count, 0, "{st:?}");
    let reasons = s.event_reasons("web").await?;
    assert!(
        reasons.iter().any(|r| r == "Superseded"),
        "the re-decision is reported: {reasons:?}"
    );
    Ok(())
}
