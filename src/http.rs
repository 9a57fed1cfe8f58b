//! The HTTP endpoints: `/healthz`, `/readyz` and `/metrics`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::liveness::Liveness;
use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE};

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
    liveness: Arc<Liveness>,
}

/// The HTTP routes: `/healthz` (503 with the reason when [`Liveness::check`] fails, so the
/// kubelet restarts a stuck replica), `/readyz` (503 until `ready` is true), `/metrics`.
pub fn router(
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
    liveness: Arc<Liveness>,
) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(HttpState {
            metrics,
            ready,
            liveness,
        })
}

async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    match state.liveness.check() {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(why) => {
            tracing::warn!(reason = %why, "/healthz failing");
            (StatusCode::SERVICE_UNAVAILABLE, why)
        }
    }
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if *state.ready.borrow() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics_handler(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        state.metrics.encode(),
    )
}

/// Binds the HTTP listener (port 0 picks a free port; see `local_addr`).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP endpoint on {addr}"))
}

/// Binds `addr` and serves the health and metrics endpoints until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
    liveness: Arc<Liveness>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_on(bind(addr).await?, metrics, ready, liveness, shutdown).await
}

/// Serves the health and metrics endpoints on an already bound listener until `shutdown`
/// resolves.
pub async fn serve_on(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
    liveness: Arc<Liveness>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, router(metrics, ready, liveness))
        .with_graceful_shutdown(shutdown)
        .await
        .with_context(|| format!("HTTP endpoint on {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A plain HTTP/1.1 GET over a fresh connection; returns (status, content-type, body).
    async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String, String)> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await?;
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head.split_whitespace().nth(1).unwrap_or_default().parse()?;
        let content_type = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default();
        Ok((status, content_type, body.to_string()))
    }

    #[tokio::test]
    async fn endpoints_over_real_tcp() -> anyhow::Result<()> {
        let listener = bind("127.0.0.1:0".parse()?).await?;
        let addr = listener.local_addr()?;
        let metrics = Arc::new(Metrics::new());
        metrics.set_leader(true);
        let (ready_tx, ready_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let liveness = Liveness::new(crate::leader::Leadership::new(), Duration::from_secs(60));
        let server = tokio::spawn(serve_on(
            listener,
            metrics,
            ready_rx,
            liveness.clone(),
            async {
                let _ = stop_rx.await;
            },
        ));

        let (status, _, body) = get(addr, "/healthz").await?;
        assert_eq!((status, body.as_str()), (200, "ok"));
        liveness.task_ended("monitor", "panicked");
        let (status, _, body) = get(addr, "/healthz").await?;
        assert_eq!(
            (status, body.as_str()),
            (503, "background task monitor panicked")
        );
        assert_eq!(
            get(addr, "/readyz").await?.0,
            503,
            "unready until caches synced"
        );
        ready_tx.send_replace(true);
        assert_eq!(get(addr, "/readyz").await?.0, 200);
        ready_tx.send_replace(false);
        assert_eq!(get(addr, "/readyz").await?.0, 503);

        let (status, content_type, body) = get(addr, "/metrics").await?;
        assert_eq!(status, 200);
        assert_eq!(content_type, OPENMETRICS_CONTENT_TYPE);
        assert!(body.contains("feip_leader 1"), "{body}");
        assert_eq!(get(addr, "/nope").await?.0, 404);

        let _ = stop_tx.send(());
        server.await??;
        Ok(())
    }
}
