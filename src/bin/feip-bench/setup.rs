//! Phase 1: the environment, the world (instances, simulated nodes, Elastic IPs, all timed
//! separately: moto is slow), the two trial addresses, the controller start and readiness.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};

use feip::crd::FloatingElasticIP;
use feip::testenv::{ControlPlane, FaultProxy, Moto, ec2_client};

use crate::args::Args;
use crate::controller::Controller;
use crate::counts::Mark;
use crate::report::{Report, machine};
use crate::stats::Clock;
use crate::step;
use crate::world::{
    Env, NodeInfo, World, allocate, associate_at, associations_at, capacity, create_feip,
    launch_nodes, layout, wait_all_active,
};
use crate::{CONTROLLER_USER, LEADER_NS, NS};

fn sibling_binary(name: &str) -> anyhow::Result<(PathBuf, String)> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        anyhow::bail!(
            "{} not found next to feip-bench; build both with `cargo build --release --features testenv --bins`",
            path.display()
        );
    }
    let profile = exe
        .parent()
        .and_then(|p| p.file_name())
        .map_or("?".into(), |p| p.to_string_lossy().to_string());
    Ok((path, profile))
}

/// Starts etcd + kube-apiserver, moto and the fault proxy (EC2 token buckets on), creates the
/// namespaces and records the machine.
pub async fn start_env(args: &Args, report: &mut Report) -> anyhow::Result<Env> {
    let (feip_bin, profile) = sibling_binary("feip")?;

    step("starting etcd + kube-apiserver, moto and the fault proxy (EC2 token buckets on)");
    let t = Instant::now();
    let cp = ControlPlane::start().await?;
    let moto = Moto::start().await?;
    let proxy = FaultProxy::start(moto.url()).await?;
    proxy.enable_ec2_budget();
    proxy.set_consistency_lag(args.consistency_lag);
    let client = cp.client().await?;
    let ec2 = ec2_client(moto.url()).await;
    let controller_kubeconfig = cp.user_kubeconfig(CONTROLLER_USER, &["system:masters"])?;
    let logs = std::env::temp_dir().join(format!("feip-bench-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    println!("    controller logs: {}", logs.display());
    let env = Env {
        logs,
        ec2_timeout: args.ec2_timeout,
        clock: Clock::new(),
        cp,
        moto,
        proxy,
        client,
        ec2,
        feip_bin,
        profile,
        controller_kubeconfig,
    };
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    for ns in [LEADER_NS, NS] {
        let obj: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?;
        namespaces.create(&PostParams::default(), &obj).await?;
    }
    report
        .setup
        .insert("control plane + moto".into(), t.elapsed().as_secs_f64());
    report.machine = machine(&env, args);
    for (k, v) in &report.machine {
        println!("    {k}: {v}");
    }
    Ok(env)
}

/// Launches the instances (each with one private IP per address that lists its node) and
/// simulated nodes, allocates the Elastic IPs and pre-associates the scale addresses to
/// distinct private IPs of their first candidate, through a proxy of setup's own (the AWS
/// rules on, so `PrivateIpAddress` is honoured; no EC2 budget, no lag; its requests are not
/// in the controller proxy's log).
pub async fn build_world(env: &Env, args: &Args, report: &mut Report) -> anyhow::Result<World> {
    step(&format!(
        "setup: {} + 4 instances and simulated nodes, {} + 2 Elastic IPs (parallelism {})",
        args.nodes, args.feips, args.setup_parallelism
    ));
    let pairs = layout(args.feips, args.nodes, args.mass);
    let capacity = capacity(&pairs, args.nodes);
    let (nodes, hb, probe) = setup_nodes(env, args, &capacity, report).await?;
    let (allocs, hb_alloc, probe_alloc) = setup_addresses(env, args, report).await?;
    let feips: Vec<(String, usize, usize)> = pairs
        .into_iter()
        .zip(allocs)
        .map(|((p, s), a)| (a, p, s))
        .collect();
    let t = Instant::now();
    pre_associate(env, &nodes, &feips, args, report).await?;
    report
        .setup
        .insert("pre-associate addresses".into(), t.elapsed().as_secs_f64());
    println!(
        "    pre-associated in {:.1}s (setup's own proxy, distinct private IPs, not counted)",
        t.elapsed().as_secs_f64()
    );
    Ok(World {
        nodes,
        feips,
        hb,
        probe,
        hb_alloc,
        probe_alloc,
    })
}

/// Associates each scale address with the next unused private IP of its first candidate,
/// through setup's own proxy, and checks the outcome: no displacement, every address at its
/// own (interface, private IP).
async fn pre_associate(
    env: &Env,
    nodes: &[NodeInfo],
    feips: &[(String, usize, usize)],
    args: &Args,
    report: &mut Report,
) -> anyhow::Result<()> {
    let proxy = FaultProxy::start(env.moto.url()).await?;
    proxy.set_consistency_lag(Duration::ZERO);
    let ec2 = ec2_client(&proxy.url()).await;
    let mut used = vec![0usize; nodes.len()];
    let mut targets = Vec::new();
    for (alloc, p, _) in feips {
        let ip = nodes[*p].private_ips.get(used[*p]).with_context(|| {
            format!(
                "{} has no private IP left to pre-associate",
                nodes[*p].sim.name
            )
        })?;
        used[*p] += 1;
        targets.push((alloc.clone(), nodes[*p].eni.clone(), ip.clone()));
    }
    associate_at(&ec2, targets.clone(), args.setup_parallelism).await?;
    let displaced = proxy.displacements().len();
    report
        .setup
        .insert("pre-associate displacements".into(), displaced as f64);
    anyhow::ensure!(
        displaced == 0,
        "setup: pre-associating displaced {displaced} addresses: {:?}",
        proxy.displacements()
    );
    let now = associations_at(&ec2).await?;
    let wrong: Vec<_> = targets
        .iter()
        .filter(|(a, eni, ip)| now.get(a) != Some(&Some((eni.clone(), ip.clone()))))
        .collect();
    anyhow::ensure!(
        wrong.is_empty(),
        "setup: {} addresses not at their (interface, private IP) after pre-association, e.g. {:?}",
        wrong.len(),
        wrong.first()
    );
    Ok(())
}

/// The scale nodes (each with the private IPs `capacity` says), then the heartbeat trial pair
/// and the probe trial pair (one address each: the primary IP is enough).
async fn setup_nodes(
    env: &Env,
    args: &Args,
    capacity: &[usize],
    report: &mut Report,
) -> anyhow::Result<(Vec<NodeInfo>, [NodeInfo; 2], [NodeInfo; 2])> {
    let t = Instant::now();
    let mut names: Vec<(String, Duration, usize)> = (0..args.nodes)
        .map(|i| {
            (
                format!("bench-n{i:03}"),
                Duration::from_secs(10),
                capacity[i],
            )
        })
        .collect();
    names.push(("bench-hb-a".into(), args.hb_interval, 1));
    names.push(("bench-hb-b".into(), args.hb_interval, 1));
    names.push(("bench-probe-a".into(), Duration::from_secs(10), 1));
    names.push(("bench-probe-b".into(), Duration::from_secs(10), 1));
    let private_ips: usize = names.iter().map(|n| n.2).sum();
    let mut nodes = launch_nodes(env, names, args.setup_parallelism).await?;
    let probe_b = nodes.pop().context("node")?;
    let probe_a = nodes.pop().context("node")?;
    let hb_b = nodes.pop().context("node")?;
    let hb_a = nodes.pop().context("node")?;
    report
        .setup
        .insert("instances + nodes".into(), t.elapsed().as_secs_f64());
    report
        .setup
        .insert("private IPs".into(), private_ips as f64);
    report.setup.insert(
        "max private IPs per interface".into(),
        capacity.iter().copied().max().unwrap_or(1) as f64,
    );
    println!(
        "    {} nodes with {private_ips} private IPs (at most {} per interface) in {:.1}s",
        nodes.len() + 4,
        capacity.iter().copied().max().unwrap_or(1),
        t.elapsed().as_secs_f64()
    );
    Ok((nodes, [hb_a, hb_b], [probe_a, probe_b]))
}

/// The scale addresses' allocation ids, then the heartbeat and the probe trial address.
async fn setup_addresses(
    env: &Env,
    args: &Args,
    report: &mut Report,
) -> anyhow::Result<(Vec<String>, String, String)> {
    let t = Instant::now();
    let mut allocs = allocate(env, args.feips + 2, args.setup_parallelism).await?;
    let probe_alloc = allocs.pop().context("alloc")?;
    let hb_alloc = allocs.pop().context("alloc")?;
    report
        .setup
        .insert("allocate addresses".into(), t.elapsed().as_secs_f64());
    println!(
        "    {} addresses allocated in {:.1}s",
        allocs.len() + 2,
        t.elapsed().as_secs_f64()
    );
    Ok((allocs, hb_alloc, probe_alloc))
}

/// Creates the two trial addresses, starts the controller and waits for readiness and for
/// both trial addresses to be Active.
pub async fn start_controller(
    env: &Env,
    world: &World,
    args: &Args,
    report: &mut Report,
) -> anyhow::Result<Controller> {
    step(&format!(
        "starting the feip controller ({} build) and the two trial addresses",
        env.profile
    ));
    let api: Api<FloatingElasticIP> = Api::namespaced(env.client.clone(), NS);
    let hb_timeout = format!("{}ms", args.hb_timeout.as_millis());
    create_feip(
        &api,
        "trial-heartbeat",
        serde_json::json!({
            "allocationId": world.hb_alloc,
            "candidates": [{"node": world.hb[0].sim.name}, {"node": world.hb[1].sim.name}],
            "health": {"heartbeatTimeout": hb_timeout, "probe": {"type": "None"}},
        }),
    )
    .await?;
    create_feip(
        &api,
        "trial-probe",
        serde_json::json!({
            "allocationId": world.probe_alloc,
            "candidates": [{"node": world.probe[0].sim.name}, {"node": world.probe[1].sim.name}],
        }),
    )
    .await?;
    let mark = Mark::now(env);
    let mut ctl = Controller::start(env, 0)?;
    let ready = ctl.wait_ready(Duration::from_secs(60)).await?;
    report.cold_start_ready_seconds = ready.as_secs_f64();
    println!(
        "    ready {:.3}s after spawn (log {})",
        ready.as_secs_f64(),
        ctl.log.display()
    );
    wait_all_active(env, 2, Duration::from_secs(120)).await?;
    // The two trial addresses start unassociated: the controller associates each once.
    report
        .scenarios
        .push(mark.scenario(env, "start (2 trial addresses)", 2));
    Ok(ctl)
}
