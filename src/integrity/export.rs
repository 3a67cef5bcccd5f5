//! NDJSON export of the log: per tenant, its checkpoints, its chain head's
//! `recorded_at_ordered_from`, the prefix dropped with its oldest partitions if any, then its
//! events in `seq` order, each with every hashed field, so `auditor verify --export` can check
//! it with no database.

use std::io::Write;

use serde_json::json;

use super::dropped::ExportedPrefix;
use super::verify::ExportedHead;
use crate::store::{Pages, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum WriteExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
}

/// Streams every tenant's log to `out`; returns the number of events written.
pub async fn export<S: Store>(store: &S, out: &mut impl Write) -> Result<u64, WriteExportError> {
    let mut written = 0;
    for tenant in store.tenants().await? {
        for checkpoint in store.checkpoints(&tenant).await? {
            serde_json::to_writer(&mut *out, &json!({ "checkpoint": checkpoint }))
                .map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
        }
        // Events appended after this read are left to the next export: the export then ends at
        // the head it names, after every checkpoint it carries (read before it).
        let head = store.head(&tenant).await?;
        if let Some(head) = &head {
            let line = ExportedHead {
                tenant: tenant.clone(),
                recorded_at_ordered_from: head.recorded_at_ordered_from,
            };
            serde_json::to_writer(&mut *out, &json!({ "chain_head": line }))
                .map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
        }
        if let Some(prefix) = store.dropped_prefix(&tenant).await? {
            let line = ExportedPrefix::new(tenant.clone(), &prefix);
            serde_json::to_writer(&mut *out, &json!({ "dropped_prefix": line }))
                .map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
        }
        let until = head.map(|head| head.seq);
        let mut pages = Pages::new(store.clone(), tenant, until);
        while let Some(page) = pages.next().await? {
            for event in &page {
                serde_json::to_writer(&mut *out, event).map_err(std::io::Error::from)?;
                out.write_all(b"\n")?;
            }
            written += page.len() as u64;
        }
    }
    out.flush()?;
    Ok(written)
}
