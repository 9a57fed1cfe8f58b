use clap::{Parser, Subcommand};

/// feip: keeps an AWS Elastic IP on one healthy Kubernetes node.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the FloatingElasticIP CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    feip::install_crypto_provider();
    match Cli::parse().command {
        Command::Crd => print!("{}", feip::crd::crd_yaml()?),
    }
    Ok(())
}
