//! `triggers::node_fingerprint`: a Node change re-evaluates the addresses exactly when it can
//! change an eligibility or health verdict.

use k8s_openapi::api::core::v1::Node;

use super::super::triggers::node_fingerprint;
use super::fixtures::*;

fn base() -> Node {
    node_json("n1", typical_node())
}

fn edit(f: impl FnOnce(&mut serde_json::Value)) -> Node {
    let mut v = serde_json::to_value(base()).expect("node json");
    f(&mut v);
    serde_json::from_value(v).expect("node")
}

#[test]
fn fingerprint_changes_with_verdict_inputs() {
    let before = node_fingerprint(&base());
    assert_eq!(before, node_fingerprint(&base()), "deterministic");
    let rows: Vec<(&str, Node)> = vec![
        (
            "standby_label_set",
            edit(|v| v["metadata"]["labels"]["feip.io/standby"] = "true".into()),
        ),
        (
            "standby_label_removed",
            edit(|v| {
                v["metadata"]["labels"]
                    .as_object_mut()
                    .expect("labels")
                    .remove("feip.io/standby");
            }),
        ),
        (
            "cordoned",
            edit(|v| v["spec"]["unschedulable"] = true.into()),
        ),
        (
            "provider_id_changed",
            edit(|v| v["spec"]["providerID"] = "aws:///ap-northeast-1a/i-0def".into()),
        ),
        (
            "provider_id_removed",
            edit(|v| {
                v["spec"]
                    .as_object_mut()
                    .expect("spec")
                    .remove("providerID");
            }),
        ),
        (
            "taint_added",
            edit(|v| {
                v["spec"]["taints"].as_array_mut().expect("taints").push(
                serde_json::json!({"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}),
            );
            }),
        ),
        (
            "taint_removed",
            edit(|v| v["spec"]["taints"] = serde_json::json!([])),
        ),
        (
            "taint_key_changed",
            edit(|v| v["spec"]["taints"][0]["key"] = "karpenter.sh/disrupted".into()),
        ),
        (
            "taint_effect_changed",
            edit(|v| v["spec"]["taints"][0]["effect"] = "NoExecute".into()),
        ),
        (
            "ready_false",
            edit(|v| v["status"]["conditions"][0]["status"] = "False".into()),
        ),
        (
            "ready_unknown",
            edit(|v| v["status"]["conditions"][0]["status"] = "Unknown".into()),
        ),
        (
            "internal_ip_changed",
            edit(|v| v["status"]["addresses"][0]["address"] = "10.0.0.12".into()),
        ),
        (
            "internal_ip_removed",
            edit(|v| {
                v["status"]["addresses"]
                    .as_array_mut()
                    .expect("addresses")
                    .remove(0);
            }),
        ),
    ];
    let unchanged: Vec<&str> = rows
        .iter()
        .filter(|(_, n)| node_fingerprint(n) == before)
        .map(|(name, _)| *name)
        .collect();
    assert!(
        unchanged.is_empty(),
        "these changes must change the fingerprint: {unchanged:?}"
    );
}

#[test]
fn fingerprint_ignores_other_node_changes() {
    let before = node_fingerprint(&base());
    let rows: Vec<(&str, Node)> = vec![
        (
            "other_label",
            edit(|v| v["metadata"]["labels"]["role"] = "db".into()),
        ),
        (
            "label_added",
            edit(|v| v["metadata"]["labels"]["new"] = "x".into()),
        ),
        (
            "annotation",
            edit(|v| v["metadata"]["annotations"]["note"] = "y".into()),
        ),
        (
            "resource_version",
            edit(|v| v["metadata"]["resourceVersion"] = "42".into()),
        ),
        (
            "taint_value",
            edit(|v| v["spec"]["taints"][0]["value"] = "other".into()),
        ),
        (
            "other_condition_status",
            edit(|v| v["status"]["conditions"][1]["status"] = "True".into()),
        ),
        (
            "ready_heartbeat_time",
            edit(|v| {
                v["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-01-01T00:05:00Z".into();
            }),
        ),
        (
            "ready_transition_time_and_reason",
            edit(|v| {
                v["status"]["conditions"][0]["lastTransitionTime"] = "2026-01-01T00:05:00Z".into();
                v["status"]["conditions"][0]["reason"] = "Other".into();
                v["status"]["conditions"][0]["message"] = "m".into();
            }),
        ),
        (
            "hostname_address",
            edit(|v| v["status"]["addresses"][1]["address"] = "ip-other".into()),
        ),
        (
            "pod_cidr",
            edit(|v| v["spec"]["podCIDR"] = "10.1.0.0/24".into()),
        ),
    ];
    let changed: Vec<&str> = rows
        .iter()
        .filter(|(_, n)| node_fingerprint(n) != before)
        .map(|(name, _)| *name)
        .collect();
    assert!(
        changed.is_empty(),
        "these changes must not change the fingerprint: {changed:?}"
    );
}

/// Characterizes two details of today's hash: `unschedulable: false` differs from unset
/// (Option hashed), and a standby label "false" differs from no label.
#[test]
fn fingerprint_distinguishes_explicit_false_from_unset() {
    let before = node_fingerprint(&base());
    let explicit = edit(|v| v["spec"]["unschedulable"] = false.into());
    assert_ne!(
        node_fingerprint(&explicit),
        before,
        "unschedulable false vs unset"
    );
    let no_standby = edit(|v| {
        v["metadata"]["labels"]
            .as_object_mut()
            .expect("labels")
            .remove("feip.io/standby");
    });
    assert_ne!(
        node_fingerprint(&no_standby),
        before,
        "standby=false vs no label"
    );
}
