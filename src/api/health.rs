//! Liveness and readiness, open to everyone (load balancers carry no credentials).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState};
use crate::store::Store;

pub fn router<S: Store>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::new()
        .routes(routes!(ping))
        .routes(routes!(alive))
        .routes(routes!(ready))
}

/// Seed 2's ping, in its response format.
#[utoipa::path(
    get,
    path = "/ping",
    tag = "operations",
    responses((status = 200, description = "Seed 2's ping, `{\"result\": \"success\", …}`", body = Object)),
)]
async fn ping() -> Json<Value> {
    Json(json!({ "result": "success", "message": "pong" }))
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ok\"}` while the process runs", body = Object)),
)]
async fn alive() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready while the writer runs and the database answers within a second.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ready\"}`", body = Object)),
)]
async fn ready<S: Store>(State(state): State<AppState<S>>) -> Result<Json<Value>, ApiError> {
    match tokio::time::timeout(Duration::from_secs(1), state.log.ready()).await {
        Ok(true) => Ok(Json(json!({ "status": "ready" }))),
        _ => Err(ApiError::Unavailable),
    }
}
