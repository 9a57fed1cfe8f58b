//! The pcs-style operator verbs of the `feip` binary (also usable as the kubectl plugin
//! `kubectl feip`): status, move, ban, clear, cleanup, disable/enable, unmanage/manage and
//! standby/unstandby.
//!
//! Every verb is a small edit of the declarative API: a merge patch of the FloatingElasticIP's
//! spec (or a label on a Node); the controller does the rest. Edits that compute a list from the
//! current object (`bans`, `pin`) carry the object's `resourceVersion`, so a concurrent change
//! makes the patch fail with a conflict and the verb recomputes instead of overwriting it.
//!
//! The pure parts are plain functions with unit tests: what to patch and what to refuse in
//! `edit`, what to print in `render`. `Session` (in `session`) binds them to a cluster. This
//! file holds the command line (clap: `Cli`, the verbs' arguments and `ControllerArgs`) and
//! runs a verb.

mod edit;
mod render;
mod session;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use jiff::Timestamp;

pub use crate::kube_ext::selector_matches;
pub use edit::{
    CliError, ban_patch, check_candidate, check_not_banned, cleanup_patch, clear_patch,
    cleared_constraints, expiry, move_patch, new_request_id,
};
pub use render::{
    STATUS_HEADERS, describe, format_bans, format_last_failover, human_duration, render_table,
    status_row,
};
pub use session::{ConnectOptions, FIELD_MANAGER, Report, Session, Standby};

use crate::crd::{Management, TargetState};
use crate::telemetry::LogFormat;

/// What is printed in a cell that has no value (as kubectl does).
const NONE: &str = "<none>";

/// feip: keeps an AWS Elastic IP on one healthy Kubernetes node.
///
/// Besides the controller, the binary carries pcs-style verbs for operators. Installed as
/// `kubectl-feip` on the PATH (e.g. a symlink) it is also the kubectl plugin `kubectl feip`.
#[derive(Parser)]
#[command(name = "feip", bin_name = "feip", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// One of feip's CustomResourceDefinitions.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum CrdName {
    Floatingelasticips,
    Floatingelasticipgrants,
}

#[derive(Subcommand)]
pub enum Command {
    /// Print feip's CustomResourceDefinitions as YAML (both, as one stream, unless one is
    /// named).
    Crd {
        /// `floatingelasticips` or `floatingelasticipgrants`.
        #[arg(value_enum)]
        which: Option<CrdName>,
    },
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
pub struct Conn {
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
pub struct StatusArgs {
    #[command(flatten)]
    conn: Conn,
    /// List FloatingElasticIPs of every namespace.
    #[arg(short = 'A', long, conflicts_with = "name")]
    all_namespaces: bool,
    /// One FloatingElasticIP, shown in detail.
    name: Option<String>,
}

#[derive(Args, Debug)]
pub struct MoveArgs {
    #[command(flatten)]
    conn: Conn,
    /// The FloatingElasticIP.
    name: String,
    /// Target node (must be a candidate).
    #[arg(long = "to", value_name = "NODE")]
    to: String,
}

#[derive(Args, Debug)]
pub struct BanArgs {
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
pub struct NameNodeArgs {
    #[command(flatten)]
    conn: Conn,
    /// The FloatingElasticIP.
    name: String,
    /// Only this node; every node when absent.
    node: Option<String>,
}

#[derive(Args, Debug)]
pub struct CleanupArgs {
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
pub struct NameArgs {
    #[command(flatten)]
    conn: Conn,
    /// The FloatingElasticIP.
    name: String,
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    #[command(flatten)]
    conn: Conn,
    /// The Node.
    node: String,
}

#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// Kubeconfig file; in-cluster configuration when absent.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces to watch (comma separated); all when empty.
    #[arg(long, env = "FEIP_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Namespace of the leader election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "feip-system")]
    pub leader_election_namespace: String,
    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "FEIP_LEADER_ELECTION_NAME",
        default_value = "feip-controller"
    )]
    pub leader_election_name: String,
    /// This replica's identity (defaults to the pod name, or host name and process id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    #[arg(long, env = "FEIP_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    #[arg(long, env = "FEIP_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,
    #[arg(long, env = "FEIP_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,
    /// Stop EC2 mutations this long before leadership could expire (longer than one EC2 call).
    #[arg(long, env = "FEIP_LEADERSHIP_SAFETY_MARGIN", default_value = "5s", value_parser = parse_duration)]
    pub safety_margin: Duration,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "FEIP_HEALTH_ADDR", default_value = "0.0.0.0:8080")]
    pub health_addr: SocketAddr,
    #[arg(long, env = "FEIP_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// AWS region (the standard chain applies when absent; AWS_ENDPOINT_URL overrides the endpoint).
    #[arg(long, env = "AWS_REGION")]
    pub aws_region: Option<String>,
    /// Timeout of one EC2 call attempt.
    #[arg(long, env = "FEIP_EC2_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub ec2_timeout: Duration,
    /// Deadline of one Kubernetes API call of the reconcile path (a timed-out call is retried).
    #[arg(long, env = "FEIP_KUBE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub kube_timeout: Duration,
    /// /healthz fails while leading when a reconcile has run this long (longer than any
    /// legitimate reconcile), so the kubelet restarts a stuck replica.
    #[arg(long, env = "FEIP_STUCK_RECONCILE_AFTER", default_value = "120s", value_parser = parse_duration)]
    pub stuck_reconcile_after: Duration,
}

impl ControllerArgs {
    /// The controller configuration these flags describe. The identity defaults to the host
    /// name and process id.
    pub fn config(&self) -> crate::app::ControllerConfig {
        let identity = self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        crate::app::ControllerConfig {
            identity,
            namespaces: self.namespaces.clone(),
            leader_election_namespace: self.leader_election_namespace.clone(),
            leader_election_name: self.leader_election_name.clone(),
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
            safety_margin: self.safety_margin,
            ec2_timeout: self.ec2_timeout,
            health_addr: Some(self.health_addr),
            kube_timeout: self.kube_timeout,
            stuck_reconcile_after: self.stuck_reconcile_after,
            heartbeat_client: None,
        }
    }
}

/// Parses the command line. Invoked as `kubectl-feip` (the kubectl plugin), usage and help
/// say `kubectl feip`; the arguments are the same either way.
pub fn parse_cli() -> Cli {
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

// ---- durations on the command line ----

/// Parses a ban lifetime: a positive Go duration (`30m`, `1h30m`).
pub fn parse_lifetime(s: &str) -> Result<Duration, CliError> {
    let d: kube::core::Duration = s
        .parse()
        .map_err(|e| CliError::BadLifetime(format!("{s:?}: {e}")))?;
    if d.is_negative() || Duration::from(d).is_zero() {
        return Err(CliError::BadLifetime(format!("{s:?}")));
    }
    Ok(d.into())
}

/// A non-negative Go duration (`2s`, `1m30s`), for the controller's timings and `--timeout`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: kube::core::Duration = s.parse().map_err(|e| format!("{e}"))?;
    if d.is_negative() {
        return Err("must not be negative".into());
    }
    Ok(d.into())
}

// ---- running a verb ----

impl Command {
    /// The connection flags of an operator verb; None for `crd` and `controller`.
    fn conn(&self) -> Option<&Conn> {
        match self {
            Command::Crd { .. } | Command::Controller(_) => None,
            Command::Status(a) => Some(&a.conn),
            Command::Move(a) => Some(&a.conn),
            Command::Ban(a) => Some(&a.conn),
            Command::Clear(a) => Some(&a.conn),
            Command::Cleanup(a) => Some(&a.target.conn),
            Command::Disable(a)
            | Command::Enable(a)
            | Command::Unmanage(a)
            | Command::Manage(a) => Some(&a.conn),
            Command::Standby(a) | Command::Unstandby(a) => Some(&a.conn),
        }
    }
}

/// Runs one operator verb.
pub async fn run_verb(verb: Command) -> anyhow::Result<Report> {
    let now = Timestamp::now();
    let Some(conn) = verb.conn() else {
        anyhow::bail!("not an operator verb");
    };
    let s = Session::connect(&conn.options()).await?;
    match verb {
        Command::Crd { .. } | Command::Controller(_) => anyhow::bail!("not an operator verb"),
        Command::Status(a) => s.status(a.all_namespaces, a.name.as_deref(), now).await,
        Command::Move(a) => s.move_to(&a.name, &a.to).await,
        Command::Ban(a) => s.ban(&a.name, &a.node, a.lifetime, now).await,
        Command::Clear(a) => s.clear(&a.name, a.node.as_deref()).await,
        Command::Cleanup(a) => {
            let t = &a.target;
            let wait = a.wait.then_some(a.timeout);
            s.cleanup(&t.name, t.node.as_deref(), wait, now).await
        }
        Command::Disable(a) => s.set_target_state(&a.name, TargetState::Stopped).await,
        Command::Enable(a) => s.set_target_state(&a.name, TargetState::Started).await,
        Command::Unmanage(a) => s.set_management(&a.name, Management::ObserveOnly).await,
        Command::Manage(a) => s.set_management(&a.name, Management::Managed).await,
        Command::Standby(a) => s.standby(&a.node, Standby::Enter).await,
        Command::Unstandby(a) => s.standby(&a.node, Standby::Leave).await,
    }
}

/// Objects the unit tests of `edit` and `render` share.
#[cfg(test)]
mod fixtures {
    use jiff::Timestamp;
    use serde_json::{Value, json};

    use crate::crd::FloatingElasticIP;

    pub(super) fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    pub(super) fn feip(spec: Value, status: Option<Value>) -> FloatingElasticIP {
        let mut v = json!({
            "apiVersion": "feip.io/v1alpha1", "kind": "FloatingElasticIP",
            "metadata": {"name": "web", "namespace": "prod"}, "spec": spec,
        });
        if let Some(s) = status {
            v["status"] = s;
        }
        serde_json::from_value(v).expect("feip")
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::ts;
    use super::*;

    #[test]
    fn cli_lifetime_parsing_and_expiry() {
        assert_eq!(parse_lifetime("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_lifetime("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_lifetime("0s").is_err());
        assert!(parse_lifetime("-5m").is_err());
        assert!(parse_lifetime("an hour").is_err());
        let now = ts("2030-01-01T00:00:00.750Z");
        assert_eq!(
            expiry(now, Duration::from_secs(3600)).expect("expiry"),
            ts("2030-01-01T01:00:00Z")
        );
    }

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
