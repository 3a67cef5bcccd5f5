//! The HTTP API: one module per resource, one error type, one router.

mod access;
mod body;
mod bulk;
pub mod ceiling;
mod checkpoints;
mod cloudevents;
mod compat;
mod erasure;
mod error;
mod events;
mod export;
mod health;
pub mod metrics;
mod openapi;
mod parameters;
mod proofs;
mod stream;
mod tiles;
mod tokens;
mod ui;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::HeaderName;
use axum::http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use axum::middleware::{self, Next};
use axum::response::Response;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::{
    SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer,
};
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;

pub use body::BodyLimit;
pub use error::ApiError;
pub use ui::SessionOptions;

use crate::auth::Authenticator;
use crate::auth::throttle::Throttle;
use crate::log::AuditLog;
use crate::store::Store;

/// Everything a handler may use; cheap to clone.
pub struct AppState<S> {
    /// The core every route calls.
    pub log: AuditLog<S>,
    pub auth: Arc<Authenticator<S>>,
    /// Request rates and failed authentications.
    pub throttle: Arc<Throttle>,
    /// Cancelled when the server begins a graceful shutdown; a request that could run on
    /// indefinitely (a bulk upload) watches it and ends early.
    pub shutdown: CancellationToken,
    /// How the web viewer's sign-in sessions behave.
    pub sessions: SessionOptions,
}

impl<S: Clone> Clone for AppState<S> {
    fn clone(&self) -> Self {
        Self {
            log: self.log.clone(),
            auth: Arc::clone(&self.auth),
            throttle: Arc::clone(&self.throttle),
            shutdown: self.shutdown.clone(),
            sessions: self.sessions.clone(),
        }
    }
}

/// HTTP-level limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

/// The whole API, usable without a socket (tests may call it directly).
///
/// Every route but `POST /events/bulk` must answer within `request_timeout`. A bulk upload may
/// run as long as its client keeps sending: it ends when no data arrives for `request_timeout`
/// or the server shuts down, and answers with what it committed either way.
pub fn router<S: Store>(state: AppState<S>, http: HttpLimits) -> Router {
    let body_limit = http.max_body_bytes;
    let (routes, document) = routes::<S>(http);
    let known = parameters::KnownParameters::from_document(&document);
    routes
        .merge(ui::pages())
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .url("/openapi.json", document)
                // Else the page sends the document's address to swagger.io's validator.
                .config(utoipa_swagger_ui::Config::default().validator_url("none")),
        )
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn(ui::security_headers))
        .layer(middleware::from_fn(access::tenant_parameter))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            parameters::refuse_unknown(known.clone(), request, next)
        }))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(
            move |mut request: Request, next: Next| {
                request.extensions_mut().insert(BodyLimit(body_limit));
                next.run(request)
            },
        ))
        .layer(CatchPanicLayer::custom(|_| {
            use axum::response::IntoResponse;
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let route = request
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("unmatched", MatchedPath::as_str);
                    tracing::info_span!("request", method = %request.method(), route)
                })
                .on_request(())
                // The response line below says the status; a second line for each 5xx is noise.
                .on_failure(())
                .on_response(
                    |response: &Response, latency: Duration, _span: &tracing::Span| {
                        tracing::info!(
                            status = response.status().as_u16(),
                            latency_ms = %format_args!("{:.3}", latency.as_secs_f64() * 1000.0),
                            "request"
                        );
                    },
                ),
        )
        .layer(middleware::from_fn(metrics::track))
        // The viewer's session secret travels in `Cookie`, and its anti-CSRF token beside it.
        .layer(SetSensitiveRequestHeadersLayer::new([
            AUTHORIZATION,
            COOKIE,
            HeaderName::from_static(ui::session::CSRF_HEADER),
        ]))
        .layer(SetSensitiveResponseHeadersLayer::new([SET_COOKIE]))
        .with_state(state)
}

/// Every route of the API and its OpenAPI document, from one registration: each module lists
/// its handlers in utoipa-axum's `routes!`, which adds a handler to the router and its
/// `#[utoipa::path]` to the document together, so neither lists a route the other lacks.
pub fn routes<S: Store>(http: HttpLimits) -> (Router<AppState<S>>, utoipa::openapi::OpenApi) {
    let (deadlined, mut document) = OpenApiRouter::new()
        .merge(health::router())
        .merge(events::router())
        .merge(export::router())
        .merge(stream::router())
        .merge(compat::router())
        .merge(checkpoints::router())
        .merge(proofs::router())
        .merge(erasure::router())
        .merge(tiles::router())
        .merge(tokens::router())
        .merge(metrics::router())
        .merge(ui::session::router())
        .split_for_parts();
    let deadlined = deadlined.layer(middleware::from_fn(move |request: Request, next: Next| {
        deadline(request, next, http.request_timeout)
    }));
    // A bulk upload runs as long as its client sends: it is not under the deadline.
    let (bulk, bulk_document) = bulk::router(http.request_timeout).split_for_parts();
    document.merge(bulk_document);
    (
        Router::new().merge(bulk).merge(deadlined),
        openapi::document(document),
    )
}

/// A request that outlives the timeout is answered 408, so no client can hold shutdown hostage.
async fn deadline(request: Request, next: Next, timeout: Duration) -> Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document lists each route the router serves, with its method, and no other.
    #[test]
    fn the_document_names_every_route_and_method() {
        let http = HttpLimits {
            max_body_bytes: 1024,
            request_timeout: Duration::from_secs(1),
        };
        let (_, document) = routes::<crate::store::SqliteStore>(http);
        let mut operations: Vec<String> = document
            .paths
            .paths
            .iter()
            .flat_map(|(path, item)| {
                [
                    ("GET", item.get.is_some()),
                    ("POST", item.post.is_some()),
                    ("PUT", item.put.is_some()),
                    ("DELETE", item.delete.is_some()),
                    ("PATCH", item.patch.is_some()),
                ]
                .into_iter()
                .filter(|(_, present)| *present)
                .map(move |(method, _)| format!("{method} {path}"))
            })
            .collect();
        operations.sort();
        let expected = [
            "DELETE /admin/tokens/{name}",
            "DELETE /delete_log/{event_uuid}",
            "DELETE /ui/session",
            "GET /admin/tokens",
            "GET /checkpoint",
            "GET /checkpoints/consistency",
            "GET /checkpoints/latest",
            "GET /checkpoints/{tree_size}",
            "GET /events",
            "GET /events/export",
            "GET /events/query",
            "GET /events/stream",
            "GET /events/{id}",
            "GET /events/{id}/proof",
            "GET /get_log/customer/{user_id}",
            "GET /get_log/event/{event_uuid}",
            "GET /healthz",
            "GET /keys",
            "GET /logs/{tenant}/checkpoint",
            "GET /logs/{tenant}/tile/{path}",
            "GET /metrics",
            "GET /ping",
            "GET /readyz",
            "GET /ui/session",
            "POST /admin/tokens",
            "POST /checkpoints",
            "POST /create_log/{user_id}",
            "POST /erasures",
            "POST /events",
            "POST /events/bulk",
            "POST /events/{id}/erase",
            "POST /events/{id}/redact",
            "POST /ui/session",
            "PUT /update_log/{event_uuid}",
        ];
        assert_eq!(operations, expected);
    }
}
