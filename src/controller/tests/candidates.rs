//! `observe::candidate_facts` (eligibility, target, health per candidate), `observe::observe`
//! (the network guard, last known targets, the holder's target from status, cleanup, the
//! Lease), `observe::lookup_address` and `observe::observe_address`.

use std::collections::HashMap;
use std::time::Duration;

use crate::aws::AddressInfo;
use crate::decide::{AddressObservation, Eligibility, NodeHealth, Target};

use super::super::context::{AddressMemory, CandidateReading, Ec2View};
use super::super::observe::{
    AddressLookup, CleanupRequest, Ec2Reads, Judging, SlotInputs, candidate_facts, cleanup_request,
    lookup_address, observe, observe_address,
};
use super::super::spec::resolve;
use super::fixtures::*;

/// What `candidate_facts` decided about one candidate.
#[derive(Debug, PartialEq)]
struct Judged {
    eligibility: Eligibility,
    health: NodeHealth,
    target: Option<Target>,
    instance_id: Option<String>,
    instance_known: bool,
    needs_instance_read: bool,
}

/// A resolved, healthy, eligible candidate on `target(node)`.
fn eligible(node: &str) -> Judged {
    Judged {
        eligibility: Eligibility::Eligible,
        health: NodeHealth::Healthy,
        target: Some(target(node)),
        instance_id: Some(format!("i-{node}")),
        instance_known: true,
        needs_instance_read: false,
    }
}

/// The judging context of one row (default: the usual spec, in [`REGION`], EC2 answering).
struct Ctx {
    spec: serde_json::Value,
    region: Option<&'static str>,
    instances_error: Option<&'static str>,
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx {
            spec: serde_json::json!({}),
            region: Some(REGION),
            instances_error: None,
        }
    }
}

fn judge(ctx: &Ctx, c: &CandidateReading) -> Judged {
    let spec = resolve(&feip(spec(ctx.spec.clone())));
    let j = Judging {
        spec: &spec,
        region: ctx.region,
        instances_error: ctx.instances_error,
        api_failing: false,
        heartbeat_gap: None,
        now: now(),
        mono: std::time::Instant::now(),
        slots: &SlotInputs::default(),
        current: None,
    };
    let f = candidate_facts(&j, c, &mut HashMap::new());
    Judged {
        eligibility: f.view.eligibility,
        health: f.view.health,
        target: f.view.target,
        instance_id: f.instance_id,
        instance_known: f.instance_known,
        needs_instance_read: f.needs_instance_read,
    }
}

#[test]
fn candidate_eligibility_and_target_table() {
    type Change = fn(&mut CandidateReading);
    let rows: Vec<(&str, Ctx, Change, Judged)> = vec![
        (
            "resolved_candidate_is_eligible_on_its_primary_ip",
            Ctx::default(),
            |_| {},
            eligible("a"),
        ),
        (
            "missing_node_is_dead_and_unresolvable",
            Ctx::default(),
            |c| c.node = None,
            Judged {
                eligibility: unresolvable("node a not found"),
                health: dead("Node object not found"),
                target: None,
                instance_id: None,
                instance_known: false,
                needs_instance_read: false,
            },
        ),
        (
            "standby_label_true_is_standby_keeping_its_target",
            Ctx::default(),
            |c| c.node.as_mut().expect("node").standby_label = Some("true".into()),
            Judged {
                eligibility: Eligibility::Standby,
                ..eligible("a")
            },
        ),
        (
            "standby_label_false_is_eligible",
            Ctx::default(),
            |c| c.node.as_mut().expect("node").standby_label = Some("false".into()),
            eligible("a"),
        ),
        (
            "unschedulable_is_cordoned",
            Ctx::default(),
            |c| c.node.as_mut().expect("node").unschedulable = Some(true),
            Judged {
                eligibility: Eligibility::Cordoned,
                ..eligible("a")
            },
        ),
        (
            "cluster_autoscaler_deletion_taint_is_cordoned",
            Ctx::default(),
            |c| {
                c.node.as_mut().expect("node").taints =
                    vec![("ToBeDeletedByClusterAutoscaler".into(), "NoSchedule".into())]
            },
            Judged {
                eligibility: Eligibility::Cordoned,
                ..eligible("a")
            },
        ),
        (
            "out_of_service_taint_is_cordoned",
            Ctx::default(),
            |c| {
                c.node.as_mut().expect("node").taints = vec![(
                    "node.kubernetes.io/out-of-service".into(),
                    "NoExecute".into(),
                )]
            },
            Judged {
                eligibility: Eligibility::Cordoned,
                ..eligible("a")
            },
        ),
        (
            "karpenter_disrupted_taint_is_cordoned",
            Ctx::default(),
            |c| {
                c.node.as_mut().expect("node").taints =
                    vec![("karpenter.sh/disrupted".into(), "NoSchedule".into())]
            },
            Judged {
                eligibility: Eligibility::Cordoned,
                ..eligible("a")
            },
        ),
        (
            "an_unrelated_taint_keeps_the_node_eligible",
            Ctx::default(),
            |c| {
                c.node.as_mut().expect("node").taints =
                    vec![("dedicated".into(), "NoSchedule".into())]
            },
            eligible("a"),
        ),
        (
            "standby_wins_over_cordon",
            Ctx::default(),
            |c| {
                let n = c.node.as_mut().expect("node");
                n.standby_label = Some("true".into());
                n.unschedulable = Some(true);
            },
            Judged {
                eligibility: Eligibility::Standby,
                ..eligible("a")
            },
        ),
        (
            "no_provider_id_is_unresolvable",
            Ctx::default(),
            |c| {
                c.node.as_mut().expect("node").provider_id = None;
                c.instance = None;
                c.instance_covered = false;
            },
            Judged {
                eligibility: unresolvable("node has no spec.providerID"),
                target: None,
                instance_id: None,
                instance_known: false,
                ..eligible("a")
            },
        ),
        (
            "non_aws_provider_id_is_unresolvable",
            Ctx::default(),
            |c| {
                c.node.as_mut().expect("node").provider_id = Some("gce://p/z/a".into());
                c.instance = None;
                c.instance_covered = false;
            },
            Judged {
                eligibility: unresolvable("providerID \"gce://p/z/a\" is not an AWS instance"),
                target: None,
                instance_id: None,
                instance_known: false,
                ..eligible("a")
            },
        ),
        (
            "instance_not_looked_up_yet_has_no_target_and_asks_for_a_read",
            Ctx::default(),
            |c| {
                c.instance = None;
                c.instance_covered = false;
            },
            Judged {
                target: None,
                instance_known: false,
                needs_instance_read: true,
                ..eligible("a")
            },
        ),
        (
            "instance_not_looked_up_while_describe_fails_is_unknown",
            Ctx {
                instances_error: Some("throttled"),
                ..Ctx::default()
            },
            |c| {
                c.instance = None;
                c.instance_covered = false;
            },
            Judged {
                health: unknown("instance state unknown: throttled"),
                target: None,
                instance_known: false,
                needs_instance_read: true,
                ..eligible("a")
            },
        ),
        (
            "covered_but_missing_instance_is_not_found_in_ec2",
            Ctx::default(),
            |c| c.instance = None,
            Judged {
                eligibility: unresolvable(
                    "instance i-a not found in EC2 (wrong account or region?)",
                ),
                target: None,
                instance_known: false,
                ..eligible("a")
            },
        ),
        (
            "covered_but_missing_instance_in_another_region_names_the_region",
            Ctx::default(),
            |c| {
                c.node.as_mut().expect("node").provider_id = Some("aws:///eu-west-1a/i-a".into());
                c.instance = None;
            },
            Judged {
                eligibility: unresolvable(
                    "instance i-a is in eu-west-1a, outside this controller's region ap-northeast-1",
                ),
                target: None,
                instance_known: false,
                ..eligible("a")
            },
        ),
        (
            "covered_but_missing_without_a_known_region_is_not_found_in_ec2",
            Ctx {
                region: None,
                ..Ctx::default()
            },
            |c| {
                c.node.as_mut().expect("node").provider_id = Some("aws:///eu-west-1a/i-a".into());
                c.instance = None;
            },
            Judged {
                eligibility: unresolvable(
                    "instance i-a not found in EC2 (wrong account or region?)",
                ),
                target: None,
                instance_known: false,
                ..eligible("a")
            },
        ),
        (
            "no_interface_at_the_device_index_is_unresolvable",
            Ctx {
                spec: serde_json::json!({"networkInterface": {"deviceIndex": 1}}),
                ..Ctx::default()
            },
            |_| {},
            Judged {
                eligibility: unresolvable(
                    "instance i-a has no network interface at device index 1",
                ),
                target: None,
                ..eligible("a")
            },
        ),
        (
            "secondary_private_ip_on_the_interface_is_the_target_ip",
            Ctx::default(),
            |c| c.listed.private_ip = Some(secondary_ip("a")),
            Judged {
                target: Some(Target {
                    private_ip: secondary_ip("a"),
                    ..target("a")
                }),
                ..eligible("a")
            },
        ),
        (
            "secondary_private_ip_not_on_the_interface_is_unresolvable",
            Ctx::default(),
            |c| c.listed.private_ip = Some("10.9.9.9".into()),
            Judged {
                eligibility: unresolvable("private IP 10.9.9.9 is not on interface eni-a"),
                target: None,
                ..eligible("a")
            },
        ),
        (
            "standby_stays_standby_when_also_unresolvable",
            Ctx::default(),
            |c| {
                c.node.as_mut().expect("node").standby_label = Some("true".into());
                c.instance = None;
            },
            Judged {
                eligibility: Eligibility::Standby,
                target: None,
                instance_known: false,
                ..eligible("a")
            },
        ),
        (
            "stopped_instance_is_dead_but_still_resolved",
            Ctx::default(),
            |c| c.instance.as_mut().expect("instance").state = "stopped".into(),
            Judged {
                health: dead("instance i-a is stopped"),
                ..eligible("a")
            },
        ),
    ];
    assert_rows(
        rows.into_iter()
            .map(|(name, ctx, change, want)| {
                let mut c = reading("a");
                change(&mut c);
                (name, judge(&ctx, &c), want)
            })
            .collect(),
    );
}

#[test]
fn healthy_since_is_kept_while_healthy_and_reset_otherwise() {
    let spec = resolve(&feip(spec(serde_json::json!({}))));
    let no_slots = SlotInputs::default();
    let judging = |now, mono| Judging {
        spec: &spec,
        region: Some(REGION),
        instances_error: None,
        api_failing: false,
        heartbeat_gap: None,
        now,
        mono,
        slots: &no_slots,
        current: None,
    };
    let ready = reading("a");
    let mut not_ready = reading("a");
    not_ready.node.as_mut().expect("node").ready = vec!["False".into()];
    let mut gone = reading("a");
    gone.node = None;
    let mut memory = HashMap::new();
    let t0 = std::time::Instant::now();
    // (wall clock, monotonic clock) in seconds: the memory holds the monotonic start, the view
    // its wall-clock form (now minus the monotonic time since the start).
    let mut step = |wall: i64, mono: u64, c: &CandidateReading| {
        let at = t0 + std::time::Duration::from_secs(mono);
        let since = candidate_facts(&judging(ts(wall), at), c, &mut memory)
            .view
            .healthy_since;
        let kept = memory
            .get("a")
            .map(|s: &std::time::Instant| s.duration_since(t0).as_secs());
        (since, kept)
    };
    let rows = vec![
        (
            "first_healthy_pass_starts_the_clock",
            step(0, 0, &ready),
            (Some(ts(0)), Some(0)),
        ),
        (
            "healthy_again_keeps_the_start",
            step(10, 10, &ready),
            (Some(ts(0)), Some(0)),
        ),
        (
            "a_wall_clock_step_does_not_age_the_start",
            step(3615, 15, &ready),
            (Some(ts(3600)), Some(0)),
        ),
        (
            "unhealthy_drops_the_start",
            step(20, 20, &not_ready),
            (None, None),
        ),
        (
            "healthy_after_unhealthy_restarts",
            step(30, 30, &ready),
            (Some(ts(30)), Some(30)),
        ),
        (
            "missing_node_drops_the_start",
            step(40, 40, &gone),
            (None, None),
        ),
    ];
    assert_rows(rows);
}

/// `observe` over `list` with the address `lookup`, `status` and `lease`.
fn observe_with(
    f_spec: serde_json::Value,
    status: Option<serde_json::Value>,
    lookup: AddressLookup,
    list: Vec<CandidateReading>,
    lease: Option<&k8s_openapi::api::coordination::v1::Lease>,
    memory: &mut AddressMemory,
) -> super::super::observe::Observed {
    let f = feip_with(spec(f_spec), status);
    let r = resolve(&f);
    observe(
        &f,
        &r,
        observe_address(&lookup),
        &readings(list),
        lease,
        memory,
        now(),
    )
}

fn in_vpc(node: &str, vpc: &str) -> CandidateReading {
    let mut c = reading(node);
    c.instance.as_mut().expect("instance").vpc_id = Some(vpc.into());
    c
}

fn eligibilities(o: &super::super::observe::Observed) -> Vec<(String, Eligibility)> {
    o.candidates
        .iter()
        .map(|c| (c.view.node.clone(), c.view.eligibility.clone()))
        .collect()
}

#[test]
fn network_guard_table() {
    let abc = || {
        vec![
            in_vpc("a", "vpc-1"),
            in_vpc("b", "vpc-2"),
            in_vpc("c", "vpc-1"),
        ]
    };
    let three = serde_json::json!({"candidates": [{"node": "a"}, {"node": "b"}, {"node": "c"}]});
    let shared = |vpc: &str, other: &str| {
        unresolvable(&format!(
            "instance is in {vpc}, not in the address's network {other} (shared by the other candidates)"
        ))
    };
    let on_b = |vpc: &str| {
        unresolvable(&format!(
            "instance is in {vpc}, not in the address's network vpc-2 (where the address is (on b))"
        ))
    };
    let mut standby_b = abc();
    standby_b[1].node.as_mut().expect("node").standby_label = Some("true".into());
    let run = |lookup: AddressLookup, list| {
        eligibilities(&observe_with(
            three.clone(),
            None,
            lookup,
            list,
            None,
            &mut AddressMemory::default(),
        ))
    };
    let e = |n: &str, el: Eligibility| (n.to_string(), el);
    assert_rows(vec![
        (
            "unassociated_address_takes_the_vpc_most_candidates_share",
            run(AddressLookup::Found(address_on(None)), abc()),
            vec![
                e("a", Eligibility::Eligible),
                e("b", shared("vpc-2", "vpc-1")),
                e("c", Eligibility::Eligible),
            ],
        ),
        (
            "address_on_a_candidate_makes_its_vpc_the_network",
            run(AddressLookup::Found(address_on(Some("b"))), abc()),
            vec![
                e("a", on_b("vpc-1")),
                e("b", Eligibility::Eligible),
                e("c", on_b("vpc-1")),
            ],
        ),
        (
            "unknown_address_takes_the_shared_vpc",
            run(AddressLookup::NotLookedUpYet, abc()),
            vec![
                e("a", Eligibility::Eligible),
                e("b", shared("vpc-2", "vpc-1")),
                e("c", Eligibility::Eligible),
            ],
        ),
        (
            "guard_does_not_replace_a_standby",
            run(AddressLookup::Found(address_on(None)), standby_b),
            vec![
                e("a", Eligibility::Eligible),
                e("b", Eligibility::Standby),
                e("c", Eligibility::Eligible),
            ],
        ),
        (
            "one_vpc_flags_nobody",
            run(
                AddressLookup::Found(address_on(None)),
                vec![reading("a"), reading("b"), reading("c")],
            ),
            vec![
                e("a", Eligibility::Eligible),
                e("b", Eligibility::Eligible),
                e("c", Eligibility::Eligible),
            ],
        ),
    ]);
}

#[test]
fn known_targets_and_the_holders_target_from_status() {
    let lookup = || AddressLookup::Found(address_on(Some("a")));
    let targets = |o: &super::super::observe::Observed| {
        o.candidates
            .iter()
            .map(|c| (c.view.node.clone(), c.view.target.clone()))
            .collect::<Vec<_>>()
    };
    let t = |n: &str, t: Option<Target>| (n.to_string(), t);
    // A first pass resolves both targets and remembers them.
    let mut memory = AddressMemory::default();
    let first = observe_with(
        serde_json::json!({}),
        None,
        lookup(),
        vec![reading("a"), reading("b")],
        None,
        &mut memory,
    );
    let remembered = memory.known_targets.clone();
    // Then a's instance is gone from EC2 (covered, not found); b is replaced by an instance
    // not looked up yet.
    let mut gone = reading("a");
    gone.instance = None;
    let mut new_b = reading("b");
    new_b.instance = None;
    new_b.instance_covered = false;
    let second = observe_with(
        serde_json::json!({}),
        None,
        lookup(),
        vec![gone, new_b],
        None,
        &mut memory.clone(),
    );
    // a's interface no longer at the device index: its instance is known, so no old target.
    let mut no_eni = reading("a");
    no_eni
        .instance
        .as_mut()
        .expect("instance")
        .interfaces
        .clear();
    let known_but_changed = observe_with(
        serde_json::json!({}),
        None,
        lookup(),
        vec![no_eni, reading("b")],
        None,
        &mut memory.clone(),
    );
    // No memory (a restart), a's Node deleted, status records a as holder with its target.
    let holder_status = serde_json::json!({"holder": {
        "node": "a", "instanceId": "i-a", "networkInterfaceId": "eni-a",
        "privateIpAddress": "10.0.0.11",
    }});
    let lease_a = holder_lease(Some("a"), serde_json::json!({}), None);
    let lease_b = holder_lease(Some("b"), serde_json::json!({}), None);
    let from_status = |status: serde_json::Value, lease| {
        let mut deleted = reading("a");
        deleted.node = None;
        targets(&observe_with(
            serde_json::json!({}),
            Some(status),
            lookup(),
            vec![deleted, reading("b")],
            lease,
            &mut AddressMemory::default(),
        ))
    };
    let partial = serde_json::json!({"holder": {"node": "a", "instanceId": "i-a"}});
    assert_rows(vec![
        (
            "resolved_targets_are_used",
            targets(&first),
            vec![t("a", Some(target("a"))), t("b", Some(target("b")))],
        ),
        (
            "unresolvable_node_whose_instance_is_gone_keeps_its_last_target_but_an_eligible_one_not_looked_up_gets_none",
            targets(&second),
            vec![t("a", Some(target("a"))), t("b", None)],
        ),
        (
            "known_instance_without_the_interface_gets_no_stale_target",
            targets(&known_but_changed),
            vec![t("a", None), t("b", Some(target("b")))],
        ),
        (
            "holder_without_a_node_keeps_its_target_from_status",
            from_status(holder_status.clone(), Some(&lease_a)),
            vec![t("a", Some(target("a"))), t("b", Some(target("b")))],
        ),
        (
            "status_target_only_for_the_lease_holder",
            from_status(holder_status.clone(), Some(&lease_b)),
            vec![t("a", None), t("b", Some(target("b")))],
        ),
        (
            "status_target_needs_instance_interface_and_ip",
            from_status(partial, Some(&lease_a)),
            vec![t("a", None), t("b", Some(target("b")))],
        ),
    ]);
    assert_eq!(
        remembered,
        HashMap::from([
            ("a".to_string(), target("a")),
            ("b".to_string(), target("b"))
        ]),
        "resolved targets are remembered"
    );
}

#[test]
fn cleanup_and_lease_readings() {
    let two_failures = serde_json::json!({
        "nodes": [
            {"node": "a", "failureCount": 2, "lastFailureReason": "Drift: off"},
            {"node": "b", "failureCount": 1, "lastFailureReason": "AssociateFailed: x"},
            {"node": "c", "failureCount": 0},
        ],
        "lastCleanupRequestId": "old",
    });
    let with_cleanup = |cleanup: serde_json::Value| {
        observe_with(
            serde_json::json!({"cleanup": cleanup}),
            Some(two_failures.clone()),
            AddressLookup::NotLookedUpYet,
            vec![reading("a"), reading("b")],
            None,
            &mut AddressMemory::default(),
        )
    };
    let failed_nodes_and_done = |o: super::super::observe::Observed| {
        (
            o.input.failures.keys().cloned().collect::<Vec<_>>(),
            o.cleanup_done,
        )
    };
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_rows(vec![
        (
            "no_cleanup_keeps_counted_failures_and_the_last_request",
            failed_nodes_and_done(with_cleanup(serde_json::Value::Null)),
            (s(&["a", "b"]), Some("old".into())),
        ),
        (
            "cleanup_of_one_node_resets_only_its_failures",
            failed_nodes_and_done(with_cleanup(
                serde_json::json!({"requestId": "r1", "node": "a"}),
            )),
            (s(&["b"]), Some("r1".into())),
        ),
        (
            "cleanup_of_all_nodes_resets_every_failure",
            failed_nodes_and_done(with_cleanup(serde_json::json!({"requestId": "r2"}))),
            (s(&[]), Some("r2".into())),
        ),
        (
            "cleanup_already_handled_resets_nothing",
            failed_nodes_and_done(with_cleanup(serde_json::json!({"requestId": "old"}))),
            (s(&["a", "b"]), Some("old".into())),
        ),
    ]);

    let lease_fields = |lease: Option<k8s_openapi::api::coordination::v1::Lease>| {
        let o = observe_with(
            serde_json::json!({}),
            None,
            AddressLookup::NotLookedUpYet,
            vec![reading("a")],
            lease.as_ref(),
            &mut AddressMemory::default(),
        );
        (o.input.holder, o.input.holder_confirmed, o.transitions)
    };
    let confirmed = serde_json::json!({"feip.io/confirmed": "true"});
    assert_rows(vec![
        ("no_lease_no_holder", lease_fields(None), (None, false, 0)),
        (
            "holder_confirmed_and_transitions_read_from_the_lease",
            lease_fields(Some(holder_lease(Some("a"), confirmed.clone(), Some(4)))),
            (Some("a".into()), true, 4),
        ),
        (
            "confirmed_false_is_unconfirmed",
            lease_fields(Some(holder_lease(
                Some("a"),
                serde_json::json!({"feip.io/confirmed": "false"}),
                Some(1),
            ))),
            (Some("a".into()), false, 1),
        ),
        (
            "empty_holder_identity_is_no_holder",
            lease_fields(Some(holder_lease(Some(""), confirmed, None))),
            (None, true, 0),
        ),
    ]);
}

#[test]
fn cleanup_request_table() {
    let req = |id: &str, node: Option<&str>| CleanupRequest {
        request_id: id.into(),
        node: node.map(str::to_string),
    };
    let of = |cleanup: serde_json::Value, done: Option<&str>| {
        cleanup_request(&feip_with(
            spec(serde_json::json!({"cleanup": cleanup})),
            done.map(|d| serde_json::json!({"lastCleanupRequestId": d})),
        ))
    };
    assert_rows(vec![
        (
            "no_cleanup_no_request",
            of(serde_json::Value::Null, None),
            None,
        ),
        (
            "new_request_for_all_nodes",
            of(serde_json::json!({"requestId": "r1"}), None),
            Some(req("r1", None)),
        ),
        (
            "new_request_for_one_node",
            of(
                serde_json::json!({"requestId": "r2", "node": "b"}),
                Some("r1"),
            ),
            Some(req("r2", Some("b"))),
        ),
        (
            "handled_request_is_not_repeated",
            of(serde_json::json!({"requestId": "r2"}), Some("r2")),
            None,
        ),
    ]);
}

#[test]
fn observed_flags_probe_pending_and_instance_reads() {
    let mut probing = reading("b");
    probing.probe = crate::health::ProbeSignal::Observed {
        ip: "10.0.0.11".parse().expect("ip"),
        port: 10250,
        failure_threshold: 3,
        status: crate::health::ProbeStatus::Unknown,
        since_wall: now(),
        starting: true,
    };
    let mut unread = reading("a");
    unread.instance = None;
    unread.instance_covered = false;
    let flags = |list| {
        let o = observe_with(
            serde_json::json!({}),
            None,
            AddressLookup::NotLookedUpYet,
            list,
            None,
            &mut AddressMemory::default(),
        );
        (o.probe_pending, o.needs_instance_read)
    };
    assert_rows(vec![
        (
            "nothing_pending",
            flags(vec![reading("a"), reading("b")]),
            (false, false),
        ),
        (
            "one_starting_probe_is_pending",
            flags(vec![reading("a"), probing]),
            (true, false),
        ),
        (
            "one_unread_instance_asks_for_a_read",
            flags(vec![unread, reading("b")]),
            (false, true),
        ),
    ]);
}

fn view_with(lookup: &[(&str, AddressInfo)], covered: &[&str], error: Option<&str>) -> Ec2View {
    let mut v = Ec2View::default();
    for (_, a) in lookup {
        v.addresses.insert(a.clone());
    }
    v.covered = covered.iter().map(|s| s.to_string()).collect();
    v.addresses_error = error.map(str::to_string);
    v
}

/// The bound of `lookup_address` in these rows (a 1 s monitor interval).
const BOUND: Duration = Duration::from_secs(2);

/// One instant for all rows, far enough from the process start to subtract from.
fn t0() -> std::time::Instant {
    std::time::Instant::now() + Duration::from_secs(3600)
}

#[test]
fn lookup_address_table() {
    let by_alloc = feip(spec(serde_json::json!({})));
    let by_ip = feip(spec(
        serde_json::json!({"allocationId": null, "publicIp": PUBLIC_IP}),
    ));
    let neither = feip(spec(serde_json::json!({"allocationId": null})));
    let found = view_with(&[("a", address_on(Some("a")))], &[ALLOC, PUBLIC_IP], None);
    let covered_empty = view_with(&[], &[ALLOC, PUBLIC_IP], None);
    let not_covered = view_with(&[], &[], None);
    let failing = view_with(
        &[("a", address_on(Some("a")))],
        &[ALLOC],
        Some("DescribeAddresses outcome unknown: timeout"),
    );
    let now = t0();
    let read_at = |age: u64| {
        let mut v = view_with(
            &[("a", address_on(Some("a")))],
            &[ALLOC],
            Some("DescribeAddresses outcome unknown: throttled"),
        );
        v.addresses_at = now.checked_sub(Duration::from_secs(age));
        v
    };
    let recent = read_at(1);
    let old = read_at(3);
    assert_rows(vec![
        (
            "describe_error_with_a_recent_good_read_acts_on_it",
            lookup_address(&recent, Ec2Reads::SinceLeadership, &by_alloc, now, BOUND),
            AddressLookup::Found(address_on(Some("a"))),
        ),
        (
            "describe_error_with_an_old_good_read_is_unreadable_and_says_why",
            lookup_address(&old, Ec2Reads::SinceLeadership, &by_alloc, now, BOUND),
            AddressLookup::Unreadable(
                "DescribeAddresses outcome unknown: throttled; the last address read is older than the 2s bound for acting on one (twice monitor.interval)".into(),
            ),
        ),
    ]);
    assert_rows(vec![
        (
            "not_fresh_since_leadership_ignores_what_is_cached",
            lookup_address(
                &found,
                Ec2Reads::NoneSinceLeadership,
                &by_alloc,
                t0(),
                BOUND,
            ),
            AddressLookup::NotReadSinceLeadership,
        ),
        (
            "not_fresh_wins_over_an_error",
            lookup_address(
                &failing,
                Ec2Reads::NoneSinceLeadership,
                &by_alloc,
                t0(),
                BOUND,
            ),
            AddressLookup::NotReadSinceLeadership,
        ),
        (
            "describe_error_is_unreadable_even_with_cached_data",
            lookup_address(&failing, Ec2Reads::SinceLeadership, &by_alloc, t0(), BOUND),
            AddressLookup::Unreadable("DescribeAddresses outcome unknown: timeout".into()),
        ),
        (
            "allocation_id_found",
            lookup_address(&found, Ec2Reads::SinceLeadership, &by_alloc, t0(), BOUND),
            AddressLookup::Found(address_on(Some("a"))),
        ),
        (
            "allocation_id_covered_but_absent",
            lookup_address(
                &covered_empty,
                Ec2Reads::SinceLeadership,
                &by_alloc,
                t0(),
                BOUND,
            ),
            AddressLookup::Absent,
        ),
        (
            "allocation_id_not_covered_yet",
            lookup_address(
                &not_covered,
                Ec2Reads::SinceLeadership,
                &by_alloc,
                t0(),
                BOUND,
            ),
            AddressLookup::NotLookedUpYet,
        ),
        (
            "public_ip_found",
            lookup_address(&found, Ec2Reads::SinceLeadership, &by_ip, t0(), BOUND),
            AddressLookup::Found(address_on(Some("a"))),
        ),
        (
            "public_ip_covered_but_absent",
            lookup_address(
                &covered_empty,
                Ec2Reads::SinceLeadership,
                &by_ip,
                t0(),
                BOUND,
            ),
            AddressLookup::Absent,
        ),
        (
            "public_ip_not_covered_yet",
            lookup_address(&not_covered, Ec2Reads::SinceLeadership, &by_ip, t0(), BOUND),
            AddressLookup::NotLookedUpYet,
        ),
        (
            "no_allocation_id_nor_public_ip",
            lookup_address(&found, Ec2Reads::SinceLeadership, &neither, t0(), BOUND),
            AddressLookup::NoAddressInSpec,
        ),
    ]);
}

#[test]
fn observe_address_table() {
    let unknown = |r: &str| AddressObservation::Unknown { reason: r.into() };
    let of = |l: AddressLookup| {
        let o = observe_address(&l);
        (o.observation, o.info, o.missing, l.read_pending())
    };
    assert_rows(vec![
        (
            "found_associated_carries_interface_ip_and_association",
            of(AddressLookup::Found(address_on(Some("a")))),
            (
                AddressObservation::Associated {
                    network_interface_id: "eni-a".into(),
                    private_ip: Some("10.0.0.11".into()),
                    association_id: Some("eipassoc-a".into()),
                },
                Some(address_on(Some("a"))),
                false,
                false,
            ),
        ),
        (
            "found_unassociated",
            of(AddressLookup::Found(address_on(None))),
            (
                AddressObservation::Unassociated,
                Some(address_on(None)),
                false,
                false,
            ),
        ),
        (
            "absent_is_missing_and_unknown",
            of(AddressLookup::Absent),
            (unknown("address not found in EC2"), None, true, false),
        ),
        (
            "not_read_since_leadership_is_unknown_and_pending",
            of(AddressLookup::NotReadSinceLeadership),
            (
                unknown("no EC2 read yet since this replica became leader"),
                None,
                false,
                true,
            ),
        ),
        (
            "not_looked_up_yet_is_unknown_and_pending",
            of(AddressLookup::NotLookedUpYet),
            (unknown("not looked up yet"), None, false, true),
        ),
        (
            "unreadable_is_unknown_with_the_error",
            of(AddressLookup::Unreadable("throttled".into())),
            (unknown("throttled"), None, false, false),
        ),
        (
            "no_address_in_spec_is_unknown",
            of(AddressLookup::NoAddressInSpec),
            (unknown("no address in spec"), None, false, false),
        ),
    ]);
}
