//! Every bad input gets the right status and a JSON error naming what is wrong.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN, Backend, spawn_app};

async fn invalid_events_are_refused_with_the_field_named(backend: Backend) {
    let app = spawn_app(backend).await;
    let long = "x".repeat(1025);
    let cases = [
        (json!({"user_identity": "u"}), "event_type"),
        (json!({"event_type": "a"}), "user_identity"),
        (
            json!({"event_type": "a", "user_identity": "u", "colour": "red"}),
            "colour",
        ),
        (json!({"event_type": 5, "user_identity": "u"}), "event_type"),
        (
            json!({"event_type": "a", "user_identity": "u", "event_data": [1, 2]}),
            "event_data",
        ),
        (
            json!({"event_type": "a", "user_identity": "u", "event_data": "text"}),
            "event_data",
        ),
        (
            json!({"event_type": "", "user_identity": "u"}),
            "event_type",
        ),
        (
            json!({"event_type": "a", "user_identity": "   "}),
            "user_identity",
        ),
        (
            json!({"event_type": long, "user_identity": "u"}),
            "event_type",
        ),
        (
            json!({"event_type": "a", "user_identity": "u", "action": "explode"}),
            "action",
        ),
        (
            json!({"event_type": "a", "user_identity": "u", "outcome": "meh"}),
            "outcome",
        ),
        (
            json!({"event_type": "a", "user_identity": "u", "ip": "not-an-ip"}),
            "ip",
        ),
        (
            json!({"event_type": "a", "user_identity": "u", "occurred_at": "yesterday"}),
            "occurred_at",
        ),
        (
            json!({"event_type": "a", "user_identity": "u", "idempotency_key": ""}),
            "idempotency_key",
        ),
        (
            json!({"event_type": "audit.redacted", "user_identity": "u"}),
            "event_type",
        ),
        (json!([]), "[]"),
        (
            json!([{"event_type": "a", "user_identity": "u"}, {"event_type": "b", "user_identity": "u", "x": 1}]),
            "[1].x",
        ),
    ];
    for (body, field) in cases {
        let response = app.post_json("/events", ADMIN, &body).await;
        assert_eq!(response.status(), 422, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_field", "{body}");
        assert_eq!(error["error"]["field"], field, "{body}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let all = app.get_ok("/events").await;
    assert_eq!(all["events"], json!([]), "nothing invalid was recorded");
}

async fn malformed_json_is_a_bad_request_with_its_position(backend: Backend) {
    let app = spawn_app(backend).await;
    for body in [
        "{\"event_type\": \"a\",",
        "not json",
        "{\"event_type\":\"a\",\"user_identity\":\"u\"} trailing",
    ] {
        let response = app
            .request(Method::POST, "/events", Some(ADMIN))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "malformed_json");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("line 1 column"),
            "{error}"
        );
    }
}

async fn oversized_bodies_and_wrong_content_types_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let huge = json!({"event_type": "a", "user_identity": "u", "event_data": {"blob": "x".repeat(1_100_000)}});
    let response = app.post_json("/events", ADMIN, &huge).await;
    assert_eq!(response.status(), 413);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "payload_too_large");

    let response = app
        .request(Method::POST, "/events", Some(ADMIN))
        .header("content-type", "text/plain")
        .body(r#"{"event_type":"a","user_identity":"u"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    let too_many: Vec<Value> = (0..1001)
        .map(|_| json!({"event_type": "a", "user_identity": "u"}))
        .collect();
    let response = app
        .post_json("/events", ADMIN, &Value::from(too_many))
        .await;
    assert_eq!(response.status(), 422);
}

async fn unknown_routes_and_methods_answer_json(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app.get("/nope", ADMIN).await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    for path in ["/events", "/events/bulk"] {
        let response = app
            .request(Method::DELETE, path, Some(ADMIN))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "method_not_allowed", "{path}");
    }
}

crate::both_backends!(
    invalid_events_are_refused_with_the_field_named,
    malformed_json_is_a_bad_request_with_its_position,
    oversized_bodies_and_wrong_content_types_are_refused,
    unknown_routes_and_methods_answer_json,
);
