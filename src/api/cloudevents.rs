//! CloudEvents 1.0 over HTTP (the HTTP protocol binding): structured mode
//! (`application/cloudevents+json`), batched mode (`application/cloudevents-batch+json`) and
//! binary mode (attributes in `ce-*` headers, the data as the body), turned into the events
//! `POST /events` records (`model::cloudevent` has the mapping).

use axum::body::Bytes;
use axum::http::HeaderMap;

use super::ApiError;
use super::body::{OneOrMany, content_type, require_well_formed};
use crate::model::cloudevent::{
    BATCH_CONTENT_TYPE, CloudEvent, STRUCTURED_CONTENT_TYPE, into_raw_events, is_json_content_type,
    percent_decoded,
};
use crate::model::{FieldError, RawEvent};

/// The events a CloudEvents request carries, or `None` when the request is not one (then
/// it is the service's own event JSON).
///
/// The `Content-Type` decides the mode (HTTP binding 3.1): a CloudEvents one is structured or
/// batched mode, where the body holds every attribute, so a `ce-*` header there is refused
/// rather than ignored; otherwise `ce-specversion` makes it binary mode, and any other `ce-*`
/// header without it is refused rather than dropped with the attribute it meant.
pub fn events_in(
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Result<OneOrMany<RawEvent>, ApiError>> {
    let content_type = content_type(headers);
    let structured = match content_type.as_deref() {
        Some(STRUCTURED_CONTENT_TYPE) => Some(false),
        Some(BATCH_CONTENT_TYPE) => Some(true),
        _ => None,
    };
    let first_ce_header = headers
        .keys()
        .map(|name| name.as_str())
        .find(|name| name.starts_with("ce-"));
    match (structured, first_ce_header) {
        (Some(_), Some(header)) => Some(Err(ApiError::Invalid(FieldError::new(
            header,
            format!(
                "`{header}` is a binary-mode header, but `Content-Type: {}` is structured \
                 mode, where the body holds every attribute: put it in the event, or send the \
                 event in binary mode",
                content_type.unwrap_or_default()
            ),
        )))),
        (Some(false), None) => Some(structured_mode(body).map(OneOrMany::One)),
        (Some(true), None) => Some(batched_mode(body).map(OneOrMany::Many)),
        (None, Some(_)) if headers.contains_key("ce-specversion") => {
            Some(binary_mode(headers, body).map(OneOrMany::One))
        }
        (None, Some(header)) => Some(Err(ApiError::Invalid(FieldError::new(
            "ce-specversion",
            format!(
                "`ce-specversion` is missing, yet the request carries `{header}`: `ce-*` \
                 headers mean CloudEvents binary mode, whose body is the event's data, and \
                 need `ce-specversion: 1.0`; a plain event must not carry them"
            ),
        )))),
        (None, None) => None,
    }
}

fn structured_mode(body: &Bytes) -> Result<RawEvent, ApiError> {
    require_well_formed(body)?;
    Ok(CloudEvent::from_structured(body)?.into_raw_event()?)
}

fn batched_mode(body: &Bytes) -> Result<Vec<RawEvent>, ApiError> {
    require_well_formed(body)?;
    Ok(into_raw_events(CloudEvent::from_structured_batch(body)?)?)
}

/// Binary mode: each `ce-<name>` header is the attribute `<name>`, its value percent-decoded
/// (HTTP binding 3.1.3.2); the `Content-Type` is `datacontenttype`; the body is the data.
fn binary_mode(headers: &HeaderMap, body: &Bytes) -> Result<RawEvent, ApiError> {
    let mut attributes = std::collections::BTreeMap::new();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let value = percent_decoded(attribute, name.as_str(), value.as_bytes())?;
        if attributes.insert(attribute.to_owned(), value).is_some() {
            return Err(ApiError::Invalid(FieldError::new(
                attribute,
                "appears twice",
            )));
        }
    }
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    // Broken JSON is the request's syntax (400), not a field of the event (422).
    if !body.is_empty() && is_json_content_type(content_type) {
        require_well_formed(body)?;
    }
    let event = CloudEvent::from_binary(attributes, content_type, body)?;
    Ok(event.into_raw_event()?)
}

/// One structured-mode CloudEvent as the document describes it: the attributes this service
/// records, each with the rules of the field it becomes (`model::cloudevent` has the mapping).
pub struct StructuredEvent;

impl utoipa::PartialSchema for StructuredEvent {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use super::openapi;
        use utoipa::openapi::schema::{AdditionalProperties, AnyOfBuilder, ObjectBuilder, Type};
        let string = |pattern: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(pattern))
        };
        let enumeration = |values: &[&str]| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(values.iter().copied()))
        };
        // An extension's value may be a boolean or a 32-bit integer too, recorded as its text.
        let extension = || {
            utoipa::openapi::schema::OneOfBuilder::new()
                .item(openapi::event_text())
                .item(ObjectBuilder::new().schema_type(Type::Boolean))
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(i32::MIN))
                        .maximum(Some(i32::MAX)),
                )
        };
        // The data is in `data` or in `data_base64`, never both: each branch allows one.
        let event = |data: &str| {
            let data_schema: utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> = if data
                == "data"
            {
                utoipa::openapi::Ref::from_schema_name("JsonValue").into()
            } else {
                // Canonical base64: the padded last group's unused bits are zero.
                string(
                        "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$",
                    )
                    .into()
            };
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property("specversion", enumeration(&["1.0"]))
                // Unique per `source`: with it, the idempotency key.
                .property("id", string(&format!("^[^{}]+$", openapi::CONTROL)))
                // A URI reference: the event's `source`.
                .property(
                    "source",
                    string(&format!(
                        "^[^{}{}]+$",
                        openapi::WHITE_SPACE,
                        openapi::CONTROL
                    )),
                )
                .property("type", openapi::event_type())
                .property("subject", openapi::event_text())
                .property(
                    "time",
                    ObjectBuilder::new().schema_type(Type::String).format(Some(
                        utoipa::openapi::SchemaFormat::KnownFormat(
                            utoipa::openapi::KnownFormat::DateTime,
                        ),
                    )),
                )
                // Kept with binary data (in `event_data`, where U+0000 cannot be), else dropped.
                .property(
                    "datacontenttype",
                    if data == "data" {
                        ObjectBuilder::new().schema_type(Type::String)
                    } else {
                        string(r"^[^\u0000]*$")
                    },
                )
                .property("dataschema", ObjectBuilder::new().schema_type(Type::String))
                .property(data, data_schema)
                // The actor: the event's `user_identity`.
                .property("authid", openapi::event_text())
                .property("entity", extension())
                .property("property", extension())
                .property(
                    "action",
                    enumeration(&["create", "read", "update", "delete"]),
                )
                .property("outcome", enumeration(&["success", "failure"]))
                .property("ip", openapi::ip_address())
                .required("specversion")
                .required("id")
                .required("source")
                .required("type")
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        };
        AnyOfBuilder::new()
            .item(event("data"))
            .item(event("data_base64"))
            .description(Some(
                "A CloudEvent 1.0 in the JSON format, with its data in `data` or in \
                 `data_base64`; `source` and `id` together at most `limits.max_field_len` bytes",
            ))
            .into()
    }
}

impl utoipa::ToSchema for StructuredEvent {
    fn name() -> std::borrow::Cow<'static, str> {
        "CloudEvent".into()
    }
}

/// A batch of structured-mode CloudEvents: one at least, at most `limits.max_batch_events`.
pub struct StructuredBatch;

impl utoipa::PartialSchema for StructuredBatch {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        // Two events with the same `source` and `id` are one event, refused twice in one batch;
        // the document can say no more than that two equal events are.
        utoipa::openapi::schema::ArrayBuilder::new()
            .items(utoipa::openapi::Ref::from_schema_name("CloudEvent"))
            .unique_items(true)
            .min_items(Some(1))
            .max_items(Some(crate::model::Limits::default().max_batch_events))
            .into()
    }
}

impl utoipa::ToSchema for StructuredBatch {
    fn name() -> std::borrow::Cow<'static, str> {
        "CloudEventBatch".into()
    }

    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::PartialSchema;
        schemas.push(("CloudEvent".into(), StructuredEvent::schema()));
    }
}
