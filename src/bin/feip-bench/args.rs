//! The command-line flags: the full-size defaults, the `--smoke` sizes and the parser.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Args {
    pub smoke: bool,
    pub feips: usize,
    pub nodes: usize,
    pub mass: usize,
    pub trials: usize,
    pub baseline_secs: u64,
    pub steady_secs: u64,
    pub restart_secs: u64,
    pub hb_interval: Duration,
    pub hb_timeout: Duration,
    pub setup_parallelism: usize,
    pub ec2_timeout: Duration,
    /// The test EC2's DescribeAddresses lag after a change (`FaultProxy::set_consistency_lag`).
    pub consistency_lag: Duration,
    pub json: Option<PathBuf>,
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
            consistency_lag: feip::testenv::DEFAULT_CONSISTENCY_LAG,
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
           [--consistency-lag-ms MS]
           [--setup-parallelism N] [--json FILE]

Benchmarks feip against the real local environment with the `feip` binary next to this one
(build both with `cargo build --release --features testenv --bins`; hack/bench.sh does).
Defaults: 1000 addresses over 200 nodes, 100 on the node killed in the mass failover (all
with node 1 as second candidate), each node with one private IP per address that lists it,
20 trials per detection mode, 60 s baseline, 300 s steady state, 60 s after the restart.
The controller runs with FEIP_EC2_TIMEOUT 5 s (moto is slow at 1,000 addresses; the default
is 2 s) and a leadership safety margin of twice that plus 1 s; everything else is default.
The test EC2 applies AWS's rules (one Elastic IP per private IP, PrivateIpAddress honoured)
and lags DescribeAddresses 300 ms after every change (--consistency-lag-ms).
A phase is skipped with a zero: --baseline-secs 0, --steady-secs 0, --trials 0, --mass 0,
--restart-secs 0.
--smoke: every phase at a tiny size, for CI (about a minute).";

pub fn parse_args() -> anyhow::Result<Args> {
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
            "--consistency-lag-ms" => {
                args.consistency_lag = Duration::from_millis(num(value(&a)?)?);
            }
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
