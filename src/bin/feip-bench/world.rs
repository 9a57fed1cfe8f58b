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
    /// Every private IP of the interface, the primary first (see `net`).
    pub private_ips: Vec<String>,
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

/// The node the mass failover kills.
pub const VICTIM: usize = 0;
/// The node every address of the mass failover moves to.
pub const SURVIVOR: usize = 1;

/// The FEIP layout: the first `mass` addresses prefer node 0 (the one the mass failover
/// kills) and all name node 1 as their second candidate (so node 1 must take all of them);
/// the others are spread over nodes 1.. with a different node as second candidate. No
/// address but those lists node 0 at all, so its death affects exactly `mass` addresses.
pub fn layout(feips: usize, nodes: usize, mass: usize) -> Vec<(usize, usize)> {
    let others = nodes - 1;
    (0..feips)
        .map(|i| {
            if i < mass {
                (VICTIM, SURVIVOR)
            } else {
                let j = i - mass;
                (1 + j % others, 1 + (j + 1 + j / others) % others)
            }
        })
        .map(|(p, s)| if p == s { (p, 1 + p % others) } else { (p, s) })
        .collect()
}

/// How many private IPs each node needs: one per address that lists it (as first or second
/// candidate), since each address holds a private IP of its own on its holder, and a node may
/// end up holding every address that lists it. At least the primary.
pub fn capacity(layout: &[(usize, usize)], nodes: usize) -> Vec<usize> {
    let mut c = vec![0; nodes];
    for &(p, s) in layout {
        c[p] += 1;
        c[s] += 1;
    }
    c.into_iter().map(|n| n.max(1)).collect()
}

pub fn feip_name(i: usize) -> String {
    format!("f-{i:04}")
}

/// Launches one instance per `(name, heartbeat interval, private IPs)` (with that many private
/// IPs on its interface, distinct across the world: `Moto::launch_instance_with_secondaries`)
/// and its simulated node.
pub async fn launch_nodes(
    env: &Env,
    names: Vec<(String, Duration, usize)>,
    parallelism: usize,
) -> anyhow::Result<Vec<NodeInfo>> {
    let results: Vec<anyhow::Result<NodeInfo>> =
        futures::stream::iter(names.into_iter().enumerate())
            .map(|(i, (name, hb, ips))| async move {
                let secondaries = i32::try_from(ips.saturating_sub(1))?;
                let instance = env
                    .moto
                    .launch_instance_with_secondaries(az(i), secondaries)
                    .await?;
                let mut opts = NodeOptions::new(&name, az(i), &instance.instance_id);
                opts.heartbeat_interval = hb;
                let sim = SimNode::start(env.client.clone(), opts)
                    .await
                    .with_context(|| format!("starting simulated node {name}"))?;
                Ok(NodeInfo {
                    sim,
                    eni: instance.network_interface_id,
                    private_ips: instance.private_ips,
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

/// Associates each `(allocation id, interface, private IP)` with `ec2` (setup's own proxy in
/// front of moto, with the AWS rules: moto alone ignores `PrivateIpAddress`).
pub async fn associate_at(
    ec2: &aws_sdk_ec2::Client,
    targets: Vec<(String, String, String)>,
    parallelism: usize,
) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(targets)
        .map(|(alloc, eni, ip)| async move {
            ec2.associate_address()
                .allocation_id(alloc)
                .network_interface_id(eni)
                .private_ip_address(ip)
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

/// allocation id -> (network interface id, private IP) (None when unassociated), as `ec2`
/// answers DescribeAddresses (through a proxy: with the AWS layer's private IPs).
pub async fn associations_at(
    ec2: &aws_sdk_ec2::Client,
) -> anyhow::Result<HashMap<String, Option<(String, String)>>> {
    let out = ec2
        .describe_addresses()
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("DescribeAddresses: {e:?}"))?;
    let non_empty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_string);
    Ok(out
        .addresses()
        .iter()
        .map(|a| {
            (
                a.allocation_id().unwrap_or_default().to_string(),
                non_empty(a.network_interface_id()).zip(non_empty(a.private_ip_address())),
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
