//! Proofs over HTTP: an event's inclusion in a tree, and a tree's consistency with an earlier one.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::ReadAccess;
use super::events::parse_event_id;
use super::{ApiError, AppState};
use crate::model::QueryError;
use crate::store::Store;

pub fn router<S: Store>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::new()
        .routes(routes!(inclusion))
        .routes(routes!(consistency))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct TreeSize {
    /// The tree to prove inclusion in (it must cover the event); default: the latest
    /// checkpoint's when it covers the event, else the current tree.
    tree_size: Option<u64>,
}

fn bad_query(param: &str, rejection: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidQuery(QueryError {
        param: param.into(),
        message: rejection.to_string(),
    })
}

/// Inclusion proof of an event, in the latest checkpoint's tree when it covers the event (so the
/// proof checks against a signed root), else in the current tree; or in `tree_size`.
#[utoipa::path(
    get,
    path = "/events/{id}/proof",
    tag = "integrity",
    params(TreeSize),
    responses((status = 200, description = "The inclusion proof (RFC 9162): leaf index, tree \
        size, audit path, and the checkpoint it checks against", body = Object)),
)]
async fn inclusion<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
    Path(id): Path<String>,
    query: Result<Query<TreeSize>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| bad_query("tree_size", e.body_text()))?;
    let id = parse_event_id(&id)?;
    let found = state
        .log
        .inclusion_proof(&principal, id, query.tree_size)
        .await?;
    let proof = found.proof;
    Ok(Json(json!({
        "event_id": found.event_id,
        "seq": found.seq,
        "leaf_index": proof.leaf_index,
        "tree_size": proof.tree_size,
        "leaf_hash": proof.leaf_hash,
        "root": proof.root,
        "proof": proof.proof,
        "checkpoint": found.checkpoint.map(|c| c.note),
    })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Range {
    /// The older tree size.
    from: u64,
    /// The newer tree size; default: the current tree.
    to: Option<u64>,
}

/// Consistency proof from tree size `from` to `to` (default: the current tree).
#[utoipa::path(
    get,
    path = "/checkpoints/consistency",
    tag = "integrity",
    params(Range),
    responses((status = 200, description = "The consistency proof (RFC 9162) between the two \
        tree sizes", body = Object)),
)]
async fn consistency<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
    query: Result<Query<Range>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(range) = query.map_err(|e| bad_query("from", e.body_text()))?;
    let proof = state
        .log
        .consistency_proof(&principal, range.from, range.to)
        .await?;
    Ok(Json(json!(proof)))
}
