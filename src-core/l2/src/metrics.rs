//! Speaker metrics (prometheus-client), all labelled by interface: requests received,
//! replies sent, gratuitous frames sent, probes sent, conflicts, and drops by reason.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::wire::Drop;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Proto {
    Arp,
    Ndp,
}

impl EncodeLabelValue for Proto {
    fn encode(&self, e: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        e.write_str(match self {
            Proto::Arp => "arp",
            Proto::Ndp => "ndp",
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IfProto {
    interface: String,
    protocol: Proto,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IfReason {
    interface: String,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IfOnly {
    interface: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VipOwner {
    vip: String,
    node: String,
}

/// Cheap to clone: every field shares its counters.
#[derive(Debug, Clone)]
pub struct Metrics {
    requests: Family<IfProto, Counter>,
    replies: Family<IfProto, Counter>,
    gratuitous: Family<IfProto, Counter>,
    probes: Family<IfProto, Counter>,
    conflicts: Family<IfProto, Counter>,
    drops: Family<IfReason, Counter>,
    announced: Family<IfOnly, Gauge>,
    members: Gauge,
    owners: Family<VipOwner, Gauge>,
    owner_changes: Counter,
    events_dropped: Counter,
    mac_collisions: Family<IfOnly, Counter>,
    devices: Gauge,
    device_errors: Counter,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("vipvisor_speaker");
        let requests = Family::<IfProto, Counter>::default();
        let replies = Family::<IfProto, Counter>::default();
        let gratuitous = Family::<IfProto, Counter>::default();
        let probes = Family::<IfProto, Counter>::default();
        let conflicts = Family::<IfProto, Counter>::default();
        let drops = Family::<IfReason, Counter>::default();
        let announced = Family::<IfOnly, Gauge>::default();
        r.register("requests_received", "ARP requests and neighbor solicitations received", requests.clone());
        r.register("replies_sent", "ARP replies and solicited neighbor advertisements sent", replies.clone());
        r.register("gratuitous_sent", "Gratuitous ARP and unsolicited NA frames sent", gratuitous.clone());
        r.register("probes_sent", "ARP probes and DAD-style solicitations sent", probes.clone());
        r.register("conflicts", "Other hosts seen using an announced or probed VIP", conflicts.clone());
        r.register("drops", "Received frames not answered, by reason", drops.clone());
        r.register("announced_vips", "VIPs currently announced", announced.clone());
        let members = Gauge::default();
        let owners = Family::<VipOwner, Gauge>::default();
        let owner_changes = Counter::default();
        r.register("group_members", "Live members of the speaker group, this one included", members.clone());
        r.register("vip_owner", "1 for the node that owns each VIP, as this speaker computes it", owners.clone());
        r.register("owner_changes", "VIP owner changes this speaker has computed", owner_changes.clone());
        let events_dropped = Counter::default();
        r.register(
            "events_dropped",
            "Engine events (conflicts, announcements) dropped because the runner's queue was full",
            events_dropped.clone(),
        );
        let mac_collisions = Family::<IfOnly, Counter>::default();
        r.register(
            "mac_collisions",
            "Frames from another host using one of the group's virtual MACs (virtual-MAC mode)",
            mac_collisions.clone(),
        );
        let devices = Gauge::default();
        r.register("virtual_mac_devices", "Devices carrying a virtual MAC on this node", devices.clone());
        let device_errors = Counter::default();
        r.register(
            "virtual_mac_device_errors",
            "Virtual-MAC devices that could not be created or deleted",
            device_errors.clone(),
        );
        Metrics {
            mac_collisions,
            devices,
            device_errors,
            requests,
            replies,
            gratuitous,
            probes,
            conflicts,
            drops,
            announced,
            members,
            owners,
            owner_changes,
            events_dropped,
            registry: Arc::new(r),
        }
    }

    fn ip(interface: &str, protocol: Proto) -> IfProto {
        IfProto { interface: interface.to_owned(), protocol }
    }

    pub fn request(&self, i: &str, p: Proto) {
        self.requests.get_or_create(&Self::ip(i, p)).inc();
    }
    pub fn reply(&self, i: &str, p: Proto) {
        self.replies.get_or_create(&Self::ip(i, p)).inc();
    }
    pub fn gratuitous(&self, i: &str, p: Proto, n: u64) {
        self.gratuitous.get_or_create(&Self::ip(i, p)).inc_by(n);
    }
    pub fn probe(&self, i: &str, p: Proto) {
        self.probes.get_or_create(&Self::ip(i, p)).inc();
    }
    pub fn conflict(&self, i: &str, p: Proto) {
        self.conflicts.get_or_create(&Self::ip(i, p)).inc();
    }
    pub fn drop(&self, i: &str, reason: Drop) {
        self.drops.get_or_create(&IfReason { interface: i.to_owned(), reason: reason.as_str().to_owned() }).inc();
    }
    pub fn set_announced(&self, i: &str, n: i64) {
        self.announced.get_or_create(&IfOnly { interface: i.to_owned() }).set(n);
    }

    pub fn events_dropped(&self) {
        self.events_dropped.inc();
    }
    pub fn mac_collision(&self, i: &str) {
        self.mac_collisions.get_or_create(&IfOnly { interface: i.to_owned() }).inc();
    }
    pub fn mac_collisions(&self, i: &str) -> u64 {
        self.mac_collisions.get_or_create(&IfOnly { interface: i.to_owned() }).get()
    }
    pub fn set_devices(&self, n: usize) {
        self.devices.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    pub fn device_error(&self) {
        self.device_errors.inc();
    }
    pub fn set_members(&self, n: usize) {
        self.members.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    /// Records that `vip` moved from `before` to `after` (either may be none).
    pub fn owner_changed(&self, vip: &std::net::IpAddr, before: Option<&str>, after: Option<&str>) {
        if let Some(b) = before {
            self.owners.remove(&VipOwner { vip: vip.to_string(), node: b.to_owned() });
        }
        if let Some(a) = after {
            self.owners.get_or_create(&VipOwner { vip: vip.to_string(), node: a.to_owned() }).set(1);
        }
        self.owner_changes.inc();
    }

    pub fn drops(&self, i: &str, reason: Drop) -> u64 {
        self.drops.get_or_create(&IfReason { interface: i.to_owned(), reason: reason.as_str().to_owned() }).get()
    }
    pub fn gratuitous_count(&self, i: &str, p: Proto) -> u64 {
        self.gratuitous.get_or_create(&Self::ip(i, p)).get()
    }
    pub fn conflicts(&self, i: &str, p: Proto) -> u64 {
        self.conflicts.get_or_create(&Self::ip(i, p)).get()
    }
    pub fn replies(&self, i: &str, p: Proto) -> u64 {
        self.replies.get_or_create(&Self::ip(i, p)).get()
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }
}
