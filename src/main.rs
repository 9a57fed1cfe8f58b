//! The `feip` binary: the controller, `feip crd`, and the operator verbs (whose command line
//! and dispatch live in `feip::cli`).

#![forbid(unsafe_code)]

use anyhow::Context as _;
use feip::cli::{Command, ControllerArgs, CrdName, parse_cli, run_verb};

fn main() -> anyhow::Result<()> {
    feip::install_crypto_provider();
    match parse_cli().command {
        Command::Crd { which } => match which {
            Some(CrdName::Floatingelasticips) => print!("{}", feip::crd::crd_yaml()?),
            Some(CrdName::Floatingelasticipgrants) => print!("{}", feip::grant::crd_yaml()?),
            None => print!(
                "{}---\n{}",
                feip::crd::crd_yaml()?,
                feip::grant::crd_yaml()?
            ),
        },
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
    let config = args.config();
    // Reject bad timings before connecting anywhere.
    config.validate()?;
    let kube_config = match &args.kubeconfig {
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
    // Watches, reconcile calls and the election get clients (connection pools) of their own,
    // with TCP keepalive; app::start adds the call deadlines (see feip::kube_client).
    let clients = feip::kube_client::KubeClients::from_config(&kube_config)?;
    let sdk = feip::aws::Ec2::from_env(args.aws_region.clone(), args.ec2_timeout).await;
    let mut running = feip::app::start(clients, sdk, config).await?;
    let ended = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
        r = running.ended() => r,
    };
    running.shutdown().await;
    ended
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
