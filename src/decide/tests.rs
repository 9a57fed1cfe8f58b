//! Table tests of the decision core, one section per rule. The helpers that `props.rs` also
//! uses are `pub(super)`.

use super::*;

const BASE: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

pub(super) fn ts(offset_secs: i64) -> Timestamp {
    Timestamp::from_second(BASE + offset_secs).expect("valid timestamp")
}

pub(super) fn target(name: &str) -> Target {
    Target {
        instance_id: format!("i-{name}"),
        network_interface_id: format!("eni-{name}"),
        private_ip: format!("ip-{name}"),
    }
}

pub(super) fn node(name: &str, priority: i32) -> CandidateView {
    CandidateView {
        node: name.to_owned(),
        priority,
        health: NodeHealth::Healthy,
        eligibility: Eligibility::Eligible,
        healthy_since: Some(ts(-3600)),
        target: Some(target(name)),
    }
}

fn dead(mut c: CandidateView) -> CandidateView {
    c.health = NodeHealth::Dead {
        reason: "probe".into(),
    };
    c
}

fn unknown(mut c: CandidateView) -> CandidateView {
    c.health = NodeHealth::Unknown {
        reason: "apiserver timeout".into(),
    };
    c
}

fn with_elig(mut c: CandidateView, e: Eligibility) -> CandidateView {
    c.eligibility = e;
    c
}

fn on(name: &str) -> AddressObservation {
    AddressObservation::Associated {
        network_interface_id: format!("eni-{name}"),
        private_ip: Some(format!("ip-{name}")),
        association_id: Some(format!("eipassoc-{name}")),
    }
}

pub(super) fn ec2_unknown() -> AddressObservation {
    AddressObservation::Unknown {
        reason: "RequestLimitExceeded".into(),
    }
}

fn input(candidates: Vec<CandidateView>) -> Input {
    Input {
        now: ts(0),
        policy: Policy::default(),
        candidates,
        holder: None,
        holder_confirmed: false,
        failures: BTreeMap::new(),
        address: AddressObservation::Unassociated,
    }
}

/// Two healthy nodes, `a` holds and is confirmed, the address is on `a`.
fn ab_held_by_a() -> Input {
    let mut i = input(vec![node("a", 0), node("b", 0)]);
    i.holder = Some("a".into());
    i.holder_confirmed = true;
    i.address = on("a");
    i
}

pub(super) fn failure(count: u32, at: i64, kind: FailureKind) -> FailureRecord {
    FailureRecord {
        count,
        last_failure: ts(at),
        kind,
        reason: "test".into(),
    }
}

fn associate(name: &str) -> Action {
    Action::Associate {
        node: name.to_owned(),
        target: target(name),
    }
}

fn change(from: Option<&str>, to: Option<&str>, reason: ChangeReason) -> Option<HolderChange> {
    Some(HolderChange {
        from: from.map(Into::into),
        to: to.map(Into::into),
        reason,
    })
}

fn has(d: &Decision, kind: &str) -> bool {
    d.notes.iter().any(|n| n.as_str() == kind)
}

fn holder(d: &Decision) -> Option<&str> {
    d.holder.as_deref()
}

// ---- helpers ----

#[test]
fn preference_order_pin_then_priority_then_list_order() {
    let mut i = input(vec![node("a", 0), node("b", 5), node("c", 5), node("d", 1)]);
    let names =
        |i: &Input| -> Vec<String> { preference_order(i).iter().map(|c| c.node.clone()).collect() };
    assert_eq!(names(&i), ["b", "c", "d", "a"]);
    i.policy.pin = Some(("a".into(), None));
    assert_eq!(names(&i), ["a", "b", "c", "d"]);
    i.policy.pin = Some(("a".into(), Some(ts(0))));
    assert_eq!(names(&i), ["b", "c", "d", "a"], "expired pin is ignored");
}

#[test]
fn record_failure_counts_and_bans_at_once_with_threshold() {
    let mut f = BTreeMap::new();
    record_failure(&mut f, "a", ts(0), FailureKind::Drift, "x", None);
    record_failure(&mut f, "a", ts(5), FailureKind::Drift, "y", None);
    assert_eq!(f["a"].count, 2);
    assert_eq!(f["a"].last_failure, ts(5));
    record_failure(
        &mut f,
        "b",
        ts(1),
        FailureKind::AssociateFailed,
        "z",
        Some(3),
    );
    assert_eq!(f["b"].count, 3);
    record_failure(
        &mut f,
        "a",
        ts(6),
        FailureKind::AssociateFailed,
        "z",
        Some(3),
    );
    assert_eq!(f["a"].count, 3, "max(count + 1, threshold)");
    assert_eq!(f["a"].kind, FailureKind::AssociateFailed);
}

#[test]
fn is_banned_by_spec_ban_and_threshold() {
    let mut i = input(vec![node("a", 0), node("b", 0)]);
    i.policy.migration_threshold = 2;
    i.failures
        .insert("a".into(), failure(1, -10, FailureKind::Drift));
    assert!(!is_banned(&i, "a"));
    i.failures
        .insert("a".into(), failure(2, -10, FailureKind::Drift));
    assert!(is_banned(&i, "a"));
    i.policy.bans = vec![("b".into(), Some(ts(10)))];
    assert!(is_banned(&i, "b"));
    i.policy.bans = vec![("b".into(), Some(ts(0)))];
    assert!(!is_banned(&i, "b"), "ban expiring now is over");
}

#[test]
fn stable_names() {
    assert_eq!(ChangeReason::HolderDead.as_str(), "HolderDead");
    assert_eq!(ChangeReason::Adopted.to_string(), "Adopted");
    for k in [FailureKind::Drift, FailureKind::AssociateFailed] {
        assert_eq!(FailureKind::parse(k.as_str()), Some(k));
    }
}

#[test]
fn every_change_reason_parses_back_from_its_name() {
    // `ALL` comes from the same list as the exhaustive `as_str` match: it has every variant.
    for &r in ChangeReason::ALL {
        assert_eq!(r.as_str().parse::<ChangeReason>(), Ok(r));
        assert_eq!(r.to_string().parse::<ChangeReason>(), Ok(r));
    }
    for bad in ["", "Other", "holderdead", " HolderDead"] {
        assert_eq!(
            bad.parse::<ChangeReason>(),
            Err(UnknownChangeReason(bad.to_owned()))
        );
    }
}

// ---- rule 1: failure records expire ----

#[test]
fn rule1_expired_failures_are_listed_and_ignored() {
    let mut i = input(vec![node("a", 10), node("b", 0)]);
    i.policy.failure_timeout = Some(Duration::from_secs(60));
    i.failures
        .insert("a".into(), failure(5, -60, FailureKind::Drift)); // exactly expired
    i.failures
        .insert("b".into(), failure(5, -59, FailureKind::Drift));
    let d = decide(&i);
    assert_eq!(d.expire_failures, ["a"]);
    assert_eq!(holder(&d), Some("a"), "expired ban no longer applies");
    assert_eq!(d.change, change(None, Some("a"), ChangeReason::Elected));
    assert_eq!(d.action, associate("a"));
}

#[test]
fn rule1_no_timeout_never_expires() {
    let mut i = input(vec![node("a", 10), node("b", 0)]);
    i.failures
        .insert("a".into(), failure(1, -1_000_000, FailureKind::Drift));
    let d = decide(&i);
    assert!(d.expire_failures.is_empty());
    assert_eq!(holder(&d), Some("b"));
}

#[test]
fn rule1_apply_to_failures_drops_expired_then_records() {
    let mut i = ab_held_by_a();
    i.policy.migration_threshold = 3;
    i.policy.failure_timeout = Some(Duration::from_secs(60));
    i.failures
        .insert("a".into(), failure(2, -100, FailureKind::Drift));
    i.address = on("b");
    let d = decide(&i);
    assert_eq!(d.record_failure, Some(("a".into(), FailureKind::Drift)));
    let mut f = i.failures.clone();
    d.apply_to_failures(&mut f, i.now);
    assert_eq!(f["a"].count, 1, "the expired count restarts");
}

// ---- rule 2: eligibility for election ----

#[test]
fn rule2_only_healthy_eligible_unbanned_resolved_nodes_are_elected() {
    let mut unresolved = node("e", 9);
    unresolved.target = None;
    let mut i = input(vec![
        unknown(node("a", 10)),
        with_elig(node("b", 10), Eligibility::Standby),
        with_elig(node("c", 10), Eligibility::Cordoned),
        with_elig(
            node("d", 10),
            Eligibility::Unresolvable {
                reason: "no providerID".into(),
            },
        ),
        unresolved,
        node("f", 9),
        node("g", 0),
    ]);
    i.policy.bans = vec![("f".into(), None)];
    let d = decide(&i);
    assert_eq!(holder(&d), Some("g"));
    assert_eq!(d.action, associate("g"));
}

#[test]
fn rule2_unknown_health_holder_is_kept() {
    let mut i = ab_held_by_a();
    i.candidates[0] = unknown(node("a", 0));
    i.candidates[1] = node("b", 100);
    i.policy.failback = FailbackPolicy::Immediate;
    let d = decide(&i);
    assert_eq!(d.change, None);
    assert_eq!(d.action, Action::None);
    assert!(has(&d, "HolderHealthUnknown"));
}

// ---- rule 3: stopped ----

#[test]
fn rule3_stopped_releases_and_holds_nobody() {
    let mut i = ab_held_by_a();
    i.policy.stopped = true;
    let d = decide(&i);
    assert_eq!(d.holder, None);
    assert_eq!(d.change, change(Some("a"), None, ChangeReason::Stopped));
    assert_eq!(
        d.action,
        Action::Disassociate {
            association_id: Some("eipassoc-a".into())
        }
    );
}

#[test]
fn rule3_stopped_disassociates_from_any_candidate_without_holder() {
    let mut i = input(vec![node("a", 0), node("b", 0)]);
    i.policy.stopped = true;
    i.address = on("b");
    let d = decide(&i);
    assert_eq!(d.change, None);
    assert!(matches!(d.action, Action::Disassociate { .. }));
}

#[test]
fn rule3_stopped_leaves_foreign_unassociated_and_unknown_alone() {
    let mut i = ab_held_by_a();
    i.policy.stopped = true;
    for address in [on("x"), AddressObservation::Unassociated, ec2_unknown()] {
        i.address = address;
        let d = decide(&i);
        assert_eq!(d.holder, None);
        assert_eq!(d.action, Action::None);
    }
}

// ---- rule 4: observe-only ----

#[test]
fn rule4_observe_only_reports_but_never_acts() {
    let mut i = ab_held_by_a();
    i.policy.observe_only = true;
    i.candidates[0] = dead(node("a", 0));
    i.address = AddressObservation::Unassociated;
    let d = decide(&i);
    assert_eq!((d.change.clone(), d.action.clone()), (None, Action::None));
    assert_eq!(holder(&d), Some("a"));
    assert_eq!(d.record_failure, None);
    assert!(has(&d, "DriftObserved"));

    i.address = on("x");
    let d = decide(&i);
    assert!(has(&d, "ForeignAssociation"));
    assert_eq!(d.action, Action::None);

    let mut i = input(vec![node("a", 0)]);
    i.policy.observe_only = true;
    let d = decide(&i);
    assert_eq!((d.holder, d.action), (None, Action::None), "no election");
}

// ---- rule 5: address unknown ----

#[test]
fn rule5_unknown_address_changes_nothing() {
    let mut i = ab_held_by_a();
    i.address = ec2_unknown();
    i.candidates[1] = node("b", 100);
    i.policy.failback = FailbackPolicy::Immediate;
    i.policy.pin = Some(("b".into(), None));
    let d = decide(&i);
    assert_eq!(d.change, None);
    assert_eq!(d.record_failure, None);
    assert_eq!(d.action, Action::None);
    assert!(has(&d, "Ec2Unknown"));
}

#[test]
fn rule5_unknown_address_no_election() {
    let mut i = input(vec![node("a", 0)]);
    i.address = ec2_unknown();
    let d = decide(&i);
    assert_eq!((d.holder, d.action), (None, Action::None));
}

#[test]
fn rule5_dead_holder_moves_in_lease_but_no_ec2_action() {
    let mut i = ab_held_by_a();
    i.address = ec2_unknown();
    i.candidates[0] = dead(node("a", 0));
    let d = decide(&i);
    assert_eq!(
        d.change,
        change(Some("a"), Some("b"), ChangeReason::HolderDead)
    );
    assert_eq!(d.action, Action::None);
    assert_eq!(d.record_failure, None);
}

// ---- rule 6: no holder ----

#[test]
fn rule6_adopts_existing_association_without_remap() {
    let mut i = input(vec![node("a", 10), unknown(node("b", 0))]);
    i.address = on("b");
    let d = decide(&i);
    assert_eq!(d.change, change(None, Some("b"), ChangeReason::Adopted));
    assert_eq!(d.action, Action::None);
}

#[test]
fn rule6_does_not_adopt_invalid_candidate() {
    for b in [
        dead(node("b", 0)),
        with_elig(node("b", 0), Eligibility::Standby),
    ] {
        let mut i = input(vec![node("a", 0), b]);
        i.address = on("b");
        let d = decide(&i);
        assert_eq!(d.change, change(None, Some("a"), ChangeReason::Elected));
        assert_eq!(d.action, associate("a"));
    }
    let mut i = input(vec![node("a", 0), node("b", 0)]);
    i.policy.bans = vec![("b".into(), None)];
    i.address = on("b");
    assert_eq!(holder(&decide(&i)), Some("a"));
}

#[test]
fn rule6_ownership_guard_and_takeover() {
    let mut i = input(vec![node("a", 0)]);
    i.address = on("x");
    let d = decide(&i);
    assert_eq!((d.holder.clone(), d.action.clone()), (None, Action::None));
    assert!(d.notes.contains(&Finding::ForeignAssociation {
        network_interface_id: "eni-x".into()
    }));

    i.policy.allow_takeover = true;
    let d = decide(&i);
    assert_eq!(d.change, change(None, Some("a"), ChangeReason::Elected));
    assert_eq!(d.action, associate("a"));
    assert!(!has(&d, "ForeignAssociation"));
}

#[test]
fn rule6_elects_most_preferred_or_reports_why() {
    let i = input(vec![node("a", 0), node("b", 3)]);
    let d = decide(&i);
    assert_eq!(d.change, change(None, Some("b"), ChangeReason::Elected));
    assert_eq!(d.action, associate("b"));

    let i = input(vec![
        dead(node("a", 0)),
        with_elig(node("b", 0), Eligibility::Cordoned),
    ]);
    let d = decide(&i);
    assert_eq!((d.holder.clone(), d.action.clone()), (None, Action::None));
    let Some(Finding::NoEligibleCandidate { why }) = d.notes.first() else {
        panic!("expected NoEligibleCandidate, got {:?}", d.notes);
    };
    assert!(
        why.contains("a: dead") && why.contains("b: cordoned"),
        "{why}"
    );
}

// ---- rule 7: dead holder ----

#[test]
fn rule7_dead_holder_fails_over_without_counting_a_failure() {
    let mut i = ab_held_by_a();
    i.candidates[0] = dead(node("a", 0));
    let d = decide(&i);
    assert_eq!(
        d.change,
        change(Some("a"), Some("b"), ChangeReason::HolderDead)
    );
    assert_eq!(d.action, associate("b"));
    assert_eq!(d.record_failure, None);
    assert!(!is_banned(&i, "a"), "a stays eligible once healthy again");
}

#[test]
fn rule7_dead_holder_with_address_gone_is_not_drift() {
    let mut i = ab_held_by_a();
    i.candidates[0] = dead(node("a", 0));
    i.address = AddressObservation::Unassociated;
    let d = decide(&i);
    assert_eq!(d.record_failure, None);
    assert_eq!(holder(&d), Some("b"));
}

#[test]
fn rule7_dead_holder_kept_when_nobody_else_and_not_remapped() {
    let mut i = ab_held_by_a();
    i.candidates = vec![dead(node("a", 0)), dead(node("b", 0))];
    i.address = AddressObservation::Unassociated;
    let d = decide(&i);
    assert_eq!((holder(&d), d.change.clone()), (Some("a"), None));
    assert_eq!(d.action, Action::None, "no remap to a dead node");
    assert!(has(&d, "NoEligibleCandidate"));
}

// ---- rule 8: ineligible or banned holder ----

#[test]
fn rule8_ineligible_holder_moves_gracefully() {
    for (e, reason) in [
        (Eligibility::Standby, ChangeReason::HolderIneligible),
        (Eligibility::Cordoned, ChangeReason::HolderIneligible),
        (
            Eligibility::Unresolvable {
                reason: "gone".into(),
            },
            ChangeReason::HolderIneligible,
        ),
    ] {
        let mut i = ab_held_by_a();
        i.candidates[0] = with_elig(node("a", 0), e);
        let d = decide(&i);
        assert_eq!(d.change, change(Some("a"), Some("b"), reason));
        assert_eq!(d.action, associate("b"));
    }
}

#[test]
fn rule8_banned_holder_moves() {
    let mut i = ab_held_by_a();
    i.policy.bans = vec![("a".into(), Some(ts(100)))];
    let d = decide(&i);
    assert_eq!(
        d.change,
        change(Some("a"), Some("b"), ChangeReason::HolderBanned)
    );

    let mut i = ab_held_by_a();
    i.failures
        .insert("a".into(), failure(1, -5, FailureKind::Drift));
    let d = decide(&i);
    assert_eq!(
        d.change,
        change(Some("a"), Some("b"), ChangeReason::HolderBanned)
    );

    let mut i = ab_held_by_a();
    i.policy.bans = vec![("a".into(), Some(ts(-1)))];
    assert_eq!(decide(&i).change, None, "expired ban");
}

#[test]
fn rule8_holder_removed_from_candidates_moves() {
    let mut i = ab_held_by_a();
    i.holder = Some("gone".into());
    let d = decide(&i);
    assert_eq!(
        d.change,
        change(Some("gone"), Some("a"), ChangeReason::HolderRemoved)
    );
    assert_eq!(d.action, Action::None, "the address is already on a");
}

#[test]
fn rule8_no_alternative_keeps_and_reports() {
    let mut i = ab_held_by_a();
    i.candidates[0] = with_elig(node("a", 0), Eligibility::Standby);
    i.candidates[1] = dead(node("b", 0));
    let d = decide(&i);
    assert_eq!((holder(&d), d.change.clone()), (Some("a"), None));
    assert_eq!(d.action, Action::None);
    let Some(Finding::NoEligibleCandidate { why }) = d.notes.first() else {
        panic!("expected NoEligibleCandidate, got {:?}", d.notes);
    };
    assert!(
        why.contains("HolderIneligible") && why.contains("b: dead"),
        "{why}"
    );
}

// ---- associate failures (start failure) ----

#[test]
fn associate_failure_bans_and_tries_next() {
    let mut i = ab_held_by_a();
    i.holder_confirmed = false;
    i.address = AddressObservation::Unassociated;
    record_failure(
        &mut i.failures,
        "a",
        ts(0),
        FailureKind::AssociateFailed,
        "InvalidNetworkInterfaceID.NotFound",
        Some(1),
    );
    let d = decide(&i);
    assert_eq!(
        d.change,
        change(Some("a"), Some("b"), ChangeReason::AssociateFailed)
    );
    assert_eq!(d.action, associate("b"));
}

#[test]
fn a_banned_holder_nobody_can_replace_is_retried_with_backoff_not_every_pass() {
    // Both nodes banned by failed associates; b holds (kept: nobody else is eligible).
    let mut i = ab_held_by_a();
    i.holder = Some("b".into());
    i.holder_confirmed = false;
    i.address = AddressObservation::Unassociated;
    i.failures
        .insert("a".into(), failure(1, 0, FailureKind::AssociateFailed));
    i.failures
        .insert("b".into(), failure(3, 0, FailureKind::AssociateFailed));
    // Threshold 1: b's third failure waits 4 s after the last one.
    assert_eq!(associate_retry_delay(3, 1), Duration::from_secs(4));
    for now in [0, 1, 3] {
        i.now = ts(now);
        let d = decide(&i);
        assert_eq!(
            (holder(&d), &d.action),
            (Some("b"), &Action::None),
            "at {now}s"
        );
        assert!(has(&d, "NoEligibleCandidate"), "{d:?}");
    }
    i.now = ts(4);
    assert_eq!(decide(&i).action, associate("b"));
    // The pause doubles per failure past the threshold, up to the cap.
    let delays: Vec<u64> = (1..=8)
        .map(|c| associate_retry_delay(c, 1).as_secs())
        .collect();
    assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    assert_eq!(associate_retry_delay(u32::MAX, 1), ASSOCIATE_RETRY_MAX);
    assert_eq!(associate_retry_delay(2, 3), ASSOCIATE_RETRY_FIRST);
    // A drift ban is not an associate failure: no such pause (re-associating is the point).
    i.failures
        .insert("b".into(), failure(3, 0, FailureKind::Drift));
    i.now = ts(0);
    assert_eq!(decide(&i).action, associate("b"));
}

#[test]
fn associate_failure_with_stop_policy_holds_nobody_until_cleanup() {
    let mut i = ab_held_by_a();
    i.holder_confirmed = false;
    i.address = AddressObservation::Unassociated;
    i.policy.stop_on_associate_failure = true;
    i.policy.migration_threshold = 2;
    record_failure(
        &mut i.failures,
        "a",
        ts(0),
        FailureKind::AssociateFailed,
        "x",
        Some(2),
    );
    let d = decide(&i);
    assert_eq!(
        d.change,
        change(Some("a"), None, ChangeReason::AssociateFailed)
    );
    assert_eq!(d.action, Action::None);
    assert!(has(&d, "StoppedAfterAssociateFailure"));

    i.holder = None;
    let d = decide(&i);
    assert_eq!((d.holder.clone(), d.action.clone()), (None, Action::None));
    assert!(has(&d, "StoppedAfterAssociateFailure"));

    i.failures.clear(); // cleanup
    assert_eq!(holder(&decide(&i)), Some("a"));
}

// ---- rule 9: drift ----

#[test]
fn rule9_drift_below_threshold_reassociates_to_holder() {
    let mut i = ab_held_by_a();
    i.policy.migration_threshold = 3;
    i.failures
        .insert("a".into(), failure(1, -5, FailureKind::Drift));
    i.address = on("b");
    let d = decide(&i);
    assert_eq!(d.change, None);
    assert_eq!(d.record_failure, Some(("a".into(), FailureKind::Drift)));
    assert_eq!(d.action, associate("a"));
    assert!(has(&d, "DriftObserved"));
}

#[test]
fn rule9_drift_at_threshold_moves() {
    let mut i = ab_held_by_a();
    i.policy.migration_threshold = 2;
    i.failures
        .insert("a".into(), failure(1, -5, FailureKind::Drift));
    i.address = AddressObservation::Unassociated;
    let d = decide(&i);
    assert_eq!(d.change, change(Some("a"), Some("b"), ChangeReason::Drift));
    assert_eq!(d.record_failure, Some(("a".into(), FailureKind::Drift)));
    assert_eq!(d.action, associate("b"));
}

#[test]
fn rule9_drift_onto_next_candidate_needs_no_remap() {
    let mut i = ab_held_by_a(); // threshold 1
    i.address = on("b");
    let d = decide(&i);
    assert_eq!(d.change, change(Some("a"), Some("b"), ChangeReason::Drift));
    assert_eq!(d.action, Action::None);
}

#[test]
fn rule9_drift_at_threshold_without_alternative_reassociates() {
    let mut i = ab_held_by_a();
    i.candidates[1] = dead(node("b", 0));
    i.address = AddressObservation::Unassociated;
    let d = decide(&i);
    assert_eq!(d.change, None);
    assert_eq!(d.action, associate("a"));
    assert!(has(&d, "NoEligibleCandidate"));
}

#[test]
fn rule9_drift_to_foreign_eni_is_reported_not_taken_back() {
    let mut i = ab_held_by_a();
    i.address = on("x");
    let d = decide(&i);
    assert_eq!((d.change.clone(), d.action.clone()), (None, Action::None));
    assert_eq!(d.record_failure, None);
    assert!(has(&d, "ForeignAssociation"));

    i.policy.allow_takeover = true;
    i.policy.migration_threshold = 2;
    let d = decide(&i);
    assert_eq!(d.record_failure, Some(("a".into(), FailureKind::Drift)));
    assert_eq!(d.action, associate("a"));
}

#[test]
fn rule9_unconfirmed_holder_is_pending_not_drift() {
    let mut i = ab_held_by_a();
    i.holder_confirmed = false;
    for address in [AddressObservation::Unassociated, on("b")] {
        i.address = address;
        let d = decide(&i);
        assert_eq!(d.record_failure, None);
        assert_eq!(d.change, None);
        assert_eq!(d.action, associate("a"));
    }
}

// ---- rule 10: pin and failback ----

#[test]
fn rule10_pin_moves_to_eligible_pinned_node() {
    let mut i = ab_held_by_a();
    i.policy.pin = Some(("b".into(), Some(ts(60))));
    let d = decide(&i);
    assert_eq!(d.change, change(Some("a"), Some("b"), ChangeReason::Pinned));
    assert_eq!(d.action, associate("b"));

    i.candidates[1] = unknown(node("b", 0));
    assert_eq!(decide(&i).change, None, "pinned node must be healthy");

    i.candidates[1] = node("b", 0);
    i.policy.pin = Some(("b".into(), Some(ts(0))));
    assert_eq!(decide(&i).change, None, "expired pin");
}

#[test]
fn rule10_failback_never_is_sticky() {
    let mut i = ab_held_by_a();
    i.candidates[1] = node("b", 100);
    let d = decide(&i);
    assert_eq!((d.change, d.action), (None, Action::None));
}

#[test]
fn rule10_failback_immediate_after_hold_down() {
    let mut i = ab_held_by_a();
    i.candidates[1] = node("b", 100);
    i.policy.failback = FailbackPolicy::Immediate;
    i.policy.hold_down = Duration::from_secs(300);
    i.candidates[1].healthy_since = Some(ts(-299));
    assert_eq!(decide(&i).change, None, "hold-down not over");
    i.candidates[1].healthy_since = None;
    assert_eq!(decide(&i).change, None, "unknown since");
    i.candidates[1].healthy_since = Some(ts(-300));
    let d = decide(&i);
    assert_eq!(
        d.change,
        change(Some("a"), Some("b"), ChangeReason::Failback)
    );
    assert_eq!(d.action, associate("b"));
}

#[test]
fn rule10_failback_only_to_strictly_more_preferred() {
    let mut i = ab_held_by_a(); // equal priority, a is first in list order
    i.holder = Some("b".into());
    i.address = on("b");
    i.policy.failback = FailbackPolicy::Immediate;
    let d = decide(&i);
    assert_eq!(
        d.change,
        change(Some("b"), Some("a"), ChangeReason::Failback)
    );
    i.holder = Some("a".into());
    i.address = on("a");
    assert_eq!(decide(&i).change, None);
}

// ---- rule 11: association only when needed ----

#[test]
fn rule11_no_remap_when_already_on_target() {
    let d = decide(&ab_held_by_a());
    assert_eq!(
        (d.change, d.action, d.record_failure),
        (None, Action::None, None)
    );

    let mut i = ab_held_by_a();
    i.address = AddressObservation::Associated {
        network_interface_id: "eni-a".into(),
        private_ip: None,
        association_id: None,
    };
    assert_eq!(decide(&i).action, Action::None);
}

#[test]
fn rule11_wrong_private_ip_is_reassociated() {
    let mut i = ab_held_by_a();
    i.holder_confirmed = false;
    i.address = AddressObservation::Associated {
        network_interface_id: "eni-a".into(),
        private_ip: Some("10.1.1.1".into()),
        association_id: None,
    };
    assert_eq!(decide(&i).action, associate("a"));
}

#[test]
fn rule11_waits_for_unresolved_target() {
    let mut i = ab_held_by_a();
    i.candidates[0].target = None;
    i.address = AddressObservation::Unassociated;
    let d = decide(&i);
    assert_eq!((d.change.clone(), d.action.clone()), (None, Action::None));
    assert!(
        d.notes
            .contains(&Finding::WaitingForTarget { node: "a".into() })
    );
}

// ---- private IPs as slots ----

fn no_slot(c: CandidateView) -> CandidateView {
    with_elig(
        c,
        Eligibility::NoFreeSlot {
            reason: "no free private IP on interface eni-a: ip-a carries ns/other".into(),
        },
    )
}

#[test]
fn a_node_without_a_free_private_ip_is_never_associated() {
    // (case, input, expected holder, expected action, finding)
    let mut elect = input(vec![no_slot(node("a", 10)), node("b", 0)]);
    elect.address = AddressObservation::Unassociated;
    let mut alone = input(vec![no_slot(node("a", 0))]);
    alone.address = AddressObservation::Unassociated;
    let mut held_alone = alone.clone();
    held_alone.holder = Some("a".into());
    let mut held = ab_held_by_a();
    held.candidates[0] = no_slot(node("a", 0));
    held.address = AddressObservation::Unassociated;
    type Row<'a> = (&'a str, Input, Option<&'a str>, Action, Option<&'a str>);
    let rows: Vec<Row<'_>> = vec![
        (
            "elects the node that has a slot",
            elect,
            Some("b"),
            associate("b"),
            None,
        ),
        (
            "nobody has a slot: no holder",
            alone,
            None,
            Action::None,
            Some("NoEligibleCandidate"),
        ),
        (
            "a holder without its slot and nobody else: kept, not associated",
            held_alone,
            Some("a"),
            Action::None,
            Some("NoEligibleCandidate"),
        ),
        (
            "a holder without its slot moves, without a failure",
            held,
            Some("b"),
            associate("b"),
            None,
        ),
    ];
    for (case, i, want_holder, want_action, finding) in rows {
        let d = decide(&i);
        assert_eq!(holder(&d), want_holder, "{case}");
        assert_eq!(d.action, want_action, "{case}");
        assert_eq!(d.record_failure, None, "{case}: never a node failure");
        if let Some(f) = finding {
            assert!(has(&d, f), "{case}: {:?}", d.notes);
        }
        if let Some(ch) = &d.change
            && ch.from.is_some()
        {
            assert_eq!(ch.reason, ChangeReason::HolderIneligible, "{case}");
        }
    }
    let why = decide(&input(vec![no_slot(node("a", 0))]));
    assert!(
        why.notes.iter().any(|n| matches!(n, Finding::NoEligibleCandidate { why } if why.contains("a: no free private IP on interface eni-a: ip-a carries ns/other"))),
        "the reason names the node and who holds its IPs: {:?}",
        why.notes
    );
}
