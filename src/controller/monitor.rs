//! The EC2 monitor: one batched DescribeAddresses and DescribeInstances per interval for every
//! address, merged into the shared view ([`Ec2View::merge`], no client), then reconciles of
//! just the addresses whose EC2 state changed.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::reflector::Store;

use crate::aws::{
    AddressInfo, AddressSnapshot, Ec2Error, InstanceInfo, instance_id_from_provider_id,
};
use crate::crd::FloatingElasticIP;

use super::context::{CONSISTENCY_WINDOW, Ec2View, Written};
use super::context::{Context, lock};
use super::spec::DEFAULT_MONITOR_INTERVAL;
use super::triggers::reconcile_addresses;

/// The shortest monitor interval any address asks for.
pub(super) fn shortest_monitor_interval(feips: &Store<FloatingElasticIP>) -> Duration {
    feips
        .state()
        .iter()
        .filter_map(|f| {
            f.spec
                .monitor
                .as_ref()
                .and_then(|m| m.interval)
                .map(Duration::from)
        })
        .min()
        .unwrap_or(DEFAULT_MONITOR_INTERVAL)
        .max(Duration::from_secs(1))
}

/// The longest pause between monitor passes while EC2 reads fail (unless the interval is
/// longer): how late, at most, the end of an outage is noticed.
pub(super) const MONITOR_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The pause before the next monitor pass after `errors` failed passes in a row (0: the
/// interval): the interval doubling per failure up to [`MONITOR_BACKOFF_MAX`] (or the interval
/// when that is longer), jittered +-20 % so replicas and retries do not synchronise (rule 8:
/// jittered backoff on throttling).
pub(super) fn monitor_pause(interval: Duration, errors: u32, jitter: f64) -> Duration {
    if errors == 0 {
        return interval;
    }
    let cap = MONITOR_BACKOFF_MAX.max(interval);
    interval
        .saturating_mul(1u32 << errors.saturating_sub(1).min(16))
        .min(cap)
        .mul_f64(jitter)
}

/// One batched DescribeAddresses (and DescribeInstances) per interval for every address.
/// After a failed read it backs off ([`monitor_pause`]), and wake-ups by reconciles do not
/// bring the next pass forward meanwhile: nothing else reads EC2 that often during an outage.
pub(super) async fn monitor(ctx: Arc<Context>, mut trigger: futures::channel::mpsc::Sender<()>) {
    let mut last = Instant::now() - Duration::from_secs(3600);
    let mut errors: u32 = 0;
    let mut jitter = 1.0;
    loop {
        let interval = shortest_monitor_interval(&ctx.feips);
        let next = last + monitor_pause(interval, errors, jitter);
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = ctx.monitor_wake.notified() => {
                if errors > 0 && ctx.leadership.is_leader() {
                    // Backing off: the wake-up waits for the pass due.
                    continue;
                }
                // Coalesce bursts of wake-ups (many new addresses at once) into one call.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        ctx.probes.collect_garbage(Duration::from_secs(60));
        if !ctx.leadership.is_leader() {
            // Followers do not spend the account's EC2 budget. A new leadership reads at once.
            last = Instant::now();
            errors = 0;
            continue;
        }
        last = Instant::now();
        let feips = ctx.feips.state();
        ctx.metrics.set_managed_addresses(feips.len());
        let mut alloc_ids: Vec<String> = feips
            .iter()
            .filter_map(|f| f.spec.allocation_id.clone())
            .collect();
        let mut public_ips: Vec<String> = feips
            .iter()
            .filter_map(|f| f.spec.public_ip.clone())
            .collect();
        alloc_ids.sort();
        alloc_ids.dedup();
        public_ips.sort();
        public_ips.dedup();
        let mut instance_ids: Vec<String> = ctx
            .nodes
            .state()
            .iter()
            .filter_map(|n| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.provider_id.as_deref())
                    .and_then(instance_id_from_provider_id)
            })
            .collect();
        instance_ids.sort();
        instance_ids.dedup();

        let started = Instant::now();
        let answer = Answer {
            addresses: ctx.ec2.describe_addresses(&alloc_ids, &public_ips).await,
            instances: ctx.ec2.describe_instances(&instance_ids).await,
            started,
            asked_addresses: alloc_ids.iter().chain(public_ips.iter()).cloned().collect(),
            asked_instances: instance_ids,
        };
        let fresh = ctx
            .fresh_since_leadership
            .load(std::sync::atomic::Ordering::SeqCst);
        let failed = answer.addresses.is_err() || answer.instances.is_err();
        errors = if failed { errors.saturating_add(1) } else { 0 };
        jitter = rand::random_range(0.8..1.2);
        let changed = lock(&ctx.view).merge(answer);
        if changed.readable {
            ctx.fresh_since_leadership
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        // A new leader's first read concerns every address.
        let everything = changed.everything || !fresh;
        let changed_keys = changed.keys;
        if everything {
            let _ = trigger.try_send(());
        } else {
            reconcile_addresses(&ctx, &changed_keys);
        }
    }
}

/// One monitor pass's EC2 answers and what it asked for.
pub(super) struct Answer {
    pub(super) addresses: Result<AddressSnapshot, Ec2Error>,
    pub(super) instances: Result<BTreeMap<String, InstanceInfo>, Ec2Error>,
    /// When the pass's DescribeAddresses started.
    pub(super) started: Instant,
    /// The allocation ids and public IPs asked for.
    pub(super) asked_addresses: Vec<String>,
    pub(super) asked_instances: Vec<String>,
}

/// What a monitor pass changed in the view.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ChangedKeys {
    /// Reconcile every address: when reads start or stop failing, or on new instance data.
    pub(super) everything: bool,
    /// Otherwise these: allocation ids and public IPs that moved, appeared, disappeared or
    /// were looked up for the first time.
    pub(super) keys: HashSet<String>,
    /// DescribeAddresses answered (the view is fresh).
    pub(super) readable: bool,
}

impl Ec2View {
    /// Merges one pass's answers (no client). What this process confirmed after the read
    /// started is newer than the read and is kept: a stale answer would look like drift and
    /// move the address again. Instance data is kept across errors.
    pub(super) fn merge(&mut self, answer: Answer) -> ChangedKeys {
        let Answer {
            addresses,
            instances,
            started,
            asked_addresses,
            asked_instances,
        } = answer;
        // An error that starts or ends concerns every address (its status says whether EC2
        // is known); one that goes on does not: those addresses back off, and reconciling
        // them all on each failed pass was most of the load of an outage.
        let mut changed = ChangedKeys {
            everything: self.addresses_error.is_some() != addresses.is_err()
                || self.instances_error.is_some() != instances.is_err()
                || instances.as_ref().is_ok_and(|m| *m != self.instances),
            ..ChangedKeys::default()
        };
        match addresses {
            Ok(mut snapshot) => {
                // Ours is newer than this answer: the read started before the change, or it
                // still shows the association the change replaced, within the window.
                let stale = |id: &String, w: &Written| {
                    w.at >= started
                        || (w.at.elapsed() < CONSISTENCY_WINDOW
                            && w.unseen_replacing.as_ref().is_some_and(|replaced| {
                                snapshot
                                    .by_allocation
                                    .get(id)
                                    .is_some_and(|a| a.association_id == *replaced)
                            }))
                };
                let newer: Vec<AddressInfo> = self
                    .written
                    .iter()
                    .filter(|(id, w)| stale(id, w))
                    .filter_map(|(id, _)| self.addresses.by_allocation.get(id).cloned())
                    .collect();
                self.written.retain(|id, w| stale(id, w));
                for a in newer {
                    snapshot.insert(a);
                }
                self.address_reads += 1;
                let moved = snapshot
                    .by_allocation
                    .iter()
                    .filter(|(id, a)| self.addresses.by_allocation.get(*id) != Some(*a));
                let gone = self
                    .addresses
                    .by_allocation
                    .iter()
                    .filter(|(id, _)| !snapshot.by_allocation.contains_key(*id));
                for (id, a) in moved.chain(gone) {
                    changed.keys.insert(id.clone());
                    changed.keys.insert(a.public_ip.clone());
                }
                for k in &asked_addresses {
                    if !self.covered.contains(k) {
                        changed.keys.insert(k.clone());
                    }
                }
                self.addresses = snapshot;
                self.covered = asked_addresses.into_iter().collect();
                self.addresses_at = Some(started);
                self.addresses_error = None;
            }
            Err(e) => self.addresses_error = Some(e.to_string()),
        }
        match instances {
            Ok(map) => {
                self.instances = map;
                self.instances_covered = asked_instances.into_iter().collect();
                self.instances_error = None;
            }
            Err(e) => self.instances_error = Some(e.to_string()),
        }
        changed.readable = self.addresses_error.is_none();
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(id: &str, ip: &str, eni: Option<&str>) -> AddressInfo {
        AddressInfo {
            allocation_id: id.into(),
            public_ip: ip.into(),
            network_interface_id: eni.map(str::to_string),
            ..AddressInfo::default()
        }
    }

    fn snapshot(list: &[AddressInfo]) -> AddressSnapshot {
        let mut s = AddressSnapshot::default();
        for a in list {
            s.insert(a.clone());
        }
        s
    }

    fn answer(list: &[AddressInfo], asked: &[&str], started: Instant) -> Answer {
        Answer {
            addresses: Ok(snapshot(list)),
            instances: Ok(BTreeMap::new()),
            started,
            asked_addresses: asked.iter().map(|s| s.to_string()).collect(),
            asked_instances: Vec::new(),
        }
    }

    fn keys(k: &[&str]) -> HashSet<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    fn unknown() -> Ec2Error {
        Ec2Error::Unknown {
            operation: "DescribeAddresses",
            reason: "timed out".into(),
            throttled: false,
        }
    }

    #[test]
    fn the_monitor_backs_off_on_errors_up_to_a_cap() {
        let s = Duration::from_secs;
        assert_eq!(monitor_pause(s(1), 0, 1.0), s(1));
        let steps: Vec<Duration> = (1..=6).map(|e| monitor_pause(s(1), e, 1.0)).collect();
        assert_eq!(steps, vec![s(1), s(2), s(4), s(5), s(5), s(5)]);
        assert_eq!(monitor_pause(s(1), u32::MAX, 1.0), MONITOR_BACKOFF_MAX);
        // A long interval is never shortened by an error, and the cap is the interval then.
        assert_eq!(monitor_pause(s(60), 3, 1.0), s(60));
        // Jitter scales the pause.
        assert_eq!(monitor_pause(s(1), 3, 0.8), Duration::from_millis(3200));
        assert_eq!(monitor_pause(s(1), 9, 1.2), Duration::from_secs(6));
    }

    #[test]
    fn first_lookups_moves_and_disappearances_are_changes() {
        let t0 = Instant::now();
        let mut v = Ec2View::default();
        let a = address("eipalloc-a", "198.51.100.1", Some("eni-1"));
        let b = address("eipalloc-b", "198.51.100.2", None);
        let c = v.merge(answer(
            &[a.clone(), b.clone()],
            &["eipalloc-a", "eipalloc-b"],
            t0,
        ));
        assert!(!c.everything && c.readable);
        assert_eq!(
            c.keys,
            keys(&["eipalloc-a", "198.51.100.1", "eipalloc-b", "198.51.100.2"])
        );
        // Nothing changed: nothing to reconcile.
        let c = v.merge(answer(
            &[a.clone(), b.clone()],
            &["eipalloc-a", "eipalloc-b"],
            t0,
        ));
        assert_eq!(
            c,
            ChangedKeys {
                readable: true,
                ..ChangedKeys::default()
            }
        );
        // a moved, b vanished.
        let a2 = address("eipalloc-a", "198.51.100.1", Some("eni-2"));
        let c = v.merge(answer(&[a2], &["eipalloc-a", "eipalloc-b"], t0));
        assert_eq!(
            c.keys,
            keys(&["eipalloc-a", "198.51.100.1", "eipalloc-b", "198.51.100.2"])
        );
        // A newly asked key not in EC2 is looked up for the first time.
        let c = v.merge(answer(&[], &["eipalloc-c"], t0));
        assert!(c.keys.contains("eipalloc-c"));
    }

    #[test]
    fn errors_make_everything_change_and_keep_instances() {
        let t0 = Instant::now();
        let mut v = Ec2View::default();
        let inst = InstanceInfo {
            instance_id: "i-1".into(),
            state: "running".into(),
            ..InstanceInfo::default()
        };
        let mut first = answer(&[], &[], t0);
        first.instances = Ok(BTreeMap::from([("i-1".to_string(), inst.clone())]));
        first.asked_instances = vec!["i-1".into()];
        assert!(v.merge(first).everything, "new instance data");
        let mut failed = answer(&[], &[], t0);
        failed.addresses = Err(unknown());
        failed.instances = Err(unknown());
        let c = v.merge(failed);
        assert!(c.everything && !c.readable);
        assert_eq!(v.instances.get("i-1"), Some(&inst), "kept across errors");
        assert!(v.addresses_error.is_some() && v.instances_error.is_some());
        // An error that goes on changes nothing more.
        let mut failed = answer(&[], &[], t0);
        failed.addresses = Err(unknown());
        failed.instances = Err(unknown());
        let c = v.merge(failed);
        assert!(!c.everything && !c.readable, "{c:?}");
        // The pass after an error concerns everything too, then things calm down.
        let mut ok = answer(&[], &[], t0);
        ok.instances = Ok(BTreeMap::from([("i-1".to_string(), inst.clone())]));
        assert!(v.merge(ok).everything);
        let mut ok = answer(&[], &[], t0);
        ok.instances = Ok(BTreeMap::from([("i-1".to_string(), inst)]));
        assert!(!v.merge(ok).everything);
    }

    #[test]
    fn a_change_confirmed_after_the_read_started_is_kept() {
        let before = Instant::now();
        let mut v = Ec2View::default();
        let old = address("eipalloc-a", "198.51.100.1", Some("eni-1"));
        v.merge(answer(std::slice::from_ref(&old), &["eipalloc-a"], before));
        let started = Instant::now();
        // This process moved the address after the next read started.
        let moved = address("eipalloc-a", "198.51.100.1", Some("eni-2"));
        v.record(moved.clone());
        let c = v.merge(answer(&[old], &["eipalloc-a"], started));
        assert_eq!(v.addresses.by_allocation.get("eipalloc-a"), Some(&moved));
        assert!(c.keys.is_empty(), "the stale answer is no drift: {c:?}");
        // A read that started later supersedes it.
        let later = Instant::now();
        let back = AddressInfo {
            association_id: Some("eipassoc-back".into()),
            ..address("eipalloc-a", "198.51.100.1", Some("eni-1"))
        };
        let c = v.merge(answer(std::slice::from_ref(&back), &["eipalloc-a"], later));
        assert_eq!(v.addresses.by_allocation.get("eipalloc-a"), Some(&back));
        assert!(c.keys.contains("eipalloc-a"));
    }

    #[test]
    fn within_the_consistency_window_an_answer_showing_the_replaced_association_is_stale() {
        let mut v = Ec2View::default();
        let with = |eni: &str, assoc: Option<&str>| AddressInfo {
            association_id: assoc.map(str::to_string),
            ..address("eipalloc-a", "198.51.100.1", Some(eni))
        };
        let old = with("eni-1", Some("eipassoc-old"));
        v.merge(answer(
            std::slice::from_ref(&old),
            &["eipalloc-a"],
            Instant::now(),
        ));
        assert_eq!(v.address_reads, 1);
        let ours = with("eni-2", Some("eipassoc-ours"));
        v.record_unseen(ours.clone(), Some("eipassoc-old".into()));
        // Reads that start after the change but still show the old association: stale.
        for _ in 0..3 {
            let c = v.merge(answer(
                std::slice::from_ref(&old),
                &["eipalloc-a"],
                Instant::now(),
            ));
            assert_eq!(v.addresses.by_allocation.get("eipalloc-a"), Some(&ours));
            assert!(c.keys.is_empty(), "no drift from a lagging read: {c:?}");
        }
        assert_eq!(v.address_reads, 4, "each read counts");
        // EC2 catches up: ours is confirmed and the record is done with.
        v.merge(answer(
            std::slice::from_ref(&ours),
            &["eipalloc-a"],
            Instant::now(),
        ));
        assert!(v.written.is_empty());
        // A third association (someone else moved it) is news at once, window or not.
        v.record_unseen(ours.clone(), Some("eipassoc-old".into()));
        let other = with("eni-3", Some("eipassoc-other"));
        let c = v.merge(answer(
            std::slice::from_ref(&other),
            &["eipalloc-a"],
            Instant::now(),
        ));
        assert_eq!(v.addresses.by_allocation.get("eipalloc-a"), Some(&other));
        assert!(c.keys.contains("eipalloc-a"));
        // After the window, even the replaced association is believed.
        v.record_unseen(ours.clone(), Some("eipassoc-old".into()));
        v.written.get_mut("eipalloc-a").unwrap().at -= CONSISTENCY_WINDOW;
        v.merge(answer(
            std::slice::from_ref(&old),
            &["eipalloc-a"],
            Instant::now(),
        ));
        assert_eq!(v.addresses.by_allocation.get("eipalloc-a"), Some(&old));
    }
}
