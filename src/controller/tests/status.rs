//! `status::build_status` and `status::conflict_status`: phase, conditions and fields for every
//! situation the controller reports (docs/semantics.md, "Phases" and "Conditions").

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::aws::Ec2Error;
use crate::crd::{FailoverRecord, FloatingElasticIPStatus, Phase};
use crate::decide::{Eligibility, FailureKind, FailureRecord, Finding, NodeHealth};

use super::super::observe::failures_from_status;
use super::super::status::{
    CUT_MARKER, MAX_FAILURE_REASON_BYTES, MAX_MESSAGE_BYTES, MAX_NODE_NAME_BYTES, MAX_NODE_RECORDS,
    bounded, conflict_status, not_permitted_status,
};
use super::fixtures::*;

/// One expected condition: type, status, reason, substrings of the message.
type Expect = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
);

struct Row {
    name: &'static str,
    case: StatusCase,
    phase: Phase,
    conditions: Vec<Expect>,
}

fn check(rows: Vec<Row>) {
    let mut failed = Vec::new();
    for row in rows {
        let st = row.case.run();
        let outcome = std::panic::catch_unwind(|| {
            assert_eq!(st.phase, Some(row.phase), "phase");
            for (type_, status, reason, parts) in &row.conditions {
                assert_cond(&st, type_, status, reason, parts);
            }
        });
        if outcome.is_err() {
            failed.push(row.name);
        }
    }
    assert!(failed.is_empty(), "rows failed: {failed:?}");
}

fn ready(status: &'static str, reason: &'static str) -> Expect {
    ("Ready", status, reason, &[])
}

#[test]
fn phase_and_conditions_per_situation() {
    let ok_degraded: Expect = ("Degraded", "False", "AsExpected", &["no problems"]);
    let not_blocked: Expect = ("Blocked", "False", "NotBlocked", &["not blocked"]);
    let rows = vec![
        Row {
            name: "active_when_address_on_healthy_holder",
            case: StatusCase::active(),
            phase: Phase::Active,
            conditions: vec![
                ("Ready", "True", "Active", &["Active"]),
                (
                    "Associated",
                    "True",
                    "OnHolder",
                    &["203.0.113.10 is associated with eni-a (10.0.0.11)"],
                ),
                ("HolderHealthy", "True", "Healthy", &["a is healthy"]),
                ("Degraded", "False", "AsExpected", &["no problems"]),
                ("Blocked", "False", "NotBlocked", &["not blocked"]),
            ],
        },
        Row {
            name: "associating_when_holder_elected_but_address_elsewhere",
            case: StatusCase {
                holder_on_target: false,
                current: Some(address_on(None)),
                ..StatusCase::active()
            },
            phase: Phase::Associating,
            conditions: vec![
                ("Ready", "False", "Associating", &["Associating"]),
                (
                    "Associated",
                    "False",
                    "NotOnHolder",
                    &["203.0.113.10 is not associated"],
                ),
                ("HolderHealthy", "True", "Healthy", &[]),
            ],
        },
        Row {
            name: "failing_when_holder_on_target_is_dead",
            case: StatusCase {
                gathered: vec![
                    gathered("a", dead("node Ready=False"), Eligibility::Eligible),
                    healthy("b"),
                ],
                holder_healthy: false,
                ..StatusCase::active()
            },
            phase: Phase::Failing,
            conditions: vec![
                ready("False", "Failing"),
                (
                    "HolderHealthy",
                    "False",
                    "HolderDead",
                    &["node Ready=False"],
                ),
                ("Associated", "True", "OnHolder", &[]),
            ],
        },
        Row {
            name: "failing_when_no_eligible_candidate",
            case: StatusCase::no_holder(vec![Finding::NoEligibleCandidate {
                why: "a: standby; b: cordoned".into(),
            }]),
            phase: Phase::Failing,
            conditions: vec![
                (
                    "Degraded",
                    "True",
                    "NoEligibleCandidate",
                    &["a: standby; b: cordoned"],
                ),
                ("Ready", "False", "Failing", &["a: standby; b: cordoned"]),
                (
                    "HolderHealthy",
                    "False",
                    "NoHolder",
                    &["no node holds the address"],
                ),
            ],
        },
        Row {
            name: "failing_when_stopped_after_associate_failure",
            case: StatusCase::no_holder(vec![Finding::StoppedAfterAssociateFailure {
                node: "a".into(),
            }]),
            phase: Phase::Failing,
            conditions: vec![(
                "Degraded",
                "True",
                "StoppedAfterAssociateFailure",
                &["associate failed on a; run cleanup to retry"],
            )],
        },
        Row {
            name: "pending_when_no_holder_and_no_finding",
            case: StatusCase::no_holder(Vec::new()),
            phase: Phase::Pending,
            conditions: vec![
                ("Ready", "False", "Pending", &["Pending"]),
                ok_degraded,
                ("Associated", "False", "NotOnHolder", &["is not associated"]),
            ],
        },
        Row {
            name: "stopped_is_ready",
            case: StatusCase {
                f: feip(spec(serde_json::json!({"targetState": "Stopped"}))),
                ..StatusCase::no_holder(Vec::new())
            },
            phase: Phase::Stopped,
            conditions: vec![("Ready", "True", "Stopped", &["Stopped"]), not_blocked],
        },
        Row {
            name: "stopped_wins_over_address_missing",
            case: StatusCase {
                f: feip(spec(serde_json::json!({"targetState": "Stopped"}))),
                address_missing: true,
                current: None,
                ..StatusCase::no_holder(Vec::new())
            },
            phase: Phase::Stopped,
            conditions: vec![
                ("Ready", "True", "Stopped", &["does not exist"]),
                ("Degraded", "True", "AddressNotFound", &[]),
            ],
        },
        Row {
            name: "unmanaged_reports_drift_observed",
            case: StatusCase {
                f: feip(spec(serde_json::json!({"management": "ObserveOnly"}))),
                decision: decision(
                    Some("a"),
                    vec![Finding::DriftObserved {
                        node: "a".into(),
                        network_interface_id: Some("eni-x".into()),
                    }],
                ),
                holder_on_target: false,
                current: Some(address_on(Some("x"))),
                ..StatusCase::active()
            },
            phase: Phase::Unmanaged,
            conditions: vec![
                (
                    "Degraded",
                    "True",
                    "DriftObserved",
                    &["address is on eni-x instead of holder a"],
                ),
                ("Ready", "False", "Unmanaged", &["instead of holder a"]),
            ],
        },
        Row {
            name: "unmanaged_drift_to_nothing_says_nothing",
            case: StatusCase {
                f: feip(spec(serde_json::json!({"management": "ObserveOnly"}))),
                decision: decision(
                    Some("a"),
                    vec![Finding::DriftObserved {
                        node: "a".into(),
                        network_interface_id: None,
                    }],
                ),
                holder_on_target: false,
                current: Some(address_on(None)),
                ..StatusCase::active()
            },
            phase: Phase::Unmanaged,
            conditions: vec![(
                "Degraded",
                "True",
                "DriftObserved",
                &["address is on nothing instead of holder a"],
            )],
        },
        Row {
            name: "drift_observed_is_silent_when_managed",
            case: StatusCase {
                decision: decision(
                    Some("a"),
                    vec![Finding::DriftObserved {
                        node: "a".into(),
                        network_interface_id: None,
                    }],
                ),
                holder_on_target: false,
                current: Some(address_on(None)),
                ..StatusCase::active()
            },
            phase: Phase::Associating,
            conditions: vec![ok_degraded],
        },
        Row {
            name: "blocked_wins_over_every_other_phase",
            case: StatusCase {
                f: feip(spec(
                    serde_json::json!({"targetState": "Stopped", "management": "ObserveOnly"}),
                )),
                blocked: Some("DisassociateAddress failed: AuthFailure: denied".into()),
                address_missing: true,
                ..StatusCase::active()
            },
            phase: Phase::Blocked,
            conditions: vec![
                (
                    "Blocked",
                    "True",
                    "DisassociateFailed",
                    &["DisassociateAddress failed: AuthFailure: denied"],
                ),
                ("Ready", "False", "Blocked", &[]),
            ],
        },
        Row {
            name: "error_when_allocation_id_missing",
            case: StatusCase {
                address_missing: true,
                current: None,
                holder_on_target: false,
                ..StatusCase::active()
            },
            phase: Phase::Error,
            conditions: vec![
                (
                    "Degraded",
                    "True",
                    "AddressNotFound",
                    &[
                        "the Elastic IP eipalloc-0123456789abcdef0 does not exist in this account and region",
                    ],
                ),
                ("Ready", "False", "Error", &["does not exist"]),
                ("Associated", "False", "Unknown", &["address state unknown"]),
            ],
        },
        Row {
            name: "error_when_public_ip_missing",
            case: StatusCase {
                f: feip(spec(
                    serde_json::json!({"allocationId": null, "publicIp": PUBLIC_IP}),
                )),
                address_missing: true,
                current: None,
                ..StatusCase::no_holder(Vec::new())
            },
            phase: Phase::Error,
            conditions: vec![(
                "Degraded",
                "True",
                "AddressNotFound",
                &["203.0.113.10 is not an Elastic IP of this account in this region"],
            )],
        },
        Row {
            name: "error_when_ec2_refuses_for_a_reason_no_node_fixes",
            case: StatusCase {
                action_error: Some(definite("UnauthorizedOperation")),
                holder_on_target: false,
                current: Some(address_on(None)),
                ..StatusCase::active()
            },
            phase: Phase::Error,
            conditions: vec![
                (
                    "Degraded",
                    "True",
                    "Ec2Refused",
                    &[
                        "AssociateAddress failed: UnauthorizedOperation: UnauthorizedOperation message",
                    ],
                ),
                ("Ready", "False", "Error", &["UnauthorizedOperation"]),
            ],
        },
        Row {
            name: "invalid_allocation_is_ec2_refused",
            case: StatusCase {
                action_error: Some(definite("InvalidAllocationID.NotFound")),
                ..StatusCase::active()
            },
            phase: Phase::Error,
            conditions: vec![(
                "Degraded",
                "True",
                "Ec2Refused",
                &["InvalidAllocationID.NotFound"],
            )],
        },
        Row {
            name: "associate_failed_blaming_target_is_not_error_phase",
            case: StatusCase {
                action_error: Some(definite("InvalidNetworkInterfaceID.NotFound")),
                holder_on_target: false,
                current: Some(address_on(None)),
                ..StatusCase::active()
            },
            phase: Phase::Associating,
            conditions: vec![
                (
                    "Degraded",
                    "True",
                    "AssociateFailed",
                    &["AssociateAddress failed: InvalidNetworkInterfaceID.NotFound"],
                ),
                (
                    "Ready",
                    "False",
                    "Associating",
                    &["InvalidNetworkInterfaceID.NotFound"],
                ),
            ],
        },
        Row {
            name: "ec2_unknown_from_finding",
            case: StatusCase {
                decision: decision(
                    Some("a"),
                    vec![Finding::Ec2Unknown {
                        reason: "throttled: RequestLimitExceeded".into(),
                    }],
                ),
                holder_on_target: false,
                current: None,
                ..StatusCase::active()
            },
            phase: Phase::Associating,
            conditions: vec![
                (
                    "Degraded",
                    "True",
                    "Ec2Unknown",
                    &[
                        "EC2 state unknown, retrying with backoff (no failover): throttled: RequestLimitExceeded",
                    ],
                ),
                ("Associated", "False", "Unknown", &["address state unknown"]),
            ],
        },
        Row {
            name: "ec2_unknown_from_unknown_action_error_is_not_error_phase",
            case: StatusCase {
                action_error: Some(unknown_error("timed out")),
                holder_on_target: false,
                current: Some(address_on(None)),
                ..StatusCase::active()
            },
            phase: Phase::Associating,
            conditions: vec![(
                "Degraded",
                "True",
                "Ec2Unknown",
                &["(no failover): AssociateAddress outcome unknown: timed out"],
            )],
        },
        Row {
            name: "ec2_unknown_finding_wins_over_unknown_action_error",
            case: StatusCase {
                decision: decision(
                    Some("a"),
                    vec![Finding::Ec2Unknown {
                        reason: "from finding".into(),
                    }],
                ),
                action_error: Some(unknown_error("from action")),
                ..StatusCase::active()
            },
            phase: Phase::Active,
            conditions: vec![("Degraded", "True", "Ec2Unknown", &["from finding"])],
        },
        Row {
            name: "definite_action_error_wins_over_ec2_unknown_finding",
            case: StatusCase {
                decision: decision(
                    Some("a"),
                    vec![Finding::Ec2Unknown {
                        reason: "from finding".into(),
                    }],
                ),
                action_error: Some(definite("InvalidInstanceID.NotFound")),
                ..StatusCase::active()
            },
            phase: Phase::Active,
            conditions: vec![(
                "Degraded",
                "True",
                "AssociateFailed",
                &["InvalidInstanceID.NotFound"],
            )],
        },
        Row {
            name: "address_missing_wins_over_action_error_and_findings",
            case: StatusCase {
                decision: decision(
                    None,
                    vec![Finding::NoEligibleCandidate { why: "none".into() }],
                ),
                action_error: Some(definite("InvalidNetworkInterfaceID.NotFound")),
                address_missing: true,
                current: None,
                ..StatusCase::no_holder(Vec::new())
            },
            phase: Phase::Error,
            conditions: vec![("Degraded", "True", "AddressNotFound", &[])],
        },
        Row {
            name: "foreign_association_is_pending",
            case: StatusCase {
                current: Some(address_on(Some("x"))),
                ..StatusCase::no_holder(vec![Finding::ForeignAssociation {
                    network_interface_id: "eni-x".into(),
                }])
            },
            phase: Phase::Pending,
            conditions: vec![
                (
                    "Degraded",
                    "True",
                    "ForeignAssociation",
                    &[
                        "the address is associated with eni-x, outside the candidates; set allowTakeover to take it",
                    ],
                ),
                (
                    "Associated",
                    "False",
                    "NotOnHolder",
                    &["associated with eni-x"],
                ),
            ],
        },
        Row {
            name: "holder_health_unknown_is_failing",
            case: StatusCase {
                decision: decision(
                    Some("a"),
                    vec![Finding::HolderHealthUnknown {
                        node: "a".into(),
                        reason: "probe has no verdict yet".into(),
                    }],
                ),
                gathered: vec![
                    gathered(
                        "a",
                        unknown("probe has no verdict yet"),
                        Eligibility::Eligible,
                    ),
                    healthy("b"),
                ],
                holder_healthy: false,
                ..StatusCase::active()
            },
            phase: Phase::Failing,
            conditions: vec![
                (
                    "Degraded",
                    "True",
                    "HolderHealthUnknown",
                    &["a: probe has no verdict yet"],
                ),
                (
                    "HolderHealthy",
                    "False",
                    "HolderHealthUnknown",
                    &["probe has no verdict yet"],
                ),
            ],
        },
        Row {
            name: "first_finding_in_decision_order_wins",
            case: StatusCase {
                decision: decision(
                    Some("a"),
                    vec![
                        Finding::WaitingForTarget { node: "a".into() },
                        Finding::HolderHealthUnknown {
                            node: "a".into(),
                            reason: "r".into(),
                        },
                        Finding::ForeignAssociation {
                            network_interface_id: "eni-x".into(),
                        },
                    ],
                ),
                ..StatusCase::active()
            },
            phase: Phase::Active,
            conditions: vec![("Degraded", "True", "HolderHealthUnknown", &["a: r"])],
        },
        Row {
            name: "candidate_unresolvable_lists_broken_candidates_while_active",
            case: StatusCase {
                gathered: vec![
                    healthy("a"),
                    gathered(
                        "b",
                        NodeHealth::Healthy,
                        unresolvable("node has no spec.providerID"),
                    ),
                    gathered("c", dead("gone"), unresolvable("node c not found")),
                    gathered("d", NodeHealth::Healthy, Eligibility::Cordoned),
                ],
                ..StatusCase::active()
            },
            phase: Phase::Active,
            conditions: vec![
                (
                    "Degraded",
                    "True",
                    "CandidateUnresolvable",
                    &["b: node has no spec.providerID; c: node c not found"],
                ),
                (
                    "Ready",
                    "True",
                    "Active",
                    &["b: node has no spec.providerID"],
                ),
            ],
        },
        Row {
            name: "a_finding_hides_candidate_unresolvable",
            case: StatusCase {
                decision: decision(
                    None,
                    vec![Finding::NoEligibleCandidate { why: "why".into() }],
                ),
                gathered: vec![gathered("b", NodeHealth::Healthy, unresolvable("nope"))],
                ..StatusCase::no_holder(Vec::new())
            },
            phase: Phase::Failing,
            conditions: vec![("Degraded", "True", "NoEligibleCandidate", &["why"])],
        },
        Row {
            name: "holder_not_among_candidates_is_no_holder_health",
            case: StatusCase {
                gathered: vec![healthy("b")],
                holder_healthy: false,
                ..StatusCase::active()
            },
            phase: Phase::Failing,
            conditions: vec![(
                "HolderHealthy",
                "False",
                "NoHolder",
                &["no node holds the address"],
            )],
        },
    ];
    check(rows);
}

#[test]
fn active_status_fields() {
    let st = StatusCase {
        failover_count: 4,
        last_failover: Some(FailoverRecord {
            from: Some("b".into()),
            to: "a".into(),
            reason: "HolderDead".into(),
            ..Default::default()
        }),
        transitions: 7,
        cleanup_done: Some("req-1".into()),
        ..StatusCase::active()
    }
    .run();
    let holder = st.holder.expect("holder");
    assert_eq!(holder.node, "a");
    assert_eq!(holder.instance_id.as_deref(), Some("i-a"));
    assert_eq!(holder.network_interface_id.as_deref(), Some("eni-a"));
    assert_eq!(holder.private_ip_address.as_deref(), Some("10.0.0.11"));
    assert_eq!(
        holder.since,
        Some(Time(now())),
        "a new holder is held since now"
    );
    let a = st.address.expect("address");
    assert_eq!(a.allocation_id.as_deref(), Some(ALLOC));
    assert_eq!(a.public_ip.as_deref(), Some(PUBLIC_IP));
    assert_eq!(a.association_id.as_deref(), Some("eipassoc-a"));
    assert_eq!(a.network_interface_id.as_deref(), Some("eni-a"));
    assert_eq!(a.private_ip_address.as_deref(), Some("10.0.0.11"));
    let lease = st.lease.expect("lease");
    assert_eq!((lease.name.as_str(), lease.transitions), ("feip-web", 7));
    assert_eq!(st.failover_count, 4);
    assert_eq!(
        st.last_failover.map(|l| l.reason).as_deref(),
        Some("HolderDead")
    );
    assert_eq!(st.last_cleanup_request_id.as_deref(), Some("req-1"));
    assert_eq!(st.observed_generation, Some(3));
    assert!(st.nodes.is_empty());
    let types: Vec<&str> = st.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(
        types,
        [
            "Associated",
            "HolderHealthy",
            "Degraded",
            "Blocked",
            "Ready"
        ]
    );
    for c in &st.conditions {
        assert_eq!(c.observed_generation, Some(3), "{c:?}");
        assert_eq!(c.last_transition_time, Time(now()), "first status: {c:?}");
    }
}

#[test]
fn holder_without_resolved_target_reports_gathered_instance() {
    let mut g = healthy("a");
    g.view.target = None;
    g.instance_id = Some("i-known".into());
    let st = StatusCase {
        gathered: vec![g],
        ..StatusCase::active()
    }
    .run();
    let h = st.holder.expect("holder");
    assert_eq!(h.instance_id.as_deref(), Some("i-known"));
    assert_eq!(h.network_interface_id, None);
    assert_eq!(h.private_ip_address, None);
    // A holder that is not a candidate: only its name.
    let st = StatusCase {
        gathered: Vec::new(),
        ..StatusCase::active()
    }
    .run();
    let h = st.holder.expect("holder");
    assert_eq!((h.node.as_str(), h.instance_id.clone()), ("a", None));
}

fn old_status(holder: &str, ready: &str, since: i64) -> serde_json::Value {
    let t = |s: i64| serde_json::to_value(Time(ts(s))).expect("time");
    serde_json::json!({
        "holder": {"node": holder, "since": t(since)},
        "address": {"allocationId": ALLOC, "publicIp": "198.51.100.1", "networkInterfaceId": "eni-old"},
        "conditions": [
            {"type": "Ready", "status": ready, "reason": "Old", "message": "old",
             "lastTransitionTime": t(-100)},
            {"type": "Degraded", "status": "False", "reason": "AsExpected", "message": "m",
             "lastTransitionTime": t(-50)},
        ],
    })
}

#[test]
fn last_transition_time_kept_while_status_unchanged() {
    let st = StatusCase {
        f: feip_with(
            spec(serde_json::json!({})),
            Some(old_status("a", "True", -10)),
        ),
        ..StatusCase::active()
    }
    .run();
    assert_eq!(cond(&st, "Ready").last_transition_time, Time(ts(-100)));
    assert_eq!(cond(&st, "Degraded").last_transition_time, Time(ts(-50)));
    // A condition absent before starts now.
    assert_eq!(cond(&st, "Associated").last_transition_time, Time(now()));
}

#[test]
fn last_transition_time_is_now_when_status_flips() {
    let st = StatusCase {
        f: feip_with(
            spec(serde_json::json!({})),
            Some(old_status("a", "False", -10)),
        ),
        ..StatusCase::active()
    }
    .run();
    assert_eq!(cond(&st, "Ready").status, "True");
    assert_eq!(cond(&st, "Ready").last_transition_time, Time(now()));
    // A reason change alone is no transition.
    assert_eq!(cond(&st, "Degraded").reason, "AsExpected");
    let st = StatusCase {
        f: feip_with(
            spec(serde_json::json!({})),
            Some(old_status("a", "False", -10)),
        ),
        ..StatusCase::no_holder(Vec::new())
    }
    .run();
    let r = cond(&st, "Ready");
    assert_eq!(
        (r.reason.as_str(), r.last_transition_time.clone()),
        ("Pending", Time(ts(-100)))
    );
}

#[test]
fn holder_since_kept_for_same_holder_only() {
    let same = StatusCase {
        f: feip_with(
            spec(serde_json::json!({})),
            Some(old_status("a", "True", -10)),
        ),
        ..StatusCase::active()
    }
    .run();
    assert_eq!(same.holder.and_then(|h| h.since), Some(Time(ts(-10))));
    let other = StatusCase {
        f: feip_with(
            spec(serde_json::json!({})),
            Some(old_status("b", "True", -10)),
        ),
        ..StatusCase::active()
    }
    .run();
    assert_eq!(other.holder.and_then(|h| h.since), Some(Time(now())));
    let none = StatusCase {
        f: feip_with(
            spec(serde_json::json!({})),
            Some(old_status("a", "True", -10)),
        ),
        ..StatusCase::no_holder(Vec::new())
    }
    .run();
    assert_eq!(none.holder, None, "no holder, no holder status");
}

#[test]
fn address_falls_back_to_old_status_then_spec_when_ec2_unknown() {
    let st = StatusCase {
        f: feip_with(
            spec(serde_json::json!({})),
            Some(old_status("a", "True", -10)),
        ),
        current: None,
        holder_on_target: false,
        ..StatusCase::active()
    }
    .run();
    let a = st.address.expect("address");
    assert_eq!(
        a.public_ip.as_deref(),
        Some("198.51.100.1"),
        "old status kept"
    );
    assert_eq!(a.network_interface_id.as_deref(), Some("eni-old"));
    let st = StatusCase {
        f: feip(spec(
            serde_json::json!({"allocationId": null, "publicIp": PUBLIC_IP}),
        )),
        current: None,
        holder_on_target: false,
        ..StatusCase::active()
    }
    .run();
    let a = st.address.expect("address");
    assert_eq!(
        (
            a.allocation_id,
            a.public_ip.as_deref(),
            a.network_interface_id
        ),
        (None, Some(PUBLIC_IP), None),
        "no old status: the spec's identity only"
    );
}

#[test]
fn node_failure_records_with_ban_and_ban_end() {
    let failures = BTreeMap::from([
        (
            "a".to_string(),
            failure(
                2,
                ts(-30),
                FailureKind::Drift,
                "the address was found off the holder's target",
            ),
        ),
        (
            "b".to_string(),
            failure(
                1,
                ts(-20),
                FailureKind::AssociateFailed,
                "InvalidInstanceID",
            ),
        ),
    ]);
    let with_timeout = StatusCase {
        f: feip(spec(
            serde_json::json!({"migrationThreshold": 2, "failureTimeout": "60s"}),
        )),
        failures: failures.clone(),
        ..StatusCase::active()
    }
    .run();
    let [a, b] = with_timeout.nodes.as_slice() else {
        panic!("two records: {:?}", with_timeout.nodes);
    };
    assert_eq!((a.node.as_str(), a.failure_count, a.banned), ("a", 2, true));
    assert_eq!(a.last_failure, Some(Time(ts(-30))));
    assert_eq!(
        a.banned_until,
        Some(Time(ts(30))),
        "last failure + failureTimeout"
    );
    assert_eq!(
        a.last_failure_reason.as_deref(),
        Some("Drift: the address was found off the holder's target")
    );
    assert_eq!(
        (b.node.as_str(), b.failure_count, b.banned),
        ("b", 1, false)
    );
    assert_eq!(b.banned_until, None, "not banned: no ban end");
    assert_eq!(
        b.last_failure_reason.as_deref(),
        Some("AssociateFailed: InvalidInstanceID")
    );

    let never_expire = StatusCase {
        f: feip(spec(serde_json::json!({"failureTimeout": "0s"}))),
        failures,
        ..StatusCase::active()
    }
    .run();
    assert!(
        never_expire.nodes.iter().all(|n| n.banned),
        "threshold 1 bans both"
    );
    assert!(
        never_expire.nodes.iter().all(|n| n.banned_until.is_none()),
        "failureTimeout 0s: bans never end"
    );
}

#[test]
fn conflict_status_names_the_owner_and_keeps_counters() {
    let t = |s: i64| serde_json::to_value(Time(ts(s))).expect("time");
    let me = feip_with(
        spec(serde_json::json!({})),
        Some(serde_json::json!({
            "phase": "Active",
            "holder": {"node": "a"},
            "failoverCount": 5,
            "lastFailover": {"to": "a", "reason": "HolderDead"},
            "lastCleanupRequestId": "req-9",
            "nodes": [{"node": "a", "failureCount": 1}],
            "conditions": [
                {"type": "Degraded", "status": "True", "reason": "AddressConflict", "message": "x",
                 "lastTransitionTime": t(-100)},
                {"type": "Ready", "status": "True", "reason": "Active", "message": "x",
                 "lastTransitionTime": t(-100)},
            ],
        })),
    );
    let mut owner = feip(spec(serde_json::json!({})));
    owner.metadata.name = Some("first".into());
    owner.metadata.namespace = Some("prod".into());
    let st: FloatingElasticIPStatus = conflict_status(&me, &owner, now());
    assert_eq!(st.phase, Some(Phase::Error));
    let msg = "the Elastic IP eipalloc-0123456789abcdef0 is also claimed by FloatingElasticIP prod/first, created first";
    assert_cond(&st, "Degraded", "True", "AddressConflict", &[msg]);
    // Ready's reason is the phase, as for every other status (docs/semantics.md).
    assert_cond(&st, "Ready", "False", "Error", &["prod/first"]);
    assert_eq!(st.conditions.len(), 2, "only Degraded and Ready");
    assert_eq!(
        cond(&st, "Degraded").last_transition_time,
        Time(ts(-100)),
        "unchanged status kept"
    );
    assert_eq!(
        cond(&st, "Ready").last_transition_time,
        Time(now()),
        "True -> False flips"
    );
    assert_eq!(cond(&st, "Ready").observed_generation, Some(3));
    assert_eq!(st.failover_count, 5);
    assert_eq!(st.last_failover.map(|l| l.to).as_deref(), Some("a"));
    assert_eq!(st.last_cleanup_request_id.as_deref(), Some("req-9"));
    assert_eq!(st.holder, None, "the holder is not reported");
    assert!(st.nodes.is_empty(), "failure records are not reported");
    assert_eq!(st.lease, None);
    assert_eq!(st.observed_generation, Some(3));
    let a = st.address.expect("address");
    assert_eq!(
        (a.allocation_id.as_deref(), a.public_ip),
        (Some(ALLOC), None)
    );

    let by_ip = feip(spec(
        serde_json::json!({"allocationId": null, "publicIp": PUBLIC_IP}),
    ));
    let st = conflict_status(&by_ip, &owner, now());
    assert_cond(
        &st,
        "Degraded",
        "True",
        "AddressConflict",
        &["the Elastic IP 203.0.113.10 is also claimed"],
    );
    assert_eq!(st.failover_count, 0);
}

/// `status::bounded`: cut on a char boundary, the marker included in the bound.
#[test]
fn bounded_cuts_free_text_on_char_boundaries_with_a_marker() {
    let rows: Vec<(&str, &str, usize, &str)> = vec![
        ("empty", "", 8, ""),
        ("exactly the bound: unchanged", "abcdefgh", 8, "abcdefgh"),
        ("one byte over", "abcdefghi", 8, "abcde…"),
        // 2-byte characters: the cut at byte 5 falls inside the third one.
        ("two-byte chars", "ééééé", 8, "éé…"),
        ("three-byte chars", "€€€", 8, "€…"),
        ("four-byte chars fitting exactly", "😀😀", 8, "😀😀"),
        ("four-byte chars", "😀😀😀", 8, "😀…"),
        ("a four-byte char straddling the cut", "ab😀😀", 8, "ab…"),
        ("no room for the marker", "abcdef", 2, "ab"),
        ("no room, multi-byte", "éé", 3, "…"),
        ("zero bound", "abc", 0, ""),
    ];
    let mut failed = Vec::new();
    for (name, input, max, expected) in rows {
        let got = bounded(input, max);
        if got != expected || got.len() > max {
            failed.push(format!("{name}: {got:?}, expected {expected:?}"));
        }
        // Bounded text is a fixed point: read back and written again, it does not change.
        if bounded(got.clone(), max) != got {
            failed.push(format!("{name}: not a fixed point"));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

/// Free text from EC2 or from the health verdict: every condition message within
/// `MAX_MESSAGE_BYTES`, cut with the marker, the start kept.
#[test]
fn condition_messages_are_bounded() {
    // "x" first: the cut falls inside a 2-byte character.
    let huge = format!("x{}", "é".repeat(50_000));
    let ec2 = Ec2Error::Definite {
        operation: "AssociateAddress",
        code: "UnauthorizedOperation".into(),
        message: huge.clone(),
    };
    let st = StatusCase {
        gathered: vec![gathered("a", dead(&huge), Eligibility::Eligible)],
        holder_healthy: false,
        action_error: Some(ec2),
        blocked: Some(&huge).cloned(),
        ..StatusCase::active()
    }
    .run();
    for c in &st.conditions {
        assert!(
            c.message.len() <= MAX_MESSAGE_BYTES,
            "{}: {}",
            c.type_,
            c.message.len()
        );
    }
    for type_ in ["HolderHealthy", "Degraded", "Blocked", "Ready"] {
        let m = &cond(&st, type_).message;
        assert!(
            m.ends_with(CUT_MARKER) && m.len() > MAX_MESSAGE_BYTES - 8,
            "{type_}: {m}"
        );
    }
    assert!(cond(&st, "HolderHealthy").message.starts_with("xéé"));
    assert!(
        cond(&st, "Degraded")
            .message
            .starts_with("AssociateAddress failed: UnauthorizedOperation: xé")
    );

    // A list of candidates' reasons (NoEligibleCandidate's `why`, unresolvable candidates).
    let why = (0..10_000)
        .map(|n| format!("node-{n}: instance not found in EC2"))
        .collect::<Vec<_>>()
        .join("; ");
    let st = StatusCase::no_holder(vec![Finding::NoEligibleCandidate { why }]).run();
    let m = &cond(&st, "Degraded").message;
    assert!(
        m.len() <= MAX_MESSAGE_BYTES && m.ends_with(CUT_MARKER),
        "{m}"
    );
    let many: Vec<_> = (0..10_000)
        .map(|n| {
            gathered(
                &format!("node-{n}"),
                NodeHealth::Healthy,
                unresolvable(&huge),
            )
        })
        .collect();
    let st = StatusCase {
        gathered: [vec![healthy("a")], many].concat(),
        ..StatusCase::active()
    }
    .run();
    let c = cond(&st, "Degraded");
    assert_eq!(c.reason, "CandidateUnresolvable");
    assert!(c.message.len() <= MAX_MESSAGE_BYTES && c.message.starts_with("node-0: xé"));
}

/// A huge `lastFailureReason` is cut once, and the cut record read back
/// (`failures_from_status`) and written again is unchanged: no status write on every pass.
#[test]
fn cut_failure_reason_is_stable_across_passes() {
    let failures = BTreeMap::from([(
        "a".to_string(),
        failure(1, ts(-5), FailureKind::AssociateFailed, &"é".repeat(50_000)),
    )]);
    let first = StatusCase {
        failures,
        ..StatusCase::active()
    }
    .run();
    let reason = first.nodes[0].last_failure_reason.clone().expect("reason");
    assert!(reason.len() <= MAX_FAILURE_REASON_BYTES, "{}", reason.len());
    assert!(reason.starts_with("AssociateFailed: éé") && reason.ends_with(CUT_MARKER));
    let mut f = feip(spec(serde_json::json!({})));
    f.status = Some(first.clone());
    let second = StatusCase {
        failures: failures_from_status(&first),
        f,
        ..StatusCase::active()
    }
    .run();
    assert_eq!(second.nodes, first.nodes);
}

/// Past `MAX_NODE_RECORDS`, banned records are kept first, then the latest failures; names
/// longer than a node name can be are dropped.
#[test]
fn node_records_past_the_limit_keep_bans_then_latest_failures() {
    let mut failures = BTreeMap::new();
    for n in 0..10 {
        // Banned (threshold 3), and the oldest failures of all.
        failures.insert(
            format!("banned-{n}"),
            failure(3, ts(-10_000 - n), FailureKind::Drift, "drift"),
        );
    }
    for n in 0..300 {
        failures.insert(
            format!("node-{n:03}"),
            failure(1, ts(-(n as i64)), FailureKind::Drift, "drift"),
        );
    }
    failures.insert(
        "n".repeat(254),
        failure(3, ts(0), FailureKind::Drift, "not a node name"),
    );
    let st = StatusCase {
        f: feip(spec(serde_json::json!({"migrationThreshold": 3}))),
        failures,
        ..StatusCase::active()
    }
    .run();
    let names: Vec<&str> = st.nodes.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(names.len(), MAX_NODE_RECORDS);
    let newest = MAX_NODE_RECORDS - 10;
    let mut expected: Vec<String> = (0..10).map(|n| format!("banned-{n}")).collect();
    expected.extend((0..newest).map(|n| format!("node-{n:03}")));
    assert_eq!(
        names, expected,
        "bans, then the latest failures, in name order"
    );
}

/// The whole status of a pathological input, JSON-encoded, stays under 512 KiB (a third of
/// etcd's 1.5 MiB object limit): 10,000 failed candidates with 253-byte names and 2 KB
/// reasons, 10,000 unresolvable candidates, a 100 KB EC2 error, a 100 KB health reason, all
/// of characters JSON escapes to two or six bytes.
#[test]
fn status_of_pathological_input_stays_under_512_kib() {
    const BOUND: usize = 512 * 1024;
    let escaped = "\u{1}\"\\".repeat(34_000); // ~100 KB; JSON-encoded, ~330 KB
    let reason = &escaped[..2_000];
    let failures: BTreeMap<String, FailureRecord> = (0..10_000)
        .map(|n| {
            let node = format!("{n:05}{}", "n".repeat(248));
            (
                node,
                failure(5, ts(-n), FailureKind::AssociateFailed, reason),
            )
        })
        .collect();
    let others: Vec<_> = (0..10_000)
        .map(|n| gathered(&format!("c-{n}"), dead(reason), unresolvable(reason)))
        .collect();
    let holder = "h".repeat(100_000);
    let st = StatusCase {
        gathered: [
            vec![gathered(&holder, dead(&escaped), Eligibility::Eligible)],
            others,
        ]
        .concat(),
        holder: Some(holder),
        holder_healthy: false,
        failures,
        action_error: Some(Ec2Error::Definite {
            operation: "AssociateAddress",
            code: escaped.clone(),
            message: escaped.clone(),
        }),
        blocked: Some(escaped.clone()),
        last_failover: Some(FailoverRecord {
            from: Some("f".repeat(100_000)),
            to: "t".repeat(100_000),
            reason: escaped.clone(),
            ..Default::default()
        }),
        ..StatusCase::active()
    }
    .run();
    let size = serde_json::to_vec(&st).expect("json").len();
    assert!(size < BOUND, "status is {size} bytes");
    assert_eq!(st.nodes.len(), MAX_NODE_RECORDS);
    assert!(
        st.holder
            .as_ref()
            .is_some_and(|h| h.node.len() <= MAX_NODE_NAME_BYTES)
    );
    // Not vacuous: unbounded, this status would be about 70 MB of JSON.
    assert!(
        size > 100 * 1024,
        "status is only {size} bytes: input not pathological"
    );
}

#[test]
fn not_permitted_status_says_why_and_shows_nothing_of_the_address() {
    let me = feip_with(
        spec(serde_json::json!({})),
        Some(serde_json::json!({
            "phase": "Active",
            "holder": {"node": "a"},
            "address": {"allocationId": "eipalloc-0123456789abcdef0", "networkInterfaceId": "eni-a"},
            "failoverCount": 2,
        })),
    );
    let st = not_permitted_status(
        &me,
        "grant a: spec.allowTakeover is not allowed".into(),
        now(),
    );
    assert_eq!(st.phase, Some(Phase::Error));
    assert_cond(
        &st,
        "Degraded",
        "True",
        "NotPermitted",
        &["not permitted: grant a: spec.allowTakeover is not allowed"],
    );
    assert_cond(&st, "Ready", "False", "Error", &["spec.allowTakeover"]);
    assert!(st.address.is_none() && st.holder.is_none(), "{st:?}");
    assert_eq!(st.failover_count, 2, "counters kept");
}
