use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::reflector::Store;

use crate::aws::{AddressInfo, instance_id_from_provider_id};
use crate::crd::FloatingElasticIP;

use super::context::{Context, lock};
use super::spec::DEFAULT_MONITOR_INTERVAL;
use super::triggers::reconcile_addresses;

/// The shortest monitor interval any address asks for.
pub(super) fn monitor_interval(feips: &Store<FloatingElasticIP>) -> Duration {
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

/// One batched DescribeAddresses (and DescribeInstances) per interval for every address.
pub(super) async fn monitor(ctx: Arc<Context>, mut trigger: futures::channel::mpsc::Sender<()>) {
    let mut last = Instant::now() - Duration::from_secs(3600);
    loop {
        let interval = monitor_interval(&ctx.feips);
        let next = last + interval;
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = ctx.monitor_wake.notified() => {
                // Coalesce bursts of wake-ups (many new addresses at once) into one call.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        ctx.probes.collect_garbage(Duration::from_secs(60));
        if !ctx.leadership.is_leader() {
            // Followers do not spend the account's EC2 budget.
            last = Instant::now();
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
        let addresses = ctx.ec2.describe_addresses(&alloc_ids, &public_ips).await;
        let instances = ctx.ec2.describe_instances(&instance_ids).await;
        // What this pass changed: everything after errors, new instance data or a leadership
        // change; otherwise only the addresses that moved or were looked up for the first time.
        let mut everything = !ctx
            .fresh_since_leadership
            .load(std::sync::atomic::Ordering::SeqCst);
        let mut changed_keys: HashSet<String> = HashSet::new();
        {
            let mut view = lock(&ctx.view);
            everything |= view.addresses_error.is_some() || view.instances_error.is_some();
            everything |= addresses.is_err() || instances.is_err();
            everything |= instances.as_ref().is_ok_and(|m| *m != view.instances);
            match addresses {
                Ok(mut snapshot) => {
                    // What this process confirmed after the read started is newer than the
                    // read: keep it (a stale answer would look like drift and move the address
                    // again).
                    let newer: Vec<AddressInfo> = view
                        .written
                        .iter()
                        .filter(|(_, at)| **at >= started)
                        .filter_map(|(id, _)| view.addresses.by_allocation.get(id).cloned())
                        .collect();
                    for a in newer {
                        snapshot.insert(a);
                    }
                    view.written.retain(|_, at| *at >= started);
                    for (id, a) in &snapshot.by_allocation {
                        if view.addresses.by_allocation.get(id) != Some(a) {
                            changed_keys.insert(id.clone());
                            changed_keys.insert(a.public_ip.clone());
                        }
                    }
                    for (id, a) in &view.addresses.by_allocation {
                        if !snapshot.by_allocation.contains_key(id) {
                            changed_keys.insert(id.clone());
                            changed_keys.insert(a.public_ip.clone());
                        }
                    }
                    for k in alloc_ids.iter().chain(public_ips.iter()) {
                        if !view.covered.contains(k) {
                            changed_keys.insert(k.clone());
                        }
                    }
                    view.addresses = snapshot;
                    view.covered = alloc_ids.iter().chain(public_ips.iter()).cloned().collect();
                    view.addresses_at = Some(started);
                    view.addresses_error = None;
                }
                Err(e) => view.addresses_error = Some(e.to_string()),
            }
            match instances {
                Ok(map) => {
                    view.instances = map;
                    view.instances_covered = instance_ids.into_iter().collect();
                    view.instances_error = None;
                }
                Err(e) => view.instances_error = Some(e.to_string()),
            }
            if view.addresses_error.is_none() {
                ctx.fresh_since_leadership
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        if everything {
            let _ = trigger.try_send(());
        } else {
            reconcile_addresses(&ctx, &changed_keys);
        }
    }
}
