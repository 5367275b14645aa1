//! Allocations: give a service addresses (idempotent), release them into quarantine, list.

use std::net::IpAddr;

use serde::Serialize;
use vipvisor_ipam::{Change, IpamError, Outcome};
use vipvisor_model::{AllocRequest, Allocation, PoolName, Quarantined, ServiceKey, Uid};

use crate::{App, Result};

/// What a service holds after a request.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Allocated {
    #[cfg_attr(feature = "ts", ts(type = "string"))]
    pub service: ServiceKey,
    pub addresses: Vec<IpAddr>,
    #[cfg_attr(feature = "ts", ts(type = "string"))]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseResult {
    #[cfg_attr(feature = "ts", ts(type = "string"))]
    pub service: ServiceKey,
    /// Empty when the service held nothing.
    pub released: Vec<IpAddr>,
    pub quarantined_until: Option<String>,
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
