//! `GET /events/stream`: a live tail as Server-Sent Events, read here frame by frame.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    ADMIN, Backend, READER, TestApp, WRITER, settings_for, spawn_app, spawn_with,
};

/// One frame of the stream: an event, a `lagged` or `error` notice, or a comment.
#[derive(Debug, Default)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: String,
    comment: Option<String>,
}

impl Frame {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("JSON data")
    }
}

struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    async fn open(app: &TestApp, query: &str, last_event_id: Option<&str>) -> Self {
        let mut request = app
            .client
            .get(format!("{}/events/stream{query}", app.address))
            .basic_auth(READER.0, Some(READER.1));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["x-accel-buffering"], "no");
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next frame within `wait`, `None` when the stream ended.
    async fn frame(&mut self, wait: Duration) -> Option<Frame> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let text: String = self.buffer.drain(..end + 2).collect();
                let mut frame = Frame::default();
                for line in text.lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        frame.comment = Some(comment.trim().to_owned());
                    } else if let Some((field, value)) = line.split_once(':') {
                        let value = value.strip_prefix(' ').unwrap_or(value);
                        match field {
                            "id" => frame.id = Some(value.to_owned()),
                            "event" => frame.event = Some(value.to_owned()),
                            "data" => frame.data.push_str(value),
                            _ => {}
                        }
                    }
                }
                return Some(frame);
            }
            let chunk = tokio::time::timeout(wait, self.response.chunk())
                .await
                .expect("a frame in time")
                .expect("the stream");
            self.buffer
                .push_str(std::str::from_utf8(&chunk?).expect("UTF-8"));
        }
    }

    /// The next `count` events (skipping comments), their `seq`s checked against their ids.
    async fn events(&mut self, count: usize) -> Vec<Value> {
        let mut events = Vec::new();
        while events.len() < count {
            let frame = self.frame(Duration::from_secs(10)).await.expect("an event");
            if frame.comment.is_some() || frame.data.is_empty() {
                continue;
            }
            assert_eq!(frame.event, None, "{frame:?}");
            let event = frame.json();
            assert_eq!(frame.id.as_deref(), Some(event["seq"].to_string().as_str()));
            events.push(event);
        }
        events
    }
}

async fn record(app: &TestApp, users: &[&str]) {
    let batch: Vec<Value> = users
        .iter()
        .map(|user| json!({"event_type": "t", "user_identity": user}))
        .collect();
    assert_eq!(
        app.post_json("/events", WRITER, &json!(batch))
            .await
            .status(),
        201
    );
}

fn seqs(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["seq"].as_i64().unwrap()).collect()
}

async fn a_new_stream_starts_with_the_events_committed_from_then_on(backend: Backend) {
    let mut app = spawn_app(backend).await;
    record(&app, &["a", "b", "a"]).await;
    let mut stream = Sse::open(&app, "?user_identity=a", None).await;
    // The first frame names where the stream begins, so that a reconnection before any event
    // resumes there.
    let start = stream.frame(Duration::from_secs(5)).await.unwrap();
    assert_eq!((start.id.as_deref(), start.data.as_str()), (Some("3"), ""));
    record(&app, &["b", "a", "b", "a"]).await;
    record(&app, &["a"]).await;
    let events = stream.events(3).await;
    assert_eq!(seqs(&events), [5, 7, 8]);
    assert!(events.iter().all(|e| e["user_identity"] == "a"));

    // An open stream does not hold up a graceful shutdown: it ends.
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("shutdown with a stream open")
        .expect("a clean stop");
    assert!(stream.frame(Duration::from_secs(5)).await.is_none());
}

async fn last_event_id_zero_replays_the_log_then_follows_it(backend: Backend) {
    let app = spawn_app(backend).await;
    // More than a page of the store (100) before the stream opens.
    for _ in 0..3 {
        record(&app, &["a"; 100]).await;
    }
    let mut stream = Sse::open(&app, "", Some("0")).await;
    let replayed = stream.events(300).await;
    assert_eq!(seqs(&replayed), (1..=300).collect::<Vec<_>>());
    record(&app, &["b", "c"]).await;
    assert_eq!(seqs(&stream.events(2).await), [301, 302]);

    let mut resumed = Sse::open(&app, "?user_identity=c", Some("250")).await;
    assert_eq!(seqs(&resumed.events(1).await), [302]);
}

/// The reader drops its connection at random points while writers keep appending, and
/// reconnects with the last id it saw: it sees every event once, in order.
async fn reconnecting_with_last_event_id_loses_and_repeats_nothing_while_writers_run(
    backend: Backend,
) {
    const BATCHES: usize = 40;
    const EACH: usize = 10;
    let app = spawn_app(backend).await;
    let mut stream = Sse::open(&app, "", Some("0")).await;
    let writer = {
        let (client, address) = (app.client.clone(), app.address.clone());
        tokio::spawn(async move {
            for b in 0..BATCHES {
                let batch: Vec<Value> = (0..EACH)
                    .map(|i| json!({"event_type": "t", "user_identity": format!("u{b}-{i}")}))
                    .collect();
                let response = client
                    .post(format!("{address}/events"))
                    .basic_auth(WRITER.0, Some(WRITER.1))
                    .json(&batch)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut seen = Vec::new();
    let mut reconnections = 0;
    while seen.len() < BATCHES * EACH {
        let take = 37.min(BATCHES * EACH - seen.len());
        seen.extend(seqs(&stream.events(take).await));
        // Cut the connection mid-stream, and come back after the last event seen.
        let last = seen.last().unwrap().to_string();
        stream = Sse::open(&app, "", Some(&last)).await;
        reconnections += 1;
    }
    writer.await.unwrap();
    assert!(reconnections >= 10);
    assert_eq!(seen, (1..=(BATCHES * EACH) as i64).collect::<Vec<_>>());
}

/// Another instance's commits reach the tail too (within the poll interval).
async fn a_stream_on_one_instance_sees_events_committed_by_another() {
    let first = spawn_app(Backend::Postgres).await;
    let second = spawn_with(first.db.share(), settings_for(&first.db)).await;
    let mut stream = Sse::open(&first, "", None).await;
    record(&second, &["from-second"]).await;
    let events = stream.events(1).await;
    assert_eq!(events[0]["user_identity"], "from-second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_stream_on_one_instance_sees_events_committed_by_another() {
    a_stream_on_one_instance_sees_events_committed_by_another().await;
}

/// A reader that stops reading while more than `MAX_LAG_EVENTS` are committed is told where to
/// resume, and resuming there replays the rest from the store.
async fn a_reader_that_falls_far_behind_is_told_where_to_resume(backend: Backend) {
    const EVENTS: usize = 30_000;
    let app = spawn_app(backend).await;
    let mut stream = Sse::open(&app, "", None).await;
    // Opened and caught up (at the empty head) before the writes.
    record(&app, &["first"]).await;
    assert_eq!(seqs(&stream.events(1).await), [1]);
    for _ in 0..EVENTS / 1000 {
        let batch: Vec<Value> = (0..1000)
            .map(|i| json!({"event_type": "t", "user_identity": format!("u{i}")}))
            .collect();
        assert_eq!(
            app.post_json("/events", ADMIN, &json!(batch))
                .await
                .status(),
            201
        );
    }
    let mut received = vec![1];
    let lagged = loop {
        let frame = stream
            .frame(Duration::from_secs(30))
            .await
            .expect("a lagged notice before the end");
        match frame.event.as_deref() {
            None if !frame.data.is_empty() => {
                received.push(frame.json()["seq"].as_i64().unwrap());
            }
            Some("lagged") => break frame.json(),
            _ => {}
        }
    };
    assert!(
        stream.frame(Duration::from_secs(10)).await.is_none(),
        "the stream ends"
    );
    let last = *received.last().unwrap();
    assert_eq!(received, (1..=last).collect::<Vec<_>>());
    assert!((last as usize) < EVENTS, "{last}");
    assert_eq!(lagged["last_event_id"], last);
    assert_eq!(lagged["head"], EVENTS + 1);

    let mut resumed = Sse::open(&app, "", Some(&last.to_string())).await;
    let rest = resumed.events(EVENTS + 1 - last as usize).await;
    assert_eq!(
        seqs(&rest),
        ((last + 1)..=(EVENTS as i64 + 1)).collect::<Vec<_>>()
    );
}

async fn an_idle_stream_sends_a_heartbeat_every_15_seconds(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut stream = Sse::open(&app, "", None).await;
    let start = stream.frame(Duration::from_secs(5)).await.expect("a frame");
    assert_eq!(start.id.as_deref(), Some("0"));
    let frame = stream
        .frame(Duration::from_secs(20))
        .await
        .expect("a frame");
    assert_eq!(frame.comment.as_deref(), Some("heartbeat"), "{frame:?}");
}

async fn bad_stream_requests_are_refused_with_the_reason(backend: Backend) {
    let app = spawn_app(backend).await;
    for (query, last_event_id, field) in [
        ("?limit=5", None, "limit"),
        ("?cursor=x", None, "cursor"),
        ("?colour=red", None, "colour"),
        ("", Some("abc"), "Last-Event-ID"),
        ("", Some("-1"), "Last-Event-ID"),
        // Past the head: the events up to it would pass unseen.
        ("", Some("5"), "Last-Event-ID"),
    ] {
        let mut request = app
            .client
            .get(format!("{}/events/stream{query}", app.address))
            .basic_auth(READER.0, Some(READER.1));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400, "{query} {last_event_id:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    assert_eq!(app.get("/events/stream", WRITER).await.status(), 403);
}

/// A credential holds at most `limits.max_streams_per_credential` streams; one more is a 429
/// with Retry-After, other credentials are not held back, and a stream its client closed frees
/// its place.
async fn a_credential_holds_a_limited_number_of_streams(backend: Backend) {
    let db = crate::helpers::TestDb::new(backend).await;
    let mut settings = settings_for(&db);
    settings.limits.max_streams_per_credential = 2;
    let app = spawn_with(db, settings).await;
    app.add_user(READER.0, auditor::auth::Role::Reader, READER.1)
        .await;
    let first = Sse::open(&app, "", None).await;
    let _second = Sse::open(&app, "", None).await;
    let refused = app.get("/events/stream", READER).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
    let other = app.get("/events/stream", ADMIN).await;
    assert_eq!(other.status(), 200, "another credential");
    drop(first);
    // The server learns of the closed connection at its next write, the heartbeat at the latest.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let again = app.get("/events/stream", READER).await;
        if again.status() == 200 {
            break;
        }
        assert_eq!(again.status(), 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed stream's place is freed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A stream ends once its credentials no longer admit it: here its token is revoked. Within
/// the re-check (5 s) and a margin, the stream is over, and a new one with the token is a 401.
async fn a_stream_ends_when_its_token_is_revoked(backend: Backend) {
    let app = spawn_app(backend).await;
    let created: Value = app
        .post_json(
            "/admin/tokens",
            ADMIN,
            &json!({"name": "tail", "tenant": "default", "scopes": ["events:read"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    let open = || {
        app.client
            .get(format!("{}/events/stream", app.address))
            .bearer_auth(&token)
            .send()
    };
    let response = open().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = Sse {
        response,
        buffer: String::new(),
    };
    assert!(
        stream.frame(Duration::from_secs(5)).await.is_some(),
        "the first frame"
    );
    let revoked = app
        .request(reqwest::Method::DELETE, "/admin/tokens/tail", Some(ADMIN))
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream outlived its token"
        );
        if stream.frame(Duration::from_secs(15)).await.is_none() {
            break;
        }
    }
    assert_eq!(open().await.unwrap().status(), 401);
}

crate::both_backends!(
    a_stream_ends_when_its_token_is_revoked,
    a_credential_holds_a_limited_number_of_streams,
    a_new_stream_starts_with_the_events_committed_from_then_on,
    last_event_id_zero_replays_the_log_then_follows_it,
    reconnecting_with_last_event_id_loses_and_repeats_nothing_while_writers_run,
    a_reader_that_falls_far_behind_is_told_where_to_resume,
    an_idle_stream_sends_a_heartbeat_every_15_seconds,
    bad_stream_requests_are_refused_with_the_reason,
);
