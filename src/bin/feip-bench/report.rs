//! The report: every figure (written with `--json`), the machine it ran on, the targets (met
//! or not) and the smoke run's checks.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;

use crate::args::Args;
use crate::counts::ScenarioEc2;
use crate::latency::LatencyReport;
use crate::mass::MassReport;
use crate::procfs::loadavg;
use crate::restart::RestartReport;
use crate::window::WindowReport;
use crate::world::Env;

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub smoke: bool,
    pub machine: BTreeMap<String, String>,
    pub setup: BTreeMap<String, f64>,
    pub cold_start_ready_seconds: f64,
    pub adoption: BTreeMap<String, f64>,
    pub baseline: Option<WindowReport>,
    pub steady: Option<WindowReport>,
    pub latency: Vec<LatencyReport>,
    pub mass: Option<MassReport>,
    pub restart: Option<RestartReport>,
    /// Per scenario: AssociateAddress / DisassociateAddress sent and displacements caused.
    pub scenarios: Vec<ScenarioEc2>,
    /// `FaultProxy::displacements()` of the controller's proxy over the whole run.
    pub displacements_total: usize,
    /// AssociateAddress through the controller's proxy over the whole run, and the addresses
    /// the scenarios moved in all (the first may not exceed the second).
    pub associate_total: usize,
    pub moved_total: usize,
    pub targets: Vec<(String, String, bool)>,
}

pub fn machine(env: &Env, args: &Args) -> BTreeMap<String, String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or("?".into(), |k| {
            format!("{:.1} GiB", k as f64 / 1024.0 / 1024.0)
        });
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut m = BTreeMap::new();
    m.insert("cpus (nproc)".into(), cpus.to_string());
    m.insert("cpu model".into(), model);
    m.insert("memory".into(), mem);
    m.insert("feip binary".into(), env.feip_bin.display().to_string());
    m.insert("profile".into(), env.profile.clone());
    m.insert(
        "kubernetes".into(),
        env.cp.tools().kubernetes_version.clone(),
    );
    m.insert("loadavg at start".into(), loadavg());
    m.insert(
        "controller settings".into(),
        format!(
            "defaults, except FEIP_EC2_TIMEOUT={}ms and a safety margin of {}ms (moto is slow)",
            args.ec2_timeout.as_millis(),
            (args.ec2_timeout * 2 + Duration::from_secs(1)).as_millis()
        ),
    );
    m.insert(
        "test EC2".into(),
        format!(
            "AWS rules on, DescribeAddresses consistency lag {} ms",
            args.consistency_lag.as_millis()
        ),
    );
    m.insert(
        "size".into(),
        format!(
            "{} addresses, {} nodes, mass {}, {} trials/mode, heartbeat trials {}ms/{}ms",
            args.feips,
            args.nodes,
            args.mass,
            args.trials,
            args.hb_interval.as_millis(),
            args.hb_timeout.as_millis()
        ),
    );
    m
}

/// AWS's rules, checked on every run (smoke or full): no scenario displaced an address
/// (associated a second one at an occupied private IP), sent more AssociateAddress than it
/// moved addresses, or disassociated one.
pub fn ec2_checks(r: &Report) -> anyhow::Result<()> {
    let mut v: Vec<String> = r
        .scenarios
        .iter()
        .filter_map(ScenarioEc2::violation)
        .collect();
    if r.displacements_total > 0 && v.is_empty() {
        v.push(format!(
            "{} displacement(s) outside the scenarios",
            r.displacements_total
        ));
    }
    if r.associate_total > r.moved_total {
        v.push(format!(
            "{} AssociateAddress in the whole run for {} moved addresses",
            r.associate_total, r.moved_total
        ));
    }
    if let Some(m) = &r.mass
        && m.distinct_private_ips != m.addresses
    {
        v.push(format!(
            "mass failover: the {} moved addresses are on {} distinct private IPs of the survivor",
            m.addresses, m.distinct_private_ips
        ));
    }
    if !v.is_empty() {
        anyhow::bail!("EC2 rules broken:\n  {}", v.join("\n  "));
    }
    println!(
        "EC2 checks passed: {} scenarios, 0 displacements, AssociateAddress <= moved addresses in each",
        r.scenarios.len()
    );
    Ok(())
}

/// The smoke run checks that every phase produced numbers, not how good they are.
pub fn smoke_checks(r: &Report) -> anyhow::Result<()> {
    for l in &r.latency {
        if l.end_to_end.n == 0 || l.overhead.n == 0 {
            anyhow::bail!("smoke: no complete latency trial for {}", l.mode);
        }
    }
    let mass = r.mass.as_ref().context("smoke: no mass failover")?;
    if mass.associate_calls < mass.addresses {
        anyhow::bail!("smoke: mass failover sent fewer associates than addresses");
    }
    if r.adoption.get("ec2 mutations").copied() != Some(0.0) {
        anyhow::bail!("smoke: the adoption remapped addresses");
    }
    let restart = r.restart.as_ref().context("smoke: no restart")?;
    if restart.window.ec2_mutations != 0 {
        anyhow::bail!("smoke: the restart remapped addresses");
    }
    println!("smoke checks passed");
    Ok(())
}

pub fn targets(r: &Report) -> Vec<(String, String, bool)> {
    let mut t = Vec::new();
    let lat = |mode: &str| r.latency.iter().find(|l| l.mode == mode);
    let worst_overhead = r
        .latency
        .iter()
        .map(|l| l.overhead.p99)
        .fold(f64::NAN, f64::max);
    t.push((
        "controller overhead p99 <= 50 ms at 1,000 addresses".into(),
        format!("{:.1} ms (worst mode)", worst_overhead * 1000.0),
        worst_overhead <= 0.050,
    ));
    if let Some(l) = lat("probe") {
        t.push((
            "end-to-end failover p99 <= 5 s with probe detection (1s x 3)".into(),
            format!("{:.3} s", l.end_to_end.p99),
            l.end_to_end.p99 <= 5.0,
        ));
    }
    if let Some(s) = &r.steady {
        t.push((
            "steady state: 0 mutating EC2 calls".into(),
            format!("{}", s.ec2_mutations),
            s.ec2_mutations == 0,
        ));
        let da = |w: &WindowReport| {
            w.ec2_per_minute
                .get("DescribeAddresses")
                .copied()
                .unwrap_or(0.0)
        };
        if let Some(b) = &r.baseline {
            t.push((
                "steady state: DescribeAddresses per interval independent of the address count"
                    .into(),
                format!(
                    "{:.2}/min at {} vs {:.2}/min at {}",
                    da(b),
                    b.feips,
                    da(s),
                    s.feips
                ),
                da(s) <= da(b) * 1.1 + 0.5,
            ));
        }
        t.push((
            "RSS <= 64 MiB at 1,000 addresses / 200 nodes".into(),
            format!(
                "{:.1} MiB (max in window {:.1}, peak {:.1})",
                s.rss_mib_end, s.rss_mib_max, s.rss_hwm_mib
            ),
            s.rss_mib_max <= 64.0,
        ));
    }
    if let Some(m) = &r.mass {
        let after = m.all_confirmed_after - m.detected_after;
        t.push((
            format!(
                "mass failover of {} near the EC2 budget bound (~detection + 10 s), 0 throttling",
                m.addresses
            ),
            format!(
                "{:.2} s after detection (bound {:.1} s), {} throttled",
                after, m.budget_bound_after_detection, m.throttled
            ),
            after <= m.budget_bound_after_detection + 2.0 && m.throttled == 0,
        ));
    }
    t.push((
        "adoption of pre-associated addresses: 0 EC2 mutations".into(),
        format!(
            "{} mutations",
            r.adoption.get("ec2 mutations").copied().unwrap_or(f64::NAN)
        ),
        r.adoption.get("ec2 mutations").copied() == Some(0.0),
    ));
    if let Some(m) = &r.mass {
        t.push((
            format!(
                "mass failover: AssociateAddress <= {} moved addresses, on distinct private IPs",
                m.addresses
            ),
            format!(
                "{} AssociateAddress, {} distinct private IPs, {} displacements",
                m.associate_calls, m.distinct_private_ips, m.displacements
            ),
            m.associate_calls <= m.addresses
                && m.distinct_private_ips == m.addresses
                && m.displacements == 0,
        ));
    }
    t.push((
        "no displacement (a second Elastic IP associated at an occupied private IP)".into(),
        format!("{} in the whole run", r.displacements_total),
        r.displacements_total == 0,
    ));
    if let Some(rs) = &r.restart {
        t.push((
            "restart: 0 EC2 mutations, ready in under 10 s".into(),
            format!(
                "{} mutations, ready {:.3} s",
                rs.window.ec2_mutations, rs.ready_seconds
            ),
            rs.window.ec2_mutations == 0 && rs.ready_seconds < 10.0,
        ));
    }
    t
}

pub fn print_targets(r: &Report) {
    println!(
        "\n==> targets ({} build{})",
        r.machine.get("profile").map_or("?", String::as_str),
        if r.smoke {
            ", SMOKE: sizes too small to judge"
        } else {
            ""
        }
    );
    for (name, value, met) in &r.targets {
        println!(
            "    [{}] {name}: {value}",
            if *met { "met" } else { "NOT MET" }
        );
    }
}
