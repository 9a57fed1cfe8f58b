//! The environment (control plane, moto, fault proxy, clients) and the world in it: the
//! simulated nodes with their instances, the addresses and how they are laid out; helpers to
//! create addresses, wait for them and read associations and holder Leases.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, ListParams};

use feip::crd::FloatingElasticIP;
use feip::testenv::{AZ_A, AZ_C, ControlPlane, FaultProxy, Moto, NodeOptions, SimNode};

use crate::NS;
use crate::stats::Clock;

pub struct Env {
    pub cp: ControlPlane,
    pub moto: Moto,
    pub proxy: FaultProxy,
    pub client: Client,
    pub ec2: aws_sdk_ec2::Client,
    pub clock: Clock,
    pub feip_bin: PathBuf,
    pub profile: String,
    pub controller_kubeconfig: PathBuf,
    pub logs: PathBuf,
    pub ec2_timeout: Duration,
}

pub struct NodeInfo {
    pub sim: SimNode,
    pub eni: String,
}

pub struct World {
    pub nodes: Vec<NodeInfo>,
    /// Scale addresses: (allocation id, primary node index, secondary node index).
    pub feips: Vec<(String, usize, usize)>,
    pub hb: [NodeInfo; 2],
    pub probe: [NodeInfo; 2],
    pub hb_alloc: String,
    pub probe_alloc: String,
}

fn az(i: usize) -> &'static str {
    if i.is_multiple_of(2) { AZ_A } else { AZ_C }
}

/// The FEIP layout: the first `mass` addresses prefer node 0 (the one the mass failover
/// kills); the others are spread over nodes 1.. with a different node as second candidate.
/// No address but those lists node 0 at all, so its death affects exactly `mass` addresses.
pub fn layout(feips: usize, nodes: usize, mass: usize) -> Vec<(usize, usize)> {
    let others = nodes - 1;
    (0..feips)
        .map(|i| {
            if i < mass {
                (0, 1 + i % others)
            } else {
                let j = i - mass;
                (1 + j % others, 1 + (j + 1 + j / others) % others)
            }
        })
        .map(|(p, s)| if p == s { (p, 1 + p % others) } else { (p, s) })
        .collect()
}

pub fn feip_name(i: usize) -> String {
    format!("f-{i:04}")
}

pub async fn launch_nodes(
    env: &Env,
    names: Vec<(String, Duration)>,
    parallelism: usize,
) -> anyhow::Result<Vec<NodeInfo>> {
    let results: Vec<anyhow::Result<NodeInfo>> =
        futures::stream::iter(names.into_iter().enumerate())
            .map(|(i, (name, hb))| async move {
                let instance = env.moto.launch_instance(az(i)).await?;
                let mut opts = NodeOptions::new(&name, az(i), &instance.instance_id);
                opts.heartbeat_interval = hb;
                let sim = SimNode::start(env.client.clone(), opts)
                    .await
                    .with_context(|| format!("starting simulated node {name}"))?;
                Ok(NodeInfo {
                    sim,
                    eni: instance.network_interface_id,
                })
            })
            .buffered(parallelism)
            .collect()
            .await;
    results.into_iter().collect()
}

pub async fn allocate(env: &Env, n: usize, parallelism: usize) -> anyhow::Result<Vec<String>> {
    let results: Vec<anyhow::Result<String>> = futures::stream::iter(0..n)
        .map(|_| async move { Ok(env.moto.allocate_address().await?.allocation_id) })
        .buffered(parallelism)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Associates directly in moto (not through the proxy: setup, not feip's traffic).
pub async fn associate_direct(
    env: &Env,
    pairs: Vec<(String, String)>,
    parallelism: usize,
) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(pairs)
        .map(|(alloc, eni)| async move {
            env.ec2
                .associate_address()
                .allocation_id(alloc)
                .network_interface_id(eni)
                .allow_reassociation(true)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("AssociateAddress: {e:?}"))?;
            Ok(())
        })
        .buffered(parallelism)
        .collect()
        .await;
    results.into_iter().collect()
}

/// allocation id -> network interface id (None when unassociated), straight from moto.
pub async fn moto_associations(env: &Env) -> anyhow::Result<HashMap<String, Option<String>>> {
    let out = env
        .ec2
        .describe_addresses()
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("DescribeAddresses: {e:?}"))?;
    Ok(out
        .addresses()
        .iter()
        .map(|a| {
            (
                a.allocation_id().unwrap_or_default().to_string(),
                a.network_interface_id()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            )
        })
        .collect())
}

pub async fn create_feip(
    api: &Api<FloatingElasticIP>,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<()> {
    feip::testenv::scenario::create_in(api, name, spec)
        .await
        .with_context(|| format!("creating FloatingElasticIP {name}"))?;
    Ok(())
}

fn is_active(f: &FloatingElasticIP) -> bool {
    f.status
        .as_ref()
        .is_some_and(|s| s.phase == Some(feip::crd::Phase::Active))
}

/// Waits until every FloatingElasticIP of the namespace is Active; returns how many there are.
pub async fn wait_all_active(env: &Env, expect: usize, timeout: Duration) -> anyhow::Result<usize> {
    let api: Api<FloatingElasticIP> = Api::namespaced(env.client.clone(), NS);
    let mut last = 0;
    let deadline = Instant::now() + timeout;
    loop {
        let list = api.list(&ListParams::default()).await?;
        let active = list.items.iter().filter(|f| is_active(f)).count();
        if active != last {
            last = active;
        }
        if active >= expect {
            return Ok(active);
        }
        if Instant::now() > deadline {
            anyhow::bail!("only {active} of {expect} addresses Active after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn lease_view(l: &Lease) -> (Option<String>, bool, Option<Timestamp>, Option<Timestamp>) {
    let spec = l.spec.clone().unwrap_or_default();
    let confirmed = l
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("feip.io/confirmed"))
        .is_some_and(|v| v == "true");
    (
        spec.holder_identity,
        confirmed,
        spec.acquire_time.map(|t| t.0),
        spec.renew_time.map(|t| t.0),
    )
}
