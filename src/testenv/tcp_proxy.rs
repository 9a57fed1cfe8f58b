//! A TCP proxy between a client and the kube-apiserver (TLS passes through untouched) that
//! tests use to cut one controller replica off the control plane while EC2 stays reachable.
//!
//! Four faults:
//! - [`TcpProxy::pause`]: a network partition. Bytes stop flowing on open connections and on
//!   new ones (which are accepted but never answered); nothing is closed, so every request in
//!   flight just hangs.
//! - [`TcpProxy::resume`]: the partition heals. The *same* connections carry on, so requests
//!   that were stuck (e.g. a stale replica's writes) are delivered late, as after a real
//!   partition.
//! - [`TcpProxy::reset`]: closes every open connection at once (watch disconnects, a load
//!   balancer dropping connections); new connections work.
//! - [`TcpProxy::black_hole_existing`]: every connection open at that instant goes silent for
//!   good (an apiserver host that vanished behind a load balancer): nothing is relayed either
//!   way and nothing is closed or reset, so requests on them hang and pooled idle ones hang
//!   when next used. Connections accepted afterwards are relayed normally.
//!
//! [`kubeconfig_via`] writes a copy of a kubeconfig whose server is the proxy, so the client
//! under test is built exactly as `feip controller --kubeconfig` builds it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use kube::Client;
use kube::config::Kubeconfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A running proxy; stops (closing every connection) when dropped.
pub struct TcpProxy {
    addr: SocketAddr,
    paused: watch::Sender<bool>,
    resets: watch::Sender<u64>,
    /// Connections with a sequence number below this are black-holed.
    holes_below: watch::Sender<u64>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding a free loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (paused, paused_rx) = watch::channel(false);
        let (resets, resets_rx) = watch::channel(0u64);
        let (holes_below, holes_rx) = watch::channel(0u64);
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            // Dropping the set (when the proxy task is aborted) closes every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let seq = count.fetch_add(1, Ordering::Relaxed) as u64;
                let (paused, mut resets) = (paused_rx.clone(), resets_rx.clone());
                let holes = holes_rx.clone();
                resets.mark_unchanged();
                connections.spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = relay(inbound, outbound, paused, holes, seq) => {}
                        // A reset drops both sockets (black-holed ones too).
                        _ = resets.changed() => {}
                    }
                });
                // Reap finished connections so the set does not grow without bound.
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            addr,
            paused,
            resets,
            holes_below,
            accepted,
            task,
        })
    }

    /// The proxy's address (127.0.0.1, which the apiserver's certificate covers).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Partition: nothing flows until [`resume`](Self::resume); connections stay open.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Same as [`pause`](Self::pause) (the name `tests/leader.rs` uses).
    pub fn cut(&self) {
        self.pause();
    }

    /// Heals a partition: stuck connections carry on where they stopped.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Closes every open connection now.
    pub fn reset(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    /// Black-holes every connection open now (see the module docs); later ones relay.
    pub fn black_hole_existing(&self) {
        let accepted = self.accepted.load(Ordering::Relaxed) as u64;
        self.holes_below.send_replace(accepted);
    }

    /// Connections accepted so far (a reconnect after [`reset`](Self::reset) shows up here).
    pub fn connections_accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both directions until either side closes, holding bytes while paused. Once the
/// connection is black-holed nothing is read or written any more, but both sockets stay open
/// (no FIN, no RST) until the connection task is dropped.
async fn relay(
    inbound: TcpStream,
    outbound: TcpStream,
    paused: watch::Receiver<bool>,
    mut holes: watch::Receiver<u64>,
    seq: u64,
) {
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let pumps = async {
        tokio::join!(
            pump(in_read, out_write, paused.clone()),
            pump(out_read, in_write, paused),
        )
    };
    tokio::pin!(pumps);
    tokio::select! {
        _ = &mut pumps => {}
        () = async { drop(holes.wait_for(|below| seq < *below).await) } => {
            // `pumps` (which owns the sockets) stays alive but is never polled again.
            std::future::pending::<()>().await;
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        // Whatever was read while a pause started is held until the pause ends.
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Writes a copy of `kubeconfig` next to it whose clusters point at `proxy`, and returns its
/// path. Credentials and CA stay as they are.
pub fn kubeconfig_via(kubeconfig: &Path, proxy: SocketAddr) -> anyhow::Result<PathBuf> {
    let mut config = Kubeconfig::read_from(kubeconfig)?;
    for cluster in &mut config.clusters {
        if let Some(c) = cluster.cluster.as_mut() {
            c.server = Some(format!("https://{proxy}"));
        }
    }
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = format!(
        "{}-via-{}-{n}",
        kubeconfig
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "kubeconfig".into()),
        proxy.port()
    );
    let path = kubeconfig.with_file_name(name);
    std::fs::write(&path, serde_yaml::to_string(&config)?)?;
    Ok(path)
}

/// A client built from `kubeconfig`, with its connections going through `proxy`.
pub async fn client_via(kubeconfig: &Path, proxy: SocketAddr) -> anyhow::Result<Client> {
    super::control_plane::client_from_kubeconfig(&kubeconfig_via(kubeconfig, proxy)?).await
}
