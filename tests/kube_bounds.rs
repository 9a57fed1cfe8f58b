//! Bounded Kubernetes calls (issue 12 item 4, finding H5 of the safety review): an apiserver
//! connection that goes silent (a control-plane host lost behind a load balancer: no data, no
//! RST) must not freeze a reconcile, and `/healthz` must fail while reconciles are stuck on a
//! leading replica.
//!
//! The controller's reconcile-path client and its election client reach the apiserver through
//! a [`TcpProxy`] that black-holes every connection open at one instant and relays new ones.
//! Its watch client goes through a second proxy that is left alone: a black-holed watch is
//! bounded by TCP keepalive (a lost host stops acknowledging probes; this proxy's own socket
//! would keep acknowledging them) and by the watcher's idle timeout, which this test cannot
//! show in tens of seconds. Real apiserver + etcd, moto behind the fault proxy.
//!
//! Results are summarised in docs/reliability.md ("Bounded Kubernetes calls").

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use feip::kube_client::KubeClients;
use feip::testenv::bin_support::http_get;
use feip::testenv::process::free_port;
use feip::testenv::scenario::{Scenario, active_on, wait_leading, wait_ready};
use feip::testenv::tcp_proxy::client_via;
use feip::testenv::{
    AZ_A, AZ_C, ControllerOptions, ElasticIp, Fault, FaultRule, TcpProxy, TestController, wait_for,
};

/// A replica whose requests and election go through `requests`, its watches through
/// `_watches`.
struct Routed {
    controller: TestController,
    requests: TcpProxy,
    _watches: TcpProxy,
    /// Leadership changes seen after the replica first led (a step-down is one).
    leadership_changes: Arc<AtomicUsize>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for Routed {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

async fn start_routed(s: &Scenario, opts: ControllerOptions) -> anyhow::Result<Routed> {
    let upstream: SocketAddr = s.cp.server().trim_start_matches("https://").parse()?;
    let requests = TcpProxy::start(upstream).await?;
    let watches = TcpProxy::start(upstream).await?;
    let kc = s.cp.admin_kubeconfig();
    // Three clients, three connection pools, as `feip controller` builds them.
    let clients = KubeClients {
        watches: client_via(kc, watches.addr()).await?,
        requests: client_via(kc, requests.addr()).await?,
        election: client_via(kc, requests.addr()).await?,
    };
    let controller = TestController::start(clients, &s.proxy.url(), opts).await?;
    wait_ready(&controller, s.wait).await?;
    wait_leading(&controller, s.wait).await?;
    let leadership_changes = Arc::new(AtomicUsize::new(0));
    let mut rx = controller.leadership.subscribe();
    rx.mark_unchanged();
    let count = leadership_changes.clone();
    let watcher = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    Ok(Routed {
        controller,
        requests,
        _watches: watches,
        leadership_changes,
        watcher,
    })
}

/// Creates `n` addresses `ip-0..` over the scenario's nodes (the first is the scenario's).
async fn create_addresses(s: &Scenario, n: usize) -> anyhow::Result<Vec<ElasticIp>> {
    let mut eips = vec![s.eip.clone()];
    for _ in 1..n {
        eips.push(s.moto.allocate_address().await?);
    }
    for (i, eip) in eips.iter().enumerate() {
        let mut spec = s.spec(serde_json::json!({}));
        spec["allocationId"] = eip.allocation_id.clone().into();
        s.create(&format!("ip-{i}"), spec).await?;
    }
    Ok(eips)
}

/// Waits until every `ip-i` is Active on `node` and has no pin left.
async fn wait_all_on(s: &Scenario, n: usize, node: &str, within: Duration) -> anyhow::Result<()> {
    wait_for(
        &format!("{n} addresses active on {node}"),
        within,
        || async move {
            for i in 0..n {
                let f = s.api.get(&format!("ip-{i}")).await?;
                let on = f.status.as_ref().is_some_and(|st| active_on(st, node));
                if !on || f.spec.pin.is_some() {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
}

/// Pins `ip-i` to `node` as `feip move` does (cleared once the address is there).
async fn move_to(s: &Scenario, i: usize, node: &str) -> anyhow::Result<()> {
    s.patch_spec(
        &format!("ip-{i}"),
        serde_json::json!({"pin": {"node": node, "clearWhenDone": true}}),
    )
    .await
}

/// The value of `feip_reconcile_errors_total{kind="<kind>"}` (0 when absent).
fn reconcile_errors(c: &TestController, kind: &str) -> u64 {
    let text = c.metrics.encode();
    let series = format!("feip_reconcile_errors_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

const ADDRESSES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_apiserver_connections_time_out_and_the_moves_complete() -> anyhow::Result<()> {
    let s = Scenario::new("kb-move", &[AZ_A, AZ_C]).await?;
    let r = start_routed(&s, s.options("replica-0")).await?;
    create_addresses(&s, ADDRESSES).await?;
    wait_all_on(&s, ADDRESSES, s.node(0), s.wait).await?;

    // Hold every AssociateAddress for a moment, so the moves are in the middle of their
    // reconciles (holder Lease written, EC2 call under way) when the connections go silent;
    // what they send next (status, pin clear, events) goes out on pooled connections.
    s.proxy.inject(FaultRule::always(
        "AssociateAddress",
        Fault::Latency(Duration::from_millis(400)),
    ));
    let associates = s.proxy.count("AssociateAddress");
    for i in 0..ADDRESSES {
        move_to(&s, i, s.node(1)).await?;
    }
    wait_for("a move's AssociateAddress", s.wait, || async {
        Ok((s.proxy.count("AssociateAddress") > associates).then_some(()))
    })
    .await?;
    let changes_before = r.leadership_changes.load(Ordering::Relaxed);
    r.requests.black_hole_existing();
    let t0 = Instant::now();
    let done = wait_all_on(&s, ADDRESSES, s.node(1), Duration::from_secs(60)).await;
    let took = t0.elapsed();
    s.proxy.clear_faults();
    eprintln!(
        "moves after the black hole: {:?} after {took:?}; reconcile errors: timeout {}, kube {}; \
         leadership changes {}; connections accepted {}",
        done.as_ref().map(|_| "complete"),
        reconcile_errors(&r.controller, "timeout"),
        reconcile_errors(&r.controller, "kube"),
        r.leadership_changes.load(Ordering::Relaxed) - changes_before,
        r.requests.connections_accepted(),
    );
    done?;
    assert!(
        took < Duration::from_secs(20),
        "the moves completed {took:?} after the black hole (bound 20 s)"
    );
    assert!(
        reconcile_errors(&r.controller, "timeout") >= 1,
        "a reconcile call on a black-holed connection times out: {}",
        r.controller.metrics.encode()
    );
    assert!(r.controller.leadership.is_leader(), "still leader");
    assert_eq!(
        r.leadership_changes.load(Ordering::Relaxed),
        changes_before,
        "the leader never stepped down"
    );
    Ok(())
}

/// GET /healthz: its status code.
async fn healthz(addr: SocketAddr) -> anyhow::Result<u16> {
    Ok(
        http_get(&addr.to_string(), "/healthz", Duration::from_secs(2))
            .await?
            .0,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_while_a_leading_replica_has_a_stuck_reconcile() -> anyhow::Result<()> {
    let s = Scenario::new("kb-health", &[AZ_A, AZ_C]).await?;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut opts = s.options("replica-0");
    // A reconcile blocked on a silent connection lasts one call deadline (3 s); the stuck
    // bound (1 s) is shorter, so /healthz must turn failing while it lasts.
    opts.kube_timeout = Duration::from_secs(3);
    opts.stuck_reconcile_after = Duration::from_secs(1);
    opts.health_addr = Some(addr);
    let r = start_routed(&s, opts).await?;
    create_addresses(&s, 1).await?;
    wait_all_on(&s, 1, s.node(0), s.wait).await?;
    assert_eq!(healthz(addr).await?, 200, "healthy while nothing is stuck");

    // The connections go silent; the move's holder-Lease write then goes out on one of them.
    r.requests.black_hole_existing();
    let t0 = Instant::now();
    move_to(&s, 0, s.node(1)).await?;
    let failing = wait_for("/healthz to fail", Duration::from_secs(20), || async {
        Ok((healthz(addr).await? == 503).then(|| t0.elapsed()))
    })
    .await;
    eprintln!("/healthz failing after {failing:?}");
    let failing = failing?;
    let healthy = wait_for("/healthz ok again", Duration::from_secs(30), || async {
        Ok((healthz(addr).await? == 200).then(|| t0.elapsed()))
    })
    .await?;
    wait_all_on(&s, 1, s.node(1), s.wait).await?;
    eprintln!("/healthz 503 at {failing:?}, 200 again at {healthy:?}");
    assert!(r.controller.leadership.is_leader(), "still leader");
    Ok(())
}
