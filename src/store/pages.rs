//! A tenant's log read in `seq` order a page at a time, the next page fetched while the caller
//! works on the current one, so that the database's decoding and the caller's hashing or
//! writing run side by side. Memory stays at two pages whatever the log's length.

use tokio::task::JoinHandle;

use super::{Store, StoreError};
use crate::model::{Event, Seq, TenantId};

/// Events per page: large enough that a round trip is amortised, small enough that two pages
/// stay a few MiB.
pub const PAGE: u32 = 10_000;

/// Pages of a tenant's events in `seq` order, up to an optional last `seq`.
pub struct Pages<S: Store> {
    store: S,
    tenant: TenantId,
    until: Option<Seq>,
    size: u32,
    next: Option<JoinHandle<Result<Vec<Event>, StoreError>>>,
}

impl<S: Store> Pages<S> {
    /// Starts fetching the first page at once. Events after `until`, appended while the pages
    /// are read, are left out. Spawns a task; call it from within the Tokio runtime.
    pub fn new(store: S, tenant: TenantId, until: Option<Seq>) -> Self {
        Self::of_size(store, tenant, until, PAGE)
    }

    /// The same with pages of `size` events: smaller pages hold less memory per reader (an
    /// HTTP export, of which several may run at once) for more round trips.
    pub fn of_size(store: S, tenant: TenantId, until: Option<Seq>, size: u32) -> Self {
        let mut pages = Self {
            store,
            tenant,
            until,
            size: size.max(1),
            next: None,
        };
        pages.fetch_after(Seq(0));
        pages
    }

    fn fetch_after(&mut self, after: Seq) {
        let (store, tenant, size) = (self.store.clone(), self.tenant.clone(), self.size);
        self.next = Some(tokio::spawn(async move {
            store.scan(&tenant, after, size).await
        }));
    }

    /// The next page (never empty), or `None` after the last; fetching the one after it has
    /// already begun when this returns.
    pub async fn next(&mut self) -> Result<Option<Vec<Event>>, StoreError> {
        let Some(fetching) = self.next.take() else {
            return Ok(None);
        };
        let mut page = fetching.await.map_err(|e| StoreError::Other(e.into()))??;
        let short = page.len() < self.size as usize;
        if let Some(until) = self.until {
            page.retain(|e| e.seq <= until);
        }
        let Some(last) = page.last() else {
            return Ok(None);
        };
        if !short && self.until != Some(last.seq) {
            self.fetch_after(last.seq);
        }
        Ok(Some(page))
    }
}

impl<S: Store> Drop for Pages<S> {
    fn drop(&mut self) {
        if let Some(fetching) = self.next.take() {
            fetching.abort();
        }
    }
}
