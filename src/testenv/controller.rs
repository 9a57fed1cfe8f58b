//! Runs the real controller in-process against the test environment: leader election, the
//! reconcile loop and the EC2 client, exactly as `feip controller` wires them, with timings
//! short enough for tests. `kill` aborts everything without releasing leadership, like a
//! crashed process.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::task::JoinHandle;

use crate::aws::{Budget, Ec2, Observer};
use crate::leader::{LeaderConfig, Leadership};
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
}

impl ControllerOptions {
    /// Fast timings: lease 3s, renew deadline 2s, retry 250ms, safety margin 1s.
    pub fn new(identity: &str, namespace: &str) -> Self {
        Self {
            identity: identity.into(),
            namespace: namespace.into(),
            namespaces: vec![namespace.into()],
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(250),
            safety_margin: Duration::from_millis(1000),
            ec2_timeout: Duration::from_millis(800),
        }
    }
}

/// A running in-process controller replica.
pub struct TestController {
    pub identity: String,
    pub leadership: Leadership,
    pub metrics: Arc<Metrics>,
    pub ready: tokio::sync::watch::Receiver<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl TestController {
    pub async fn start(
        client: Client,
        ec2_endpoint: &str,
        opts: ControllerOptions,
    ) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let m = metrics.clone();
        let observer: Observer =
            Arc::new(move |op, outcome, elapsed| m.ec2_request(op, outcome, elapsed));
        let creds =
            aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "feip-testenv");
        let sdk = Ec2::sdk_client(
            Some(super::REGION.into()),
            Some(ec2_endpoint),
            Some(creds),
            opts.ec2_timeout,
        )
        .await;
        let ec2 = Ec2::new(
            sdk,
            Arc::new(Budget::default()),
            opts.ec2_timeout,
            Some(observer),
        );
        let leadership = Leadership::new();
        let mut cfg = LeaderConfig::new(&opts.namespace, "feip-controller", &opts.identity);
        cfg.lease_duration = opts.lease_duration;
        cfg.renew_deadline = opts.renew_deadline;
        cfg.retry_period = opts.retry_period;
        cfg.safety_margin = opts.safety_margin;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = futures::FutureExt::shared(async move {
            let _ = stop_rx.await;
        });
        let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        {
            let (client, leadership, stop) = (client.clone(), leadership.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = crate::leader::run(client, cfg, leadership, stop).await {
                    tracing::error!(error = %e, "leader election ended");
                }
            }));
        }
        {
            let settings = crate::controller::Settings {
                namespaces: opts.namespaces.clone(),
                instance: opts.identity.clone(),
            };
            let (leadership, metrics) = (leadership.clone(), metrics.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = crate::controller::run(
                    client, ec2, leadership, metrics, settings, ready_tx, stop,
                )
                .await
                {
                    tracing::error!(error = %e, "controller ended");
                }
            }));
        }
        Ok(Self {
            identity: opts.identity,
            leadership,
            metrics,
            ready: ready_rx,
            stop: Some(stop_tx),
            tasks,
        })
    }

    /// Crash: abort every task at once; leadership is not released.
    pub fn kill(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// Graceful stop: leadership is released.
    pub async fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

impl Drop for TestController {
    fn drop(&mut self) {
        self.kill();
    }
}
