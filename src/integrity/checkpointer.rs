//! Issues signed checkpoints: on demand, and in the background every N events or T seconds.
//! Instances sharing a database may race to sign the same size; the first stored wins.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{Checkpoint, LogSigner};
use crate::model::TenantId;
use crate::store::{Store, StoreError};

/// When the background task signs: after `every_events` new events, or `interval` after the
/// last checkpoint if the log grew at all.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub every_events: u64,
    pub interval: Duration,
}

/// How often [`issue`] signs again after another instance stored a checkpoint naming the same
/// predecessor first.
const SIGNING_ATTEMPTS: usize = 5;

/// Signs the tenant's current tree head, naming the latest checkpoint as its predecessor,
/// unless a checkpoint of that size exists (returned instead). `None` while the log is empty.
///
/// Each checkpoint names the one before it, and the store keeps at most one checkpoint per
/// predecessor: when another instance stored one after the same predecessor first, this one is
/// not stored, and the head is signed again after it.
pub async fn issue<S: Store>(
    store: &S,
    signer: &LogSigner,
    tenant: &TenantId,
) -> Result<Option<Checkpoint>, StoreError> {
    for _ in 0..SIGNING_ATTEMPTS {
        let Some(head) = store.head(tenant).await? else {
            return Ok(None);
        };
        let size = head.frontier.size();
        if size == 0 {
            return Ok(None);
        }
        if let Some(existing) = store.checkpoint(tenant, Some(size)).await? {
            return Ok(Some(existing));
        }
        let latest = store.checkpoint(tenant, None).await?;
        if let Some(latest) = latest.as_ref().filter(|c| c.tree_size > size) {
            // Another instance signed a larger head since this one read it.
            return Ok(Some(latest.clone()));
        }
        let predecessor = latest.map(|c| (c.tree_size, c.root));
        let issued_at = crate::model::event::truncate_to_micros(OffsetDateTime::now_utc());
        let checkpoint = signer.sign(tenant, size, head.frontier.root(), issued_at, predecessor);
        store.add_checkpoint(&checkpoint).await?;
        if let Some(stored) = store.checkpoint(tenant, Some(size)).await? {
            return Ok(Some(stored));
        }
    }
    Err(StoreError::Conflict(format!(
        "another instance kept storing checkpoints of tenant {tenant} first"
    )))
}

/// Runs until `shutdown`, checking every second which tenants are due.
pub fn spawn<S: Store>(
    store: S,
    signer: Arc<LogSigner>,
    schedule: Schedule,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_issued: HashMap<TenantId, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1).min(schedule.interval));
        // A failure is logged when it begins and once a minute while it lasts, not every tick.
        let mut failing_since: Option<(Instant, Instant)> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            match run_once(&store, &signer, schedule, &mut last_issued).await {
                Ok(()) => {
                    if let Some((since, _)) = failing_since.take() {
                        tracing::info!(
                            after_secs = since.elapsed().as_secs(),
                            "checkpointing works again"
                        );
                    }
                }
                Err(error) => {
                    let now = Instant::now();
                    let (since, logged) = failing_since.get_or_insert((now, now));
                    if *logged == now || logged.elapsed() >= FAILURE_LOGGED_EVERY {
                        *logged = now;
                        tracing::warn!(
                            error = crate::telemetry::error_chain(&error),
                            failing_for_secs = since.elapsed().as_secs(),
                            "checkpointing failed; retrying every second"
                        );
                    }
                }
            }
        }
    })
}

/// How often a lasting checkpointing failure is logged again.
const FAILURE_LOGGED_EVERY: Duration = Duration::from_secs(60);

async fn run_once<S: Store>(
    store: &S,
    signer: &LogSigner,
    schedule: Schedule,
    last_issued: &mut HashMap<TenantId, Instant>,
) -> Result<(), StoreError> {
    for tenant in store.tenants().await? {
        let Some(head) = store.head(&tenant).await? else {
            continue;
        };
        let size = head.frontier.size();
        let signed = store
            .checkpoint(&tenant, None)
            .await?
            .map_or(0, |c| c.tree_size);
        if size <= signed {
            continue;
        }
        let since = last_issued.get(&tenant).map(Instant::elapsed);
        let due = size - signed >= schedule.every_events
            || since.is_none_or(|elapsed| elapsed >= schedule.interval);
        if due {
            if let Some(checkpoint) = issue(store, signer, &tenant).await? {
                tracing::info!(tenant = %tenant, tree_size = checkpoint.tree_size, "checkpoint issued");
            }
            last_issued.insert(tenant, Instant::now());
        }
    }
    Ok(())
}
