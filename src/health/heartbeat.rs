//! When kubelet heartbeat silence says nothing about the nodes (no client, no clock): the
//! heartbeat watch stalled, or every candidate of an address went silent together. Both are
//! observation problems (an apiserver, etcd or watch problem), so the silence reads as
//! unknown, never as death. The model is the node lifecycle controller's full-disruption rule:
//! when every node of a zone stops reporting at once it stops evicting, because the likeliest
//! cause is the control plane, not the nodes.

use std::time::Duration;

/// Longest a working heartbeat watch goes without seeing any kubelet renew (a kubelet renews
/// every 10 s, with jitter and API latency on top). Beyond it, with nodes in the cluster, the
/// watch is taken as stalled: a black-holed connection, a lagging watch cache.
pub const WATCH_STALL: Duration = Duration::from_secs(15);

/// A candidate whose heartbeat changed within this span shows that the control plane records
/// heartbeats for this address's nodes: half the address's heartbeat timeout.
///
/// Why half: two limits pull against each other. (1) A single node dying must be seen as fast
/// as before, when its heartbeat passes the timeout: then every other candidate must look
/// fresh, i.e. the bound must exceed the kubelet renew interval (10 s). (2) When every kubelet
/// goes silent at the same instant, the first to pass the timeout must not find another
/// candidate still fresh: the bound must stay below the timeout minus the renew interval (the
/// most two renewal phases differ). With the default 40 s timeout half is 20 s, inside both
/// (10 s .. 30 s). With a timeout under 20 s no bound satisfies both; half then errs towards
/// (2): a death may be seen up to `interval - timeout/2` late, never a false one.
pub fn fresh_bound(timeout: Duration) -> Duration {
    timeout / 2
}

/// Why the heartbeat silence of these candidates cannot be read as death, if it cannot.
/// `ages`: the observed heartbeat ages of the address's candidates that have a heartbeat Lease
/// (already restarted after observation gaps); `watch_idle`: how long the heartbeat watch has
/// observed no renewal of any node (over observed time; `None`: none seen yet).
pub fn heartbeat_gap(
    ages: &[Duration],
    timeout: Duration,
    watch_idle: Option<Duration>,
) -> Option<String> {
    if let Some(idle) = watch_idle
        && idle > WATCH_STALL
    {
        return Some(format!(
            "no kubelet heartbeat in the cluster was seen renewing for {}s (the heartbeat watch \
             is stalled, or the API is not recording renewals)",
            idle.as_secs()
        ));
    }
    // One candidate has nothing to compare with: its silence is judged alone (and the
    // cluster-wide rule above still covers a stalled watch).
    if ages.len() < 2 {
        return None;
    }
    let freshest = ages.iter().min().copied()?;
    (freshest > fresh_bound(timeout)).then(|| {
        format!(
            "every candidate's kubelet heartbeat is silent (the freshest for {}s): a \
             control-plane problem, not node death",
            freshest.as_secs()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(40);

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn one_silent_node_among_renewing_ones_is_no_gap() {
        // The holder passed the timeout; the other candidate renewed 9 s ago (within the
        // 10 s kubelet interval): a death, seen at the timeout as before.
        assert_eq!(heartbeat_gap(&[s(41), s(9)], TIMEOUT, Some(s(1))), None);
        // Up to half the timeout the other still counts as renewing.
        assert_eq!(heartbeat_gap(&[s(41), s(20)], TIMEOUT, Some(s(1))), None);
    }

    #[test]
    fn every_candidate_silent_together_is_a_gap() {
        // Every kubelet stopped at g; the holder renewed 9 s before g, the other 1 s before.
        // At g + 31 s the holder passes the timeout while the other is 32 s silent.
        let why = heartbeat_gap(
            &[s(40) + Duration::from_millis(1), s(32)],
            TIMEOUT,
            Some(s(1)),
        )
        .expect("a full disruption");
        assert!(
            why.contains("every candidate") && why.contains("32s"),
            "{why}"
        );
        // Just past half the timeout the freshest no longer vouches for the control plane.
        assert!(heartbeat_gap(&[s(41), s(21)], TIMEOUT, None).is_some());
        // Three candidates: one renewing is enough to make the others' silence a death.
        assert_eq!(heartbeat_gap(&[s(45), s(44), s(3)], TIMEOUT, None), None);
    }

    #[test]
    fn a_stalled_watch_is_a_gap_for_every_address() {
        let why = heartbeat_gap(&[s(41)], TIMEOUT, Some(s(16))).expect("a stalled watch");
        assert!(why.contains("stalled") && why.contains("16s"), "{why}");
        assert!(heartbeat_gap(&[s(41), s(2)], TIMEOUT, Some(s(16))).is_some());
        // Renewals seen within the bound: the watch works.
        assert_eq!(heartbeat_gap(&[s(41)], TIMEOUT, Some(WATCH_STALL)), None);
    }

    #[test]
    fn a_single_candidate_is_judged_alone() {
        assert_eq!(heartbeat_gap(&[s(41)], TIMEOUT, Some(s(1))), None);
        assert_eq!(heartbeat_gap(&[], TIMEOUT, None), None);
    }

    #[test]
    fn the_fresh_bound_is_half_the_timeout() {
        assert_eq!(fresh_bound(TIMEOUT), s(20));
        assert_eq!(fresh_bound(s(10)), s(5));
    }
}
