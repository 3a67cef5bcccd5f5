//! HTTP Basic authentication as axum extractors: a handler names the capability it needs in its
//! signature (`ReadAccess`, `WriteAccess`, `AdminAccess`) and never sees an unauthorised call.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{ApiError, AppState};
use crate::auth::{AuthError, Principal, Role};
use crate::store::Store;

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::InvalidCredentials => Self::Unauthorized,
            AuthError::Store(e) => e.into(),
            AuthError::Internal(e) => Self::Internal(e),
        }
    }
}

fn basic_credentials(parts: &Parts) -> Option<(String, String)> {
    let header = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (name, secret) = text.split_once(':')?;
    Some((name.to_owned(), secret.to_owned()))
}

async fn authorise<S: Store>(
    parts: &Parts,
    state: &AppState<S>,
    allowed: fn(Role) -> bool,
) -> Result<Principal, ApiError> {
    let (name, secret) = basic_credentials(parts).ok_or(ApiError::Unauthorized)?;
    let principal = state.auth.authenticate(&name, secret).await?;
    if allowed(principal.role) {
        Ok(principal)
    } else {
        Err(ApiError::Forbidden(principal.role))
    }
}

macro_rules! access_extractor {
    ($(#[$doc:meta])* $name:ident, $allowed:expr) => {
        $(#[$doc])*
        pub struct $name(pub Principal);

        impl<S: Store> FromRequestParts<AppState<S>> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState<S>,
            ) -> Result<Self, Self::Rejection> {
                authorise(parts, state, $allowed).await.map(Self)
            }
        }
    };
}

access_extractor!(
    /// A caller allowed to read the log (`reader` or `admin`).
    ReadAccess,
    Role::can_read
);
access_extractor!(
    /// A caller allowed to record events (`writer` or `admin`).
    WriteAccess,
    Role::can_write
);
access_extractor!(
    /// A caller allowed to manage the log (`admin`).
    AdminAccess,
    |role| role == Role::Admin
);
