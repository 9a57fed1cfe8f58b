//! The spec resolved against its defaults (no client).

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{FloatingElasticIP, Management, ProbeType, TargetState};
use crate::decide::Policy;
use crate::health::ProbeSpec;

/// Defaults of the spec (section 2 of the product spec).
pub(super) const DEFAULT_MONITOR_INTERVAL: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(40);
pub(super) const DEFAULT_PROBE_PORT: u16 = 10250;
pub(super) const DEFAULT_PROBE_PERIOD: Duration = Duration::from_secs(1);
pub(super) const DEFAULT_PROBE_FAILURES: u32 = 3;

/// The spec, resolved against defaults.
pub(super) struct ResolvedSpec {
    pub(super) policy: Policy,
    pub(super) monitor_interval: Duration,
    /// How long a mutation may take to become visible in DescribeAddresses.
    pub(super) confirm_timeout: Duration,
    pub(super) heartbeat_timeout: Duration,
    pub(super) probe: Option<ProbeConfig>,
    pub(super) device_index: i32,
}

pub(super) fn resolve(f: &FloatingElasticIP) -> ResolvedSpec {
    let s = &f.spec;
    let d = |x: Option<kube::core::Duration>| x.map(Duration::from);
    let to_ts = |t: &Option<Time>| t.as_ref().map(|t| t.0);
    let failure_timeout = d(s.failure_timeout).filter(|t| !t.is_zero());
    let policy = Policy {
        failback: s.failback.as_ref().map(|f| f.policy).unwrap_or_default(),
        hold_down: s
            .failback
            .as_ref()
            .and_then(|f| d(f.hold_down))
            .unwrap_or_default(),
        migration_threshold: s.migration_threshold.unwrap_or(1).max(1) as u32,
        failure_timeout,
        allow_takeover: s.allow_takeover.unwrap_or(false),
        stopped: s.target_state == Some(TargetState::Stopped),
        observe_only: s.management == Some(Management::ObserveOnly),
        stop_on_associate_failure: s.on_associate_failure
            == Some(crate::crd::AssociateFailurePolicy::Stop),
        pin: s
            .pin
            .as_ref()
            .map(|p| (p.node.clone(), to_ts(&p.expires_at))),
        bans: s
            .bans
            .iter()
            .flatten()
            .map(|b| (b.node.clone(), to_ts(&b.expires_at)))
            .collect(),
    };
    let probe_cfg = s
        .health
        .as_ref()
        .and_then(|h| h.probe.clone())
        .unwrap_or_default();
    let probe = match probe_cfg.kind {
        ProbeType::None => None,
        kind => {
            let period = d(probe_cfg.period).unwrap_or(DEFAULT_PROBE_PERIOD);
            let timeout = d(probe_cfg.timeout)
                .unwrap_or(Duration::from_secs(1))
                .min(period);
            let path = (kind == ProbeType::Http)
                .then(|| probe_cfg.path.clone().unwrap_or_else(|| "/healthz".into()));
            Some(ProbeConfig {
                port: probe_cfg.port.map_or(DEFAULT_PROBE_PORT, |p| p as u16),
                http_path: path,
                period,
                timeout,
                failure_threshold: probe_cfg
                    .failure_threshold
                    .map_or(DEFAULT_PROBE_FAILURES, |v| v.max(1) as u32),
                success_threshold: probe_cfg.success_threshold.map_or(1, |v| v.max(1) as u32),
            })
        }
    };
    ResolvedSpec {
        policy,
        confirm_timeout: s
            .monitor
            .as_ref()
            .and_then(|m| d(m.timeout))
            .unwrap_or(DEFAULT_CONFIRM_TIMEOUT),
        monitor_interval: s
            .monitor
            .as_ref()
            .and_then(|m| d(m.interval))
            .unwrap_or(DEFAULT_MONITOR_INTERVAL),
        heartbeat_timeout: s
            .health
            .as_ref()
            .and_then(|h| d(h.heartbeat_timeout))
            .unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT),
        probe,
        device_index: s
            .network_interface
            .as_ref()
            .and_then(|n| n.device_index)
            .unwrap_or(0),
    }
}

/// The probe an address asks for, resolved against the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ProbeConfig {
    pub(super) port: u16,
    /// HTTP GET path; `None` probes TCP.
    pub(super) http_path: Option<String>,
    pub(super) period: Duration,
    pub(super) timeout: Duration,
    pub(super) failure_threshold: u32,
    pub(super) success_threshold: u32,
}

impl ProbeConfig {
    /// The probe of one node's InternalIP.
    pub(super) fn of(&self, ip: IpAddr) -> ProbeSpec {
        ProbeSpec {
            ip,
            port: self.port,
            http_path: self.http_path.clone(),
            period: self.period,
            timeout: self.timeout,
            failure_threshold: self.failure_threshold,
            success_threshold: self.success_threshold,
        }
    }
}
