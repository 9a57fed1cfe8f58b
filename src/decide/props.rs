//! Property tests of the decision core: random inputs (invariants of one decision) and random
//! event sequences (invariants across decisions). Seeds of past failures are replayed first
//! from `proptest-regressions/decide/props.txt`, the path proptest derives from this file.

use super::tests::{ec2_unknown, failure, node, target, ts};
use super::*;
use jiff::SignedDuration;
use proptest::prelude::*;

/// What a simulated DescribeAddresses shows for an address on `eni` (None = unassociated)
/// at sequence step `step`; unknown while EC2 is down.
fn simulated_observation(
    ec2_down: bool,
    eni: Option<&str>,
    step: impl std::fmt::Display,
) -> AddressObservation {
    match eni {
        _ if ec2_down => ec2_unknown(),
        None => AddressObservation::Unassociated,
        Some(eni) => AddressObservation::Associated {
            network_interface_id: eni.to_string(),
            private_ip: Some(eni.replacen("eni-", "ip-", 1)),
            association_id: Some(format!("eipassoc-{step}")),
        },
    }
}

const MAX_NODES: usize = 6;

fn name(i: usize) -> String {
    format!("n{i}")
}

fn arb_health() -> impl Strategy<Value = NodeHealth> {
    prop_oneof![
        3 => Just(NodeHealth::Healthy),
        1 => Just(NodeHealth::Dead { reason: "probe".into() }),
        1 => Just(NodeHealth::Unknown { reason: "timeout".into() }),
    ]
}

fn arb_eligibility() -> impl Strategy<Value = Eligibility> {
    prop_oneof![
        4 => Just(Eligibility::Eligible),
        1 => Just(Eligibility::Standby),
        1 => Just(Eligibility::Cordoned),
        1 => Just(Eligibility::Unresolvable { reason: "no providerID".into() }),
        1 => Just(Eligibility::NoFreeSlot { reason: "10.0.0.20 carries a/other".into() }),
    ]
}

fn arb_candidate(i: usize) -> impl Strategy<Value = CandidateView> {
    (
        arb_health(),
        arb_eligibility(),
        -2i32..3,
        proptest::option::weighted(0.8, 0i64..1200),
        proptest::bool::weighted(0.85),
    )
        .prop_map(
            move |(health, eligibility, priority, since, resolved)| CandidateView {
                node: name(i),
                priority,
                health,
                eligibility,
                healthy_since: since.map(|s| ts(-s)),
                target: resolved.then(|| target(&name(i))),
            },
        )
}

fn arb_candidates() -> impl Strategy<Value = Vec<CandidateView>> {
    (1..=MAX_NODES).prop_flat_map(|n| (0..n).map(arb_candidate).collect::<Vec<_>>())
}

fn arb_kind() -> impl Strategy<Value = FailureKind> {
    prop_oneof![Just(FailureKind::Drift), Just(FailureKind::AssociateFailed)]
}

fn arb_failures() -> impl Strategy<Value = BTreeMap<String, FailureRecord>> {
    proptest::collection::vec((0..MAX_NODES, 1u32..4, 0i64..2000, arb_kind()), 0..4).prop_map(|v| {
        v.into_iter()
            .map(|(i, count, age, kind)| (name(i), failure(count, -age, kind)))
            .collect()
    })
}

/// Address on a candidate's ENI (maybe with a wrong/missing private IP), on a
/// non-candidate ENI, unassociated or unknown.
fn arb_address() -> impl Strategy<Value = AddressObservation> {
    prop_oneof![
        1 => Just(ec2_unknown()),
        1 => Just(AddressObservation::Unassociated),
        4 => (0..MAX_NODES + 2, 0u8..4).prop_map(|(j, ip)| AddressObservation::Associated {
            network_interface_id: format!("eni-{}", name(j)),
            private_ip: match ip {
                0 => None,
                1 => Some("10.9.9.9".into()),
                _ => Some(format!("ip-{}", name(j))),
            },
            association_id: Some(format!("eipassoc-{j}")),
        }),
    ]
}

fn arb_expiry() -> impl Strategy<Value = Option<Timestamp>> {
    proptest::option::of((-100i64..100).prop_map(ts))
}

fn arb_policy() -> impl Strategy<Value = Policy> {
    (
        (
            prop_oneof![Just(FailbackPolicy::Never), Just(FailbackPolicy::Immediate)],
            0u64..600,
            0u32..4,
            proptest::option::of(1u64..3000),
            any::<bool>(),
        ),
        (
            proptest::bool::weighted(0.1),
            proptest::bool::weighted(0.1),
            any::<bool>(),
            proptest::option::weighted(0.3, (0..MAX_NODES + 1, arb_expiry())),
            proptest::collection::vec((0..MAX_NODES + 1, arb_expiry()), 0..3),
        ),
    )
        .prop_map(
            |(
                (failback, hold, threshold, timeout, takeover),
                (stopped, observe_only, stop_on, pin, bans),
            )| Policy {
                failback,
                hold_down: Duration::from_secs(hold),
                migration_threshold: threshold,
                failure_timeout: timeout.map(Duration::from_secs),
                allow_takeover: takeover,
                stopped,
                observe_only,
                stop_on_associate_failure: stop_on,
                pin: pin.map(|(i, e)| (name(i), e)),
                bans: bans.into_iter().map(|(i, e)| (name(i), e)).collect(),
            },
        )
}

fn arb_input() -> impl Strategy<Value = Input> {
    (
        arb_candidates(),
        arb_policy(),
        proptest::option::weighted(0.7, 0..MAX_NODES + 1),
        any::<bool>(),
        arb_failures(),
        arb_address(),
    )
        .prop_map(
            |(candidates, policy, holder, holder_confirmed, failures, address)| Input {
                now: ts(0),
                policy,
                candidates,
                holder: holder.map(name),
                holder_confirmed,
                failures,
                address,
            },
        )
}

/// The holder is not dead, ineligible, banned or gone.
fn holder_sound(i: &Input) -> bool {
    i.holder.as_deref().is_none_or(|h| {
        find(i, h).is_some_and(|c| {
            !matches!(c.health, NodeHealth::Dead { .. })
                && c.eligibility == Eligibility::Eligible
                && !is_banned(i, h)
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// (a) Every change has a reason and a lawful new holder; the decided holder and
    /// the action agree.
    #[test]
    fn changes_are_lawful(i in arb_input()) {
        let d = decide(&i);
        match &d.change {
            None => prop_assert_eq!(&d.holder, &i.holder),
            Some(ch) => {
                prop_assert_eq!(&ch.from, &i.holder);
                prop_assert_eq!(&ch.to, &d.holder);
                prop_assert_ne!(&ch.from, &ch.to);
                match ch.to.as_deref() {
                    Some(to) => {
                        let c = find(&i, to);
                        prop_assert!(c.is_some());
                        let c = c.expect("checked");
                        prop_assert!(
                            eligible_for_election(&i, c)
                                || (ch.reason == ChangeReason::Adopted && adoption_valid(&i, c)),
                            "{:?} is not a lawful new holder", c
                        );
                    }
                    None => prop_assert!(matches!(
                        ch.reason,
                        ChangeReason::Stopped | ChangeReason::AssociateFailed
                    )),
                }
            }
        }
        match &d.action {
            Action::None => {}
            Action::Associate { node, target } => {
                prop_assert_eq!(Some(node), d.holder.as_ref());
                let c = find(&i, node).expect("holder is a candidate");
                prop_assert_eq!(Some(target), c.target.as_ref());
                prop_assert!(!on_target(&i.address, target), "needless remap");
                prop_assert!(!matches!(i.address, AddressObservation::Unknown { .. }), "associate while unknown");
                prop_assert!(i.policy.allow_takeover || foreign_eni(&i).is_none());
                prop_assert!(
                    !matches!(c.eligibility, Eligibility::NoFreeSlot { .. }),
                    "associated onto a private IP another address holds"
                );
            }
            Action::Disassociate { .. } => {
                prop_assert!(i.policy.stopped && !i.policy.observe_only);
                prop_assert!(foreign_eni(&i).is_none());
            }
        }
    }

    /// (b) Unknown address + sound holder: nothing changes, nothing is counted.
    #[test]
    fn unknown_address_changes_nothing(mut i in arb_input()) {
        i.address = ec2_unknown();
        i.policy.stopped = false;
        let d = decide(&i);
        prop_assert_eq!(&d.action, &Action::None);
        prop_assert_eq!(&d.record_failure, &None);
        if holder_sound(&i) {
            prop_assert_eq!(&d.change, &None);
            prop_assert_eq!(&d.holder, &i.holder);
        }
    }

    /// (c) Stickiness: a healthy, eligible, unbanned holder whose address is on its
    /// target keeps it under FailbackPolicy::Never without a pin.
    #[test]
    fn never_failback_is_sticky(mut i in arb_input(), k in 0..MAX_NODES) {
        let k = k % i.candidates.len();
        let h = i.candidates[k].node.clone();
        i.policy.failback = FailbackPolicy::Never;
        i.policy.pin = None;
        i.policy.stopped = false;
        i.policy.bans.retain(|(n, _)| *n != h);
        i.failures.remove(&h);
        let c = &mut i.candidates[k];
        c.health = NodeHealth::Healthy;
        c.eligibility = Eligibility::Eligible;
        let t = c.target.get_or_insert_with(|| target(&h)).clone();
        i.address = AddressObservation::Associated {
            network_interface_id: t.network_interface_id,
            private_ip: Some(t.private_ip),
            association_id: None,
        };
        i.holder = Some(h.clone());
        let d = decide(&i);
        prop_assert_eq!(d.holder.as_deref(), Some(h.as_str()));
        prop_assert_eq!(&d.change, &None);
        prop_assert_eq!(&d.action, &Action::None);
        prop_assert_eq!(&d.record_failure, &None);
    }

    /// (d) A node whose only failure is older than the failure timeout is not banned,
    /// and its record is listed for removal.
    #[test]
    fn bans_expire(mut i in arb_input(), k in 0..MAX_NODES, t in 1u64..3000, extra in 0u64..3000, count in 1u32..10) {
        let node = name(k);
        i.policy.failure_timeout = Some(Duration::from_secs(t));
        i.policy.bans.retain(|(n, _)| *n != node);
        let age = i64::try_from(t + extra).expect("small");
        i.failures.insert(node.clone(), failure(count, -age, FailureKind::AssociateFailed));
        prop_assert!(!is_banned(&i, &node));
        prop_assert!(decide(&i).expire_failures.contains(&node));
    }

    /// (e) Observe-only never acts and never changes the holder.
    #[test]
    fn observe_only_is_inert(mut i in arb_input()) {
        i.policy.observe_only = true;
        let d = decide(&i);
        prop_assert_eq!(&d.action, &Action::None);
        prop_assert_eq!(&d.change, &None);
        prop_assert_eq!(&d.holder, &i.holder);
        prop_assert_eq!(&d.record_failure, &None);
    }

    /// (f) Event sequences applied through repeated decisions.
    #[test]
    fn sequences_keep_one_holder_and_ignore_unknowns(
        n in 2usize..5,
        threshold in 1u32..4,
        timeout in proptest::option::of(5u64..60),
        events in proptest::collection::vec(arb_event(), 1..60),
    ) {
        run_sequence(n, threshold, timeout, &events)?;
    }
}

#[derive(Clone, Debug)]
enum Event {
    Die(usize),
    Return(usize),
    HealthUnknown(usize),
    Ec2Unknown(bool),
    /// The address moves by itself: to node j's ENI, unassociated, or foreign.
    Drift(Option<usize>),
    DriftForeign,
    Wait(i64),
}

fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        2 => (0usize..4).prop_map(Event::Die),
        2 => (0usize..4).prop_map(Event::Return),
        2 => (0usize..4).prop_map(Event::HealthUnknown),
        2 => any::<bool>().prop_map(Event::Ec2Unknown),
        1 => proptest::option::of(0usize..4).prop_map(Event::Drift),
        1 => Just(Event::DriftForeign),
        2 => (1i64..30).prop_map(Event::Wait),
    ]
}

/// A simulated world: EC2 moves the address only on our Associate/Disassociate (or a
/// drift event); the controller persists the holder, the confirmation flag and the
/// failure records between passes exactly as the decision says.
fn run_sequence(
    n: usize,
    threshold: u32,
    timeout: Option<u64>,
    events: &[Event],
) -> Result<(), TestCaseError> {
    let mut candidates: Vec<CandidateView> = (0..n).map(|i| node(&name(i), 0)).collect();
    let mut address: Option<String> = None; // ENI the address is on
    let mut ec2_down = false;
    let mut holder: Option<String> = None;
    let mut confirmed = false;
    let mut failures = BTreeMap::new();
    let mut now = ts(0);
    let policy = Policy {
        migration_threshold: threshold,
        failure_timeout: timeout.map(Duration::from_secs),
        ..Policy::default()
    };
    let quiet = [
        Event::Ec2Unknown(false),
        Event::Wait(1),
        Event::Wait(1),
        Event::Wait(1),
    ];
    for (step, ev) in events.iter().chain(quiet.iter()).enumerate() {
        now += SignedDuration::from_secs(1);
        match ev {
            Event::Die(k) if *k < n => {
                candidates[*k].health = NodeHealth::Dead {
                    reason: "probe".into(),
                };
            }
            Event::Return(k) if *k < n => {
                candidates[*k].health = NodeHealth::Healthy;
                candidates[*k].healthy_since = Some(now);
            }
            Event::HealthUnknown(k) if *k < n => {
                candidates[*k].health = NodeHealth::Unknown {
                    reason: "timeout".into(),
                };
            }
            Event::Ec2Unknown(down) => ec2_down = *down,
            Event::Drift(to) => address = to.filter(|k| *k < n).map(|k| format!("eni-{}", name(k))),
            Event::DriftForeign => address = Some("eni-foreign".into()),
            Event::Wait(s) => now += SignedDuration::from_secs(*s),
            _ => {}
        }
        let observation = simulated_observation(ec2_down, address.as_deref(), step);
        let holder_eni = holder.as_ref().map(|h| format!("eni-{h}"));
        if !ec2_down && holder_eni.is_some() && holder_eni == address {
            confirmed = true; // the controller saw the association on the holder
        }
        let input = Input {
            now,
            policy: policy.clone(),
            candidates: candidates.clone(),
            holder: holder.clone(),
            holder_confirmed: confirmed,
            failures: failures.clone(),
            address: observation,
        };
        let d = decide(&input);

        if ec2_down {
            prop_assert_eq!(&d.action, &Action::None);
            prop_assert_eq!(&d.record_failure, &None);
        }
        // Only unknowns (EC2 or health) are abnormal: the holder must not change.
        let drifted = !ec2_down && holder_eni != address;
        let holder_dead_or_banned = holder.as_deref().is_some_and(|h| {
            is_banned(&input, h)
                || candidates
                    .iter()
                    .any(|c| c.node == h && matches!(c.health, NodeHealth::Dead { .. }))
        });
        if holder.is_some() && !drifted && !holder_dead_or_banned {
            prop_assert_eq!(
                &d.change,
                &None,
                "holder changed on unknowns only: {:?}",
                input
            );
        }

        // Apply the decision.
        if d.holder != holder {
            confirmed = false;
        }
        holder = d.holder.clone();
        d.apply_to_failures(&mut failures, now);
        match &d.action {
            Action::Associate { node, target } => {
                prop_assert_eq!(
                    Some(node),
                    holder.as_ref(),
                    "EC2 only ever moves to the holder"
                );
                address = Some(target.network_interface_id.clone());
            }
            Action::Disassociate { .. } => address = None,
            Action::None => {}
        }
    }

    // Liveness: after quiet passes with EC2 answering, if anybody can hold the address
    // and it is not foreign, the holder has it.
    let input = Input {
        now,
        policy,
        candidates: candidates.clone(),
        holder: holder.clone(),
        holder_confirmed: confirmed,
        failures: failures.clone(),
        address: AddressObservation::Unassociated,
    };
    let someone_eligible = candidates.iter().any(|c| eligible_for_election(&input, c));
    if someone_eligible && address.as_deref() != Some("eni-foreign") {
        prop_assert!(holder.is_some(), "nobody holds the address: {:?}", input);
        let holder_eni = holder.as_ref().map(|h| format!("eni-{h}"));
        let holder_alive = candidates.iter().any(|c| {
            Some(&c.node) == holder.as_ref() && !matches!(c.health, NodeHealth::Dead { .. })
        });
        if holder_alive {
            prop_assert_eq!(
                holder_eni,
                address,
                "address not on the live holder: {:?}",
                input
            );
        }
    }
    Ok(())
}

// ---- randomised world sequences: eligibility, refusals, bans, lagged reads, clock ----

mod world_props {
    use super::*;

    fn name(i: usize) -> String {
        format!("n{i}")
    }

    #[derive(Clone, Debug)]
    enum Ev {
        Die(usize),
        Return(usize),
        HealthUnknown(usize),
        Standby(usize),
        Cordon(usize),
        Unresolvable(usize),
        /// The node's instance is not looked up yet (no target).
        Unresolved(usize),
        Eligible(usize),
        Ec2Down(bool),
        /// The next AssociateAddress to this node is definitely refused.
        Refuse(usize),
        /// The address moves by itself (to a candidate, off, or foreign); with `true` the
        /// monitor read of this pass predates the move (EC2 reads lag).
        Drift(Option<usize>, bool),
        DriftForeign,
        Wait(i64),
        /// The wall clock steps back (NTP): expiries must not misbehave.
        ClockBack(i64),
        /// `pcs resource ban` with a lifetime.
        SpecBan(usize, i64),
    }

    fn arb_ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            3 => (0usize..5).prop_map(Ev::Die),
            3 => (0usize..5).prop_map(Ev::Return),
            2 => (0usize..5).prop_map(Ev::HealthUnknown),
            1 => (0usize..5).prop_map(Ev::Standby),
            1 => (0usize..5).prop_map(Ev::Cordon),
            1 => (0usize..5).prop_map(Ev::Unresolvable),
            1 => (0usize..5).prop_map(Ev::Unresolved),
            3 => (0usize..5).prop_map(Ev::Eligible),
            2 => any::<bool>().prop_map(Ev::Ec2Down),
            2 => (0usize..5).prop_map(Ev::Refuse),
            1 => (proptest::option::of(0usize..5), any::<bool>()).prop_map(|(k, l)| Ev::Drift(k, l)),
            1 => Just(Ev::DriftForeign),
            2 => (1i64..40).prop_map(Ev::Wait),
            1 => (1i64..30).prop_map(Ev::ClockBack),
            1 => (0usize..5, 1i64..60).prop_map(|(k, s)| Ev::SpecBan(k, s)),
        ]
    }

    /// Every holder change is justified by definite facts of its input (no change on
    /// unknowns), with the reason it gives.
    fn change_justified(i: &Input, ch: &HolderChange) -> Result<(), String> {
        let Some(h) = ch.from.as_deref() else {
            return match ch.reason {
                ChangeReason::Elected | ChangeReason::Adopted => Ok(()),
                r => Err(format!("{r} from no holder")),
            };
        };
        let c = find(i, h);
        let ok = match ch.reason {
            ChangeReason::HolderRemoved => c.is_none(),
            ChangeReason::HolderDead => {
                c.is_some_and(|c| matches!(c.health, NodeHealth::Dead { .. }))
            }
            ChangeReason::HolderIneligible => {
                c.is_some_and(|c| c.eligibility != Eligibility::Eligible)
            }
            ChangeReason::HolderBanned => is_banned(i, h),
            ChangeReason::AssociateFailed => {
                failure_ban(i, h).is_some_and(|r| r.kind == FailureKind::AssociateFailed)
            }
            ChangeReason::Drift => {
                i.holder_confirmed
                    && !matches!(i.address, AddressObservation::Unknown { .. })
                    && c.and_then(|c| c.target.as_ref())
                        .is_some_and(|t| !on_target(&i.address, t))
            }
            ChangeReason::Failback => {
                i.policy.failback == FailbackPolicy::Immediate
                    && c.is_some_and(|c| c.health == NodeHealth::Healthy)
            }
            ChangeReason::Pinned => active_pin(i).is_some(),
            ChangeReason::Elected
            | ChangeReason::Adopted
            | ChangeReason::Stopped
            | ChangeReason::Superseded => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{} -> {:?} ({}) not justified",
                h, ch.to, ch.reason
            ))
        }
    }

    #[allow(clippy::too_many_arguments)] // the generated parameters of one world
    fn run_world(
        n: usize,
        threshold: u32,
        timeout: Option<u64>,
        immediate: bool,
        hold_down: u64,
        events: &[Ev],
    ) -> Result<(), TestCaseError> {
        let mut candidates: Vec<CandidateView> = (0..n).map(|i| node(&name(i), 0)).collect();
        let mut address: Option<String> = None;
        let mut ec2_down = false;
        let mut refuse: Vec<String> = Vec::new();
        let mut holder: Option<String> = None;
        let mut confirmed = false;
        let mut failures = BTreeMap::new();
        let mut now = ts(0);
        let mut policy = Policy {
            failback: if immediate {
                FailbackPolicy::Immediate
            } else {
                FailbackPolicy::Never
            },
            hold_down: Duration::from_secs(hold_down),
            migration_threshold: threshold,
            failure_timeout: timeout.map(Duration::from_secs),
            ..Policy::default()
        };
        // Quiet passes until one changes nothing (a fixpoint): every pending refusal met
        // and moved away from, every due expiry applied.
        let quiet: Vec<Ev> = std::iter::once(Ev::Ec2Down(false))
            .chain(std::iter::repeat_n(Ev::Wait(1), 100))
            .collect();
        for (step, ev) in events.iter().chain(quiet.iter()).enumerate() {
            now += SignedDuration::from_secs(1);
            let mut lagged: Option<Option<String>> = None;
            let k_ok = |k: &usize| *k < n;
            match ev {
                Ev::Die(k) if k_ok(k) => {
                    candidates[*k].health = NodeHealth::Dead {
                        reason: "probe".into(),
                    };
                }
                Ev::Return(k) if k_ok(k) => {
                    if candidates[*k].health != NodeHealth::Healthy {
                        candidates[*k].healthy_since = Some(now);
                    }
                    candidates[*k].health = NodeHealth::Healthy;
                }
                Ev::HealthUnknown(k) if k_ok(k) => {
                    candidates[*k].health = NodeHealth::Unknown {
                        reason: "timeout".into(),
                    };
                    candidates[*k].healthy_since = None;
                }
                Ev::Standby(k) if k_ok(k) => candidates[*k].eligibility = Eligibility::Standby,
                Ev::Cordon(k) if k_ok(k) => candidates[*k].eligibility = Eligibility::Cordoned,
                Ev::Unresolvable(k) if k_ok(k) => {
                    candidates[*k].eligibility = Eligibility::Unresolvable {
                        reason: "no providerID".into(),
                    };
                }
                Ev::Unresolved(k) if k_ok(k) => candidates[*k].target = None,
                Ev::Eligible(k) if k_ok(k) => {
                    candidates[*k].eligibility = Eligibility::Eligible;
                    candidates[*k].target = Some(target(&name(*k)));
                }
                Ev::Ec2Down(down) => ec2_down = *down,
                Ev::Refuse(k) if k_ok(k) && !refuse.contains(&name(*k)) => refuse.push(name(*k)),
                Ev::Drift(to, lag) => {
                    let before = address.clone();
                    address = to.filter(|k| *k < n).map(|k| format!("eni-{}", name(k)));
                    if *lag {
                        lagged = Some(before);
                    }
                }
                Ev::DriftForeign => address = Some("eni-foreign".into()),
                Ev::Wait(s) => now += SignedDuration::from_secs(*s),
                Ev::ClockBack(s) => now -= SignedDuration::from_secs(*s),
                Ev::SpecBan(k, s) if k_ok(k) => {
                    policy.bans.retain(|(b, _)| *b != name(*k));
                    policy
                        .bans
                        .push((name(*k), Some(now + SignedDuration::from_secs(*s))));
                }
                _ => {}
            }
            let seen = lagged.unwrap_or_else(|| address.clone());
            let observation = simulated_observation(ec2_down, seen.as_deref(), step);
            let holder_eni = holder.as_ref().map(|h| format!("eni-{h}"));
            if !ec2_down && holder_eni.is_some() && holder_eni == seen {
                confirmed = true;
            }
            // Like the controller: a node that is not eligible keeps its last known target
            // (ownership of its interface); an eligible node's lookup completes within a
            // pass, so after the events every eligible node is resolved again.
            if step >= events.len() {
                for c in candidates.iter_mut() {
                    if c.eligibility == Eligibility::Eligible && c.target.is_none() {
                        c.target = Some(target(&c.node));
                    }
                }
            }
            let mut view = candidates.clone();
            for c in view.iter_mut() {
                if c.eligibility != Eligibility::Eligible {
                    c.target.get_or_insert_with(|| target(&c.node));
                }
            }
            let input = Input {
                now,
                policy: policy.clone(),
                candidates: view,
                holder: holder.clone(),
                holder_confirmed: confirmed,
                failures: failures.clone(),
                address: observation.clone(),
            };
            let d = decide(&input);

            // One holder, a candidate; every change justified by definite facts.
            if let Some(h) = &d.holder {
                prop_assert!(find(&input, h).is_some(), "holder {} is not a candidate", h);
            }
            if let Some(ch) = &d.change
                && let Err(e) = change_justified(&input, ch)
            {
                return Err(TestCaseError::fail(format!("{e}: {input:?}")));
            }
            // A failure is only ever counted on a definite, confirmed drift.
            if let Some((node, kind)) = &d.record_failure {
                prop_assert_eq!(*kind, FailureKind::Drift);
                prop_assert!(input.holder_confirmed && Some(node) == input.holder.as_ref());
                let known = !matches!(observation, AddressObservation::Unknown { .. });
                prop_assert!(known, "failure counted while EC2 is unknown");
            }
            if let Action::Associate { node, target: t } = &d.action {
                prop_assert!(!ec2_down, "associate while EC2 is unknown");
                prop_assert_eq!(Some(node), d.holder.as_ref());
                let c = find(&input, node).expect("holder is a candidate");
                prop_assert_eq!(Some(t), c.target.as_ref());
                prop_assert!(
                    seen.as_deref() != Some("eni-foreign"),
                    "took a foreign address"
                );
                // A banned node is only re-associated when nobody else could hold it.
                if is_banned(&input, node) {
                    prop_assert!(
                        !input
                            .candidates
                            .iter()
                            .any(|o| o.node != *node && eligible_for_election(&input, o)),
                        "associated to banned {} with an alternative: {:?}",
                        node,
                        input
                    );
                }
            }

            // Apply it as the controller does.
            if d.holder != holder {
                confirmed = false;
            }
            holder = d.holder.clone();
            d.apply_to_failures(&mut failures, now);
            if let Action::Associate { node, target: t } = &d.action {
                if let Some(pos) = refuse.iter().position(|r| r == node) {
                    refuse.remove(pos);
                    record_failure(
                        &mut failures,
                        node,
                        now,
                        FailureKind::AssociateFailed,
                        "refused",
                        Some(threshold),
                    );
                    let after = Input {
                        failures: failures.clone(),
                        ..input.clone()
                    };
                    prop_assert!(is_banned(&after, node), "a refused node is banned at once");
                } else {
                    address = Some(t.network_interface_id.clone());
                }
            }
            // Expired failure records never survive a decision.
            if let Some(t) = policy.failure_timeout {
                for (node, r) in &failures {
                    prop_assert!(
                        r.last_failure == now || !elapsed(r.last_failure, t, input.now),
                        "expired record of {} kept",
                        node
                    );
                }
            }
            let noop = d.change.is_none()
                && d.action == Action::None
                && d.record_failure.is_none()
                && d.expire_failures.is_empty();
            if step > events.len() && noop {
                break;
            }
        }

        // Liveness once EC2 answers and nothing is refused: if anybody may hold a
        // non-foreign address, somebody does, and a live, resolved holder has it.
        let input = Input {
            now,
            policy,
            candidates: candidates.clone(),
            holder: holder.clone(),
            holder_confirmed: confirmed,
            failures,
            address: AddressObservation::Unassociated,
        };
        let someone = candidates.iter().any(|c| eligible_for_election(&input, c));
        if someone && refuse.is_empty() && address.as_deref() != Some("eni-foreign") {
            prop_assert!(holder.is_some(), "nobody holds the address: {:?}", input);
            let h = holder.as_deref().and_then(|h| find(&input, h));
            if let Some(h) =
                h.filter(|h| !matches!(h.health, NodeHealth::Dead { .. }) && h.target.is_some())
            {
                let want = format!("eni-{}", h.node);
                prop_assert_eq!(
                    address.as_deref(),
                    Some(want.as_str()),
                    "address not on the live holder: {:?}",
                    input
                );
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        #[test]
        fn world_sequences_never_move_on_unknowns_and_stay_live(
            n in 2usize..5,
            threshold in 1u32..4,
            timeout in proptest::option::of(5u64..60),
            immediate in proptest::bool::weighted(0.3),
            hold_down in 0u64..20,
            events in proptest::collection::vec(arb_ev(), 1..80),
        ) {
            run_world(n, threshold, timeout, immediate, hold_down, &events)?;
        }
    }
}
