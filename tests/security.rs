//! Security and tenancy against the real parts: nobody moves an address they should not (the
//! ownership guard, conflicting claims on one Elastic IP), no credential ever reaches the logs,
//! and the shipped container runs non-root on a read-only root filesystem.
//! (The chart's RBAC is exercised by the end-to-end chart test.)

use std::path::Path;
use std::time::Duration;

use feip::crd::Phase;
use feip::testenv::scenario::{
    Scenario, active_on, condition, create_in, degraded_reason, forwarded_associations, holder,
    wait_ready, wait_status_in,
};
use feip::testenv::{AZ_A, AZ_C, Fault, FaultRule, TestController, ec2_client, wait_for};
use kube::api::{Api, DeleteParams, PostParams};

async fn associate_directly(s: &Scenario, eni: &str) -> anyhow::Result<()> {
    ec2_client(s.moto.url())
        .await
        .associate_address()
        .allocation_id(&s.eip.allocation_id)
        .network_interface_id(eni)
        .allow_reassociation(true)
        .send()
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_moved_to_a_foreign_instance_is_never_taken_back() -> anyhow::Result<()> {
    let mut s = Scenario::new("sec-owner", &[AZ_A, AZ_C]).await?;
    let foreign = s.moto.launch_instance(AZ_A).await?;
    s.run().await?;
    s.create("web", s.spec(serde_json::json!({}))).await?;
    s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
        .await?;

    // Someone moves the address to an instance that is not a candidate.
    associate_directly(&s, &foreign.network_interface_id).await?;
    let st = s
        .wait_status("web", "ForeignAssociation", |st| {
            degraded_reason(st) == Some("ForeignAssociation")
        })
        .await?;
    assert!(
        condition(&st, "Degraded")
            .is_some_and(|c| c.message.contains(&foreign.network_interface_id)),
        "{st:?}"
    );
    s.wait_monitor_passes(3).await?;
    let st = s.api.get("web").await?.status.unwrap_or_default();
    assert!(
        st.nodes.iter().all(|n| n.failure_count == 0),
        "a foreign move is not the holder's failure: {:?}",
        st.nodes
    );

    // Not even a failover takes it: the holder dies, the Lease may name a new holder, but the
    // address stays where its owner put it.
    s.nodes[0].stop();
    wait_for("the holder to move in the Lease", s.wait, || async {
        let lease = s.lease("web").await?;
        let h = lease.and_then(|l| l.spec).and_then(|s| s.holder_identity);
        Ok((h.as_deref() == Some(s.node(1))).then_some(()))
    })
    .await?;
    s.wait_monitor_passes(3).await?;

    // Nor does disabling release it ...
    s.patch_spec("web", serde_json::json!({"targetState": "Stopped"}))
        .await?;
    s.wait_status("web", "Stopped", |st| st.phase == Some(Phase::Stopped))
        .await?;
    s.wait_monitor_passes(3).await?;
    // ... nor deleting the object.
    s.api.delete("web", &DeleteParams::default()).await?;
    wait_for("web deleted", s.wait, || async {
        Ok(s.api.get_opt("web").await?.is_none().then_some(()))
    })
    .await?;
    assert_eq!(
        forwarded_associations(&s.proxy, &s.eip.allocation_id),
        vec![s.eni(0).to_string()],
        "the controller moved a foreign-held address"
    );
    assert_eq!(s.proxy.count("DisassociateAddress"), 0);
    assert_eq!(
        s.moto.association(&s.eip.allocation_id).await?.as_deref(),
        Some(foreign.network_interface_id.as_str())
    );

    // Control: with takeover allowed the address is taken (to the surviving node).
    s.create("taker", s.spec(serde_json::json!({"allowTakeover": true})))
        .await?;
    s.wait_association(Some(s.eni(1))).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_claim_on_an_address_gets_a_conflict_and_never_moves_it() -> anyhow::Result<()> {
    let mut s = Scenario::new("sec-conflict-a", &[AZ_A, AZ_C]).await?;
    let other_ns = s.cp.namespace("sec-conflict-b").await?;
    let mut opts = s.options("replica-0");
    opts.namespaces = vec![s.ns.clone(), other_ns.clone()];
    let c = TestController::start(s.client.clone(), &s.proxy.url(), opts).await?;
    wait_ready(&c, s.wait).await?;
    s.controllers.push(c);
    let other_api = Api::namespaced(s.client.clone(), &other_ns);

    s.create("first", s.spec(serde_json::json!({}))).await?;
    s.wait_status("first", "first active on 0", |st| active_on(st, s.node(0)))
        .await?;
    // A second object for the same allocation id, preferring node 1: it would move the address
    // if it managed it.
    let mut second = s.spec(serde_json::json!({}));
    second["candidates"] = serde_json::json!([{"node": s.node(1)}, {"node": s.node(0)}]);
    s.create("second", second).await?;
    // A third, in another namespace, naming the same address by its public IP.
    let third = serde_json::json!({
        "publicIp": s.eip.public_ip,
        "candidates": [{"node": s.node(1)}],
        "monitor": {"interval": "1s", "timeout": "800ms"},
        "health": {"heartbeatTimeout": "2s", "probe": {"type": "None"}},
    });
    create_in(&other_api, "third", third).await?;

    let owner = format!("{}/first", s.ns);
    let st = s
        .wait_status("second", "second: AddressConflict", |st| {
            degraded_reason(st) == Some("AddressConflict")
        })
        .await?;
    let msg = condition(&st, "Degraded")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(msg.contains(&owner), "{msg:?} does not name the owner");
    assert_eq!(st.phase, Some(Phase::Error));
    assert!(holder(&st).is_none());
    let st = wait_status_in(
        &other_api,
        "third",
        "third: AddressConflict",
        s.wait,
        |st| degraded_reason(st) == Some("AddressConflict"),
    )
    .await?;
    let msg = condition(&st, "Degraded")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(msg.contains(&owner), "{msg:?} does not name the owner");
    assert!(
        s.event_reasons("second")
            .await?
            .iter()
            .any(|r| r == "AddressConflict")
    );

    // Several passes later: the losers wrote no holder Lease and the address never moved.
    s.wait_monitor_passes(4).await?;
    assert!(
        s.lease("second").await?.is_none(),
        "second wrote a holder Lease"
    );
    let third_lease =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(s.client.clone(), &other_ns)
            .get_opt("feip-third")
            .await?;
    assert!(third_lease.is_none(), "third wrote a holder Lease");
    assert_eq!(
        forwarded_associations(&s.proxy, &s.eip.allocation_id),
        vec![s.eni(0).to_string()]
    );
    s.wait_status("first", "first unaffected", |st| {
        active_on(st, s.node(0)) && degraded_reason(st).is_none()
    })
    .await?;

    // Deleting a loser releases nothing.
    s.api.delete("second", &DeleteParams::default()).await?;
    wait_for("second deleted", s.wait, || async {
        Ok(s.api.get_opt("second").await?.is_none().then_some(()))
    })
    .await?;
    assert_eq!(s.proxy.count("DisassociateAddress"), 0);
    assert_eq!(
        s.moto.association(&s.eip.allocation_id).await?.as_deref(),
        Some(s.eni(0))
    );

    // Deleting the owner releases the address; the remaining claim becomes the owner.
    s.api.delete("first", &DeleteParams::default()).await?;
    s.wait_association(Some(s.eni(1))).await?;
    wait_status_in(&other_api, "third", "third took over", s.wait, |st| {
        active_on(st, s.node(1)) && degraded_reason(st).is_none()
    })
    .await?;
    Ok(())
}

const ACCESS_KEY_ID: &str = "AKIAFEIPLOGCANARY0001";
const SECRET_KEY: &str = "feipCanarySecretKeyThatMustNeverBeLogged0001";
const SESSION_TOKEN: &str = "feipCanarySessionTokenThatMustNeverBeLogged0001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_or_token_ever_reaches_the_logs() -> anyhow::Result<()> {
    let s = Scenario::new("sec-logs", &[AZ_A, AZ_C]).await?;
    // The controller authenticates as a ServiceAccount with a bound token.
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "feip"}}))?;
    Api::namespaced(s.client.clone(), &s.ns)
        .create(&PostParams::default(), &sa)
        .await?;
    let binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding = serde_json::from_value(
        serde_json::json!({
            "metadata": {"name": format!("{}-feip", s.ns)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": "feip", "namespace": s.ns}],
        }),
    )?;
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(s.client.clone())
        .create(&PostParams::default(), &binding)
        .await?;
    let token =
        s.cp.kubectl(&["create", "token", "feip", "-n", &s.ns, "--duration", "1h"])
            .await?
            .trim()
            .to_string();
    assert!(token.len() > 100, "not a token: {token:?}");
    let kubeconfig = s.cp.token_kubeconfig("feip-sa", &token)?;

    // The real binary, every crate logging at debug level, AWS credentials from the
    // environment as in a pod.
    let health_port = feip::testenv::process::free_port()?;
    let log_path = s.cp.dir().join(format!("{}-controller.log", s.ns));
    let log = std::fs::File::create(&log_path)?;
    let home = s.cp.dir().join(format!("{}-home", s.ns));
    std::fs::create_dir_all(&home)?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_feip"))
        .args([
            "controller",
            "--namespaces",
            &s.ns,
            "--leader-election-namespace",
            &s.ns,
            "--lease-duration",
            "3s",
            "--renew-deadline",
            "2s",
            "--retry-period",
            "250ms",
            "--safety-margin",
            "1s",
            "--ec2-timeout",
            "400ms",
            "--health-addr",
            &format!("127.0.0.1:{health_port}"),
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("RUST_LOG", "debug")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_SESSION_TOKEN", SESSION_TOKEN)
        .env("AWS_REGION", feip::testenv::REGION)
        .env("AWS_ENDPOINT_URL", s.proxy.url())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;

    // Make it work, fail and recover: election, association, EC2 errors, a failover.
    s.create("web", s.spec(serde_json::json!({}))).await?;
    let ran = async {
        s.wait_status("web", "active on 0", |st| active_on(st, s.node(0)))
            .await?;
        s.proxy
            .inject(FaultRule::times("DescribeAddresses", 3, Fault::ServerError));
        s.proxy.inject(FaultRule::times(
            "AssociateAddress",
            1,
            Fault::Definite("UnauthorizedOperation".into()),
        ));
        s.nodes[0].stop();
        s.wait_status("web", "failover after the errors", |st| {
            active_on(st, s.node(1)) && st.failover_count == 1
        })
        .await?;
        let metrics = reqwest_get(health_port, "/metrics").await?;
        anyhow::Ok(metrics)
    };
    // Fail at once if the controller exits.
    let ran = tokio::select! {
        r = ran => r,
        status = child.wait() => Err(anyhow::anyhow!("the controller exited: {status:?}")),
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    let log = std::fs::read_to_string(&log_path)?;
    let metrics =
        ran.map_err(|e| anyhow::anyhow!("{e:#}\ncontroller log tail:\n{}", tail(&log, 40)))?;

    // The run was real and verbose: the log shows the work and the errors.
    for expected in [
        "became leader",
        "AssociateAddress",
        "DescribeAddresses",
        "UnauthorizedOperation",
        "DEBUG",
    ] {
        assert!(
            log.contains(expected),
            "the log lacks {expected:?}; tail:\n{}",
            tail(&log, 20)
        );
    }
    // At debug level the AWS SDK's endpoint resolver prints the credentials identity,
    // access key id included; feip's default directives keep that one target at info, so
    // even `RUST_LOG=debug` must not put the access key id anywhere in the log.
    assert!(
        !log.contains(ACCESS_KEY_ID),
        "the AWS access key id appears in the log: {}",
        log.lines()
            .find(|l| l.contains(ACCESS_KEY_ID))
            .unwrap_or_default()
    );
    assert!(
        !metrics.contains(ACCESS_KEY_ID),
        "the AWS access key id is in /metrics"
    );
    for (what, secret) in [
        ("AWS secret access key", SECRET_KEY),
        ("AWS session token", SESSION_TOKEN),
        ("ServiceAccount token", token.as_str()),
    ] {
        for (place, text) in [("log", &log), ("/metrics", &metrics)] {
            assert!(
                !text.contains(secret),
                "the {what} appears in the {place}: {}",
                text.lines()
                    .find(|l| l.contains(secret))
                    .unwrap_or_default()
            );
        }
        // A token's signature part alone must not leak either.
        if let Some(sig) = secret.rsplit('.').next().filter(|p| p.len() > 20) {
            assert!(!log.contains(sig), "part of the {what} appears in the log");
        }
    }
    println!(
        "no access key id, secret key, session token or ServiceAccount token in {} lines ({} KiB) of debug logs and /metrics",
        log.lines().count(),
        log.len() / 1024
    );
    Ok(())
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// GET http://127.0.0.1:port/path with a bare HTTP/1.1 request (no client crate needed).
async fn reqwest_get(port: u16, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut out)).await??;
    anyhow::ensure!(out.starts_with("HTTP/1.1 200"), "{path}: {}", tail(&out, 5));
    Ok(out)
}

/// The final stage of the Dockerfile: non-root user, no shell-based steps, distroless base.
#[test]
fn the_image_runs_as_non_root_without_a_shell() -> anyhow::Result<()> {
    let root = feip::testenv::tools::repo_root();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile"))?;
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let last_from = lines
        .iter()
        .rposition(|l| l.to_ascii_uppercase().starts_with("FROM "))
        .ok_or_else(|| anyhow::anyhow!("no FROM in the Dockerfile"))?;
    let stage = &lines[last_from..];
    let base = stage[0];
    assert!(
        base.contains("distroless") && base.contains("nonroot"),
        "runtime base {base:?} is not a distroless nonroot image"
    );
    let user = stage
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .ok_or_else(|| anyhow::anyhow!("the final stage sets no USER"))?
        .trim();
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        !uid.is_empty() && uid != "0" && uid != "root",
        "the image runs as {user:?}"
    );
    assert!(
        uid.parse::<u32>().is_ok(),
        "USER {user:?} is not numeric: runAsNonRoot cannot verify a name"
    );
    assert!(
        !stage
            .iter()
            .any(|l| l.to_ascii_uppercase().starts_with("RUN ")),
        "the runtime stage runs commands (it has no shell)"
    );
    Ok(())
}

/// The rendered chart: the pod runs non-root, read-only root filesystem, no privilege
/// escalation, all capabilities dropped, RuntimeDefault seccomp, no host namespaces.
#[test]
fn the_chart_renders_a_hardened_pod() -> anyhow::Result<()> {
    let root = feip::testenv::tools::repo_root();
    let chart = root.join("deploy/helm/feip");
    let tools = feip::testenv::tools()?;
    let scratch = tempfile::tempdir()?;
    let out = std::process::Command::new(&tools.helm)
        .args(["template", "feip"])
        .arg(&chart)
        .args(["--namespace", "feip-system"])
        .env("HELM_CACHE_HOME", scratch.path().join("cache"))
        .env("HELM_CONFIG_HOME", scratch.path().join("config"))
        .env("HELM_DATA_HOME", scratch.path().join("data"))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout)?;
    check_pod_hardening(&rendered, &chart)
}

fn check_pod_hardening(rendered: &str, chart: &Path) -> anyhow::Result<()> {
    use anyhow::ensure;
    use serde::Deserialize;
    let mut deployments = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(rendered) {
        let v = serde_json::Value::deserialize(doc)?;
        if v["kind"] == "Deployment" {
            deployments.push(v);
        }
    }
    ensure!(
        !deployments.is_empty(),
        "no Deployment rendered from {}",
        chart.display()
    );
    for d in deployments {
        let pod = &d["spec"]["template"]["spec"];
        let psc = &pod["securityContext"];
        ensure!(psc["runAsNonRoot"] == true, "pod securityContext: {psc}");
        ensure!(psc["runAsUser"] != 0, "pod securityContext: {psc}");
        for host in ["hostNetwork", "hostPID", "hostIPC"] {
            ensure!(pod[host] != true, "{host} is set");
        }
        let containers = pod["containers"]
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("no containers"))?;
        for c in containers {
            let sc = &c["securityContext"];
            let name = &c["name"];
            ensure!(sc["readOnlyRootFilesystem"] == true, "{name}: {sc}");
            ensure!(sc["allowPrivilegeEscalation"] == false, "{name}: {sc}");
            ensure!(sc["privileged"] != true, "{name}: {sc}");
            ensure!(
                sc["capabilities"]["drop"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|x| x == "ALL")),
                "{name} keeps capabilities: {sc}"
            );
            let seccomp = if sc["seccompProfile"].is_null() {
                &psc["seccompProfile"]
            } else {
                &sc["seccompProfile"]
            };
            ensure!(
                seccomp["type"] == "RuntimeDefault",
                "{name}: seccomp {seccomp}"
            );
            ensure!(sc["runAsUser"] != 0, "{name} runs as root");
        }
        for v in pod["volumes"].as_array().into_iter().flatten() {
            ensure!(v.get("hostPath").is_none(), "hostPath volume: {v}");
        }
    }
    Ok(())
}

/// The hardening check itself rejects a root pod (it could otherwise pass vacuously).
#[test]
fn the_hardening_check_rejects_a_root_pod() {
    let root_pod = "apiVersion: apps/v1\nkind: Deployment\nspec:\n  template:\n    spec:\n      securityContext: {runAsUser: 0}\n      containers: [{name: c, securityContext: {}}]\n";
    assert!(
        check_pod_hardening(root_pod, Path::new("x")).is_err(),
        "a root pod passed the hardening check"
    );
}
