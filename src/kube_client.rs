//! The Kubernetes clients of a controller process, and the bounds on their calls.
//!
//! One process talks to the apiserver for three purposes, each with its own client and so its
//! own connection pool (a connection that went silent in one pool cannot stall the others):
//! - `watches`: the long-lived watch streams behind the caches (and their LISTs). No deadline
//!   (a watch is meant to stay open); a silent peer is found by TCP keepalive (a lost host
//!   stops acknowledging probes: about 35 s with [`KEEPALIVE_IDLE`] and friends) and, as a
//!   last resort, by kube-runtime's watcher idle timeout (the server-side watch timeout of
//!   290 s plus a margin).
//! - `requests`: every call of the reconcile path (holder Lease, status, finalizer, pin
//!   clear, events). Each call has a deadline covering the response *and* its body
//!   (`--kube-timeout`, 5 s by default). kube-client 5 sets no read timeout by default, and a
//!   read timeout on a shared client would also cut quiet watches, hence the separate client.
//! - `election`: the leader election's Lease reads and writes, with a deadline of half the
//!   renew deadline, so that after one call lost on a dead connection a second attempt (on a
//!   new connection) still fits before the renew deadline ends leadership.
//!
//! A call that times out has an unknown outcome: it may have been applied. The reconcile
//! fails with it (error kind `timeout`) and is retried with backoff; the retry reads again
//! (caches, holder Lease) rather than assuming either outcome. Its connection is dropped with
//! it, so the retry goes out on a new one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::Client;
use kube::client::{Body, ConfigExt as _};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// TCP keepalive on every apiserver connection: first probe after this much silence...
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(20);
/// ...then one probe every...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// ...and the connection is dropped after this many unanswered probes.
pub const KEEPALIVE_RETRIES: u32 = 3;

/// The three clients of a controller process (see the module docs). The deadlines are
/// added by [`crate::app::start`] from the configuration ([`bounded`]).
#[derive(Clone)]
pub struct KubeClients {
    pub watches: Client,
    pub requests: Client,
    pub election: Client,
}

impl From<Client> for KubeClients {
    /// One client (one connection pool) for every purpose (tests, embedding); the deadlines
    /// still apply to requests and election.
    fn from(client: Client) -> Self {
        Self {
            watches: client.clone(),
            requests: client.clone(),
            election: client,
        }
    }
}

impl KubeClients {
    /// What `feip controller` uses: three clients built from `config`, each with its own
    /// connection pool and TCP keepalive.
    pub fn from_config(config: &kube::Config) -> anyhow::Result<Self> {
        Ok(Self {
            watches: with_keepalive(config.clone())?,
            requests: with_keepalive(config.clone())?,
            election: with_keepalive(config.clone())?,
        })
    }
}

/// A client like kube's default one (base URI, retry of 429/503/504 when `default_retry`,
/// authentication, extra headers, rustls) whose connections have TCP keepalive on: kube-client
/// 5 builds its connector itself and sets none. With an HTTP/SOCKS proxy configured it falls
/// back to kube's default client (no keepalive).
pub fn with_keepalive(config: kube::Config) -> anyhow::Result<Client> {
    if config.proxy_url.is_some() {
        tracing::warn!("a proxy is configured: Kubernetes connections without TCP keepalive");
        return Ok(Client::try_from(config)?);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_keepalive(Some(KEEPALIVE_IDLE));
    http.set_keepalive_interval(Some(KEEPALIVE_INTERVAL));
    http.set_keepalive_retries(Some(KEEPALIVE_RETRIES));
    http.set_connect_timeout(config.connect_timeout);
    let https = config.rustls_https_connector_with_connector(http)?;
    let hyper: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Builder::new(TokioExecutor::new()).build(https);
    let retry = config
        .default_retry
        .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(hyper);
    Ok(Client::new(service, config.default_namespace))
}

/// A call of a [`bounded`] client got no complete answer within its deadline. Its outcome is
/// unknown: the request may have been applied.
#[derive(Debug, thiserror::Error)]
#[error("no complete answer from the Kubernetes API within {0:?} (outcome unknown)")]
pub struct CallTimedOut(pub Duration);

/// Whether `e` is a [`bounded`] client's deadline.
pub fn is_timeout(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Service(inner) if inner.is::<CallTimedOut>())
}

/// `client` (sharing its connection pool) with a deadline on every call: the response head
/// and the whole body must arrive within `timeout`, else the call fails with
/// [`CallTimedOut`] and its connection is dropped. Watch requests (`watch=true`) pass
/// through unbounded; use a separate client for watches anyway.
pub fn bounded(client: Client, timeout: Duration) -> Client {
    let namespace = client.default_namespace().to_string();
    let valid_until = *client.valid_until();
    Client::new(
        Deadline {
            inner: client,
            timeout,
        },
        namespace,
    )
    .with_valid_until(valid_until)
}

#[derive(Clone)]
struct Deadline {
    inner: Client,
    timeout: Duration,
}

type Answer = Response<UnsyncBoxBody<Bytes, BoxError>>;

impl tower::Service<Request<Body>> for Deadline {
    type Response = Answer;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // `Client::send` waits for the inner client's readiness itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (client, timeout) = (self.inner.clone(), self.timeout);
        Box::pin(async move {
            if is_watch(req.uri()) {
                let res = client.send(req).await?;
                return Ok(res.map(|b| b.map_err(BoxError::from).boxed_unsync()));
            }
            let deadline = tokio::time::Instant::now() + timeout;
            let res = tokio::time::timeout_at(deadline, client.send(req))
                .await
                .map_err(|_| CallTimedOut(timeout))??;
            let (parts, body) = res.into_parts();
            let body = tokio::time::timeout_at(deadline, body.collect())
                .await
                .map_err(|_| CallTimedOut(timeout))??
                .to_bytes();
            let body = http_body_util::Full::new(body)
                .map_err(|never| match never {})
                .boxed_unsync();
            Ok(Response::from_parts(parts, body))
        })
    }
}

fn is_watch(uri: &http::Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_requests_are_recognised() {
        let u = |s: &str| s.parse::<http::Uri>().expect("uri");
        assert!(is_watch(&u("/api/v1/nodes?watch=true&resourceVersion=1")));
        assert!(is_watch(&u("/api/v1/nodes?labelSelector=a&watch=1")));
        assert!(!is_watch(&u("/api/v1/nodes?labelSelector=watch%3Dtrue")));
        assert!(!is_watch(&u("/api/v1/nodes")));
    }

    /// A server that accepts connections and never answers: a bounded call fails with
    /// `CallTimedOut` at its deadline, a kube error the reconcile can classify.
    #[tokio::test]
    async fn a_call_without_an_answer_times_out_at_the_deadline() -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let config = kube::Config::new(format!("http://{addr}").parse()?);
        let client = bounded(with_keepalive(config)?, Duration::from_millis(300));
        let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(client, "default");
        let started = std::time::Instant::now();
        let err = api.get("x").await.expect_err("nobody answers");
        let took = started.elapsed();
        silent.abort();
        assert!(is_timeout(&err), "{err:?}");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
        Ok(())
    }
}
