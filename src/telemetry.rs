//! Logs, Prometheus metrics and the health/metrics HTTP endpoints.
//!
//! Metric labels are bounded on purpose: label values are `&'static str` chosen by the caller
//! from a small fixed set (reasons, EC2 operation names, error kinds), never object names, so
//! the number of series cannot grow with the number of FloatingElasticIPs or nodes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global tracing subscriber. The filter comes from `RUST_LOG` (default `info`).
/// A second call keeps the first subscriber.
pub fn init_logging(format: LogFormat) {
    let directives = log_directives(std::env::var("RUST_LOG").ok().as_deref());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("ignoring invalid RUST_LOG {directives:?}: {e}; logging at info");
        EnvFilter::new(log_directives(None))
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    // Err only means a subscriber is already installed (e.g. by a test); keep that one.
    drop(result);
}

/// The AWS SDK target that, at debug level, prints the resolved credentials identity
/// (including the access key id) while resolving the endpoint.
const SDK_IDENTITY_TARGET: &str = "aws_smithy_runtime::client::orchestrator::endpoints";

/// The filter directives: `RUST_LOG` (or `info`), with the SDK's identity-printing target held
/// at info unless the user names that target explicitly. `RUST_LOG=debug` is a common first
/// step when debugging, and it must not put an access key id into shipped logs.
fn log_directives(rust_log: Option<&str>) -> String {
    let base = rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info");
    if base.contains(SDK_IDENTITY_TARGET) {
        base.to_owned()
    } else {
        format!("{base},{SDK_IDENTITY_TARGET}=info")
    }
}

/// How an EC2 request ended, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ec2Outcome {
    Success,
    /// `RequestLimitExceeded` (or another throttling answer).
    Throttled,
    /// Any other error answer or transport failure.
    Error,
    /// No answer within the client-side timeout.
    Timeout,
}

impl Ec2Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Ec2Outcome::Success => "success",
            Ec2Outcome::Throttled => "throttled",
            Ec2Outcome::Error => "error",
            Ec2Outcome::Timeout => "timeout",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Ec2Labels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

fn histogram(buckets: &'static [f64]) -> Histogram {
    Histogram::new(buckets.iter().copied())
}

/// Detection to confirmed association; Pacemaker's ~7 s is a bucket boundary on purpose.
const FAILOVER_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 30.0, 60.0,
];
const EC2_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const RECONCILE_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The controller's Prometheus metrics and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    failovers: Family<ReasonLabels, Counter>,
    failover_duration: Histogram,
    holder_changes: Family<ReasonLabels, Counter>,
    ec2_requests: Family<Ec2Labels, Counter>,
    ec2_request_duration: Family<OperationLabels, Histogram>,
    ec2_throttles: Family<OperationLabels, Counter>,
    reconcile_duration: Histogram,
    reconcile_errors: Family<KindLabels, Counter>,
    leader: Gauge,
    managed_addresses: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("feip");
        let failovers = Family::<ReasonLabels, Counter>::default();
        // Counters get the `_total` suffix from the registry.
        registry.register(
            "failovers",
            "Completed failovers (holder moved to another node), by reason",
            failovers.clone(),
        );
        let failover_duration = histogram(FAILOVER_BUCKETS);
        registry.register(
            "failover_duration_seconds",
            "Time from failure detection to confirmed association on the new holder",
            failover_duration.clone(),
        );
        let holder_changes = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "holder_changes",
            "Changes of the elected holder of an address, by reason",
            holder_changes.clone(),
        );
        let ec2_requests = Family::<Ec2Labels, Counter>::default();
        registry.register(
            "ec2_requests",
            "EC2 API requests by operation and outcome",
            ec2_requests.clone(),
        );
        let ec2_request_duration =
            Family::<OperationLabels, Histogram>::new_with_constructor(|| histogram(EC2_BUCKETS));
        registry.register(
            "ec2_request_duration_seconds",
            "EC2 API request latency by operation",
            ec2_request_duration.clone(),
        );
        let ec2_throttles = Family::<OperationLabels, Counter>::default();
        registry.register(
            "ec2_throttles",
            "EC2 requests answered with throttling, by operation",
            ec2_throttles.clone(),
        );
        let reconcile_duration = histogram(RECONCILE_BUCKETS);
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile of a FloatingElasticIP",
            reconcile_duration.clone(),
        );
        let reconcile_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that ended in an error, by kind",
            reconcile_errors.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 if this replica is the elected controller leader, else 0",
            leader.clone(),
        );
        let managed_addresses = Gauge::default();
        registry.register(
            "managed_addresses",
            "FloatingElasticIPs managed by this controller",
            managed_addresses.clone(),
        );
        Self {
            registry,
            failovers,
            failover_duration,
            holder_changes,
            ec2_requests,
            ec2_request_duration,
            ec2_throttles,
            reconcile_duration,
            reconcile_errors,
            leader,
            managed_addresses,
        }
    }

    /// A completed failover: `reason` is one of a small fixed set (the decision core's change reasons, e.g. "HolderDead",
    /// "drift", "standby"); `duration` is detection to confirmed association.
    pub fn failover(&self, reason: &'static str, duration: Duration) {
        self.failovers.get_or_create(&ReasonLabels { reason }).inc();
        self.failover_duration.observe(duration.as_secs_f64());
    }

    /// A change of elected holder (including first election), by reason.
    pub fn holder_change(&self, reason: &'static str) {
        self.holder_changes
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// One EC2 request: `operation` is the API action name (e.g. "AssociateAddress").
    pub fn ec2_request(&self, operation: &'static str, outcome: Ec2Outcome, elapsed: Duration) {
        self.ec2_requests
            .get_or_create(&Ec2Labels {
                operation,
                outcome: outcome.as_str(),
            })
            .inc();
        self.ec2_request_duration
            .get_or_create(&OperationLabels { operation })
            .observe(elapsed.as_secs_f64());
        if outcome == Ec2Outcome::Throttled {
            self.ec2_throttles
                .get_or_create(&OperationLabels { operation })
                .inc();
        }
    }

    /// One reconcile and how long it took.
    pub fn reconcile(&self, elapsed: Duration) {
        self.reconcile_duration.observe(elapsed.as_secs_f64());
    }

    /// A reconcile that failed; `kind` is a small fixed set ("kube", "blocked", "finalizer", "other").
    pub fn reconcile_error(&self, kind: &'static str) {
        self.reconcile_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn set_managed_addresses(&self, count: usize) {
        self.managed_addresses
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// The registry in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Writing to a String cannot fail; an error here would be an encoder bug.
            tracing::error!(error = %e, "failed to encode metrics");
        }
        out
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
}

/// The HTTP routes: `/healthz` (alive), `/readyz` (503 until `ready` is true), `/metrics`.
pub fn router(metrics: Arc<Metrics>, ready: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(HttpState { metrics, ready })
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if *state.ready.borrow() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics_handler(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        state.metrics.encode(),
    )
}

/// Binds the HTTP listener (port 0 picks a free port; see `local_addr`).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP endpoint on {addr}"))
}

/// Binds `addr` and serves the health and metrics endpoints until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_on(bind(addr).await?, metrics, ready, shutdown).await
}

/// Serves the health and metrics endpoints on an already bound listener until `shutdown`
/// resolves.
pub async fn serve_on(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, router(metrics, ready))
        .with_graceful_shutdown(shutdown)
        .await
        .with_context(|| format!("HTTP endpoint on {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn log_directives_keep_the_sdk_identity_target_at_info() {
        let sdk = "aws_smithy_runtime::client::orchestrator::endpoints=info";
        assert_eq!(log_directives(None), format!("info,{sdk}"));
        assert_eq!(log_directives(Some("  ")), format!("info,{sdk}"));
        assert_eq!(log_directives(Some("debug")), format!("debug,{sdk}"));
        assert_eq!(
            log_directives(Some("feip=trace,aws_smithy_runtime=debug")),
            format!("feip=trace,aws_smithy_runtime=debug,{sdk}")
        );
        // Naming the target explicitly is an informed choice and is respected.
        let explicit = "debug,aws_smithy_runtime::client::orchestrator::endpoints=debug";
        assert_eq!(log_directives(Some(explicit)), explicit);
        for d in [None, Some("debug"), Some("warn,kube=debug")] {
            assert!(EnvFilter::try_new(log_directives(d)).is_ok());
        }
    }

    #[test]
    fn encode_contains_every_metric_after_recording() {
        let m = Metrics::new();
        m.failover("holder-unhealthy", Duration::from_millis(1500));
        m.holder_change("elected");
        m.ec2_request(
            "AssociateAddress",
            Ec2Outcome::Success,
            Duration::from_millis(40),
        );
        m.ec2_request(
            "DescribeAddresses",
            Ec2Outcome::Throttled,
            Duration::from_millis(5),
        );
        m.reconcile(Duration::from_millis(3));
        m.reconcile_error("kube");
        m.set_leader(true);
        m.set_managed_addresses(2);
        let text = m.encode();
        for want in [
            "feip_failovers_total{reason=\"holder-unhealthy\"} 1",
            "feip_failover_duration_seconds_bucket{le=\"2.0\"} 1",
            "feip_failover_duration_seconds_count 1",
            "feip_holder_changes_total{reason=\"elected\"} 1",
            "feip_ec2_requests_total{operation=\"AssociateAddress\",outcome=\"success\"} 1",
            "feip_ec2_requests_total{operation=\"DescribeAddresses\",outcome=\"throttled\"} 1",
            "feip_ec2_throttles_total{operation=\"DescribeAddresses\"} 1",
            "feip_ec2_request_duration_seconds_count{operation=\"AssociateAddress\"} 1",
            "feip_reconcile_duration_seconds_count 1",
            "feip_reconcile_errors_total{kind=\"kube\"} 1",
            "feip_leader 1",
            "feip_managed_addresses 2",
            "# EOF",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        // Success is not a throttle.
        assert!(
            !text.contains("feip_ec2_throttles_total{operation=\"AssociateAddress\"}"),
            "{text}"
        );
        m.set_leader(false);
        assert!(m.encode().contains("feip_leader 0"));
    }

    /// A plain HTTP/1.1 GET over a fresh connection; returns (status, content-type, body).
    async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String, String)> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await?;
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head.split_whitespace().nth(1).unwrap_or_default().parse()?;
        let content_type = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default();
        Ok((status, content_type, body.to_string()))
    }

    #[tokio::test]
    async fn endpoints_over_real_tcp() -> anyhow::Result<()> {
        let listener = bind("127.0.0.1:0".parse()?).await?;
        let addr = listener.local_addr()?;
        let metrics = Arc::new(Metrics::new());
        metrics.set_leader(true);
        let (ready_tx, ready_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_on(listener, metrics, ready_rx, async {
            let _ = stop_rx.await;
        }));

        let (status, _, body) = get(addr, "/healthz").await?;
        assert_eq!((status, body.as_str()), (200, "ok"));
        assert_eq!(
            get(addr, "/readyz").await?.0,
            503,
            "unready until caches synced"
        );
        ready_tx.send_replace(true);
        assert_eq!(get(addr, "/readyz").await?.0, 200);
        ready_tx.send_replace(false);
        assert_eq!(get(addr, "/readyz").await?.0, 503);

        let (status, content_type, body) = get(addr, "/metrics").await?;
        assert_eq!(status, 200);
        assert_eq!(content_type, OPENMETRICS_CONTENT_TYPE);
        assert!(body.contains("feip_leader 1"), "{body}");
        assert_eq!(get(addr, "/nope").await?.0, 404);

        let _ = stop_tx.send(());
        server.await??;
        Ok(())
    }
}
