//! The local environment: a real kube-apiserver + etcd, moto behind the fault proxy and two
//! simulated nodes shaped like the reference scenario (one per availability zone). Prints how
//! to reach everything and keeps it running until Ctrl-C, then tears it all down.

use std::time::Duration;

use feip::testenv::{AZ_A, AZ_C, ControlPlane, FaultProxy, Moto, NodeOptions, SimNode};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    feip::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    step("locating the pinned tools (the first run builds the Kubernetes binaries: 10-20 min)");
    let tools = feip::testenv::tools()?;
    step(&format!(
        "starting etcd + kube-apiserver {} (RBAC on)",
        tools.kubernetes_version
    ));
    let cp = ControlPlane::start().await?;
    step("starting moto (EC2) and the fault proxy in front of it");
    let moto = Moto::start().await?;
    let proxy = FaultProxy::start(moto.url()).await?;

    step("creating two simulated nodes, one per availability zone");
    let client = cp.client().await?;
    let mut nodes = Vec::new();
    for (name, az) in [("node-a", AZ_A), ("node-b", AZ_C)] {
        let instance = moto.launch_instance(az).await?;
        let mut opts = NodeOptions::new(name, az, &instance.instance_id);
        opts.http_port = Some(8080);
        opts.heartbeat_interval = Duration::from_secs(2);
        let node = SimNode::start(client.clone(), opts).await?;
        println!(
            "    {name}: {az}, instance {}, ENI {}, private IP {}, InternalIP {} (http://{}:8080/)",
            instance.instance_id,
            instance.network_interface_id,
            instance.private_ip,
            node.ip,
            node.ip
        );
        nodes.push(node);
    }
    let eip = moto.allocate_address().await?;
    println!("    Elastic IP {} ({})", eip.public_ip, eip.allocation_id);

    println!();
    println!("The environment is up:");
    println!("    export KUBECONFIG={}", cp.admin_kubeconfig().display());
    println!(
        "    export AWS_ENDPOINT_URL={}   # EC2 (moto) through the fault proxy",
        proxy.url()
    );
    println!(
        "    export AWS_REGION={} AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing",
        feip::testenv::REGION
    );
    println!(
        "    {} get nodes,floatingelasticips -A",
        tools.kubectl.display()
    );
    println!();
    println!("Press Ctrl-C to tear everything down.");
    tokio::signal::ctrl_c().await?;
    step("tearing down");
    drop(nodes);
    drop(proxy);
    drop(moto);
    drop(cp);
    Ok(())
}

fn step(what: &str) {
    println!("==> {what}");
}
