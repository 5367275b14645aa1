//! vipvisor-provider: what every hypervisor provider implements, and its small vocabulary.
//!
//! A provider answers four questions about the VMs behind Kubernetes nodes:
//! [`Provider::inventory`] (which VMs, which NICs, which filters), [`Provider::diagnose`]
//! (will this NIC drop what a [`Need`] asks for, and why), [`Provider::ensure`] (grant
//! it, idempotently: no write when nothing changes) and [`Provider::revert`] (take back
//! exactly what a grant added, from the [`Record`] `ensure` returned).
//!
//! Owns: the trait, the vocabulary, typed errors and [`Secret`]. Must not: depend on
//! vipvisor's core (a provider knows nothing of pools, Services or the store), log or
//! print credentials.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An Ethernet MAC address, written `52:54:00:00:00:21`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = ProviderError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ProviderError::Invalid {
            what: "MAC address",
            value: s.chars().take(64).collect(),
            expected: "six hex bytes separated by ':' (52:54:00:00:00:21)".into(),
        };
        let parts: Vec<&str> = s.trim().split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(Mac(out))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A traffic filter on a NIC and its parameters (libvirt: a `filterref` and its
/// `parameter`s, in order; a name may repeat, as `IP` does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    pub name: String,
    pub params: Vec<(String, String)>,
}

impl Filter {
    /// The values of parameter `name`, in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.params.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One NIC of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub mac: Mac,
    /// The virtual network (libvirt `source/@network`), if it is on one.
    pub network: Option<String>,
    /// The port group on that network, if any.
    pub portgroup: Option<String>,
    /// The host bridge, when known (libvirt `source/@bridge`, or the live XML's).
    pub bridge: Option<String>,
    pub filter: Option<Filter>,
}

/// One VM and its NICs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub name: String,
    pub running: bool,
    /// The host it runs on, when the provider knows it.
    pub host: Option<String>,
    pub nics: Vec<Nic>,
}

/// A NIC, by its VM and MAC.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NicRef {
    pub vm: String,
    pub mac: Mac,
}

impl fmt::Display for NicRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} NIC {}", self.vm, self.mac)
    }
}

/// What the node behind a NIC must be allowed to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Need {
    /// Answer ARP/NDP for these IPs (and send from them) with the NIC's own MAC.
    Announce { ips: Vec<IpAddr> },
    /// Send and receive for a virtual MAC, which answers for these IPs.
    VirtualMac { mac: Mac, ips: Vec<IpAddr> },
}

impl Need {
    pub fn ips(&self) -> &[IpAddr] {
        match self {
            Need::Announce { ips } | Need::VirtualMac { ips, .. } => ips,
        }
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    /// The need's traffic is dropped until this is fixed.
    Blocking,
}

/// One answer of [`Provider::diagnose`]: what blocks, the exact setting and its current
/// value, and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub severity: Severity,
    pub nic: NicRef,
    /// What is dropped or at risk ("ARP replies for 192.0.2.100").
    pub what: String,
    /// The setting, as the provider names it ("filterref clean-traffic, parameter IP").
    pub setting: String,
    pub current: String,
    pub fix: String,
}

/// A grant to make: a NIC and what its node needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub nic: NicRef,
    pub need: Need,
}

/// What `ensure` added, kept (in the store) so that `revert` takes back exactly that and
/// never what the operator had.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Values vipvisor added (libvirt: `IP`/`IPV6` parameter values).
    pub added: Vec<(String, String)>,
    /// The operator's filter, when vipvisor put its own in place.
    pub replaced_filter: Option<Filter>,
    /// IPs a call that failed may have granted after all (the hypervisor went away before
    /// it answered): if the NIC has them at the next call, vipvisor put them there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uncertain: Vec<IpAddr>,
    /// The virtual MAC granted for each VIP in virtual-MAC mode ([`Need::VirtualMac`]),
    /// kept by the caller so that a revert names the MAC to take back. Providers leave it
    /// as it is.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub virtual_macs: std::collections::BTreeMap<IpAddr, Mac>,
}

impl Record {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.replaced_filter.is_none()
            && self.uncertain.is_empty()
            && self.virtual_macs.is_empty()
    }
}

/// What an `ensure` or `revert` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Whether anything was written (a second `ensure` writes nothing).
    pub changed: bool,
    /// Everything vipvisor has added to the NIC after the call, to keep for `revert`.
    pub record: Record,
    /// Findings that remain after the call (e.g. IPv6 still blocked because the provider
    /// configuration does not allow swapping the filter).
    pub remaining: Vec<Finding>,
}

/// A credential (password, token, key). `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for the one call that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What went wrong, naming the value and what was expected. Never quotes a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("provider {provider}: cannot reach {target}: {reason}")]
    Unreachable { provider: String, target: String, reason: String },
    #[error("provider {provider}: no VM named {vm:?}")]
    UnknownVm { provider: String, vm: String },
    #[error("provider {provider}: VM {vm:?} has no NIC with MAC {mac}; its NICs: {nics}")]
    UnknownNic { provider: String, vm: String, mac: Mac, nics: String },
    #[error("invalid {what} {value:?}; expected {expected}")]
    Invalid { what: &'static str, value: String, expected: String },
    /// The hypervisor refused or failed a call; nothing was changed.
    #[error("provider {provider}: {call} failed for {target}: {reason}; nothing was changed")]
    Call { provider: String, call: &'static str, target: String, reason: String },
    /// The connection went away during a write: the change may or may not have been made.
    /// `attempted` are the addresses the write would have added (the caller records them
    /// as [`Record::uncertain`], settled at the next call).
    #[error("provider {provider}: {call} for {target} got no answer ({reason}); the change may have been made, and is checked at the next call")]
    Lost { provider: String, call: &'static str, target: String, reason: String, attempted: Vec<IpAddr> },
    /// The hypervisor answered with something this provider cannot read.
    #[error("provider {provider}: unexpected answer for {target}: {reason}")]
    Answer { provider: String, target: String, reason: String },
    #[error("provider {provider}: {reason}")]
    Unsupported { provider: String, reason: String },
}

/// A hypervisor provider. Calls may block on the hypervisor: implementations keep them
/// off the async runtime's worker threads.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// The provider's name in the provider file.
    fn name(&self) -> &str;
    /// Every VM with its NICs.
    async fn inventory(&self) -> Result<Vec<Vm>, ProviderError>;
    /// Whether the NIC lets the need's traffic through, and if not, why and how to fix it.
    async fn diagnose(&self, nic: &NicRef, need: &Need) -> Result<Vec<Finding>, ProviderError>;
    /// Grants the need on the NIC (idempotent: no write when nothing changes). `record` is
    /// what earlier grants on this NIC added, so they are kept.
    async fn ensure(&self, grant: &Grant, record: &Record) -> Result<Outcome, ProviderError>;
    /// Takes back exactly what `record` says vipvisor added to the NIC for `grant`.
    async fn revert(&self, grant: &Grant, record: &Record) -> Result<Outcome, ProviderError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_print_and_refuse_bad_text() {
        let m: Mac = "52:54:00:AB:cd:21".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:21");
        for bad in ["", "52:54:00:00:00", "52:54:00:00:00:2g", "525400000021", "52:54:00:00:00:021"] {
            let e = bad.parse::<Mac>().unwrap_err().to_string();
            assert!(e.contains("MAC address") && e.contains("six hex bytes"), "{bad:?}: {e}");
        }
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"52:54:00:ab:cd:21\"");
    }

    #[test]
    fn secrets_are_never_shown() {
        let s = Secret::new("hunter2-token");
        assert_eq!(format!("{s} {s:?}"), "<redacted> Secret(<redacted>)");
        assert_eq!(s.expose(), "hunter2-token");
    }

    #[test]
    fn needs_serialise_with_their_kind() {
        let n = Need::Announce { ips: vec!["192.0.2.100".parse().unwrap()] };
        assert_eq!(serde_json::to_value(&n).unwrap(), serde_json::json!({"kind": "announce", "ips": ["192.0.2.100"]}));
        assert_eq!(n.ips().len(), 1);
    }
}
