//! The worker's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (alive),
//! `/readyz` (connected, consuming, not shutting down).

use std::net::SocketAddr;

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tracing::info;

use super::{Health, Metrics};

/// Scrapers and probes send small requests on few connections: a client gets 5 s to send
/// a request's head, and 64 connections are open at most (others wait to be accepted).
const ENDPOINT_BOUNDS: super::serve::Bounds =
    super::serve::Bounds { header_timeout: std::time::Duration::from_secs(5), max_connections: 64 };

/// What the endpoints read.
#[derive(Clone, Debug)]
pub struct Observed {
    /// Served on `/metrics`.
    pub metrics: Metrics,
    /// Served on `/readyz`.
    pub health: Health,
}

/// The routes, for embedding in another router (the gateway adds its own).
pub fn routes(observed: Observed) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(observed)
}

/// Bind `addr`; returns the bound address (port 0 picks a free one) and the future that
/// serves `router` there, for the caller to run as a task it owns. It serves until it is
/// dropped, which closes the listener: its owner stops it with no wait for a slow client
/// (a connection left open finishes its request in progress, then closes).
pub(crate) async fn bind(
    addr: SocketAddr,
    router: Router,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    info!(%bound, "HTTP endpoints: /metrics /healthz /readyz.");
    Ok((bound, super::serve::serve(listener, router, ENDPOINT_BOUNDS, std::future::pending())))
}

async fn metrics(State(observed): State<Observed>) -> impl IntoResponse {
    observed.metrics.set_ready(observed.health.ready());
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], observed.metrics.render())
}

async fn ready(State(observed): State<Observed>) -> impl IntoResponse {
    if observed.health.ready() { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
}
