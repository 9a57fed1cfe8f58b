//! Node health signals: the kubelet heartbeat Lease (judged by when this process last saw it
//! change), and active TCP/HTTP probes of a node's InternalIP. Both are tri-state: a signal
//! that cannot be read is "unknown", never "dead".

pub mod heartbeat;
mod verdict;
pub use verdict::{NodeSignals, ProbeSignal, Verdict, verdict};

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Tracks kubelet heartbeat Leases in `kube-node-lease`: for each node, the last renewTime
/// seen and the local instant it was first seen (client-go's observedTime); when this watch
/// last had a gap (an error, a re-list, the end of a stall), and when it last saw any node
/// renew. A gap means renewals may have gone unseen, so ages count from the gap at most
/// (as for the node and holder-Lease watches, see `Context::heartbeat_age`).
pub struct Heartbeats {
    seen: Mutex<HashMap<String, (String, Instant)>>,
    synced: std::sync::atomic::AtomicBool,
    /// The last gap in this watch's observation (construction counts as one).
    gap_at: Mutex<Instant>,
    /// When this watch last saw any heartbeat change.
    freshest: Mutex<Option<Instant>>,
}

impl Default for Heartbeats {
    fn default() -> Self {
        Self {
            seen: Mutex::default(),
            synced: std::sync::atomic::AtomicBool::new(false),
            gap_at: Mutex::new(Instant::now()),
            freshest: Mutex::new(None),
        }
    }
}

impl Heartbeats {
    /// Time since the node's heartbeat last changed, as observed by this process; None when
    /// no heartbeat Lease has been seen for the node.
    pub fn age(&self, node: &str) -> Option<Duration> {
        lock(&self.seen).get(node).map(|(_, at)| at.elapsed())
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Since when this watch has observed without a gap.
    pub fn observed_since(&self) -> Instant {
        *lock(&self.gap_at)
    }

    /// How long this watch has seen no node renew, counting only time observed without a
    /// gap; None before the first renewal was seen.
    pub fn idle(&self) -> Option<Duration> {
        let freshest = (*lock(&self.freshest))?;
        Some(freshest.elapsed().min(self.observed_since().elapsed()))
    }

    /// A gap in this watch's observation: renewals until `now` may have gone unseen.
    pub fn record_gap(&self, now: Instant) {
        let mut gap = lock(&self.gap_at);
        *gap = (*gap).max(now);
    }

    /// Records one observation; returns true when the heartbeat changed.
    pub fn observe(&self, node: &str, renew: &str, now: Instant) -> bool {
        let mut seen = lock(&self.seen);
        match seen.get(node) {
            Some((prev, _)) if prev == renew => false,
            _ => {
                seen.insert(node.to_string(), (renew.to_string(), now));
                let mut freshest = lock(&self.freshest);
                // The first renewal after a stall ends it: what the watch missed meanwhile is
                // unknown, so the stall was a gap (ages restart, rule 7).
                if freshest
                    .is_some_and(|f| now.saturating_duration_since(f) > heartbeat::WATCH_STALL)
                {
                    self.record_gap(now);
                }
                *freshest = Some(freshest.map_or(now, |f| f.max(now)));
                true
            }
        }
    }

    /// Watches the heartbeat Leases until the stream ends (never, in practice). An error and a
    /// (re)list are gaps: the watcher may have missed events, and a re-list shows current
    /// renewTimes that may have changed several times unseen.
    pub async fn run(self: Arc<Self>, client: Client, changed: Arc<Notify>) {
        let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
        let mut stream = watcher(leases, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) => {
                    self.observe_lease(&l);
                }
                Ok(watcher::Event::InitDone) => {
                    self.record_gap(Instant::now());
                    self.synced.store(true, std::sync::atomic::Ordering::SeqCst);
                    changed.notify_one();
                }
                Ok(watcher::Event::Delete(l)) => {
                    if let Some(name) = &l.metadata.name {
                        lock(&self.seen).remove(name);
                    }
                }
                Ok(watcher::Event::Init) => self.record_gap(Instant::now()),
                Err(e) => {
                    self.record_gap(Instant::now());
                    tracing::warn!(error = %e, "node heartbeat watch error (a gap); retrying");
                }
            }
        }
    }

    fn observe_lease(&self, l: &Lease) {
        let Some(name) = l.metadata.name.as_deref() else {
            return;
        };
        let renew = l
            .spec
            .as_ref()
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        self.observe(name, &renew, Instant::now());
    }
}

/// What an active probe does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProbeSpec {
    pub ip: IpAddr,
    pub port: u16,
    /// Some(path) = HTTP GET, None = TCP connect.
    pub http_path: Option<String>,
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

/// Tri-state result of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeStatus {
    /// Not enough results yet, or the probe could not run.
    Unknown,
    Healthy,
    Dead,
}

/// The live state of one probe.
#[derive(Clone, Copy, Debug)]
pub struct ProbeState {
    pub status: ProbeStatus,
    /// When the status last changed (for failover timing).
    pub since: Instant,
    pub since_wall: jiff::Timestamp,
}

struct ProbeEntry {
    state: Arc<Mutex<ProbeState>>,
    last_wanted: Instant,
    task: JoinHandle<()>,
}

impl Drop for ProbeEntry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs one task per distinct probe, shared by every address that wants it, and notifies
/// `changed` when a probe's status changes so decisions are re-evaluated at once.
pub struct Probes {
    entries: Mutex<HashMap<ProbeSpec, ProbeEntry>>,
    changed: Arc<Notify>,
    /// IPs whose probe changed status since the last `take_changed` (so only the addresses
    /// with that node as a candidate need a look, not every address).
    changed_ips: Arc<Mutex<HashSet<IpAddr>>>,
}

impl Probes {
    pub fn new(changed: Arc<Notify>) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            changed,
            changed_ips: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// The IPs whose probe status changed since the last call (drained).
    pub fn take_changed(&self) -> Vec<IpAddr> {
        lock(&self.changed_ips).drain().collect()
    }

    /// The current state of `spec`, starting its probe task on first use.
    pub fn state(&self, spec: &ProbeSpec) -> ProbeState {
        let mut entries = lock(&self.entries);
        let now = Instant::now();
        if let Some(e) = entries.get_mut(spec) {
            e.last_wanted = now;
            return *lock(&e.state);
        }
        let state = Arc::new(Mutex::new(ProbeState {
            status: ProbeStatus::Unknown,
            since: now,
            since_wall: jiff::Timestamp::now(),
        }));
        let task = tokio::spawn(run_probe(
            spec.clone(),
            state.clone(),
            self.changed.clone(),
            self.changed_ips.clone(),
        ));
        entries.insert(
            spec.clone(),
            ProbeEntry {
                state: state.clone(),
                last_wanted: now,
                task,
            },
        );
        *lock(&state)
    }

    /// Marks the probes of `referenced` (every probe some address asks for) as wanted now, so
    /// that [`collect_garbage`](Self::collect_garbage) drops only probes that no address has
    /// referenced for its idle age. Probes not running are not started here: the reconcile
    /// that reads one starts it.
    pub fn keep(&self, referenced: &HashSet<ProbeSpec>) {
        let now = Instant::now();
        for (spec, e) in lock(&self.entries).iter_mut() {
            if referenced.contains(spec) {
                e.last_wanted = now;
            }
        }
    }

    /// Stops probes nobody asked for within `idle`. An address reconciles only every
    /// `monitor.interval` (up to 1 h), so reads alone do not keep its probe: the controller
    /// marks every referenced probe through [`keep`](Self::keep) more often than `idle`.
    pub fn collect_garbage(&self, idle: Duration) {
        lock(&self.entries).retain(|_, e| e.last_wanted.elapsed() < idle);
    }

    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One probe attempt's verdict.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Success,
    Failure,
    /// The probe could not run (a local problem): counts neither way.
    Inconclusive,
}

async fn run_probe(
    spec: ProbeSpec,
    state: Arc<Mutex<ProbeState>>,
    changed: Arc<Notify>,
    changed_ips: Arc<Mutex<HashSet<IpAddr>>>,
) {
    let mut tick = tokio::time::interval(spec.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut failures, mut successes) = (0u32, 0u32);
    loop {
        tick.tick().await;
        let attempt = probe_once(&spec).await;
        match attempt {
            Attempt::Success => {
                successes += 1;
                failures = 0;
            }
            Attempt::Failure => {
                failures += 1;
                successes = 0;
            }
            Attempt::Inconclusive => continue,
        }
        let current = lock(&state).status;
        let next = if failures >= spec.failure_threshold {
            ProbeStatus::Dead
        } else if successes >= spec.success_threshold {
            ProbeStatus::Healthy
        } else {
            current
        };
        if next != current {
            *lock(&state) = ProbeState {
                status: next,
                since: Instant::now(),
                since_wall: jiff::Timestamp::now(),
            };
            tracing::info!(ip = %spec.ip, port = spec.port, from = ?current, to = ?next, "probe status changed");
            lock(&changed_ips).insert(spec.ip);
            changed.notify_one();
        }
    }
}

async fn probe_once(spec: &ProbeSpec) -> Attempt {
    let addr = SocketAddr::new(spec.ip, spec.port);
    let result = tokio::time::timeout(spec.timeout, async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let Some(path) = &spec.http_path else { return Ok::<bool, std::io::Error>(true) };
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: feip-probe\r\nConnection: close\r\n\r\n", spec.ip);
        stream.write_all(req.as_bytes()).await?;
        let mut buf = [0u8; 32];
        let mut n = 0;
        while n < 12 {
            let r = stream.read(&mut buf[n..]).await?;
            if r == 0 {
                break;
            }
            n += r;
        }
        Ok(http_status_ok(&buf[..n]))
    })
    .await;
    match result {
        Ok(Ok(true)) => Attempt::Success,
        Ok(Ok(false)) => Attempt::Failure,
        Err(_) => Attempt::Failure, // timed out: a dead host drops packets
        Ok(Err(e)) => match e.kind() {
            std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::HostUnreachable
            | std::io::ErrorKind::NetworkUnreachable
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::BrokenPipe => Attempt::Failure,
            _ => {
                tracing::debug!(%addr, error = %e, "probe could not run");
                Attempt::Inconclusive
            }
        },
    }
}

/// `HTTP/1.x 2xx` or `3xx`.
fn http_status_ok(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let mut parts = text.split_whitespace();
    matches!(parts.next(), Some(v) if v.starts_with("HTTP/"))
        && parts
            .next()
            .and_then(|c| c.parse::<u16>().ok())
            .is_some_and(|c| (200..400).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_age_resets_only_on_change() {
        let hb = Heartbeats::default();
        let t0 = Instant::now();
        assert!(hb.observe("a", "r1", t0));
        assert!(!hb.observe("a", "r1", t0 + Duration::from_secs(5)));
        assert!(hb.age("a").is_some());
        assert!(hb.observe("a", "r2", t0 + Duration::from_secs(6)));
        assert_eq!(hb.age("b"), None);
    }

    #[test]
    fn gaps_only_move_forward_and_a_stall_ends_in_a_gap() {
        let hb = Heartbeats::default();
        let t0 = Instant::now();
        let start = hb.observed_since();
        hb.record_gap(t0 - Duration::from_secs(1));
        assert_eq!(hb.observed_since(), start.max(t0 - Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert!(hb.observe("a", "r1", t1));
        assert!(hb.observe("b", "r1", t1 + Duration::from_secs(10)));
        assert!(hb.observed_since() < t1, "renewals 10s apart are no stall");
        // Nothing renewed for longer than the stall bound, then a renewal: a gap at it.
        let t2 = t1 + Duration::from_secs(10) + heartbeat::WATCH_STALL + Duration::from_secs(1);
        assert!(hb.observe("a", "r2", t2));
        assert_eq!(hb.observed_since(), t2);
    }

    #[tokio::test]
    async fn kept_probes_survive_garbage_collection_and_others_do_not() {
        let probes = Probes::new(Arc::new(Notify::new()));
        let spec = |port| ProbeSpec {
            ip: "127.0.0.1".parse().expect("ip"),
            port,
            http_path: None,
            period: Duration::from_secs(60),
            timeout: Duration::from_millis(10),
            failure_threshold: 3,
            success_threshold: 1,
        };
        probes.state(&spec(1));
        probes.state(&spec(2));
        // Both last wanted 2 s ago; only the referenced one is marked again.
        let long_ago = Instant::now()
            .checked_sub(Duration::from_secs(2))
            .expect("the monotonic clock is past 2 s");
        for e in lock(&probes.entries).values_mut() {
            e.last_wanted = long_ago;
        }
        probes.keep(&HashSet::from([spec(1)]));
        probes.collect_garbage(Duration::from_secs(1));
        assert_eq!(probes.len(), 1);
        assert!(lock(&probes.entries).contains_key(&spec(1)));
    }

    #[test]
    fn http_status_line_parsing() {
        assert!(http_status_ok(b"HTTP/1.1 200 OK\r\n"));
        assert!(http_status_ok(b"HTTP/1.0 302 Found"));
        assert!(!http_status_ok(b"HTTP/1.1 503 Service Unavailable"));
        assert!(!http_status_ok(b"garbage"));
    }

    #[tokio::test]
    async fn tcp_probe_turns_dead_after_threshold_and_healthy_again() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accept = tokio::spawn(async move {
            loop {
                let _ = listener.accept().await;
            }
        });
        let changed = Arc::new(Notify::new());
        let probes = Probes::new(changed.clone());
        let spec = ProbeSpec {
            ip: addr.ip(),
            port: addr.port(),
            http_path: None,
            period: Duration::from_millis(20),
            timeout: Duration::from_millis(200),
            failure_threshold: 3,
            success_threshold: 1,
        };
        assert_eq!(probes.state(&spec).status, ProbeStatus::Unknown);
        tokio::time::timeout(Duration::from_secs(5), async {
            while probes.state(&spec).status != ProbeStatus::Healthy {
                changed.notified().await;
            }
        })
        .await
        .expect("probe turns healthy");
        accept.abort();
        let _ = accept.await;
        tokio::time::timeout(Duration::from_secs(5), async {
            while probes.state(&spec).status != ProbeStatus::Dead {
                changed.notified().await;
            }
        })
        .await
        .expect("probe turns dead once the port refuses");
    }
}
