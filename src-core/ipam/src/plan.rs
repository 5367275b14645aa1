//! What a new configuration does to the allocations: a pure plan that the store then
//! writes. An allocation whose addresses are all inside one pool of the new configuration
//! that its namespace may use is kept, and moved to that pool if it was another one
//! (*re-homed*: renaming or splitting a pool, or changing its options, renumbers nothing).
//! Only allocations left outside every such pool, on a reserved address, or on a
//! `.0`/`.255` address of a pool that now avoids them are *stranded*.

use std::net::IpAddr;

use vipvisor_model::{ip_to_u128, AddressBlock, Allocation, Family, PoolName};

use crate::{Config, ConfigError, Ipam};

/// An allocation that stays, in another pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rehomed {
    /// The allocation as it is after the change.
    pub allocation: Allocation,
    /// The pool it was in.
    pub from: PoolName,
}

/// What happens to one pool or reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    Updated,
    Removed,
    Unchanged,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Removed => "removed",
            Action::Unchanged => "unchanged",
        }
    }
}

/// The effect of a configuration change.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The index after the change: the new configuration with every allocation that stays.
    pub next: Ipam,
    pub config: Config,
    pub pools: Vec<(PoolName, Action)>,
    pub reservations: Vec<(AddressBlock, Action)>,
    pub rehomed: Vec<Rehomed>,
    /// Allocations the change releases (only with `force`).
    pub stranded: Vec<Allocation>,
    /// Quarantined addresses that no pool holds any more: their entries go.
    pub dropped_quarantine: Vec<IpAddr>,
}

impl Plan {
    /// Whether the change writes anything.
    pub fn changes(&self) -> bool {
        !self.stranded.is_empty()
            || !self.rehomed.is_empty()
            || !self.dropped_quarantine.is_empty()
            || self.pools.iter().any(|(_, a)| *a != Action::Unchanged)
            || self.reservations.iter().any(|(_, a)| *a != Action::Unchanged)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Allocations the change would leave without a valid address (refused without force).
    #[error("the change would strand {} allocation(s)", .0.len())]
    WouldStrand(Vec<Allocation>),
}

/// Plans the change from `current` to `next`. Without `force`, stranding any allocation
/// is refused; with it, the stranded allocations are released.
pub fn plan(current: &Ipam, next: Config, force: bool) -> Result<Plan, PlanError> {
    next.check()?;
    let mut index = Ipam::new(next.pools.clone(), next.reservations.clone());
    let mut rehomed = Vec::new();
    let mut stranded = Vec::new();
    for a in current.allocations() {
        match home(&index, a) {
            Some(pool) => {
                let kept = Allocation { pool: pool.clone(), ..a.clone() };
                if *pool != a.pool {
                    rehomed.push(Rehomed { allocation: kept.clone(), from: a.pool.clone() });
                }
                index.restore(kept);
            }
            None => stranded.push(a.clone()),
        }
    }
    if !stranded.is_empty() && !force {
        return Err(PlanError::WouldStrand(stranded));
    }
    let mut dropped_quarantine = Vec::new();
    for q in current.quarantined() {
        if index.pool_of(&q.address).is_some() {
            index.restore_quarantine(q.clone());
        } else {
            dropped_quarantine.push(q.address);
        }
    }
    let old_pools: Vec<_> = current.pools().cloned().collect();
    let old_res: Vec<_> = current.reservations().cloned().collect();
    let pools = diff(&old_pools, &next.pools, |p| p.name.clone());
    let reservations = diff(&old_res, &next.reservations, |r| r.block);
    Ok(Plan { next: index, config: next, pools, reservations, rehomed, stranded, dropped_quarantine })
}

/// What happens to each item, by key: in `new` and not `old`, created; in both but
/// different, updated; in `old` only, removed (after the others). Hashed lookups: a file of
/// 100,000 pools is re-applied in linear time.
fn diff<T: PartialEq, K: Eq + std::hash::Hash + Clone>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> K,
) -> Vec<(K, Action)> {
    let before: std::collections::HashMap<K, &T> = old.iter().map(|o| (key(o), o)).collect();
    let after: std::collections::HashSet<K> = new.iter().map(&key).collect();
    let mut out: Vec<(K, Action)> = new
        .iter()
        .map(|n| {
            let k = key(n);
            let action = match before.get(&k) {
                None => Action::Created,
                Some(o) if *o != n => Action::Updated,
                Some(_) => Action::Unchanged,
            };
            (k, action)
        })
        .collect();
    out.extend(old.iter().map(&key).filter(|k| !after.contains(k)).map(|k| (k, Action::Removed)));
    out
}

/// The pool of `next` that can keep `a`: the one holding all its addresses, usable there
/// (not reserved, not a skipped .0/.255) and open to its namespace. Selectors are checked
/// again when the service next asks (the labels are not part of an allocation).
fn home<'a>(next: &'a Ipam, a: &Allocation) -> Option<&'a PoolName> {
    let first = a.addresses.first()?;
    let pool = next.pool_of(first)?;
    let st = next.pools.get(pool)?;
    let ns = a.service.namespace();
    if !st.pool.options.namespaces.is_empty() && !st.pool.options.namespaces.contains(ns) {
        return None;
    }
    let usable = a.addresses.iter().all(|ip| {
        next.pool_of(ip) == Some(pool)
            && next.reservation_of(ip).is_none()
            && st.fam(Family::of(ip)).space.to_dense(ip_to_u128(ip)).is_some()
    });
    usable.then_some(pool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vipvisor_model::{AllocRequest, Pool, PoolOptions, Reservation, Timestamp};

    const T0: Timestamp = Timestamp(1_000_000);
    const HOLD: Duration = Duration::from_secs(60);

    fn pool(name: &str, blocks: &[&str], f: impl FnOnce(&mut PoolOptions)) -> Pool {
        let mut o = PoolOptions::default();
        f(&mut o);
        Pool::new(name.parse().unwrap(), blocks.iter().map(|b| b.parse().unwrap()).collect(), o).unwrap()
    }
    fn config(pools: Vec<Pool>) -> Config {
        Config { pools, reservations: vec![] }
    }
    fn with(pools: Vec<Pool>, services: &[&str]) -> Ipam {
        let mut m = Ipam::new(pools, vec![]);
        for s in services {
            m.allocate(&AllocRequest::new(s.parse().unwrap()), T0, HOLD).unwrap();
        }
        m
    }
    fn addr_of(m: &Ipam, s: &str) -> (String, Vec<IpAddr>) {
        let a = m.allocation(&s.parse().unwrap()).unwrap();
        (a.pool.to_string(), a.addresses.clone())
    }

    /// Named cases, replayed from MetalLB's allocator tests on reconfiguration.
    #[test]
    fn reconfiguration_table() {
        // "renaming a pool keeps every address": same blocks, new name, nothing stranded.
        let cur = with(vec![pool("old", &["192.0.2.0/29"], |_| {})], &["ns/a", "ns/b"]);
        let p = plan(&cur, config(vec![pool("new", &["192.0.2.0/29"], |_| {})]), false).unwrap();
        assert!(p.stranded.is_empty(), "a rename strands nothing");
        assert_eq!(p.rehomed.len(), 2, "both allocations move to the new name");
        assert_eq!(addr_of(&p.next, "ns/a"), ("new".into(), addr_of(&cur, "ns/a").1), "same address, new pool");
        assert_eq!(p.pools, vec![("new".parse().unwrap(), Action::Created), ("old".parse().unwrap(), Action::Removed)]);

        // "splitting a pool keeps each address in the half that holds it".
        let cur = with(vec![pool("all", &["192.0.2.0/28"], |_| {})], &["ns/a"]);
        let mut m = cur.clone();
        let mut r = AllocRequest::new("ns/z".parse().unwrap());
        r.addresses = vec!["192.0.2.12".parse().unwrap()];
        m.allocate(&r, T0, HOLD).unwrap();
        let split = config(vec![pool("low", &["192.0.2.0/29"], |_| {}), pool("high", &["192.0.2.8/29"], |_| {})]);
        let p = plan(&m, split, false).unwrap();
        assert_eq!(addr_of(&p.next, "ns/a").0, "low");
        assert_eq!(addr_of(&p.next, "ns/z").0, "high");

        // "turning on avoid_buggy_ips strands only a .0 holder".
        let cur = with(vec![pool("p", &["192.0.2.0/30"], |_| {})], &["ns/zero", "ns/one"]);
        let buggy = config(vec![pool("p", &["192.0.2.0/30"], |o| o.avoid_buggy_ips = true)]);
        match plan(&cur, buggy.clone(), false) {
            Err(PlanError::WouldStrand(v)) => {
                assert_eq!(v.len(), 1, "only the holder of .0 is stranded");
                assert_eq!(v[0].service.to_string(), "ns/zero");
            }
            other => panic!("expected the .0 holder to be stranded, got {other:?}"),
        }
        let p = plan(&cur, buggy, true).unwrap();
        assert_eq!(p.stranded.len(), 1);
        assert!(p.next.allocation(&"ns/one".parse().unwrap()).is_some(), "ns/one stays");
        p.next.check_invariants().unwrap();

        // "shrinking a pool strands those outside it; a namespace limit strands others".
        let cur = with(vec![pool("p", &["192.0.2.0/30"], |_| {})], &["web/a", "db/b"]);
        let limited = config(vec![pool("p", &["192.0.2.0/30"], |o| o.namespaces = ["web".to_string()].into())]);
        let Err(PlanError::WouldStrand(v)) = plan(&cur, limited, false) else { panic!("db/b may not use the pool") };
        assert_eq!(v.iter().map(|a| a.service.to_string()).collect::<Vec<_>>(), ["db/b"]);

        // "reserving a used address strands its holder".
        let cur = with(vec![pool("p", &["192.0.2.0/30"], |_| {})], &["ns/a"]);
        let mut c = config(vec![pool("p", &["192.0.2.0/30"], |_| {})]);
        c.reservations.push(Reservation { block: "192.0.2.0".parse().unwrap(), note: "gw".into() });
        assert!(matches!(plan(&cur, c, false), Err(PlanError::WouldStrand(_))));

        // "the same configuration changes nothing".
        let cur = with(vec![pool("p", &["192.0.2.0/30"], |_| {})], &["ns/a"]);
        let p = plan(&cur, config(vec![pool("p", &["192.0.2.0/30"], |_| {})]), false).unwrap();
        assert!(!p.changes(), "applying the same configuration is a no-op");
    }

    #[test]
    fn quarantine_follows_the_addresses() {
        let mut cur = with(vec![pool("old", &["192.0.2.0/30"], |_| {})], &["ns/a"]);
        cur.release(&"ns/a".parse().unwrap(), None, T0, HOLD).unwrap();
        let p = plan(&cur, config(vec![pool("new", &["192.0.2.0/30"], |_| {})]), false).unwrap();
        assert_eq!(p.next.quarantined().len(), 1, "a rename keeps the quarantine");
        let p = plan(&cur, config(vec![pool("else", &["198.51.100.0/30"], |_| {})]), false).unwrap();
        assert_eq!(p.dropped_quarantine.len(), 1, "an address outside every pool leaves quarantine");
    }
}
