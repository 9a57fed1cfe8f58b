//! Phase 6: mass failover, the node holding M addresses dies; all M move to one survivor,
//! each onto a private IP of its own there (AWS: one Elastic IP per private IP).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams};

use feip::testenv::wait_for;

use crate::NS;
use crate::args::Args;
use crate::controller::{Controller, log_time};
use crate::counts::{Mark, ScenarioEc2, ec2_counts};
use crate::procfs::loadavg;
use crate::report::Report;
use crate::stats::{Stats, print_stats, secs, stats};
use crate::step;
use crate::world::{Env, SURVIVOR, VICTIM, World, feip_name, lease_view, moto_associations};

#[derive(Debug, Default, serde::Serialize)]
pub struct MassReport {
    pub addresses: usize,
    pub victim: String,
    pub survivor: String,
    /// Private IPs on the survivor's interface, and those no address held before the failover.
    pub survivor_private_ips: usize,
    pub survivor_free_private_ips: usize,
    pub detected_after: f64,
    pub all_confirmed_after: f64,
    pub confirmed_after_detection: Stats,
    /// When the proxy received each AssociateAddress, after detection: the controller's pacing
    /// (its client bucket: 48 at once, then 5/s), apart from how fast the test EC2 answers.
    pub associate_received_after_detection: Stats,
    pub budget_bound_after_detection: f64,
    pub associate_calls: usize,
    /// `FaultProxy::displacements()` during the failover (must be 0).
    pub displacements: usize,
    /// Distinct private IPs of the survivor the moved addresses truly ended up on (must be
    /// `addresses`), as the AWS layer's model says.
    pub distinct_private_ips: usize,
    pub throttled: usize,
    pub ec2_calls: BTreeMap<String, usize>,
    pub loadavg: String,
}

async fn mass_failover(
    env: &Env,
    ctl: &Controller,
    world: &World,
    mass: usize,
) -> anyhow::Result<(MassReport, ScenarioEc2)> {
    let victim = &world.nodes[VICTIM];
    let survivor = &world.nodes[SURVIVOR];
    let targets: HashMap<String, String> = world
        .feips
        .iter()
        .take(mass)
        .map(|(alloc, p, s)| {
            debug_assert!(*p == VICTIM && *s == SURVIVOR);
            (alloc.clone(), world.nodes[*s].eni.clone())
        })
        .collect();
    let held = world
        .feips
        .iter()
        .filter(|(_, p, _)| *p == SURVIVOR)
        .count();
    let mark = Mark::now(env);
    let log_from = mark.log;
    let load = loadavg();
    let injected = Timestamp::now();
    victim.sim.stop();
    wait_for(
        &format!("{mass} addresses re-associated"),
        Duration::from_secs(300),
        || async {
            let now = moto_associations(env).await?;
            Ok(targets
                .iter()
                .all(|(a, eni)| now.get(a).and_then(|x| x.as_ref()) == Some(eni))
                .then_some(()))
        },
    )
    .await?;
    let confirmed_at = wait_confirmations(env, world, mass).await?;
    let scenario = mark.scenario(env, "mass failover", mass);
    let distinct_private_ips = true_private_ips(env, &targets).await?;
    let records = env.proxy.requests_since(log_from);
    let (ec2_calls, throttled) = ec2_counts(&records);
    let ip = victim.sim.ip.to_string();
    let detected = dead_logged_at(ctl, &ip, injected).unwrap_or(injected);
    let last = confirmed_at.iter().copied().max().unwrap_or(injected);
    let associate_calls = ec2_calls.get("AssociateAddress").copied().unwrap_or(0);
    let associate_received: Vec<f64> = records
        .iter()
        .filter(|r| r.action == "AssociateAddress")
        .map(|r| secs(env.clock.wall(r.at), detected))
        .collect();
    victim.sim.resume().await?;
    let report = MassReport {
        addresses: mass,
        victim: victim.sim.name.clone(),
        survivor: survivor.sim.name.clone(),
        survivor_private_ips: survivor.private_ips.len(),
        survivor_free_private_ips: survivor.private_ips.len().saturating_sub(held),
        detected_after: secs(detected, injected),
        all_confirmed_after: secs(last, injected),
        confirmed_after_detection: stats(
            &confirmed_at
                .iter()
                .map(|t| secs(*t, detected))
                .collect::<Vec<_>>(),
        ),
        associate_received_after_detection: stats(&associate_received),
        // EC2's mutating bucket: burst 50, then 5/s.
        budget_bound_after_detection: (mass.saturating_sub(50)) as f64 / 5.0,
        associate_calls,
        displacements: scenario.displacements,
        distinct_private_ips,
        throttled,
        ec2_calls,
        loadavg: load,
    };
    Ok((report, scenario))
}

/// How many distinct private IPs of their target interface the addresses truly are on
/// (settled; an address elsewhere counts for none).
async fn true_private_ips(env: &Env, targets: &HashMap<String, String>) -> anyhow::Result<usize> {
    let mut ips = HashSet::new();
    for (alloc, eni) in targets {
        if let Some(t) = env.moto.true_association(alloc).await?
            && &t.network_interface_id == eni
        {
            ips.insert(t.private_ip);
        }
    }
    Ok(ips.len())
}

/// Per-address completion: the confirming Lease write (renewTime of the confirmed record) of
/// each of the first `mass` addresses, on its second candidate.
async fn wait_confirmations(
    env: &Env,
    world: &World,
    mass: usize,
) -> anyhow::Result<Vec<Timestamp>> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), NS);
    let all = leases.list(&ListParams::default()).await?;
    let mut confirmed_at = Vec::new();
    for i in 0..mass {
        let name = format!("feip-{}", feip_name(i));
        let to = &world.nodes[world.feips[i].2].sim.name;
        let done = wait_for(
            &format!("{name} confirmed"),
            Duration::from_secs(60),
            || async {
                let l = match all
                    .items
                    .iter()
                    .find(|l| l.metadata.name.as_deref() == Some(&name))
                {
                    Some(l) if lease_view(l).1 => l.clone(),
                    _ => leases.get(&name).await?,
                };
                let (h, c, _, renew) = lease_view(&l);
                Ok((h.as_deref() == Some(to.as_str()) && c)
                    .then_some(renew)
                    .flatten())
            },
        )
        .await?;
        confirmed_at.push(done);
    }
    Ok(confirmed_at)
}

/// When the controller logged the probe of `ip` turning Dead, after `injected`.
fn dead_logged_at(ctl: &Controller, ip: &str, injected: Timestamp) -> Option<Timestamp> {
    ctl.log_lines()
        .into_iter()
        .filter(|v| v["message"] == "probe status changed" && v["ip"] == ip && v["to"] == "Dead")
        .filter_map(|v| log_time(&v))
        .find(|ts| *ts >= injected)
}

pub async fn mass_phase(
    env: &Env,
    ctl: &Controller,
    world: &World,
    args: &Args,
    report: &mut Report,
) -> anyhow::Result<()> {
    step(&format!(
        "mass failover: the node holding {} addresses dies, all move to one survivor",
        args.mass
    ));
    // Let the mutating bucket refill after the trials (EC2 refills 5/s up to 50).
    tokio::time::sleep(Duration::from_secs(if args.smoke { 1 } else { 12 })).await;
    let (m, scenario) = mass_failover(env, ctl, world, args.mass).await?;
    println!(
        "    {} -> {} ({} private IPs, {} free): detected +{:.3}s, all {} confirmed +{:.3}s after injection ({:.3}s after detection; EC2 budget bound {:.1}s); AssociateAddress {}, displacements {}, on {} distinct private IPs, throttled {}, calls {:?}",
        m.victim,
        m.survivor,
        m.survivor_private_ips,
        m.survivor_free_private_ips,
        m.detected_after,
        m.addresses,
        m.all_confirmed_after,
        m.all_confirmed_after - m.detected_after,
        m.budget_bound_after_detection,
        m.associate_calls,
        m.displacements,
        m.distinct_private_ips,
        m.throttled,
        m.ec2_calls
    );
    print_stats(
        "confirmed after detection",
        &m.confirmed_after_detection,
        false,
    );
    print_stats(
        "AssociateAddress received after detection",
        &m.associate_received_after_detection,
        false,
    );
    report.mass = Some(m);
    report.scenarios.push(scenario);
    Ok(())
}
