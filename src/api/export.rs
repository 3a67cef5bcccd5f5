//! `GET /events/export?format=ndjson|csv&<filters>`: every matching event of the caller's
//! tenant, streamed in `seq` order with constant memory.

use std::io;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::ReadAccess;
use super::events::{QueryPairs, query_pairs};
use super::{ApiError, AppState};
use crate::log::export::ExportFormat;
use crate::model::{EventQuery, QueryError};
use crate::store::Store;

pub fn router<S: Store>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::new().routes(routes!(export))
}

#[utoipa::path(
    get,
    path = "/events/export",
    tag = "events",
    responses((status = 200, description = "Every matching event in `seq` order, streamed: \
        NDJSON (without filters, with the checkpoints and chain head `auditor verify --export` \
        checks) or CSV", content(
        (String = "application/x-ndjson"),
        (String = "text/csv"),
    ))),
)]
async fn export<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
    pairs: QueryPairs,
) -> Result<Response, ApiError> {
    let (format, query) = parse(query_pairs(pairs)?)?;
    let export = state.log.export(&principal, query, format).await?;
    let filename = format!(
        "attachment; filename=\"events-{}.{}\"",
        sanitized(export.tenant.as_str()),
        format.extension()
    );
    let body = Body::from_stream(cut_at_shutdown(
        export.into_stream(),
        state.shutdown.clone(),
    ));
    Ok((
        [
            (header::CONTENT_TYPE, format.media_type().to_owned()),
            (header::CONTENT_DISPOSITION, filename),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        body,
    )
        .into_response())
}

/// `format` (default `ndjson`) and the query's filters, `since`, `until` and `cursor`.
fn parse(pairs: Vec<(String, String)>) -> Result<(ExportFormat, EventQuery), ApiError> {
    let invalid = |param: &str, message: String| {
        ApiError::InvalidQuery(QueryError {
            param: param.into(),
            message,
        })
    };
    let mut format = None;
    let mut rest = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        match name.as_str() {
            "format" if format.is_some() => {
                return Err(invalid("format", "`format` is given twice".into()));
            }
            "format" => {
                format = Some(ExportFormat::parse(&value).ok_or_else(|| {
                    invalid(
                        "format",
                        format!("`format` is `ndjson` or `csv`, not `{value}`"),
                    )
                })?);
            }
            "limit" | "order" => {
                return Err(invalid(
                    &name,
                    format!(
                        "an export streams every match in ascending `seq` order; `{name}` does \
                         not apply (page with GET /events instead)"
                    ),
                ));
            }
            _ => rest.push((name, value)),
        }
    }
    let query = EventQuery::parse(&rest).map_err(ApiError::InvalidQuery)?;
    Ok((format.unwrap_or(ExportFormat::Ndjson), query))
}

/// Ends the body with an error when the server begins to shut down, so that the client sees a
/// transfer cut short (never a clean end it could take for the whole export) and the shutdown
/// is not held up by a slow reader. A store error ends it the same way.
fn cut_at_shutdown(
    data: impl futures::Stream<Item = Result<bytes::Bytes, crate::store::StoreError>> + Send + 'static,
    shutdown: CancellationToken,
) -> impl futures::Stream<Item = Result<bytes::Bytes, io::Error>> + Send + 'static {
    stream::unfold(
        (Box::pin(data), shutdown, false),
        |(mut data, shutdown, ended)| async move {
            if ended {
                return None;
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => Some((
                    Err(io::Error::other("the server is shutting down; the export was cut short")),
                    (data, shutdown, true),
                )),
                item = data.next() => {
                    let item = item?;
                    let failed = item.is_err();
                    if let Err(error) = &item {
                        tracing::error!(%error, "an export failed midway; its transfer is cut short");
                    }
                    Some((item.map_err(io::Error::other), (data, shutdown, failed)))
                }
            }
        },
    )
}

/// The tenant's name as it may appear in a file name: letters, digits, `-`, `_` and `.`.
fn sanitized(tenant: &str) -> String {
    tenant
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
