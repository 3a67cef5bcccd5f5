//! Signing in to the viewer through the identity provider (`[auth.jwt.login]`):
//! `GET /ui/oidc/start` sends the browser to the provider, `GET /ui/oidc/callback` is where the
//! provider sends it back with a code. Browser navigations, not API calls: they answer with
//! redirects, and are not in the OpenAPI document. See `auth::oidc` for the flow.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::header::{LOCATION, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::super::{ApiError, AppState};
use super::session::no_store;
use crate::auth::oidc;
use crate::store::Store;

/// The cookie that binds a sign-in under way to the browser that started it.
const FLOW_COOKIE: &str = "auditor_oidc";

/// Where the page shows that a sign-in through the provider failed.
const FAILED: &str = "/ui/#/sign-in-failed";

/// How long the browser has at the provider, in seconds.
const FLOW_SECS: u32 = 600;

pub fn pages<S: Store>() -> Router<AppState<S>> {
    Router::new()
        .route("/ui/oidc/start", get(start))
        .route("/ui/oidc/callback", get(callback))
}

fn see_other(location: &str, cookies: &[HeaderValue]) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(location) {
        headers.insert(LOCATION, location);
    }
    for cookie in cookies {
        headers.append(SET_COOKIE, cookie.clone());
    }
    no_store(response)
}

/// Sends the browser to the provider, with a new flow's `state` and PKCE challenge.
async fn start<S: Store>(State(state): State<AppState<S>>) -> Response {
    let Some(login) = &state.sessions.login else {
        return ApiError::NotFound(
            "signing in through an identity provider is not configured".into(),
        )
        .into_response();
    };
    let started = oidc::start(login);
    // `Lax`: the provider's redirect back is a navigation from another site, which a
    // `Strict` cookie would not follow.
    let binding = state.sessions.cookie(
        FLOW_COOKIE,
        &started.binding,
        &format!("SameSite=Lax; Max-Age={FLOW_SECS}"),
    );
    see_other(&started.location, &[binding])
}

/// Where the provider sends the browser back: the code is exchanged and a session begun, if the
/// flow is this browser's.
async fn callback<S: Store>(
    State(state): State<AppState<S>>,
    parts: Parts,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(login) = state.sessions.login.clone() else {
        return ApiError::NotFound(
            "signing in through an identity provider is not configured".into(),
        )
        .into_response();
    };
    let ended = state
        .sessions
        .cookie(FLOW_COOKIE, "", "SameSite=Lax; Max-Age=0");
    let failed = |reason: &str| {
        tracing::info!(reason, "sign-in through the identity provider failed");
        see_other(FAILED, std::slice::from_ref(&ended))
    };
    if let Some(error) = query.get("error") {
        return failed(&format!("the provider answered `{error}`"));
    }
    let (Some(code), Some(returned_state)) = (query.get("code"), query.get("state")) else {
        return failed("no code or state");
    };
    let Some(binding) = state.sessions.read_cookie(&parts.headers, FLOW_COOKIE) else {
        return failed("no sign-in under way in this browser");
    };
    let Some(verifier) = oidc::verifier_for(&binding, returned_state) else {
        return failed("the state is not this browser's");
    };
    match state
        .auth
        .begin_provider_session(&login, code, verifier)
        .await
    {
        Ok((secret, credential)) => {
            tracing::info!(user = %credential.name, "signed in through the identity provider");
            see_other(
                "/ui/#/",
                &[ended.clone(), state.sessions.session_cookie(&secret)],
            )
        }
        Err(error) => failed(&error.to_string()),
    }
}
