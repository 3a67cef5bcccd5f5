//! A live tail of a tenant's log: every matching event committed after a position, once each,
//! in `seq` order, first from the store and then as they are committed, with no gap and no
//! duplicate across a reconnection that names the last `seq` it saw.
//!
//! The tail reads from the store, never from a buffer of its own that a slow reader could grow:
//! it wakes when this process's writer commits, and at least every [`POLL_INTERVAL`] for the
//! commits of other instances on the same database. A reader that falls more than
//! [`MAX_LAG_EVENTS`] behind the head once it had caught up is told where to resume instead.

use std::collections::VecDeque;
use std::time::Duration;

use futures::stream::{self, Stream};
use serde_json::json;
use tokio::sync::watch;

use super::access_log::{Access, query_details};
use super::{AuditLog, LogError};
use crate::auth::Principal;
use crate::model::{Event, EventQuery, Seq, TenantId};
use crate::store::{Store, StoreError};

/// The longest an event committed by another instance waits before a tail sees it.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How far (in `seq`) a tail that had caught up may fall behind the head before it ends with
/// [`Tailed::Lagged`].
pub const MAX_LAG_EVENTS: i64 = 10_000;

/// Events read from the store at a time.
const PAGE: u32 = 100;

/// What a tail yields.
#[derive(Debug)]
pub enum Tailed {
    /// The next matching event.
    Event(Box<Event>),
    /// The reader fell too far behind; the tail ends here. Resume after `last_event_id` (the
    /// last event yielded, or the position the tail started from), which replays from the store.
    Lagged { last_event_id: Seq, head: Seq },
}

/// A tail, ready to be turned into a stream.
pub struct Tail<S: Store> {
    store: S,
    tenant: TenantId,
    query: EventQuery,
    /// Every matching event up to here was read (the next query starts after it).
    scanned: Seq,
    /// The last event yielded, or where the tail began.
    delivered: Seq,
    /// Whether the tail reached the head once: from then on it may lag.
    caught_up: bool,
    commits: watch::Receiver<u64>,
    pending: VecDeque<Event>,
    ended: bool,
}

impl<S: Store> AuditLog<S> {
    /// A tail of the caller's tenant: the events `query` matches (its filters, `since` and
    /// `until`; not its page size, order or cursor) with `seq` after `after`, or, when `after`
    /// is `None`, those committed from now on. The read is recorded in the system log once, now.
    pub async fn tail(
        &self,
        principal: &Principal,
        mut query: EventQuery,
        after: Option<Seq>,
    ) -> Result<Tail<S>, LogError> {
        let tenant = Self::tenant_of(principal);
        let head = head_of(&self.store, &tenant).await?;
        // A position past the head (another tenant's id, or one from before a restore) would
        // pass over the events up to it unseen.
        if let Some(after) = after
            && after > head
        {
            return Err(LogError::InvalidQuery(crate::model::QueryError {
                param: "Last-Event-ID".into(),
                message: format!(
                    "`Last-Event-ID` {after} is past the end of this tenant's log (seq {head}); \
                     resume from an id this stream sent, or 0 for the start"
                ),
            }));
        }
        let start = after.unwrap_or(head);
        let mut details = query_details(&query, 0);
        for paging in ["returned", "limit", "order", "after"] {
            details.remove(paging);
        }
        details.insert("from_seq".into(), json!(start.0));
        self.record_access(principal, Access::read("stream", details))
            .await?;
        query.limit = PAGE;
        query.order = crate::model::Order::Asc;
        Ok(Tail {
            store: self.store.clone(),
            tenant,
            query,
            scanned: start,
            delivered: start,
            caught_up: false,
            commits: self.writer.commits(),
            pending: VecDeque::new(),
            ended: false,
        })
    }
}

async fn head_of<S: Store>(store: &S, tenant: &TenantId) -> Result<Seq, StoreError> {
    Ok(store.head(tenant).await?.map_or(Seq(0), |head| head.seq))
}

impl<S: Store> Tail<S> {
    /// Where the tail begins: it yields the events after this `seq`.
    pub fn position(&self) -> Seq {
        self.delivered
    }

    /// The tail as a stream; it ends after [`Tailed::Lagged`] or a store error, and otherwise
    /// runs until dropped.
    pub fn into_stream(self) -> impl Stream<Item = Result<Tailed, StoreError>> + Send + 'static {
        stream::unfold(self, |mut tail| async move {
            let next = tail.next().await.transpose()?;
            if next.is_err() {
                tail.ended = true;
            }
            Some((next, tail))
        })
    }

    async fn next(&mut self) -> Result<Option<Tailed>, StoreError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.delivered = event.seq;
                return Ok(Some(Tailed::Event(Box::new(event))));
            }
            if self.ended {
                return Ok(None);
            }
            // Seen before the read: the wake-up of a commit that lands during it is kept.
            self.commits.borrow_and_update();
            // Every event up to the head is committed (a tenant's appends take its head in
            // turn, so `seq` order is commit order), and what the query then returns after
            // `scanned` is every match committed by then: the position can move past both.
            let head = head_of(&self.store, &self.tenant).await?;
            if self.caught_up && head.0 - self.scanned.0 > MAX_LAG_EVENTS {
                self.ended = true;
                return Ok(Some(Tailed::Lagged {
                    last_event_id: self.delivered,
                    head,
                }));
            }
            if head > self.scanned {
                self.read_after_scanned(head).await?;
                continue;
            }
            self.caught_up = true;
            tokio::select! {
                _ = self.commits.changed() => {}
                () = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    async fn read_after_scanned(&mut self, head: Seq) -> Result<(), StoreError> {
        self.query.after = Some(self.scanned);
        let mut events = self.store.query(&self.tenant, &self.query).await?;
        let more = events.len() > PAGE as usize;
        events.truncate(PAGE as usize);
        let last = events.last().map_or(self.scanned, |event| event.seq);
        if more {
            self.scanned = last;
        } else {
            self.scanned = last.max(head);
            self.caught_up = true;
        }
        self.pending.extend(events);
        Ok(())
    }
}
