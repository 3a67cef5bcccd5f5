//! `POST /events/{id}/redact`: erase an event's payload (admin only); the log records who, when
//! and why in an `audit.redacted` event, which is the answer.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;

use super::access::AdminAccess;
use super::body::{JsonBytes, parse};
use super::events::{parse_event_id, status_of};
use super::{ApiError, AppState};
use crate::model::Event;
use crate::store::Store;

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
    let id = parse_event_id(&id)?;
    let recorded = state.log.redact(&principal, id, body.reason).await?;
    let status = status_of(&recorded);
    let event = recorded
        .events
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("append returned no event")))?;
    Ok((status, Json(event)))
}
