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
    /// Why heartbeat silence cannot be read as death right now (the heartbeat watch stalled,
    /// or every candidate is silent together: see [`super::heartbeat::heartbeat_gap`]).
    pub heartbeat_gap: Option<&'a str>,
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
        } else if let Some(gap) = s.heartbeat_gap {
            unknown = Some(format!(
                "kubelet heartbeat unchanged for {}s, but {gap}",
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

#[cfg(test)]
mod tests {
    //! One row per row of the health table (docs/semantics.md, "Node health and eligibility"),
    //! then which signal's reason wins when several disagree.

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(40);

    fn now() -> Timestamp {
        Timestamp::from_second(1_767_225_600).expect("valid time")
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_767_225_600 + secs).expect("valid time")
    }

    fn instance(state: &str) -> InstanceInfo {
        InstanceInfo {
            instance_id: "i-a".into(),
            state: state.into(),
            vpc_id: Some("vpc-1".into()),
            availability_zone: Some("ap-northeast-1a".into()),
            interfaces: Vec::new(),
        }
    }

    fn probe(status: ProbeStatus, starting: bool) -> ProbeSignal {
        ProbeSignal::Observed {
            ip: "10.0.0.11".parse().expect("ip"),
            port: 10250,
            failure_threshold: 3,
            status,
            since_wall: at(-7),
            starting,
        }
    }

    /// The signals of one row, owning what `NodeSignals` borrows. Default: a healthy node
    /// (Ready=True, fresh heartbeat, running instance, no probe).
    struct Case {
        ready: Option<&'static str>,
        heartbeat_age: Option<Duration>,
        api_failing: bool,
        heartbeat_gap: Option<&'static str>,
        instance: Option<InstanceInfo>,
        instances_error: Option<&'static str>,
        probe: ProbeSignal,
    }

    impl Default for Case {
        fn default() -> Self {
            Case {
                ready: Some("True"),
                heartbeat_age: Some(Duration::from_secs(1)),
                api_failing: false,
                heartbeat_gap: None,
                instance: Some(instance("running")),
                instances_error: None,
                probe: ProbeSignal::Off,
            }
        }
    }

    impl Case {
        fn verdict(&self) -> Verdict {
            verdict(&NodeSignals {
                ready: self.ready,
                heartbeat_age: self.heartbeat_age,
                heartbeat_timeout: TIMEOUT,
                api_failing: self.api_failing,
                heartbeat_gap: self.heartbeat_gap,
                instance: self.instance.as_ref(),
                instances_error: self.instances_error,
                probe: self.probe.clone(),
                now: now(),
            })
        }
    }

    fn healthy() -> Verdict {
        Verdict {
            health: NodeHealth::Healthy,
            dead_since: None,
            probe_pending: false,
        }
    }

    fn dead(reason: &str, dead_since: Option<Timestamp>) -> Verdict {
        Verdict {
            health: NodeHealth::Dead {
                reason: reason.into(),
            },
            dead_since,
            probe_pending: false,
        }
    }

    fn unknown(reason: &str, probe_pending: bool) -> Verdict {
        Verdict {
            health: NodeHealth::Unknown {
                reason: reason.into(),
            },
            dead_since: None,
            probe_pending,
        }
    }

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    fn check(rows: Vec<(&str, Case, Verdict)>) {
        let failed: Vec<String> = rows
            .into_iter()
            .filter_map(|(name, case, want)| {
                let got = case.verdict();
                (got != want).then(|| format!("{name}:\n  got  {got:?}\n  want {want:?}"))
            })
            .collect();
        assert!(failed.is_empty(), "rows failed:\n{}", failed.join("\n"));
    }

    #[test]
    fn one_row_per_health_signal() {
        let hb_dead_since = Some(now() - jiff::SignedDuration::from_secs(15));
        check(vec![
            ("all_signals_good_is_healthy", Case::default(), healthy()),
            (
                "ready_false_is_dead",
                Case {
                    ready: Some("False"),
                    ..Case::default()
                },
                dead("node Ready=False", None),
            ),
            (
                "ready_unknown_is_dead",
                Case {
                    ready: Some("Unknown"),
                    ..Case::default()
                },
                dead("node Ready=Unknown", None),
            ),
            (
                "missing_ready_condition_is_unknown",
                Case {
                    ready: None,
                    ..Case::default()
                },
                unknown("node has no Ready condition", false),
            ),
            (
                "heartbeat_exactly_at_timeout_is_not_stale",
                Case {
                    heartbeat_age: secs(40),
                    ..Case::default()
                },
                healthy(),
            ),
            (
                "no_heartbeat_lease_seen_is_no_signal",
                Case {
                    heartbeat_age: None,
                    ..Case::default()
                },
                healthy(),
            ),
            (
                "stale_heartbeat_is_dead_since_it_passed_the_timeout",
                Case {
                    heartbeat_age: secs(55),
                    ..Case::default()
                },
                dead("kubelet heartbeat unchanged for 55s", hb_dead_since),
            ),
            (
                "stale_heartbeat_while_the_api_fails_is_unknown",
                Case {
                    heartbeat_age: secs(55),
                    api_failing: true,
                    ..Case::default()
                },
                unknown(
                    "kubelet heartbeat unchanged for 55s while the API is failing this controller's requests",
                    false,
                ),
            ),
            (
                "stale_heartbeat_during_a_heartbeat_gap_is_unknown",
                Case {
                    heartbeat_age: secs(55),
                    heartbeat_gap: Some("the heartbeat watch is stalled"),
                    ..Case::default()
                },
                unknown(
                    "kubelet heartbeat unchanged for 55s, but the heartbeat watch is stalled",
                    false,
                ),
            ),
            (
                "a_heartbeat_gap_with_a_fresh_heartbeat_is_healthy",
                Case {
                    heartbeat_gap: Some("the heartbeat watch is stalled"),
                    ..Case::default()
                },
                healthy(),
            ),
            (
                "api_failing_with_a_fresh_heartbeat_is_healthy",
                Case {
                    api_failing: true,
                    ..Case::default()
                },
                healthy(),
            ),
            (
                "instance_stopping_is_dead",
                Case {
                    instance: Some(instance("stopping")),
                    ..Case::default()
                },
                dead("instance i-a is stopping", None),
            ),
            (
                "instance_stopped_is_dead",
                Case {
                    instance: Some(instance("stopped")),
                    ..Case::default()
                },
                dead("instance i-a is stopped", None),
            ),
            (
                "instance_shutting_down_is_dead",
                Case {
                    instance: Some(instance("shutting-down")),
                    ..Case::default()
                },
                dead("instance i-a is shutting-down", None),
            ),
            (
                "instance_terminated_is_dead",
                Case {
                    instance: Some(instance("terminated")),
                    ..Case::default()
                },
                dead("instance i-a is terminated", None),
            ),
            (
                "instance_pending_is_unknown",
                Case {
                    instance: Some(instance("pending")),
                    ..Case::default()
                },
                unknown("instance is pending", false),
            ),
            (
                "no_instance_data_because_describe_failed_is_unknown",
                Case {
                    instance: None,
                    instances_error: Some("DescribeInstances outcome unknown: throttled"),
                    ..Case::default()
                },
                unknown(
                    "instance state unknown: DescribeInstances outcome unknown: throttled",
                    false,
                ),
            ),
            (
                "no_instance_data_without_an_error_is_no_signal",
                Case {
                    instance: None,
                    ..Case::default()
                },
                healthy(),
            ),
            (
                "last_good_instance_data_is_used_despite_a_describe_error",
                Case {
                    instances_error: Some("throttled"),
                    ..Case::default()
                },
                healthy(),
            ),
            (
                "probe_dead_is_dead_since_its_transition",
                Case {
                    probe: probe(ProbeStatus::Dead, false),
                    ..Case::default()
                },
                dead("probe of 10.0.0.11:10250 failed 3 times", Some(at(-7))),
            ),
            (
                "probe_healthy_is_healthy",
                Case {
                    probe: probe(ProbeStatus::Healthy, false),
                    ..Case::default()
                },
                healthy(),
            ),
            (
                "probe_without_verdict_while_starting_is_pending",
                Case {
                    probe: probe(ProbeStatus::Unknown, true),
                    ..Case::default()
                },
                unknown("probe has no verdict yet", true),
            ),
            (
                "probe_without_verdict_after_starting_is_not_pending",
                Case {
                    probe: probe(ProbeStatus::Unknown, false),
                    ..Case::default()
                },
                unknown("probe has no verdict yet", false),
            ),
            (
                "probe_without_internal_ip_is_unknown",
                Case {
                    probe: ProbeSignal::NoInternalIp,
                    ..Case::default()
                },
                unknown("node has no InternalIP to probe", false),
            ),
        ]);
    }

    #[test]
    fn which_reason_wins_when_signals_disagree() {
        let hb_dead_since = Some(now() - jiff::SignedDuration::from_secs(15));
        check(vec![
            (
                "ready_false_beats_a_dead_probe_and_keeps_no_dead_since",
                Case {
                    ready: Some("False"),
                    probe: probe(ProbeStatus::Dead, false),
                    ..Case::default()
                },
                dead("node Ready=False", None),
            ),
            (
                "ready_false_beats_a_stale_heartbeat",
                Case {
                    ready: Some("False"),
                    heartbeat_age: secs(55),
                    ..Case::default()
                },
                dead("node Ready=False", None),
            ),
            (
                "stale_heartbeat_beats_a_stopped_instance_and_a_dead_probe",
                Case {
                    heartbeat_age: secs(55),
                    instance: Some(instance("stopped")),
                    probe: probe(ProbeStatus::Dead, false),
                    ..Case::default()
                },
                dead("kubelet heartbeat unchanged for 55s", hb_dead_since),
            ),
            (
                "stopped_instance_beats_a_dead_probe",
                Case {
                    instance: Some(instance("stopped")),
                    probe: probe(ProbeStatus::Dead, false),
                    ..Case::default()
                },
                dead("instance i-a is stopped", None),
            ),
            (
                "dead_instance_beats_a_missing_ready_condition",
                Case {
                    ready: None,
                    instance: Some(instance("terminated")),
                    ..Case::default()
                },
                dead("instance i-a is terminated", None),
            ),
            (
                "dead_probe_beats_a_missing_ready_condition",
                Case {
                    ready: None,
                    probe: probe(ProbeStatus::Dead, false),
                    ..Case::default()
                },
                dead("probe of 10.0.0.11:10250 failed 3 times", Some(at(-7))),
            ),
            (
                "dead_instance_beats_a_heartbeat_unknown_during_api_failure",
                Case {
                    heartbeat_age: secs(55),
                    api_failing: true,
                    instance: Some(instance("stopped")),
                    ..Case::default()
                },
                dead("instance i-a is stopped", None),
            ),
            (
                "dead_probe_beats_a_pending_instance",
                Case {
                    instance: Some(instance("pending")),
                    probe: probe(ProbeStatus::Dead, false),
                    ..Case::default()
                },
                dead("probe of 10.0.0.11:10250 failed 3 times", Some(at(-7))),
            ),
            (
                "dead_probe_beats_missing_instance_data",
                Case {
                    instance: None,
                    instances_error: Some("throttled"),
                    probe: probe(ProbeStatus::Dead, false),
                    ..Case::default()
                },
                dead("probe of 10.0.0.11:10250 failed 3 times", Some(at(-7))),
            ),
            (
                "missing_ready_reason_is_kept_over_no_internal_ip",
                Case {
                    ready: None,
                    probe: ProbeSignal::NoInternalIp,
                    ..Case::default()
                },
                unknown("node has no Ready condition", false),
            ),
            (
                "missing_ready_reason_is_kept_over_missing_instance_data",
                Case {
                    ready: None,
                    instance: None,
                    instances_error: Some("throttled"),
                    ..Case::default()
                },
                unknown("node has no Ready condition", false),
            ),
            (
                "an_earlier_unknown_makes_a_starting_probe_not_pending",
                Case {
                    ready: None,
                    probe: probe(ProbeStatus::Unknown, true),
                    ..Case::default()
                },
                unknown("node has no Ready condition", false),
            ),
            // Characterization: unlike the other unknown signals, a pending instance and a
            // heartbeat stale during an API failure replace an earlier unknown reason.
            (
                "pending_instance_replaces_the_missing_ready_reason",
                Case {
                    ready: None,
                    instance: Some(instance("pending")),
                    ..Case::default()
                },
                unknown("instance is pending", false),
            ),
            // Characterization: a node already dead by another signal still reports a
            // starting probe as pending (the reconcile then waits for the probe).
            (
                "dead_node_with_a_starting_probe_is_still_pending",
                Case {
                    ready: Some("False"),
                    probe: probe(ProbeStatus::Unknown, true),
                    ..Case::default()
                },
                Verdict {
                    probe_pending: true,
                    ..dead("node Ready=False", None)
                },
            ),
        ]);
    }
}
