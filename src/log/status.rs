//! What the operator's surface shows of the log: every tenant's chain head and latest
//! checkpoint, the write queue and the database connections.

use super::{AuditLog, LogError};
use crate::metrics::TenantGauges;
use crate::store::{Connections, Store};

impl<S: Store> AuditLog<S> {
    /// Every tenant's chain head and latest checkpoint, read from the store now (so a log that
    /// several instances write shows the same figures on each).
    pub async fn tenant_gauges(&self) -> Result<Vec<TenantGauges>, LogError> {
        let mut gauges = Vec::new();
        for tenant in self.store.tenants().await? {
            let head = self.store.head(&tenant).await?;
            let checkpoint = self.store.checkpoint(&tenant, None).await?;
            gauges.push(TenantGauges {
                tenant: tenant.to_string(),
                head_seq: head.map_or(0, |head| head.seq.0.max(0) as u64),
                checkpoint: checkpoint.map(|c| (c.tree_size, c.issued_at)),
            });
        }
        Ok(gauges)
    }

    /// Submissions waiting for this process's writer, and the most that may.
    pub fn queue_depth(&self) -> (usize, usize) {
        self.writer.queue_depth()
    }

    /// This process's database connections now.
    pub fn connections(&self) -> Connections {
        self.store.connections()
    }
}
