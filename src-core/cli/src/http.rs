//! The small HTTP surface of long-running modes: `/metrics` (OpenMetrics text) and
//! `/healthz`, plus whatever routes a mode adds (the controller's `/readyz`).

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use tracing::warn;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `/metrics` answering with `encode()`, and `/healthz`.
pub fn metrics_router(encode: impl Fn() -> String + Clone + Send + Sync + 'static) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = encode();
                async move { ([(axum::http::header::CONTENT_TYPE, OPENMETRICS)], text) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Binds `addr` (errors are the caller's to report) and serves `router` in the background.
pub async fn spawn(addr: SocketAddr, router: Router) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            warn!(error = %e, "HTTP server stopped");
        }
    });
    Ok(())
}
