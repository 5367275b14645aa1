//! The frames a speaker reads and writes: Ethernet II + ARP (Ethernet/IPv4), and Ethernet II
//! + IPv6 + ICMPv6 Neighbor Solicitation/Advertisement with link-layer options.
//!
//! The codecs are smoltcp's `wire` module (zero-copy `Packet<T>` views with `new_checked`,
//! `Repr` values with `parse`/`emit`, open enums that keep unknown values, the ICMPv6
//! pseudo-header checksum). This module classifies a received frame into the few shapes a
//! speaker cares about, names a reason for everything else, and builds the frames it sends.
//! Nothing here panics on any input (see the proptest and the fuzz target).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv6Packet,
    Icmpv6Repr, IpProtocol, Ipv6Packet, Ipv6Repr, NdiscNeighborFlags, NdiscRepr, RawHardwareAddress,
};

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);
    pub const ZERO: Mac = Mac([0; 6]);
    /// A MAC one host can have: not multicast (broadcast included) and not all zeros.
    pub fn is_unicast(self) -> bool {
        self.0[0] & 1 == 0 && self != Mac::ZERO
    }
    fn eth(self) -> EthernetAddress {
        EthernetAddress(self.0)
    }
}

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

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.trim().split(':').collect();
        let bad = || format!("invalid MAC address {s:?}; expected six hex bytes such as 02:00:5e:10:00:01");
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut m = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            m[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(Mac(m))
    }
}

/// ARP operation, with unknown values kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOp {
    Request,
    Reply,
    Unknown(u16),
}

/// A received frame a speaker acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Arp {
        eth_src: Mac,
        op: ArpOp,
        sender_mac: Mac,
        sender_ip: Ipv4Addr,
        target_mac: Mac,
        target_ip: Ipv4Addr,
    },
    NeighborSolicit {
        eth_src: Mac,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        target: Ipv6Addr,
        source_lladdr: Option<Mac>,
    },
    NeighborAdvert {
        eth_src: Mac,
        src: Ipv6Addr,
        target: Ipv6Addr,
        solicited: bool,
        override_flag: bool,
        target_lladdr: Option<Mac>,
    },
}

/// Why a frame was not acted on. Every drop is counted under one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Drop {
    /// Too short, inconsistent lengths, or fields that do not parse.
    Malformed,
    /// Neither ARP nor ICMPv6 NS/NA (the socket filter should have dropped it).
    NotArpOrNdp,
    /// ARP for another hardware or protocol type than Ethernet/IPv4.
    UnsupportedArp,
    /// ICMPv6 checksum does not match.
    BadChecksum,
    /// NDP with a hop limit other than 255 (RFC 4861: may come from off-link).
    BadHopLimit,
    /// A frame this host sent.
    OwnFrame,
    /// An ARP reply, a gratuitous ARP request (an announcement) or unknown operation, or an
    /// NA: nothing to answer.
    NotARequest,
    /// A request for an address this speaker does not announce.
    NotForUs,
    /// A request for a VIP announced on another interface.
    WrongInterface,
    /// A request for a VIP still being probed (not owned yet).
    NotOwnedYet,
    /// A VLAN-tagged frame (802.1Q/802.1ad): the speaker answers untagged only, on the
    /// interface that carries the VLAN.
    Tagged,
    /// A sender (Ethernet source or ARP sender) MAC that is broadcast, multicast or all
    /// zeros: no host has it, so no answer can reach one.
    BadSenderMac,
    /// A Neighbor Solicitation from a multicast source address (RFC 4861 7.1.1).
    MulticastSource,
}

impl Drop {
    pub const ALL: [Drop; 13] = [
        Drop::Malformed,
        Drop::NotArpOrNdp,
        Drop::UnsupportedArp,
        Drop::BadChecksum,
        Drop::BadHopLimit,
        Drop::OwnFrame,
        Drop::NotARequest,
        Drop::NotForUs,
        Drop::WrongInterface,
        Drop::NotOwnedYet,
        Drop::Tagged,
        Drop::BadSenderMac,
        Drop::MulticastSource,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::NotArpOrNdp => "not_arp_or_ndp",
            Drop::UnsupportedArp => "unsupported_arp",
            Drop::BadChecksum => "bad_checksum",
            Drop::BadHopLimit => "bad_hop_limit",
            Drop::OwnFrame => "own_frame",
            Drop::NotARequest => "not_a_request",
            Drop::NotForUs => "not_for_us",
            Drop::WrongInterface => "wrong_interface",
            Drop::NotOwnedYet => "not_owned_yet",
            Drop::Tagged => "vlan_tagged",
            Drop::BadSenderMac => "bad_sender_mac",
            Drop::MulticastSource => "multicast_source",
        }
    }
}

/// Ethertypes of VLAN tags: frames the kernel left tagged, or whose tag the packet
/// socket put back ([`crate::sys`]).
pub const VLAN_8021Q: u16 = 0x8100;
pub const VLAN_8021AD: u16 = 0x88a8;

fn mac_of(raw: RawHardwareAddress) -> Option<Mac> {
    <[u8; 6]>::try_from(raw.as_bytes()).ok().map(Mac)
}

/// Classifies a received Ethernet frame.
pub fn parse(frame: &[u8]) -> Result<Incoming, Drop> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| Drop::Malformed)?;
    let eth_src = Mac(eth.src_addr().0);
    if !eth_src.is_unicast() {
        return Err(Drop::BadSenderMac);
    }
    match eth.ethertype() {
        EthernetProtocol::Unknown(VLAN_8021Q | VLAN_8021AD) => Err(Drop::Tagged),
        EthernetProtocol::Arp => {
            let pkt = ArpPacket::new_checked(eth.payload()).map_err(|_| Drop::Malformed)?;
            match ArpRepr::parse(&pkt) {
                Ok(ArpRepr::EthernetIpv4 { source_hardware_addr, .. }) if !Mac(source_hardware_addr.0).is_unicast() => {
                    Err(Drop::BadSenderMac)
                }
                Ok(ArpRepr::EthernetIpv4 {
                    operation,
                    source_hardware_addr,
                    source_protocol_addr,
                    target_hardware_addr,
                    target_protocol_addr,
                }) => Ok(Incoming::Arp {
                    eth_src,
                    op: match operation {
                        ArpOperation::Request => ArpOp::Request,
                        ArpOperation::Reply => ArpOp::Reply,
                        ArpOperation::Unknown(x) => ArpOp::Unknown(x),
                    },
                    sender_mac: Mac(source_hardware_addr.0),
                    sender_ip: source_protocol_addr,
                    target_mac: Mac(target_hardware_addr.0),
                    target_ip: target_protocol_addr,
                }),
                Ok(_) | Err(_) => Err(Drop::UnsupportedArp),
            }
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).map_err(|_| Drop::Malformed)?;
            let ip_repr = Ipv6Repr::parse(&ip).map_err(|_| Drop::Malformed)?;
            if ip_repr.next_header != IpProtocol::Icmpv6 {
                return Err(Drop::NotArpOrNdp);
            }
            let icmp = Icmpv6Packet::new_checked(ip.payload()).map_err(|_| Drop::Malformed)?;
            let msg = u8::from(icmp.msg_type());
            if msg != 135 && msg != 136 {
                return Err(Drop::NotArpOrNdp);
            }
            if msg == 135 && ip_repr.src_addr.is_multicast() {
                return Err(Drop::MulticastSource);
            }
            if !icmp.verify_checksum(&ip_repr.src_addr, &ip_repr.dst_addr) {
                return Err(Drop::BadChecksum);
            }
            if ip_repr.hop_limit != 255 {
                return Err(Drop::BadHopLimit);
            }
            let repr = Icmpv6Repr::parse(&ip_repr.src_addr, &ip_repr.dst_addr, &icmp, &ChecksumCapabilities::ignored())
                .map_err(|_| Drop::Malformed)?;
            match repr {
                Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit { target_addr, lladdr }) => {
                    Ok(Incoming::NeighborSolicit {
                        eth_src,
                        src: ip_repr.src_addr,
                        dst: ip_repr.dst_addr,
                        target: target_addr,
                        source_lladdr: lladdr.and_then(mac_of),
                    })
                }
                Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert { flags, target_addr, lladdr }) => {
                    Ok(Incoming::NeighborAdvert {
                        eth_src,
                        src: ip_repr.src_addr,
                        target: target_addr,
                        solicited: flags.contains(NdiscNeighborFlags::SOLICITED),
                        override_flag: flags.contains(NdiscNeighborFlags::OVERRIDE),
                        target_lladdr: lladdr.and_then(mac_of),
                    })
                }
                _ => Err(Drop::NotArpOrNdp),
            }
        }
        _ => Err(Drop::NotArpOrNdp),
    }
}

const ETH_HEADER: usize = 14;

fn ethernet(dst: Mac, src: Mac, ethertype: EthernetProtocol, payload_len: usize) -> (Vec<u8>, EthernetRepr) {
    let repr = EthernetRepr { src_addr: src.eth(), dst_addr: dst.eth(), ethertype };
    (vec![0u8; ETH_HEADER + payload_len], repr)
}

/// An ARP frame (Ethernet/IPv4).
pub fn arp(
    eth_dst: Mac,
    op: ArpOp,
    sender_mac: Mac,
    sender_ip: Ipv4Addr,
    target_mac: Mac,
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: match op {
            ArpOp::Request => ArpOperation::Request,
            ArpOp::Reply => ArpOperation::Reply,
            ArpOp::Unknown(x) => ArpOperation::Unknown(x),
        },
        source_hardware_addr: sender_mac.eth(),
        source_protocol_addr: sender_ip,
        target_hardware_addr: target_mac.eth(),
        target_protocol_addr: target_ip,
    };
    let (mut buf, eth) = ethernet(eth_dst, sender_mac, EthernetProtocol::Arp, repr.buffer_len());
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    repr.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    buf
}

/// The reply to an ARP request for `vip`: to the asker, from `mac`.
pub fn arp_reply(mac: Mac, vip: Ipv4Addr, asker_mac: Mac, asker_ip: Ipv4Addr) -> Vec<u8> {
    arp(asker_mac, ArpOp::Reply, mac, vip, asker_mac, asker_ip)
}

/// Gratuitous ARP request: who-has VIP tell VIP, broadcast.
pub fn garp_request(mac: Mac, vip: Ipv4Addr) -> Vec<u8> {
    arp(Mac::BROADCAST, ArpOp::Request, mac, vip, Mac::ZERO, vip)
}

/// Gratuitous ARP reply: VIP is-at MAC, broadcast.
pub fn garp_reply(mac: Mac, vip: Ipv4Addr) -> Vec<u8> {
    arp(Mac::BROADCAST, ArpOp::Reply, mac, vip, Mac::BROADCAST, vip)
}

/// RFC 5227 ARP probe: who-has VIP, sender IP 0.0.0.0.
pub fn arp_probe(mac: Mac, vip: Ipv4Addr) -> Vec<u8> {
    arp(Mac::BROADCAST, ArpOp::Request, mac, Ipv4Addr::UNSPECIFIED, Mac::ZERO, vip)
}

/// The solicited-node multicast address of `ip` (ff02::1:ffXX:XXXX).
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(o[13]), u16::from_be_bytes([o[14], o[15]]))
}

/// The Ethernet multicast address of an IPv6 multicast address (33:33 + low 32 bits).
pub fn multicast_mac(ip: Ipv6Addr) -> Mac {
    let o = ip.octets();
    Mac([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

fn ndisc(eth_dst: Mac, eth_src: Mac, src: Ipv6Addr, dst: Ipv6Addr, repr: NdiscRepr<'_>) -> Vec<u8> {
    let icmp = Icmpv6Repr::Ndisc(repr);
    let ip = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp.buffer_len(),
        hop_limit: 255,
    };
    let (mut buf, eth) = ethernet(eth_dst, eth_src, EthernetProtocol::Ipv6, ip.buffer_len() + icmp.buffer_len());
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    let mut ip_pkt = Ipv6Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut ip_pkt);
    let mut icmp_pkt = Icmpv6Packet::new_unchecked(ip_pkt.payload_mut());
    icmp.emit(&src, &dst, &mut icmp_pkt, &ChecksumCapabilities::default());
    buf
}

/// A Neighbor Advertisement for `vip` with our MAC as target link-layer address.
/// `to`: the asker (solicited; flags S+O) or `None` for all-nodes (unsolicited or an answer
/// to a DAD probe; flag O only).
pub fn neighbor_advert(mac: Mac, vip: Ipv6Addr, to: Option<(Ipv6Addr, Mac)>) -> Vec<u8> {
    let (dst, eth_dst, flags) = match to {
        Some((ip, m)) => (ip, m, NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE),
        None => (ALL_NODES, multicast_mac(ALL_NODES), NdiscNeighborFlags::OVERRIDE),
    };
    let repr = NdiscRepr::NeighborAdvert { flags, target_addr: vip, lladdr: Some(RawHardwareAddress::from(mac.eth())) };
    ndisc(eth_dst, mac, vip, dst, repr)
}

/// A DAD-style probe: NS from :: to the solicited-node group of `vip`, no link-layer option.
pub fn dad_probe(mac: Mac, vip: Ipv6Addr) -> Vec<u8> {
    let dst = solicited_node(vip);
    ndisc(
        multicast_mac(dst),
        mac,
        Ipv6Addr::UNSPECIFIED,
        dst,
        NdiscRepr::NeighborSolicit { target_addr: vip, lladdr: None },
    )
}

/// A Neighbor Solicitation (used by tests and tools).
pub fn neighbor_solicit(mac: Mac, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let dst = solicited_node(target);
    let lladdr = if src.is_unspecified() { None } else { Some(RawHardwareAddress::from(mac.eth())) };
    ndisc(multicast_mac(dst), mac, src, dst, NdiscRepr::NeighborSolicit { target_addr: target, lladdr })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    // Captured in a netns lab (client eth0 3a:1c:52:7e:90:01, 192.0.2.1, 2001:db8::1) with
    //   ip netns exec node tcpdump -i eth0 -xx -c 3 'arp or icmp6'
    // while the client ran `arping -c 1 -I eth0 192.0.2.100`, `ndisc6 -1 2001:db8::100 eth0`,
    // and its kernel did DAD for its link-local address.
    const ARPING_REQUEST: &str = "ffffffffffff 3a1c527e9001 0806 0001 0800 06 04 0001
        3a1c527e9001 c0000201 ffffffffffff c0000264";
    const NDISC6_SOLICIT: &str = "3333ff000100 3a1c527e9001 86dd 60047bc0 0020 3a ff
        fe80000000000000381c52fffe7e9001
        ff0200000000000000000001ff000100
        87 00 152d 00000000
        20010db8000000000000000000000100
        01 01 3a1c527e9001";
    /// The kernel's DAD probe, with an RFC 7527 nonce option (type 14) that we skip.
    const KERNEL_DAD: &str = "3333ff7e9001 3a1c527e9001 86dd 60000000 0020 3a ff
        00000000000000000000000000000000
        ff0200000000000000000001ff7e9001
        87 00 809d 00000000
        fe80000000000000381c52fffe7e9001
        0e01 7b3110b7b77c";
    /// A router solicitation from the kernel: ICMPv6, but not NS/NA.
    const KERNEL_RS: &str = "333300000002 3a1c527e9001 86dd 60000000 0010 3a ff
        fe80000000000000381c52fffe7e9001
        ff020000000000000000000000000002
        85 00 45f6 00000000 0101 3a1c527e9001";

    const CLIENT: Mac = Mac([0x3a, 0x1c, 0x52, 0x7e, 0x90, 0x01]);
    const NODE: Mac = Mac([0x02, 0x00, 0x5e, 0x00, 0x00, 0x11]);

    #[test]
    fn golden_arping_request_parses() {
        let got = parse(&hex(ARPING_REQUEST)).unwrap();
        assert_eq!(
            got,
            Incoming::Arp {
                eth_src: CLIENT,
                op: ArpOp::Request,
                sender_mac: CLIENT,
                sender_ip: "192.0.2.1".parse().unwrap(),
                target_mac: Mac::BROADCAST,
                target_ip: "192.0.2.100".parse().unwrap(),
            }
        );
    }

    #[test]
    fn golden_ndisc6_solicit_parses() {
        let got = parse(&hex(NDISC6_SOLICIT)).unwrap();
        let ll: Ipv6Addr = "fe80::381c:52ff:fe7e:9001".parse().unwrap();
        assert_eq!(
            got,
            Incoming::NeighborSolicit {
                eth_src: CLIENT,
                src: ll,
                dst: "ff02::1:ff00:100".parse().unwrap(),
                target: "2001:db8::100".parse().unwrap(),
                source_lladdr: Some(CLIENT),
            }
        );
        // Emitting the same solicitation gives the captured bytes, checksum included; only
        // the flow label (which the checksum does not cover) differs: we send 0.
        let ours = neighbor_solicit(CLIENT, ll, "2001:db8::100".parse().unwrap());
        let mut want = hex(NDISC6_SOLICIT);
        want[15..18].copy_from_slice(&[0, 0, 0]);
        assert_eq!(ours, want, "our NS emitter reproduces ndisc6's bytes");
    }

    #[test]
    fn golden_kernel_frames() {
        match parse(&hex(KERNEL_DAD)).unwrap() {
            Incoming::NeighborSolicit { src, target, source_lladdr, .. } => {
                assert!(src.is_unspecified(), "DAD comes from ::");
                assert_eq!(target, "fe80::381c:52ff:fe7e:9001".parse::<Ipv6Addr>().unwrap());
                assert_eq!(source_lladdr, None, "the nonce option is skipped, not mistaken for an address");
            }
            other => panic!("expected an NS, got {other:?}"),
        }
        assert_eq!(parse(&hex(KERNEL_RS)), Err(Drop::NotArpOrNdp));
    }

    #[test]
    fn emitted_arp_reply_is_exact() {
        let reply = arp_reply(NODE, "192.0.2.100".parse().unwrap(), CLIENT, "192.0.2.1".parse().unwrap());
        let want = hex("3a1c527e9001 02005e000011 0806 0001 0800 06 04 0002
             02005e000011 c0000264 3a1c527e9001 c0000201");
        assert_eq!(reply, want, "an ARP reply: to the asker, VIP is-at our MAC");
        let probe = arp_probe(NODE, "192.0.2.100".parse().unwrap());
        assert_eq!(&probe[28..32], &[0, 0, 0, 0], "a probe's sender IP is 0.0.0.0 (RFC 5227)");
    }

    #[test]
    fn emitted_na_round_trips_with_flags_and_checksum() {
        let vip: Ipv6Addr = "2001:db8::100".parse().unwrap();
        let na = neighbor_advert(NODE, vip, Some(("2001:db8::1".parse().unwrap(), CLIENT)));
        assert_eq!(&na[0..6], &CLIENT.0, "a solicited NA goes to the asker's MAC");
        assert_eq!(na[21], 255, "hop limit 255");
        match parse(&na).unwrap() {
            Incoming::NeighborAdvert { eth_src, src, target, solicited, override_flag, target_lladdr } => {
                assert_eq!((eth_src, src, target), (NODE, vip, vip));
                assert!(solicited && override_flag, "solicited answers carry S and O");
                assert_eq!(target_lladdr, Some(NODE));
            }
            other => panic!("expected an NA, got {other:?}"),
        }
        let un = neighbor_advert(NODE, vip, None);
        assert_eq!(&un[0..6], &[0x33, 0x33, 0, 0, 0, 1], "unsolicited NA goes to all-nodes");
        assert!(matches!(parse(&un), Ok(Incoming::NeighborAdvert { solicited: false, override_flag: true, .. })));
        let mut bad = un.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert_eq!(parse(&bad), Err(Drop::BadChecksum));
        let dad = dad_probe(NODE, vip);
        assert!(
            matches!(parse(&dad), Ok(Incoming::NeighborSolicit { src, source_lladdr: None, .. }) if src.is_unspecified())
        );
    }

    #[test]
    fn emit_writes_every_byte() {
        // A frame built twice must not depend on buffer contents: emit fills every field.
        let a = garp_reply(NODE, "192.0.2.100".parse().unwrap());
        assert_eq!(a.len(), 42);
        assert!(matches!(parse(&a), Ok(Incoming::Arp { op: ArpOp::Reply, .. })));
        let b = garp_request(NODE, "192.0.2.100".parse().unwrap());
        assert!(
            matches!(parse(&b), Ok(Incoming::Arp { op: ArpOp::Request, sender_ip, target_ip, .. }) if sender_ip == target_ip)
        );
    }

    #[test]
    fn truncations_and_garbage_are_drops_not_panics() {
        for frame in [hex(ARPING_REQUEST), hex(NDISC6_SOLICIT)] {
            for cut in 0..frame.len() {
                let r = parse(&frame[..cut]);
                assert!(r.is_err(), "a frame cut at {cut} bytes must not parse: {r:?}");
            }
        }
        let mut odd = hex(ARPING_REQUEST);
        odd[14..16].copy_from_slice(&[0, 6]); // hardware type IEEE 802
        assert_eq!(parse(&odd), Err(Drop::UnsupportedArp));
        let mut unknown_op = hex(ARPING_REQUEST);
        unknown_op[20..22].copy_from_slice(&[0, 9]);
        assert!(matches!(parse(&unknown_op), Ok(Incoming::Arp { op: ArpOp::Unknown(9), .. })), "unknown ops are kept");
        assert_eq!(
            solicited_node("2001:db8::1:2345".parse().unwrap()),
            "ff02::1:ff01:2345".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn hostile_senders_and_vlan_tags_are_drops() {
        let arp = hex(ARPING_REQUEST);
        for (at, mac) in [(6, [0xff; 6]), (6, [0; 6]), (6, [1, 0, 0x5e, 0, 0, 1]), (22, [0xff; 6]), (22, [0; 6])] {
            let mut f = arp.clone();
            f[at..at + 6].copy_from_slice(&mac);
            assert_eq!(parse(&f), Err(Drop::BadSenderMac), "sender {mac:02x?} at byte {at}");
        }
        for tpid in [[0x81, 0], [0x88, 0xa8]] {
            let mut tagged = arp[..12].to_vec();
            tagged.extend_from_slice(&tpid);
            tagged.extend_from_slice(&[0, 7]);
            tagged.extend_from_slice(&arp[12..]);
            assert_eq!(parse(&tagged), Err(Drop::Tagged));
        }
        let mut ns = hex(NDISC6_SOLICIT);
        ns[22..38].copy_from_slice(&"ff02::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(parse(&ns), Err(Drop::MulticastSource));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// MACs a host can have (the parser drops the others).
        fn unicast() -> impl Strategy<Value = [u8; 6]> {
            any::<[u8; 6]>().prop_map(|mut b| {
                b[0] &= 0xfe;
                b[5] |= 1;
                b
            })
        }

        proptest! {
            #[test]
            fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = parse(&bytes);
            }

            #[test]
            fn mutated_real_frames_never_panic(i in 0usize..86, v in any::<u8>(), cut in 0usize..100) {
                for mut f in [hex(ARPING_REQUEST), hex(NDISC6_SOLICIT)] {
                    if i < f.len() { f[i] = v; }
                    f.truncate(cut.min(f.len()));
                    let _ = parse(&f);
                }
            }

            #[test]
            fn arp_round_trips(m in unicast(), a in any::<[u8; 6]>(), s in any::<u32>(), t in any::<u32>(), op in 0u16..4) {
                let op = match op { 1 => ArpOp::Request, 2 => ArpOp::Reply, x => ArpOp::Unknown(x) };
                let f = arp(Mac(a), op, Mac(m), Ipv4Addr::from(s), Mac(a), Ipv4Addr::from(t));
                prop_assert_eq!(parse(&f).unwrap(), Incoming::Arp {
                    eth_src: Mac(m), op, sender_mac: Mac(m), sender_ip: Ipv4Addr::from(s), target_mac: Mac(a), target_ip: Ipv4Addr::from(t)
                });
            }

            #[test]
            fn na_round_trips(m in unicast(), vip in any::<u128>(), to in any::<u128>(), solicited in any::<bool>()) {
                let (vip, to) = (Ipv6Addr::from(vip), Ipv6Addr::from(to));
                let f = neighbor_advert(Mac(m), vip, solicited.then_some((to, Mac::BROADCAST)));
                match parse(&f).unwrap() {
                    Incoming::NeighborAdvert { target, target_lladdr, solicited: s, .. } => {
                        prop_assert_eq!(target, vip);
                        prop_assert_eq!(target_lladdr, Some(Mac(m)));
                        prop_assert_eq!(s, solicited);
                    }
                    other => prop_assert!(false, "not an NA: {:?}", other),
                }
            }
        }
    }
}
