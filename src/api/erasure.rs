//! Erasure (admin only): `POST /events/{id}/redact` erases an event's payload,
//! `POST /events/{id}/erase` every personal field of one event, and `POST /erasures` those of
//! every event about one data subject. The log records each erasure as an event, which is (or is
//! in) the answer.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::RedactAccess;
use super::body::{JsonBytes, parse_object};
use super::events::{parse_event_id, status_of};
use super::{ApiError, AppState};
use crate::log::SubjectErasure;
use crate::model::{Event, FieldError, Personal};
use crate::store::Store;

pub fn router<S: Store>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::new()
        .routes(routes!(redact))
        .routes(routes!(erase))
        .routes(routes!(erase_subject))
}

/// `{"reason": …}`: why the event is erased, kept in the record of the erasure.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ErasureReason)]
struct ReasonBody {
    /// Why: not blank, without U+0000 (it is stored as a payload's text is).
    #[schema(schema_with = super::openapi::reason)]
    reason: String,
}

/// `{"user_identity": …, "reason": …}` or `{"entity_id": …, "reason": …}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectBody {
    #[serde(default)]
    user_identity: Option<String>,
    #[serde(default)]
    entity_id: Option<String>,
    reason: String,
}

/// A reason as every erasure takes it, checked before the log is looked at: an event erased
/// before answers with its record, which must not make a blank reason pass.
pub fn check_reason(reason: &str) -> Result<(), ApiError> {
    let message = if reason.trim().is_empty() {
        "must not be empty"
    } else if reason.contains('\0') {
        "must not contain U+0000 (PostgreSQL cannot store it)"
    } else {
        return Ok(());
    };
    Err(ApiError::Invalid(FieldError::new("reason", message)))
}

/// Exactly one of `user_identity` and `entity_id`, which derive cannot say.
impl utoipa::PartialSchema for SubjectBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        let text = |pattern: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(pattern))
        };
        let reason = super::openapi::reason;
        let by = |name: &str, other: &str| {
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property(
                    name,
                    text(r"^[^\u0000]+$").min_length(Some(1)).description(Some(
                        "The data subject: the events whose field of this name equals it",
                    )),
                )
                .property(other, ObjectBuilder::new().schema_type(Type::Null))
                .property("reason", reason())
                .required(name)
                .required("reason")
                .additional_properties(Some(
                    utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
                ))
        };
        OneOfBuilder::new()
            .item(by("user_identity", "entity_id"))
            .item(by("entity_id", "user_identity"))
            .description(Some(
                "The data subject, by exactly one of `user_identity` and `entity_id`, and why",
            ))
            .into()
    }
}

impl utoipa::ToSchema for SubjectBody {
    fn name() -> std::borrow::Cow<'static, str> {
        "SubjectErasureRequest".into()
    }
}

/// `201` with the `audit.redacted` event.
#[utoipa::path(
    post,
    path = "/events/{id}/redact",
    tag = "erasure",
    request_body(content = ReasonBody, content_type = "application/json"),
    responses(
        (status = 415, description = "A body that is not JSON"),
        (status = 422, description = "A missing, blank or unknown field (`field` names it)"),
        (status = 201, description = "The `audit.redacted` event", body = Event),
        (status = 409, description = "The payload is already erased, or there never was one, \
            or one of the service's own records (every `audit.*` type but `audit.amendment`)"),
    ),
)]
async fn redact<S: Store>(
    state: State<AppState<S>>,
    access: RedactAccess,
    id: Path<String>,
    body: JsonBytes,
) -> Result<(StatusCode, Json<Event>), ApiError> {
    erase_one(state, access, id, body, Fields::Payload).await
}

/// `201` with the `audit.erased` event, or `200` with the record of the erasure that already
/// left the event without personal data.
#[utoipa::path(
    post,
    path = "/events/{id}/erase",
    tag = "erasure",
    request_body(content = ReasonBody, content_type = "application/json"),
    responses(
        (status = 415, description = "A body that is not JSON"),
        (status = 422, description = "A missing, blank or unknown field (`field` names it)"),
        (status = 201, description = "The `audit.erased` event", body = Event),
        (status = 200, description = "Erased before: the record of that erasure", body = Event),
        (status = 409, description = "One of the service's own records (every `audit.*` \
            type but `audit.amendment`)"),
    ),
)]
async fn erase<S: Store>(
    state: State<AppState<S>>,
    access: RedactAccess,
    id: Path<String>,
    body: JsonBytes,
) -> Result<(StatusCode, Json<Event>), ApiError> {
    erase_one(state, access, id, body, Fields::Personal).await
}

/// Which fields of one event an erasure takes.
enum Fields {
    Payload,
    Personal,
}

async fn erase_one<S: Store>(
    State(state): State<AppState<S>>,
    RedactAccess(principal): RedactAccess,
    Path(id): Path<String>,
    JsonBytes(body): JsonBytes,
    fields: Fields,
) -> Result<(StatusCode, Json<Event>), ApiError> {
    let body: ReasonBody = parse_object(&body)?;
    check_reason(&body.reason)?;
    let id = parse_event_id(&id)?;
    let recorded = match fields {
        Fields::Payload => state.log.redact(&principal, id, body.reason).await?,
        Fields::Personal => state.log.erase(&principal, id, body.reason).await?,
    };
    let status = status_of(&recorded);
    let event = recorded
        .events
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("append returned no event")))?;
    Ok((status, Json(event)))
}

/// `201` with `{"erased": n, "record": <audit.erased event>}`, or `200` with `{"erased": 0,
/// "record": null}` when no event of the subject holds personal data any more.
#[utoipa::path(
    post,
    path = "/erasures",
    tag = "erasure",
    request_body(content = SubjectBody, content_type = "application/json"),
    responses(
        (status = 415, description = "A body that is not JSON"),
        (status = 422, description = "Not exactly one of `user_identity` and `entity_id`, or a \
            missing, blank or unknown field (`field` names it)"),
        (status = 201, description = "`{\"erased\": n, \"record\": <audit.erased event>}`", body = Object),
        (status = 200, description = "`{\"erased\": 0, \"record\": null}`: nothing of the \
            subject holds personal data any more", body = Object),
    ),
)]
async fn erase_subject<S: Store>(
    State(state): State<AppState<S>>,
    RedactAccess(principal): RedactAccess,
    JsonBytes(body): JsonBytes,
) -> Result<(StatusCode, Json<SubjectErasure>), ApiError> {
    let body: SubjectBody = parse_object(&body)?;
    check_reason(&body.reason)?;
    let (field, value) = match (body.user_identity, body.entity_id) {
        (Some(value), None) => (Personal::UserIdentity, value),
        (None, Some(value)) => (Personal::EntityId, value),
        _ => {
            return Err(ApiError::Invalid(FieldError::new(
                "user_identity",
                "give exactly one of `user_identity` and `entity_id` to name the data subject",
            )));
        }
    };
    if value.is_empty() {
        return Err(ApiError::Invalid(FieldError::new(
            field.name(),
            "must not be empty",
        )));
    }
    // No stored value holds it (PostgreSQL cannot), and PostgreSQL refuses it as a parameter.
    if value.contains('\0') {
        return Err(ApiError::Invalid(FieldError::new(
            field.name(),
            "must not contain U+0000, which no stored value holds",
        )));
    }
    let erasure = state
        .log
        .erase_subject(&principal, field, value, body.reason)
        .await?;
    let status = match erasure.record {
        Some(_) => StatusCode::CREATED,
        None => StatusCode::OK,
    };
    Ok((status, Json(erasure)))
}
