//! vipvisor-libvirt: the libvirt provider. A guest NIC under libvirt's standard nwfilters
//! (`clean-traffic`, `no-ip-spoofing`, `no-arp-spoofing`) drops ARP for every address not
//! in its `IP` parameter list; this provider reads NICs and filters from the domain XML,
//! says what blocks a need ([`grant::diagnose`]), and grants a VIP by adding it to that
//! list with one device update per NIC, taking back exactly what it added.
//!
//! Owns: libvirt's XML ([`xml`]), the filter rules ([`grant`]) and, with feature `virt`,
//! the connection ([`provider::Libvirt`]). Must not: know vipvisor's core.

pub mod grant;
#[cfg(feature = "virt")]
pub mod provider;
pub mod xml;

#[cfg(feature = "virt")]
pub use provider::{Libvirt, LibvirtConfig};
