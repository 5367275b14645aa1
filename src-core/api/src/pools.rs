//! Pools: list with usage per family, show one, create, remove.

use serde::Serialize;
use vipvisor_ipam::FamilyStats;
use vipvisor_model::{Pool, PoolName};
use vipvisor_store::{ConfigReport, StoreError};

use crate::{App, Result};

/// A pool with its usage: `{"name", "addresses", …options, "families": [...]}`.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolView {
    #[serde(flatten)]
    pub pool: Pool,
    pub families: Vec<FamilyStats>,
}

fn view(ipam: &vipvisor_ipam::Ipam, p: &Pool) -> PoolView {
    PoolView { pool: p.clone(), families: ipam.stats(&p.name).unwrap_or_default() }
}

impl App {
    /// Every pool with its usage, by name.
    pub async fn pools(&self) -> Result<Vec<PoolView>> {
        Ok(self.store.read(|ipam| ipam.pools().map(|p| view(ipam, p)).collect()).await?)
    }

    pub async fn pool(&self, name: &PoolName) -> Result<PoolView> {
        let v = self.store.read(|ipam| ipam.pool(name).map(|p| view(ipam, p))).await?;
        Ok(v.ok_or_else(|| StoreError::UnknownPool(name.clone()))?)
    }

    /// Creates a pool; an existing name or any overlap is refused.
    pub async fn create_pool(&self, pool: Pool) -> Result<ConfigReport> {
        Ok(self.store.add_pool(pool, self.now()).await?)
    }

    /// Creates a pool, or with `replace` creates or changes it; with `dry_run` only checks
    /// it against the store (overlaps, allocations it would strand) and reports.
    pub async fn put_pool(&self, pool: Pool, replace: bool, dry_run: bool) -> Result<ConfigReport> {
        let how = vipvisor_store::PutPool { replace, dry_run };
        Ok(self.store.put_pool(pool, how, self.now()).await?)
    }

    /// Removes a pool; while its addresses are in use that is refused unless `force`,
    /// which releases them (recorded).
    pub async fn delete_pool(&self, name: &PoolName, force: bool) -> Result<ConfigReport> {
        Ok(self.store.remove_pool(name, force, self.now()).await?)
    }
}
