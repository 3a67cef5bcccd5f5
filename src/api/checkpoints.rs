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
use super::parameters::whole_number;
use super::{ApiError, AppState};
use crate::integrity::Checkpoint;
use crate::store::Store;

pub fn router<S: Store>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::new()
        .routes(routes!(note))
        .routes(routes!(create))
        .routes(routes!(latest))
        .routes(routes!(by_size))
        .routes(routes!(keys))
}

/// A checkpoint as the JSON routes answer with it.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = Checkpoint)]
struct Described {
    /// The tenant whose log it signs.
    tenant: String,
    /// The number of events it covers.
    tree_size: u64,
    /// The Merkle tree's root hash (hex).
    root: String,
    /// When it was signed (RFC 3339).
    #[schema(format = DateTime)]
    issued_at: String,
    /// The signed note (C2SP tlog-checkpoint), as `GET /checkpoint` serves it.
    note: String,
}

fn describe(checkpoint: &Checkpoint) -> Json<Described> {
    Json(Described {
        tenant: checkpoint.tenant.to_string(),
        tree_size: checkpoint.tree_size,
        root: checkpoint.root.to_string(),
        issued_at: checkpoint
            .issued_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        note: checkpoint.note.clone(),
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
    responses(
        (status = 200, description = "The latest checkpoint: a signed note (C2SP \
            tlog-checkpoint)", content_type = "text/plain", body = String),
        (status = 404, description = "No checkpoint has been issued yet (an empty log)"),
    ),
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
    responses(
        (status = 200, description = "The latest checkpoint, its fields and its signed note",
            body = Described),
        (status = 404, description = "No checkpoint has been issued yet (an empty log)"),
    ),
)]
async fn latest<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
) -> Result<Json<Described>, ApiError> {
    let checkpoint = state
        .log
        .checkpoint(&principal, None)
        .await?
        .ok_or_else(none_yet)?;
    Ok(describe(&checkpoint))
}

#[utoipa::path(
    get,
    path = "/checkpoints/{tree_size}",
    tag = "integrity",
    responses(
        (status = 200, description = "The checkpoint of that tree size", body = Described),
        (status = 404, description = "No checkpoint of that tree size was issued"),
    ),
)]
async fn by_size<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
    Path(tree_size): Path<String>,
) -> Result<Json<Described>, ApiError> {
    let size = whole_number("tree_size", &tree_size, 1)?;
    let checkpoint = state
        .log
        .checkpoint(&principal, Some(size))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no checkpoint of tree size {size}")))?;
    Ok(describe(&checkpoint))
}

/// Signs the current tree head now (admin). It takes no body: what it signs is the log's.
#[utoipa::path(
    post,
    path = "/checkpoints",
    tag = "integrity",
    responses(
        (status = 201, description = "The new checkpoint", body = Described),
        (status = 200, description = "The latest checkpoint already covers the whole log: \
            that checkpoint, unchanged", body = Described),
        (status = 409, description = "The log is empty: there is nothing to sign"),
    ),
)]
async fn create<S: Store>(
    State(state): State<AppState<S>>,
    CheckpointAccess(principal): CheckpointAccess,
) -> Result<(StatusCode, Json<Described>), ApiError> {
    let issued = state.log.issue_checkpoint(&principal).await?;
    let status = if issued.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, describe(&issued.checkpoint)))
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
