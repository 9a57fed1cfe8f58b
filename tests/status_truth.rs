//! Status and events that tell the truth: each holder change is readable as what it was in
//! `kubectl describe` (events.k8s.io series keep the note of their first occurrence, so a
//! change must not be folded into an earlier one's series), and an EC2 read storm alone does
//! not turn a healthy, confirmed address into `Associating` / `Ready=False`.
//!
//! Results are summarised in docs/reliability.md.

use feip::crd::Phase;
use feip::testenv::scenario::{Scenario, active_on, condition};
use feip::testenv::{AZ_A, AZ_C, Fault, FaultRule};

/// The notes of this object's events whose note starts with `prefix`, each as often as it
/// occurred (a series is one object with a count; its note is that of its first occurrence).
/// By note, not reason, so planned moves and failovers count alike whatever their reasons.
async fn notes(s: &Scenario, name: &str, prefix: &str) -> anyhow::Result<Vec<String>> {
    Ok(s.events(name)
        .await?
        .into_iter()
        .filter_map(|e| {
            let times = e.series.as_ref().map_or(1, |s| s.count);
            let note = e.note.filter(|n| n.starts_with(prefix))?;
            Some(vec![note; usize::try_from(times).unwrap_or(1)])
        })
        .flatten()
        .collect())
}

async fn move_to(s: &Scenario, node: usize) -> anyhow::Result<()> {
    s.patch_spec(
        "web",
        serde_json::json!({"pin": {"node": s.node(node), "clearWhenDone": true}}),
    )
    .await?;
    s.wait_status("web", &format!("active on {node}"), |st| {
        active_on(st, s.node(node))
    })
    .await?;
    Ok(())
}

/// Three planned moves n0 -> n1 -> n0 -> n1: every one is its own event, its note naming its
/// own direction and its own duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_holder_change_is_an_event_of_its_own() -> anyhow::Result<()> {
    let mut s = Scenario::new("truth-events", &[AZ_A, AZ_C]).await?;
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    for node in [1, 0, 1] {
        move_to(&s, node).await?;
    }
    let changes = notes(&s, "web", "holder ").await?;
    let arrow = |a: usize, b: usize| format!("{} -> {}", s.node(a), s.node(b));
    for (from, to, times) in [(0, 1, 2), (1, 0, 1)] {
        let seen = changes
            .iter()
            .filter(|n| n.contains(&arrow(from, to)))
            .count();
        assert_eq!(
            seen,
            times,
            "holder changes {} in the events: {changes:?}",
            arrow(from, to)
        );
    }
    let completions = notes(&s, "web", "address confirmed on ").await?;
    assert_eq!(
        completions.len(),
        3,
        "one completion per change: {completions:?}"
    );
    Ok(())
}

/// Every Describe* throttled for longer than the read-age bound, with a healthy holder that
/// has the address: the state is unknown (Degraded says so) but nothing contradicts the last
/// confirmed one, so the phase stays Active and Ready stays True.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_storm_alone_keeps_a_confirmed_address_active() -> anyhow::Result<()> {
    let mut s = Scenario::new("truth-storm", &[AZ_A, AZ_C]).await?;
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;
    for action in ["DescribeAddresses", "DescribeInstances"] {
        s.proxy.inject(FaultRule::always(action, Fault::Throttle));
    }
    let st = s
        .wait_status("web", "EC2 unknown past the bound", |st| {
            condition(st, "Degraded")
                .is_some_and(|c| c.reason == "Ec2Unknown" && c.message.contains("bound"))
        })
        .await?;
    let ready = condition(&st, "Ready").map(|c| (c.status.clone(), c.reason.clone()));
    assert_eq!(
        (st.phase, ready),
        (
            Some(Phase::Active),
            Some(("True".to_string(), "Active".to_string()))
        ),
        "throttling alone made the address look not ready: {:?}",
        st.conditions
    );
    s.proxy.clear_faults();
    Ok(())
}
