//! What the verbs write and what they refuse (no client): spec patches, the candidate and ban
//! checks, and `CliError`.

use std::time::Duration;

use anyhow::Context as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::ResourceExt;
use serde_json::{Value, json};

use super::NONE;
use crate::crd::{Ban, FloatingElasticIP, FloatingElasticIPSpec, STANDBY_LABEL};

/// Errors an operator can act on; their messages name the thing that is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("floatingelasticip \"{name}\" not found in namespace \"{namespace}\"")]
    NotFound { name: String, namespace: String },
    #[error("node \"{0}\" not found")]
    NodeNotFound(String),
    #[error(
        "node \"{node}\" is not a candidate of floatingelasticip \"{name}\" (candidates: {candidates})"
    )]
    NotCandidate {
        node: String,
        name: String,
        candidates: String,
    },
    #[error(
        "node \"{node}\" does not match the nodeSelector of floatingelasticip \"{name}\" ({selector})"
    )]
    SelectorMismatch {
        node: String,
        name: String,
        selector: String,
    },
    #[error(
        "node \"{node}\" is banned from floatingelasticip \"{name}\"; run `feip clear {name} {node}` first"
    )]
    Banned { node: String, name: String },
    #[error("lifetime must be a positive Go duration such as 30m or 1h: {0}")]
    BadLifetime(String),
}

/// `now + lifetime`, whole seconds (what a metav1.Time can hold).
pub fn expiry(now: Timestamp, lifetime: Duration) -> anyhow::Result<Timestamp> {
    let lifetime = SignedDuration::try_from(lifetime).context("lifetime out of range")?;
    let t = now.checked_add(lifetime).context("lifetime out of range")?;
    Ok(Timestamp::from_second(t.as_second())?)
}

/// The spec fragment of `feip move`: a pin the controller clears once done.
pub fn move_patch(node: &str) -> Value {
    json!({"pin": {"node": node, "clearWhenDone": true}})
}

/// The spec fragment of `feip ban`: the ban list with NODE's ban added or replaced (in place),
/// and the pin removed when it names NODE (a ban wins over a pin, as -INFINITY over INFINITY).
pub fn ban_patch(spec: &FloatingElasticIPSpec, node: &str, expires_at: Option<Timestamp>) -> Value {
    let ban = Ban {
        node: node.into(),
        expires_at: expires_at.map(Time),
    };
    let mut bans = spec.bans.clone().unwrap_or_default();
    match bans.iter_mut().find(|b| b.node == node) {
        Some(existing) => *existing = ban,
        None => bans.push(ban),
    }
    let mut patch = json!({"bans": bans});
    if spec.pin.as_ref().is_some_and(|p| p.node == node) {
        patch["pin"] = Value::Null;
    }
    patch
}

/// What `feip clear` removes, for the message ("pin on a", "ban on b").
pub fn cleared_constraints(spec: &FloatingElasticIPSpec, node: Option<&str>) -> Vec<String> {
    let hits = |n: &str| node.is_none_or(|want| want == n);
    let mut out = Vec::new();
    if let Some(p) = spec.pin.as_ref().filter(|p| hits(&p.node)) {
        out.push(format!("pin on \"{}\"", p.node));
    }
    for b in spec.bans.iter().flatten().filter(|b| hits(&b.node)) {
        out.push(format!("ban on \"{}\"", b.node));
    }
    out
}

/// The spec fragment of `feip clear`: the pin and bans without those of NODE (or all);
/// None when there is nothing to remove.
pub fn clear_patch(spec: &FloatingElasticIPSpec, node: Option<&str>) -> Option<Value> {
    let hits = |n: &str| node.is_none_or(|want| want == n);
    let mut patch = serde_json::Map::new();
    if spec.pin.as_ref().is_some_and(|p| hits(&p.node)) {
        patch.insert("pin".into(), Value::Null);
    }
    let bans = spec.bans.clone().unwrap_or_default();
    if bans.iter().any(|b| hits(&b.node)) {
        let kept: Vec<Ban> = bans.into_iter().filter(|b| !hits(&b.node)).collect();
        let value = if kept.is_empty() {
            Value::Null
        } else {
            json!(kept)
        };
        patch.insert("bans".into(), value);
    }
    (!patch.is_empty()).then_some(Value::Object(patch))
}

/// The spec fragment of `feip cleanup`. `node: null` removes a node left by an earlier request.
pub fn cleanup_patch(request_id: &str, node: Option<&str>) -> Value {
    json!({"cleanup": {"requestId": request_id, "node": node}})
}

/// A request id that differs on every call (time for readability, randomness for uniqueness).
pub fn new_request_id(now: Timestamp) -> String {
    format!("cli-{}-{:08x}", now.as_second(), rand::random::<u32>())
}

/// The candidate list as text, for messages.
fn candidate_names(spec: &FloatingElasticIPSpec) -> String {
    let names: Vec<&str> = spec
        .candidates
        .iter()
        .flatten()
        .map(|c| c.node.as_str())
        .collect();
    if names.is_empty() {
        NONE.into()
    } else {
        names.join(", ")
    }
}

/// Whether a label selector matches; an unparseable selector matches nothing (as the
/// controller treats it).
pub(super) fn selector_text(selector: &LabelSelector) -> String {
    kube::core::Selector::try_from(selector.clone())
        .map(|s| s.to_string())
        .unwrap_or_else(|e| format!("invalid selector: {e}"))
}

/// Checks that NODE may hold the address: listed among `spec.candidates`, or (with a node
/// selector) a Node whose labels match. `node_obj` is needed only for selector objects.
pub fn check_candidate(
    f: &FloatingElasticIP,
    node: &str,
    node_obj: Option<&Node>,
) -> Result<(), CliError> {
    let name = f.name_any();
    if let Some(cands) = &f.spec.candidates {
        if cands.iter().any(|c| c.node == node) {
            return Ok(());
        }
        return Err(CliError::NotCandidate {
            node: node.into(),
            name,
            candidates: candidate_names(&f.spec),
        });
    }
    let Some(selector) = &f.spec.node_selector else {
        return Err(CliError::NotCandidate {
            node: node.into(),
            name,
            candidates: NONE.into(),
        });
    };
    let Some(n) = node_obj else {
        return Err(CliError::NodeNotFound(node.into()));
    };
    if crate::kube_ext::selector_matches(selector, n.labels()) {
        Ok(())
    } else {
        Err(CliError::SelectorMismatch {
            node: node.into(),
            name,
            selector: selector_text(selector),
        })
    }
}

/// A pin on a banned node is rejected at admission; say why in the CLI's words.
pub fn check_not_banned(f: &FloatingElasticIP, node: &str) -> Result<(), CliError> {
    if f.spec.bans.iter().flatten().any(|b| b.node == node) {
        return Err(CliError::Banned {
            node: node.into(),
            name: f.name_any(),
        });
    }
    Ok(())
}

/// Why a move to `node` may not happen (yet), as warnings.
pub(super) fn node_warnings(f: &FloatingElasticIP, node: &Node) -> Vec<String> {
    let name = node.name_any();
    let mut out = Vec::new();
    if node
        .labels()
        .get(STANDBY_LABEL)
        .is_some_and(|v| v == "true")
    {
        out.push(format!(
            "node \"{name}\" is in standby; the address moves there only after `feip unstandby {name}`"
        ));
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        out.push(format!(
            "node \"{name}\" is cordoned; the address moves there only once it is uncordoned"
        ));
    }
    let failure_banned = f
        .status
        .as_ref()
        .is_some_and(|s| s.nodes.iter().any(|r| r.node == name && r.banned));
    if failure_banned {
        out.push(format!(
            "node \"{name}\" is banned after failures; run `feip cleanup {} {name}` to reset it",
            f.name_any()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::fixtures::{feip, ts};

    fn spec(extra: Value) -> FloatingElasticIPSpec {
        let mut v = json!({
            "allocationId": "eipalloc-0123456789abcdef0",
            "candidates": [{"node": "a"}, {"node": "b"}, {"node": "c"}],
        });
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        serde_json::from_value(v).expect("spec")
    }

    fn node(name: &str, labels: Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).expect("node")
    }

    #[test]
    fn cli_move_patch_pins_with_clear_when_done() {
        assert_eq!(
            move_patch("b"),
            json!({"pin": {"node": "b", "clearWhenDone": true}})
        );
    }

    #[test]
    fn cli_ban_patch_appends_replaces_and_unpins() {
        let t = ts("2030-01-01T00:00:00Z");
        let s = spec(json!({}));
        assert_eq!(ban_patch(&s, "b", None), json!({"bans": [{"node": "b"}]}));

        let s = spec(
            json!({"bans": [{"node": "a"}, {"node": "b", "expiresAt": "2029-01-01T00:00:00Z"}]}),
        );
        assert_eq!(
            ban_patch(&s, "b", Some(t)),
            json!({"bans": [{"node": "a"}, {"node": "b", "expiresAt": "2030-01-01T00:00:00Z"}]}),
            "replaced in place"
        );
        assert_eq!(
            ban_patch(&s, "c", None),
            json!({"bans": [{"node": "a"}, {"node": "b", "expiresAt": "2029-01-01T00:00:00Z"}, {"node": "c"}]})
        );

        let s = spec(json!({"pin": {"node": "c"}}));
        assert_eq!(
            ban_patch(&s, "c", None),
            json!({"bans": [{"node": "c"}], "pin": null}),
            "a ban on the pinned node removes the pin"
        );
        assert_eq!(
            ban_patch(&s, "a", None),
            json!({"bans": [{"node": "a"}]}),
            "other pins stay"
        );
    }

    #[test]
    fn cli_clear_patch_removes_all_or_one_node() {
        let s = spec(json!({"pin": {"node": "a"}, "bans": [{"node": "b"}, {"node": "c"}]}));
        assert_eq!(
            clear_patch(&s, None),
            Some(json!({"pin": null, "bans": null}))
        );
        assert_eq!(
            clear_patch(&s, Some("b")),
            Some(json!({"bans": [{"node": "c"}]}))
        );
        assert_eq!(clear_patch(&s, Some("a")), Some(json!({"pin": null})));
        assert_eq!(clear_patch(&s, Some("z")), None, "nothing to clear");
        assert_eq!(clear_patch(&spec(json!({})), None), None);
        let only = spec(json!({"bans": [{"node": "b"}]}));
        assert_eq!(clear_patch(&only, Some("b")), Some(json!({"bans": null})));
        assert_eq!(
            cleared_constraints(&s, None),
            ["pin on \"a\"", "ban on \"b\"", "ban on \"c\""]
        );
        assert_eq!(cleared_constraints(&s, Some("c")), ["ban on \"c\""]);
    }

    #[test]
    fn cli_cleanup_patch_and_request_ids() {
        assert_eq!(
            cleanup_patch("r1", Some("a")),
            json!({"cleanup": {"requestId": "r1", "node": "a"}})
        );
        assert_eq!(
            cleanup_patch("r2", None),
            json!({"cleanup": {"requestId": "r2", "node": null}}),
            "an earlier node is removed"
        );
        let now = ts("2030-01-01T00:00:00Z");
        let ids: std::collections::BTreeSet<String> =
            (0..100).map(|_| new_request_id(now)).collect();
        assert_eq!(ids.len(), 100, "unique within one second");
        assert!(ids.iter().all(|i| (1..=128).contains(&i.len())));
    }

    #[test]
    fn cli_candidate_checks() {
        let f = feip(
            json!({"allocationId": "eipalloc-0123456789abcdef0", "candidates": [{"node": "a"}, {"node": "b"}]}),
            None,
        );
        assert_eq!(check_candidate(&f, "a", None), Ok(()));
        let err = check_candidate(&f, "z", None).expect_err("not a candidate");
        assert_eq!(
            err.to_string(),
            "node \"z\" is not a candidate of floatingelasticip \"web\" (candidates: a, b)"
        );

        let f = feip(
            json!({"allocationId": "eipalloc-0123456789abcdef0", "nodeSelector": {"matchLabels": {"role": "edge"}}}),
            None,
        );
        let edge = node("e1", json!({"role": "edge"}));
        let other = node("o1", json!({"role": "db"}));
        assert_eq!(check_candidate(&f, "e1", Some(&edge)), Ok(()));
        assert!(matches!(
            check_candidate(&f, "o1", Some(&other)),
            Err(CliError::SelectorMismatch { .. })
        ));
        assert_eq!(
            check_candidate(&f, "x", None),
            Err(CliError::NodeNotFound("x".into()))
        );

        let f = feip(
            json!({"allocationId": "eipalloc-0123456789abcdef0", "candidates": [{"node": "a"}], "bans": [{"node": "a"}]}),
            None,
        );
        assert_eq!(
            check_not_banned(&f, "a").map_err(|e| e.to_string()),
            Err(
                "node \"a\" is banned from floatingelasticip \"web\"; run `feip clear web a` first"
                    .into()
            )
        );
    }

    #[test]
    fn cli_error_messages_name_the_thing() {
        assert_eq!(
            CliError::NotFound {
                name: "x".into(),
                namespace: "y".into()
            }
            .to_string(),
            "floatingelasticip \"x\" not found in namespace \"y\""
        );
        assert_eq!(
            CliError::NodeNotFound("n".into()).to_string(),
            "node \"n\" not found"
        );
    }
}
