//! `GET /metrics` in the Prometheus text format, and the middleware that counts and times every
//! request. The metrics cover every tenant, so on the API's own listener only an admin of every
//! tenant reads them; `metrics.listen` serves them apart, without credentials, for a scraper on
//! a private network.

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::AdminAccess;
use super::{ApiError, AppState};
use crate::log::AuditLog;
use crate::metrics::{
    DATABASE_CONNECTIONS, DATABASE_CONNECTIONS_MAX, HTTP_REQUEST_DURATION, HTTP_REQUESTS,
    WRITE_QUEUE_CAPACITY, WRITE_QUEUE_DEPTH,
};
use crate::store::Store;

/// The Prometheus text exposition format's media type.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn router<S: Store>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::new().routes(routes!(behind_admin))
}

/// `/metrics` alone and open, for `metrics.listen`.
pub fn standalone<S: Store>(log: AuditLog<S>) -> Router {
    Router::new()
        .route("/metrics", get(open::<S>))
        .fallback(|| async { ApiError::NotFound("only /metrics is served here".into()) })
        .with_state(log)
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "The Prometheus text format", content_type = "text/plain", body = String)),
)]
async fn behind_admin<S: Store>(
    State(state): State<AppState<S>>,
    AdminAccess(principal): AdminAccess,
) -> Result<Response, ApiError> {
    if !principal.may_read_the_system_log() {
        return Err(ApiError::Forbidden(
            "the metrics cover every tenant: only an admin of every tenant may read them here \
             (or set metrics.listen to serve them on a private address)"
                .into(),
        ));
    }
    scrape(&state.log).await
}

async fn open<S: Store>(State(log): State<AuditLog<S>>) -> Result<Response, ApiError> {
    scrape(&log).await
}

/// Samples the gauges of this moment and renders every metric.
async fn scrape<S: Store>(log: &AuditLog<S>) -> Result<Response, ApiError> {
    let handle = crate::metrics::install();
    let (depth, capacity) = log.queue_depth();
    metrics::gauge!(WRITE_QUEUE_DEPTH).set(depth as f64);
    metrics::gauge!(WRITE_QUEUE_CAPACITY).set(capacity as f64);
    let connections = log.connections();
    metrics::gauge!(DATABASE_CONNECTIONS, "state" => "in_use").set(connections.in_use as f64);
    metrics::gauge!(DATABASE_CONNECTIONS, "state" => "idle").set(connections.idle as f64);
    metrics::gauge!(DATABASE_CONNECTIONS_MAX).set(connections.max as f64);
    let tenants = log.tenant_gauges().await?;
    let body = crate::metrics::render(&handle, &tenants, time::OffsetDateTime::now_utc());
    Ok(([(header::CONTENT_TYPE, TEXT_FORMAT)], body).into_response())
}

/// Counts the request by route, method and status, and times it until its response's head.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(HTTP_REQUEST_DURATION, "route" => route.clone(), "method" => method)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(HTTP_REQUESTS, "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}

/// The `method` label: the standard methods by name, every other one as `other`, so that a
/// client inventing methods cannot add series to the recorder without bound.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}
