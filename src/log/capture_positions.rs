//! Where each change capture (`ingest::capture`) last confirmed its replication slot, kept in
//! the log's own database: a slot on the host found past it was moved by someone else.

use super::{AuditLog, LogError};
use crate::store::Store;

impl<S: Store> AuditLog<S> {
    /// `(slot, LSN)` of the capture named `capture`; `None` before its first confirmation.
    pub async fn capture_position(&self, capture: &str) -> Result<Option<(String, u64)>, LogError> {
        let position = self.store.capture_position(capture).await?;
        Ok(position.map(|(slot, lsn)| (slot, lsn as u64)))
    }

    /// Records that `capture` is about to confirm `slot` up to `lsn`; call it before the slot
    /// is advanced.
    pub async fn set_capture_position(
        &self,
        capture: &str,
        slot: &str,
        lsn: u64,
    ) -> Result<(), LogError> {
        let lsn = i64::try_from(lsn).map_err(|e| LogError::Internal(e.into()))?;
        Ok(self.store.set_capture_position(capture, slot, lsn).await?)
    }
}
