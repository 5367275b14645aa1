//! Apply a configuration (a pools file): make the store hold it, idempotently.

use vipvisor_model::config::{parse_pools_file, Config};
use vipvisor_store::ConfigReport;

use crate::{ApiError, App, ErrorCode, Result};

/// How to apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Also remove pools and reservations that are not in the configuration.
    pub prune: bool,
    /// Release allocations the change leaves outside every pool (recorded).
    pub force: bool,
}

/// Reads and validates a pools file. Errors name the file; a read error never quotes the
/// file's contents.
pub fn read_pools_file(path: &str) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ApiError::new(ErrorCode::Unreadable, format!("cannot read {path}: {e}")))?;
    Ok(parse_pools_file(path, &text)?)
}

impl App {
    /// Makes the store hold `config`; applying the same configuration twice changes
    /// nothing and says so. Nothing is written on any error.
    pub async fn apply(&self, config: Config, opts: ApplyOptions) -> Result<ConfigReport> {
        Ok(self.store.apply(config, opts.prune, opts.force, self.now()).await?)
    }
}
