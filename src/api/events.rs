//! `/events`: record events, fetch one, and query them by any field.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::{ReadAccess, WriteAccess};
use super::body::{OneOrMany, RawBody, parse_one_or_many, require_json};
use super::cloudevents::{self, StructuredBatch, StructuredEvent};
use super::{ApiError, AppState};
use crate::log::Recorded;
use crate::model::{Event, EventId, Page, QueryError, RawEvent};
use crate::store::Store;

pub fn router<S: Store>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(query))
        .routes(routes!(show))
}

/// `201 Created` when anything new was recorded, `200 OK` when every event was a replay.
pub fn status_of(recorded: &Recorded) -> StatusCode {
    if recorded.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// The JSON body of `POST /events`: one event, or an array of them (a schema only).
struct EventsToRecord;

impl utoipa::PartialSchema for EventsToRecord {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, OneOfBuilder};
        let event = || utoipa::openapi::Ref::from_schema_name("RawEvent");
        OneOfBuilder::new()
            .item(event())
            .item(
                ArrayBuilder::new()
                    .items(event())
                    .min_items(Some(1))
                    .max_items(Some(crate::model::Limits::default().max_batch_events)),
            )
            .into()
    }
}

impl utoipa::ToSchema for EventsToRecord {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::PartialSchema;
        schemas.push((RawEvent::name().into(), RawEvent::schema()));
        <RawEvent as utoipa::ToSchema>::schemas(schemas);
    }
}

/// What `POST /events` answers with: the event, or the array of them (a schema only).
struct RecordedEvents;

impl utoipa::PartialSchema for RecordedEvents {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, OneOfBuilder};
        let event = || utoipa::openapi::Ref::from_schema_name("Event");
        OneOfBuilder::new()
            .item(event())
            .item(ArrayBuilder::new().items(event()))
            .into()
    }
}

impl utoipa::ToSchema for RecordedEvents {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::PartialSchema;
        schemas.push((Event::name().into(), Event::schema()));
        <Event as utoipa::ToSchema>::schemas(schemas);
    }
}

/// Records the body's events: the service's own event JSON, or CloudEvents in any of the HTTP
/// binding's modes (`api::cloudevents`).
#[utoipa::path(
    post,
    path = "/events",
    tag = "events",
    request_body(
        description = "One event, or an array of them recorded atomically (at most \
            `limits.max_batch_events`; no two with the same `idempotency_key`); or \
            CloudEvents 1.0: `application/cloudevents+json`, `application/cloudevents-batch+json` \
            (no two with the same `source` and `id`), or binary mode (`ce-*` headers)",
        content(
            (EventsToRecord = "application/json"),
            (StructuredEvent = "application/cloudevents+json"),
            (StructuredBatch = "application/cloudevents-batch+json"),
        ),
    ),
    responses(
        (status = 201, description = "Recorded: the event as stored (an array, in the order \
            sent, for an array)", body = RecordedEvents),
        (status = 200, description = "Every event was recorded before under its \
            `idempotency_key`: the events as first recorded", body = RecordedEvents),
        (status = 409, description = "An `idempotency_key` used before for other content"),
        (status = 415, description = "A body that is neither JSON nor a CloudEvent"),
        (status = 422, description = "A wrong, missing, unknown, blank or over-long field \
            (`field` names it)"),
    ),
)]
async fn create<S: Store>(
    State(state): State<AppState<S>>,
    WriteAccess(principal): WriteAccess,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let events = match cloudevents::events_in(&headers, &body) {
        Some(events) => events?,
        None => {
            require_json(&headers)?;
            parse_one_or_many::<RawEvent>(&body)?
        }
    };
    // Serialised straight from the events: no `serde_json::Value` built in between.
    match events {
        OneOrMany::One(raw) => {
            let recorded = state.log.record_one(&principal, raw).await?;
            let status = status_of(&recorded);
            Ok((status, Json(recorded.events.into_iter().next())).into_response())
        }
        OneOrMany::Many(raws) => {
            let recorded = state.log.record_batch(&principal, raws).await?;
            Ok((status_of(&recorded), Json(recorded.events)).into_response())
        }
    }
}

#[utoipa::path(
    get,
    path = "/events/{id}",
    tag = "events",
    responses((status = 200, description = "The event", body = Event)),
)]
async fn show<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
    Path(id): Path<String>,
) -> Result<Json<Event>, ApiError> {
    let id = parse_event_id(&id)?;
    Ok(Json(state.log.get(&principal, id).await?))
}

pub fn parse_event_id(text: &str) -> Result<EventId, ApiError> {
    text.parse().map_err(|_| {
        ApiError::InvalidQuery(QueryError {
            param: "id".into(),
            message: format!("`{text}` is not an event id (a UUID)"),
        })
    })
}

pub type QueryPairs =
    Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

/// The query string's pairs, or why it could not be read.
pub fn query_pairs(pairs: QueryPairs) -> Result<Vec<(String, String)>, ApiError> {
    // Not the extractor's own text, which names serde ("Failed to deserialize query string").
    let Query(pairs) = pairs.map_err(|_| {
        ApiError::InvalidQuery(QueryError {
            param: "query".into(),
            message: "the query string is not `name=value` pairs joined by `&`".into(),
        })
    })?;
    Ok(pairs)
}

async fn run_query<S: Store>(
    state: &AppState<S>,
    principal: &crate::auth::Principal,
    pairs: QueryPairs,
) -> Result<Page, ApiError> {
    Ok(state
        .log
        .query_params(principal, &query_pairs(pairs)?)
        .await?)
}

/// Query the log: the events that match every filter, a page at a time, in `seq` order.
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    responses((status = 200, description = "A page of events", body = EventsPage)),
)]
async fn list<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
    pairs: QueryPairs,
) -> Result<Json<EventsPage>, ApiError> {
    let page = run_query(&state, &principal, pairs).await?;
    Ok(Json(EventsPage {
        events: page.events,
        next_cursor: page.next_cursor.map(|c| c.encode()),
    }))
}

/// The body of `GET /events`: a page of events and the cursor of the next one (`null` at the
/// end), serialised straight from the events.
#[derive(Serialize, utoipa::ToSchema)]
struct EventsPage {
    events: Vec<Event>,
    /// The `cursor` of the next page; `null` on the last.
    next_cursor: Option<String>,
}

/// Seed 1's route: the same query, answered with a bare array.
#[utoipa::path(
    get,
    path = "/events/query",
    tag = "events",
    responses((status = 200, description = "The first page of events", body = Vec<Event>)),
)]
async fn query<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
    pairs: QueryPairs,
) -> Result<Json<Vec<Event>>, ApiError> {
    let page = run_query(&state, &principal, pairs).await?;
    Ok(Json(page.events))
}
