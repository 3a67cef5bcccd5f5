//! Signed checkpoints and the key that signs them: `/checkpoint` (the signed note as text, where
//! transparency clients look), `/checkpoints/...` (JSON) and `/keys`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::{CheckpointAccess, ReadAccess};
use super::{ApiError, AppState};
use crate::integrity::Checkpoint;
use crate::model::QueryError;
use crate::store::Store;

pub fn router<S: Store>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::new()
        .routes(routes!(note))
        .routes(routes!(create))
        .routes(routes!(latest))
        .routes(routes!(by_size))
        .routes(routes!(keys))
}

fn describe(checkpoint: &Checkpoint) -> Value {
    json!({
        "tenant": checkpoint.tenant,
        "tree_size": checkpoint.tree_size,
        "root": checkpoint.root,
        "issued_at": checkpoint.issued_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        "note": checkpoint.note,
    })
}

fn none_yet() -> ApiError {
    ApiError::NotFound("no checkpoint has been issued yet".into())
}

/// The latest signed note, verbatim, as `text/plain`.
#[utoipa::path(
    get,
    path = "/checkpoint",
    tag = "integrity",
    responses((status = 200, description = "The latest checkpoint: a signed note (C2SP \
        tlog-checkpoint)", content_type = "text/plain", body = String)),
)]
async fn note<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
) -> Result<impl IntoResponse, ApiError> {
    let checkpoint = state
        .log
        .checkpoint(&principal, None)
        .await?
        .ok_or_else(none_yet)?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        checkpoint.note,
    ))
}

#[utoipa::path(
    get,
    path = "/checkpoints/latest",
    tag = "integrity",
    responses((status = 200, description = "The latest checkpoint, its fields and its signed note", body = Object)),
)]
async fn latest<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
) -> Result<Json<Value>, ApiError> {
    let checkpoint = state
        .log
        .checkpoint(&principal, None)
        .await?
        .ok_or_else(none_yet)?;
    Ok(Json(describe(&checkpoint)))
}

#[utoipa::path(
    get,
    path = "/checkpoints/{tree_size}",
    tag = "integrity",
    responses((status = 200, description = "The checkpoint of that tree size", body = Object)),
)]
async fn by_size<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
    Path(tree_size): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let size: u64 = tree_size.parse().map_err(|_| {
        ApiError::InvalidQuery(QueryError {
            param: "tree_size".into(),
            message: format!("`{tree_size}` is not a tree size (a positive whole number)"),
        })
    })?;
    let checkpoint = state
        .log
        .checkpoint(&principal, Some(size))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no checkpoint of tree size {size}")))?;
    Ok(Json(describe(&checkpoint)))
}

/// Signs the current tree head now (admin).
#[utoipa::path(
    post,
    path = "/checkpoints",
    tag = "integrity",
    responses(
        (status = 201, description = "The new checkpoint", body = Object),
        (status = 409, description = "The log is empty"),
    ),
)]
async fn create<S: Store>(
    State(state): State<AppState<S>>,
    CheckpointAccess(principal): CheckpointAccess,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let issued = state.log.issue_checkpoint(&principal).await?;
    let status = if issued.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(describe(&issued.checkpoint))))
}

/// The verifier key of the caller's log, in signed-note form.
#[utoipa::path(
    get,
    path = "/keys",
    tag = "integrity",
    responses((status = 200, description = "The log's verifier key (signed-note form) and \
        its Ed25519 public key", body = Object)),
)]
async fn keys<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
) -> Result<Json<Value>, ApiError> {
    let key = state.log.verifier_key(&principal);
    Ok(Json(json!({
        "keys": [{
            "tenant": key.tenant,
            "origin": key.origin,
            "algorithm": "ed25519",
            "verifier_key": key.verifier_key,
            "public_key": hex::encode(key.public_key),
        }]
    })))
}
