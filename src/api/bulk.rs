//! `POST /events/bulk`: NDJSON, one event per line, streamed. Lines are committed in chunks as
//! they arrive (never the whole body in memory); the answer says exactly which lines were
//! committed, which replayed an earlier event, and which were refused and why.
//!
//! An upload has no overall deadline: it may run as long as its client keeps sending. It ends
//! early when no data arrives for the idle timeout, when the body breaks off, or when the
//! server shuts down; the complete lines read by then are still committed and the answer,
//! whatever the status, is the same exact report with `stopped` saying why.

use std::collections::HashSet;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::WriteAccess;
use super::body::{parse, require_ndjson};
use super::{ApiError, AppState, BodyLimit};
use crate::auth::Principal;
use crate::log::{LogError, Recorded};
use crate::model::{NewEvent, RawEvent};
use crate::store::Store;

/// `idle`: how long the upload may go without receiving a byte (`limits.request_timeout_secs`).
pub fn router<S: Store>(idle: Duration) -> OpenApiRouter<AppState<S>> {
    OpenApiRouter::new()
        .routes(routes!(ingest))
        .layer(Extension(IdleTimeout(idle)))
}

#[derive(Debug, Clone, Copy)]
struct IdleTimeout(Duration);

/// Inclusive ranges of 1-based line numbers.
#[derive(Default, Serialize, utoipa::ToSchema)]
#[schema(value_type = Vec<[u64; 2]>)]
struct Lines(Vec<[u64; 2]>);

impl Lines {
    fn add(&mut self, line: u64) {
        match self.0.last_mut() {
            Some(range) if range[1] + 1 == line => range[1] = line,
            _ => self.0.push([line, line]),
        }
    }
}

/// What an upload committed, line by line.
#[derive(Default, Serialize, utoipa::ToSchema)]
#[schema(as = BulkReport)]
struct Report {
    /// How many lines were recorded as new events.
    committed: u64,
    /// How many lines replayed an event recorded before under its `idempotency_key`.
    replayed: u64,
    /// The lines committed, as `[first, last]` ranges.
    committed_lines: Lines,
    /// The lines replayed, as `[first, last]` ranges.
    replayed_lines: Lines,
    /// `{"line", "error"}` for each line refused, `error` as `ErrorBody`'s.
    #[schema(value_type = Vec<Object>)]
    rejected: Vec<Value>,
    /// `{"line", "error"}` when the upload ended early: no line from `line` on was committed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    stopped: Option<Value>,
}

/// Any body: each line is judged on its own, and reported, so no body is invalid as a whole (a
/// schema only).
struct AnyJson;

impl utoipa::PartialSchema for AnyJson {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::SchemaType::AnyValue)
            .into()
    }
}

impl utoipa::ToSchema for AnyJson {
    fn name() -> std::borrow::Cow<'static, str> {
        "NdjsonLines".into()
    }
}

/// A refusal before the upload began (`ErrorBody`), or the report of one that ended early: a
/// schema only, the answer being built as one or the other.
struct BulkOrError;

impl utoipa::PartialSchema for BulkOrError {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(utoipa::openapi::Ref::from_schema_name("ErrorBody"))
            .item(utoipa::openapi::Ref::from_schema_name("BulkReport"))
            .into()
    }
}

impl utoipa::ToSchema for BulkOrError {}

impl Report {
    /// Records that line `line` was refused and why; the upload goes on.
    fn reject(&mut self, line: u64, error: &ApiError) {
        self.rejected
            .push(json!({"line": line, "error": error.body()}));
    }
}

/// Why an upload ended early, and the first line it left uncommitted.
struct Stop {
    line: u64,
    error: ApiError,
}

struct Chunk {
    lines: Vec<u64>,
    events: Vec<NewEvent>,
    keys: HashSet<String>,
}

impl Chunk {
    fn new() -> Self {
        Self {
            lines: Vec::new(),
            events: Vec::new(),
            keys: HashSet::new(),
        }
    }

    fn push(&mut self, line: u64, event: NewEvent) {
        if let Some(key) = &event.idempotency_key {
            self.keys.insert(key.clone());
        }
        self.lines.push(line);
        self.events.push(event);
    }
}

#[utoipa::path(
    post,
    path = "/events/bulk",
    tag = "events",
    responses(
        (status = 200, description = "Every line committed or replayed: the report", body = Report),
        (status = 207, description = "Some lines were rejected (`rejected` says which and why); \
            the others are committed", body = Report),
        (status = 400, description = "A bad parameter (`ErrorBody`), or the body broke off \
            (`body_error`: the report, with `stopped`)",
            body = inline(BulkOrError)),
        (status = 408, description = "No data arrived for `limits.request_timeout_secs` \
            (`idle_timeout`): the report, with `stopped`", body = Report),
        (status = 415, description = "A body that is not NDJSON (a form, `text/plain`)"),
        (status = 503, description = "The database is unavailable, the service is busy or \
            shutting down; `Retry-After` says when to retry. Once the upload began: the report, \
            with `stopped`", body = inline(BulkOrError)),
    ),
    request_body(
        content(
            (AnyJson = "application/x-ndjson"),
            (AnyJson = "application/ndjson"),
            (AnyJson = "application/jsonl"),
            (AnyJson = "application/json"),
        ),
        description = "One event per line, as `POST /events` takes it (`RawEvent`); streamed, \
            no overall size limit, each line at most `limits.max_body_bytes`. Also as \
            `application/json` (one event on one line is NDJSON too). A line that is not an \
            event does not make the request invalid: the report's `rejected` names it"),
)]
async fn ingest<S: Store>(
    State(state): State<AppState<S>>,
    WriteAccess(principal): WriteAccess,
    Extension(IdleTimeout(idle)): Extension<IdleTimeout>,
    limit: Option<Extension<BodyLimit>>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    if let Err(refused) = require_ndjson(&headers) {
        return refused.into_response();
    }
    let max_line = limit.map_or(1 << 20, |Extension(BodyLimit(n))| n);
    let mut report = Report::default();
    let mut chunk = Chunk::new();
    let mut buffer: Vec<u8> = Vec::new();
    let mut line_number = 0u64;
    let mut oversized = false;
    let mut stream = body.into_data_stream();
    let stop = 'read: loop {
        let data = match next_data(&mut stream, idle, &state.shutdown).await {
            Ok(data) => data,
            Err(error) => {
                break 'read Some(Stop {
                    line: line_number + 1,
                    error,
                });
            }
        };
        let done = data.is_none();
        buffer.extend_from_slice(&data.unwrap_or_default());
        let mut start = 0;
        while let Some(offset) = buffer[start..].iter().position(|b| *b == b'\n') {
            line_number += 1;
            let line = &buffer[start..start + offset];
            start += offset + 1;
            if oversized || line.len() > max_line {
                oversized = false;
                report.reject(line_number, &ApiError::PayloadTooLarge(max_line));
                continue;
            }
            if let Err(stop) = take_line(
                &state,
                &principal,
                line_number,
                line,
                &mut chunk,
                &mut report,
            )
            .await
            {
                break 'read Some(stop);
            }
        }
        buffer.drain(..start);
        // A line already longer than the limit is refused whole, its bytes dropped as they come.
        if buffer.len() > max_line {
            oversized = true;
            buffer.clear();
        }
        if done {
            if oversized {
                line_number += 1;
                report.reject(line_number, &ApiError::PayloadTooLarge(max_line));
            } else if !buffer.iter().all(u8::is_ascii_whitespace) {
                line_number += 1;
                let line = std::mem::take(&mut buffer);
                if let Err(stop) = take_line(
                    &state,
                    &principal,
                    line_number,
                    &line,
                    &mut chunk,
                    &mut report,
                )
                .await
                {
                    break 'read Some(stop);
                }
            }
            break 'read None;
        }
    };
    // Whatever ended the stream, the complete lines read so far are committed. A failure to
    // commit them matters more than why reading stopped: it names the earlier line.
    let stop = match flush(&state, &principal, &mut chunk, &mut report).await {
        Ok(()) => stop,
        Err(failed) => Some(failed),
    };
    let Some(Stop { line, error }) = stop else {
        let status = if report.rejected.is_empty() {
            axum::http::StatusCode::OK
        } else {
            axum::http::StatusCode::MULTI_STATUS
        };
        return (status, Json(report)).into_response();
    };
    tracing::info!(
        committed = report.committed,
        replayed = report.replayed,
        line,
        reason = error.code(),
        "bulk upload ended early"
    );
    report.stopped = Some(json!({"line": line, "error": error.body()}));
    error.into_response_with(json!(report))
}

/// The next piece of the body; `None` at its end. Gives up when no data arrives for `idle`, or
/// at once when the server shuts down, but only here, between reads: a commit in progress is
/// always awaited, so the report never misses one.
async fn next_data(
    stream: &mut BodyDataStream,
    idle: Duration,
    shutdown: &CancellationToken,
) -> Result<Option<Bytes>, ApiError> {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => Err(ApiError::ShuttingDown),
        next = tokio::time::timeout(idle, stream.next()) => match next {
            Err(_) => Err(ApiError::IdleTimeout(idle.as_secs())),
            Ok(Some(Ok(data))) => Ok(Some(data)),
            Ok(Some(Err(error))) => Err(ApiError::BodyUnreadable(error.to_string())),
            Ok(None) => Ok(None),
        },
    }
}

/// Takes one line into the chunk, committing the chunk first when it is full or when the line
/// must wait for it (see [`accept`]).
async fn take_line<S: Store>(
    state: &AppState<S>,
    principal: &Principal,
    number: u64,
    line: &[u8],
    chunk: &mut Chunk,
    report: &mut Report,
) -> Result<(), Stop> {
    let held = accept(state, number, line, chunk, report);
    if held.is_some() || chunk.events.len() >= state.log.limits().max_batch_events {
        flush(state, principal, chunk, report).await?;
    }
    if let Some(event) = held {
        chunk.push(number, event);
    }
    Ok(())
}

/// Parses one line into the chunk, or records why it was refused. An event reusing an
/// idempotency key of the open chunk is handed back: the chunk must commit first, so the key
/// then replays or conflicts as it would across requests.
fn accept<S: Store>(
    state: &AppState<S>,
    number: u64,
    line: &[u8],
    chunk: &mut Chunk,
    report: &mut Report,
) -> Option<NewEvent> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let parsed =
        parse::<RawEvent>(line).and_then(|raw| state.log.parse(raw).map_err(ApiError::from));
    match parsed {
        Ok(event) => {
            if let Some(key) = &event.idempotency_key
                && chunk.keys.contains(key)
            {
                return Some(event);
            }
            chunk.push(number, event);
        }
        Err(error) => report.reject(number, &error),
    }
    None
}

/// Commits the chunk as one atomic submission. A line whose idempotency key conflicts is
/// refused and the rest committed without it. On failure nothing of the chunk was committed,
/// and the stop names its first line.
async fn flush<S: Store>(
    state: &AppState<S>,
    principal: &Principal,
    chunk: &mut Chunk,
    report: &mut Report,
) -> Result<(), Stop> {
    let mut pending = std::mem::replace(chunk, Chunk::new());
    while let Some(&first) = pending.lines.first() {
        match state.log.record(principal, pending.events.clone()).await {
            Ok(Recorded { replayed, .. }) => {
                for (line, replayed) in pending.lines.iter().zip(replayed) {
                    if replayed {
                        report.replayed += 1;
                        report.replayed_lines.add(*line);
                    } else {
                        report.committed += 1;
                        report.committed_lines.add(*line);
                    }
                }
                return Ok(());
            }
            Err(LogError::IdempotencyConflict(key)) => {
                let Some(index) = pending
                    .events
                    .iter()
                    .position(|e| e.idempotency_key.as_deref() == Some(key.as_str()))
                else {
                    return Err(Stop {
                        line: first,
                        error: ApiError::IdempotencyConflict(key),
                    });
                };
                let line = pending.lines.remove(index);
                pending.events.remove(index);
                report.reject(line, &ApiError::IdempotencyConflict(key));
            }
            Err(error) => {
                return Err(Stop {
                    line: first,
                    error: error.into(),
                });
            }
        }
    }
    Ok(())
}
