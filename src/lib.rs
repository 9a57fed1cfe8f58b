//! feip keeps an AWS Elastic IP on exactly one healthy Kubernetes node and moves it when that
//! node fails, with Pacemaker's failover semantics (see `docs/` and the README).

// The product has no unsafe code; only the test harness (feature `testenv`) needs some.
#![cfg_attr(not(feature = "testenv"), forbid(unsafe_code))]

pub mod app;
pub mod aws;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod decide;
pub mod grant;
pub mod health;
pub mod http;
pub mod kube_client;
pub mod kube_ext;
pub mod leader;
pub mod liveness;
pub mod metrics;
pub mod telemetry;

#[cfg(feature = "testenv")]
pub mod testenv;

/// Installs the process-wide rustls crypto provider. kube and the AWS SDK would otherwise each
/// pick a default and building a TLS client could panic; both use aws-lc-rs here.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
