//! HTTP Basic authentication as axum extractors: a handler names the scope it needs in its
//! signature (`ReadAccess`, `WriteAccess`, `RedactAccess`, `CheckpointAccess`, `AdminAccess`)
//! and never sees an unauthorised call. The tenant a request acts in is its credential's, or the
//! one its `tenant` query parameter names, if the credential admits it.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::auth::{AuthError, Principal, TenantError};
use crate::log::access_log::SYSTEM_TENANT;
use crate::model::{QueryError, Scope};
use crate::store::Store;

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::InvalidCredentials => Self::Unauthorized,
            AuthError::Store(e) => e.into(),
            AuthError::InvalidToken(_) => Self::InvalidToken(error.to_string()),
            AuthError::KeysUnavailable(_, wait) => Self::IdentityProviderUnavailable(wait),
            AuthError::Internal(e) => Self::Internal(e),
        }
    }
}

/// What a request's `Authorization` header carries.
enum Presented {
    /// HTTP Basic: a user name and password.
    Basic(String, String),
    /// `Bearer`: an API token or a JWT.
    Bearer(String),
    /// The web viewer's session cookie, when no `Authorization` header is sent.
    Session(String),
}

fn presented_credentials(parts: &Parts, sessions: &super::SessionOptions) -> Option<Presented> {
    let Some(header) = parts.headers.get(AUTHORIZATION) else {
        return super::ui::session::cookie_secret(&parts.headers, sessions).map(Presented::Session);
    };
    let header = header.to_str().ok()?;
    let (scheme, value) = header.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(Presented::Bearer(value.trim().to_owned()));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(value.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (name, secret) = text.split_once(':')?;
    Some(Presented::Basic(name.to_owned(), secret.to_owned()))
}

/// The name under which refused bearer tokens are counted, per client address.
const BEARER_FAILURES: &str = "Bearer token";

/// The tenant a request names with its `tenant` query parameter, taken out of the query by
/// [`tenant_parameter`] so that no route's own parameters see it.
#[derive(Debug, Clone, Default)]
pub struct RequestedTenant(pub Option<String>);

/// Middleware: moves the `tenant` query parameter, which every route accepts, into the request's
/// extensions ([`RequestedTenant`]); the rest of the query is passed on byte for byte. Naming it
/// twice is `400`.
pub async fn tenant_parameter(mut request: Request, next: Next) -> Response {
    let mut named = Vec::new();
    if let Some(query) = request.uri().query() {
        let (tenant, rest): (Vec<&str>, Vec<&str>) = query.split('&').partition(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            key == "tenant"
        });
        if !tenant.is_empty() {
            for pair in tenant {
                let value = pair.split_once('=').map_or("", |(_, v)| v);
                named.push(
                    form_urlencoded::parse(format!("t={value}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default(),
                );
            }
            let rest = rest.join("&");
            let mut parts = request.uri().clone().into_parts();
            let path = request.uri().path();
            let path_and_query = if rest.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{rest}")
            };
            parts.path_and_query = path_and_query.parse().ok();
            if let Ok(uri) = axum::http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
    if named.len() > 1 {
        return ApiError::InvalidQuery(QueryError {
            param: "tenant".into(),
            message: "`tenant` is given more than once".into(),
        })
        .into_response();
    }
    request
        .extensions_mut()
        .insert(RequestedTenant(named.pop()));
    next.run(request).await
}

/// Whether the credentials a long-lived response (a live tail) began with still admit it, as
/// they would a new request: a revoked or expired token, or a removed user, ends it.
pub(crate) async fn still_admitted<S: Store>(
    parts: &Parts,
    state: &AppState<S>,
    scope: Scope,
) -> bool {
    authorise(parts, state, scope).await.is_ok()
}

/// The client's address, which keys the limit on failed sign-ins.
pub(crate) fn client_address(parts: &Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip())
}

/// Checks a user's password as HTTP Basic and the viewer's sign-in both do: after too many
/// failures of this name from this address, it is not even checked (`429`).
pub(crate) async fn check_password<S: Store>(
    state: &AppState<S>,
    address: Option<std::net::IpAddr>,
    name: &str,
    secret: String,
) -> Result<crate::auth::Credential, ApiError> {
    state.throttle.may_try(address, name).map_err(|wait| {
        ApiError::TooManyRequests("too many failed sign-ins of this user name from here", wait)
    })?;
    match state.auth.authenticate(name, secret).await {
        Ok(credential) => {
            state.throttle.succeeded(address, name);
            Ok(credential)
        }
        Err(AuthError::InvalidCredentials) => {
            state.throttle.failed(address, name);
            Err(ApiError::Unauthorized)
        }
        Err(other) => Err(other.into()),
    }
}

/// Authenticates the request, acts in the tenant it names, and requires `scope`.
async fn authorise<S: Store>(
    parts: &Parts,
    state: &AppState<S>,
    scope: Scope,
) -> Result<Principal, ApiError> {
    let presented = presented_credentials(parts, &state.sessions).ok_or(ApiError::Unauthorized)?;
    let address = client_address(parts);
    let credential = match presented {
        Presented::Basic(name, secret) => {
            // A browser sends a password it was once given on its own, also from another
            // site's page: such a page must not change anything with it.
            if !parts.method.is_safe() && super::ui::session::cross_site(parts, &state.sessions) {
                return Err(ApiError::Forbidden(
                    "a request from another site's page may not change anything with the \
                     password a browser keeps; send it from this site, or without the browser"
                        .into(),
                ));
            }
            check_password(state, address, &name, secret).await?
        }
        Presented::Session(secret) => super::ui::session::admit(parts, state, &secret).await?,
        // A bearer token cannot be guessed (256 random bits, or a signature), so a valid one
        // always passes; the failures of invalid ones from one address are limited all the same,
        // to bound the lookups they cost.
        Presented::Bearer(token) => match state.auth.authenticate_bearer(&token).await {
            Ok(credential) => credential,
            Err(error @ (AuthError::InvalidCredentials | AuthError::InvalidToken(_))) => {
                let allowed = state.throttle.may_try(address, BEARER_FAILURES);
                state.throttle.failed(address, BEARER_FAILURES);
                allowed.map_err(|wait| {
                    ApiError::TooManyRequests("too many refused bearer tokens from here", wait)
                })?;
                return Err(error.into());
            }
            Err(other) => return Err(other.into()),
        },
    };
    state.throttle.admit(&credential.name).map_err(|wait| {
        ApiError::TooManyRequests("these credentials are over their request rate", wait)
    })?;
    let requested = parts
        .extensions
        .get::<RequestedTenant>()
        .and_then(|t| t.0.as_deref());
    let principal = credential.act_in(requested).map_err(|error| match error {
        TenantError::Invalid(message) => ApiError::InvalidQuery(QueryError {
            param: "tenant".into(),
            message,
        }),
        TenantError::NotAdmitted(_) => ApiError::Forbidden(error.to_string()),
    })?;
    // The system log: read by admins of every tenant, written by the service alone.
    if principal.tenant.as_str() == SYSTEM_TENANT
        && !(scope == Scope::EventsRead && principal.may_read_the_system_log())
    {
        return Err(ApiError::Forbidden(
            "the system log is read by admins of every tenant only, and written by the service \
             alone"
                .into(),
        ));
    }
    if principal.may(scope) {
        Ok(principal)
    } else {
        Err(ApiError::Forbidden(format!(
            "these credentials lack the `{}` scope",
            scope.as_str()
        )))
    }
}

macro_rules! access_extractor {
    ($(#[$doc:meta])* $name:ident, $scope:expr) => {
        $(#[$doc])*
        pub struct $name(pub Principal);

        impl<S: Store> FromRequestParts<AppState<S>> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState<S>,
            ) -> Result<Self, Self::Rejection> {
                authorise(parts, state, $scope).await.map(Self)
            }
        }
    };
}

access_extractor!(
    /// A caller allowed to read the log (`events:read`: `reader` or `admin`).
    ReadAccess,
    Scope::EventsRead
);
access_extractor!(
    /// A caller allowed to record events (`events:write`: `writer` or `admin`).
    WriteAccess,
    Scope::EventsWrite
);
access_extractor!(
    /// A caller allowed to erase and redact events (`events:redact`: `admin`).
    RedactAccess,
    Scope::EventsRedact
);
access_extractor!(
    /// A caller allowed to issue checkpoints on demand (`checkpoints:write`: `admin`).
    CheckpointAccess,
    Scope::CheckpointsWrite
);
access_extractor!(
    /// A caller allowed to manage users and tokens (`admin`).
    AdminAccess,
    Scope::Admin
);
