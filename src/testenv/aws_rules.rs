//! The AWS behaviours moto lacks, emulated in the fault proxy so tests meet EC2 as it is.
//!
//! moto is kinder than AWS (docs/reliability.md, "The test EC2: AWS behaviours emulated"):
//! it keeps several Elastic IPs on one private IP, ignores `PrivateIpAddress` on
//! AssociateAddress, answers Describe* from memory at once and knows neither filter limits,
//! instance states nor IAM. Every `FaultProxy` answers through this layer:
//!
//! - one EIP per (ENI, private IP): a successful AssociateAddress disassociates (in moto) any
//!   other address at the same (ENI, private IP) and records a [`Displacement`];
//! - `PrivateIpAddress` must be one of the ENI's private IPs (`InvalidParameterValue`), and the
//!   association is at that IP: the layer keeps its own [`AssociationModel`] and rewrites
//!   moto's DescribeAddresses answers from it (moto puts every association on the primary IP);
//! - `AllowReassociation` other than `true` on an associated address: `Resource.AlreadyAssociated`;
//! - eventual consistency: for [`DEFAULT_CONSISTENCY_LAG`] (or the proxy's setting) after a
//!   mutation of an address, DescribeAddresses reports the address as it was before;
//! - more than [`FILTER_VALUES_MAX`] filter values on a Describe*: `FilterLimitExceeded`;
//! - AssociateAddress to a stopping or stopped instance: `IncorrectInstanceState`;
//! - actions denied on demand answer `UnauthorizedOperation` (HTTP 403).
//!
//! The model is shared by every proxy in front of the same moto (a registry keyed by moto's
//! URL), because two controllers of one test each get a proxy but share one EC2. Requests sent
//! to moto directly (tests that set up a foreign association) bypass the rules; the model then
//! adopts moto's report of that address (an association id it did not make).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::fault_proxy::{Reply, Upstream};

/// How long DescribeAddresses keeps reporting an address's previous association after a
/// mutation, unless a test sets another lag (`FaultProxy::set_consistency_lag`). A few hundred
/// milliseconds: long enough that a client confirming its own associate sees stale answers,
/// short enough to leave the suites' timings alone. AWS documents no bound; chaos tests use
/// seconds.
pub const DEFAULT_CONSISTENCY_LAG: Duration = Duration::from_millis(300);

/// EC2 refuses a call with more filter values than this (`FilterLimitExceeded`).
pub const FILTER_VALUES_MAX: usize = 200;

/// The account moto answers for (its default), used where AWS reports an owner.
const ACCOUNT_ID: &str = "123456789012";

/// Where an address is associated, as AWS would report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Association {
    pub association_id: String,
    pub network_interface_id: String,
    pub private_ip: String,
    /// The instance the interface is attached to (AWS reports it also for an association made
    /// by interface; moto leaves it empty then).
    pub instance_id: Option<String>,
}

/// An address silently disassociated because another one was associated at its (ENI, private IP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Displacement {
    pub at: Instant,
    /// The allocation id that lost its association.
    pub displaced: String,
    /// The allocation id associated there.
    pub by: String,
    pub network_interface_id: String,
    pub private_ip: String,
}

/// What DescribeAddresses keeps reporting for an address until `until`.
#[derive(Clone, Debug)]
struct StaleView {
    reported: Option<Association>,
    until: Instant,
}

/// The layer's truth about associations, beside moto's: moto honours the interface but not the
/// private IP, so the model holds the private IP (and instance) of each association it made,
/// keyed by allocation id, plus the stale views of eventual consistency. Pure: callers pass
/// moto's report and the time.
#[derive(Debug, Default)]
pub struct AssociationModel {
    current: HashMap<String, Association>,
    stale: HashMap<String, StaleView>,
}

impl AssociationModel {
    /// The true association of `allocation_id`, given what moto reports for it. The model's
    /// entry wins while moto still holds the same association id; anything else (moto reports
    /// none, or one the layer did not make) is adopted from moto.
    pub fn reconcile(
        &mut self,
        allocation_id: &str,
        moto: Option<&Association>,
    ) -> Option<Association> {
        match (self.current.get(allocation_id), moto) {
            (Some(ours), Some(m)) if ours.association_id == m.association_id => Some(ours.clone()),
            (_, Some(m)) => {
                self.current.insert(allocation_id.to_string(), m.clone());
                Some(m.clone())
            }
            (_, None) => {
                self.current.remove(allocation_id);
                None
            }
        }
    }

    /// Records a successful association; `before` is what the address had just before.
    pub fn associated(
        &mut self,
        allocation_id: &str,
        before: Option<Association>,
        now_at: Association,
        lag: Duration,
        now: Instant,
    ) {
        self.current.insert(allocation_id.to_string(), now_at);
        self.remember_stale(allocation_id, before, lag, now);
    }

    /// Records a successful disassociation (by the client, or a displacement).
    pub fn disassociated(
        &mut self,
        allocation_id: &str,
        before: Option<Association>,
        lag: Duration,
        now: Instant,
    ) {
        self.current.remove(allocation_id);
        self.remember_stale(allocation_id, before, lag, now);
    }

    /// What DescribeAddresses reports for `allocation_id` at `now`, given its true association:
    /// the state before its last mutation while that mutation is younger than the lag.
    pub fn reported(
        &mut self,
        allocation_id: &str,
        truth: Option<Association>,
        now: Instant,
    ) -> Option<Association> {
        match self.stale.get(allocation_id) {
            Some(view) if now < view.until => view.reported.clone(),
            Some(_) => {
                self.stale.remove(allocation_id);
                truth
            }
            None => truth,
        }
    }

    /// The allocation id holding `association_id`, as far as the model knows.
    pub fn allocation_of(&self, association_id: &str) -> Option<String> {
        self.current
            .iter()
            .find(|(_, a)| a.association_id == association_id)
            .map(|(id, _)| id.clone())
    }

    /// The model's entry for `allocation_id` if moto still holds `association_id` for it.
    pub fn known(&self, allocation_id: &str, association_id: &str) -> Option<&Association> {
        self.current
            .get(allocation_id)
            .filter(|a| a.association_id == association_id)
    }

    fn remember_stale(
        &mut self,
        allocation_id: &str,
        before: Option<Association>,
        lag: Duration,
        now: Instant,
    ) {
        if lag.is_zero() {
            self.stale.remove(allocation_id);
            return;
        }
        // A mutation inside the lag of an earlier one: report the state just before this one
        // (the last state a reader could have seen settle), for a full lag again.
        self.stale.insert(
            allocation_id.to_string(),
            StaleView {
                reported: before,
                until: now + lag,
            },
        );
    }
}

/// The rules' state shared by every proxy in front of one moto.
pub(crate) struct SharedEc2 {
    model: Mutex<AssociationModel>,
    /// Mutations (with their side calls to moto) run one at a time and exclude DescribeAddresses,
    /// so an associate and the displacement it causes look atomic, as on AWS.
    serial: tokio::sync::RwLock<()>,
}

impl SharedEc2 {
    fn model(&self) -> std::sync::MutexGuard<'_, AssociationModel> {
        self.model
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The shared state of the moto at `upstream` (created on first use).
pub(crate) fn shared_for(upstream: &str) -> Arc<SharedEc2> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Arc<SharedEc2>>>> = OnceLock::new();
    let mut registry = REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    registry
        .entry(upstream.trim_end_matches('/').to_string())
        .or_insert_with(|| {
            Arc::new(SharedEc2 {
                model: Mutex::new(AssociationModel::default()),
                serial: tokio::sync::RwLock::new(()),
            })
        })
        .clone()
}

/// The private IP the rules hold for an association moto reports as (`allocation_id`,
/// `association_id`), if the layer made it. `Moto::true_association` reads it.
pub(crate) fn modelled_association(
    upstream: &str,
    allocation_id: &str,
    association_id: &str,
) -> Option<Association> {
    shared_for(upstream)
        .model()
        .known(allocation_id, association_id)
        .cloned()
}

/// Per-proxy settings of the rules.
#[derive(Debug)]
pub(crate) struct RuleSettings {
    pub lag: Duration,
    pub denied: BTreeSet<String>,
}

impl Default for RuleSettings {
    fn default() -> Self {
        Self {
            lag: DEFAULT_CONSISTENCY_LAG,
            denied: BTreeSet::new(),
        }
    }
}

/// One request as the rules see it.
pub(crate) struct Call<'a> {
    pub method: &'a http::Method,
    pub action: &'a str,
    pub params: &'a BTreeMap<String, String>,
    pub headers: &'a HeaderMap,
    pub path: &'a str,
    pub body: Bytes,
}

/// What the rules answered, and the displacements they caused.
pub(crate) struct Answer {
    pub reply: Reply,
    pub displacements: Vec<Displacement>,
}

impl From<Reply> for Answer {
    fn from(reply: Reply) -> Self {
        Self {
            reply,
            displacements: Vec::new(),
        }
    }
}

/// Answers one request the way AWS would, using moto at `upstream` for the state.
pub(crate) async fn answer(
    call: Call<'_>,
    lag: Duration,
    denied: bool,
    upstream: &Upstream,
) -> std::io::Result<Answer> {
    if denied {
        return Ok(unauthorized(call.action).into());
    }
    if call.action.starts_with("Describe") && filter_values(call.params) > FILTER_VALUES_MAX {
        return Ok(error_reply(
            StatusCode::BAD_REQUEST,
            "FilterLimitExceeded",
            "The maximum number of filter values specified on a single call is 200",
        )
        .into());
    }
    let shared = shared_for(upstream.base());
    match call.action {
        "AssociateAddress" if call.params.contains_key("AllocationId") => {
            let _serial = shared.serial.write().await;
            associate(&call, &shared, lag, upstream).await
        }
        "DisassociateAddress" if call.params.contains_key("AssociationId") => {
            let _serial = shared.serial.write().await;
            disassociate(&call, &shared, lag, upstream)
                .await
                .map(Answer::from)
        }
        "DescribeAddresses" => {
            let _serial = shared.serial.read().await;
            let reply = upstream
                .send(call.method, call.headers, call.path, call.body)
                .await?;
            Ok(rewrite_describe_addresses(reply, &shared, Instant::now()).into())
        }
        _ => Ok(upstream
            .send(call.method, call.headers, call.path, call.body)
            .await?
            .into()),
    }
}

/// Total number of `Filter.N.Value.M` values of a Query request.
fn filter_values(params: &BTreeMap<String, String>) -> usize {
    params
        .keys()
        .filter(|k| k.starts_with("Filter.") && k.contains(".Value."))
        .count()
}

/// Where an AssociateAddress lands: interface, private IP, instance (and its state).
struct Target {
    network_interface_id: String,
    private_ip: String,
    instance_id: Option<String>,
    instance_state: Option<String>,
}

async fn associate(
    call: &Call<'_>,
    shared: &SharedEc2,
    lag: Duration,
    upstream: &Upstream,
) -> std::io::Result<Answer> {
    let p = |k: &str| {
        call.params
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let Some(allocation_id) = p("AllocationId") else {
        return Ok(upstream
            .send(call.method, call.headers, call.path, call.body.clone())
            .await?
            .into());
    };
    let target = match resolve_target(call, upstream).await? {
        Ok(Some(t)) => t,
        // Unknown interface or instance: moto's own error is AWS's.
        Ok(None) => {
            return Ok(upstream
                .send(call.method, call.headers, call.path, call.body.clone())
                .await?
                .into());
        }
        Err(refusal) => return Ok(refusal.into()),
    };
    if let Some(state) = target
        .instance_state
        .as_deref()
        .filter(|s| matches!(*s, "stopping" | "stopped"))
    {
        let message = format!(
            "The {state} instance to which '{}' is attached is not in a valid state for this operation",
            target.network_interface_id
        );
        return Ok(error_reply(StatusCode::BAD_REQUEST, "IncorrectInstanceState", &message).into());
    }
    let before = truth_of(allocation_id, call.headers, shared, upstream).await?;
    if let Some(b) = &before
        && p("AllowReassociation") != Some("true")
    {
        let message = format!(
            "resource {allocation_id} is already associated with associate-id {}",
            b.association_id
        );
        return Ok(error_reply(
            StatusCode::BAD_REQUEST,
            "Resource.AlreadyAssociated",
            &message,
        )
        .into());
    }
    let reply = upstream
        .send(call.method, call.headers, call.path, call.body.clone())
        .await?;
    if reply.status != StatusCode::OK {
        return Ok(reply.into());
    }
    let Some(association_id) = element_text(&reply.text(), "associationId") else {
        return Ok(reply.into());
    };
    let now = Instant::now();
    shared.model().associated(
        allocation_id,
        before,
        Association {
            association_id,
            network_interface_id: target.network_interface_id.clone(),
            private_ip: target.private_ip.clone(),
            instance_id: target.instance_id.clone(),
        },
        lag,
        now,
    );
    let displacements =
        displace(allocation_id, &target, call.headers, shared, lag, upstream).await?;
    Ok(Answer {
        reply,
        displacements,
    })
}

/// The target of an AssociateAddress, `Ok(None)` when moto does not know the interface or
/// instance, `Err` with AWS's refusal of a private IP the interface does not have.
async fn resolve_target(
    call: &Call<'_>,
    upstream: &Upstream,
) -> std::io::Result<Result<Option<Target>, Reply>> {
    let p = |k: &str| {
        call.params
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let requested_ip = p("PrivateIpAddress");
    let (eni, instance_id) = if let Some(eni) = p("NetworkInterfaceId") {
        let Some(eni) = describe_interface(eni, call.headers, upstream).await? else {
            return Ok(Ok(None));
        };
        let instance = eni.instance_id.clone();
        (eni, instance)
    } else if let Some(instance_id) = p("InstanceId") {
        let Some(instance) = describe_instance(instance_id, call.headers, upstream).await? else {
            return Ok(Ok(None));
        };
        let Some(eni) = instance.primary_interface else {
            return Ok(Ok(None));
        };
        (eni, Some(instance_id.to_string()))
    } else {
        return Ok(Ok(None));
    };
    let private_ip = match requested_ip {
        Some(ip) if eni.private_ips.iter().any(|x| x == ip) => ip.to_string(),
        Some(ip) => {
            let message = format!(
                "The specified private IP address {ip} is not assigned to network interface {}",
                eni.network_interface_id
            );
            return Ok(Err(error_reply(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValue",
                &message,
            )));
        }
        None => match eni.private_ips.first() {
            Some(primary) => primary.clone(),
            None => return Ok(Ok(None)),
        },
    };
    let instance_state = match &instance_id {
        Some(id) => describe_instance(id, call.headers, upstream)
            .await?
            .map(|i| i.state),
        None => None,
    };
    Ok(Ok(Some(Target {
        network_interface_id: eni.network_interface_id,
        private_ip,
        instance_id,
        instance_state,
    })))
}

/// Disassociates (in moto) every other address at the target's (ENI, private IP).
async fn displace(
    by: &str,
    target: &Target,
    headers: &HeaderMap,
    shared: &SharedEc2,
    lag: Duration,
    upstream: &Upstream,
) -> std::io::Result<Vec<Displacement>> {
    let form = [
        ("Action", "DescribeAddresses"),
        ("Filter.1.Name", "network-interface-id"),
        ("Filter.1.Value.1", target.network_interface_id.as_str()),
    ];
    let reply = upstream.query(headers, &form).await?;
    if reply.status != StatusCode::OK {
        return Err(std::io::Error::other(format!(
            "DescribeAddresses for the displacement check answered {}",
            reply.status
        )));
    }
    let mut displaced = Vec::new();
    for (allocation_id, moto) in address_items(&reply.text()) {
        if allocation_id == by {
            continue;
        }
        let truth = shared.model().reconcile(&allocation_id, moto.as_ref());
        let Some(truth) = truth.filter(|t| {
            t.network_interface_id == target.network_interface_id
                && t.private_ip == target.private_ip
        }) else {
            continue;
        };
        let form = [
            ("Action", "DisassociateAddress"),
            ("AssociationId", truth.association_id.as_str()),
        ];
        let reply = upstream.query(headers, &form).await?;
        if reply.status != StatusCode::OK {
            return Err(std::io::Error::other(format!(
                "displacing {allocation_id}: DisassociateAddress answered {}",
                reply.status
            )));
        }
        let now = Instant::now();
        shared
            .model()
            .disassociated(&allocation_id, Some(truth), lag, now);
        displaced.push(Displacement {
            at: now,
            displaced: allocation_id,
            by: by.to_string(),
            network_interface_id: target.network_interface_id.clone(),
            private_ip: target.private_ip.clone(),
        });
    }
    Ok(displaced)
}

async fn disassociate(
    call: &Call<'_>,
    shared: &SharedEc2,
    lag: Duration,
    upstream: &Upstream,
) -> std::io::Result<Reply> {
    let association_id = call
        .params
        .get("AssociationId")
        .map(String::as_str)
        .unwrap_or_default();
    let known = shared.model().allocation_of(association_id);
    let allocation_id = match known {
        Some(id) => Some(id),
        None => {
            let form = [
                ("Action", "DescribeAddresses"),
                ("Filter.1.Name", "association-id"),
                ("Filter.1.Value.1", association_id),
            ];
            let reply = upstream.query(call.headers, &form).await?;
            address_items(&reply.text())
                .into_iter()
                .next()
                .map(|(id, _)| id)
        }
    };
    let before = match &allocation_id {
        Some(id) => truth_of(id, call.headers, shared, upstream).await?,
        None => None,
    };
    let reply = upstream
        .send(call.method, call.headers, call.path, call.body.clone())
        .await?;
    if reply.status == StatusCode::OK
        && let Some(id) = allocation_id
    {
        shared
            .model()
            .disassociated(&id, before, lag, Instant::now());
    }
    Ok(reply)
}

/// The true association of one address: moto's report reconciled with the model.
async fn truth_of(
    allocation_id: &str,
    headers: &HeaderMap,
    shared: &SharedEc2,
    upstream: &Upstream,
) -> std::io::Result<Option<Association>> {
    let form = [
        ("Action", "DescribeAddresses"),
        ("AllocationId.1", allocation_id),
    ];
    let reply = upstream.query(headers, &form).await?;
    let moto = address_items(&reply.text())
        .into_iter()
        .find(|(id, _)| id == allocation_id)
        .and_then(|(_, a)| a);
    Ok(shared.model().reconcile(allocation_id, moto.as_ref()))
}

/// Rewrites moto's DescribeAddresses answer: each address's association as the model has it
/// (its private IP and instance), or as it was before a mutation younger than the lag.
fn rewrite_describe_addresses(reply: Reply, shared: &SharedEc2, now: Instant) -> Reply {
    if reply.status != StatusCode::OK {
        return reply;
    }
    let text = reply.text();
    let Some(set) = find_element(&text, "addressesSet") else {
        return reply;
    };
    let Some(inner) = set.inner.clone() else {
        return reply; // <addressesSet/>: nothing to rewrite
    };
    let mut model = shared.model();
    let mut items = String::new();
    for item in siblings(&text[inner.clone()]) {
        let Some(item_inner) = item.inner_text() else {
            items.push_str(item.raw);
            continue;
        };
        let Some(allocation_id) = child_text(item_inner, "allocationId") else {
            items.push_str(item.raw);
            continue;
        };
        let moto = association_of(item_inner);
        let truth = model.reconcile(&allocation_id, moto.as_ref());
        let reported = model.reported(&allocation_id, truth, now);
        items.push_str(&render_address(item_inner, reported.as_ref()));
    }
    drop(model);
    let rewritten = format!("{}{}{}", &text[..inner.start], items, &text[inner.end..]);
    reply.with_body(Bytes::from(rewritten))
}

/// The association fields of one DescribeAddresses item.
const ASSOCIATION_FIELDS: &[&str] = &[
    "associationId",
    "networkInterfaceId",
    "networkInterfaceOwnerId",
    "privateIpAddress",
    "instanceId",
];

/// One `<item>` of addressesSet with its association fields replaced by `reported` (none: an
/// unassociated address, which AWS reports without those fields).
fn render_address(item_inner: &str, reported: Option<&Association>) -> String {
    let mut out = String::from("<item>");
    for child in siblings(item_inner) {
        if !ASSOCIATION_FIELDS.contains(&child.name) {
            out.push_str(child.raw);
        }
    }
    if let Some(a) = reported {
        let mut field = |name: &str, value: &str| {
            out.push_str(&format!("<{name}>{}</{name}>", escape(value)));
        };
        field("associationId", &a.association_id);
        field("networkInterfaceId", &a.network_interface_id);
        field("networkInterfaceOwnerId", ACCOUNT_ID);
        field("privateIpAddress", &a.private_ip);
        if let Some(instance) = &a.instance_id {
            field("instanceId", instance);
        }
    }
    out.push_str("</item>");
    out
}

/// Every `<item>` of a DescribeAddresses answer: allocation id and moto's association.
fn address_items(xml: &str) -> Vec<(String, Option<Association>)> {
    let Some(inner) = find_element(xml, "addressesSet").and_then(|s| s.inner) else {
        return Vec::new();
    };
    siblings(&xml[inner])
        .iter()
        .filter_map(|item| {
            let inner = item.inner_text()?;
            Some((child_text(inner, "allocationId")?, association_of(inner)))
        })
        .collect()
}

/// The association moto reports in one address item (None when unassociated).
fn association_of(item_inner: &str) -> Option<Association> {
    Some(Association {
        association_id: child_text(item_inner, "associationId")?,
        network_interface_id: child_text(item_inner, "networkInterfaceId")?,
        private_ip: child_text(item_inner, "privateIpAddress").unwrap_or_default(),
        instance_id: child_text(item_inner, "instanceId"),
    })
}

/// A network interface as DescribeNetworkInterfaces (or DescribeInstances) reports it.
struct Interface {
    network_interface_id: String,
    /// Primary first.
    private_ips: Vec<String>,
    instance_id: Option<String>,
}

async fn describe_interface(
    eni: &str,
    headers: &HeaderMap,
    upstream: &Upstream,
) -> std::io::Result<Option<Interface>> {
    let form = [
        ("Action", "DescribeNetworkInterfaces"),
        ("NetworkInterfaceId.1", eni),
    ];
    let reply = upstream.query(headers, &form).await?;
    if reply.status != StatusCode::OK {
        return Ok(None);
    }
    let text = reply.text();
    let Some(inner) = find_element(&text, "networkInterfaceSet").and_then(|s| s.inner) else {
        return Ok(None);
    };
    Ok(siblings(&text[inner])
        .iter()
        .filter_map(|item| parse_interface(item.inner_text()?))
        .find(|i| i.network_interface_id == eni))
}

fn parse_interface(inner: &str) -> Option<Interface> {
    let network_interface_id = child_text(inner, "networkInterfaceId")?;
    let primary = child_text(inner, "privateIpAddress");
    let mut private_ips: Vec<String> = primary.clone().into_iter().collect();
    let set = siblings(inner)
        .into_iter()
        .find(|c| c.name == "privateIpAddressesSet");
    for ip in set
        .and_then(|s| s.inner_text())
        .map(siblings)
        .unwrap_or_default()
    {
        if let Some(addr) = ip
            .inner_text()
            .and_then(|i| child_text(i, "privateIpAddress"))
            && Some(&addr) != primary.as_ref()
        {
            private_ips.push(addr);
        }
    }
    let instance_id = siblings(inner)
        .into_iter()
        .find(|c| c.name == "attachment")
        .and_then(|a| a.inner_text().and_then(|i| child_text(i, "instanceId")));
    Some(Interface {
        network_interface_id,
        private_ips,
        instance_id,
    })
}

/// An instance's state and primary interface (device index 0).
struct InstanceView {
    state: String,
    primary_interface: Option<Interface>,
}

async fn describe_instance(
    instance_id: &str,
    headers: &HeaderMap,
    upstream: &Upstream,
) -> std::io::Result<Option<InstanceView>> {
    let form = [
        ("Action", "DescribeInstances"),
        ("InstanceId.1", instance_id),
    ];
    let reply = upstream.query(headers, &form).await?;
    if reply.status != StatusCode::OK {
        return Ok(None);
    }
    let text = reply.text();
    let Some(inner) = find_element(&text, "instancesSet").and_then(|s| s.inner) else {
        return Ok(None);
    };
    for item in siblings(&text[inner]) {
        let Some(inner) = item.inner_text() else {
            continue;
        };
        if child_text(inner, "instanceId").as_deref() != Some(instance_id) {
            continue;
        }
        let children = siblings(inner);
        let state = children
            .iter()
            .find(|c| c.name == "instanceState")
            .and_then(|s| s.inner_text().and_then(|i| child_text(i, "name")))
            .unwrap_or_default();
        let primary_interface = children
            .iter()
            .find(|c| c.name == "networkInterfaceSet")
            .and_then(|s| s.inner_text())
            .map(siblings)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| {
                let inner = n.inner_text()?;
                let device = siblings(inner)
                    .into_iter()
                    .find(|c| c.name == "attachment")
                    .and_then(|a| a.inner_text().and_then(|i| child_text(i, "deviceIndex")))
                    .and_then(|d| d.parse::<u32>().ok());
                Some((device, parse_interface(inner)?))
            })
            .min_by_key(|(device, _)| device.unwrap_or(u32::MAX))
            .map(|(_, eni)| eni);
        return Ok(Some(InstanceView {
            state,
            primary_interface,
        }));
    }
    Ok(None)
}

fn unauthorized(action: &str) -> Reply {
    let message = format!(
        "You are not authorized to perform this operation. User: arn:aws:iam::{ACCOUNT_ID}:user/testing is not authorized to perform: ec2:{action} because no identity-based policy allows the ec2:{action} action"
    );
    error_reply(StatusCode::FORBIDDEN, "UnauthorizedOperation", &message)
}

/// An EC2 error answer (the Query protocol's `<Response><Errors>` shape).
pub(crate) fn error_reply(status: StatusCode, code: &str, message: &str) -> Reply {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{}</Message></Error></Errors><RequestID>feip-test-ec2</RequestID></Response>",
        escape(message)
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/xml;charset=UTF-8"),
    );
    Reply {
        status,
        headers,
        body: Bytes::from(body),
    }
}

// A minimal reader for moto's XML: elements without attributes that matter, no CDATA, no
// comments. Enough to find the few fields the rules read and to splice rewritten items in.

/// One element: its name, its whole text, and where its content lies (None: `<name/>`).
#[derive(Clone, Debug)]
struct Element<'a> {
    name: &'a str,
    raw: &'a str,
    /// The content's range within `raw`.
    inner: Option<std::ops::Range<usize>>,
}

impl<'a> Element<'a> {
    fn inner_text(&self) -> Option<&'a str> {
        self.inner.clone().map(|r| &self.raw[r])
    }
}

/// The element starting at `xml[start..]` (which must be at `<`), if well formed.
fn element_at(xml: &str, start: usize) -> Option<Element<'_>> {
    let rest = &xml[start..];
    let tag_end = rest.find('>')?;
    let tag = &rest[1..tag_end];
    let name_end = tag
        .find(|c: char| c.is_whitespace() || c == '/')
        .unwrap_or(tag.len());
    let name = &tag[..name_end];
    if tag.ends_with('/') {
        return Some(Element {
            name,
            raw: &rest[..=tag_end],
            inner: None,
        });
    }
    let content_start = tag_end + 1;
    let mut depth = 1usize;
    let mut pos = content_start;
    while let Some(off) = rest[pos..].find('<') {
        let at = pos + off;
        let close = at + rest[at..].find('>')?;
        let t = &rest[at + 1..close];
        if let Some(_closing) = t.strip_prefix('/') {
            depth -= 1;
            if depth == 0 {
                return Some(Element {
                    name,
                    raw: &rest[..=close],
                    inner: Some(content_start..at),
                });
            }
        } else if !(t.ends_with('/') || t.starts_with('?') || t.starts_with('!')) {
            depth += 1;
        }
        pos = close + 1;
    }
    None
}

/// The top-level elements of a run of siblings (text between them is skipped).
fn siblings(xml: &str) -> Vec<Element<'_>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(off) = xml[pos..].find('<') {
        let at = pos + off;
        if xml[at..].starts_with("<?") || xml[at..].starts_with("</") {
            pos = at + xml[at..].find('>').map_or(xml.len() - at, |e| e + 1);
            continue;
        }
        let Some(el) = element_at(xml, at) else {
            break;
        };
        pos = at + el.raw.len();
        out.push(el);
    }
    out
}

/// The first element named `name` anywhere in `xml`, with its content's range in `xml`.
fn find_element(xml: &str, name: &str) -> Option<Located> {
    let mut from = 0;
    while let Some(off) = xml[from..].find(&format!("<{name}")) {
        let at = from + off;
        let after = xml.as_bytes().get(at + 1 + name.len()).copied();
        if matches!(after, Some(b'>' | b'/' | b' ')) {
            let el = element_at(xml, at)?;
            return Some(Located {
                inner: el.inner.map(|r| at + r.start..at + r.end),
            });
        }
        from = at + 1;
    }
    None
}

/// An element found in a larger text: where its content lies in that text (None: `<name/>`).
struct Located {
    inner: Option<std::ops::Range<usize>>,
}

/// The text of the first `name` element anywhere in `xml` (None when absent or empty).
fn element_text(xml: &str, name: &str) -> Option<String> {
    let inner = find_element(xml, name)?.inner?;
    Some(unescape(&xml[inner])).filter(|s| !s.is_empty())
}

/// The text of the direct child `name` (None when absent or empty).
fn child_text(inner: &str, name: &str) -> Option<String> {
    siblings(inner)
        .into_iter()
        .find(|c| c.name == name)
        .and_then(|c| c.inner_text().map(unescape))
        .filter(|s| !s.is_empty())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assoc(id: &str, eni: &str, ip: &str) -> Association {
        Association {
            association_id: id.into(),
            network_interface_id: eni.into(),
            private_ip: ip.into(),
            instance_id: None,
        }
    }

    #[test]
    fn the_model_wins_while_moto_holds_the_same_association() {
        let mut m = AssociationModel::default();
        let t0 = Instant::now();
        m.associated(
            "eipalloc-1",
            None,
            assoc("eipassoc-1", "eni-1", "10.0.0.9"),
            Duration::ZERO,
            t0,
        );
        // moto puts it on the primary IP; the model knows the secondary.
        let moto = assoc("eipassoc-1", "eni-1", "10.0.0.4");
        assert_eq!(
            m.reconcile("eipalloc-1", Some(&moto)),
            Some(assoc("eipassoc-1", "eni-1", "10.0.0.9"))
        );
        // Associated behind the layer's back (a new association id): moto's report is adopted.
        let foreign = assoc("eipassoc-2", "eni-2", "10.0.0.5");
        assert_eq!(m.reconcile("eipalloc-1", Some(&foreign)), Some(foreign));
        assert_eq!(m.reconcile("eipalloc-1", None), None);
        assert_eq!(m.allocation_of("eipassoc-2"), None);
    }

    #[test]
    fn describe_reports_the_old_association_for_the_lag() {
        let mut m = AssociationModel::default();
        let lag = Duration::from_secs(2);
        let t0 = Instant::now();
        let old = assoc("eipassoc-1", "eni-1", "10.0.0.4");
        let new = assoc("eipassoc-2", "eni-2", "10.0.0.5");
        m.associated("eipalloc-1", Some(old.clone()), new.clone(), lag, t0);
        let inside = t0 + Duration::from_millis(1999);
        assert_eq!(
            m.reported("eipalloc-1", Some(new.clone()), inside),
            Some(old.clone())
        );
        assert_eq!(
            m.reported("eipalloc-1", Some(new.clone()), t0 + lag),
            Some(new.clone())
        );
        // A disassociation: still reported associated for the lag, then not.
        m.disassociated("eipalloc-1", Some(new.clone()), lag, t0 + lag);
        assert_eq!(
            m.reported("eipalloc-1", None, t0 + lag + Duration::from_secs(1)),
            Some(new)
        );
        assert_eq!(m.reported("eipalloc-1", None, t0 + lag * 2), None);
    }

    #[test]
    fn no_lag_reports_the_truth_at_once() {
        let mut m = AssociationModel::default();
        let t0 = Instant::now();
        let old = assoc("eipassoc-1", "eni-1", "10.0.0.4");
        let new = assoc("eipassoc-2", "eni-2", "10.0.0.5");
        m.associated("eipalloc-1", Some(old), new.clone(), Duration::ZERO, t0);
        assert_eq!(m.reported("eipalloc-1", Some(new.clone()), t0), Some(new));
    }

    const DESCRIBE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<DescribeAddressesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15"><addressesSet><item><allocationId>eipalloc-a</allocationId><associationId>eipassoc-a</associationId><domain>vpc</domain><networkInterfaceId>eni-1</networkInterfaceId><networkInterfaceOwnerId>123456789012</networkInterfaceOwnerId><privateIpAddress>10.0.0.4</privateIpAddress><tagSet><item><key>k</key><value>v</value></item></tagSet><instanceId/><publicIp>127.0.0.1</publicIp></item><item><allocationId>eipalloc-b</allocationId><domain>vpc</domain><networkInterfaceId/><tagSet/><instanceId/><publicIp>127.0.0.2</publicIp></item></addressesSet><requestId>request-id</requestId></DescribeAddressesResponse>"#;

    #[test]
    fn reads_moto_address_items() {
        let items = address_items(DESCRIBE);
        assert_eq!(
            items,
            vec![
                (
                    "eipalloc-a".to_string(),
                    Some(assoc("eipassoc-a", "eni-1", "10.0.0.4"))
                ),
                ("eipalloc-b".to_string(), None),
            ]
        );
    }

    #[test]
    fn rewrites_an_item_keeping_its_other_fields() {
        let items = address_items(DESCRIBE);
        assert_eq!(items.len(), 2);
        let set = find_element(DESCRIBE, "addressesSet").and_then(|s| s.inner);
        let inner = set.map(|r| &DESCRIBE[r]).unwrap_or_default();
        let first = siblings(inner)[0].inner_text().unwrap_or_default();
        let mut a = assoc("eipassoc-a", "eni-1", "10.0.0.9");
        a.instance_id = Some("i-1".into());
        let out = render_address(first, Some(&a));
        assert!(
            out.contains("<privateIpAddress>10.0.0.9</privateIpAddress>"),
            "{out}"
        );
        assert!(out.contains("<instanceId>i-1</instanceId>"), "{out}");
        assert!(out.contains("<tagSet><item><key>k</key>"), "{out}");
        assert!(!out.contains("10.0.0.4"), "{out}");
        let unassociated = render_address(first, None);
        assert!(!unassociated.contains("associationId"), "{unassociated}");
        assert!(unassociated.contains("<publicIp>127.0.0.1</publicIp>"));
    }

    #[test]
    fn parses_an_interface_primary_first() {
        let xml = "<networkInterfaceId>eni-1</networkInterfaceId><privateIpAddress>10.0.0.4</privateIpAddress><attachment><deviceIndex>0</deviceIndex><instanceId>i-1</instanceId></attachment><privateIpAddressesSet><item><primary>false</primary><privateIpAddress>10.0.0.7</privateIpAddress></item><item><primary>true</primary><privateIpAddress>10.0.0.4</privateIpAddress></item></privateIpAddressesSet>";
        let eni = parse_interface(xml).expect("an interface");
        assert_eq!(eni.private_ips, vec!["10.0.0.4", "10.0.0.7"]);
        assert_eq!(eni.instance_id.as_deref(), Some("i-1"));
    }

    #[test]
    fn counts_filter_values_across_filters() {
        let mut params = BTreeMap::new();
        params.insert("Filter.1.Name".to_string(), "allocation-id".to_string());
        params.insert("Filter.1.Value.1".to_string(), "a".to_string());
        params.insert("Filter.2.Value.1".to_string(), "b".to_string());
        params.insert("AllocationId.1".to_string(), "c".to_string());
        assert_eq!(filter_values(&params), 2);
    }
}
