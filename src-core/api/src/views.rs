//! Read models for what the UI shows beyond the nouns: who announces each VIP (and which
//! MACs were seen answering for it), the failover history, a VIP's page, a pool's detail
//! (free ranges, address map, usage history) and why a service gets no address.
//!
//! Owners reach the store from the speakers: the controller turns the speakers'
//! `ServiceL2Status` reports into [`App::set_owners`] (Kubernetes); a static group member
//! run with `--record` writes its own share and its sightings (it shares the store file).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Serialize;
use vipvisor_model::{ip_to_u128, u128_to_ip, AllocRequest, Allocation, Family, PoolName, Reservation};
use vipvisor_store::{GrantRow, OwnerClaim, OwnerScope, OwnerSpan, Sighting, SpanQuery};

use crate::{ApiError, App, ErrorCode, Result};

/// Sightings newer than this count for the split-brain check.
pub const RECENT_MS: i64 = 60_000;
/// The previous owner's frames still in flight this long after a takeover are not a
/// second answerer.
pub const HANDOVER_MS: i64 = 1_000;
/// Pools of at most this many addresses get an address map.
pub const MAP_LIMIT: u128 = 1024;
/// At most this many free ranges per family.
pub const FREE_RANGES: usize = 256;

/// One failover: the owner of `address` changed from `from` to `to` at `at_ms`.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Failover {
    #[cfg_attr(feature = "ts", ts(type = "string"))]
    #[schema(value_type = String)]
    pub address: IpAddr,
    pub from: String,
    pub to: String,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    #[schema(value_type = u64)]
    pub at_ms: i64,
    /// How long nobody announced it: known when the previous owner said it stopped
    /// (`released`); `null` when it was taken over from a node that went silent.
    #[cfg_attr(feature = "ts", ts(type = "number | null"))]
    #[schema(value_type = Option<u64>)]
    pub gap_ms: Option<i64>,
}

/// Everything about one VIP.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct VipView {
    #[cfg_attr(feature = "ts", ts(type = "string"))]
    #[schema(value_type = String)]
    pub address: IpAddr,
    #[cfg_attr(feature = "ts", ts(type = "string | null"))]
    #[schema(value_type = Option<String>)]
    pub pool: Option<PoolName>,
    /// The services holding it (several when shared).
    pub allocations: Vec<Allocation>,
    /// `allocated`, `quarantined`, `reserved`, `free` or `outside` (in no pool).
    pub state: String,
    /// The elected owner now.
    pub owner: Option<OwnerSpan>,
    /// Its owners over time, oldest first (the newest 100).
    pub history: Vec<OwnerSpan>,
    pub failovers: Vec<Failover>,
    /// MACs seen answering for it, newest first.
    pub seen: Vec<Sighting>,
    /// Why the MACs seen and the elected owner disagree, when they do.
    pub split_brain: Option<String>,
    /// The hypervisor grants that let a node announce it.
    pub grants: Vec<GrantRow>,
}

/// A free range of a pool.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FreeRange {
    #[cfg_attr(feature = "ts", ts(type = "string"))]
    #[schema(value_type = String)]
    pub first: IpAddr,
    #[cfg_attr(feature = "ts", ts(type = "string"))]
    #[schema(value_type = String)]
    pub last: IpAddr,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    #[schema(value_type = u64)]
    pub count: u128,
}

/// One address of a small pool, for the address map.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Cell {
    #[cfg_attr(feature = "ts", ts(type = "string"))]
    #[schema(value_type = String)]
    pub address: IpAddr,
    /// `free`, `allocated`, `quarantined`, `reserved`, `excluded` (.0/.255 skipped), or
    /// `conflict` (a MAC that is no member's was seen answering for it).
    pub state: String,
    /// The holder, last holder (quarantined) or reservation note.
    pub note: String,
}

/// Used addresses of a pool after a change.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UsagePoint {
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    #[schema(value_type = u64)]
    pub at_ms: i64,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    #[schema(value_type = u64)]
    pub used: u64,
}

/// A pool's page.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PoolDetail {
    #[schema(value_type = Object)]
    pub pool: crate::pools::PoolView,
    /// Reservations inside the pool's blocks.
    pub reservations: Vec<Reservation>,
    /// Free addresses as ranges, per family lowest first (at most 256 each).
    pub free: Vec<FreeRange>,
    /// One cell per address, for pools of at most 1024 addresses (else empty).
    pub cells: Vec<Cell>,
    pub allocations: Vec<Allocation>,
    /// Used addresses over time, from the audit log (oldest first, at most 500 points).
    pub history: Vec<UsagePoint>,
}

/// Why one pool did not give an address.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PoolReason {
    pub pool: String,
    pub reason: String,
}

/// Why a service has (or would get) no address.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Pending {
    pub service: String,
    /// The error's stable code (`no_eligible_pool`, `pool_exhausted`, …); `null` when an
    /// address would be given.
    #[schema(value_type = Option<String>)]
    pub code: Option<ErrorCode>,
    pub message: String,
    /// The reason per pool, in the order pools are tried.
    pub pools: Vec<PoolReason>,
    /// What would be given (a dry run), when something would.
    #[schema(value_type = Vec<String>)]
    pub would_get: Vec<IpAddr>,
    /// What is wrong with the Service's annotations (ignored values), from the controller.
    pub warnings: Vec<String>,
}

/// A hypervisor grant as the UI shows it: the provider's record as JSON.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct GrantView {
    pub provider: String,
    pub vm: String,
    pub mac: String,
    pub node: String,
    #[cfg_attr(feature = "ts", ts(type = "Array<string>"))]
    #[schema(value_type = Vec<String>)]
    pub vips: Vec<IpAddr>,
    /// What vipvisor added to the NIC (the provider's record).
    #[cfg_attr(feature = "ts", ts(type = "unknown"))]
    #[schema(value_type = Object)]
    pub record: serde_json::Value,
    /// `applied` or `failed`.
    pub state: String,
    pub error: String,
}

/// The failovers in `spans` (any order): consecutive stretches of one address held by
/// different nodes.
pub fn failovers(spans: &[OwnerSpan]) -> Vec<Failover> {
    let mut by: BTreeMap<IpAddr, Vec<&OwnerSpan>> = BTreeMap::new();
    for s in spans {
        by.entry(s.address).or_default().push(s);
    }
    let mut out = Vec::new();
    for (address, mut list) in by {
        list.sort_by_key(|s| (s.start_ms, s.id));
        for w in list.windows(2) {
            let (a, b) = (w[0], w[1]);
            if a.node == b.node {
                continue;
            }
            let gap_ms = match (a.ended.as_str(), a.end_ms) {
                ("released", Some(end)) => Some((b.start_ms - end).max(0)),
                _ => None,
            };
            out.push(Failover { address, from: a.node.clone(), to: b.node.clone(), at_ms: b.start_ms, gap_ms });
        }
    }
    out.sort_by_key(|f| (f.at_ms, f.address));
    out
}

/// Why the MACs seen for a VIP and its elected owner disagree, if they do.
/// Only sightings of the last minute count, and only those since the current owner took
/// over (the previous owner's announcements before a failover are history, not a second
/// answerer).
pub fn split_brain(owner: Option<&OwnerSpan>, seen: &[Sighting], now_ms: i64) -> Option<String> {
    let from = (now_ms - RECENT_MS).max(owner.map_or(i64::MIN, |o| o.start_ms + HANDOVER_MS));
    let recent: BTreeSet<String> =
        seen.iter().filter(|s| s.last_ms >= from).map(|s| s.mac.to_ascii_lowercase()).collect();
    let theirs: BTreeSet<String> = owner
        .map(|o| o.mac.split(',').map(|m| m.trim().to_ascii_lowercase()).filter(|m| !m.is_empty()).collect())
        .unwrap_or_default();
    // The owner's MACs known: any other MAC is a second answerer (the owner's own NICs
    // are not). Not known: more than one MAC is.
    if let (Some(owner), false) = (owner, theirs.is_empty()) {
        let other = recent.iter().find(|m| !theirs.contains(*m))?;
        return Some(format!(
            "answered by {other}, but the elected owner is node {} ({})",
            owner.node,
            theirs.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    (recent.len() > 1).then(|| {
        let list: Vec<&str> = recent.iter().map(String::as_str).collect();
        format!("{} MACs answered since the owner took over: {}", recent.len(), list.join(", "))
    })
}

impl App {
    /// Who announces each address now, by address.
    pub async fn owners(&self) -> Result<Vec<OwnerSpan>> {
        Ok(self.store.ownership(&SpanQuery { open_only: true, ..SpanQuery::default() }).await?)
    }

    /// Ownership stretches still open at or ending after `since_ms` (the newest `limit`),
    /// with the failovers among them: the swimlanes.
    pub async fn ownership_history(
        &self,
        address: Option<IpAddr>,
        since_ms: Option<i64>,
        limit: u32,
    ) -> Result<(Vec<OwnerSpan>, Vec<Failover>)> {
        let spans =
            self.store.ownership(&SpanQuery { address, open_only: false, since_ms, limit: Some(limit) }).await?;
        let f = failovers(&spans);
        Ok((spans, f))
    }

    /// Records the elected owners of `source` (see [`vipvisor_store::Store::set_owners`]).
    pub async fn set_owners(
        &self,
        source: &'static str,
        owners: &BTreeMap<IpAddr, OwnerClaim>,
        scope: OwnerScope<'_>,
    ) -> Result<usize> {
        Ok(self.store.set_owners(source, owners, scope, self.now()).await?)
    }

    /// Records that `observer` saw `mac` answer for `address` `count` more times, the
    /// last of them `ago` before now (a speaker writes its sightings in batches).
    pub async fn saw(
        &self,
        address: IpAddr,
        mac: &str,
        observer: &str,
        interface: &str,
        count: i64,
        span: (std::time::Duration, std::time::Duration),
    ) -> Result<()> {
        let now = self.now();
        let at = |ago: std::time::Duration| {
            vipvisor_model::Timestamp(now.0.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX)))
        };
        Ok(self.store.add_sighting(address, mac, observer, interface, count, (at(span.0), at(span.1)), now).await?)
    }

    /// The hypervisor grants vipvisor holds.
    pub async fn grants(&self) -> Result<Vec<GrantView>> {
        Ok(self
            .store
            .grants()
            .await?
            .into_iter()
            .map(|g| GrantView {
                record: serde_json::from_str(&g.record).unwrap_or(serde_json::Value::String(g.record.clone())),
                provider: g.provider,
                vm: g.vm,
                mac: g.mac,
                node: g.node,
                vips: g.vips,
                state: g.state,
                error: g.error,
            })
            .collect())
    }

    /// What `service` holds, if anything.
    pub async fn allocation(&self, service: &vipvisor_model::ServiceKey) -> Result<Option<Allocation>> {
        Ok(self.store.read(|ipam| ipam.allocation(service).cloned()).await?)
    }

    /// A VIP's page.
    pub async fn vip(&self, address: IpAddr) -> Result<VipView> {
        let (pool, allocations, state) = self
            .store
            .read(|ipam| {
                let pool = ipam.pool_of(&address).cloned();
                let allocations: Vec<Allocation> =
                    ipam.allocations().into_iter().filter(|a| a.addresses.contains(&address)).cloned().collect();
                let state = if !allocations.is_empty() {
                    "allocated"
                } else if ipam.quarantined().iter().any(|q| q.address == address) {
                    "quarantined"
                } else if ipam.reservation_of(&address).is_some() {
                    "reserved"
                } else if pool.is_some() {
                    "free"
                } else {
                    "outside"
                };
                (pool, allocations, state.to_owned())
            })
            .await?;
        let history = self
            .store
            .ownership(&SpanQuery { address: Some(address), limit: Some(100), ..SpanQuery::default() })
            .await?;
        let owner = history.iter().rev().find(|s| s.end_ms.is_none()).cloned();
        let seen = self.store.sightings(Some(address)).await?;
        let grants: Vec<GrantRow> =
            self.store.grants().await?.into_iter().filter(|g| g.vips.contains(&address)).collect();
        let now = self.now().0;
        Ok(VipView {
            address,
            pool,
            allocations,
            state,
            split_brain: split_brain(owner.as_ref(), &seen, now),
            failovers: failovers(&history),
            owner,
            history,
            seen,
            grants,
        })
    }

    /// A pool's page.
    pub async fn pool_detail(&self, name: &PoolName) -> Result<PoolDetail> {
        let pool = self.pool(name).await?;
        let conflicts: BTreeSet<IpAddr> = {
            let owners = self.owners().await?;
            let now = self.now().0;
            let mut bad = BTreeSet::new();
            let mut seen: BTreeMap<IpAddr, Vec<Sighting>> = BTreeMap::new();
            for s in self.store.sightings(None).await? {
                seen.entry(s.address).or_default().push(s);
            }
            for (a, list) in &seen {
                if split_brain(owners.iter().find(|o| o.address == *a), list, now).is_some() {
                    bad.insert(*a);
                }
            }
            bad
        };
        let (reservations, free, cells, allocations) = self
            .store
            .read(|ipam| {
                let p = &pool.pool;
                let reservations: Vec<Reservation> = ipam
                    .reservations()
                    .filter(|r| ipam.pool_of(&r.block.range().first()) == Some(&p.name))
                    .cloned()
                    .collect();
                let free: Vec<FreeRange> = ipam
                    .free_ranges(&p.name, FREE_RANGES)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(first, last, count)| FreeRange { first, last, count })
                    .collect();
                let allocations: Vec<Allocation> = ipam.allocations_in(&p.name).into_iter().cloned().collect();
                let size = p.addresses.iter().fold(0u128, |a, b| a.saturating_add(b.range().size()));
                let mut cells = Vec::new();
                if size <= MAP_LIMIT {
                    let held: BTreeMap<IpAddr, String> = allocations
                        .iter()
                        .flat_map(|a| a.addresses.iter().map(move |ip| (*ip, a.service.to_string())))
                        .collect();
                    let quarantined: BTreeMap<IpAddr, String> =
                        ipam.quarantined().into_iter().map(|q| (q.address, q.service.to_string())).collect();
                    let free_set: BTreeSet<u128> = free
                        .iter()
                        .flat_map(|r| {
                            let (a, b) = (ip_to_u128(&r.first), ip_to_u128(&r.last));
                            a..=b
                        })
                        .collect();
                    for b in &p.addresses {
                        let r = b.range();
                        for raw in r.first_raw()..=r.last_raw() {
                            let ip = u128_to_ip(r.family(), raw);
                            let (state, note) = if let Some(s) = held.get(&ip) {
                                ("allocated", s.clone())
                            } else if let Some(s) = quarantined.get(&ip) {
                                ("quarantined", s.clone())
                            } else if let Some(res) = ipam.reservation_of(&ip) {
                                ("reserved", res.note.clone())
                            } else if p.options.avoid_buggy_ips
                                && r.family() == Family::V4
                                && matches!(raw & 0xff, 0 | 255)
                            {
                                ("excluded", String::new())
                            } else if free_set.contains(&raw) {
                                ("free", String::new())
                            } else {
                                ("excluded", String::new())
                            };
                            let state = if conflicts.contains(&ip) { "conflict" } else { state };
                            cells.push(Cell { address: ip, state: state.to_owned(), note });
                        }
                    }
                }
                (reservations, free, cells, allocations)
            })
            .await?;
        let used_now: u64 = pool.families.iter().map(|f| u64::try_from(f.used).unwrap_or(u64::MAX)).sum();
        let history = self.usage_history(name, used_now).await?;
        Ok(PoolDetail { pool, reservations, free, cells, allocations, history })
    }

    /// Used addresses of `pool` over time, walked back from `used_now` through the audit
    /// log's allocation events (the newest 5,000 of them).
    async fn usage_history(&self, pool: &PoolName, used_now: u64) -> Result<Vec<UsagePoint>> {
        let events = self.store.events(None, Some(5000)).await?;
        let mut points = vec![UsagePoint { at_ms: self.now().0, used: used_now }];
        let mut used = used_now as i64;
        let mut oldest = None;
        for e in events.iter().rev() {
            if e.kind == "address.rehomed" && e.detail.get("from").and_then(|p| p.as_str()) == Some(pool.as_str()) {
                // Moved away to another pool: before it, this pool held them.
                let n = e.detail.get("addresses").and_then(|a| a.as_array()).map_or(0, Vec::len) as i64;
                points.push(UsagePoint { at_ms: e.at_ms, used: used.max(0) as u64 });
                used += n;
                oldest = Some(e.at_ms);
                continue;
            }
            if e.detail.get("pool").and_then(|p| p.as_str()) != Some(pool.as_str()) {
                continue;
            }
            let n = e.detail.get("addresses").and_then(|a| a.as_array()).map_or(0, Vec::len) as i64;
            let prev = e.detail.get("previous").and_then(|a| a.as_array()).map_or(0, Vec::len) as i64;
            let delta = match e.kind.as_str() {
                "address.allocated" => n,
                "address.updated" => n - prev,
                "address.released" | "address.force_released" => -n,
                // Moved here from another pool (a rename or split).
                "address.rehomed" => n,
                _ => continue,
            };
            points.push(UsagePoint { at_ms: e.at_ms, used: used.max(0) as u64 });
            used -= delta;
            oldest = Some(e.at_ms);
        }
        // Before the oldest change: what was used then.
        if let Some(at) = oldest {
            points.push(UsagePoint { at_ms: at - 1, used: used.max(0) as u64 });
        }
        points.reverse();
        if points.len() > 500 {
            let step = points.len().div_ceil(500);
            let last = points.last().cloned();
            points = points.into_iter().step_by(step).collect();
            if let Some(l) = last {
                if points.last() != Some(&l) {
                    points.push(l);
                }
            }
        }
        Ok(points)
    }

    /// Why `req` gets no address (a dry run of the allocation: nothing is written), per
    /// pool in the order they are tried.
    pub async fn explain(&self, req: &AllocRequest) -> Result<Pending> {
        let now = self.now();
        let hold = self.quarantine;
        let (res, pools, asked_pool) = self
            .store
            .read(|ipam| {
                let mut scratch = ipam.clone();
                let res = scratch.allocate(req, now, hold);
                let pools: Vec<(PoolName, Option<Vec<vipvisor_ipam::FamilyStats>>)> =
                    ipam.pools().map(|p| (p.name.clone(), ipam.stats(&p.name))).collect();
                let asked = req.addresses.first().and_then(|a| ipam.pool_of(a).cloned());
                (res, pools, asked)
            })
            .await?;
        let service = req.service.to_string();
        match res {
            Ok(o) => Ok(Pending {
                service,
                code: None,
                message: format!("would get {} from pool {}", join(&o.allocation.addresses), o.allocation.pool),
                pools: vec![],
                would_get: o.allocation.addresses,
                warnings: vec![],
            }),
            Err(e) => {
                use vipvisor_ipam::IpamError as E;
                let reasons: Vec<PoolReason> = match &e {
                    E::NoEligiblePool { reasons, .. } => {
                        reasons.iter().map(|(p, r)| PoolReason { pool: p.to_string(), reason: r.clone() }).collect()
                    }
                    E::Exhausted { pools: names, families, .. } => names
                        .iter()
                        .map(|n| {
                            let stats =
                                pools.iter().find(|(p, _)| p == n).and_then(|(_, s)| s.clone()).unwrap_or_default();
                            let parts: Vec<String> = stats
                                .iter()
                                .filter(|s| families.contains(&s.family))
                                .map(|s| format!("{}: {} free of {}", s.family, s.free, s.size))
                                .collect();
                            PoolReason { pool: n.to_string(), reason: format!("exhausted ({})", parts.join(", ")) }
                        })
                        .collect(),
                    E::PoolNotEligible { pool, reason, .. } => {
                        vec![PoolReason { pool: pool.to_string(), reason: reason.clone() }]
                    }
                    E::InUse { .. } | E::PortClash { .. } | E::Quarantined { .. } | E::Reserved { .. } => {
                        let pool = asked_pool.as_ref().map_or_else(String::new, ToString::to_string);
                        vec![PoolReason { pool, reason: e.to_string() }]
                    }
                    _ => vec![],
                };
                let api = ApiError::from(e);
                Ok(Pending {
                    service,
                    code: Some(api.code),
                    message: api.message,
                    pools: reasons,
                    would_get: vec![],
                    warnings: vec![],
                })
            }
        }
    }
}

fn join(a: &[IpAddr]) -> String {
    a.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: i64, node: &str, start: i64, end: Option<i64>, ended: &str) -> OwnerSpan {
        OwnerSpan {
            id,
            address: "192.0.2.10".parse().unwrap(),
            node: node.into(),
            interface: "eth0".into(),
            mac: format!("02:00:00:00:00:0{id}"),
            source: "group".into(),
            start_ms: start,
            end_ms: end,
            ended: ended.into(),
        }
    }

    #[test]
    fn a_failover_has_a_gap_only_when_the_old_owner_said_it_stopped() {
        let spans = [
            span(1, "a", 0, Some(1000), "released"),
            span(2, "b", 1250, Some(5000), "taken"),
            span(3, "c", 5000, None, ""),
        ];
        let f = failovers(&spans);
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].from.as_str(), f[0].to.as_str(), f[0].gap_ms), ("a", "b", Some(250)));
        assert_eq!((f[1].from.as_str(), f[1].to.as_str(), f[1].gap_ms, f[1].at_ms), ("b", "c", None, 5000));
        // The same node again is not a failover.
        assert!(failovers(&[span(1, "a", 0, Some(10), "released"), span(2, "a", 20, None, "")]).is_empty());
    }

    fn seen(mac: &str, last: i64) -> Sighting {
        Sighting {
            address: "192.0.2.10".parse().unwrap(),
            mac: mac.into(),
            observer: "b".into(),
            interface: "eth0".into(),
            first_ms: 0,
            last_ms: last,
            count: 1,
        }
    }

    #[test]
    fn split_brain_is_two_recent_macs_or_one_that_is_not_the_owners() {
        let owner = span(1, "a", 0, None, "");
        let now = 100_000;
        assert_eq!(split_brain(Some(&owner), &[seen("02:00:00:00:00:01", now - 10)], now), None);
        let other = split_brain(Some(&owner), &[seen("02:00:00:00:00:99", now - 10)], now).unwrap();
        assert!(other.contains("02:00:00:00:00:99") && other.contains("node a"), "{other}");
        let two = split_brain(None, &[seen("02:00:00:00:00:01", now), seen("02:00:00:00:00:02", now)], now).unwrap();
        assert!(two.starts_with("2 MACs answered since"), "{two}");
        // An owner answering on two of its own NICs is not split.
        let two_nics = OwnerSpan { mac: "02:00:00:00:00:01,02:00:00:00:00:03".into(), ..span(1, "a", 0, None, "") };
        let both = [seen("02:00:00:00:00:01", now), seen("02:00:00:00:00:03", now)];
        assert_eq!(split_brain(Some(&two_nics), &both, now), None);
        // An old sighting is history, not an alarm; so is the previous owner's MAC seen
        // before this owner took over.
        assert_eq!(split_brain(Some(&owner), &[seen("02:00:00:00:00:99", now - RECENT_MS - 1)], now), None);
        let newer = span(1, "a", now - 5_000, None, "");
        // Within the handover's grace after the takeover: not yet an alarm.
        let grace = [seen("02:00:00:00:00:01", now), seen("02:00:00:00:00:02", now - 5_000 + HANDOVER_MS - 1)];
        assert_eq!(split_brain(Some(&newer), &grace, now), None);
        let before = [seen("02:00:00:00:00:01", now - 100), seen("02:00:00:00:00:02", now - 6_000)];
        assert_eq!(split_brain(Some(&newer), &before, now), None);
        assert!(split_brain(Some(&newer), &[before[0].clone(), seen("02:00:00:00:00:02", now - 10)], now).is_some());
    }
}
