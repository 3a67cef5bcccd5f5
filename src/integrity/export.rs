//! NDJSON export of the log: per tenant, its checkpoints, its chain head's
//! `recorded_at_ordered_from`, the prefix dropped with its oldest partitions if any, then its
//! events in `seq` order, each with every hashed field, so `auditor verify --export` can check
//! it with no database.

use std::io::Write;

use serde_json::{Value, json};

use super::dropped::ExportedPrefix;
use super::verify::ExportedHead;
use crate::model::{Seq, TenantId};
use crate::store::{Pages, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum WriteExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
}

/// Streams every tenant's log to `out`, calling `progress` with the events of each page
/// written; returns the number of events written.
pub async fn export<S: Store>(
    store: &S,
    out: &mut impl Write,
    mut progress: impl FnMut(u64),
) -> Result<u64, WriteExportError> {
    let mut written = 0;
    for tenant in store.tenants().await? {
        let (lines, head) = preamble(store, &tenant).await?;
        for line in lines {
            serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
        }
        let mut pages = Pages::new(store.clone(), tenant, head);
        while let Some(page) = pages.next().await? {
            for event in &page {
                serde_json::to_writer(&mut *out, event).map_err(std::io::Error::from)?;
                out.write_all(b"\n")?;
            }
            written += page.len() as u64;
            progress(page.len() as u64);
        }
    }
    out.flush()?;
    Ok(written)
}

/// The lines of a tenant's export before its events (its checkpoints, its chain head's
/// `recorded_at_ordered_from`, the prefix dropped with its oldest partitions), and the `seq`
/// its events end at: the head when this was read, `None` for a log not begun.
///
/// Events appended after this read are left to the next export: the export then ends at the
/// head it names, after every checkpoint it carries (read before it).
pub async fn preamble<S: Store>(
    store: &S,
    tenant: &TenantId,
) -> Result<(Vec<Value>, Option<Seq>), StoreError> {
    let mut lines: Vec<Value> = store
        .checkpoints(tenant)
        .await?
        .into_iter()
        .map(|checkpoint| json!({ "checkpoint": checkpoint }))
        .collect();
    let head = store.head(tenant).await?;
    if let Some(head) = &head {
        let line = ExportedHead {
            tenant: tenant.clone(),
            recorded_at_ordered_from: head.recorded_at_ordered_from,
            seq: Some(head.seq),
            hash: Some(head.hash),
        };
        lines.push(json!({ "chain_head": line }));
    }
    if let Some(prefix) = store.dropped_prefix(tenant).await? {
        let line = ExportedPrefix::new(tenant.clone(), &prefix);
        lines.push(json!({ "dropped_prefix": line }));
    }
    Ok((lines, head.map(|head| head.seq)))
}
