//! The one error type at the HTTP edge: each variant maps to one status and one JSON shape,
//! `{"error": {"code", "message", "field"?}}`. Internal causes are logged, never sent.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::log::{LogError, WriteError};
use crate::model::{FieldError, QueryError};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{}", query_message(.0))]
    InvalidQuery(QueryError),
    #[error("{}", field_message(.0))]
    Invalid(FieldError),
    /// A body of another type than the route reads; the text says which it reads.
    #[error("the body must be {0}")]
    UnsupportedMediaType(&'static str),
    #[error("the body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("authentication required: send valid HTTP Basic credentials or a Bearer token")]
    Unauthorized,
    /// The web viewer's session cookie is missing, unknown or expired. Unlike `Unauthorized` it
    /// sends no `WWW-Authenticate`, so a browser does not pop up its own password dialog.
    #[error("not signed in, or the session has ended: sign in again")]
    SignedOut,
    /// The viewer's sign-in with a wrong user name or password; like `SignedOut`, without
    /// `WWW-Authenticate`.
    #[error("wrong user name or password")]
    SignInRefused,
    /// Over a credential's request rate, or too many failed sign-ins of one name from one
    /// address: retry after the wait (whole seconds, rounded up, in `Retry-After`).
    #[error("{reason}; retry after {secs} s", reason = .0, secs = retry_after_secs(*.1))]
    TooManyRequests(&'static str, std::time::Duration),
    /// The credentials lack a scope, or may not act in the tenant named.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    #[error(
        "idempotency key `{0}` was already used for a different event; use a new key for new content"
    )]
    IdempotencyConflict(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the service is busy; retry shortly")]
    Overloaded,
    #[error("the database is unavailable; retry shortly")]
    Unavailable,
    /// A bearer JWT refused, with the reason (RFC 6750's `invalid_token`).
    #[error("{0}")]
    InvalidToken(String),
    #[error("the identity provider's signing keys cannot be read; retry shortly")]
    IdentityProviderUnavailable(std::time::Duration),
    #[error("the request took too long")]
    Timeout,
    #[error("no data arrived for {0} s")]
    IdleTimeout(u64),
    #[error("the request body could not be read: {0}")]
    BodyUnreadable(String),
    #[error("the server is shutting down; retry shortly")]
    ShuttingDown,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// The body of every error response, `{"error": {"code", "message", "field"?}}` (the schema the
/// OpenAPI document gives it).
#[derive(Serialize, ToSchema)]
pub struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize, ToSchema)]
struct ErrorObject<'a> {
    /// What went wrong, for a program: `invalid_query`, `invalid_field`, `unauthorized`, … (one
    /// per status; the README's "Errors" lists them).
    code: &'a str,
    /// What went wrong, for a person.
    message: String,
    /// The parameter or field at fault, for `invalid_query` and `invalid_field`.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

/// A wait as `Retry-After` gives it: whole seconds, at least 1.
fn retry_after_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// "`limit` must be a whole number from 1 to 1000": the model's short messages ("must be …")
/// leave the parameter to `field`, but a person reading the message wants it named too.
fn query_message(error: &QueryError) -> String {
    if error.message.starts_with("must ") || error.message.starts_with("is ") {
        format!("`{}` {}", error.param, error.message)
    } else {
        error.message.clone()
    }
}

/// "`event_type` must not be empty", but not "`x` unknown field `x`…" (serde names it already).
fn field_message(error: &FieldError) -> String {
    let leaf = error
        .field
        .rsplit(['.', ']'])
        .next()
        .unwrap_or(&error.field);
    if error.message.contains(&format!("`{leaf}`")) {
        error.message.clone()
    } else {
        format!("`{}` {}", error.field, error.message)
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) | Self::InvalidQuery(_) | Self::BodyUnreadable(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized | Self::SignedOut | Self::SignInRefused | Self::InvalidToken(_) => {
                StatusCode::UNAUTHORIZED
            }
            Self::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::IdempotencyConflict(_) | Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Overloaded
            | Self::Unavailable
            | Self::IdentityProviderUnavailable(_)
            | Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout | Self::IdleTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::InvalidQuery(_) => "invalid_query",
            Self::Invalid(_) => "invalid_field",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::Unauthorized | Self::SignedOut | Self::SignInRefused => "unauthorized",
            Self::InvalidToken(_) => "invalid_token",
            Self::TooManyRequests(..) => "too_many_requests",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::IdempotencyConflict(_) => "idempotency_conflict",
            Self::Conflict(_) => "conflict",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::IdentityProviderUnavailable(_) => "identity_provider_unavailable",
            Self::Timeout => "timeout",
            Self::IdleTimeout(_) => "idle_timeout",
            Self::BodyUnreadable(_) => "body_error",
            Self::ShuttingDown => "shutting_down",
            Self::Internal(_) => "internal",
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid(e) => Some(&e.field),
            Self::InvalidQuery(e) => Some(&e.param),
            _ => None,
        }
    }

    /// The `error` object of the body; seed 2's routes wrap the same object in their own shape.
    pub fn body(&self) -> Value {
        json!(self.object())
    }

    fn object(&self) -> ErrorObject<'_> {
        ErrorObject {
            code: self.code(),
            message: self.to_string(),
            field: self.field(),
        }
    }

    /// Logs what the client does not get to see, and answers with `body`.
    pub fn into_response_with(self, body: Value) -> Response {
        match &self {
            Self::Internal(cause) => tracing::error!(error = ?cause, "request failed"),
            Self::Unavailable => tracing::warn!("request failed: database unavailable"),
            _ => {}
        }
        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        match self {
            Self::InvalidToken(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"auditor\", error=\"invalid_token\""),
                );
            }
            Self::Unauthorized => {
                // Both schemes the API takes (RFC 9110 11.6.1): a user's password, or a token.
                headers.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"auditor\", charset=\"UTF-8\""),
                );
                headers.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"auditor\""),
                );
            }
            Self::Overloaded | Self::Unavailable | Self::ShuttingDown => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::IdentityProviderUnavailable(wait) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs(wait)),
                );
            }
            Self::TooManyRequests(_, wait) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs(wait)),
                );
            }
            _ => {}
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!(ErrorBody {
            error: self.object()
        });
        self.into_response_with(body)
    }
}

impl From<FieldError> for ApiError {
    fn from(error: FieldError) -> Self {
        Self::Invalid(error)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => Self::NotFound("not found".into()),
            StoreError::Conflict(message) => Self::Conflict(message),
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                Self::Unavailable
            }
            StoreError::Other(cause) => Self::Internal(cause),
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(error: WriteError) -> Self {
        match error {
            WriteError::QueueFull => Self::Overloaded,
            WriteError::Stopped | WriteError::Unavailable => Self::Unavailable,
            WriteError::Store(e) => e.into(),
        }
    }
}

impl From<LogError> for ApiError {
    fn from(error: LogError) -> Self {
        match error {
            LogError::Invalid(e) => Self::Invalid(e),
            LogError::InvalidQuery(e) => Self::InvalidQuery(e),
            LogError::NotFound(message) => Self::NotFound(message),
            LogError::Conflict(message) => Self::Conflict(message),
            LogError::NothingErased => Self::Conflict(LogError::NothingErased.to_string()),
            LogError::IdempotencyConflict(key) => Self::IdempotencyConflict(key),
            LogError::Write(e) => e.into(),
            LogError::Store(e) => e.into(),
            LogError::Internal(e) => Self::Internal(e),
        }
    }
}
