//! The health verdict of one node (no client): its signals in, Healthy / Dead / Unknown out.
//! Any definite "dead" signal wins; a signal that cannot be read makes the node unknown, never
//! dead (docs/semantics.md, the health table).

use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;

use crate::aws::InstanceInfo;
use crate::decide::NodeHealth;

use super::ProbeStatus;

/// Everything known about one node's health at one instant.
#[derive(Clone, Debug)]
pub struct NodeSignals<'a> {
    /// Status of the node's Ready condition; `None` when it has none.
    pub ready: Option<&'a str>,
    /// How long the kubelet heartbeat has been unchanged, counting only observed time.
    pub heartbeat_age: Option<Duration>,
    pub heartbeat_timeout: Duration,
    /// The API is failing this replica's own requests (kubelets cannot renew either).
    pub api_failing: bool,
    /// The node's instance as EC2 last described it.
    pub instance: Option<&'a InstanceInfo>,
    /// The last DescribeInstances error, if it failed.
    pub instances_error: Option<&'a str>,
    pub probe: ProbeSignal,
    pub now: Timestamp,
}

/// The probe's part of the signals.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeSignal {
    /// The address asks for no probe.
    Off,
    /// A probe is configured but the node has no InternalIP to probe.
    NoInternalIp,
    Observed {
        ip: IpAddr,
        port: u16,
        failure_threshold: u32,
        status: ProbeStatus,
        /// When the current status began (wall clock).
        since_wall: Timestamp,
        /// The probe started moments ago and may still give its first verdict.
        starting: bool,
    },
}

/// A node's health, with when it died (for the failover record) and whether its probe is
/// about to give a first verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub health: NodeHealth,
    pub dead_since: Option<Timestamp>,
    pub probe_pending: bool,
}

/// Combines the signals: Ready, kubelet heartbeat, instance state, probe.
pub fn verdict(s: &NodeSignals<'_>) -> Verdict {
    let mut dead: Option<String> = None;
    let mut unknown: Option<String> = None;
    let mut dead_since = None;
    let mut probe_pending = false;
    match s.ready {
        Some("True") => {}
        Some(other) => dead = Some(format!("node Ready={other}")),
        None => unknown = Some("node has no Ready condition".into()),
    }
    if dead.is_none()
        && let Some(age) = s.heartbeat_age
        && age > s.heartbeat_timeout
    {
        if s.api_failing {
            unknown = Some(format!(
                "kubelet heartbeat unchanged for {}s while the API is failing this controller's requests",
                age.as_secs()
            ));
        } else {
            dead = Some(format!(
                "kubelet heartbeat unchanged for {}s",
                age.as_secs()
            ));
            dead_since = Some(
                s.now
                    - jiff::SignedDuration::try_from(age - s.heartbeat_timeout).unwrap_or_default(),
            );
        }
    }
    if dead.is_none()
        && let Some(inst) = s.instance
        && !inst.is_running()
    {
        if inst.state == "pending" {
            unknown = Some("instance is pending".into());
        } else {
            dead = Some(format!("instance {} is {}", inst.instance_id, inst.state));
        }
    }
    if s.instance.is_none() && unknown.is_none() {
        // No instance data at all yet: cannot tell.
        unknown = s
            .instances_error
            .map(|e| format!("instance state unknown: {e}"));
    }
    match &s.probe {
        ProbeSignal::Off => {}
        ProbeSignal::NoInternalIp => {
            if unknown.is_none() {
                unknown = Some("node has no InternalIP to probe".into());
            }
        }
        ProbeSignal::Observed {
            ip,
            port,
            failure_threshold,
            status,
            since_wall,
            starting,
        } => match status {
            ProbeStatus::Dead if dead.is_none() => {
                dead = Some(format!(
                    "probe of {ip}:{port} failed {failure_threshold} times"
                ));
                dead_since = Some(*since_wall);
            }
            ProbeStatus::Unknown if unknown.is_none() => {
                unknown = Some("probe has no verdict yet".into());
                probe_pending = *starting;
            }
            _ => {}
        },
    }
    let health = match (dead, unknown) {
        (Some(reason), _) => NodeHealth::Dead { reason },
        (None, Some(reason)) => NodeHealth::Unknown { reason },
        (None, None) => NodeHealth::Healthy,
    };
    Verdict {
        health,
        dead_since,
        probe_pending,
    }
}
