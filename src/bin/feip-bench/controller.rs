//! The `feip controller` subprocess: start, readiness, metrics, leadership, SIGTERM, its log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use feip::testenv::bin_support::http_get;
use feip::testenv::process::{ManagedProcess, free_port};
use feip::testenv::{REGION, wait_for};

use crate::LEADER_NS;
use crate::procfs::{ProcSample, proc_sample};
use crate::world::Env;

/// How long a `/readyz` or `/metrics` response may take to read.
const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Controller {
    process: ManagedProcess,
    health: String,
    pub log: PathBuf,
    spawned: Instant,
}

impl Controller {
    pub fn start(env: &Env, n: u32) -> anyhow::Result<Self> {
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

    pub fn sample(&self) -> anyhow::Result<ProcSample> {
        proc_sample(self.pid()?)
            .ok_or_else(|| anyhow::anyhow!("cannot read /proc of the controller"))
    }

    /// Waits for `/readyz` = 200; returns the time since spawn.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            self.process.check_running()?;
            if let Ok((200, _)) = http_get(&self.health, "/readyz", HTTP_READ_TIMEOUT).await {
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
        let (_, body) = http_get(&self.health, "/metrics", HTTP_READ_TIMEOUT).await?;
        Ok(body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect())
    }

    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .ok()
            .and_then(|m| m.get(name).copied())
            .unwrap_or(f64::NAN)
    }

    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        wait_for("the controller to lead", timeout, || async {
            Ok((self.metric("feip_leader").await == 1.0).then_some(()))
        })
        .await?;
        Ok(started.elapsed())
    }

    /// SIGTERM and wait for the exit (graceful: the leader Lease is released).
    #[allow(unsafe_code)] // kill(2): the benchmark stops its controller with SIGTERM
    pub async fn terminate(&mut self) -> anyhow::Result<Duration> {
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
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

pub fn log_time(v: &serde_json::Value) -> Option<Timestamp> {
    v["timestamp"].as_str()?.parse().ok()
}
