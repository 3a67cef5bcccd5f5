//! Recording events: the seed examples, server-assigned fields, batches, idempotency, the chain.

use auditor::integrity::Digest;
use serde_json::{Value, json};

use crate::helpers::{ADMIN, Backend, WRITER, assert_gapless_chain, spawn_app};

fn seed_one_body() -> Value {
    json!({
        "event_type": "old_account",
        "user_identity": "Asad_Zaman",
        "event_data": {
            "account_id": 1346,
            "email": "john.doe@example.com"
        }
    })
}

async fn seed_one_curl_examples_work_verbatim(backend: Backend) {
    let app = spawn_app(backend).await;
    // curl -X POST -u admin:secret -H "Content-Type: application/json" -d '{...}' .../events
    let response = app
        .request(reqwest::Method::POST, "/events", Some(("admin", "secret")))
        .header("Content-Type", "application/json")
        .body(seed_one_body().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["event_type"], "old_account");
    assert_eq!(created["event_data"]["account_id"], 1346);

    // curl -X GET -u admin:secret ".../events/query?user_identity=Asad_Zaman"
    let found = app.get_ok("/events/query?user_identity=Asad_Zaman").await;
    assert_eq!(found, json!([created]));
}

async fn the_server_assigns_identity_position_time_and_chain(backend: Backend) {
    let app = spawn_app(backend).await;
    let event = app.record(seed_one_body()).await;
    let id = event["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    assert_eq!(event["seq"], 1);
    assert_eq!(event["tenant"], "default");
    assert_eq!(event["recorded_by"], "admin");
    assert_eq!(event["occurred_at"], event["recorded_at"]);
    assert_eq!(event["prev_hash"], Digest::ZERO.to_hex());

    let explicit = app
        .record(json!({"event_type": "a", "user_identity": "u", "occurred_at": "2024-05-01T12:00:00.123456789+02:00"}))
        .await;
    assert_eq!(explicit["occurred_at"], "2024-05-01T10:00:00.123456Z");
    assert_eq!(explicit["seq"], 2);
    assert_eq!(explicit["prev_hash"], event["hash"]);

    let fetched = app.get_ok(&format!("/events/{id}")).await;
    assert_eq!(fetched, event);
}

async fn an_event_is_found_by_id_or_is_404(backend: Backend) {
    let app = spawn_app(backend).await;
    let missing = app
        .get("/events/01920000-0000-7000-8000-000000000000", ADMIN)
        .await;
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let malformed = app.get("/events/not-a-uuid", ADMIN).await;
    assert_eq!(malformed.status(), 400);
}

async fn an_array_is_committed_atomically(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app
        .record(json!([
            {"event_type": "a", "user_identity": "u1"},
            {"event_type": "b", "user_identity": "u2"},
            {"event_type": "c", "user_identity": "u3"}
        ]))
        .await;
    let seqs: Vec<i64> = created
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);

    let response = app
        .post_json(
            "/events",
            ADMIN,
            &json!([
                {"event_type": "d", "user_identity": "u4"},
                {"event_type": "e"}
            ]),
        )
        .await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["field"], "[1].user_identity");

    let all = app.get_ok("/events").await;
    assert_eq!(
        all["events"].as_array().unwrap().len(),
        3,
        "nothing of the failed batch was kept"
    );
    let next = app
        .record(json!({"event_type": "f", "user_identity": "u"}))
        .await;
    assert_eq!(next["seq"], 4, "seq stays gapless after a rejected batch");
}

async fn a_retried_post_with_the_same_key_returns_the_original(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = json!({"event_type": "billed", "user_identity": "acme", "idempotency_key": "inv-1", "event_data": {"amount": 10}});
    let first = app.post_json("/events", WRITER, &body).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();

    let retry = app.post_json("/events", WRITER, &body).await;
    assert_eq!(retry.status(), 200);
    assert_eq!(retry.json::<Value>().await.unwrap(), first);

    let mut changed = body.clone();
    changed["event_data"]["amount"] = json!(11);
    let conflict = app.post_json("/events", WRITER, &changed).await;
    assert_eq!(conflict.status(), 409);
    let error: Value = conflict.json().await.unwrap();
    assert_eq!(error["error"]["code"], "idempotency_conflict");

    // Another caller with the same key and body gets a conflict, never the first caller's
    // event; the rightful caller still gets it back.
    let other = app.post_json("/events", ADMIN, &body).await;
    assert_eq!(other.status(), 409);
    let error: Value = other.json().await.unwrap();
    assert_eq!(error["error"]["code"], "idempotency_conflict");
    assert!(!error.to_string().contains(first["id"].as_str().unwrap()));
    let retry = app.post_json("/events", WRITER, &body).await;
    assert_eq!(retry.status(), 200);

    let all = app.get_ok("/events").await;
    assert_eq!(all["events"].as_array().unwrap().len(), 1);
}

/// A key claimed first by another caller does not let it take the rightful caller's event:
/// the second caller's own write under that key is refused, not answered with the first's.
async fn a_key_is_not_shared_between_callers(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = json!({"event_type": "billed", "user_identity": "acme", "idempotency_key": "k-7"});
    let claimed = app.post_json("/events", ADMIN, &body).await;
    assert_eq!(claimed.status(), 201);
    let refused = app.post_json("/events", WRITER, &body).await;
    assert_eq!(refused.status(), 409);
    let batch = app.post_json("/events", WRITER, &json!([body])).await;
    assert_eq!(batch.status(), 409, "in an array too");
}

async fn a_batch_replays_known_keys_and_rejects_duplicate_keys(backend: Backend) {
    let app = spawn_app(backend).await;
    let known = json!({"event_type": "a", "user_identity": "u", "idempotency_key": "k1"});
    let original = app.record(known.clone()).await;
    let response = app
        .post_json(
            "/events",
            ADMIN,
            &json!([known, {"event_type": "b", "user_identity": "u"}]),
        )
        .await;
    assert_eq!(response.status(), 201);
    let events: Value = response.json().await.unwrap();
    assert_eq!(events[0], original);
    assert_eq!(events[1]["seq"], 2);

    let duplicate = app
        .post_json(
            "/events",
            ADMIN,
            &json!([
                {"event_type": "x", "user_identity": "u", "idempotency_key": "same"},
                {"event_type": "y", "user_identity": "u", "idempotency_key": "same"}
            ]),
        )
        .await;
    assert_eq!(duplicate.status(), 422);
    let body: Value = duplicate.json().await.unwrap();
    assert_eq!(body["error"]["field"], "[1].idempotency_key");
}

async fn concurrent_posts_get_gapless_seqs_and_a_valid_chain(backend: Backend) {
    let app = spawn_app(backend).await;
    let posts = (0..40).map(|i| {
        let body =
            json!({"event_type": "load", "user_identity": format!("u{i}"), "event_data": {"i": i}});
        let app = &app;
        async move { app.post_json("/events", WRITER, &body).await.status() }
    });
    let statuses = futures::future::join_all(posts).await;
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");

    let events = app.all_events().await;
    assert_eq!(events.len(), 40);
    assert_gapless_chain(&events);
}

crate::both_backends!(
    seed_one_curl_examples_work_verbatim,
    the_server_assigns_identity_position_time_and_chain,
    an_event_is_found_by_id_or_is_404,
    an_array_is_committed_atomically,
    a_retried_post_with_the_same_key_returns_the_original,
    a_key_is_not_shared_between_callers,
    a_batch_replays_known_keys_and_rejects_duplicate_keys,
    concurrent_posts_get_gapless_seqs_and_a_valid_chain,
);
