//! A tenant's log as C2SP `tlog-tiles` resources: its checkpoint, its hash tiles and its entry
//! bundles (`integrity::tiles`).

use super::{AuditLog, LogError};
use crate::auth::Principal;
use crate::integrity::leaf_bytes;
use crate::integrity::proofs;
use crate::integrity::tiles::{Tile, TileId, TileKind, entry_bundle};
use crate::model::{Seq, TenantId};
use crate::store::Store;

impl<S: Store> AuditLog<S> {
    /// The caller acting in the tenant a log's path names, if its credential admits that
    /// tenant. Any other name is `NotFound`, so that the names of other logs are not disclosed.
    pub fn named_log(&self, principal: &Principal, name: &str) -> Result<Principal, LogError> {
        TenantId::parse(name)
            .ok()
            .and_then(|tenant| principal.in_tenant(tenant))
            .ok_or_else(|| LogError::NotFound(format!("no log named `{name}`")))
    }

    /// The tile's bytes: `width` hashes of 32 bytes, or an entry bundle. `NotFound` while the
    /// log is too small to hold every hash or entry of the tile.
    pub async fn tile(&self, principal: &Principal, tile: Tile) -> Result<Vec<u8>, LogError> {
        let tenant = Self::tenant_of(principal);
        let frontier = self
            .store
            .head(&tenant)
            .await?
            .map(|head| head.frontier)
            .unwrap_or_default();
        let size = frontier.size();
        if !tile.within(size) {
            return Err(LogError::NotFound(format!(
                "{} is beyond the log's {size} entries",
                tile.path()
            )));
        }
        match tile.kind {
            TileKind::Hashes { level } => {
                let id = TileId {
                    level,
                    index: tile.index,
                };
                let tiles = proofs::tiles(&self.store, &tenant, &frontier, &[id]).await?;
                let hashes = tiles
                    .get(&id)
                    .and_then(|hashes| hashes.get(..usize::from(tile.width)))
                    .ok_or_else(|| {
                        LogError::Internal(anyhow::anyhow!(
                            "{} is missing from the store",
                            tile.path()
                        ))
                    })?;
                Ok(hashes.iter().flat_map(|h| h.0).collect())
            }
            TileKind::Entries => {
                let after = Seq(i64::try_from(tile.first()).unwrap_or(i64::MAX));
                let events = self
                    .store
                    .scan(&tenant, after, u32::from(tile.width))
                    .await?;
                if events.len() != usize::from(tile.width) {
                    return Err(LogError::Internal(anyhow::anyhow!(
                        "{} has {} of its {} events",
                        tile.path(),
                        events.len(),
                        tile.width
                    )));
                }
                let entries = events
                    .iter()
                    .map(leaf_bytes)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| LogError::Internal(anyhow::anyhow!("{}: {e}", tile.path())))?;
                entry_bundle(entries.iter().map(Vec::as_slice)).ok_or_else(|| {
                    LogError::Internal(anyhow::anyhow!("an entry of {} is too long", tile.path()))
                })
            }
        }
    }
}
