//! Allocations: give a service addresses (idempotent), release them into quarantine, list.

use std::net::IpAddr;

use serde::Serialize;
use vipvisor_ipam::{Change, IpamError, Outcome};
use vipvisor_model::{AllocRequest, Allocation, PoolName, Quarantined, ServiceKey, Uid};

use crate::{ApiError, App, ErrorCode, Result};

/// What a service holds after a request.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Allocated {
    #[cfg_attr(feature = "ts", ts(type = "string"))]
    #[schema(value_type = String)]
    pub service: ServiceKey,
    #[schema(value_type = Vec<String>)]
    pub addresses: Vec<IpAddr>,
    #[cfg_attr(feature = "ts", ts(type = "string"))]
    #[schema(value_type = String)]
    pub pool: PoolName,
    pub change: Change,
}

impl From<&Outcome> for Allocated {
    fn from(o: &Outcome) -> Self {
        Allocated {
            service: o.allocation.service.clone(),
            addresses: o.allocation.addresses.clone(),
            pool: o.allocation.pool.clone(),
            change: o.change.clone(),
        }
    }
}

/// What a release did.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReleaseResult {
    #[cfg_attr(feature = "ts", ts(type = "string"))]
    #[schema(value_type = String)]
    pub service: ServiceKey,
    /// Empty when the service held nothing.
    #[schema(value_type = Vec<String>)]
    pub released: Vec<IpAddr>,
    pub quarantined_until: Option<String>,
}

/// The largest page of a listing.
pub const MAX_PAGE: usize = 10_000;

/// Which allocations to list: filters (all optional) and a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationQuery {
    pub pool: Option<String>,
    pub namespace: Option<String>,
    pub address: Option<IpAddr>,
    pub offset: usize,
    pub limit: usize,
}

impl Default for AllocationQuery {
    fn default() -> Self {
        AllocationQuery { pool: None, namespace: None, address: None, offset: 0, limit: 100 }
    }
}

/// One page of a listing: `total` matches, `items` from `offset` on.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub total: usize,
    pub offset: usize,
    pub items: Vec<T>,
}

impl App {
    /// Gives `req.service` addresses (idempotent: asking again changes nothing).
    pub async fn allocate(&self, req: &AllocRequest) -> Result<Allocated> {
        Ok(Allocated::from(&self.allocate_outcome(req).await?))
    }

    /// Many requests in one transaction (the controller's initial pass). Each request gets
    /// its own result; a store failure fails the batch.
    pub async fn allocate_many(&self, reqs: &[AllocRequest]) -> Result<Vec<Result<Outcome, IpamError>>> {
        Ok(self.store.allocate_many(reqs, self.now(), self.quarantine).await?)
    }

    /// The full outcome of one request (the controller needs what changed).
    pub async fn allocate_outcome(&self, req: &AllocRequest) -> Result<Outcome> {
        Ok(self.store.allocate(req, self.now(), self.quarantine).await?)
    }

    /// Releases a service's addresses into quarantine; with `uid`, only if the service's
    /// recorded UID is that one.
    pub async fn release(&self, service: &ServiceKey, uid: Option<&Uid>) -> Result<ReleaseResult> {
        let r = self.store.release(service, uid, self.now(), self.quarantine).await?;
        Ok(ReleaseResult {
            service: service.clone(),
            released: r.as_ref().map(|r| r.allocation.addresses.clone()).unwrap_or_default(),
            quarantined_until: r.as_ref().and_then(|r| r.quarantined.first()).map(|q| q.until.rfc3339()),
        })
    }

    /// Every allocation, by service.
    pub async fn allocations(&self) -> Result<Vec<Allocation>> {
        Ok(self.store.read(|i| i.allocations().into_iter().cloned().collect()).await?)
    }

    /// The allocations matching `q`, by service, `q.limit` of them from `q.offset` on.
    pub async fn allocations_page(&self, q: &AllocationQuery) -> Result<Page<Allocation>> {
        if q.limit == 0 || q.limit > MAX_PAGE {
            return Err(ApiError::new(
                ErrorCode::InvalidValue,
                format!("invalid limit {}; expected 1 to {MAX_PAGE}", q.limit),
            ));
        }
        let q = q.clone();
        Ok(self
            .store
            .read(move |i| {
                let all: Vec<&Allocation> = i
                    .allocations()
                    .into_iter()
                    .filter(|a| q.pool.as_deref().is_none_or(|p| a.pool.as_str() == p))
                    .filter(|a| q.namespace.as_deref().is_none_or(|n| a.service.namespace() == n))
                    .filter(|a| q.address.is_none_or(|ip| a.addresses.contains(&ip)))
                    .collect();
                let total = all.len();
                let items = all.into_iter().skip(q.offset).take(q.limit).cloned().collect();
                Page { total, offset: q.offset, items }
            })
            .await?)
    }

    /// Forgets (without quarantine) the allocations for which `keep` is false, and every
    /// quarantine entry: a new controller leader keeps what agrees with the cluster and
    /// rebuilds the rest from it. Returns how many entries went.
    pub async fn forget_allocations(&self, keep: impl Fn(&Allocation) -> bool) -> Result<usize> {
        Ok(self.store.forget(keep, self.now()).await?)
    }

    /// Puts quarantine entries recorded elsewhere (the cluster) back; entries already
    /// over, or for addresses in use, reserved or outside every pool, are skipped. Returns
    /// the entries restored.
    pub async fn restore_quarantine(&self, entries: Vec<Quarantined>) -> Result<Vec<Quarantined>> {
        Ok(self.store.restore_quarantine(entries, self.now()).await?)
    }

    /// Every quarantined address with its last holder and end.
    pub async fn quarantined(&self) -> Result<Vec<Quarantined>> {
        Ok(self.store.read(|i| i.quarantined().into_iter().cloned().collect()).await?)
    }
}
