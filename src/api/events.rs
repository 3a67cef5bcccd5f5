//! `/events`: record events, fetch one, and query them by any field.

use std::collections::HashSet;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::body::{JsonBytes, OneOrMany, parse_one_or_many};
use super::{ApiError, AppState};
use crate::auth::{Principal, ReadAccess, WriteAccess};
use crate::model::{
    Event, EventId, EventQuery, FieldError, NewEvent, Page, QueryError, RawEvent, Submission,
    TenantId,
};
use crate::store::{Appended, Store};

pub fn router<S: Store>() -> Router<AppState<S>> {
    Router::new()
        .route("/events", post(create::<S>).get(list::<S>))
        .route("/events/query", get(query::<S>))
        .route("/events/{id}", get(show::<S>))
}

/// What an append did: `created` is false when every event was an idempotent replay;
/// `replayed[i]` says whether `events[i]` was one.
pub struct Recorded {
    pub created: bool,
    pub events: Vec<Event>,
    pub replayed: Vec<bool>,
}

impl Recorded {
    pub fn status(&self) -> StatusCode {
        if self.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        }
    }
}

/// The tenant a caller acts on. One tenant for now; the tenants issue derives it from credentials.
pub fn tenant_of(_principal: &Principal) -> TenantId {
    TenantId::default()
}

/// Appends a request's events atomically through the writer.
pub async fn record<S: Store>(
    state: &AppState<S>,
    principal: &Principal,
    events: Vec<NewEvent>,
) -> Result<Recorded, ApiError> {
    let submission = Submission {
        tenant: tenant_of(principal),
        recorded_by: principal.name.clone(),
        events,
    };
    match state.writer.append(submission).await? {
        Appended::Created { events, replayed } => Ok(Recorded {
            created: true,
            events,
            replayed,
        }),
        Appended::Replayed(events) => Ok(Recorded {
            created: false,
            replayed: vec![true; events.len()],
            events,
        }),
        Appended::KeyConflict(key) => Err(ApiError::IdempotencyConflict(key)),
    }
}

async fn create<S: Store>(
    State(state): State<AppState<S>>,
    WriteAccess(principal): WriteAccess,
    JsonBytes(body): JsonBytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let limits = state.limits;
    match parse_one_or_many::<RawEvent>(&body)? {
        OneOrMany::One(raw) => {
            let event = NewEvent::parse(raw, &limits).map_err(ApiError::Invalid)?;
            let recorded = record(&state, &principal, vec![event]).await?;
            let event = recorded.events.first().map(|e| json!(e));
            Ok((recorded.status(), Json(event.unwrap_or(Value::Null))))
        }
        OneOrMany::Many(raws) => {
            let events = parse_batch(raws, &limits)?;
            let recorded = record(&state, &principal, events).await?;
            Ok((recorded.status(), Json(json!(recorded.events))))
        }
    }
}

fn parse_batch(
    raws: Vec<RawEvent>,
    limits: &crate::model::Limits,
) -> Result<Vec<NewEvent>, ApiError> {
    if raws.is_empty() {
        return Err(ApiError::Invalid(FieldError::new(
            "[]",
            "a batch must contain at least one event",
        )));
    }
    if raws.len() > limits.max_batch_events {
        return Err(ApiError::Invalid(FieldError::new(
            "[]",
            format!(
                "a batch holds at most {} events; this one has {}",
                limits.max_batch_events,
                raws.len()
            ),
        )));
    }
    let mut keys = HashSet::new();
    raws.into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let event = NewEvent::parse(raw, limits).map_err(|e| e.at_index(index))?;
            if let Some(key) = &event.idempotency_key
                && !keys.insert(key.clone())
            {
                return Err(FieldError::new(
                    "idempotency_key",
                    "is used by another event of the same batch",
                )
                .at_index(index));
            }
            Ok(event)
        })
        .collect::<Result<_, _>>()
        .map_err(ApiError::Invalid)
}

async fn show<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
    Path(id): Path<String>,
) -> Result<Json<Event>, ApiError> {
    let id = parse_event_id(&id)?;
    let event = state.store.get(&tenant_of(&principal), id).await?;
    event
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no event with id {id}")))
}

pub fn parse_event_id(text: &str) -> Result<EventId, ApiError> {
    text.parse().map_err(|_| {
        ApiError::InvalidQuery(QueryError {
            param: "id".into(),
            message: format!("`{text}` is not an event id (a UUID)"),
        })
    })
}

type QueryPairs = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

/// Runs a query string against the caller's log.
pub async fn run_query<S: Store>(
    state: &AppState<S>,
    principal: &Principal,
    pairs: QueryPairs,
) -> Result<Page, ApiError> {
    let Query(pairs) = pairs.map_err(|e| {
        ApiError::InvalidQuery(QueryError {
            param: "query".into(),
            message: e.body_text(),
        })
    })?;
    let query = EventQuery::parse(&pairs).map_err(ApiError::InvalidQuery)?;
    query_page(state, principal, &query).await
}

pub async fn query_page<S: Store>(
    state: &AppState<S>,
    principal: &Principal,
    query: &EventQuery,
) -> Result<Page, ApiError> {
    let events = state.store.query(&tenant_of(principal), query).await?;
    Ok(query.page(events))
}

async fn list<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
    pairs: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    let page = run_query(&state, &principal, pairs).await?;
    Ok(Json(json!({
        "events": page.events,
        "next_cursor": page.next_cursor.map(|c| c.encode()),
    })))
}

/// Seed 1's route: the same query, answered with a bare array.
async fn query<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
    pairs: QueryPairs,
) -> Result<Json<Vec<Event>>, ApiError> {
    let page = run_query(&state, &principal, pairs).await?;
    Ok(Json(page.events))
}
