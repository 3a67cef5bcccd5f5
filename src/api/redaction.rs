//! Redaction (right to erasure): an event's payload is erased, its hash kept so the log still
//! verifies, and an `audit.redacted` event records who, when and why.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::body::{JsonBytes, parse};
use super::events::{Recorded, parse_event_id, record, tenant_of};
use super::{ApiError, AppState};
use crate::auth::{AdminAccess, Principal};
use crate::model::{Action, Event, FieldError, NewEvent, RawEvent};
use crate::store::Store;

use crate::integrity::verify::REDACTION_EVENT_TYPE;

pub fn router<S: Store>() -> Router<AppState<S>> {
    Router::new().route("/events/{id}/redact", post(create::<S>))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedactBody {
    reason: String,
}

async fn create<S: Store>(
    State(state): State<AppState<S>>,
    AdminAccess(principal): AdminAccess,
    Path(id): Path<String>,
    JsonBytes(body): JsonBytes,
) -> Result<(StatusCode, Json<Event>), ApiError> {
    let body: RedactBody = parse(&body)?;
    let recorded = redact(&state, &principal, &id, body.reason).await?;
    let status = recorded.status();
    let event = recorded
        .events
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("append returned no event")))?;
    Ok((status, Json(event)))
}

/// Appends the redaction event for `event_id`; committing it erases the target's payload.
pub async fn redact<S: Store>(
    state: &AppState<S>,
    principal: &Principal,
    event_id: &str,
    reason: String,
) -> Result<Recorded, ApiError> {
    let id = parse_event_id(event_id)?;
    let target = state
        .store
        .get(&tenant_of(principal), id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("event {id} does not exist")))?;
    if target.redacted_at.is_some() {
        return Err(ApiError::Conflict(format!(
            "event {id} is already redacted"
        )));
    }
    if target.event_data.is_none() {
        return Err(ApiError::Conflict(format!(
            "event {id} has no payload to redact"
        )));
    }
    let mut data = Map::new();
    data.insert("reason".into(), Value::from(reason));
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
        event_data: Some(
            serde_json::value::to_raw_value(&data).map_err(|e| ApiError::Internal(e.into()))?,
        ),
        idempotency_key: None,
    };
    let mut redaction =
        NewEvent::parse_own(raw, &state.limits).map_err(|e| match e.field.as_str() {
            "event_data" => ApiError::Invalid(FieldError::new("reason", e.message)),
            _ => ApiError::Invalid(e),
        })?;
    if redaction
        .event_data
        .as_ref()
        .and_then(|d| d["reason"].as_str())
        .is_none_or(|r| r.trim().is_empty())
    {
        return Err(ApiError::Invalid(FieldError::new(
            "reason",
            "must not be empty",
        )));
    }
    redaction.amends = Some(target.id);
    redaction.amends_hash = Some(target.hash);
    redaction.redacts = true;
    record(state, principal, vec![redaction]).await
}
