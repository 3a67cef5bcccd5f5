//! The log audits itself: every read of events (a query, an event, a proof), every erasure and
//! every credential change is recorded, before the answer is sent, as an `audit.access` event in
//! the system log, tenant [`SYSTEM_TENANT`], which only admins of every tenant may read and only
//! the service writes.

use serde_json::{Map, Value, json};

use super::{AuditLog, LogError};
use crate::auth::Principal;
use crate::model::event::RawEvent;
use crate::model::{Action, EventQuery, Filter, NewEvent, Personal, TenantId};
use crate::store::Store;

/// The tenant of the system log.
pub const SYSTEM_TENANT: &str = "_system";

/// The event type of an access record.
pub const ACCESS_EVENT_TYPE: &str = "audit.access";

/// An access to record: what was done (`query`, `get`, `proof`, `erase`, `token.create`, …),
/// whether it changed anything, and its particulars (filters, ids, how many events returned).
pub struct Access<'a> {
    pub operation: &'a str,
    pub action: Action,
    pub details: Map<String, Value>,
}

impl<'a> Access<'a> {
    pub fn read(operation: &'a str, details: Map<String, Value>) -> Self {
        Self {
            operation,
            action: Action::Read,
            details,
        }
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
        let mut data = access.details;
        data.insert("operation".into(), Value::from(access.operation));
        data.insert("tenant".into(), Value::from(principal.tenant.as_str()));
        let payload =
            serde_json::value::to_raw_value(&data).map_err(|e| LogError::Internal(e.into()))?;
        let raw = RawEvent {
            action: Some(access.action),
            entity: Some(access.operation.to_owned()),
            ..RawEvent::service_record(ACCESS_EVENT_TYPE, &principal.name, payload)
        };
        let event = NewEvent::parse_own(raw, &self.limits).map_err(LogError::Invalid)?;
        self.record_in(TenantId::new(SYSTEM_TENANT), &principal.name, vec![event])
            .await?;
        Ok(())
    }
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
