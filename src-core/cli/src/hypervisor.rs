//! `vipvisor hypervisor …`: flags → [`vipvisor_hypervisor`] → rendered text. Findings and
//! results are one line each; `-o json` prints them whole.

use std::collections::BTreeMap;
use std::net::IpAddr;

use vipvisor_api::files::read_text;
use vipvisor_hypervisor::{blocks, Hypervisors};
use vipvisor_provider::{Mac, Need};
use vipvisor_store::Store;

use crate::args::{Format, HypervisorCmd};
use crate::http::MembersBody;
use crate::render::{cell, row, table};

/// Exit code of `hypervisor diagnose` when something blocks.
pub const EXIT_BLOCKED: u8 = 4;
/// The largest provider file read.
const MAX_FILE: u64 = 1 << 20;

/// Output that goes to stdout with a non-zero exit code.
#[derive(Debug)]
pub struct Exit {
    pub out: String,
    pub code: u8,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.code)
    }
}

impl std::error::Error for Exit {}

pub fn load(path: &std::path::Path) -> anyhow::Result<Hypervisors> {
    let text = read_text(path, MAX_FILE, "provider file").map_err(|e| anyhow::anyhow!(e.message))?;
    let file = vipvisor_hypervisor::parse(&path.display().to_string(), &text)?;
    Ok(Hypervisors::new(file)?)
}

/// The largest `/members` answer read.
const MAX_MEMBERS: usize = 1 << 20;

/// What a static speaker says about its group (`/members`).
async fn members(addr: std::net::SocketAddr) -> anyhow::Result<MembersBody> {
    use http_body_util::BodyExt as _;
    let url = format!("http://{addr}/members");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
    let ask = async {
        let res = client.get(url.parse()?).await?;
        if !res.status().is_success() {
            anyhow::bail!("answered {} (is it a static speaker, with --metrics-addr {addr}?)", res.status());
        }
        let body = http_body_util::Limited::new(res.into_body(), MAX_MEMBERS)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .to_bytes();
        Ok(serde_json::from_slice::<MembersBody>(&body)?)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), ask).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => anyhow::bail!("--speaker {addr}: {url}: {e}"),
        Err(_) => anyhow::bail!("--speaker {addr}: no answer from {url} within 10 s"),
    }
}

impl MembersBody {
    fn nodes(&self) -> Vec<String> {
        self.members.iter().map(|m| m.node.clone()).collect()
    }
    fn macs(&self) -> BTreeMap<String, Vec<Mac>> {
        self.members.iter().map(|m| (m.node.clone(), m.macs.clone())).collect()
    }
}

fn json<T: serde::Serialize>(v: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(v)? + "\n")
}

/// Runs a hypervisor command; `store` opens the store for the commands that record grants.
pub async fn run(
    cmd: &HypervisorCmd,
    fmt: Format,
    store: impl std::future::Future<Output = anyhow::Result<Store>>,
) -> anyhow::Result<String> {
    match cmd {
        HypervisorCmd::Inventory { providers } => {
            let inv = load(providers)?.inventory().await?;
            if fmt == Format::Json {
                return json(&inv);
            }
            let mut t = vec![row(["PROVIDER", "VM", "RUNNING", "MAC", "NETWORK", "BRIDGE", "FILTER"])];
            for p in &inv {
                for vm in &p.vms {
                    for n in &vm.nics {
                        let filter = n.filter.as_ref().map_or("-".into(), |f| {
                            let params: Vec<String> = f.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                            if params.is_empty() {
                                f.name.clone()
                            } else {
                                format!("{} ({})", f.name, params.join(","))
                            }
                        });
                        t.push(vec![
                            p.provider.clone(),
                            vm.name.clone(),
                            vm.running.to_string(),
                            n.mac.to_string(),
                            n.network.clone().unwrap_or_else(|| "-".into()),
                            n.bridge.clone().unwrap_or_else(|| "-".into()),
                            filter,
                        ]);
                    }
                }
            }
            Ok(table(&t))
        }
        HypervisorCmd::Diagnose { providers, nodes, speaker, vips, virtual_mac, virtual_mac_group } => {
            let h = load(providers)?;
            let group = match speaker {
                Some(addr) => Some(members(*addr).await?),
                None => None,
            };
            let (nodes, macs) = match &group {
                Some(g) => (g.nodes(), g.macs()),
                None => (nodes.clone(), BTreeMap::new()),
            };
            let vips = match &group {
                Some(g) if vips.is_empty() => g.vips.clone(),
                _ => vips.clone(),
            };
            let vmacs = match &group {
                Some(g) if !g.virtual_macs.is_empty() => g.virtual_macs.clone(),
                _ if *virtual_mac => derived(&vips, *virtual_mac_group),
                _ => BTreeMap::new(),
            };
            // The VIPs themselves, then each VIP's virtual MAC.
            let mut needs = vec![Need::Announce { ips: vips.clone() }];
            needs.extend(vmacs.values().map(|mac| Need::VirtualMac { mac: *mac, ips: vec![] }));
            let mut findings: Vec<vipvisor_provider::Finding> = Vec::new();
            for need in &needs {
                for f in h.diagnose(&nodes, &macs, need).await? {
                    if !findings.contains(&f) {
                        findings.push(f);
                    }
                }
            }
            let out = if fmt == Format::Json {
                json(&findings)?
            } else if findings.is_empty() {
                format!("nothing blocks {} on {}\n", ips_text(&vips), nodes.join(", "))
            } else {
                findings
                    .iter()
                    .map(|f| {
                        format!(
                            "{}: {}: {} blocked by {}; now: {}; fix: {}\n",
                            cell(&format!("{:?}", f.severity).to_lowercase()),
                            cell(&f.nic.to_string()),
                            cell(&f.what),
                            cell(&f.setting),
                            cell(&f.current),
                            cell(&f.fix)
                        )
                    })
                    .collect()
            };
            if blocks(&findings) {
                return Err(Exit { out, code: EXIT_BLOCKED }.into());
            }
            Ok(out)
        }
        HypervisorCmd::Apply { providers, vips, nodes, speaker, virtual_mac, virtual_mac_group } => {
            let h = load(providers)?;
            if let Some(addr) = speaker {
                let g = members(*addr).await?;
                let vips = if vips.is_empty() { g.vips.clone() } else { vips.clone() };
                let store = store.await?;
                let r = h.apply(&store, &vips, &g.nodes(), &g.macs(), &g.virtual_macs).await;
                store.close().await;
                return results(r?, fmt);
            }
            if vips.is_empty() != nodes.is_empty() {
                anyhow::bail!("--vip and --node go together (or use --speaker, or neither for the store's allocations on the mapped nodes)");
            }
            let store = store.await?;
            let r = if vips.is_empty() {
                // Every allocation's addresses, on every mapped node (static mode: all of
                // them are candidates).
                let all: Vec<IpAddr> = match store.snapshot().await {
                    Ok(ipam) => ipam.allocations().iter().flat_map(|a| a.addresses.iter().copied()).collect(),
                    Err(e) => {
                        store.close().await;
                        return Err(anyhow::anyhow!(e.to_string()));
                    }
                };
                let mapped = h.mapped_nodes();
                if mapped.is_empty() {
                    store.close().await;
                    anyhow::bail!(
                        "{}: no `nodes:` mapping; expected nodes in the provider file, or --vip and --node",
                        providers.display()
                    );
                }
                let vmacs = if *virtual_mac { derived(&all, *virtual_mac_group) } else { BTreeMap::new() };
                h.apply(&store, &all, &mapped, &BTreeMap::new(), &vmacs).await
            } else {
                let vmacs = if *virtual_mac { derived(vips, *virtual_mac_group) } else { BTreeMap::new() };
                h.apply(&store, vips, nodes, &BTreeMap::new(), &vmacs).await
            };
            store.close().await;
            results(r?, fmt)
        }
        HypervisorCmd::Revert { providers, vip, node } => {
            let h = load(providers)?;
            let store = store.await?;
            let r = h.revert(&store, *vip, node.as_deref()).await;
            store.close().await;
            results(r?, fmt)
        }
    }
}

/// The derived virtual MACs of `vips` in `group` (the speakers' derivation).
fn derived(vips: &[IpAddr], group: u8) -> BTreeMap<IpAddr, Mac> {
    vips.iter().map(|v| (*v, Mac(vipvisor_l2::vmac::derive(*v, group).0))).collect()
}

fn ips_text(ips: &[IpAddr]) -> String {
    if ips.is_empty() {
        return "(no VIP)".into();
    }
    ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// One line per NIC; a failed NIC makes the command fail (after the others were done).
fn results(r: Vec<vipvisor_hypervisor::NicResult>, fmt: Format) -> anyhow::Result<String> {
    let failed: Vec<String> =
        r.iter().filter_map(|n| n.error.as_ref().map(|e| format!("{} {} {}: {e}", n.node, n.vm, n.mac))).collect();
    let out = if fmt == Format::Json {
        json(&r)?
    } else {
        let mut s = String::new();
        for n in &r {
            let what = if n.changed { "changed" } else { "unchanged" };
            s.push_str(&format!(
                "{} {} {} NIC {}: {} {} ({what})\n",
                n.state,
                cell(&n.node),
                cell(&n.vm),
                n.mac,
                if n.state == "revoked" { "took back" } else { "grants" },
                if n.vips.is_empty() && n.state == "applied" { "nothing new".into() } else { ips_text(&n.vips) }
            ));
            for f in &n.remaining {
                s.push_str(&format!("  still blocked: {}; fix: {}\n", cell(&f.what), cell(&f.fix)));
            }
        }
        if r.is_empty() {
            s.push_str("no grants\n");
        }
        s
    };
    if !failed.is_empty() {
        return Err(anyhow::anyhow!("{out}{} NIC(s) failed: {}", failed.len(), failed.join("; ")));
    }
    Ok(out)
}
