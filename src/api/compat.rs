//! Seed 2's routes (`/create_log`, `/get_log`, `/update_log`, `/delete_log`) in its response
//! format: `{"result": "success", ...}` or `{"result": "failed", "reason": ...}`. The log is never
//! edited in place: an update or a delete is a new event that names the original in `amends`.

use std::net::IpAddr;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::{ReadAccess, RedactAccess, WriteAccess};
use super::body::{RawBody, parse_object, parse_or_default};
use super::events::{QueryPairs, parse_event_id, query_pairs, status_of};
use super::{ApiError, AppState, openapi};
use crate::log::{Amendment, Recorded};
use crate::model::event::parse_rfc3339;
use crate::model::{Action, Event, FieldError, Outcome, RawEvent};
use crate::store::Store;

pub fn router<S: Store>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(customer_logs))
        .routes(routes!(event_log))
        .routes(routes!(update))
        .routes(routes!(remove))
}

/// An [`ApiError`] in seed 2's failure shape, keeping the standard `error` object beside it.
pub struct Failed(ApiError);

impl<E: Into<ApiError>> From<E> for Failed {
    fn from(error: E) -> Self {
        Self(error.into())
    }
}

impl IntoResponse for Failed {
    fn into_response(self) -> Response {
        let body = json!({
            "result": "failed",
            "reason": self.0.to_string(),
            "error": self.0.body(),
        });
        self.0.into_response_with(body)
    }
}

type Answer = Result<(StatusCode, Json<Value>), Failed>;

/// One event in seed 2's vocabulary (`event_uuid`, `customer`, `datetime`), plus our fields.
fn entry(event: &Event) -> Map<String, Value> {
    let datetime = event.occurred_at.format(&Rfc3339).unwrap_or_default();
    let value = json!({
        "event_uuid": event.id,
        "seq": event.seq,
        "entity": event.entity,
        "entity_id": event.entity_id,
        "property": event.property,
        "event_type": event.event_type,
        "action": event.action,
        "datetime": datetime,
        "customer": event.user_identity,
        "ip": event.ip,
        "event_data": event.event_data,
        "amends": event.amends,
        "amends_hash": event.amends_hash,
        "redacted": event.redacted_at.is_some(),
        "recorded_by": event.recorded_by,
        "hash": event.hash,
    });
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn success(status: StatusCode, mut body: Map<String, Value>) -> (StatusCode, Json<Value>) {
    body.insert("result".into(), Value::from("success"));
    (status, Json(Value::Object(body)))
}

fn recorded_answer(recorded: Recorded) -> Answer {
    let status = status_of(&recorded);
    let event = recorded
        .events
        .first()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("append returned no event")))?;
    Ok(success(status, entry(event)))
}

/// `datetime` as seed 2 writes it: RFC 3339, or a bare date meaning midnight UTC.
fn parse_datetime(text: &str) -> Result<OffsetDateTime, FieldError> {
    if text.len() > 10 {
        return parse_rfc3339(text).map_err(|message| FieldError::new("datetime", message));
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &format)
        .map(|date| date.midnight().assume_utc())
        .map_err(|_| {
            FieldError::new(
                "datetime",
                "must be an RFC 3339 timestamp or a date (YYYY-MM-DD)",
            )
        })
}

/// Seed 2's event: the route's `user_id` becomes `user_identity`, `datetime` `occurred_at`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SeedEvent)]
struct CreateBody {
    #[schema(schema_with = openapi::event_text)]
    entity: String,
    /// A CRUD verb in any letter case (`CREATE`) also sets `action`.
    #[schema(schema_with = openapi::event_type)]
    event_type: String,
    /// When it happened: RFC 3339, or `YYYY-MM-DD` for midnight UTC.
    #[serde(default)]
    #[schema(schema_with = openapi::optional_seed_datetime)]
    datetime: Option<String>,
    #[serde(default)]
    #[schema(schema_with = openapi::optional_event_text)]
    property: Option<String>,
    #[serde(default)]
    #[schema(schema_with = openapi::optional_event_text)]
    entity_id: Option<String>,
    #[serde(default)]
    #[schema(schema_with = openapi::optional_ip_address)]
    ip: Option<IpAddr>,
    #[serde(default)]
    #[schema(schema_with = openapi::optional_event_text)]
    source: Option<String>,
    #[serde(default)]
    outcome: Option<Outcome>,
    /// Any JSON object, as `POST /events` takes it.
    #[serde(default)]
    #[schema(schema_with = openapi::optional_event_data)]
    event_data: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    #[schema(schema_with = openapi::optional_event_text)]
    idempotency_key: Option<String>,
}

#[utoipa::path(
    post,
    path = "/create_log/{user_id}",
    tag = "seed routes",
    // Read as JSON whatever the `Content-Type` says, as seed 2's curl lines send it.
    request_body(content = CreateBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded before under its `idempotency_key`: the event \
            as first recorded", body = Object),
        (status = 409, description = "An `idempotency_key` used before for other content, in \
            seed 2's error shape"),
        (status = 201, description = "`{\"result\": \"success\", …}` with the event recorded", body = Object),
        (status = 422, description = "A wrong or missing field, in seed 2's error shape"),
    ),
)]
async fn create<S: Store>(
    State(state): State<AppState<S>>,
    access: Result<WriteAccess, ApiError>,
    Path(user_id): Path<String>,
    body: Result<RawBody, ApiError>,
) -> Answer {
    let WriteAccess(principal) = access?;
    let RawBody(body) = body?;
    let body: CreateBody = parse_object(&body)?;
    let occurred_at = body
        .datetime
        .as_deref()
        .map(parse_datetime)
        .transpose()
        .map_err(ApiError::Invalid)?;
    let raw = RawEvent {
        action: Action::parse(&body.event_type),
        event_type: body.event_type,
        user_identity: user_id,
        entity: Some(body.entity),
        entity_id: body.entity_id,
        property: body.property,
        source: body.source,
        ip: body.ip,
        outcome: body.outcome,
        occurred_at,
        event_data: body.event_data,
        idempotency_key: body.idempotency_key,
    };
    recorded_answer(state.log.record_one(&principal, raw).await?)
}

#[utoipa::path(
    get,
    path = "/get_log/customer/{user_id}",
    tag = "seed routes",
    responses((status = 200, description = "`{\"customer\", \"logs\", \"next_cursor\"}`: the \
        customer's events, a page at a time", body = Object)),
)]
async fn customer_logs<S: Store>(
    State(state): State<AppState<S>>,
    access: Result<ReadAccess, ApiError>,
    Path(user_id): Path<String>,
    pairs: QueryPairs,
) -> Answer {
    let ReadAccess(principal) = access?;
    let pairs = pairs.map(|Query(mut pairs)| {
        pairs.push(("user_identity".into(), user_id.clone()));
        Query(pairs)
    });
    let page = state
        .log
        .query_params(&principal, &query_pairs(pairs)?)
        .await?;
    let logs: Vec<Value> = page
        .events
        .iter()
        .map(|e| Value::Object(entry(e)))
        .collect();
    let mut body = Map::new();
    body.insert("customer".into(), Value::from(user_id));
    body.insert("logs".into(), Value::from(logs));
    body.insert(
        "next_cursor".into(),
        json!(page.next_cursor.map(|c| c.encode())),
    );
    Ok(success(StatusCode::OK, body))
}

#[utoipa::path(
    get,
    path = "/get_log/event/{event_uuid}",
    tag = "seed routes",
    responses((status = 200, description = "The event, in seed 2's shape", body = Object)),
)]
async fn event_log<S: Store>(
    State(state): State<AppState<S>>,
    access: Result<ReadAccess, ApiError>,
    Path(event_uuid): Path<String>,
) -> Answer {
    let ReadAccess(principal) = access?;
    let id = parse_event_id(&event_uuid)?;
    let (original, amendments) = state.log.with_amendments(&principal, id).await?;
    let mut body = entry(&original);
    let amendments: Vec<Value> = amendments.iter().map(|e| Value::Object(entry(e))).collect();
    body.insert("amendments".into(), Value::from(amendments));
    Ok(success(StatusCode::OK, body))
}

/// What an amendment changes; every field is optional, and so is the body.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SeedAmendment)]
struct UpdateBody {
    #[serde(default)]
    #[schema(schema_with = openapi::optional_event_text)]
    user_identity: Option<String>,
    #[serde(default)]
    #[schema(schema_with = openapi::optional_event_type)]
    event_type: Option<String>,
    #[serde(default)]
    #[schema(schema_with = openapi::optional_event_text)]
    entity: Option<String>,
    #[serde(default)]
    #[schema(schema_with = openapi::optional_event_text)]
    entity_id: Option<String>,
    #[serde(default)]
    #[schema(schema_with = openapi::optional_event_text)]
    property: Option<String>,
    /// When it happened: RFC 3339, or `YYYY-MM-DD` for midnight UTC.
    #[serde(default)]
    #[schema(schema_with = openapi::optional_seed_datetime)]
    datetime: Option<String>,
    /// Any JSON object, as `POST /events` takes it.
    #[serde(default)]
    #[schema(schema_with = openapi::optional_event_data)]
    event_data: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    #[schema(schema_with = openapi::optional_event_text)]
    idempotency_key: Option<String>,
}

/// Records an amendment (see [`crate::log::AuditLog::amend`]): a new `update` event naming the
/// original, which stays untouched.
#[utoipa::path(
    put,
    path = "/update_log/{event_uuid}",
    tag = "seed routes",
    request_body(content = UpdateBody, content_type = "application/json",
        description = "Optional: without a body, the amendment takes the original's fields"),
    responses(
        (status = 200, description = "Recorded before under its `idempotency_key`: the \
            amendment as first recorded", body = Object),
        (status = 409, description = "An `idempotency_key` used before for other content, in \
            seed 2's error shape"),
        (status = 201, description = "The amendment recorded (the original stays as it was)", body = Object),
        (status = 422, description = "A wrong or missing field, in seed 2's error shape"),
    ),
)]
async fn update<S: Store>(
    State(state): State<AppState<S>>,
    access: Result<WriteAccess, ApiError>,
    Path(event_uuid): Path<String>,
    body: Result<RawBody, ApiError>,
) -> Answer {
    let WriteAccess(principal) = access?;
    let RawBody(body) = body?;
    let body: UpdateBody = parse_or_default(&body)?;
    let id = parse_event_id(&event_uuid)?;
    let occurred_at = body
        .datetime
        .as_deref()
        .map(parse_datetime)
        .transpose()
        .map_err(ApiError::Invalid)?;
    let amendment = Amendment {
        user_identity: body.user_identity,
        event_type: body.event_type,
        entity: body.entity,
        entity_id: body.entity_id,
        property: body.property,
        occurred_at,
        event_data: body.event_data,
        idempotency_key: body.idempotency_key,
    };
    recorded_answer(state.log.amend(&principal, id, amendment).await?)
}

/// Why the event is deleted; optional, and so is the body.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SeedDeletion)]
struct DeleteBody {
    /// Default: `deleted with DELETE /delete_log`. Not blank, without U+0000.
    #[serde(default)]
    #[schema(schema_with = openapi::optional_reason)]
    reason: Option<String>,
}

/// Deletes an event the only way an audit log may (admin only): its personal fields are erased,
/// their commitments kept, and an `audit.erased` event records who, when and why. Deleting it
/// again answers with that record.
#[utoipa::path(
    delete,
    path = "/delete_log/{event_uuid}",
    tag = "seed routes",
    request_body(content = DeleteBody, content_type = "application/json",
        description = "Optional"),
    responses(
        (status = 409, description = "One of the service's own records (every `audit.*` type \
            but `audit.amendment`), in seed 2's error shape"),
        (status = 422, description = "A blank or unknown field, in seed 2's error shape"),
        (status = 201, description = "Erased: the `audit.erased` record", body = Object),
        (status = 200, description = "Erased before: the record of that erasure", body = Object),
    ),
)]
async fn remove<S: Store>(
    State(state): State<AppState<S>>,
    access: Result<RedactAccess, ApiError>,
    Path(event_uuid): Path<String>,
    body: Result<RawBody, ApiError>,
) -> Answer {
    let RedactAccess(principal) = access?;
    let RawBody(body) = body?;
    let body: DeleteBody = parse_or_default(&body)?;
    let reason = body
        .reason
        .unwrap_or_else(|| "deleted with DELETE /delete_log".to_owned());
    super::erasure::check_reason(&reason)?;
    let id = parse_event_id(&event_uuid)?;
    recorded_answer(state.log.erase(&principal, id, reason).await?)
}
