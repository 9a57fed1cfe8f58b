use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::ffi::OsString;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use feip::cli::{ConnectOptions, Report, Session};
use feip::crd::{Management, TargetState};
use feip::telemetry::LogFormat;

/// feip: keeps an AWS Elastic IP on one healthy Kubernetes node.
///
/// Besides the controller, the binary carries pcs-style verbs for operators. Installed as
/// `kubectl-feip` on the PATH (e.g. a symlink) it is also the kubectl plugin `kubectl feip`.
#[derive(Parser)]
#[command(name = "feip", bin_name = "feip", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the FloatingElasticIP CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller.
    Controller(Box<ControllerArgs>),
    /// Show FloatingElasticIPs: address, holder, phase, failovers, last failover and bans
    /// (crm_mon / pcs status). With NAME also conditions and per-node failure counts.
    Status(StatusArgs),
    /// Move the address to NODE (pcs resource move). The pin clears itself once the address
    /// is confirmed on NODE.
    Move(MoveArgs),
    /// Keep the address off NODE, optionally for a while (pcs resource ban).
    Ban(BanArgs),
    /// Remove the pin and the bans, all or those of NODE (pcs resource clear).
    Clear(NameNodeArgs),
    /// Reset failure counts and failure bans, all or those of NODE (pcs resource cleanup).
    Cleanup(CleanupArgs),
    /// Release the address and hold no node (pcs resource disable).
    Disable(NameArgs),
    /// Keep the address on a node again (pcs resource enable).
    Enable(NameArgs),
    /// Monitor and report only, never change EC2 (pcs resource unmanage).
    Unmanage(NameArgs),
    /// Manage the address again (pcs resource manage).
    Manage(NameArgs),
    /// Make NODE ineligible for every address; holders move away (pcs node standby).
    Standby(NodeArgs),
    /// Make NODE eligible again (pcs node unstandby).
    Unstandby(NodeArgs),
}

/// How to reach the cluster (as kubectl takes it).
#[derive(Args, Debug)]
struct Conn {
    /// Kubeconfig file(s), `:`-separated; ~/.kube/config or in-cluster when absent.
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    kubeconfig: Option<OsString>,
    /// Namespace; the kubeconfig context's namespace (else "default") when absent.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Kubeconfig context to use.
    #[arg(long)]
    context: Option<String>,
}

impl Conn {
    fn options(&self) -> ConnectOptions {
        ConnectOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            namespace: self.namespace.clone(),
        }
    }
}

#[derive(Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    conn: Conn,
    /// List FloatingElasticIPs of every namespace.
    #[arg(short = 'A', long, conflicts_with = "name")]
    all_namespaces: bool,
    /// One FloatingElasticIP, shown in detail.
    name: Option<String>,
}

#[derive(Args, Debug)]
struct MoveArgs {
    #[command(flatten)]
    conn: Conn,
    /// The FloatingElasticIP.
    name: String,
    /// Target node (must be a candidate).
    #[arg(long = "to", value_name = "NODE")]
    to: String,
}

#[derive(Args, Debug)]
struct BanArgs {
    #[command(flatten)]
    conn: Conn,
    /// The FloatingElasticIP.
    name: String,
    /// Node to keep the address off.
    node: String,
    /// How long the ban lasts (Go duration, e.g. 30m, 1h); until cleared when absent.
    #[arg(long, value_parser = parse_lifetime)]
    lifetime: Option<Duration>,
}

#[derive(Args, Debug)]
struct NameNodeArgs {
    #[command(flatten)]
    conn: Conn,
    /// The FloatingElasticIP.
    name: String,
    /// Only this node; every node when absent.
    node: Option<String>,
}

#[derive(Args, Debug)]
struct CleanupArgs {
    #[command(flatten)]
    target: NameNodeArgs,
    /// Wait until the controller has handled the request.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "60s", value_parser = parse_duration, requires = "wait")]
    timeout: Duration,
}

#[derive(Args, Debug)]
struct NameArgs {
    #[command(flatten)]
    conn: Conn,
    /// The FloatingElasticIP.
    name: String,
}

#[derive(Args, Debug)]
struct NodeArgs {
    #[command(flatten)]
    conn: Conn,
    /// The Node.
    node: String,
}

fn parse_lifetime(s: &str) -> Result<Duration, String> {
    feip::cli::parse_lifetime(s).map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: kube::core::Duration = s.parse().map_err(|e| format!("{e}"))?;
    if d.is_negative() {
        return Err("must not be negative".into());
    }
    Ok(d.into())
}

#[derive(Args, Debug)]
struct ControllerArgs {
    /// Kubeconfig file; in-cluster configuration when absent.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Namespaces to watch (comma separated); all when empty.
    #[arg(long, env = "FEIP_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Namespace of the leader election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "feip-system")]
    leader_election_namespace: String,
    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "FEIP_LEADER_ELECTION_NAME",
        default_value = "feip-controller"
    )]
    leader_election_name: String,
    /// This replica's identity (defaults to the pod name, or host name and process id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[arg(long, env = "FEIP_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    #[arg(long, env = "FEIP_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    renew_deadline: Duration,
    #[arg(long, env = "FEIP_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    retry_period: Duration,
    /// Stop EC2 mutations this long before leadership could expire (longer than one EC2 call).
    #[arg(long, env = "FEIP_LEADERSHIP_SAFETY_MARGIN", default_value = "5s", value_parser = parse_duration)]
    safety_margin: Duration,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "FEIP_HEALTH_ADDR", default_value = "0.0.0.0:8080")]
    health_addr: SocketAddr,
    #[arg(long, env = "FEIP_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// AWS region (the standard chain applies when absent; AWS_ENDPOINT_URL overrides the endpoint).
    #[arg(long, env = "AWS_REGION")]
    aws_region: Option<String>,
    /// Timeout of one EC2 call attempt.
    #[arg(long, env = "FEIP_EC2_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    ec2_timeout: Duration,
}

/// Parses the command line. Invoked as `kubectl-feip` (the kubectl plugin), usage and help
/// say `kubectl feip`; the arguments are the same either way.
fn parse_cli() -> Cli {
    let invoked_as_plugin = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().starts_with("kubectl-"))
        })
        .unwrap_or(false);
    let mut cmd = Cli::command();
    if invoked_as_plugin {
        cmd = cmd.bin_name("kubectl feip");
    }
    let matches = cmd.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() -> anyhow::Result<()> {
    feip::install_crypto_provider();
    match parse_cli().command {
        Command::Crd => print!("{}", feip::crd::crd_yaml()?),
        Command::Controller(args) => {
            feip::telemetry::init_logging(args.log_format);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run_controller(*args))?;
        }
        verb => {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(run_verb(verb)));
            match result {
                Ok(report) => {
                    for w in &report.warnings {
                        eprintln!("warning: {w}");
                    }
                    print!("{}", report.stdout);
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    std::process::exit(1);
                }
            }
        }
    }
    Ok(())
}

async fn session(conn: &Conn) -> anyhow::Result<Session> {
    Session::connect(&conn.options()).await
}

/// Runs one operator verb.
async fn run_verb(verb: Command) -> anyhow::Result<Report> {
    let now = jiff::Timestamp::now();
    match verb {
        Command::Crd | Command::Controller(_) => anyhow::bail!("not an operator verb"),
        Command::Status(a) => {
            session(&a.conn)
                .await?
                .status(a.all_namespaces, a.name.as_deref(), now)
                .await
        }
        Command::Move(a) => session(&a.conn).await?.move_to(&a.name, &a.to).await,
        Command::Ban(a) => {
            session(&a.conn)
                .await?
                .ban(&a.name, &a.node, a.lifetime, now)
                .await
        }
        Command::Clear(a) => {
            session(&a.conn)
                .await?
                .clear(&a.name, a.node.as_deref())
                .await
        }
        Command::Cleanup(a) => {
            let t = &a.target;
            session(&t.conn)
                .await?
                .cleanup(&t.name, t.node.as_deref(), a.wait.then_some(a.timeout), now)
                .await
        }
        Command::Disable(a) => {
            session(&a.conn)
                .await?
                .set_target_state(&a.name, TargetState::Stopped)
                .await
        }
        Command::Enable(a) => {
            session(&a.conn)
                .await?
                .set_target_state(&a.name, TargetState::Started)
                .await
        }
        Command::Unmanage(a) => {
            session(&a.conn)
                .await?
                .set_management(&a.name, Management::ObserveOnly)
                .await
        }
        Command::Manage(a) => {
            session(&a.conn)
                .await?
                .set_management(&a.name, Management::Managed)
                .await
        }
        Command::Standby(a) => session(&a.conn).await?.standby(&a.node, true).await,
        Command::Unstandby(a) => session(&a.conn).await?.standby(&a.node, false).await,
    }
}

async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    // One EC2 call (two SDK attempts) must fit inside the leadership safety margin, so a
    // mutation started while leadership was valid also ends while it is.
    if args.safety_margin <= args.ec2_timeout * 2 {
        anyhow::bail!(
            "--safety-margin ({:?}) must exceed twice --ec2-timeout ({:?})",
            args.safety_margin,
            args.ec2_timeout
        );
    }
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => {
            kube::Config::incluster().context("no --kubeconfig and not running in a cluster")?
        }
    };
    let client = kube::Client::try_from(config)?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let metrics = Arc::new(feip::metrics::Metrics::new());
    let observer_metrics = metrics.clone();
    let observer: feip::aws::Observer =
        Arc::new(move |op, outcome, elapsed| observer_metrics.ec2_request(op, outcome, elapsed));
    let sdk = feip::aws::Ec2::from_env(args.aws_region.clone(), args.ec2_timeout).await;
    let ec2 = feip::aws::Ec2::new(
        sdk,
        Arc::new(feip::aws::Budget::default()),
        args.ec2_timeout,
        Some(observer),
    );

    let leadership = feip::leader::Leadership::new();
    let mut leader_cfg = feip::leader::LeaderConfig::new(
        &args.leader_election_namespace,
        &args.leader_election_name,
        &identity,
    );
    leader_cfg.lease_duration = args.lease_duration;
    leader_cfg.renew_deadline = args.renew_deadline;
    leader_cfg.retry_period = args.retry_period;
    leader_cfg.safety_margin = args.safety_margin;

    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let shutdown = shutdown_signal();
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let stopped = |tx: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = tx.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };
    tracing::info!(%identity, namespaces = ?args.namespaces, "starting feip controller");
    let server = tokio::spawn(feip::http::serve(
        args.health_addr,
        metrics.clone(),
        ready_rx,
        stopped(&stop_tx),
    ));
    let mut elector = tokio::spawn(feip::leader::run(
        client.clone(),
        leader_cfg,
        leadership.clone(),
        stopped(&stop_tx),
    ));
    let settings = feip::controller::Settings {
        namespaces: args.namespaces.clone(),
        instance: identity.clone(),
    };
    let controller = feip::controller::run(
        client,
        ec2,
        leadership,
        metrics,
        settings,
        ready_tx,
        stopped(&stop_tx),
    );
    tokio::pin!(controller);
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        r = &mut controller => { r?; }
        // Without its elector a replica could never lead again: exit and let it restart.
        r = &mut elector => {
            let _ = stop_tx.send(());
            anyhow::bail!("leader election stopped: {r:?}");
        }
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), &mut controller).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), elector).await;
    server.abort();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cli_verbs_take_connection_flags_after_the_verb() {
        let cli = Cli::try_parse_from([
            "kubectl-feip",
            "ban",
            "web",
            "node-a",
            "--lifetime",
            "1h",
            "-n",
            "prod",
            "--kubeconfig",
            "/k",
            "--context",
            "c",
        ])
        .expect("parses");
        let Command::Ban(a) = cli.command else {
            panic!("not ban")
        };
        assert_eq!(a.lifetime, Some(Duration::from_secs(3600)));
        assert_eq!(a.conn.namespace.as_deref(), Some("prod"));
        assert_eq!(a.conn.context.as_deref(), Some("c"));
        assert_eq!(a.conn.kubeconfig, Some("/k".into()));
        assert!(Cli::try_parse_from(["feip", "status", "-A", "web"]).is_err());
        assert!(
            Cli::try_parse_from(["feip", "move", "web"]).is_err(),
            "--to required"
        );
    }
}
