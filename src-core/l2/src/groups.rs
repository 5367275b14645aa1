//! Solicited-node multicast memberships: exactly those of the IPv6 VIPs this node answers
//! for, per interface. Groups of VIPs it no longer answers for are left, so memberships do
//! not grow with every VIP the node ever owned.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};

use crate::link::LinkInfo;
use crate::sys::Multicast;
use crate::wire::solicited_node;

/// A solicited-node group on an interface (by index).
pub type Membership = (Ipv6Addr, usize);

/// What to join and leave to go from `have` to the groups `want` needs: `(join, leave)`,
/// as `(group, interface)`. Several VIPs may share a group; a group is left only when no
/// wanted VIP needs it.
pub fn diff(have: &BTreeSet<Membership>, want: &[(IpAddr, usize)]) -> (Vec<Membership>, Vec<Membership>) {
    let need: BTreeSet<Membership> = want
        .iter()
        .filter_map(|(vip, i)| match vip {
            IpAddr::V6(v6) => Some((solicited_node(*v6), *i)),
            IpAddr::V4(_) => None,
        })
        .collect();
    (need.difference(have).copied().collect(), have.difference(&need).copied().collect())
}

/// The memberships of every interface.
#[derive(Debug)]
pub struct Groups {
    per_iface: Vec<Multicast>,
    names: Vec<String>,
    joined: BTreeSet<Membership>,
}

type JoinError = (IpAddr, String, std::io::Error);

impl Groups {
    pub fn new(links: &[LinkInfo]) -> Result<Groups, (String, std::io::Error)> {
        let per_iface =
            links.iter().map(|l| Multicast::new(l.index).map_err(|e| (l.name.clone(), e))).collect::<Result<_, _>>()?;
        Ok(Groups { per_iface, names: links.iter().map(|l| l.name.clone()).collect(), joined: BTreeSet::new() })
    }

    /// Joins the groups of `vips` (IPv6 VIP, interface index) and leaves the others.
    /// Stops at the first join that fails, naming its VIP.
    pub fn sync(&mut self, vips: &[(IpAddr, usize)]) -> Result<(), JoinError> {
        let (join, leave) = diff(&self.joined, vips);
        for (g, i) in leave {
            if let Some(m) = self.per_iface.get_mut(i) {
                let _ = m.leave(g);
            }
            self.joined.remove(&(g, i));
        }
        for (g, i) in join {
            let Some(m) = self.per_iface.get_mut(i) else { continue };
            if let Err(e) = m.join(g) {
                let vip =
                    vips.iter().find(|(v, vi)| *vi == i && matches!(v, IpAddr::V6(v6) if solicited_node(*v6) == g));
                let vip = vip.map_or(IpAddr::V6(g), |(v, _)| *v);
                return Err((vip, self.names.get(i).cloned().unwrap_or_default(), e));
            }
            self.joined.insert((g, i));
        }
        Ok(())
    }

    pub fn leave_all(&mut self) {
        let _ = self.sync(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn groups_follow_the_owned_vips() {
        let mut have = BTreeSet::new();
        let (join, leave) = diff(&have, &[(v("2001:db8::10"), 0), (v("192.0.2.10"), 0), (v("2001:db8::1:10"), 1)]);
        assert_eq!(join.len(), 2, "IPv4 VIPs need no group");
        assert!(leave.is_empty());
        have.extend(join);
        // ::10 and ::1:10 share their low 24 bits, so their solicited-node group, but are
        // on different interfaces; ::10 goes away.
        let (join, leave) = diff(&have, &[(v("2001:db8::1:10"), 1)]);
        assert!(join.is_empty());
        assert_eq!(
            leave,
            vec![(solicited_node("2001:db8::10".parse().unwrap()), 0)],
            "the group of a VIP given up is left"
        );
        // Two VIPs with one group on one interface: the group stays while either is owned.
        let have: BTreeSet<_> = [(solicited_node("2001:db8::10".parse().unwrap()), 0)].into();
        let (join, leave) = diff(&have, &[(v("2001:db8:1::10"), 0)]);
        assert!(join.is_empty() && leave.is_empty(), "the same group serves both VIPs");
    }
}
