//! The provider over a libvirt connection (`qemu:///system`, `qemu+ssh://…`,
//! `qemu+tls://…`). libvirt calls are blocking FFI: each runs on tokio's blocking pool,
//! over a connection of its own.

use std::collections::BTreeMap;

use tracing::info;
use vipvisor_provider::{Finding, Grant, Need, NicRef, Outcome, Provider, ProviderError, Record, Vm};
use virt::connect::Connect;
use virt::domain::Domain as VirDomain;
use virt::sys;

use crate::grant;
use crate::xml::{self, XmlError};

/// How long one provider call (a connection and its libvirt calls) may take.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// One `kind: libvirt` entry of the provider file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtConfig {
    pub name: String,
    pub uri: String,
    /// May put vipvisor's filter in place of `clean-traffic` for IPv6 VIPs
    /// (`ipv6_filter: vipvisor`).
    pub ipv6_filter: bool,
}

/// The libvirt provider.
#[derive(Debug, Clone)]
pub struct Libvirt {
    cfg: LibvirtConfig,
    /// One call at a time: a call abandoned after [`CALL_TIMEOUT`] still holds it, so a
    /// late write can never land after a newer call's.
    serial: std::sync::Arc<std::sync::Mutex<()>>,
}

impl Libvirt {
    pub fn new(cfg: LibvirtConfig) -> Self {
        // libvirt prints every error on stderr unless told otherwise; ours are returned.
        virt::error::clear_error_callback();
        Libvirt { cfg, serial: Default::default() }
    }

    fn err_call(&self, call: &'static str, target: &str, e: virt::error::Error) -> ProviderError {
        ProviderError::Call { provider: self.cfg.name.clone(), call, target: target.to_owned(), reason: e.to_string() }
    }

    fn err_xml(&self, target: &str, e: XmlError) -> ProviderError {
        ProviderError::Answer { provider: self.cfg.name.clone(), target: target.to_owned(), reason: e.0 }
    }

    /// Runs `f` over a fresh connection on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Libvirt, &Connect) -> Result<T, ProviderError> + Send + 'static,
    ) -> Result<T, ProviderError> {
        let me = self.clone();
        let call = tokio::task::spawn_blocking(move || {
            let _one = me.serial.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut conn = Connect::open(Some(&me.cfg.uri)).map_err(|e| ProviderError::Unreachable {
                provider: me.cfg.name.clone(),
                target: me.cfg.uri.clone(),
                reason: e.to_string(),
            })?;
            let r = f(&me, &conn);
            let _ = conn.close();
            r
        });
        // A libvirtd that stops answering must not stall the caller's loop for ever (the
        // blocked thread is left to libvirt's own keepalive).
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(r) => r.map_err(|e| ProviderError::Unsupported {
                provider: self.cfg.name.clone(),
                reason: format!("libvirt call panicked: {e}"),
            })?,
            Err(_) => Err(ProviderError::Unreachable {
                provider: self.cfg.name.clone(),
                target: self.cfg.uri.clone(),
                reason: format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
            }),
        }
    }

    fn domain(&self, conn: &Connect, vm: &str) -> Result<VirDomain, ProviderError> {
        VirDomain::lookup_by_name(conn, vm)
            .map_err(|_| ProviderError::UnknownVm { provider: self.cfg.name.clone(), vm: vm.to_owned() })
    }

    fn inactive_xml(&self, dom: &VirDomain, vm: &str) -> Result<String, ProviderError> {
        dom.get_xml_desc(sys::VIR_DOMAIN_XML_INACTIVE).map_err(|e| self.err_call("virDomainGetXMLDesc", vm, e))
    }

    /// Every nwfilter's references, for following filter chains.
    fn filter_refs(&self, conn: &Connect) -> Result<BTreeMap<String, Vec<String>>, ProviderError> {
        let mut out = BTreeMap::new();
        let filters =
            conn.list_all_nw_filters(0).map_err(|e| self.err_call("virConnectListAllNWFilters", &self.cfg.uri, e))?;
        for f in filters {
            let x = f.get_xml_desc(0).map_err(|e| self.err_call("virNWFilterGetXMLDesc", &self.cfg.uri, e))?;
            let (name, refs) = xml::nwfilter_refs(&x).map_err(|e| self.err_xml("an nwfilter", e))?;
            out.insert(name, refs);
        }
        Ok(out)
    }

    /// The NIC `nic` in the domain's inactive XML.
    fn find_nic(&self, inactive: &str, nic: &NicRef) -> Result<xml::Interface, ProviderError> {
        let d = xml::parse_domain(inactive).map_err(|e| self.err_xml(&nic.vm, e))?;
        let nics = d.interfaces.iter().map(|i| i.nic.mac.to_string()).collect::<Vec<_>>().join(", ");
        d.interfaces.into_iter().find(|i| i.nic.mac == nic.mac).ok_or_else(|| ProviderError::UnknownNic {
            provider: self.cfg.name.clone(),
            vm: nic.vm.clone(),
            mac: nic.mac,
            nics: if nics.is_empty() { "(none)".into() } else { nics },
        })
    }

    /// Makes the NIC's filter `want` (name and parameters): one device update with the
    /// complete interface XML (LIVE|CONFIG on a running domain, CONFIG on a stopped one),
    /// then read back. Nothing is written when it already is.
    fn set_filter(
        &self,
        conn: &Connect,
        nic: &NicRef,
        want: &vipvisor_provider::Filter,
        attempted: &[std::net::IpAddr],
    ) -> Result<bool, ProviderError> {
        let dom = self.domain(conn, &nic.vm)?;
        let inactive = self.inactive_xml(&dom, &nic.vm)?;
        let cur = self.find_nic(&inactive, nic)?;
        if cur.nic.filter.as_ref() == Some(want) {
            return Ok(false);
        }
        if want.name == grant::VIPVISOR_V6
            && virt::nwfilter::NWFilter::lookup_by_name(conn, grant::VIPVISOR_V6).is_err()
        {
            virt::nwfilter::NWFilter::define_xml(conn, grant::VIPVISOR_V6_XML)
                .map_err(|e| self.err_call("virNWFilterDefineXML", grant::VIPVISOR_V6, e))?;
            info!(provider = %self.cfg.name, filter = grant::VIPVISOR_V6, "defined vipvisor's IPv6 filter");
        }
        let device = xml::interface_with_filter(&inactive, nic.mac, want).map_err(|e| self.err_xml(&nic.vm, e))?;
        let active = dom.is_active().map_err(|e| self.err_call("virDomainIsActive", &nic.vm, e))?;
        let flags = if active {
            sys::VIR_DOMAIN_AFFECT_LIVE | sys::VIR_DOMAIN_AFFECT_CONFIG
        } else {
            sys::VIR_DOMAIN_AFFECT_CONFIG
        };
        let target = nic.to_string();
        if let Err(e) = dom.update_device_flags(&device, flags) {
            // libvirtd answered with an error: nothing was changed. No answer at all (the
            // connection is gone): it may have been.
            if conn.is_alive().unwrap_or(false) {
                return Err(self.err_call("virDomainUpdateDeviceFlags", &target, e));
            }
            return Err(ProviderError::Lost {
                provider: self.cfg.name.clone(),
                call: "virDomainUpdateDeviceFlags",
                target,
                reason: e.to_string(),
                attempted: attempted.to_vec(),
            });
        }
        // libvirtd took the update: from here on it is made, or at least may be, so a
        // failed read-back leaves the addresses to be settled at the next call.
        let lost = |reason: String| ProviderError::Lost {
            provider: self.cfg.name.clone(),
            call: "virDomainGetXMLDesc (read-back)",
            target: target.clone(),
            reason,
            attempted: attempted.to_vec(),
        };
        let back =
            self.inactive_xml(&dom, &nic.vm).and_then(|x| self.find_nic(&x, nic)).map_err(|e| lost(e.to_string()))?;
        // libvirt writes parameters back grouped by name: compare in its order.
        let ordered = |f: &vipvisor_provider::Filter| {
            let mut f = f.clone();
            grant::libvirt_order(&mut f);
            f
        };
        if back.nic.filter.as_ref().map(ordered) != Some(ordered(want)) {
            return Err(lost(format!("the filter read back is {:?}, expected {want:?}", back.nic.filter)));
        }
        info!(provider = %self.cfg.name, nic = %nic, live = active, filter = %want.name, "updated the NIC's filter");
        Ok(true)
    }
}

#[async_trait::async_trait]
impl Provider for Libvirt {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    async fn inventory(&self) -> Result<Vec<Vm>, ProviderError> {
        self.with(|me, conn| {
            let doms = conn.list_all_domains(0).map_err(|e| me.err_call("virConnectListAllDomains", &me.cfg.uri, e))?;
            let mut vms = Vec::new();
            for dom in doms {
                let name = dom.get_name().map_err(|e| me.err_call("virDomainGetName", &me.cfg.uri, e))?;
                let running = dom.is_active().map_err(|e| me.err_call("virDomainIsActive", &name, e))?;
                let inactive = xml::parse_domain(&me.inactive_xml(&dom, &name)?).map_err(|e| me.err_xml(&name, e))?;
                // The live XML knows the bridge a network's NIC is on.
                let live = if running {
                    let x = dom.get_xml_desc(0).map_err(|e| me.err_call("virDomainGetXMLDesc", &name, e))?;
                    xml::parse_domain(&x).map_err(|e| me.err_xml(&name, e))?.interfaces
                } else {
                    Vec::new()
                };
                let nics = inactive
                    .interfaces
                    .into_iter()
                    .map(|mut i| {
                        if i.nic.bridge.is_none() {
                            i.nic.bridge =
                                live.iter().find(|l| l.nic.mac == i.nic.mac).and_then(|l| l.nic.bridge.clone());
                        }
                        i.nic
                    })
                    .collect();
                vms.push(Vm { name, running, host: None, nics });
            }
            vms.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(vms)
        })
        .await
    }

    async fn diagnose(&self, nic: &NicRef, need: &Need) -> Result<Vec<Finding>, ProviderError> {
        let (nic, need) = (nic.clone(), need.clone());
        self.with(move |me, conn| {
            let dom = me.domain(conn, &nic.vm)?;
            let cur = me.find_nic(&me.inactive_xml(&dom, &nic.vm)?, &nic)?;
            Ok(grant::diagnose(&nic, &cur.nic, &need, &me.filter_refs(conn)?))
        })
        .await
    }

    async fn ensure(&self, g: &Grant, record: &Record) -> Result<Outcome, ProviderError> {
        let (g, record) = (g.clone(), record.clone());
        self.with(move |me, conn| {
            let dom = me.domain(conn, &g.nic.vm)?;
            let cur = me.find_nic(&me.inactive_xml(&dom, &g.nic.vm)?, &g.nic)?;
            let Some(filter) = cur.nic.filter.clone() else {
                return Ok(Outcome { changed: false, record, remaining: Vec::new() });
            };
            let record = grant::settled(&filter, &record);
            let gr = grant::granted(&filter, &g.need, me.cfg.ipv6_filter, g.nic.mac);
            let attempted: Vec<std::net::IpAddr> = gr.added.iter().filter_map(|(_, v)| v.parse().ok()).collect();
            let changed = !gr.added.is_empty() && me.set_filter(conn, &g.nic, &gr.filter, &attempted)?;
            let mut record = record;
            record.added.extend(gr.added);
            if record.replaced_filter.is_none() {
                record.replaced_filter = gr.replaced;
            }
            let after = vipvisor_provider::Nic { filter: Some(gr.filter), ..cur.nic };
            // What still blocks is advice: failing to work it out must not turn a grant that
            // was made into an error.
            let remaining = match me.filter_refs(conn) {
                Ok(refs) => grant::diagnose(&g.nic, &after, &g.need, &refs),
                Err(e) => {
                    tracing::warn!(nic = %g.nic, error = %e, "granted, but cannot tell what still blocks");
                    Vec::new()
                }
            };
            Ok(Outcome { changed, record, remaining })
        })
        .await
    }

    async fn revert(&self, g: &Grant, record: &Record) -> Result<Outcome, ProviderError> {
        let (g, record) = (g.clone(), record.clone());
        self.with(move |me, conn| {
            let dom = me.domain(conn, &g.nic.vm)?;
            let cur = me.find_nic(&me.inactive_xml(&dom, &g.nic.vm)?, &g.nic)?;
            let Some(filter) = cur.nic.filter.clone() else {
                return Ok(Outcome { changed: false, record: Record::default(), remaining: Vec::new() });
            };
            let (back, left) = grant::reverted(&filter, &grant::settled(&filter, &record), &g.need, g.nic.mac);
            let changed = me.set_filter(conn, &g.nic, &back, &[])?;
            Ok(Outcome { changed, record: left, remaining: Vec::new() })
        })
        .await
    }
}
