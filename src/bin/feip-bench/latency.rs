//! Phase 5: failover latency trials under load, per detection mode (heartbeat staleness;
//! active TCP probe 1s x 3), each trial timed stage by stage.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

use feip::crd::FloatingElasticIP;
use feip::testenv::wait_for;

use crate::NS;
use crate::args::Args;
use crate::controller::{Controller, log_time};
use crate::counts::Mark;
use crate::procfs::loadavg;
use crate::report::Report;
use crate::stats::{Stats, print_stats, secs, stats};
use crate::step;
use crate::world::{Env, NodeInfo, World, lease_view};

#[derive(Clone, Debug, Default, serde::Serialize)]
struct Trial {
    mode: String,
    n: usize,
    from: String,
    to: String,
    injected: String,
    /// Seconds after injection.
    detected: f64,
    decided: f64,
    associate_sent: f64,
    confirmed: f64,
    /// associate_sent - detected.
    overhead: f64,
    /// The controller's own figure (status.lastFailover.durationSeconds).
    status_duration: Option<f64>,
    /// status.lastFailover.detectedAt (whole seconds) minus injection.
    status_detected: Option<f64>,
    loadavg: String,
}

struct TrialSetup<'a> {
    mode: &'a str,
    feip: &'a str,
    alloc: &'a str,
    pair: &'a [NodeInfo; 2],
}

/// One trial: stop the holder of the trial address, time each stage of the failover to the
/// other node, bring the stopped node back.
async fn run_trial(
    env: &Env,
    ctl: &Controller,
    t: &TrialSetup<'_>,
    n: usize,
) -> anyhow::Result<Trial> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), NS);
    let feips: Api<FloatingElasticIP> = Api::namespaced(env.client.clone(), NS);
    let lease_name = format!("feip-{}", t.feip);
    let (from, to) = trial_nodes(&leases, &lease_name, t).await?;
    let before = feips
        .get(t.feip)
        .await?
        .status
        .map_or(0, |s| s.failover_count);
    let log_from = env.proxy.log_len();
    let load = loadavg();

    let injected = Timestamp::now();
    from.sim.stop();

    let (decided, confirmed_at) = wait_confirmed(&leases, &lease_name, to, t, n).await?;
    let status = wait_for("the failover record", Duration::from_secs(30), || async {
        Ok(feips
            .get(t.feip)
            .await?
            .status
            .filter(|s| s.failover_count > before && s.last_failover.is_some()))
    })
    .await?;
    let lf = status.last_failover.unwrap_or_default();
    let associate_at = associate_sent_at(env, log_from, t.alloc, to);
    let detected =
        detected_at(ctl, t.feip, injected).or_else(|| lf.detected_at.as_ref().map(|t| t.0));

    from.sim.resume().await?;
    let rel = |ts: Option<Timestamp>| ts.map_or(f64::NAN, |ts| secs(ts, injected));
    let trial = Trial {
        mode: t.mode.into(),
        n,
        from: from.sim.name.clone(),
        to: to.sim.name.clone(),
        injected: injected.to_string(),
        detected: rel(detected),
        decided: rel(decided),
        associate_sent: rel(associate_at),
        confirmed: rel(confirmed_at),
        overhead: rel(associate_at) - rel(detected),
        status_duration: lf.duration_seconds.as_deref().and_then(|d| d.parse().ok()),
        status_detected: lf.detected_at.as_ref().map(|d| secs(d.0, injected)),
        loadavg: load,
    };
    // Let the revived node turn healthy again (probe success, fresh heartbeat) before the next
    // trial, with jitter so kills do not line up with the probe ticks.
    let pause = Duration::from_millis(3000 + rand::random_range(0..1000));
    tokio::time::sleep(pause).await;
    Ok(trial)
}

/// (the confirmed holder, the other node) of the trial pair, from the holder Lease.
async fn trial_nodes<'a>(
    leases: &Api<Lease>,
    lease_name: &str,
    t: &TrialSetup<'a>,
) -> anyhow::Result<(&'a NodeInfo, &'a NodeInfo)> {
    let (holder, confirmed, _, _) = lease_view(&leases.get(lease_name).await?);
    let from_idx = t
        .pair
        .iter()
        .position(|p| Some(&p.sim.name) == holder.as_ref())
        .filter(|_| confirmed)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: holder {holder:?} not confirmed on a trial node",
                t.feip
            )
        })?;
    Ok((&t.pair[from_idx], &t.pair[1 - from_idx]))
}

/// Decision and confirmation from the holder Lease (MicroTime): the first time it shows the
/// new holder confirmed, renewTime is the confirming write.
async fn wait_confirmed(
    leases: &Api<Lease>,
    lease_name: &str,
    to: &NodeInfo,
    t: &TrialSetup<'_>,
    n: usize,
) -> anyhow::Result<(Option<Timestamp>, Option<Timestamp>)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(l) = leases.get(lease_name).await {
            let (h, c, acquire, renew) = lease_view(&l);
            if h.as_deref() == Some(to.sim.name.as_str()) && c {
                return Ok((acquire, renew));
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("{} trial {n}: no confirmed failover within 120s", t.mode);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// When the proxy saw the AssociateAddress of `alloc` to the new holder's interface.
fn associate_sent_at(env: &Env, log_from: usize, alloc: &str, to: &NodeInfo) -> Option<Timestamp> {
    env.proxy
        .requests_since(log_from)
        .into_iter()
        .find(|r| {
            r.action == "AssociateAddress"
                && r.params.get("AllocationId").map(String::as_str) == Some(alloc)
                && r.params.get("NetworkInterfaceId") == Some(&to.eni)
        })
        .map(|r| env.clock.wall(r.at))
}

/// The detection time the controller logged with its "holder change" of `feip` after
/// `injected`.
fn detected_at(ctl: &Controller, feip: &str, injected: Timestamp) -> Option<Timestamp> {
    let feip_key = format!("{NS}/{feip}");
    ctl.log_lines()
        .into_iter()
        .filter(|v| v["message"] == "holder change" && v["feip"] == feip_key.as_str())
        .filter(|v| log_time(v).is_some_and(|ts| ts >= injected))
        .find_map(|v| {
            v["detected_at"]
                .as_str()
                .and_then(|s| s.parse::<Timestamp>().ok())
        })
}

#[derive(Debug, Default, serde::Serialize)]
pub struct LatencyReport {
    pub mode: String,
    trials: Vec<Trial>,
    pub end_to_end: Stats,
    pub detection: Stats,
    pub overhead: Stats,
    pub decision_after_detection: Stats,
    pub confirm_after_associate: Stats,
}

fn latency_report(mode: &str, trials: Vec<Trial>) -> LatencyReport {
    let col = |f: fn(&Trial) -> f64| -> Vec<f64> { trials.iter().map(f).collect() };
    LatencyReport {
        mode: mode.into(),
        end_to_end: stats(&col(|t| t.confirmed)),
        detection: stats(&col(|t| t.detected)),
        overhead: stats(&col(|t| t.overhead)),
        decision_after_detection: stats(&col(|t| t.decided - t.detected)),
        confirm_after_associate: stats(&col(|t| t.confirmed - t.associate_sent)),
        trials,
    }
}

fn print_latency(r: &LatencyReport) {
    println!("  detection mode: {}", r.mode);
    for t in &r.trials {
        println!(
            "    trial {:>2} {} -> {}: detected +{:.3}s decided +{:.3}s associate +{:.3}s confirmed +{:.3}s (overhead {:.1} ms; status says {:?}s) load {}",
            t.n,
            t.from,
            t.to,
            t.detected,
            t.decided,
            t.associate_sent,
            t.confirmed,
            t.overhead * 1000.0,
            t.status_duration,
            t.loadavg
        );
    }
    print_stats("end to end (injection->confirmed)", &r.end_to_end, false);
    print_stats("detection (injection->detected)", &r.detection, false);
    print_stats("overhead (detected->associate)", &r.overhead, true);
    print_stats(
        "decision written after detection",
        &r.decision_after_detection,
        true,
    );
    print_stats(
        "confirmed after associate",
        &r.confirm_after_associate,
        true,
    );
}

/// Phase 5: the trials of each detection mode, one after the other.
pub async fn latency_phase(
    env: &Env,
    ctl: &Controller,
    world: &World,
    args: &Args,
    report: &mut Report,
) -> anyhow::Result<()> {
    let modes = [
        ("heartbeat", "trial-heartbeat", &world.hb_alloc, &world.hb),
        ("probe", "trial-probe", &world.probe_alloc, &world.probe),
    ];
    for (mode, feip, alloc, pair) in modes {
        step(&format!(
            "failover latency, {mode} detection: {} trials under load",
            args.trials
        ));
        let setup = TrialSetup {
            mode,
            feip,
            alloc,
            pair,
        };
        let mark = Mark::now(env);
        let mut trials = Vec::new();
        for n in 1..=args.trials {
            let t = run_trial(env, ctl, &setup, n).await?;
            println!(
                "    trial {n}: end-to-end {:.3}s, overhead {:.1} ms",
                t.confirmed,
                t.overhead * 1000.0
            );
            trials.push(t);
        }
        // Each trial moves the trial address once.
        report.scenarios.push(mark.scenario(
            env,
            &format!("latency, {mode} detection"),
            args.trials,
        ));
        let r = latency_report(mode, trials);
        print_latency(&r);
        report.latency.push(r);
    }
    Ok(())
}
