//! Reservations: addresses never handed out.

use vipvisor_model::{AddressBlock, Reservation};
use vipvisor_store::ConfigReport;

use crate::{App, Result};

impl App {
    pub async fn reservations(&self) -> Result<Vec<Reservation>> {
        Ok(self.store.read(|i| i.reservations().cloned().collect()).await?)
    }

    /// Reserves a block; reserving an address in use is refused unless `force`, which
    /// releases its holder (recorded).
    pub async fn add_reservation(&self, r: Reservation, force: bool) -> Result<ConfigReport> {
        Ok(self.store.add_reservation(r, force, self.now()).await?)
    }

    pub async fn remove_reservation(&self, block: &AddressBlock) -> Result<ConfigReport> {
        Ok(self.store.remove_reservation(block, self.now()).await?)
    }
}
