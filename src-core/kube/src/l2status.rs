//! Who announces which VIP, reported without writing Services: each speaker owns one
//! `ServiceL2Status` object (`vipvisor.io/v1alpha1`, deploy/crd.yaml; MetalLB's
//! `ServiceL2Status` is the model), named after its node, in the speakers' namespace,
//! listing the VIPs it announces. The controller reads them all and reflects the result
//! where operators look: a `vipvisor.io/Announced` condition in each Service's status
//! (which it may write anyway), so the speakers need no write access to Services at all.
//!
//! Owns: the object's shape, reading it, and the pure choice of the announcer of each VIP
//! (the newest claim wins: a dead node's stale object loses to the node that took over).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use kube::api::DynamicObject;
use kube::core::{ApiResource, GroupVersionKind};
use serde::{Deserialize, Serialize};

/// The condition type the controller keeps on Services.
pub const CONDITION: &str = "vipvisor.io/Announced";

/// `servicel2statuses.vipvisor.io`, v1alpha1, namespaced.
pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("vipvisor.io", "v1alpha1", "ServiceL2Status"),
        "servicel2statuses",
    )
}

/// One VIP a node announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `namespace/name` of the Service.
    pub service: String,
    pub vip: IpAddr,
    pub interface: String,
    /// When this node began announcing it (RFC 3339, the node's clock).
    pub since: String,
    /// The VIP's virtual MAC, in virtual-MAC mode (else it is answered with the node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// A node's report: `status` of its ServiceL2Status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub node: String,
    /// The MACs of the interfaces this speaker answers on: how the hypervisor side finds
    /// the node's VM NICs (issue #11).
    #[serde(default)]
    pub macs: Vec<String>,
    #[serde(default)]
    pub announcing: Vec<Entry>,
}

impl Report {
    /// The object a speaker applies (server-side apply, so only its own fields are set).
    pub fn object(&self) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "vipvisor.io/v1alpha1",
            "kind": "ServiceL2Status",
            "metadata": {"name": self.node},
            "status": self,
        })
    }

    /// Reads the report of an object; `None` when its status is not one (a bad object is
    /// ignored, never trusted half-way).
    pub fn of(o: &DynamicObject) -> Option<Report> {
        serde_json::from_value(o.data.get("status")?.clone()).ok()
    }
}

/// Who announces a VIP: node, interface, and the virtual MAC it uses (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcer {
    pub node: String,
    pub interface: String,
    pub mac: Option<String>,
}

/// The announcer of every VIP: among all reports, the entry with the newest `since`
/// (RFC 3339 strings of one format compare as times), ties by node.
pub fn announcers<'a>(reports: impl IntoIterator<Item = &'a Report>) -> BTreeMap<IpAddr, Announcer> {
    let mut best: BTreeMap<IpAddr, (&str, &str, &Entry)> = BTreeMap::new();
    for r in reports {
        for e in &r.announcing {
            let cand = (e.since.as_str(), r.node.as_str(), e);
            match best.get(&e.vip) {
                Some(cur) if (cur.0, cur.1) >= (cand.0, cand.1) => {}
                _ => {
                    best.insert(e.vip, cand);
                }
            }
        }
    }
    best.into_iter()
        .map(|(v, (_, n, e))| (v, Announcer { node: n.to_owned(), interface: e.interface.clone(), mac: e.mac.clone() }))
        .collect()
}

/// The elected owner of every VIP as the store records it (issue #12): the announcer of
/// each VIP with its node's MACs.
pub fn owner_claims(reports: &BTreeMap<String, Report>) -> BTreeMap<IpAddr, vipvisor_api::OwnerClaim> {
    announcers(reports.values())
        .into_iter()
        .map(|(vip, Announcer { node, interface, mac })| {
            // The MAC that answers: the VIP's virtual MAC, or the node's.
            let mac = mac.unwrap_or_else(|| {
                reports.values().find(|r| r.node == node).map(|r| r.macs.join(",")).unwrap_or_default()
            });
            (vip, vipvisor_api::OwnerClaim { address: vip, node, interface, mac, source: "kubernetes" })
        })
        .collect()
}

/// The controller's side of the owners read model: while `leading()`, every change of
/// the speakers' reports (and every 10 s, so a new leader catches up) becomes the store's
/// current owners, so failovers are kept after Kubernetes Events expire.
pub async fn record_owners(
    app: vipvisor_api::App,
    leading: impl Fn() -> bool + Send + 'static,
    mut reports: tokio::sync::watch::Receiver<Option<BTreeMap<String, Report>>>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tokio::select! {
            r = reports.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
        if !leading() {
            continue;
        }
        let Some(claims) = reports.borrow_and_update().as_ref().map(owner_claims) else { continue };
        if let Err(e) = app.set_owners("kubernetes", &claims, vipvisor_api::OwnerScope::All).await {
            tracing::warn!(error = %e.message, "could not record the VIP owners in the store");
        }
    }
}

/// The condition a Service should carry: `(status, reason, message)`.
pub fn condition(vips: &[IpAddr], announcers: &BTreeMap<IpAddr, Announcer>) -> (bool, &'static str, String) {
    let mut parts = Vec::new();
    let mut missing = Vec::new();
    for v in vips {
        match announcers.get(v) {
            Some(Announcer { node, interface, mac: None }) => {
                parts.push(format!("{v} from node {node} on {interface}"))
            }
            Some(Announcer { node, interface, mac: Some(m) }) => {
                parts.push(format!("{v} from node {node} on {interface} with virtual MAC {m}"))
            }
            None => missing.push(v.to_string()),
        }
    }
    if missing.is_empty() {
        (true, "Announcing", format!("announced: {}", parts.join("; ")))
    } else {
        let mut m = format!("no speaker announces {}", missing.join(", "));
        if !parts.is_empty() {
            m.push_str(&format!("; announced: {}", parts.join("; ")));
        }
        (false, "NotAnnounced", m)
    }
}

/// The Service's current `vipvisor.io/Announced` condition, as `(status, reason, message)`.
pub fn current(svc: &Service) -> Option<(bool, String, String)> {
    let c = svc.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == CONDITION)?;
    Some((c.status == "True", c.reason.clone(), c.message.clone()))
}

/// The controller's side: watches every `ServiceL2Status` in `namespace` and, while
/// `leading()`, keeps each of our Services' `vipvisor.io/Announced` condition in step
/// (strategic merge on `services/status`, keyed by condition type, so other conditions
/// stay). Without the CRD installed it says so once and does nothing.
pub async fn reflect_into_services(
    client: kube::Client,
    services: kube::runtime::reflector::Store<Service>,
    namespace: String,
    policy: crate::decide::ClassPolicy,
    leading: impl Fn() -> bool + Send + 'static,
    reports_tx: tokio::sync::watch::Sender<Option<BTreeMap<String, Report>>>,
) {
    use futures::StreamExt;
    use kube::api::{Api, Patch, PatchParams};
    use kube::runtime::{watcher, WatchStreamExt};
    use tracing::{info, warn};

    // The CRD may be installed after the controller: look again every 30 s.
    let mut said = false;
    while client.list_api_group_resources("vipvisor.io/v1alpha1").await.is_err() {
        if !said {
            info!("the ServiceL2Status CRD (deploy/crd.yaml) is not installed: Services get no vipvisor.io/Announced condition until it is");
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    }
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &resource());
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut reports: BTreeMap<String, Report> = BTreeMap::new();
    let mut fresh: BTreeMap<String, Report> = BTreeMap::new();
    let mut synced = false;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tokio::select! {
            ev = stream.next() => {
                let Some(ev) = ev else { return };
                let name = |o: &DynamicObject| o.metadata.name.clone().unwrap_or_default();
                match ev {
                    Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => {
                        let target = if synced { &mut reports } else { &mut fresh };
                        match Report::of(&o) {
                            Some(r) => { target.insert(name(&o), r); }
                            None => { target.remove(&name(&o)); }
                        }
                    }
                    Ok(watcher::Event::Delete(o)) => { reports.remove(&name(&o)); }
                    Ok(watcher::Event::Init) => { fresh.clear(); synced = false; }
                    Ok(watcher::Event::InitDone) => { reports = std::mem::take(&mut fresh); synced = true; }
                    Err(e) => { warn!(error = %crate::Safe(&e), "ServiceL2Status watch error"); continue; }
                }
                if !synced { continue }
                reports_tx.send_if_modified(|cur| {
                    let changed = cur.as_ref() != Some(&reports);
                    if changed {
                        *cur = Some(reports.clone());
                    }
                    changed
                });
                // Let a burst of reports (a failover touches two) settle.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            _ = tick.tick() => {}
        }
        if !synced || !leading() {
            continue;
        }
        let who = announcers(reports.values());
        for svc in services.state() {
            let vips = crate::decide::status_addresses(&svc);
            if vips.is_empty() || !crate::decide::is_ours(&svc, &policy) {
                continue;
            }
            let (ok, reason, message) = condition(&vips, &who);
            if current(&svc).is_some_and(|(s, r, m)| s == ok && r == reason && m == message) {
                continue;
            }
            let (Some(ns), Some(name)) = (svc.metadata.namespace.as_deref(), svc.metadata.name.as_deref()) else {
                continue;
            };
            let patch = serde_json::json!({"status": {"conditions": [{
                "type": CONDITION,
                "status": if ok { "True" } else { "False" },
                "reason": reason,
                "message": message,
                "lastTransitionTime": vipvisor_model::Timestamp::now().rfc3339_seconds(),
            }]}});
            let api: Api<Service> = Api::namespaced(client.clone(), ns);
            if let Err(e) = api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
                warn!(service = %format!("{ns}/{name}"), error = %crate::Safe(&e), "could not write the Announced condition");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(vip: &str, iface: &str, since: &str) -> Entry {
        Entry {
            service: "default/web".into(),
            vip: vip.parse().unwrap(),
            interface: iface.into(),
            since: since.into(),
            mac: None,
        }
    }

    #[test]
    fn the_newest_claim_wins_and_the_condition_says_who() {
        let dead = Report {
            node: "n1".into(),
            macs: vec![],
            announcing: vec![e("192.0.2.100", "eth0", "2026-12-02T10:00:00.000Z")],
        };
        let taker = Report {
            node: "n2".into(),
            macs: vec!["52:54:00:00:00:22".into()],
            announcing: vec![e("192.0.2.100", "eth1", "2026-12-02T10:00:03.500Z")],
        };
        let a = announcers([&dead, &taker]);
        let n2 = Announcer { node: "n2".into(), interface: "eth1".into(), mac: None };
        assert_eq!(a[&"192.0.2.100".parse().unwrap()], n2);
        let vips: Vec<IpAddr> = vec!["192.0.2.100".parse().unwrap(), "2001:db8::100".parse().unwrap()];
        let (ok, reason, msg) = condition(&vips, &a);
        assert!(!ok && reason == "NotAnnounced", "{msg}");
        assert!(
            msg.contains("no speaker announces 2001:db8::100") && msg.contains("192.0.2.100 from node n2 on eth1"),
            "{msg}"
        );
        let (ok, _, msg) = condition(&vips[..1], &a);
        assert!(ok, "{msg}");
        let obj = taker.object();
        assert_eq!(obj["metadata"]["name"], "n2");
        let back: DynamicObject = serde_json::from_value(obj).unwrap();
        assert_eq!(Report::of(&back), Some(taker.clone()));
        // In virtual-MAC mode the condition and the recorded owner name the VIP's MAC.
        let mut vm = taker;
        vm.announcing[0].mac = Some("42:00:c0:00:02:64".into());
        let reports = BTreeMap::from([("n2".to_string(), vm)]);
        let (_, _, msg) = condition(&vips[..1], &announcers(reports.values()));
        assert!(msg.contains("192.0.2.100 from node n2 on eth1 with virtual MAC 42:00:c0:00:02:64"), "{msg}");
        assert_eq!(owner_claims(&reports)[&vips[0]].mac, "42:00:c0:00:02:64");
    }
}
