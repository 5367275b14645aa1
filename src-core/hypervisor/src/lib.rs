//! vipvisor-hypervisor: makes the hypervisor let the nodes announce their VIPs. From the
//! provider file ([`config`]) it builds the providers, maps each node to its VM (an
//! explicit mapping, else the VM named like the node), and applies and revokes grants,
//! recording in the store what each NIC got ([`vipvisor_store::GrantRow`]) so that a
//! revoke takes back exactly that.
//!
//! Owns: the node ↔ VM mapping and the grant bookkeeping. Must not: know a provider's
//! internals (the [`Provider`] trait is the boundary), or decide which nodes are
//! candidates (the caller says so).

pub mod config;

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::Serialize;
use vipvisor_model::Timestamp;
use vipvisor_provider::{Finding, Grant, Mac, Need, NicRef, Provider, ProviderError, Record, Severity, Vm};
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
    #[error("node {node:?} has no VM: no mapping in the provider file and no VM named {node:?} in {providers}")]
    UnknownNode { node: String, providers: String },
    #[error("VM {vm:?} of node {node:?} has no NIC {what}")]
    NoNic { node: String, vm: String, what: String },
    #[error("this build has no {kind} provider (build vipvisor with --features {kind})")]
    NotBuilt { kind: &'static str },
    #[error("a stored grant is unreadable: {0}")]
    Record(String),
}

pub type Result<T, E = HypervisorError> = std::result::Result<T, E>;

/// The providers of a provider file, and its node mapping.
#[derive(Debug)]
pub struct Hypervisors {
    file: ProvidersFile,
    providers: Vec<Box<dyn Provider>>,
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

/// What `apply` or `revert` did to one NIC.
#[derive(Debug, Clone, Serialize)]
pub struct NicResult {
    pub node: String,
    pub provider: String,
    pub vm: String,
    pub mac: Mac,
    pub vips: Vec<IpAddr>,
    /// Whether the hypervisor was written.
    pub changed: bool,
    /// `applied`, `revoked` or `failed`.
    pub state: &'static str,
    pub error: Option<String>,
    /// What still blocks after the call (e.g. IPv6 without the vipvisor filter).
    pub remaining: Vec<Finding>,
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
        Ok(Hypervisors { file, providers })
    }

    /// The nodes the provider file maps to VMs.
    pub fn mapped_nodes(&self) -> Vec<String> {
        self.file.nodes.iter().map(|n| n.node.clone()).collect()
    }

    fn provider(&self, name: &str) -> Option<&dyn Provider> {
        self.providers.iter().find(|p| p.name() == name).map(|p| p.as_ref())
    }

    /// Every provider's VMs.
    pub async fn inventory(&self) -> Result<Vec<ProviderInventory>> {
        let mut out = Vec::new();
        for p in &self.providers {
            out.push(ProviderInventory { provider: p.name().to_owned(), vms: p.inventory().await? });
        }
        Ok(out)
    }

    /// The NICs of `node`'s VM that carry its VIPs, in `inventory` (one listing serves
    /// every node of a call): the mapping's `mac`, else every NIC with a filter (a NIC
    /// without one drops nothing).
    pub fn nics(&self, node: &str, inventory: &[ProviderInventory]) -> Result<Vec<NodeNic>> {
        let mapped = self.file.nodes.iter().find(|n| n.node == node);
        let candidates: Vec<(&str, String)> = match mapped {
            Some(m) => vec![(m.provider.as_str(), m.vm.clone())],
            None => self.providers.iter().map(|p| (p.name(), node.to_owned())).collect(),
        };
        for (pname, vm_name) in candidates {
            let Some(inv) = inventory.iter().find(|i| i.provider == pname) else { continue };
            let Some(vm) = inv.vms.iter().find(|v| v.name == vm_name).cloned() else { continue };
            let nics: Vec<NodeNic> = vm
                .nics
                .iter()
                .filter(|n| match mapped.and_then(|m| m.mac) {
                    Some(mac) => n.mac == mac,
                    None => n.filter.is_some(),
                })
                .map(|n| NodeNic {
                    node: node.to_owned(),
                    provider: pname.to_owned(),
                    nic: NicRef { vm: vm.name.clone(), mac: n.mac },
                })
                .collect();
            if nics.is_empty() {
                let what = match mapped.and_then(|m| m.mac) {
                    Some(mac) => format!("with MAC {mac}"),
                    None => "with a filter (nothing to grant: no NIC filters traffic)".into(),
                };
                return Err(HypervisorError::NoNic { node: node.to_owned(), vm: vm.name, what });
            }
            return Ok(nics);
        }
        Err(HypervisorError::UnknownNode {
            node: node.to_owned(),
            providers: self.providers.iter().map(|p| p.name().to_owned()).collect::<Vec<_>>().join(", "),
        })
    }

    /// What blocks `need` on each NIC of each of `nodes`.
    pub async fn diagnose(&self, nodes: &[String], need: &Need) -> Result<Vec<Finding>> {
        let inventory = self.inventory().await?;
        let mut out = Vec::new();
        for node in nodes {
            for n in self.nics(node, &inventory)? {
                let p = self.provider(&n.provider).ok_or_else(|| unknown_provider(&n.provider))?;
                out.extend(p.diagnose(&n.nic, need).await?);
            }
        }
        Ok(out)
    }

    /// Grants `vips` on every NIC of every one of `nodes` (all candidates of the VIPs, so
    /// a failover never waits on the hypervisor), recording each NIC's grant in `store`.
    /// A NIC's failure is recorded as `failed` and reported; the others go on.
    pub async fn apply(&self, store: &Store, vips: &[IpAddr], nodes: &[String]) -> Result<Vec<NicResult>> {
        let rows = store.grants().await?;
        let inventory = self.inventory().await?;
        let mut out = Vec::new();
        for node in nodes {
            for n in self.nics(node, &inventory)? {
                let p = self.provider(&n.provider).ok_or_else(|| unknown_provider(&n.provider))?;
                let row = rows
                    .iter()
                    .find(|r| r.provider == n.provider && r.vm == n.nic.vm && r.mac == n.nic.mac.to_string());
                let record = row.map(|r| record_of(&r.record)).transpose()?.unwrap_or_default();
                let before: BTreeSet<IpAddr> = row.map(|r| r.vips.iter().copied().collect()).unwrap_or_default();
                let all: BTreeSet<IpAddr> = before.iter().chain(vips).copied().collect();
                let need = Need::Announce { ips: all.iter().copied().collect() };
                let grant = Grant { nic: n.nic.clone(), need };
                let now = Timestamp::now();
                let mut g = GrantRow {
                    provider: n.provider.clone(),
                    vm: n.nic.vm.clone(),
                    mac: n.nic.mac.to_string(),
                    node: node.clone(),
                    vips: all.iter().copied().collect(),
                    record: String::new(),
                    state: "applied".into(),
                    error: String::new(),
                };
                match p.ensure(&grant, &record).await {
                    Ok(o) => {
                        g.record = record_json(&o.record)?;
                        let new: Vec<IpAddr> = all.difference(&before).copied().collect();
                        store.put_grant(&g, &new, now).await?;
                        out.push(result(&n, &g, o.changed, "applied", None, o.remaining));
                    }
                    Err(e) => {
                        g.record = record_json(&record)?;
                        g.vips = before.iter().copied().collect();
                        g.state = "failed".into();
                        g.error = e.to_string();
                        store.put_grant(&g, &[], now).await?;
                        out.push(result(&n, &g, false, "failed", Some(e.to_string()), Vec::new()));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Takes back vipvisor's additions: for `vip` (or all), on `node` (or every node).
    pub async fn revert(&self, store: &Store, vip: Option<IpAddr>, node: Option<&str>) -> Result<Vec<NicResult>> {
        let mut out = Vec::new();
        for row in store.grants().await? {
            if node.is_some_and(|n| n != row.node) || vip.is_some_and(|v| !row.vips.contains(&v)) {
                continue;
            }
            let Some(p) = self.provider(&row.provider) else { continue };
            let mac: Mac = row.mac.parse()?;
            let nic = NicRef { vm: row.vm.clone(), mac };
            let record = record_of(&row.record)?;
            let ips: Vec<IpAddr> = vip.into_iter().collect();
            let grant = Grant { nic: nic.clone(), need: Need::Announce { ips: ips.clone() } };
            let n = NodeNic { node: row.node.clone(), provider: row.provider.clone(), nic };
            let now = Timestamp::now();
            match p.revert(&grant, &record).await {
                Ok(o) => {
                    let revoked: Vec<IpAddr> = if ips.is_empty() { row.vips.clone() } else { ips };
                    let left: Vec<IpAddr> = row.vips.iter().copied().filter(|v| !revoked.contains(v)).collect();
                    let g = GrantRow { vips: left.clone(), record: record_json(&o.record)?, ..row.clone() };
                    if left.is_empty() {
                        store.delete_grant(&row, &revoked, now).await?;
                    } else {
                        store.put_grant(&g, &[], now).await?;
                    }
                    out.push(result(&n, &GrantRow { vips: revoked, ..g }, o.changed, "revoked", None, Vec::new()));
                }
                Err(e) => out.push(result(&n, &row, false, "failed", Some(e.to_string()), Vec::new())),
            }
        }
        Ok(out)
    }
}

/// Whether any finding blocks.
pub fn blocks(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Blocking)
}

fn result(
    n: &NodeNic,
    g: &GrantRow,
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
        vips: g.vips.clone(),
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
