//! `holder_lease::pending_from_lease`, `already_recorded` and `lease_duration`.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{FailoverRecord, FloatingElasticIPStatus};

use super::super::context::PendingFailover;
use super::super::holder_lease::{already_recorded, lease_duration, pending_from_lease};
use super::super::spec::resolve;
use super::fixtures::*;
use crate::decide::ChangeReason;

fn lease(annotations: serde_json::Value, holder: Option<&str>) -> Lease {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "feip-web", "namespace": "default", "annotations": annotations},
        "spec": {"holderIdentity": holder},
    }))
    .expect("lease")
}

fn pending_fields(
    p: Option<PendingFailover>,
) -> Option<(Option<String>, String, String, Timestamp)> {
    p.map(|p| (p.from, p.to, p.reason.as_str().to_string(), p.detected_at))
}

#[test]
fn pending_from_lease_table() {
    let detected = "2026-01-01T00:00:07.123456Z";
    let full = serde_json::json!({
        "feip.io/failover-from": "a",
        "feip.io/detected-at": detected,
        "feip.io/reason": "Drift",
        "feip.io/confirmed": "false",
    });
    let at: Timestamp = detected.parse().expect("time");
    type Want = Option<(Option<String>, String, String, Timestamp)>;
    let some = |reason: &str| -> Want { Some((Some("a".into()), "b".into(), reason.into(), at)) };
    let without = |key: &str| {
        let mut a = full.clone();
        a.as_object_mut().expect("object").remove(key);
        a
    };
    let rows: Vec<(&str, Option<Lease>, bool, Want)> = vec![
        (
            "unconfirmed_failover_is_pending",
            Some(lease(full.clone(), Some("b"))),
            false,
            some("Drift"),
        ),
        (
            "confirmed_lease_keeps_its_failover_until_status_records_it",
            Some(lease(full.clone(), Some("b"))),
            true,
            some("Drift"),
        ),
        ("no_lease_nothing_pending", None, false, None),
        (
            "reason_defaults_to_holder_dead",
            Some(lease(without("feip.io/reason"), Some("b"))),
            false,
            some("HolderDead"),
        ),
        (
            "no_failover_from_nothing_pending",
            Some(lease(without("feip.io/failover-from"), Some("b"))),
            false,
            None,
        ),
        (
            "no_detected_at_nothing_pending",
            Some(lease(without("feip.io/detected-at"), Some("b"))),
            false,
            None,
        ),
        (
            "unparseable_detected_at_nothing_pending",
            Some(lease(
                serde_json::json!({"feip.io/failover-from": "a", "feip.io/detected-at": "yesterday"}),
                Some("b"),
            )),
            false,
            None,
        ),
        (
            "no_holder_nothing_pending",
            Some(lease(full.clone(), None)),
            false,
            None,
        ),
        (
            "no_annotations_nothing_pending",
            Some(lease(serde_json::Value::Null, Some("b"))),
            false,
            None,
        ),
    ];
    let mut failed = Vec::new();
    for (name, l, confirmed, want) in rows {
        // Whether the Lease is confirmed does not matter: the failover stays on it until the
        // status records it.
        let _ = confirmed;
        let got = pending_fields(pending_from_lease(l.as_ref()));
        if got != want {
            failed.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn already_recorded_compares_whole_seconds() {
    let pending = PendingFailover {
        from: Some("a".into()),
        to: "b".into(),
        reason: ChangeReason::HolderDead,
        detected_at: "2026-01-01T00:00:07.900Z".parse().expect("time"),
    };
    let status =
        |from: Option<&str>, to: &str, detected: Option<Timestamp>| FloatingElasticIPStatus {
            last_failover: Some(FailoverRecord {
                from: from.map(str::to_string),
                to: to.into(),
                reason: "Other".into(),
                detected_at: detected.map(Time),
                ..Default::default()
            }),
            ..Default::default()
        };
    assert!(
        already_recorded(&status(Some("a"), "b", Some(ts(7))), &pending),
        "same second, sub-second dropped"
    );
    assert!(
        !already_recorded(&status(Some("a"), "b", Some(ts(8))), &pending),
        "next second"
    );
    assert!(!already_recorded(
        &status(Some("a"), "b", Some(ts(6))),
        &pending
    ));
    assert!(
        !already_recorded(&status(Some("x"), "b", Some(ts(7))), &pending),
        "other from"
    );
    assert!(
        !already_recorded(&status(None, "b", Some(ts(7))), &pending),
        "no from"
    );
    assert!(
        !already_recorded(&status(Some("a"), "c", Some(ts(7))), &pending),
        "other to"
    );
    assert!(
        !already_recorded(&status(Some("a"), "b", None), &pending),
        "no detection time"
    );
    assert!(
        !already_recorded(&FloatingElasticIPStatus::default(), &pending),
        "no last failover"
    );
}

#[test]
fn lease_duration_is_three_intervals_at_least_30s() {
    let rows = [
        ("1s", 30),
        ("10s", 30),
        ("11s", 33),
        ("20s", 60),
        ("1m", 180),
    ];
    for (interval, want) in rows {
        let r = resolve(&feip(spec(
            serde_json::json!({"monitor": {"interval": interval}}),
        )));
        assert_eq!(
            lease_duration(&r),
            Duration::from_secs(want),
            "interval {interval}"
        );
    }
    let r = resolve(&feip(spec(serde_json::json!({}))));
    assert_eq!(
        lease_duration(&r),
        Duration::from_secs(30),
        "default interval"
    );
}
