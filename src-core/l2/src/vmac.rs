//! Virtual-MAC mode: each VIP has its own MAC, which moves with ownership, so clients'
//! neighbour caches never change on a failover; only the switch learns a new port.
//!
//! - [`derive`]: the VIP's stable virtual MAC (documented in docs/design.md);
//! - [`Devices`]: on the owner, one macvlan per VIP that carries the virtual MAC (without
//!   the VIP address: the VIP is never added to any interface), so the kernel receives
//!   what clients send to that MAC. Created at takeover, deleted on loss; a dead speaker's
//!   devices are deleted at the next start ([`Devices::clean`]).
//!
//! Devices are configured over rtnetlink only (CAP_NET_ADMIN, no writable /proc/sys):
//! `rp_filter` 0 (the device has no address, so any reverse-path check drops its
//! traffic), `arp_ignore` 1 (the kernel never answers ARP from it), IPv6 address
//! generation off (no link-local address, so nothing is sent from the MAC but what the
//! speaker sends).

use std::collections::HashMap;
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{
    AfSpecInet, AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoKind, LinkAttribute, LinkInfo, LinkMessage, MacVlanMode,
};
use rtnetlink::{LinkMacVlan, LinkUnspec};

use super::wire::Mac;

/// Every device vipvisor creates is named this, then the 12 hex digits of its MAC.
pub const PREFIX: &str = "vvm";

/// The virtual MAC of `vip` in group `group` (0–255): locally administered unicast, in
/// the administratively assigned (AAI) quadrant of IEEE 802c (second hex digit 2).
/// - IPv4 `a.b.c.d`: `42:GG:aa:bb:cc:dd` (one-to-one within a group);
/// - IPv6: `62:GG:` and the address's last 32 bits.
///
/// `GG` is the group id: two clusters on one segment with different ids never derive the
/// same MAC, even for IPv6 VIPs whose last 32 bits are equal.
pub fn derive(vip: IpAddr, group: u8) -> Mac {
    match vip {
        IpAddr::V4(v) => {
            let o = v.octets();
            Mac([0x42, group, o[0], o[1], o[2], o[3]])
        }
        IpAddr::V6(v) => {
            let o = v.octets();
            Mac([0x62, group, o[12], o[13], o[14], o[15]])
        }
    }
}

/// Why a MAC cannot be a VIP's virtual MAC (`None`: it can).
pub fn unusable(mac: Mac) -> Option<&'static str> {
    if mac.0[0] & 1 != 0 {
        Some("it is a multicast (or broadcast) address")
    } else if mac == Mac::ZERO {
        Some("it is all zeros")
    } else if mac.0[0] & 2 == 0 {
        Some("it is a universally administered (vendor) address; expected a locally administered one (second hex digit 2, 6, a or e)")
    } else {
        None
    }
}

/// `Err` naming the MAC and the VIP when `mac` cannot be `vip`'s virtual MAC.
pub fn check(vip: IpAddr, mac: Mac) -> Result<(), String> {
    match unusable(mac) {
        Some(why) => Err(format!("invalid virtual MAC {mac} for {vip}: {why}")),
        None => Ok(()),
    }
}

/// Reads `VIP=MAC` (`--virtual-mac-for`, and each pair of the Kubernetes annotations),
/// with the MAC [`check`]ed; spaces around either side are allowed.
pub fn parse_pair(s: &str) -> Result<(IpAddr, Mac), String> {
    let (vip, mac) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid {s:?}; expected VIP=MAC such as 192.0.2.100=42:00:c0:00:02:64"))?;
    let vip: IpAddr =
        vip.trim().parse().map_err(|_| format!("invalid VIP {vip:?} in {s:?}; expected an IP address"))?;
    let mac: Mac = mac.trim().parse()?;
    check(vip, mac)?;
    Ok((vip, mac))
}

/// The VIPs' virtual MACs: derived, or given, and never two VIPs with one MAC.
pub fn plan(vips: &[IpAddr], group: u8, explicit: &HashMap<IpAddr, Mac>) -> Result<HashMap<IpAddr, Mac>, String> {
    let mut out = HashMap::new();
    let mut by_mac: HashMap<Mac, IpAddr> = HashMap::new();
    for vip in vips {
        let mac = explicit.get(vip).copied().unwrap_or_else(|| derive(*vip, group));
        check(*vip, mac)?;
        if let Some(other) = by_mac.insert(mac, *vip) {
            if other != *vip {
                return Err(format!(
                    "{other} and {vip} would both use the virtual MAC {mac}; expected one MAC per VIP (give one of them its own MAC)"
                ));
            }
        }
        out.insert(*vip, mac);
    }
    Ok(out)
}

/// The device name for `mac`.
pub fn device_name(mac: Mac) -> String {
    let b = mac.0;
    format!("{PREFIX}{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("cannot {what} the device {name} for the virtual MAC: {source}{hint}")]
    Netlink {
        what: &'static str,
        name: String,
        hint: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("net.ipv4.conf.all.rp_filter is {0}: the kernel would drop the IPv4 traffic of every virtual-MAC VIP (it arrives on a device without an address); expected 0 (the per-interface net.ipv4.conf.IFACE.rp_filter values still apply to the others)")]
    RpFilter(String),
}

fn hint(e: &rtnetlink::Error) -> &'static str {
    match e {
        rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EPERM => {
            "; virtual-MAC mode needs CAP_NET_ADMIN besides CAP_NET_RAW"
        }
        _ => "",
    }
}

/// Checks that the kernel will deliver IPv4 traffic arriving on an address-less device:
/// its reverse-path filter is the larger of `all` and the device's own value.
pub fn check_rp_filter() -> Result<(), DeviceError> {
    match std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter") {
        Ok(v) if v.trim() == "0" => Ok(()),
        Ok(v) => Err(DeviceError::RpFilter(v.trim().to_owned())),
        // No IPv4 in this kernel or no /proc: nothing to check.
        Err(_) => Ok(()),
    }
}

/// The macvlan devices that carry the virtual MACs of the VIPs this node owns.
#[derive(Debug, Clone)]
pub struct Devices {
    handle: rtnetlink::Handle,
}

fn name_of(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn is_macvlan(m: &LinkMessage) -> bool {
    m.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(i) => i.iter().any(|x| matches!(x, LinkInfo::Kind(InfoKind::MacVlan))),
        _ => false,
    })
}

impl Devices {
    /// A netlink connection, served by a task on the current tokio runtime.
    pub fn open() -> Result<Devices, DeviceError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(DeviceError::Socket)?;
        tokio::spawn(conn);
        Ok(Devices { handle })
    }

    fn err<'a>(what: &'static str, name: &'a str) -> impl FnOnce(rtnetlink::Error) -> DeviceError + 'a {
        move |source| DeviceError::Netlink { what, name: name.to_owned(), hint: hint(&source), source }
    }

    /// vipvisor's devices in this network namespace: (name, index).
    pub async fn list(&self) -> Result<Vec<(String, u32)>, DeviceError> {
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(m) = links.try_next().await.map_err(Self::err("list", "(all)"))? {
            if let Some(n) = name_of(&m) {
                if n.starts_with(PREFIX) && n.len() == PREFIX.len() + 12 && is_macvlan(&m) {
                    out.push((n.to_owned(), m.header.index));
                }
            }
        }
        Ok(out)
    }

    /// Deletes every vipvisor device (a previous speaker's, e.g. after SIGKILL). Returns
    /// how many.
    pub async fn clean(&self) -> Result<usize, DeviceError> {
        let found = self.list().await?;
        for (name, index) in &found {
            self.delete_index(name, *index).await?;
        }
        Ok(found.len())
    }

    async fn delete_index(&self, name: &str, index: u32) -> Result<(), DeviceError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            // Gone already.
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => Ok(()),
            Err(e) => Err(Self::err("delete", name)(e)),
        }
    }

    async fn index_of(&self, name: &str) -> Result<Option<LinkMessage>, DeviceError> {
        let mut links = self.handle.link().get().match_name(name.to_owned()).execute();
        match links.try_next().await {
            Ok(m) => Ok(m),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(Self::err("look up", name)(e)),
        }
    }

    /// Makes the device for `mac` on interface `lower` exist, configured and up, for
    /// `vip` (named in its alias). An existing device with that name is replaced.
    pub async fn ensure(&self, vip: IpAddr, mac: Mac, lower: u32) -> Result<String, DeviceError> {
        let name = device_name(mac);
        if let Some(old) = self.index_of(&name).await? {
            self.delete_index(&name, old.header.index).await?;
        }
        let msg = LinkMacVlan::new(&name, lower, MacVlanMode::Private)
            .address(mac.0.to_vec())
            .alias(format!("vipvisor virtual MAC of {vip}"))
            .build();
        self.handle.link().add(msg).execute().await.map_err(Self::err("create", &name))?;
        let made = self.index_of(&name).await?;
        let Some(made) = made else {
            return Err(DeviceError::Netlink {
                what: "find",
                name: name.clone(),
                hint: "",
                source: rtnetlink::Error::RequestFailed,
            });
        };
        let index = made.header.index;
        let mut spec = Vec::new();
        // The IPv4 settings are written whole: start from what the kernel gave the device.
        let conf = made.attributes.iter().find_map(|a| match a {
            LinkAttribute::AfSpecUnspec(s) => s.iter().find_map(|f| match f {
                AfSpecUnspec::Inet(i) => i.iter().find_map(|x| match x {
                    AfSpecInet::DevConf(c) => Some(*c),
                    _ => None,
                }),
                _ => None,
            }),
            _ => None,
        });
        if let Some(mut c) = conf {
            c.rp_filter = 0;
            c.arp_ignore = 1;
            c.arp_announce = 2;
            c.accept_redirects = 0;
            c.send_redirects = 0;
            spec.push(AfSpecUnspec::Inet(vec![AfSpecInet::DevConfRequest(c)]));
        }
        spec.push(AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)]));
        let set = LinkUnspec::new_with_index(index).append_extra_attribute(LinkAttribute::AfSpecUnspec(spec)).build();
        if let Err(e) = self.handle.link().set(set).execute().await {
            let _ = self.delete_index(&name, index).await;
            return Err(Self::err("configure", &name)(e));
        }
        if let Err(e) = self.handle.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await {
            let _ = self.delete_index(&name, index).await;
            return Err(Self::err("bring up", &name)(e));
        }
        Ok(name)
    }

    /// Deletes the device for `mac`, if there is one.
    pub async fn remove(&self, mac: Mac) -> Result<(), DeviceError> {
        let name = device_name(mac);
        match self.index_of(&name).await? {
            Some(m) => self.delete_index(&name, m.header.index).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_readable_local_unicast_and_keeps_groups_apart() {
        let v4: IpAddr = "192.0.2.100".parse().unwrap();
        assert_eq!(derive(v4, 0).to_string(), "42:00:c0:00:02:64");
        assert_eq!(derive(v4, 7).to_string(), "42:07:c0:00:02:64");
        let v6: IpAddr = "2001:db8::1:100".parse().unwrap();
        assert_eq!(derive(v6, 1).to_string(), "62:01:00:01:01:00");
        // Equal last 32 bits: one MAC in one group (refused by `plan`), two across groups.
        let w6: IpAddr = "2001:db8::2:0:1:100".parse().unwrap();
        assert_eq!(derive(v6, 1), derive(w6, 1));
        assert_ne!(derive(v6, 1), derive(w6, 2));
        for g in [0u8, 1, 255] {
            for vip in [v4, v6] {
                assert_eq!(unusable(derive(vip, g)), None, "{}", derive(vip, g));
            }
        }
        assert_eq!(device_name(derive(v4, 0)), "vvm4200c0000264");
        assert!(device_name(derive(v4, 0)).len() <= 15, "IFNAMSIZ");
    }

    #[test]
    fn plans_refuse_shared_and_unusable_macs() {
        let a: IpAddr = "2001:db8::1:100".parse().unwrap();
        let b: IpAddr = "2001:db8::2:0:1:100".parse().unwrap();
        let e = plan(&[a, b], 0, &HashMap::new()).unwrap_err();
        assert!(e.contains("2001:db8::1:100 and 2001:db8::2:0:1:100") && e.contains("62:00:00:01:01:00"), "{e}");
        let fix = HashMap::from([(b, "02:00:5e:aa:00:01".parse().unwrap())]);
        let p = plan(&[a, b], 0, &fix).unwrap();
        assert_eq!(p[&b].to_string(), "02:00:5e:aa:00:01");
        for (mac, why) in
            [("01:00:5e:00:00:01", "multicast"), ("00:00:00:00:00:00", "zeros"), ("00:50:56:00:00:01", "vendor")]
        {
            let e = plan(&[a], 0, &HashMap::from([(a, mac.parse().unwrap())])).unwrap_err();
            assert!(e.contains(mac) && e.contains(why), "{e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn ipv4_derivation_is_one_to_one(a: u32, b: u32, g: u8) {
            let (x, y) = (IpAddr::V4(a.into()), IpAddr::V4(b.into()));
            proptest::prop_assert_eq!(derive(x, g) == derive(y, g), a == b);
            proptest::prop_assert!(unusable(derive(x, g)).is_none());
        }
    }
}
