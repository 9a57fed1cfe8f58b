//! Controller leader election against a real kube-apiserver: one leader at a time, takeover
//! only after the old leader's validity ended (crash and partition), fast handover on a
//! graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use feip::leader::{self, LeaderConfig, Leadership};
use feip::testenv::control_plane::client_from_kubeconfig;
use feip::testenv::{ControlPlane, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

const LEASE_NAME: &str = "feip-controller";
const LEASE_DURATION: Duration = Duration::from_secs(3);

fn config(ns: &str, identity: &str, lease_duration: Duration) -> LeaderConfig {
    LeaderConfig {
        namespace: ns.to_string(),
        name: LEASE_NAME.to_string(),
        identity: identity.to_string(),
        lease_duration,
        renew_deadline: lease_duration - Duration::from_secs(1),
        retry_period: Duration::from_millis(300),
        safety_margin: Duration::from_secs(1),
    }
}

/// One controller replica taking part in the election.
struct Candidate {
    identity: String,
    leadership: Leadership,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Candidate {
    fn start(client: Client, cfg: LeaderConfig) -> Self {
        let leadership = Leadership::new();
        let (stop, stopped) = oneshot::channel::<()>();
        let identity = cfg.identity.clone();
        let task = tokio::spawn(leader::run(client, cfg, leadership.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            identity,
            leadership,
            stop: Some(stop),
            task,
        }
    }

    /// Graceful shutdown: waits until `run` returned.
    async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task).await???;
        Ok(())
    }

    async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<()> {
        let l = self.leadership.clone();
        wait_for(&format!("{} to lead", self.identity), timeout, || {
            let l = l.clone();
            async move { Ok(l.can_mutate().then_some(())) }
        })
        .await
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy, Debug)]
struct View {
    leader: bool,
    can_mutate: bool,
    valid_until: Option<Instant>,
}

impl View {
    fn of(l: &Leadership) -> Self {
        Self {
            leader: l.is_leader(),
            can_mutate: l.can_mutate(),
            valid_until: l.valid_until(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    a: View,
    b: View,
}

/// Samples two replicas every 20 ms for the whole test (observation, not synchronisation).
struct Sampler {
    stop: Arc<AtomicBool>,
    taken: Arc<AtomicUsize>,
    task: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Starts sampling and returns once the first sample is taken.
    async fn start(a: &Leadership, b: &Leadership) -> anyhow::Result<Self> {
        let (a, b) = (a.clone(), b.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let taken = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (stop.clone(), taken.clone());
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                // Read `a` on both sides of `b`: a violation needs `a` allowed before and after
                // `b` was, so it cannot come from a handover between two reads.
                let a1 = View::of(&a);
                let b_view = View::of(&b);
                let a2 = View::of(&a);
                let a_view = View {
                    can_mutate: a1.can_mutate && a2.can_mutate,
                    leader: a1.leader && a2.leader,
                    ..a2
                };
                samples.push(Sample {
                    at: Instant::now(),
                    a: a_view,
                    b: b_view,
                });
                count.fetch_add(1, Ordering::Relaxed);
            }
            samples
        });
        let sampler = Self { stop, taken, task };
        sampler.wait_samples(1).await?;
        Ok(sampler)
    }

    async fn wait_samples(&self, n: usize) -> anyhow::Result<()> {
        let taken = self.taken.clone();
        wait_for(&format!("{n} samples"), Duration::from_secs(5), || {
            let taken = taken.clone();
            async move { Ok((taken.load(Ordering::Relaxed) >= n).then_some(())) }
        })
        .await
    }

    /// Takes one more sample (of the final state), stops, and checks that the two replicas
    /// never both led or could both mutate.
    async fn finish(self) -> anyhow::Result<Vec<Sample>> {
        self.wait_samples(self.taken.load(Ordering::Relaxed) + 1)
            .await?;
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.task.await?;
        for s in &samples {
            assert!(
                !(s.a.can_mutate && s.b.can_mutate),
                "both replicas could mutate EC2 at once: {s:?}"
            );
            assert!(
                !(s.a.leader && s.b.leader),
                "both replicas were leader at once: {s:?}"
            );
        }
        Ok(samples)
    }
}

/// The latest validity the old leader `a` ever had, and the earliest send time of `b`'s
/// winning write (its first `valid_until` minus the lease duration).
fn handover(samples: &[Sample], lease_duration: Duration) -> (Instant, Instant) {
    let a_last_valid = samples.iter().filter_map(|s| s.a.valid_until).max();
    let b_first_sent = samples
        .iter()
        .filter_map(|s| s.b.valid_until)
        .min()
        .map(|v| v - lease_duration);
    match (a_last_valid, b_first_sent) {
        (Some(a), Some(b)) => (a, b),
        other => panic!("sampler missed a leadership: {other:?}"),
    }
}

async fn lease(api: &Api<Lease>) -> anyhow::Result<(Option<String>, i32)> {
    let spec = api.get(LEASE_NAME).await?.spec.unwrap_or_default();
    Ok((
        spec.holder_identity.filter(|h| !h.is_empty()),
        spec.lease_transitions.unwrap_or_default(),
    ))
}

/// Waits until the Lease record has been written `n` more times (renewals go by).
async fn wait_writes(api: &Api<Lease>, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    wait_for(&format!("{n} writes of the lease"), timeout, || {
        let (api, seen) = (api.clone(), seen.clone());
        async move {
            let rv = api.get(LEASE_NAME).await?.metadata.resource_version;
            let mut seen = seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen.last() != Some(&rv) {
                seen.push(rv);
            }
            Ok((seen.len() > n).then_some(()))
        }
    })
    .await
}

async fn wait_holder(api: &Api<Lease>, identity: &str, timeout: Duration) -> anyhow::Result<i32> {
    wait_for(
        &format!("lease holder {identity}"),
        timeout,
        || async move {
            let (holder, transitions) = lease(api).await?;
            Ok((holder.as_deref() == Some(identity)).then_some(transitions))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_two_candidates_leads() -> anyhow::Result<()> {
    feip::install_crypto_provider();
    let cp = ControlPlane::shared()?;
    let ns = cp.namespace("leader-one").await?;
    let a = Candidate::start(cp.client().await?, config(&ns, "replica-a", LEASE_DURATION));
    let b = Candidate::start(cp.client().await?, config(&ns, "replica-b", LEASE_DURATION));
    let sampler = Sampler::start(&a.leadership, &b.leadership).await?;

    let (la, lb) = (a.leadership.clone(), b.leadership.clone());
    wait_for("one leader", Duration::from_secs(10), || {
        let (la, lb) = (la.clone(), lb.clone());
        async move { Ok((la.can_mutate() || lb.can_mutate()).then_some(())) }
    })
    .await?;
    let (winner, loser) = if a.leadership.is_leader() {
        (&a, &b)
    } else {
        (&b, &a)
    };

    let api: Api<Lease> = Api::namespaced(cp.client().await?, &ns);
    assert_eq!(lease(&api).await?, (Some(winner.identity.clone()), 0));
    // Watch several renewals go by: the leader keeps the lease, the other never leads.
    wait_writes(&api, 3, Duration::from_secs(10)).await?;
    assert_eq!(lease(&api).await?, (Some(winner.identity.clone()), 0));
    assert!(winner.leadership.can_mutate() && !loser.leadership.is_leader());
    sampler.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_leader_is_replaced_only_after_its_lease_expired() -> anyhow::Result<()> {
    feip::install_crypto_provider();
    let cp = ControlPlane::shared()?;
    let ns = cp.namespace("leader-crash").await?;
    let api: Api<Lease> = Api::namespaced(cp.client().await?, &ns);
    let a = Candidate::start(cp.client().await?, config(&ns, "replica-a", LEASE_DURATION));
    a.wait_leader(Duration::from_secs(10)).await?;
    let b = Candidate::start(cp.client().await?, config(&ns, "replica-b", LEASE_DURATION));
    let sampler = Sampler::start(&a.leadership, &b.leadership).await?;
    // Crash in steady state, with b watching renewals.
    wait_writes(&api, 2, Duration::from_secs(5)).await?;

    // Crash: the task stops without releasing the lease.
    let crashed_at = Instant::now();
    a.task.abort();
    b.wait_leader(LEASE_DURATION * 4).await?;
    let took_over = Instant::now();
    let samples = sampler.finish().await?;

    let (a_valid_until, b_sent) = handover(&samples, LEASE_DURATION);
    assert!(
        b_sent >= a_valid_until,
        "b took over {:?} before a's leadership expired",
        a_valid_until - b_sent
    );
    // Coarse wall-clock check on top: b waited about a lease duration, not a retry period
    // (the last renewal may have been sent up to a retry period plus a round trip before).
    assert!(
        took_over - crashed_at >= LEASE_DURATION - Duration::from_secs(1),
        "takeover after {:?}",
        took_over - crashed_at
    );
    assert_eq!(
        wait_holder(&api, "replica-b", Duration::from_secs(5)).await?,
        1,
        "leaseTransitions"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_releases_the_lease_for_a_fast_handover() -> anyhow::Result<()> {
    feip::install_crypto_provider();
    let cp = ControlPlane::shared()?;
    let ns = cp.namespace("leader-release").await?;
    let api: Api<Lease> = Api::namespaced(cp.client().await?, &ns);
    // A long lease, so that a takeover by expiry could not pass the deadline below.
    let lease_duration = Duration::from_secs(20);
    let a = Candidate::start(cp.client().await?, config(&ns, "replica-a", lease_duration));
    a.wait_leader(Duration::from_secs(10)).await?;
    let b = Candidate::start(cp.client().await?, config(&ns, "replica-b", lease_duration));
    let sampler = Sampler::start(&a.leadership, &b.leadership).await?;
    let a_leadership = a.leadership.clone();

    a.shutdown().await?;
    assert!(!a_leadership.is_leader() && !a_leadership.can_mutate());
    b.wait_leader(lease_duration / 4).await?;
    let samples = sampler.finish().await?;
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    assert!(
        first.a.can_mutate && last.b.can_mutate,
        "sampled {first:?} .. {last:?}"
    );
    assert_eq!(lease(&api).await?, (Some("replica-b".into()), 1));
    Ok(())
}

/// A TCP proxy (TLS passes through) that can be made to hang: after `cut`, it stops
/// forwarding on open connections and accepts new ones without ever answering, like an
/// apiserver behind a network partition.
struct PartitionProxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl PartitionProxy {
    async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            // Dropping the set (when the proxy task is aborted) closes every connection.
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut_rx = cut_rx.clone();
                connections.spawn(async move {
                    if *cut_rx.borrow() {
                        std::future::pending::<()>().await;
                    }
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let cut = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                        r = cut_rx.wait_for(|cut| *cut) => r.map(|_| ()).is_ok(),
                    };
                    if cut {
                        // Keep both sockets open and silent.
                        std::future::pending::<()>().await;
                    }
                });
            }
        });
        Ok(Self { addr, cut, task })
    }

    fn cut(&self) {
        self.cut.send_replace(true);
    }
}

impl Drop for PartitionProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An admin client whose connections go through `proxy`.
async fn client_via(cp: &ControlPlane, proxy: SocketAddr) -> anyhow::Result<Client> {
    let mut kubeconfig = Kubeconfig::read_from(cp.admin_kubeconfig())?;
    for cluster in &mut kubeconfig.clusters {
        if let Some(c) = cluster.cluster.as_mut() {
            // The serving certificate is for 127.0.0.1, which the proxy listens on too.
            c.server = Some(format!("https://{proxy}"));
        }
    }
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_leader_stops_mutating_before_anyone_takes_over() -> anyhow::Result<()> {
    feip::install_crypto_provider();
    let cp = ControlPlane::shared()?;
    let ns = cp.namespace("leader-partition").await?;
    let api: Api<Lease> =
        Api::namespaced(client_from_kubeconfig(cp.admin_kubeconfig()).await?, &ns);
    let upstream: SocketAddr = cp.server().trim_start_matches("https://").parse()?;
    let proxy = PartitionProxy::start(upstream).await?;

    // A safety margin wider than lease duration - renew deadline, so that `can_mutate()` has
    // to turn false on its own, before the renew loop gives up and steps down.
    let a_cfg = LeaderConfig {
        renew_deadline: Duration::from_millis(2500),
        safety_margin: Duration::from_millis(1500),
        ..config(&ns, "replica-a", LEASE_DURATION)
    };
    let a = Candidate::start(client_via(cp, proxy.addr).await?, a_cfg);
    a.wait_leader(Duration::from_secs(10)).await?;
    let b = Candidate::start(cp.client().await?, config(&ns, "replica-b", LEASE_DURATION));
    let sampler = Sampler::start(&a.leadership, &b.leadership).await?;
    // Let a renew through the proxy a few times with b watching.
    wait_writes(&api, 2, Duration::from_secs(5)).await?;

    let cut_at = Instant::now();
    proxy.cut();
    let la = a.leadership.clone();
    wait_for("a to stop mutating", LEASE_DURATION * 2, || {
        let la = la.clone();
        async move { Ok((!la.can_mutate()).then_some(())) }
    })
    .await?;
    wait_for("a to step down", LEASE_DURATION * 2, || {
        let la = la.clone();
        async move { Ok((!la.is_leader()).then_some(())) }
    })
    .await?;
    b.wait_leader(LEASE_DURATION * 4).await?;
    let samples = sampler.finish().await?;

    let (a_valid_until, b_sent) = handover(&samples, LEASE_DURATION);
    // a stopped mutating by itself, while the renew loop still considered it leader, and
    // before its validity ended.
    let first_stop = samples
        .iter()
        .find(|s| s.at >= cut_at && !s.a.can_mutate)
        .unwrap_or_else(|| panic!("a never stopped mutating"));
    assert!(
        first_stop.a.leader,
        "can_mutate() only turned false when a stepped down: {first_stop:?}"
    );
    assert!(
        first_stop.at < a_valid_until,
        "a could mutate until {:?} after its validity ended",
        first_stop.at - a_valid_until
    );
    assert!(
        b_sent >= a_valid_until,
        "b took over {:?} before a's leadership expired",
        a_valid_until - b_sent
    );
    assert_eq!(lease(&api).await?, (Some("replica-b".into()), 1));
    Ok(())
}
