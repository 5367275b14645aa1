//! Apply a configuration (a pools file): make the store hold it, idempotently.

use vipvisor_model::config::{parse_pools_file, Config};
use vipvisor_model::limits;
use vipvisor_store::ConfigReport;

use crate::{ApiError, App, ErrorCode, Result};

/// How to apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Also remove pools and reservations that are not in the configuration.
    pub prune: bool,
    /// Release allocations the change leaves outside every pool (recorded).
    pub force: bool,
    /// With `prune`, accept a configuration without pools (which removes every pool):
    /// an empty or comment-only file is far more often a mistake than a wish.
    pub allow_empty: bool,
}

/// Reads and validates a pools file. Errors name the file; a read error never quotes the
/// file's contents.
pub fn read_pools_file(path: &str) -> Result<Config> {
    let text = crate::files::read_text(std::path::Path::new(path), limits::POOLS_FILE_BYTES, "pools file")?;
    Ok(parse_pools_file(path, &text)?)
}

impl App {
    /// Makes the store hold `config`; applying the same configuration twice changes
    /// nothing and says so. Nothing is written on any error.
    pub async fn apply(&self, config: Config, opts: ApplyOptions) -> Result<ConfigReport> {
        if opts.prune && config.pools.is_empty() && !opts.allow_empty {
            return Err(ApiError::new(
                ErrorCode::InvalidValue,
                "the configuration names no pool, and pruning would remove every pool; expected at least one pool (or allow_empty to remove them all)",
            ));
        }
        Ok(self.store.apply(config, opts.prune, opts.force, self.now()).await?)
    }
}
