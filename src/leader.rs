//! Leader election between controller replicas on a `coordination.k8s.io/v1` Lease.
//!
//! Only the leader mutates EC2, and only while its leadership is valid with a safety margin
//! longer than one EC2 call (spec rule 6). Staleness of somebody else's lease is judged the
//! client-go way (rule 7): by when *this* process last saw the record change, measured on the
//! local monotonic clock, never by comparing the remote `renewTime` with the local wall clock.
//!
//! Why the arithmetic is safe: a leader's validity ends `lease_duration` after it *sent* its
//! last successful write. A follower only sees that write after it was sent, and only takes
//! over once `lease_duration` has passed since it saw the record change, so it sends its
//! takeover no earlier than the old leader's validity ended. `can_mutate()` stops a further
//! `safety_margin` before that, so an EC2 call started just in time still finishes in time.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// How this replica takes part in the election.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// Namespace of the Lease (usually the controller's own namespace).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity, unique among replicas (usually the pod name).
    pub identity: String,
    /// How long a successful write keeps the holder's leadership valid, and how long a
    /// follower waits after the record last changed before it takes over.
    pub lease_duration: Duration,
    /// The leader steps down when it could not renew for this long.
    pub renew_deadline: Duration,
    /// Pause between attempts (renewals and acquisition attempts).
    pub retry_period: Duration,
    /// `can_mutate()` turns false this long before leadership validity ends. Must exceed the
    /// longest EC2 call (its timeout).
    pub safety_margin: Duration,
}

impl LeaderConfig {
    /// A config with the client-go default timings (15 s / 10 s / 2 s) and a 5 s safety margin.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            safety_margin: Duration::from_secs(5),
        }
    }

    /// Rejects settings under which the election would be unsafe or could never lead.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.namespace.is_empty() || self.name.is_empty() {
            bail!("leader election: the Lease namespace and name must be set");
        }
        if self.identity.is_empty() {
            bail!(
                "leader election: the identity must not be empty (an empty holder means released)"
            );
        }
        if self.retry_period.is_zero() || self.safety_margin.is_zero() {
            bail!("leader election: retry period and safety margin must be positive");
        }
        if self.lease_duration < Duration::from_secs(1) {
            bail!(
                "leader election: lease duration {:?} is below the Lease API's 1 s resolution",
                self.lease_duration
            );
        }
        if self.lease_duration <= self.renew_deadline {
            bail!(
                "leader election: lease duration {:?} must exceed the renew deadline {:?}",
                self.lease_duration,
                self.renew_deadline
            );
        }
        // client-go's rule: a renewal must get a jittered retry or two before the deadline.
        if self.renew_deadline.as_secs_f64() <= self.retry_period.as_secs_f64() * 1.2 {
            bail!(
                "leader election: renew deadline {:?} must exceed 1.2 x the retry period {:?}",
                self.renew_deadline,
                self.retry_period
            );
        }
        // Right after a renewal `lease_duration - retry_period` at least is left; if the margin
        // ate all of it the leader could never mutate.
        if self.safety_margin + self.retry_period >= self.lease_duration {
            bail!(
                "leader election: safety margin {:?} + retry period {:?} must be below the lease duration {:?}",
                self.safety_margin,
                self.retry_period,
                self.lease_duration
            );
        }
        Ok(())
    }

    /// `leaseDurationSeconds` as written to the Lease: rounded up, so an observer never waits
    /// less than we promise.
    fn lease_duration_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

/// Proof that this replica's mutation window was open when the permit was taken. Only
/// [`Leadership::permit`] makes one. The EC2 client is private to `aws::Ec2`, whose only path
/// to a mutating request is `Ec2::mutate`, which hands the client out together with a permit
/// taken after the budget wait; holder-Lease writes and deletes go through
/// `controller::holder_lease`, whose send functions take a permit by value. So outside those
/// two files a mutation without the leadership check does not compile. A permit is taken
/// immediately before its request is sent; it is neither `Clone` nor kept. While it lives
/// its request counts as in flight: a graceful shutdown waits for every permit to be dropped
/// before it hands the Lease over ([`Leadership::stop_mutating`], [`Leadership::drain`]), so
/// hold it until the request's answer (or its timeout) is in.
#[derive(Debug)]
#[must_use = "a permit is taken right before the request it allows"]
pub struct MutationPermit {
    mutate_until: Instant,
    epoch: Option<i32>,
    issued_at: Instant,
    in_flight: InFlight,
}

/// One request sent under a permit and not answered yet.
#[derive(Debug)]
struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.flight.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.flight.idle.notify_waiters();
        }
    }
}

/// Mutations in flight, and whether new ones may still start (false once shutting down).
#[derive(Debug, Default)]
struct Flight {
    closed: AtomicBool,
    count: AtomicUsize,
    idle: tokio::sync::Notify,
    /// The latest send instant of a request whose outcome is unknown: it may land until the
    /// safety margin after it (the bound every leadership window already assumes).
    unknown_sent: Mutex<Option<Instant>>,
}

impl MutationPermit {
    /// The last instant at which the window this permit was taken in allowed a mutation to
    /// start.
    pub fn mutate_until(&self) -> Instant {
        self.mutate_until
    }

    /// The leadership term this permit was taken in (see [`Leadership::epoch`]).
    pub fn epoch(&self) -> Option<i32> {
        self.epoch
    }

    /// Ends this permit's request with an unknown outcome (no answer in time, a broken
    /// connection, a server error): the request may still land after its sender stopped
    /// waiting, so [`Leadership::drain`] keeps counting it until the safety margin after its
    /// send. Dropping the permit instead says the answer is in.
    pub fn outcome_unknown(self) {
        let mut latest = self
            .in_flight
            .0
            .flight
            .unknown_sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if latest.is_none_or(|t| t < self.issued_at) {
            *latest = Some(self.issued_at);
        }
    }
}

/// This replica's view of its own leadership, shared with the code that mutates EC2.
/// Cheap to clone; all clones see the same state.
#[derive(Clone, Debug)]
pub struct Leadership {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<LeaderState>,
    changes: watch::Sender<bool>,
    api: Mutex<ApiReachability>,
    flight: Flight,
    /// Every gain, renewal and loss of leadership, for tests that check each mutation's send
    /// instant against the window it was sent in.
    #[cfg(feature = "testenv")]
    validity_log: Mutex<Vec<ValidityRecord>>,
}

/// One change of this replica's leadership validity, as the election recorded it.
#[cfg(feature = "testenv")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidityRecord {
    /// When the change happened: the send instant of a successful write, or a step-down.
    pub at: Instant,
    /// Valid until then; `None` from a step-down on (not leader).
    pub valid_until: Option<Instant>,
}

/// Whether the apiserver serves this replica's election requests: the election loop talks to
/// the API every retry period, so it is the controller's cheapest outage detector. While the
/// API cannot serve this replica (requests failing, or stalled: the apiserver holds writes
/// while etcd is down), kubelets most likely cannot renew their heartbeats either, so
/// heartbeat silence over that span proves nothing about the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ApiReachability {
    /// Start of the oldest election request not answered yet (failed ones included).
    waiting_since: Option<Instant>,
    /// A request since `waiting_since` failed outright.
    failed: bool,
    /// An unanswered request counts as an outage once it is older than this.
    slow: Duration,
    /// When the API answered again after the last outage.
    recovered_at: Option<Instant>,
}

impl Default for ApiReachability {
    fn default() -> Self {
        Self {
            waiting_since: None,
            failed: false,
            slow: Duration::from_secs(1),
            recovered_at: None,
        }
    }
}

impl ApiReachability {
    fn failing_since(&self, now: Instant) -> Option<Instant> {
        let since = self.waiting_since?;
        (self.failed || now.saturating_duration_since(since) > self.slow).then_some(since)
    }

    fn started(&mut self, now: Instant) {
        self.waiting_since.get_or_insert(now);
    }

    fn answered(&mut self, now: Instant) {
        if self.failing_since(now).is_some() {
            self.recovered_at = Some(now);
        }
        self.waiting_since = None;
        self.failed = false;
    }

    fn failed(&mut self, now: Instant) {
        self.waiting_since.get_or_insert(now);
        self.failed = true;
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LeaderState {
    leader: bool,
    /// When the current leadership stops being valid (last successful write sent + lease duration).
    valid_until: Option<Instant>,
    /// `valid_until - safety_margin`: the last instant at which an EC2 mutation may start.
    mutate_until: Option<Instant>,
    /// The leader Lease's `leaseTransitions` as this replica last wrote it (its term).
    epoch: Option<i32>,
}

impl Default for Leadership {
    fn default() -> Self {
        Self::new()
    }
}

impl Leadership {
    /// Not leader until `run` wins the Lease.
    pub fn new() -> Self {
        let (changes, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(LeaderState::default()),
                changes,
                api: Mutex::new(ApiReachability::default()),
                flight: Flight::default(),
                #[cfg(feature = "testenv")]
                validity_log: Mutex::new(Vec::new()),
            }),
        }
    }

    fn state(&self) -> LeaderState {
        *self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the election loop currently considers this replica the leader. Use
    /// [`can_mutate`](Self::can_mutate) to gate EC2 mutations.
    pub fn is_leader(&self) -> bool {
        self.state().leader
    }

    /// True only while leader and `now + safety_margin < valid_until`. It turns false on its
    /// own when renewals stall, before the election loop notices.
    pub fn can_mutate(&self) -> bool {
        self.can_mutate_at(Instant::now())
    }

    /// A permit to send one EC2 mutation or holder-Lease write now, or `None` when
    /// [`can_mutate`](Self::can_mutate) is false. Take it immediately before the request is
    /// sent (after any budget wait or extra read), never earlier, and let the send consume it.
    pub fn permit(&self) -> Option<MutationPermit> {
        let flight = &self.inner.flight;
        // Counted before the checks, so `drain` either sees this request or we see `closed`.
        flight.count.fetch_add(1, Ordering::SeqCst);
        let in_flight = InFlight(self.inner.clone());
        if flight.closed.load(Ordering::SeqCst) {
            return None;
        }
        let now = Instant::now();
        let s = self.state();
        let until = s.mutate_until.filter(|until| s.leader && now < *until)?;
        Some(MutationPermit {
            mutate_until: until,
            epoch: s.epoch,
            issued_at: now,
            in_flight,
        })
    }

    /// [`can_mutate`](Self::can_mutate) at a given instant.
    pub fn can_mutate_at(&self, now: Instant) -> bool {
        let s = self.state();
        s.leader
            && !self.inner.flight.closed.load(Ordering::SeqCst)
            && s.mutate_until.is_some_and(|until| now < until)
    }

    /// Starts a graceful shutdown: from now on no permit is issued (mutations already sent
    /// keep theirs). The election keeps the Lease until [`drain`](Self::drain) says the
    /// in-flight requests are answered, so no successor starts while they could still land.
    pub fn stop_mutating(&self) {
        self.inner.flight.closed.store(true, Ordering::SeqCst);
    }

    /// Requests sent under a permit and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.inner.flight.count.load(Ordering::SeqCst)
    }

    /// Waits until no mutation is in flight and none whose outcome is unknown can still land,
    /// at most `bound`, which is the safety margin: how long after its send a request may
    /// still take effect. Returns whether that happened.
    pub async fn drain(&self, bound: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        let flight = &self.inner.flight;
        loop {
            let idle = flight.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if flight.count.load(Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return false;
            }
        }
        // Nothing is being sent any more. An abandoned request can land until `bound` after
        // its send, which is before the deadline: it was sent before this call.
        let unknown_sent = *flight
            .unknown_sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(left) =
            unknown_sent.and_then(|sent| (sent + bound).checked_duration_since(Instant::now()))
        {
            tracing::info!(
                wait_ms = left.as_millis() as u64,
                "a mutation's outcome is unknown; waiting until it can no longer land"
            );
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + left)).await;
        }
        true
    }

    /// Every gain, renewal and loss of leadership so far (tests only).
    #[cfg(feature = "testenv")]
    pub fn validity_log(&self) -> Vec<ValidityRecord> {
        self.inner
            .validity_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    #[cfg(feature = "testenv")]
    fn log_validity(&self, at: Instant, valid_until: Option<Instant>) {
        self.inner
            .validity_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(ValidityRecord { at, valid_until });
    }

    #[cfg(not(feature = "testenv"))]
    fn log_validity(&self, _at: Instant, _valid_until: Option<Instant>) {}

    /// When the current leadership stops being valid; `None` when not leader.
    pub fn valid_until(&self) -> Option<Instant> {
        let s = self.state();
        s.valid_until.filter(|_| s.leader)
    }

    /// The last instant an EC2 mutation may start (`valid_until - safety_margin`); callers can
    /// bound their own timeouts with it. `None` when not leader.
    pub fn mutation_deadline(&self) -> Option<Instant> {
        let s = self.state();
        s.mutate_until.filter(|_| s.leader)
    }

    /// Since when the apiserver has not served this replica's election requests: they failed
    /// (transport errors, timeouts, 5xx, 429) or have been waiting longer than the slow
    /// threshold (the retry period, at least 500 ms). `None` while it serves them. Refusals
    /// such as 403 are answers, not outages.
    pub fn api_failing_since(&self) -> Option<Instant> {
        self.api().failing_since(Instant::now())
    }

    /// When the apiserver last served a request again after an outage; `None` if it never
    /// failed.
    pub fn api_recovered_at(&self) -> Option<Instant> {
        self.api().recovered_at
    }

    fn api(&self) -> ApiReachability {
        *self.api_mut()
    }

    fn api_mut(&self) -> std::sync::MutexGuard<'_, ApiReachability> {
        self.inner
            .api
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows `is_leader()`; the value changes on every gain and loss of leadership.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.inner.changes.subscribe()
    }

    /// The term of the current leadership: the leader Lease's `leaseTransitions`, which grows
    /// with every change of leader, so a later leader always has a larger epoch. `None` while
    /// not leading. Holder-Lease writes carry it; a decision stamped with an older epoch was
    /// made by a leader that has been replaced since.
    pub fn epoch(&self) -> Option<i32> {
        let s = self.state();
        s.epoch.filter(|_| s.leader)
    }

    /// Records a successful write sent at `sent_at` in term `epoch`. Returns true if
    /// leadership was just gained.
    fn lead(
        &self,
        sent_at: Instant,
        lease_duration: Duration,
        safety_margin: Duration,
        epoch: Option<i32>,
    ) -> bool {
        let valid_until = sent_at + lease_duration;
        self.log_validity(sent_at, Some(valid_until));
        let gained = {
            let mut s = self
                .inner
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let gained = !s.leader;
            *s = LeaderState {
                leader: true,
                valid_until: Some(valid_until),
                mutate_until: Some(valid_until.checked_sub(safety_margin).unwrap_or(sent_at)),
                epoch,
            };
            gained
        };
        if gained {
            self.inner.changes.send_replace(true);
        }
        gained
    }

    /// Stops leadership at once. Returns true if this replica was leader.
    fn step_down(&self) -> bool {
        let was = {
            let mut s = self
                .inner
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut *s).leader
        };
        self.log_validity(Instant::now(), None);
        if was {
            self.inner.changes.send_replace(false);
        }
        was
    }
}

/// Steps down if the election future is dropped (task aborted or panicked): a replica that no
/// longer renews must not keep mutating until its validity runs out.
struct StepDownOnDrop(Leadership);

impl Drop for StepDownOnDrop {
    fn drop(&mut self) {
        self.0.step_down();
    }
}

/// The parts of a Lease record whose change restarts a follower's expiry clock.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RecordKey {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    resource_version: Option<String>,
}

impl RecordKey {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            resource_version: lease.metadata.resource_version.clone(),
        }
    }
}

/// When this process last saw the Lease record change (local monotonic clock).
#[derive(Clone, Debug)]
struct Observation {
    key: RecordKey,
    at: Instant,
}

impl Observation {
    /// Updates the observation with a record read at `now`; the clock restarts only if the
    /// record changed.
    fn observe(previous: Option<Observation>, key: RecordKey, now: Instant) -> Observation {
        match previous {
            Some(prev) if prev.key == key => prev,
            _ => Observation { key, at: now },
        }
    }
}

/// What to do about a Lease record as read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Judgement {
    /// The record names us: renew it.
    Ours,
    /// No holder (never held or released): take it now.
    Free,
    /// Held by another replica that has not renewed for the lease duration as we observed it.
    Expired { holder: String },
    /// Held by another replica whose lease is still running by our observation.
    HeldByOther { holder: String, expires_at: Instant },
}

/// Judges a record, client-go style: the holder's lease expires `duration` after this process
/// last saw the record change; the remote `renewTime` is never compared with the local clock.
/// `duration` is the longer of the record's `leaseDurationSeconds` and our own, so a holder
/// configured with a longer lease is never cut short.
fn judge(
    observation: &Observation,
    record_seconds: Option<i32>,
    ours: Duration,
    identity: &str,
    now: Instant,
) -> Judgement {
    let Some(holder) = observation.key.holder.clone() else {
        return Judgement::Free;
    };
    if holder == identity {
        return Judgement::Ours;
    }
    let recorded = record_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or_default();
    let expires_at = observation.at + recorded.max(ours);
    if now >= expires_at {
        Judgement::Expired { holder }
    } else {
        Judgement::HeldByOther { holder, expires_at }
    }
}

/// The record after `identity` acquired or renewed it at wall time `now`.
fn acquired(
    previous: Option<&LeaseSpec>,
    identity: &str,
    lease_duration_seconds: i32,
    now: Timestamp,
) -> LeaseSpec {
    let previous = previous.cloned().unwrap_or_default();
    let previous_holder = previous.holder_identity.as_deref().unwrap_or_default();
    let same_holder = previous_holder == identity;
    LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(lease_duration_seconds),
        renew_time: Some(MicroTime(now)),
        acquire_time: if same_holder {
            previous.acquire_time.clone().or(Some(MicroTime(now)))
        } else {
            Some(MicroTime(now))
        },
        // The first record starts at 0; every change of holder (including from "released")
        // counts one transition, as in client-go.
        lease_transitions: match previous.lease_transitions {
            None => Some(0),
            Some(n) if same_holder => Some(n),
            Some(n) => Some(n.saturating_add(1)),
        },
        ..previous
    }
}

/// The record after its holder released it: no holder, so successors need not wait.
fn released(previous: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        acquire_time: Some(MicroTime(now)),
        ..previous.clone()
    }
}

/// An error that means the API could not serve the request (as opposed to refusing it).
fn is_outage(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        _ => true,
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

/// Result of one acquire-or-renew attempt.
enum Attempt {
    /// We hold the Lease; the successful write was sent at `sent_at`.
    Leading { sent_at: Instant },
    /// Another replica holds a lease that is still running.
    Following { holder: String },
    /// Somebody else wrote the Lease concurrently (409); read it again next round.
    Contended,
}

struct Elector {
    api: Api<Lease>,
    cfg: LeaderConfig,
    leadership: Leadership,
    /// Send time of our last successful write while leading.
    last_renew: Option<Instant>,
    /// The Lease as we last wrote it (latest resourceVersion), for renewals without a read.
    written: Option<Lease>,
    observation: Option<Observation>,
}

impl Elector {
    async fn attempt(&mut self) -> Result<Attempt, kube::Error> {
        let pp = PostParams::default();
        // Fast path while leading: renew the version we wrote last; a conflict means somebody
        // else wrote in between, so read it again.
        if self.last_renew.is_some()
            && let Some(mut lease) = self.written.clone()
        {
            lease.spec = Some(acquired(
                lease.spec.as_ref(),
                &self.cfg.identity,
                self.cfg.lease_duration_seconds(),
                Timestamp::now(),
            ));
            let sent_at = Instant::now();
            match self.api.replace(&self.cfg.name, &pp, &lease).await {
                Ok(written) => {
                    self.written = Some(written);
                    return Ok(Attempt::Leading { sent_at });
                }
                Err(e) if is_conflict(&e) => self.written = None,
                Err(e) => return Err(e),
            }
        }

        let Some(current) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(acquired(
                    None,
                    &self.cfg.identity,
                    self.cfg.lease_duration_seconds(),
                    Timestamp::now(),
                )),
            };
            let sent_at = Instant::now();
            return match self.api.create(&pp, &lease).await {
                Ok(written) => {
                    self.written = Some(written);
                    Ok(Attempt::Leading { sent_at })
                }
                // AlreadyExists: another replica created it first.
                Err(e) if is_conflict(&e) => Ok(Attempt::Contended),
                Err(e) => Err(e),
            };
        };

        let now = Instant::now();
        let observation =
            Observation::observe(self.observation.take(), RecordKey::of(&current), now);
        let record_seconds = current.spec.as_ref().and_then(|s| s.lease_duration_seconds);
        let judgement = judge(
            &observation,
            record_seconds,
            self.cfg.lease_duration,
            &self.cfg.identity,
            now,
        );
        self.observation = Some(observation);
        match judgement {
            Judgement::HeldByOther { holder, expires_at } => {
                tracing::debug!(lease = %self.cfg.name, %holder, expires_in = ?expires_at.saturating_duration_since(now), "lease held by another replica");
                Ok(Attempt::Following { holder })
            }
            Judgement::Ours | Judgement::Free | Judgement::Expired { .. } => {
                if let Judgement::Expired { holder } = &judgement {
                    tracing::info!(lease = %self.cfg.name, previous = %holder, "lease expired by local observation; taking over");
                }
                let mut lease = current;
                lease.spec = Some(acquired(
                    lease.spec.as_ref(),
                    &self.cfg.identity,
                    self.cfg.lease_duration_seconds(),
                    Timestamp::now(),
                ));
                let sent_at = Instant::now();
                match self.api.replace(&self.cfg.name, &pp, &lease).await {
                    Ok(written) => {
                        self.written = Some(written);
                        Ok(Attempt::Leading { sent_at })
                    }
                    Err(e) if is_conflict(&e) => Ok(Attempt::Contended),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// One election round, bounded so that a hung apiserver cannot stall it past the renew
    /// deadline.
    async fn round(&mut self) {
        if self
            .last_renew
            .is_some_and(|at| Instant::now() >= at + self.cfg.renew_deadline)
        {
            self.step_down("renew deadline passed");
        }
        // While leading, the attempt may only use what is left until the renew deadline.
        let budget = match self.last_renew {
            Some(at) => (at + self.cfg.renew_deadline).saturating_duration_since(Instant::now()),
            None => self.cfg.renew_deadline,
        };
        self.leadership.api_mut().started(Instant::now());
        let outcome = tokio::time::timeout(budget, self.attempt()).await;
        match &outcome {
            Ok(Ok(_)) => self.leadership.api_mut().answered(Instant::now()),
            Ok(Err(e)) if !is_outage(e) => self.leadership.api_mut().answered(Instant::now()),
            Ok(Err(_)) | Err(_) => self.leadership.api_mut().failed(Instant::now()),
        }
        match outcome {
            Ok(Ok(Attempt::Leading { sent_at })) => {
                self.last_renew = Some(sent_at);
                let epoch = self
                    .written
                    .as_ref()
                    .and_then(|l| l.spec.as_ref()?.lease_transitions);
                if self.leadership.lead(
                    sent_at,
                    self.cfg.lease_duration,
                    self.cfg.safety_margin,
                    epoch,
                ) {
                    tracing::info!(lease = %self.cfg.name, namespace = %self.cfg.namespace, identity = %self.cfg.identity, "became leader");
                }
            }
            Ok(Ok(Attempt::Following { holder })) => {
                if self.last_renew.is_some() {
                    self.step_down(&format!("lease is held by {holder}"));
                }
            }
            Ok(Ok(Attempt::Contended)) => {
                tracing::debug!(lease = %self.cfg.name, "lease was written concurrently");
            }
            Ok(Err(e)) => self.failed(&format!("{e}")),
            Err(_) => self.failed(&format!("lease request timed out after {budget:?}")),
        }
        if self
            .last_renew
            .is_some_and(|at| Instant::now() >= at + self.cfg.renew_deadline)
        {
            self.step_down("renew deadline passed");
        }
    }

    fn failed(&self, error: &str) {
        if self.last_renew.is_some() {
            tracing::warn!(lease = %self.cfg.name, error, "failed to renew leadership");
        } else {
            tracing::warn!(lease = %self.cfg.name, error, "failed to acquire leadership (check the leader Lease RBAC and namespace)");
        }
    }

    fn step_down(&mut self, reason: &str) {
        self.last_renew = None;
        self.written = None;
        if self.leadership.step_down() {
            tracing::info!(lease = %self.cfg.name, namespace = %self.cfg.namespace, identity = %self.cfg.identity, reason, "lost leadership");
        }
    }

    /// Pause before the next round: the retry period, jittered up to +20% for followers so
    /// candidates do not collide in lockstep.
    fn pause(&self) -> Duration {
        if self.last_renew.is_some() {
            self.cfg.retry_period
        } else {
            self.cfg
                .retry_period
                .mul_f64(1.0 + rand::random_range(0.0..0.2))
        }
    }

    /// Hands the Lease over on shutdown so a successor does not wait a whole lease duration.
    /// Leadership is already given up locally before this is sent.
    async fn release(&mut self) {
        let release = async {
            let Some(current) = self.api.get_opt(&self.cfg.name).await? else {
                return Ok::<_, kube::Error>(false);
            };
            let Some(spec) = current
                .spec
                .as_ref()
                .filter(|s| s.holder_identity.as_deref() == Some(self.cfg.identity.as_str()))
            else {
                return Ok(false);
            };
            let mut lease = current.clone();
            lease.spec = Some(released(spec, Timestamp::now()));
            // Optimistic concurrency: never overwrite a record somebody else changed.
            self.api
                .replace(&self.cfg.name, &PostParams::default(), &lease)
                .await?;
            Ok(true)
        };
        match tokio::time::timeout(self.cfg.renew_deadline, release).await {
            Ok(Ok(true)) => tracing::info!(lease = %self.cfg.name, "released the lease"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(lease = %self.cfg.name, error = %e, "failed to release the lease")
            }
            Err(_) => tracing::warn!(lease = %self.cfg.name, "timed out releasing the lease"),
        }
    }
}

/// Takes part in the election until `shutdown` resolves, keeping `leadership` up to date.
/// On shutdown it stops issuing permits, waits (at most the safety margin) for the mutations
/// in flight, steps down and then releases the Lease if it holds it, so a successor does not
/// wait a whole lease duration. With mutations still in flight it keeps the Lease instead. Returns `Err` only for an invalid config; API errors are
/// retried (an unreachable apiserver makes a leader step down, never crash).
pub async fn run(
    client: Client,
    cfg: LeaderConfig,
    leadership: Leadership,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    cfg.validate().context("invalid leader election config")?;
    let _guard = StepDownOnDrop(leadership.clone());
    leadership.api_mut().slow = cfg.retry_period.max(Duration::from_millis(500));
    let mut elector = Elector {
        api: Api::namespaced(client, &cfg.namespace),
        cfg,
        leadership,
        last_renew: None,
        written: None,
        observation: None,
    };
    tracing::info!(lease = %elector.cfg.name, namespace = %elector.cfg.namespace, identity = %elector.cfg.identity, "joining leader election");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = elector.round() => {}
        }
        let pause = elector.pause();
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    // Stop starting mutations, let the ones in flight be answered, and only then hand the
    // Lease over: a successor that started earlier could send its own while ours still land
    // (rule 6). Each in-flight EC2 call is bounded by twice the EC2 timeout, below the margin;
    // one whose outcome stayed unknown is waited out until the margin after its send.
    elector.leadership.stop_mutating();
    let drained = elector.leadership.drain(elector.cfg.safety_margin).await;
    elector.step_down("shutting down");
    if drained {
        elector.release().await;
    } else {
        tracing::warn!(
            lease = %elector.cfg.name,
            in_flight = elector.leadership.in_flight(),
            "mutations still in flight at shutdown; not releasing the lease, so a successor waits for it to expire"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    #[test]
    fn api_reachability_tracks_failed_and_stalled_requests() {
        let s = Duration::from_secs;
        let t0 = Instant::now();
        let mut a = ApiReachability::default();
        assert_eq!((a.failing_since(t0), a.recovered_at), (None, None));
        // Quick answers are no outage.
        a.started(t0);
        assert_eq!(a.failing_since(t0 + Duration::from_millis(900)), None);
        a.answered(t0 + Duration::from_millis(900));
        assert_eq!(a.recovered_at, None);
        // A stalled request is an outage once older than the slow threshold (1 s).
        a.started(t0 + s(2));
        assert_eq!(a.failing_since(t0 + s(3)), None);
        assert_eq!(a.failing_since(t0 + s(4)), Some(t0 + s(2)));
        a.answered(t0 + s(4));
        assert_eq!(
            (a.failing_since(t0 + s(4)), a.recovered_at),
            (None, Some(t0 + s(4)))
        );
        // Failures count at once and from the first one on.
        a.started(t0 + s(5));
        a.failed(t0 + s(5));
        assert_eq!(a.failing_since(t0 + s(5)), Some(t0 + s(5)));
        a.started(t0 + s(6));
        a.failed(t0 + s(6));
        assert_eq!(a.failing_since(t0 + s(6)), Some(t0 + s(5)));
        a.started(t0 + s(7));
        a.answered(t0 + s(7));
        assert_eq!(
            (a.failing_since(t0 + s(7)), a.recovered_at),
            (None, Some(t0 + s(7)))
        );
    }

    #[test]
    fn permits_are_issued_only_inside_the_mutation_window() {
        let margin = Duration::from_secs(5);
        let l = Leadership::new();
        assert!(l.permit().is_none(), "a follower gets no permit");
        let now = Instant::now();
        l.lead(now, LEASE, margin, Some(3));
        let p = l.permit().expect("a fresh leader gets a permit");
        assert_eq!(p.mutate_until(), now + LEASE - margin);
        assert_eq!(
            (p.epoch(), l.epoch()),
            (Some(3), Some(3)),
            "the term goes with the permit"
        );
        // Still leader, but the last renewal was sent so long ago that the window closed.
        if let Some(long_ago) = now.checked_sub(LEASE) {
            l.lead(long_ago, LEASE, margin, Some(3));
            assert!(l.is_leader());
            assert!(l.permit().is_none(), "no permit inside the safety margin");
        }
        l.lead(now, LEASE, margin, Some(3));
        l.step_down();
        assert!(l.permit().is_none(), "no permit after stepping down");
        assert_eq!(l.epoch(), None, "no term after stepping down");
    }

    /// A mutation whose outcome is unknown (it timed out, the connection broke) may still land
    /// after its sender gave up, up to the safety margin after it was sent: a graceful
    /// hand-over waits that out, as a successor waiting for the Lease to expire would. An
    /// answered one holds nothing up.
    #[tokio::test]
    async fn a_drain_waits_out_a_mutation_whose_outcome_is_unknown() {
        let margin = Duration::from_millis(300);
        let l = Leadership::new();
        l.lead(Instant::now(), LEASE, margin, Some(1));
        drop(l.permit().expect("a leader gets a permit"));
        assert!(
            tokio::time::timeout(Duration::from_secs(10), l.drain(Duration::from_secs(60)))
                .await
                .is_ok_and(|drained| drained),
            "an answered mutation is drained at once"
        );

        let l = Leadership::new();
        l.lead(Instant::now(), LEASE, margin, Some(1));
        let before_send = Instant::now();
        l.permit()
            .expect("a leader gets a permit")
            .outcome_unknown();
        l.stop_mutating();
        assert_eq!(l.in_flight(), 0, "its request is no longer being sent");
        assert!(l.drain(margin).await);
        assert!(
            before_send.elapsed() >= margin,
            "drained {:?} after the send, before the margin {margin:?} was over",
            before_send.elapsed()
        );
    }

    #[test]
    fn only_unanswered_requests_are_outages() {
        let status = |code: u16| {
            kube::Error::Api(
                kube::core::Status::failure("x", "y")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert!(is_outage(&status(500)));
        assert!(is_outage(&status(503)));
        assert!(is_outage(&status(429)));
        assert!(!is_outage(&status(403)));
        assert!(!is_outage(&status(409)));
        assert!(!is_outage(&status(404)));
    }

    fn key(holder: Option<&str>, rv: &str) -> RecordKey {
        RecordKey {
            holder: holder.map(str::to_string),
            renew_time: None,
            resource_version: Some(rv.into()),
        }
    }

    #[test]
    fn default_config_is_valid_and_bad_ones_are_rejected() {
        let ok = LeaderConfig::new("ns", "feip-controller", "pod-a");
        ok.validate().expect("defaults are valid");
        let bad = [
            LeaderConfig {
                identity: String::new(),
                ..ok.clone()
            },
            LeaderConfig {
                renew_deadline: ok.lease_duration,
                ..ok.clone()
            },
            LeaderConfig {
                retry_period: Duration::from_secs(9),
                ..ok.clone()
            },
            LeaderConfig {
                safety_margin: Duration::from_secs(13),
                ..ok.clone()
            },
            LeaderConfig {
                safety_margin: Duration::ZERO,
                ..ok.clone()
            },
            LeaderConfig {
                lease_duration: Duration::from_millis(900),
                renew_deadline: Duration::from_millis(500),
                retry_period: Duration::from_millis(100),
                safety_margin: Duration::from_millis(100),
                ..ok.clone()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?} must be rejected");
        }
    }

    #[test]
    fn lease_duration_seconds_round_up() {
        let mut cfg = LeaderConfig::new("ns", "l", "a");
        assert_eq!(cfg.lease_duration_seconds(), 15);
        cfg.lease_duration = Duration::from_millis(2500);
        assert_eq!(cfg.lease_duration_seconds(), 3);
    }

    #[test]
    fn expiry_is_judged_from_local_observation_of_changes() {
        let t0 = Instant::now();
        let obs = Observation::observe(None, key(Some("b"), "1"), t0);
        // Not expired just before the lease duration, expired at it.
        assert!(matches!(
            judge(
                &obs,
                Some(15),
                LEASE,
                "a",
                t0 + LEASE - Duration::from_millis(1)
            ),
            Judgement::HeldByOther { .. }
        ));
        assert_eq!(
            judge(&obs, Some(15), LEASE, "a", t0 + LEASE),
            Judgement::Expired { holder: "b".into() }
        );

        // Re-reading an unchanged record does not restart the clock ...
        let same = Observation::observe(
            Some(obs.clone()),
            key(Some("b"), "1"),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(same.at, t0);
        // ... a renewal (new resourceVersion) does.
        let renewed =
            Observation::observe(Some(obs), key(Some("b"), "2"), t0 + Duration::from_secs(10));
        assert_eq!(renewed.at, t0 + Duration::from_secs(10));
        assert!(matches!(
            judge(&renewed, Some(15), LEASE, "a", t0 + LEASE),
            Judgement::HeldByOther { .. }
        ));
    }

    #[test]
    fn a_remote_renew_time_in_the_past_does_not_expire_a_lease() {
        // The holder's wall clock is an hour behind ours: irrelevant, we only count from when
        // we saw the record.
        let t0 = Instant::now();
        let stale_clock = RecordKey {
            holder: Some("b".into()),
            renew_time: Some(Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(1)),
            resource_version: Some("7".into()),
        };
        let obs = Observation::observe(None, stale_clock, t0);
        assert!(matches!(
            judge(&obs, Some(15), LEASE, "a", t0 + Duration::from_secs(1)),
            Judgement::HeldByOther { .. }
        ));
    }

    #[test]
    fn the_longer_of_record_and_own_duration_applies() {
        let t0 = Instant::now();
        let obs = Observation::observe(None, key(Some("b"), "1"), t0);
        // The holder promised 60 s: we wait 60 s, not our 15 s.
        assert!(matches!(
            judge(&obs, Some(60), LEASE, "a", t0 + Duration::from_secs(30)),
            Judgement::HeldByOther { .. }
        ));
        // A record claiming 1 s does not shorten our own wait.
        assert!(matches!(
            judge(&obs, Some(1), LEASE, "a", t0 + Duration::from_secs(5)),
            Judgement::HeldByOther { .. }
        ));
        assert!(matches!(
            judge(&obs, None, LEASE, "a", t0 + LEASE),
            Judgement::Expired { .. }
        ));
    }

    #[test]
    fn released_and_own_records() {
        let t0 = Instant::now();
        let free = Observation::observe(None, key(None, "1"), t0);
        assert_eq!(judge(&free, Some(1), LEASE, "a", t0), Judgement::Free);
        let ours = Observation::observe(None, key(Some("a"), "1"), t0);
        assert_eq!(judge(&ours, Some(15), LEASE, "a", t0), Judgement::Ours);
        // An empty holderIdentity string means released too.
        let lease = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(String::new()),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        assert_eq!(RecordKey::of(&lease).holder, None);
    }

    #[test]
    fn holder_changes_count_transitions_and_renewals_do_not() {
        let now = Timestamp::now();
        let created = acquired(None, "a", 15, now);
        assert_eq!(created.holder_identity.as_deref(), Some("a"));
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.acquire_time, Some(MicroTime(now)));

        let later = now + k8s_openapi::jiff::SignedDuration::from_secs(2);
        let renewed = acquired(Some(&created), "a", 15, later);
        assert_eq!(renewed.lease_transitions, Some(0));
        assert_eq!(renewed.acquire_time, Some(MicroTime(now)));
        assert_eq!(renewed.renew_time, Some(MicroTime(later)));

        let taken = acquired(Some(&renewed), "b", 15, later);
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.acquire_time, Some(MicroTime(later)));

        let free = released(&taken, later);
        assert_eq!(free.holder_identity, None);
        assert_eq!(free.lease_transitions, Some(1));
        assert_eq!(
            acquired(Some(&free), "b", 15, later).lease_transitions,
            Some(2)
        );
    }

    #[test]
    fn valid_until_and_can_mutate_arithmetic() {
        let l = Leadership::new();
        let mut rx = l.subscribe();
        assert!(!l.is_leader() && !l.can_mutate() && l.valid_until().is_none());

        let sent = Instant::now();
        assert!(l.lead(
            sent,
            Duration::from_secs(15),
            Duration::from_secs(5),
            Some(0)
        ));
        assert!(rx.has_changed().unwrap_or(false) && *rx.borrow_and_update());
        assert_eq!(l.valid_until(), Some(sent + Duration::from_secs(15)));
        assert_eq!(l.mutation_deadline(), Some(sent + Duration::from_secs(10)));
        assert!(l.can_mutate_at(sent + Duration::from_secs(9)));
        // Still leader, but too close to the end of validity to start an EC2 call.
        assert!(!l.can_mutate_at(sent + Duration::from_secs(10)));
        assert!(!l.can_mutate_at(sent + Duration::from_secs(16)));
        assert!(l.is_leader());

        // A renewal extends validity without a leadership notification.
        assert!(!l.lead(
            sent + Duration::from_secs(2),
            Duration::from_secs(15),
            Duration::from_secs(5),
            Some(0)
        ));
        assert!(!rx.has_changed().unwrap_or(true));
        assert!(l.can_mutate_at(sent + Duration::from_secs(11)));

        assert!(l.step_down());
        assert!(!l.is_leader() && !l.can_mutate_at(sent) && l.valid_until().is_none());
        assert!(!*rx.borrow_and_update());
        assert!(!l.step_down(), "stepping down twice is a no-op");
    }

    #[test]
    fn dropping_the_election_steps_down() {
        let l = Leadership::new();
        l.lead(Instant::now(), LEASE, Duration::from_secs(5), None);
        drop(StepDownOnDrop(l.clone()));
        assert!(!l.is_leader());
    }
}
