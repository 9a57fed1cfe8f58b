//! `status::Conditions` (the one builder of conditions) and `status::blocked_release_status`
//! (the status written when a release on deletion fails).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{ConditionReason, ConditionType, Phase};

use super::super::status::{Conditions, blocked_release_status};
use super::fixtures::*;

fn old(type_: &str, status: &str, at: i64) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: "Old".into(),
        message: "old".into(),
        observed_generation: Some(1),
        last_transition_time: Time(ts(at)),
    }
}

#[test]
fn builder_keeps_the_transition_time_only_while_the_status_is_unchanged() {
    let before = [
        old("Degraded", "False", -50),
        old("Ready", "False", -100),
        old("Gone", "True", -7),
    ];
    let mut c = Conditions::new(&before, Some(3), now());
    c.set(ConditionType::Degraded, false, "AsExpected", "no problems")
        .set(ConditionType::Ready, true, "Active", "Active")
        .set(ConditionType::Blocked, false, "NotBlocked", "not blocked");
    let got: Vec<_> = c
        .into_vec()
        .into_iter()
        .map(|c| {
            (
                c.type_,
                c.status,
                c.reason,
                c.message,
                c.observed_generation,
                c.last_transition_time,
            )
        })
        .collect();
    let row = |t: &str, s: &str, r: &str, m: &str, at| {
        (t.into(), s.into(), r.into(), m.into(), Some(3), Time(at))
    };
    assert_eq!(
        got,
        vec![
            // Unchanged status, new reason and message: the old time stays.
            row("Degraded", "False", "AsExpected", "no problems", ts(-50)),
            // Flipped: now.
            row("Ready", "True", "Active", "Active", now()),
            // New: now. An old condition not set again ("Gone") is dropped.
            row("Blocked", "False", "NotBlocked", "not blocked", now()),
        ]
    );
}

#[test]
fn blocked_release_keeps_the_status_and_restamps_blocked_at_the_end() {
    let t = |s: i64| serde_json::to_value(Time(ts(s))).expect("time");
    let f = feip_with(
        spec(serde_json::json!({})),
        Some(serde_json::json!({
            "phase": "Active",
            "failoverCount": 4,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Active", "message": "Active",
                 "lastTransitionTime": t(-100)},
                {"type": "Blocked", "status": "True", "reason": "DisassociateFailed",
                 "message": "earlier", "lastTransitionTime": t(-60)},
                {"type": "Degraded", "status": "False", "reason": "AsExpected",
                 "message": "no problems", "lastTransitionTime": t(-50)},
            ],
        })),
    );
    let st = blocked_release_status(&f, "DisassociateAddress failed: boom".into(), now());
    assert_eq!(st.phase, Some(Phase::Blocked));
    assert_eq!(st.failover_count, 4);
    let types: Vec<_> = st.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Ready", "Degraded", "Blocked"]);
    assert_eq!(cond(&st, "Ready").last_transition_time, Time(ts(-100)));
    let b = cond(&st, ConditionType::Blocked.as_str());
    assert_eq!(
        (
            b.status.as_str(),
            b.reason.as_str(),
            b.message.as_str(),
            b.observed_generation,
        ),
        (
            "True",
            ConditionReason::DisassociateFailed.as_str(),
            "DisassociateAddress failed: boom",
            Some(3),
        )
    );
    // Today's behaviour: every failed release restarts the time, even when Blocked was True.
    assert_eq!(b.last_transition_time, Time(now()));
}
