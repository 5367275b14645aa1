//! vipvisor-hypervisor: makes the hypervisor let the nodes announce their VIPs. From the
//! provider file ([`config`]) it builds the providers, maps each node to its VM (an
//! explicit mapping, else by the MACs its speaker published, else the VM named like the
//! node), and applies and revokes grants, recording in the store what each NIC got
//! ([`vipvisor_store::GrantRow`]) so that a revoke takes back exactly that.
//! [`Hypervisors::reconcile`] is the one reason-blind loop body: it makes every NIC grant
//! what the desired state says, whoever changed what.
//!
//! Owns: the node ↔ VM mapping and the grant bookkeeping. Must not: know a provider's
//! internals (the [`Provider`] trait is the boundary), or decide which nodes are
//! candidates (the caller says so).

pub mod config;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use vipvisor_model::Timestamp;
use vipvisor_provider::{Finding, Grant, Mac, Need, NicRef, Outcome, Provider, ProviderError, Record, Severity, Vm};
use vipvisor_store::{GrantRow, Store, StoreError};

pub use config::{parse, ProvidersFile};

/// What can go wrong, naming the value.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("node {node:?} has no VM: no mapping in the provider file{macs}, and no VM named {node:?} in {providers}")]
    UnknownNode { node: String, macs: String, providers: String },
    #[error("VM {vm:?} of node {node:?} has no NIC {what}")]
    NoNic { node: String, vm: String, what: String },
    #[error("this build has no {kind} provider (build vipvisor with --features {kind})")]
    NotBuilt { kind: &'static str },
    #[error("a stored grant is unreadable: {0}")]
    Record(String),
}

pub type Result<T, E = HypervisorError> = std::result::Result<T, E>;

/// Told of every provider call: `(provider, call, elapsed, ok)`. The controller turns it
/// into metrics; tests and benchmarks count calls with it.
pub type Observer = Arc<dyn Fn(&str, &'static str, Duration, bool) + Send + Sync>;

/// The providers of a provider file, and its node mapping.
pub struct Hypervisors {
    file: ProvidersFile,
    providers: Vec<Box<dyn Provider>>,
    observer: Option<Observer>,
}

impl std::fmt::Debug for Hypervisors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hypervisors").field("file", &self.file).field("providers", &self.providers).finish()
    }
}

/// A NIC of a node's VM, with its provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeNic {
    pub node: String,
    pub provider: String,
    pub nic: NicRef,
}

/// One provider's VMs.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderInventory {
    pub provider: String,
    pub vms: Vec<Vm>,
}

/// What `apply`, `revert` or `reconcile` did to one NIC.
#[derive(Debug, Clone, Serialize)]
pub struct NicResult {
    pub node: String,
    pub provider: String,
    pub vm: String,
    pub mac: Mac,
    /// The VIPs this call granted (`applied`), took back (`revoked`), or failed to grant.
    pub vips: Vec<IpAddr>,
    /// Whether the hypervisor was written.
    pub changed: bool,
    /// `applied`, `revoked` or `failed`.
    pub state: &'static str,
    pub error: Option<String>,
    /// What still blocks after the call (e.g. IPv6 without the vipvisor filter).
    pub remaining: Vec<Finding>,
}

/// Which VIPs each node must be able to announce: every candidate node of a VIP.
pub type Desired = BTreeMap<String, BTreeSet<IpAddr>>;

/// The VIPs announced with a virtual MAC (virtual-MAC mode), and their MACs: a node must
/// also be allowed to send from and receive for that MAC ([`Need::VirtualMac`]).
pub type VirtualMacs = BTreeMap<IpAddr, Mac>;

/// What [`Hypervisors::reconcile`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reconciled {
    /// NICs that were granted, revoked or failed (NICs already as desired are not listed).
    pub nics: Vec<NicResult>,
    /// Nodes that could not be mapped to a NIC, with the reason (retried next time).
    pub unmapped: Vec<(String, String)>,
}

impl Reconciled {
    /// Whether anything must be retried.
    pub fn failed(&self) -> bool {
        !self.unmapped.is_empty() || self.nics.iter().any(|n| n.state == "failed")
    }
}

impl Hypervisors {
    /// Builds the providers of `file`.
    pub fn new(file: ProvidersFile) -> Result<Self> {
        let mut providers: Vec<Box<dyn Provider>> = Vec::new();
        for p in &file.providers {
            match p.kind {
                config::Kind::Libvirt => providers.push(libvirt(p)?),
            }
        }
        Ok(Hypervisors { file, providers, observer: None })
    }

    /// Tells `observer` of every provider call from now on.
    pub fn observed(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The nodes the provider file maps to VMs.
    pub fn mapped_nodes(&self) -> Vec<String> {
        self.file.nodes.iter().map(|n| n.node.clone()).collect()
    }

    /// The provider names, as the file lists them.
    pub fn provider_names(&self) -> Vec<String> {
        self.providers.iter().map(|p| p.name().to_owned()).collect()
    }

    fn provider(&self, name: &str) -> Option<&dyn Provider> {
        self.providers.iter().find(|p| p.name() == name).map(|p| p.as_ref())
    }

    /// Runs one provider call, telling the observer how long it took and whether it failed.
    async fn call<T>(
        &self,
        provider: &str,
        call: &'static str,
        f: impl std::future::Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let started = Instant::now();
        let r = f.await;
        if let Some(o) = &self.observer {
            o(provider, call, started.elapsed(), r.is_ok());
        }
        r
    }

    /// Every provider's VMs.
    pub async fn inventory(&self) -> Result<Vec<ProviderInventory>> {
        let mut out = Vec::new();
        for p in &self.providers {
            let vms = self.call(p.name(), "inventory", p.inventory()).await?;
            out.push(ProviderInventory { provider: p.name().to_owned(), vms });
        }
        Ok(out)
    }

    /// The NICs of `node`'s VM that carry its VIPs, in `inventory` (one listing serves
    /// every node of a call). In order: the provider file's mapping (its `mac`, else every
    /// NIC with a filter); the NICs whose MAC is one the node's speaker published
    /// (`macs`); the VM named like the node (every NIC with a filter: one without drops
    /// nothing).
    pub fn nics(&self, node: &str, macs: &[Mac], inventory: &[ProviderInventory]) -> Result<Vec<NodeNic>> {
        let mapped = self.file.nodes.iter().find(|n| n.node == node);
        let nic_of = |provider: &str, vm: &str, mac: Mac| NodeNic {
            node: node.to_owned(),
            provider: provider.to_owned(),
            nic: NicRef { vm: vm.to_owned(), mac },
        };
        if mapped.is_none() && !macs.is_empty() {
            let by_mac: Vec<NodeNic> = inventory
                .iter()
                .flat_map(|inv| inv.vms.iter().map(move |vm| (inv.provider.as_str(), vm)))
                .flat_map(|(p, vm)| {
                    vm.nics.iter().filter(|n| macs.contains(&n.mac)).map(move |n| nic_of(p, &vm.name, n.mac))
                })
                .collect();
            if !by_mac.is_empty() {
                return Ok(by_mac);
            }
        }
        let candidates: Vec<(&str, String)> = match mapped {
            Some(m) => vec![(m.provider.as_str(), m.vm.clone())],
            None => self.providers.iter().map(|p| (p.name(), node.to_owned())).collect(),
        };
        for (pname, vm_name) in candidates {
            let Some(inv) = inventory.iter().find(|i| i.provider == pname) else { continue };
            let Some(vm) = inv.vms.iter().find(|v| v.name == vm_name) else { continue };
            let nics: Vec<NodeNic> = vm
                .nics
                .iter()
                .filter(|n| match mapped.and_then(|m| m.mac) {
                    Some(mac) => n.mac == mac,
                    None => n.filter.is_some(),
                })
                .map(|n| nic_of(pname, &vm.name, n.mac))
                .collect();
            if nics.is_empty() {
                let what = match mapped.and_then(|m| m.mac) {
                    Some(mac) => format!("with MAC {mac}"),
                    None => "with a filter (nothing to grant: no NIC filters traffic)".into(),
                };
                return Err(HypervisorError::NoNic { node: node.to_owned(), vm: vm.name.clone(), what });
            }
            return Ok(nics);
        }
        Err(HypervisorError::UnknownNode {
            node: node.to_owned(),
            macs: if macs.is_empty() {
                String::new()
            } else {
                format!(
                    ", no NIC with its MACs {}",
                    macs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                )
            },
            providers: self.provider_names().join(", "),
        })
    }

    /// What blocks `need` on each NIC of each of `nodes`.
    pub async fn diagnose(
        &self,
        nodes: &[String],
        macs: &BTreeMap<String, Vec<Mac>>,
        need: &Need,
    ) -> Result<Vec<Finding>> {
        let inventory = self.inventory().await?;
        let mut out = Vec::new();
        for node in nodes {
            for n in self.nics(node, macs_of(macs, node), &inventory)? {
                let p = self.provider(&n.provider).ok_or_else(|| unknown_provider(&n.provider))?;
                out.extend(self.call(p.name(), "diagnose", p.diagnose(&n.nic, need)).await?);
            }
        }
        Ok(out)
    }

    /// Grants `vips` on every NIC of every one of `nodes` (all candidates of the VIPs, so
    /// a failover never waits on the hypervisor), recording each NIC's grant in `store`.
    /// A NIC's failure is recorded as `failed` and reported; the others go on.
    pub async fn apply(
        &self,
        store: &Store,
        vips: &[IpAddr],
        nodes: &[String],
        macs: &BTreeMap<String, Vec<Mac>>,
        vmacs: &VirtualMacs,
    ) -> Result<Vec<NicResult>> {
        let rows = store.grants().await?;
        let inventory = self.inventory().await?;
        let mut out = Vec::new();
        for node in nodes {
            for n in self.nics(node, macs_of(macs, node), &inventory)? {
                let row = row_of(&rows, &n);
                let want: BTreeSet<IpAddr> = row.iter().flat_map(|r| r.vips.iter()).chain(vips).copied().collect();
                // VIPs granted before keep their virtual MACs unless this call names others.
                let mut v = row.map(|r| record_of(&r.record)).transpose()?.unwrap_or_default().virtual_macs;
                v.extend(vmacs.iter().filter(|(ip, _)| vips.contains(ip)).map(|(ip, m)| (*ip, *m)));
                out.push(self.grant_nic(store, &n, row, &want, &v).await?);
            }
        }
        Ok(out)
    }

    /// Makes the NIC grant exactly `want` on top of what `row` says is granted: one
    /// `ensure` with all of `want` (one device update for all new VIPs), then one `revert`
    /// of what is granted but no longer wanted. The store follows each step.
    async fn grant_nic(
        &self,
        store: &Store,
        n: &NodeNic,
        row: Option<&GrantRow>,
        want: &BTreeSet<IpAddr>,
        vmacs: &VirtualMacs,
    ) -> Result<NicResult> {
        let p = self.provider(&n.provider).ok_or_else(|| unknown_provider(&n.provider))?;
        let record = row.map(|r| record_of(&r.record)).transpose()?.unwrap_or_default();
        let have: BTreeSet<IpAddr> = row.map(|r| r.vips.iter().copied().collect()).unwrap_or_default();
        let add: Vec<IpAddr> = want.difference(&have).copied().collect();
        let now = Timestamp::now();
        let mut g = GrantRow {
            provider: n.provider.clone(),
            vm: n.nic.vm.clone(),
            mac: n.nic.mac.to_string(),
            node: n.node.clone(),
            vips: have.iter().copied().collect(),
            record: record_json(&record)?,
            state: "applied".into(),
            error: String::new(),
        };
        let grant = Grant { nic: n.nic.clone(), need: Need::Announce { ips: want.iter().copied().collect() } };
        let prior_vmacs = record.virtual_macs.clone();
        let ensured = match self.call(p.name(), "ensure", p.ensure(&grant, &record)).await {
            Ok(o) => {
                let o = Outcome { record: Record { virtual_macs: prior_vmacs, ..o.record }, ..o };
                self.grant_virtual_macs(p, &n.nic, o, want, vmacs).await
            }
            Err(e) => Err((e, record)),
        };
        let (changed, remaining) = match ensured {
            Ok(o) => {
                // What the NIC grants now: what it did, what is wanted, and what an earlier
                // call whose answer was lost turned out to have added.
                let landed = o.record.added.iter().filter_map(|(_, v)| v.parse::<IpAddr>().ok());
                g.vips = have.iter().chain(want).copied().chain(landed).collect::<BTreeSet<_>>().into_iter().collect();
                g.record = record_json(&o.record)?;
                store.put_grant(&g, &add, now).await?;
                (o.changed, o.remaining)
            }
            Err((e, record)) => {
                // The connection went away during the write: the next call settles what it
                // tried to add against what the NIC has. Any other failure changed nothing.
                let mut record = record;
                if let ProviderError::Lost { attempted, .. } = &e {
                    record.uncertain = record
                        .uncertain
                        .iter()
                        .chain(attempted)
                        .copied()
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                }
                g.record = record_json(&record)?;
                g.state = "failed".into();
                g.error = e.to_string();
                store.put_grant(&g, &[], now).await?;
                return Ok(result(n, add, false, "failed", Some(e.to_string()), Vec::new()));
            }
        };
        let drop: Vec<IpAddr> = g.vips.iter().copied().filter(|v| !want.contains(v)).collect();
        if drop.is_empty() {
            return Ok(result(n, add, changed, "applied", None, remaining));
        }
        let r = self.revoke_row(store, &g, Some(&drop)).await?;
        Ok(NicResult {
            vips: add,
            changed: changed || r.changed,
            state: if r.state == "failed" { "failed" } else { "applied" },
            ..r
        })
    }

    /// After the NIC's VIPs are granted (`o`): each wanted VIP in virtual-MAC mode also
    /// gets its MAC ([`Need::VirtualMac`]); a recorded MAC that is no longer wanted for its
    /// VIP (the MAC changed, the VIP left virtual-MAC mode or is not wanted at all) is given
    /// back first. On a failure, the error and the
    /// record as far as it got.
    async fn grant_virtual_macs(
        &self,
        p: &dyn Provider,
        nic: &NicRef,
        mut o: Outcome,
        want: &BTreeSet<IpAddr>,
        vmacs: &VirtualMacs,
    ) -> std::result::Result<Outcome, (ProviderError, Record)> {
        let wanted: VirtualMacs = want.iter().filter_map(|v| vmacs.get(v).map(|m| (*v, *m))).collect();
        let stale: Vec<(IpAddr, Mac)> =
            o.record.virtual_macs.iter().filter(|(v, m)| wanted.get(v) != Some(m)).map(|(v, m)| (*v, *m)).collect();
        for (vip, mac) in stale {
            // Only the MAC (the VIP itself stays granted): a VirtualMac need without IPs.
            let g = Grant { nic: nic.clone(), need: Need::VirtualMac { mac, ips: vec![] } };
            match self.call(p.name(), "revert", p.revert(&g, &o.record)).await {
                Ok(r) => {
                    o.changed |= r.changed;
                    o.record = Record { virtual_macs: o.record.virtual_macs.clone(), ..r.record };
                    o.record.virtual_macs.remove(&vip);
                }
                Err(e) => return Err((e, o.record)),
            }
        }
        for (vip, mac) in wanted {
            let g = Grant { nic: nic.clone(), need: Need::VirtualMac { mac, ips: vec![vip] } };
            match self.call(p.name(), "ensure", p.ensure(&g, &o.record)).await {
                Ok(r) => {
                    o.changed |= r.changed;
                    o.remaining.extend(r.remaining);
                    o.record = Record { virtual_macs: o.record.virtual_macs.clone(), ..r.record };
                    o.record.virtual_macs.insert(vip, mac);
                }
                Err(e) => return Err((e, o.record)),
            }
        }
        Ok(o)
    }

    /// Takes back `ips` (or everything) that `row` granted, and records it.
    async fn revoke_row(&self, store: &Store, row: &GrantRow, ips: Option<&[IpAddr]>) -> Result<NicResult> {
        let mac: Mac = row.mac.parse()?;
        let nic = NicRef { vm: row.vm.clone(), mac };
        let n = NodeNic { node: row.node.clone(), provider: row.provider.clone(), nic: nic.clone() };
        let Some(p) = self.provider(&row.provider) else {
            let e = format!("provider {:?} is no longer in the provider file; its grant is kept", row.provider);
            return Ok(result(&n, row.vips.clone(), false, "failed", Some(e), Vec::new()));
        };
        let mut record = record_of(&row.record)?;
        let ips: Vec<IpAddr> = ips.map(<[IpAddr]>::to_vec).unwrap_or_default();
        let now = Timestamp::now();
        // VIPs in virtual-MAC mode go with their MAC (one call each), the others in one call;
        // everything at once when `ips` is empty.
        let mut changed = false;
        let (virtual_ips, plain): (Vec<IpAddr>, Vec<IpAddr>) =
            ips.iter().copied().partition(|v| record.virtual_macs.contains_key(v));
        let mut calls: Vec<(Need, Vec<IpAddr>)> = virtual_ips
            .iter()
            .map(|v| (Need::VirtualMac { mac: record.virtual_macs[v], ips: vec![*v] }, vec![*v]))
            .collect();
        if ips.is_empty() || !plain.is_empty() {
            calls.push((Need::Announce { ips: plain.clone() }, plain));
        }
        let mut outcome: std::result::Result<(), ProviderError> = Ok(());
        for (need, gone) in calls {
            let grant = Grant { nic: nic.clone(), need };
            match self.call(p.name(), "revert", p.revert(&grant, &record)).await {
                Ok(o) => {
                    changed |= o.changed;
                    // Providers keep the virtual MACs as given: this layer tracks them.
                    let mut v = std::mem::take(&mut record.virtual_macs);
                    if gone.is_empty() {
                        v.clear();
                    }
                    for ip in &gone {
                        v.remove(ip);
                    }
                    record = Record { virtual_macs: v, ..o.record };
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        let (changed, record) = match outcome {
            Ok(()) => (changed, record_json(&record)?),
            // The VM or its NIC is gone (deleted, recreated with another MAC): nothing is
            // left to take back, so the grant is forgotten rather than retried for ever.
            Err(e @ (ProviderError::UnknownVm { .. } | ProviderError::UnknownNic { .. })) => {
                tracing::warn!(nic = %n.nic, error = %e, "the NIC of a grant is gone; forgetting the grant");
                (false, row.record.clone())
            }
            Err(e) => return Ok(result(&n, ips, false, "failed", Some(e.to_string()), Vec::new())),
        };
        let revoked: Vec<IpAddr> = if ips.is_empty() { row.vips.clone() } else { ips };
        let left: Vec<IpAddr> = row.vips.iter().copied().filter(|v| !revoked.contains(v)).collect();
        if left.is_empty() {
            store.delete_grant(row, &revoked, now).await?;
        } else {
            store.put_grant(&GrantRow { vips: left, record, ..row.clone() }, &[], now).await?;
        }
        Ok(result(&n, revoked, changed, "revoked", None, Vec::new()))
    }

    /// Takes back vipvisor's additions: for `vip` (or all), on `node` (or every node).
    pub async fn revert(&self, store: &Store, vip: Option<IpAddr>, node: Option<&str>) -> Result<Vec<NicResult>> {
        let mut out = Vec::new();
        for row in store.grants().await? {
            if node.is_some_and(|n| n != row.node) || vip.is_some_and(|v| !row.vips.contains(&v)) {
                continue;
            }
            let ips: Option<Vec<IpAddr>> = vip.map(|v| vec![v]);
            out.push(self.revoke_row(store, &row, ips.as_deref()).await?);
        }
        Ok(out)
    }

    /// Makes the hypervisors match `desired` (reason-blind: whatever changed): every NIC
    /// of every node in it grants exactly that node's VIPs, and every grant in the store
    /// that no desired NIC holds is revoked. `macs` are the MACs each node's speaker
    /// published (the mapping by MAC). NICs whose stored grant already matches are not
    /// called unless `full` (a periodic check that the hypervisor still has them; an
    /// `ensure` that finds everything in place writes nothing). One inventory per call.
    /// Two nodes that map to one NIC share it (the union of their VIPs, one call). The
    /// pass stops between NICs as soon as `go_on()` says so (the leader lost its lease).
    pub async fn reconcile(
        &self,
        store: &Store,
        desired: &Desired,
        macs: &BTreeMap<String, Vec<Mac>>,
        vmacs: &VirtualMacs,
        full: bool,
        go_on: &(dyn Fn() -> bool + Sync),
    ) -> Result<Reconciled> {
        let rows = store.grants().await?;
        let inventory = self.inventory().await?;
        let mut out = Reconciled::default();
        let mut held: BTreeSet<(String, String, String)> = BTreeSet::new();
        let mut work: BTreeMap<(String, String, String), (NodeNic, BTreeSet<IpAddr>)> = BTreeMap::new();
        for (node, want) in desired.iter().filter(|(_, w)| !w.is_empty()) {
            let nics = match self.nics(node, macs_of(macs, node), &inventory) {
                Ok(n) => n,
                Err(e) => {
                    out.unmapped.push((node.clone(), e.to_string()));
                    // Keep what it has: a node that cannot be mapped now may be a lookup
                    // that failed, not a node that left.
                    held.extend(
                        rows.iter()
                            .filter(|r| &r.node == node)
                            .map(|r| (r.provider.clone(), r.vm.clone(), r.mac.clone())),
                    );
                    continue;
                }
            };
            for n in nics {
                let key = (n.provider.clone(), n.nic.vm.clone(), n.nic.mac.to_string());
                held.insert(key.clone());
                match work.get_mut(&key) {
                    Some((first, w)) => {
                        tracing::warn!(nic = %n.nic, nodes = %format!("{}, {node}", first.node), "two nodes map to one NIC; it grants both nodes' VIPs");
                        w.extend(want.iter().copied());
                    }
                    None => {
                        work.insert(key, (n, want.clone()));
                    }
                }
            }
        }
        for (n, want) in work.values() {
            if !go_on() {
                return Ok(out);
            }
            let row = row_of(&rows, n);
            let wanted_vmacs: VirtualMacs = want.iter().filter_map(|v| vmacs.get(v).map(|m| (*v, *m))).collect();
            let same = row.is_some_and(|r| {
                r.state == "applied"
                    && r.node == n.node
                    && r.vips.iter().copied().collect::<BTreeSet<_>>() == *want
                    && record_of(&r.record).is_ok_and(|rec| rec.virtual_macs == wanted_vmacs)
            });
            if same && !full {
                continue;
            }
            let r = self.grant_nic(store, n, row, want, vmacs).await?;
            if !same || r.changed || r.state == "failed" {
                out.nics.push(r);
            }
        }
        for row in rows.iter().filter(|r| !held.contains(&(r.provider.clone(), r.vm.clone(), r.mac.clone()))) {
            if !go_on() {
                return Ok(out);
            }
            out.nics.push(self.revoke_row(store, row, None).await?);
        }
        Ok(out)
    }
}

fn macs_of<'a>(macs: &'a BTreeMap<String, Vec<Mac>>, node: &str) -> &'a [Mac] {
    macs.get(node).map_or(&[][..], Vec::as_slice)
}

fn row_of<'a>(rows: &'a [GrantRow], n: &NodeNic) -> Option<&'a GrantRow> {
    rows.iter().find(|r| r.provider == n.provider && r.vm == n.nic.vm && r.mac == n.nic.mac.to_string())
}

/// Whether any finding blocks.
pub fn blocks(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Blocking)
}

fn result(
    n: &NodeNic,
    vips: Vec<IpAddr>,
    changed: bool,
    state: &'static str,
    error: Option<String>,
    remaining: Vec<Finding>,
) -> NicResult {
    NicResult {
        node: n.node.clone(),
        provider: n.provider.clone(),
        vm: n.nic.vm.clone(),
        mac: n.nic.mac,
        vips,
        changed,
        state,
        error,
        remaining,
    }
}

fn unknown_provider(name: &str) -> HypervisorError {
    HypervisorError::Record(format!("no provider named {name:?}"))
}

fn record_of(json: &str) -> Result<Record> {
    serde_json::from_str(json).map_err(|e| HypervisorError::Record(e.to_string()))
}

fn record_json(r: &Record) -> Result<String> {
    serde_json::to_string(r).map_err(|e| HypervisorError::Record(e.to_string()))
}

#[cfg(feature = "libvirt")]
fn libvirt(p: &config::ProviderConfig) -> Result<Box<dyn Provider>> {
    Ok(Box::new(vipvisor_libvirt::Libvirt::new(vipvisor_libvirt::LibvirtConfig {
        name: p.name.clone(),
        uri: p.uri.clone(),
        ipv6_filter: p.ipv6_filter == Some(config::Ipv6Filter::Vipvisor),
    })))
}

#[cfg(not(feature = "libvirt"))]
fn libvirt(_: &config::ProviderConfig) -> Result<Box<dyn Provider>> {
    Err(HypervisorError::NotBuilt { kind: "libvirt" })
}
