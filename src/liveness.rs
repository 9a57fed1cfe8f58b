//! What `/healthz` answers: whether this process still makes progress, so that the kubelet
//! restarts a replica that would otherwise keep leading while doing nothing.
//!
//! Unhealthy when
//! - a background task of the controller (caches and watches, heartbeats, EC2 monitor,
//!   triggers) has ended or panicked: nothing restarts it inside the process; or
//! - this replica leads and a reconcile has been running for longer than the stuck bound
//!   (`--stuck-reconcile-after`, 120 s by default). Every Kubernetes call of a reconcile has a
//!   deadline, so a reconcile only runs that long if something unbounded is left (a bug):
//!   while it runs, that address gets no failover. A follower's reconciles return at once,
//!   and a stuck one matters only once it leads again, so followers are not judged.
//!
//! The default bound is above the longest legitimate reconcile with the defaults: the EC2
//! calls of a move (a read back, AssociateAddress, each up to 2 × `--ec2-timeout` = 4 s, plus
//! budget waits), a confirmation window of up to `monitor.timeout` (at most 60 s), and about
//! five Kubernetes calls of up to `--kube-timeout` (5 s) each: about 95 s in the worst case.
//! With the chart's liveness probe (every 10 s, 3 failures) a stuck replica is restarted
//! about 2.5 minutes after the reconcile started.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::leader::Leadership;

/// Progress of the controller's work, read by `/healthz`.
pub struct Liveness {
    leadership: Leadership,
    stuck_after: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next: u64,
    /// Reconciles running now: id -> (object, started).
    running: BTreeMap<u64, (String, Instant)>,
    /// Background tasks that ended, and how.
    ended: Vec<String>,
}

/// Held while a reconcile runs; dropping it (at the end, or when the reconcile future is
/// dropped) records that it is over.
pub struct Running {
    liveness: Arc<Liveness>,
    id: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.liveness.state().running.remove(&self.id);
    }
}

impl Liveness {
    pub fn new(leadership: Leadership, stuck_after: Duration) -> Arc<Self> {
        Arc::new(Self {
            leadership,
            stuck_after,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that a reconcile of `object` starts; it ends when the guard is dropped.
    pub fn reconcile_started(self: &Arc<Self>, object: String) -> Running {
        let mut s = self.state();
        let id = s.next;
        s.next += 1;
        s.running.insert(id, (object, Instant::now()));
        Running {
            liveness: self.clone(),
            id,
        }
    }

    /// Records that a background task ended (`how`: returned, panicked, ...).
    pub fn task_ended(&self, task: &str, how: &str) {
        tracing::error!(
            task,
            how,
            "controller background task ended; /healthz fails"
        );
        self.state().ended.push(format!("{task} {how}"));
    }

    /// `Ok` when healthy, else why not.
    pub fn check(&self) -> Result<(), String> {
        let s = self.state();
        verdict(
            &s.ended,
            s.running.values().map(|(o, at)| (o.as_str(), *at)),
            self.leadership.is_leader(),
            self.stuck_after,
            Instant::now(),
        )
    }
}

/// The rule of the module docs, on plain data.
fn verdict<'a>(
    ended: &[String],
    running: impl Iterator<Item = (&'a str, Instant)>,
    leading: bool,
    stuck_after: Duration,
    now: Instant,
) -> Result<(), String> {
    if let Some(first) = ended.first() {
        return Err(format!("background task {first}"));
    }
    if !leading {
        return Ok(());
    }
    match running.min_by_key(|(_, at)| *at) {
        Some((object, at)) if now.saturating_duration_since(at) >= stuck_after => Err(format!(
            "reconcile of {object} running for {:?} (bound {stuck_after:?})",
            now.saturating_duration_since(at)
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let bound = s(60);
        let at = |t: u64| t0 + s(t);
        // Nothing running, or everything young: healthy.
        assert!(verdict(&[], std::iter::empty(), true, bound, at(100)).is_ok());
        assert!(
            verdict(
                &[],
                [("a", at(50)), ("b", at(90))].into_iter(),
                true,
                bound,
                at(100)
            )
            .is_ok()
        );
        // The oldest reconcile passed the bound while leading.
        let err = verdict(
            &[],
            [("b", at(90)), ("a", at(30))].into_iter(),
            true,
            bound,
            at(100),
        )
        .expect_err("a has run 70 s");
        assert!(err.contains("reconcile of a running for 70s"), "{err}");
        // A follower is not judged by its reconciles.
        assert!(verdict(&[], [("a", at(0))].into_iter(), false, bound, at(100)).is_ok());
        // An ended task fails either way.
        let ended = vec!["monitor panicked".to_string()];
        let err = verdict(&ended, std::iter::empty(), false, bound, at(0)).expect_err("ended");
        assert_eq!(err, "background task monitor panicked");
    }

    #[test]
    fn a_dropped_guard_ends_the_reconcile() {
        let l = Liveness::new(Leadership::new(), Duration::ZERO);
        let guard = l.reconcile_started("ns/a".into());
        assert_eq!(l.state().running.len(), 1);
        drop(guard);
        assert!(l.state().running.is_empty());
        l.task_ended("monitor", "returned");
        assert_eq!(l.check(), Err("background task monitor returned".into()));
    }
}
