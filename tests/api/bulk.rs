//! `POST /events/bulk`: NDJSON streamed and committed in chunks, with an exact account.

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    ADMIN, Backend, TestApp, TestDb, WRITER, settings_for, spawn_app, spawn_with,
};

async fn post_ndjson(app: &TestApp, body: String) -> (u16, Value) {
    let response = app
        .request(reqwest::Method::POST, "/events/bulk", Some(WRITER))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn a_large_stream_is_committed_in_chunks(backend: Backend) {
    let app = spawn_app(backend).await;
    // Larger than one chunk (1000 events) and than the 1 MiB request body limit.
    let lines: String = (0..2500)
        .map(|i| {
            format!(
                "{}\n",
                json!({"event_type": "imported", "user_identity": format!("u{i}"),
                       "event_data": {"i": i, "pad": "x".repeat(400)}})
            )
        })
        .collect();
    assert!(lines.len() > 1 << 20);
    let (status, report) = post_ndjson(&app, lines).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["committed"], 2500);
    assert_eq!(report["committed_lines"], json!([[1, 2500]]));
    assert_eq!(report["rejected"], json!([]));
    let last = app.get_ok("/events?order=desc&limit=1").await;
    assert_eq!(last["events"][0]["seq"], 2500);
    assert_eq!(last["events"][0]["event_data"]["i"], 2499);
}

async fn bad_lines_are_refused_and_the_rest_committed(backend: Backend) {
    let app = spawn_app(backend).await;
    // Recorded by the caller of the upload: another caller's key would be a conflict.
    let known = json!({"event_type": "a", "user_identity": "u", "idempotency_key": "known", "event_data": {"n": 1}});
    assert_eq!(app.post_json("/events", WRITER, &known).await.status(), 201);
    let body = [
        r#"{"event_type":"a","user_identity":"u1"}"#,
        r#"{"event_type":"a"}"#,
        "",
        "not json",
        r#"{"event_type":"a","user_identity":"u","idempotency_key":"known","event_data":{"n":1}}"#,
        r#"{"event_type":"a","user_identity":"u","idempotency_key":"known","event_data":{"n":2}}"#,
        r#"{"event_type":"b","user_identity":"u2"}"#,
    ]
    .join("\n");
    let (status, report) = post_ndjson(&app, body).await;
    assert_eq!(status, 207, "{report}");
    assert_eq!(report["committed"], 2);
    assert_eq!(report["committed_lines"], json!([[1, 1], [7, 7]]));
    assert_eq!(report["replayed_lines"], json!([[5, 5]]));
    let rejected: Vec<u64> = report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(rejected, vec![2, 4, 6]);
    assert_eq!(report["rejected"][0]["error"]["field"], "user_identity");
    assert_eq!(
        report["rejected"][2]["error"]["code"],
        "idempotency_conflict"
    );
    let all = app.get_ok("/events?limit=1000").await;
    assert_eq!(all["events"].as_array().unwrap().len(), 3);
}

async fn readers_may_not_bulk_load(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .request(
            reqwest::Method::POST,
            "/events/bulk",
            Some(crate::helpers::READER),
        )
        .body("{}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

/// A server whose requests time out after 1 s (`request_timeout`) and whose bulk uploads
/// commit every 4 lines, so a few lines span several commits.
async fn spawn_impatient(backend: Backend, request_timeout_secs: u64) -> TestApp {
    let db = TestDb::new(backend).await;
    let mut settings = settings_for(&db);
    settings.limits.request_timeout_secs = request_timeout_secs;
    settings.limits.max_batch_events = 4;
    spawn_with(db, settings).await
}

fn numbered(line: u64) -> String {
    format!(
        "{}\n",
        json!({"event_type": "imported", "user_identity": "u", "event_data": {"line": line}})
    )
}

/// Every line a report lists as committed, in order.
fn committed_lines(report: &Value) -> Vec<u64> {
    report["committed_lines"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|range| range[0].as_u64().unwrap()..=range[1].as_u64().unwrap())
        .collect()
}

/// The `line` of every stored event, in `seq` order.
async fn stored_lines(app: &TestApp) -> Vec<u64> {
    app.all_events()
        .await
        .iter()
        .map(|e| e.event_data.as_ref().unwrap()["line"].as_u64().unwrap())
        .collect()
}

/// A bulk upload over a raw connection, sent chunk by chunk at the test's own pace.
struct Upload(tokio::net::TcpStream);

impl Upload {
    async fn start(app: &TestApp) -> Self {
        let address = app.address.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", ADMIN.0, ADMIN.1));
        let head = format!(
            "POST /events/bulk HTTP/1.1\r\nHost: auditor\r\nAuthorization: Basic {credentials}\r\n\
             Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        Self(stream)
    }

    async fn send(&mut self, data: &str) {
        let chunk = format!("{:x}\r\n{data}\r\n", data.len());
        self.0.write_all(chunk.as_bytes()).await.unwrap();
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).await.unwrap();
    }

    async fn finish(&mut self) {
        self.0.write_all(b"0\r\n\r\n").await.unwrap();
    }

    /// The status and JSON body, read up to `Content-Length`.
    async fn response(mut self) -> (u16, Value) {
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&received).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or_else(|| panic!("no Content-Length in {head}"));
                if body.len() >= length {
                    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                    return (status, serde_json::from_str(&body[..length]).unwrap());
                }
            }
            let read = self.0.read(&mut buffer).await.unwrap();
            assert!(read > 0, "connection closed before a full response: {text}");
            received.extend_from_slice(&buffer[..read]);
        }
    }
}

/// Longer than `request_timeout` in all, but never idle that long: every line is committed.
async fn an_upload_that_keeps_sending_outlasts_the_request_timeout(backend: Backend) {
    let app = spawn_impatient(backend, 1).await;
    let body: String = (1..=30).map(numbered).collect();
    let started = Instant::now();
    let mut upload = Upload::start(&app).await;
    // 20 pieces cut across line boundaries, 100 ms apart: 2 s in all.
    let piece = body.len().div_ceil(20);
    for part in body.as_bytes().chunks(piece) {
        upload.send(std::str::from_utf8(part).unwrap()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    upload.finish().await;
    let (status, report) = upload.response().await;
    assert!(started.elapsed() > Duration::from_millis(1500));
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["committed"], 30);
    assert_eq!(report["committed_lines"], json!([[1, 30]]));
    assert!(report.get("stopped").is_none(), "{report}");
    assert_eq!(stored_lines(&app).await, (1..=30).collect::<Vec<_>>());
}

/// A client that goes quiet mid-line for longer than the timeout: the complete lines are
/// committed and the report lists exactly the stored ones.
async fn an_upload_that_stops_sending_gets_a_report_of_what_was_committed(backend: Backend) {
    let app = spawn_impatient(backend, 1).await;
    let mut upload = Upload::start(&app).await;
    let body: String = (1..=10).map(numbered).collect();
    upload.send(&body).await;
    upload.send(&numbered(11)[..20]).await;
    let (status, report) = upload.response().await;
    assert_eq!(status, 408, "{report}");
    assert_eq!(
        report["stopped"]["error"]["code"], "idle_timeout",
        "{report}"
    );
    assert_eq!(report["stopped"]["line"], 11, "{report}");
    assert_eq!(report["committed"], 10, "{report}");
    assert_eq!(committed_lines(&report), stored_lines(&app).await);
    assert_eq!(committed_lines(&report), (1..=10).collect::<Vec<_>>());
}

/// A body that breaks off (here: a malformed chunk) ends the upload the same way.
async fn an_upload_whose_body_breaks_gets_a_report_of_what_was_committed(backend: Backend) {
    let app = spawn_impatient(backend, 30).await;
    let mut upload = Upload::start(&app).await;
    let body: String = (1..=6).map(numbered).collect();
    upload.send(&body).await;
    upload.send_raw(b"zz\r\nnot a chunk\r\n").await;
    let (status, report) = upload.response().await;
    assert_eq!(status, 400, "{report}");
    assert_eq!(report["stopped"]["error"]["code"], "body_error", "{report}");
    assert_eq!(report["stopped"]["line"], 7, "{report}");
    assert_eq!(committed_lines(&report), stored_lines(&app).await);
    assert_eq!(committed_lines(&report), (1..=6).collect::<Vec<_>>());
}

/// Graceful shutdown does not wait for an upload to finish (it could go on for ever): the
/// upload stops reading, commits the lines it has, and reports them.
async fn shutdown_ends_an_upload_with_a_report_of_what_was_committed(backend: Backend) {
    let mut app = spawn_impatient(backend, 30).await;
    let mut upload = Upload::start(&app).await;
    let body: String = (1..=10).map(numbered).collect();
    upload.send(&body).await;
    // Lines 1-8 are committed in two chunks of 4 once line 9 and 10 arrive: wait for them, so
    // the upload is surely in progress when the shutdown begins.
    while app.all_events().await.len() < 8 {
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    let (stopped, (status, report)) = tokio::join!(app.stop(), upload.response());
    stopped.expect("clean stop");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown waited for the upload"
    );
    assert_eq!(status, 503, "{report}");
    assert_eq!(
        report["stopped"]["error"]["code"], "shutting_down",
        "{report}"
    );
    assert_eq!(report["stopped"]["line"], 11, "{report}");
    app.restart().await;
    assert_eq!(committed_lines(&report), stored_lines(&app).await);
    assert_eq!(committed_lines(&report), (1..=10).collect::<Vec<_>>());
}

/// Only the bulk route is exempt: a request body that stalls elsewhere still gets 408.
async fn other_routes_keep_the_whole_request_deadline(backend: Backend) {
    let app = spawn_impatient(backend, 1).await;
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", ADMIN.0, ADMIN.1));
    let head = format!(
        "POST /events HTTP/1.1\r\nHost: auditor\r\nAuthorization: Basic {credentials}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (status, body) = Upload(stream).response().await;
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["error"]["code"], "timeout");
}

/// A line over `limits.max_body_bytes` is refused whole, however the body arrives in pieces,
/// and the lines around it are committed.
async fn an_over_long_line_is_refused_and_the_rest_committed(backend: Backend) {
    let app = spawn_app(backend).await;
    let limit = app.settings.limits.max_body_bytes;
    let line = |user: &str, pad: usize| {
        format!(
            "{}\n",
            json!({"event_type": "t", "user_identity": user, "event_data": {"pad": "x".repeat(pad)}})
        )
    };
    for _ in 0..3 {
        let body = [
            line("a", 10),
            line("b", limit + 100),
            line("c", 10),
            line("d", limit + 100),
        ]
        .concat();
        let (status, report) = post_ndjson(&app, body).await;
        assert_eq!(status, 207, "{report}");
        assert_eq!(report["committed"], 2, "{report}");
        assert_eq!(report["rejected"][0]["line"], 2);
        assert_eq!(report["rejected"][0]["error"]["code"], "payload_too_large");
        assert_eq!(report["rejected"][1]["line"], 4);
    }
}

crate::both_backends!(
    an_over_long_line_is_refused_and_the_rest_committed,
    a_large_stream_is_committed_in_chunks,
    bad_lines_are_refused_and_the_rest_committed,
    readers_may_not_bulk_load,
    an_upload_that_keeps_sending_outlasts_the_request_timeout,
    an_upload_that_stops_sending_gets_a_report_of_what_was_committed,
    an_upload_whose_body_breaks_gets_a_report_of_what_was_committed,
    shutdown_ends_an_upload_with_a_report_of_what_was_committed,
    other_routes_keep_the_whole_request_deadline,
);
