//! Phases 2 and 4: steady-state windows. The baseline with only the two trial addresses (for
//! "EC2 calls independent of the number of addresses"), then the window at scale.

use std::time::Duration;

use crate::args::Args;
use crate::controller::Controller;
use crate::counts::Mark;
use crate::report::Report;
use crate::step;
use crate::window::{observe, print_window};
use crate::world::Env;

pub async fn baseline_phase(
    env: &Env,
    ctl: &Controller,
    args: &Args,
    report: &mut Report,
) -> anyhow::Result<()> {
    step(&format!(
        "baseline: steady state with 2 addresses for {}s",
        args.baseline_secs
    ));
    let mark = Mark::now(env);
    let w = observe(
        env,
        ctl,
        "baseline",
        2,
        Duration::from_secs(args.baseline_secs),
    )
    .await?;
    print_window(&w);
    report.scenarios.push(mark.scenario(env, "baseline", 0));
    report.baseline = Some(w);
    Ok(())
}

pub async fn steady_phase(
    env: &Env,
    ctl: &Controller,
    args: &Args,
    report: &mut Report,
) -> anyhow::Result<()> {
    step(&format!(
        "steady state with {} addresses for {}s",
        args.feips + 2,
        args.steady_secs
    ));
    // Let the adoption burst (lease creation, first confirmations) settle first.
    tokio::time::sleep(Duration::from_secs(if args.smoke { 1 } else { 30 })).await;
    let mark = Mark::now(env);
    let w = observe(
        env,
        ctl,
        "steady",
        args.feips + 2,
        Duration::from_secs(args.steady_secs),
    )
    .await?;
    print_window(&w);
    report.scenarios.push(mark.scenario(env, "steady state", 0));
    report.steady = Some(w);
    Ok(())
}
