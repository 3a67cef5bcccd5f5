//! The log audits itself: every read of events (a query, an event, a proof), every erasure and
//! every credential change is recorded, before the answer is sent, as an `audit.access` event in
//! the system log, tenant [`SYSTEM_TENANT`], which only admins of every tenant may read and only
//! the service writes.

use serde_json::{Map, Value, json};

use super::{AuditLog, LogError};
use crate::auth::Principal;
use crate::model::event::RawEvent;
use crate::model::{
    Action, EventQuery, Filter, Limits, NewEvent, Outcome, Personal, Submission, TenantId,
};
use crate::store::Store;

/// The tenant of the system log.
pub const SYSTEM_TENANT: &str = "_system";

/// The event type of an access record.
pub const ACCESS_EVENT_TYPE: &str = "audit.access";

/// An access to record: what was done (`query`, `get`, `proof`, `erase`, `token.create`, …),
/// whether it changed anything, and its particulars (filters, ids, how many events returned).
#[derive(Debug, Clone)]
pub struct Access<'a> {
    pub operation: &'a str,
    pub action: Action,
    pub details: Map<String, Value>,
    /// Set on the second record of a change that failed after it was recorded.
    pub outcome: Option<Outcome>,
}

impl<'a> Access<'a> {
    pub fn read(operation: &'a str, details: Map<String, Value>) -> Self {
        Self::change(operation, Action::Read, details)
    }

    /// A change to record before it is made ([`AuditLog::record_change`]).
    pub fn change(operation: &'a str, action: Action, details: Map<String, Value>) -> Self {
        Self {
            operation,
            action,
            details,
            outcome: None,
        }
    }

    /// The record that says the change recorded as `self` did not happen, and why.
    pub fn failed(mut self, error: &str) -> Self {
        self.details.insert("error".into(), Value::from(error));
        self.outcome = Some(Outcome::Failure);
        self
    }
}

impl<S: Store> AuditLog<S> {
    /// Records `access` by `principal` in the system log, unless reads are not audited and it
    /// is a read. An access that cannot be recorded fails: the caller must not answer it.
    pub async fn record_access(
        &self,
        principal: &Principal,
        access: Access<'_>,
    ) -> Result<(), LogError> {
        if access.action == Action::Read && !self.audit_reads {
            return Ok(());
        }
        let record = access_record(&principal.name, &principal.tenant, access, &self.limits)?;
        self.record_in(TenantId::new(SYSTEM_TENANT), &principal.name, vec![record])
            .await?;
        Ok(())
    }

    /// Records the change `access` describes, then makes it (`change`): a credential is never
    /// changed unrecorded, even when the process dies in between. When the change then fails,
    /// a second record says so (as far as it can be written), and the change's error is
    /// returned.
    pub async fn record_change<T, E: std::fmt::Display>(
        &self,
        principal: &Principal,
        access: Access<'_>,
        change: impl Future<Output = Result<T, E>>,
    ) -> Result<Result<T, E>, LogError> {
        self.record_access(principal, access.clone()).await?;
        let outcome = change.await;
        if let Err(error) = &outcome
            && let Err(unrecorded) = self
                .record_access(principal, access.failed(&error.to_string()))
                .await
        {
            tracing::warn!(error = %unrecorded, "could not record that a recorded change failed");
        }
        Ok(outcome)
    }
}

/// The `audit.access` event recording `access` by `actor` in `tenant`, to append to the system
/// log (the API through the writer; the command line, which has none, through the store).
pub fn access_record(
    actor: &str,
    tenant: &TenantId,
    access: Access<'_>,
    limits: &Limits,
) -> Result<NewEvent, LogError> {
    let mut data = access.details;
    data.insert("operation".into(), Value::from(access.operation));
    data.insert("tenant".into(), Value::from(tenant.as_str()));
    let payload =
        serde_json::value::to_raw_value(&data).map_err(|e| LogError::Internal(e.into()))?;
    let raw = RawEvent {
        action: Some(access.action),
        entity: Some(access.operation.to_owned()),
        outcome: access.outcome,
        ..RawEvent::service_record(ACCESS_EVENT_TYPE, actor, payload)
    };
    NewEvent::parse_own(raw, limits).map_err(LogError::Invalid)
}

/// A query as its access record names it: each filter by its parameter name, the value too for
/// the fields that hold no personal data (the others' values would make the system log, whose
/// records are never erased, a copy of what erasure removes), the time window, order, page size
/// and cursor position.
pub fn query_details(query: &EventQuery, returned: usize) -> Map<String, Value> {
    let mut filters = Map::new();
    let mut personal = Vec::new();
    for filter in &query.filters {
        match filter {
            Filter::Equals(field, _) if Personal::parse(field.name()).is_some() => {
                personal.push(Value::from(field.name()));
            }
            Filter::Equals(field, value) => {
                filters.insert(field.name().to_owned(), Value::from(value.as_str()));
            }
            Filter::Data(path, _) => personal.push(Value::from(format!("event_data.{path}"))),
        }
    }
    let time = |at: Option<time::OffsetDateTime>| {
        at.and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
    };
    let mut details = Map::new();
    details.insert("filters".into(), Value::Object(filters));
    details.insert("personal_filters".into(), Value::Array(personal));
    details.insert("since".into(), json!(time(query.since)));
    details.insert("until".into(), json!(time(query.until)));
    details.insert("order".into(), json!(query.order));
    details.insert("limit".into(), json!(query.limit));
    details.insert("after".into(), json!(query.after.map(|seq| seq.0)));
    details.insert("returned".into(), json!(returned));
    details
}

/// Records `access` by `actor`, a change to the credentials of `tenant` (a name or `*`), in the
/// system log through the store itself: for the command line, which has no writer.
pub async fn record_through_store<S: Store>(
    store: &S,
    actor: &str,
    tenant: &str,
    access: Access<'_>,
    limits: &Limits,
) -> Result<(), LogError> {
    let record = access_record(actor, &TenantId::new(tenant), access, limits)?;
    let submission = Submission::new(TenantId::new(SYSTEM_TENANT), actor, vec![record]);
    store.append(&[submission]).await?;
    Ok(())
}
