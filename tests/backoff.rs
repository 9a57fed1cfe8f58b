//! No hot loops (issue 12, H4 and M5), against the real parts: kube-apiserver + etcd, moto
//! behind the fault proxy, simulated nodes, the controller in-process.
//!
//! - A definite associate failure on every candidate bans them and then retries the kept
//!   holder with exponential backoff: it never spends the shared mutating budget at its refill
//!   rate, and another address's failover is not delayed by it.
//! - An error code that is not known to be about the target bans nobody.
//! - A minute of EC2 Describe* outage with many addresses keeps the EC2 and apiserver request
//!   rates bounded, and everything returns to Active afterwards.
//!
//! Every wait has a deadline; the fixed windows are measurement windows, not synchronisation.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use feip::crd::FloatingElasticIPStatus;
use feip::testenv::scenario::{Scenario, active_on, degraded_reason, wait_status_in};
use feip::testenv::{AZ_A, AZ_C, Fault, FaultProxy, FaultRule, NodeOptions, SimNode, wait_for};
use kube::api::ListParams;

/// AssociateAddress requests for `allocation_id`, faulted or not, since log index `from`.
fn associates(proxy: &FaultProxy, allocation_id: &str, from: usize) -> usize {
    proxy
        .requests_since(from)
        .iter()
        .filter(|r| {
            r.action == "AssociateAddress"
                && r.params.get("AllocationId").map(String::as_str) == Some(allocation_id)
        })
        .count()
}

fn count_action(proxy: &FaultProxy, action: &str, from: usize) -> usize {
    proxy
        .requests_since(from)
        .iter()
        .filter(|r| r.action == action)
        .count()
}

/// Reconciles so far, from the controller's metrics.
fn reconciles(m: &feip::metrics::Metrics) -> u64 {
    m.encode()
        .lines()
        .find_map(|l| l.strip_prefix("feip_reconcile_duration_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Write requests (create, update, patch, delete) in namespace `ns` recorded so far by the
/// apiserver's audit log, by "verb resource[/subresource]": in a test namespace only the
/// controller writes after setup.
fn apiserver_writes(audit_log: &Path, ns: &str) -> anyhow::Result<BTreeMap<String, usize>> {
    let text = std::fs::read_to_string(audit_log)?;
    let mut out = BTreeMap::new();
    for e in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e["stage"] == "ResponseComplete"
                && e["objectRef"]["namespace"] == ns
                && matches!(
                    e["verb"].as_str(),
                    Some("create" | "update" | "patch" | "delete")
                )
        })
    {
        let r = &e["objectRef"];
        let mut what = format!(
            "{} {}",
            e["verb"].as_str().unwrap_or_default(),
            r["resource"].as_str().unwrap_or_default()
        );
        if let Some(sub) = r["subresource"].as_str() {
            what = format!("{what}/{sub}");
        }
        *out.entry(what).or_default() += 1;
    }
    Ok(out)
}

/// `after - before`, per key, and the total.
fn writes_between(
    before: &BTreeMap<String, usize>,
    after: &BTreeMap<String, usize>,
) -> (usize, BTreeMap<String, usize>) {
    let diff: BTreeMap<String, usize> = after
        .iter()
        .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    (diff.values().sum(), diff)
}

fn banned(s: &FloatingElasticIPStatus) -> Vec<&str> {
    s.nodes
        .iter()
        .filter(|n| n.banned)
        .map(|n| n.node.as_str())
        .collect()
}

/// H4: FEIP-x's AssociateAddress always fails with a code about the target, on both of its
/// candidates; FEIP-y (no faults) loses its holder meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_error_on_every_candidate_backs_off_and_does_not_delay_another_failover()
-> anyhow::Result<()> {
    let mut s = Scenario::new("bo-target", &[AZ_A, AZ_C, AZ_A, AZ_C]).await?;
    s.run().await?;
    let eip_x = s.moto.allocate_address().await?;
    s.proxy.inject_where(
        "AllocationId",
        &eip_x.allocation_id,
        FaultRule::always(
            "AssociateAddress",
            Fault::Definite("InvalidNetworkInterfaceID.NotFound".into()),
        ),
    );
    let only = |a: usize, b: usize| serde_json::json!([{"node": s.node(a)}, {"node": s.node(b)}]);
    s.create("y", s.spec(serde_json::json!({"candidates": only(2, 3)})))
        .await?;
    s.wait_status("y", "y active on n2", |st| active_on(st, s.node(2)))
        .await?;
    let mut x = s.spec(serde_json::json!({"candidates": only(0, 1)}));
    x["allocationId"] = eip_x.allocation_id.clone().into();
    s.create("x", x).await?;
    let st = s
        .wait_status("x", "x: both candidates banned", |st| banned(st).len() == 2)
        .await?;
    println!("x: {:?}", banned(&st));

    // The window: 30 s of FEIP-x with nobody eligible; FEIP-y's holder dies at its start.
    let from = s.proxy.log_len();
    let window = Instant::now();
    s.nodes[2].stop();
    let failover = s.wait_association(Some(s.eni(3))).await?;
    let window_len = Duration::from_secs(30);
    wait_for("the measurement window", window_len * 2, || async {
        Ok((window.elapsed() >= window_len).then_some(()))
    })
    .await?;
    let n = associates(&s.proxy, &eip_x.allocation_id, from);
    let per_minute = n as f64 * 60.0 / window.elapsed().as_secs_f64();
    println!(
        "x: {n} AssociateAddress in {:.1}s ({per_minute:.1}/min); y failed over in {:.2}s",
        window.elapsed().as_secs_f64(),
        failover.as_secs_f64()
    );
    assert!(
        n <= 6,
        "x made {n} AssociateAddress in {:.1}s ({per_minute:.0}/min): a hot loop on banned nodes",
        window.elapsed().as_secs_f64()
    );
    // Heartbeat timeout 2 s, plus detection, the Lease write and one associate: about 2 s
    // on an idle machine, up to 11.7 s seen on a loaded one while another test set up 200
    // addresses on the same moto. A hot loop of x could starve y of the shared mutating
    // budget for far longer.
    assert!(
        failover < Duration::from_secs(15),
        "y's failover took {failover:?}"
    );
    Ok(())
}

/// H4: a code nobody listed (made up here) is not known to be about the target: no ban, the
/// address stays with its elected holder, retried with backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_error_code_bans_nobody() -> anyhow::Result<()> {
    let mut s = Scenario::new("bo-unlisted", &[AZ_A, AZ_C]).await?;
    s.run().await?;
    s.proxy.inject_where(
        "AllocationId",
        &s.eip.allocation_id,
        FaultRule::always("AssociateAddress", Fault::Definite("Foo.Bar".into())),
    );
    let from = s.proxy.log_len();
    let start = Instant::now();
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_status("web", "web refused by EC2", |st| {
        degraded_reason(st).is_some() && st.holder.is_some()
    })
    .await?;
    let window_len = Duration::from_secs(15);
    wait_for("the measurement window", window_len * 2, || async {
        Ok((start.elapsed() >= window_len).then_some(()))
    })
    .await?;
    let st = s.api.get("web").await?.status.unwrap_or_default();
    let n = associates(&s.proxy, &s.eip.allocation_id, from);
    println!(
        "web: {n} AssociateAddress in {:.1}s; degraded {:?}; nodes {:?}",
        start.elapsed().as_secs_f64(),
        degraded_reason(&st),
        st.nodes
    );
    assert!(
        banned(&st).is_empty(),
        "an unlisted code banned {:?}",
        st.nodes
    );
    assert!(
        st.nodes.iter().all(|n| n.failure_count == 0),
        "an unlisted code counted failures: {:?}",
        st.nodes
    );
    // Backoff 0.5 s doubling: about 5 attempts in 15 s.
    assert!(n <= 8, "{n} AssociateAddress in 15 s");
    // The refusal is reported as such. A DescribeAddresses that fails meanwhile (moto slow
    // under the parallel 200-address test) rightly shows `Ec2Unknown` until the next read, so
    // the reason is waited for rather than sampled once.
    s.wait_status("web", "web reported Ec2Refused", |st| {
        degraded_reason(st) == Some("Ec2Refused") && banned(st).is_empty()
    })
    .await?;
    Ok(())
}

/// Addresses of the outage test (see the note in docs/reliability.md on its size).
const ADDRESSES: usize = 200;
const NODES: usize = 4;

/// M5: a minute of DescribeAddresses and DescribeInstances failing (5xx) with many
/// addresses: nothing can be done, so reconciles, EC2 requests and apiserver writes stay
/// bounded; afterwards every address is Active again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_describe_outage_with_many_addresses_keeps_request_rates_bounded()
-> anyhow::Result<()> {
    let mut s = Scenario::new("bo-outage", &[]).await?;
    // Each node carries up to half the addresses (two candidates each, no failover here).
    let secondaries = (ADDRESSES / 2) as i32;
    for i in 0..NODES {
        let az = if i % 2 == 0 { AZ_A } else { AZ_C };
        let instance = s
            .moto
            .launch_instance_with_secondaries(az, secondaries)
            .await?;
        let mut opts = NodeOptions::new(&format!("{}-n{i}", s.ns), az, &instance.instance_id);
        opts.heartbeat_interval = Duration::from_millis(300);
        s.nodes.push(SimNode::start(s.client.clone(), opts).await?);
        s.instances.push(instance);
    }
    s.run().await?;
    let setup = Instant::now();
    for i in 0..ADDRESSES {
        let eip = s.moto.allocate_address().await?;
        let candidates = serde_json::json!([
            {"node": s.node(i % NODES)},
            {"node": s.node((i + 1) % NODES)},
        ]);
        let mut spec = s.spec(serde_json::json!({"candidates": candidates}));
        spec["allocationId"] = eip.allocation_id.clone().into();
        s.create(&format!("ip-{i}"), spec).await?;
    }
    let names: Vec<String> = (0..NODES).map(|i| s.node(i).to_string()).collect();
    let all_active = |what: &'static str| {
        let api = s.api.clone();
        let names = names.clone();
        async move {
            wait_for(what, Duration::from_secs(120), || {
                let (api, names) = (api.clone(), names.clone());
                async move {
                    let list = api.list(&ListParams::default()).await?;
                    let active = list
                        .items
                        .iter()
                        .filter(|f| {
                            let i: usize = f.metadata.name.as_deref().unwrap_or("ip-0")[3..]
                                .parse()
                                .unwrap_or(0);
                            f.status
                                .as_ref()
                                .is_some_and(|st| active_on(st, &names[i % NODES]))
                        })
                        .count();
                    Ok((active == ADDRESSES).then_some(()))
                }
            })
            .await
        }
    };
    all_active("every address active").await?;
    println!(
        "{ADDRESSES} addresses active {:.1}s after the first was created",
        setup.elapsed().as_secs_f64()
    );

    let c = &s.controllers[0];
    let audit = s.cp.audit_log().to_path_buf();
    let (from, reconciles0, writes0) = (
        s.proxy.log_len(),
        reconciles(&c.metrics),
        apiserver_writes(&audit, &s.ns)?,
    );
    let outage = Duration::from_secs(60);
    let started = Instant::now();
    s.proxy
        .inject(FaultRule::always("DescribeAddresses", Fault::ServerError));
    s.proxy
        .inject(FaultRule::always("DescribeInstances", Fault::ServerError));
    // Every address learns that EC2 is unknown (the first failed read reaches them all).
    let api = s.api.clone();
    wait_status_in(&api, "ip-0", "ip-0 sees the outage", outage, |st| {
        degraded_reason(st) == Some("Ec2Unknown")
    })
    .await?;
    wait_for("the outage window", outage * 2, || async {
        Ok((started.elapsed() >= outage).then_some(()))
    })
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let n_reconciles = reconciles(&c.metrics) - reconciles0;
    let (writes, by_kind) = writes_between(&writes0, &apiserver_writes(&audit, &s.ns)?);
    let describe_addresses = count_action(&s.proxy, "DescribeAddresses", from);
    let describe_instances = count_action(&s.proxy, "DescribeInstances", from);
    let associates_sent = count_action(&s.proxy, "AssociateAddress", from);
    // What the statuses say at the end of the outage (phase, Degraded reason, message).
    let mut said: BTreeMap<String, usize> = BTreeMap::new();
    for f in s.api.list(&ListParams::default()).await?.items {
        let st = f.status.unwrap_or_default();
        let degraded = feip::testenv::scenario::condition(&st, "Degraded").map(|c| {
            format!(
                "{} {}",
                c.reason,
                c.message.chars().take(90).collect::<String>()
            )
        });
        *said
            .entry(format!("{:?} {degraded:?}", st.phase))
            .or_default() += 1;
    }
    s.proxy.clear_faults();
    let recovery = Instant::now();
    all_active("every address active again").await?;
    let recovered = recovery.elapsed();
    println!(
        "{elapsed:.1}s outage, {ADDRESSES} addresses: {n_reconciles} reconciles ({:.1}/s), \
         {describe_addresses} DescribeAddresses, {describe_instances} DescribeInstances, \
         {associates_sent} AssociateAddress, {writes} apiserver writes {by_kind:?}; \
         all Active again {:.1}s after the outage; statuses at its end: {said:#?}",
        n_reconciles as f64 / elapsed,
        recovered.as_secs_f64()
    );
    assert_eq!(associates_sent, 0, "nothing is moved while EC2 is unknown");
    // Bounds (docs/reliability.md, "No hot loops"). Reconciles: about 9 per address: one or
    // two triggers when reads start failing (DescribeAddresses and DescribeInstances may start
    // failing in different passes), one for its own status write (Ec2Unknown), then the
    // backoff 0.5 s doubling to 30 s (+-20 %), about 6 steps in a minute; 12 leaves room.
    let reconcile_bound = (ADDRESSES * 12) as u64;
    assert!(
        n_reconciles <= reconcile_bound,
        "{n_reconciles} reconciles in {elapsed:.0}s (bound {reconcile_bound})"
    );
    // The monitor: the interval (1 s) doubling to 5 s, jittered down to 0.8x: at most 17
    // failed passes in a minute (plus one in flight when the outage starts), each one
    // request of each kind plus the SDK's one retry.
    for (what, n) in [
        ("DescribeAddresses", describe_addresses),
        ("DescribeInstances", describe_instances),
    ] {
        assert!(n <= 36, "{n} {what} in {elapsed:.0}s (bound 36)");
    }
    // Status: one write per address entering the unknown state on an idle machine (200 of
    // 200); up to 2.5 per address seen on a loaded one. Holder-Lease renewals go on while EC2
    // is unknown (the Lease vouches for the last confirmed state; docs/architecture.md): one
    // per half lease duration (15 s), at most 5 per address in the minute, 3.4 measured.
    // 8 per address leaves room; a hot loop writes hundreds.
    let write_bound = ADDRESSES * 8;
    assert!(
        writes <= write_bound,
        "{writes} apiserver writes in {elapsed:.0}s (bound {write_bound}): {by_kind:?}"
    );
    // The end of the outage is seen within one backoff step (at most 6 s), then every
    // address's status is written once more.
    assert!(
        recovered < Duration::from_secs(30),
        "Active again only {recovered:?} after the outage"
    );
    Ok(())
}
