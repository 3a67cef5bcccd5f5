//! Retention: the events of a tenant recorded longer ago than its period lose their personal
//! fields, in the background, one batch per transaction, each batch recorded as an
//! `audit.erased` event by [`RETENTION_ACTOR`]. The log keeps every event's leaf, so it still
//! verifies (`docs/integrity.md`, "Erasure"). On PostgreSQL a month partition that every tenant
//! in it has outlived is then dropped whole (`super::partition_drop`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::partition_drop::Kept;
use super::{AuditLog, LogError};
use crate::integrity::commitment::fully_erased;
use crate::integrity::verify::ERASURE_EVENT_TYPE;
use crate::model::{ErasureTargets, Seq, TenantId};
use crate::store::Store;

/// Who retention's erasure records name as `user_identity` and `recorded_by`.
pub const RETENTION_ACTOR: &str = "auditor-retention";

/// How long each tenant's events keep their personal fields.
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    /// Days after `recorded_at` for tenants without their own; 0 keeps events forever.
    pub max_age_days: u64,
    /// Per-tenant days, overriding `max_age_days` (0 keeps that tenant's events).
    pub tenants: BTreeMap<String, u64>,
    /// How often the background task looks for events past their period.
    pub check_interval: Duration,
    /// Events erased per transaction, and per record.
    pub batch_events: u32,
}

impl RetentionPolicy {
    /// The tenant's period in days, `None` when its events are kept forever.
    pub fn max_age_days(&self, tenant: &TenantId) -> Option<u64> {
        let days = self
            .tenants
            .get(tenant.as_str())
            .copied()
            .unwrap_or(self.max_age_days);
        (days > 0).then_some(days)
    }

    /// The shortest period any tenant has, in days.
    pub fn shortest_days(&self) -> Option<u64> {
        std::iter::once(self.max_age_days)
            .chain(self.tenants.values().copied())
            .filter(|days| *days > 0)
            .min()
    }

    /// Whether any tenant has a period.
    pub fn is_active(&self) -> bool {
        self.max_age_days > 0 || self.tenants.values().any(|days| *days > 0)
    }
}

/// What one retention step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetentionStep {
    /// Events up to `through` were looked at (`erased` of them lost fields); more may be due.
    Continued { through: Seq, erased: u64 },
    /// No event after the cursor was recorded before the cutoff.
    Done,
}

impl<S: Store> AuditLog<S> {
    /// Erases the personal fields of up to `batch` of `tenant`'s events after `after` that were
    /// recorded before `cutoff`, in one transaction with their `audit.erased` record (`reason`
    /// says the period). Events already erased, and the service's own records, are passed over.
    pub async fn retain_batch(
        &self,
        tenant: &TenantId,
        after: Seq,
        cutoff: OffsetDateTime,
        batch: u32,
        reason: &str,
    ) -> Result<RetentionStep, LogError> {
        let events = self.store.scan(tenant, after, batch).await?;
        // `recorded_at` never decreases along a log, so the events past their period are a
        // prefix.
        let old: Vec<_> = events
            .iter()
            .take_while(|event| event.recorded_at < cutoff)
            .collect();
        let Some(last) = old.last() else {
            return Ok(RetentionStep::Done);
        };
        let due: Vec<Seq> = old
            .iter()
            .filter(|e| !e.is_service_record() && !fully_erased(e))
            .map(|e| e.seq)
            .collect();
        let (Some(first), Some(through)) = (due.first(), due.last()) else {
            return Ok(RetentionStep::Continued {
                through: last.seq,
                erased: 0,
            });
        };
        let targets = ErasureTargets::Range(*first, *through);
        let erased = match self
            .append_erasure(
                tenant.clone(),
                RETENTION_ACTOR,
                ERASURE_EVENT_TYPE,
                targets,
                None,
                reason.to_owned(),
            )
            .await
        {
            Ok(_) => due.len() as u64,
            // Another instance's retention erased the batch first.
            Err(LogError::NothingErased) => 0,
            Err(error) => return Err(error),
        };
        Ok(RetentionStep::Continued {
            through: last.seq,
            erased,
        })
    }

    /// Brings every tenant with a period up to date: erases what is past it, batch after batch.
    /// `cursors` remembers, per tenant, where the events looked at so far end.
    pub async fn retain(
        &self,
        policy: &RetentionPolicy,
        now: OffsetDateTime,
        cursors: &mut HashMap<TenantId, Seq>,
    ) -> Result<u64, LogError> {
        let mut erased = 0;
        for tenant in self.store.tenants().await? {
            let Some(days) = policy.max_age_days(&tenant) else {
                continue;
            };
            let cutoff = now - time::Duration::days(i64::try_from(days).unwrap_or(i64::MAX));
            let reason = format!("retention: recorded more than {days} days ago");
            let cursor = cursors.entry(tenant.clone()).or_insert(Seq(0));
            while let RetentionStep::Continued {
                through,
                erased: count,
            } = self
                .retain_batch(&tenant, *cursor, cutoff, policy.batch_events, &reason)
                .await?
            {
                *cursor = through;
                erased += count;
            }
        }
        Ok(erased)
    }
}

/// Runs retention every `policy.check_interval` until `shutdown`; nothing when no tenant has a
/// period. A failure is logged and retried at the next tick.
pub fn spawn<S: Store>(
    log: AuditLog<S>,
    policy: RetentionPolicy,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    if !policy.is_active() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut cursors = HashMap::new();
        let mut tick = tokio::time::interval(policy.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = OffsetDateTime::now_utc();
            let run = async {
                let erased = log.retain(&policy, now, &mut cursors).await?;
                let (dropped, kept) = log.drop_expired_partitions(&policy, now).await?;
                Ok::<_, LogError>((erased, dropped, kept))
            };
            let result = tokio::select! {
                _ = shutdown.cancelled() => break,
                result = run => result,
            };
            match result {
                Ok((erased, dropped, kept)) => {
                    if erased > 0 {
                        tracing::info!(erased, "retention erased events past their period");
                    }
                    for partition in dropped {
                        tracing::info!(partition, "retention dropped a month partition");
                    }
                    if let Kept::NotYetCheckpointed(tenant) = kept {
                        tracing::info!(
                            %tenant,
                            "a partition past retention waits for its events to be checkpointed"
                        );
                    }
                }
                Err(error) => tracing::warn!(%error, "retention failed; will retry"),
            }
        }
    }))
}
