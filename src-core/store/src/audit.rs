//! Typed audit events: every change the store makes is one of these, recorded with its
//! time and actor. `kind` strings and detail shapes are stable (scripts and the UI read
//! them).

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::{json, Value};
use vipvisor_model::{AddressBlock, Allocation, Pool, PoolName, Port, ServiceKey, SharingKey, Timestamp, Uid};

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audit {
    AddressAllocated {
        allocation: Allocation,
    },
    AddressUpdated {
        allocation: Allocation,
        previous: Vec<IpAddr>,
    },
    AddressReleased {
        allocation: Allocation,
        quarantined_until: Option<Timestamp>,
    },
    /// Released because a configuration change left it outside every pool (`--force`).
    AddressForceReleased {
        allocation: Allocation,
        reason: String,
    },
    /// Kept, in another pool (a pool renamed or split).
    AddressRehomed {
        allocation: Allocation,
        from: PoolName,
    },
    PoolCreated(Pool),
    PoolUpdated(Pool),
    PoolRemoved(Pool),
    ReservationAdded {
        block: AddressBlock,
        note: String,
    },
    ReservationUpdated {
        block: AddressBlock,
        note: String,
    },
    ReservationRemoved {
        block: AddressBlock,
        note: String,
    },
    /// A hypervisor NIC now lets its node announce these VIPs.
    HypervisorGranted {
        provider: String,
        vm: String,
        mac: String,
        vips: Vec<IpAddr>,
    },
    /// vipvisor's additions to a hypervisor NIC were taken back (for these VIPs).
    HypervisorRevoked {
        provider: String,
        vm: String,
        mac: String,
        vips: Vec<IpAddr>,
    },
    TokenCreated {
        name: String,
        role: String,
    },
    /// A node became the elected owner of an address (`previous`: the owner before).
    OwnerChanged {
        address: IpAddr,
        node: String,
        interface: String,
        previous: Option<String>,
    },
    /// The owner stopped announcing an address, and nobody took over (yet).
    OwnerReleased {
        address: IpAddr,
        node: String,
    },
    TokenRevoked {
        name: String,
    },
}

fn allocation_detail(a: &Allocation) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("addresses".into(), json!(a.addresses));
    m.insert("pool".into(), json!(a.pool));
    m
}

fn sharing(a: &Allocation) -> (Option<&SharingKey>, &BTreeSet<Port>, Option<&Uid>) {
    (a.sharing_key.as_ref(), &a.ports, a.uid.as_ref())
}

impl Audit {
    pub fn kind(&self) -> &'static str {
        match self {
            Audit::AddressAllocated { .. } => "address.allocated",
            Audit::AddressUpdated { .. } => "address.updated",
            Audit::AddressReleased { .. } => "address.released",
            Audit::AddressForceReleased { .. } => "address.force_released",
            Audit::AddressRehomed { .. } => "address.rehomed",
            Audit::PoolCreated(_) => "pool.created",
            Audit::PoolUpdated(_) => "pool.updated",
            Audit::PoolRemoved(_) => "pool.removed",
            Audit::ReservationAdded { .. } => "reservation.added",
            Audit::ReservationUpdated { .. } => "reservation.updated",
            Audit::ReservationRemoved { .. } => "reservation.removed",
            Audit::HypervisorGranted { .. } => "hypervisor.granted",
            Audit::HypervisorRevoked { .. } => "hypervisor.revoked",
            Audit::TokenCreated { .. } => "token.created",
            Audit::TokenRevoked { .. } => "token.revoked",
            Audit::OwnerChanged { .. } => "owner.changed",
            Audit::OwnerReleased { .. } => "owner.released",
        }
    }

    /// What the change is about: a service (`namespace/name`), a pool or a block.
    pub fn subject(&self) -> String {
        let svc = |s: &ServiceKey| s.to_string();
        match self {
            Audit::AddressAllocated { allocation }
            | Audit::AddressUpdated { allocation, .. }
            | Audit::AddressReleased { allocation, .. }
            | Audit::AddressForceReleased { allocation, .. }
            | Audit::AddressRehomed { allocation, .. } => svc(&allocation.service),
            Audit::PoolCreated(p) | Audit::PoolUpdated(p) | Audit::PoolRemoved(p) => p.name.to_string(),
            Audit::ReservationAdded { block, .. }
            | Audit::ReservationUpdated { block, .. }
            | Audit::ReservationRemoved { block, .. } => block.to_string(),
            Audit::HypervisorGranted { provider, vm, mac, .. } | Audit::HypervisorRevoked { provider, vm, mac, .. } => {
                format!("{provider}/{vm}/{mac}")
            }
            Audit::TokenCreated { name, .. } | Audit::TokenRevoked { name } => format!("token/{name}"),
            Audit::OwnerChanged { address, .. } | Audit::OwnerReleased { address, .. } => address.to_string(),
        }
    }

    pub fn detail(&self) -> Value {
        match self {
            Audit::AddressAllocated { allocation: a } | Audit::AddressUpdated { allocation: a, .. } => {
                let mut m = allocation_detail(a);
                let previous = match self {
                    Audit::AddressUpdated { previous, .. } => json!(previous),
                    _ => Value::Null,
                };
                let (key, ports, uid) = sharing(a);
                m.insert("previous".into(), previous);
                m.insert("sharing_key".into(), json!(key));
                m.insert("ports".into(), json!(ports));
                m.insert("uid".into(), json!(uid));
                Value::Object(m)
            }
            Audit::AddressReleased { allocation, quarantined_until } => {
                let mut m = allocation_detail(allocation);
                m.insert("quarantined_until".into(), json!(quarantined_until.map(Timestamp::rfc3339)));
                Value::Object(m)
            }
            Audit::AddressForceReleased { allocation, reason } => {
                let mut m = allocation_detail(allocation);
                m.insert("reason".into(), json!(reason));
                Value::Object(m)
            }
            Audit::AddressRehomed { allocation, from } => {
                let mut m = allocation_detail(allocation);
                m.insert("from".into(), json!(from));
                Value::Object(m)
            }
            Audit::PoolCreated(p) | Audit::PoolUpdated(p) | Audit::PoolRemoved(p) => json!(p),
            Audit::ReservationAdded { note, .. }
            | Audit::ReservationUpdated { note, .. }
            | Audit::ReservationRemoved { note, .. } => json!({ "note": note }),
            Audit::HypervisorGranted { vips, .. } | Audit::HypervisorRevoked { vips, .. } => json!({ "vips": vips }),
            Audit::TokenCreated { role, .. } => json!({ "role": role }),
            Audit::TokenRevoked { .. } => json!({}),
            Audit::OwnerChanged { node, interface, previous, .. } => {
                json!({ "node": node, "interface": interface, "previous": previous })
            }
            Audit::OwnerReleased { node, .. } => json!({ "node": node }),
        }
    }
}
