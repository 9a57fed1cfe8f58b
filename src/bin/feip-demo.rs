//! The one-command demo: a real kube-apiserver + etcd, moto (EC2) behind the fault proxy, the
//! feip controller binary, and two simulated nodes shaped like the reference scenario
//! (10.0.0.20 in ap-northeast-1a, 10.0.1.20 in ap-northeast-1c), each serving a small page
//! that says which node answered. It shows the address on A, kills A, shows the failover to B
//! with its measured duration, brings A back and shows the address stays on B.
//!
//! `--non-interactive` runs the scenario and exits (CI); otherwise the environment stays up
//! until Ctrl-C. Everything is torn down on exit, also on Ctrl-C.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use feip::crd::FloatingElasticIP;
use feip::testenv::bin_support;
use feip::testenv::{
    AZ_A, AZ_C, ControlPlane, FaultProxy, Moto, NodeOptions, REGION, SimNode, wait_for,
};
use kube::api::Api;

struct Args {
    non_interactive: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        non_interactive: false,
    };
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--non-interactive" => args.non_interactive = true,
            "-h" | "--help" => {
                println!(
                    "feip-demo [--non-interactive]\n\nShows a real failover of an Elastic IP between two simulated nodes."
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    feip::install_crypto_provider();
    let args = parse_args()?;
    tokio::select! {
        r = demo(&args) => r,
        _ = tokio::signal::ctrl_c() => {
            step("interrupted: tearing everything down");
            Ok(())
        }
    }
}

async fn demo(args: &Args) -> anyhow::Result<()> {
    step(
        "locating the pinned tools (the first run builds the Kubernetes binaries: about 7 min, up to 20)",
    );
    let tools = feip::testenv::tools()?;
    step(&format!(
        "starting etcd + kube-apiserver {} (RBAC on) and installing the CRD",
        tools.kubernetes_version
    ));
    let cp = ControlPlane::start().await?;
    step("starting moto (EC2) and the fault proxy in front of it");
    let moto = Moto::start().await?;
    let proxy = FaultProxy::start(moto.url()).await?;
    let client = cp.client().await?;

    step(
        "creating two nodes like the reference setup (kubelet heartbeat + kubelet port + a web page)",
    );
    let mut nodes = Vec::new();
    let mut instances = Vec::new();
    for (name, az, ip) in [("node-a", AZ_A, "10.0.0.20"), ("node-b", AZ_C, "10.0.1.20")] {
        let instance = moto.launch_instance_with_ip(az, Some(ip)).await?;
        let mut opts = NodeOptions::new(name, az, &instance.instance_id);
        opts.http_port = Some(8080);
        opts.heartbeat_interval = Duration::from_secs(2);
        let node = SimNode::start(client.clone(), opts).await?;
        detail(&format!(
            "{name}: {az}, {}, ENI {}, private IP {}, InternalIP {}",
            instance.instance_id, instance.network_interface_id, instance.private_ip, node.ip
        ));
        nodes.push(node);
        instances.push(instance);
    }
    let eip = moto.allocate_address().await?;
    detail(&format!(
        "Elastic IP {} ({})",
        eip.public_ip, eip.allocation_id
    ));

    step(
        "starting the feip controller (the real binary, default detection: TCP probe of the kubelet port 1s x 3)",
    );
    let ns = "feip-system";
    cp.kubectl(&["create", "namespace", ns]).await?;
    let feip_bin = sibling_binary("feip")?;
    let log_path = cp.dir().join("feip-controller.log");
    let log = std::fs::File::create(&log_path)?;
    let health_port = feip::testenv::process::free_port()?;
    let mut controller = tokio::process::Command::new(&feip_bin)
        .arg("controller")
        .env("KUBECONFIG", cp.admin_kubeconfig())
        .env("POD_NAMESPACE", ns)
        .env("POD_NAME", "feip-demo-0")
        .env("FEIP_HEALTH_ADDR", format!("127.0.0.1:{health_port}"))
        .env("AWS_ENDPOINT_URL", proxy.url())
        .env("AWS_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("FEIP_LEASE_DURATION", "6s")
        .env("FEIP_RENEW_DEADLINE", "4s")
        .env("FEIP_RETRY_PERIOD", "500ms")
        .env("FEIP_LEADERSHIP_SAFETY_MARGIN", "3s")
        .env("FEIP_EC2_TIMEOUT", "1s")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()?;
    detail(&format!("controller log: {}", log_path.display()));
    let controller_pid = controller.id();
    wait_for(
        "the controller to be ready",
        Duration::from_secs(60),
        || async {
            if controller_pid
                .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            {
                anyhow::bail!("the controller exited; see {}", log_path.display());
            }
            Ok(http_get(&format!("127.0.0.1:{health_port}"), "/readyz")
                .await
                .ok()
                .filter(|b| b.contains("ok"))
                .map(|_| ()))
        },
    )
    .await
    .map_err(|e| {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        anyhow::anyhow!(
            "{e}\ncontroller log tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    })?;

    step(
        "applying a FloatingElasticIP: node-a preferred, node-b standby, no failback (stickiness INFINITY)",
    );
    let manifest = format!(
        "apiVersion: feip.io/v1alpha1\nkind: FloatingElasticIP\nmetadata:\n  name: web\n  namespace: default\nspec:\n  allocationId: {}\n  candidates:\n  - node: node-a\n  - node: node-b\n  monitor:\n    interval: 10s\n",
        eip.allocation_id
    );
    let manifest_path = cp.dir().join("web.yaml");
    std::fs::write(&manifest_path, &manifest)?;
    print!("{}", indent(&manifest));
    cp.kubectl(&["apply", "-f", &manifest_path.display().to_string()])
        .await?;
    let api: Api<FloatingElasticIP> = Api::namespaced(client.clone(), "default");
    let a_eni = instances[0].network_interface_id.clone();
    let b_eni = instances[1].network_interface_id.clone();
    wait_for("the address on node-a", Duration::from_secs(60), || async {
        Ok(
            (moto.association(&eip.allocation_id).await?.as_deref() == Some(a_eni.as_str()))
                .then_some(()),
        )
    })
    .await?;
    wait_for("status Active", Duration::from_secs(30), || async {
        let f = api.get("web").await?;
        Ok(f.status
            .filter(|s| s.phase == Some(feip::crd::Phase::Active))
            .map(|_| ()))
    })
    .await?;
    show_state(&cp, &moto, &eip.allocation_id, &instances, &nodes).await?;

    step("killing node-a (heartbeat, kubelet port and web page stop)");
    let killed = Instant::now();
    nodes[0].stop();
    wait_for(
        "the address on node-b",
        Duration::from_secs(120),
        || async {
            Ok(
                (moto.association(&eip.allocation_id).await?.as_deref() == Some(b_eni.as_str()))
                    .then_some(()),
            )
        },
    )
    .await?;
    let observed = killed.elapsed();
    let st = wait_for("the failover record", Duration::from_secs(30), || async {
        Ok(api.get("web").await?.status.and_then(|s| s.last_failover))
    })
    .await?;
    detail(&format!(
        "failover {} -> {} ({}): {:.2}s from killing node-a to the address on node-b; {}s from detection to confirmed association",
        st.from.as_deref().unwrap_or("?"),
        st.to,
        st.reason,
        observed.as_secs_f64(),
        st.duration_seconds.as_deref().unwrap_or("?")
    ));
    show_state(&cp, &moto, &eip.allocation_id, &instances, &nodes).await?;

    step("bringing node-a back: the address stays on node-b (no failback)");
    nodes[0].resume().await?;
    let associates = proxy.count("AssociateAddress");
    let describes = proxy.count("DescribeAddresses");
    // Let the controller see node-a healthy for two monitor passes.
    wait_for(
        "two monitor passes with node-a back",
        Duration::from_secs(60),
        || async { Ok((proxy.count("DescribeAddresses") >= describes + 2).then_some(())) },
    )
    .await?;
    let now_on = moto.association(&eip.allocation_id).await?;
    if now_on.as_deref() != Some(b_eni.as_str()) || proxy.count("AssociateAddress") != associates {
        anyhow::bail!("the address moved after node-a returned: {now_on:?}");
    }
    show_state(&cp, &moto, &eip.allocation_id, &instances, &nodes).await?;
    println!();
    println!(
        "Demo complete: failover in {:.2}s, the address stayed on node-b after node-a returned.",
        observed.as_secs_f64()
    );

    if !args.non_interactive {
        println!();
        println!("The environment stays up. In another shell:");
        println!("    export KUBECONFIG={}", cp.admin_kubeconfig().display());
        println!("    {} get floatingelasticips -A", tools.kubectl.display());
        println!(
            "    export AWS_ENDPOINT_URL={} AWS_REGION={REGION} AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing",
            proxy.url()
        );
        println!("Press Ctrl-C to tear everything down.");
        futures::future::pending::<()>().await;
    }
    step("tearing down");
    let _ = controller.kill().await;
    Ok(())
}

async fn show_state(
    cp: &ControlPlane,
    moto: &Moto,
    allocation_id: &str,
    instances: &[feip::testenv::Instance],
    nodes: &[SimNode],
) -> anyhow::Result<()> {
    let table = cp
        .kubectl(&["get", "floatingelasticips", "-n", "default"])
        .await?;
    print!(
        "{}",
        indent(&format!("$ kubectl get floatingelasticips\n{table}"))
    );
    let eni = moto.association(allocation_id).await?;
    let idx = instances
        .iter()
        .position(|i| Some(&i.network_interface_id) == eni.as_ref());
    match idx {
        Some(i) => {
            // The Elastic IP is not routable here; ask the node that holds it, as a client of
            // the address would reach it.
            let page = http_get(&format!("{}:8080", nodes[i].ip), "/")
                .await
                .unwrap_or_else(|e| format!("(no answer: {e})"));
            detail(&format!(
                "EC2 says the address is on {} ({}); a request to it is answered: {}",
                nodes[i].name,
                instances[i].private_ip,
                page.trim()
            ));
        }
        None => detail(&format!("EC2 says the address is on {eni:?}")),
    }
    Ok(())
}

/// A minimal HTTP/1.1 GET returning the body.
async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    Ok(bin_support::http_get(addr, path, Duration::from_secs(2))
        .await?
        .1)
}

fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        anyhow::bail!(
            "{} not found next to the demo; build it with `cargo build --features testenv --bins`",
            path.display()
        );
    }
    Ok(path)
}

fn step(what: &str) {
    println!("\n==> {what}");
}

fn detail(what: &str) {
    println!("    {what}");
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
