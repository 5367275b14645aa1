//! The controller's hypervisor side (`controller --providers FILE`): one reason-blind
//! loop that makes the hypervisors match the store. Whatever changed (a Service got or
//! lost an address, a speaker came or went, a Node was excluded, a grant failed), it
//! computes the desired grants and hands them to [`Hypervisors::reconcile`].
//!
//! - **Candidates** of every VIP are the Nodes that run a speaker (they have a
//!   ServiceL2Status report) and are not excluded from load balancers. Every candidate
//!   gets the grant as soon as the VIP is allocated, whichever node owns it now, so a
//!   failover never waits on a hypervisor API. Readiness and `externalTrafficPolicy:
//!   Local` endpoints are left out on purpose: they change at failover time, and the
//!   grant must already be there.
//! - **Mapping**: the MACs each speaker published in its report are matched against the
//!   inventory; the provider file's explicit mapping overrides.
//! - Failures are retried with backoff (0.5 s doubling to 60 s); every five minutes a
//!   full pass checks that the hypervisor still has what the store says (an `ensure` that
//!   finds everything in place writes nothing).
//! - Events on the Service: `HypervisorGranted` (which nodes, VMs and NICs),
//!   `HypervisorGrantFailed` (the reason, once per distinct reason) and
//!   `HypervisorRevoked` (a node that stopped being a candidate).
//!
//! Only the leader runs it. The grants are recorded in the leader's store and handed to
//! the next leader in the Lease (`vipvisor.io/grants`, like the quarantine), so a new
//! leader revokes exactly what an earlier one added.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store as Reflector};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};
use vipvisor_hypervisor::{Desired, Hypervisors, NicResult, Reconciled};
use vipvisor_model::ServiceKey;
use vipvisor_provider::Mac;

use crate::controller::{backoff, Ctx};
use crate::l2status::Report;
use crate::speaker::EXCLUDE_LABEL;

/// How often a full pass checks the hypervisors against the store.
pub const RESYNC: Duration = Duration::from_secs(300);
/// How often the desired state is recomputed without a wake-up (Node changes).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The speakers' reports by object name.
pub type Reports = BTreeMap<String, Report>;

/// What the store and the cluster say the hypervisors must grant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    pub desired: Desired,
    pub macs: BTreeMap<String, Vec<Mac>>,
    /// Which Service each VIP belongs to (for Events).
    pub services: BTreeMap<IpAddr, ServiceKey>,
    /// The virtual MACs of the VIPs in virtual-MAC mode (their Services'
    /// `vipvisor.io/virtual-macs`): the candidates must also be allowed those MACs.
    pub vmacs: vipvisor_hypervisor::VirtualMacs,
}

/// The candidate nodes: a speaker report, and a Node that is not excluded.
pub fn candidates(reports: &Reports, nodes: &[Arc<Node>]) -> BTreeMap<String, Vec<Mac>> {
    let eligible: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| !n.metadata.labels.as_ref().is_some_and(|l| l.contains_key(EXCLUDE_LABEL)))
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    reports
        .values()
        .filter(|r| eligible.contains(r.node.as_str()))
        .map(|r| (r.node.clone(), r.macs.iter().filter_map(|m| m.parse().ok()).collect()))
        .collect()
}

/// Every VIP on every candidate.
pub fn wanted(
    allocations: &[(ServiceKey, Vec<IpAddr>)],
    candidates: BTreeMap<String, Vec<Mac>>,
    vmacs: vipvisor_hypervisor::VirtualMacs,
) -> Wanted {
    let services: BTreeMap<IpAddr, ServiceKey> =
        allocations.iter().flat_map(|(k, a)| a.iter().map(move |ip| (*ip, k.clone()))).collect();
    let vips: BTreeSet<IpAddr> = services.keys().copied().collect();
    let desired = candidates.keys().map(|n| (n.clone(), vips.clone())).collect();
    // Never a node's own MAC: granting it to the other candidates would let them send as it.
    let node_macs: BTreeSet<&Mac> = candidates.values().flatten().collect();
    let vmacs = vmacs.into_iter().filter(|(v, m)| vips.contains(v) && !node_macs.contains(m)).collect();
    Wanted { desired, macs: candidates, services, vmacs }
}

/// Runs while the controller runs; acts only while `ctx` leads.
pub async fn run(
    ctx: Arc<Ctx>,
    hv: Arc<Hypervisors>,
    services: Reflector<Service>,
    nodes: Reflector<Node>,
    mut reports: watch::Receiver<Option<Reports>>,
) {
    // Nothing is decided before the Nodes and the speakers' reports are known: an empty
    // cache would look like "no candidates" and revoke every grant.
    if nodes.wait_until_ready().await.is_err() {
        return;
    }
    let mut said = false;
    let mut done: Option<Wanted> = None;
    let mut attempts = 0u32;
    let mut retry_at: Option<Instant> = None;
    let mut resync_at = Instant::now();
    let mut was_leading = false;
    let mut open = true;
    loop {
        tokio::select! {
            () = ctx.kick.notified() => {}
            // The report watch ends only with the controller; until then, keep looking.
            r = reports.changed(), if open => if r.is_err() { open = false },
            () = tokio::time::sleep(LOOK_EVERY) => {}
        }
        if !ctx.leading() {
            was_leading = false;
            continue;
        }
        if !was_leading {
            // A new term: check everything once.
            was_leading = true;
            done = None;
            resync_at = Instant::now();
        }
        let allocations = match ctx
            .app
            .store()
            .read(|ipam| {
                ipam.allocations().into_iter().map(|a| (a.service.clone(), a.addresses.clone())).collect::<Vec<_>>()
            })
            .await
        {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "hypervisor grants: cannot read the allocations");
                continue;
            }
        };
        let Some(known) = reports.borrow_and_update().clone() else {
            if !said {
                info!("hypervisor grants wait for the speakers' reports (the ServiceL2Status CRD, deploy/crd.yaml)");
                said = true;
            }
            continue;
        };
        let (vmacs, _) = crate::speaker::virtual_macs(services.state().iter().map(|s| s.as_ref()), &ctx.policy);
        let vmacs = vmacs.into_iter().map(|(v, m)| (v, Mac(m.0))).collect();
        let want = wanted(&allocations, candidates(&known, &nodes.state()), vmacs);
        let now = Instant::now();
        let full = now >= resync_at;
        let due = retry_at.is_some_and(|t| now >= t);
        if !full && !due && done.as_ref() == Some(&want) {
            continue;
        }
        let leading = || ctx.leading();
        let r = hv.reconcile(ctx.app.store(), &want.desired, &want.macs, &want.vmacs, full, &leading).await;
        if !ctx.leading() {
            // The lease went during the pass: the next leader checks everything itself.
            continue;
        }
        if full {
            resync_at = now + RESYNC;
        }
        let failed = match &r {
            Ok(rec) => {
                report(&ctx, &services, &want, rec).await;
                rec.failed()
            }
            Err(e) => {
                warn!(error = %e, "hypervisor grants failed");
                let note = format!("the hypervisors could not be asked: {e}");
                for key in want.services.values().collect::<BTreeSet<_>>() {
                    if let Some(svc) = service(&services, key) {
                        ctx.once(&svc, "hv-fail", EventType::Warning, "HypervisorGrantFailed", note.clone()).await;
                    }
                }
                true
            }
        };
        ctx.grants_recorded().await;
        if failed {
            attempts = attempts.saturating_add(1);
            let delay = backoff(attempts);
            retry_at = Some(Instant::now() + delay);
            info!(attempt = attempts, retry_in_ms = delay.as_millis() as u64, "hypervisor grants: retrying");
        } else {
            attempts = 0;
            retry_at = None;
        }
        done = Some(want);
    }
}

fn service(services: &Reflector<Service>, key: &ServiceKey) -> Option<Arc<Service>> {
    services.get(&ObjectRef::new(key.name()).within(key.namespace()))
}

fn nic_text(n: &NicResult) -> String {
    format!("{} ({}/{} {})", n.node, n.provider, n.vm, n.mac)
}

/// Events for what one pass did, grouped by Service.
async fn report(ctx: &Ctx, services: &Reflector<Service>, want: &Wanted, rec: &Reconciled) {
    let mut granted: BTreeMap<&ServiceKey, BTreeMap<IpAddr, Vec<String>>> = BTreeMap::new();
    let mut revoked: BTreeMap<&ServiceKey, BTreeMap<IpAddr, Vec<String>>> = BTreeMap::new();
    let mut failed: BTreeMap<&ServiceKey, Vec<String>> = BTreeMap::new();
    for n in &rec.nics {
        ctx.metrics.grant_written(&n.provider, n.changed);
        for vip in &n.vips {
            let Some(key) = want.services.get(vip) else { continue };
            match n.state {
                "applied" => granted.entry(key).or_default().entry(*vip).or_default().push(nic_text(n)),
                "revoked" => revoked.entry(key).or_default().entry(*vip).or_default().push(nic_text(n)),
                _ => failed.entry(key).or_default().push(format!(
                    "{vip} on {}: {}",
                    nic_text(n),
                    n.error.as_deref().unwrap_or("failed")
                )),
            }
        }
        match (n.state, &n.error) {
            ("failed", Some(e)) => warn!(node = %n.node, nic = %nic_text(n), error = %e, "hypervisor grant failed"),
            (state, _) => {
                info!(node = %n.node, nic = %nic_text(n), vips = ?n.vips, state, changed = n.changed, "hypervisor grant")
            }
        }
    }
    for (node, e) in &rec.unmapped {
        warn!(%node, error = %e, "hypervisor grants: node not mapped to a VM");
        for key in want.services.values().collect::<BTreeSet<_>>() {
            failed.entry(key).or_default().push(format!("node {node}: {e}"));
        }
    }
    let text = |m: &BTreeMap<IpAddr, Vec<String>>| {
        m.iter().map(|(v, nics)| format!("{v} on {}", nics.join(", "))).collect::<Vec<_>>().join("; ")
    };
    for (key, m) in &granted {
        if let Some(svc) = service(services, key) {
            ctx.event(&svc, EventType::Normal, "HypervisorGranted", format!("Granted {}", text(m))).await;
            ctx.forget(key, "hv-fail");
        }
    }
    for (key, m) in &revoked {
        if let Some(svc) = service(services, key) {
            ctx.event(&svc, EventType::Normal, "HypervisorRevoked", format!("Revoked {}", text(m))).await;
        }
    }
    for (key, why) in &failed {
        if let Some(svc) = service(services, key) {
            ctx.once(&svc, "hv-fail", EventType::Warning, "HypervisorGrantFailed", why.join("; ")).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, excluded: bool) -> Arc<Node> {
        let labels = if excluded { serde_json::json!({EXCLUDE_LABEL: ""}) } else { serde_json::json!({}) };
        Arc::new(serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": labels}})).unwrap())
    }

    #[test]
    fn every_vip_goes_to_every_node_with_a_speaker_that_is_not_excluded() {
        let report = |n: &str, mac: &str| {
            (n.to_string(), Report { node: n.into(), macs: vec![mac.into(), "junk".into()], announcing: vec![] })
        };
        let reports: Reports =
            [report("n1", "52:54:00:00:00:01"), report("n2", "52:54:00:00:00:02"), report("gone", "52:54:00:00:00:09")]
                .into();
        let nodes = [node("n1", false), node("n2", true), node("n3", false)];
        let c = candidates(&reports, &nodes);
        assert_eq!(c.keys().collect::<Vec<_>>(), ["n1"], "n2 is excluded, n3 runs no speaker, gone has no Node");
        assert_eq!(c["n1"], ["52:54:00:00:00:01".parse::<Mac>().unwrap()], "a bad MAC is ignored");
        let web = ServiceKey::new("default", "web").unwrap();
        let ips: Vec<IpAddr> = vec!["192.0.2.10".parse().unwrap(), "2001:db8::10".parse().unwrap()];
        let w = wanted(&[(web.clone(), ips.clone())], c, Default::default());
        assert_eq!(w.desired["n1"], ips.iter().copied().collect());
        assert_eq!(w.services[&ips[1]], web);
        let none = wanted(&[], candidates(&reports, &nodes), Default::default());
        assert!(none.desired["n1"].is_empty(), "no allocation: nothing to grant (and what was granted goes)");
        // Virtual MACs: only the allocated VIPs', and never a node's own MAC.
        let vmacs = [
            (ips[0], "42:00:c0:00:02:0a".parse::<Mac>().unwrap()),
            (ips[1], "52:54:00:00:00:01".parse::<Mac>().unwrap()),
            ("192.0.2.99".parse().unwrap(), "42:00:c0:00:02:63".parse::<Mac>().unwrap()),
        ];
        let w = wanted(&[(web, ips.clone())], candidates(&reports, &nodes), vmacs.into_iter().collect());
        assert_eq!(w.vmacs.keys().collect::<Vec<_>>(), [&ips[0]], "{:?}", w.vmacs);
    }
}
