//! Runs the real controller in-process against the test environment through the same wiring
//! as `feip controller` ([`crate::app::start`], which validates the configuration as the
//! binary does), with timings short enough for tests that the binary also accepts. `kill`
//! aborts everything without releasing leadership, like a crashed process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::app::{ControllerConfig, Running};
use crate::aws::Ec2;
use crate::controller::HeartbeatClient;
use crate::kube_client::KubeClients;
use crate::leader::Leadership;
use crate::metrics::Metrics;

/// How a test controller runs.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    pub identity: String,
    /// Namespace of the leader Lease (also the only namespace watched unless `namespaces`).
    pub namespace: String,
    pub namespaces: Vec<String>,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    pub safety_margin: Duration,
    pub ec2_timeout: Duration,
    /// Deadline of one reconcile-path Kubernetes call.
    pub kube_timeout: Duration,
    /// `/healthz` fails while leading when a reconcile has run this long.
    pub stuck_reconcile_after: Duration,
    /// Serve `/healthz`, `/readyz` and `/metrics` here (none by default).
    pub health_addr: Option<SocketAddr>,
    /// The heartbeat-Lease watch's own client (e.g. through a `TcpProxy`); `None`: the
    /// replica's client.
    pub heartbeat_client: Option<HeartbeatClient>,
}

impl ControllerOptions {
    /// Fast timings that `feip controller` accepts: lease 3 s, renew deadline 2 s, retry
    /// 250 ms, safety margin 1.7 s (above two 800 ms EC2 attempts).
    pub fn new(identity: &str, namespace: &str) -> Self {
        Self {
            identity: identity.into(),
            namespace: namespace.into(),
            namespaces: vec![namespace.into()],
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(250),
            safety_margin: Duration::from_millis(1700),
            ec2_timeout: Duration::from_millis(800),
            kube_timeout: Duration::from_secs(2),
            stuck_reconcile_after: crate::app::DEFAULT_STUCK_RECONCILE_AFTER,
            health_addr: None,
            heartbeat_client: None,
        }
    }
}

/// A running in-process controller replica.
pub struct TestController {
    pub identity: String,
    pub leadership: Leadership,
    pub metrics: Arc<Metrics>,
    pub ready: tokio::sync::watch::Receiver<bool>,
    running: Running,
}

impl ControllerOptions {
    /// The process configuration these options describe.
    pub fn config(&self) -> ControllerConfig {
        let mut c = ControllerConfig::new(&self.identity, &self.namespace);
        c.namespaces = self.namespaces.clone();
        c.lease_duration = self.lease_duration;
        c.renew_deadline = self.renew_deadline;
        c.retry_period = self.retry_period;
        c.safety_margin = self.safety_margin;
        c.ec2_timeout = self.ec2_timeout;
        c.kube_timeout = self.kube_timeout;
        c.stuck_reconcile_after = self.stuck_reconcile_after;
        c.health_addr = self.health_addr;
        c.heartbeat_client = self.heartbeat_client.clone();
        c
    }
}

impl TestController {
    /// Starts a replica. One `Client` serves every purpose; a [`KubeClients`] routes watches,
    /// reconcile calls and the election apart (e.g. through different proxies).
    pub async fn start(
        clients: impl Into<KubeClients>,
        ec2_endpoint: &str,
        opts: ControllerOptions,
    ) -> anyhow::Result<Self> {
        let creds =
            aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "feip-testenv");
        let sdk = Ec2::sdk_client(
            Some(super::REGION.into()),
            Some(ec2_endpoint),
            Some(creds),
            opts.ec2_timeout,
        )
        .await;
        let running = crate::app::start(clients, sdk, opts.config()).await?;
        Ok(Self {
            identity: opts.identity,
            leadership: running.leadership.clone(),
            metrics: running.metrics.clone(),
            ready: running.ready.clone(),
            running,
        })
    }

    /// Crash: abort every task at once; leadership is not released.
    pub fn kill(&mut self) {
        self.running.abort();
    }

    /// Graceful stop: leadership is released.
    pub async fn shutdown(&mut self) {
        self.running.shutdown().await;
    }
}
