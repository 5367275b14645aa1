//! The small HTTP surface of the daemons: `/metrics` (OpenMetrics text), `/healthz` (every
//! main loop turned recently: a wedged loop fails it), for the controller `/readyz`, and
//! for a static speaker `/members` (its VIPs and the group's live members with their MACs:
//! what `vipvisor hypervisor apply --speaker` maps to VMs).

use std::net::{IpAddr, SocketAddr};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;
use tracing::warn;
use vipvisor_gossip::membership::Live;
use vipvisor_health::Health;
use vipvisor_kube::controller::Phase;
use vipvisor_provider::Mac;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A static speaker's VIPs and its group's live members.
#[derive(Debug, Clone)]
pub struct Members {
    pub vips: Vec<IpAddr>,
    pub live: watch::Receiver<Live>,
    /// Virtual-MAC mode: each VIP's MAC (empty: the nodes' own MACs).
    pub virtual_macs: std::collections::BTreeMap<IpAddr, Mac>,
}

/// The body of `/members`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MembersBody {
    pub vips: Vec<IpAddr>,
    pub members: Vec<Member>,
    /// Virtual-MAC mode: each VIP's MAC, which every member must be allowed to use.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub virtual_macs: std::collections::BTreeMap<IpAddr, Mac>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub node: String,
    pub macs: Vec<Mac>,
    pub settled: bool,
}

impl Members {
    pub fn body(&self) -> MembersBody {
        let members = self
            .live
            .borrow()
            .iter()
            .map(|(node, m)| Member {
                node: node.clone(),
                macs: m.macs.iter().map(|b| Mac(*b)).collect(),
                settled: m.settled,
            })
            .collect();
        MembersBody { vips: self.vips.clone(), members, virtual_macs: self.virtual_macs.clone() }
    }
}

/// `/metrics` answering with `encode()`, `/healthz` from `health`, `/readyz` from the
/// controller's phase and `/members` from a static speaker, when given.
pub fn router(
    encode: impl Fn() -> String + Clone + Send + Sync + 'static,
    health: Health,
    phase: Option<watch::Receiver<Phase>>,
    members: Option<Members>,
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
    if let Some(m) = members {
        r = r.route(
            "/members",
            get(move || {
                let body = m.body();
                async move { axum::Json(body) }
            }),
        );
    }
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
        tokio::spawn(async move { axum::serve(listener, router(String::new, health, None, None)).await });
        beat.beat();
        assert_eq!(get(addr, "/healthz").await.0, 200, "a loop that just turned is healthy");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (status, body) = get(addr, "/healthz").await;
        assert_eq!(status, 503, "a loop that stopped turning fails the check");
        assert!(body.contains("ownership"), "the answer names the stalled loop: {body}");
        beat.beat();
        assert_eq!(get(addr, "/healthz").await.0, 200);
    }

    #[tokio::test]
    async fn members_lists_the_vips_and_the_live_members_with_their_macs() {
        use vipvisor_gossip::membership::MemberInfo;
        let live = Live::from([
            ("n1".to_string(), MemberInfo { settled: true, macs: vec![[0x52, 0x54, 0, 0, 0, 1]] }),
            ("n2".to_string(), MemberInfo { settled: false, macs: vec![] }),
        ]);
        let (tx, rx) = watch::channel(live);
        let vmac = Mac([0x42, 0, 0xc0, 0, 2, 0x64]);
        let virtual_macs = [("192.0.2.100".parse().unwrap(), vmac)].into();
        let m = Members { vips: vec!["192.0.2.100".parse().unwrap()], live: rx, virtual_macs };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(String::new, Health::new(), None, Some(m))).await });
        let (status, out) = get(addr, "/members").await;
        assert_eq!(status, 200, "{out}");
        let body: MembersBody = serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body.vips, ["192.0.2.100".parse::<IpAddr>().unwrap()]);
        assert_eq!(body.virtual_macs.values().copied().collect::<Vec<_>>(), vec![vmac], "the group's virtual MACs");
        assert_eq!(
            body.members[0],
            Member { node: "n1".into(), macs: vec![Mac([0x52, 0x54, 0, 0, 0, 1])], settled: true }
        );
        tx.send_modify(|l| {
            l.remove("n2");
        });
        let (_, out) = get(addr, "/members").await;
        assert!(!out.contains("\"n2\""), "a member that left is gone: {out}");
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let paddr = plain.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(plain, router(String::new, Health::new(), None, None)).await });
        assert_eq!(get(paddr, "/members").await.0, 404, "not a static speaker: no /members");
    }
}
