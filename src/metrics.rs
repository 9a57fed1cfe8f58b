//! The controller's Prometheus metrics (`prometheus-client`).
//!
//! Metric labels are bounded on purpose: label values are `&'static str` chosen by the caller
//! from a small fixed set (reasons, EC2 operation names, error kinds), never object names, so
//! the number of series cannot grow with the number of FloatingElasticIPs or nodes.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::aws;

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
    planned_moves: Family<ReasonLabels, Counter>,
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
        let planned_moves = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "planned_moves",
            "Completed holder moves an operator asked for (a pin: feip move), by reason; not in feip_failovers_total",
            planned_moves.clone(),
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
            planned_moves,
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

    /// A completed failover: `reason` is the [`ChangeReason`](crate::decide::ChangeReason) name
    /// of the node-to-node move, a small fixed set (e.g. "HolderDead", "Drift", "Failback");
    /// `duration` is detection to confirmed association.
    /// A completed planned move (an operator's pin): counted apart from failovers, so that
    /// `feip_failovers_total` counts what feip did on its own.
    pub fn planned_move(&self, reason: &'static str) {
        self.planned_moves
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

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
    pub fn ec2_request(&self, operation: &'static str, outcome: aws::Outcome, elapsed: Duration) {
        self.ec2_requests
            .get_or_create(&Ec2Labels {
                operation,
                outcome: outcome.as_str(),
            })
            .inc();
        self.ec2_request_duration
            .get_or_create(&OperationLabels { operation })
            .observe(elapsed.as_secs_f64());
        if outcome == aws::Outcome::Throttled {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_contains_every_metric_after_recording() {
        let m = Metrics::new();
        m.failover("holder-unhealthy", Duration::from_millis(1500));
        m.holder_change("elected");
        m.planned_move("Pinned");
        m.ec2_request(
            "AssociateAddress",
            aws::Outcome::Success,
            Duration::from_millis(40),
        );
        m.ec2_request(
            "DescribeAddresses",
            aws::Outcome::Throttled,
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
            "feip_planned_moves_total{reason=\"Pinned\"} 1",
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
}
