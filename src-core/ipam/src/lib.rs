//! vipvisor-ipam: pure address decisions: which address a service gets, given the state,
//! and what a new configuration does to the allocations ([`plan`]).
//!
//! Owns: the in-memory index and every allocation rule. Must not: touch SQL, clocks,
//! sockets or Kubernetes types (time is an argument).
//!
//! [`Ipam`] is an in-memory index of pools, reservations, allocations and quarantine.
//! It does no I/O and reads no clock (time is passed in). Every pool keeps, per family, a
//! set of free intervals ([`FreeSet`]), so picking a free address costs O(log n) in the
//! number of intervals, whatever the number of used addresses: no pool is ever scanned.
//! With `avoid_buggy_ips`, IPv4 addresses are indexed in a "dense" space that has no
//! `.0`/`.255` addresses at all ([`Space`]), so skipping them costs nothing either.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

pub use vipvisor_model::config::{check_config, Config, ConfigError};
pub use vipvisor_model::space::Space;
use vipvisor_model::{
    ip_to_u128, is_subnet_router_anycast, selector_matches, u128_to_ip, AddressBlock, AllocRequest, Allocation, Family,
    FamilyRequest, InvalidValue, Pool, PoolName, Port, Quarantined, Reservation, ServiceKey, SharingKey, Timestamp,
    Uid,
};

mod plan;
pub use plan::{plan, Action, Plan, PlanError, Rehomed};

/// Why an allocation, release or configuration change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error(transparent)]
    Invalid(#[from] InvalidValue),
    #[error("unknown pool {0:?}; expected the name of an existing pool")]
    UnknownPool(PoolName),
    #[error("no eligible pool for {service}: {}", reasons_text(.reasons))]
    NoEligiblePool { service: ServiceKey, reasons: Vec<(PoolName, String)> },
    #[error("pool exhausted: no free {} address for {service} in {}", families_text(.families), names_text(.pools))]
    Exhausted { service: ServiceKey, families: Vec<Family>, pools: Vec<PoolName> },
    #[error("requested address {address} is not in any pool; expected an address inside a pool")]
    NotInPool { address: IpAddr },
    #[error("requested address {address} is in pool {pool:?}, which {service} may not use: {reason}")]
    PoolNotEligible { service: ServiceKey, address: IpAddr, pool: PoolName, reason: String },
    #[error("requested addresses {first} and {second} are in different pools ({first_pool:?}, {second_pool:?}); expected both in one pool")]
    SplitPools { first: IpAddr, first_pool: PoolName, second: IpAddr, second_pool: PoolName },
    #[error("requested address {address} is reserved by {block} ({note:?})")]
    Reserved { address: IpAddr, block: AddressBlock, note: String },
    #[error("requested address {address} ends in .0 or .255 and pool {pool:?} avoids buggy IPs")]
    Buggy { address: IpAddr, pool: PoolName },
    #[error("requested address {address} is the subnet-router anycast address of its /64 (interface id all zeros), which the link's routers answer; expected another address")]
    SubnetRouterAnycast { address: IpAddr },
    #[error("address {address} is in use by {holder} ({}); expected a free address, or the same sharing key with other ports", key_text(.holder_key))]
    InUse { address: IpAddr, holder: ServiceKey, holder_key: Option<SharingKey> },
    #[error("port {port} on {address} is already used by {holder} (sharing key {key:?}); expected ports that do not overlap")]
    PortClash { address: IpAddr, port: Port, holder: ServiceKey, key: SharingKey },
    #[error("address {address} was released by {holder} and is quarantined until {}; only {holder} may take it before then", .until.rfc3339())]
    Quarantined { address: IpAddr, holder: ServiceKey, until: Timestamp },
    #[error("{service} is held by uid {held}, not {given}; the release was for another instance of the service")]
    UidMismatch { service: ServiceKey, held: Uid, given: Uid },
}

fn reasons_text(r: &[(PoolName, String)]) -> String {
    if r.is_empty() {
        return "there are no pools; expected at least one".into();
    }
    r.iter().map(|(p, why)| format!("{p}: {why}")).collect::<Vec<_>>().join("; ")
}
fn families_text(f: &[Family]) -> String {
    f.iter().map(ToString::to_string).collect::<Vec<_>>().join("+")
}
fn names_text(p: &[PoolName]) -> String {
    p.iter().map(|p| format!("{:?}", p.as_str())).collect::<Vec<_>>().join(", ")
}
fn key_text(k: &Option<SharingKey>) -> String {
    match k {
        Some(k) => format!("sharing key {:?}", k.as_str()),
        None => "not shared".into(),
    }
}

/// A set of integers kept as disjoint, non-adjacent inclusive intervals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FreeSet {
    map: BTreeMap<u128, u128>,
    count: u128,
}

impl FreeSet {
    pub fn len(&self) -> u128 {
        self.count
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    pub fn intervals(&self) -> usize {
        self.map.len()
    }
    pub fn first(&self) -> Option<u128> {
        self.map.keys().next().copied()
    }
    pub fn contains(&self, x: u128) -> bool {
        self.map.range(..=x).next_back().is_some_and(|(_, &e)| e >= x)
    }
    /// Adds `[s, e]`, merging with neighbours. Values already present are not counted twice.
    pub fn insert_range(&mut self, s: u128, e: u128) {
        self.remove_range(s, e);
        let (mut s, mut e) = (s, e);
        self.count = self.count.saturating_add((e - s).saturating_add(1));
        if s > 0 {
            if let Some((&ls, &le)) = self.map.range(..s).next_back() {
                if le == s - 1 {
                    self.map.remove(&ls);
                    s = ls;
                }
            }
        }
        if e < u128::MAX {
            if let Some(re) = self.map.remove(&(e + 1)) {
                e = re;
            }
        }
        self.map.insert(s, e);
    }
    pub fn insert(&mut self, x: u128) -> bool {
        if self.contains(x) {
            return false;
        }
        self.insert_range(x, x);
        true
    }
    /// Removes `[s, e]`; returns how many values were present.
    pub fn remove_range(&mut self, s: u128, e: u128) -> u128 {
        let mut hit: Vec<(u128, u128)> = Vec::new();
        if let Some((&a, &b)) = self.map.range(..s).next_back() {
            if b >= s {
                hit.push((a, b));
            }
        }
        hit.extend(self.map.range(s..=e).map(|(&a, &b)| (a, b)));
        let mut removed = 0u128;
        for (a, b) in hit {
            self.map.remove(&a);
            if a < s {
                self.map.insert(a, s - 1);
            }
            if b > e {
                self.map.insert(e + 1, b);
            }
            removed = removed.saturating_add((b.min(e) - a.max(s)).saturating_add(1));
        }
        self.count -= removed.min(self.count);
        removed
    }
    pub fn remove(&mut self, x: u128) -> bool {
        self.remove_range(x, x) > 0
    }
}

#[derive(Debug, Clone)]
struct FamilyState {
    space: Space,
    size: u128,
    free: FreeSet,
    used: u128,
    quarantined: u128,
}

impl FamilyState {
    /// The lowest free address, skipping IPv6 subnet-router anycast addresses (they are
    /// 2^64 apart, so the next one in the same interval is never one).
    fn first_usable(&self, f: Family) -> Option<IpAddr> {
        self.free.map.iter().find_map(|(&a, &b)| {
            let ip = u128_to_ip(f, self.space.from_dense(a));
            if !is_subnet_router_anycast(&ip) {
                Some(ip)
            } else {
                (a < b).then(|| u128_to_ip(f, self.space.from_dense(a + 1)))
            }
        })
    }
}

#[derive(Debug, Clone)]
struct PoolState {
    pool: Pool,
    v4: FamilyState,
    v6: FamilyState,
}

impl PoolState {
    fn fam(&self, f: Family) -> &FamilyState {
        match f {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }
    fn fam_mut(&mut self, f: Family) -> &mut FamilyState {
        match f {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }
}

#[derive(Debug, Clone)]
struct AddressUse {
    pool: PoolName,
    sharing_key: Option<SharingKey>,
    holders: BTreeSet<ServiceKey>,
    ports: BTreeMap<Port, ServiceKey>,
}

/// What [`Ipam::allocate`] did.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// The service already held a satisfying allocation.
    Unchanged,
    Created,
    /// The service's allocation changed (uid, ports, or new addresses).
    Updated,
}

/// The result of an allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub allocation: Allocation,
    pub change: Change,
    pub previous: Option<Allocation>,
    /// Addresses the service gave up by moving, now quarantined for it.
    pub quarantined: Vec<Quarantined>,
    /// Addresses the service gave up that no one holds any more (quarantined or free).
    pub freed: Vec<IpAddr>,
    /// Quarantined addresses the service took back.
    pub reclaimed: Vec<IpAddr>,
}

/// The result of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub allocation: Allocation,
    pub quarantined: Vec<Quarantined>,
    /// Addresses no one holds any more.
    pub freed: Vec<IpAddr>,
}

/// Counts of one family of one pool.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FamilyStats {
    pub family: Family,
    /// Usable addresses in the pool's blocks (without .0/.255 under avoid_buggy_ips).
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    #[schema(value_type = u64)]
    pub size: u128,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    #[schema(value_type = u64)]
    pub reserved: u128,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    #[schema(value_type = u64)]
    pub used: u128,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    #[schema(value_type = u64)]
    pub quarantined: u128,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    #[schema(value_type = u64)]
    pub free: u128,
}

/// Interval index over raw addresses → value.
type RangeMap<V> = BTreeMap<(Family, u128), (u128, V)>;

fn range_lookup<'a, V>(m: &'a RangeMap<V>, ip: &IpAddr) -> Option<&'a V> {
    let (f, v) = (Family::of(ip), ip_to_u128(ip));
    m.range(..=(f, v)).next_back().filter(|((fam, _), (end, _))| *fam == f && *end >= v).map(|(_, (_, val))| val)
}

/// The in-memory state and the decisions over it.
#[derive(Debug, Clone, Default)]
pub struct Ipam {
    pools: BTreeMap<PoolName, PoolState>,
    blocks: RangeMap<PoolName>,
    reserved: RangeMap<Reservation>,
    services: HashMap<ServiceKey, Allocation>,
    addresses: HashMap<IpAddr, AddressUse>,
    by_key: HashMap<SharingKey, BTreeSet<IpAddr>>,
    quarantine: HashMap<IpAddr, Quarantined>,
    quarantine_of: HashMap<ServiceKey, BTreeSet<IpAddr>>,
    expiry: BTreeSet<(Timestamp, IpAddr)>,
}

impl Ipam {
    /// Builds the index from a configuration that has passed [`check_config`].
    pub fn new(pools: Vec<Pool>, reservations: Vec<Reservation>) -> Self {
        let mut me = Ipam::default();
        for r in reservations {
            let range = r.block.range();
            me.reserved.insert((range.family(), range.first_raw()), (range.last_raw(), r));
        }
        for pool in pools {
            let mk = |f: Family| FamilyState {
                space: Space::of(&pool, f),
                size: 0,
                free: FreeSet::default(),
                used: 0,
                quarantined: 0,
            };
            let mut st = PoolState { v4: mk(Family::V4), v6: mk(Family::V6), pool: pool.clone() };
            for b in &pool.addresses {
                let r = b.range();
                me.blocks.insert((r.family(), r.first_raw()), (r.last_raw(), pool.name.clone()));
                let fs = st.fam_mut(r.family());
                if let Some((s, e)) = fs.space.dense(&r) {
                    fs.free.insert_range(s, e);
                    fs.size = fs.size.saturating_add((e - s).saturating_add(1));
                }
            }
            // Reservations are disjoint (checked), so those overlapping a block are the
            // ones starting at or before its end, back to the first that ends before it.
            for b in &pool.addresses {
                let r = b.range();
                let fs = st.fam_mut(r.family());
                for (_, (last, res)) in me.reserved.range(..=(r.family(), r.last_raw())).rev() {
                    let rr = res.block.range();
                    if rr.family() != r.family() || *last < r.first_raw() {
                        break;
                    }
                    if let Some((s, e)) = fs.space.dense(&rr) {
                        fs.free.remove_range(s, e);
                    }
                }
            }
            me.pools.insert(pool.name, st);
        }
        me
    }

    /// Loads an allocation from the store, as it was decided earlier.
    pub fn restore(&mut self, a: Allocation) {
        self.assign(&a);
    }

    /// Loads a quarantine entry from the store.
    pub fn restore_quarantine(&mut self, q: Quarantined) {
        self.hold(q.address, q.service, q.until);
    }

    /// Drops a service's allocation without quarantine (the store forgets it).
    pub fn forget(&mut self, service: &ServiceKey) {
        if let Some(a) = self.services.get(service).cloned() {
            self.unassign(&a);
        }
    }

    /// Ends the quarantine of `ip` now (the store forgets the entry).
    pub fn unquarantine(&mut self, ip: &IpAddr) {
        self.unhold(ip);
    }

    /// Quarantines a free address of a pool for its last holder, as recorded elsewhere
    /// (the cluster). `false`, changing nothing, when the entry is over at `now`, the
    /// address is outside every pool, reserved, in use or already quarantined.
    pub fn quarantine_if_free(&mut self, q: Quarantined, now: Timestamp) -> bool {
        let free = q.until > now
            && self.pool_of(&q.address).is_some()
            && self.reservation_of(&q.address).is_none()
            && !self.addresses.contains_key(&q.address)
            && !self.quarantine.contains_key(&q.address);
        if free {
            self.hold(q.address, q.service, q.until);
        }
        free
    }

    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values().map(|p| &p.pool)
    }
    pub fn pool(&self, name: &PoolName) -> Option<&Pool> {
        self.pools.get(name).map(|p| &p.pool)
    }
    pub fn reservations(&self) -> impl Iterator<Item = &Reservation> {
        self.reserved.values().map(|(_, r)| r)
    }
    pub fn allocation(&self, s: &ServiceKey) -> Option<&Allocation> {
        self.services.get(s)
    }
    /// Every allocation, sorted by service.
    pub fn allocations(&self) -> Vec<&Allocation> {
        let mut v: Vec<_> = self.services.values().collect();
        v.sort_by(|a, b| a.service.cmp(&b.service));
        v
    }
    pub fn quarantined(&self) -> Vec<&Quarantined> {
        let mut v: Vec<_> = self.quarantine.values().collect();
        v.sort_by_key(|q| (q.until, q.address));
        v
    }
    /// Every allocation that holds an address in `pool`.
    pub fn allocations_in(&self, pool: &PoolName) -> Vec<&Allocation> {
        self.allocations().into_iter().filter(|a| &a.pool == pool).collect()
    }

    pub fn stats(&self, name: &PoolName) -> Option<Vec<FamilyStats>> {
        let st = self.pools.get(name)?;
        Some(
            [Family::V4, Family::V6]
                .into_iter()
                .filter(|f| st.pool.has_family(*f))
                .map(|f| {
                    let fs = st.fam(f);
                    FamilyStats {
                        family: f,
                        size: fs.size,
                        reserved: fs
                            .size
                            .saturating_sub(fs.free.len())
                            .saturating_sub(fs.used)
                            .saturating_sub(fs.quarantined),
                        used: fs.used,
                        quarantined: fs.quarantined,
                        free: fs.free.len(),
                    }
                })
                .collect(),
        )
    }

    /// The free addresses of a pool as at most `limit` ranges per family, lowest first,
    /// each with how many usable addresses it holds (`.0`/`.255` skipped under
    /// `avoid_buggy_ips` are inside a range but not counted).
    pub fn free_ranges(&self, name: &PoolName, limit: usize) -> Option<Vec<(IpAddr, IpAddr, u128)>> {
        let st = self.pools.get(name)?;
        let mut out = Vec::new();
        for f in [Family::V4, Family::V6] {
            let fs = st.fam(f);
            for (&a, &b) in fs.free.map.iter().take(limit) {
                let first = u128_to_ip(f, fs.space.from_dense(a));
                let last = u128_to_ip(f, fs.space.from_dense(b));
                out.push((first, last, (b - a).saturating_add(1)));
            }
        }
        Some(out)
    }

    /// The pool an address belongs to.
    pub fn pool_of(&self, ip: &IpAddr) -> Option<&PoolName> {
        range_lookup(&self.blocks, ip)
    }
    pub fn reservation_of(&self, ip: &IpAddr) -> Option<&Reservation> {
        range_lookup(&self.reserved, ip)
    }

    /// Returns quarantined addresses whose time is up to their pools.
    pub fn expire(&mut self, now: Timestamp) -> Vec<IpAddr> {
        let mut out = Vec::new();
        while let Some(&(until, ip)) = self.expiry.first() {
            if until > now {
                break;
            }
            self.unhold(&ip);
            out.push(ip);
        }
        out
    }

    /// Gives `req.service` addresses, or tells why not. Idempotent: a service whose
    /// allocation still satisfies the request keeps it unchanged.
    pub fn allocate(&mut self, req: &AllocRequest, now: Timestamp, hold: Duration) -> Result<Outcome, IpamError> {
        self.expire(now);
        let families = req.families()?;
        if let Some(p) = &req.pool {
            if !self.pools.contains_key(p) {
                return Err(IpamError::UnknownPool(p.clone()));
            }
        }
        let Some(ex) = self.services.get(&req.service).cloned() else {
            let allocation = self.choose(req, &families)?;
            let reclaimed = self.reclaimed(&allocation);
            self.assign(&allocation);
            return Ok(Outcome {
                allocation,
                change: Change::Created,
                previous: None,
                quarantined: vec![],
                freed: vec![],
                reclaimed,
            });
        };
        if self.satisfies(&ex, req, &families)? {
            let updated =
                Allocation { uid: req.uid.clone().or_else(|| ex.uid.clone()), ports: req.ports.clone(), ..ex.clone() };
            if updated == ex {
                return Ok(Outcome {
                    allocation: ex,
                    change: Change::Unchanged,
                    previous: None,
                    quarantined: vec![],
                    freed: vec![],
                    reclaimed: vec![],
                });
            }
            self.unassign(&ex);
            self.assign(&updated);
            return Ok(Outcome {
                allocation: updated,
                change: Change::Updated,
                previous: Some(ex),
                quarantined: vec![],
                freed: vec![],
                reclaimed: vec![],
            });
        }
        // The request changed in a way the current addresses cannot serve: move.
        self.unassign(&ex);
        match self.choose(req, &families) {
            Ok(allocation) => {
                let reclaimed = self.reclaimed(&allocation);
                self.assign(&allocation);
                let gone: Vec<IpAddr> =
                    ex.addresses.iter().filter(|a| !allocation.addresses.contains(a)).copied().collect();
                let (quarantined, freed) = self.quarantine_released(&ex.service, &gone, now, hold);
                Ok(Outcome { allocation, change: Change::Updated, previous: Some(ex), quarantined, freed, reclaimed })
            }
            Err(e) => {
                self.assign(&ex);
                Err(e)
            }
        }
    }

    /// Releases a service's addresses; each address no one else holds is quarantined for
    /// `hold` (free at once when `hold` is zero). `Ok(None)` when it held nothing.
    pub fn release(
        &mut self,
        service: &ServiceKey,
        uid: Option<&Uid>,
        now: Timestamp,
        hold: Duration,
    ) -> Result<Option<Released>, IpamError> {
        self.expire(now);
        let Some(ex) = self.services.get(service).cloned() else {
            return Ok(None);
        };
        if let (Some(given), Some(held)) = (uid, &ex.uid) {
            if given != held {
                return Err(IpamError::UidMismatch {
                    service: service.clone(),
                    held: held.clone(),
                    given: given.clone(),
                });
            }
        }
        self.unassign(&ex);
        let (quarantined, freed) = self.quarantine_released(service, &ex.addresses, now, hold);
        Ok(Some(Released { allocation: ex, quarantined, freed }))
    }

    fn reclaimed(&self, a: &Allocation) -> Vec<IpAddr> {
        a.addresses.iter().filter(|ip| self.quarantine.contains_key(ip)).copied().collect()
    }

    fn quarantine_released(
        &mut self,
        service: &ServiceKey,
        addrs: &[IpAddr],
        now: Timestamp,
        hold: Duration,
    ) -> (Vec<Quarantined>, Vec<IpAddr>) {
        let mut q = Vec::new();
        let mut freed = Vec::new();
        for ip in addrs {
            if self.addresses.contains_key(ip) {
                continue; // still held by a service sharing it
            }
            freed.push(*ip);
            if !hold.is_zero() {
                let until = now.plus(hold);
                self.hold(*ip, service.clone(), until);
                q.push(Quarantined { address: *ip, service: service.clone(), until });
            }
        }
        (q, freed)
    }

    /// Why `pool` may not serve `req` (None: it may). `explicit`: the pool or an address
    /// was named, so auto_assign does not matter.
    fn ineligible(&self, pool: &Pool, req: &AllocRequest, families: &[Family], explicit: bool) -> Option<String> {
        let ns = req.service.namespace();
        if !explicit && !pool.options.auto_assign {
            return Some("auto_assign is off (name the pool or an address to use it)".into());
        }
        if !pool.options.namespaces.is_empty() && !pool.options.namespaces.contains(ns) {
            let list: Vec<&str> = pool.options.namespaces.iter().map(String::as_str).collect();
            return Some(format!("namespace {ns:?} is not one of its namespaces [{}]", list.join(", ")));
        }
        if !selector_matches(&pool.options.namespace_selector, &req.namespace_labels) {
            return Some(format!(
                "namespace labels {} do not match its namespace selector {}",
                labels_text(&req.namespace_labels),
                labels_text(&pool.options.namespace_selector)
            ));
        }
        if !selector_matches(&pool.options.service_selector, &req.service_labels) {
            return Some(format!(
                "service labels {} do not match its service selector {}",
                labels_text(&req.service_labels),
                labels_text(&pool.options.service_selector)
            ));
        }
        if Self::wanted(pool, req, families).is_empty() {
            return Some(format!("it has no {} addresses", families_text(families).replace('+', " or ")));
        }
        if let Some(f) = Self::wanted(pool, req, families).iter().find(|f| !pool.has_family(**f)) {
            return Some(format!("it has no {f} addresses"));
        }
        None
    }

    /// The families `req` takes from `pool`: those asked for, except that PreferDualStack
    /// without addresses takes what the pool has of them.
    fn wanted(pool: &Pool, req: &AllocRequest, families: &[Family]) -> Vec<Family> {
        if req.family == Some(FamilyRequest::PreferDual) && req.addresses.is_empty() {
            families.iter().copied().filter(|f| pool.has_family(*f)).collect()
        } else {
            families.to_vec()
        }
    }

    fn satisfies(&self, ex: &Allocation, req: &AllocRequest, families: &[Family]) -> Result<bool, IpamError> {
        let Some(pool) = self.pools.get(&ex.pool) else {
            return Ok(false);
        };
        let mut have: Vec<Family> = ex.addresses.iter().map(Family::of).collect();
        have.sort();
        let families = &Self::wanted(&pool.pool, req, families)[..];
        let same_addrs = {
            let mut a = req.addresses.clone();
            let mut b = ex.addresses.clone();
            a.sort();
            b.sort();
            a == b
        };
        if have != families
            || req.pool.as_ref().is_some_and(|p| p != &ex.pool)
            || (!req.addresses.is_empty() && !same_addrs)
            || req.sharing_key != ex.sharing_key
            || self.ineligible(&pool.pool, req, families, true).is_some()
        {
            return Ok(false);
        }
        // Ports may change in place if they still clash with no one.
        for ip in &ex.addresses {
            if let Some(key) = &ex.sharing_key {
                self.check_ports(ip, key, &req.ports, Some(&ex.service))?;
            }
        }
        Ok(true)
    }

    fn check_ports(
        &self,
        ip: &IpAddr,
        key: &SharingKey,
        ports: &BTreeSet<Port>,
        me: Option<&ServiceKey>,
    ) -> Result<(), IpamError> {
        let Some(u) = self.addresses.get(ip) else {
            return Ok(());
        };
        for p in ports {
            if let Some(holder) = u.ports.get(p) {
                if Some(holder) != me {
                    return Err(IpamError::PortClash {
                        address: *ip,
                        port: *p,
                        holder: holder.clone(),
                        key: key.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// May `req` take `ip`, which is in use? Errors name the other service.
    fn check_shareable(&self, ip: &IpAddr, req: &AllocRequest) -> Result<(), IpamError> {
        let Some(u) = self.addresses.get(ip) else {
            return Ok(());
        };
        let holder = u.holders.iter().next().cloned().unwrap_or_else(|| req.service.clone());
        match (&req.sharing_key, &u.sharing_key) {
            (Some(a), Some(b)) if a == b => self.check_ports(ip, a, &req.ports, Some(&req.service)),
            _ => Err(IpamError::InUse { address: *ip, holder, holder_key: u.sharing_key.clone() }),
        }
    }

    fn choose(&self, req: &AllocRequest, families: &[Family]) -> Result<Allocation, IpamError> {
        let named = req.pool.is_some() || !req.addresses.is_empty();
        let mut reasons = Vec::new();
        let mut eligible: Vec<&PoolState> = Vec::new();
        for st in self.pools.values() {
            if req.pool.as_ref().is_some_and(|p| p != &st.pool.name) {
                continue;
            }
            match self.ineligible(&st.pool, req, families, named) {
                Some(why) => reasons.push((st.pool.name.clone(), why)),
                None => eligible.push(st),
            }
        }
        let make = |pool: &PoolName, addresses: Vec<IpAddr>| Allocation {
            service: req.service.clone(),
            uid: req.uid.clone(),
            pool: pool.clone(),
            addresses,
            sharing_key: req.sharing_key.clone(),
            ports: req.ports.clone(),
        };

        if !req.addresses.is_empty() {
            let mut pool_name: Option<(IpAddr, PoolName)> = None;
            for ip in &req.addresses {
                let Some(p) = self.pool_of(ip) else {
                    return Err(IpamError::NotInPool { address: *ip });
                };
                let st = &self.pools[p];
                if let Some(why) = self.ineligible(&st.pool, req, families, true) {
                    return Err(IpamError::PoolNotEligible {
                        service: req.service.clone(),
                        address: *ip,
                        pool: p.clone(),
                        reason: why,
                    });
                }
                if let Some(p0) = req.pool.as_ref().filter(|p0| *p0 != p) {
                    return Err(IpamError::PoolNotEligible {
                        service: req.service.clone(),
                        address: *ip,
                        pool: p.clone(),
                        reason: format!("the request names pool {:?}", p0.as_str()),
                    });
                }
                match &pool_name {
                    Some((first, fp)) if fp != p => {
                        return Err(IpamError::SplitPools {
                            first: *first,
                            first_pool: fp.clone(),
                            second: *ip,
                            second_pool: p.clone(),
                        })
                    }
                    _ => pool_name = Some((*ip, p.clone())),
                }
                if let Some(r) = self.reservation_of(ip) {
                    return Err(IpamError::Reserved { address: *ip, block: r.block, note: r.note.clone() });
                }
                if st.fam(Family::of(ip)).space.to_dense(ip_to_u128(ip)).is_none() {
                    return Err(IpamError::Buggy { address: *ip, pool: p.clone() });
                }
                if is_subnet_router_anycast(ip) {
                    return Err(IpamError::SubnetRouterAnycast { address: *ip });
                }
                if let Some(q) = self.quarantine.get(ip) {
                    if q.service != req.service {
                        return Err(IpamError::Quarantined { address: *ip, holder: q.service.clone(), until: q.until });
                    }
                }
                self.check_shareable(ip, req)?;
            }
            let (_, p) = pool_name.ok_or_else(|| IpamError::NotInPool { address: req.addresses[0] })?;
            let mut addrs = req.addresses.clone();
            addrs.sort();
            return Ok(make(&p, addrs));
        }

        if eligible.is_empty() {
            return Err(IpamError::NoEligiblePool { service: req.service.clone(), reasons });
        }
        // Order: pools holding this service's quarantined addresses, then pools with an
        // address of its sharing key, then by priority and name.
        let own = self.quarantine_of.get(&req.service);
        let shared = req.sharing_key.as_ref().and_then(|k| self.by_key.get(k));
        let has = |set: Option<&BTreeSet<IpAddr>>, p: &PoolName| {
            set.is_some_and(|s| s.iter().any(|ip| self.pool_of(ip) == Some(p)))
        };
        // Then, as MetalLB does, pools that select the service (by namespace or selector)
        // before the ones that admit everyone, and then by priority and name.
        eligible.sort_by_key(|st| {
            (
                !has(own, &st.pool.name),
                !has(shared, &st.pool.name),
                !st.pool.options.is_selective(),
                st.pool.order_key(),
            )
        });
        for st in &eligible {
            let name = &st.pool.name;
            let mut picked = Vec::new();
            let families = &Self::wanted(&st.pool, req, families)[..];
            for &f in families {
                let in_pool = |ip: &&IpAddr| Family::of(ip) == f && self.pool_of(ip) == Some(name);
                if let Some(ip) = own.and_then(|s| s.iter().find(in_pool)) {
                    picked.push(*ip);
                } else if let Some(ip) =
                    shared.and_then(|s| s.iter().filter(in_pool).find(|ip| self.check_shareable(ip, req).is_ok()))
                {
                    picked.push(*ip);
                } else if let Some(ip) = st.fam(f).first_usable(f) {
                    picked.push(ip);
                } else {
                    break;
                }
            }
            if picked.len() == families.len() {
                picked.sort();
                return Ok(make(name, picked));
            }
        }
        Err(IpamError::Exhausted {
            service: req.service.clone(),
            families: families.to_vec(),
            pools: eligible.iter().map(|s| s.pool.name.clone()).collect(),
        })
    }

    fn assign(&mut self, a: &Allocation) {
        for ip in &a.addresses {
            self.unhold(ip);
            let f = Family::of(ip);
            if !self.addresses.contains_key(ip) {
                if let Some(st) = self.pools.get_mut(&a.pool) {
                    let fs = st.fam_mut(f);
                    if let Some(d) = fs.space.to_dense(ip_to_u128(ip)) {
                        fs.free.remove(d);
                    }
                    fs.used += 1;
                }
                self.addresses.insert(
                    *ip,
                    AddressUse {
                        pool: a.pool.clone(),
                        sharing_key: a.sharing_key.clone(),
                        holders: BTreeSet::new(),
                        ports: BTreeMap::new(),
                    },
                );
                if let Some(k) = &a.sharing_key {
                    self.by_key.entry(k.clone()).or_default().insert(*ip);
                }
            }
            if let Some(u) = self.addresses.get_mut(ip) {
                u.holders.insert(a.service.clone());
                for p in &a.ports {
                    u.ports.insert(*p, a.service.clone());
                }
            }
        }
        self.services.insert(a.service.clone(), a.clone());
    }

    fn unassign(&mut self, a: &Allocation) {
        self.services.remove(&a.service);
        for ip in &a.addresses {
            let Some(u) = self.addresses.get_mut(ip) else { continue };
            u.holders.remove(&a.service);
            u.ports.retain(|_, s| s != &a.service);
            if !u.holders.is_empty() {
                continue;
            }
            let u = self.addresses.remove(ip).expect("present: just looked up");
            if let Some(k) = &u.sharing_key {
                if let Some(set) = self.by_key.get_mut(k) {
                    set.remove(ip);
                    if set.is_empty() {
                        self.by_key.remove(k);
                    }
                }
            }
            self.give_back(&u.pool, ip, |fs| fs.used = fs.used.saturating_sub(1));
        }
    }

    /// Puts `ip` back into its pool's free set (unless reserved), after `adjust`.
    fn give_back(&mut self, pool: &PoolName, ip: &IpAddr, adjust: impl FnOnce(&mut FamilyState)) {
        let reserved = self.reservation_of(ip).is_some();
        let in_pool = self.pool_of(ip) == Some(pool);
        if let Some(st) = self.pools.get_mut(pool) {
            let fs = st.fam_mut(Family::of(ip));
            adjust(fs);
            if in_pool && !reserved {
                if let Some(d) = fs.space.to_dense(ip_to_u128(ip)) {
                    fs.free.insert(d);
                }
            }
        }
    }

    fn hold(&mut self, ip: IpAddr, service: ServiceKey, until: Timestamp) {
        self.unhold(&ip);
        if let Some(pool) = self.pool_of(&ip).cloned() {
            if let Some(st) = self.pools.get_mut(&pool) {
                let fs = st.fam_mut(Family::of(&ip));
                if let Some(d) = fs.space.to_dense(ip_to_u128(&ip)) {
                    fs.free.remove(d);
                }
                fs.quarantined += 1;
            }
        }
        self.quarantine_of.entry(service.clone()).or_default().insert(ip);
        self.expiry.insert((until, ip));
        self.quarantine.insert(ip, Quarantined { address: ip, service, until });
    }

    /// Ends a quarantine; the address goes back to its pool unless someone holds it.
    fn unhold(&mut self, ip: &IpAddr) {
        let Some(q) = self.quarantine.remove(ip) else { return };
        self.expiry.remove(&(q.until, *ip));
        if let Some(set) = self.quarantine_of.get_mut(&q.service) {
            set.remove(ip);
            if set.is_empty() {
                self.quarantine_of.remove(&q.service);
            }
        }
        if let Some(pool) = self.pool_of(ip).cloned() {
            if self.addresses.contains_key(ip) {
                if let Some(st) = self.pools.get_mut(&pool) {
                    let fs = st.fam_mut(Family::of(ip));
                    fs.quarantined = fs.quarantined.saturating_sub(1);
                }
            } else {
                self.give_back(&pool, ip, |fs| fs.quarantined = fs.quarantined.saturating_sub(1));
            }
        }
    }

    /// Checks every invariant of the index against a slow recomputation. For tests.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen: HashMap<IpAddr, (Option<&SharingKey>, &ServiceKey)> = HashMap::new();
        for a in self.services.values() {
            for ip in &a.addresses {
                if self.pool_of(ip) != Some(&a.pool) {
                    return Err(format!("{ip} of {} is outside its pool {}", a.service, a.pool));
                }
                if let Some(r) = self.reservation_of(ip) {
                    return Err(format!("{ip} of {} is reserved by {}", a.service, r.block));
                }
                if let Some((key, other)) = seen.insert(*ip, (a.sharing_key.as_ref(), &a.service)) {
                    if key.is_none() || key != a.sharing_key.as_ref() {
                        return Err(format!("{ip} is held by {other} and {} without a common key", a.service));
                    }
                }
                if self.quarantine.contains_key(ip) {
                    return Err(format!("{ip} is both held and quarantined"));
                }
            }
        }
        for st in self.pools.values() {
            for f in [Family::V4, Family::V6] {
                let fs = st.fam(f);
                for ip in seen.keys().chain(self.quarantine.keys()) {
                    if let Some(d) = fs.space.to_dense(ip_to_u128(ip)) {
                        if Family::of(ip) == f && self.pool_of(ip) == Some(&st.pool.name) && fs.free.contains(d) {
                            return Err(format!("{ip} is in use but also free in {}", st.pool.name));
                        }
                    }
                }
                if fs.free.len() + fs.used + fs.quarantined > fs.size {
                    return Err(format!("counts of {} {f} exceed its size", st.pool.name));
                }
            }
        }
        Ok(())
    }
}

fn labels_text(l: &vipvisor_model::Labels) -> String {
    if l.is_empty() {
        return "{}".into();
    }
    let parts: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vipvisor_model::PoolOptions;

    const HOLD: Duration = Duration::from_secs(60);
    const T0: Timestamp = Timestamp(1_000_000);

    fn pool(name: &str, blocks: &[&str], f: impl FnOnce(&mut PoolOptions)) -> Pool {
        let mut o = PoolOptions::default();
        f(&mut o);
        Pool::new(name.parse().unwrap(), blocks.iter().map(|b| b.parse().unwrap()).collect(), o).unwrap()
    }
    fn req(s: &str) -> AllocRequest {
        AllocRequest::new(s.parse().unwrap())
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn one(p: Pool) -> Ipam {
        Ipam::new(vec![p], vec![])
    }

    #[test]
    fn free_set_merges_and_splits() {
        let mut s = FreeSet::default();
        s.insert_range(10, 20);
        assert_eq!(s.len(), 11);
        assert!(s.remove(15));
        assert_eq!(s.intervals(), 2, "removing the middle splits the interval");
        assert!(!s.remove(15), "already gone");
        assert!(s.insert(15));
        assert_eq!(s.intervals(), 1, "re-inserting merges both neighbours");
        assert_eq!(s.remove_range(0, 12), 3);
        assert_eq!(s.first(), Some(13));
        s.insert_range(0, u128::MAX);
        assert_eq!(s.len(), u128::MAX, "saturates instead of overflowing");
    }

    /// Named cases, in the manner of MetalLB's allocator tests.
    #[test]
    fn allocation_table() {
        // "first service gets the lowest free address, asking again changes nothing"
        let mut m = one(pool("a", &["192.0.2.0/30"], |_| {}));
        let o = m.allocate(&req("ns/s1"), T0, HOLD).unwrap();
        assert_eq!(o.allocation.addresses, vec![ip("192.0.2.0")]);
        assert_eq!(o.change, Change::Created);
        let again = m.allocate(&req("ns/s1"), T0, HOLD).unwrap();
        assert_eq!(again.change, Change::Unchanged, "a second ask for the same service is idempotent");
        assert_eq!(again.allocation.addresses, o.allocation.addresses);

        // "second service cannot take the first one's address"
        let mut r2 = req("ns/s2");
        r2.addresses = vec![ip("192.0.2.0")];
        let e = m.allocate(&r2, T0, HOLD).unwrap_err();
        assert!(matches!(&e, IpamError::InUse { holder, .. } if holder.to_string() == "ns/s1"), "{e}");
        assert!(e.to_string().contains("ns/s1"), "the error names the holder: {e}");

        // "a different sharing key cannot share"
        let mut m = one(pool("a", &["192.0.2.0/30"], |_| {}));
        let mut s1 = req("ns/s1");
        s1.sharing_key = Some("k".parse().unwrap());
        s1.ports = ["tcp/80".parse().unwrap()].into();
        m.allocate(&s1, T0, HOLD).unwrap();
        let mut s2 = req("ns/s2");
        s2.sharing_key = Some("other".parse().unwrap());
        s2.addresses = vec![ip("192.0.2.0")];
        assert!(matches!(m.allocate(&s2, T0, HOLD), Err(IpamError::InUse { .. })));

        // "same key, other ports: shares; same key, same port: clash naming the holder"
        let mut s3 = req("ns/s3");
        s3.sharing_key = Some("k".parse().unwrap());
        s3.ports = ["udp/80".parse().unwrap()].into();
        assert_eq!(m.allocate(&s3, T0, HOLD).unwrap().allocation.addresses, vec![ip("192.0.2.0")]);
        let mut s4 = req("ns/s4");
        s4.sharing_key = Some("k".parse().unwrap());
        s4.ports = ["tcp/80".parse().unwrap()].into();
        let e = m.allocate(&s4, T0, HOLD).unwrap();
        assert_ne!(
            e.allocation.addresses,
            vec![ip("192.0.2.0")],
            "a port clash on the shared address moves the service to another address"
        );
        let mut s5 = req("ns/s5");
        s5.sharing_key = Some("k".parse().unwrap());
        s5.ports = ["tcp/80".parse().unwrap()].into();
        s5.addresses = vec![ip("192.0.2.0")];
        let e = m.allocate(&s5, T0, HOLD).unwrap_err();
        assert!(matches!(&e, IpamError::PortClash { holder, .. } if holder.to_string() == "ns/s1"), "{e}");
        m.check_invariants().unwrap();
    }

    #[test]
    fn exhaustion_and_no_eligible_pool_are_distinct() {
        let mut m = one(pool("a", &["192.0.2.0/31"], |o| o.namespaces = ["web".to_string()].into()));
        assert!(matches!(m.allocate(&req("db/x"), T0, HOLD), Err(IpamError::NoEligiblePool { .. })));
        m.allocate(&req("web/a"), T0, HOLD).unwrap();
        m.allocate(&req("web/b"), T0, HOLD).unwrap();
        let e = m.allocate(&req("web/c"), T0, HOLD).unwrap_err();
        assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
        assert!(e.to_string().contains("pool exhausted"), "{e}");
        let mut v6 = req("web/d");
        v6.family = Some(FamilyRequest::Ipv6);
        let e = m.allocate(&v6, T0, HOLD).unwrap_err();
        assert!(e.to_string().contains("no IPv6 addresses"), "{e}");
    }

    #[test]
    fn priorities_selectors_and_auto_assign() {
        let mut m = Ipam::new(
            vec![
                pool("late", &["192.0.2.0/30"], |_| {}),
                pool("first", &["198.51.100.0/30"], |o| o.priority = Some(1)),
                pool("second", &["203.0.113.0/30"], |o| o.priority = Some(5)),
                pool("manual", &["203.0.113.64/30"], |o| o.auto_assign = false),
                pool("team", &["203.0.113.128/30"], |o| {
                    o.priority = Some(0);
                    o.namespace_selector = [("team".to_string(), "blue".to_string())].into();
                }),
            ],
            vec![],
        );
        assert_eq!(m.allocate(&req("ns/a"), T0, HOLD).unwrap().allocation.pool.as_str(), "first");
        let mut blue = req("ns/b");
        blue.namespace_labels = [("team".to_string(), "blue".to_string())].into();
        assert_eq!(m.allocate(&blue, T0, HOLD).unwrap().allocation.pool.as_str(), "team");
        let mut manual = req("ns/c");
        manual.pool = Some("manual".parse().unwrap());
        assert_eq!(
            m.allocate(&manual, T0, HOLD).unwrap().allocation.pool.as_str(),
            "manual",
            "naming a pool uses it even without auto_assign"
        );
        m.check_invariants().unwrap();
    }

    #[test]
    fn pools_that_select_the_service_are_tried_first() {
        // "a team's pool wins over a-default, whatever their names" (MetalLB's order).
        let mut m = Ipam::new(
            vec![
                pool("a-default", &["192.0.2.0/30"], |_| {}),
                pool("team", &["198.51.100.0/30"], |o| o.namespaces = ["team".to_string()].into()),
                pool("labelled", &["203.0.113.0/30"], |o| {
                    o.service_selector = [("tier".to_string(), "web".to_string())].into()
                }),
            ],
            vec![],
        );
        assert_eq!(m.allocate(&req("team/x"), T0, HOLD).unwrap().allocation.pool.as_str(), "team");
        assert_eq!(m.allocate(&req("other/y"), T0, HOLD).unwrap().allocation.pool.as_str(), "a-default");
        let mut web = req("other/w");
        web.service_labels = [("tier".to_string(), "web".to_string())].into();
        assert_eq!(m.allocate(&web, T0, HOLD).unwrap().allocation.pool.as_str(), "labelled");
        // Among pools that select the service, priority still orders.
        let mut m = Ipam::new(
            vec![
                pool("sel-late", &["192.0.2.0/30"], |o| o.namespaces = ["t".to_string()].into()),
                pool("sel-first", &["198.51.100.0/30"], |o| {
                    o.namespaces = ["t".to_string()].into();
                    o.priority = Some(1);
                }),
                pool("open", &["203.0.113.0/30"], |o| o.priority = Some(0)),
            ],
            vec![],
        );
        assert_eq!(m.allocate(&req("t/a"), T0, HOLD).unwrap().allocation.pool.as_str(), "sel-first");
    }

    #[test]
    fn prefer_dual_stack_takes_what_the_pool_has() {
        let mut m = Ipam::new(
            vec![
                pool("v4only", &["192.0.2.0/31"], |o| o.priority = Some(1)),
                pool("both", &["198.51.100.0/30", "2001:db8::/126"], |o| o.priority = Some(2)),
                pool("v6only", &["2001:db8:1::/126"], |o| o.auto_assign = false),
            ],
            vec![],
        );
        let mut r = req("ns/p");
        r.family = Some(FamilyRequest::PreferDual);
        let a = m.allocate(&r, T0, HOLD).unwrap().allocation;
        assert_eq!((a.pool.as_str(), a.addresses.len()), ("v4only", 1), "one family where the pool has one");
        r.pool = Some("both".parse().unwrap());
        let b = m.allocate(&r, T0, HOLD).unwrap();
        assert_eq!(b.allocation.addresses, vec![ip("198.51.100.0"), ip("2001:db8::1")], "dual where it has both");
        assert_eq!(m.allocate(&r, T0, HOLD).unwrap().change, Change::Unchanged, "asking again is idempotent");
        r.pool = Some("v6only".parse().unwrap());
        let c = m.allocate(&r, T0, HOLD).unwrap().allocation;
        assert_eq!(c.addresses, vec![ip("2001:db8:1::1")], "an IPv6-only pool gives IPv6 alone");
        let mut s = req("ns/single");
        s.family = Some(FamilyRequest::Dual);
        s.pool = Some("v4only".parse().unwrap());
        assert!(m.allocate(&s, T0, HOLD).is_err(), "RequireDualStack still needs both families");
        m.check_invariants().unwrap();
    }

    #[test]
    fn dual_stack_comes_from_one_pool() {
        let mut m = Ipam::new(
            vec![
                pool("v4only", &["192.0.2.0/30"], |o| o.priority = Some(1)),
                pool("both", &["198.51.100.0/30", "2001:db8::/126"], |_| {}),
            ],
            vec![],
        );
        let mut r = req("ns/d");
        r.family = Some(FamilyRequest::Dual);
        let a = m.allocate(&r, T0, HOLD).unwrap().allocation;
        assert_eq!(a.pool.as_str(), "both");
        assert_eq!(a.addresses, vec![ip("198.51.100.0"), ip("2001:db8::1")]);
    }

    /// The subnet-router anycast address of a /64 (interface id all zeros) is answered by
    /// the link's routers: it is skipped when picking and refused when asked for.
    #[test]
    fn subnet_router_anycast_addresses_are_never_handed_out() {
        let mut m = one(pool("v6", &["2001:db8::/127", "2001:db8:0:1::/128", "2001:db8:0:2::5/128"], |_| {}));
        let got: Vec<IpAddr> = (0..2)
            .filter_map(|i| {
                let mut r = req(&format!("ns/s{i}"));
                r.family = Some(FamilyRequest::Ipv6);
                m.allocate(&r, T0, HOLD).ok().map(|o| o.allocation.addresses[0])
            })
            .collect();
        assert_eq!(got, vec![ip("2001:db8::1"), ip("2001:db8:0:2::5")], "2001:db8:: and 2001:db8:0:1:: are skipped");
        let mut r = req("ns/x");
        r.addresses = vec![ip("2001:db8:0:1::")];
        let e = m.allocate(&r, T0, HOLD).unwrap_err();
        assert!(matches!(e, IpamError::SubnetRouterAnycast { .. }), "{e}");
        assert!(e.to_string().contains("2001:db8:0:1::") && e.to_string().contains("anycast"), "{e}");
    }

    #[test]
    fn quarantine_keeps_addresses_for_their_last_holder() {
        let mut m = one(pool("a", &["192.0.2.0/31"], |_| {}));
        m.allocate(&req("ns/a"), T0, HOLD).unwrap();
        let rel = m.release(&"ns/a".parse().unwrap(), None, T0, HOLD).unwrap().unwrap();
        assert_eq!(rel.quarantined.len(), 1);
        let b = m.allocate(&req("ns/b"), T0, HOLD).unwrap().allocation;
        assert_eq!(b.addresses, vec![ip("192.0.2.1")], "b must not get a's quarantined address");
        assert!(
            matches!(m.allocate(&req("ns/c"), T0, HOLD), Err(IpamError::Exhausted { .. })),
            "the quarantined address is not free for others"
        );
        let mut c = req("ns/c");
        c.addresses = vec![ip("192.0.2.0")];
        assert!(matches!(m.allocate(&c, T0, HOLD), Err(IpamError::Quarantined { .. })));
        let back = m.allocate(&req("ns/a"), T0.plus(Duration::from_secs(30)), HOLD).unwrap();
        assert_eq!(back.allocation.addresses, vec![ip("192.0.2.0")], "a gets its address back within the quarantine");
        m.release(&"ns/a".parse().unwrap(), None, T0, HOLD).unwrap();
        let later = T0.plus(Duration::from_secs(61));
        assert_eq!(
            m.allocate(&req("ns/c"), later, HOLD).unwrap().allocation.addresses,
            vec![ip("192.0.2.0")],
            "after the quarantine the address is free for anyone"
        );
        m.check_invariants().unwrap();
    }

    /// A quarantine ending after year 9999 (a stored one, or a huge --quarantine) is shown
    /// as the end of year 9999 in errors, never a panic.
    #[test]
    fn a_far_future_quarantine_is_shown_not_a_panic() {
        let mut m = one(pool("a", &["192.0.2.0/31"], |_| {}));
        m.restore_quarantine(Quarantined {
            address: ip("192.0.2.0"),
            service: "ns/a".parse().unwrap(),
            until: Timestamp(i64::MAX),
        });
        let mut c = req("ns/c");
        c.addresses = vec![ip("192.0.2.0")];
        let e = m.allocate(&c, T0, HOLD).unwrap_err();
        assert!(e.to_string().contains("until 9999-12-31T23:59:59.999Z"), "{e}");
        assert_eq!(Timestamp(-5).rfc3339(), "1970-01-01T00:00:00.000Z");
        let rel = {
            m.allocate(&req("ns/b"), T0, HOLD).unwrap();
            m.release(&"ns/b".parse().unwrap(), None, T0, Duration::from_secs(u64::MAX)).unwrap().unwrap()
        };
        assert_eq!(rel.quarantined[0].until.rfc3339(), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn reservations_and_buggy_addresses_are_never_handed_out() {
        let res = Reservation { block: "192.0.2.1".parse().unwrap(), note: "gateway".into() };
        let mut m = Ipam::new(vec![pool("a", &["192.0.2.0/24"], |o| o.avoid_buggy_ips = true)], vec![res]);
        let a = m.allocate(&req("ns/a"), T0, HOLD).unwrap().allocation;
        assert_eq!(a.addresses, vec![ip("192.0.2.2")], ".0 is buggy and .1 is reserved");
        let mut r = req("ns/b");
        r.addresses = vec![ip("192.0.2.1")];
        let e = m.allocate(&r, T0, HOLD).unwrap_err();
        assert!(e.to_string().contains("gateway"), "{e}");
        r.addresses = vec![ip("192.0.2.255")];
        assert!(matches!(m.allocate(&r, T0, HOLD), Err(IpamError::Buggy { .. })));
        let st = &m.stats(&"a".parse().unwrap()).unwrap()[0];
        assert_eq!((st.size, st.reserved, st.used, st.free), (254, 1, 1, 252));
    }

    #[test]
    fn changed_request_moves_and_failed_move_keeps_old() {
        let mut m = one(pool("a", &["192.0.2.0/30"], |_| {}));
        m.allocate(&req("ns/a"), T0, HOLD).unwrap();
        let mut r = req("ns/a");
        r.addresses = vec![ip("192.0.2.3")];
        let o = m.allocate(&r, T0, HOLD).unwrap();
        assert_eq!(o.change, Change::Updated);
        assert_eq!(o.quarantined.len(), 1, "the old address is quarantined for its last holder");
        r.addresses = vec![ip("203.0.113.1")];
        assert!(m.allocate(&r, T0, HOLD).is_err());
        assert_eq!(
            m.allocation(&"ns/a".parse().unwrap()).unwrap().addresses,
            vec![ip("192.0.2.3")],
            "a refused move leaves the service where it was"
        );
        m.check_invariants().unwrap();
    }

    #[test]
    fn uid_guards_release() {
        let mut m = one(pool("a", &["192.0.2.0/30"], |_| {}));
        let mut r = req("ns/a");
        r.uid = Some("u1".parse().unwrap());
        m.allocate(&r, T0, HOLD).unwrap();
        let e = m.release(&r.service, Some(&"u2".parse().unwrap()), T0, HOLD).unwrap_err();
        assert!(matches!(e, IpamError::UidMismatch { .. }));
        assert!(m.release(&r.service, Some(&"u1".parse().unwrap()), T0, HOLD).unwrap().is_some());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Request { svc: u8, key: Option<u8>, port: u16, family: u8, ip: Option<u8> },
            Release { svc: u8 },
            Wait { secs: u8 },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                5 => (0u8..12, proptest::option::of(0u8..2), 1u16..4, 0u8..3, proptest::option::weighted(0.2, 0u8..20))
                    .prop_map(|(svc, key, port, family, ip)| Op::Request { svc, key, port, family, ip }),
                3 => (0u8..12).prop_map(|svc| Op::Release { svc }),
                1 => (0u8..90).prop_map(|secs| Op::Wait { secs }),
            ]
        }

        fn fixture() -> Ipam {
            Ipam::new(
                vec![
                    pool("a", &["192.0.2.0/29", "2001:db8::/125"], |o| o.priority = Some(1)),
                    pool("b", &["192.0.2.250-192.0.3.5"], |o| o.avoid_buggy_ips = true),
                ],
                vec![Reservation { block: "192.0.2.3".parse().unwrap(), note: "gw".into() }],
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

            /// Across random requests, releases and waits: no address is held by two
            /// non-sharing services, every address is inside its pool and outside every
            /// reservation, and no one but its last holder gets a quarantined address.
            #[test]
            fn invariants_hold(ops in proptest::collection::vec(op(), 1..80)) {
                let mut m = fixture();
                let mut now = T0;
                let mut held_by_quarantine: HashMap<IpAddr, (ServiceKey, Timestamp)> = HashMap::new();
                for op in ops {
                    match op {
                        Op::Request { svc, key, port, family, ip } => {
                            let mut r = req(&format!("ns/s{svc}"));
                            r.sharing_key = key.map(|k| format!("k{k}").parse().unwrap());
                            r.ports = [format!("tcp/{port}").parse().unwrap()].into();
                            r.family = Some([FamilyRequest::Ipv4, FamilyRequest::Ipv6, FamilyRequest::Dual][usize::from(family)]);
                            if let Some(i) = ip {
                                let a = if i < 10 { format!("192.0.2.{i}") } else { format!("192.0.3.{}", i - 10) };
                                r.addresses = vec![a.parse().unwrap()];
                                r.family = None;
                            }
                            if let Ok(o) = m.allocate(&r, now, HOLD) {
                                for a in &o.allocation.addresses {
                                    if let Some((who, until)) = held_by_quarantine.get(a) {
                                        prop_assert!(
                                            who == &r.service || *until <= now,
                                            "{a} went to {} while quarantined for {who} until {until:?}", r.service
                                        );
                                    }
                                    // Taken back (or expired): the quarantine is over.
                                    held_by_quarantine.remove(a);
                                }
                                for q in &o.quarantined {
                                    held_by_quarantine.insert(q.address, (q.service.clone(), q.until));
                                }
                            }
                        }
                        Op::Release { svc } => {
                            let s: ServiceKey = format!("ns/s{svc}").parse().unwrap();
                            if let Some(rel) = m.release(&s, None, now, HOLD).unwrap() {
                                for q in rel.quarantined {
                                    held_by_quarantine.insert(q.address, (q.service, q.until));
                                }
                            }
                        }
                        Op::Wait { secs } => now = now.plus(Duration::from_secs(u64::from(secs))),
                    }
                    if let Err(e) = m.check_invariants() {
                        prop_assert!(false, "{}", e);
                    }
                }
            }

            /// The free set agrees with a plain BTreeSet model.
            #[test]
            fn free_set_matches_model(ops in proptest::collection::vec((any::<bool>(), 0u128..64, 0u128..8), 1..200)) {
                let mut s = FreeSet::default();
                let mut model = BTreeSet::new();
                for (insert, a, len) in ops {
                    if insert {
                        s.insert_range(a, a + len);
                        model.extend(a..=a + len);
                    } else {
                        let removed = s.remove_range(a, a + len);
                        let before = model.len();
                        model.retain(|x| !(a..=a + len).contains(x));
                        prop_assert_eq!(removed as usize, before - model.len());
                    }
                    prop_assert_eq!(s.len() as usize, model.len());
                    prop_assert_eq!(s.first(), model.first().copied());
                    for x in 0..80u128 {
                        prop_assert_eq!(s.contains(x), model.contains(&x));
                    }
                }
            }
        }
    }
}
