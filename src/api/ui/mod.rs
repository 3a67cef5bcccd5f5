//! The web viewer at `/ui`: a page, a stylesheet and two hand-written ES modules, embedded in the
//! binary (no build step, nothing fetched from elsewhere), over the same API a client uses. The
//! page signs in with a session cookie (`session`); every answer under `/ui` carries a strict
//! Content-Security-Policy (scripts from this origin only, no inline script, not framable).

mod oidc;
pub mod session;

use axum::Router;
use axum::extract::Request;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::AppState;
use crate::store::Store;

pub use session::SessionOptions;

/// What every answer under `/ui` says about how it may be used. `connect-src 'self'` lets the
/// page call the API and its live tail and nothing else; `frame-ancestors 'none'` and
/// `X-Frame-Options` stop another site from framing it (clickjacking).
const SECURITY_HEADERS: [(&str, &str); 6] = [
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
];

/// Middleware: adds [`SECURITY_HEADERS`] to every answer under `/ui`.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let under_ui = request.uri().path() == "/ui" || request.uri().path().starts_with("/ui/");
    let mut response = next.run(request).await;
    if under_ui {
        let headers = response.headers_mut();
        for (name, value) in SECURITY_HEADERS {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
    }
    response
}

/// The embedded files: path under `/ui/`, content type, bytes.
const ASSETS: [(&str, &str, &str); 4] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "verify.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/verify.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("assets/app.css"),
    ),
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    ),
];

fn asset(name: &'static str) -> Response {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(file, ..)| *file == name)
        .copied()
        .unwrap_or(("", "text/plain", ""));
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Embedded in the binary: a new release serves new files at the same paths.
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// The page, saying whether people may sign in through the identity provider (the script reads
/// it; nothing else of the page differs).
async fn index<S: Store>(
    axum::extract::State(state): axum::extract::State<AppState<S>>,
) -> Response {
    let mut response = asset("index.html");
    if state.sessions.login.is_some() {
        let html = include_str!("assets/index.html").replacen(
            "data-provider=\"off\"",
            "data-provider=\"on\"",
            1,
        );
        *response.body_mut() = axum::body::Body::from(html);
    }
    response
}

/// The page and its files. Not in the OpenAPI document: they are no API, and take no query
/// (the page keeps its state after `#`).
pub fn pages<S: Store>() -> Router<AppState<S>> {
    let mut router = Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(index::<S>))
        .merge(oidc::pages());
    // The page itself only at `/ui/`, where it is told whether the provider's sign-in is on.
    for (name, ..) in ASSETS.iter().filter(|(name, ..)| *name != "index.html") {
        router = router.route(
            &format!("/ui/{name}"),
            get(move || async move { asset(name) }),
        );
    }
    router
}
