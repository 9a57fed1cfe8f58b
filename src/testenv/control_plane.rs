//! A real Kubernetes control plane: etcd + kube-apiserver on free loopback ports, per-run
//! certificates, RBAC on, an audit log, and the FloatingElasticIP CRD installed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, CustomResourceExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::process::{ManagedProcess, free_port, wait_for};
use super::tools::{Tools, tools};
use crate::crd::FloatingElasticIP;
use crate::grant::FloatingElasticIPGrant;

/// The grant every control plane of the test environment starts with: every namespace but
/// the tenant namespaces may claim every address with every node, takeover and probe (what
/// feip allowed before grants existed), so tests about something else need no grant.
pub const TESTENV_GRANT: &str = "testenv-unrestricted";
/// Marks a namespace made by [`ControlPlane::tenant_namespace`]: [`TESTENV_GRANT`] skips it.
pub const TENANT_NAMESPACE_LABEL: &str = "testenv.feip.io/tenant";

/// A running etcd + kube-apiserver pair. Dropping it kills both.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    ca: Ca,
    server: String,
    admin_kubeconfig: PathBuf,
    audit_log: PathBuf,
    // Declared in stop order: the apiserver before etcd.
    apiserver: Mutex<ManagedProcess>,
    etcd: Mutex<ManagedProcess>,
    tools: &'static Tools,
}

struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "feip-testenv-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A leaf certificate and its key (PEM).
    fn leaf(
        &self,
        cn: &str,
        orgs: &[&str],
        sans: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        for org in orgs {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *org);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
static NAME_SEQ: AtomicU32 = AtomicU32::new(0);

impl ControlPlane {
    /// One control plane per test binary, started on first use and shared by its tests
    /// (each test uses its own namespace and uniquely named cluster-scoped objects).
    /// Tests must build their own clients (`client()`): a client is tied to the runtime
    /// that created it, and every `#[tokio::test]` has its own.
    pub fn shared() -> anyhow::Result<&'static ControlPlane> {
        SHARED
            .get_or_init(|| {
                // Start on a dedicated thread with its own runtime: the caller may already be
                // inside a runtime, and the processes must not depend on the caller's thread.
                std::thread::spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(ControlPlane::start())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("control plane start panicked"))
                .and_then(|r| r)
                .map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|e| anyhow::anyhow!("control plane failed to start: {e}"))
    }

    /// Starts a fresh control plane owned by the caller.
    pub async fn start() -> anyhow::Result<ControlPlane> {
        let tools = tools()?;
        let dir = tempdir_on_tmpfs()?;
        let d = dir.path();
        let ca = Ca::new()?;
        write(d, "ca.crt", &ca.cert_pem)?;
        let (crt, key) = ca.leaf(
            "kube-apiserver",
            &[],
            vec![
                "127.0.0.1".into(),
                "localhost".into(),
                "kubernetes.default.svc".into(),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        write(d, "apiserver.crt", &crt)?;
        write(d, "apiserver.key", &key)?;
        let sa = KeyPair::generate()?;
        write(d, "sa.key", &sa.serialize_pem())?;
        write(d, "sa.pub", &sa.public_key_pem())?;
        write(
            d,
            "audit-policy.yaml",
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
        )?;

        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let etcd = ManagedProcess::start(
            "etcd",
            &tools.etcd,
            vec![
                format!("--data-dir={}", d.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
            d.join("etcd.log"),
        )?;

        let port = free_port()?;
        let audit_log = d.join("audit.log");
        let p = |f: &str| d.join(f).display().to_string();
        let apiserver = ManagedProcess::start(
            "kube-apiserver",
            &tools.kube_apiserver,
            vec![
                format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
                format!("--secure-port={port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--tls-cert-file={}", p("apiserver.crt")),
                format!("--tls-private-key-file={}", p("apiserver.key")),
                format!("--client-ca-file={}", p("ca.crt")),
                // The default is AlwaysAllow: without RBAC every permission test would pass.
                "--authorization-mode=RBAC".into(),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--disable-admission-plugins=ServiceAccount".into(),
                format!("--audit-policy-file={}", p("audit-policy.yaml")),
                format!("--audit-log-path={}", audit_log.display()),
                format!("--cert-dir={}", p("certs")),
                "--v=1".into(),
            ],
            d.join("kube-apiserver.log"),
        )?;

        let server = format!("https://127.0.0.1:{port}");
        let (admin_crt, admin_key) = ca.leaf(
            "admin",
            &["system:masters"],
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let admin_kubeconfig = d.join("admin.kubeconfig");
        write_kubeconfig(
            &admin_kubeconfig,
            &server,
            &ca.cert_pem,
            &admin_crt,
            &admin_key,
        )?;

        let cp = ControlPlane {
            dir,
            ca,
            server,
            admin_kubeconfig,
            audit_log,
            apiserver: Mutex::new(apiserver),
            etcd: Mutex::new(etcd),
            tools,
        };
        cp.wait_ready().await?;
        cp.install_crd().await?;
        Ok(cp)
    }

    /// Waits until `/readyz` answers ok and the system namespaces exist.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        wait_for("kube-apiserver /readyz", Duration::from_secs(60), || {
            let client = client.clone();
            async move {
                self.check_processes()?;
                let req = http::Request::get("/readyz").body(Vec::new())?;
                // 403 (RBAC not bootstrapped yet) and connection refused both mean "not yet".
                Ok(client
                    .request_text(req)
                    .await
                    .ok()
                    .filter(|t| t.trim() == "ok")
                    .map(|_| ()))
            }
        })
        .await?;
        let namespaces: Api<Namespace> = Api::all(client);
        wait_for(
            "namespaces default and kube-node-lease",
            Duration::from_secs(30),
            || {
                let namespaces = namespaces.clone();
                async move {
                    let a = namespaces.get_opt("default").await?;
                    let b = namespaces.get_opt("kube-node-lease").await?;
                    Ok((a.is_some() && b.is_some()).then_some(()))
                }
            },
        )
        .await
    }

    fn check_processes(&self) -> anyhow::Result<()> {
        lock(&self.etcd).check_running()?;
        lock(&self.apiserver).check_running()
    }

    /// Applies the generated CRDs (FloatingElasticIP, FloatingElasticIPGrant), waits until
    /// they are Established, and grants every namespace except tenant namespaces (see
    /// [`ControlPlane::tenant_namespace`]) everything: [`TESTENV_GRANT`].
    pub async fn install_crd(&self) -> anyhow::Result<()> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client().await?);
        for crd in [FloatingElasticIP::crd(), FloatingElasticIPGrant::crd()] {
            let name = crd.metadata.name.clone().unwrap_or_default();
            crds.patch(
                &name,
                &PatchParams::apply("feip-testenv").force(),
                &Patch::Apply(&crd),
            )
            .await
            .with_context(|| format!("applying the CRD {name}"))?;
            wait_for("the CRD to be Established", Duration::from_secs(30), || {
                let crds = crds.clone();
                let name = name.clone();
                async move {
                    let crd = crds.get(&name).await?;
                    let established = crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    Ok(established.then_some(()))
                }
            })
            .await?;
        }
        let grants: Api<FloatingElasticIPGrant> = Api::all(self.client().await?);
        let grant: FloatingElasticIPGrant = serde_json::from_value(serde_json::json!({
            "apiVersion": "feip.io/v1alpha1", "kind": "FloatingElasticIPGrant",
            "metadata": {"name": TESTENV_GRANT},
            "spec": {
                "namespaces": {"selector": {"matchExpressions": [
                    {"key": TENANT_NAMESPACE_LABEL, "operator": "DoesNotExist"}]}},
                "addresses": {"all": true},
                "nodes": {"all": true},
                "allowTakeover": true,
                "probes": {"anyPort": true, "minPeriod": "100ms"},
            },
        }))?;
        grants
            .patch(
                TESTENV_GRANT,
                &PatchParams::apply("feip-testenv").force(),
                &Patch::Apply(&grant),
            )
            .await
            .context("creating the test environment's grant")?;
        Ok(())
    }

    /// A client with cluster-admin rights (system:masters).
    pub async fn client(&self) -> anyhow::Result<Client> {
        client_from_kubeconfig(&self.admin_kubeconfig).await
    }

    /// A kubeconfig for `user` in `groups`, authenticated by a client certificate from this
    /// control plane's CA. It has no rights until RBAC grants them.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> anyhow::Result<PathBuf> {
        let (crt, key) = self
            .ca
            .leaf(user, groups, vec![], ExtendedKeyUsagePurpose::ClientAuth)?;
        let n = NAME_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .path()
            .join(format!("user-{n}-{}.kubeconfig", sanitize(user)));
        write_kubeconfig(&path, &self.server, &self.ca.cert_pem, &crt, &key)?;
        Ok(path)
    }

    /// A kubeconfig that authenticates with a bearer token (e.g. a ServiceAccount token).
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> anyhow::Result<PathBuf> {
        let n = NAME_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .path()
            .join(format!("token-{n}-{}.kubeconfig", sanitize(name)));
        let cfg = serde_json::json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "feip",
            "clusters": [{"name": "feip", "cluster": {"server": self.server,
                "certificate-authority-data": b64(&self.ca.cert_pem)}}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": "feip", "context": {"cluster": "feip", "user": name}}],
        });
        std::fs::write(&path, serde_yaml::to_string(&cfg)?)?;
        Ok(path)
    }

    /// Creates a fresh namespace named `<prefix>-<n>` and returns its name.
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<String> {
        let name = format!(
            "{}-{}-{}",
            sanitize(prefix),
            std::process::id() % 10000,
            NAME_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let api: Api<Namespace> = Api::all(self.client().await?);
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
        api.create(&PostParams::default(), &ns).await?;
        Ok(name)
    }

    /// Like [`ControlPlane::namespace`], for a tenant: labelled [`TENANT_NAMESPACE_LABEL`]
    /// (with `labels` besides), so the test environment's grant does not cover it and only the
    /// grants a test creates decide what its FloatingElasticIPs may claim.
    pub async fn tenant_namespace(
        &self,
        prefix: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let name = format!(
            "{}-{}-{}",
            sanitize(prefix),
            std::process::id() % 10000,
            NAME_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut all: std::collections::BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.insert(TENANT_NAMESPACE_LABEL.into(), "true".into());
        let api: Api<Namespace> = Api::all(self.client().await?);
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": all}}))?;
        api.create(&PostParams::default(), &ns).await?;
        Ok(name)
    }

    /// Kills and restarts kube-apiserver (same flags, same etcd) and waits until it is ready.
    pub async fn restart_apiserver(&self) -> anyhow::Result<()> {
        lock(&self.apiserver).restart()?;
        self.wait_ready().await
    }

    /// Kills and restarts etcd (same data directory) and waits until the apiserver is ready.
    pub async fn restart_etcd(&self) -> anyhow::Result<()> {
        lock(&self.etcd).restart()?;
        self.wait_ready().await
    }

    /// Stops etcd for `down` (a fault of that length: the apiserver stays up, its watches stay
    /// open, every write stalls or fails), starts it again on the same data directory and
    /// waits until the apiserver is ready.
    pub async fn etcd_outage(&self, down: Duration) -> anyhow::Result<()> {
        lock(&self.etcd).kill();
        tokio::time::sleep(down).await;
        lock(&self.etcd).start_again()?;
        self.wait_ready().await
    }

    pub fn server(&self) -> &str {
        &self.server
    }
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }
    pub fn audit_log(&self) -> &Path {
        &self.audit_log
    }
    pub fn tools(&self) -> &'static Tools {
        self.tools
    }
    /// Directory holding certificates, logs and kubeconfigs of this run.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the built kubectl with the admin kubeconfig; returns stdout, fails with stderr.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        run_kubectl(&self.tools.kubectl, &self.admin_kubeconfig, args).await
    }
}

/// Runs `kubectl --kubeconfig <cfg> args...`.
pub async fn run_kubectl(
    kubectl: &Path,
    kubeconfig: &Path,
    args: &[&str],
) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(kubectl)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .kill_on_drop(true)
        .output()
        .await?;
    if !out.status.success() {
        anyhow::bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Builds a client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A scratch directory named after this process, on tmpfs when there is one (etcd's
/// fsync-heavy writes stay off the disk). Shared environments live in statics, which are never
/// dropped, so directories left by processes that are gone are removed here instead.
pub(crate) fn tempdir_on_tmpfs() -> anyhow::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    remove_stale_dirs(&base);
    let prefix = format!("feip-testenv-{}-", std::process::id());
    Ok(tempfile::Builder::new().prefix(&prefix).tempdir_in(&base)?)
}

fn remove_stale_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("feip-testenv-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn write(dir: &Path, name: &str, content: &str) -> anyhow::Result<()> {
    std::fs::write(dir.join(name), content).with_context(|| format!("writing {name}"))
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &str,
    crt: &str,
    key: &str,
) -> anyhow::Result<()> {
    let cfg = serde_json::json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "feip",
        "clusters": [{"name": "feip", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": "feip", "user": {"client-certificate-data": b64(crt), "client-key-data": b64(key)}}],
        "contexts": [{"name": "feip", "context": {"cluster": "feip", "user": "feip"}}],
    });
    std::fs::write(path, serde_yaml::to_string(&cfg)?)?;
    Ok(())
}
