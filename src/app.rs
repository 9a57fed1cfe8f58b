//! The one wiring of a controller process, used by `feip controller` and by the test harness
//! alike: validated configuration, the EC2 client with its budget and metrics observer, the
//! leader election, the reconcile loop and (optionally) the HTTP endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::aws::{Budget, Ec2, Observer};
use crate::controller::{HeartbeatClient, Settings};
use crate::kube_client::KubeClients;
use crate::leader::{LeaderConfig, Leadership};
use crate::liveness::Liveness;
use crate::metrics::Metrics;

/// How long a graceful stop waits for the controller and for the election to end.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// `--kube-timeout`: the deadline of one Kubernetes call of the reconcile path.
pub const DEFAULT_KUBE_TIMEOUT: Duration = Duration::from_secs(5);
/// `--stuck-reconcile-after`: how long a reconcile may run before `/healthz` fails.
pub const DEFAULT_STUCK_RECONCILE_AFTER: Duration = Duration::from_secs(120);

/// Everything a controller process is configured with (the `feip controller` flags).
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// This replica's identity in the election and on events.
    pub identity: String,
    /// Namespaces whose FloatingElasticIPs are managed; empty = all.
    pub namespaces: Vec<String>,
    pub leader_election_namespace: String,
    pub leader_election_name: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// EC2 mutations and holder-Lease writes stop this long before leadership could expire.
    pub safety_margin: Duration,
    /// Timeout of one EC2 call attempt (at most two attempts per call).
    pub ec2_timeout: Duration,
    /// Where `/healthz`, `/readyz` and `/metrics` are served; `None` serves nothing.
    pub health_addr: Option<SocketAddr>,
    /// Deadline of one Kubernetes API call of the reconcile path (response and body).
    pub kube_timeout: Duration,
    /// `/healthz` fails while this replica leads and a reconcile has been running this long.
    pub stuck_reconcile_after: Duration,
    /// The heartbeat-Lease watch's own client (a test hook); `None`: the main client.
    pub heartbeat_client: Option<HeartbeatClient>,
}

impl ControllerConfig {
    /// The `feip controller` defaults: lease 15 s, renew deadline 10 s, retry 2 s, safety
    /// margin 5 s, EC2 attempt timeout 2 s, Kubernetes call deadline 5 s, stuck reconcile
    /// bound 120 s, every namespace, no HTTP endpoints.
    pub fn new(identity: impl Into<String>, leader_election_namespace: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            namespaces: Vec::new(),
            leader_election_namespace: leader_election_namespace.into(),
            leader_election_name: "feip-controller".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            safety_margin: Duration::from_secs(5),
            ec2_timeout: Duration::from_secs(2),
            health_addr: None,
            kube_timeout: DEFAULT_KUBE_TIMEOUT,
            stuck_reconcile_after: DEFAULT_STUCK_RECONCILE_AFTER,
            heartbeat_client: None,
        }
    }

    /// The election's part of the configuration.
    pub fn leader_config(&self) -> LeaderConfig {
        let mut cfg = LeaderConfig::new(
            &self.leader_election_namespace,
            &self.leader_election_name,
            &self.identity,
        );
        cfg.lease_duration = self.lease_duration;
        cfg.renew_deadline = self.renew_deadline;
        cfg.retry_period = self.retry_period;
        cfg.safety_margin = self.safety_margin;
        cfg
    }

    /// Rejects timings under which a mutation could outlive this replica's leadership, or the
    /// election could be unsafe or never lead.
    pub fn validate(&self) -> anyhow::Result<()> {
        // One EC2 call (two SDK attempts) must fit inside the leadership safety margin, so a
        // mutation started while leadership was valid also ends while it is.
        if self.safety_margin <= self.ec2_timeout * 2 {
            bail!(
                "--safety-margin ({:?}) must exceed twice --ec2-timeout ({:?})",
                self.safety_margin,
                self.ec2_timeout
            );
        }
        if self.kube_timeout.is_zero() {
            bail!("--kube-timeout must be above zero");
        }
        if self.stuck_reconcile_after.is_zero() {
            bail!("--stuck-reconcile-after must be above zero");
        }
        self.leader_config().validate()
    }

    /// The deadline of one election call: half the renew deadline, so that after a call lost
    /// on a silent connection a retry on a new connection (after the retry period) still
    /// fits before the renew deadline would end leadership.
    pub fn election_call_timeout(&self) -> Duration {
        self.renew_deadline / 2
    }
}

/// A started controller process: its shared handles and its tasks.
pub struct Running {
    pub leadership: Leadership,
    pub metrics: Arc<Metrics>,
    /// Turns true once every cache synced.
    pub ready: watch::Receiver<bool>,
    stop: broadcast::Sender<()>,
    /// How long a graceful stop waits for mutations in flight (the safety margin, which one
    /// EC2 call cannot outlast).
    drain_bound: Duration,
    elector: Option<JoinHandle<anyhow::Result<()>>>,
    controller: Option<JoinHandle<anyhow::Result<()>>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Validates `config`, then starts the HTTP endpoints (if configured), the election and the
/// controller. `sdk` is the EC2 client (its region, endpoint and credentials are the caller's).
pub async fn start(
    clients: impl Into<KubeClients>,
    sdk: aws_sdk_ec2::Client,
    config: ControllerConfig,
) -> anyhow::Result<Running> {
    config.validate()?;
    let clients: KubeClients = clients.into();
    // Every call outside the watches has a deadline (see crate::kube_client).
    let clients = KubeClients {
        requests: crate::kube_client::bounded(clients.requests, config.kube_timeout),
        election: crate::kube_client::bounded(clients.election, config.election_call_timeout()),
        watches: clients.watches,
    };
    let metrics = Arc::new(Metrics::new());
    let observed = metrics.clone();
    let observer: Observer =
        Arc::new(move |op, outcome, elapsed| observed.ec2_request(op, outcome, elapsed));
    let ec2 = Ec2::new(
        sdk,
        Arc::new(Budget::default()),
        config.ec2_timeout,
        Some(observer),
    );
    let leadership = Leadership::new();
    let liveness = Liveness::new(leadership.clone(), config.stuck_reconcile_after);
    let (ready_tx, ready) = watch::channel(false);
    let (stop, _) = broadcast::channel::<()>(1);
    let stopped = |tx: &broadcast::Sender<()>| {
        let mut rx = tx.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };
    tracing::info!(identity = %config.identity, namespaces = ?config.namespaces, "starting feip controller");
    let server = match config.health_addr {
        Some(addr) => {
            let listener = crate::http::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            Some(tokio::spawn(crate::http::serve_on(
                listener,
                metrics.clone(),
                ready.clone(),
                liveness.clone(),
                stopped(&stop),
            )))
        }
        None => None,
    };
    let elector = tokio::spawn(crate::leader::run(
        clients.election.clone(),
        config.leader_config(),
        leadership.clone(),
        stopped(&stop),
    ));
    let settings = Settings {
        namespaces: config.namespaces.clone(),
        instance: config.identity.clone(),
        heartbeat_client: config.heartbeat_client.clone(),
    };
    let controller = tokio::spawn(crate::controller::run(
        clients,
        ec2,
        leadership.clone(),
        metrics.clone(),
        liveness,
        settings,
        ready_tx,
        stopped(&stop),
    ));
    Ok(Running {
        leadership,
        metrics,
        ready,
        stop,
        drain_bound: config.safety_margin,
        elector: Some(elector),
        controller: Some(controller),
        server,
    })
}

impl Running {
    /// Resolves when the controller or the election ends on its own. Without its elector a
    /// replica could never lead again, so that is an error: the process should exit and be
    /// restarted.
    pub async fn ended(&mut self) -> anyhow::Result<()> {
        let (Some(controller), Some(elector)) = (self.controller.as_mut(), self.elector.as_mut())
        else {
            bail!("controller already stopped");
        };
        tokio::select! {
            r = controller => {
                self.controller = None;
                r.context("controller task")?
            }
            r = elector => {
                self.elector = None;
                bail!("leader election stopped: {r:?}")
            }
        }
    }

    /// Graceful stop: no new mutation starts, the ones in flight are answered (bounded by the
    /// safety margin) while everything still runs, then the controller stops reconciling, the
    /// election releases the Lease if this replica holds it, the HTTP endpoints close. Each
    /// wait is bounded. Stopping the controller first would cancel reconciles mid-request: the
    /// request could still land after the Lease went to a successor.
    pub async fn shutdown(&mut self) {
        self.leadership.stop_mutating();
        if !self.leadership.drain(self.drain_bound).await {
            tracing::warn!(
                in_flight = self.leadership.in_flight(),
                "mutations still in flight after {:?}; stopping anyway (the Lease is kept)",
                self.drain_bound
            );
        }
        let _ = self.stop.send(());
        for task in [self.controller.take(), self.elector.take()]
            .into_iter()
            .flatten()
        {
            let _ = tokio::time::timeout(STOP_GRACE, task).await;
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    /// Crash: every task is aborted at once and leadership is not released.
    pub fn abort(&mut self) {
        for task in [
            self.controller.take(),
            self.elector.take(),
            self.server.take(),
        ]
        .into_iter()
        .flatten()
        {
            task.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        ControllerConfig::new("replica-a", "feip-system")
            .validate()
            .expect("the feip controller defaults");
    }

    #[test]
    fn a_margin_that_an_ec2_call_could_outlast_is_refused() {
        let mut c = ControllerConfig::new("replica-a", "feip-system");
        c.ec2_timeout = Duration::from_millis(2500);
        let err = c
            .validate()
            .expect_err("5 s margin, 2 x 2.5 s EC2 call")
            .to_string();
        assert!(err.contains("--safety-margin"), "{err}");
        c.ec2_timeout = Duration::from_millis(2400);
        c.validate().expect("4.8 s of EC2 call inside a 5 s margin");
    }

    #[test]
    fn unsafe_election_timings_are_refused() {
        let mut c = ControllerConfig::new("replica-a", "feip-system");
        c.renew_deadline = c.lease_duration;
        assert!(
            c.validate().is_err(),
            "renew deadline must be below the lease"
        );
        let mut c = ControllerConfig::new("", "feip-system");
        c.identity.clear();
        assert!(c.validate().is_err(), "an empty identity means released");
    }

    #[test]
    fn zero_kubernetes_bounds_are_refused() {
        let mut c = ControllerConfig::new("replica-a", "feip-system");
        c.kube_timeout = Duration::ZERO;
        let err = c.validate().expect_err("no deadline").to_string();
        assert!(err.contains("--kube-timeout"), "{err}");
        let mut c = ControllerConfig::new("replica-a", "feip-system");
        c.stuck_reconcile_after = Duration::ZERO;
        let err = c.validate().expect_err("always stuck").to_string();
        assert!(err.contains("--stuck-reconcile-after"), "{err}");
        assert_eq!(
            ControllerConfig::new("a", "b").election_call_timeout(),
            Duration::from_secs(5)
        );
    }
}
