//! The `feip` binary: the controller, `feip crd`, and the operator verbs (whose command line
//! and dispatch live in `feip::cli`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use feip::cli::{Command, ControllerArgs, parse_cli, run_verb};

fn main() -> anyhow::Result<()> {
    feip::install_crypto_provider();
    match parse_cli().command {
        Command::Crd => print!("{}", feip::crd::crd_yaml()?),
        Command::Controller(args) => {
            feip::telemetry::init_logging(args.log_format);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run_controller(*args))?;
        }
        verb => {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(run_verb(verb)));
            match result {
                Ok(report) => {
                    for w in &report.warnings {
                        eprintln!("warning: {w}");
                    }
                    print!("{}", report.stdout);
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    std::process::exit(1);
                }
            }
        }
    }
    Ok(())
}

async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    // One EC2 call (two SDK attempts) must fit inside the leadership safety margin, so a
    // mutation started while leadership was valid also ends while it is.
    if args.safety_margin <= args.ec2_timeout * 2 {
        anyhow::bail!(
            "--safety-margin ({:?}) must exceed twice --ec2-timeout ({:?})",
            args.safety_margin,
            args.ec2_timeout
        );
    }
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => {
            kube::Config::incluster().context("no --kubeconfig and not running in a cluster")?
        }
    };
    let client = kube::Client::try_from(config)?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let metrics = Arc::new(feip::metrics::Metrics::new());
    let observer_metrics = metrics.clone();
    let observer: feip::aws::Observer =
        Arc::new(move |op, outcome, elapsed| observer_metrics.ec2_request(op, outcome, elapsed));
    let sdk = feip::aws::Ec2::from_env(args.aws_region.clone(), args.ec2_timeout).await;
    let ec2 = feip::aws::Ec2::new(
        sdk,
        Arc::new(feip::aws::Budget::default()),
        args.ec2_timeout,
        Some(observer),
    );

    let leadership = feip::leader::Leadership::new();
    let mut leader_cfg = feip::leader::LeaderConfig::new(
        &args.leader_election_namespace,
        &args.leader_election_name,
        &identity,
    );
    leader_cfg.lease_duration = args.lease_duration;
    leader_cfg.renew_deadline = args.renew_deadline;
    leader_cfg.retry_period = args.retry_period;
    leader_cfg.safety_margin = args.safety_margin;

    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let shutdown = shutdown_signal();
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let stopped = |tx: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = tx.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };
    tracing::info!(%identity, namespaces = ?args.namespaces, "starting feip controller");
    let server = tokio::spawn(feip::http::serve(
        args.health_addr,
        metrics.clone(),
        ready_rx,
        stopped(&stop_tx),
    ));
    let mut elector = tokio::spawn(feip::leader::run(
        client.clone(),
        leader_cfg,
        leadership.clone(),
        stopped(&stop_tx),
    ));
    let settings = feip::controller::Settings {
        namespaces: args.namespaces.clone(),
        instance: identity.clone(),
    };
    let controller = feip::controller::run(
        client,
        ec2,
        leadership,
        metrics,
        settings,
        ready_tx,
        stopped(&stop_tx),
    );
    tokio::pin!(controller);
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        r = &mut controller => { r?; }
        // Without its elector a replica could never lead again: exit and let it restart.
        r = &mut elector => {
            let _ = stop_tx.send(());
            anyhow::bail!("leader election stopped: {r:?}");
        }
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), &mut controller).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), elector).await;
    server.abort();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
