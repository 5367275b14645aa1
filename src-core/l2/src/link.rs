//! Facts about a network interface: index, MAC, and the subnets configured on it.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::wire::Mac;

/// One interface as the speaker needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    pub mac: Mac,
    pub subnets: Vec<IpNetwork>,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("no network interface named {name:?}; expected one of: {available}")]
    NoSuchInterface { name: String, available: String },
    #[error("interface {name:?} has no Ethernet MAC address; expected an Ethernet-like interface")]
    NotEthernet { name: String },
    #[error("cannot list network interfaces: {0}")]
    List(#[source] nix::Error),
}

impl LinkInfo {
    /// The first subnet of this interface that contains `ip`.
    pub fn subnet_of(&self, ip: &IpAddr) -> Option<&IpNetwork> {
        self.subnets.iter().find(|n| n.contains(*ip))
    }

    /// Why `vip` must not be announced on this interface: it is one of the interface's own
    /// addresses, or its IPv4 subnet's network or broadcast address (answering ARP for
    /// those hijacks the node or the subnet).
    pub fn unusable_vip(&self, vip: &IpAddr) -> Option<String> {
        for n in &self.subnets {
            if n.ip() == *vip {
                return Some(format!("it is this interface's own address ({n})"));
            }
            if let IpNetwork::V4(v4) = n {
                if v4.prefix() <= 30 && IpAddr::V4(v4.network()) == *vip {
                    return Some(format!("it is the network address of {}/{}", v4.network(), v4.prefix()));
                }
                if v4.prefix() <= 30 && IpAddr::V4(v4.broadcast()) == *vip {
                    return Some(format!("it is the broadcast address of {}/{}", v4.network(), v4.prefix()));
                }
            }
        }
        None
    }
}

fn prefix(mask: &IpAddr) -> u8 {
    let ones = match mask {
        IpAddr::V4(m) => u32::from(*m).count_ones(),
        IpAddr::V6(m) => u128::from(*m).count_ones(),
    };
    u8::try_from(ones).unwrap_or(0)
}

/// Looks up an interface by name.
pub fn lookup(name: &str) -> Result<LinkInfo, LinkError> {
    let addrs: Vec<_> = nix::ifaddrs::getifaddrs().map_err(LinkError::List)?.collect();
    let mut names: Vec<&str> = addrs.iter().map(|a| a.interface_name.as_str()).collect();
    names.sort();
    names.dedup();
    if !names.contains(&name) {
        return Err(LinkError::NoSuchInterface { name: name.to_owned(), available: names.join(", ") });
    }
    let index = nix::net::if_::if_nametoindex(name).map_err(LinkError::List)?;
    let mut mac = None;
    let mut subnets = Vec::new();
    for a in addrs.iter().filter(|a| a.interface_name == name) {
        let Some(addr) = &a.address else { continue };
        if let Some(link) = addr.as_link_addr() {
            mac = link.addr().map(Mac).filter(|m| *m != Mac::ZERO);
            continue;
        }
        let ip = addr
            .as_sockaddr_in()
            .map(|s| IpAddr::V4(s.ip()))
            .or_else(|| addr.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())));
        let mask = a.netmask.as_ref().and_then(|m| {
            m.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())).or_else(|| m.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        });
        if let (Some(ip), Some(mask)) = (ip, mask) {
            if let Ok(net) = IpNetwork::new(ip, prefix(&mask)) {
                subnets.push(net);
            }
        }
    }
    let mac = mac.ok_or_else(|| LinkError::NotEthernet { name: name.to_owned() })?;
    Ok(LinkInfo { name: name.to_owned(), index, mac, subnets })
}

/// Name prefixes of interfaces that are never a node's uplink: container veths, CNI
/// bridges and tunnels, Docker, kube-proxy's IPVS dummy.
const NOT_UPLINKS: [&str; 14] = [
    "lo",
    "veth",
    "cali",
    "cni",
    "flannel",
    "cilium",
    "docker",
    "kube-ipvs",
    "lxc",
    "tunl",
    "vxlan",
    "genev",
    "weave",
    "nodelocaldns",
];

/// Every interface that is up, has an Ethernet MAC and a global address, and is not a
/// container or tunnel interface (Kubernetes mode without `--interface`).
pub fn autodetect() -> Result<Vec<LinkInfo>, LinkError> {
    let addrs: Vec<_> = nix::ifaddrs::getifaddrs().map_err(LinkError::List)?.collect();
    let mut names: Vec<&str> = addrs
        .iter()
        .filter(|a| a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP))
        .map(|a| a.interface_name.as_str())
        .filter(|n| !NOT_UPLINKS.iter().any(|p| n.starts_with(p)))
        .collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for n in names {
        let Ok(l) = lookup(n) else { continue };
        let global = l.subnets.iter().any(|s| match s.ip() {
            IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local(),
            IpAddr::V6(a) => !a.is_loopback() && !a.is_unicast_link_local(),
        });
        if global {
            out.push(l);
        }
    }
    Ok(out)
}
