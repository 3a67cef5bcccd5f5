//! Reading: one event by id, a query page, and an event with the amendments that name it.

use serde_json::{Map, Value};

use super::access_log::{Access, query_details};
use super::{AuditLog, LogError};
use crate::auth::Principal;
use crate::model::{Event, EventId, EventQuery, Field, Filter, Page};
use crate::store::Store;

impl<S: Store> AuditLog<S> {
    /// One event of the caller's tenant, the read recorded in the system log. `NotFound` when
    /// there is none with that id.
    pub async fn get(&self, principal: &Principal, id: EventId) -> Result<Event, LogError> {
        let event = self.find(principal, id).await;
        let found = usize::from(event.is_ok());
        self.record_access(principal, Access::read("get", id_details(id, found)))
            .await?;
        event
    }

    /// The tenants whose logs the caller may read, by name: its own, or for a credential of
    /// every tenant each tenant that has a log (the system log only for those who may read it).
    pub async fn readable_tenants(
        &self,
        principal: &Principal,
    ) -> Result<Vec<crate::model::TenantId>, LogError> {
        match &principal.tenants {
            crate::model::TenantScope::One(own) => Ok(vec![own.clone()]),
            crate::model::TenantScope::All => Ok(self
                .store
                .tenants()
                .await?
                .into_iter()
                .filter(|tenant| principal.in_tenant(tenant.clone()).is_some())
                .collect()),
        }
    }

    /// [`Self::get`] for the core's own use: not recorded.
    pub(super) async fn find(&self, principal: &Principal, id: EventId) -> Result<Event, LogError> {
        self.store
            .get(&Self::tenant_of(principal), id)
            .await?
            .ok_or_else(|| LogError::NotFound(format!("event {id} does not exist")))
    }

    /// One page of a query, in `seq` order, with the cursor of the next page; the read
    /// recorded in the system log.
    pub async fn query(&self, principal: &Principal, query: &EventQuery) -> Result<Page, LogError> {
        let page = self.search(principal, query).await?;
        let details = query_details(query, page.events.len());
        self.record_access(principal, Access::read("query", details))
            .await?;
        Ok(page)
    }

    /// [`Self::query`] for the core's own use: not recorded.
    pub(super) async fn search(
        &self,
        principal: &Principal,
        query: &EventQuery,
    ) -> Result<Page, LogError> {
        let events = self.store.query(&Self::tenant_of(principal), query).await?;
        Ok(query.page(events))
    }

    /// The latest event that `recorded_by` recorded in `tenant`, for the service's own
    /// consumers (a capture finding where it left off); not recorded as a read.
    pub async fn last_recorded_by(
        &self,
        tenant: &crate::model::TenantId,
        recorded_by: &str,
    ) -> Result<Option<Event>, LogError> {
        let query = EventQuery {
            filters: vec![Filter::Equals(Field::RecordedBy, recorded_by.to_owned())],
            limit: 1,
            order: crate::model::Order::Desc,
            ..EventQuery::default()
        };
        Ok(self.store.query(tenant, &query).await?.into_iter().next())
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
        let original = self.find(principal, id).await;
        let amendments = match &original {
            Ok(original) => {
                let query = EventQuery {
                    filters: vec![Filter::Equals(Field::Amends, original.id.to_string())],
                    limit: EventQuery::MAX_LIMIT,
                    ..EventQuery::default()
                };
                self.search(principal, &query).await?.events
            }
            Err(_) => Vec::new(),
        };
        let returned = usize::from(original.is_ok()) + amendments.len();
        self.record_access(
            principal,
            Access::read("get_with_amendments", id_details(id, returned)),
        )
        .await?;
        Ok((original?, amendments))
    }
}

/// An access to one event, by id, and how many events it returned.
fn id_details(id: EventId, returned: usize) -> Map<String, Value> {
    let mut details = Map::new();
    details.insert("id".into(), Value::from(id.to_string()));
    details.insert("returned".into(), Value::from(returned));
    details
}
