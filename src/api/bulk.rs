//! `POST /events/bulk`: NDJSON, one event per line, streamed. Lines are committed in chunks as
//! they arrive (never the whole body in memory); the answer says exactly which lines were
//! committed, which replayed an earlier event, and which were refused and why.

use std::collections::HashSet;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

use super::body::parse;
use super::events::{Recorded, record};
use super::{ApiError, AppState, BodyLimit};
use crate::auth::{Principal, WriteAccess};
use crate::model::{NewEvent, RawEvent};
use crate::store::Store;

pub fn router<S: Store>() -> Router<AppState<S>> {
    Router::new().route("/events/bulk", post(ingest::<S>))
}

/// Inclusive ranges of 1-based line numbers.
#[derive(Default, Serialize)]
struct Lines(Vec<[u64; 2]>);

impl Lines {
    fn add(&mut self, line: u64) {
        match self.0.last_mut() {
            Some(range) if range[1] + 1 == line => range[1] = line,
            _ => self.0.push([line, line]),
        }
    }
}

#[derive(Default, Serialize)]
struct Report {
    committed: u64,
    replayed: u64,
    committed_lines: Lines,
    replayed_lines: Lines,
    rejected: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped: Option<Value>,
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

async fn ingest<S: Store>(
    State(state): State<AppState<S>>,
    WriteAccess(principal): WriteAccess,
    limit: Option<axum::Extension<BodyLimit>>,
    body: Body,
) -> (StatusCode, Json<Report>) {
    let max_line = limit.map_or(1 << 20, |axum::Extension(BodyLimit(n))| n);
    let mut report = Report::default();
    let mut chunk = Chunk::new();
    let mut buffer: Vec<u8> = Vec::new();
    let mut line_number = 0u64;
    let mut stream = body.into_data_stream();
    let mut status = StatusCode::OK;
    'read: loop {
        let next: Option<Result<Bytes, axum::Error>> = stream.next().await;
        let (data, done) = match next {
            Some(Ok(data)) => (data, false),
            Some(Err(error)) => {
                report.stopped = Some(json!({"code": "body_error", "message": error.to_string()}));
                status = StatusCode::BAD_REQUEST;
                break 'read;
            }
            None => (Bytes::new(), true),
        };
        buffer.extend_from_slice(&data);
        let mut start = 0;
        while let Some(offset) = buffer[start..].iter().position(|b| *b == b'\n') {
            line_number += 1;
            let line = &buffer[start..start + offset];
            let held = accept(&state, line_number, line, &mut chunk, &mut report);
            start += offset + 1;
            if (held.is_some() || chunk.events.len() >= state.limits.max_batch_events)
                && let Err(error) = flush(&state, &principal, &mut chunk, &mut report).await
            {
                status = error.status();
                report.stopped = Some(error.body());
                break 'read;
            }
            if let Some(event) = held {
                chunk.push(line_number, event);
            }
        }
        buffer.drain(..start);
        if buffer.len() > max_line {
            let error = ApiError::PayloadTooLarge(max_line);
            status = error.status();
            report.stopped = Some(json!({"line": line_number + 1, "error": error.body()}));
            break 'read;
        }
        if done {
            let mut held = None;
            if !buffer.iter().all(u8::is_ascii_whitespace) {
                line_number += 1;
                let line = std::mem::take(&mut buffer);
                held = accept(&state, line_number, &line, &mut chunk, &mut report);
            }
            let mut result = flush(&state, &principal, &mut chunk, &mut report).await;
            if let (Ok(()), Some(event)) = (&result, held) {
                chunk.push(line_number, event);
                result = flush(&state, &principal, &mut chunk, &mut report).await;
            }
            if let Err(error) = result {
                status = error.status();
                report.stopped = Some(error.body());
            }
            break 'read;
        }
    }
    if status == StatusCode::OK && !report.rejected.is_empty() {
        status = StatusCode::MULTI_STATUS;
    }
    (status, Json(report))
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
    let parsed = parse::<RawEvent>(line)
        .and_then(|raw| NewEvent::parse(raw, &state.limits).map_err(ApiError::Invalid));
    match parsed {
        Ok(event) => {
            if let Some(key) = &event.idempotency_key
                && chunk.keys.contains(key)
            {
                return Some(event);
            }
            chunk.push(number, event);
        }
        Err(error) => report
            .rejected
            .push(json!({"line": number, "error": error.body()})),
    }
    None
}

/// Commits the chunk as one atomic submission. A line whose idempotency key conflicts is
/// refused and the rest committed without it.
async fn flush<S: Store>(
    state: &AppState<S>,
    principal: &Principal,
    chunk: &mut Chunk,
    report: &mut Report,
) -> Result<(), ApiError> {
    let mut pending = std::mem::replace(chunk, Chunk::new());
    while !pending.events.is_empty() {
        match record(state, principal, pending.events.clone()).await {
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
            Err(ApiError::IdempotencyConflict(key)) => {
                let Some(index) = pending
                    .events
                    .iter()
                    .position(|e| e.idempotency_key.as_deref() == Some(key.as_str()))
                else {
                    return Err(ApiError::IdempotencyConflict(key));
                };
                let line = pending.lines.remove(index);
                pending.events.remove(index);
                let error = ApiError::IdempotencyConflict(key);
                report
                    .rejected
                    .push(json!({"line": line, "error": error.body()}));
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
