//! Proofs over HTTP: an event's inclusion in a tree, and a tree's consistency with an earlier one.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::ReadAccess;
use super::events::{QueryPairs, parse_event_id, query_pairs};
use super::parameters::{single, whole_number};
use super::{ApiError, AppState};
use crate::store::Store;

pub fn router<S: Store>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::new()
        .routes(routes!(inclusion))
        .routes(routes!(consistency))
}

/// The optional tree size `param` of the query: a whole number from 1.
fn tree_size(pairs: &[(String, String)], param: &str) -> Result<Option<u64>, ApiError> {
    single(pairs, param)?
        .map(|text| whole_number(param, text, 1))
        .transpose()
}

/// Inclusion proof of an event, in the latest checkpoint's tree when it covers the event (so the
/// proof checks against a signed root), else in the current tree; or in `tree_size`.
#[utoipa::path(
    get,
    path = "/events/{id}/proof",
    tag = "integrity",
    // Read with `whole_number`, so that a bad value is refused naming the parameter; the
    // document gives the tree sizes its range (`api::openapi`).
    params(("tree_size" = Option<u64>, Query,
        description = "The tree to prove inclusion in (it must cover the event); default: the \
        latest checkpoint's when it covers the event, else the current tree")),
    responses((status = 200, description = "The inclusion proof (RFC 9162): leaf index, tree \
        size, audit path, and the checkpoint it checks against", body = Object)),
)]
async fn inclusion<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
    Path(id): Path<String>,
    pairs: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    let size = tree_size(&query_pairs(pairs)?, "tree_size")?;
    let id = parse_event_id(&id)?;
    let found = state.log.inclusion_proof(&principal, id, size).await?;
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

/// Consistency proof from tree size `from` to `to` (default: the current tree).
#[utoipa::path(
    get,
    path = "/checkpoints/consistency",
    tag = "integrity",
    params(
        ("from" = u64, Query,
            description = "The older tree size: from 1 to `to`"),
        ("to" = Option<u64>, Query,
            description = "The newer tree size, at most the current tree's; default: the \
            current tree"),
    ),
    responses((status = 200, description = "The consistency proof (RFC 9162) between the two \
        tree sizes", body = Object)),
)]
async fn consistency<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
    pairs: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    let pairs = query_pairs(pairs)?;
    let from = tree_size(&pairs, "from")?.ok_or_else(|| {
        ApiError::InvalidQuery(crate::model::QueryError {
            param: "from".into(),
            message: "`from`, the older tree size, is required".into(),
        })
    })?;
    let to = tree_size(&pairs, "to")?;
    let proof = state.log.consistency_proof(&principal, from, to).await?;
    Ok(Json(json!(proof)))
}
