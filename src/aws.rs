//! The thin EC2 layer: one instrumented function per EC2 call, a shared client-side request
//! budget mirroring EC2's token buckets, and tri-state error classification.
//!
//! Every error is either *definite* (EC2 answered and said no: the allocation does not exist,
//! the interface is gone, ...) or *unknown* (throttling, 5xx, timeouts, transport failures).
//! Unknown is never treated as a failure by the caller (rule 2 of the spec).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::Filter;
use futures::TryFutureExt as _;
use tokio::sync::Mutex;

use crate::leader::{Leadership, MutationPermit};

/// How an EC2 request ended, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Success,
    /// `RequestLimitExceeded` (or another throttling answer).
    Throttled,
    /// Any other error answer or transport failure.
    Error,
    /// No answer within the client-side timeout.
    Timeout,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Throttled => "throttled",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
        }
    }
}

/// Which of EC2's request-rate buckets a request draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestKind {
    Describe,
    Mutating,
}

/// Receives one call per EC2 request (operation, outcome, elapsed).
pub type Observer = Arc<dyn Fn(&'static str, Outcome, Duration) + Send + Sync>;

/// An EC2 error, classified.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ec2Error {
    /// EC2 answered with a definite refusal.
    #[error("{operation} failed: {code}: {message}")]
    Definite {
        operation: &'static str,
        code: String,
        message: String,
    },
    /// The outcome is unknown: throttling, server error, timeout or transport failure.
    #[error("{operation} outcome unknown: {reason}")]
    Unknown {
        operation: &'static str,
        reason: String,
        throttled: bool,
    },
    /// A mutation that was not sent: this replica's mutation window (leadership minus the
    /// safety margin) was closed when the request was due to go out. Nothing changed in EC2.
    #[error("{operation} not sent: this replica's leadership does not allow mutations now")]
    NotSent { operation: &'static str },
}

impl Ec2Error {
    /// Unknown outcomes are never failures. A request that was not sent counts as unknown
    /// too: it says nothing about the target.
    pub fn is_unknown(&self) -> bool {
        matches!(self, Ec2Error::Unknown { .. } | Ec2Error::NotSent { .. })
    }

    /// The EC2 error code of a definite error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Ec2Error::Definite { code, .. } => Some(code),
            Ec2Error::Unknown { .. } | Ec2Error::NotSent { .. } => None,
        }
    }

    /// True when a definite error is about the target (its interface, instance or private IP),
    /// so another candidate may succeed and banning this node is right. An allow-list: every
    /// other definite code (the address, the account, IAM, the VPC, the request, and codes
    /// nobody listed) is not the node's fault and bans nobody; it is retried with backoff.
    /// docs/troubleshooting.md ("Which EC2 error codes ban a node") lists both sides.
    pub fn blames_target(&self) -> bool {
        match self {
            Ec2Error::Definite { code, message, .. } => code_blames_target(code, message),
            Ec2Error::Unknown { .. } | Ec2Error::NotSent { .. } => false,
        }
    }
}

/// The allow-list of [`Ec2Error::blames_target`]: codes about the instance, its interface or
/// the private IP on it. `InvalidParameterValue` is a generic code; it blames the target only
/// when EC2's message is about the private IP (not assigned to the interface).
fn code_blames_target(code: &str, message: &str) -> bool {
    code.starts_with("InvalidNetworkInterfaceID.")
        || code == "InvalidInstanceID"
        || code.starts_with("InvalidInstanceID.")
        || code == "IncorrectInstanceState"
        || (code == "InvalidParameterValue" && message.to_ascii_lowercase().contains("private ip"))
}

/// Codes EC2 uses for throttling.
fn is_throttling_code(code: &str) -> bool {
    matches!(
        code,
        "RequestLimitExceeded"
            | "Throttling"
            | "ThrottlingException"
            | "RequestThrottled"
            | "TooManyRequestsException"
    )
}

/// Server-side codes that mean "try again", not "no".
fn is_transient_code(code: &str) -> bool {
    matches!(
        code,
        "InternalError"
            | "InternalFailure"
            | "ServiceUnavailable"
            | "Unavailable"
            | "RequestTimeout"
            | "RequestExpired"
    )
}

fn classify<E, R>(operation: &'static str, err: SdkError<E, R>) -> Ec2Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match &err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("Unknown").to_string();
            let message = se.err().message().unwrap_or_default().to_string();
            if is_throttling_code(&code) {
                Ec2Error::Unknown {
                    operation,
                    reason: format!("throttled: {code}"),
                    throttled: true,
                }
            } else if is_transient_code(&code) {
                Ec2Error::Unknown {
                    operation,
                    reason: format!("{code}: {message}"),
                    throttled: false,
                }
            } else {
                Ec2Error::Definite {
                    operation,
                    code,
                    message,
                }
            }
        }
        SdkError::TimeoutError(_) => Ec2Error::Unknown {
            operation,
            reason: "timed out".into(),
            throttled: false,
        },
        // Transport failures, unparseable responses (moto answers some 5xx with HTML) and the
        // like: we cannot know what EC2 did.
        other => Ec2Error::Unknown {
            operation,
            reason: format!("{:?}", aws_sdk_ec2::error::DisplayErrorContext(other)),
            throttled: false,
        },
    }
}

/// A token bucket that waits for tokens instead of failing.
#[derive(Debug)]
struct Bucket {
    capacity: f64,
    refill_per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(capacity: f64, refill_per_sec: f64) -> Self {
        Self {
            capacity,
            refill_per_sec,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// Takes a token, or returns how long until one is available.
    fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.refill_per_sec).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.refill_per_sec,
            ))
        }
    }
}

/// The client-side budget shared by every EC2 call of the process, sized like EC2's
/// per-account buckets so feip never provokes throttling on its own.
#[derive(Debug)]
pub struct Budget {
    mutating: Mutex<Bucket>,
    describe: Mutex<Bucket>,
}

impl Default for Budget {
    /// EC2's refill rates with a burst two tokens short of EC2's: requests reach EC2 a
    /// variable few milliseconds after they leave the client bucket, and without a reserve a
    /// burst of 100 associates drew a few `RequestLimitExceeded` (feip-bench, mass failover).
    fn default() -> Self {
        Self::new(48.0, 5.0, 98.0, 20.0)
    }
}

impl Budget {
    pub fn new(
        mutating_burst: f64,
        mutating_refill: f64,
        describe_burst: f64,
        describe_refill: f64,
    ) -> Self {
        Self {
            mutating: Mutex::new(Bucket::new(mutating_burst, mutating_refill)),
            describe: Mutex::new(Bucket::new(describe_burst, describe_refill)),
        }
    }

    async fn acquire(&self, kind: RequestKind) {
        let bucket = match kind {
            RequestKind::Mutating => &self.mutating,
            RequestKind::Describe => &self.describe,
        };
        loop {
            let wait = match bucket.lock().await.try_take(Instant::now()) {
                Ok(()) => return,
                Err(wait) => wait,
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// What EC2 says about one Elastic IP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressInfo {
    pub allocation_id: String,
    pub public_ip: String,
    pub association_id: Option<String>,
    pub network_interface_id: Option<String>,
    pub private_ip: Option<String>,
    pub instance_id: Option<String>,
    /// The address's EC2 tags (grants may match them: `FloatingElasticIPGrant`).
    pub tags: std::collections::BTreeMap<String, String>,
}

impl AddressInfo {
    /// Associated with this target: its interface, and its private IP when EC2 reports one.
    pub fn is_on(&self, target: &crate::decide::Target) -> bool {
        self.network_interface_id.as_deref() == Some(target.network_interface_id.as_str())
            && self
                .private_ip
                .as_deref()
                .is_none_or(|ip| ip == target.private_ip)
    }
}

/// One network interface of an instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub network_interface_id: String,
    pub device_index: i32,
    pub primary_private_ip: String,
    pub private_ips: Vec<String>,
}

/// What EC2 says about one instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceInfo {
    pub instance_id: String,
    /// pending | running | shutting-down | terminated | stopping | stopped
    pub state: String,
    pub vpc_id: Option<String>,
    pub availability_zone: Option<String>,
    pub interfaces: Vec<InterfaceInfo>,
}

impl InstanceInfo {
    pub fn is_running(&self) -> bool {
        self.state == "running"
    }

    pub fn interface(&self, device_index: i32) -> Option<&InterfaceInfo> {
        self.interfaces
            .iter()
            .find(|i| i.device_index == device_index)
    }
}

/// Result of a batched DescribeAddresses: addresses found, keyed by allocation id and by
/// public IP.
#[derive(Clone, Debug, Default)]
pub struct AddressSnapshot {
    pub by_allocation: BTreeMap<String, AddressInfo>,
    pub by_public_ip: BTreeMap<String, AddressInfo>,
}

impl AddressSnapshot {
    /// Adds or replaces one address.
    pub fn insert(&mut self, a: AddressInfo) {
        self.by_public_ip.insert(a.public_ip.clone(), a.clone());
        self.by_allocation.insert(a.allocation_id.clone(), a);
    }
}

/// Most values one EC2 filter takes.
const FILTER_VALUES_MAX: usize = 200;

/// Instance ids per DescribeInstances call (EC2 allows 200 filter values; moto answers a
/// 50-id filter several times faster than a 200-id one).
const INSTANCES_PER_CALL: usize = 50;

/// The EC2 client feip uses.
#[derive(Clone)]
pub struct Ec2 {
    client: aws_sdk_ec2::Client,
    budget: Arc<Budget>,
    timeout: Duration,
    observer: Option<Observer>,
}

impl Ec2 {
    pub fn new(
        client: aws_sdk_ec2::Client,
        budget: Arc<Budget>,
        timeout: Duration,
        observer: Option<Observer>,
    ) -> Self {
        Self {
            client,
            budget,
            timeout,
            observer,
        }
    }

    /// Builds the SDK client from the standard AWS environment (region, credentials chain,
    /// `AWS_ENDPOINT_URL`), with a per-attempt timeout and one SDK-level retry: the
    /// controller's own backoff handles longer outages.
    pub async fn from_env(region: Option<String>, timeout: Duration) -> aws_sdk_ec2::Client {
        Self::sdk_client(region, None, None, timeout).await
    }

    /// Like [`Ec2::from_env`], with an explicit endpoint and credentials (tests, moto).
    pub async fn sdk_client(
        region: Option<String>,
        endpoint: Option<&str>,
        credentials: Option<aws_sdk_ec2::config::Credentials>,
        timeout: Duration,
    ) -> aws_sdk_ec2::Client {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(timeout)
                    .connect_timeout(timeout.min(Duration::from_secs(3)))
                    .build(),
            );
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r));
        }
        if let Some(e) = endpoint {
            loader = loader.endpoint_url(e);
        }
        if let Some(c) = credentials {
            loader = loader.credentials_provider(c);
        }
        aws_sdk_ec2::Client::new(&loader.load().await)
    }

    /// The region the client sends to, if configured.
    pub fn region(&self) -> Option<&str> {
        self.client.config().region().map(|r| r.as_ref())
    }

    /// Runs one instrumented, budgeted, time-bounded read.
    async fn call<T, F>(&self, operation: &'static str, fut: F) -> Result<T, Ec2Error>
    where
        F: std::future::Future<Output = Result<T, Ec2Error>>,
    {
        self.budget.acquire(RequestKind::Describe).await;
        self.send(operation, fut).await
    }

    /// Runs one mutation: waits for the mutating budget, then takes this replica's
    /// [`MutationPermit`] and only then builds and sends the request. When the window closed
    /// meanwhile, nothing is sent ([`Ec2Error::NotSent`]). Every EC2 mutation goes through
    /// here: `build` only gets the SDK client together with a permit.
    async fn mutate<T, F, B>(
        &self,
        operation: &'static str,
        leadership: &Leadership,
        build: B,
    ) -> Result<T, Ec2Error>
    where
        B: FnOnce(&aws_sdk_ec2::Client, &MutationPermit) -> F,
        F: std::future::Future<Output = Result<T, Ec2Error>>,
    {
        self.budget.acquire(RequestKind::Mutating).await;
        let Some(permit) = leadership.permit() else {
            tracing::info!(operation, "mutation not sent: leadership window closed");
            return Err(Ec2Error::NotSent { operation });
        };
        // The permit is held until the answer (or the send timeout): the request is in flight
        // until then, and a graceful shutdown waits for it before handing leadership over. An
        // unknown outcome (timeout, broken connection, throttling or a server error after
        // retries) may still land later: the shutdown then waits out the safety margin too.
        let result = self.send(operation, build(&self.client, &permit)).await;
        match &result {
            Err(Ec2Error::Unknown { .. }) => permit.outcome_unknown(),
            _ => drop(permit),
        }
        result
    }

    /// Sends one request, time-bounded and instrumented.
    async fn send<T, F>(&self, operation: &'static str, fut: F) -> Result<T, Ec2Error>
    where
        F: std::future::Future<Output = Result<T, Ec2Error>>,
    {
        let started = Instant::now();
        // The SDK bounds each attempt; this outer bound covers both attempts and the backoff
        // between them, and is what the leadership safety margin must exceed.
        let result = match tokio::time::timeout(self.timeout * 2, fut).await {
            Ok(r) => r,
            Err(_) => Err(Ec2Error::Unknown {
                operation,
                reason: "timed out".into(),
                throttled: false,
            }),
        };
        let outcome = match &result {
            Ok(_) => Outcome::Success,
            Err(Ec2Error::Unknown {
                throttled: true, ..
            }) => Outcome::Throttled,
            Err(Ec2Error::Unknown { reason, .. }) if reason == "timed out" => Outcome::Timeout,
            Err(_) => Outcome::Error,
        };
        if let Some(obs) = &self.observer {
            obs(operation, outcome, started.elapsed());
        }
        match &result {
            Ok(_) => tracing::debug!(
                operation,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "ec2 call"
            ),
            Err(e) => tracing::warn!(operation, error = %e, "ec2 call failed"),
        }
        result
    }

    /// One DescribeAddresses for every address (by allocation id and by public IP). Addresses
    /// that do not exist are simply absent from the snapshot.
    pub async fn describe_addresses(
        &self,
        allocation_ids: &[String],
        public_ips: &[String],
    ) -> Result<AddressSnapshot, Ec2Error> {
        let mut snapshot = AddressSnapshot::default();
        if allocation_ids.is_empty() && public_ips.is_empty() {
            return Ok(snapshot);
        }
        // One request: filtering (rather than listing ids) makes unknown ids absent instead of
        // failing the whole batch with InvalidAllocationID.NotFound.
        let mut req = self.client.describe_addresses();
        // EC2 caps one filter at 200 values, and moto filters in quadratic time (3 s for
        // 1,000 ids): beyond that, list every address of the account (one call, EC2 does not
        // page DescribeAddresses) and pick.
        let filtered = allocation_ids.len() + public_ips.len() <= FILTER_VALUES_MAX;
        if filtered && !allocation_ids.is_empty() && public_ips.is_empty() {
            req = req.filters(
                Filter::builder()
                    .name("allocation-id")
                    .set_values(Some(allocation_ids.to_vec()))
                    .build(),
            );
        } else if filtered && allocation_ids.is_empty() {
            req = req.filters(
                Filter::builder()
                    .name("public-ip")
                    .set_values(Some(public_ips.to_vec()))
                    .build(),
            );
        }
        // With both kinds present, list every address of the account in one call and pick.
        let out = self
            .call("DescribeAddresses", async {
                req.send()
                    .await
                    .map_err(|e| classify("DescribeAddresses", e))
            })
            .await?;
        let wanted_allocations: HashSet<&str> = allocation_ids.iter().map(String::as_str).collect();
        let wanted_ips: HashSet<&str> = public_ips.iter().map(String::as_str).collect();
        for a in out.addresses() {
            let info = AddressInfo {
                allocation_id: a.allocation_id().unwrap_or_default().to_string(),
                public_ip: a.public_ip().unwrap_or_default().to_string(),
                // moto reports an unassociated address with empty strings, AWS omits the fields.
                association_id: non_empty(a.association_id()),
                network_interface_id: non_empty(a.network_interface_id()),
                private_ip: non_empty(a.private_ip_address()),
                instance_id: a
                    .instance_id()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
                tags: a
                    .tags()
                    .iter()
                    .filter_map(|t| {
                        Some((
                            t.key()?.to_string(),
                            t.value().unwrap_or_default().to_string(),
                        ))
                    })
                    .collect(),
            };
            if wanted_allocations.contains(info.allocation_id.as_str())
                || wanted_ips.contains(info.public_ip.as_str())
            {
                snapshot.insert(info);
            }
        }
        Ok(snapshot)
    }

    /// One DescribeInstances for all ids. The ids go in an `instance-id` filter, not as
    /// InstanceIds: with a filter an unknown id is simply absent from the result, while listing
    /// it would fail the whole call with InvalidInstanceID.NotFound.
    pub async fn describe_instances(
        &self,
        instance_ids: &[String],
    ) -> Result<BTreeMap<String, InstanceInfo>, Ec2Error> {
        let mut found = BTreeMap::new();
        if instance_ids.is_empty() {
            return Ok(found);
        }
        // EC2 pages DescribeInstances (moto after 100 instances) and caps one filter at 200
        // values: ask in chunks and follow NextToken, one budgeted call per page. Reading
        // only the first page made every instance after the 100th "not found".
        for chunk in instance_ids.chunks(INSTANCES_PER_CALL) {
            let mut next_token: Option<String> = None;
            loop {
                let req = self
                    .client
                    .describe_instances()
                    .filters(
                        Filter::builder()
                            .name("instance-id")
                            .set_values(Some(chunk.to_vec()))
                            .build(),
                    )
                    .set_next_token(next_token.take());
                let out = self
                    .call("DescribeInstances", async {
                        req.send()
                            .await
                            .map_err(|e| classify("DescribeInstances", e))
                    })
                    .await?;
                for r in out.reservations() {
                    for i in r.instances() {
                        let mut interfaces = Vec::new();
                        for n in i.network_interfaces() {
                            let ips: Vec<String> = n
                                .private_ip_addresses()
                                .iter()
                                .filter_map(|p| p.private_ip_address().map(str::to_string))
                                .collect();
                            interfaces.push(InterfaceInfo {
                                network_interface_id: n
                                    .network_interface_id()
                                    .unwrap_or_default()
                                    .to_string(),
                                device_index: n
                                    .attachment()
                                    .and_then(|a| a.device_index())
                                    .unwrap_or(-1),
                                primary_private_ip: n
                                    .private_ip_address()
                                    .unwrap_or_default()
                                    .to_string(),
                                private_ips: ips,
                            });
                        }
                        let info = InstanceInfo {
                            instance_id: i.instance_id().unwrap_or_default().to_string(),
                            state: i
                                .state()
                                .and_then(|s| s.name())
                                .map(|n| n.as_str().to_string())
                                .unwrap_or_default(),
                            vpc_id: i.vpc_id().map(str::to_string),
                            availability_zone: i
                                .placement()
                                .and_then(|p| p.availability_zone())
                                .map(str::to_string),
                            interfaces,
                        };
                        found.insert(info.instance_id.clone(), info);
                    }
                }
                next_token = out
                    .next_token()
                    .filter(|t| !t.is_empty())
                    .map(str::to_string);
                if next_token.is_none() {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// Associates the address with an interface and private IP. `AllowReassociation` is sent
    /// explicitly (`reassociate`: false when the address was read unassociated, so an
    /// association made since is refused, not taken). The permit is taken after the budget
    /// wait (see [`Ec2::mutate`]).
    pub async fn associate(
        &self,
        leadership: &Leadership,
        allocation_id: &str,
        network_interface_id: &str,
        private_ip: &str,
        reassociate: bool,
    ) -> Result<String, Ec2Error> {
        let out = self
            .mutate("AssociateAddress", leadership, |client, _permit| {
                // No SDK retry: AssociateAddress has no idempotency token, and an attempt that
                // timed out may have happened (a resend is a second, charged remap). The
                // caller reads the outcome back before trying again.
                client
                    .associate_address()
                    .allocation_id(allocation_id)
                    .network_interface_id(network_interface_id)
                    .private_ip_address(private_ip)
                    .allow_reassociation(reassociate)
                    .customize()
                    .config_override(
                        aws_sdk_ec2::config::Builder::default()
                            .retry_config(aws_config::retry::RetryConfig::disabled()),
                    )
                    .send()
                    .map_err(|e| classify("AssociateAddress", e))
            })
            .await?;
        Ok(out.association_id().unwrap_or_default().to_string())
    }

    /// Disassociates; an association that no longer exists counts as success.
    pub async fn disassociate(
        &self,
        leadership: &Leadership,
        association_id: &str,
    ) -> Result<(), Ec2Error> {
        match self
            .mutate("DisassociateAddress", leadership, |client, _permit| {
                client
                    .disassociate_address()
                    .association_id(association_id)
                    .send()
                    .map_err(|e| classify("DisassociateAddress", e))
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("InvalidAssociationID.NotFound") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(str::to_string)
}

/// Parses `aws:///<az>/<instance-id>` (and the `aws://<az>/<instance-id>` variant).
pub fn instance_id_from_provider_id(provider_id: &str) -> Option<String> {
    let rest = provider_id.strip_prefix("aws://")?;
    let id = rest.rsplit('/').next()?;
    (id.starts_with("i-") && id.len() > 2).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_ids_parse() {
        assert_eq!(
            instance_id_from_provider_id("aws:///ap-northeast-1a/i-0123abcd").as_deref(),
            Some("i-0123abcd")
        );
        assert_eq!(
            instance_id_from_provider_id("aws://ap-northeast-1a/i-0123abcd").as_deref(),
            Some("i-0123abcd")
        );
        assert_eq!(instance_id_from_provider_id("gce://p/z/n"), None);
        assert_eq!(
            instance_id_from_provider_id("aws:///ap-northeast-1a/"),
            None
        );
    }

    #[test]
    fn bucket_refills_and_reports_wait() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, 5.0);
        b.last = t0;
        assert!(b.try_take(t0).is_ok());
        assert!(b.try_take(t0).is_ok());
        let wait = b.try_take(t0).expect_err("empty");
        assert!(
            wait <= Duration::from_millis(200) && wait > Duration::from_millis(150),
            "{wait:?}"
        );
        assert!(b.try_take(t0 + Duration::from_millis(200)).is_ok());
    }

    #[test]
    fn only_codes_about_the_target_blame_it() {
        let e = |code: &str, message: &str| Ec2Error::Definite {
            operation: "AssociateAddress",
            code: code.into(),
            message: message.into(),
        };
        for code in [
            "InvalidNetworkInterfaceID.NotFound",
            "InvalidNetworkInterfaceID.Malformed",
            "InvalidInstanceID",
            "InvalidInstanceID.NotFound",
            "InvalidInstanceID.Malformed",
            "IncorrectInstanceState",
        ] {
            assert!(e(code, "").blames_target(), "{code}");
        }
        // The test EC2's (and AWS's) answer for a private IP the interface does not have.
        let ip =
            "The specified private IP address 10.0.0.9 is not assigned to network interface eni-1";
        assert!(e("InvalidParameterValue", ip).blames_target());
        for code in [
            "InvalidParameterValue",
            "InvalidAllocationID.NotFound",
            "InvalidAddress.NotFound",
            "InvalidAddressID.NotFound",
            "UnauthorizedOperation",
            "AuthFailure",
            "OptInRequired",
            "Blocked",
            "PendingVerification",
            "Gateway.NotAttached",
            "OperationNotPermitted",
            "Resource.AlreadyAssociated",
            "InvalidParameterCombination",
            "MissingParameter",
            "IncorrectState",
            "Foo.Bar",
            "",
        ] {
            assert!(!e(code, "Refused").blames_target(), "{code}");
        }
        assert!(
            !e(
                "InvalidParameterValue",
                "Invalid value 'x' for AllocationId"
            )
            .blames_target()
        );
        assert!(
            !Ec2Error::Unknown {
                operation: "x",
                reason: "t".into(),
                throttled: true
            }
            .blames_target()
        );
    }
}
