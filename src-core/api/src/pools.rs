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

impl App {
    /// Every pool with its usage, by name.
    pub async fn pools(&self) -> Result<Vec<PoolView>> {
        let ipam = self.store.snapshot().await?;
        Ok(ipam
            .pools()
            .map(|p| PoolView { pool: p.clone(), families: ipam.stats(&p.name).unwrap_or_default() })
            .collect())
    }

    pub async fn pool(&self, name: &PoolName) -> Result<PoolView> {
        let ipam = self.store.snapshot().await?;
        let pool = ipam.pool(name).ok_or_else(|| StoreError::UnknownPool(name.clone()))?;
        Ok(PoolView { pool: pool.clone(), families: ipam.stats(name).unwrap_or_default() })
    }

    /// Creates a pool; an existing name or any overlap is refused.
    pub async fn create_pool(&self, pool: Pool) -> Result<ConfigReport> {
        Ok(self.store.add_pool(pool, self.now()).await?)
    }

    /// Removes a pool; while its addresses are in use that is refused unless `force`,
    /// which releases them (recorded).
    pub async fn delete_pool(&self, name: &PoolName, force: bool) -> Result<ConfigReport> {
        Ok(self.store.remove_pool(name, force, self.now()).await?)
    }
}
