//! feip-bench: measures how fast and how cheap feip is, against the real local environment
//! (kube-apiserver + etcd, moto behind the fault proxy with EC2's token buckets emulated,
//! simulated nodes) with the real `feip controller` binary as a subprocess, so its RSS and CPU
//! can be read from `/proc/<pid>`.
//!
//! Phases, in order (see docs/benchmarks.md for what each figure means), one module each:
//! 1. setup (timed separately: moto is slow), controller start and readiness (`setup`);
//! 2. a short steady-state window with only the two trial addresses (the baseline for "EC2
//!    calls independent of the number of addresses") (`steady`);
//! 3. adoption of N pre-associated addresses (created while the controller runs) (`adoption`);
//! 4. the steady-state window at scale: EC2 calls by operation, Kubernetes writes by resource
//!    (audit log, the controller's identity only), RSS and CPU (`steady`);
//! 5. failover latency trials under that load, per detection mode (heartbeat staleness;
//!    active TCP probe 1s x 3), each trial timed stage by stage (`latency`);
//! 6. mass failover: the node holding M addresses dies (`mass`);
//! 7. controller restart with everything associated: time to /readyz, EC2 mutations
//!    (`restart`).
//!
//! Shared pieces: `args` (flags), `controller` (the subprocess), `procfs` (/proc sampling),
//! `stats` (clock and percentiles), `counts` (audit log and EC2 request counts), `window`
//! (one observation window), `world` (the environment and its nodes and addresses), `report`
//! (the JSON report and the targets).
//!
//! `--smoke` runs every phase at a tiny size (CI keeps the harness working; its numbers mean
//! nothing). `--json FILE` writes every figure and every trial.

mod adoption;
mod args;
mod controller;
mod counts;
mod latency;
mod mass;
mod procfs;
mod report;
mod restart;
mod setup;
mod stats;
mod steady;
mod window;
mod world;

use std::time::Instant;

use args::Args;
use report::Report;

const CONTROLLER_USER: &str = "feip-bench-controller";
const LEADER_NS: &str = "feip-system";
const NS: &str = "feip-bench";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    feip::install_crypto_provider();
    let args = args::parse_args()?;
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
    let started = Instant::now();
    let report = tokio::select! {
        r = bench(&args) => r?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
    };
    report::print_targets(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        println!("\nresults written to {}", path.display());
    }
    println!(
        "\nfeip-bench finished in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    report::ec2_checks(&report)?;
    if args.smoke {
        report::smoke_checks(&report)?;
    }
    Ok(())
}

/// Runs the phases in order; a phase with a zero size or duration is skipped.
async fn bench(args: &Args) -> anyhow::Result<Report> {
    let mut report = Report {
        smoke: args.smoke,
        ..Report::default()
    };
    let env = setup::start_env(args, &mut report).await?;
    let world = setup::build_world(&env, args, &mut report).await?;
    let mut ctl = setup::start_controller(&env, &world, args, &mut report).await?;
    if args.baseline_secs > 0 {
        steady::baseline_phase(&env, &ctl, args, &mut report).await?;
    }
    adoption::adoption_phase(&env, &world, args, &mut report).await?;
    if args.steady_secs > 0 {
        steady::steady_phase(&env, &ctl, args, &mut report).await?;
    }
    if args.trials > 0 {
        latency::latency_phase(&env, &ctl, &world, args, &mut report).await?;
    }
    if args.mass > 0 {
        mass::mass_phase(&env, &ctl, &world, args, &mut report).await?;
    }
    if args.restart_secs > 0 {
        restart::restart_phase(&env, ctl, args, &mut report).await?;
    } else {
        let _ = ctl.terminate().await;
    }
    report.displacements_total = env.proxy.displacements().len();
    report.associate_total = env.proxy.count("AssociateAddress");
    report.moved_total = report.scenarios.iter().map(|s| s.moved_addresses).sum();
    report.targets = report::targets(&report);
    Ok(report)
}

/// Prints the start of a step, with the machine's load.
fn step(what: &str) {
    println!("\n==> {what} (load {})", procfs::loadavg());
}
