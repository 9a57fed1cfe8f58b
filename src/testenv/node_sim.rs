//! Simulated nodes: a Node object with an AWS providerID, a Ready condition and an InternalIP
//! on its own loopback address, a kubelet-style heartbeat Lease in `kube-node-lease` renewed by
//! a task, a TCP listener on the kubelet port (what feip's default probe connects to) and an
//! optional HTTP health endpoint. Stopping a node stops all of them, like a dead machine.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How a simulated node is created.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub name: String,
    pub az: String,
    pub instance_id: String,
    /// Port of the TCP listener standing in for the kubelet (feip's default probe target).
    pub kubelet_port: u16,
    /// Port of an HTTP server answering `GET /healthz` and `GET /`, if wanted.
    pub http_port: Option<u16>,
    /// How often the heartbeat Lease is renewed (kubelet: 10s).
    pub heartbeat_interval: Duration,
    pub labels: Vec<(String, String)>,
}

impl NodeOptions {
    pub fn new(name: &str, az: &str, instance_id: &str) -> Self {
        Self {
            name: name.into(),
            az: az.into(),
            instance_id: instance_id.into(),
            kubelet_port: 10250,
            http_port: None,
            heartbeat_interval: Duration::from_secs(1),
            labels: Vec::new(),
        }
    }
}

struct Tasks {
    heartbeat: Option<JoinHandle<()>>,
    kubelet: Option<JoinHandle<()>>,
    http: Option<JoinHandle<()>>,
}

/// A running simulated node. Dropping it stops its tasks (the Node object stays).
pub struct SimNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub provider_id: String,
    opts: NodeOptions,
    client: Client,
    http_healthy: Arc<AtomicBool>,
    tasks: Mutex<Tasks>,
}

static NEXT_IP: AtomicU32 = AtomicU32::new(1);

/// A loopback address no other simulated node of this process uses. The second octet
/// depends on the process id so two harness processes rarely collide.
pub fn next_loopback_ip() -> Ipv4Addr {
    let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
    let second = 1 + (std::process::id() % 200) as u8;
    Ipv4Addr::new(127, second, (n / 250) as u8, (n % 250 + 1) as u8)
}

impl SimNode {
    /// Creates the Node (Ready, InternalIP) and its heartbeat Lease, and starts the heartbeat
    /// and listeners.
    pub async fn start(client: Client, opts: NodeOptions) -> anyhow::Result<Self> {
        let ip = next_loopback_ip();
        let provider_id = format!("aws:///{}/{}", opts.az, opts.instance_id);
        let mut labels = serde_json::Map::new();
        labels.insert("kubernetes.io/hostname".into(), opts.name.clone().into());
        labels.insert("topology.kubernetes.io/zone".into(), opts.az.clone().into());
        for (k, v) in &opts.labels {
            labels.insert(k.clone(), v.clone().into());
        }
        let nodes: Api<Node> = Api::all(client.clone());
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": opts.name, "labels": labels},
            "spec": {"providerID": provider_id},
        }))?;
        nodes.create(&PostParams::default(), &node).await?;
        let node = Self {
            name: opts.name.clone(),
            ip,
            provider_id,
            opts,
            client,
            http_healthy: Arc::new(AtomicBool::new(true)),
            tasks: Mutex::new(Tasks {
                heartbeat: None,
                kubelet: None,
                http: None,
            }),
        };
        node.set_ready(true).await?;
        let leases: Api<Lease> = Api::namespaced(node.client.clone(), "kube-node-lease");
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": node.name},
            "spec": {"holderIdentity": node.name, "leaseDurationSeconds": 40, "renewTime": now_micro()},
        }))?;
        leases.create(&PostParams::default(), &lease).await?;
        node.resume().await?;
        Ok(node)
    }

    /// Sets the Node's Ready condition (there is no node lifecycle controller to do it).
    pub async fn set_ready(&self, ready: bool) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let now = jiff::Timestamp::now().to_string();
        let status = serde_json::json!({
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": self.ip.to_string()},
                    {"type": "Hostname", "address": self.name},
                ],
                "conditions": [{
                    "type": "Ready",
                    "status": if ready { "True" } else { "Unknown" },
                    "reason": if ready { "KubeletReady" } else { "NodeStatusUnknown" },
                    "message": "set by the feip node simulator",
                    "lastHeartbeatTime": now, "lastTransitionTime": now,
                }],
            }
        });
        nodes
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        Ok(())
    }

    /// The machine dies: heartbeat stops, kubelet port and HTTP endpoint stop answering.
    pub fn stop(&self) {
        let mut t = self.lock();
        for h in [t.heartbeat.take(), t.kubelet.take(), t.http.take()]
            .into_iter()
            .flatten()
        {
            h.abort();
        }
    }

    /// The machine comes back: heartbeat and listeners run again.
    pub async fn resume(&self) -> anyhow::Result<()> {
        self.stop();
        let kubelet =
            TcpListener::bind(SocketAddr::from((self.ip, self.opts.kubelet_port))).await?;
        let http = match self.opts.http_port {
            Some(p) => Some(TcpListener::bind(SocketAddr::from((self.ip, p))).await?),
            None => None,
        };
        let mut t = self.lock();
        t.heartbeat = Some(tokio::spawn(heartbeat(
            self.client.clone(),
            self.name.clone(),
            self.opts.heartbeat_interval,
        )));
        t.kubelet = Some(tokio::spawn(async move {
            // Accept and close: a TCP connect probe only needs the handshake.
            while let Ok((conn, _)) = kubelet.accept().await {
                drop(conn);
            }
        }));
        if let Some(listener) = http {
            t.http = Some(tokio::spawn(serve_http(
                listener,
                self.name.clone(),
                self.http_healthy.clone(),
            )));
        }
        Ok(())
    }

    /// Only the heartbeat stops (a kubelet that cannot reach the API); the machine and its
    /// listeners stay up.
    pub fn pause_heartbeat(&self) {
        if let Some(h) = self.lock().heartbeat.take() {
            h.abort();
        }
    }

    /// The heartbeat runs again (renewing at once, then every interval).
    pub fn resume_heartbeat(&self) {
        let mut t = self.lock();
        if let Some(h) = t.heartbeat.take() {
            h.abort();
        }
        t.heartbeat = Some(tokio::spawn(heartbeat(
            self.client.clone(),
            self.name.clone(),
            self.opts.heartbeat_interval,
        )));
    }

    /// Switches the HTTP health endpoint between 200 and 503.
    pub fn set_http_healthy(&self, healthy: bool) {
        self.http_healthy.store(healthy, Ordering::SeqCst);
    }

    /// Adds or removes labels / cordons through a merge patch of the Node.
    pub async fn patch(&self, patch: serde_json::Value) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Deletes the Node object and its heartbeat Lease.
    pub async fn delete(&self) -> anyhow::Result<()> {
        self.stop();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let _ = leases.delete(&self.name, &DeleteParams::default()).await;
        nodes.delete(&self.name, &DeleteParams::default()).await?;
        Ok(())
    }

    /// Current `renewTime` of the heartbeat Lease.
    pub async fn heartbeat_renew_time(&self) -> anyhow::Result<Option<MicroTime>> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        Ok(leases
            .get(&self.name)
            .await?
            .spec
            .and_then(|s| s.renew_time))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tasks> {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        self.stop();
    }
}

fn now_micro() -> String {
    // MicroTime wire format: RFC 3339 with microseconds.
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

async fn heartbeat(client: Client, name: String, interval: Duration) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let patch = serde_json::json!({"spec": {"renewTime": now_micro()}});
        if let Err(e) = leases
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::debug!(node = %name, error = %e, "heartbeat renew failed; retrying next tick");
        }
    }
}

async fn serve_http(listener: TcpListener, node: String, healthy: Arc<AtomicBool>) {
    use axum::routing::get;
    let health = {
        let healthy = healthy.clone();
        let node = node.clone();
        move || async move {
            if healthy.load(Ordering::SeqCst) {
                (http::StatusCode::OK, format!("ok from {node}\n"))
            } else {
                (
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    format!("failing on {node}\n"),
                )
            }
        }
    };
    let root = move || async move { format!("hello from {node}\n") };
    let app = axum::Router::new()
        .route("/healthz", get(health))
        .route("/", get(root));
    let _ = axum::serve(listener, app).await;
}
