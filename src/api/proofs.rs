//! Proofs over HTTP: an event's inclusion in a tree, and a tree's consistency with an earlier one.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::events::{parse_event_id, tenant_of};
use super::{ApiError, AppState};
use crate::auth::ReadAccess;
use crate::integrity::proofs::{self, ProofError};
use crate::model::QueryError;
use crate::store::Store;

pub fn router<S: Store>() -> Router<AppState<S>> {
    Router::new()
        .route("/events/{id}/proof", get(inclusion::<S>))
        .route("/checkpoints/consistency", get(consistency::<S>))
}

impl From<ProofError> for ApiError {
    fn from(error: ProofError) -> Self {
        match error {
            ProofError::OutOfRange { param, message } => Self::InvalidQuery(QueryError {
                param: param.into(),
                message: format!("`{param}` {message}"),
            }),
            ProofError::MissingNode(_) => Self::Internal(error.into()),
            ProofError::Store(e) => e.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TreeSize {
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
async fn inclusion<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
    Path(id): Path<String>,
    query: Result<Query<TreeSize>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| bad_query("tree_size", e.body_text()))?;
    let tenant = tenant_of(&principal);
    let id = parse_event_id(&id)?;
    let event = state
        .store
        .get(&tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no event with id {id}")))?;
    let latest = state.store.checkpoint(&tenant, None).await?;
    let tree_size = match (query.tree_size, &latest) {
        (Some(size), _) => size,
        (None, Some(c)) if c.tree_size >= event.seq.0 as u64 => c.tree_size,
        (None, _) => proofs::current_size(&state.store, &tenant).await?,
    };
    let proof = proofs::inclusion(&state.store, &tenant, event.seq, tree_size).await?;
    let checkpoint = state.store.checkpoint(&tenant, Some(tree_size)).await?;
    Ok(Json(json!({
        "event_id": id,
        "seq": event.seq,
        "leaf_index": proof.leaf_index,
        "tree_size": proof.tree_size,
        "leaf_hash": proof.leaf_hash,
        "root": proof.root,
        "proof": proof.proof,
        "checkpoint": checkpoint.map(|c| c.note),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Range {
    from: u64,
    to: Option<u64>,
}

/// Consistency proof from tree size `from` to `to` (default: the current tree).
async fn consistency<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
    query: Result<Query<Range>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(range) = query.map_err(|e| bad_query("from", e.body_text()))?;
    let tenant = tenant_of(&principal);
    let to = match range.to {
        Some(to) => to,
        None => proofs::current_size(&state.store, &tenant).await?,
    };
    let proof = proofs::consistency(&state.store, &tenant, range.from, to).await?;
    Ok(Json(json!(proof)))
}
