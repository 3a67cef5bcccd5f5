//! Redaction (right to erasure): an event's payload is erased, its hash kept so the log still
//! verifies, and an `audit.redacted` event records who, when and why.

use serde_json::{Map, Value};

use super::{AuditLog, LogError, Recorded};
use crate::auth::Principal;
use crate::integrity::verify::REDACTION_EVENT_TYPE;
use crate::model::{Action, EventId, FieldError, NewEvent, RawEvent};
use crate::store::Store;

impl<S: Store> AuditLog<S> {
    /// Appends the redaction event for `id`; its commit erases the target's payload in the same
    /// transaction. `Conflict` when the payload is already erased or there never was one; the
    /// `reason` must not be blank (`Invalid` naming `reason`).
    pub async fn redact(
        &self,
        principal: &Principal,
        id: EventId,
        reason: String,
    ) -> Result<Recorded, LogError> {
        let target = self.get(principal, id).await?;
        if target.redacted_at.is_some() {
            return Err(LogError::Conflict(format!(
                "event {id} is already redacted"
            )));
        }
        if target.event_data.is_none() {
            return Err(LogError::Conflict(format!(
                "event {id} has no payload to redact"
            )));
        }
        if reason.trim().is_empty() {
            return Err(LogError::Invalid(FieldError::new(
                "reason",
                "must not be empty",
            )));
        }
        let mut data = Map::new();
        data.insert("reason".into(), Value::from(reason));
        let data =
            serde_json::value::to_raw_value(&data).map_err(|e| LogError::Internal(e.into()))?;
        let raw = RawEvent {
            event_type: REDACTION_EVENT_TYPE.into(),
            user_identity: principal.name.clone(),
            action: Some(Action::Delete),
            entity: target.entity,
            entity_id: target.entity_id,
            property: None,
            source: None,
            ip: None,
            outcome: None,
            occurred_at: None,
            event_data: Some(data),
            idempotency_key: None,
        };
        let mut redaction =
            NewEvent::parse_own(raw, &self.limits).map_err(|e| match e.field.as_str() {
                field if field.starts_with("event_data") => {
                    LogError::Invalid(FieldError::new("reason", e.message))
                }
                _ => LogError::Invalid(e),
            })?;
        redaction.amends = Some(target.id);
        redaction.amends_hash = Some(target.hash);
        redaction.redacts = true;
        self.record(principal, vec![redaction]).await
    }
}
