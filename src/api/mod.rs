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
mod proofs;
mod stream;
mod tiles;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::Response;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

pub use body::BodyLimit;
pub use error::ApiError;

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
}

impl<S: Clone> Clone for AppState<S> {
    fn clone(&self) -> Self {
        Self {
            log: self.log.clone(),
            auth: Arc::clone(&self.auth),
            throttle: Arc::clone(&self.throttle),
            shutdown: self.shutdown.clone(),
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
    let deadlined = Router::new()
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
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            deadline(request, next, http.request_timeout)
        }));
    Router::new()
        .merge(bulk::router(http.request_timeout))
        .merge(deadlined)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn(access::tenant_parameter))
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
        .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION]))
        .with_state(state)
}

/// A request that outlives the timeout is answered 408, so no client can hold shutdown hostage.
async fn deadline(request: Request, next: Next, timeout: Duration) -> Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}
