//! feip-bench: measures how fast and how cheap feip is, against the real local environment
//! (kube-apiserver + etcd, moto behind the fault proxy with EC2's token buckets emulated,
//! simulated nodes) with the real `feip controller` binary as a subprocess, so its RSS and CPU
//! can be read from `/proc/<pid>`.
//!
//! Phases, in order (see docs/benchmarks.md for what each figure means):
//! 1. setup (timed separately: moto is slow), controller start and readiness;
//! 2. a short steady-state window with only the two trial addresses (the baseline for "EC2
//!    calls independent of the number of addresses");
//! 3. adoption of N pre-associated addresses (created while the controller runs);
//! 4. the steady-state window at scale: EC2 calls by operation, Kubernetes writes by resource
//!    (audit log, the controller's identity only), RSS and CPU;
//! 5. failover latency trials under that load, per detection mode (heartbeat staleness;
//!    active TCP probe 1s x 3), each trial timed stage by stage;
//! 6. mass failover: the node holding M addresses dies;
//! 7. controller restart with everything associated: time to /readyz, EC2 mutations.
//!
//! `--smoke` runs every phase at a tiny size (CI keeps the harness working; its numbers mean
//! nothing). `--json FILE` writes every figure and every trial.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};

use feip::crd::FloatingElasticIP;
use feip::testenv::fault_proxy::{Fault, RequestRecord};
use feip::testenv::process::{ManagedProcess, free_port};
use feip::testenv::{
    AZ_A, AZ_C, ControlPlane, FaultProxy, Moto, NodeOptions, REGION, SimNode, ec2_client, wait_for,
};

const CONTROLLER_USER: &str = "feip-bench-controller";
const LEADER_NS: &str = "feip-system";
const NS: &str = "feip-bench";

// ---------------------------------------------------------------------------------------------
// Arguments

#[derive(Clone, Debug)]
struct Args {
    smoke: bool,
    feips: usize,
    nodes: usize,
    mass: usize,
    trials: usize,
    baseline_secs: u64,
    steady_secs: u64,
    restart_secs: u64,
    hb_interval: Duration,
    hb_timeout: Duration,
    setup_parallelism: usize,
    ec2_timeout: Duration,
    json: Option<PathBuf>,
}

impl Args {
    fn full() -> Self {
        Self {
            smoke: false,
            feips: 1000,
            nodes: 200,
            mass: 100,
            trials: 20,
            baseline_secs: 60,
            steady_secs: 300,
            restart_secs: 60,
            hb_interval: Duration::from_secs(1),
            hb_timeout: Duration::from_secs(4),
            setup_parallelism: 8,
            ec2_timeout: Duration::from_secs(5),
            json: None,
        }
    }

    fn smoke() -> Self {
        Self {
            smoke: true,
            feips: 12,
            nodes: 4,
            mass: 4,
            trials: 1,
            baseline_secs: 0,
            steady_secs: 5,
            restart_secs: 3,
            ..Self::full()
        }
    }
}

const USAGE: &str = "feip-bench [--smoke] [--feips N] [--nodes N] [--mass N] [--trials N]
           [--baseline-secs S] [--steady-secs S] [--restart-secs S]
           [--hb-interval-ms MS] [--hb-timeout-ms MS] [--ec2-timeout-ms MS]
           [--setup-parallelism N] [--json FILE]

Benchmarks feip against the real local environment with the `feip` binary next to this one
(build both with `cargo build --release --features testenv --bins`; hack/bench.sh does).
Defaults: 1000 addresses over 200 nodes, 100 on the node killed in the mass failover,
20 trials per detection mode, 60 s baseline, 300 s steady state, 60 s after the restart.
The controller runs with FEIP_EC2_TIMEOUT 5 s (moto is slow at 1,000 addresses; the default
is 2 s) and a leadership safety margin of twice that plus 1 s; everything else is default.
A phase is skipped with a zero: --baseline-secs 0, --steady-secs 0, --trials 0, --mass 0,
--restart-secs 0.
--smoke: every phase at a tiny size, for CI (about a minute).";

fn parse_args() -> anyhow::Result<Args> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut args = if raw.iter().any(|a| a == "--smoke") {
        Args::smoke()
    } else {
        Args::full()
    };
    let mut it = raw.into_iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<String> {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))
        };
        let num = |s: String| -> anyhow::Result<u64> {
            s.parse::<u64>()
                .map_err(|e| anyhow::anyhow!("not a number: {s:?}: {e}"))
        };
        match a.as_str() {
            "--smoke" => {}
            "--feips" => args.feips = num(value(&a)?)? as usize,
            "--nodes" => args.nodes = num(value(&a)?)? as usize,
            "--mass" => args.mass = num(value(&a)?)? as usize,
            "--trials" => args.trials = num(value(&a)?)? as usize,
            "--baseline-secs" => args.baseline_secs = num(value(&a)?)?,
            "--steady-secs" => args.steady_secs = num(value(&a)?)?,
            "--restart-secs" => args.restart_secs = num(value(&a)?)?,
            "--hb-interval-ms" => args.hb_interval = Duration::from_millis(num(value(&a)?)?),
            "--hb-timeout-ms" => args.hb_timeout = Duration::from_millis(num(value(&a)?)?),
            "--ec2-timeout-ms" => args.ec2_timeout = Duration::from_millis(num(value(&a)?)?),
            "--setup-parallelism" => args.setup_parallelism = num(value(&a)?)?.max(1) as usize,
            "--json" => args.json = Some(PathBuf::from(value(&a)?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    if args.nodes < 3 {
        anyhow::bail!("--nodes must be at least 3");
    }
    if args.mass > args.feips {
        anyhow::bail!("--mass cannot exceed --feips");
    }
    Ok(args)
}

// ---------------------------------------------------------------------------------------------
// Small measurement helpers

/// Maps the proxy's `Instant`s to wall-clock time (the controller reports wall-clock times).
struct Clock {
    inst: Instant,
    wall: Timestamp,
}

impl Clock {
    fn new() -> Self {
        Self {
            inst: Instant::now(),
            wall: Timestamp::now(),
        }
    }

    fn wall(&self, at: Instant) -> Timestamp {
        let d = if at >= self.inst {
            SignedDuration::try_from(at - self.inst).unwrap_or_default()
        } else {
            -SignedDuration::try_from(self.inst - at).unwrap_or_default()
        };
        self.wall.checked_add(d).unwrap_or(self.wall)
    }
}

fn secs(later: Timestamp, earlier: Timestamp) -> f64 {
    later.duration_since(earlier).as_secs_f64()
}

#[derive(Clone, Debug, Default, serde::Serialize)]
struct Stats {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

/// Nearest-rank percentiles (with 20 samples, p99 is the maximum).
fn stats(values: &[f64]) -> Stats {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Stats::default();
    }
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Stats {
        n: v.len(),
        p50: rank(0.50),
        p90: rank(0.90),
        p99: rank(0.99),
        max: v[v.len() - 1],
        mean: v.iter().sum::<f64>() / v.len() as f64,
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[derive(Clone, Copy, Debug)]
struct ProcSample {
    at: Instant,
    rss_kib: u64,
    hwm_kib: u64,
    cpu_ticks: u64,
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions and only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn proc_sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    let rss_kib = kib("VmRSS:")?;
    let hwm_kib = kib("VmHWM:").unwrap_or(rss_kib);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(ProcSample {
        at: Instant::now(),
        rss_kib,
        hwm_kib,
        cpu_ticks: utime + stime,
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A minimal HTTP/1.1 GET returning (status, body).
async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await??;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut buf)).await??;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((
        code,
        buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_string(),
    ))
}

/// Reads the kube-apiserver audit log incrementally.
struct Audit {
    path: PathBuf,
    offset: u64,
}

#[derive(Clone, Debug)]
struct AuditEvent {
    at: Timestamp,
    user: String,
    verb: String,
    resource: String,
}

impl Audit {
    fn new(path: &Path) -> Self {
        let offset = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Self {
            path: path.to_path_buf(),
            offset,
        }
    }

    /// Complete events appended since the last call.
    fn read_new(&mut self) -> anyhow::Result<Vec<AuditEvent>> {
        let mut f = std::fs::File::open(&self.path)?;
        f.seek(std::io::SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.offset += complete as u64;
        let mut out = Vec::new();
        for line in buf[..complete].split(|b| *b == b'\n') {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            if v["stage"] != "ResponseComplete" {
                continue;
            }
            let Some(at) = v["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok())
            else {
                continue;
            };
            let obj = &v["objectRef"];
            let mut resource = obj["resource"].as_str().unwrap_or("-").to_string();
            if let Some(sub) = obj["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            if resource == "leases" && obj["namespace"] == LEADER_NS {
                resource = "leases (leader election)".into();
            }
            out.push(AuditEvent {
                at,
                user: v["user"]["username"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                verb: v["verb"].as_str().unwrap_or_default().to_string(),
                resource,
            });
        }
        Ok(out)
    }
}

/// Kubernetes writes (create/update/patch/delete) by the controller, keyed "verb resource".
fn controller_writes(events: &[AuditEvent]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in events.iter().filter(|e| e.user == CONTROLLER_USER) {
        if matches!(e.verb.as_str(), "create" | "update" | "patch" | "delete") {
            *m.entry(format!("{} {}", e.verb, e.resource)).or_default() += 1;
        }
    }
    m
}

fn ec2_counts(records: &[RequestRecord]) -> (BTreeMap<String, usize>, usize) {
    let mut m = BTreeMap::new();
    let mut throttled = 0;
    for r in records {
        *m.entry(r.action.clone()).or_default() += 1;
        if r.fault == Some(Fault::Throttle) {
            throttled += 1;
        }
    }
    (m, throttled)
}

const MUTATING: &[&str] = &["AssociateAddress", "DisassociateAddress"];

fn mutations(records: &[RequestRecord]) -> usize {
    records
        .iter()
        .filter(|r| MUTATING.contains(&r.action.as_str()))
        .count()
}

// ---------------------------------------------------------------------------------------------
// The controller subprocess

struct Controller {
    process: ManagedProcess,
    health: String,
    log: PathBuf,
    spawned: Instant,
}

impl Controller {
    fn start(env: &Env, n: u32) -> anyhow::Result<Self> {
        let port = free_port()?;
        let health = format!("127.0.0.1:{port}");
        // Outside the control plane's scratch directory, which is removed at exit.
        let log = env.logs.join(format!("feip-controller-{n}.log"));
        let args = vec![
            format!(
                "RUST_LOG={}",
                std::env::var("FEIP_BENCH_RUST_LOG").unwrap_or_else(|_| "info".into())
            ),
            format!("AWS_ENDPOINT_URL={}", env.proxy.url()),
            format!("AWS_REGION={REGION}"),
            "AWS_ACCESS_KEY_ID=testing".into(),
            "AWS_SECRET_ACCESS_KEY=testing".into(),
            "AWS_EC2_METADATA_DISABLED=true".into(),
            // moto is one Python process: at 1,000 addresses one DescribeAddresses takes 0.7 s
            // on an idle machine and more than the default 2 s attempt timeout under load.
            // A 5 s timeout needs a safety margin above 2 x 5 s (the default lease is 15 s).
            format!("FEIP_EC2_TIMEOUT={}ms", env.ec2_timeout.as_millis()),
            format!(
                "FEIP_LEADERSHIP_SAFETY_MARGIN={}ms",
                (env.ec2_timeout * 2 + Duration::from_secs(1)).as_millis()
            ),
            env.feip_bin.display().to_string(),
            "controller".into(),
            format!("--kubeconfig={}", env.controller_kubeconfig.display()),
            format!("--leader-election-namespace={LEADER_NS}"),
            format!("--identity=feip-bench-{n}"),
            format!("--health-addr={health}"),
            "--log-format=json".into(),
        ];
        let process = ManagedProcess::start(
            "feip controller",
            Path::new("/usr/bin/env"),
            args,
            log.clone(),
        )?;
        Ok(Self {
            process,
            health,
            log,
            spawned: Instant::now(),
        })
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.process
            .pid()
            .ok_or_else(|| anyhow::anyhow!("controller not running"))
    }

    fn sample(&self) -> anyhow::Result<ProcSample> {
        proc_sample(self.pid()?)
            .ok_or_else(|| anyhow::anyhow!("cannot read /proc of the controller"))
    }

    /// Waits for `/readyz` = 200; returns the time since spawn.
    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            self.process.check_running()?;
            if let Ok((200, _)) = http_get(&self.health, "/readyz").await {
                return Ok(self.spawned.elapsed());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "controller not ready after {timeout:?}; log tail:\n{}",
                    self.process.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn metrics(&self) -> anyhow::Result<HashMap<String, f64>> {
        let (_, body) = http_get(&self.health, "/metrics").await?;
        Ok(body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect())
    }

    async fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .ok()
            .and_then(|m| m.get(name).copied())
            .unwrap_or(f64::NAN)
    }

    async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        wait_for("the controller to lead", timeout, || async {
            Ok((self.metric("feip_leader").await == 1.0).then_some(()))
        })
        .await?;
        Ok(started.elapsed())
    }

    /// SIGTERM and wait for the exit (graceful: the leader Lease is released).
    async fn terminate(&mut self) -> anyhow::Result<Duration> {
        let pid = self.pid()?;
        let started = Instant::now();
        // SAFETY: kill(2) with a pid this process spawned and still owns (not yet reaped).
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        while self.process.check_running().is_ok() {
            if started.elapsed() > Duration::from_secs(20) {
                self.process.kill();
                anyhow::bail!("controller ignored SIGTERM for 20s; killed");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.process.kill(); // reap
        Ok(started.elapsed())
    }

    /// The controller's JSON log lines.
    fn log_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

fn log_time(v: &serde_json::Value) -> Option<Timestamp> {
    v["timestamp"].as_str()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The environment

struct Env {
    cp: ControlPlane,
    moto: Moto,
    proxy: FaultProxy,
    client: Client,
    ec2: aws_sdk_ec2::Client,
    clock: Clock,
    feip_bin: PathBuf,
    profile: String,
    controller_kubeconfig: PathBuf,
    logs: PathBuf,
    ec2_timeout: Duration,
}

struct NodeInfo {
    sim: SimNode,
    eni: String,
}

struct World {
    nodes: Vec<NodeInfo>,
    /// Scale addresses: (allocation id, primary node index, secondary node index).
    feips: Vec<(String, usize, usize)>,
    hb: [NodeInfo; 2],
    probe: [NodeInfo; 2],
    hb_alloc: String,
    probe_alloc: String,
}

fn az(i: usize) -> &'static str {
    if i.is_multiple_of(2) { AZ_A } else { AZ_C }
}

/// The FEIP layout: the first `mass` addresses prefer node 0 (the one the mass failover
/// kills); the others are spread over nodes 1.. with a different node as second candidate.
/// No address but those lists node 0 at all, so its death affects exactly `mass` addresses.
fn layout(feips: usize, nodes: usize, mass: usize) -> Vec<(usize, usize)> {
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

fn feip_name(i: usize) -> String {
    format!("f-{i:04}")
}

async fn launch_nodes(
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

async fn allocate(env: &Env, n: usize, parallelism: usize) -> anyhow::Result<Vec<String>> {
    let results: Vec<anyhow::Result<String>> = futures::stream::iter(0..n)
        .map(|_| async move { Ok(env.moto.allocate_address().await?.allocation_id) })
        .buffered(parallelism)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Associates directly in moto (not through the proxy: setup, not feip's traffic).
async fn associate_direct(
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
async fn moto_associations(env: &Env) -> anyhow::Result<HashMap<String, Option<String>>> {
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

async fn create_feip(
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
async fn wait_all_active(env: &Env, expect: usize, timeout: Duration) -> anyhow::Result<usize> {
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

// ---------------------------------------------------------------------------------------------
// Observation windows (steady state, restart)

#[derive(Debug, Default, serde::Serialize)]
struct WindowReport {
    label: String,
    feips: usize,
    seconds: f64,
    ec2_calls: BTreeMap<String, usize>,
    ec2_per_minute: BTreeMap<String, f64>,
    ec2_throttled: usize,
    ec2_mutations: usize,
    k8s_writes: BTreeMap<String, usize>,
    k8s_writes_per_sec: BTreeMap<String, f64>,
    k8s_writes_per_sec_total: f64,
    reconciles_per_sec: f64,
    cpu_percent: f64,
    rss_mib_end: f64,
    rss_mib_max: f64,
    rss_hwm_mib: f64,
    loadavg_start: String,
    loadavg_end: String,
}

/// Observes the controller for `dur`: EC2 calls (proxy log), Kubernetes writes (audit log),
/// CPU and RSS (/proc), reconciles (/metrics).
async fn observe(
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

fn print_window(w: &WindowReport) {
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

// ---------------------------------------------------------------------------------------------
// Failover latency trials

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

fn lease_view(l: &Lease) -> (Option<String>, bool, Option<Timestamp>, Option<Timestamp>) {
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

struct TrialSetup<'a> {
    mode: &'a str,
    feip: &'a str,
    alloc: &'a str,
    pair: &'a [NodeInfo; 2],
}

async fn run_trial(
    env: &Env,
    ctl: &Controller,
    t: &TrialSetup<'_>,
    n: usize,
) -> anyhow::Result<Trial> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), NS);
    let feips: Api<FloatingElasticIP> = Api::namespaced(env.client.clone(), NS);
    let lease_name = format!("feip-{}", t.feip);
    let (holder, confirmed, _, _) = lease_view(&leases.get(&lease_name).await?);
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
    let (from, to) = (&t.pair[from_idx], &t.pair[1 - from_idx]);
    let before = feips
        .get(t.feip)
        .await?
        .status
        .map_or(0, |s| s.failover_count);
    let log_from = env.proxy.log_len();
    let load = loadavg();

    let injected = Timestamp::now();
    from.sim.stop();

    // Decision and confirmation from the holder Lease (MicroTime): the first time it shows
    // the new holder confirmed, renewTime is the confirming write.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (decided, confirmed_at) = loop {
        if let Ok(l) = leases.get(&lease_name).await {
            let (h, c, acquire, renew) = lease_view(&l);
            if h.as_deref() == Some(to.sim.name.as_str()) && c {
                break (acquire, renew);
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("{} trial {n}: no confirmed failover within 120s", t.mode);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let status = wait_for("the failover record", Duration::from_secs(30), || async {
        Ok(feips
            .get(t.feip)
            .await?
            .status
            .filter(|s| s.failover_count > before && s.last_failover.is_some()))
    })
    .await?;
    let lf = status.last_failover.unwrap_or_default();
    let associate_at = env
        .proxy
        .requests_since(log_from)
        .into_iter()
        .find(|r| {
            r.action == "AssociateAddress"
                && r.params.get("AllocationId").map(String::as_str) == Some(t.alloc)
                && r.params.get("NetworkInterfaceId") == Some(&to.eni)
        })
        .map(|r| env.clock.wall(r.at));
    let feip_key = format!("{NS}/{}", t.feip);
    let detected = ctl
        .log_lines()
        .into_iter()
        .filter(|v| v["message"] == "holder change" && v["feip"] == feip_key.as_str())
        .filter(|v| log_time(v).is_some_and(|ts| ts >= injected))
        .find_map(|v| {
            v["detected_at"]
                .as_str()
                .and_then(|s| s.parse::<Timestamp>().ok())
        })
        .or_else(|| lf.detected_at.as_ref().map(|t| t.0));

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

#[derive(Debug, Default, serde::Serialize)]
struct LatencyReport {
    mode: String,
    trials: Vec<Trial>,
    end_to_end: Stats,
    detection: Stats,
    overhead: Stats,
    decision_after_detection: Stats,
    confirm_after_associate: Stats,
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

fn print_stats(label: &str, s: &Stats, unit_ms: bool) {
    let k = if unit_ms { 1000.0 } else { 1.0 };
    let u = if unit_ms { "ms" } else { "s" };
    println!(
        "    {label:<34} n={:<3} p50 {:8.3}{u}  p90 {:8.3}{u}  p99 {:8.3}{u}  max {:8.3}{u}",
        s.n,
        s.p50 * k,
        s.p90 * k,
        s.p99 * k,
        s.max * k
    );
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

// ---------------------------------------------------------------------------------------------
// Mass failover

#[derive(Debug, Default, serde::Serialize)]
struct MassReport {
    addresses: usize,
    detected_after: f64,
    all_confirmed_after: f64,
    confirmed_after_detection: Stats,
    budget_bound_after_detection: f64,
    associate_calls: usize,
    throttled: usize,
    ec2_calls: BTreeMap<String, usize>,
    loadavg: String,
}

async fn mass_failover(
    env: &Env,
    ctl: &Controller,
    world: &World,
    mass: usize,
) -> anyhow::Result<MassReport> {
    let victim = &world.nodes[0];
    let targets: HashMap<String, String> = world
        .feips
        .iter()
        .take(mass)
        .map(|(alloc, _, s)| (alloc.clone(), world.nodes[*s].eni.clone()))
        .collect();
    let log_from = env.proxy.log_len();
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
    // Per-address completion: the confirming Lease write (renewTime of the confirmed record).
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
    let records = env.proxy.requests_since(log_from);
    let (ec2_calls, throttled) = ec2_counts(&records);
    let ip = victim.sim.ip.to_string();
    let detected = ctl
        .log_lines()
        .into_iter()
        .filter(|v| {
            v["message"] == "probe status changed" && v["ip"] == ip.as_str() && v["to"] == "Dead"
        })
        .filter_map(|v| log_time(&v))
        .find(|ts| *ts >= injected)
        .unwrap_or(injected);
    let last = confirmed_at.iter().copied().max().unwrap_or(injected);
    let associate_calls = ec2_calls.get("AssociateAddress").copied().unwrap_or(0);
    victim.sim.resume().await?;
    Ok(MassReport {
        addresses: mass,
        detected_after: secs(detected, injected),
        all_confirmed_after: secs(last, injected),
        confirmed_after_detection: stats(
            &confirmed_at
                .iter()
                .map(|t| secs(*t, detected))
                .collect::<Vec<_>>(),
        ),
        // EC2's mutating bucket: burst 50, then 5/s.
        budget_bound_after_detection: (mass.saturating_sub(50)) as f64 / 5.0,
        associate_calls,
        throttled,
        ec2_calls,
        loadavg: load,
    })
}

// ---------------------------------------------------------------------------------------------
// Restart

#[derive(Debug, Default, serde::Serialize)]
struct RestartReport {
    addresses: usize,
    shutdown_seconds: f64,
    ready_seconds: f64,
    leader_seconds: f64,
    window: WindowReport,
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, serde::Serialize)]
struct Report {
    smoke: bool,
    machine: BTreeMap<String, String>,
    setup: BTreeMap<String, f64>,
    cold_start_ready_seconds: f64,
    adoption: BTreeMap<String, f64>,
    baseline: Option<WindowReport>,
    steady: Option<WindowReport>,
    latency: Vec<LatencyReport>,
    mass: Option<MassReport>,
    restart: Option<RestartReport>,
    targets: Vec<(String, String, bool)>,
}

fn machine(env: &Env, args: &Args) -> BTreeMap<String, String> {
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

fn step(what: &str) {
    println!("\n==> {what} (load {})", loadavg());
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    feip::install_crypto_provider();
    let args = parse_args()?;
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
    print_targets(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        println!("\nresults written to {}", path.display());
    }
    println!(
        "\nfeip-bench finished in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    if args.smoke {
        smoke_checks(&report)?;
    }
    Ok(())
}

/// The smoke run checks that every phase produced numbers, not how good they are.
fn smoke_checks(r: &Report) -> anyhow::Result<()> {
    for l in &r.latency {
        if l.end_to_end.n == 0 || l.overhead.n == 0 {
            anyhow::bail!("smoke: no complete latency trial for {}", l.mode);
        }
    }
    let mass = r.mass.as_ref().context("smoke: no mass failover")?;
    if mass.associate_calls < mass.addresses {
        anyhow::bail!("smoke: mass failover sent fewer associates than addresses");
    }
    let restart = r.restart.as_ref().context("smoke: no restart")?;
    if restart.window.ec2_mutations != 0 {
        anyhow::bail!("smoke: the restart remapped addresses");
    }
    println!("smoke checks passed");
    Ok(())
}

async fn bench(args: &Args) -> anyhow::Result<Report> {
    let mut report = Report {
        smoke: args.smoke,
        ..Report::default()
    };
    let (feip_bin, profile) = sibling_binary("feip")?;

    step("starting etcd + kube-apiserver, moto and the fault proxy (EC2 token buckets on)");
    let t = Instant::now();
    let cp = ControlPlane::start().await?;
    let moto = Moto::start().await?;
    let proxy = FaultProxy::start(moto.url()).await?;
    proxy.enable_ec2_budget();
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

    step(&format!(
        "setup: {} + 4 instances and simulated nodes, {} + 2 Elastic IPs (parallelism {})",
        args.nodes, args.feips, args.setup_parallelism
    ));
    let t = Instant::now();
    let mut names: Vec<(String, Duration)> = (0..args.nodes)
        .map(|i| (format!("bench-n{i:03}"), Duration::from_secs(10)))
        .collect();
    names.push(("bench-hb-a".into(), args.hb_interval));
    names.push(("bench-hb-b".into(), args.hb_interval));
    names.push(("bench-probe-a".into(), Duration::from_secs(10)));
    names.push(("bench-probe-b".into(), Duration::from_secs(10)));
    let mut nodes = launch_nodes(&env, names, args.setup_parallelism).await?;
    let probe_b = nodes.pop().context("node")?;
    let probe_a = nodes.pop().context("node")?;
    let hb_b = nodes.pop().context("node")?;
    let hb_a = nodes.pop().context("node")?;
    report
        .setup
        .insert("instances + nodes".into(), t.elapsed().as_secs_f64());
    println!(
        "    {} nodes in {:.1}s",
        nodes.len() + 4,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let mut allocs = allocate(&env, args.feips + 2, args.setup_parallelism).await?;
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
    let t = Instant::now();
    let feips: Vec<(String, usize, usize)> = layout(args.feips, args.nodes, args.mass)
        .into_iter()
        .zip(allocs)
        .map(|((p, s), a)| (a, p, s))
        .collect();
    associate_direct(
        &env,
        feips
            .iter()
            .map(|(a, p, _)| (a.clone(), nodes[*p].eni.clone()))
            .collect(),
        args.setup_parallelism,
    )
    .await?;
    report
        .setup
        .insert("pre-associate addresses".into(), t.elapsed().as_secs_f64());
    println!(
        "    pre-associated in {:.1}s (directly in moto, not counted)",
        t.elapsed().as_secs_f64()
    );
    let world = World {
        nodes,
        feips,
        hb: [hb_a, hb_b],
        probe: [probe_a, probe_b],
        hb_alloc,
        probe_alloc,
    };

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
    let mut ctl = Controller::start(&env, 0)?;
    let ready = ctl.wait_ready(Duration::from_secs(60)).await?;
    report.cold_start_ready_seconds = ready.as_secs_f64();
    println!(
        "    ready {:.3}s after spawn (log {})",
        ready.as_secs_f64(),
        ctl.log.display()
    );
    wait_all_active(&env, 2, Duration::from_secs(120)).await?;

    if args.baseline_secs > 0 {
        step(&format!(
            "baseline: steady state with 2 addresses for {}s",
            args.baseline_secs
        ));
        let w = observe(
            &env,
            &ctl,
            "baseline",
            2,
            Duration::from_secs(args.baseline_secs),
        )
        .await?;
        print_window(&w);
        report.baseline = Some(w);
    }

    step(&format!(
        "adoption: creating {} pre-associated addresses while the controller runs",
        args.feips
    ));
    let log_from = env.proxy.log_len();
    let t = Instant::now();
    let created: Vec<anyhow::Result<()>> = futures::stream::iter(world.feips.iter().enumerate())
        .map(|(i, (alloc, p, s))| {
            let api = api.clone();
            let spec = serde_json::json!({
                "allocationId": alloc,
                "candidates": [{"node": world.nodes[*p].sim.name}, {"node": world.nodes[*s].sim.name}],
            });
            async move { create_feip(&api, &feip_name(i), spec).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    created.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let create_secs = t.elapsed().as_secs_f64();
    wait_all_active(&env, args.feips + 2, Duration::from_secs(900)).await?;
    let adopt_secs = t.elapsed().as_secs_f64();
    let records = env.proxy.requests_since(log_from);
    let (calls, throttled) = ec2_counts(&records);
    println!(
        "    created in {create_secs:.1}s, all Active after {adopt_secs:.1}s; EC2 mutations {}, throttled {throttled}, calls {calls:?}",
        mutations(&records)
    );
    report.adoption.insert("create seconds".into(), create_secs);
    report
        .adoption
        .insert("all active seconds".into(), adopt_secs);
    report
        .adoption
        .insert("ec2 mutations".into(), mutations(&records) as f64);
    report
        .adoption
        .insert("ec2 throttled".into(), throttled as f64);

    if args.steady_secs > 0 {
        step(&format!(
            "steady state with {} addresses for {}s",
            args.feips + 2,
            args.steady_secs
        ));
        // Let the adoption burst (lease creation, first confirmations) settle first.
        tokio::time::sleep(Duration::from_secs(if args.smoke { 1 } else { 30 })).await;
        let w = observe(
            &env,
            &ctl,
            "steady",
            args.feips + 2,
            Duration::from_secs(args.steady_secs),
        )
        .await?;
        print_window(&w);
        report.steady = Some(w);
    }

    let modes = [
        ("heartbeat", "trial-heartbeat", &world.hb_alloc, &world.hb),
        ("probe", "trial-probe", &world.probe_alloc, &world.probe),
    ];
    for (mode, feip, alloc, pair) in modes.into_iter().filter(|_| args.trials > 0) {
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
        let mut trials = Vec::new();
        for n in 1..=args.trials {
            let t = run_trial(&env, &ctl, &setup, n).await?;
            println!(
                "    trial {n}: end-to-end {:.3}s, overhead {:.1} ms",
                t.confirmed,
                t.overhead * 1000.0
            );
            trials.push(t);
        }
        let r = latency_report(mode, trials);
        print_latency(&r);
        report.latency.push(r);
    }

    if args.mass > 0 {
        mass_phase(&env, &ctl, &world, args, &mut report).await?;
    }
    if args.restart_secs > 0 {
        restart_phase(&env, ctl, args, &mut report).await?;
    } else {
        let _ = ctl.terminate().await;
    }
    report.targets = targets(&report);
    Ok(report)
}

async fn mass_phase(
    env: &Env,
    ctl: &Controller,
    world: &World,
    args: &Args,
    report: &mut Report,
) -> anyhow::Result<()> {
    step(&format!(
        "mass failover: the node holding {} addresses dies",
        args.mass
    ));
    // Let the mutating bucket refill after the trials (EC2 refills 5/s up to 50).
    tokio::time::sleep(Duration::from_secs(if args.smoke { 1 } else { 12 })).await;
    let m = mass_failover(env, ctl, world, args.mass).await?;
    println!(
        "    detected +{:.3}s, all {} confirmed +{:.3}s after injection ({:.3}s after detection; EC2 budget bound {:.1}s); AssociateAddress {}, throttled {}, calls {:?}",
        m.detected_after,
        m.addresses,
        m.all_confirmed_after,
        m.all_confirmed_after - m.detected_after,
        m.budget_bound_after_detection,
        m.associate_calls,
        m.throttled,
        m.ec2_calls
    );
    print_stats(
        "confirmed after detection",
        &m.confirmed_after_detection,
        false,
    );
    report.mass = Some(m);
    Ok(())
}

async fn restart_phase(
    env: &Env,
    mut ctl: Controller,
    args: &Args,
    report: &mut Report,
) -> anyhow::Result<()> {
    step("restart: SIGTERM, start a new controller, measure readiness and EC2 mutations");
    // The revived node must be healthy again before the restart.
    tokio::time::sleep(Duration::from_secs(3)).await;
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

fn targets(r: &Report) -> Vec<(String, String, bool)> {
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

fn print_targets(r: &Report) {
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
