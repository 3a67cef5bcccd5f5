//! Reading: one event by id, a query page, and an event with the amendments that name it.

use super::{AuditLog, LogError};
use crate::auth::Principal;
use crate::model::{Event, EventId, EventQuery, Field, Filter, Page};
use crate::store::Store;

impl<S: Store> AuditLog<S> {
    /// One event of the caller's tenant. `NotFound` when there is none with that id.
    pub async fn get(&self, principal: &Principal, id: EventId) -> Result<Event, LogError> {
        self.store
            .get(&Self::tenant_of(principal), id)
            .await?
            .ok_or_else(|| LogError::NotFound(format!("event {id} does not exist")))
    }

    /// One page of a query, in `seq` order, with the cursor of the next page.
    pub async fn query(&self, principal: &Principal, query: &EventQuery) -> Result<Page, LogError> {
        let events = self.store.query(&Self::tenant_of(principal), query).await?;
        Ok(query.page(events))
    }

    /// Parses a query string's pairs (every name checked against the whitelist) and runs it.
    pub async fn query_params(
        &self,
        principal: &Principal,
        pairs: &[(String, String)],
    ) -> Result<Page, LogError> {
        let query = EventQuery::parse(pairs).map_err(LogError::InvalidQuery)?;
        self.query(principal, &query).await
    }

    /// An event and the events that amend or redact it (the first `EventQuery::MAX_LIMIT`).
    pub async fn with_amendments(
        &self,
        principal: &Principal,
        id: EventId,
    ) -> Result<(Event, Vec<Event>), LogError> {
        let original = self.get(principal, id).await?;
        let amendments = EventQuery {
            filters: vec![Filter::Equals(Field::Amends, original.id.to_string())],
            limit: EventQuery::MAX_LIMIT,
            ..EventQuery::default()
        };
        let page = self.query(principal, &amendments).await?;
        Ok((original, page.events))
    }
}
