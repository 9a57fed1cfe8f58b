use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::aws::{AddressInfo, instance_id_from_provider_id};
use crate::crd::{
    FloatingElasticIP, FloatingElasticIPStatus, Management, ProbeType, STANDBY_LABEL, TargetState,
};
use crate::decide::{
    CandidateView, Eligibility, FailureKind, FailureRecord, NodeHealth, Policy, Target,
};
use crate::health::{ProbeSpec, ProbeStatus};

use super::context::{Context, Runtime, lock};

/// Defaults of the spec (section 2 of the product spec).
pub const DEFAULT_MONITOR_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(40);
pub const DEFAULT_PROBE_PORT: u16 = 10250;
pub const DEFAULT_PROBE_PERIOD: Duration = Duration::from_secs(1);
pub const DEFAULT_PROBE_FAILURES: u32 = 3;

/// The spec, resolved against defaults.
pub(super) struct Resolved {
    pub(super) policy: Policy,
    pub(super) monitor_interval: Duration,
    /// How long a mutation may take to become visible in DescribeAddresses.
    pub(super) confirm_timeout: Duration,
    pub(super) heartbeat_timeout: Duration,
    pub(super) probe: Option<(u16, Option<String>, Duration, Duration, u32, u32)>,
    pub(super) device_index: i32,
}

pub(super) fn resolve(f: &FloatingElasticIP, now: Timestamp) -> Resolved {
    let s = &f.spec;
    let d = |x: Option<kube::core::Duration>| x.map(Duration::from);
    let to_ts = |t: &Option<Time>| t.as_ref().map(|t| t.0);
    let failure_timeout = d(s.failure_timeout).filter(|t| !t.is_zero());
    let _ = now;
    let policy = Policy {
        failback: s.failback.as_ref().map(|f| f.policy).unwrap_or_default(),
        hold_down: s
            .failback
            .as_ref()
            .and_then(|f| d(f.hold_down))
            .unwrap_or_default(),
        migration_threshold: s.migration_threshold.unwrap_or(1).max(1) as u32,
        failure_timeout,
        allow_takeover: s.allow_takeover.unwrap_or(false),
        stopped: s.target_state == Some(TargetState::Stopped),
        observe_only: s.management == Some(Management::ObserveOnly),
        stop_on_associate_failure: s.on_associate_failure
            == Some(crate::crd::AssociateFailurePolicy::Stop),
        pin: s
            .pin
            .as_ref()
            .map(|p| (p.node.clone(), to_ts(&p.expires_at))),
        bans: s
            .bans
            .iter()
            .flatten()
            .map(|b| (b.node.clone(), to_ts(&b.expires_at)))
            .collect(),
    };
    let probe_cfg = s
        .health
        .as_ref()
        .and_then(|h| h.probe.clone())
        .unwrap_or_default();
    let probe = match probe_cfg.kind {
        ProbeType::None => None,
        kind => {
            let period = d(probe_cfg.period).unwrap_or(DEFAULT_PROBE_PERIOD);
            let timeout = d(probe_cfg.timeout)
                .unwrap_or(Duration::from_secs(1))
                .min(period);
            let path = (kind == ProbeType::Http)
                .then(|| probe_cfg.path.clone().unwrap_or_else(|| "/healthz".into()));
            Some((
                probe_cfg.port.map_or(DEFAULT_PROBE_PORT, |p| p as u16),
                path,
                period,
                timeout,
                probe_cfg
                    .failure_threshold
                    .map_or(DEFAULT_PROBE_FAILURES, |v| v.max(1) as u32),
                probe_cfg.success_threshold.map_or(1, |v| v.max(1) as u32),
            ))
        }
    };
    Resolved {
        policy,
        confirm_timeout: s
            .monitor
            .as_ref()
            .and_then(|m| d(m.timeout))
            .unwrap_or(DEFAULT_CONFIRM_TIMEOUT),
        monitor_interval: s
            .monitor
            .as_ref()
            .and_then(|m| d(m.interval))
            .unwrap_or(DEFAULT_MONITOR_INTERVAL),
        heartbeat_timeout: s
            .health
            .as_ref()
            .and_then(|h| d(h.heartbeat_timeout))
            .unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT),
        probe,
        device_index: s
            .network_interface
            .as_ref()
            .and_then(|n| n.device_index)
            .unwrap_or(0),
    }
}

/// A candidate as listed (spec order) with its priority and optional secondary private IP.
pub(super) struct Listed {
    pub(super) node: String,
    pub(super) priority: i32,
    pub(super) private_ip: Option<String>,
}

pub(super) fn listed_candidates(f: &FloatingElasticIP, nodes: &Store<Node>) -> Vec<Listed> {
    if let Some(c) = &f.spec.candidates {
        return c
            .iter()
            .map(|c| Listed {
                node: c.node.clone(),
                priority: c.priority.unwrap_or(0),
                private_ip: c.private_ip_address.clone(),
            })
            .collect();
    }
    let Some(sel) = &f.spec.node_selector else {
        return Vec::new();
    };
    let mut names: Vec<String> = nodes
        .state()
        .iter()
        .filter(|n| selector_matches(sel, n.labels()))
        .map(|n| n.name_any())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|node| Listed {
            node,
            priority: 0,
            private_ip: None,
        })
        .collect()
}

pub(super) fn selector_matches(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    use kube::core::SelectorExt as _;
    let Ok(s) = kube::core::Selector::try_from(sel.clone()) else {
        return false;
    };
    s.matches(labels)
}

/// Everything known about one candidate.
pub(super) struct Gathered {
    pub(super) view: CandidateView,
    pub(super) instance_id: Option<String>,
    pub(super) dead_since: Option<Timestamp>,
    /// The node's probe started moments ago and has no verdict yet.
    pub(super) probe_pending: bool,
}

pub(super) fn gather_candidate(
    ctx: &Context,
    r: &Resolved,
    listed: &Listed,
    rt: &mut Runtime,
    now: Timestamp,
) -> Gathered {
    let node = ctx.nodes.get(&ObjectRef::new(&listed.node));
    let mut dead_since = None;
    let mut probe_pending = false;
    let view = |health, eligibility, target| CandidateView {
        node: listed.node.clone(),
        priority: listed.priority,
        health,
        eligibility,
        healthy_since: None,
        target,
    };
    let Some(node) = node else {
        rt.healthy_since.remove(&listed.node);
        return Gathered {
            view: view(
                NodeHealth::Dead {
                    reason: "Node object not found".into(),
                },
                Eligibility::Unresolvable {
                    reason: format!("node {} not found", listed.node),
                },
                None,
            ),
            instance_id: None,
            dead_since: None,
            probe_pending: false,
        };
    };

    // Eligibility: standby label, cordon/drain/termination taints, instance resolution.
    let labels = node.labels();
    let spec = node.spec.clone().unwrap_or_default();
    let terminating_taint = spec.taints.iter().flatten().any(|t| {
        t.key == "ToBeDeletedByClusterAutoscaler"
            || t.key == "node.kubernetes.io/out-of-service"
            || t.key == "karpenter.sh/disrupted"
    });
    let provider = spec.provider_id.as_deref();
    let instance_id = provider.and_then(instance_id_from_provider_id);
    let (instance, instances_covered, instances_error) = {
        let v = lock(&ctx.view);
        let i = instance_id
            .as_ref()
            .and_then(|id| v.instances.get(id).cloned());
        let covered = instance_id
            .as_ref()
            .is_some_and(|id| v.instances_covered.contains(id));
        (i, covered, v.instances_error.clone())
    };
    if instance_id.is_some() && instance.is_none() && !instances_covered {
        ctx.monitor_wake.notify_one();
    }
    let mut target = None;
    let mut eligibility = if labels.get(STANDBY_LABEL).is_some_and(|v| v == "true") {
        Eligibility::Standby
    } else if spec.unschedulable == Some(true) || terminating_taint {
        Eligibility::Cordoned
    } else {
        Eligibility::Eligible
    };
    let unresolvable = match (provider, &instance_id, &instance) {
        (None, _, _) => Some("node has no spec.providerID".to_string()),
        (Some(p), None, _) => Some(format!("providerID {p:?} is not an AWS instance")),
        (Some(p), Some(id), None) if instances_covered => {
            Some(match zone_outside_region(p, ctx.ec2.region()) {
                Some((zone, region)) => {
                    format!("instance {id} is in {zone}, outside this controller's region {region}")
                }
                None => format!("instance {id} not found in EC2 (wrong account or region?)"),
            })
        }
        (_, Some(_), None) => None, // not looked up yet or EC2 unknown: target stays unresolved
        (_, Some(_), Some(inst)) => match inst.interface(r.device_index) {
            None => Some(format!(
                "instance {} has no network interface at device index {}",
                inst.instance_id, r.device_index
            )),
            Some(eni) => {
                let ip = listed
                    .private_ip
                    .clone()
                    .unwrap_or_else(|| eni.primary_private_ip.clone());
                if eni.private_ips.contains(&ip) || ip == eni.primary_private_ip {
                    target = Some(Target {
                        instance_id: inst.instance_id.clone(),
                        network_interface_id: eni.network_interface_id.clone(),
                        private_ip: ip,
                    });
                    None
                } else {
                    Some(format!(
                        "private IP {ip} is not on interface {}",
                        eni.network_interface_id
                    ))
                }
            }
        },
    };
    if let Some(reason) = unresolvable
        && eligibility == Eligibility::Eligible
    {
        eligibility = Eligibility::Unresolvable { reason };
    }

    // Health: any definite "dead" signal wins; an unreadable signal is unknown.
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    let mut dead: Option<String> = None;
    let mut unknown: Option<String> = None;
    match ready.as_deref() {
        Some("True") => {}
        Some(other) => dead = Some(format!("node Ready={other}")),
        None => unknown = Some("node has no Ready condition".into()),
    }
    if dead.is_none()
        && let Some(age) = ctx.heartbeat_age(&listed.node)
        && age > r.heartbeat_timeout
    {
        if ctx.leadership.api_failing_since().is_some() {
            // Kubelets cannot renew through an API that cannot serve this replica either.
            unknown = Some(format!(
                "kubelet heartbeat unchanged for {}s while the API is failing this controller's requests",
                age.as_secs()
            ));
        } else {
            dead = Some(format!(
                "kubelet heartbeat unchanged for {}s",
                age.as_secs()
            ));
            dead_since = Some(
                now - jiff::SignedDuration::try_from(age - r.heartbeat_timeout).unwrap_or_default(),
            );
        }
    }
    if dead.is_none()
        && let Some(inst) = &instance
        && !inst.is_running()
    {
        if inst.state == "pending" {
            unknown = Some("instance is pending".into());
        } else {
            dead = Some(format!("instance {} is {}", inst.instance_id, inst.state));
        }
    }
    if instance.is_none() && instances_error.is_some() && unknown.is_none() {
        // No instance data at all yet: cannot tell.
        unknown = instances_error.map(|e| format!("instance state unknown: {e}"));
    }
    if let Some((port, path, period, timeout, failures, successes)) = &r.probe {
        let ip = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse::<IpAddr>().ok());
        match ip {
            None => {
                if unknown.is_none() {
                    unknown = Some("node has no InternalIP to probe".into());
                }
            }
            Some(ip) => {
                let state = ctx.probes.state(&ProbeSpec {
                    ip,
                    port: *port,
                    http_path: path.clone(),
                    period: *period,
                    timeout: *timeout,
                    failure_threshold: *failures,
                    success_threshold: *successes,
                });
                match state.status {
                    ProbeStatus::Dead if dead.is_none() => {
                        dead = Some(format!("probe of {ip}:{port} failed {failures} times"));
                        dead_since = Some(state.since_wall);
                    }
                    ProbeStatus::Unknown if unknown.is_none() => {
                        unknown = Some("probe has no verdict yet".into());
                        probe_pending = state.since.elapsed() < *period * 2 + *timeout;
                    }
                    _ => {}
                }
            }
        }
    }
    let health = match (dead, unknown) {
        (Some(reason), _) => NodeHealth::Dead { reason },
        (None, Some(reason)) => NodeHealth::Unknown { reason },
        (None, None) => NodeHealth::Healthy,
    };
    let healthy_since = if health == NodeHealth::Healthy {
        Some(*rt.healthy_since.entry(listed.node.clone()).or_insert(now))
    } else {
        rt.healthy_since.remove(&listed.node);
        None
    };
    let mut v = view(health, eligibility, target);
    v.healthy_since = healthy_since;
    Gathered {
        view: v,
        instance_id,
        dead_since,
        probe_pending,
    }
}

pub(super) fn failures_from_status(
    status: &FloatingElasticIPStatus,
) -> BTreeMap<String, FailureRecord> {
    status
        .nodes
        .iter()
        .filter(|n| n.failure_count > 0)
        .map(|n| {
            let kind = n
                .last_failure_reason
                .as_deref()
                .and_then(|r| FailureKind::parse(r.split(':').next().unwrap_or_default()))
                .unwrap_or(FailureKind::Drift);
            let record = FailureRecord {
                count: n.failure_count.max(0) as u32,
                last_failure: n
                    .last_failure
                    .as_ref()
                    .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
                kind,
                reason: n.last_failure_reason.clone().unwrap_or_default(),
            };
            (n.node.clone(), record)
        })
        .collect()
}

/// The address as EC2 last reported it, or None while unknown / not yet looked up.
pub(super) fn observe_address(
    ctx: &Context,
    f: &FloatingElasticIP,
) -> Result<Option<AddressInfo>, (bool, String)> {
    // A new leader acts only on EC2 data it read itself: until then the address is unknown,
    // so it decides nothing on EC2's behalf and adopts whatever it then finds (no remap).
    if !ctx
        .fresh_since_leadership
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        return Err((
            false,
            "no EC2 read yet since this replica became leader".into(),
        ));
    }
    let v = lock(&ctx.view);
    if let Some(e) = &v.addresses_error {
        return Err((false, e.clone()));
    }
    let (k, found) = match (&f.spec.allocation_id, &f.spec.public_ip) {
        (Some(a), _) => (a.clone(), v.addresses.by_allocation.get(a).cloned()),
        (None, Some(p)) => (p.clone(), v.addresses.by_public_ip.get(p).cloned()),
        (None, None) => return Err((true, "no address in spec".into())),
    };
    if found.is_some() {
        return Ok(found);
    }
    if v.covered.contains(&k) {
        Ok(None)
    } else {
        Err((false, "not looked up yet".into()))
    }
}

/// The availability zone of an `aws:///<zone>/<instance>` providerID when it is not in
/// `region` (EC2 only sees instances of its own region): `(zone, region)`.
pub(super) fn zone_outside_region(
    provider_id: &str,
    region: Option<&str>,
) -> Option<(String, String)> {
    let region = region?;
    let zone = provider_id
        .strip_prefix("aws://")?
        .trim_start_matches('/')
        .split('/')
        .next()
        .filter(|z| !z.is_empty() && !z.starts_with("i-"))?;
    (!zone.starts_with(region)).then(|| (zone.to_string(), region.to_string()))
}

/// Candidates whose instance is in another VPC than the address's network, with why.
///
/// An Elastic IP may legally be moved between the VPCs of a region, but candidates spread
/// over VPCs are a misconfiguration (a wrong node listed): feip never moves an address into
/// another network. The address's network is the VPC of the candidate interface it is on;
/// when it is on none, the VPC most candidates share (ties: the most preferred candidate's).
/// `candidates` = (node, VPC if known, interface if resolved), most preferred first.
pub(super) fn vpc_mismatches(
    candidates: &[(String, Option<String>, Option<String>)],
    associated_eni: Option<&str>,
) -> Vec<(String, String)> {
    let on = associated_eni.and_then(|eni| {
        candidates
            .iter()
            .find(|(_, vpc, e)| vpc.is_some() && e.as_deref() == Some(eni))
    });
    let (reference, why) = match on {
        Some((node, Some(vpc), _)) => (vpc.clone(), format!("where the address is (on {node})")),
        _ => {
            let mut counts: Vec<(&String, usize)> = Vec::new();
            for vpc in candidates.iter().filter_map(|(_, v, _)| v.as_ref()) {
                match counts.iter_mut().find(|(v, _)| *v == vpc) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((vpc, 1)),
                }
            }
            // max_by_key keeps the last maximum: iterate in reverse so ties go to the first.
            let Some((vpc, _)) = counts.iter().rev().max_by_key(|(_, n)| *n) else {
                return Vec::new();
            };
            ((*vpc).clone(), "shared by the other candidates".to_string())
        }
    };
    candidates
        .iter()
        .filter_map(|(node, vpc, _)| {
            let vpc = vpc.as_ref()?;
            (*vpc != reference).then(|| {
                (
                    node.clone(),
                    format!(
                        "instance is in {vpc}, not in the address's network {reference} ({why})"
                    ),
                )
            })
        })
        .collect()
}

/// The address an object names, for conflict detection: its allocation id, resolved from the
/// public IP through the last DescribeAddresses when the object names an IP.
pub(super) fn address_identity(
    f: &FloatingElasticIP,
    ip_to_allocation: &HashMap<String, String>,
) -> Option<String> {
    match (&f.spec.allocation_id, &f.spec.public_ip) {
        (Some(a), _) => Some(a.clone()),
        (None, Some(ip)) => Some(
            ip_to_allocation
                .get(ip)
                .cloned()
                .unwrap_or_else(|| format!("publicIp/{ip}")),
        ),
        (None, None) => None,
    }
}

/// When several objects name the same address, the oldest (creation time, then namespace,
/// then name) owns it. Returns the owner when it is not `me`; None when `me` owns the
/// address or nobody else names it.
pub(super) fn address_owner<'a>(
    me: &FloatingElasticIP,
    all: &'a [Arc<FloatingElasticIP>],
    identity: impl Fn(&FloatingElasticIP) -> Option<String>,
) -> Option<&'a Arc<FloatingElasticIP>> {
    let mine = identity(me)?;
    let rank = |f: &FloatingElasticIP| {
        (
            f.metadata
                .creation_timestamp
                .as_ref()
                .map_or(Timestamp::MAX, |t| t.0),
            f.metadata.namespace.clone().unwrap_or_default(),
            f.metadata.name.clone().unwrap_or_default(),
        )
    };
    let me_rank = rank(me);
    all.iter()
        .filter(|o| {
            (&o.metadata.namespace, &o.metadata.name) != (&me.metadata.namespace, &me.metadata.name)
        })
        .filter(|o| identity(o).as_deref() == Some(mine.as_str()))
        .min_by_key(|o| rank(o))
        .filter(|o| rank(o) < me_rank)
}

/// The object that owns the address `f` names, if that is another object. `observed` is the
/// allocation id `f`'s address was just observed to have, when known.
pub(super) fn conflicting_owner(
    ctx: &Context,
    f: &FloatingElasticIP,
    observed: Option<&str>,
) -> Option<Arc<FloatingElasticIP>> {
    let mut ip_to_allocation: HashMap<String, String> = lock(&ctx.view)
        .addresses
        .by_public_ip
        .iter()
        .map(|(ip, a)| (ip.clone(), a.allocation_id.clone()))
        .collect();
    if let (Some(ip), Some(a)) = (&f.spec.public_ip, observed) {
        ip_to_allocation.insert(ip.clone(), a.to_string());
    }
    let all = ctx.feips.state();
    address_owner(f, &all, |x| address_identity(x, &ip_to_allocation)).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::context::observed_age;

    fn feip(ns: &str, name: &str, created: i64, spec: serde_json::Value) -> Arc<FloatingElasticIP> {
        let mut f: FloatingElasticIP = serde_json::from_value(serde_json::json!({
            "apiVersion": "feip.io/v1alpha1", "kind": "FloatingElasticIP",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }))
        .expect("test object");
        f.metadata.creation_timestamp = Some(Time(
            Timestamp::from_second(1_767_225_600 + created).expect("valid time"),
        ));
        Arc::new(f)
    }

    fn alloc(id: &str) -> serde_json::Value {
        serde_json::json!({"allocationId": id, "candidates": [{"node": "a"}]})
    }

    fn owner_of(me: &FloatingElasticIP, all: &[Arc<FloatingElasticIP>]) -> Option<String> {
        let ips = HashMap::from([("203.0.113.10".to_string(), "eipalloc-1".to_string())]);
        address_owner(me, all, |f| address_identity(f, &ips))
            .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
    }

    #[test]
    fn the_oldest_object_owns_a_shared_address() {
        let first = feip("a", "web", 0, alloc("eipalloc-1"));
        let second = feip("a", "web2", 5, alloc("eipalloc-1"));
        let other_ns = feip("b", "web", 9, alloc("eipalloc-1"));
        let unrelated = feip("a", "api", -100, alloc("eipalloc-2"));
        let all = vec![
            second.clone(),
            other_ns.clone(),
            first.clone(),
            unrelated.clone(),
        ];
        assert_eq!(owner_of(&first, &all), None, "the oldest manages it");
        assert_eq!(owner_of(&second, &all).as_deref(), Some("a/web"));
        assert_eq!(owner_of(&other_ns, &all).as_deref(), Some("a/web"));
        assert_eq!(owner_of(&unrelated, &all), None);
        // The object being reconciled may not be in the cache yet: it still compares.
        let newest = feip("c", "late", 50, alloc("eipalloc-1"));
        assert_eq!(owner_of(&newest, &all).as_deref(), Some("a/web"));
        let oldest = feip("c", "early", -50, alloc("eipalloc-1"));
        assert_eq!(owner_of(&oldest, &all), None);
    }

    #[test]
    fn equal_creation_times_fall_back_to_namespace_and_name() {
        let x = feip("b", "x", 0, alloc("eipalloc-1"));
        let y = feip("a", "y", 0, alloc("eipalloc-1"));
        let z = feip("a", "z", 0, alloc("eipalloc-1"));
        let all = vec![x.clone(), y.clone(), z.clone()];
        assert_eq!(owner_of(&x, &all).as_deref(), Some("a/y"));
        assert_eq!(owner_of(&z, &all).as_deref(), Some("a/y"));
        assert_eq!(owner_of(&y, &all), None);
    }

    #[test]
    fn a_public_ip_conflicts_with_its_allocation_id_once_resolved() {
        let by_alloc = feip("a", "web", 0, alloc("eipalloc-1"));
        let by_ip = feip(
            "b",
            "web",
            1,
            serde_json::json!({"publicIp": "203.0.113.10", "candidates": [{"node": "a"}]}),
        );
        let unresolved = feip(
            "b",
            "other",
            2,
            serde_json::json!({"publicIp": "198.51.100.7", "candidates": [{"node": "a"}]}),
        );
        let all = vec![by_alloc.clone(), by_ip.clone(), unresolved.clone()];
        assert_eq!(owner_of(&by_ip, &all).as_deref(), Some("a/web"));
        assert_eq!(owner_of(&unresolved, &all), None);
    }

    #[test]
    fn zones_outside_the_region_are_named() {
        let r = Some("ap-northeast-1");
        assert_eq!(
            zone_outside_region("aws:///eu-west-1a/i-0abc", r),
            Some(("eu-west-1a".into(), "ap-northeast-1".into()))
        );
        assert_eq!(
            zone_outside_region("aws:///ap-northeast-1c/i-0abc", r),
            None
        );
        assert_eq!(zone_outside_region("aws://ap-northeast-1a/i-0abc", r), None);
        assert_eq!(zone_outside_region("aws:///i-0abc", r), None);
        assert_eq!(zone_outside_region("aws:///eu-west-1a/i-0abc", None), None);
    }

    #[test]
    fn candidates_outside_the_address_network_are_found() {
        let c = |node: &str, vpc: Option<&str>, eni: Option<&str>| {
            (
                node.to_string(),
                vpc.map(str::to_string),
                eni.map(str::to_string),
            )
        };
        let nodes = |m: Vec<(String, String)>| m.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        let placed = vec![
            c("a", Some("vpc-1"), Some("eni-a")),
            c("b", Some("vpc-2"), Some("eni-b")),
            c("c", Some("vpc-1"), Some("eni-c")),
            c("d", None, None),
        ];
        // Unassociated: the VPC most candidates share.
        assert_eq!(nodes(vpc_mismatches(&placed, None)), ["b"]);
        // On a foreign interface: the same.
        assert_eq!(nodes(vpc_mismatches(&placed, Some("eni-x"))), ["b"]);
        // On b: b's VPC is the address's network, whatever the others say.
        assert_eq!(nodes(vpc_mismatches(&placed, Some("eni-b"))), ["a", "c"]);
        let why = vpc_mismatches(&placed, Some("eni-a"));
        assert!(
            why[0].1.contains("vpc-2") && why[0].1.contains("vpc-1"),
            "{why:?}"
        );
        // A tie goes to the most preferred (first) candidate's VPC.
        let tie = vec![c("x", Some("vpc-9"), None), c("y", Some("vpc-8"), None)];
        assert_eq!(nodes(vpc_mismatches(&tie, None)), ["y"]);
        // One VPC, or nothing known: nobody is flagged.
        assert!(vpc_mismatches(&placed[..1], None).is_empty());
        assert!(vpc_mismatches(&[c("d", None, None)], None).is_empty());
    }

    #[test]
    fn heartbeat_age_is_capped_by_the_observed_span() {
        let s = Duration::from_secs;
        assert_eq!(observed_age(Some(s(50)), s(3)), Some(s(3)));
        assert_eq!(observed_age(Some(s(2)), s(300)), Some(s(2)));
        assert_eq!(observed_age(None, s(3)), None);
    }
}
