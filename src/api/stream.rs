//! `GET /events/stream?<filters>`: a live tail as Server-Sent Events. Each matching event once,
//! in `seq` order, as `id: <seq>` and `data: <the event's JSON>`; `Last-Event-ID` resumes after
//! that `seq` (`0`: from the start), and without it the stream begins with the events committed
//! from then on; its first frame is an `id:` alone, naming the `seq` it begins after. A comment
//! every 15 s keeps idle connections open; a reader that falls too far
//! behind gets `event: lagged` and the stream ends, as it does with `event: error` when the
//! database fails (reconnect with `Last-Event-ID` either way).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::StreamExt;
use serde_json::json;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::ReadAccess;
use super::events::{QueryPairs, query_pairs};
use super::{ApiError, AppState};
use crate::log::tail::Tailed;
use crate::model::{EventQuery, QueryError, Scope, Seq};
use crate::store::Store;

/// How often an idle stream sends a comment.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// How often an open stream's credentials are checked again.
const READMIT_EVERY: Duration = Duration::from_secs(5);

/// The `Retry-After` of a stream refused for the credential's open streams.
const RETRY_STREAM_AFTER: Duration = Duration::from_secs(5);

pub fn router<S: Store>() -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::new().routes(routes!(stream))
}

#[utoipa::path(
    get,
    path = "/events/stream",
    tag = "events",
    responses((status = 200, description = "Server-Sent Events: `id: <seq>`, `data: <event>`; \
        `: heartbeat` every 15 s; `event: lagged` or `event: error` with where to resume",
        content_type = "text/event-stream", body = String)),
)]
async fn stream<S: Store>(
    State(state): State<AppState<S>>,
    ReadAccess(principal): ReadAccess,
    request: Parts,
    pairs: QueryPairs,
) -> Result<Response, ApiError> {
    let query = parse(query_pairs(pairs)?)?;
    let after = last_event_id(&request.headers)?;
    let slot = state.throttle.open_stream(&principal.name).map_err(|_| {
        ApiError::TooManyRequests(
            "these credentials hold as many live tails open as limits.max_streams_per_credential \
             allows; close one first",
            RETRY_STREAM_AFTER,
        )
    })?;
    let tail = state.log.tail(&principal, query, after).await?;
    // An id without data: a client that reconnects before the first event (an `EventSource`
    // keeps the id of every frame) resumes where this stream began, missing nothing between.
    let start = SseEvent::default().id(tail.position().0.to_string());
    let events = futures::stream::once(async { Ok::<_, Infallible>(start) })
        .chain(
            tail.into_stream()
                .map(|item| Ok::<_, Infallible>(sse_event(item))),
        )
        .take_until(state.shutdown.clone().cancelled_owned())
        .take_until(admission_ends(request, state))
        // The slot is freed when the stream is dropped: ended, or its client gone.
        .map(move |frame| {
            let _held = &slot;
            frame
        });
    let sse = Sse::new(events).keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"));
    // A proxy such as nginx would otherwise hold the frames back until its buffer fills.
    Ok(([("x-accel-buffering", "no")], sse).into_response())
}

/// Completes once the stream's credentials no longer admit it (revoked, expired, or their user
/// removed), checked every `READMIT_EVERY` as a new request's would be: the stream then ends,
/// and the client's reconnection is refused.
async fn admission_ends<S: Store>(request: Parts, state: AppState<S>) {
    loop {
        tokio::time::sleep(READMIT_EVERY).await;
        if !super::access::still_admitted(&request, &state, Scope::EventsRead).await {
            return;
        }
    }
}

fn sse_event(item: Result<Tailed, crate::store::StoreError>) -> SseEvent {
    match item {
        Ok(Tailed::Event(event)) => SseEvent::default()
            .id(event.seq.0.to_string())
            .json_data(&event)
            .unwrap_or_else(|_| SseEvent::default().event("error")),
        Ok(Tailed::Lagged {
            last_event_id,
            head,
        }) => SseEvent::default().event("lagged").data(
            json!({
                "message": "this stream fell too far behind the log; reconnect with \
                            Last-Event-ID to resume from the store",
                "last_event_id": last_event_id.0,
                "head": head.0,
            })
            .to_string(),
        ),
        Err(error) => {
            tracing::warn!(%error, "a live tail failed; its stream ends");
            SseEvent::default().event("error").data(
                json!({"message": "the database failed; reconnect with Last-Event-ID to resume"})
                    .to_string(),
            )
        }
    }
}

/// The filters, `since` and `until` of a query; paging does not apply to a stream.
fn parse(pairs: Vec<(String, String)>) -> Result<EventQuery, ApiError> {
    if let Some((name, _)) = pairs
        .iter()
        .find(|(name, _)| matches!(name.as_str(), "limit" | "order" | "cursor"))
    {
        return Err(ApiError::InvalidQuery(QueryError {
            param: name.clone(),
            message: format!(
                "a stream delivers every match in ascending `seq` order; `{name}` does not \
                 apply (resume with the Last-Event-ID header)"
            ),
        }));
    }
    EventQuery::parse(&pairs).map_err(ApiError::InvalidQuery)
}

/// `Last-Event-ID`: the `seq` to resume after.
fn last_event_id(headers: &HeaderMap) -> Result<Option<Seq>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let seq = value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok())
        .filter(|seq| *seq >= 0);
    seq.map(|seq| Some(Seq(seq))).ok_or_else(|| {
        ApiError::InvalidQuery(QueryError {
            param: "Last-Event-ID".into(),
            message: "`Last-Event-ID` is the `seq` of the last event received (a whole number, \
                      0 for the start)"
                .into(),
        })
    })
}
