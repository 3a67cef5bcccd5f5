//! Reading request bodies: size-limited, JSON only, and parse errors that point at the problem
//! (400 with the position for broken JSON, 422 naming the field for well-formed but wrong JSON).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;

use super::ApiError;
use crate::model::json::{self, JsonError};

/// A request body that claims to be JSON (or claims nothing), not yet parsed.
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json(request.headers())?;
        RawBody::from_request(request, state)
            .await
            .map(|RawBody(bytes)| Self(bytes))
    }
}

/// `415` unless the `Content-Type` is JSON (`application/json` or `…+json`) or absent.
pub fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    match content_type(headers) {
        Some(essence) if essence != "application/json" && !essence.ends_with("+json") => Err(
            ApiError::UnsupportedMediaType("JSON (Content-Type: application/json)"),
        ),
        _ => Ok(()),
    }
}

/// The media types `POST /events/bulk` reads: NDJSON under its common names, and JSON (one
/// event on one line is both).
pub const NDJSON_TYPES: [&str; 4] = [
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "application/json",
];

/// `415` unless the `Content-Type` is one of [`NDJSON_TYPES`] or absent, as [`require_json`]
/// for one JSON document: a form or `text/plain` is more likely a mistake than NDJSON.
pub fn require_ndjson(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    match content_type(headers) {
        Some(essence) if !NDJSON_TYPES.contains(&essence.as_str()) => Err(
            ApiError::UnsupportedMediaType("NDJSON (Content-Type: application/x-ndjson)"),
        ),
        _ => Ok(()),
    }
}

/// The `Content-Type`'s media type, lower-cased, without its parameters.
pub fn content_type(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().unwrap_or_default();
    Some(
        value
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase(),
    )
}

/// `400` with serde_json's position when `bytes` is not well-formed JSON.
pub fn require_well_formed(bytes: &[u8]) -> Result<(), ApiError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
        .map(|_| ())
        .map_err(|e| ApiError::MalformedJson(e.to_string()))
}

/// A request body read whatever its declared type. Seed 2's curl examples send JSON without a
/// `Content-Type`, which curl then labels as a form; those routes read it as JSON all the same.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = request
            .extensions()
            .get::<BodyLimit>()
            .map_or(usize::MAX, |l| l.0);
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(limit)
                } else {
                    ApiError::MalformedJson(rejection.body_text())
                }
            })?;
        Ok(Self(bytes))
    }
}

/// The configured body limit, attached to requests so rejections can quote it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Parses JSON, telling broken syntax (400) from a valid document of the wrong shape (422).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    json::parse(bytes).map_err(|error| match error {
        JsonError::Malformed(message) => ApiError::MalformedJson(message),
        JsonError::Invalid(field) => ApiError::Invalid(field),
    })
}

/// Like [`parse`], for a body that must be one JSON object: serde would also fill a struct
/// from an array of its fields in order (`[null, null]`), which no client means.
pub fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => parse(bytes),
        Some(_) => {
            require_well_formed(bytes)?;
            Err(ApiError::Invalid(crate::model::FieldError::new(
                ".",
                "the body must be a JSON object",
            )))
        }
    }
}

/// Like [`parse_object`], but an empty body means "all defaults" (seed 2's bodiless PUT and DELETE).
pub fn parse_or_default<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        parse_object(bytes)
    }
}

/// Either one JSON object or an array of them, decided by the document's first byte.
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

pub fn parse_one_or_many<T: DeserializeOwned>(bytes: &[u8]) -> Result<OneOrMany<T>, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'[') => parse(bytes).map(OneOrMany::Many),
        _ => parse(bytes).map(OneOrMany::One),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RawEvent;

    fn field_of(json: &str) -> String {
        match parse::<RawEvent>(json.as_bytes()) {
            Err(ApiError::Invalid(e)) => e.field,
            other => panic!("expected a field error, got {:?}", other.err()),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(r#"{"user_identity":"u"}"#), "event_type");
        assert_eq!(
            field_of(r#"{"event_type":"a","user_identity":"u","x":1}"#),
            "x"
        );
        assert_eq!(
            field_of(r#"{"event_type":5,"user_identity":"u"}"#),
            "event_type"
        );
        assert_eq!(
            field_of(r#"{"event_type":"a","event_type":"b","user_identity":"u"}"#),
            "event_type"
        );
    }

    #[test]
    fn broken_json_is_a_bad_request_with_a_position() {
        match parse::<RawEvent>(b"{\"event_type\": ") {
            Err(ApiError::MalformedJson(message)) => assert!(message.contains("line 1")),
            other => panic!("unexpected {:?}", other.err()),
        }
    }

    #[test]
    fn arrays_report_the_index() {
        match parse::<Vec<RawEvent>>(
            br#"[{"event_type":"a","user_identity":"u"},{"event_type":"a"}]"#,
        ) {
            Err(ApiError::Invalid(e)) => assert_eq!(e.field, "[1].user_identity"),
            other => panic!("unexpected {:?}", other.err()),
        }
    }
}
