//! CloudEvents 1.0 over HTTP (the HTTP protocol binding): structured mode
//! (`application/cloudevents+json`), batched mode (`application/cloudevents-batch+json`) and
//! binary mode (attributes in `ce-*` headers, the data as the body), turned into the events
//! `POST /events` records (`model::cloudevent` has the mapping).

use axum::body::Bytes;
use axum::http::HeaderMap;
use percent_encoding::percent_decode_str;

use super::ApiError;
use super::body::{OneOrMany, content_type, require_well_formed};
use crate::model::cloudevent::{
    BATCH_CONTENT_TYPE, CloudEvent, STRUCTURED_CONTENT_TYPE, is_json_content_type,
};
use crate::model::{FieldError, RawEvent};

/// The events a CloudEvents request carries, or `None` when the request is not one (then
/// it is the service's own event JSON).
pub fn events_in(
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Result<OneOrMany<RawEvent>, ApiError>> {
    if headers.contains_key("ce-specversion") {
        return Some(binary_mode(headers, body).map(OneOrMany::One));
    }
    match content_type(headers).as_deref() {
        Some(STRUCTURED_CONTENT_TYPE) => Some(structured_mode(body).map(OneOrMany::One)),
        Some(BATCH_CONTENT_TYPE) => Some(batched_mode(body).map(OneOrMany::Many)),
        _ => None,
    }
}

fn structured_mode(body: &Bytes) -> Result<RawEvent, ApiError> {
    require_well_formed(body)?;
    Ok(CloudEvent::from_structured(body)?.into_raw_event()?)
}

fn batched_mode(body: &Bytes) -> Result<Vec<RawEvent>, ApiError> {
    require_well_formed(body)?;
    CloudEvent::from_structured_batch(body)?
        .into_iter()
        .enumerate()
        .map(|(index, event)| {
            event
                .into_raw_event()
                .map_err(|e| ApiError::Invalid(e.at_index(index)))
        })
        .collect()
}

/// Binary mode: each `ce-<name>` header is the attribute `<name>`, its value percent-decoded
/// (HTTP binding 3.1.3.2); the `Content-Type` is `datacontenttype`; the body is the data.
fn binary_mode(headers: &HeaderMap, body: &Bytes) -> Result<RawEvent, ApiError> {
    let mut attributes = std::collections::BTreeMap::new();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let value = value
            .to_str()
            .ok()
            .and_then(|v| percent_decode_str(v).decode_utf8().ok())
            .ok_or_else(|| {
                ApiError::Invalid(FieldError::new(attribute, "is not percent-encoded UTF-8"))
            })?;
        if attributes
            .insert(attribute.to_owned(), value.into_owned())
            .is_some()
        {
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
