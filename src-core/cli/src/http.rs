//! The small HTTP surface of the daemons: `/metrics` (OpenMetrics text), `/healthz` (every
//! main loop turned recently: a wedged loop fails it) and, for the controller, `/readyz`.

use std::net::SocketAddr;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;
use tracing::warn;
use vipvisor_health::Health;
use vipvisor_kube::controller::Phase;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `/metrics` answering with `encode()`, `/healthz` from `health`, and `/readyz` from the
/// controller's phase when given.
pub fn router(
    encode: impl Fn() -> String + Clone + Send + Sync + 'static,
    health: Health,
    phase: Option<watch::Receiver<Phase>>,
) -> Router {
    let mut r = Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = encode();
                async move { ([(axum::http::header::CONTENT_TYPE, OPENMETRICS)], text) }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let res = health.check();
                async move {
                    match res {
                        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
                    }
                }
            }),
        );
    if let Some(phase) = phase {
        r = r.route(
            "/readyz",
            get(move || {
                let p = *phase.borrow();
                async move {
                    match p {
                        Phase::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
                        Phase::Standby | Phase::Passing => (StatusCode::OK, "standby\n"),
                        Phase::Leading => (StatusCode::OK, "leading\n"),
                    }
                }
            }),
        );
    }
    r
}

/// Binds `addr` and serves `router` in the background.
pub async fn serve(addr: SocketAddr, router: Router) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            warn!(error = %e, "HTTP server stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, out)
    }

    /// Before, /healthz answered ok whatever the loops did.
    #[tokio::test]
    async fn healthz_fails_when_a_loop_is_wedged() {
        let health = Health::new();
        let beat = health.register("ownership", Duration::from_millis(300));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(String::new, health, None)).await });
        beat.beat();
        assert_eq!(get(addr, "/healthz").await.0, 200, "a loop that just turned is healthy");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (status, body) = get(addr, "/healthz").await;
        assert_eq!(status, 503, "a loop that stopped turning fails the check");
        assert!(body.contains("ownership"), "the answer names the stalled loop: {body}");
        beat.beat();
        assert_eq!(get(addr, "/healthz").await.0, 200);
    }
}
