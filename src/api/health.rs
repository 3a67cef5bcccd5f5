//! Liveness and readiness, open to everyone (load balancers carry no credentials).

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::store::Store;

pub fn router<S: Store>() -> Router<AppState<S>> {
    Router::new()
        .route("/ping", get(ping))
        .route("/healthz", get(alive))
        .route("/readyz", get(ready::<S>))
}

/// Seed 2's ping, in its response format.
async fn ping() -> Json<Value> {
    Json(json!({ "result": "success", "message": "pong" }))
}

async fn alive() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready while the writer runs and the database answers within a second.
async fn ready<S: Store>(State(state): State<AppState<S>>) -> Result<Json<Value>, ApiError> {
    match tokio::time::timeout(Duration::from_secs(1), state.log.ready()).await {
        Ok(true) => Ok(Json(json!({ "status": "ready" }))),
        _ => Err(ApiError::Unavailable),
    }
}
