//! NDJSON export of the log: per tenant, its checkpoints, its chain head's
//! `recorded_at_ordered_from`, then its events in `seq` order, each with every hashed field, so
//! `auditor verify --export` can check it with no database.

use std::io::Write;

use serde_json::json;

use super::verify::ExportedHead;
use crate::model::Seq;
use crate::store::{Store, StoreError};

const PAGE: u32 = 10_000;

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
        if let Some(head) = store.head(&tenant).await? {
            let line = ExportedHead {
                tenant: tenant.clone(),
                recorded_at_ordered_from: head.recorded_at_ordered_from,
            };
            serde_json::to_writer(&mut *out, &json!({ "chain_head": line }))
                .map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
        }
        let mut after = Seq(0);
        loop {
            let page = store.scan(&tenant, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
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
