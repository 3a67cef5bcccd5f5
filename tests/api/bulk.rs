//! `POST /events/bulk`: NDJSON streamed and committed in chunks, with an exact account.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, WRITER, spawn_app};

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
    app.record(json!({"event_type": "a", "user_identity": "u", "idempotency_key": "known", "event_data": {"n": 1}})).await;
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

crate::both_backends!(
    a_large_stream_is_committed_in_chunks,
    bad_lines_are_refused_and_the_rest_committed,
    readers_may_not_bulk_load,
);
