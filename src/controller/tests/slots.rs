//! Private IPs as slots through `observe`, `decide` and `plan`: a taken IP is skipped, a node
//! without a free one is not eligible, and a holder whose slot moves is retargeted (a
//! planned move), never counted as drift.

use crate::aws::AddressInfo;
use crate::decide::{self, Action, Eligibility};

use super::super::context::AddressMemory;
use super::super::observe::{AddressLookup, Observed, SlotInputs, observe, observe_address};
use super::super::plan::plan;
use super::super::slots::{INTERFACE_ANNOTATION, Occupancy, PRIVATE_IP_ANNOTATION, SlotRecord};
use super::super::spec::resolve;
use super::fixtures::*;

fn observe_slots(
    f_spec: serde_json::Value,
    address: Option<AddressInfo>,
    lease: Option<&k8s_openapi::api::coordination::v1::Lease>,
    slots: &SlotInputs,
) -> Observed {
    observe_listed(f_spec, None, address, lease, slots)
}

/// Like [`observe_slots`], with an explicit `privateIpAddress` for candidate a.
fn observe_listed(
    f_spec: serde_json::Value,
    explicit_a: Option<String>,
    address: Option<AddressInfo>,
    lease: Option<&k8s_openapi::api::coordination::v1::Lease>,
    slots: &SlotInputs,
) -> Observed {
    let mut a = reading("a");
    a.listed.private_ip = explicit_a;
    let f = feip_with(spec(f_spec), None);
    let r = resolve(&f);
    let lookup = address.map_or(AddressLookup::NotLookedUpYet, AddressLookup::Found);
    let mut readings = readings(vec![a, reading("b")]);
    readings.slots = slots.clone();
    observe(
        &f,
        &r,
        observe_address(&lookup),
        &readings,
        lease,
        &mut AddressMemory::default(),
        now(),
    )
}

fn unassociated() -> AddressInfo {
    AddressInfo {
        network_interface_id: None,
        private_ip: None,
        association_id: None,
        instance_id: None,
        ..address_on(Some("a"))
    }
}

fn taken(pairs: &[(String, &str)]) -> SlotInputs {
    let mut o = Occupancy::default();
    for (ip, who) in pairs {
        o = o.with(ip, who);
    }
    SlotInputs {
        occupancy: o,
        recorded: None,
    }
}

fn target_ip(o: &Observed, node: &str) -> Option<String> {
    o.candidate(node)?
        .view
        .target
        .as_ref()
        .map(|t| t.private_ip.clone())
}

#[test]
fn taken_private_ips_are_skipped_and_a_full_interface_is_not_eligible() {
    let primary_a = target("a").private_ip;
    let o = observe_slots(
        serde_json::json!({}),
        Some(unassociated()),
        None,
        &taken(&[(primary_a.clone(), "ns/one")]),
    );
    assert_eq!(
        target_ip(&o, "a"),
        Some(secondary_ip("a")),
        "the free secondary"
    );
    assert_eq!(
        o.candidate("a").unwrap().view.eligibility,
        Eligibility::Eligible
    );

    let full = taken(&[(primary_a.clone(), "ns/one"), (secondary_ip("a"), "ns/two")]);
    let o = observe_slots(serde_json::json!({}), Some(unassociated()), None, &full);
    let Eligibility::NoFreeSlot { reason } = &o.candidate("a").unwrap().view.eligibility else {
        panic!(
            "a has no free private IP: {:?}",
            o.candidate("a").unwrap().view
        );
    };
    assert!(
        reason.contains(&format!("{primary_a} carries ns/one"))
            && reason.contains(&format!("{} carries ns/two", secondary_ip("a"))),
        "{reason}"
    );
    let d = decide::decide(&o.input);
    assert_eq!(
        d.holder.as_deref(),
        Some("b"),
        "b still has its slots: {d:?}"
    );

    let o = observe_listed(
        serde_json::json!({}),
        Some(secondary_ip("a")),
        Some(unassociated()),
        None,
        &taken(&[(secondary_ip("a"), "ns/two")]),
    );
    assert!(
        matches!(&o.candidate("a").unwrap().view.eligibility, Eligibility::NoFreeSlot { reason } if reason.contains("carries ns/two")),
        "an explicit private IP someone else holds is not free: {:?}",
        o.candidate("a").unwrap().view.eligibility
    );
}

fn lease_at(holder: &str, ip: &str, confirmed: bool) -> k8s_openapi::api::coordination::v1::Lease {
    holder_lease(
        Some(holder),
        serde_json::json!({
            "feip.io/confirmed": confirmed.to_string(),
            PRIVATE_IP_ANNOTATION: ip,
            INTERFACE_ANNOTATION: target(holder).network_interface_id,
        }),
        Some(1),
    )
}

#[test]
fn the_recorded_slot_is_kept_and_the_holder_confirmed_only_on_it() {
    // a holds on its secondary IP (recorded), the address is there: confirmed, kept, no call.
    let on_secondary = AddressInfo {
        private_ip: Some(secondary_ip("a")),
        ..address_on(Some("a"))
    };
    let lease = lease_at("a", &secondary_ip("a"), true);
    let o = observe_slots(
        serde_json::json!({}),
        Some(on_secondary.clone()),
        Some(&lease),
        &SlotInputs::default(),
    );
    assert_eq!(
        target_ip(&o, "a"),
        Some(secondary_ip("a")),
        "the Lease's slot, not the primary"
    );
    assert!(o.input.holder_confirmed);
    let d = decide::decide(&o.input);
    assert_eq!(d.action, Action::None);
    assert_eq!(d.record_failure, None);
    let p = plan(
        &resolve(&feip(spec(serde_json::json!({})))),
        &o,
        &d,
        Some(&lease),
        now(),
    );
    assert_eq!(p.retarget, None);
}

#[test]
fn an_edited_private_ip_on_the_holder_is_a_planned_move_not_drift() {
    // a holds on its primary, confirmed; the spec now asks for the secondary IP on a.
    let lease = lease_at("a", &target("a").private_ip, true);
    let edited = serde_json::json!({});
    let o = observe_listed(
        edited.clone(),
        Some(secondary_ip("a")),
        Some(address_on(Some("a"))),
        Some(&lease),
        &SlotInputs::default(),
    );
    assert_eq!(target_ip(&o, "a"), Some(secondary_ip("a")));
    assert!(
        !o.input.holder_confirmed,
        "the confirmation was of the old slot"
    );
    let d = decide::decide(&o.input);
    assert_eq!(d.holder.as_deref(), Some("a"), "no failover");
    assert_eq!(d.change, None);
    assert_eq!(d.record_failure, None, "no failure counted, no ban");
    assert!(
        matches!(&d.action, Action::Associate { node, target } if node == "a" && target.private_ip == secondary_ip("a")),
        "{:?}",
        d.action
    );
    let s = resolve(&feip(spec(edited)));
    let p = plan(&s, &o, &d, Some(&lease), now());
    let r = p.retarget.as_ref().expect("retarget");
    assert_eq!(
        r.from.as_ref().map(|s| s.private_ip.clone()),
        Some(target("a").private_ip)
    );
    let record = p
        .lease_record(&s, o.slot_of(Some("a")))
        .expect("the new slot is recorded first");
    assert!(!record.confirmed);
    assert_eq!(record.holder, Some("a"));
    assert_eq!(
        record.slot,
        Some(SlotRecord {
            node: "a".into(),
            network_interface_id: Some(target("a").network_interface_id),
            private_ip: secondary_ip("a"),
        })
    );
}

#[test]
fn a_holder_displaced_from_its_slot_takes_a_free_one_without_a_failure() {
    // a held its primary (confirmed); another address now sits there (EC2 shows it), ours is
    // unassociated. Not drift: a takes its free secondary IP.
    let lease = lease_at("a", &target("a").private_ip, true);
    let o = observe_slots(
        serde_json::json!({}),
        Some(unassociated()),
        Some(&lease),
        &taken(&[(target("a").private_ip, "ns/other")]),
    );
    let d = decide::decide(&o.input);
    assert_eq!(
        d.record_failure, None,
        "displaced by another address is no node failure"
    );
    assert_eq!(d.holder.as_deref(), Some("a"));
    assert!(
        matches!(&d.action, Action::Associate { target, .. } if target.private_ip == secondary_ip("a")),
        "{:?}",
        d.action
    );
}

#[test]
fn a_legacy_lease_without_a_slot_is_confirmed_as_before() {
    let lease = holder_lease(
        Some("a"),
        serde_json::json!({"feip.io/confirmed": "true"}),
        Some(1),
    );
    let o = observe_slots(
        serde_json::json!({}),
        Some(address_on(Some("a"))),
        Some(&lease),
        &SlotInputs::default(),
    );
    assert!(o.input.holder_confirmed);
    let d = decide::decide(&o.input);
    assert_eq!(d.action, Action::None);
    let p = plan(
        &resolve(&feip(spec(serde_json::json!({})))),
        &o,
        &d,
        Some(&lease),
        now(),
    );
    assert_eq!(
        p.retarget, None,
        "the slot is recorded with the next renewal"
    );
}

#[test]
fn drift_counts_from_the_second_read_that_shows_it() {
    use super::super::observe::second_look;
    use crate::decide::AddressObservation;
    let t = target("a");
    let on = AddressObservation::Associated {
        network_interface_id: t.network_interface_id.clone(),
        private_ip: Some(t.private_ip.clone()),
        association_id: None,
    };
    let off = AddressObservation::Unassociated;
    let other_ip = AddressObservation::Associated {
        network_interface_id: t.network_interface_id.clone(),
        private_ip: Some(secondary_ip("a")),
        association_id: None,
    };
    let unknown = |o: &AddressObservation| matches!(o, AddressObservation::Unknown { .. });
    let mut streak = None;
    // (case, observation, read, confirmed, expect unknown, expect re-read)
    let rows = [
        ("on target", on.clone(), 1, true, false, false),
        (
            "first read off target: unknown, read again",
            off.clone(),
            2,
            true,
            true,
            true,
        ),
        (
            "the same read again does not count twice",
            off.clone(),
            2,
            true,
            true,
            true,
        ),
        (
            "a second read shows it: drift",
            off.clone(),
            3,
            true,
            false,
            false,
        ),
        ("back on target resets", on.clone(), 4, true, false, false),
        (
            "another private IP on the interface is off target",
            other_ip,
            5,
            true,
            true,
            true,
        ),
        (
            "an unknown read keeps the streak",
            AddressObservation::Unknown { reason: "x".into() },
            6,
            true,
            true,
            false,
        ),
        (
            "then a second read showing it counts",
            off.clone(),
            7,
            true,
            false,
            false,
        ),
        (
            "not confirmed: passed through, streak reset",
            off.clone(),
            8,
            false,
            false,
            false,
        ),
        ("confirmed again: first sight", off, 9, true, true, true),
    ];
    for (case, obs, read, confirmed, want_unknown, want_read) in rows {
        let (got, reread) = second_look(obs, Some(&t).filter(|_| confirmed), read, &mut streak);
        assert_eq!((unknown(&got), reread), (want_unknown, want_read), "{case}");
    }
}
