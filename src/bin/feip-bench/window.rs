//! One observation window (the baseline, the steady state, after the restart): EC2 calls from
//! the proxy log, Kubernetes writes from the audit log, CPU and RSS from /proc, reconciles
//! from /metrics.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::controller::Controller;
use crate::counts::{Audit, AuditEvent, controller_writes, ec2_counts, mutations};
use crate::procfs::{clock_ticks_per_sec, loadavg, mib};
use crate::stats::secs;
use crate::world::Env;

#[derive(Debug, Default, serde::Serialize)]
pub struct WindowReport {
    pub label: String,
    pub feips: usize,
    pub seconds: f64,
    pub ec2_calls: BTreeMap<String, usize>,
    pub ec2_per_minute: BTreeMap<String, f64>,
    pub ec2_throttled: usize,
    pub ec2_mutations: usize,
    pub k8s_writes: BTreeMap<String, usize>,
    pub k8s_writes_per_sec: BTreeMap<String, f64>,
    pub k8s_writes_per_sec_total: f64,
    pub reconciles_per_sec: f64,
    pub cpu_percent: f64,
    pub rss_mib_end: f64,
    pub rss_mib_max: f64,
    pub rss_hwm_mib: f64,
    pub loadavg_start: String,
    pub loadavg_end: String,
}

/// Observes the controller for `dur`: EC2 calls (proxy log), Kubernetes writes (audit log),
/// CPU and RSS (/proc), reconciles (/metrics).
pub async fn observe(
    env: &Env,
    ctl: &Controller,
    label: &str,
    feips: usize,
    dur: Duration,
) -> anyhow::Result<WindowReport> {
    let mut audit = Audit::new(env.cp.audit_log());
    let log_from = env.proxy.log_len();
    let load_start = loadavg();
    let reconciles_start = ctl.metric("feip_reconcile_duration_seconds_count").await;
    let start_wall = Timestamp::now();
    let first = ctl.sample()?;
    let mut rss_max = first.rss_kib;
    let deadline = Instant::now() + dur;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1).min(deadline - Instant::now())).await;
        if let Ok(s) = ctl.sample() {
            rss_max = rss_max.max(s.rss_kib);
        }
    }
    let last = ctl.sample()?;
    let end_wall = Timestamp::now();
    let reconciles_end = ctl.metric("feip_reconcile_duration_seconds_count").await;
    let seconds = last.at.duration_since(first.at).as_secs_f64().max(0.001);
    let records = env.proxy.requests_since(log_from);
    let (ec2_calls, ec2_throttled) = ec2_counts(&records);
    // The audit log lags slightly: wait for the window's end to be written, then cut there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events: Vec<AuditEvent> = audit
        .read_new()?
        .into_iter()
        .filter(|e| e.at >= start_wall && e.at < end_wall)
        .collect();
    let k8s_writes = controller_writes(&events);
    let window = secs(end_wall, start_wall).max(0.001);
    Ok(WindowReport {
        label: label.into(),
        feips,
        seconds,
        ec2_per_minute: ec2_calls
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64 * 60.0 / seconds))
            .collect(),
        ec2_mutations: mutations(&records),
        ec2_calls,
        ec2_throttled,
        k8s_writes_per_sec: k8s_writes
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64 / window))
            .collect(),
        k8s_writes_per_sec_total: k8s_writes.values().sum::<usize>() as f64 / window,
        k8s_writes,
        reconciles_per_sec: (reconciles_end - reconciles_start) / seconds,
        cpu_percent: (last.cpu_ticks - first.cpu_ticks) as f64 / clock_ticks_per_sec() / seconds
            * 100.0,
        rss_mib_end: mib(last.rss_kib),
        rss_mib_max: mib(rss_max),
        rss_hwm_mib: mib(last.hwm_kib),
        loadavg_start: load_start,
        loadavg_end: loadavg(),
    })
}

pub fn print_window(w: &WindowReport) {
    println!(
        "  [{}] {} addresses, {:.0}s, load {} -> {}",
        w.label, w.feips, w.seconds, w.loadavg_start, w.loadavg_end
    );
    for (op, per_min) in &w.ec2_per_minute {
        println!(
            "    EC2 {op:<22} {per_min:8.2}/min ({} calls)",
            w.ec2_calls[op]
        );
    }
    println!(
        "    EC2 mutations {}  throttled responses {}",
        w.ec2_mutations, w.ec2_throttled
    );
    for (k, per_s) in &w.k8s_writes_per_sec {
        println!("    k8s {k:<40} {per_s:8.3}/s ({} writes)", w.k8s_writes[k]);
    }
    println!(
        "    k8s writes total {:.3}/s; reconciles {:.1}/s; CPU {:.1}% of one core; RSS {:.1} MiB (max {:.1}, peak {:.1})",
        w.k8s_writes_per_sec_total,
        w.reconciles_per_sec,
        w.cpu_percent,
        w.rss_mib_end,
        w.rss_mib_max,
        w.rss_hwm_mib
    );
}
