//! Signing in to the web viewer: `POST /ui/session` checks a user's password as HTTP Basic does
//! (the same throttle of failures) and sets a session cookie; `GET /ui/session` says who is
//! signed in and gives the page its anti-CSRF token; `DELETE /ui/session` signs out.
//!
//! The cookie is `HttpOnly`, `SameSite=Strict`, `Path=/`, and `Secure` (named with the
//! `__Host-` prefix) when the server runs TLS. A request authenticated by it is refused `403`
//! when the browser says it came from another site (`Sec-Fetch-Site`, `Origin`), and, unless its
//! method is safe (GET, HEAD), when it lacks the session's token in `X-CSRF-Token`. Signing in
//! needs a JSON body (which no cross-site form can send without the server's consent) and a
//! same-origin `Origin`, so it cannot be forged either.

use axum::Json;
use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::super::access::{check_password, client_address};
use super::super::{ApiError, AppState};
use crate::auth::sessions::{SessionPolicy, csrf_token};
use crate::auth::{AuthError, Credential};
use crate::model::{Field, Scope};
use crate::store::Store;

/// The header in which the page sends the session's anti-CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How the viewer's sessions behave on this server.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// How long a session lasts (`[auth] session_idle_secs`, `session_lifetime_secs`).
    pub policy: SessionPolicy,
    /// The server runs TLS, or is reached through an `https` `public_url`: the cookie is
    /// `Secure` and `__Host-` prefixed.
    pub secure: bool,
    /// The origin browsers reach the service at (`public_url`), when a proxy stands in front:
    /// a request's `Origin` must be it. Without it, `Origin` is compared with `Host`.
    pub public_origin: Option<String>,
    /// Signing in through the identity provider (`[auth.jwt.login]`), when configured.
    pub login: Option<std::sync::Arc<crate::auth::oidc::OidcLogin>>,
}

impl SessionOptions {
    /// The cookie `name` with `value` and `attributes` (`SameSite`, `Max-Age`), `HttpOnly` and
    /// for the whole site; `Secure` and `__Host-` prefixed over TLS.
    pub(super) fn cookie(&self, name: &str, value: &str, attributes: &str) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let name = self.cookie_name(name);
        let text = format!("{name}={value}; Path=/; HttpOnly; {attributes}{secure}");
        // Names, base64url secrets and these attributes are all visible ASCII.
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The `Set-Cookie` of a new session whose secret is `secret`.
    pub(super) fn session_cookie(&self, secret: &str) -> HeaderValue {
        self.cookie(
            COOKIE_NAME,
            secret,
            &format!(
                "SameSite=Strict; Max-Age={}",
                self.policy.lifetime.as_secs()
            ),
        )
    }
}

/// The session cookie's name, `__Host-` prefixed over TLS.
const COOKIE_NAME: &str = "auditor_session";

impl SessionOptions {
    /// `name` as this server sets it: `__Host-` prefixed over TLS.
    fn cookie_name(&self, name: &str) -> String {
        if self.secure {
            format!("__Host-{name}")
        } else {
            name.to_owned()
        }
    }

    /// The value of this server's cookie `name` in the request, by its exact name: over TLS
    /// only the `__Host-` prefixed one, which no other host, no plain-HTTP answer and no page
    /// path can have set, so that nobody can plant a session (or a sign-in flow) of theirs.
    pub(super) fn read_cookie(&self, headers: &HeaderMap, name: &str) -> Option<String> {
        let name = self.cookie_name(name);
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(found, _)| *found == name)
            .map(|(_, value)| value.to_owned())
    }
}

/// `/ui/session`: sign in, who is signed in, sign out (in the OpenAPI document).
pub fn router<S: Store>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::new().routes(routes!(sign_in, show, sign_out))
}

/// The session cookie's secret, if the request carries one under this server's name for it.
pub fn cookie_secret(headers: &HeaderMap, options: &SessionOptions) -> Option<String> {
    options.read_cookie(headers, COOKIE_NAME)
}

/// Whether the browser says the request came from another site. A request that says nothing
/// (no `Sec-Fetch-Site`, no `Origin`) is not from a browser's cross-site page: browsers send
/// `Origin` with every cross-origin request and every POST.
pub(in crate::api) fn cross_site(parts: &Parts, options: &SessionOptions) -> bool {
    let headers = &parts.headers;
    if let Some(site) = headers.get("sec-fetch-site") {
        // `none`: the user typed the address or followed a bookmark.
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return true;
        }
    }
    let Some(origin) = headers.get(ORIGIN).map(|o| o.to_str().unwrap_or_default()) else {
        return false;
    };
    if let Some(public) = &options.public_origin {
        return !origin.eq_ignore_ascii_case(public);
    }
    // HTTP/1.1 names the server in `Host`, HTTP/2 in the request's authority.
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    // The scheme is not compared: behind a TLS-terminating proxy the server sees plain HTTP.
    // Host and port are the same site's only if equal.
    match (origin.split_once("://"), host) {
        (Some((_, origin_host)), Some(host)) => !origin_host.eq_ignore_ascii_case(host),
        _ => true,
    }
}

fn forbidden(message: &str) -> ApiError {
    ApiError::Forbidden(message.into())
}

/// The credential of the request's session cookie, after the cross-site and anti-CSRF checks
/// (see the module's documentation). `SignedOut` for an unknown or ended session.
pub(in crate::api) async fn admit<S: Store>(
    parts: &Parts,
    state: &AppState<S>,
    secret: &str,
) -> Result<Credential, ApiError> {
    if cross_site(parts, &state.sessions) {
        return Err(forbidden(
            "a request from another site may not use the viewer's session",
        ));
    }
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        let sent = parts
            .headers
            .get(CSRF_HEADER)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !bool::from(sent.ct_eq(csrf_token(secret).as_bytes())) {
            return Err(forbidden(
                "a change made with the viewer's session needs its token in X-CSRF-Token",
            ));
        }
    }
    match state
        .auth
        .resume_session(secret, state.sessions.policy)
        .await
    {
        Ok(credential) => Ok(credential),
        Err(AuthError::InvalidCredentials) => Err(ApiError::SignedOut),
        Err(other) => Err(other.into()),
    }
}

/// A user's name and password.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SignIn {
    user: String,
    password: String,
}

/// Who is signed in, and what the page needs to act for them.
#[derive(Serialize, utoipa::ToSchema)]
struct SessionInfo {
    /// The user's name.
    user: String,
    /// What the user may do, e.g. `["events:read"]`.
    scopes: Vec<&'static str>,
    /// The tenants whose logs the user may read (the first is the one read by default).
    tenants: Vec<String>,
    /// To send in `X-CSRF-Token` with every change made with the session.
    csrf_token: String,
    /// The fields `GET /events` filters on, besides `event_data.<path>`.
    filters: Vec<&'static str>,
}

async fn describe<S: Store>(
    state: &AppState<S>,
    credential: Credential,
    secret: &str,
) -> Result<SessionInfo, ApiError> {
    let principal = credential
        .clone()
        .act_in(None)
        .map_err(|e| ApiError::Forbidden(e.to_string()))?;
    let tenants = if principal.may(Scope::EventsRead) {
        let mut tenants: Vec<String> = state
            .log
            .readable_tenants(&principal)
            .await?
            .into_iter()
            .map(|t| t.as_str().to_owned())
            .collect();
        // The default tenant first, where a credential of every tenant reads by default.
        let own = principal.tenant.as_str().to_owned();
        tenants.retain(|t| *t != own);
        tenants.insert(0, own);
        tenants
    } else {
        vec![principal.tenant.as_str().to_owned()]
    };
    Ok(SessionInfo {
        user: credential.name,
        scopes: credential.scopes.iter().map(Scope::as_str).collect(),
        tenants,
        csrf_token: csrf_token(secret),
        filters: Field::ALL.iter().map(|f| f.name()).collect(),
    })
}

pub(super) fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    response
}

/// Signs in with a user's name and password, as HTTP Basic checks them (and throttles their
/// failures), and sets the session cookie.
#[utoipa::path(
    post,
    path = "/ui/session",
    tag = "viewer",
    request_body = SignIn,
    responses(
        (status = 201, description = "Signed in: the session cookie is set", body = SessionInfo),
        (status = 401, description = "Wrong user name or password"),
        (status = 403, description = "The request came from another site"),
        (status = 415, description = "The body is not JSON"),
        (status = 429, description = "Too many failed sign-ins of this name from this address"),
    ),
)]
async fn sign_in<S: Store>(
    State(state): State<AppState<S>>,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    if cross_site(&parts, &state.sessions) {
        return Err(forbidden("signing in from another site is not allowed"));
    }
    let json = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::UnsupportedMediaType(
            "JSON (Content-Type: application/json)",
        ));
    }
    let SignIn { user, password } =
        serde_json::from_slice(&body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    // Refused as a sign-in, not as a request: `WWW-Authenticate` would make the browser offer
    // its own password box, whose password it would then send on its own.
    let credential = check_password(&state, client_address(&parts), &user, password)
        .await
        .map_err(|error| match error {
            ApiError::Unauthorized => ApiError::SignInRefused,
            other => other,
        })?;
    let secret = state
        .auth
        .begin_session(&credential.name, state.sessions.policy)
        .await?;
    let info = describe(&state, credential, &secret).await?;
    let mut response = (StatusCode::CREATED, Json(info)).into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, state.sessions.session_cookie(&secret));
    Ok(no_store(response))
}

/// Who is signed in with the request's session cookie, and its anti-CSRF token.
#[utoipa::path(
    get,
    path = "/ui/session",
    tag = "viewer",
    responses(
        (status = 200, description = "The session's user", body = SessionInfo),
        (status = 401, description = "Not signed in, or the session ended"),
    ),
)]
async fn show<S: Store>(
    State(state): State<AppState<S>>,
    parts: Parts,
) -> Result<Response, ApiError> {
    let secret = cookie_secret(&parts.headers, &state.sessions).ok_or(ApiError::SignedOut)?;
    let credential = admit(&parts, &state, &secret).await?;
    let info = describe(&state, credential, &secret).await?;
    Ok(no_store(Json(info).into_response()))
}

/// Signs out: the session is deleted (on every instance) and the cookie cleared. Needs the
/// session's `X-CSRF-Token`.
#[utoipa::path(
    delete,
    path = "/ui/session",
    tag = "viewer",
    responses(
        (status = 204, description = "Signed out"),
        (status = 401, description = "Not signed in, or the session ended"),
        (status = 403, description = "No or a wrong X-CSRF-Token, or from another site"),
    ),
)]
async fn sign_out<S: Store>(
    State(state): State<AppState<S>>,
    parts: Parts,
) -> Result<Response, ApiError> {
    let secret = cookie_secret(&parts.headers, &state.sessions).ok_or(ApiError::SignedOut)?;
    admit(&parts, &state, &secret).await?;
    state.auth.end_session(&secret).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        SET_COOKIE,
        state
            .sessions
            .cookie(COOKIE_NAME, "", "SameSite=Strict; Max-Age=0"),
    );
    Ok(no_store(response))
}
