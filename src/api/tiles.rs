//! `/logs/{tenant}/…`: a tenant's log at the paths of C2SP `tlog-tiles`, so that any tlog-tiles
//! client can fetch its checkpoint, tiles and entry bundles (same credentials as other reads).

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::ReadAccess;
use super::{ApiError, AppState};
use crate::integrity::tiles::{TILE_WIDTH, Tile};
use crate::model::QueryError;
use crate::store::Store;

pub fn router<S: Store>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::new()
        .routes(routes!(checkpoint))
        .routes(routes!(tile))
}

/// The latest signed checkpoint, as a C2SP `tlog-checkpoint` note.
#[utoipa::path(
    get,
    path = "/logs/{tenant}/checkpoint",
    tag = "integrity",
    responses((status = 200, description = "The latest checkpoint as a C2SP tlog-checkpoint \
        note", content_type = "text/plain", body = String)),
)]
async fn checkpoint<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
    Path(tenant): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = state.log.named_log(&principal, &tenant)?;
    let checkpoint = state
        .log
        .checkpoint(&principal, None)
        .await?
        .ok_or_else(|| ApiError::NotFound("no checkpoint has been issued yet".into()))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "private, no-cache"),
        ],
        checkpoint.note,
    ))
}

/// A hash tile or an entry bundle. A full tile never changes, so it may be cached for good; a
/// partial one is superseded as the log grows.
#[utoipa::path(
    get,
    path = "/logs/{tenant}/tile/{*path}",
    tag = "integrity",
    responses((status = 200, description = "The tile's bytes (C2SP tlog-tiles)",
        content_type = "application/octet-stream", body = Vec<u8>)),
)]
async fn tile<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
    Path((tenant, path)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = state.log.named_log(&principal, &tenant)?;
    let tile = Tile::parse(&path).map_err(|e| {
        ApiError::InvalidQuery(QueryError {
            param: "path".into(),
            message: format!("`path`: {e}"),
        })
    })?;
    let data = state.log.tile(&principal, tile).await?;
    let cache = if u64::from(tile.width) == TILE_WIDTH {
        "private, max-age=31536000, immutable"
    } else {
        "private, no-cache"
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, cache),
        ],
        data,
    ))
}
