//! The failover engine against the real parts: kube-apiserver + etcd, moto behind the fault
//! proxy, simulated nodes, and the controller running in-process exactly as `feip controller`
//! wires it. Every wait has a deadline; nothing sleeps to synchronise.

use std::time::{Duration, Instant};

use feip::crd::{FloatingElasticIP, FloatingElasticIPStatus};
use feip::testenv::{
    AZ_A, AZ_C, ControlPlane, ControllerOptions, ElasticIp, Fault, FaultProxy, FaultRule, Instance,
    Moto, NodeOptions, SimNode, TestController, ec2_client, wait_for,
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

const WAIT: Duration = Duration::from_secs(30);

/// One test's world: its own namespace, nodes, instances, EIP, fault proxy and controller.
struct Scenario {
    ns: String,
    client: Client,
    moto: &'static Moto,
    proxy: FaultProxy,
    nodes: Vec<SimNode>,
    instances: Vec<Instance>,
    eip: ElasticIp,
    controller: Option<TestController>,
    api: Api<FloatingElasticIP>,
}

struct NodeSetup {
    az: &'static str,
    http_port: Option<u16>,
}

fn two_azs() -> Vec<NodeSetup> {
    vec![
        NodeSetup {
            az: AZ_A,
            http_port: None,
        },
        NodeSetup {
            az: AZ_C,
            http_port: None,
        },
    ]
}

impl Scenario {
    async fn new(name: &str, nodes: Vec<NodeSetup>) -> anyhow::Result<Self> {
        Self::build(name, nodes, 0).await
    }

    /// Like [`Scenario::new`], every node's interface with `secondaries` secondary private IPs
    /// (one Elastic IP per private IP: a node holds at most `secondaries + 1` addresses).
    async fn build(name: &str, nodes: Vec<NodeSetup>, secondaries: i32) -> anyhow::Result<Self> {
        feip::install_crypto_provider();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let cp = ControlPlane::shared()?;
        let moto = Moto::shared()?;
        let client = cp.client().await?;
        let ns = cp.namespace(name).await?;
        let proxy = FaultProxy::start(moto.url()).await?;
        let mut sims = Vec::new();
        let mut instances = Vec::new();
        for (i, setup) in nodes.iter().enumerate() {
            let instance = moto
                .launch_instance_with_secondaries(setup.az, secondaries)
                .await?;
            let mut opts = NodeOptions::new(&format!("{ns}-n{i}"), setup.az, &instance.instance_id);
            opts.heartbeat_interval = Duration::from_millis(300);
            opts.http_port = setup.http_port;
            sims.push(SimNode::start(client.clone(), opts).await?);
            instances.push(instance);
        }
        let eip = moto.allocate_address().await?;
        let api = Api::namespaced(client.clone(), &ns);
        Ok(Self {
            ns,
            client,
            moto,
            proxy,
            nodes: sims,
            instances,
            eip,
            controller: None,
            api,
        })
    }

    async fn start_controller(&mut self, identity: &str) -> anyhow::Result<TestController> {
        TestController::start(
            self.client.clone(),
            &self.proxy.url(),
            ControllerOptions::new(identity, &self.ns),
        )
        .await
    }

    /// Starts one replica and waits until it reports ready (every cache synced), before any
    /// FloatingElasticIP exists: readiness must not depend on there being objects.
    async fn run(&mut self) -> anyhow::Result<()> {
        let c = self.start_controller("replica-0").await?;
        let mut ready = c.ready.clone();
        tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
            .await
            .map_err(|_| anyhow::anyhow!("controller not ready within {WAIT:?}"))??;
        self.controller = Some(c);
        Ok(())
    }

    fn node(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    fn eni(&self, i: usize) -> &str {
        &self.instances[i].network_interface_id
    }

    /// A spec with fast timings: heartbeat timeout 2s, monitor 1s, no active probe.
    fn spec(&self, extra: serde_json::Value) -> serde_json::Value {
        let mut spec = serde_json::json!({
            "allocationId": self.eip.allocation_id,
            "candidates": self.nodes.iter().map(|n| serde_json::json!({"node": n.name})).collect::<Vec<_>>(),
            "monitor": {"interval": "1s", "timeout": "800ms"},
            "health": {"heartbeatTimeout": "2s", "probe": {"type": "None"}},
        });
        feip::testenv::scenario::merge(&mut spec, extra);
        spec
    }

    async fn create(&self, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        let obj: FloatingElasticIP = serde_json::from_value(serde_json::json!({
            "apiVersion": "feip.io/v1alpha1", "kind": "FloatingElasticIP",
            "metadata": {"name": name}, "spec": spec,
        }))?;
        self.api.create(&PostParams::default(), &obj).await?;
        Ok(())
    }

    async fn patch_spec(&self, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        self.api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": spec})),
            )
            .await?;
        Ok(())
    }

    /// Waits until moto reports the address on `eni` (None = unassociated).
    async fn wait_association(&self, eni: Option<&str>) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let want = eni.map(str::to_string);
        let waited = wait_for(&format!("the address on {want:?}"), WAIT, || {
            let want = want.clone();
            async move {
                Ok((self.moto.association(&self.eip.allocation_id).await? == want).then_some(()))
            }
        })
        .await;
        if let Err(e) = waited {
            anyhow::bail!("{e:#}\n{}", self.diagnostics().await);
        }
        Ok(started.elapsed())
    }

    /// What a failed wait needs for a diagnosis: the EC2 mutations the controller sent (with
    /// injected faults and answers), the objects' statuses and the leadership.
    async fn diagnostics(&self) -> String {
        let mut out = String::from("EC2 mutations through the proxy:\n");
        for r in self.proxy.requests() {
            if r.action.ends_with("Address") && r.action != "DescribeAddresses" {
                out.push_str(&format!(
                    "  {:?} ago {} {:?} {:?} {:?} fault {:?} status {}\n",
                    r.at.elapsed(),
                    r.action,
                    r.params.get("AllocationId"),
                    r.params.get("NetworkInterfaceId"),
                    r.params.get("PrivateIpAddress"),
                    r.fault,
                    r.status
                ));
            }
        }
        if let Some(c) = &self.controller {
            out.push_str(&format!(
                "leader {} can mutate {} api failing since {:?}\n",
                c.leadership.is_leader(),
                c.leadership.can_mutate(),
                c.leadership.api_failing_since().map(|t| t.elapsed())
            ));
        }
        if let Ok(list) = self.api.list(&Default::default()).await {
            for f in list {
                out.push_str(&format!(
                    "status of {}: {}\n",
                    f.metadata.name.as_deref().unwrap_or_default(),
                    serde_json::to_string(&f.status).unwrap_or_default()
                ));
            }
        }
        out
    }

    async fn wait_status(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&FloatingElasticIPStatus) -> bool,
    ) -> anyhow::Result<FloatingElasticIPStatus> {
        let pred = &pred;
        wait_for(what, WAIT, || async move {
            let f = self.api.get(name).await?;
            Ok(f.status.filter(|s| pred(s)))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
    }

    async fn lease(&self, name: &str) -> anyhow::Result<Lease> {
        Ok(Api::<Lease>::namespaced(self.client.clone(), &self.ns)
            .get(&format!("feip-{name}"))
            .await?)
    }

    /// Waits until the monitor has made `n` more DescribeAddresses calls (i.e. `n` more
    /// monitor passes have observed the world).
    async fn wait_monitor_passes(&self, n: usize) -> anyhow::Result<()> {
        let start = self.proxy.count("DescribeAddresses");
        wait_for(&format!("{n} monitor passes"), WAIT, || async move {
            Ok((self.proxy.count("DescribeAddresses") >= start + n).then_some(()))
        })
        .await
    }

    /// Like [`Scenario::wait_monitor_passes`] with its own deadline.
    async fn wait_monitor_passes_within(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        let start = self.proxy.count("DescribeAddresses");
        wait_for(&format!("{n} monitor passes"), within, || async move {
            Ok((self.proxy.count("DescribeAddresses") >= start + n).then_some(()))
        })
        .await
    }

    /// Event reasons recorded for an object.
    async fn event_reasons(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns);
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter_map(|e| e.reason)
            .collect())
    }
}

fn holder(s: &FloatingElasticIPStatus) -> Option<&str> {
    s.holder.as_ref().map(|h| h.node.as_str())
}

fn condition<'a>(
    s: &'a FloatingElasticIPStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    s.conditions.iter().find(|c| c.type_ == type_)
}

fn active_on(s: &FloatingElasticIPStatus, node: &str) -> bool {
    holder(s) == Some(node) && s.phase == Some(feip::crd::Phase::Active)
}

#[tokio::test]
async fn reference_scenario_fails_over_on_heartbeat_loss_and_stays() -> anyhow::Result<()> {
    let mut s = Scenario::new("ref", two_azs()).await?;
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_association(Some(s.eni(0))).await?;
    let st = s
        .wait_status("web", "Active on node 0", |st| active_on(st, s.node(0)))
        .await?;
    assert_eq!(
        st.address.as_ref().and_then(|a| a.public_ip.as_deref()),
        Some(s.eip.public_ip.as_str())
    );
    let lease = s.lease("web").await?;
    let spec = lease.spec.clone().unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some(s.node(0)));
    let epoch = spec.lease_transitions.unwrap_or(0);
    assert_eq!(
        condition(&st, "Ready").map(|c| c.status.as_str()),
        Some("True")
    );

    // A dies: its heartbeat stops.
    s.nodes[0].stop();
    s.wait_association(Some(s.eni(1))).await?;
    let st = s
        .wait_status("web", "failover recorded", |st| {
            active_on(st, s.node(1)) && st.last_failover.is_some()
        })
        .await?;
    let lf = st.last_failover.clone().expect("last failover");
    assert_eq!(lf.from.as_deref(), Some(s.node(0)));
    assert_eq!(lf.to, s.node(1));
    assert_eq!(lf.reason, "HolderDead", "{st:?}");
    let secs: f64 = lf.duration_seconds.as_deref().unwrap_or("x").parse()?;
    assert!((0.0..10.0).contains(&secs), "failover duration {secs}");
    assert_eq!(st.failover_count, 1);
    let lease = s.lease("web").await?.spec.unwrap_or_default();
    assert_eq!(lease.holder_identity.as_deref(), Some(s.node(1)));
    assert_eq!(lease.lease_transitions.unwrap_or(0), epoch + 1);
    let reasons = s.event_reasons("web").await?;
    assert!(
        reasons.iter().any(|r| r == "Failover"),
        "events: {reasons:?}"
    );
    let associates = s.proxy.count("AssociateAddress");

    // A returns: with failback Never the address stays on B.
    s.nodes[0].resume().await?;
    s.wait_monitor_passes(4).await?;
    let f = s.api.get("web").await?;
    assert_eq!(f.status.as_ref().and_then(holder), Some(s.node(1)));
    assert_eq!(
        s.moto.association(&s.eip.allocation_id).await?.as_deref(),
        Some(s.eni(1))
    );
    assert_eq!(
        s.proxy.count("AssociateAddress"),
        associates,
        "no remap after A returned"
    );
    println!("heartbeat failover: {secs:.3}s from detection to confirmed association");
    Ok(())
}

#[tokio::test]
async fn failback_immediate_returns_after_hold_down() -> anyhow::Result<()> {
    let mut s = Scenario::new("failback", two_azs()).await?;
    s.run().await?;
    s.create(
        "web",
        s.spec(serde_json::json!({"failback": {"policy": "Immediate", "holdDown": "2s"}})),
    )
    .await?;
    s.wait_association(Some(s.eni(0))).await?;
    s.nodes[0].stop();
    s.wait_association(Some(s.eni(1))).await?;
    s.nodes[0].resume().await?;
    let resumed = Instant::now();
    s.wait_association(Some(s.eni(0))).await?;
    assert!(
        resumed.elapsed() >= Duration::from_secs(2),
        "failback before the hold-down: {:?}",
        resumed.elapsed()
    );
    let st = s
        .wait_status("web", "failback recorded", |st| active_on(st, s.node(0)))
        .await?;
    assert_eq!(
        st.last_failover.as_ref().map(|l| l.reason.as_str()),
        Some("Failback"),
        "{st:?}"
    );
    assert_eq!(st.failover_count, 2, "{st:?}");
    Ok(())
}

#[tokio::test]
async fn drift_below_threshold_reassociates_and_at_threshold_moves() -> anyhow::Result<()> {
    let mut s = Scenario::new(
        "drift",
        vec![
            NodeSetup {
                az: AZ_A,
                http_port: None,
            },
            NodeSetup {
                az: AZ_C,
                http_port: None,
            },
        ],
    )
    .await?;
    s.run().await?;
    let ec2 = ec2_client(s.moto.url()).await;

    // Threshold 3: the address is put back on the holder and one failure is counted.
    s.create("web", s.spec(serde_json::json!({"migrationThreshold": 3})))
        .await?;
    s.wait_association(Some(s.eni(0))).await?;
    s.wait_status("web", "active", |st| active_on(st, s.node(0)))
        .await?;
    let assoc = s.moto.association(&s.eip.allocation_id).await?;
    assert!(assoc.is_some());
    let described = ec2
        .describe_addresses()
        .allocation_ids(&s.eip.allocation_id)
        .send()
        .await?;
    let assoc_id = described.addresses()[0]
        .association_id()
        .unwrap_or_default()
        .to_string();
    ec2.disassociate_address()
        .association_id(&assoc_id)
        .send()
        .await?;
    let st = s
        .wait_status("web", "drift counted and repaired", |st| {
            active_on(st, s.node(0))
                && st
                    .nodes
                    .iter()
                    .any(|n| n.node == s.node(0) && n.failure_count == 1 && !n.banned)
        })
        .await?;
    assert_eq!(
        s.moto.association(&s.eip.allocation_id).await?.as_deref(),
        Some(s.eni(0))
    );
    assert_eq!(st.failover_count, 0);
    assert!(s.event_reasons("web").await?.iter().any(|r| r == "Drift"));

    // Threshold 1: the next drift bans the holder and moves the address.
    // (Lowering the threshold under an existing count would ban at once: clean up first.)
    s.patch_spec(
        "web",
        serde_json::json!({"migrationThreshold": 1, "cleanup": {"requestId": "reset-1"}}),
    )
    .await?;
    s.wait_status("web", "cleanup applied", |st| {
        st.last_cleanup_request_id.as_deref() == Some("reset-1") && st.nodes.is_empty()
    })
    .await?;
    let described = ec2
        .describe_addresses()
        .allocation_ids(&s.eip.allocation_id)
        .send()
        .await?;
    let assoc_id = described.addresses()[0]
        .association_id()
        .unwrap_or_default()
        .to_string();
    ec2.disassociate_address()
        .association_id(&assoc_id)
        .send()
        .await?;
    s.wait_association(Some(s.eni(1))).await?;
    let st = s
        .wait_status("web", "moved after drift", |st| {
            active_on(st, s.node(1)) && st.nodes.iter().any(|n| n.node == s.node(0) && n.banned)
        })
        .await?;
    assert_eq!(
        st.last_failover.map(|l| l.reason),
        Some("Drift".to_string())
    );
    Ok(())
}

#[tokio::test]
async fn ec2_errors_during_monitoring_are_unknown_not_failure() -> anyhow::Result<()> {
    let mut s = Scenario::new("unknown", two_azs()).await?;
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_association(Some(s.eni(0))).await?;
    s.wait_status("web", "active", |st| active_on(st, s.node(0)))
        .await?;
    let associates = s.proxy.count("AssociateAddress");

    for fault in [Fault::Throttle, Fault::ServerError, Fault::Reset] {
        s.proxy
            .inject(FaultRule::always("DescribeAddresses", fault.clone()));
        let st = s
            .wait_status(
                "web",
                &format!("Degraded=Ec2Unknown under {fault:?}"),
                |st| {
                    condition(st, "Degraded")
                        .is_some_and(|c| c.status == "True" && c.reason == "Ec2Unknown")
                },
            )
            .await?;
        assert_eq!(holder(&st), Some(s.node(0)), "{fault:?} moved the holder");
        assert!(
            st.nodes.iter().all(|n| n.failure_count == 0),
            "{fault:?} counted a failure: {:?}",
            st.nodes
        );
        s.wait_monitor_passes(2).await?;
        s.proxy.clear_faults();
        let st = s
            .wait_status("web", "Degraded clears", |st| {
                condition(st, "Degraded").is_some_and(|c| c.status == "False")
                    && active_on(st, s.node(0))
            })
            .await?;
        assert_eq!(st.failover_count, 0);
    }
    assert_eq!(
        s.proxy.count("AssociateAddress"),
        associates,
        "unknown caused a remap"
    );
    assert_eq!(
        s.moto.association(&s.eip.allocation_id).await?.as_deref(),
        Some(s.eni(0))
    );
    Ok(())
}

#[tokio::test]
async fn associate_failure_bans_and_tries_next_and_reports_when_none_left() -> anyhow::Result<()> {
    let mut s = Scenario::new("assocfail", two_azs()).await?;
    s.run().await?;
    // Node 0's ENI does not accept the address (a definite EC2 refusal for that target).
    s.proxy.inject(FaultRule {
        action: Some("AssociateAddress".into()),
        remaining: Some(1),
        skip: 0,
        fault: Fault::ServerError,
    });
    // A 5xx is unknown: retried, not a ban. Then a definite refusal via a bad private IP.
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_association(Some(s.eni(0))).await?;
    let st = s
        .wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    assert!(
        st.nodes.iter().all(|n| n.failure_count == 0),
        "a 5xx must not count: {:?}",
        st.nodes
    );

    // Second address whose first candidate's private IP is not on its interface: definite.
    let eip2 = s.moto.allocate_address().await?;
    let spec = serde_json::json!({
        "allocationId": eip2.allocation_id,
        "candidates": [{"node": s.node(0), "privateIpAddress": "10.0.0.250"}, {"node": s.node(1)}],
        "monitor": {"interval": "1s", "timeout": "800ms"},
        "health": {"heartbeatTimeout": "2s", "probe": {"type": "None"}},
    });
    s.create("api", spec).await?;
    let st = s
        .wait_status("api", "on node 1", |st| active_on(st, s.node(1)))
        .await?;
    let c = condition(&st, "Ready").map(|c| c.status.clone());
    assert_eq!(c.as_deref(), Some("True"));

    // With nobody eligible, status says why and retries continue.
    let eip3 = s.moto.allocate_address().await?;
    let spec = serde_json::json!({
        "allocationId": eip3.allocation_id,
        "candidates": [{"node": format!("{}-missing", s.ns)}],
        "monitor": {"interval": "1s"},
        "health": {"probe": {"type": "None"}},
    });
    s.create("none", spec).await?;
    let st = s
        .wait_status("none", "NoEligibleCandidate", |st| {
            condition(st, "Degraded").is_some_and(|c| c.reason == "NoEligibleCandidate")
        })
        .await?;
    assert!(holder(&st).is_none());
    assert!(
        condition(&st, "Degraded").is_some_and(|c| c.message.contains("missing")),
        "{:?}",
        condition(&st, "Degraded")
    );
    Ok(())
}

#[tokio::test]
async fn definite_associate_failure_bans_the_node_and_moves_on() -> anyhow::Result<()> {
    let mut s = Scenario::new("assocban", two_azs()).await?;
    s.run().await?;
    // Answer AssociateAddress for node 0's ENI with a definite EC2 error.
    s.proxy.inject(FaultRule::times(
        "AssociateAddress",
        1,
        Fault::Definite("InvalidNetworkInterfaceID.NotFound".into()),
    ));
    s.create("web", s.spec(serde_json::json!({"failureTimeout": "3s"})))
        .await?;
    s.wait_association(Some(s.eni(1))).await?;
    let st = s
        .wait_status("web", "node 0 banned, active on 1", |st| {
            active_on(st, s.node(1)) && st.nodes.iter().any(|n| n.node == s.node(0) && n.banned)
        })
        .await?;
    let rec = st
        .nodes
        .iter()
        .find(|n| n.node == s.node(0))
        .expect("record");
    assert!(
        rec.last_failure_reason
            .as_deref()
            .unwrap_or_default()
            .contains("InvalidNetworkInterfaceID.NotFound")
    );
    assert!(
        rec.banned_until.is_some(),
        "failureTimeout gives the ban an end"
    );
    assert!(
        s.event_reasons("web")
            .await?
            .iter()
            .any(|r| r == "AssociateFailed")
    );

    // Failure timeout: the ban expires by itself.
    s.wait_status("web", "ban expired", |st| {
        st.nodes.iter().all(|n| n.node != s.node(0))
    })
    .await?;

    // Cleanup resets counts: ban node 1 through drift... simpler: count a failure, then clean up.
    s.patch_spec(
        "web",
        serde_json::json!({"failureTimeout": "0s", "migrationThreshold": 5}),
    )
    .await?;
    let ec2 = ec2_client(s.moto.url()).await;
    let described = ec2
        .describe_addresses()
        .allocation_ids(&s.eip.allocation_id)
        .send()
        .await?;
    let assoc_id = described.addresses()[0]
        .association_id()
        .unwrap_or_default()
        .to_string();
    ec2.disassociate_address()
        .association_id(&assoc_id)
        .send()
        .await?;
    s.wait_status("web", "one drift failure on node 1", |st| {
        st.nodes
            .iter()
            .any(|n| n.node == s.node(1) && n.failure_count == 1)
    })
    .await?;
    s.patch_spec("web", serde_json::json!({"cleanup": {"requestId": "c1"}}))
        .await?;
    let st = s
        .wait_status("web", "cleanup applied", |st| {
            st.last_cleanup_request_id.as_deref() == Some("c1")
        })
        .await?;
    assert!(
        st.nodes.is_empty(),
        "cleanup must reset counts: {:?}",
        st.nodes
    );
    Ok(())
}

#[tokio::test]
async fn standby_cordon_pin_and_ban_move_the_address_gracefully() -> anyhow::Result<()> {
    let mut s = Scenario::new(
        "maint",
        vec![
            NodeSetup {
                az: AZ_A,
                http_port: None,
            },
            NodeSetup {
                az: AZ_C,
                http_port: None,
            },
            NodeSetup {
                az: AZ_A,
                http_port: None,
            },
        ],
    )
    .await?;
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_association(Some(s.eni(0))).await?;

    // Standby label on the holder: moves to node 1.
    s.nodes[0]
        .patch(serde_json::json!({"metadata": {"labels": {"feip.io/standby": "true"}}}))
        .await?;
    s.wait_association(Some(s.eni(1))).await?;
    let st = s
        .wait_status("web", "on 1", |st| active_on(st, s.node(1)))
        .await?;
    assert_eq!(
        st.last_failover.map(|l| l.reason),
        Some("HolderIneligible".to_string())
    );
    s.nodes[0]
        .patch(serde_json::json!({"metadata": {"labels": {"feip.io/standby": null}}}))
        .await?;

    // Cordon the new holder: moves to the next eligible (node 0 again, list order).
    s.nodes[1]
        .patch(serde_json::json!({"spec": {"unschedulable": true}}))
        .await?;
    s.wait_association(Some(s.eni(0))).await?;
    s.nodes[1]
        .patch(serde_json::json!({"spec": {"unschedulable": null}}))
        .await?;

    // Pin to node 2 (a move that clears itself when done).
    s.patch_spec(
        "web",
        serde_json::json!({"pin": {"node": s.node(2), "clearWhenDone": true}}),
    )
    .await?;
    s.wait_association(Some(s.eni(2))).await?;
    wait_for("the pin to clear itself", WAIT, || async {
        Ok(s.api.get("web").await?.spec.pin.is_none().then_some(()))
    })
    .await?;

    // Ban node 2 with a lifetime: moves away; ban entry stays until it expires.
    let until = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600)).to_string();
    s.patch_spec(
        "web",
        serde_json::json!({"bans": [{"node": s.node(2), "expiresAt": until}]}),
    )
    .await?;
    s.wait_association(Some(s.eni(0))).await?;
    let st = s
        .wait_status("web", "on 0 after ban", |st| active_on(st, s.node(0)))
        .await?;
    assert_eq!(
        st.last_failover.map(|l| l.reason),
        Some("HolderBanned".to_string())
    );
    // Clear: remove bans; stickiness keeps the address where it is.
    s.patch_spec("web", serde_json::json!({"bans": null}))
        .await?;
    s.wait_monitor_passes(3).await?;
    assert_eq!(
        s.moto.association(&s.eip.allocation_id).await?.as_deref(),
        Some(s.eni(0))
    );
    Ok(())
}

#[tokio::test]
async fn disable_disassociates_and_unmanage_only_reports() -> anyhow::Result<()> {
    let mut s = Scenario::new("modes", two_azs()).await?;
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_association(Some(s.eni(0))).await?;

    s.patch_spec("web", serde_json::json!({"targetState": "Stopped"}))
        .await?;
    s.wait_association(None).await?;
    let st = s
        .wait_status("web", "Stopped", |st| {
            st.phase == Some(feip::crd::Phase::Stopped)
        })
        .await?;
    assert!(holder(&st).is_none());
    s.patch_spec("web", serde_json::json!({"targetState": "Started"}))
        .await?;
    s.wait_association(Some(s.eni(0))).await?;

    // Observe-only: drift is reported, never repaired.
    s.patch_spec("web", serde_json::json!({"management": "ObserveOnly"}))
        .await?;
    s.wait_status("web", "Unmanaged", |st| {
        st.phase == Some(feip::crd::Phase::Unmanaged)
    })
    .await?;
    let mutations = s.proxy.count("AssociateAddress") + s.proxy.count("DisassociateAddress");
    let ec2 = ec2_client(s.moto.url()).await;
    let described = ec2
        .describe_addresses()
        .allocation_ids(&s.eip.allocation_id)
        .send()
        .await?;
    let assoc_id = described.addresses()[0]
        .association_id()
        .unwrap_or_default()
        .to_string();
    ec2.disassociate_address()
        .association_id(&assoc_id)
        .send()
        .await?;
    s.wait_status("web", "drift reported", |st| {
        condition(st, "Degraded").is_some_and(|c| c.reason == "DriftObserved")
    })
    .await?;
    s.wait_monitor_passes(3).await?;
    assert_eq!(
        s.proxy.count("AssociateAddress") + s.proxy.count("DisassociateAddress"),
        mutations
    );
    assert_eq!(s.moto.association(&s.eip.allocation_id).await?, None);
    Ok(())
}

#[tokio::test]
async fn delete_releases_retain_keeps_and_failed_release_blocks() -> anyhow::Result<()> {
    let mut s = Scenario::new("delete", two_azs()).await?;
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_association(Some(s.eni(0))).await?;
    s.api.delete("web", &DeleteParams::default()).await?;
    s.wait_association(None).await?;
    wait_for("object gone", WAIT, || async {
        Ok(s.api.get_opt("web").await?.is_none().then_some(()))
    })
    .await?;
    assert!(
        Api::<Lease>::namespaced(s.client.clone(), &s.ns)
            .get_opt("feip-web")
            .await?
            .is_none(),
        "lease goes with it"
    );

    // Retain keeps the association.
    s.create(
        "kept",
        s.spec(serde_json::json!({"releasePolicy": "Retain"})),
    )
    .await?;
    s.wait_association(Some(s.eni(0))).await?;
    s.api.delete("kept", &DeleteParams::default()).await?;
    wait_for("kept gone", WAIT, || async {
        Ok(s.api.get_opt("kept").await?.is_none().then_some(()))
    })
    .await?;
    assert_eq!(
        s.moto.association(&s.eip.allocation_id).await?.as_deref(),
        Some(s.eni(0))
    );

    // A failing disassociate blocks deletion, keeps the finalizer, and retries.
    s.create("blocked", s.spec(serde_json::json!({}))).await?;
    s.wait_status("blocked", "active", |st| active_on(st, s.node(0)))
        .await?;
    s.proxy
        .inject(FaultRule::always("DisassociateAddress", Fault::ServerError));
    s.api.delete("blocked", &DeleteParams::default()).await?;
    let st = s
        .wait_status("blocked", "Blocked", |st| {
            condition(st, "Blocked").is_some_and(|c| c.status == "True")
        })
        .await?;
    assert_eq!(st.phase, Some(feip::crd::Phase::Blocked));
    let obj = s.api.get("blocked").await?;
    assert!(
        obj.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == feip::crd::FINALIZER)
    );
    assert!(
        s.moto.association(&s.eip.allocation_id).await?.is_some(),
        "never reports success it did not get"
    );
    s.proxy.clear_faults();
    s.wait_association(None).await?;
    wait_for("blocked gone after retry", WAIT, || async {
        Ok(s.api.get_opt("blocked").await?.is_none().then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn ownership_guard_does_not_take_a_foreign_association() -> anyhow::Result<()> {
    let mut s = Scenario::new("owner", two_azs()).await?;
    let foreign = s.moto.launch_instance(AZ_A).await?;
    let ec2 = ec2_client(s.moto.url()).await;
    ec2.associate_address()
        .allocation_id(&s.eip.allocation_id)
        .network_interface_id(&foreign.network_interface_id)
        .allow_reassociation(true)
        .send()
        .await?;
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    let st = s
        .wait_status("web", "ForeignAssociation", |st| {
            condition(st, "Degraded").is_some_and(|c| c.reason == "ForeignAssociation")
        })
        .await?;
    assert!(holder(&st).is_none());
    s.wait_monitor_passes(3).await?;
    assert_eq!(s.proxy.count("AssociateAddress"), 0);
    assert_eq!(
        s.moto.association(&s.eip.allocation_id).await?.as_deref(),
        Some(foreign.network_interface_id.as_str())
    );

    // Explicit takeover.
    s.patch_spec("web", serde_json::json!({"allowTakeover": true}))
        .await?;
    s.wait_association(Some(s.eni(0))).await?;
    Ok(())
}

#[tokio::test]
async fn leader_killed_the_other_replica_takes_over_without_remapping() -> anyhow::Result<()> {
    let mut s = Scenario::new("replicas", two_azs()).await?;
    let mut a = s.start_controller("replica-a").await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_association(Some(s.eni(0))).await?;
    s.wait_status("web", "active", |st| active_on(st, s.node(0)))
        .await?;
    let mut b = s.start_controller("replica-b").await?;
    wait_for("replica b ready", WAIT, || {
        let ready = *b.ready.borrow();
        async move { Ok(ready.then_some(())) }
    })
    .await?;
    assert!(a.leadership.is_leader() && !b.leadership.is_leader());
    let associates = s.proxy.count("AssociateAddress");

    a.kill();
    wait_for("replica b leads", WAIT, || {
        let l = b.leadership.is_leader();
        async move { Ok(l.then_some(())) }
    })
    .await?;
    // b reads EC2 and adopts: several monitor passes without a single mutation.
    s.wait_monitor_passes(3).await?;
    let st = s
        .wait_status("web", "still active on 0", |st| active_on(st, s.node(0)))
        .await?;
    assert_eq!(st.failover_count, 0);
    assert_eq!(
        s.proxy.count("AssociateAddress"),
        associates,
        "handoff remapped the address"
    );
    // And b really is in charge: a failure now is handled by b.
    s.nodes[0].stop();
    s.wait_association(Some(s.eni(1))).await?;
    b.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn http_probe_failure_triggers_fast_failover() -> anyhow::Result<()> {
    let mut s = Scenario::new(
        "probe",
        vec![
            NodeSetup {
                az: AZ_A,
                http_port: Some(8080),
            },
            NodeSetup {
                az: AZ_C,
                http_port: Some(8080),
            },
        ],
    )
    .await?;
    s.run().await?;
    let spec = s.spec(serde_json::json!({
        "health": {"heartbeatTimeout": "40s", "probe": {"type": "HTTP", "port": 8080, "path": "/healthz", "period": "1s", "timeout": "500ms", "failureThreshold": 3}},
    }));
    s.create("web", spec).await?;
    s.wait_association(Some(s.eni(0))).await?;
    s.wait_status("web", "active", |st| active_on(st, s.node(0)))
        .await?;
    // The heartbeat keeps running: only the probe sees the failure.
    s.nodes[0].set_http_healthy(false);
    let took = s.wait_association(Some(s.eni(1))).await?;
    // period x failure threshold = 3s, plus a margin for the in-flight period and the association.
    assert!(
        took < Duration::from_secs(6),
        "probe failover took {took:?}"
    );
    let st = s
        .wait_status("web", "failover recorded", |st| st.last_failover.is_some())
        .await?;
    println!(
        "probe failover: {:.3}s from failure injection to association; {}s from detection to confirmation",
        took.as_secs_f64(),
        st.last_failover
            .and_then(|l| l.duration_seconds)
            .unwrap_or_default()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_addresses_over_five_nodes_fail_over_with_constant_describe_calls()
-> anyhow::Result<()> {
    let nodes = (0..5)
        .map(|i| NodeSetup {
            az: if i % 2 == 0 { AZ_A } else { AZ_C },
            http_port: None,
        })
        .collect();
    // Ten addresses prefer each node, and a survivor takes ten more: 20 private IPs each
    // (one Elastic IP per private IP, as on AWS).
    let mut s = Scenario::build("scale", nodes, 19).await?;
    s.run().await?;
    let mut eips = Vec::new();
    for i in 0..50 {
        let eip = s.moto.allocate_address().await?;
        // Round-robin preferences: node (i % 5) first.
        let candidates: Vec<_> = (0..5)
            .map(|k| serde_json::json!({"node": s.node((i + k) % 5)}))
            .collect();
        let mut spec = s.spec(serde_json::json!({}));
        spec["allocationId"] = eip.allocation_id.clone().into();
        spec["candidates"] = candidates.into();
        s.create(&format!("ip-{i}"), spec).await?;
        eips.push(eip);
    }
    let all_active = |want: Box<dyn Fn(usize) -> usize + Send + Sync>| {
        let api = s.api.clone();
        let names: Vec<String> = (0..5).map(|i| s.node(i).to_string()).collect();
        async move {
            wait_for("all 50 active", Duration::from_secs(120), || {
                let api = api.clone();
                let names = names.clone();
                let want = &want;
                async move {
                    let list = api.list(&ListParams::default()).await?;
                    let ok = list.items.len() == 50
                        && list.items.iter().all(|f| {
                            let i: usize = f.metadata.name.as_deref().unwrap_or("ip-0")[3..]
                                .parse()
                                .unwrap_or(0);
                            f.status
                                .as_ref()
                                .is_some_and(|st| active_on(st, &names[want(i)]))
                        });
                    Ok(ok.then_some(()))
                }
            })
            .await
        }
    };
    all_active(Box::new(|i| i % 5)).await?;

    // Steady state: DescribeAddresses per monitor interval does not grow with 50 addresses.
    s.proxy.clear_log();
    let window = Instant::now();
    s.wait_monitor_passes(5).await?;
    let elapsed = window.elapsed().as_secs_f64();
    let describes = s.proxy.count("DescribeAddresses");
    let per_interval = describes as f64 / elapsed; // interval is 1s
    assert!(
        per_interval <= 2.0,
        "{describes} DescribeAddresses in {elapsed:.1}s for 50 addresses"
    );
    assert_eq!(
        s.proxy.count("AssociateAddress"),
        0,
        "steady state mutates nothing"
    );
    println!(
        "steady state: {describes} DescribeAddresses in {elapsed:.1}s (1s interval, 50 addresses)"
    );

    // Node 0 dies: its 10 addresses move to their next candidate (node 1).
    s.nodes[0].stop();
    if let Err(e) = all_active(Box::new(|i| if i % 5 == 0 { 1 } else { i % 5 })).await {
        let mut out = String::new();
        for f in s.api.list(&ListParams::default()).await?.items {
            let st = f.status.unwrap_or_default();
            if !(0..5).any(|n| active_on(&st, s.node(n)))
                || f.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.ends_with('0') || n.ends_with('5'))
            {
                out.push_str(&format!(
                    "{}: phase {:?} holder {:?} conditions {:?}\n",
                    f.metadata.name.unwrap_or_default(),
                    st.phase,
                    st.holder,
                    st.conditions
                        .iter()
                        .map(|c| (&c.type_, &c.reason, &c.message))
                        .collect::<Vec<_>>()
                ));
            }
        }
        anyhow::bail!("{e:#}\n{out}\n{}", s.diagnostics().await);
    }
    // Exactly the dead node's 10 addresses were remapped, each to its next candidate (node
    // 1). One address may see a second AssociateAddress to that same target only after one
    // whose outcome its sender could not know (no answer, an error, or an answer later than
    // the EC2 timeout: under load the read-back can still show the old association within
    // the emulated consistency lag), never after one answered in time, never elsewhere.
    let ec2_timeout = feip::testenv::ControllerOptions::new("check", "check").ec2_timeout;
    let mut per_address: std::collections::BTreeMap<String, Vec<feip::testenv::RequestRecord>> =
        Default::default();
    for r in s.proxy.requests() {
        if r.action == "AssociateAddress" {
            let alloc = r.params.get("AllocationId").cloned().unwrap_or_default();
            per_address.entry(alloc).or_default().push(r);
        }
    }
    let dead: Vec<String> = eips
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 5 == 0)
        .map(|(_, e)| e.allocation_id.clone())
        .collect();
    let mut remapped: Vec<String> = per_address.keys().cloned().collect();
    remapped.sort();
    let mut want = dead.clone();
    want.sort();
    assert_eq!(
        remapped, want,
        "exactly the dead node's addresses were remapped"
    );
    for (alloc, sent) in &per_address {
        for r in sent {
            assert_eq!(
                r.params.get("NetworkInterfaceId").map(String::as_str),
                Some(s.eni(1)),
                "{alloc} was sent elsewhere than its next candidate"
            );
        }
        for pair in sent.windows(2) {
            let unknown = match (pair[0].forwarded_at, pair[0].answered_at) {
                (Some(from), Some(answered)) => {
                    pair[0].status != 200 || answered.duration_since(from) >= ec2_timeout
                }
                _ => true,
            };
            assert!(
                unknown,
                "{alloc}: a second AssociateAddress after one answered in time: {sent:?}"
            );
        }
    }
    println!(
        "failover: {} AssociateAddress for 10 addresses",
        s.proxy.count("AssociateAddress")
    );
    assert_eq!(
        s.proxy.displacements().len(),
        0,
        "{:?}",
        s.proxy.displacements()
    );
    let mut slots = Vec::new();
    for eip in &eips {
        let t = s.moto.true_association(&eip.allocation_id).await?;
        slots.push(t.map(|t| (t.network_interface_id, t.private_ip)));
    }
    let mut distinct = slots.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        50,
        "50 addresses on 50 private IPs: {slots:?}"
    );
    Ok(())
}

// ---- one Elastic IP per private IP (the test EC2 applies AWS's rule) ----

/// Where EC2 really has each address (interface, private IP), by allocation id.
async fn true_targets(
    s: &Scenario,
    eips: &[ElasticIp],
) -> anyhow::Result<Vec<Option<(String, String)>>> {
    let mut out = Vec::new();
    for e in eips {
        out.push(
            s.moto
                .true_association(&e.allocation_id)
                .await?
                .map(|t| (t.network_interface_id, t.private_ip)),
        );
    }
    Ok(out)
}

/// Status says Active only where EC2 has the address: the holder's interface and private IP.
fn status_matches_ec2(st: &FloatingElasticIPStatus, at: &Option<(String, String)>) -> bool {
    let h = st.holder.as_ref();
    let on = |(eni, ip): &(String, String)| {
        h.is_some_and(|h| {
            h.network_interface_id.as_deref() == Some(eni.as_str())
                && h.private_ip_address.as_deref() == Some(ip.as_str())
        })
    };
    st.phase != Some(feip::crd::Phase::Active) || at.as_ref().is_some_and(on)
}

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

async fn statuses(s: &Scenario, n: usize) -> anyhow::Result<Vec<FloatingElasticIPStatus>> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            s.api
                .get(&format!("ip-{i}"))
                .await?
                .status
                .unwrap_or_default(),
        );
    }
    Ok(out)
}

#[tokio::test]
async fn three_addresses_over_two_nodes_take_three_private_ips_and_never_fight()
-> anyhow::Result<()> {
    // Two nodes with two private IPs each, three addresses listing both nodes in the same
    // order (as every example does): three distinct private IPs, no displacement, no drift.
    let mut s = Scenario::build("slots", two_azs(), 1).await?;
    s.run().await?;
    let eips = create_addresses(&s, 3).await?;
    let names: Vec<String> = (0..2).map(|i| s.node(i).to_string()).collect();
    let placed = wait_for("three addresses active on three private IPs", WAIT, || {
        let (s, eips, names) = (&s, &eips, &names);
        async move {
            let at = true_targets(s, eips).await?;
            let sts = statuses(s, 3).await?;
            let mut slots: Vec<_> = at.iter().flatten().collect();
            slots.sort();
            slots.dedup();
            let ok =
                slots.len() == 3 && sts.iter().all(|st| names.iter().any(|n| active_on(st, n)));
            Ok(ok.then_some(()))
        }
    })
    .await;
    if let Err(e) = placed {
        anyhow::bail!("{e:#}\n{}", s.diagnostics().await);
    }
    assert_eq!(
        s.proxy.count("AssociateAddress"),
        3,
        "one associate per address"
    );

    // A minute of monitoring (1 s interval): nothing moves, nothing is knocked off.
    s.wait_monitor_passes_within(60, Duration::from_secs(120))
        .await?;
    let at = true_targets(&s, &eips).await?;
    for (i, st) in statuses(&s, 3).await?.iter().enumerate() {
        assert!(
            status_matches_ec2(st, &at[i]),
            "ip-{i}: {st:?} vs EC2 {:?}",
            at[i]
        );
        assert!(names.iter().any(|n| active_on(st, n)), "ip-{i}: {st:?}");
        assert!(
            st.nodes.iter().all(|n| n.failure_count == 0),
            "ip-{i}: {st:?}"
        );
        let reasons = s.event_reasons(&format!("ip-{i}")).await?;
        assert!(
            !reasons.iter().any(|r| r == "Drift" || r == "Banned"),
            "ip-{i}: {reasons:?}"
        );
    }
    assert_eq!(
        s.proxy.displacements().len(),
        0,
        "{:?}",
        s.proxy.displacements()
    );
    assert_eq!(
        s.proxy.count("AssociateAddress"),
        3,
        "no re-association over 60 s"
    );

    // The node holding two addresses dies: the survivor has one free private IP. One
    // address moves there; the other reports the missing private IP; nothing flaps.
    let sts = statuses(&s, 3).await?;
    let on_n0: Vec<usize> = (0..3).filter(|i| active_on(&sts[*i], &names[0])).collect();
    assert_eq!(
        on_n0.len(),
        2,
        "the first node has two private IPs: {sts:?}"
    );
    s.nodes[0].stop();
    let moved = wait_for(
        "one address moved, one reports the missing private IP",
        WAIT,
        || {
            let (s, on_n0, names) = (&s, &on_n0, &names);
            async move {
                let sts = statuses(s, 3).await?;
                let moved = on_n0
                    .iter()
                    .filter(|i| active_on(&sts[**i], &names[1]))
                    .count();
                let stranded = on_n0.iter().filter(|i| {
                    let st = &sts[**i];
                    st.phase != Some(feip::crd::Phase::Active)
                        && condition(st, "Degraded")
                            .is_some_and(|c| c.message.contains("no free private IP"))
                });
                Ok((moved == 1 && stranded.count() == 1).then_some(()))
            }
        },
    )
    .await;
    if let Err(e) = moved {
        anyhow::bail!("{e:#}\n{}", s.diagnostics().await);
    }
    s.wait_monitor_passes_within(10, WAIT).await?;
    assert_eq!(s.proxy.count("AssociateAddress"), 4, "exactly one move");
    assert_eq!(
        s.proxy.displacements().len(),
        0,
        "{:?}",
        s.proxy.displacements()
    );
    let at = true_targets(&s, &eips).await?;
    for (i, st) in statuses(&s, 3).await?.iter().enumerate() {
        assert!(
            status_matches_ec2(st, &at[i]),
            "ip-{i}: {st:?} vs EC2 {:?}",
            at[i]
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_edited_private_ip_of_the_holder_moves_the_address_without_a_failure()
-> anyhow::Result<()> {
    let mut s = Scenario::build("retarget", two_azs(), 1).await?;
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_status("web", "active", |st| active_on(st, s.node(0)))
        .await?;
    let secondary = s.instances[0].private_ips[1].clone();
    let candidates = serde_json::json!([
        {"node": s.node(0), "privateIpAddress": secondary},
        {"node": s.node(1)},
    ]);
    s.patch_spec("web", serde_json::json!({"candidates": candidates}))
        .await?;
    let want = Some((s.eni(0).to_string(), secondary.clone()));
    wait_for("the address on the edited private IP", WAIT, || {
        let (s, want) = (&s, &want);
        async move {
            let at = true_targets(s, std::slice::from_ref(&s.eip)).await?;
            Ok((at[0] == *want).then_some(()))
        }
    })
    .await?;
    let st = s
        .wait_status("web", "active on the new private IP", |st| {
            active_on(st, s.node(0))
                && st
                    .holder
                    .as_ref()
                    .and_then(|h| h.private_ip_address.as_deref())
                    == Some(secondary.as_str())
        })
        .await?;
    assert_eq!(st.failover_count, 0, "a planned move is no failover");
    assert!(
        st.nodes.iter().all(|n| n.failure_count == 0 && !n.banned),
        "{st:?}"
    );
    let reasons = s.event_reasons("web").await?;
    assert!(reasons.iter().any(|r| r == "Retargeted"), "{reasons:?}");
    assert!(
        !reasons.iter().any(|r| r == "Drift" || r == "Banned"),
        "{reasons:?}"
    );
    let lease = s.lease("web").await?;
    let annotations = lease.metadata.annotations.unwrap_or_default();
    assert_eq!(annotations.get("feip.io/private-ip"), Some(&secondary));
    s.wait_monitor_passes(5).await?;
    assert_eq!(
        s.proxy.count("AssociateAddress"),
        2,
        "created, then moved once"
    );

    // A restarted controller keeps the address on the recorded private IP: no remap.
    if let Some(mut c) = s.controller.take() {
        c.shutdown().await;
    }
    s.run().await?;
    s.wait_monitor_passes(5).await?;
    let st = s.api.get("web").await?.status.unwrap_or_default();
    assert!(active_on(&st, s.node(0)), "{st:?}");
    assert_eq!(
        s.moto
            .true_association(&s.eip.allocation_id)
            .await?
            .map(|t| t.private_ip),
        Some(secondary.clone())
    );
    assert_eq!(
        s.proxy.count("AssociateAddress"),
        2,
        "no remap after a restart"
    );
    Ok(())
}

#[tokio::test]
async fn eventual_consistency_longer_than_the_monitor_timeout_is_no_drift_and_no_remap()
-> anyhow::Result<()> {
    let mut s = Scenario::new("lag", two_azs()).await?;
    // DescribeAddresses shows the old association for 3 s after every change: longer than
    // monitor.timeout (800 ms), so no confirmation sees the change in time.
    s.proxy.set_consistency_lag(Duration::from_secs(3));
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_association(Some(s.eni(0))).await?;
    s.wait_status("web", "active", |st| active_on(st, s.node(0)))
        .await?;
    s.wait_monitor_passes(8).await?;
    assert_eq!(s.proxy.count("AssociateAddress"), 1, "no second remap");
    // A failover through the same lag: one associate to the new holder.
    s.nodes[0].stop();
    s.wait_association(Some(s.eni(1))).await?;
    let st = s
        .wait_status("web", "failed over", |st| active_on(st, s.node(1)))
        .await?;
    s.wait_monitor_passes(8).await?;
    assert_eq!(
        s.proxy.count("AssociateAddress"),
        2,
        "{}",
        s.diagnostics().await
    );
    let st = s.api.get("web").await?.status.unwrap_or(st);
    assert!(
        st.nodes.iter().all(|n| n.failure_count == 0 && !n.banned),
        "{st:?}"
    );
    let reasons = s.event_reasons("web").await?;
    assert!(
        !reasons.iter().any(|r| r == "Drift" || r == "Banned"),
        "{reasons:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_associate_whose_answer_times_out_is_read_back_not_resent() -> anyhow::Result<()> {
    let mut s = Scenario::new("slow-answer", two_azs()).await?;
    // The associate happens at once in EC2; its answer arrives after the attempt timeout, and
    // DescribeAddresses shows it only 1.5 s later: a read-back right after the timeout still
    // sees the old state, which is no reason to resend yet.
    s.proxy.set_consistency_lag(Duration::from_millis(1500));
    s.proxy.inject(FaultRule::times(
        "AssociateAddress",
        1,
        Fault::SlowAnswer(Duration::from_secs(3)),
    ));
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_status("web", "active", |st| active_on(st, s.node(0)))
        .await?;
    s.wait_monitor_passes(3).await?;
    assert_eq!(
        s.proxy.count("AssociateAddress"),
        1,
        "the outcome was read back, not resent:\n{}",
        s.diagnostics().await
    );
    Ok(())
}
