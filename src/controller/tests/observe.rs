//! `observe::resolve` (spec defaults), `observe::failures_from_status` and
//! `observe::listed_candidates`.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::store;
use kube::runtime::watcher::Event;

use crate::crd::{FailbackPolicy, FloatingElasticIPStatus};
use crate::decide::{FailureKind, Policy};

use super::super::observe::{failures_from_status, listed_candidates};
use super::super::spec::{ProbeConfig, resolve};
use super::fixtures::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

type ProbeTuple = (u16, Option<String>, Duration, Duration, u32, u32);

/// The resolved probe as (port, path, period, timeout, failures, successes).
fn probe_tuple(p: &Option<ProbeConfig>) -> Option<ProbeTuple> {
    p.as_ref().map(|p| {
        (
            p.port,
            p.http_path.clone(),
            p.period,
            p.timeout,
            p.failure_threshold,
            p.success_threshold,
        )
    })
}

#[test]
fn resolve_defaults() {
    let r = resolve(&feip(spec(serde_json::json!({}))));
    assert_eq!(r.monitor_interval, secs(10), "monitor interval");
    assert_eq!(r.confirm_timeout, secs(5), "confirm timeout");
    assert_eq!(r.heartbeat_timeout, secs(40), "heartbeat timeout");
    assert_eq!(
        probe_tuple(&r.probe),
        Some((10250, None, secs(1), secs(1), 3, 1)),
        "TCP probe of the kubelet port"
    );
    assert_eq!(r.device_index, 0);
    let p = &r.policy;
    assert_eq!(p.failback, FailbackPolicy::Never);
    assert_eq!(p.hold_down, Duration::ZERO);
    assert_eq!(p.migration_threshold, 1);
    assert_eq!(p.failure_timeout, None);
    assert!(!p.allow_takeover && !p.stopped && !p.observe_only && !p.stop_on_associate_failure);
    assert_eq!(p.pin, None);
    assert!(p.bans.is_empty());
}

#[test]
fn resolve_explicit_values() {
    let r = resolve(&feip(spec(serde_json::json!({
        "monitor": {"interval": "30s", "timeout": "2s"},
        "health": {"heartbeatTimeout": "15s"},
        "networkInterface": {"deviceIndex": 2},
        "failback": {"policy": "Immediate", "holdDown": "90s"},
        "migrationThreshold": 4,
        "failureTimeout": "10m",
        "allowTakeover": true,
    }))));
    assert_eq!((r.monitor_interval, r.confirm_timeout), (secs(30), secs(2)));
    assert_eq!(r.heartbeat_timeout, secs(15));
    assert_eq!(r.device_index, 2);
    assert_eq!(r.policy.failback, FailbackPolicy::Immediate);
    assert_eq!(r.policy.hold_down, secs(90));
    assert_eq!(r.policy.migration_threshold, 4);
    assert_eq!(r.policy.failure_timeout, Some(secs(600)));
    assert!(r.policy.allow_takeover);
}

#[test]
fn resolve_probe_table() {
    let ms = Duration::from_millis;
    type Probe = Option<ProbeTuple>;
    let rows: Vec<(&str, serde_json::Value, Probe)> = vec![
        (
            "probe_none_disables_probing",
            serde_json::json!({"type": "None"}),
            None,
        ),
        (
            "http_probe_defaults_path_healthz",
            serde_json::json!({"type": "HTTP", "port": 8080}),
            Some((8080, Some("/healthz".into()), secs(1), secs(1), 3, 1)),
        ),
        (
            "http_probe_keeps_its_path",
            serde_json::json!({"type": "HTTP", "path": "/ready"}),
            Some((10250, Some("/ready".into()), secs(1), secs(1), 3, 1)),
        ),
        (
            "tcp_probe_has_no_path",
            serde_json::json!({"type": "TCP", "path": "/ignored"}),
            Some((10250, None, secs(1), secs(1), 3, 1)),
        ),
        (
            "timeout_clamped_to_period",
            serde_json::json!({"period": "500ms", "timeout": "2s"}),
            Some((10250, None, ms(500), ms(500), 3, 1)),
        ),
        (
            "default_timeout_clamped_to_short_period",
            serde_json::json!({"period": "200ms"}),
            Some((10250, None, ms(200), ms(200), 3, 1)),
        ),
        (
            "thresholds_kept_and_zero_raised_to_one",
            serde_json::json!({"failureThreshold": 0, "successThreshold": 0, "timeout": "300ms", "period": "3s"}),
            Some((10250, None, secs(3), ms(300), 1, 1)),
        ),
        (
            "explicit_thresholds",
            serde_json::json!({"failureThreshold": 5, "successThreshold": 2}),
            Some((10250, None, secs(1), secs(1), 5, 2)),
        ),
    ];
    let mut failed = Vec::new();
    for (name, probe, want) in rows {
        let r = resolve(&feip(spec(serde_json::json!({"health": {"probe": probe}}))));
        if probe_tuple(&r.probe) != want {
            failed.push(format!("{name}: got {:?}, want {want:?}", r.probe));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

/// A row of the policy table: name, spec fields, what must hold of the resolved policy.
type PolicyRow = (&'static str, serde_json::Value, fn(&Policy) -> bool);

#[test]
fn resolve_flags_table() {
    let t = |s: i64| serde_json::to_value(Time(ts(s))).expect("time");
    let rows: Vec<PolicyRow> = vec![
        (
            "migration_threshold_zero_is_one",
            serde_json::json!({"migrationThreshold": 0}),
            |p| p.migration_threshold == 1,
        ),
        (
            "migration_threshold_negative_is_one",
            serde_json::json!({"migrationThreshold": -3}),
            |p| p.migration_threshold == 1,
        ),
        (
            "failure_timeout_zero_is_never",
            serde_json::json!({"failureTimeout": "0s"}),
            |p| p.failure_timeout.is_none(),
        ),
        (
            "target_state_stopped",
            serde_json::json!({"targetState": "Stopped"}),
            |p| p.stopped && !p.observe_only,
        ),
        (
            "target_state_started",
            serde_json::json!({"targetState": "Started"}),
            |p| !p.stopped,
        ),
        (
            "observe_only",
            serde_json::json!({"management": "ObserveOnly"}),
            |p| p.observe_only && !p.stopped,
        ),
        (
            "managed",
            serde_json::json!({"management": "Managed"}),
            |p| !p.observe_only,
        ),
        (
            "stop_on_associate_failure",
            serde_json::json!({"onAssociateFailure": "Stop"}),
            |p| p.stop_on_associate_failure,
        ),
        (
            "try_next_on_associate_failure",
            serde_json::json!({"onAssociateFailure": "TryNext"}),
            |p| !p.stop_on_associate_failure,
        ),
        (
            "pin_without_expiry",
            serde_json::json!({"pin": {"node": "b"}}),
            |p| p.pin == Some(("b".into(), None)),
        ),
        (
            "pin_with_expiry",
            serde_json::json!({"pin": {"node": "b", "expiresAt": t(60)}}),
            |p| p.pin == Some(("b".into(), Some(ts(60)))),
        ),
        (
            "bans_in_spec_order_with_expiry",
            serde_json::json!({"bans": [{"node": "b", "expiresAt": t(5)}, {"node": "a"}]}),
            |p| p.bans == vec![("b".to_string(), Some(ts(5))), ("a".to_string(), None)],
        ),
        (
            "empty_failback_policy_never",
            serde_json::json!({"failback": {"policy": "Never"}}),
            |p| p.failback == FailbackPolicy::Never && p.hold_down.is_zero(),
        ),
    ];
    let mut failed = Vec::new();
    for (name, extra, ok) in rows {
        let r = resolve(&feip(spec(extra)));
        if !ok(&r.policy) {
            failed.push(format!("{name}: {:?}", r.policy));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

fn status_nodes(nodes: serde_json::Value) -> FloatingElasticIPStatus {
    serde_json::from_value(serde_json::json!({"nodes": nodes})).expect("status")
}

#[test]
fn failures_from_status_parses_kind_and_drops_zero_counts() {
    let t = serde_json::to_value(Time(ts(-5))).expect("time");
    let st = status_nodes(serde_json::json!([
        {"node": "a", "failureCount": 2, "lastFailure": t, "lastFailureReason": "AssociateFailed: InvalidInstanceID"},
        {"node": "b", "failureCount": 1, "lastFailureReason": "Drift: off the holder"},
        {"node": "c", "failureCount": 1, "lastFailureReason": "Mystery: what"},
        {"node": "d", "failureCount": 1},
        {"node": "e", "failureCount": 0, "lastFailureReason": "Drift: x"},
        {"node": "f", "failureCount": -1, "lastFailureReason": "Drift: x"},
        {"node": "g", "failureCount": 3, "lastFailureReason": "AssociateFailed"},
    ]));
    let f = failures_from_status(&st);
    let names: Vec<&str> = f.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["a", "b", "c", "d", "g"],
        "zero and negative counts dropped"
    );
    let a = &f["a"];
    assert_eq!(
        (a.count, a.kind, a.last_failure),
        (2, FailureKind::AssociateFailed, ts(-5))
    );
    assert_eq!(
        a.reason, "InvalidInstanceID",
        "the kind prefix is not part of it"
    );
    assert_eq!(f["b"].kind, FailureKind::Drift);
    assert_eq!(
        f["b"].last_failure,
        jiff::Timestamp::UNIX_EPOCH,
        "no time: the epoch"
    );
    assert_eq!(
        (f["c"].kind, f["c"].reason.as_str()),
        (FailureKind::Drift, "Mystery: what"),
        "unknown kind is Drift, the text kept whole"
    );
    assert_eq!(
        (f["d"].kind, f["d"].reason.as_str()),
        (FailureKind::Drift, "")
    );
    assert_eq!(
        (f["g"].kind, f["g"].reason.as_str()),
        (FailureKind::AssociateFailed, ""),
        "kind without a reason"
    );
    assert!(failures_from_status(&FloatingElasticIPStatus::default()).is_empty());
}

#[test]
fn failure_reason_survives_a_status_round_trip() {
    // Status records "Kind: reason"; reading it back must not keep the kind in the reason,
    // or every pass would prefix it again, grow the string and rewrite the status.
    let t = serde_json::to_value(Time(ts(-5))).expect("time");
    let old = serde_json::json!({"nodes": [
        {"node": "b", "failureCount": 1, "lastFailure": t, "lastFailureReason": "Drift: off"},
    ]});
    let f = feip_with(spec(serde_json::json!({})), Some(old));
    let failures = failures_from_status(f.status.as_ref().expect("status"));
    assert_eq!(failures["b"].reason, "off");
    let st = StatusCase {
        f,
        failures,
        ..StatusCase::active()
    }
    .run();
    assert_eq!(
        st.nodes[0].last_failure_reason.as_deref(),
        Some("Drift: off")
    );
    // A second pass over the written status writes the same record.
    let again = feip_with(
        spec(serde_json::json!({})),
        Some(serde_json::to_value(&st).expect("status")),
    );
    let failures = failures_from_status(again.status.as_ref().expect("status"));
    let st2 = StatusCase {
        f: again,
        failures,
        ..StatusCase::active()
    }
    .run();
    assert_eq!(st2.nodes, st.nodes, "the failure record is stable");
}

fn node_store(
    nodes: Vec<k8s_openapi::api::core::v1::Node>,
) -> kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Node> {
    let (reader, mut writer) = store();
    for n in nodes {
        writer.apply_watcher_event(&Event::Apply(n));
    }
    reader
}

fn labelled(name: &str, labels: serde_json::Value) -> k8s_openapi::api::core::v1::Node {
    node_json(name, serde_json::json!({"metadata": {"labels": labels}}))
}

#[test]
fn listed_candidates_from_the_spec_list() {
    let nodes = node_store(vec![labelled("zzz", serde_json::json!({"role": "edge"}))]);
    let f = feip(spec(serde_json::json!({
        "candidates": [
            {"node": "b", "priority": 5, "privateIpAddress": "10.0.0.99"},
            {"node": "a"},
            {"node": "c", "priority": -2},
        ],
        "nodeSelector": {"matchLabels": {"role": "edge"}},
    })));
    let l = listed_candidates(&f, &nodes);
    let got: Vec<(&str, i32, Option<&str>)> = l
        .iter()
        .map(|c| (c.node.as_str(), c.priority, c.private_ip.as_deref()))
        .collect();
    assert_eq!(
        got,
        [("b", 5, Some("10.0.0.99")), ("a", 0, None), ("c", -2, None)],
        "spec order, priority default 0; the list wins over a selector"
    );
}

#[test]
fn listed_candidates_from_a_node_selector() {
    let nodes = node_store(vec![
        labelled("n3", serde_json::json!({"role": "edge"})),
        labelled("n1", serde_json::json!({"role": "edge", "zone": "a"})),
        labelled("n2", serde_json::json!({"role": "db"})),
        labelled("n0", serde_json::json!({})),
        labelled("m9", serde_json::json!({"role": "edge"})),
    ]);
    let sel = |s: serde_json::Value| {
        let f = feip(spec(
            serde_json::json!({"candidates": null, "nodeSelector": s}),
        ));
        listed_candidates(&f, &nodes)
            .into_iter()
            .map(|c| {
                assert_eq!((c.priority, c.private_ip.clone()), (0, None), "{}", c.node);
                c.node
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        sel(serde_json::json!({"matchLabels": {"role": "edge"}})),
        ["m9", "n1", "n3"]
    );
    assert_eq!(
        sel(
            serde_json::json!({"matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["edge"]}]})
        ),
        ["n0", "n2"]
    );
    assert_eq!(
        sel(serde_json::json!({"matchExpressions": [{"key": "zone", "operator": "Exists"}]})),
        ["n1"]
    );
    assert_eq!(
        sel(serde_json::json!({})),
        ["m9", "n0", "n1", "n2", "n3"],
        "empty selector: all"
    );
    assert!(sel(serde_json::json!({"matchLabels": {"role": "none"}})).is_empty());
    // Neither list nor selector: no candidates.
    let f = feip(spec(serde_json::json!({"candidates": null})));
    assert!(listed_candidates(&f, &nodes).is_empty());
}
