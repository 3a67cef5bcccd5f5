//! Retention on PostgreSQL, past erasing rows: a month partition that every tenant with events in
//! it has outlived is dropped whole, once the leaf hashes of those events are in full tiles under
//! a signed checkpoint, with one `audit.dropped` record per tenant in the same transaction. The
//! log then verifies from its first retained event (`docs/integrity.md`, "Dropped partitions").

use time::OffsetDateTime;

use super::retention::{RETENTION_ACTOR, RetentionPolicy};
use super::{AuditLog, LogError};
use crate::integrity::Frontier;
use crate::integrity::dropped::{DROP_EVENT_TYPE, DroppedPrefix, record_payload, stored_leaves};
use crate::integrity::tiles::TILE_WIDTH;
use crate::model::event::RawEvent;
use crate::model::{NewEvent, Submission, TenantId};
use crate::store::{MonthPartition, PartitionRange, Store, StoreError};

/// How many times one run plans a drop again after a conflict before it gives up until the next.
const MAX_CONFLICTS: u32 = 3;

/// Why the oldest partition stays for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// No partition ended before the shortest period.
    NoneExpired,
    /// A tenant with events in it keeps them longer (or forever).
    OutlivedBy(TenantId),
    /// A tenant's events in it are not all in full tiles under a signed checkpoint yet.
    NotYetCheckpointed(TenantId),
}

impl<S: Store> AuditLog<S> {
    /// Drops the oldest month partitions every tenant in them has outlived, one after another,
    /// until one must stay. Returns the partitions dropped and why the next one stays.
    pub async fn drop_expired_partitions(
        &self,
        policy: &RetentionPolicy,
        now: OffsetDateTime,
    ) -> Result<(Vec<String>, Kept), LogError> {
        let mut dropped = Vec::new();
        let mut conflicts = 0;
        let Some(shortest) = policy.shortest_days() else {
            return Ok((dropped, Kept::NoneExpired));
        };
        loop {
            let Some(partition) = self.store.oldest_partition(now - days(shortest)).await? else {
                return Ok((dropped, Kept::NoneExpired));
            };
            let mut prefixes = Vec::new();
            let mut records = Vec::new();
            for range in &partition.tenants {
                let Some(period) = policy.max_age_days(&range.tenant) else {
                    return Ok((dropped, Kept::OutlivedBy(range.tenant.clone())));
                };
                if partition.end > now - days(period) {
                    return Ok((dropped, Kept::OutlivedBy(range.tenant.clone())));
                }
                let Some(prefix) = self.prefix_through(range).await? else {
                    return Ok((dropped, Kept::NotYetCheckpointed(range.tenant.clone())));
                };
                let reason = format!("retention: recorded more than {period} days ago");
                records.push(self.drop_record(range, &prefix, &partition, &reason)?);
                prefixes.push((range.tenant.clone(), prefix));
            }
            match self
                .store
                .drop_partition(&partition, &prefixes, &records)
                .await
            {
                Ok(()) => dropped.push(partition.name),
                // Another instance dropped it, or the partition changed, since it was read:
                // read the oldest again, a few times at most in one run.
                Err(StoreError::Conflict(reason)) if conflicts < MAX_CONFLICTS => {
                    tracing::debug!(%reason, "a partition drop is planned again");
                    conflicts += 1;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// The tenant's dropped prefix once `range` goes too, if every leaf hash up to its end is in
    /// a full tile and under the latest signed checkpoint: the tree edge is then rebuilt from the
    /// tiles, from the previous prefix's edge on.
    async fn prefix_through(
        &self,
        range: &PartitionRange,
    ) -> Result<Option<DroppedPrefix>, LogError> {
        let through = u64::try_from(range.through.0).unwrap_or(0);
        let Some(head) = self.store.head(&range.tenant).await? else {
            return Ok(None);
        };
        let in_full_tiles = u64::try_from(head.seq.0).unwrap_or(0) / TILE_WIDTH * TILE_WIDTH;
        let checkpointed = self
            .store
            .checkpoint(&range.tenant, None)
            .await?
            .map_or(0, |c| c.tree_size);
        if through > in_full_tiles || through > checkpointed {
            return Ok(None);
        }
        let mut frontier = match self.store.dropped_prefix(&range.tenant).await? {
            Some(previous) if previous.through.0 + 1 == range.first.0 => previous.frontier,
            None if range.first.0 == 1 => Frontier::default(),
            previous => {
                return Err(LogError::Internal(anyhow::anyhow!(
                    "tenant {}: the oldest partition starts at seq {}, but the dropped prefix \
                     ends at {}",
                    range.tenant,
                    range.first,
                    previous.map_or(0, |p| p.through.0)
                )));
            }
        };
        let read = stored_leaves(
            &self.store,
            &range.tenant,
            frontier.size(),
            through,
            |leaves| {
                for leaf in leaves {
                    frontier.push(*leaf);
                }
            },
        )
        .await?;
        if let Err(missing) = read {
            return Err(StoreError::Other(anyhow::anyhow!(
                "tenant {}: the level-0 tile of leaf {missing} is missing",
                range.tenant
            ))
            .into());
        }
        Ok(Some(DroppedPrefix {
            through: range.through,
            chain_hash: range.through_hash,
            frontier,
        }))
    }

    /// The `audit.dropped` record of `range`, by [`RETENTION_ACTOR`].
    fn drop_record(
        &self,
        range: &PartitionRange,
        prefix: &DroppedPrefix,
        partition: &MonthPartition,
        reason: &str,
    ) -> Result<Submission, LogError> {
        let payload = record_payload(range.first, prefix, &partition.name, reason);
        let data =
            serde_json::value::to_raw_value(&payload).map_err(|e| LogError::Internal(e.into()))?;
        let raw = RawEvent::service_record(DROP_EVENT_TYPE, RETENTION_ACTOR, data);
        let record = NewEvent::parse_own(raw, &self.limits).map_err(LogError::Invalid)?;
        Ok(Submission::new(
            range.tenant.clone(),
            RETENTION_ACTOR,
            vec![record],
        ))
    }
}

fn days(count: u64) -> time::Duration {
    time::Duration::days(i64::try_from(count).unwrap_or(i64::MAX))
}
