//! vipvisor-model: the validated domain types and the pools file. Strings become these at
//! the edge (CLI, YAML, JSON, store rows); everything downstream trusts them.
//!
//! Owns: addresses and blocks ([`AddressBlock`], [`AddressRange`], [`space::Space`]), names
//! and keys, [`Pool`] with its [`PoolOptions`] (declared once, here), requests and
//! allocations, [`config::Config`] and its YAML form. Must not: do I/O, read clocks in
//! decisions, or know about SQL, sockets or Kubernetes.

pub mod config;
pub mod space;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// Serde through the text form: `Display` out, `FromStr` in (so parsing validates).
macro_rules! serde_via_str {
    ($($t:ty),+) => {$(
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )+};
}
serde_via_str!(AddressBlock, ServiceKey, Port);

/// A value that failed validation: what was given, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}{}; expected {expected}", .reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
pub struct InvalidValue {
    pub what: &'static str,
    pub value: String,
    pub reason: Option<String>,
    pub expected: String,
}

impl InvalidValue {
    pub fn new(what: &'static str, value: impl Into<String>, expected: impl Into<String>) -> Self {
        Self { what, value: value.into(), reason: None, expected: expected.into() }
    }
    pub fn because(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// The limits on input sizes: every front end enforces them with a clear error (they are
/// documented in the README). Each is far above any real configuration and low enough
/// that the worst input stays cheap (benches/limits.rs).
pub mod limits {
    /// Address blocks in one pool.
    pub const BLOCKS_PER_POOL: usize = 1024;
    /// Pools in one configuration.
    pub const POOLS: usize = 100_000;
    /// Reservations in one configuration.
    pub const RESERVATIONS: usize = 100_000;
    /// Namespaces a pool names.
    pub const NAMESPACES_PER_POOL: usize = 1024;
    /// Labels in one selector or label set.
    pub const LABELS: usize = 64;
    /// Ports of one allocation request (a Service's ports).
    pub const PORTS_PER_REQUEST: usize = 1024;
    /// Bytes of a reservation's note.
    pub const NOTE_BYTES: usize = 1024;
    /// Bytes of the actor recorded in the audit log.
    pub const ACTOR_BYTES: usize = 256;
    /// Bytes of a pools file.
    pub const POOLS_FILE_BYTES: u64 = 16 << 20;
    /// Nesting depth of a pools file (flow collections).
    pub const NESTING: usize = 32;
}

/// Why `block` can never hold a VIP: it overlaps unspecified, loopback, link-local,
/// multicast, limited-broadcast or IPv4-mapped addresses. Such blocks are refused in pools
/// and reservations.
pub fn special_use(block: &AddressBlock) -> Option<&'static str> {
    let r = block.range();
    let v4 = |a: [u8; 4], len: u32| {
        let first = u128::from(u32::from(Ipv4Addr::from(a)));
        (Family::V4, first, first | ((1u128 << (32 - len)) - 1))
    };
    let v6 = |a: Ipv6Addr, len: u32| {
        let first = u128::from(a);
        (Family::V6, first, first | if len == 0 { u128::MAX } else { (1u128 << (128 - len)) - 1 })
    };
    let special = [
        (v4([0, 0, 0, 0], 8), "\"this network\" addresses (0.0.0.0/8, the unspecified address included)"),
        (v4([127, 0, 0, 0], 8), "loopback addresses (127.0.0.0/8)"),
        (v4([169, 254, 0, 0], 16), "link-local addresses (169.254.0.0/16)"),
        (v4([224, 0, 0, 0], 4), "multicast addresses (224.0.0.0/4)"),
        (v4([255, 255, 255, 255], 32), "the limited broadcast address (255.255.255.255)"),
        (v6(Ipv6Addr::UNSPECIFIED, 128), "the unspecified address (::)"),
        (v6(Ipv6Addr::LOCALHOST, 128), "the loopback address (::1)"),
        (v6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96), "IPv4-mapped addresses (::ffff:0:0/96)"),
        (v6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), "link-local addresses (fe80::/10)"),
        (v6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8), "multicast addresses (ff00::/8)"),
    ];
    special
        .iter()
        .find(|((f, a, b), _)| *f == r.family() && r.first_raw() <= *b && *a <= r.last_raw())
        .map(|(_, why)| *why)
}

/// The actor recorded in the audit log: 1 to [`limits::ACTOR_BYTES`] bytes, no control
/// characters.
pub fn check_actor(s: &str) -> Result<(), InvalidValue> {
    let shown = || s.chars().take(32).collect::<String>();
    if s.is_empty() || s.len() > limits::ACTOR_BYTES {
        return Err(InvalidValue::new("actor", shown(), format!("1 to {} bytes", limits::ACTOR_BYTES))
            .because(format!("it has {} bytes", s.len())));
    }
    if s.chars().any(char::is_control) {
        return Err(InvalidValue::new("actor", shown(), "no control characters"));
    }
    Ok(())
}

/// IPv6's subnet-router anycast address of the /64 around `ip` (interface id all zeros,
/// RFC 4291 2.6.1): every router on such a link answers it, so it is never handed out.
pub fn is_subnet_router_anycast(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if u128::from(*v6) & u128::from(u64::MAX) == 0)
}

/// IP address family.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Family {
    #[serde(rename = "ipv4")]
    V4,
    #[serde(rename = "ipv6")]
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// An address as an integer of its family (IPv4 in the low 32 bits).
pub fn ip_to_u128(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

/// The inverse of [`ip_to_u128`]. IPv4 values above `u32::MAX` are truncated, which
/// cannot happen for values derived from IPv4 addresses.
pub fn u128_to_ip(family: Family, v: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// An inclusive range of addresses of one family, `first <= last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddressRange {
    family: Family,
    first: u128,
    last: u128,
}

impl AddressRange {
    pub fn new(first: IpAddr, last: IpAddr) -> Result<Self, InvalidValue> {
        let shown = format!("{first}-{last}");
        if Family::of(&first) != Family::of(&last) {
            return Err(InvalidValue::new(
                "address range",
                shown,
                "both ends of the same family (IPv4-IPv4 or IPv6-IPv6)",
            ));
        }
        let (a, b) = (ip_to_u128(&first), ip_to_u128(&last));
        if a > b {
            return Err(InvalidValue::new(
                "address range",
                shown,
                format!("the start ({first}) to be lower than or equal to the end ({last})"),
            ));
        }
        Ok(Self { family: Family::of(&first), first: a, last: b })
    }
    pub fn from_raw(family: Family, first: u128, last: u128) -> Self {
        debug_assert!(first <= last);
        Self { family, first, last }
    }
    pub fn family(&self) -> Family {
        self.family
    }
    pub fn first(&self) -> IpAddr {
        u128_to_ip(self.family, self.first)
    }
    pub fn last(&self) -> IpAddr {
        u128_to_ip(self.family, self.last)
    }
    pub fn first_raw(&self) -> u128 {
        self.first
    }
    pub fn last_raw(&self) -> u128 {
        self.last
    }
    /// Number of addresses (saturates at `u128::MAX` for `::/0`).
    pub fn size(&self) -> u128 {
        (self.last - self.first).saturating_add(1)
    }
    pub fn contains(&self, ip: &IpAddr) -> bool {
        Family::of(ip) == self.family && (self.first..=self.last).contains(&ip_to_u128(ip))
    }
    pub fn overlaps(&self, other: &AddressRange) -> bool {
        self.family == other.family && self.first <= other.last && other.first <= self.last
    }
}

/// A block as an operator writes it: a CIDR, an inclusive range or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressBlock {
    Cidr(IpNetwork),
    Range(AddressRange),
    Single(IpAddr),
}

const BLOCK_EXPECTED: &str = "a CIDR such as 192.0.2.0/28 or 2001:db8::/120, an inclusive range such as 198.51.100.10-198.51.100.20, or a single address";

impl AddressBlock {
    pub fn range(&self) -> AddressRange {
        match self {
            AddressBlock::Cidr(n) => AddressRange::from_raw(
                Family::of(&n.ip()),
                ip_to_u128(&n.network()),
                ip_to_u128(&n.broadcast_or_last()),
            ),
            AddressBlock::Range(r) => *r,
            AddressBlock::Single(ip) => AddressRange::from_raw(Family::of(ip), ip_to_u128(ip), ip_to_u128(ip)),
        }
    }
    pub fn family(&self) -> Family {
        self.range().family()
    }
}

trait LastAddr {
    fn broadcast_or_last(&self) -> IpAddr;
}
impl LastAddr for IpNetwork {
    fn broadcast_or_last(&self) -> IpAddr {
        match self {
            IpNetwork::V4(n) => IpAddr::V4(n.broadcast()),
            IpNetwork::V6(n) => {
                let host_bits = 128 - u32::from(n.prefix());
                let mask = if host_bits == 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | mask))
            }
        }
    }
}

impl FromStr for AddressBlock {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let bad = || InvalidValue::new("address block", s, BLOCK_EXPECTED);
        let not_ip = |x: &str| bad().because(format!("{x:?} is not an IP address"));
        if t.is_empty() {
            return Err(bad());
        }
        if let Some((a, b)) = t.split_once('-') {
            let first: IpAddr = a.trim().parse().map_err(|_| not_ip(a.trim()))?;
            let last: IpAddr = b.trim().parse().map_err(|_| not_ip(b.trim()))?;
            let r = AddressRange::new(first, last).map_err(|e| InvalidValue::new("address block", s, e.expected))?;
            return Ok(AddressBlock::Range(r));
        }
        if t.contains('/') {
            let n: IpNetwork = t.parse().map_err(|e: ipnetwork::IpNetworkError| bad().because(e.to_string()))?;
            if n.ip() != n.network() {
                return Err(InvalidValue::new(
                    "address block",
                    s,
                    format!("a network address without host bits set, such as {}/{}", n.network(), n.prefix()),
                )
                .because("host bits are set"));
            }
            return Ok(AddressBlock::Cidr(n));
        }
        let ip: IpAddr = t.parse().map_err(|_| bad())?;
        Ok(AddressBlock::Single(ip))
    }
}

impl fmt::Display for AddressBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressBlock::Cidr(n) => write!(f, "{}/{}", n.network(), n.prefix()),
            AddressBlock::Range(r) => write!(f, "{}-{}", r.first(), r.last()),
            AddressBlock::Single(ip) => write!(f, "{ip}"),
        }
    }
}

macro_rules! string_newtype {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        /// Debug-prints as a quoted string, so error messages can use `{:?}`.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        serde_via_str!($name);
    };
}

/// A DNS-1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric, 1..=63.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

const LABEL_EXPECTED: &str = "1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit";

/// The unique name of a pool.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolName(String);
string_newtype!(PoolName);
impl FromStr for PoolName {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if is_dns_label(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidValue::new("pool name", s, LABEL_EXPECTED))
        }
    }
}

/// `namespace/name` of a Kubernetes Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    namespace: String,
    name: String,
}
impl ServiceKey {
    pub fn new(namespace: &str, name: &str) -> Result<Self, InvalidValue> {
        format!("{namespace}/{name}").parse()
    }
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    pub fn name(&self) -> &str {
        &self.name
    }
}
impl FromStr for ServiceKey {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = format!("NAMESPACE/NAME, each {LABEL_EXPECTED}");
        match s.split_once('/') {
            Some((ns, name)) if is_dns_label(ns) && is_dns_label(name) => {
                Ok(Self { namespace: ns.to_owned(), name: name.to_owned() })
            }
            _ => Err(InvalidValue::new("service", s, expected)),
        }
    }
}
impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Services with the same sharing key and disjoint ports may share one address.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharingKey(String);
string_newtype!(SharingKey);
impl FromStr for SharingKey {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.is_empty() && s.len() <= 253 && s.chars().all(|c| c.is_ascii_graphic()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidValue::new("sharing key", s, "1 to 253 printable ASCII characters without spaces"))
        }
    }
}

/// A Service's UID, recorded so that a stale release of a re-created Service can be refused.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uid(String);
string_newtype!(Uid);
impl FromStr for Uid {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidValue::new("uid", s, "1 to 128 letters, digits or '-'"))
        }
    }
}

/// Transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// A protocol + port pair, written `tcp/80`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    pub protocol: Protocol,
    pub number: u16,
}
impl FromStr for Port {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || InvalidValue::new("port", s, "PROTOCOL/NUMBER such as tcp/80, udp/53 or sctp/9899, number 1-65535");
        let (p, n) = s.split_once('/').ok_or_else(bad)?;
        let protocol = match p.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => return Err(bad()),
        };
        let number: u16 = n.parse().map_err(|_| bad())?;
        if number == 0 {
            return Err(bad());
        }
        Ok(Port { protocol, number })
    }
}
impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        };
        write!(f, "{p}/{}", self.number)
    }
}

/// Labels of a namespace or service, or an equality selector over them (`k=v,k2=v2`).
pub type Labels = BTreeMap<String, String>;

fn is_label_part(s: &str) -> bool {
    !s.is_empty() && s.len() <= 316 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

/// Parses `k=v[,k=v…]`. The empty string is the empty set.
pub fn parse_labels(s: &str) -> Result<Labels, InvalidValue> {
    let mut out = Labels::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((k, v)) if is_label_part(k) && (v.is_empty() || is_label_part(v)) => {
                if let Some(first) = out.insert(k.to_owned(), v.to_owned()) {
                    return Err(InvalidValue::new("labels", s, "each key at most once")
                        .because(format!("key {k:?} is given twice ({k}={first} and {part})")));
                }
                if out.len() > limits::LABELS {
                    return Err(InvalidValue::new("labels", s, format!("at most {} labels", limits::LABELS)));
                }
            }
            _ => return Err(InvalidValue::new("label", part, "KEY=VALUE with letters, digits, '-', '_', '.' or '/'")),
        }
    }
    Ok(out)
}

/// Validates labels that arrived as a map (YAML), with the same rules as [`parse_labels`].
/// (A YAML map with a key twice is refused by the YAML parser.)
pub fn check_labels(l: &Labels) -> Result<(), InvalidValue> {
    if l.len() > limits::LABELS {
        return Err(InvalidValue::new("labels", format!("{} labels", l.len()), format!("at most {}", limits::LABELS)));
    }
    for (k, v) in l {
        if !is_label_part(k) || !(v.is_empty() || is_label_part(v)) {
            return Err(InvalidValue::new(
                "label",
                format!("{k}={v}"),
                "KEY=VALUE with letters, digits, '-', '_', '.' or '/'",
            ));
        }
    }
    Ok(())
}

/// A JSON value in which a map with a key given twice is an error, at any depth (YAML and
/// JSON parsers keep the last, so `{team: a, team: b}` would silently be `{team: b}`).
struct Strict(serde_json::Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, MapAccess, SeqAccess, Visitor};
        use serde_json::Value;
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Strict;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_bool<E: Error>(self, v: bool) -> Result<Strict, E> {
                Ok(Strict(Value::Bool(v)))
            }
            fn visit_i64<E: Error>(self, v: i64) -> Result<Strict, E> {
                Ok(Strict(v.into()))
            }
            fn visit_u64<E: Error>(self, v: u64) -> Result<Strict, E> {
                Ok(Strict(v.into()))
            }
            fn visit_f64<E: Error>(self, v: f64) -> Result<Strict, E> {
                Ok(Strict(v.into()))
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<Strict, E> {
                Ok(Strict(Value::String(v.to_owned())))
            }
            fn visit_unit<E: Error>(self) -> Result<Strict, E> {
                Ok(Strict(Value::Null))
            }
            fn visit_none<E: Error>(self) -> Result<Strict, E> {
                Ok(Strict(Value::Null))
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Strict, D::Error> {
                Strict::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Strict, A::Error> {
                let mut out = Vec::new();
                while let Some(Strict(v)) = s.next_element()? {
                    out.push(v);
                }
                Ok(Strict(Value::Array(out)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Strict, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some((k, Strict(v))) = m.next_entry::<String, Strict>()? {
                    if out.contains_key(&k) {
                        return Err(A::Error::custom(format!("duplicate key {k:?}; expected each key at most once")));
                    }
                    out.insert(k, v);
                }
                Ok(Strict(Value::Object(out)))
            }
        }
        d.deserialize_any(V)
    }
}

/// True when every `k=v` of `selector` is in `labels`.
pub fn selector_matches(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Options of a pool besides its name and blocks: the one declaration of them. The pools
/// file, the JSON API and the store all use this shape (missing keys take the defaults).
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolOptions {
    /// Hand the pool's addresses out to services that name neither a pool nor an address.
    pub auto_assign: bool,
    /// Skip IPv4 addresses ending in .0 and .255.
    pub avoid_buggy_ips: bool,
    /// Namespaces allowed to use the pool (empty: all).
    pub namespaces: BTreeSet<String>,
    /// Namespace labels required to use the pool.
    pub namespace_selector: Labels,
    /// Service labels required to use the pool.
    pub service_selector: Labels,
    /// Lower numbers are tried first; pools without a priority come after all that have one.
    pub priority: Option<u32>,
    /// Which MAC answers for the pool's addresses on the LAN ([`MacMode`]).
    pub mac: MacMode,
}

/// Which MAC a pool's VIPs are announced with.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MacMode {
    /// The owner node's own MAC: clients and switches learn the new owner's MAC from its
    /// gratuitous ARP/NA at a failover.
    #[default]
    Node,
    /// Each VIP's own locally administered MAC, which moves with the VIP: clients' neighbour
    /// caches never change, only the switch learns the MAC on the new owner's port.
    Virtual,
}

impl MacMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MacMode::Node => "node",
            MacMode::Virtual => "virtual",
        }
    }
}

impl FromStr for MacMode {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "node" => Ok(MacMode::Node),
            "virtual" => Ok(MacMode::Virtual),
            _ => Err(InvalidValue::new("MAC mode", s, "node or virtual")),
        }
    }
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            auto_assign: true,
            avoid_buggy_ips: false,
            namespaces: BTreeSet::new(),
            namespace_selector: Labels::new(),
            service_selector: Labels::new(),
            priority: None,
            mac: MacMode::Node,
        }
    }
}

impl PoolOptions {
    /// Whether the pool limits who may use it (namespaces or selectors). MetalLB tries such
    /// pools before the ones that admit everyone.
    pub fn is_selective(&self) -> bool {
        !self.namespaces.is_empty() || !self.namespace_selector.is_empty() || !self.service_selector.is_empty()
    }
}

/// A pool of addresses: `{"name", "addresses", …options}` in YAML and JSON. Construct
/// through [`Pool::new`] (deserialising validates the same way).
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pool {
    #[cfg_attr(feature = "ts", ts(type = "string"))]
    pub name: PoolName,
    #[cfg_attr(feature = "ts", ts(type = "Array<string>"))]
    pub addresses: Vec<AddressBlock>,
    #[serde(flatten)]
    pub options: PoolOptions,
}

impl Pool {
    /// Validates a pool on its own: at least one block, no two blocks overlapping,
    /// at least one usable address, valid namespaces and selectors.
    pub fn new(name: PoolName, addresses: Vec<AddressBlock>, options: PoolOptions) -> Result<Self, InvalidValue> {
        if addresses.is_empty() {
            return Err(
                InvalidValue::new("pool", name.as_str(), "at least one address block").because("the pool is empty")
            );
        }
        let mut sorted: Vec<(AddressRange, &AddressBlock)> = addresses.iter().map(|b| (b.range(), b)).collect();
        sorted.sort_by_key(|(r, _)| (r.family(), r.first_raw()));
        for w in sorted.windows(2) {
            if w[0].0.overlaps(&w[1].0) {
                let (a, b) = if addresses.iter().position(|x| x == w[0].1) < addresses.iter().position(|x| x == w[1].1)
                {
                    (w[0].1, w[1].1)
                } else {
                    (w[1].1, w[0].1)
                };
                return Err(InvalidValue::new("pool", name.as_str(), "blocks that do not overlap")
                    .because(format!("{a} overlaps {b}")));
            }
        }
        for ns in &options.namespaces {
            if !is_dns_label(ns) {
                return Err(InvalidValue::new("namespace", ns.as_str(), LABEL_EXPECTED));
            }
        }
        check_labels(&options.namespace_selector)?;
        check_labels(&options.service_selector)?;
        let pool = Self { name, addresses, options };
        if pool.addresses.iter().all(|b| space::Space::of(&pool, b.family()).dense(&b.range()).is_none()) {
            return Err(InvalidValue::new(
                "pool",
                pool.name.as_str(),
                "at least one usable address (with avoid_buggy_ips, addresses ending in .0 and .255 are skipped)",
            )
            .because("the pool is empty"));
        }
        Ok(pool)
    }

    pub fn has_family(&self, f: Family) -> bool {
        self.addresses.iter().any(|b| b.family() == f)
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.addresses.iter().any(|b| b.range().contains(ip))
    }

    /// `(sorted key)`: pools with a priority first by that number, then the others, then by name.
    pub fn order_key(&self) -> (bool, u32, &PoolName) {
        (self.options.priority.is_none(), self.options.priority.unwrap_or(0), &self.name)
    }
}

impl<'de> Deserialize<'de> for Pool {
    /// `{"name", "addresses", …options}`; unknown keys are errors, and the pool is
    /// validated as [`Pool::new`] does.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let serde_json::Value::Object(mut m) = Strict::deserialize(d)?.0 else {
            return Err(D::Error::custom("expected a pool: a map with name, addresses and options"));
        };
        let name: PoolName = serde_json::from_value(m.remove("name").ok_or_else(|| D::Error::missing_field("name"))?)
            .map_err(D::Error::custom)?;
        let addresses: Vec<AddressBlock> =
            serde_json::from_value(m.remove("addresses").ok_or_else(|| D::Error::missing_field("addresses"))?)
                .map_err(|e| D::Error::custom(format!("pool {:?}: {e}", name.as_str())))?;
        let options: PoolOptions = serde_json::from_value(serde_json::Value::Object(m))
            .map_err(|e| D::Error::custom(format!("pool {:?}: {e}", name.as_str())))?;
        Pool::new(name, addresses, options).map_err(D::Error::custom)
    }
}

/// Addresses that are never handed out.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    #[cfg_attr(feature = "ts", ts(type = "string"))]
    #[schema(value_type = String)]
    pub block: AddressBlock,
    #[serde(default)]
    pub note: String,
}

/// Requested address families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FamilyRequest {
    Ipv4,
    Ipv6,
    /// One address of each family (`ipFamilyPolicy: RequireDualStack`).
    Dual,
    /// Both families where a pool has both, else one (`ipFamilyPolicy: PreferDualStack`).
    #[serde(rename = "prefer-dual")]
    PreferDual,
}

impl FamilyRequest {
    /// The families asked for; for `PreferDual`, the most it would take.
    pub fn families(self) -> &'static [Family] {
        match self {
            FamilyRequest::Ipv4 => &[Family::V4],
            FamilyRequest::Ipv6 => &[Family::V6],
            FamilyRequest::Dual | FamilyRequest::PreferDual => &[Family::V4, Family::V6],
        }
    }
}

impl FromStr for FamilyRequest {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ipv4" => Ok(Self::Ipv4),
            "ipv6" => Ok(Self::Ipv6),
            "dual" => Ok(Self::Dual),
            "prefer-dual" => Ok(Self::PreferDual),
            _ => Err(InvalidValue::new("family", s, "one of ipv4, ipv6, dual, prefer-dual")),
        }
    }
}

/// What a service asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocRequest {
    pub service: ServiceKey,
    pub uid: Option<Uid>,
    /// Specific addresses (at most one per family).
    pub addresses: Vec<IpAddr>,
    pub pool: Option<PoolName>,
    /// `None`: the families of `addresses`, or IPv4 when none are given.
    pub family: Option<FamilyRequest>,
    pub sharing_key: Option<SharingKey>,
    pub ports: BTreeSet<Port>,
    pub namespace_labels: Labels,
    pub service_labels: Labels,
}

impl AllocRequest {
    pub fn new(service: ServiceKey) -> Self {
        Self {
            service,
            uid: None,
            addresses: Vec::new(),
            pool: None,
            family: None,
            sharing_key: None,
            ports: BTreeSet::new(),
            namespace_labels: Labels::new(),
            service_labels: Labels::new(),
        }
    }

    /// The families this request needs, checked against the requested addresses.
    pub fn families(&self) -> Result<Vec<Family>, InvalidValue> {
        if self.ports.len() > limits::PORTS_PER_REQUEST {
            return Err(InvalidValue::new(
                "ports",
                format!("{} ports", self.ports.len()),
                format!("at most {} ports per service", limits::PORTS_PER_REQUEST),
            ));
        }
        let mut from_addrs: Vec<Family> = self.addresses.iter().map(Family::of).collect();
        from_addrs.sort();
        let shown = || self.addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        if from_addrs.windows(2).any(|w| w[0] == w[1]) || from_addrs.len() > 2 {
            return Err(InvalidValue::new("requested addresses", shown(), "at most one IPv4 and one IPv6 address"));
        }
        match self.family {
            None if from_addrs.is_empty() => Ok(vec![Family::V4]),
            None => Ok(from_addrs),
            // Whatever the addresses name; without addresses, the pool decides (ipam).
            Some(FamilyRequest::PreferDual) if !from_addrs.is_empty() => Ok(from_addrs),
            Some(f) => {
                let want = f.families().to_vec();
                if !from_addrs.is_empty() && from_addrs != want {
                    return Err(InvalidValue::new(
                        "requested addresses",
                        shown(),
                        format!("one address of each family asked for ({})", f.as_str()),
                    ));
                }
                Ok(want)
            }
        }
    }
}

impl FamilyRequest {
    pub fn as_str(self) -> &'static str {
        match self {
            FamilyRequest::Ipv4 => "ipv4",
            FamilyRequest::Ipv6 => "ipv6",
            FamilyRequest::Dual => "dual",
            FamilyRequest::PreferDual => "prefer-dual",
        }
    }
}

/// Milliseconds since the Unix epoch. Time is passed into decisions, never read by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
    /// The last instant RFC 3339 can write (9999-12-31T23:59:59.999Z): later times are
    /// shown as it, never a panic.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);
    pub fn plus(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }
    /// The time in RFC 3339, clamped to the years 1970..=9999 (a stored far-future time
    /// is shown as the end of year 9999).
    /// The time in RFC 3339 to the second (Kubernetes' `metav1.Time`), clamped likewise.
    pub fn rfc3339_seconds(self) -> String {
        let ms = u64::try_from(self.0.clamp(0, Timestamp::MAX.0)).unwrap_or(0);
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
    }
    pub fn rfc3339(self) -> String {
        let ms = u64::try_from(self.0.clamp(0, Timestamp::MAX.0)).unwrap_or(0);
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        humantime::format_rfc3339_millis(t).to_string()
    }
}

/// An address held by a service.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Allocation {
    #[cfg_attr(feature = "ts", ts(type = "string"))]
    #[schema(value_type = String)]
    pub service: ServiceKey,
    #[cfg_attr(feature = "ts", ts(type = "string | null"))]
    #[schema(value_type = Option<String>)]
    pub uid: Option<Uid>,
    #[cfg_attr(feature = "ts", ts(type = "string"))]
    #[schema(value_type = String)]
    pub pool: PoolName,
    #[schema(value_type = Vec<String>)]
    pub addresses: Vec<IpAddr>,
    #[cfg_attr(feature = "ts", ts(type = "string | null"))]
    #[schema(value_type = Option<String>)]
    pub sharing_key: Option<SharingKey>,
    #[cfg_attr(feature = "ts", ts(type = "Array<string>"))]
    #[schema(value_type = Vec<String>)]
    pub ports: BTreeSet<Port>,
}

/// A released address that only its last holder may take for a while.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quarantined {
    pub address: IpAddr,
    #[cfg_attr(feature = "ts", ts(type = "string"))]
    pub service: ServiceKey,
    /// Unix milliseconds.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub until: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_parse_and_print_canonically() {
        let cases = [
            ("192.0.2.0/28", "192.0.2.0/28", 16u128),
            ("2001:db8::/120", "2001:db8::/120", 256),
            ("198.51.100.10-198.51.100.20", "198.51.100.10-198.51.100.20", 11),
            (" 203.0.113.7 ", "203.0.113.7", 1),
            ("2001:db8::1 - 2001:db8::3", "2001:db8::1-2001:db8::3", 3),
        ];
        for (input, shown, size) in cases {
            let b: AddressBlock = input.parse().unwrap();
            assert_eq!(b.to_string(), shown, "{input} should print canonically");
            assert_eq!(b.range().size(), size, "{input} holds {size} addresses");
        }
    }

    #[test]
    fn bad_blocks_name_the_value_and_what_was_expected() {
        let cases = [
            ("192.0.2.5/28", "192.0.2.0/28"),
            ("192.0.2.0/33", "expected"),
            ("198.51.100.20-198.51.100.10", "lower than or equal"),
            ("192.0.2.1-2001:db8::1", "same family"),
            ("banana", "expected a CIDR"),
            ("", "expected a CIDR"),
            ("1.2.3.4-x", "\"x\" is not an IP address"),
            ("192.0.2.0/28/1", "expected a CIDR"),
        ];
        for (input, needle) in cases {
            let e = input.parse::<AddressBlock>().unwrap_err().to_string();
            assert!(e.contains(&format!("{input:?}")), "error {e:?} should quote the bad value {input:?}");
            assert!(e.contains(needle), "error {e:?} should say {needle:?}");
        }
    }

    #[test]
    fn names_keys_ports_and_labels_validate() {
        assert!("web-1".parse::<PoolName>().is_ok());
        assert!("Web".parse::<PoolName>().is_err(), "uppercase is not a DNS label");
        assert!("-x".parse::<PoolName>().is_err());
        assert_eq!("default/web".parse::<ServiceKey>().unwrap().namespace(), "default");
        assert!("web".parse::<ServiceKey>().is_err(), "a key needs a namespace");
        assert!("a/b/c".parse::<ServiceKey>().is_err());
        assert_eq!("TCP/80".parse::<Port>().unwrap().to_string(), "tcp/80");
        assert!("tcp/0".parse::<Port>().is_err());
        assert!("icmp/1".parse::<Port>().is_err());
        assert!("tcp/65536".parse::<Port>().is_err());
        assert_eq!(parse_labels("a=b, c=d").unwrap().len(), 2);
        assert!(parse_labels("a").is_err(), "a selector term needs '='");
    }

    #[test]
    fn pool_validation() {
        let name: PoolName = "p".parse().unwrap();
        let b = |s: &str| s.parse::<AddressBlock>().unwrap();
        assert!(Pool::new(name.clone(), vec![], PoolOptions::default())
            .unwrap_err()
            .to_string()
            .contains("at least one address block"));
        let e = Pool::new(name.clone(), vec![b("192.0.2.0/28"), b("192.0.2.8-192.0.2.20")], PoolOptions::default())
            .unwrap_err();
        assert!(e.to_string().contains("192.0.2.0/28 overlaps 192.0.2.8-192.0.2.20"), "{e}");
        let buggy_only = PoolOptions { avoid_buggy_ips: true, ..PoolOptions::default() };
        assert!(
            Pool::new(name.clone(), vec![b("192.0.2.255-192.0.3.0")], buggy_only.clone()).is_err(),
            ".255 and .0 only leave nothing to hand out"
        );
        assert!(Pool::new(name, vec![b("192.0.2.0/24"), b("2001:db8::/120")], buggy_only).is_ok());
    }

    #[test]
    fn request_families() {
        let mut r = AllocRequest::new("a/b".parse().unwrap());
        assert_eq!(r.families().unwrap(), vec![Family::V4], "IPv4 is the default");
        r.addresses = vec!["2001:db8::1".parse().unwrap()];
        assert_eq!(r.families().unwrap(), vec![Family::V6]);
        r.family = Some(FamilyRequest::Dual);
        assert!(r.families().is_err(), "dual needs one address of each family");
        r.addresses.push("192.0.2.1".parse().unwrap());
        assert_eq!(r.families().unwrap(), vec![Family::V4, Family::V6]);
        r.addresses.push("192.0.2.2".parse().unwrap());
        assert!(r.families().is_err());
    }
}
