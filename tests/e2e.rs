//! The deployment artefacts end to end, against the real parts: `helm lint` and
//! `helm install` of deploy/helm/feip into a real kube-apiserver (RBAC on), the `feip` binary
//! running as a subprocess under a token of the chart's ServiceAccount (a missing permission
//! in the chart fails the test), the examples applied and read back with the real kubectl, a
//! failover, and `helm uninstall` with its pre-delete hook while FloatingElasticIPs exist.
//!
//! What is simulated, because there is no kubelet and no kube-controller-manager (no pod ever
//! runs):
//! - the controller pod: the test runs the binary with the container's args and env read back
//!   from the installed Deployment (downward-API values filled in, timings shortened, the
//!   health port moved to a free loopback port, EC2 pointed at moto);
//! - the Deployment controller: a stand-in pod built from the pod template stands for the
//!   replicas until the hook has scaled the Deployment to 0; then the test stops the
//!   controller process (SIGTERM) and deletes the stand-in pod;
//! - kubelet and Job controller for the hook: Helm itself creates the hook objects and waits
//!   for the Job; the test runs the Job's container command locally (`/bin/sh` and the built
//!   kubectl) with a token of the hook's ServiceAccount, then writes the Job's completion
//!   status so Helm carries on.
//!
//! Every wait has a deadline; nothing sleeps to synchronise.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use feip::crd::FloatingElasticIP;
use feip::testenv::{
    AZ_A, AZ_C, ControlPlane, ElasticIp, FaultProxy, Instance, Moto, NodeOptions, SimNode, wait_for,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};

const CHART: &str = "deploy/helm/feip";
const WAIT: Duration = Duration::from_secs(60);
/// Placeholders of deploy/examples (documented in deploy/README.md).
const EIP_PLACEHOLDER: &str = "eipalloc-0123456789abcdef0";
const NODE_A_PLACEHOLDER: &str = "ip-10-0-0-20.ap-northeast-1.compute.internal";
const NODE_B_PLACEHOLDER: &str = "ip-10-0-1-20.ap-northeast-1.compute.internal";
/// A finalizer somebody else owns: the uninstall hook must leave it alone.
const FOREIGN_FINALIZER: &str = "example.com/keep";

/// The uninstall hook of an all-namespaces release touches every FEIP in the cluster, so the
/// tests that install the chart run one at a time (they share one control plane).
static CHART_INSTALLS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

// ---------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn output(mut cmd: Command) -> anyhow::Result<Output> {
    let out = cmd.kill_on_drop(true).stdin(Stdio::null()).output().await?;
    Ok(Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The built helm with its own (empty) config, cache and data directories.
struct Helm {
    bin: PathBuf,
    kubeconfig: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    fn new(cp: &ControlPlane) -> anyhow::Result<Self> {
        Ok(Self {
            bin: cp.tools().helm.clone(),
            kubeconfig: cp.admin_kubeconfig().to_path_buf(),
            home: tempfile::tempdir()?,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let h = self.home.path();
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", h.join("cache"))
            .env("HELM_CONFIG_HOME", h.join("config"))
            .env("HELM_DATA_HOME", h.join("data"))
            .current_dir(repo(""));
        cmd
    }

    async fn output(&self, args: &[&str]) -> anyhow::Result<Output> {
        output(self.command(args)).await
    }

    /// Runs helm; fails with its output unless it succeeds.
    async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.output(args).await?;
        if !out.ok {
            anyhow::bail!(
                "helm {} failed:\n{}\n{}",
                args.join(" "),
                out.stdout,
                out.stderr
            );
        }
        Ok(out.stdout)
    }
}

/// kubectl with the admin kubeconfig, returning its exit status instead of failing.
async fn kubectl_output(cp: &ControlPlane, args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = Command::new(&cp.tools().kubectl);
    cmd.arg(format!("--kubeconfig={}", cp.admin_kubeconfig().display()))
        .args(args);
    output(cmd).await
}

/// The `feip controller` binary under test, as the chart's Deployment would run it.
struct ControllerProcess {
    child: Child,
    log: PathBuf,
    health: SocketAddr,
    _dir: tempfile::TempDir,
}

impl ControllerProcess {
    fn start(args: &[String], env: &[(String, String)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("controller.log");
        let out = std::fs::File::create(&log)?;
        let health: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_feip"));
        cmd.args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("FEIP_HEALTH_ADDR", health.to_string())
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .kill_on_drop(true);
        Ok(Self {
            child: cmd.spawn()?,
            log,
            health,
            _dir: dir,
        })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "the controller exited with {status}; log tail:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }

    /// What the kubelet does when the pod goes away: SIGTERM, then wait for the exit.
    #[allow(unsafe_code)] // kill(2)
    async fn terminate(&mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) with a pid this process spawned and has not reaped yet.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                anyhow::ensure!(
                    status.success(),
                    "the controller exited with {status} on SIGTERM; log tail:\n{}",
                    self.log_tail()
                );
                Ok(())
            }
            Err(_) => anyhow::bail!("the controller did not exit within 20s of SIGTERM"),
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Status code of `GET path` (HTTP/1.1, one connection).
async fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP response: {text:?}"))
}

// ---------------------------------------------------------------------------------------
// Kubernetes helpers
// ---------------------------------------------------------------------------------------

/// A token of a ServiceAccount from the TokenRequest API (what a pod's projected token is).
async fn service_account_token(client: &Client, ns: &str, sa: &str) -> anyhow::Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let req: TokenRequest = serde_json::from_value(serde_json::json!({
        "spec": {"audiences": [], "expirationSeconds": 3600}
    }))?;
    let resp = api
        .create_token_request(sa, &PostParams::default(), &req)
        .await?;
    let token = resp.status.and_then(|s| s.token).unwrap_or_default();
    anyhow::ensure!(
        !token.is_empty(),
        "TokenRequest for {ns}/{sa} returned no token"
    );
    Ok(token)
}

/// The table kubectl prints, as rows of column name -> cell (columns are aligned, so the
/// header's word offsets slice every row).
fn parse_table(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let bytes = header.as_bytes();
    let starts: Vec<usize> = (0..bytes.len())
        .filter(|&i| bytes[i] != b' ' && (i == 0 || bytes[i - 1] == b' '))
        .collect();
    let names: Vec<&str> = header.split_whitespace().collect();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            names
                .iter()
                .enumerate()
                .map(|(j, name)| {
                    let from = starts[j].min(line.len());
                    let to = starts.get(j + 1).copied().unwrap_or(line.len());
                    let to = to.clamp(from, line.len());
                    (name.to_string(), line[from..to].trim().to_string())
                })
                .collect()
        })
        .collect()
}

/// `kubectl get floatingelasticips -n ns`, the row of `name`.
async fn kubectl_feip_row(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
) -> anyhow::Result<Option<BTreeMap<String, String>>> {
    let text = cp.kubectl(&["get", "floatingelasticips", "-n", ns]).await?;
    Ok(parse_table(&text)
        .into_iter()
        .find(|r| r.get("NAME").map(String::as_str) == Some(name)))
}

/// Waits until `kubectl get floatingelasticips` shows `name` Active on `holder`.
async fn wait_kubectl_holder(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
    holder: &str,
    controller: &mut ControllerProcess,
) -> anyhow::Result<BTreeMap<String, String>> {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    loop {
        controller.check_running()?;
        let row = kubectl_feip_row(cp, ns, name).await?;
        if let Some(r) = &row
            && r.get("HOLDER").map(String::as_str) == Some(holder)
            && r.get("STATUS").map(String::as_str) == Some("Active")
        {
            return Ok(r.clone());
        }
        last = row.or(last);
        if Instant::now() >= deadline {
            anyhow::bail!(
                "kubectl never showed {ns}/{name} Active on {holder}; last row {last:?}; controller log:\n{}",
                controller.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn substitute(example: &str, eip: &str, node_a: &str, node_b: &str) -> String {
    example
        .replace(EIP_PLACEHOLDER, eip)
        .replace(NODE_A_PLACEHOLDER, node_a)
        .replace(NODE_B_PLACEHOLDER, node_b)
}

/// `kubectl apply -n ns -f <example with placeholders replaced>`.
async fn apply_example(
    cp: &ControlPlane,
    ns: &str,
    example: &str,
    eip: &str,
    node_a: &str,
    node_b: &str,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(repo(&format!("deploy/examples/{example}")))?;
    let file = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    std::fs::write(file.path(), substitute(&text, eip, node_a, node_b))?;
    let path = file.path().display().to_string();
    cp.kubectl(&["apply", "-n", ns, "-f", &path]).await?;
    Ok(())
}

fn finalizers(f: &FloatingElasticIP) -> Vec<String> {
    f.metadata.finalizers.clone().unwrap_or_default()
}

/// Environment variables, name and value, in order.
type Env = Vec<(String, String)>;

/// Args and env of the Deployment's container as the kubelet would resolve them for a pod.
fn container_env(
    dep: &Deployment,
    pod_name: &str,
    pod_ns: &str,
) -> anyhow::Result<(Vec<String>, Env)> {
    let container = dep
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .ok_or_else(|| anyhow::anyhow!("the Deployment has no container"))?;
    let mut env = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.name") => pod_name.to_string(),
                Some("metadata.namespace") => pod_ns.to_string(),
                other => anyhow::bail!("env {} from an unexpected source {other:?}", var.name),
            },
            (None, None) => String::new(),
        };
        env.push((var.name.clone(), value));
    }
    let mut args = container.command.clone().unwrap_or_default();
    args.extend(container.args.clone().unwrap_or_default());
    Ok((args, env))
}

fn set_env(env: &mut Env, name: &str, value: &str) {
    env.retain(|(k, _)| k != name);
    env.push((name.to_string(), value.to_string()));
}

/// `kubectl auth can-i` as the ServiceAccount (user and its groups, as its token carries).
async fn can_i(cp: &ControlPlane, ns: &str, sa: &str, query: &[&str]) -> anyhow::Result<bool> {
    let user = format!("--as=system:serviceaccount:{ns}:{sa}");
    let group = format!("--as-group=system:serviceaccounts:{ns}");
    let mut args = vec![
        "auth",
        "can-i",
        user.as_str(),
        "--as-group=system:serviceaccounts",
        group.as_str(),
        "--as-group=system:authenticated",
    ];
    args.extend_from_slice(query);
    let out = kubectl_output(cp, &args).await?;
    match out.stdout.trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => anyhow::bail!(
            "kubectl {} answered {:?} {:?}",
            args.join(" "),
            out.stdout,
            out.stderr
        ),
    }
}

/// `spec` of the FloatingElasticIPGrant `name`, as `kubectl get feipgrant` returns it.
async fn grant_spec(cp: &ControlPlane, name: &str) -> anyhow::Result<serde_json::Value> {
    let text = cp
        .kubectl(&["get", "feipgrant", name, "-o", "json"])
        .await?;
    let grant: serde_json::Value = serde_json::from_str(&text)?;
    Ok(grant["spec"].clone())
}

/// The values block of the chart README's multi-tenant grants example.
fn readme_multi_tenant_values() -> anyhow::Result<String> {
    let readme = std::fs::read_to_string(repo(&format!("{CHART}/README.md")))?;
    let (_, after) = readme
        .split_once("<!-- multi-tenant-values:")
        .ok_or_else(|| anyhow::anyhow!("the chart README has no multi-tenant-values block"))?;
    let (_, block) = after
        .split_once("```yaml\n")
        .ok_or_else(|| anyhow::anyhow!("no yaml block after the marker"))?;
    let (block, _) = block
        .split_once("```")
        .ok_or_else(|| anyhow::anyhow!("the yaml block does not end"))?;
    Ok(block.to_string())
}

/// Asserts every query is allowed (`allowed`) or denied (`!allowed`), reporting all misses.
async fn assert_can_i(
    cp: &ControlPlane,
    ns: &str,
    sa: &str,
    allowed: bool,
    queries: &[Vec<&str>],
) -> anyhow::Result<()> {
    let mut wrong = Vec::new();
    for q in queries {
        if can_i(cp, ns, sa, q).await? != allowed {
            wrong.push(q.join(" "));
        }
    }
    anyhow::ensure!(
        wrong.is_empty(),
        "system:serviceaccount:{ns}:{sa} should {} these but {}:\n  {}",
        if allowed { "be allowed" } else { "be denied" },
        if allowed { "is not" } else { "is" },
        wrong.join("\n  ")
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// helm uninstall, playing kubelet + Job controller for the hook
// ---------------------------------------------------------------------------------------

/// A release of the chart. Its name is its namespace's, which contains the chart name, so
/// the chart's full name (the name of its objects) is the release name too.
struct Release {
    name: String,
    namespace: String,
    fullname: String,
}

impl Release {
    async fn in_new_namespace(cp: &ControlPlane, prefix: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            prefix.contains("feip"),
            "the release name must contain \"feip\""
        );
        let ns = cp.namespace(prefix).await?;
        Ok(Self {
            name: ns.clone(),
            namespace: ns.clone(),
            fullname: ns,
        })
    }
}

/// What the uninstall hook printed.
struct HookRun {
    log: String,
}

/// Runs `helm uninstall` with its hooks. When the hook Job appears, runs its container command
/// locally under a token of the Job's ServiceAccount (kubelet's part); when the hook has
/// scaled the controller Deployment to 0 and printed `scaled_marker` (if any), calls
/// `on_scaled_down` with "did the hook finish already?" (the Deployment controller's and
/// kubelet's part: stop the controller, delete its pods); when the command succeeds, marks
/// the Job complete (the Job controller's part).
async fn uninstall_with_hook(
    cp: &ControlPlane,
    client: &Client,
    helm: &Helm,
    release: &Release,
    scaled_marker: Option<&str>,
    on_scaled_down: impl AsyncFnOnce(bool) -> anyhow::Result<()>,
) -> anyhow::Result<HookRun> {
    let (ns, fullname) = (release.namespace.as_str(), release.fullname.as_str());
    let mut uninstall = helm.command(&["uninstall", &release.name, "-n", ns, "--timeout", "3m"]);
    let helm_log = tempfile::NamedTempFile::new()?;
    let mut uninstall = uninstall
        .stdin(Stdio::null())
        .stdout(Stdio::from(helm_log.reopen()?))
        .stderr(Stdio::from(helm_log.reopen()?))
        .kill_on_drop(true)
        .spawn()?;
    let helm_output = || std::fs::read_to_string(helm_log.path()).unwrap_or_default();

    // Helm creates the hook's ServiceAccount and RBAC first (weights -10/-9), then the Job.
    let job_name = format!("{fullname}-uninstall");
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + WAIT;
    let job = loop {
        if let Some(job) = jobs.get_opt(&job_name).await? {
            break job;
        }
        if let Some(status) = uninstall.try_wait()? {
            anyhow::bail!(
                "helm uninstall exited ({status}) before creating the hook Job:\n{}",
                helm_output()
            );
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no hook Job {job_name}:\n{}",
            helm_output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let pod = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .ok_or_else(|| anyhow::anyhow!("the hook Job has no pod template"))?;
    let sa = pod
        .service_account_name
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the hook Job names no ServiceAccount"))?;
    let container = pod
        .containers
        .first()
        .ok_or_else(|| anyhow::anyhow!("the hook Job has no container"))?;
    let mut argv = container.command.clone().unwrap_or_default();
    argv.extend(container.args.clone().unwrap_or_default());
    anyhow::ensure!(!argv.is_empty(), "the hook container has no command");

    // The pod's identity: the hook's own ServiceAccount, with a fresh token.
    let token = service_account_token(client, ns, &sa).await?;
    let kubeconfig = cp.token_kubeconfig(&sa, &token)?;
    let work = tempfile::tempdir()?;
    let hook_log = work.path().join("hook.log");
    let kubectl_dir = cp
        .tools()
        .kubectl
        .parent()
        .ok_or_else(|| anyhow::anyhow!("kubectl has no directory"))?
        .to_path_buf();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).env_clear();
    for var in container.env.iter().flatten() {
        cmd.env(&var.name, var.value.clone().unwrap_or_default());
    }
    let out = std::fs::File::create(&hook_log)?;
    let mut hook = cmd
        // A local stand-in for the container filesystem: the built kubectl on the PATH, the
        // token kubeconfig instead of the mounted token, a private HOME.
        .env("PATH", format!("{}:/usr/bin:/bin", kubectl_dir.display()))
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out))
        .kill_on_drop(true)
        .spawn()?;
    let hook_output = || std::fs::read_to_string(&hook_log).unwrap_or_default();

    // Wait for the scale-down (or the end of the hook when there is nothing to scale).
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + WAIT;
    let finished_first = loop {
        let replicas = deployments
            .get_opt(fullname)
            .await?
            .and_then(|d| d.spec)
            .and_then(|s| s.replicas);
        let marked = scaled_marker.is_none_or(|m| hook_output().contains(m));
        if replicas == Some(0) && marked {
            break hook.try_wait()?.is_some();
        }
        if let Some(status) = hook.try_wait()? {
            anyhow::ensure!(
                status.success(),
                "the hook failed ({status}):\n{}",
                hook_output()
            );
            break true;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the hook never scaled deployment/{fullname} to 0 (or never printed {scaled_marker:?}):\n{}",
            hook_output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    on_scaled_down(finished_first).await?;

    let status = match tokio::time::timeout(WAIT, hook.wait()).await {
        Ok(s) => s?,
        Err(_) => anyhow::bail!(
            "the hook did not finish within {WAIT:?}:\n{}",
            hook_output()
        ),
    };
    anyhow::ensure!(
        status.success(),
        "the hook failed ({status}):\n{}",
        hook_output()
    );

    // The Job controller's part: record the success so Helm's wait ends.
    let started = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
    let now = jiff::Timestamp::now();
    let ts = |t: jiff::Timestamp| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let condition = |type_: &str| {
        serde_json::json!({
            "type": type_, "status": "True", "reason": "CompletionsReached",
            "message": "Reached expected number of succeeded pods",
            "lastProbeTime": ts(now), "lastTransitionTime": ts(now),
        })
    };
    let status = serde_json::json!({"status": {
        "startTime": ts(started), "completionTime": ts(now),
        "active": 0, "ready": 0, "terminating": 0, "succeeded": 1,
        "uncountedTerminatedPods": {},
        "conditions": [condition("SuccessCriteriaMet"), condition("Complete")],
    }});
    jobs.patch_status(&job_name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;

    let status = match tokio::time::timeout(Duration::from_secs(120), uninstall.wait()).await {
        Ok(s) => s?,
        Err(_) => anyhow::bail!("helm uninstall did not finish:\n{}", helm_output()),
    };
    anyhow::ensure!(
        status.success(),
        "helm uninstall failed ({status}):\n{}",
        helm_output()
    );
    Ok(HookRun { log: hook_output() })
}

/// Asserts that Helm deleted the release's objects and the hook's.
async fn assert_release_gone(
    client: &Client,
    release: &Release,
    role_namespaces: &[&str],
) -> anyhow::Result<()> {
    let (ns, fullname) = (release.namespace.as_str(), release.fullname.as_str());
    let hook = format!("{fullname}-uninstall");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    anyhow::ensure!(
        deployments.get_opt(fullname).await?.is_none(),
        "Deployment left"
    );
    anyhow::ensure!(
        sas.get_opt(fullname).await?.is_none(),
        "ServiceAccount left"
    );
    anyhow::ensure!(
        sas.get_opt(&hook).await?.is_none(),
        "hook ServiceAccount left"
    );
    anyhow::ensure!(jobs.get_opt(&hook).await?.is_none(), "hook Job left");
    anyhow::ensure!(roles.get_opt(&hook).await?.is_none(), "hook Role left");
    anyhow::ensure!(
        cluster_roles.get_opt(fullname).await?.is_none(),
        "ClusterRole left"
    );
    anyhow::ensure!(
        cluster_roles.get_opt(&hook).await?.is_none(),
        "hook ClusterRole left"
    );
    for other in role_namespaces {
        let roles: Api<Role> = Api::namespaced(client.clone(), other);
        for name in [fullname.to_string(), format!("{hook}-feips")] {
            anyhow::ensure!(
                roles.get_opt(&name).await?.is_none(),
                "Role {name} left in {other}"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Tests without a cluster
// ---------------------------------------------------------------------------------------

#[test]
fn chart_crd_is_a_byte_identical_copy_of_the_generated_crd() -> anyhow::Result<()> {
    let names = |dir: &str| -> anyhow::Result<BTreeSet<String>> {
        Ok(std::fs::read_dir(repo(dir))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?)
    };
    let top = names("crds")?;
    for want in [
        "floatingelasticips.feip.io.yaml",
        "floatingelasticipgrants.feip.io.yaml",
    ] {
        assert!(top.contains(want), "crds/ lacks {want}: {top:?}");
    }
    assert_eq!(
        names(&format!("{CHART}/crds"))?,
        top,
        "the chart's crds/ must hold exactly the files of crds/"
    );
    for file in &top {
        let want = std::fs::read(repo(&format!("crds/{file}")))?;
        let got = std::fs::read(repo(&format!("{CHART}/crds/{file}")))?;
        assert!(
            want == got,
            "{CHART}/crds/{file} differs from crds/{file}: run hack/gen-crd.sh"
        );
    }
    Ok(())
}

/// EC2 actions an IAM policy file allows.
fn policy_actions(file: &str) -> anyhow::Result<BTreeSet<String>> {
    let policy: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(repo(file))?)?;
    let mut actions = BTreeSet::new();
    for st in policy["Statement"].as_array().into_iter().flatten() {
        anyhow::ensure!(st["Effect"] == "Allow", "{file}: only Allow statements");
        match &st["Action"] {
            serde_json::Value::String(a) => {
                actions.insert(a.clone());
            }
            serde_json::Value::Array(list) => {
                actions.extend(list.iter().filter_map(|a| a.as_str().map(str::to_string)))
            }
            other => anyhow::bail!("{file}: unexpected Action {other}"),
        }
    }
    Ok(actions)
}

/// The EC2 operations src/aws.rs calls on the SDK client, as IAM actions: reads as
/// `self.client.<operation>(`, mutations as `client.<operation>(` on the client `Ec2::mutate`
/// hands out with a permit. (`config()` is the client's configuration, not an operation.)
fn ec2_actions_in_source() -> anyhow::Result<BTreeSet<String>> {
    let text: String = std::fs::read_to_string(repo("src/aws.rs"))?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let mut actions = BTreeSet::new();
    for (i, _) in text.match_indices("client.") {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // another identifier ending in "client"
        }
        let op: String = text[i + "client.".len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let called = text[i + "client.".len() + op.len()..].starts_with('(');
        if op == "config" || !called {
            continue;
        }
        let pascal: String = op
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect();
        actions.insert(format!("ec2:{pascal}"));
    }
    Ok(actions)
}

#[test]
fn iam_policy_allows_exactly_the_ec2_calls_feip_makes() -> anyhow::Result<()> {
    let expected: BTreeSet<String> = [
        "ec2:AssociateAddress",
        "ec2:DescribeAddresses",
        "ec2:DescribeInstances",
        "ec2:DisassociateAddress",
    ]
    .map(String::from)
    .into();
    assert_eq!(
        ec2_actions_in_source()?,
        expected,
        "src/aws.rs calls other EC2 operations: update deploy/iam-policy*.json and this test"
    );
    assert_eq!(policy_actions("deploy/iam-policy.json")?, expected);
    assert_eq!(
        policy_actions("deploy/iam-policy-tag-restricted.json")?,
        expected
    );
    // The restricted variant limits the mutations on Elastic IPs to tagged ones.
    let restricted: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(repo(
        "deploy/iam-policy-tag-restricted.json",
    ))?)?;
    let eip_statement = restricted["Statement"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["Resource"] == "arn:aws:ec2:*:*:elastic-ip/*")
        .ok_or_else(|| anyhow::anyhow!("no elastic-ip statement"))?;
    assert_eq!(
        eip_statement["Condition"]["StringEquals"]["aws:ResourceTag/feip.io/managed"],
        "true"
    );
    Ok(())
}

#[test]
fn uninstall_script_is_valid_shell() -> anyhow::Result<()> {
    let out = std::process::Command::new("/bin/sh")
        .arg("-n")
        .arg(repo(&format!("{CHART}/files/uninstall.sh")))
        .output()?;
    assert!(
        out.status.success(),
        "sh -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// helm lint / template
// ---------------------------------------------------------------------------------------

/// Rendered documents of `helm template` (plus hooks), as JSON values.
async fn render(helm: &Helm, ns: &str, sets: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut args = vec!["template", "feip", CHART, "-n", ns];
    for s in sets {
        args.extend(["--set", s]);
    }
    let text = helm.run(&args).await?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn kinds(docs: &[serde_json::Value]) -> BTreeSet<String> {
    docs.iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn chart_lints_and_renders_its_options() -> anyhow::Result<()> {
    let cp = ControlPlane::shared()?;
    let helm = Helm::new(cp)?;
    helm.run(&["lint", CHART, "--strict"]).await?;
    helm.run(&[
        "lint",
        CHART,
        "--strict",
        "--set",
        "serviceMonitor.enabled=true,networkPolicy.enabled=true,networkPolicy.egress.enabled=true",
        "--set",
        "watchNamespaces={a,b},podAntiAffinity=hard",
    ])
    .await?;
    // values.schema.json rejects typos and bad enums.
    for bad in [
        "replicaCont=3",
        "podAntiAffinity=sometimes",
        "logging.format=xml",
    ] {
        let out = helm.output(&["lint", CHART, "--set", bad]).await?;
        assert!(!out.ok, "helm lint accepted --set {bad}");
    }

    let defaults = render(&helm, "feip-system", &[]).await?;
    let k = kinds(&defaults);
    for want in [
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
        "Service",
        "Job",
    ] {
        assert!(k.contains(want), "default render lacks a {want}: {k:?}");
    }
    assert!(!k.contains("ServiceMonitor") && !k.contains("NetworkPolicy"));
    let with_options = render(
        &helm,
        "feip-system",
        &["serviceMonitor.enabled=true,networkPolicy.enabled=true"],
    )
    .await?;
    let k = kinds(&with_options);
    assert!(k.contains("ServiceMonitor") && k.contains("NetworkPolicy"));

    // The hook Job carries files/uninstall.sh verbatim.
    let job = defaults
        .iter()
        .find(|d| d["kind"] == "Job")
        .ok_or_else(|| anyhow::anyhow!("no Job"))?;
    assert_eq!(job["metadata"]["annotations"]["helm.sh/hook"], "pre-delete");
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "registry.k8s.io/kubectl:v1.36.3");
    assert_eq!(
        c["args"][0].as_str(),
        Some(std::fs::read_to_string(repo(&format!("{CHART}/files/uninstall.sh")))?.as_str())
    );
    // Without the hook, nothing of it is rendered.
    let no_hook = render(&helm, "feip-system", &["uninstall.releaseFinalizers=false"]).await?;
    assert!(!kinds(&no_hook).contains("Job"));

    // Grants: none by default; grants.unrestricted renders the one documented grant.
    assert!(!kinds(&defaults).contains("FloatingElasticIPGrant"));
    let unrestricted = render(&helm, "feip-system", &["grants.unrestricted=true"]).await?;
    let grants: Vec<&serde_json::Value> = unrestricted
        .iter()
        .filter(|d| d["kind"] == "FloatingElasticIPGrant")
        .collect();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0]["apiVersion"], "feip.io/v1alpha1");
    assert_eq!(grants[0]["metadata"]["name"], "feip-unrestricted");
    for bad in [
        "grants.items[0].name=x",
        "grants.items[0].name=x,grants.items[0].spec.namespaces.all=true,grants.items[0].spec.addresses.all=true,grants.items[0].spec.nodes.all=true,grants.items[0].spec.takeover=true",
        "grants.unrestricted=yes",
    ] {
        let out = helm.output(&["lint", CHART, "--set", bad]).await?;
        assert!(!out.ok, "helm lint accepted --set {bad}");
    }

    // The lease guard: on by default, two policies and their bindings; its "everyone else"
    // policy covers the release's namespaces only.
    let guard = |docs: &[serde_json::Value]| -> Vec<serde_json::Value> {
        docs.iter()
            .filter(|d| d["kind"] == "ValidatingAdmissionPolicy")
            .cloned()
            .collect()
    };
    assert_eq!(guard(&defaults).len(), 2, "{:?}", kinds(&defaults));
    assert!(kinds(&defaults).contains("ValidatingAdmissionPolicyBinding"));
    let no_guard = render(&helm, "feip-system", &["leaseGuard.enabled=false"]).await?;
    assert!(guard(&no_guard).is_empty());
    let scoped = render(
        &helm,
        "feip-system",
        &[
            "watchNamespaces={team-a,team-b}",
            "leaseGuard.exemptUsers={ops}",
        ],
    )
    .await?;
    let tenant_policy = guard(&scoped)
        .into_iter()
        .find(|p| p["metadata"]["name"] == "feip-leases")
        .ok_or_else(|| anyhow::anyhow!("no feip-leases policy"))?;
    let text: Vec<&str> = ["matchConditions", "variables"]
        .iter()
        .flat_map(|k| tenant_policy["spec"][k].as_array().into_iter().flatten())
        .filter_map(|e| e["expression"].as_str())
        .collect();
    let text = text.join("\n");
    assert!(
        text.contains(r#"request.namespace in ["team-a", "team-b"]"#) && text.contains(r#""ops""#),
        "{text}"
    );
    // kube-node-lease is never a watched namespace (kubelet heartbeats are not feip's).
    let out = helm
        .output(&["lint", CHART, "--set", "watchNamespaces={kube-node-lease}"])
        .await?;
    assert!(
        !out.ok,
        "helm lint accepted watchNamespaces={{kube-node-lease}}"
    );
    Ok(())
}

#[tokio::test]
async fn examples_pass_admission_as_written() -> anyhow::Result<()> {
    let cp = ControlPlane::shared()?;
    let ns = cp.namespace("e2e-examples").await?;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(repo("deploy/examples"))? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        assert!(
            text.contains(EIP_PLACEHOLDER),
            "{} does not use the documented placeholder",
            path.display()
        );
        let p = path.display().to_string();
        // Server-side dry run: the CRD's schema and CEL rules judge it.
        cp.kubectl(&["apply", "--dry-run=server", "-n", &ns, "-f", &p])
            .await?;
        names.push(path.file_name().unwrap_or_default().to_owned());
    }
    for want in [
        "reference-two-nodes.yaml",
        "failback-immediate.yaml",
        "node-selector.yaml",
        "http-probe.yaml",
        "maintenance.yaml",
        "observe-only.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "missing example {want}: {names:?}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The whole life cycle
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn helm_install_failover_and_uninstall_with_feips_present() -> anyhow::Result<()> {
    feip::install_crypto_provider();
    let _serial = CHART_INSTALLS.lock().await;
    let cp = ControlPlane::shared()?;
    let moto = Moto::shared()?;
    let client = cp.client().await?;
    let helm = Helm::new(cp)?;

    let release = Release::in_new_namespace(cp, "feip-rel").await?;
    // A tenant namespace: the test environment's own grant does not cover it, so only the
    // chart's grant lets the controller act for its FloatingElasticIPs.
    let app_ns = cp.tenant_namespace("e2e-app", &[]).await?;
    let other_ns = cp.namespace("e2e-other").await?;
    let (release_ns, fullname) = (release.namespace.clone(), release.fullname.clone());
    let sa = fullname.clone();

    // --- install ---------------------------------------------------------------------
    let watch = format!("watchNamespaces={{{app_ns}}}");
    helm.run(&[
        "install",
        &release.name,
        CHART,
        "-n",
        &release_ns,
        "--set",
        &watch,
        // No kubelet exists; and even if one did, this image cannot be pulled.
        "--set",
        "image.repository=e2e.invalid/feip,image.tag=never",
        "--set",
        "uninstall.podTerminationTimeoutSeconds=60",
        // What feip did before grants existed (the test's addresses and nodes are arbitrary).
        "--set",
        "grants.unrestricted=true",
    ])
    .await?;
    let notes = helm
        .run(&["get", "notes", &release.name, "-n", &release_ns])
        .await?;
    assert!(
        notes.contains("kubectl get floatingelasticips -A")
            && notes.contains("reference-two-nodes.yaml")
            && notes.contains(&format!("created the grant \"{fullname}-unrestricted\"")),
        "NOTES: {notes}"
    );
    let grant = grant_spec(cp, &format!("{fullname}-unrestricted")).await?;
    assert_eq!(
        grant,
        serde_json::json!({
            "namespaces": {"all": true}, "addresses": {"all": true}, "nodes": {"all": true},
            "allowTakeover": true, "probes": {"anyPort": true, "minPeriod": "100ms"},
        })
    );

    // The objects as the apiserver stores them.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &release_ns);
    let dep = deployments.get(&fullname).await?;
    let spec = dep.spec.clone().unwrap_or_default();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.clone().unwrap_or_default();
    let psc = pod.security_context.clone().unwrap_or_default();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.map(|s| s.type_).as_deref(),
        Some("RuntimeDefault")
    );
    let c = &pod.containers[0];
    let csc = c.security_context.clone().unwrap_or_default();
    assert_eq!(csc.read_only_root_filesystem, Some(true));
    assert_eq!(csc.allow_privilege_escalation, Some(false));
    assert_eq!(
        csc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()])
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));
    assert!(
        pod.affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .is_some()
    );
    assert_eq!(
        pod.topology_spread_constraints.clone().unwrap_or_default()[0].topology_key,
        "topology.kubernetes.io/zone"
    );
    let pdb: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &release_ns);
    let pdb = pdb.get(&fullname).await?;
    assert_eq!(
        pdb.spec.and_then(|s| s.min_available),
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let services: Api<Service> = Api::namespaced(client.clone(), &release_ns);
    services.get(&format!("{fullname}-metrics")).await?;
    // Write permissions only in the watched namespace.
    Api::<Role>::namespaced(client.clone(), &app_ns)
        .get(&fullname)
        .await?;

    // --- RBAC as the chart's ServiceAccount ---------------------------------------------
    let leader_lease = format!("leases/{fullname}");
    let some_lease = "leases/somebody-else";
    assert_can_i(
        cp,
        &release_ns,
        &sa,
        true,
        &[
            vec!["list", "floatingelasticips.feip.io", "-A"],
            vec!["watch", "floatingelasticips.feip.io", "-A"],
            vec!["patch", "floatingelasticips.feip.io", "-n", &app_ns],
            vec![
                "patch",
                "floatingelasticips.feip.io",
                "--subresource=status",
                "-n",
                &app_ns,
            ],
            vec!["create", "leases.coordination.k8s.io", "-n", &app_ns],
            vec!["update", "leases.coordination.k8s.io", "-n", &app_ns],
            vec!["delete", "leases.coordination.k8s.io", "-n", &app_ns],
            vec!["list", "leases.coordination.k8s.io", "-A"],
            vec!["get", "leases.coordination.k8s.io", "-A"],
            vec![
                "list",
                "leases.coordination.k8s.io",
                "-n",
                "kube-node-lease",
            ],
            vec![
                "watch",
                "leases.coordination.k8s.io",
                "-n",
                "kube-node-lease",
            ],
            vec!["list", "nodes"],
            vec!["watch", "nodes"],
            vec!["get", "floatingelasticipgrants.feip.io"],
            vec!["list", "floatingelasticipgrants.feip.io"],
            vec!["watch", "floatingelasticipgrants.feip.io"],
            vec!["list", "namespaces"],
            vec!["watch", "namespaces"],
            vec!["create", "events.events.k8s.io", "-n", &app_ns],
            vec!["patch", "events.events.k8s.io", "-n", &app_ns],
            vec!["create", "leases.coordination.k8s.io", "-n", &release_ns],
            vec!["get", &leader_lease, "-n", &release_ns],
            vec!["update", &leader_lease, "-n", &release_ns],
        ],
    )
    .await?;
    assert_can_i(
        cp,
        &release_ns,
        &sa,
        false,
        &[
            vec!["get", "secrets", "-n", &release_ns],
            vec!["list", "secrets", "-A"],
            vec!["get", "secrets", "-n", &app_ns],
            vec!["get", "configmaps", "-n", &release_ns],
            vec!["create", "pods", "-n", &release_ns],
            vec!["create", "pods", "-n", &app_ns],
            vec!["get", "pods", "-n", &release_ns],
            vec!["patch", "deployments.apps", "-n", &release_ns],
            vec!["update", "deployments.apps/scale", "-n", &release_ns],
            vec!["delete", "nodes"],
            vec!["patch", "nodes"],
            vec!["update", "nodes/status"],
            vec!["create", "floatingelasticips.feip.io", "-n", &app_ns],
            vec!["update", "floatingelasticips.feip.io", "-n", &app_ns],
            vec!["delete", "floatingelasticips.feip.io", "-n", &app_ns],
            vec!["patch", "floatingelasticips.feip.io", "-n", &other_ns],
            // Grants are the admin's: the controller only reads them.
            vec!["create", "floatingelasticipgrants.feip.io"],
            vec!["update", "floatingelasticipgrants.feip.io"],
            vec!["patch", "floatingelasticipgrants.feip.io"],
            vec!["delete", "floatingelasticipgrants.feip.io"],
            vec!["get", "namespaces"],
            vec!["create", "namespaces"],
            vec!["patch", "namespaces"],
            vec!["delete", "namespaces"],
            vec!["create", "leases.coordination.k8s.io", "-n", &other_ns],
            // No Lease write outside the watched namespaces: kubelet heartbeats and the
            // kube-system leader Leases stay out of reach by RBAC alone.
            vec![
                "create",
                "leases.coordination.k8s.io",
                "-n",
                "kube-node-lease",
            ],
            vec![
                "update",
                "leases.coordination.k8s.io",
                "-n",
                "kube-node-lease",
            ],
            vec![
                "delete",
                "leases.coordination.k8s.io",
                "-n",
                "kube-node-lease",
            ],
            vec!["create", "leases.coordination.k8s.io", "-n", "kube-system"],
            vec!["update", "leases.coordination.k8s.io", "-n", "kube-system"],
            vec!["delete", "leases.coordination.k8s.io", "-n", "kube-system"],
            vec!["update", some_lease, "-n", &release_ns],
            vec!["delete", &leader_lease, "-n", &release_ns],
            vec!["create", "events.events.k8s.io", "-n", &other_ns],
            vec!["create", "events", "-n", &app_ns],
            vec!["create", "serviceaccounts/token", "-n", &release_ns],
            vec!["create", "clusterrolebindings"],
            vec!["escalate", "clusterroles"],
            vec!["impersonate", "users"],
            vec!["delete", "customresourcedefinitions.apiextensions.k8s.io"],
            vec!["*", "*", "-A"],
        ],
    )
    .await?;

    // --- EC2 and nodes --------------------------------------------------------------------
    let proxy = FaultProxy::start(moto.url()).await?;
    // Three addresses over two nodes: each node's interface needs three private IPs to carry
    // them all (one Elastic IP per private IP, as on AWS).
    let (inst_a, inst_b): (Instance, Instance) = (
        moto.launch_instance_with_secondaries(AZ_A, 2).await?,
        moto.launch_instance_with_secondaries(AZ_C, 2).await?,
    );
    let mut nodes = Vec::new();
    for (suffix, az, inst) in [("a", AZ_A, &inst_a), ("b", AZ_C, &inst_b)] {
        let mut opts = NodeOptions::new(&format!("{app_ns}-{suffix}"), az, &inst.instance_id);
        opts.heartbeat_interval = Duration::from_millis(300);
        nodes.push(SimNode::start(client.clone(), opts).await?);
    }
    let (node_a, node_b) = (nodes[0].name.clone(), nodes[1].name.clone());
    let eip_web: ElasticIp = moto.allocate_address().await?;
    let eip_api: ElasticIp = moto.allocate_address().await?;
    let eip_legacy: ElasticIp = moto.allocate_address().await?;

    // The chart's lease guard is in force before the controller starts, so every Lease write
    // below (its leader Lease, the holder Leases, their deletion) has passed it.
    let ctl = service_account_client(cp, &client, &release_ns, &sa).await?;
    wait_guard_active(
        &Api::namespaced(ctl, &app_ns),
        &lease("guard-probe", &[])?,
        &format!("{fullname}-controller-leases"),
    )
    .await?;
    // Its tenant side covers the watched namespace only: another release's namespace (here
    // other_ns) is not this release's to guard.
    lease_writer(cp, &app_ns, "tenant", &[&app_ns, &other_ns]).await?;
    let tenant = service_account_client(cp, &client, &app_ns, "tenant").await?;
    let (tenant_app, tenant_other): (Api<Lease>, Api<Lease>) = (
        Api::namespaced(tenant.clone(), &app_ns),
        Api::namespaced(tenant, &other_ns),
    );
    let tenant_policy = format!("{fullname}-leases");
    wait_guard_active(&tenant_app, &lease("feip-probe", &[])?, &tenant_policy).await?;
    let squat = lease("feip-web", &holder_labels("web"))?;
    let mut v = Verdicts::default();
    v.denied(
        "tenant forges a holder Lease in the watched namespace",
        &tenant_policy,
        &format!("refused CREATE of Lease {app_ns}/feip-web"),
        create_lease(&tenant_app, &squat).await,
    );
    v.allowed(
        "tenant writes a feip-labelled Lease outside the release's namespaces",
        create_lease(&tenant_other, &squat).await,
    );
    v.allowed(
        "... and deletes it",
        delete_lease(&tenant_other, "feip-web").await,
    );
    v.finish()?;

    // --- the controller, as the Deployment's pod would run it --------------------------
    let token = service_account_token(&client, &release_ns, &sa).await?;
    let kubeconfig = cp.token_kubeconfig(&sa, &token)?;
    let pod_name = format!("{fullname}-e2e-0");
    let (args, mut env) = container_env(&dep, &pod_name, &release_ns)?;
    assert_eq!(args, vec!["controller".to_string()]);
    assert!(
        env.iter()
            .any(|(k, v)| k == "FEIP_NAMESPACES" && v == &app_ns),
        "FEIP_NAMESPACES: {env:?}"
    );
    for (k, v) in [
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("AWS_ENDPOINT_URL", proxy.url()),
        ("AWS_REGION", feip::testenv::REGION.to_string()),
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("FEIP_LEASE_DURATION", "3s".to_string()),
        ("FEIP_RENEW_DEADLINE", "2s".to_string()),
        ("FEIP_RETRY_PERIOD", "250ms".to_string()),
        ("FEIP_LEADERSHIP_SAFETY_MARGIN", "1500ms".to_string()),
        ("FEIP_EC2_TIMEOUT", "500ms".to_string()),
    ] {
        set_env(&mut env, k, &v);
    }
    let mut controller = ControllerProcess::start(&args, &env)?;
    let health = controller.health;
    let deadline = Instant::now() + WAIT;
    loop {
        controller.check_running()?;
        if http_status(health, "/readyz").await.ok() == Some(200) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "/readyz never answered 200; controller log:\n{}",
            controller.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http_status(health, "/healthz").await?, 200);
    assert_eq!(http_status(health, "/metrics").await?, 200);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &release_ns);
    wait_for("the controller to lead", WAIT, || {
        let leases = leases.clone();
        let (fullname, pod_name) = (fullname.clone(), pod_name.clone());
        async move {
            let holder = leases
                .get_opt(&fullname)
                .await?
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity);
            Ok((holder.as_deref() == Some(pod_name.as_str())).then_some(()))
        }
    })
    .await?;

    // --- the reference example, its holder and a failover, through kubectl --------------
    apply_example(
        cp,
        &app_ns,
        "reference-two-nodes.yaml",
        &eip_web.allocation_id,
        &node_a,
        &node_b,
    )
    .await?;
    let row = wait_kubectl_holder(cp, &app_ns, "web", &node_a, &mut controller).await?;
    assert_eq!(
        row.get("ADDRESS").map(String::as_str),
        Some(eip_web.public_ip.as_str())
    );
    assert_eq!(
        moto.association(&eip_web.allocation_id).await?.as_deref(),
        Some(inst_a.network_interface_id.as_str())
    );

    // Node A dies (heartbeat, kubelet port): the default TCP probe sees it within seconds.
    nodes[0].stop();
    let row = wait_kubectl_holder(cp, &app_ns, "web", &node_b, &mut controller).await?;
    assert_eq!(row.get("FAILOVERS").map(String::as_str), Some("1"));
    assert_eq!(
        moto.association(&eip_web.allocation_id).await?.as_deref(),
        Some(inst_b.network_interface_id.as_str())
    );

    // Events are written under the chart's identity (events.k8s.io create).
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &app_ns);
    let reasons: Vec<String> = events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "Failover"),
        "no Failover event for web: {reasons:?}"
    );

    // Deleting an FEIP while the controller runs releases its address (the finalizer path,
    // under the chart's RBAC: Lease delete, finalizer removal).
    apply_example(
        cp,
        &app_ns,
        "failback-immediate.yaml",
        &eip_api.allocation_id,
        &node_a,
        &node_b,
    )
    .await?;
    wait_kubectl_holder(cp, &app_ns, "api", &node_b, &mut controller).await?;
    cp.kubectl(&[
        "delete",
        "floatingelasticip",
        "api",
        "-n",
        &app_ns,
        "--timeout=60s",
    ])
    .await?;
    assert_eq!(moto.association(&eip_api.allocation_id).await?, None);
    let app_leases: Api<Lease> = Api::namespaced(client.clone(), &app_ns);
    assert!(app_leases.get_opt("feip-api").await?.is_none());

    // An observe-only FEIP that also carries somebody else's finalizer.
    apply_example(
        cp,
        &app_ns,
        "observe-only.yaml",
        &eip_legacy.allocation_id,
        &node_a,
        &node_b,
    )
    .await?;
    let feips: Api<FloatingElasticIP> = Api::namespaced(client.clone(), &app_ns);
    wait_for("legacy to get the finalizer", WAIT, || {
        let feips = feips.clone();
        async move {
            let f = feips.get("legacy").await?;
            Ok((finalizers(&f).iter().any(|x| x == feip::crd::FINALIZER)
                && f.status.and_then(|s| s.phase).is_some())
            .then_some(()))
        }
    })
    .await?;
    let add_foreign = serde_json::json!([
        {"op": "add", "path": "/metadata/finalizers/-", "value": FOREIGN_FINALIZER}
    ]);
    feips
        .patch(
            "legacy",
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(add_foreign)?),
        )
        .await?;

    // An FEIP outside the release's namespaces (as another feip release would leave it).
    let outside: Api<FloatingElasticIP> = Api::namespaced(client.clone(), &other_ns);
    let mut foreign: FloatingElasticIP = serde_yaml::from_str(&std::fs::read_to_string(repo(
        "deploy/examples/reference-two-nodes.yaml",
    ))?)?;
    foreign.metadata.finalizers = Some(vec![feip::crd::FINALIZER.to_string()]);
    outside.create(&PostParams::default(), &foreign).await?;

    // The EC2 calls the controller made are exactly what deploy/iam-policy.json allows.
    let seen: BTreeSet<String> = proxy
        .requests()
        .into_iter()
        .map(|r| format!("ec2:{}", r.action))
        .collect();
    assert_eq!(seen, policy_actions("deploy/iam-policy.json")?);

    // --- helm uninstall with FEIPs present ------------------------------------------------
    // A stand-in for the Deployment's pods: the hook must wait until it is gone.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &release_ns);
    let template = spec.template.clone();
    let stand_in: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": pod_name, "labels": template.metadata.and_then(|m| m.labels)},
        "spec": template.spec,
    }))?;
    pods.create(&PostParams::default(), &stand_in).await?;

    let started = Instant::now();
    let hook = uninstall_with_hook(
        cp,
        &client,
        &helm,
        &release,
        // The hook must see the stand-in pod and wait for it.
        Some("waiting for controller pods to terminate"),
        async |finished_first| {
            anyhow::ensure!(
                !finished_first,
                "the hook finished while a controller pod still existed"
            );
            // The pods terminate: the controller gets SIGTERM, then the pod object goes.
            controller.terminate().await?;
            pods.delete(&pod_name, &Default::default()).await?;
            Ok(())
        },
    )
    .await?;
    println!(
        "helm uninstall with its hook took {:.1}s; hook output:\n{}",
        started.elapsed().as_secs_f64(),
        hook.log
    );

    assert_release_gone(&client, &release, &[&app_ns]).await?;
    assert!(
        leases.get_opt(&fullname).await?.is_none(),
        "leader Lease left"
    );
    // Only feip's finalizer went, only in the release's namespaces; the address stayed.
    assert_eq!(finalizers(&feips.get("web").await?), Vec::<String>::new());
    assert_eq!(
        finalizers(&feips.get("legacy").await?),
        vec![FOREIGN_FINALIZER.to_string()]
    );
    assert_eq!(
        finalizers(&outside.get("web").await?),
        vec![feip::crd::FINALIZER.to_string()]
    );
    assert_eq!(
        moto.association(&eip_web.allocation_id).await?.as_deref(),
        Some(inst_b.network_interface_id.as_str()),
        "uninstall retains the association"
    );
    // Without a controller, FEIPs now delete at once.
    cp.kubectl(&[
        "delete",
        "floatingelasticip",
        "web",
        "-n",
        &app_ns,
        "--timeout=20s",
    ])
    .await?;

    // Tidy up what this test made outside the release.
    let clear = serde_json::json!({"metadata": {"finalizers": null}});
    feips
        .patch("legacy", &PatchParams::default(), &Patch::Merge(&clear))
        .await?;
    outside
        .patch("web", &PatchParams::default(), &Patch::Merge(&clear))
        .await?;
    cp.kubectl(&["delete", "floatingelasticips", "--all", "-n", &app_ns])
        .await?;
    cp.kubectl(&["delete", "floatingelasticips", "--all", "-n", &other_ns])
        .await?;
    Ok(())
}

#[tokio::test]
async fn default_install_is_cluster_wide_and_uninstalls_cleanly() -> anyhow::Result<()> {
    feip::install_crypto_provider();
    let _serial = CHART_INSTALLS.lock().await;
    let cp = ControlPlane::shared()?;
    let client = cp.client().await?;
    let helm = Helm::new(cp)?;
    let release = Release::in_new_namespace(cp, "feip-all").await?;
    let some_ns = cp.namespace("e2e-any").await?;
    let (release_ns, fullname) = (release.namespace.clone(), release.fullname.clone());
    let sa = fullname.clone();
    let values = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    std::fs::write(values.path(), readme_multi_tenant_values()?)?;
    let values_path = values.path().display().to_string();
    helm.run(&[
        "install",
        &release.name,
        CHART,
        "-n",
        &release_ns,
        "--set",
        "image.repository=e2e.invalid/feip,image.tag=never",
        "--set",
        "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::111122223333:role/feip",
        // The README's multi-tenant grants: the apiserver validates them against the CRD.
        "-f",
        &values_path,
    ])
    .await?;
    for (name, tag) in [("team-a", "team-a"), ("team-b", "team-b")] {
        let spec = grant_spec(cp, name).await?;
        assert_eq!(
            spec["addresses"],
            serde_json::json!({"tags": {"feip.io/tenant": tag}}),
            "grant {name}"
        );
    }
    assert_eq!(
        grant_spec(cp, "team-a").await?["namespaces"],
        serde_json::json!({"names": ["team-a"]})
    );
    let unrestricted = kubectl_output(
        cp,
        &["get", "feipgrant", &format!("{fullname}-unrestricted")],
    )
    .await?;
    assert!(
        !unrestricted.ok,
        "grants.unrestricted is off, yet the grant exists"
    );
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &release_ns);
    let annotations = sas.get(&sa).await?.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations
            .get("eks.amazonaws.com/role-arn")
            .map(String::as_str),
        Some("arn:aws:iam::111122223333:role/feip")
    );
    let dep: Api<Deployment> = Api::namespaced(client.clone(), &release_ns);
    let dep = dep.get(&fullname).await?;
    let (_, env) = container_env(&dep, "p", &release_ns)?;
    assert!(
        !env.iter().any(|(k, _)| k == "FEIP_NAMESPACES"),
        "all namespaces: FEIP_NAMESPACES must be unset, got {env:?}"
    );

    // All namespaces: the writes are cluster-wide, the denials stay.
    assert_can_i(
        cp,
        &release_ns,
        &sa,
        true,
        &[
            vec!["patch", "floatingelasticips.feip.io", "-n", &some_ns],
            vec![
                "patch",
                "floatingelasticips.feip.io",
                "--subresource=status",
                "-n",
                &some_ns,
            ],
            vec!["create", "leases.coordination.k8s.io", "-n", &some_ns],
            vec!["delete", "leases.coordination.k8s.io", "-n", &some_ns],
            vec!["create", "events.events.k8s.io", "-n", &some_ns],
            vec!["list", "floatingelasticipgrants.feip.io"],
            vec!["watch", "namespaces"],
        ],
    )
    .await?;
    assert_can_i(
        cp,
        &release_ns,
        &sa,
        false,
        &[
            vec!["get", "secrets", "-A"],
            vec!["create", "pods", "-n", &some_ns],
            vec!["patch", "deployments.apps", "-n", &release_ns],
            vec!["delete", "nodes"],
            vec!["patch", "nodes"],
            vec!["create", "floatingelasticips.feip.io", "-n", &some_ns],
            vec!["update", "floatingelasticips.feip.io", "-n", &some_ns],
            vec!["delete", "floatingelasticips.feip.io", "-n", &some_ns],
            vec!["create", "floatingelasticipgrants.feip.io"],
            vec!["delete", "floatingelasticipgrants.feip.io"],
            vec!["create", "clusterrolebindings"],
        ],
    )
    .await?;

    // Uninstall with no FEIPs and no controller pods: the hook has nothing to wait for.
    let hook = uninstall_with_hook(cp, &client, &helm, &release, None, async |_| Ok(())).await?;
    assert!(hook.log.contains("feip uninstall: done"), "{}", hook.log);
    assert_release_gone(&client, &release, &[]).await?;
    for name in ["team-a", "team-b"] {
        let left = kubectl_output(cp, &["get", "feipgrant", name]).await?;
        assert!(!left.ok, "grant {name} left after uninstall");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The lease guard (ValidatingAdmissionPolicies of templates/lease-guard.yaml)
// ---------------------------------------------------------------------------------------

/// A Lease with these labels (and a holder, so that an update has something to change).
fn lease(name: &str, labels: &[(&str, &str)]) -> anyhow::Result<Lease> {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"holderIdentity": "e2e", "leaseDurationSeconds": 15},
    }))?)
}

/// The labels feip's controller puts on the holder Lease of the FloatingElasticIP `feip`.
fn holder_labels(feip: &str) -> [(&str, &str); 2] {
    [
        ("app.kubernetes.io/managed-by", "feip"),
        ("feip.io/name", feip),
    ]
}

async fn create_lease(api: &Api<Lease>, lease: &Lease) -> Result<(), kube::Error> {
    api.create(&PostParams::default(), lease).await.map(|_| ())
}

/// Reads the Lease with `api` (the writer's own identity) and replaces it after `change`.
async fn update_lease(
    api: &Api<Lease>,
    name: &str,
    change: impl FnOnce(&mut Lease),
) -> Result<(), kube::Error> {
    let mut lease = api.get(name).await?;
    change(&mut lease);
    api.replace(name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}

fn new_holder(lease: &mut Lease) {
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = Some("forged".into());
    }
}

async fn delete_lease(api: &Api<Lease>, name: &str) -> Result<(), kube::Error> {
    api.delete(name, &Default::default()).await.map(|_| ())
}

/// Whether `result` is a denial by the ValidatingAdmissionPolicy `policy` (not by RBAC),
/// with the guard's message naming the refused operation and Lease.
fn denied_by(result: &Result<(), kube::Error>, policy: &str, refused: &str) -> bool {
    match result {
        Err(kube::Error::Api(s)) => {
            s.code == 403
                && s.message
                    .contains(&format!("ValidatingAdmissionPolicy '{policy}'"))
                && s.message.contains("feip lease guard")
                && s.message.contains(refused)
        }
        _ => false,
    }
}

/// Expected outcomes of writes, collected so that one run reports every miss.
#[derive(Default)]
struct Verdicts {
    wrong: Vec<String>,
}

impl Verdicts {
    fn allowed(&mut self, what: &str, result: Result<(), kube::Error>) {
        if let Err(e) = result {
            self.wrong
                .push(format!("{what}: should be allowed, got {e}"));
        }
    }

    /// `refused` is what the guard's message must name, e.g. "CREATE of Lease ns/name".
    fn denied(&mut self, what: &str, policy: &str, refused: &str, result: Result<(), kube::Error>) {
        if !denied_by(&result, policy, refused) {
            let got = match result {
                Ok(()) => "it was allowed".to_string(),
                Err(e) => format!("{e}"),
            };
            self.wrong.push(format!(
                "{what}: should be denied by {policy} naming {refused:?}, got {got}"
            ));
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.wrong.is_empty(),
            "lease guard verdicts wrong:\n  {}",
            self.wrong.join("\n  ")
        );
        Ok(())
    }
}

/// Policies take effect asynchronously (the apiserver loads them from a watch): waits until
/// `probe`, a write the policy must refuse, is refused by it. Probes are dry runs, so
/// nothing is written while the policy is not active yet.
async fn wait_guard_active(api: &Api<Lease>, probe: &Lease, policy: &str) -> anyhow::Result<()> {
    let name = probe.metadata.name.clone().unwrap_or_default();
    wait_for(&format!("{policy} to refuse {name}"), WAIT, || {
        let (api, name) = (api.clone(), name.clone());
        async move {
            let pp = PostParams {
                dry_run: true,
                ..Default::default()
            };
            let result = api.create(&pp, probe).await.map(|_| ());
            Ok(denied_by(&result, policy, &name).then_some(()))
        }
    })
    .await
}

/// A client authenticated as the ServiceAccount ns/sa (a TokenRequest token).
async fn service_account_client(
    cp: &ControlPlane,
    admin: &Client,
    ns: &str,
    sa: &str,
) -> anyhow::Result<Client> {
    let token = service_account_token(admin, ns, sa).await?;
    let kubeconfig = cp.token_kubeconfig(sa, &token)?;
    feip::testenv::control_plane::client_from_kubeconfig(&kubeconfig).await
}

/// A ServiceAccount `sa` in `ns` with every Lease verb in each of `namespaces` (a Role and
/// RoleBinding per namespace): a tenant that RBAC alone would let write any Lease there.
async fn lease_writer(
    cp: &ControlPlane,
    ns: &str,
    sa: &str,
    namespaces: &[&str],
) -> anyhow::Result<()> {
    let mut docs = vec![format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {ns}}}\n"
    )];
    for target in namespaces {
        docs.push(format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: {sa}-leases, namespace: {target}}}\n\
             rules: [{{apiGroups: [coordination.k8s.io], resources: [leases], verbs: ['*']}}]\n"
        ));
        docs.push(format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {sa}-leases, namespace: {target}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {sa}-leases}}\n\
             subjects: [{{kind: ServiceAccount, name: {sa}, namespace: {ns}}}]\n"
        ));
    }
    let file = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    std::fs::write(file.path(), docs.join("---\n"))?;
    cp.kubectl(&["apply", "-f", &file.path().display().to_string()])
        .await?;
    Ok(())
}

/// Issue 13 item 3: with the cluster-wide install (RBAC grants Lease writes everywhere) the
/// chart's admission policies keep the controller's ServiceAccount to feip's own Leases, and
/// keep everybody else (a tenant with full Lease rights in its namespace) off them.
///
/// A private control plane: the policies are cluster-scoped and this release covers every
/// namespace, so on the shared one they would refuse the other tests' controllers.
#[tokio::test]
async fn lease_guard_refuses_what_rbac_alone_would_allow() -> anyhow::Result<()> {
    feip::install_crypto_provider();
    let started = Instant::now();
    let cp = ControlPlane::start().await?;
    let cp = &cp;
    let admin = cp.client().await?;
    let helm = Helm::new(cp)?;
    let release = Release::in_new_namespace(cp, "feip-guard").await?;
    let (release_ns, fullname) = (release.namespace.clone(), release.fullname.clone());
    let sa = fullname.clone();
    let team = cp.namespace("team-a").await?;
    // leaseGuard.exemptUsers: a janitor the admin trusts with feip's Leases.
    let exempt = format!("leaseGuard.exemptUsers={{system:serviceaccount:{team}:janitor}}");
    helm.run(&[
        "install",
        &release.name,
        CHART,
        "-n",
        &release_ns,
        "--set",
        "image.repository=e2e.invalid/feip,image.tag=never",
        "--set",
        &exempt,
    ])
    .await?;
    let controller_policy = format!("{fullname}-controller-leases");
    let tenant_policy = format!("{fullname}-leases");

    lease_writer(cp, &team, "janitor", &[&team]).await?;
    lease_writer(
        cp,
        &team,
        "tenant",
        &[&team, &release_ns, "kube-node-lease"],
    )
    .await?;
    let ctl = service_account_client(cp, &admin, &release_ns, &sa).await?;
    let tenant = service_account_client(cp, &admin, &team, "tenant").await?;
    let ctl_in = |ns: &str| -> Api<Lease> { Api::namespaced(ctl.clone(), ns) };
    let tenant_in = |ns: &str| -> Api<Lease> { Api::namespaced(tenant.clone(), ns) };

    // RBAC alone lets both write these Leases.
    for ns in ["kube-node-lease", "kube-system", team.as_str()] {
        for verb in ["create", "update", "delete"] {
            anyhow::ensure!(
                can_i(
                    cp,
                    &release_ns,
                    &sa,
                    &[verb, "leases.coordination.k8s.io", "-n", ns]
                )
                .await?,
                "RBAC should allow the cluster-wide controller to {verb} Leases in {ns}"
            );
        }
    }
    for ns in [team.as_str(), release_ns.as_str()] {
        anyhow::ensure!(
            can_i(
                cp,
                &team,
                "tenant",
                &["update", "leases.coordination.k8s.io", "-n", ns]
            )
            .await?,
            "RBAC should allow the tenant to update Leases in {ns}"
        );
    }

    wait_guard_active(
        &ctl_in(&team),
        &lease("guard-probe", &[])?,
        &controller_policy,
    )
    .await?;
    wait_guard_active(
        &tenant_in(&team),
        &lease("feip-guard-probe", &[])?,
        &tenant_policy,
    )
    .await?;

    // Stand-ins for a kubelet heartbeat and a kube-system leader Lease (written by the admin:
    // system:masters is exempt, as are the real kubelet and controller-manager identities).
    let admin_in = |ns: &str| -> Api<Lease> { Api::namespaced(admin.clone(), ns) };
    create_lease(&admin_in("kube-node-lease"), &lease("node-1", &[])?).await?;
    create_lease(&admin_in("kube-system"), &lease("kube-scheduler", &[])?).await?;

    let mut v = Verdicts::default();
    let p = controller_policy.as_str();
    // --- the controller's ServiceAccount: no Lease but its own ----------------------------
    let knl = ctl_in("kube-node-lease");
    v.denied(
        "controller creates a kubelet heartbeat Lease",
        p,
        "refused CREATE of Lease kube-node-lease/node-2",
        create_lease(&knl, &lease("node-2", &[])?).await,
    );
    v.denied(
        "controller creates a feip-labelled Lease in kube-node-lease",
        p,
        "refused CREATE of Lease kube-node-lease/feip-web",
        create_lease(&knl, &lease("feip-web", &holder_labels("web"))?).await,
    );
    v.denied(
        "controller updates a kubelet heartbeat Lease",
        p,
        "refused UPDATE of Lease kube-node-lease/node-1",
        update_lease(&knl, "node-1", new_holder).await,
    );
    v.denied(
        "controller deletes a kubelet heartbeat Lease",
        p,
        "refused DELETE of Lease kube-node-lease/node-1",
        delete_lease(&knl, "node-1").await,
    );
    let ks = ctl_in("kube-system");
    v.denied(
        "controller creates a kube-system Lease",
        p,
        "refused CREATE of Lease kube-system/kube-controller-manager",
        create_lease(&ks, &lease("kube-controller-manager", &[])?).await,
    );
    v.denied(
        "controller updates a kube-system leader Lease",
        p,
        "refused UPDATE of Lease kube-system/kube-scheduler",
        update_lease(&ks, "kube-scheduler", new_holder).await,
    );
    v.denied(
        "controller deletes a kube-system leader Lease",
        p,
        "refused DELETE of Lease kube-system/kube-scheduler",
        delete_lease(&ks, "kube-scheduler").await,
    );
    let ctl_team = ctl_in(&team);
    v.denied(
        "controller creates an unlabelled Lease in a tenant namespace",
        p,
        &format!("refused CREATE of Lease {team}/feip-web"),
        create_lease(&ctl_team, &lease("feip-web", &[])?).await,
    );
    v.denied(
        "controller creates a holder Lease whose name does not match its feip.io/name",
        p,
        &format!("refused CREATE of Lease {team}/feip-api"),
        create_lease(&ctl_team, &lease("feip-api", &holder_labels("web"))?).await,
    );
    let ctl_release = ctl_in(&release_ns);
    v.denied(
        "controller creates a Lease other than its leader Lease in the release namespace",
        p,
        &format!("refused CREATE of Lease {release_ns}/not-the-leader"),
        create_lease(&ctl_release, &lease("not-the-leader", &[])?).await,
    );
    // Its own Leases: a holder Lease in a tenant namespace, the leader Lease.
    for name in ["web", "db"] {
        v.allowed(
            &format!("controller creates the holder Lease feip-{name}"),
            create_lease(
                &ctl_team,
                &lease(&format!("feip-{name}"), &holder_labels(name))?,
            )
            .await,
        );
    }
    v.allowed(
        "controller updates its holder Lease",
        update_lease(&ctl_team, "feip-web", new_holder).await,
    );
    v.denied(
        "controller strips the labels of its holder Lease",
        p,
        &format!("refused UPDATE of Lease {team}/feip-web"),
        update_lease(&ctl_team, "feip-web", |l| l.metadata.labels = None).await,
    );
    v.allowed(
        "controller creates its leader Lease",
        create_lease(&ctl_release, &lease(&fullname, &[])?).await,
    );
    v.allowed(
        "controller updates its leader Lease",
        update_lease(&ctl_release, &fullname, new_holder).await,
    );

    // --- a tenant with every Lease verb in its namespace: not on feip's Leases -----------
    let p = tenant_policy.as_str();
    let t = tenant_in(&team);
    let who = format!("by system:serviceaccount:{team}:tenant");
    v.denied(
        "tenant updates a holder Lease",
        p,
        &format!("refused UPDATE of Lease {team}/feip-web {who}"),
        update_lease(&t, "feip-web", new_holder).await,
    );
    v.denied(
        "tenant strips the labels of a holder Lease",
        p,
        &format!("refused UPDATE of Lease {team}/feip-web"),
        update_lease(&t, "feip-web", |l| l.metadata.labels = None).await,
    );
    v.denied(
        "tenant deletes a holder Lease",
        p,
        &format!("refused DELETE of Lease {team}/feip-web"),
        delete_lease(&t, "feip-web").await,
    );
    v.denied(
        "tenant forges a holder Lease",
        p,
        &format!("refused CREATE of Lease {team}/feip-api"),
        create_lease(&t, &lease("feip-api", &holder_labels("api"))?).await,
    );
    v.denied(
        "tenant creates a Lease labelled managed-by=feip",
        p,
        &format!("refused CREATE of Lease {team}/forged"),
        create_lease(
            &t,
            &lease("forged", &[("app.kubernetes.io/managed-by", "feip")])?,
        )
        .await,
    );
    v.denied(
        "tenant pre-creates an unlabelled holder Lease name",
        p,
        &format!("refused CREATE of Lease {team}/feip-cache"),
        create_lease(&t, &lease("feip-cache", &[])?).await,
    );
    // Control case: its own ordinary Leases stay writable, unless it dresses one up as feip's.
    v.allowed(
        "tenant creates its own Lease",
        create_lease(&t, &lease("mine", &[])?).await,
    );
    v.allowed(
        "tenant updates its own Lease",
        update_lease(&t, "mine", new_holder).await,
    );
    v.denied(
        "tenant labels its own Lease managed-by=feip",
        p,
        &format!("refused UPDATE of Lease {team}/mine"),
        update_lease(&t, "mine", |l| {
            l.metadata
                .labels
                .get_or_insert_default()
                .insert("app.kubernetes.io/managed-by".into(), "feip".into());
        })
        .await,
    );
    v.allowed(
        "tenant deletes its own Lease",
        delete_lease(&t, "mine").await,
    );
    let t_release = tenant_in(&release_ns);
    v.denied(
        "a Lease writer in the release namespace updates the leader Lease",
        p,
        &format!("refused UPDATE of Lease {release_ns}/{fullname}"),
        update_lease(&t_release, &fullname, new_holder).await,
    );
    v.denied(
        "a Lease writer in the release namespace deletes the leader Lease",
        p,
        &format!("refused DELETE of Lease {release_ns}/{fullname}"),
        delete_lease(&t_release, &fullname).await,
    );
    v.allowed(
        "a Lease writer in the release namespace creates another Lease",
        create_lease(&t_release, &lease("unrelated", &[])?).await,
    );
    // kube-node-lease is not covered: a kubelet of a node named feip-* renews its heartbeat.
    v.allowed(
        "a Lease writer in kube-node-lease creates the heartbeat of a node named feip-node",
        create_lease(&tenant_in("kube-node-lease"), &lease("feip-node", &[])?).await,
    );
    // Exempt: cluster admins (system:masters) and leaseGuard.exemptUsers.
    v.allowed(
        "a cluster admin updates a holder Lease",
        update_lease(&admin_in(&team), "feip-web", new_holder).await,
    );
    let janitor = service_account_client(cp, &admin, &team, "janitor").await?;
    v.allowed(
        "an exempt user (leaseGuard.exemptUsers) updates a holder Lease",
        update_lease(&Api::namespaced(janitor, &team), "feip-web", new_holder).await,
    );
    v.finish()?;

    // --- the exempt garbage collector and the controller clean up ------------------------
    let gc = kubectl_output(
        cp,
        &[
            "delete",
            "lease",
            "feip-web",
            "-n",
            &team,
            "--as=system:serviceaccount:kube-system:generic-garbage-collector",
            "--as-group=system:serviceaccounts",
            "--as-group=system:serviceaccounts:kube-system",
            "--as-group=system:authenticated",
        ],
    )
    .await?;
    anyhow::ensure!(
        gc.ok,
        "the garbage collector could not delete a holder Lease: {}",
        gc.stderr
    );
    delete_lease(&ctl_team, "feip-db").await?;
    println!(
        "lease guard test took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
