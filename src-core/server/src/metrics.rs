//! `vipvisor serve`'s own Prometheus metrics: requests by route, method and status, their
//! latency by route, and the change streams open now.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

/// The server's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    seconds: Family<RouteLabels, Histogram>,
    pub(crate) streams: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("vipvisor_http");
        let requests = Family::<RequestLabels, Counter>::default();
        let seconds = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        let streams = Gauge::default();
        registry.register("requests", "HTTP requests by route (its pattern), method and status", requests.clone());
        registry.register(
            "request_duration_seconds",
            "time to answer, by route (a stream: until its headers)",
            seconds.clone(),
        );
        registry.register("event_streams", "open /api/v1/events/stream connections", streams.clone());
        Metrics { registry: Arc::new(registry), requests, seconds, streams }
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Counts and times every request (routes by their pattern, so the labels stay bounded).
pub(crate) async fn observe(State(m): State<Option<Metrics>>, req: Request, next: Next) -> Response {
    let Some(m) = m else { return next.run(req).await };
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let method = req.method().to_string();
    let started = Instant::now();
    let res = next.run(req).await;
    m.seconds.get_or_create(&RouteLabels { route: route.clone() }).observe(started.elapsed().as_secs_f64());
    m.requests.get_or_create(&RequestLabels { route, method, status: res.status().as_u16().to_string() }).inc();
    res
}

/// Counts an open change stream while it lives.
pub(crate) struct StreamGuard(pub(crate) Option<Gauge>);

impl StreamGuard {
    pub(crate) fn new(m: &Option<Metrics>) -> StreamGuard {
        let g = m.as_ref().map(|m| m.streams.clone());
        if let Some(g) = &g {
            g.inc();
        }
        StreamGuard(g)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}
