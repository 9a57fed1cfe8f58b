//! Phase 7: controller restart with everything associated: SIGTERM, a new controller, time to
//! /readyz and to leadership, and a window that must show no EC2 mutations.

use std::time::Duration;

use crate::args::Args;
use crate::controller::Controller;
use crate::counts::Mark;
use crate::report::Report;
use crate::step;
use crate::window::{WindowReport, observe, print_window};
use crate::world::Env;

#[derive(Debug, Default, serde::Serialize)]
pub struct RestartReport {
    pub addresses: usize,
    pub shutdown_seconds: f64,
    pub ready_seconds: f64,
    pub leader_seconds: f64,
    pub window: WindowReport,
}

pub async fn restart_phase(
    env: &Env,
    mut ctl: Controller,
    args: &Args,
    report: &mut Report,
) -> anyhow::Result<()> {
    step("restart: SIGTERM, start a new controller, measure readiness and EC2 mutations");
    // The revived node must be healthy again before the restart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mark = Mark::now(env);
    let shutdown = ctl.terminate().await?;
    ctl = Controller::start(env, 1)?;
    let ready = ctl.wait_ready(Duration::from_secs(60)).await?;
    let leader = ctl.wait_leader(Duration::from_secs(60)).await? + ready;
    println!(
        "    shutdown {:.3}s; new controller ready {:.3}s after spawn, leading after {:.3}s",
        shutdown.as_secs_f64(),
        ready.as_secs_f64(),
        leader.as_secs_f64()
    );
    let w = observe(
        env,
        &ctl,
        "after restart",
        args.feips + 2,
        Duration::from_secs(args.restart_secs),
    )
    .await?;
    print_window(&w);
    // From the SIGTERM on (the window itself starts once the new controller is ready).
    report.scenarios.push(mark.scenario(env, "restart", 0));
    report.restart = Some(RestartReport {
        addresses: args.feips + 2,
        shutdown_seconds: shutdown.as_secs_f64(),
        ready_seconds: ready.as_secs_f64(),
        leader_seconds: leader.as_secs_f64(),
        window: w,
    });
    let _ = ctl.terminate().await;
    Ok(())
}
