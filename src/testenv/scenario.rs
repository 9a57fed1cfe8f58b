//! One test's world for controller-level tests: its own namespace, simulated nodes backed by
//! moto instances, an Elastic IP, a fault proxy in front of moto, and controller replicas
//! running in-process. The model is the `Scenario` of `tests/controller.rs`, generalised so
//! that chaos tests can own a private control plane (to restart its apiserver or etcd) and run
//! several replicas with their own kube clients and EC2 proxies.

use std::ops::Deref;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use super::{
    ControlPlane, ControllerOptions, ElasticIp, FaultProxy, Instance, Moto, NodeOptions, SimNode,
    TestController, wait_for,
};
use crate::crd::{FloatingElasticIP, FloatingElasticIPStatus, Phase};

/// Default deadline of every wait.
pub const WAIT: Duration = Duration::from_secs(30);

/// The shared control plane of the test binary, or a private one the scenario owns (and kills
/// when dropped) so that a test may restart its parts.
pub enum Plane {
    Shared(&'static ControlPlane),
    Private(Box<ControlPlane>),
}

impl Deref for Plane {
    type Target = ControlPlane;
    fn deref(&self) -> &ControlPlane {
        match self {
            Plane::Shared(cp) => cp,
            Plane::Private(cp) => cp,
        }
    }
}

/// See the module docs. Fields are dropped in declaration order: replicas first, then nodes,
/// then the control plane.
pub struct Scenario {
    pub controllers: Vec<TestController>,
    pub nodes: Vec<SimNode>,
    pub ns: String,
    pub client: Client,
    pub moto: &'static Moto,
    /// The fault proxy the first replica (and `run`) uses for EC2.
    pub proxy: FaultProxy,
    pub instances: Vec<Instance>,
    pub eip: ElasticIp,
    pub api: Api<FloatingElasticIP>,
    pub wait: Duration,
    pub cp: Plane,
}

/// Installs the crypto provider and a test log subscriber (`RUST_LOG` decides the level).
pub fn init_test_logging() {
    crate::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Secondary private IPs on every scenario node's interface.
pub const SECONDARY_IPS: i32 = 3;

impl Scenario {
    /// A scenario on the shared control plane with one node per entry of `azs`.
    pub async fn new(name: &str, azs: &[&str]) -> anyhow::Result<Self> {
        init_test_logging();
        Self::build(name, azs, Plane::Shared(ControlPlane::shared()?)).await
    }

    /// A scenario on a control plane of its own (for tests that restart or break it).
    pub async fn new_private(name: &str, azs: &[&str]) -> anyhow::Result<Self> {
        init_test_logging();
        let cp = ControlPlane::start().await?;
        Self::build(name, azs, Plane::Private(Box::new(cp))).await
    }

    async fn build(name: &str, azs: &[&str], cp: Plane) -> anyhow::Result<Self> {
        let moto = Moto::shared()?;
        let client = cp.client().await?;
        let ns = cp.namespace(name).await?;
        let proxy = FaultProxy::start(moto.url()).await?;
        let eip = moto.allocate_address().await?;
        let api = Api::namespaced(client.clone(), &ns);
        let mut s = Self {
            controllers: Vec::new(),
            nodes: Vec::new(),
            ns,
            client,
            moto,
            proxy,
            instances: Vec::new(),
            eip,
            api,
            wait: WAIT,
            cp,
        };
        for az in azs {
            s.add_node(az, |_| {}).await?;
        }
        Ok(s)
    }

    /// Launches an instance in `az` (its interface with [`SECONDARY_IPS`] secondary private
    /// IPs: one Elastic IP per private IP, so a node holds at most that many plus one) and
    /// starts a simulated node for it (heartbeat every
    /// 300 ms unless `tweak` changes the options). Returns its index.
    pub async fn add_node(
        &mut self,
        az: &str,
        tweak: impl FnOnce(&mut NodeOptions),
    ) -> anyhow::Result<usize> {
        let i = self.nodes.len();
        let instance = self
            .moto
            .launch_instance_with_secondaries(az, SECONDARY_IPS)
            .await?;
        let mut opts = NodeOptions::new(&format!("{}-n{i}", self.ns), az, &instance.instance_id);
        opts.heartbeat_interval = Duration::from_millis(300);
        tweak(&mut opts);
        self.nodes
            .push(SimNode::start(self.client.clone(), opts).await?);
        self.instances.push(instance);
        Ok(i)
    }

    /// Options for a replica watching this scenario's namespace, with the fast test timings.
    pub fn options(&self, identity: &str) -> ControllerOptions {
        ControllerOptions::new(identity, &self.ns)
    }

    /// Starts a replica with the admin client and this scenario's fault proxy.
    pub async fn start_controller(&self, identity: &str) -> anyhow::Result<TestController> {
        TestController::start(
            self.client.clone(),
            &self.proxy.url(),
            self.options(identity),
        )
        .await
    }

    /// Starts one replica, waits until it is ready, and keeps it in `controllers`.
    pub async fn run(&mut self) -> anyhow::Result<()> {
        let c = self.start_controller("replica-0").await?;
        wait_ready(&c, self.wait).await?;
        self.controllers.push(c);
        Ok(())
    }

    pub fn node(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    pub fn eni(&self, i: usize) -> &str {
        &self.instances[i].network_interface_id
    }

    /// A spec for this scenario's address and all its nodes with fast timings: heartbeat
    /// timeout 2s, monitor 1s, no active probe; `extra` is merged in.
    pub fn spec(&self, extra: serde_json::Value) -> serde_json::Value {
        let mut spec = serde_json::json!({
            "allocationId": self.eip.allocation_id,
            "candidates": self.nodes.iter().map(|n| serde_json::json!({"node": n.name})).collect::<Vec<_>>(),
            "monitor": {"interval": "1s", "timeout": "800ms"},
            "health": {"heartbeatTimeout": "2s", "probe": {"type": "None"}},
        });
        merge(&mut spec, extra);
        spec
    }

    pub async fn create(&self, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        create_in(&self.api, name, spec).await
    }

    pub async fn patch_spec(&self, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        self.api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": spec})),
            )
            .await?;
        Ok(())
    }

    /// Waits until moto reports this scenario's address on `eni` (None = unassociated).
    pub async fn wait_association(&self, eni: Option<&str>) -> anyhow::Result<Duration> {
        wait_association_of(self.moto, &self.eip.allocation_id, eni, self.wait).await
    }

    /// Waits until the status of `name` satisfies `pred`.
    pub async fn wait_status(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&FloatingElasticIPStatus) -> bool,
    ) -> anyhow::Result<FloatingElasticIPStatus> {
        wait_status_in(&self.api, name, what, self.wait, pred).await
    }

    /// The holder Lease of `name`, if any.
    pub async fn lease(&self, name: &str) -> anyhow::Result<Option<Lease>> {
        Ok(Api::<Lease>::namespaced(self.client.clone(), &self.ns)
            .get_opt(&format!("feip-{name}"))
            .await?)
    }

    /// Waits until `proxy` has seen `n` more DescribeAddresses calls (monitor passes).
    pub async fn wait_monitor_passes_on(&self, proxy: &FaultProxy, n: usize) -> anyhow::Result<()> {
        let start = proxy.count("DescribeAddresses");
        wait_for(&format!("{n} monitor passes"), self.wait, || async move {
            Ok((proxy.count("DescribeAddresses") >= start + n).then_some(()))
        })
        .await
    }

    /// Waits for `n` more monitor passes through this scenario's proxy.
    pub async fn wait_monitor_passes(&self, n: usize) -> anyhow::Result<()> {
        self.wait_monitor_passes_on(&self.proxy, n).await
    }

    /// The events recorded for an object of this namespace.
    pub async fn events(
        &self,
        name: &str,
    ) -> anyhow::Result<Vec<k8s_openapi::api::events::v1::Event>> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns);
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect())
    }

    /// Event reasons recorded for an object of this namespace.
    pub async fn event_reasons(&self, name: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .events(name)
            .await?
            .into_iter()
            .filter_map(|e| e.reason)
            .collect())
    }
}

/// Waits until a replica reports ready (every cache synced).
pub async fn wait_ready(c: &TestController, timeout: Duration) -> anyhow::Result<()> {
    let mut ready = c.ready.clone();
    tokio::time::timeout(timeout, ready.wait_for(|r| *r))
        .await
        .map_err(|_| anyhow::anyhow!("{} not ready within {timeout:?}", c.identity))??;
    Ok(())
}

/// Waits until a replica may mutate EC2 (it leads, with its safety margin).
pub async fn wait_leading(c: &TestController, timeout: Duration) -> anyhow::Result<()> {
    let l = c.leadership.clone();
    wait_for(&format!("{} to lead", c.identity), timeout, || {
        let ok = l.can_mutate();
        async move { Ok(ok.then_some(())) }
    })
    .await
}

/// Creates a FloatingElasticIP named `name` with `spec` through `api`.
pub async fn create_in(
    api: &Api<FloatingElasticIP>,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<()> {
    let obj: FloatingElasticIP = serde_json::from_value(serde_json::json!({
        "apiVersion": "feip.io/v1alpha1", "kind": "FloatingElasticIP",
        "metadata": {"name": name}, "spec": spec,
    }))?;
    api.create(&PostParams::default(), &obj).await?;
    Ok(())
}

/// Waits until moto reports `allocation_id` on `eni` (None = unassociated).
pub async fn wait_association_of(
    moto: &Moto,
    allocation_id: &str,
    eni: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let want = eni.map(str::to_string);
    wait_for(&format!("{allocation_id} on {want:?}"), timeout, || {
        let want = want.clone();
        async move { Ok((moto.association(allocation_id).await? == want).then_some(())) }
    })
    .await?;
    Ok(started.elapsed())
}

/// Waits until the status of `name` satisfies `pred`.
pub async fn wait_status_in(
    api: &Api<FloatingElasticIP>,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&FloatingElasticIPStatus) -> bool,
) -> anyhow::Result<FloatingElasticIPStatus> {
    let pred = &pred;
    let last = std::sync::Mutex::new(None::<FloatingElasticIPStatus>);
    let last = &last;
    wait_for(what, timeout, || async move {
        let f = api.get(name).await?;
        let ok = f.status.clone().filter(|s| pred(s));
        if ok.is_none() {
            *last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = f.status;
        }
        Ok(ok)
    })
    .await
    .map_err(|e| {
        let last = last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        anyhow::anyhow!("{name}: {e}; last status: {last:?}")
    })
}

/// Deep-merges `extra` into `base` (objects merge, everything else replaces).
pub fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, e) => *b = e,
    }
}

/// The holder node in a status.
pub fn holder(s: &FloatingElasticIPStatus) -> Option<&str> {
    s.holder.as_ref().map(|h| h.node.as_str())
}

/// A condition of a status by type.
pub fn condition<'a>(s: &'a FloatingElasticIPStatus, type_: &str) -> Option<&'a Condition> {
    s.conditions.iter().find(|c| c.type_ == type_)
}

/// The Degraded condition's reason when it is True.
pub fn degraded_reason(s: &FloatingElasticIPStatus) -> Option<&str> {
    condition(s, "Degraded")
        .filter(|c| c.status == "True")
        .map(|c| c.reason.as_str())
}

/// Phase Active with `node` as the holder.
pub fn active_on(s: &FloatingElasticIPStatus, node: &str) -> bool {
    holder(s) == Some(node) && s.phase == Some(Phase::Active)
}

/// AssociateAddress requests for `allocation_id` that reached moto (not answered by an
/// injected fault): their target interfaces, in order.
pub fn forwarded_associations(proxy: &FaultProxy, allocation_id: &str) -> Vec<String> {
    proxy
        .requests()
        .into_iter()
        .filter(|r| {
            r.action == "AssociateAddress"
                && r.fault.is_none()
                && r.params.get("AllocationId").map(String::as_str) == Some(allocation_id)
        })
        .map(|r| {
            r.params
                .get("NetworkInterfaceId")
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}
