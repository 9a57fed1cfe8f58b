//! The Kubernetes clients of a controller process.
//!
//! One process talks to the apiserver for three different purposes, each with its own client
//! (and so its own connection pool):
//! - `watches`: the long-lived watch streams behind the caches (and their LISTs);
//! - `requests`: every call of the reconcile path (holder Lease, status, finalizer, pin
//!   clear, events);
//! - `election`: the leader election's Lease reads and writes.

use kube::Client;

/// The three clients of a controller process (see the module docs).
#[derive(Clone)]
pub struct KubeClients {
    pub watches: Client,
    pub requests: Client,
    pub election: Client,
}

impl From<Client> for KubeClients {
    /// One client (one connection pool) for every purpose.
    fn from(client: Client) -> Self {
        Self {
            watches: client.clone(),
            requests: client.clone(),
            election: client,
        }
    }
}
